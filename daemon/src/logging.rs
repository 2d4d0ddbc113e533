//! Logging of both binaries (`flotilla-agent` and `flotilla-relay`): `tracing` events go to
//! stderr always (under systemd that is the journal) and, when a log directory is configured,
//! also to daily rotating files there.
//!
//! Design:
//! - One format for both outputs: `text` (tracing's human-readable lines) or `json` (one JSON
//!   object per line: `timestamp`, `level`, `fields`, `target`, spans).
//! - Files come from tracing-appender's rolling appender: `<program>.<YYYY-MM-DD>.log` (UTC
//!   dates), a new file each day, the oldest deleted so that at most `keep_files` remain
//!   (checked at start and at every rotation). Writing goes through tracing-appender's
//!   non-blocking writer: a worker thread does the file I/O, so a slow disk never stalls the
//!   runtime; the returned [`LogGuard`] flushes it when dropped, so callers keep it alive for
//!   the whole process and drop it before exiting.
//! - The log directory defaults to systemd's `LOGS_DIRECTORY` (set by `LogsDirectory=`), else
//!   there are no files. A directory that cannot be used is reported on stderr and the process
//!   carries on with stderr alone: losing the files must not stop an agent from being managed.
//! - `FLOTILLA_LOG` is the level filter (`EnvFilter` syntax, default `info`).
//! - Secrets (tokens, passwords, keys) are never passed to `tracing` in the first place; the
//!   end-to-end test `e2e::secrets` greps the logs of a run for the secrets it used.

use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable holding the level filter.
pub const LEVEL_ENV: &str = "FLOTILLA_LOG";

/// Log files kept when nothing else is configured (two weeks of daily files).
pub const DEFAULT_KEEP_FILES: usize = 14;

/// Largest `log_keep_files` accepted.
pub const MAX_KEEP_FILES: usize = 3650;

/// Suffix of the log files' names.
pub const FILE_SUFFIX: &str = "log";

/// The environment variable systemd's `LogsDirectory=` sets to the absolute log directory
/// (several, separated by `:`, when the unit names several).
pub const SYSTEMD_LOGS_DIRECTORY_ENV: &str = "LOGS_DIRECTORY";

/// How log lines are written, to stderr and to the files alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// tracing's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling used in config files and `FLOTILLA_LOG_FORMAT`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "invalid log_format {:?}: expected \"text\" or \"json\"",
                s.trim()
            )),
        }
    }
}

/// Parsed through [`FromStr`] so the error names the setting and the accepted values.
impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The first directory of systemd's `LOGS_DIRECTORY`, read through `get` (the process
/// environment in production); `None` when unset or empty.
pub fn systemd_logs_directory(get: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    get(SYSTEMD_LOGS_DIRECTORY_ENV)?
        .split(':')
        .map(str::trim)
        .find(|d| !d.is_empty())
        .map(PathBuf::from)
}

flotilla_shared::message_error!(
    /// A `log_keep_files` outside what rotation accepts.
    pub InvalidKeepFiles
);

/// Checks a `log_keep_files` value; the error says what is accepted.
pub fn check_keep_files(n: usize) -> Result<(), InvalidKeepFiles> {
    check_keep_files_message(n).map_err(InvalidKeepFiles)
}

fn check_keep_files_message(n: usize) -> Result<(), String> {
    if (1..=MAX_KEEP_FILES).contains(&n) {
        Ok(())
    } else {
        Err(format!("expected 1 to {MAX_KEEP_FILES} files"))
    }
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct LogOptions<'a> {
    /// Start of the files' names: `flotilla-agent`, `flotilla-relay`.
    pub program: &'a str,
    /// Directory of the rotating files; `None`: stderr only.
    pub dir: Option<&'a Path>,
    /// Format of stderr and files.
    pub format: LogFormat,
    /// Files kept in `dir` (this program's; others are left alone).
    pub keep_files: usize,
}

/// Keeps the file writer's worker alive; dropping it flushes the lines still queued. Hold it
/// for the whole process and drop it before `std::process::exit` (which runs no destructors).
#[must_use = "dropping the guard stops file logging"]
pub struct LogGuard {
    _worker: Option<tracing_appender::non_blocking::WorkerGuard>,
}

impl LogGuard {
    /// Whether lines also go to files.
    pub fn has_files(&self) -> bool {
        self._worker.is_some()
    }
}

/// The level filter from `FLOTILLA_LOG`, `info` when unset or unparsable.
fn level_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env(LEVEL_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Opens the rotating appender in `dir`, wrapped in the non-blocking writer.
fn file_writer(
    opts: &LogOptions<'_>,
    dir: &Path,
) -> Result<
    (
        tracing_appender::non_blocking::NonBlocking,
        tracing_appender::non_blocking::WorkerGuard,
    ),
    String,
> {
    check_keep_files(opts.keep_files).map_err(|e| format!("invalid log_keep_files: {e}"))?;
    // Created here so a failure is reported once, as ours (the appender would also print its
    // own line from its pruning).
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory: {e}"))?;
    let appender = tracing_appender::rolling::RollingFileAppender::builder()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(opts.program)
        .filename_suffix(FILE_SUFFIX)
        .max_log_files(opts.keep_files)
        .build(dir)
        .map_err(|e| e.to_string())?;
    Ok(tracing_appender::non_blocking(appender))
}

/// Installs the global subscriber: stderr always, plus the rotating files when `opts.dir` is
/// set and usable (if not, one error line on stderr says why and logging continues on stderr).
/// Does nothing when a subscriber is already installed (tests, `dev`).
pub fn init(opts: &LogOptions<'_>) -> LogGuard {
    let (file, worker, file_error) = match opts.dir {
        Some(dir) => match file_writer(opts, dir) {
            Ok((w, g)) => (Some(w), Some(g), None),
            Err(e) => (None, None, Some(format!("{}: {e}", dir.display()))),
        },
        None => (None, None, None),
    };
    // One fmt layer whose writer is stderr, or stderr and the files (`and` formats each line
    // once and writes it to both): one copy of the formatting code per format, and colours
    // only on a terminal and only when no file shares the line.
    let ansi = file.is_none() && std::io::stderr().is_terminal();
    let writer = match file {
        Some(file) => BoxMakeWriter::new(std::io::stderr.and(file)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let registry = tracing_subscriber::registry().with(level_filter());
    let installed = match opts.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init(),
    };
    if installed.is_ok() {
        if let Some(e) = file_error {
            tracing::error!(error = %e, "cannot write log files; logging to stderr only");
        }
    }
    LogGuard { _worker: worker }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settings_tables_state_the_keep_files_range_as_checked() {
        // Both daemons' tables write this message by hand beside their `check`.
        assert_eq!(check_keep_files(0).unwrap_err(), "expected 1 to 3650 files");
        assert_eq!(
            check_keep_files(MAX_KEEP_FILES + 1).unwrap_err(),
            "expected 1 to 3650 files"
        );
    }

    #[test]
    fn format_parses_and_names_bad_values() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!(" JSON ".parse::<LogFormat>().unwrap(), LogFormat::Json);
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("log_format") && e.contains("xml"), "{e}");
    }

    #[test]
    fn systemd_directory_is_the_first_entry() {
        let get = |v: &'static str| move |k: &str| (k == "LOGS_DIRECTORY").then(|| v.to_string());
        assert_eq!(
            systemd_logs_directory(get("/var/log/flotilla:/var/log/other")),
            Some(PathBuf::from("/var/log/flotilla"))
        );
        assert_eq!(systemd_logs_directory(get("")), None);
        assert_eq!(systemd_logs_directory(|_| None), None);
    }

    #[test]
    fn files_are_daily_named_and_pruned_to_keep_files() {
        let dir = tempfile::tempdir().unwrap();
        for day in 1..=5 {
            let name = format!("flotilla-test.2020-01-0{day}.log");
            std::fs::write(dir.path().join(name), "old\n").unwrap();
        }
        std::fs::write(dir.path().join("other.log"), "not ours\n").unwrap();
        let opts = LogOptions {
            program: "flotilla-test",
            dir: Some(dir.path()),
            format: LogFormat::Json,
            keep_files: 3,
        };
        let (mut writer, guard) = file_writer(&opts, dir.path()).unwrap();
        std::io::Write::write_all(&mut writer, b"{\"fields\":{}}\n").unwrap();
        drop(guard); // flushes
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let today = format!(
            "flotilla-test.{}.log",
            chrono::Utc::now().format("%Y-%m-%d")
        );
        // tracing-appender deletes the oldest by creation time (equal here, so which of the
        // old ones survive is not checked): this program's files are down to `keep_files`,
        // today's among them, and other files are left alone.
        let ours = names.iter().filter(|n| n.starts_with("flotilla-test."));
        assert_eq!(ours.count(), 3, "{names:?}");
        assert!(names.contains(&today), "{names:?}");
        assert!(names.contains(&"other.log".to_string()), "{names:?}");
        let text = std::fs::read_to_string(dir.path().join(today)).unwrap();
        assert_eq!(text, "{\"fields\":{}}\n");
    }

    #[test]
    fn keep_files_bounds() {
        assert!(check_keep_files(0).is_err());
        assert!(check_keep_files(1).is_ok());
        assert!(check_keep_files(DEFAULT_KEEP_FILES).is_ok());
        assert!(check_keep_files(MAX_KEEP_FILES + 1).is_err());
    }
}
