//! Off-site copies of backups: a directory (a mounted disk or network share) or S3-compatible
//! object storage (AWS S3, Backblaze B2, Cloudflare R2, MinIO, ...).
//!
//! Every transfer streams from or to disk, so memory stays bounded whatever the dump's size
//! (S3 uploads hold at most two parts). A copy is only reported as stored once the size the
//! destination reports equals the local size. Nothing is created at agent start: the S3 client
//! (connection pool, TLS roots) is built by the first transfer that needs it.
//!
//! The S3 client is our own small one (`destination/s3.rs`: Signature Version 4 over the
//! agent's reqwest and ring) rather than a general object-store crate, which would have added
//! about 1.8 MiB (HTTP/2, an XML/serde stack) to an agent whose binary budget is 12 MiB. It
//! speaks the handful of calls backups need and sends no checksum headers beyond the signed
//! payload hash, which B2 and R2 accept.

use crate::config::{DestinationConfig, DestinationKind};
use bytes::Bytes;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

mod files;
mod s3;

use files::{
    blocking_copy, copy_durably, key_path, list_dir, partial_path, rename_durably, CopyError,
};

/// S3 refuses parts below 5 MiB (except the last one).
pub const MIN_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024;
/// S3's largest part.
pub const MAX_PART_SIZE_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// S3's largest number of parts in one upload; larger files get larger parts.
const MAX_PARTS: u64 = 10_000;
/// Downloads are split into ranged GETs of this size, so that the per-request timeout bounds
/// a stalled connection without bounding the size of an object that can be downloaded.
const DOWNLOAD_RANGE_BYTES: u64 = 64 * 1024 * 1024;
/// A credentials file larger than this is the wrong file.
const MAX_CREDENTIAL_FILE_BYTES: u64 = 4096;
/// Suffix of files being written; they are renamed into place only once complete and synced.
const PARTIAL_SUFFIX: &str = ".partial";

/// An object (or file) at a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteObject {
    /// What [`Destination::download`] and [`Destination::delete`] take: the object key with
    /// the configured prefix (S3), or the absolute path of the file (dir).
    pub location: String,
    pub size: u64,
}

/// A failure at a destination; its message names the destination and its kind.
#[derive(Debug, thiserror::Error)]
#[error("destination {destination} ({kind}): {error}")]
pub struct DestinationError {
    pub destination: String,
    /// `dir` or `s3`.
    pub kind: &'static str,
    pub error: DestinationErrorKind,
}

impl DestinationError {
    /// The object or file does not exist (download of a pruned or never-uploaded backup).
    pub fn is_not_found(&self) -> bool {
        matches!(self.error, DestinationErrorKind::NotFound { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationErrorKind {
    /// A setting is missing or wrong in `[[backup.destinations]]`.
    #[error("{field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A credentials file cannot be read or is empty.
    #[error("cannot read {field} {}: {reason}", path.display())]
    Credentials {
        field: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// A key, prefix or location that would leave the destination or that S3 cannot store.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("{operation} of {key} failed: {reason}")]
    Failed {
        operation: &'static str,
        key: String,
        reason: String,
    },
    #[error("{operation} of {key} failed: not found")]
    NotFound {
        operation: &'static str,
        key: String,
    },
    /// The copy's size, read back after writing it, differs from the local file's.
    #[error("{operation} of {key} failed: stored size {stored} bytes differs from local size {local} bytes")]
    SizeMismatch {
        operation: &'static str,
        key: String,
        stored: u64,
        local: u64,
    },
}

/// A configured off-site destination.
pub struct Destination {
    name: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    prefix: String,
    backend: Backend,
}

enum Backend {
    Dir { root: PathBuf },
    S3(S3Backend),
}

struct S3Backend {
    settings: s3::Settings,
    /// Built by the first transfer, never at agent start (see the module comment).
    client: OnceCell<Arc<s3::Client>>,
}

impl fmt::Debug for Destination {
    // By hand, like s3::Settings: the secret access key is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Destination");
        d.field("name", &self.name).field("prefix", &self.prefix);
        match &self.backend {
            Backend::Dir { root } => d.field("root", root),
            Backend::S3(s3) => d.field("s3", &s3.settings),
        };
        d.finish_non_exhaustive()
    }
}

// === impl Destination ===

impl Destination {
    /// Checks the settings and reads the credential files (small, bounded reads). Builds no
    /// client and opens no connection.
    pub fn from_config(c: &DestinationConfig) -> Result<Destination, DestinationError> {
        let kind = kind_str(c.kind);
        let err = |error| DestinationError {
            destination: c.name.clone(),
            kind,
            error,
        };
        let config = |field, reason: &str| {
            err(DestinationErrorKind::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if c.name.trim().is_empty() {
            return Err(config("name", "must not be empty"));
        }
        let prefix = c.prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_key(&prefix).map_err(|reason| config("prefix", &reason))?;
        }
        let backend = match c.kind {
            DestinationKind::Dir => {
                let Some(root) = &c.path else {
                    return Err(config("path", "is required for a dir destination"));
                };
                if !root.is_absolute() {
                    return Err(config("path", "must be an absolute path"));
                }
                Backend::Dir { root: root.clone() }
            }
            DestinationKind::S3 => {
                let bucket = match c.bucket.as_deref().map(str::trim) {
                    Some(b) if !b.is_empty() => b.to_string(),
                    _ => return Err(config("bucket", "is required for an s3 destination")),
                };
                if c.part_size_bytes < MIN_PART_SIZE_BYTES
                    || c.part_size_bytes > MAX_PART_SIZE_BYTES
                {
                    return Err(config(
                        "part_size_bytes",
                        &format!(
                            "{} is outside {MIN_PART_SIZE_BYTES}..={MAX_PART_SIZE_BYTES} \
                             (S3's part size limits)",
                            c.part_size_bytes
                        ),
                    ));
                }
                let region = match c.region.as_deref().map(str::trim) {
                    None | Some("") => "us-east-1".to_string(),
                    Some(r) => r.to_string(),
                };
                let endpoint = match c.endpoint.as_deref().map(str::trim) {
                    None | Some("") => format!("https://s3.{region}.amazonaws.com"),
                    Some(e) => e.to_string(),
                };
                let access_key_id =
                    read_credential("access_key_id_file", c.access_key_id_file.as_deref())
                        .map_err(err)?;
                let secret_access_key = read_credential(
                    "secret_access_key_file",
                    c.secret_access_key_file.as_deref(),
                )
                .map_err(err)?;
                let target = s3::Target::parse(&endpoint, &bucket, c.path_style, c.allow_http)
                    .map_err(|reason| config("endpoint", &reason))?;
                Backend::S3(S3Backend {
                    settings: s3::Settings {
                        target,
                        region,
                        access_key_id,
                        secret_access_key,
                        part_size_bytes: c.part_size_bytes,
                    },
                    client: OnceCell::new(),
                })
            }
        };
        Ok(Destination {
            name: c.name.clone(),
            prefix,
            backend,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `dir` or `s3`, as in manifests.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Dir { .. } => "dir",
            Backend::S3(_) => "s3",
        }
    }

    /// Copies the local file `local` to `key` (relative, `/`-separated, e.g.
    /// `host1/pg/pg-app-20260301T020000Z.pgdump.zst`) under the configured prefix, then checks
    /// the stored size. Returns the copy's location (see [`RemoteObject::location`]).
    ///
    /// S3: files up to `part_size_bytes` are one PUT, larger ones a multipart upload in parts
    /// of that size (aborted on failure, so no orphaned parts are billed). Dir: written to a
    /// `.partial` file, synced, then renamed into place. Not cancel-safe: a dropped upload may
    /// leave a `.partial` file (dir) or an incomplete multipart upload (S3; buckets should
    /// have an abort-incomplete-uploads lifecycle rule).
    pub async fn upload(&self, local: &Path, key: &str) -> Result<String, DestinationError> {
        const OP: &str = "upload";
        self.check_key(key)?;
        let full_key = self.full_key(key);
        match &self.backend {
            Backend::Dir { root } => {
                let target = key_path(root, &full_key);
                let location = target.display().to_string();
                let from = local.to_path_buf();
                let copy_target = target.clone();
                let root = root.clone();
                let (local_size, copied) = blocking_copy(move || {
                    // Only directories below the destination's are created: when a share is
                    // not mounted, backups must fail rather than fill the mount point's disk.
                    if !root.is_dir() {
                        return Err(CopyError::Io(format!(
                            "{} is not a directory (is the disk or share mounted?)",
                            root.display()
                        )));
                    }
                    copy_durably(&from, &copy_target)
                })
                .await
                .map_err(|e| self.copy_error(OP, key, e))?;
                let stored = blocking(move || {
                    std::fs::metadata(&target)
                        .map(|m| m.len())
                        .map_err(|e| format!("cannot stat {}: {e}", target.display()))
                })
                .await
                .map_err(|reason| self.failed(OP, key, reason))?;
                if stored != local_size || copied != local_size {
                    return Err(self.error(DestinationErrorKind::SizeMismatch {
                        operation: OP,
                        key: key.to_string(),
                        stored,
                        local: local_size,
                    }));
                }
                Ok(location)
            }
            Backend::S3(s3) => {
                let client = self.s3_client(s3, OP, key).await?;
                let local_size = self
                    .s3_put_file(&client, s3.settings.part_size_bytes, local, &full_key, key)
                    .await?;
                let meta = client
                    .head(&full_key)
                    .await
                    .map_err(|e| self.s3_error(OP, key, e))?;
                if meta.size != local_size {
                    return Err(self.error(DestinationErrorKind::SizeMismatch {
                        operation: OP,
                        key: key.to_string(),
                        stored: meta.size,
                        local: local_size,
                    }));
                }
                Ok(full_key)
            }
        }
    }

    /// Copies the object at `key_or_location` (a key relative to the prefix, or a location
    /// returned by [`upload`](Self::upload) or [`list`](Self::list)) to `local`, through
    /// `<local>.partial` which is synced and renamed into place. Returns the bytes written.
    /// An S3 location is told from a key by its leading prefix.
    pub async fn download(
        &self,
        key_or_location: &str,
        local: &Path,
    ) -> Result<u64, DestinationError> {
        const OP: &str = "download";
        let full_key = self.resolve(key_or_location)?;
        match &self.backend {
            Backend::Dir { root } => {
                let source = key_path(root, &full_key);
                let to = local.to_path_buf();
                let (_, copied) = blocking_copy(move || copy_durably(&source, &to))
                    .await
                    .map_err(|e| match e {
                        CopyError::SourceMissing(_) => self.not_found(OP, key_or_location),
                        e => self.copy_error(OP, key_or_location, e),
                    })?;
                Ok(copied)
            }
            Backend::S3(s3) => {
                let client = self.s3_client(s3, OP, key_or_location).await?;
                self.s3_get_file(&client, &full_key, local, key_or_location)
                    .await
            }
        }
    }

    /// Removes a copy (what [`upload`](Self::upload) or [`list`](Self::list) returned, or a
    /// key). Removing one that does not exist succeeds, so retention can run again after a
    /// partial failure.
    pub async fn delete(&self, location: &str) -> Result<(), DestinationError> {
        const OP: &str = "delete";
        let full_key = self.resolve(location)?;
        match &self.backend {
            Backend::Dir { root } => {
                let path = key_path(root, &full_key);
                blocking(move || match std::fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
                })
                .await
                .map_err(|reason| self.failed(OP, location, reason))
            }
            Backend::S3(s3) => {
                let client = self.s3_client(s3, OP, location).await?;
                client
                    .delete(&full_key)
                    .await
                    .map_err(|e| self.s3_error(OP, location, e))
            }
        }
    }

    /// Every object under `prefix` (relative to the configured prefix; whole `/`-separated
    /// segments, so `host1/pg` lists `host1/pg/...` but not `host1/pgx/...`; empty: all),
    /// recursively, sorted by location. Unfinished `.partial` files are not listed.
    pub async fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, DestinationError> {
        const OP: &str = "list";
        let relative = prefix.trim_matches('/');
        if !relative.is_empty() {
            self.check_key(relative)?;
        }
        let full_prefix = self.full_key(relative);
        let shown = if prefix.is_empty() { "/" } else { prefix };
        let mut objects = match &self.backend {
            Backend::Dir { root } => {
                let dir = key_path(root, &full_prefix);
                blocking(move || list_dir(&dir))
                    .await
                    .map_err(|reason| self.failed(OP, shown, reason))?
            }
            Backend::S3(s3) => {
                let client = self.s3_client(s3, OP, shown).await?;
                // A trailing `/` keeps `host1/pg` from matching `host1/pgx/...`.
                let list_prefix = if full_prefix.is_empty() {
                    String::new()
                } else {
                    format!("{full_prefix}/")
                };
                let objects = client
                    .list(&list_prefix)
                    .await
                    .map_err(|e| self.s3_error(OP, shown, e))?;
                objects
            }
        };
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }
}

// === issue 17 §3: restore onto a replacement server ===

impl Destination {
    /// The key (relative to the configured prefix) of a location that
    /// [`list`](Self::list) returned; None for a location outside this destination.
    pub fn key_of(&self, location: &str) -> Option<String> {
        let full = self.resolve(location).ok()?;
        if self.prefix.is_empty() {
            return Some(full);
        }
        full.strip_prefix(&self.prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(str::to_string)
    }
}

// === impl Destination: helpers ===

impl Destination {
    fn error(&self, error: DestinationErrorKind) -> DestinationError {
        DestinationError {
            destination: self.name.clone(),
            kind: self.kind(),
            error,
        }
    }

    fn failed(&self, operation: &'static str, key: &str, reason: String) -> DestinationError {
        self.error(DestinationErrorKind::Failed {
            operation,
            key: key.to_string(),
            reason,
        })
    }

    fn not_found(&self, operation: &'static str, key: &str) -> DestinationError {
        self.error(DestinationErrorKind::NotFound {
            operation,
            key: key.to_string(),
        })
    }

    fn copy_error(&self, operation: &'static str, key: &str, e: CopyError) -> DestinationError {
        self.failed(operation, key, e.to_string())
    }

    fn s3_error(&self, operation: &'static str, key: &str, e: s3::Error) -> DestinationError {
        if e.is_not_found() {
            self.not_found(operation, key)
        } else {
            self.failed(operation, key, e.to_string())
        }
    }

    fn check_key(&self, key: &str) -> Result<(), DestinationError> {
        check_key(key).map_err(|reason| {
            self.error(DestinationErrorKind::InvalidKey {
                key: key.to_string(),
                reason,
            })
        })
    }

    fn full_key(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        }
    }

    /// The full key of a key or a location. Dir locations are absolute paths, which must lie
    /// under the destination's directory and prefix: a location is never a way to touch a file
    /// elsewhere.
    fn resolve(&self, key_or_location: &str) -> Result<String, DestinationError> {
        let invalid = |reason: &str| {
            self.error(DestinationErrorKind::InvalidKey {
                key: key_or_location.to_string(),
                reason: reason.to_string(),
            })
        };
        let full_key = match &self.backend {
            Backend::Dir { root } if Path::new(key_or_location).is_absolute() => {
                let relative = Path::new(key_or_location)
                    .strip_prefix(root)
                    .map_err(|_| invalid("not inside this destination"))?;
                let relative = relative
                    .to_str()
                    .ok_or_else(|| invalid("not valid UTF-8"))?
                    .to_string();
                let inside_prefix = self.prefix.is_empty()
                    || relative
                        .strip_prefix(&self.prefix)
                        .is_some_and(|rest| rest.starts_with('/'));
                if !inside_prefix {
                    return Err(invalid("not under this destination's prefix"));
                }
                relative
            }
            Backend::Dir { .. } => self.full_key(key_or_location),
            Backend::S3(_) => {
                let is_location = self.prefix.is_empty()
                    || key_or_location
                        .strip_prefix(&self.prefix)
                        .is_some_and(|rest| rest.starts_with('/'));
                if is_location {
                    key_or_location.to_string()
                } else {
                    self.full_key(key_or_location)
                }
            }
        };
        self.check_key(&full_key)?;
        Ok(full_key)
    }

    async fn s3_client(
        &self,
        s3: &S3Backend,
        operation: &'static str,
        key: &str,
    ) -> Result<Arc<s3::Client>, DestinationError> {
        s3.client
            .get_or_try_init(|| async {
                let settings = s3.settings.clone();
                // Building the HTTP client loads the system's TLS roots from disk.
                blocking(move || s3::Client::new(settings).map(Arc::new)).await
            })
            .await
            .cloned()
            .map_err(|reason| self.failed(operation, key, reason))
    }

    /// Uploads `local` to `full_key`; returns its size.
    async fn s3_put_file(
        &self,
        client: &s3::Client,
        part_size_bytes: u64,
        local: &Path,
        full_key: &str,
        key: &str,
    ) -> Result<u64, DestinationError> {
        const OP: &str = "upload";
        let path = local.to_path_buf();
        let (file, size) = blocking(move || {
            let file = std::fs::File::open(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let size = file
                .metadata()
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .len();
            Ok((file, size))
        })
        .await
        .map_err(|reason| self.failed(OP, key, reason))?;
        let read = |file, len| async move {
            read_part(local, file, len)
                .await
                .map_err(|reason| self.failed(OP, key, reason))
        };
        if size <= part_size_bytes {
            let (_, part) = read(file, size).await?;
            client
                .put_object(full_key, part)
                .await
                .map_err(|e| self.s3_error(OP, key, e))?;
            return Ok(size);
        }

        // Larger parts for files that would need more than S3's 10,000.
        let part_size = part_size_bytes.max(size.div_ceil(MAX_PARTS));
        let upload_id = client
            .create_multipart_upload(full_key)
            .await
            .map_err(|e| self.s3_error(OP, key, e))?;
        let uploaded = async {
            let mut parts = Vec::new();
            let mut remaining = size;
            let mut next = read(file, remaining.min(part_size)).await?;
            loop {
                let (file, part) = next;
                let number = parts.len() as u32 + 1;
                remaining -= part.data.len() as u64;
                let upload = async {
                    client
                        .upload_part(full_key, &upload_id, number, part)
                        .await
                        .map_err(|e| self.s3_error(OP, key, e))
                };
                if remaining == 0 {
                    parts.push((number, upload.await?));
                    break;
                }
                // The next part is read while this one uploads: two parts in memory at most.
                let (etag, read_next) =
                    futures_util::future::try_join(upload, read(file, remaining.min(part_size)))
                        .await?;
                parts.push((number, etag));
                next = read_next;
            }
            client
                .complete_multipart_upload(full_key, &upload_id, &parts)
                .await
                .map_err(|e| self.s3_error(OP, key, e))
        }
        .await;
        if let Err(e) = uploaded {
            // Parts of an unfinished upload are stored (and billed) until aborted.
            if let Err(abort) = client.abort_multipart_upload(full_key, &upload_id).await {
                tracing::warn!(
                    destination = %self.name,
                    key,
                    error = %abort,
                    "cannot abort a failed multipart upload; its parts stay until the bucket's \
                     lifecycle rule removes them"
                );
            }
            return Err(e);
        }
        Ok(size)
    }

    async fn s3_get_file(
        &self,
        client: &s3::Client,
        full_key: &str,
        local: &Path,
        key: &str,
    ) -> Result<u64, DestinationError> {
        const OP: &str = "download";
        let meta = client
            .head(full_key)
            .await
            .map_err(|e| self.s3_error(OP, key, e))?;
        let partial = partial_path(local);
        let write_error = |e: std::io::Error| {
            self.failed(OP, key, format!("cannot write {}: {e}", partial.display()))
        };
        let result = async {
            let file = tokio::fs::File::create(&partial)
                .await
                .map_err(write_error)?;
            let mut out = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
            let mut written = 0u64;
            while written < meta.size {
                let end = meta.size.min(written + DOWNLOAD_RANGE_BYTES);
                // If-Match: a copy replaced between two ranges must fail, not be spliced.
                let mut response = client
                    .get_range(full_key, written..end, meta.etag.as_deref())
                    .await
                    .map_err(|e| self.s3_error(OP, key, e))?;
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .map_err(|e| self.failed(OP, key, s3::transport_error(&e)))?
                {
                    written += chunk.len() as u64;
                    if written > end {
                        return Err(self.failed(OP, key, "the server sent more than asked".into()));
                    }
                    out.write_all(&chunk).await.map_err(write_error)?;
                }
                if written != end {
                    return Err(self.failed(
                        OP,
                        key,
                        format!("the object ended after {written} of {} bytes", meta.size),
                    ));
                }
            }
            out.flush().await.map_err(write_error)?;
            out.into_inner().sync_all().await.map_err(write_error)?;
            Ok(written)
        }
        .await;
        match result {
            Ok(written) => {
                let (from, to) = (partial.clone(), local.to_path_buf());
                blocking(move || rename_durably(&from, &to))
                    .await
                    .map_err(|reason| self.failed(OP, key, reason))?;
                Ok(written)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                Err(e)
            }
        }
    }
}

// === free functions ===

fn kind_str(kind: DestinationKind) -> &'static str {
    match kind {
        DestinationKind::Dir => "dir",
        DestinationKind::S3 => "s3",
    }
}

/// A key is relative and `/`-separated, without empty, `.` or `..` segments (which would
/// leave a dir destination's directory), control characters or backslashes, and never names
/// a `.partial` file.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty".into());
    }
    if key.starts_with('/') {
        return Err("must be relative".into());
    }
    if key.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err("empty path segment".into()),
            "." | ".." => return Err(format!("{segment:?} segment")),
            _ => {}
        }
        if segment.chars().any(|c| c.is_control() || c == '\\') {
            return Err("control character or backslash".into());
        }
    }
    if key.ends_with(PARTIAL_SUFFIX) {
        return Err(format!("names a {PARTIAL_SUFFIX} file"));
    }
    Ok(())
}

fn read_credential(
    field: &'static str,
    path: Option<&Path>,
) -> Result<String, DestinationErrorKind> {
    let Some(path) = path else {
        return Err(DestinationErrorKind::Config {
            field,
            reason: "is required for an s3 destination".into(),
        });
    };
    let failed = |reason: String| DestinationErrorKind::Credentials {
        field,
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_CREDENTIAL_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| failed(e.to_string()))?;
    if text.len() as u64 > MAX_CREDENTIAL_FILE_BYTES {
        return Err(failed(format!(
            "larger than {MAX_CREDENTIAL_FILE_BYTES} bytes"
        )));
    }
    let value = text.trim();
    if value.is_empty() {
        return Err(failed("the file is empty".into()));
    }
    Ok(value.to_string())
}

/// An error and its sources, each once (many errors repeat their source in their message).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("blocking task failed: {e}"))?
}

/// Reads the next `len` bytes of `file` and hashes them (for the request signature), on a
/// blocking thread; hands the file back for the next part.
async fn read_part(
    local: &Path,
    mut file: std::fs::File,
    len: u64,
) -> Result<(std::fs::File, s3::Payload), String> {
    let path = local.to_path_buf();
    blocking(move || {
        let len = usize::try_from(len).map_err(|_| "part larger than memory".to_string())?;
        let mut data = vec![0; len];
        file.read_exact(&mut data).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("{} shrank while it was being uploaded", path.display())
            } else {
                format!("cannot read {}: {e}", path.display())
            }
        })?;
        Ok((file, s3::Payload::new(Bytes::from(data))))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_would_leave_the_destination_are_refused() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "./a",
            "a\\b",
            "a/b\n",
            "a/b.partial",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
        check_key("host1/pg/pg-app-20260301T020000Z.pgdump.zst").unwrap();
    }

    #[test]
    fn destinations_and_their_transfers_can_move_between_threads() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let destination = Destination::from_config(&DestinationConfig {
            name: "nas".into(),
            kind: DestinationKind::Dir,
            path: Some("/mnt/nas".into()),
            endpoint: None,
            region: None,
            bucket: None,
            prefix: String::new(),
            access_key_id_file: None,
            secret_access_key_file: None,
            path_style: false,
            allow_http: false,
            part_size_bytes: MIN_PART_SIZE_BYTES,
        })
        .unwrap();
        send_sync(&destination);
        // Futures are not polled here: this only checks that callers can spawn them.
        send(&destination.upload(Path::new("/tmp/x"), "k"));
        send(&destination.download("k", Path::new("/tmp/x")));
        send(&destination.delete("k"));
        send(&destination.list(""));
    }

    #[test]
    fn error_chain_names_each_source_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Hides(#[source] std::io::Error);
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Repeats(io())), "outer: refused");
        assert_eq!(error_chain(&Hides(io())), "outer: refused");
    }
}
