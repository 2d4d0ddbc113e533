//! Off-site copies of backups: a directory (a mounted disk or network share) or S3-compatible
//! object storage (AWS S3, Backblaze B2, Cloudflare R2, MinIO, ...).
//!
//! Every transfer streams from or to disk, so memory stays bounded whatever the dump's size
//! (S3 uploads hold at most two parts). A copy is only reported as stored once the size the
//! destination reports equals the local size. Nothing is created at agent start: the S3 client
//! (connection pool, TLS roots) is built by the first transfer that needs it.
//!
//! The S3 client is our own small one (the `s3` module below: Signature Version 4 over the
//! agent's reqwest and ring) rather than a general object-store crate, which would have added
//! about 1.8 MiB (HTTP/2, an XML/serde stack) to an agent whose binary budget is 12 MiB. It
//! speaks the handful of calls backups need and sends no checksum headers beyond the signed
//! payload hash, which B2 and R2 accept.

use crate::backup::config::{DestinationConfig, DestinationKind};
use bytes::Bytes;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;

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

fn key_path(root: &Path, full_key: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(full_key.split('/').filter(|s| !s.is_empty()));
    path
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
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

/// Why a file copy failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("{} does not exist", .0.display())]
    SourceMissing(PathBuf),
    #[error("{0}")]
    Io(String),
}

async fn blocking_copy(
    f: impl FnOnce() -> Result<(u64, u64), CopyError> + Send + 'static,
) -> Result<(u64, u64), CopyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CopyError::Io(format!("blocking task failed: {e}")))?
}

/// Copies `from` to `to` through `to.partial`, synced and renamed into place, creating `to`'s
/// directory. Returns the source's size before the copy and the bytes copied. Blocking.
fn copy_durably(from: &Path, to: &Path) -> Result<(u64, u64), CopyError> {
    let mut source = std::fs::File::open(from).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CopyError::SourceMissing(from.to_path_buf())
        } else {
            CopyError::Io(format!("cannot read {}: {e}", from.display()))
        }
    })?;
    let size = source
        .metadata()
        .map_err(|e| CopyError::Io(format!("cannot read {}: {e}", from.display())))?
        .len();
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| CopyError::Io(format!("cannot create {}: {e}", parent.display())))?;
    }
    let partial = partial_path(to);
    let copied = (|| {
        let mut out = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        // io::copy uses copy_file_range/sendfile where it can, with a bounded buffer otherwise.
        let copied = std::io::copy(&mut source, &mut out).map_err(|e| {
            format!(
                "cannot copy {} to {}: {e}",
                from.display(),
                partial.display()
            )
        })?;
        out.flush()
            .and_then(|()| out.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", partial.display()))?;
        Ok(copied)
    })();
    let copied = match copied {
        Ok(copied) => copied,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(CopyError::Io(e));
        }
    };
    rename_durably(&partial, to).map_err(CopyError::Io)?;
    Ok((size, copied))
}

/// Renames and syncs the directory, so the new name survives a power cut.
fn rename_durably(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::rename(from, to).map_err(|e| {
        let _ = std::fs::remove_file(from);
        format!("cannot rename {} to {}: {e}", from.display(), to.display())
    })?;
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| format!("cannot sync {}: {e}", parent.display()))?;
    }
    Ok(())
}

/// Every regular file under `dir`, recursively, except `.partial` ones; a missing `dir` is
/// empty. Symbolic links are not followed. Blocking.
fn list_dir(dir: &Path) -> Result<Vec<RemoteObject>, String> {
    let mut objects = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            let file_type = entry
                .file_type()
                .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if file_type.is_file() && !path.to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                let size = entry
                    .metadata()
                    .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
                    .len();
                objects.push(RemoteObject {
                    location: path.display().to_string(),
                    size,
                });
            }
        }
    }
    Ok(objects)
}

// === S3 client ===

/// The S3 calls backups need (PutObject, the multipart upload calls, HeadObject, ranged
/// GetObject, DeleteObject, ListObjectsV2), signed with AWS Signature Version 4 and retried
/// on transient failures.
mod s3 {
    use super::{error_chain, RemoteObject};
    use bytes::Bytes;
    use flotilla_daemon::backoff::Backoff;
    use reqwest::{Method, StatusCode};
    use ring::{digest, hmac};
    use std::fmt;
    use std::fmt::Write as _;
    use std::ops::Range;
    use std::time::Duration;

    /// Retries of a request after a connection error, a timeout, a 5xx, 408 or 429. With the
    /// backoff below an unreachable endpoint fails in at most 7 s (refused) or about 30 s
    /// (black-holed: four connect timeouts).
    const MAX_RETRIES: u32 = 3;
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Requests that move data: a part, a ranged GET, and completing an upload (S3 may take
    /// minutes over a large one). 16 MiB in 10 minutes is 28 KiB/s.
    const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
    /// Requests that move only metadata.
    const METADATA_TIMEOUT: Duration = Duration::from_secs(60);
    /// Error and upload-id answers are read up to this size.
    const MAX_SMALL_ANSWER_BYTES: usize = 64 * 1024;
    /// One page of a listing (at most 1000 keys of at most 1 KiB each, plus markup).
    const MAX_LIST_ANSWER_BYTES: usize = 8 * 1024 * 1024;
    /// SHA-256 of an empty body.
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Where requests go: the host (with the bucket in it for virtual-hosted style) and the
    /// path of the bucket (`/<bucket>` for path style).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(super) struct Target {
        scheme: String,
        host: String,
        bucket_path: String,
    }

    impl Target {
        pub(super) fn parse(
            endpoint: &str,
            bucket: &str,
            path_style: bool,
            allow_http: bool,
        ) -> Result<Target, String> {
            let url = reqwest::Url::parse(endpoint)
                .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
            match url.scheme() {
                "https" => {}
                "http" if allow_http => {}
                "http" => {
                    return Err(format!(
                        "{endpoint:?} is plain http; set allow_http = true to allow it"
                    ))
                }
                _ => return Err(format!("{endpoint:?} is not an http(s):// URL")),
            }
            if url.query().is_some() || !url.username().is_empty() {
                return Err(format!(
                    "{endpoint:?} must not carry a query or credentials"
                ));
            }
            let host_name = url
                .host_str()
                .ok_or_else(|| format!("{endpoint:?} has no host"))?;
            let host = match url.port() {
                Some(port) => format!("{host_name}:{port}"),
                None => host_name.to_string(),
            };
            let base = url.path().trim_end_matches('/');
            let (host, bucket_path) = if path_style {
                (host, format!("{base}/{}", uri_encode(bucket, true)))
            } else if host.starts_with(&format!("{bucket}.")) {
                (host, base.to_string())
            } else if host_name.parse::<std::net::IpAddr>().is_err() && !host_name.starts_with('[')
            {
                (format!("{bucket}.{host}"), base.to_string())
            } else {
                return Err(format!(
                    "{endpoint:?} is an IP address, which has no virtual-hosted style; set \
                     path_style = true"
                ));
            };
            Ok(Target {
                scheme: url.scheme().to_string(),
                host,
                bucket_path,
            })
        }
    }

    /// Everything a client needs; built from the configuration without I/O.
    #[derive(Clone)]
    pub(super) struct Settings {
        pub target: Target,
        pub region: String,
        pub access_key_id: String,
        pub secret_access_key: String,
        pub part_size_bytes: u64,
    }

    impl fmt::Debug for Settings {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Settings")
                .field("target", &self.target)
                .field("region", &self.region)
                .field("access_key_id", &self.access_key_id)
                .field("part_size_bytes", &self.part_size_bytes)
                .finish_non_exhaustive()
        }
    }

    /// A request body with its SHA-256, computed once (on a blocking thread for parts) however
    /// often the request is retried.
    pub(super) struct Payload {
        pub data: Bytes,
        sha256: String,
    }

    impl Payload {
        pub(super) fn new(data: Bytes) -> Payload {
            let sha256 = hex::encode(digest::digest(&digest::SHA256, &data));
            Payload { data, sha256 }
        }
    }

    pub(super) struct ObjectMeta {
        pub size: u64,
        pub etag: Option<String>,
    }

    /// A request that failed, after its retries.
    #[derive(Debug)]
    pub(super) struct Error {
        status: Option<StatusCode>,
        /// S3's error code (`NoSuchKey`, `AccessDenied`, ...), when the answer had one.
        code: Option<String>,
        message: String,
    }

    impl Error {
        /// The object (not the bucket) does not exist.
        pub(super) fn is_not_found(&self) -> bool {
            self.status == Some(StatusCode::NOT_FOUND)
                && self
                    .code
                    .as_deref()
                    .is_none_or(|c| c == "NoSuchKey" || c == "NotFound")
        }

        fn protocol(message: &str) -> Error {
            Error {
                status: None,
                code: None,
                message: message.to_string(),
            }
        }

        async fn from_response(response: reqwest::Response, attempts: u32) -> Error {
            let status = response.status();
            let body = read_body(response, MAX_SMALL_ANSWER_BYTES)
                .await
                .unwrap_or_default();
            Error::from_answer(status, &body, attempts)
        }

        fn from_answer(status: StatusCode, body: &str, attempts: u32) -> Error {
            let code = xml_value(body, "Code").map(xml_unescape);
            let mut message = format!("HTTP {status}");
            if let Some(code) = &code {
                let _ = write!(message, ": {code}");
            }
            if let Some(text) = xml_value(body, "Message") {
                let _ = write!(message, ": {}", xml_unescape(text));
            }
            Error {
                status: Some(status),
                code,
                message: with_attempts(message, attempts),
            }
        }
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    fn with_attempts(message: String, attempts: u32) -> String {
        if attempts > 1 {
            format!("{message} (after {attempts} attempts)")
        } else {
            message
        }
    }

    /// A transport error with its causes ("tcp connect error: Connection refused").
    pub(super) fn transport_error(e: &reqwest::Error) -> String {
        error_chain(e)
    }

    struct Request<'a> {
        method: Method,
        /// `None`: the bucket itself.
        key: Option<&'a str>,
        query: Vec<(&'static str, String)>,
        /// Sent and signed besides host, x-amz-date and x-amz-content-sha256.
        headers: Vec<(&'static str, String)>,
        body: Option<Payload>,
        timeout: Duration,
    }

    impl<'a> Request<'a> {
        fn new(method: Method, key: Option<&'a str>, timeout: Duration) -> Self {
            Request {
                method,
                key,
                query: Vec::new(),
                headers: Vec::new(),
                body: None,
                timeout,
            }
        }
    }

    pub(super) struct Client {
        http: reqwest::Client,
        settings: Settings,
    }

    impl Client {
        /// Blocking: loads the system's TLS roots.
        pub(super) fn new(settings: Settings) -> Result<Client, String> {
            let http = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                // Connections close soon after a backup rather than idling until the next.
                .pool_idle_timeout(Duration::from_secs(20))
                // A redirect would lose the signature; S3 only redirects to another region.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot create the HTTP client: {}", error_chain(&e)))?;
            Ok(Client { http, settings })
        }

        pub(super) async fn put_object(&self, key: &str, body: Payload) -> Result<(), Error> {
            let mut request = Request::new(Method::PUT, Some(key), TRANSFER_TIMEOUT);
            request.body = Some(body);
            self.send(&request).await.map(drop)
        }

        /// Returns the upload id.
        pub(super) async fn create_multipart_upload(&self, key: &str) -> Result<String, Error> {
            let mut request = Request::new(Method::POST, Some(key), METADATA_TIMEOUT);
            request.query.push(("uploads", String::new()));
            let response = self.send(&request).await?;
            let body = read_body(response, MAX_SMALL_ANSWER_BYTES).await?;
            xml_value(&body, "UploadId")
                .map(xml_unescape)
                .ok_or_else(|| {
                    Error::protocol("the answer to CreateMultipartUpload has no UploadId")
                })
        }

        /// Returns the part's ETag.
        pub(super) async fn upload_part(
            &self,
            key: &str,
            upload_id: &str,
            number: u32,
            body: Payload,
        ) -> Result<String, Error> {
            let mut request = Request::new(Method::PUT, Some(key), TRANSFER_TIMEOUT);
            request.query.push(("partNumber", number.to_string()));
            request.query.push(("uploadId", upload_id.to_string()));
            request.body = Some(body);
            let response = self.send(&request).await?;
            response
                .headers()
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| Error::protocol("the answer to UploadPart has no ETag"))
        }

        pub(super) async fn complete_multipart_upload(
            &self,
            key: &str,
            upload_id: &str,
            parts: &[(u32, String)],
        ) -> Result<(), Error> {
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (number, etag) in parts {
                let _ = write!(
                    xml,
                    "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                    xml_escape(etag)
                );
            }
            xml.push_str("</CompleteMultipartUpload>");
            let mut request = Request::new(Method::POST, Some(key), TRANSFER_TIMEOUT);
            request.query.push(("uploadId", upload_id.to_string()));
            request
                .headers
                .push(("content-type", "application/xml".to_string()));
            request.body = Some(Payload::new(Bytes::from(xml)));
            let response = self.send(&request).await?;
            // S3 may answer 200 and report a failure in the body (it starts answering early to
            // keep the connection alive while it assembles the parts).
            let status = response.status();
            let body = read_body(response, MAX_SMALL_ANSWER_BYTES).await?;
            if body.contains("<Error>") {
                return Err(Error::from_answer(status, &body, 1));
            }
            Ok(())
        }

        pub(super) async fn abort_multipart_upload(
            &self,
            key: &str,
            upload_id: &str,
        ) -> Result<(), Error> {
            let mut request = Request::new(Method::DELETE, Some(key), METADATA_TIMEOUT);
            request.query.push(("uploadId", upload_id.to_string()));
            match self.send(&request).await {
                Ok(_) => Ok(()),
                Err(e) if e.code.as_deref() == Some("NoSuchUpload") => Ok(()),
                Err(e) => Err(e),
            }
        }

        pub(super) async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
            let request = Request::new(Method::HEAD, Some(key), METADATA_TIMEOUT);
            let response = self.send(&request).await?;
            let headers = response.headers();
            // From the header: a HEAD answer's body, and so its size hint, is empty.
            let size = headers
                .get(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::protocol("the answer to HeadObject has no Content-Length"))?;
            let etag = headers
                .get(reqwest::header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(ObjectMeta { size, etag })
        }

        /// The bytes `range` of an object, which must still have the ETag `if_match`. The caller
        /// reads the body and checks its length.
        pub(super) async fn get_range(
            &self,
            key: &str,
            range: Range<u64>,
            if_match: Option<&str>,
        ) -> Result<reqwest::Response, Error> {
            let mut request = Request::new(Method::GET, Some(key), TRANSFER_TIMEOUT);
            request.headers.push((
                "range",
                format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
            ));
            if let Some(etag) = if_match {
                request.headers.push(("if-match", etag.to_string()));
            }
            self.send(&request).await
        }

        /// Deleting an object that does not exist succeeds.
        pub(super) async fn delete(&self, key: &str) -> Result<(), Error> {
            let request = Request::new(Method::DELETE, Some(key), METADATA_TIMEOUT);
            match self.send(&request).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(e),
            }
        }

        /// Every object whose key starts with `prefix`, page by page.
        pub(super) async fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, Error> {
            let mut objects = Vec::new();
            let mut continuation: Option<String> = None;
            loop {
                let mut request = Request::new(Method::GET, None, METADATA_TIMEOUT);
                request.query.push(("list-type", "2".to_string()));
                if !prefix.is_empty() {
                    request.query.push(("prefix", prefix.to_string()));
                }
                if let Some(token) = continuation.take() {
                    request.query.push(("continuation-token", token));
                }
                let response = self.send(&request).await?;
                let body = read_body(response, MAX_LIST_ANSWER_BYTES).await?;
                let (page, next) = parse_list(&body)?;
                objects.extend(page);
                match next {
                    Some(token) => continuation = Some(token),
                    None => return Ok(objects),
                }
            }
        }

        /// Signs and sends a request, retrying transient failures; returns a 2xx answer.
        async fn send(&self, request: &Request<'_>) -> Result<reqwest::Response, Error> {
            let target = &self.settings.target;
            let path = match request.key {
                Some(key) => format!("{}/{}", target.bucket_path, uri_encode(key, false)),
                None if target.bucket_path.is_empty() => "/".to_string(),
                None => target.bucket_path.clone(),
            };
            let mut query: Vec<(String, String)> = request
                .query
                .iter()
                .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
                .collect();
            query.sort();
            let canonical_query = query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&");
            // Valueless parameters (`?uploads`) are sent bare, as S3's own clients do.
            let url_query = query
                .iter()
                .map(|(k, v)| match v.is_empty() {
                    true => k.clone(),
                    false => format!("{k}={v}"),
                })
                .collect::<Vec<_>>()
                .join("&");
            let url = match url_query.is_empty() {
                true => format!("{}://{}{path}", target.scheme, target.host),
                false => format!("{}://{}{path}?{url_query}", target.scheme, target.host),
            };
            let payload_sha256 = request
                .body
                .as_ref()
                .map_or(EMPTY_SHA256, |b| b.sha256.as_str());

            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
            let mut attempts = 0;
            loop {
                attempts += 1;
                let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
                let mut headers: Vec<(String, String)> = vec![
                    ("host".into(), target.host.clone()),
                    ("x-amz-content-sha256".into(), payload_sha256.into()),
                    ("x-amz-date".into(), amz_date.clone()),
                ];
                headers.extend(
                    request
                        .headers
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.clone())),
                );
                let authorization = authorization(
                    &self.settings,
                    request.method.as_str(),
                    &path,
                    &canonical_query,
                    &mut headers,
                    payload_sha256,
                    &amz_date,
                );
                let mut builder = self
                    .http
                    .request(request.method.clone(), &url)
                    .timeout(request.timeout)
                    .header(reqwest::header::AUTHORIZATION, authorization);
                // reqwest derives Host from the URL, the same value as signed.
                for (name, value) in headers.iter().filter(|(name, _)| name != "host") {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                if let Some(body) = &request.body {
                    builder = builder.body(body.data.clone());
                }
                let last = attempts > MAX_RETRIES;
                match builder.send().await {
                    Ok(response) if response.status().is_success() => return Ok(response),
                    Ok(response) => {
                        let status = response.status();
                        let transient = status.is_server_error()
                            || status == StatusCode::TOO_MANY_REQUESTS
                            || status == StatusCode::REQUEST_TIMEOUT;
                        if !transient || last {
                            return Err(Error::from_response(response, attempts).await);
                        }
                        tracing::debug!(%status, attempts, "s3 request failed, retrying");
                    }
                    Err(e) if last || e.is_builder() => {
                        return Err(Error {
                            status: None,
                            code: None,
                            message: with_attempts(transport_error(&e), attempts),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, attempts, "s3 request failed, retrying");
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }

    /// AWS Signature Version 4 (in the Authorization header) of one request. `headers` are
    /// the lowercase names and values to sign, `host` among them; they are sorted here.
    fn authorization(
        settings: &Settings,
        method: &str,
        path: &str,
        canonical_query: &str,
        headers: &mut [(String, String)],
        payload_sha256: &str,
        amz_date: &str,
    ) -> String {
        headers.sort();
        let signed_headers = headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = format!("{method}\n{path}\n{canonical_query}\n");
        for (name, value) in headers.iter() {
            let _ = writeln!(canonical, "{name}:{}", value.trim());
        }
        let _ = write!(canonical, "\n{signed_headers}\n{payload_sha256}");
        let date = &amz_date[..8];
        let scope = format!("{date}/{}/s3/aws4_request", settings.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
        );
        let secret = format!("AWS4{}", settings.secret_access_key);
        let signing_key = [date, settings.region.as_str(), "s3", "aws4_request"]
            .iter()
            .fold(
                hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
                |key, part| {
                    hmac::Key::new(
                        hmac::HMAC_SHA256,
                        hmac::sign(&key, part.as_bytes()).as_ref(),
                    )
                },
            );
        let signature = hex::encode(hmac::sign(&signing_key, string_to_sign.as_bytes()));
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
             Signature={signature}",
            settings.access_key_id
        )
    }

    /// S3's URI encoding: every byte but `A-Za-z0-9-_.~` (and `/` in paths) as `%XX`.
    fn uri_encode(text: &str, encode_slash: bool) -> String {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(byte as char)
                }
                b'/' if !encode_slash => out.push('/'),
                _ => {
                    let _ = write!(out, "%{byte:02X}");
                }
            }
        }
        out
    }

    async fn read_body(mut response: reqwest::Response, max_bytes: usize) -> Result<String, Error> {
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| Error {
            status: None,
            code: None,
            message: transport_error(&e),
        })? {
            if body.len() + chunk.len() > max_bytes {
                return Err(Error::protocol(&format!(
                    "the answer is larger than {max_bytes} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// One page of ListObjectsV2: the objects and the continuation token, if truncated.
    fn parse_list(xml: &str) -> Result<(Vec<RemoteObject>, Option<String>), Error> {
        let mut objects = Vec::new();
        for contents in xml_elements(xml, "Contents") {
            let key = xml_value(contents, "Key")
                .ok_or_else(|| Error::protocol("a listed object has no Key"))?;
            let size = xml_value(contents, "Size")
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::protocol("a listed object has no Size"))?;
            objects.push(RemoteObject {
                location: xml_unescape(key),
                size,
            });
        }
        let truncated = xml_value(xml, "IsTruncated").is_some_and(|t| t.trim() == "true");
        let next = match truncated {
            false => None,
            true => Some(
                xml_value(xml, "NextContinuationToken")
                    .map(xml_unescape)
                    .ok_or_else(|| {
                        Error::protocol("a truncated listing has no continuation token")
                    })?,
            ),
        };
        Ok((objects, next))
    }

    /// The text of every `<tag>...</tag>` element, in order. Enough for S3's answers, whose
    /// elements of interest carry no attributes and do not nest in themselves.
    fn xml_elements<'x>(xml: &'x str, tag: &str) -> Vec<&'x str> {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut found = Vec::new();
        let mut rest = xml;
        while let Some(start) = rest.find(&open) {
            let after = &rest[start + open.len()..];
            let Some(end) = after.find(&close) else { break };
            found.push(&after[..end]);
            rest = &after[end + close.len()..];
        }
        found
    }

    fn xml_value<'x>(xml: &'x str, tag: &str) -> Option<&'x str> {
        xml_elements(xml, tag).into_iter().next()
    }

    fn xml_escape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\'' => out.push_str("&apos;"),
                c => out.push(c),
            }
        }
        out
    }

    fn xml_unescape(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            out.push_str(&rest[..amp]);
            rest = &rest[amp..];
            let Some(semi) = rest.find(';') else { break };
            let entity = &rest[1..semi];
            let decoded = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .map(|hex| u32::from_str_radix(hex, 16).ok())
                    .unwrap_or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            match decoded {
                Some(c) => {
                    out.push(c);
                    rest = &rest[semi + 1..];
                }
                None => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The credentials and request of AWS's published Signature Version 4 examples for S3.
        fn example_settings() -> Settings {
            Settings {
                target: Target::parse("https://s3.amazonaws.com", "examplebucket", false, false)
                    .unwrap(),
                region: "us-east-1".into(),
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                part_size_bytes: 16 << 20,
            }
        }

        fn check_signature(
            method: &str,
            path: &str,
            query: &str,
            extra_headers: &[(&str, &str)],
            payload_sha256: &str,
            expected_signature: &str,
        ) {
            let settings = example_settings();
            assert_eq!(settings.target.host, "examplebucket.s3.amazonaws.com");
            let amz_date = "20130524T000000Z";
            let mut headers = vec![
                ("host".to_string(), settings.target.host.clone()),
                ("x-amz-content-sha256".into(), payload_sha256.into()),
                ("x-amz-date".into(), amz_date.into()),
            ];
            headers.extend(
                extra_headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string())),
            );
            let header = authorization(
                &settings,
                method,
                path,
                query,
                &mut headers,
                payload_sha256,
                amz_date,
            );
            assert!(
                header.starts_with(
                    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
                     aws4_request, SignedHeaders="
                ),
                "{header}"
            );
            assert!(
                header.ends_with(&format!("Signature={expected_signature}")),
                "{method} {path}?{query}: {header}"
            );
        }

        #[test]
        fn signatures_match_aws_published_examples() {
            // GET Object with a Range header.
            check_signature(
                "GET",
                "/test.txt",
                "",
                &[("range", "bytes=0-9")],
                EMPTY_SHA256,
                "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
            );
            // PUT Object: a key needing URI encoding, a payload hash, extra signed headers.
            check_signature(
                "PUT",
                &format!("/{}", uri_encode("test$file.text", false)),
                "",
                &[
                    ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                    ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ],
                &hex::encode(digest::digest(&digest::SHA256, b"Welcome to Amazon S3.")),
                "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
            );
            // GET Bucket lifecycle: a valueless query parameter.
            check_signature(
                "GET",
                "/",
                "lifecycle=",
                &[],
                EMPTY_SHA256,
                "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
            );
            // GET Bucket (list objects): sorted query parameters.
            check_signature(
                "GET",
                "/",
                "max-keys=2&prefix=J",
                &[],
                EMPTY_SHA256,
                "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
            );
        }

        #[test]
        fn targets_for_path_and_virtual_hosted_style() {
            let t = |endpoint, path_style, allow_http| {
                Target::parse(endpoint, "bk", path_style, allow_http)
            };
            let b2 = t("https://s3.eu-central-003.backblazeb2.com/", true, false).unwrap();
            assert_eq!(
                (b2.host.as_str(), b2.bucket_path.as_str()),
                ("s3.eu-central-003.backblazeb2.com", "/bk")
            );
            let b2 = t("https://s3.eu-central-003.backblazeb2.com", false, false).unwrap();
            assert_eq!(
                (b2.host.as_str(), b2.bucket_path.as_str()),
                ("bk.s3.eu-central-003.backblazeb2.com", "")
            );
            let own = t("https://bk.example.com", false, false).unwrap();
            assert_eq!(own.host, "bk.example.com");
            let minio = t("http://127.0.0.1:9000/s3", true, true).unwrap();
            assert_eq!(
                (minio.host.as_str(), minio.bucket_path.as_str()),
                ("127.0.0.1:9000", "/s3/bk")
            );
            assert!(t("http://127.0.0.1:9000", true, false)
                .unwrap_err()
                .contains("allow_http"));
            assert!(t("https://127.0.0.1:9000", false, false)
                .unwrap_err()
                .contains("path_style"));
            assert!(t("s3.example.com", true, false).is_err());
            assert!(t("ftp://s3.example.com", true, false).is_err());
        }

        #[test]
        fn listings_parse_with_escapes_and_continuation() {
            let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bk</Name>
<Prefix>a/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
<Contents><Key>a/x&amp;y.zst</Key><Size>10</Size><ETag>&quot;e&quot;</ETag></Contents>
<Contents><Key>a/&#x41;&#66;</Key><Size>0</Size></Contents></ListBucketResult>"#;
            let (objects, next) = parse_list(xml).unwrap();
            assert_eq!(
                objects,
                vec![
                    RemoteObject {
                        location: "a/x&y.zst".into(),
                        size: 10
                    },
                    RemoteObject {
                        location: "a/AB".into(),
                        size: 0
                    },
                ]
            );
            assert_eq!(
                next.as_deref(),
                Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
            );
            let (objects, next) =
                parse_list("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                    .unwrap();
            assert!(objects.is_empty() && next.is_none());
            assert_eq!(xml_unescape("a &bogus; &amp"), "a &bogus; &amp");
            assert_eq!(xml_escape("\"e<&>\""), "&quot;e&lt;&amp;&gt;&quot;");
        }

        #[test]
        fn error_answers_name_status_code_and_message() {
            let body = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not \
                        exist</Message></Error>";
            let e = Error::from_answer(StatusCode::NOT_FOUND, body, 1);
            assert_eq!(
                e.to_string(),
                "HTTP 404 Not Found: NoSuchBucket: The specified bucket does not exist"
            );
            assert!(
                !e.is_not_found(),
                "a missing bucket is not a missing object"
            );
            let e = Error::from_answer(StatusCode::NOT_FOUND, "", 1);
            assert!(e.is_not_found());
            let e = Error::from_answer(StatusCode::SERVICE_UNAVAILABLE, "", 4);
            assert_eq!(
                e.to_string(),
                "HTTP 503 Service Unavailable (after 4 attempts)"
            );
        }
    }
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
