//! `flotilla-agent`: enroll this host with a relay, or run the agent.

mod cli;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{BackupAction, Cli, Cmd, SelfUpdateAction};
use flotilla_agent::config::AgentConfig;
use flotilla_agent::enroll::{enroll_with, EnrollOptions, EnrollTrust};
use flotilla_shared::selector::parse_labels;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Read when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "/etc/flotilla/agent.toml";

fn main() {
    let cli = Cli::parse();
    // `run` reads its config first, for the log settings; an error there is printed to stderr
    // before logging exists, like every other fatal error.
    let run_config = match &cli.command {
        Cmd::Run { state_dir, config } => match load_config(state_dir.clone(), config.clone()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let log_guard = init_logging(run_config.as_ref());
    // One thread: the agent is mostly idle and should stay small (idle RSS target < 10 MiB);
    // blocking work goes to the blocking pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(real_main(cli, run_config));
    drop(runtime);
    // Flushes the log files (`exit` runs no destructors).
    drop(log_guard);
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// stderr always (the journal under systemd); `run` also writes the daily files of its
/// `log_dir`, in its `log_format`. The one-shot commands (`enroll`, `backup`) log to stderr
/// only: they are run by hand, often as another user than the service, whose files they must
/// not create.
fn init_logging(run_config: Option<&AgentConfig>) -> flotilla_daemon::logging::LogGuard {
    use flotilla_daemon::logging::{init, LogOptions, DEFAULT_KEEP_FILES};
    init(&match run_config {
        Some(c) => LogOptions {
            program: "flotilla-agent",
            dir: c.log_dir.as_deref(),
            format: c.log_format,
            keep_files: c.log_keep_files,
        },
        None => LogOptions {
            program: "flotilla-agent",
            dir: None,
            format: std::env::var("FLOTILLA_LOG_FORMAT")
                .ok()
                .and_then(|f| f.parse().ok())
                .unwrap_or_default(),
            keep_files: DEFAULT_KEEP_FILES,
        },
    })
}

async fn real_main(cli: Cli, run_config: Option<AgentConfig>) -> Result<()> {
    match cli.command {
        Cmd::Enroll {
            relay_url,
            token,
            state_dir,
            name,
            labels,
            relay_fingerprint,
            ca_file,
            allow_insecure,
        } => {
            let labels = parse_labels(&labels).context("invalid --labels")?;
            let enrolled = enroll_with(
                EnrollOptions {
                    relay_url,
                    token,
                    state_dir,
                    name,
                    labels,
                },
                EnrollTrust {
                    allow_insecure,
                    relay_fingerprint: relay_fingerprint.filter(|f| !f.trim().is_empty()),
                    ca_file: ca_file.filter(|p| !p.as_os_str().is_empty()),
                },
            )
            .await?;
            println!("{}", enrolled.agent_id);
            Ok(())
        }
        Cmd::Backup {
            state_dir,
            config,
            json,
            action,
        } => backup_command(state_dir, config, json, action).await,
        Cmd::SelfUpdate {
            action:
                SelfUpdateAction::Apply {
                    state_dir,
                    deadline_secs,
                    binary,
                    relay_key_file,
                    service,
                    updater_dir,
                },
        } => {
            use flotilla_agent::upgrade::updater::{apply, installed_binary, ApplyOptions};
            // Resolved before anything is swapped.
            let binary = installed_binary(binary.as_deref())?;
            let opts = ApplyOptions {
                state_dir,
                deadline: std::time::Duration::from_secs(deadline_secs),
                binary,
                relay_key_file,
                service,
                updater_dir,
                poll: std::time::Duration::from_secs(1),
                systemctl: PathBuf::from("systemctl"),
            };
            let outcomes = tokio::task::spawn_blocking(move || apply(&opts))
                .await
                .context("the updater task failed")??;
            for o in outcomes {
                tracing::info!(outcome = ?o, "self-update finished");
            }
            Ok(())
        }
        Cmd::Run { state_dir, config } => {
            let config = match run_config {
                Some(c) => c,
                None => load_config(state_dir, config)?,
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            flotilla_agent::run(config, shutdown).await
        }
    }
}

fn load_config(state_dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<AgentConfig> {
    let path = config.or_else(|| {
        Path::new(DEFAULT_CONFIG)
            .exists()
            .then(|| PathBuf::from(DEFAULT_CONFIG))
    });
    let mut config = AgentConfig::load(path.as_deref())?;
    if let Some(dir) = state_dir {
        config.state_dir = dir;
    }
    Ok(config)
}

/// `flotilla-agent backup ...`: the same operations as the relay's `backup.*` commands, run
/// here against the agent's state directory (the running agent sends the reports of runs
/// made here to the relay with its own).
async fn backup_command(
    state_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
    action: BackupAction,
) -> Result<()> {
    use flotilla_agent::backup::Backups;
    use flotilla_agent::docker::{DockerClient, Visibility};
    use flotilla_shared::backup::{BackupListArgs, BackupRestoreArgs, RunTrigger};
    let config = load_config(state_dir, config)?;
    config.validate()?;
    let state = flotilla_agent::state::State::open(&config.state_dir).await?;
    let (agent_id, name) = match state.identity().await? {
        Some(i) => (i.agent_id, i.name),
        None => {
            let host = flotilla_agent::heartbeat::host_facts().0;
            (host.clone(), host)
        }
    };
    let docker = DockerClient::new(
        config.docker_host.clone(),
        Visibility::new(config.only_label_pair()),
    );
    let backups = Backups::new(
        config.backup.clone(),
        docker,
        state,
        &config.state_dir,
        &agent_id,
        &name,
    )?;
    backups.prepare(false).await?;
    let fail =
        |e: flotilla_shared::command::ErrorInfo| anyhow::anyhow!("{} ({})", e.message, e.code);
    let print = |v: &dyn erased::Json| v.print(json);
    match action {
        BackupAction::List {
            job,
            database,
            limit,
            offsite,
            destination,
            source_agent,
        } => {
            let args = BackupListArgs {
                job,
                database,
                limit: Some(limit),
                offsite,
                destination,
                source_agent,
            };
            let out = if offsite {
                backups.list_offsite(&args).await
            } else {
                backups.list(&args).await
            }
            .map_err(fail)?;
            print(&out);
        }
        BackupAction::Run { job } => {
            let reports = backups
                .run(job.as_deref(), RunTrigger::Local)
                .await
                .map_err(fail)?;
            let failed: usize = reports.iter().map(|r| r.failed()).sum();
            let remote_failed = reports.iter().any(|r| {
                r.remote_sync
                    .as_ref()
                    .is_some_and(|s| s.status == flotilla_shared::backup::BackupStatus::Failed)
            });
            print(&flotilla_shared::backup::BackupRunOutput { reports });
            if failed > 0 || remote_failed {
                anyhow::bail!(
                    "{failed} database backup(s) failed (remote copy failed: {remote_failed})"
                );
            }
        }
        BackupAction::Verify { id } => {
            let out = backups.verify(&id).await.map_err(fail)?;
            let ok = out.ok;
            print(&out);
            if !ok {
                anyhow::bail!("backup {id} failed verification");
            }
        }
        BackupAction::Restore {
            id,
            into,
            database,
            force,
            offsite,
            destination,
            source_agent,
            identity,
        } => {
            let args = BackupRestoreArgs {
                id,
                into,
                database,
                force,
                offsite,
                destination,
                source_agent,
                identity_file: identity.map(|p| p.display().to_string()),
            };
            let (manifest, target) = backups.restore_target(&args).await.map_err(fail)?;
            let out = backups
                .restore(&args, manifest, target)
                .await
                .map_err(fail)?;
            print(&out);
        }
        BackupAction::Forget { job } => {
            let out = backups
                .forget(&job, flotilla_agent::backup::ForgetReason::Operator)
                .await
                .map_err(fail)?;
            print(&out);
        }
    }
    Ok(())
}

/// Printing of the backup outputs, as JSON or as a few lines of text.
mod erased {
    use flotilla_shared::backup::*;

    pub trait Json {
        fn print(&self, json: bool);
    }

    fn size(bytes: u64) -> String {
        if bytes >= 1 << 20 {
            format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
        } else {
            format!("{:.1} KiB", bytes as f64 / 1024.0)
        }
    }

    fn print_json<T: serde::Serialize>(v: &T) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }

    impl Json for BackupListOutput {
        fn print(&self, json: bool) {
            if json {
                return print_json(self);
            }
            for b in &self.backups {
                println!(
                    "{}  {}  {}/{}  {}  {}  {}",
                    b.id,
                    b.finished_at.format("%Y-%m-%d %H:%M:%S"),
                    b.job,
                    b.database,
                    b.status.as_str(),
                    size(b.compressed_bytes),
                    b.error.as_deref().unwrap_or(&b.file)
                );
            }
            for b in &self.offsite {
                let m = &b.manifest;
                println!(
                    "{}  {}  {}  {}/{}  {}  {}{}  {}",
                    m.id,
                    m.finished_at.format("%Y-%m-%d %H:%M:%S"),
                    b.source_agent,
                    m.job,
                    m.database,
                    m.status.as_str(),
                    size(m.compressed_bytes),
                    if m.encrypted { " (age)" } else { "" },
                    b.destination
                );
            }
            for e in &self.offsite_errors {
                println!("warning: {e}");
            }
            if self.truncated {
                println!("(more backups; raise --limit)");
            }
        }
    }

    impl Json for BackupRunOutput {
        fn print(&self, json: bool) {
            if json {
                return print_json(self);
            }
            for r in &self.reports {
                println!("run {} of {}", r.run_id, r.job.as_deref().unwrap_or("?"));
                for d in &r.databases {
                    println!(
                        "  {:<40} {:<8} {}",
                        d.key,
                        d.status.as_str(),
                        d.error
                            .clone()
                            .unwrap_or_else(|| d.size_bytes.map(size).unwrap_or_default())
                    );
                }
                if let Some(s) = &r.remote_sync {
                    println!(
                        "  off-site: {} ({}){}",
                        s.status.as_str(),
                        size(s.uploaded_bytes),
                        s.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
                if r.pruned > 0 {
                    println!("  pruned {} old backup(s)", r.pruned);
                }
            }
        }
    }

    impl Json for BackupVerifyOutput {
        fn print(&self, json: bool) {
            if json {
                return print_json(self);
            }
            for c in &self.checks {
                println!(
                    "{:<15} {:<4} {}",
                    c.check,
                    if c.ok { "ok" } else { "FAIL" },
                    c.detail
                );
            }
        }
    }

    impl Json for flotilla_shared::upkeep::BackupForgetOutput {
        fn print(&self, json: bool) {
            if json {
                return print_json(self);
            }
            println!(
                "forgot backup job {} ({}); its backups stay in the catalogue",
                self.job,
                if self.keys.is_empty() {
                    "no databases reported".to_string()
                } else {
                    self.keys.join(", ")
                }
            );
        }
    }

    impl Json for BackupRestoreOutput {
        fn print(&self, json: bool) {
            if json {
                return print_json(self);
            }
            println!(
                "restored {} into database {} of container {} ({} in {} ms)",
                self.id,
                self.database,
                self.container,
                size(self.bytes),
                self.duration_ms
            );
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
