//! `flotilla release publish|list|broken|unbroken` (agent builds on the relay, see
//! `crate::releases`) and `flotilla agent upgrade` (`agent.upgrade` to one agent).
//!
//! `publish` streams the file (never read whole into memory), after checking what it can
//! locally: the version's form, the size cap, and that the file is an ELF executable for the
//! architecture given (or, without `--arch`, the one its header names). The SHA-256 computed
//! while uploading must equal the one the relay recorded.

use super::client::{decode, ApiClient, CliError};
use super::render::{self, Table};
use super::run::{print_value, send_to_agent};
use super::Outcome;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use flotilla_shared::duration::{format_duration, parse_duration};
use flotilla_shared::release::{canonical_arch, elf_arch, UpgradeRequest, ELF_HEAD, LATEST};
use flotilla_shared::release::{
    validate_version, MarkBrokenRequest, ReleaseInfo, MAX_RELEASE_BYTES,
};
use futures_util::StreamExt;
use serde::Serialize;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an upload may take in all.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Upload an agent build; the relay stores it and signs its manifest (version, arch, size,
    /// sha256) with its key. Publishing the same bytes again is harmless; different bytes for a
    /// published version are refused.
    #[command(disable_version_flag = true)]
    Publish {
        /// The flotilla-agent binary.
        #[arg(long)]
        file: PathBuf,
        /// Its release version (`MAJOR.MINOR.PATCH[-pre][+build]`).
        #[arg(long)]
        version: String,
        /// x86_64 or aarch64 (amd64/arm64 accepted). Default: what the binary's ELF header says.
        #[arg(long)]
        arch: Option<String>,
    },
    /// Published builds, newest version first.
    List,
    /// Mark a build broken: it is never sent to an agent again, `latest` skips it and
    /// downloads of it answer 410.
    #[command(disable_version_flag = true)]
    Broken {
        version: String,
        #[arg(long)]
        arch: String,
        /// Why (shown in `release list`).
        #[arg(long)]
        reason: String,
    },
    /// Clear a build's broken mark.
    #[command(disable_version_flag = true)]
    Unbroken {
        version: String,
        #[arg(long)]
        arch: String,
    },
}

/// `flotilla agent upgrade`: an `agent.upgrade` to one agent.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The agent.
    pub id: String,
    /// A published version, or `latest` (the highest not marked broken for the agent's
    /// architecture).
    #[arg(long)]
    pub version: String,
    /// Allow a version that is not newer than the agent's (a downgrade or reinstall).
    #[arg(long)]
    pub rollback: bool,
    /// Wait for the outcome (the new version reached the relay, or the updater reverted it)
    /// and exit 0 only if the upgrade succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub wait_timeout: Duration,
    /// How long the relay keeps trying to deliver it (default: the relay's default TTL).
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
}

/// The file's size and architecture, checked before anything is sent.
pub fn check_file(
    file: &std::path::Path,
    arch: Option<&str>,
) -> Result<(u64, &'static str), CliError> {
    let usage = |m: String| CliError::Usage(m);
    let mut f = std::fs::File::open(file)
        .map_err(|e| usage(format!("cannot open {}: {e}", file.display())))?;
    let len = f
        .metadata()
        .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?
        .len();
    if len == 0 || len > MAX_RELEASE_BYTES {
        return Err(usage(format!(
            "{} is {len} bytes; a build must be 1 to {MAX_RELEASE_BYTES} bytes (64 MiB)",
            file.display()
        )));
    }
    let mut head = [0u8; ELF_HEAD];
    let n = f
        .read(&mut head)
        .map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
    let found = elf_arch(&head[..n])
        .map_err(|why| usage(format!("{} is not an agent build: {why}", file.display())))?;
    match arch {
        None => Ok((len, found)),
        Some(a) => {
            let wanted = canonical_arch(a).map_err(|e| usage(e.into()))?;
            if wanted != found {
                return Err(usage(format!(
                    "{} is built for {found}, not {wanted}",
                    file.display()
                )));
            }
            Ok((len, wanted))
        }
    }
}

pub async fn release(
    client: &ApiClient,
    cmd: &ReleaseCommand,
    json: bool,
    addr: &str,
) -> Result<Outcome, CliError> {
    let now = Utc::now();
    match cmd {
        ReleaseCommand::Publish {
            file,
            version,
            arch,
        } => {
            validate_version(version).map_err(|e| CliError::Usage(e.into()))?;
            let (len, arch) = check_file(file, arch.as_deref())?;
            let f = tokio::fs::File::open(file)
                .await
                .map_err(|e| CliError::Usage(format!("cannot open {}: {e}", file.display())))?;
            let sha = Arc::new(Mutex::new(ring::digest::Context::new(
                &ring::digest::SHA256,
            )));
            let hasher = sha.clone();
            let stream =
                tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
                    if let Ok(c) = chunk {
                        hasher.lock().unwrap_or_else(|p| p.into_inner()).update(c);
                    }
                });
            let value = client
                .put_body(
                    &["api", "v1", "releases", version, arch],
                    reqwest::Body::wrap_stream(stream),
                    len,
                    UPLOAD_TIMEOUT,
                )
                .await?;
            let info: ReleaseInfo = decode(&value, "release")?;
            let local = {
                let ctx = sha.lock().unwrap_or_else(|p| p.into_inner()).clone();
                hex::encode(ctx.finish().as_ref())
            };
            if local != info.sha256 {
                return Ok(Outcome::Failed(format!(
                    "the relay recorded sha256 {} for {version}/{arch}, but {} hashes to {local} \
                     (already published with other bytes?)",
                    info.sha256,
                    file.display()
                )));
            }
            print_value(&value, json, || published(&info, addr, now));
        }
        ReleaseCommand::List => {
            let value = client.get(&["api", "v1", "releases"], &[]).await?;
            let list: Vec<ReleaseInfo> = decode(&value, "releases")?;
            print_value(&value, json, || releases_table(&list, now));
        }
        ReleaseCommand::Broken {
            version,
            arch,
            reason,
        } => {
            let body = MarkBrokenRequest {
                reason: reason.clone(),
            };
            let value = client
                .post(
                    &["api", "v1", "releases", version, arch, "broken"],
                    &[],
                    &body,
                    Duration::ZERO,
                )
                .await?;
            let info: ReleaseInfo = decode(&value, "release")?;
            print_value(&value, json, || {
                format!(
                    "flotilla-agent {} for {} is marked broken: it is not sent to agents again\n",
                    info.version, info.arch
                )
            });
        }
        ReleaseCommand::Unbroken { version, arch } => {
            let value = client
                .delete(&["api", "v1", "releases", version, arch, "broken"])
                .await?;
            let info: ReleaseInfo = decode(&value, "release")?;
            print_value(&value, json, || {
                format!(
                    "flotilla-agent {} for {} is no longer marked broken\n",
                    info.version, info.arch
                )
            });
        }
    }
    Ok(Outcome::Success)
}

fn published(info: &ReleaseInfo, addr: &str, now: DateTime<Utc>) -> String {
    format!(
        "flotilla-agent {} for {}: {} ({} bytes), sha256 {}\n  published {} by {}{}\n  \
         download: {}/download/agent/{}/{}\n",
        info.version,
        info.arch,
        render::bytes(info.size),
        info.size,
        info.sha256,
        render::ago(info.created_at, now),
        info.published_by,
        info.broken
            .as_ref()
            .map(|b| format!(" (marked broken: {})", b.reason))
            .unwrap_or_default(),
        addr.trim_end_matches('/'),
        info.version,
        info.arch
    )
}

/// `flotilla release list`: VERSION ARCH SIZE SHA256 PUBLISHED BROKEN.
pub fn releases_table(list: &[ReleaseInfo], now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return "no agent builds published (flotilla release publish --file ... --version ...)\n"
            .into();
    }
    let mut t = Table::new(&["VERSION", "ARCH", "SIZE", "SHA256", "PUBLISHED", "BROKEN"]);
    for r in list {
        t.row(vec![
            r.version.clone(),
            r.arch.clone(),
            render::bytes(r.size),
            r.sha256.chars().take(12).collect(),
            format!("{} by {}", render::ago(r.created_at, now), r.published_by),
            match &r.broken {
                None => "-".into(),
                Some(b) => format!("{} (by {}, {})", b.reason, b.by, render::ago(b.at, now)),
            },
        ]);
    }
    t.render()
}

#[derive(Serialize)]
struct UpgradeBody<'a> {
    kind: &'static str,
    args: &'a UpgradeRequest,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_secs: Option<u64>,
}

pub async fn upgrade(
    client: &ApiClient,
    args: &UpgradeArgs,
    json: bool,
) -> Result<Outcome, CliError> {
    if args.version != LATEST {
        validate_version(&args.version).map_err(|e| CliError::Usage(e.into()))?;
    }
    let req = UpgradeRequest {
        version: args.version.clone(),
        rollback: args.rollback,
    };
    let body = UpgradeBody {
        kind: "agent.upgrade",
        args: &req,
        ttl_secs: args.ttl.map(|d| d.as_secs()),
    };
    if args.wait && !json {
        eprintln!(
            "agent.upgrade to {} sent to agent {}; waiting up to {} for the new version to \
             reach the relay",
            args.version,
            args.id,
            format_duration(args.wait_timeout)
        );
    }
    send_to_agent(client, &args.id, &body, args.wait, args.wait_timeout, json).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentCommand, Cli, CliCommand};
    use clap::Parser;
    use flotilla_shared::release::BrokenInfo;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn release_and_upgrade_flags_parse() {
        match parse(&[
            "release",
            "publish",
            "--file",
            "/tmp/a",
            "--version",
            "0.2.0",
            "--arch",
            "amd64",
        ])
        .command
        {
            CliCommand::Release(ReleaseCommand::Publish {
                file,
                version,
                arch,
            }) => {
                assert_eq!(file, PathBuf::from("/tmp/a"));
                assert_eq!(version, "0.2.0");
                assert_eq!(arch.as_deref(), Some("amd64"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "release", "broken", "0.3.0", "--arch", "x86_64", "--reason", "crashes",
        ])
        .command
        {
            CliCommand::Release(ReleaseCommand::Broken {
                version, reason, ..
            }) => {
                assert_eq!((version.as_str(), reason.as_str()), ("0.3.0", "crashes"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "agent",
            "upgrade",
            "ag_1",
            "--version",
            "0.1.0",
            "--rollback",
            "--wait",
        ])
        .command
        {
            CliCommand::Agent(AgentCommand::Upgrade(a)) => {
                assert_eq!(a.id, "ag_1");
                assert!(a.rollback && a.wait);
                assert_eq!(a.wait_timeout, Duration::from_secs(300));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["flotilla", "agent", "upgrade", "ag_1"]).is_err());
    }

    #[test]
    fn local_checks_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\necho flotilla-agent 0.3.0\n").unwrap();
        let e = check_file(&script, Some("x86_64")).unwrap_err().to_string();
        assert!(e.contains("not an agent build") && e.contains("ELF"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(check_file(&empty, None)
            .unwrap_err()
            .to_string()
            .contains("0 bytes"));
        let me = std::env::current_exe().unwrap();
        let this = flotilla_shared::release::this_arch();
        let len = std::fs::metadata(&me).unwrap().len();
        if len <= MAX_RELEASE_BYTES {
            assert_eq!(check_file(&me, None).unwrap(), (len, this));
            let other = if this == "x86_64" {
                "aarch64"
            } else {
                "x86_64"
            };
            let e = check_file(&me, Some(other)).unwrap_err().to_string();
            assert!(e.contains(&format!("built for {this}, not {other}")), "{e}");
        }
        assert!(check_file(&dir.path().join("missing"), None)
            .unwrap_err()
            .to_string()
            .contains("cannot open"));
    }

    #[test]
    fn list_shows_short_hashes_and_broken_marks() {
        let now = Utc::now();
        let list = vec![
            ReleaseInfo {
                version: "0.3.0".into(),
                arch: "x86_64".into(),
                size: 12 * 1024 * 1024,
                sha256: "0123456789abcdef".repeat(4),
                created_at: now - chrono::Duration::minutes(5),
                published_by: "admin".into(),
                broken: Some(BrokenInfo {
                    at: now,
                    reason: "the upgrade of agent ag_1 was reverted".into(),
                    by: "ag_1".into(),
                }),
            },
            ReleaseInfo {
                version: "0.2.0".into(),
                arch: "aarch64".into(),
                size: 100,
                sha256: "f".repeat(64),
                created_at: now - chrono::Duration::hours(2),
                published_by: "ci".into(),
                broken: None,
            },
        ];
        let text = releases_table(&list, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VERSION  ARCH"), "{text}");
        assert!(
            lines[1].contains("0123456789ab ") && lines[1].contains("12.0 MiB"),
            "{text}"
        );
        assert!(lines[1].contains("reverted (by ag_1"), "{text}");
        assert!(
            lines[2].contains("2h ago by ci") && lines[2].trim_end().ends_with('-'),
            "{text}"
        );
        assert!(releases_table(&[], now).contains("no agent builds"));
    }
}
