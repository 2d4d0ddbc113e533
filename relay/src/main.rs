//! `flotilla-relay`: parses the command line, builds the configuration, runs the relay until
//! Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use flotilla_relay::config::{Overrides, RelayConfig};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flotilla-relay",
    version,
    about = "Flotilla relay: agent hub and dashboard API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the dashboard API and the agent websocket.
    Serve(ServeArgs),
    /// Serve plus one in-process agent against the local Docker engine, for trying Flotilla.
    Dev(DevArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (env FLOTILLA_LISTEN; default 127.0.0.1:8700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (env FLOTILLA_DATA_DIR; default ./relay-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// relay.toml to read (env FLOTILLA_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct DevArgs {
    /// Address to listen on (default 127.0.0.1:8700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (default ./flotilla-dev).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
    init_logging();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line naming what was wrong, with its causes; no backtrace for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(Overrides {
                listen: args.listen,
                data_dir: args.data_dir,
                config: args.config,
                ..Overrides::default()
            })?;
            let data_dir = config.data_dir.clone();
            let relay = flotilla_relay::start(config)
                .await
                .context("cannot start the relay")?;
            println!("flotilla-relay listening on {}", relay.base_url());
            println!("relay key fingerprint: {}", relay.fingerprint());
            if let Some(token) = relay.admin_token_created() {
                println!(
                    "admin token (shown once; also saved to {}): {token}",
                    data_dir
                        .join(flotilla_relay::keys::ADMIN_TOKEN_FILE)
                        .display()
                );
            }
            let token = relay.shutdown_token();
            tokio::spawn(async move {
                shutdown_signal().await;
                token.cancel();
            });
            relay.wait().await.context("relay failed")?;
        }
        Command::Dev(args) => {
            let config = load_config(Overrides {
                listen: args.listen,
                data_dir: Some(
                    args.data_dir
                        .unwrap_or_else(|| PathBuf::from("./flotilla-dev")),
                ),
                ..Overrides::default()
            })?;
            flotilla_relay::dev::run(config, shutdown_signal()).await?;
        }
    }
    Ok(())
}
