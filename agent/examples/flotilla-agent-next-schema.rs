//! A test build that plays "the next release, which adds an agent migration and is broken":
//! the end-to-end test of a self-update revert across a schema migration
//! (`tests/tests/e2e/install/schema.rs`) publishes it, stamped with a newer version.
//!
//! - `--version` prints `flotilla-agent <stamped version>`, like the real binary (the upgrading
//!   agent's smoke test and the updater's version rule pass);
//! - `run --state-dir DIR` opens `DIR/agent.db` with this crate's migrations plus
//!   [`NEXT_MIGRATION`] (so the file is migrated to a version the installed agent does not know,
//!   and the undo script is stored as every real migration's is), queues one event whose message
//!   starts with [`QUEUED_MESSAGE`] in the outbox (what a release produces before it dies and
//!   the relay has not acknowledged), and exits 1 — at every start, so the updater sees a crash
//!   loop and reverts.
//!
//! An example, not a binary: `cargo build --workspace --bins` and the release build leave it
//! out; scripts/test builds it (`cargo build -p flotilla-agent --example
//! flotilla-agent-next-schema`). It links the agent library as it is, so it costs one link.

use flotilla_agent::state::{ExtraMigration, State};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use std::path::PathBuf;
use std::process::ExitCode;

/// The migration this build adds: a table of its own and a column on the outbox (the hardest
/// case for an older binary, whose queries name the outbox's columns).
const NEXT_MIGRATION: ExtraMigration = ExtraMigration {
    up: "CREATE TABLE next_schema_probe (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
         ALTER TABLE outbox ADD COLUMN next_schema_origin TEXT;",
    down: "ALTER TABLE outbox DROP COLUMN next_schema_origin;
           DROP TABLE next_schema_probe;",
};

/// How the queued event's message starts (the test looks for it on the relay).
const QUEUED_MESSAGE: &str = "queued by the next-schema build";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("flotilla-agent {}", flotilla_shared::release::version());
        return ExitCode::SUCCESS;
    }
    let state_dir = match (args.first().map(String::as_str), state_dir_arg(&args)) {
        (Some("run"), Some(dir)) => dir,
        _ => {
            eprintln!("usage: flotilla-agent-next-schema run --state-dir DIR | --version");
            return ExitCode::from(2);
        }
    };
    match queue_and_crash(state_dir) {
        Ok(seq) => eprintln!(
            "next-schema build {}: migrated agent.db, queued outbox item {seq}; exiting 1 as \
             a broken release would",
            flotilla_shared::release::version()
        ),
        Err(e) => eprintln!("next-schema build: {e:#}"),
    }
    ExitCode::FAILURE
}

/// The value of `--state-dir DIR` or `--state-dir=DIR`.
fn state_dir_arg(args: &[String]) -> Option<PathBuf> {
    args.iter()
        .enumerate()
        .find_map(|(i, a)| match a.strip_prefix("--state-dir") {
            Some("") => args.get(i + 1).map(PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(PathBuf::from),
            None => None,
        })
}

fn queue_and_crash(state_dir: PathBuf) -> anyhow::Result<u64> {
    let state = State::open_blocking_with(&state_dir, &[NEXT_MIGRATION])?;
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let event = AgentEvent {
        kind: EventKind::AgentStarted,
        at: chrono::Utc::now(),
        container_id: None,
        container_name: None,
        message: format!(
            "{QUEUED_MESSAGE} {} (pid {})",
            flotilla_shared::release::version(),
            std::process::id()
        ),
        attributes: Default::default(),
    };
    let seqs = runtime.block_on(state.append_outbox(vec![OutboxItem::Event(event)]))?;
    Ok(seqs.first().copied().unwrap_or_default())
}
