//! Commands run inside containers through the engine's exec API, without a TTY: database dumps
//! stream their stdout out, restores stream a dump into stdin. Nothing is buffered whole:
//! stdout travels in chunks through a bounded channel, so a slow consumer (compression, disk)
//! slows the producer instead of growing memory. Secrets travel in the exec's environment,
//! never on a command line.

use super::{container_error, engine_error, DockerClient, DockerError, ResolvedContainer};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bytes::Bytes;
use futures_util::StreamExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Read buffer of the exec stream: dumps arrive in frames of up to 32 KiB.
const EXEC_READ_CAPACITY: usize = 256 * 1024;
/// How much of stderr (its end) is kept for error messages.
const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// Most stdout a captured (not streamed) exec keeps.
const CAPTURE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// What to run: the command, extra environment (`KEY=value`, where passwords go) and the user.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
}

/// The environment holds passwords: only its names are shown.
impl std::fmt::Debug for ExecSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split('=').next().unwrap_or_default())
            .collect();
        f.debug_struct("ExecSpec")
            .field("cmd", &self.cmd)
            .field("env", &names)
            .field("user", &self.user)
            .finish()
    }
}

impl ExecSpec {
    pub fn new<S: AsRef<str>>(cmd: &[S]) -> Self {
        ExecSpec {
            cmd: cmd.iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }
}

/// How an exec ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    /// None when the engine did not report one (the stream broke off).
    pub exit_code: Option<i64>,
    /// The end of what the command wrote to stderr.
    pub stderr: String,
    /// Bytes the command wrote to stdout.
    pub stdout_bytes: u64,
    /// Captured stdout (only `exec_capture` and `exec_feed` fill it, bounded).
    pub stdout: Vec<u8>,
    /// The consumer stopped taking stdout before the command finished (disk full, ...).
    pub consumer_gone: bool,
}

impl ExecOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.consumer_gone
    }

    /// Captured stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// One line for people: the exit code and the last line(s) of stderr.
    pub fn describe(&self) -> String {
        let stderr = self.stderr.trim();
        let code = match self.exit_code {
            Some(c) => format!("exited with code {c}"),
            None => "ended without an exit code".to_string(),
        };
        if stderr.is_empty() {
            code
        } else {
            let last: Vec<&str> = stderr.lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            format!("{code}: {}", last.join(" | "))
        }
    }
}

fn keep_tail(buf: &mut Vec<u8>, more: &[u8], max: usize) {
    buf.extend_from_slice(more);
    if buf.len() > max {
        let cut = buf.len() - max;
        buf.drain(..cut);
    }
}

// === impl DockerClient ===

impl DockerClient {
    async fn start_exec(
        &self,
        c: &ResolvedContainer,
        spec: &ExecSpec,
        stdin: bool,
    ) -> Result<(String, StartExecResults), DockerError> {
        let docker = self.client().await?;
        let created = docker
            .create_exec(
                &c.id,
                CreateExecOptions::<String> {
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    env: Some(spec.env.clone()),
                    cmd: Some(spec.cmd.clone()),
                    user: spec.user.clone(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| container_error(e, &c.name))?;
        let started = docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(EXEC_READ_CAPACITY),
                }),
            )
            .await
            .map_err(engine_error)?;
        Ok((created.id, started))
    }

    /// The exit code of a finished exec. The output stream closes a moment before the engine
    /// records the exit, so this polls briefly while it still says running.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, DockerError> {
        let docker = self.client().await?;
        for _ in 0..100 {
            let inspect = docker.inspect_exec(exec_id).await.map_err(engine_error)?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }

    /// Runs `spec` in the container and sends its stdout, chunk by chunk, to `out` (a bounded
    /// channel: a slow receiver slows the command). When the receiver is dropped the stream is
    /// closed, which ends the command with a broken pipe; the outcome says so.
    pub async fn exec_stream_out(
        &self,
        c: &ResolvedContainer,
        spec: &ExecSpec,
        out: mpsc::Sender<Bytes>,
    ) -> Result<ExecOutcome, DockerError> {
        let (exec_id, started) = self.start_exec(c, spec, false).await?;
        let StartExecResults::Attached { mut output, .. } = started else {
            return Err(DockerError::Engine("exec started detached".into()));
        };
        let mut outcome = ExecOutcome::default();
        let mut stderr = Vec::new();
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdOut { message }) => {
                    outcome.stdout_bytes += message.len() as u64;
                    if out.send(message).await.is_err() {
                        outcome.consumer_gone = true;
                        break;
                    }
                }
                Ok(LogOutput::StdErr { message }) => {
                    keep_tail(&mut stderr, &message, STDERR_TAIL_BYTES)
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(DockerError::Engine(format!(
                        "the exec stream broke off after {} bytes: {e}",
                        outcome.stdout_bytes
                    )))
                }
            }
        }
        drop(output);
        drop(out);
        outcome.stderr = String::from_utf8_lossy(&stderr).into_owned();
        outcome.exit_code = if outcome.consumer_gone {
            // The command may still be writing into the closed stream; it ends on its own.
            None
        } else {
            self.exec_exit_code(&exec_id).await?
        };
        Ok(outcome)
    }

    /// Runs `spec` in the container feeding `input` into its stdin (closed when `input`
    /// ends); stdout is kept (bounded) and stderr's end. Stdin is written by its own task while
    /// this one keeps reading the output, so a command that prints a lot while it reads (or
    /// stops reading early, as `pg_restore --list` does) never deadlocks against its pipes.
    pub async fn exec_feed(
        &self,
        c: &ResolvedContainer,
        spec: &ExecSpec,
        mut input: mpsc::Receiver<Bytes>,
    ) -> Result<ExecOutcome, DockerError> {
        let (exec_id, started) = self.start_exec(c, spec, true).await?;
        let StartExecResults::Attached {
            mut output,
            input: mut stdin,
        } = started
        else {
            return Err(DockerError::Engine("exec started detached".into()));
        };
        // Ok(()) once all input was written and stdin closed; Err when the command stopped
        // reading first.
        let writer = tokio::spawn(async move {
            while let Some(bytes) = input.recv().await {
                if let Err(e) = stdin.write_all(&bytes).await {
                    input.close();
                    return Err(e.to_string());
                }
            }
            let _ = stdin.flush().await;
            // Half-closes the stream: the command sees the end of its stdin.
            let _ = stdin.shutdown().await;
            Ok(())
        });
        let mut outcome = ExecOutcome::default();
        let mut stderr = Vec::new();
        while let Some(frame) = output.next().await {
            match frame {
                Ok(LogOutput::StdOut { message }) => {
                    outcome.stdout_bytes += message.len() as u64;
                    keep_tail(&mut outcome.stdout, &message, CAPTURE_MAX_BYTES);
                }
                Ok(LogOutput::StdErr { message }) => {
                    keep_tail(&mut stderr, &message, STDERR_TAIL_BYTES)
                }
                Ok(_) => {}
                Err(e) => {
                    writer.abort();
                    return Err(DockerError::Engine(format!(
                        "the exec stream broke off: {e}"
                    )));
                }
            }
        }
        // The output ended: the command exited. Input it never read is not waited for.
        // A writer still blocked a moment after the command exited never gets its input read.
        let mut writer = writer;
        let written = match tokio::time::timeout(Duration::from_secs(2), &mut writer).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(e.to_string())),
            Err(_) => {
                writer.abort();
                Err("the command exited before reading all of its input".to_string())
            }
        };
        if let Err(e) = written {
            outcome.consumer_gone = true;
            keep_tail(
                &mut stderr,
                format!("\n(writing to the command's stdin failed: {e})").as_bytes(),
                STDERR_TAIL_BYTES,
            );
        }
        outcome.stderr = String::from_utf8_lossy(&stderr).into_owned();
        outcome.exit_code = self.exec_exit_code(&exec_id).await?;
        Ok(outcome)
    }

    /// Runs a short command and captures its output (stdout bounded at 4 MiB).
    pub async fn exec_capture(
        &self,
        c: &ResolvedContainer,
        spec: &ExecSpec,
    ) -> Result<ExecOutcome, DockerError> {
        let (_tx, rx) = mpsc::channel(1);
        drop(_tx);
        self.exec_feed(c, spec, rx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end() {
        let mut buf = Vec::new();
        keep_tail(&mut buf, b"hello ", 8);
        keep_tail(&mut buf, b"world", 8);
        assert_eq!(buf, b"lo world");
    }

    #[test]
    fn outcomes_describe_themselves() {
        let o = ExecOutcome {
            exit_code: Some(1),
            stderr: "a\nb\npg_dump: error: connection refused\n".into(),
            ..Default::default()
        };
        assert!(!o.succeeded());
        assert_eq!(
            o.describe(),
            "exited with code 1: a | b | pg_dump: error: connection refused"
        );
        let o = ExecOutcome {
            exit_code: Some(0),
            ..Default::default()
        };
        assert!(o.succeeded());
        assert_eq!(o.describe(), "exited with code 0");
    }
}
