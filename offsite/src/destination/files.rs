//! The local file operations of destinations: where a key lives under a directory
//! destination, the `.partial` name of a file being written, durable copies and renames
//! (synced, then renamed into place, then the directory synced) and listing a directory.
//! All blocking except `blocking_copy`, which runs a copy on the blocking pool.

use super::{RemoteObject, PARTIAL_SUFFIX};
use std::io::Write;
use std::path::{Path, PathBuf};

pub(super) fn key_path(root: &Path, full_key: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(full_key.split('/').filter(|s| !s.is_empty()));
    path
}

pub(super) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
}

/// Why a file copy failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CopyError {
    #[error("{} does not exist", .0.display())]
    SourceMissing(PathBuf),
    #[error("{0}")]
    Io(String),
}

pub(super) async fn blocking_copy(
    f: impl FnOnce() -> Result<(u64, u64), CopyError> + Send + 'static,
) -> Result<(u64, u64), CopyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CopyError::Io(format!("blocking task failed: {e}")))?
}

/// Copies `from` to `to` through `to.partial`, synced and renamed into place, creating `to`'s
/// directory. Returns the source's size before the copy and the bytes copied. Blocking.
pub(super) fn copy_durably(from: &Path, to: &Path) -> Result<(u64, u64), CopyError> {
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
pub(super) fn rename_durably(from: &Path, to: &Path) -> Result<(), String> {
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
pub(super) fn list_dir(dir: &Path) -> Result<Vec<RemoteObject>, String> {
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
