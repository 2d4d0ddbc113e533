//! A self-update revert across a schema migration, in the booted systemd container: the next
//! release migrates agent.db to a version the installed agent does not know, queues an event
//! the relay never acknowledges, and crash-loops; the updater reverts the binary (agent.db is
//! the agent's and is left alone), and the old agent undoes the migration with the undo script
//! the newer one stored, comes back online, and delivers what the newer build queued.
//!
//! The next release is `target/debug/examples/flotilla-agent-next-schema` (the agent crate's
//! example: this crate's migrations plus one, then an outbox event and exit 1), stripped and
//! stamped 0.4.0 like every other build here.

use super::*;
use flotilla_tests::harness::bin_dir;

/// What the next-schema build's queued event says first (`QUEUED_MESSAGE` in the example).
const QUEUED_MESSAGE: &str = "queued by the next-schema build 0.4.0";

/// The next-schema build, which `cargo build --workspace --bins` does not build.
fn next_schema_source() -> PathBuf {
    let path = bin_dir()
        .join("examples")
        .join("flotilla-agent-next-schema");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p flotilla-agent --example flotilla-agent-next-schema` \
         first (scripts/test does)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverted_build_that_migrated_agent_db_leaves_a_working_agent_with_its_outbox() {
    let host = Host::start("schema").await;
    let (_, agent) = host.install_agent("0.1.0", "--name schema1").await;
    let next = blocking(|| agent_build(&next_schema_source(), "0.4.0")).unwrap();
    host.publish(&next, "0.4.0").await;
    let db = "/var/lib/flotilla/agent.db";
    let owner_before = host.sh(&format!("stat -c '%U:%G %a' {db}"));

    // The updater is killed right after the swap, as in the broken-build test: the resumed run
    // (from the known-good copy) reverts, and agent.db needs nothing from either run.
    let cmd = host.upgrade(&agent.id, "0.4.0", false).await.unwrap();
    let applied = flotilla_testkit::Poller::new(REVERT_DEADLINE).every(Duration::from_millis(200));
    loop {
        let result = host.sh("cat /var/lib/flotilla/upgrade/result.json 2>/dev/null || true");
        if result.contains("\"status\": \"applied\"") {
            break;
        }
        assert!(
            !applied.expired(),
            "the updater never applied 0.4.0: {result}"
        );
        applied.pause().await;
    }
    host.sh(&format!("systemctl kill --signal=SIGKILL {UPDATER_UNIT}"));
    host.step("updater killed after the swap");
    let done = host.api.wait_final(&cmd.id, REVERT_DEADLINE).await;
    let message = assert_error(&done, error_codes::UPGRADE_REVERTED);
    assert!(
        message.contains("crash loop: ") || message.contains("unit failed: "),
        "{message}"
    );
    let updater = blocking(|| host.container.journal(&[UPDATER_UNIT], 400));
    assert!(
        updater.contains("resuming an upgrade a previous run of the updater did not finish"),
        "{updater}"
    );
    host.step(&format!("0.4.0 reverted: {message}"));

    // The old agent is back, with the same identity: it opened the file the newer build had
    // migrated (a refusal would crash-loop it and it would never come online).
    let back = host.wait_agent("0.1.0", None).await;
    assert_eq!(back.id, agent.id);
    let journal = blocking(|| host.container.journal(&[AGENT_UNIT], 2000));
    assert!(
        journal.contains("migrated agent.db, queued outbox item"),
        "the next-schema build never ran:\n{journal}"
    );
    assert!(
        journal.contains("the database was migrated by a newer agent"),
        "the old agent did not undo the newer migration:\n{journal}"
    );
    host.step("0.1.0 back online after undoing the newer migration");

    // What the newer build queued and the relay never acknowledged reaches the relay: one
    // event per start of the newer build (each start queued one), none twice.
    let starts = journal
        .matches("migrated agent.db, queued outbox item")
        .count();
    let events = eventually(
        ONLINE_DEADLINE,
        &format!("the {starts} events queued by 0.4.0 at the relay"),
        || async {
            let events = host.api.events(&agent.id).await;
            let queued: Vec<String> = events
                .into_iter()
                .map(|e| e.event.message)
                .filter(|m| m.starts_with(QUEUED_MESSAGE))
                .collect();
            (queued.len() >= starts).then_some(queued)
        },
    )
    .await;
    let mut unique = events.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (unique.len(), events.len()),
        (starts, starts),
        "one event per start of 0.4.0, none twice: {events:?}"
    );
    host.step(&format!(
        "the {} events queued by 0.4.0 reached the relay",
        events.len()
    ));

    // The agent keeps running on the file (no crash loop), which stays the agent's, private.
    let restarts = host
        .container
        .unit_property(AGENT_UNIT, "NRestarts")
        .unwrap();
    let still = host.wait_agent("0.1.0", None).await;
    assert_eq!(still.id, agent.id);
    assert_eq!(host.unit_state(AGENT_UNIT), "active");
    assert_eq!(
        host.container
            .unit_property(AGENT_UNIT, "NRestarts")
            .unwrap(),
        restarts
    );
    assert_eq!(host.sh(&format!("stat -c '%U:%G %a' {db}")), owner_before);
}
