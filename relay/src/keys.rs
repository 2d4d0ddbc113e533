//! The relay's long-lived secrets in its data directory: the Ed25519 signing key (`relay.key`,
//! raw PKCS#8 DER) and the first admin API token (`admin-token`). Both files are created once,
//! readable by the owner only.

use crate::store::{NewApiToken, Store, StoreError};
use flotilla_shared::api::Scope;
use flotilla_shared::ids;
use flotilla_shared::signing::SigningKey;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const RELAY_KEY_FILE: &str = "relay.key";
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Name (and audit actor) of the token created on first start.
pub const ADMIN_TOKEN_NAME: &str = "admin";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an ed25519 pkcs8 key")]
    BadKey { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates `path` with mode 0600 and `bytes` as its content; fails if it already exists.
fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads `<data_dir>/relay.key`, creating a new key on first start. Blocking file I/O: call it
/// before serving or from a blocking task.
pub fn load_or_create_relay_key(data_dir: &Path) -> Result<SigningKey, KeyError> {
    let path = data_dir.join(RELAY_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => SigningKey::from_pkcs8(&bytes).map_err(|_| KeyError::BadKey { path }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate();
            write_private_file(&path, key.pkcs8())?;
            tracing::info!(fingerprint = %key.public_key().fingerprint(), "created a new relay signing key");
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path, source }),
    }
}

/// Creates the admin API token on first start: stored hashed with scope admin and name "admin",
/// the plaintext written to `<data_dir>/admin-token` (0600). Returns the plaintext only when it
/// was created now, so it can be shown once.
pub async fn ensure_admin_token(
    store: &Store,
    data_dir: &Path,
) -> Result<Option<String>, KeyError> {
    if store.has_admin_token().await? {
        return Ok(None);
    }
    let token = ids::new_secret_token("flt");
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    // A stale file from a deleted database would otherwise block creation.
    let _ = std::fs::remove_file(&path);
    // No trailing newline: scripts use the file content as the bearer token verbatim.
    write_private_file(&path, token.as_bytes())?;
    store
        .create_api_token(NewApiToken {
            id: ids::new_id("tok"),
            token_hash: ids::token_hash(&token),
            name: ADMIN_TOKEN_NAME.to_string(),
            scope: Scope::Admin,
            created_at: crate::store::now(),
            created_by: "relay".to_string(),
        })
        .await?;
    Ok(Some(token))
}

/// Reads the admin token file (for `flotilla-relay dev`).
pub fn read_admin_token(data_dir: &Path) -> Result<String, KeyError> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_string())
        .map_err(|source| KeyError::Read { path, source })
}
