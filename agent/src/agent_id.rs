//! The agent-id file, `<state_dir>/agent-id`: the enrolled agent's id as one line of text.
//!
//! The agent writes it when it stores its identity (enrollment) and again at start when it is
//! missing or holds another id (installs enrolled before the file existed get it on their first
//! start). The root updater reads it to check that a rollback command is addressed to this
//! agent, so it never opens `agent.db`. Written atomically (temporary file, fsync, rename, fsync
//! of the directory), mode 0600 like `agent.db`; read without following a link, as a regular
//! file with one link (root reads it in a directory the agent writes: a hard link to another
//! file is refused) of at most `MAX_AGENT_ID_FILE_BYTES`. Errors never echo what the file holds.

use crate::upgrade::files::{open_regular, read_capped, write_atomic};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// File name inside the state directory.
pub const AGENT_ID_FILE: &str = "agent-id";

/// Largest agent-id file read (an id is at most 64 characters).
pub const MAX_AGENT_ID_FILE_BYTES: u64 = 256;

/// Why the agent-id file gave no id.
#[derive(Debug, thiserror::Error)]
pub enum AgentIdFileError {
    #[error("cannot read the agent's id from {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{} does not hold an agent id: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
}

/// `<state_dir>/agent-id`.
pub fn agent_id_path(state_dir: &Path) -> PathBuf {
    state_dir.join(AGENT_ID_FILE)
}

/// An id as the relay issues them: 1 to 64 ASCII letters, digits, `_` or `-`.
fn valid_agent_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Writes `agent_id` to `<state_dir>/agent-id` atomically. Blocking.
pub fn write_agent_id(state_dir: &Path, agent_id: &str) -> io::Result<()> {
    if !valid_agent_id(agent_id) {
        return Err(io::Error::other(format!(
            "refusing to write {agent_id:?} to {}: not an agent id",
            agent_id_path(state_dir).display()
        )));
    }
    write_atomic(
        &agent_id_path(state_dir),
        format!("{agent_id}\n").as_bytes(),
        0o600,
    )
}

/// Reads the id from `<state_dir>/agent-id` (one line; the trailing newline is optional).
/// Blocking.
pub fn read_agent_id(state_dir: &Path) -> Result<String, AgentIdFileError> {
    let path = agent_id_path(state_dir);
    let read = open_regular(&path).and_then(|f| {
        let links = f.metadata()?.nlink();
        if links != 1 {
            return Err(io::Error::other(format!(
                "it has {links} hard links, not one (refusing to read what another name points to)"
            )));
        }
        read_capped(f, &path, MAX_AGENT_ID_FILE_BYTES)
    });
    let bytes = match read {
        Ok(b) => b,
        Err(source) => return Err(AgentIdFileError::Unreadable { path, source }),
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => {
            return Err(AgentIdFileError::Malformed {
                path,
                why: "not UTF-8".into(),
            })
        }
    };
    let id = text.strip_suffix('\n').unwrap_or(&text);
    if !valid_agent_id(id) {
        let why = format!(
            "its {} bytes are not 1 to 64 letters, digits, '_' or '-'",
            id.len()
        );
        return Err(AgentIdFileError::Malformed { path, why });
    }
    Ok(id.to_string())
}

/// Writes the file unless it already holds `agent_id`; returns whether it wrote. Blocking.
pub fn ensure_agent_id(state_dir: &Path, agent_id: &str) -> io::Result<bool> {
    match read_agent_id(state_dir) {
        Ok(id) if id == agent_id => Ok(false),
        _ => write_agent_id(state_dir, agent_id).map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir() -> PathBuf {
        crate::state::tests::temp_dir()
    }

    #[test]
    fn written_ids_read_back_with_mode_0600() {
        let dir = temp_dir();
        write_agent_id(&dir, "ag_0123abc").unwrap();
        assert_eq!(read_agent_id(&dir).unwrap(), "ag_0123abc");
        let mode = std::fs::metadata(agent_id_path(&dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_agent_id(&dir, "../x").is_err());
        assert_eq!(read_agent_id(&dir).unwrap(), "ag_0123abc");
    }

    #[test]
    fn a_missing_or_malformed_file_is_an_error_naming_it() {
        let dir = temp_dir();
        let path = agent_id_path(&dir).display().to_string();
        let e = read_agent_id(&dir).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read the agent's id from") && e.contains(&path),
            "{e}"
        );
        for bad in ["", "\n", "ag 1\n", "ag_1\n\n", &"a".repeat(65)] {
            std::fs::write(agent_id_path(&dir), bad).unwrap();
            let e = read_agent_id(&dir).unwrap_err().to_string();
            assert!(
                e.contains(&path) && e.contains("does not hold an agent id"),
                "{e}"
            );
        }
        std::fs::write(agent_id_path(&dir), "a".repeat(300)).unwrap();
        let e = read_agent_id(&dir).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(agent_id_path(&dir), "ag_1").unwrap();
        assert_eq!(read_agent_id(&dir).unwrap(), "ag_1");
    }

    #[test]
    fn a_link_is_not_followed() {
        let dir = temp_dir();
        std::fs::write(dir.join("elsewhere"), "ag_1\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), agent_id_path(&dir)).unwrap();
        let e = read_agent_id(&dir).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn a_hard_link_is_refused_and_content_is_not_echoed() {
        let dir = temp_dir();
        std::fs::write(dir.join("secret"), "root_only_token\n").unwrap();
        std::fs::hard_link(dir.join("secret"), agent_id_path(&dir)).unwrap();
        let e = read_agent_id(&dir).unwrap_err().to_string();
        assert!(e.contains("2 hard links"), "{e}");
        assert!(!e.contains("root_only_token"), "{e}");
        std::fs::remove_file(agent_id_path(&dir)).unwrap();
        std::fs::write(agent_id_path(&dir), "not an id at all\n").unwrap();
        let e = read_agent_id(&dir).unwrap_err().to_string();
        assert!(!e.contains("not an id at all"), "{e}");
    }

    #[test]
    fn ensure_writes_a_missing_or_stale_file_only() {
        let dir = temp_dir();
        assert!(ensure_agent_id(&dir, "ag_1").unwrap());
        assert!(!ensure_agent_id(&dir, "ag_1").unwrap());
        assert!(ensure_agent_id(&dir, "ag_2").unwrap());
        assert_eq!(read_agent_id(&dir).unwrap(), "ag_2");
    }
}
