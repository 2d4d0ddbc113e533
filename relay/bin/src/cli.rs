//! The command line of `flotilla-relay`: its clap definitions, apart from `main.rs` so that the
//! docs example (`examples/flotilla-relay-docs.rs`) renders the shell completions and man pages
//! from the same definitions.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flotilla-relay",
    version = flotilla_shared::release::version(),
    about = "Flotilla relay: agent hub and dashboard API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the dashboard API and the agent websocket.
    Serve(ServeArgs),
    /// Serve plus one in-process agent against the local Docker engine, for trying Flotilla.
    Dev(DevArgs),
    /// Move a single SQLite relay's state into an empty PostgreSQL database.
    Migrate(MigrateArgs),
    /// Back up the relay's own database (settings: `[backup]` in relay.toml).
    Backup(BackupArgs),
    /// Restore a relay backup onto a fresh data dir (SQLite) or an empty database (PostgreSQL).
    Restore(RestoreArgs),
}

/// Where the relay keeps its state: the same options as `serve`.
#[derive(Args, Clone)]
pub struct StateArgs {
    /// Data directory (env FLOTILLA_DATA_DIR; default ./relay-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// relay.toml to read (env FLOTILLA_CONFIG).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// PostgreSQL database URL instead of the SQLite file (env FLOTILLA_DATABASE_URL).
    #[arg(long = "database", value_name = "URL")]
    pub database_url: Option<String>,
}

#[derive(Args)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(Subcommand)]
pub enum BackupAction {
    /// Back up now (safe beside a running relay: the snapshot is online).
    Run(StateArgs),
    /// List the local backups and those at every destination.
    List(StateArgs),
    /// Check a backup's checksums and that its snapshot opens (default: the newest local one).
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Backup name (relay-YYYYMMDDTHHMMSSZ) or the path of its .json manifest.
    pub backup: Option<String>,
    /// age identity file, to check an encrypted backup opens.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// Backup name (relay-YYYYMMDDTHHMMSSZ, local or at a destination) or the path of its
    /// .json manifest.
    pub backup: String,
    /// Replace a relay database or key that is already there (stop that relay first).
    #[arg(long)]
    pub force: bool,
    /// age identity file, for an encrypted backup.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (env FLOTILLA_LISTEN; default 127.0.0.1:8700).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Args)]
pub struct DevArgs {
    /// Address to listen on (default 127.0.0.1:8700).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./flotilla-dev).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// The SQLite relay's data directory (holding relay.db); it is only read.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The PostgreSQL database to fill (it must be empty).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// File whose first line is the database password (env FLOTILLA_DATABASE_PASSWORD_FILE).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}
