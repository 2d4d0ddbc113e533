//! The command line of `flotilla-agent`: its clap definitions, apart from `main.rs` so that the
//! docs example (`examples/flotilla-agent-docs.rs`) renders the shell completions and man pages
//! from the same definitions without linking clap_complete or clap_mangen into the agent.

use clap::{Parser, Subcommand};
use flotilla_agent::config::DEFAULT_STATE_DIR;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flotilla-agent",
    version = flotilla_shared::release::version(),
    about = "Flotilla fleet agent"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
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
    /// Database backups on this host: list, run, verify and restore, without the relay.
    Backup {
        /// Directory holding the enrolled state (overrides agent.toml and FLOTILLA_STATE_DIR).
        #[arg(long, global = true)]
        state_dir: Option<PathBuf>,
        /// agent.toml (default: /etc/flotilla/agent.toml if it exists).
        #[arg(long, env = "FLOTILLA_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Print the JSON output instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: BackupAction,
    },
    /// Signed self-update: the root side (run by flotilla-agent-updater.service).
    SelfUpdate {
        #[command(subcommand)]
        action: SelfUpdateAction,
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

#[derive(Subcommand)]
pub enum SelfUpdateAction {
    /// Install the build the agent staged in <state-dir>/upgrade/request.json (verified again
    /// with the relay key root trusts), restart the agent, and put the previous binary back if
    /// the new version does not reach the relay before the deadline or crash-loops. Also
    /// finishes an upgrade a previous run left unfinished. Run as root. Exits 0 once the
    /// upgrade is confirmed, reverted or refused (see <state-dir>/upgrade/result.json), non-zero
    /// only when it could not act at all.
    Apply {
        /// The agent's state directory.
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Seconds the new version has to reach the relay.
        #[arg(long, default_value_t = flotilla_agent::upgrade::updater::DEFAULT_DEADLINE_SECS)]
        deadline_secs: u64,
        /// The installed agent binary to replace (default: this executable; the unit passes it,
        /// since it runs the updater from a known-good copy in --updater-dir).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Base64 Ed25519 public key of the relay, trusted by root (written by install.sh).
        /// When missing, every upgrade is refused (the agent's own database is not trusted).
        #[arg(long, default_value = flotilla_agent::upgrade::updater::DEFAULT_RELAY_KEY_FILE)]
        relay_key_file: PathBuf,
        /// The agent's systemd unit.
        #[arg(long, default_value = flotilla_agent::upgrade::updater::DEFAULT_SERVICE)]
        service: String,
        /// Root-only directory for the previous binary and the record of the upgrade in
        /// progress.
        #[arg(long, default_value = flotilla_agent::upgrade::updater::DEFAULT_UPDATER_DIR)]
        updater_dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum BackupAction {
    /// The backup catalogue, newest first.
    List {
        /// Only this job's backups.
        #[arg(long)]
        job: Option<String>,
        /// Only this database's backups.
        #[arg(long)]
        database: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// List the backups at the off-site destinations (every agent's, by the manifests
        /// stored beside them) instead of this host's catalogue: on a replacement server.
        #[arg(long)]
        offsite: bool,
        /// With --offsite: only this destination.
        #[arg(long, requires = "offsite")]
        destination: Option<String>,
        /// With --offsite: only the backups of this agent (its name).
        #[arg(long, requires = "offsite")]
        source_agent: Option<String>,
    },
    /// Run one job now (every job when none is named); exits 1 when any database failed.
    Run { job: Option<String> },
    /// Check a backup: checksum, decompression, end marker, the engine's own listing.
    Verify { id: String },
    /// Restore a backup into its container (or --into another one).
    Restore {
        id: String,
        /// Restore into this container instead of the backup's own.
        #[arg(long)]
        into: Option<String>,
        /// Restore into this database (created when missing).
        #[arg(long)]
        database: Option<String>,
        /// Overwrite a database that holds tables.
        #[arg(long)]
        force: bool,
        /// Restore from the off-site copy (see `backup list --offsite`): downloaded, checksum
        /// verified, then restored.
        #[arg(long)]
        offsite: bool,
        /// With --offsite: only look at this destination.
        #[arg(long, requires = "offsite")]
        destination: Option<String>,
        /// With --offsite: the agent that made the backup (when two share the id).
        #[arg(long, requires = "offsite")]
        source_agent: Option<String>,
        /// age identity file (AGE-SECRET-KEY-1...) decrypting an encrypted backup; read for
        /// this restore only.
        #[arg(long)]
        identity: Option<PathBuf>,
    },
    /// Stop expecting a backup job whose container was removed on purpose (its backups stay).
    Forget { job: String },
}
