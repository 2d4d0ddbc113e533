//! The compose tool (`docker-compose` 1.x, or `docker compose` when configured so) asked for a
//! service's config hash after its files were edited: the hash compose compares with a
//! container's `com.docker.compose.config-hash` label to decide whether `up -d` recreates it.
//! Giving the new container that hash is what makes a later `up -d` leave it alone.

use super::Project;
use std::time::Duration;

/// Longest the tool may take.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest part of the tool's error output carried in a message.
const MAX_STDERR: usize = 600;

flotilla_shared::message_error!(
    /// The compose tool could not give a hash (the message has its error output).
    pub ToolError
);

/// `<command> -p <project> --project-directory <dir> -f <file>... config --hash <service>`.
pub async fn config_hash(
    command: &str,
    project: &Project,
    service: &str,
    docker_host: Option<&str>,
) -> Result<String, ToolError> {
    let mut words = command.split_whitespace();
    let program = words
        .next()
        .ok_or_else(|| ToolError("[compose] command is empty".into()))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(words)
        .arg("-p")
        .arg(&project.name)
        .arg("--project-directory")
        .arg(&project.working_dir);
    for f in &project.config_files {
        cmd.arg("-f").arg(f);
    }
    cmd.arg("config")
        .arg("--hash")
        .arg(service)
        .current_dir(&project.working_dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(host) = docker_host {
        cmd.env("DOCKER_HOST", host);
    }
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            ToolError(format!(
                "{command} config --hash took longer than {TIMEOUT:?}"
            ))
        })?
        .map_err(|e| ToolError(format!("cannot run {command}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.trim().chars().take(MAX_STDERR).collect();
        return Err(ToolError(format!(
            "{command} config --hash {service} failed ({}): {err}",
            out.status
        )));
    }
    parse_hash(&String::from_utf8_lossy(&out.stdout), service)
}

/// The hash in `<service> <hash>` output lines.
pub fn parse_hash(stdout: &str, service: &str) -> Result<String, ToolError> {
    stdout
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .find(|(s, _)| *s == service)
        .map(|(_, h)| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| ToolError(format!("no hash for service {service} in {stdout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_read_from_the_service_line() {
        assert_eq!(parse_hash("web 0a1b\nworker ff\n", "worker").unwrap(), "ff");
        assert!(parse_hash("web zz\n", "web").is_err());
        assert!(parse_hash("", "web").is_err());
    }
}
