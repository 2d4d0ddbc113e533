//! `flotilla-relay`: parses the command line, builds the configuration, runs the relay until
//! Ctrl-C or SIGTERM. This binary crate is the one place that links the relay server and the
//! agent together (`dev`, a relay plus an in-process agent); the server library does not
//! depend on the agent.

mod cli;
mod dev;

use anyhow::Context;
use clap::Parser;
use cli::{BackupAction, Cli, Command, StateArgs};
use flotilla_relay_server::config::{Overrides, RelayConfig};
use flotilla_relay_server::selfbackup;
use std::io::IsTerminal;
use std::path::PathBuf;

/// stderr always (the journal under systemd), plus the daily files of `log_dir` when set.
fn init_logging(config: &RelayConfig) -> flotilla_daemon::logging::LogGuard {
    flotilla_daemon::logging::init(&flotilla_daemon::logging::LogOptions {
        program: "flotilla-relay",
        dir: config.log_dir.as_deref(),
        format: config.log_format,
        keep_files: config.log_keep_files,
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

fn load_config(flags: Overrides) -> anyhow::Result<RelayConfig> {
    let env = Overrides::from_env(&|k| std::env::var(k).ok())?;
    Ok(RelayConfig::load(flags.over(env))?)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The configuration comes first: it holds the log settings. Its errors are printed to
    // stderr before logging exists, like every other fatal error.
    let result = match config_for(&cli.command) {
        Ok(config) => {
            let _log_guard = init_logging(&config);
            run(cli.command, config).await
            // `_log_guard` drops here: the files are flushed before the process exits.
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what was wrong, with its causes; no backtrace for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn state_overrides(args: &StateArgs) -> Overrides {
    Overrides {
        data_dir: args.data_dir.clone(),
        config: args.config.clone(),
        database_url: args.database_url.clone(),
        ..Overrides::default()
    }
}

/// The configuration of `command`: its flags over the environment over the config file.
fn config_for(command: &Command) -> anyhow::Result<RelayConfig> {
    match command {
        Command::Backup(b) => load_config(state_overrides(match &b.action {
            BackupAction::Run(s) | BackupAction::List(s) => s,
            BackupAction::Verify(v) => &v.state,
        })),
        Command::Restore(r) => load_config(state_overrides(&r.state)),
        Command::Serve(args) => load_config(Overrides {
            listen: args.listen,
            ..state_overrides(&args.state)
        }),
        Command::Dev(args) => load_config(Overrides {
            listen: args.listen,
            data_dir: Some(
                args.data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("./flotilla-dev")),
            ),
            ..Overrides::default()
        }),
        // Logging and the password file only: the source and target are the flags.
        Command::Migrate(args) => load_config(Overrides {
            data_dir: Some(args.from.clone()),
            database_password_file: args.password_file.clone(),
            ..Overrides::default()
        }),
    }
}

async fn run(command: Command, config: RelayConfig) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => {
            let data_dir = config.data_dir.clone();
            let relay = flotilla_relay_server::start(config)
                .await
                .context("cannot start the relay")?;
            println!("flotilla-relay listening on {}", relay.base_url());
            println!("dashboard: {}/ui/", relay.base_url());
            println!("relay key fingerprint: {}", relay.fingerprint());
            if let Some(token) = relay.admin_token_created() {
                let path = data_dir.join(flotilla_relay_server::embed::ADMIN_TOKEN_FILE);
                // Shown on a terminal only: under systemd (or any redirect) stdout ends up in a
                // log, and secrets are never logged.
                if std::io::stdout().is_terminal() {
                    println!(
                        "admin token (shown once; also saved to {}): {token}",
                        path.display()
                    );
                } else {
                    println!("admin token created and saved to {}", path.display());
                }
            }
            let token = relay.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                token.cancel();
            });
            relay.wait().await.context("relay failed")?;
        }
        Command::Dev(_) => {
            dev::run(config, shutdown_signal()).await?;
        }
        Command::Migrate(args) => {
            let report = flotilla_relay_server::migrate::migrate(
                &args.from,
                &args.to,
                config.database_password_file.as_deref(),
            )
            .await
            .context("migration failed")?;
            for (table, rows) in &report.tables {
                println!("{table:>24}  {rows} rows");
            }
            println!(
                "migrated {} rows from {} into {}",
                report.total_rows(),
                args.from
                    .join(flotilla_relay_server::embed::DB_FILE)
                    .display(),
                flotilla_relay_server::embed::redact_database_url(&args.to)
            );
            println!(
                "next: start each relay with --database and a copy of {} (agents keep their enrollment)",
                args.from.join("relay.key").display()
            );
        }
        Command::Backup(b) => backup(b.action, &config).await?,
        Command::Restore(r) => {
            let options = selfbackup::RestoreOptions {
                force: r.force,
                identity: r.identity,
            };
            println!(
                "{}",
                selfbackup::restore(&config, &r.backup, &options).await?
            );
        }
    }
    Ok(())
}

/// `flotilla-relay backup run|list|verify`.
async fn backup(action: BackupAction, config: &RelayConfig) -> anyhow::Result<()> {
    match action {
        BackupAction::Run(_) => {
            let m = selfbackup::run_cli(config).await?;
            println!(
                "backup {} done: {} ({} bytes, sha256 {})",
                m.name, m.file, m.size, m.sha256
            );
        }
        BackupAction::List(_) => {
            let listed = selfbackup::list(config).await?;
            if listed.is_empty() {
                println!("no relay backups");
            }
            for l in listed {
                let size = l.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                let detail = l
                    .manifest
                    .map(|m| format!("{} schema {} {}", m.backend, m.schema_version, m.created_at))
                    .unwrap_or_default();
                println!("{}\t{}\t{size}\t{detail}", l.name, l.place);
            }
        }
        BackupAction::Verify(v) => {
            let name = match v.backup {
                Some(n) => n,
                None => selfbackup::newest_local(config).await?,
            };
            println!(
                "{}",
                selfbackup::verify(config, &name, v.identity.as_deref()).await?
            );
        }
    }
    Ok(())
}
