//! The files of a compose project as the agent may touch them: reading with a size cap,
//! checking that a path (and every symlink on the way) stays inside `[compose] allowed_dirs`,
//! and writing atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory) with the previous content kept beside it as `<file>.flotilla.bak`.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// Largest compose or `.env` file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Suffix of the copy of a file's previous content.
pub const BACKUP_SUFFIX: &str = ".flotilla.bak";

flotilla_shared::message_error!(
    /// A file the agent may not or cannot touch (the message names the path and why).
    pub FileError
);

/// `path` with `.` and `..` folded away, without touching the file system.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// The allowed directories, canonicalised (a directory that does not resolve is left out).
pub fn canonical_dirs(dirs: &[String]) -> Vec<(PathBuf, PathBuf)> {
    dirs.iter()
        .filter(|d| !d.trim().is_empty())
        .filter_map(|d| {
            let given = lexical(Path::new(d.trim()));
            std::fs::canonicalize(&given).ok().map(|c| (given, c))
        })
        .collect()
}

/// Checks that `path` may be written: absolute, inside an allowed directory as written AND
/// once every symlink is resolved, and a regular file. Returns the resolved path (the one to
/// write, so a symlink inside the directory is followed, never replaced).
pub fn check_writable(path: &Path, allowed: &[(PathBuf, PathBuf)]) -> Result<PathBuf, FileError> {
    let how_to = "add its directory to [compose] allowed_dirs in agent.toml (or \
                  FLOTILLA_COMPOSE_ALLOWED_DIRS), or update with allow_drift (--allow-drift) to \
                  update the container only and report the drift";
    if !path.is_absolute() {
        return Err(FileError(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let given = lexical(path);
    if allowed.is_empty() {
        return Err(FileError(format!(
            "{} is not in an allowed directory: no [compose] allowed_dirs are configured; {how_to}",
            given.display()
        )));
    }
    let inside = |p: &Path| {
        allowed
            .iter()
            .any(|(g, c)| p.starts_with(g) || p.starts_with(c))
    };
    if !inside(&given) {
        return Err(FileError(format!(
            "{} is not in an allowed directory ({}); {how_to}",
            given.display(),
            allowed
                .iter()
                .map(|(g, _)| g.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let resolved = std::fs::canonicalize(&given)
        .map_err(|e| FileError(format!("cannot resolve {}: {e}", given.display())))?;
    if !allowed.iter().any(|(_, c)| resolved.starts_with(c)) {
        return Err(FileError(format!(
            "{} leads through a symlink to {}, outside the allowed directories; symlinks out \
             of an allowed directory are never followed",
            given.display(),
            resolved.display()
        )));
    }
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| FileError(format!("cannot read {}: {e}", resolved.display())))?;
    if !meta.is_file() {
        return Err(FileError(format!(
            "{} is not a regular file",
            resolved.display()
        )));
    }
    Ok(resolved)
}

/// Reads a text file of at most [`MAX_FILE_BYTES`]; `Ok(None)` when it does not exist.
pub fn read_text(path: &Path) -> Result<Option<String>, FileError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FileError(format!("cannot read {}: {e}", path.display()))),
    };
    let meta = file
        .metadata()
        .map_err(|e| FileError(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(FileError(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileError(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| FileError(format!("{} is not UTF-8 text", path.display())))
}

/// Replaces `path` with `content` atomically, keeping its permission bits.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), FileError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let err =
        |what: &str, e: std::io::Error| FileError(format!("cannot {what} {}: {e}", path.display()));
    let dir = path
        .parent()
        .ok_or_else(|| FileError(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let tmp = dir.join(format!(".{name}.flotilla-tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err("create a temporary file beside", e))?;
    let written = f
        .write_all(content)
        .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `<file>.flotilla.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_keep_the_mode() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = flotilla_testkit::temp_dir("compose-files");
        let dir = tmp.path().to_path_buf();
        let f = dir.join("compose.yaml");
        std::fs::write(&f, "a").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&f, b"b").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "b");
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        assert!(backup_path(&f)
            .to_string_lossy()
            .ends_with("compose.yaml.flotilla.bak"));
    }

    #[test]
    fn only_allowed_directories_without_symlinks_out_are_writable() {
        let tmp = flotilla_testkit::temp_dir("compose-allowed");
        let root = tmp.path().to_path_buf();
        let allowed_dir = root.join("stacks");
        let outside = root.join("elsewhere");
        std::fs::create_dir_all(allowed_dir.join("shop")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let inside = allowed_dir.join("shop/compose.yaml");
        std::fs::write(&inside, "x").unwrap();
        std::fs::write(outside.join("compose.yaml"), "x").unwrap();
        std::os::unix::fs::symlink(
            outside.join("compose.yaml"),
            allowed_dir.join("shop/link.yaml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(&outside, allowed_dir.join("away")).unwrap();
        let allowed = canonical_dirs(&[allowed_dir.display().to_string()]);
        assert!(check_writable(&inside, &allowed).is_ok());
        let e = check_writable(&allowed_dir.join("shop/link.yaml"), &allowed).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = check_writable(&allowed_dir.join("away/compose.yaml"), &allowed).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = check_writable(&outside.join("compose.yaml"), &allowed).unwrap_err();
        assert!(e.to_string().contains("allowed_dirs"), "{e}");
        let e = check_writable(
            &allowed_dir.join("shop/../../elsewhere/compose.yaml"),
            &allowed,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not in an allowed directory"), "{e}");
        let e = check_writable(&inside, &[]).unwrap_err();
        assert!(e.to_string().contains("no [compose] allowed_dirs"), "{e}");
    }
}
