//! `flotilla-agent`: enroll this host with a relay, or run the agent.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use flotilla_agent::config::{AgentConfig, DEFAULT_STATE_DIR};
use flotilla_agent::enroll::{enroll_with, EnrollOptions, EnrollTrust};
use flotilla_shared::selector::parse_labels;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// Read when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "/etc/flotilla/agent.toml";

#[derive(Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla fleet agent")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Enroll this host with a relay using a one-time token; prints the agent id.
    Enroll {
        /// Relay base URL, e.g. https://relay.example.com
        #[arg(long = "relay", env = "FLOTILLA_RELAY_URL")]
        relay_url: String,
        /// Enrollment token from `flotilla token create`.
        #[arg(long, env = "FLOTILLA_ENROLL_TOKEN", hide_env_values = true)]
        token: String,
        /// Directory for the agent's state (identity, journal, outbox).
        #[arg(long, env = "FLOTILLA_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Display name (default: the hostname).
        #[arg(long)]
        name: Option<String>,
        /// Labels to ask for, `k=v,k2=v2` (the token's labels win on conflict).
        #[arg(long, default_value = "")]
        labels: String,
        /// The relay key fingerprint to expect, `SHA256:...` (printed by `flotilla-relay` at
        /// start, shown by its /healthz). Enrollment fails, storing nothing, on any other key.
        #[arg(long, env = "FLOTILLA_RELAY_FINGERPRINT")]
        relay_fingerprint: Option<String>,
        /// PEM file of CA certificates trusted for an https:// relay instead of the system's.
        #[arg(long, env = "FLOTILLA_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Allow plain http:// to a relay that is not on this host (the token and the relay's
        /// key then travel unprotected).
        #[arg(
            long = "allow-insecure",
            env = "FLOTILLA_ALLOW_INSECURE_WS",
            action = clap::ArgAction::SetTrue,
            value_parser = clap::builder::BoolishValueParser::new()
        )]
        allow_insecure: bool,
    },
    /// Run the agent.
    Run {
        /// Directory holding the enrolled state (overrides agent.toml and FLOTILLA_STATE_DIR).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// agent.toml (default: /etc/flotilla/agent.toml if it exists).
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() {
    init_logging();
    let cli = Cli::parse();
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
    if let Err(e) = runtime.block_on(real_main(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn real_main(cli: Cli) -> Result<()> {
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
        Cmd::Run { state_dir, config } => {
            let path = config.or_else(|| {
                Path::new(DEFAULT_CONFIG)
                    .exists()
                    .then(|| PathBuf::from(DEFAULT_CONFIG))
            });
            let mut config = AgentConfig::load(path.as_deref())?;
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            flotilla_agent::run(config, shutdown).await
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
