//! Tests of the agent database, table family by table family.

use super::*;
use chrono::Duration as ChronoDuration;
use flotilla_shared::command::{CommandResult, ResultStatus};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use rusqlite::params;

/// A fresh state directory under the system temp dir (removed by the caller if it cares).
pub(crate) fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(flotilla_shared::ids::new_id("flotilla-agent-test"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) fn result(id: &str) -> CommandResult {
    CommandResult {
        command_id: id.into(),
        status: ResultStatus::Succeeded,
        output: Some(serde_json::json!({"pong": true})),
        error: None,
        started_at: Utc::now(),
        finished_at: Utc::now(),
    }
}

fn event(msg: &str) -> OutboxItem {
    OutboxItem::Event(AgentEvent {
        kind: EventKind::AgentStarted,
        at: Utc::now(),
        container_id: None,
        container_name: None,
        message: msg.into(),
        attributes: Default::default(),
    })
}

#[tokio::test]
async fn file_is_private_and_reopens() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(state);
    State::open(&dir).await.unwrap();
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn identity_is_never_overwritten() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    assert!(state.identity().await.unwrap().is_none());
    let id = Identity {
        agent_id: "ag_1".into(),
        name: "host".into(),
        pkcs8: vec![1, 2, 3],
        relay_public_key: "key".into(),
        relay_url: "http://127.0.0.1:1".into(),
        enrolled_at: Utc::now(),
    };
    state.save_identity(id.clone()).await.unwrap();
    let back = state.identity().await.unwrap().unwrap();
    assert_eq!(back.agent_id, "ag_1");
    assert_eq!(back.pkcs8, vec![1, 2, 3]);
    let e = state.save_identity(id).await.unwrap_err().to_string();
    assert!(e.contains("ag_1") && e.contains("refusing"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn the_identity_leaves_its_id_in_the_agent_id_file_for_the_updater() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let id = Identity {
        agent_id: "ag_1".into(),
        name: "host".into(),
        pkcs8: vec![1, 2, 3],
        relay_public_key: "key".into(),
        relay_url: "http://127.0.0.1:1".into(),
        enrolled_at: Utc::now(),
    };
    state.save_identity(id.clone()).await.unwrap();
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    // A refused second identity leaves the file alone.
    let other = Identity {
        agent_id: "ag_2".into(),
        ..id
    };
    state.save_identity(other).await.unwrap_err();
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    // An install enrolled before the file existed gets it at start.
    std::fs::remove_file(crate::agent_id::agent_id_path(&dir)).unwrap();
    assert!(state.ensure_agent_id_file("ag_1").await.unwrap());
    assert!(!state.ensure_agent_id_file("ag_1").await.unwrap());
    assert_eq!(crate::agent_id::read_agent_id(&dir).unwrap(), "ag_1");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn outbox_round_trip_and_cumulative_ack() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let seqs = state
        .append_outbox(vec![event("a"), event("b"), event("c")])
        .await
        .unwrap();
    assert_eq!(seqs.len(), 3);
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2]);
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[1].1, event_message(&items[1].1, "b"));
    let after_first = state.outbox_after(seqs[0], 10).await.unwrap();
    assert_eq!(after_first.len(), 2);
    assert_eq!(state.outbox_after(0, 1).await.unwrap().len(), 1);
    assert_eq!(state.ack_outbox(seqs[1]).await.unwrap(), 2);
    let rest = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, seqs[2]);
    // Seqs keep growing after deletes (AUTOINCREMENT), so the relay never sees one reused.
    state.ack_outbox(seqs[2]).await.unwrap();
    let next = state.append_outbox(vec![event("d")]).await.unwrap();
    assert!(next[0] > seqs[2]);
    std::fs::remove_dir_all(dir).ok();
}

fn event_message(item: &OutboxItem, expected: &str) -> OutboxItem {
    match item {
        OutboxItem::Event(e) if e.message == expected => item.clone(),
        other => panic!("unexpected item {other:?}"),
    }
}

#[tokio::test]
async fn unfinished_updates_survive_pruning_and_always_finish() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let long_ago = Utc::now() - ChronoDuration::days(10);
    for id in ["cmd_upd", "cmd_plain"] {
        state.journal_begin(id, long_ago, long_ago).await.unwrap();
    }
    state
        .save_update("cmd_upd", "health_gate", "{\"name\":\"web\"}".into())
        .await
        .unwrap();
    // The unfinished update is not "interrupted": it converges from its own journal.
    assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_plain"]);
    // Pruning keeps the command of an unfinished update.
    assert_eq!(state.prune_journal(Utc::now()).await.unwrap(), 1);
    assert!(state.journal_get("cmd_upd").await.unwrap().is_some());
    assert_eq!(state.unfinished_updates().await.unwrap().len(), 1);
    // Finishing works even when the journal row is gone, and is final.
    state
        .call(|c| Ok(c.execute("DELETE FROM journal WHERE id = 'cmd_upd'", [])?))
        .await
        .unwrap();
    state
        .finish_update(result("cmd_upd"), "{}".into())
        .await
        .unwrap();
    assert!(state.unfinished_updates().await.unwrap().is_empty());
    assert!(matches!(
        state.journal_get("cmd_upd").await.unwrap(),
        Some(JournalEntry::Done(_))
    ));
    assert_eq!(state.outbox_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn journal_round_trip() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    let exp = now + ChronoDuration::minutes(10);
    assert_eq!(
        state.journal_begin("cmd_1", now, exp).await.unwrap(),
        JournalBegin::New
    );
    assert_eq!(
        state.journal_begin("cmd_1", now, exp).await.unwrap(),
        JournalBegin::Existing(JournalEntry::Running)
    );
    assert_eq!(state.journal_running().await.unwrap(), vec!["cmd_1"]);
    let r = result("cmd_1");
    let seq = state.finish_command(r.clone()).await.unwrap();
    assert_eq!(
        state.journal_get("cmd_1").await.unwrap(),
        Some(JournalEntry::Done(Box::new(r.clone())))
    );
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items, vec![(seq, OutboxItem::Result(r))]);
    assert!(state.finish_command(result("cmd_unknown")).await.is_err());
    // The failed finish must not have left an outbox row behind.
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

fn dropped_count(item: &OutboxItem) -> Option<u64> {
    match item {
        OutboxItem::Event(e) => e
            .attributes
            .get(DROPPED_EVENTS_ATTRIBUTE)
            .map(|n| n.parse().unwrap()),
        OutboxItem::Result(_) | OutboxItem::BackupReport(_) => None,
    }
}

#[tokio::test]
async fn events_are_capped_results_never_dropped() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    state.set_max_outbox_events(5);
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    state.finish_command(result("cmd_1")).await.unwrap();
    for i in 0..8 {
        state
            .append_outbox(vec![event(&format!("e{i}"))])
            .await
            .unwrap();
    }
    let items = state.outbox_after(0, 100).await.unwrap();
    let messages: Vec<String> = items
        .iter()
        .filter_map(|(_, i)| match i {
            OutboxItem::Event(e) if dropped_count(i).is_none() => Some(e.message.clone()),
            _ => None,
        })
        .collect();
    // 4 newest events + one notice = 5 events; the result stays.
    assert_eq!(messages, vec!["e4", "e5", "e6", "e7"], "{items:?}");
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![4]);
    assert!(items
        .iter()
        .any(|(_, i)| matches!(i, OutboxItem::Result(r) if r.command_id == "cmd_1")));

    // More overflow updates the same notice instead of adding notices.
    state
        .append_outbox(vec![event("e8"), event("e9")])
        .await
        .unwrap();
    let items = state.outbox_after(0, 100).await.unwrap();
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![6], "{items:?}");
    assert_eq!(items.len(), 6, "5 events and the result: {items:?}");

    // Once the notice was acknowledged, the next overflow starts a new one.
    let last = items.last().unwrap().0;
    state.ack_outbox(last).await.unwrap();
    for i in 0..6 {
        state
            .append_outbox(vec![event(&format!("f{i}"))])
            .await
            .unwrap();
    }
    let items = state.outbox_after(0, 100).await.unwrap();
    let notices: Vec<u64> = items.iter().filter_map(|(_, i)| dropped_count(i)).collect();
    assert_eq!(notices, vec![2], "{items:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn a_queued_result_is_not_queued_twice() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    let seq = state.finish_command(result("cmd_1")).await.unwrap();
    // Still queued: the duplicate adds nothing.
    assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    // Acknowledged: a later duplicate queues it again, once.
    state.ack_outbox(seq).await.unwrap();
    assert!(state.requeue_result(result("cmd_1")).await.unwrap());
    assert!(!state.requeue_result(result("cmd_1")).await.unwrap());
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn replacing_an_item_keeps_its_place_and_updates_the_journal() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("cmd_1", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    let seq = state.finish_command(result("cmd_1")).await.unwrap();
    state.append_outbox(vec![event("after")]).await.unwrap();
    let mut small = result("cmd_1");
    small.status = ResultStatus::Failed;
    small.output = None;
    state
        .replace_outbox_item(seq, OutboxItem::Result(small.clone()))
        .await
        .unwrap();
    let items = state.outbox_after(0, 10).await.unwrap();
    assert_eq!(items[0], (seq, OutboxItem::Result(small.clone())));
    assert_eq!(items.len(), 2);
    assert_eq!(
        state.journal_get("cmd_1").await.unwrap(),
        Some(JournalEntry::Done(Box::new(small)))
    );
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn events_cursor_is_stored_with_the_events() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    assert_eq!(state.events_cursor().await.unwrap(), None);
    let cursor = EventCursor {
        time_nano: 1_700_000_000_000_000_123,
        keys: vec!["abc/die".into()],
    };
    state
        .append_events(vec![event("died")], cursor.clone())
        .await
        .unwrap();
    drop(state);
    let state = State::open(&dir).await.unwrap();
    assert_eq!(state.events_cursor().await.unwrap(), Some(cursor));
    assert_eq!(state.outbox_len().await.unwrap(), 1);
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn migration_marks_existing_outbox_rows() {
    // A version-1 database with a queued result and event.
    let dir = temp_dir();
    {
        let mut conn = Connection::open(dir.join(DB_FILE)).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        for item in [OutboxItem::Result(result("cmd_old")), event("old")] {
            tx.execute(
                "INSERT INTO outbox (item) VALUES (?1)",
                params![serde_json::to_string(&item).unwrap()],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let state = State::open(&dir).await.unwrap();
    assert!(!state.requeue_result(result("cmd_old")).await.unwrap());
    state.set_max_outbox_events(1);
    state.append_outbox(vec![event("new")]).await.unwrap();
    let items = state.outbox_after(0, 10).await.unwrap();
    // The old event went, the result stayed, and the notice took the one event place.
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(&items[0].1, OutboxItem::Result(r) if r.command_id == "cmd_old"));
    assert_eq!(dropped_count(&items[1].1), Some(2));
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test]
async fn prune_drops_only_long_expired_entries() {
    let dir = temp_dir();
    let state = State::open(&dir).await.unwrap();
    let now = Utc::now();
    state
        .journal_begin("old", now, now - ChronoDuration::hours(25))
        .await
        .unwrap();
    state
        .journal_begin("recent", now, now - ChronoDuration::hours(23))
        .await
        .unwrap();
    state
        .journal_begin("live", now, now + ChronoDuration::minutes(5))
        .await
        .unwrap();
    assert_eq!(state.prune_journal(now).await.unwrap(), 1);
    assert!(state.journal_get("old").await.unwrap().is_none());
    assert!(state.journal_get("recent").await.unwrap().is_some());
    assert!(state.journal_get("live").await.unwrap().is_some());
    std::fs::remove_dir_all(dir).ok();
}

// === schema downgrades (a reverted or rolled-back self-update) ===

/// What a newer release's extra migration looks like: a table of its own and an outbox column.
const NEXT: ExtraMigration = ExtraMigration {
    up: "CREATE TABLE next_probe (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
         ALTER TABLE outbox ADD COLUMN next_origin TEXT;
         CREATE INDEX outbox_next_origin ON outbox (next_origin);",
    down: "DROP INDEX outbox_next_origin;
           ALTER TABLE outbox DROP COLUMN next_origin;
           DROP TABLE next_probe;",
};

fn user_version(dir: &Path) -> i64 {
    Connection::open(dir.join(DB_FILE))
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

/// The schema as the code sees it: every table's columns (name, type, not null, default, key)
/// and every index's columns, in name order; SQLite's stored CREATE text is left out (ALTER
/// TABLE edits it in place, so equal schemas can differ in whitespace).
fn schema(c: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    let mut objects = c
        .prepare(
            "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'
             ORDER BY type, name",
        )
        .unwrap();
    let objects: Vec<(String, String, String)> = objects
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for (kind, name, table) in objects {
        let columns: Vec<String> = if kind == "table" {
            let mut s = c
                .prepare(&format!("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{name}')"))
                .unwrap();
            s.query_map([], |r| {
                Ok(format!(
                    "{} {} {} {:?} {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?
                ))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
        } else {
            let mut s = c
                .prepare(&format!("SELECT name FROM pragma_index_info('{name}')"))
                .unwrap();
            s.query_map([], |r| r.get::<_, Option<String>>(0))
                .unwrap()
                .map(|n| n.unwrap().unwrap_or_default())
                .collect()
        };
        out.push(format!("{kind} {name} on {table}: {}", columns.join(", ")));
    }
    out
}

fn all_migrations(extra: &[ExtraMigration]) -> Vec<(&'static str, Option<&'static str>)> {
    MIGRATIONS
        .iter()
        .enumerate()
        .map(|(i, up)| (*up, downgrade_of(i as i64 + 1)))
        .chain(extra.iter().map(|m| (m.up, Some(m.down))))
        .collect()
}

/// Migrating to N and back to N - 1 gives exactly the schema of N - 1, for `migrations[..n]`.
fn assert_undo_restores(migrations: &[(&str, Option<&str>)], n: usize) {
    let mut before = Connection::open_in_memory().unwrap();
    migrate(&mut before, &migrations[..n - 1]).unwrap();
    let mut c = Connection::open_in_memory().unwrap();
    migrate(&mut c, &migrations[..n]).unwrap();
    let migrated = schema(&c);
    migrate(&mut c, &migrations[..n - 1]).unwrap();
    let version: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, n as i64 - 1);
    assert_ne!(migrated, schema(&before), "migration {n} changes nothing");
    assert_eq!(
        schema(&c),
        schema(&before),
        "the undo script of migration {n} does not restore the schema of {}",
        n - 1
    );
}

#[test]
fn every_downgrade_restores_the_previous_schema() {
    // Every migration an older binary may have to undo carries its undo script...
    for v in DOWNGRADES_FROM + 1..=MIGRATIONS.len() as i64 {
        assert!(
            downgrade_of(v).is_some(),
            "migration {v} has no undo script in DOWNGRADES: a reverted self-update could not \
             open the database"
        );
    }
    for (v, _) in DOWNGRADES {
        assert!(
            *v > DOWNGRADES_FROM && *v <= MIGRATIONS.len() as i64,
            "stray undo script {v}"
        );
    }
    // ...that restores the schema before it, exactly (checked on the next release's too).
    let migrations = all_migrations(&[NEXT]);
    for n in DOWNGRADES_FROM as usize + 1..=migrations.len() {
        assert_undo_restores(&migrations, n);
    }
}

#[tokio::test]
async fn a_newer_schema_without_undo_scripts_is_refused_naming_the_versions() {
    let dir = temp_dir();
    State::open(&dir).await.unwrap();
    let known = MIGRATIONS.len() as i64;
    {
        // What an agent from before the undo scripts (or a damaged file) leaves: a newer
        // version and nothing to undo it with.
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        c.pragma_update(None, "user_version", known + 2).unwrap();
    }
    let err = format!("{:#}", State::open(&dir).await.unwrap_err());
    assert!(
        err.contains(&format!(
            "schema version {} is newer than this agent understands ({known})",
            known + 2
        )) && err.contains(&format!("[{}, {}]", known + 2, known + 1)),
        "{err}"
    );
    assert_eq!(user_version(&dir), known + 2, "the file is left alone");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_older_agent_undoes_a_newer_migration_and_keeps_the_outbox() {
    let dir = temp_dir();
    let known = MIGRATIONS.len() as i64;
    // The current build runs first and queues a result it could not send yet.
    let old = State::open(&dir).await.unwrap();
    let before = old
        .append_outbox(vec![OutboxItem::Result(result("c_before"))])
        .await
        .unwrap();
    drop(old);
    // The next release migrates the file, queues events and a result, writes its own table,
    // and the relay acknowledges nothing.
    let newer = State::open_blocking_with(&dir, &[NEXT]).unwrap();
    assert_eq!(user_version(&dir), known + 1);
    let queued = newer
        .append_outbox(vec![
            event("queued by the newer build"),
            OutboxItem::Result(result("c_newer")),
        ])
        .await
        .unwrap();
    newer
        .call(|c| {
            c.execute("INSERT INTO next_probe (note) VALUES ('x')", [])?;
            c.execute("UPDATE outbox SET next_origin = 'newer'", [])?;
            Ok(())
        })
        .await
        .unwrap();
    drop(newer);

    // Reverted: the current build opens it again, undoes the migration, keeps every row.
    let back = State::open(&dir).await.unwrap();
    assert_eq!(user_version(&dir), known);
    let fresh_dir = temp_dir();
    State::open(&fresh_dir).await.unwrap();
    let fresh = Connection::open(fresh_dir.join(DB_FILE)).unwrap();
    let reverted = Connection::open(dir.join(DB_FILE)).unwrap();
    assert_eq!(
        schema(&reverted),
        schema(&fresh),
        "exactly this build's schema again"
    );
    let stored: i64 = reverted
        .query_row("SELECT COUNT(*) FROM schema_downgrades", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, DOWNGRADES.len() as i64, "the undone script is gone");
    let items = back.outbox_after(0, 100).await.unwrap();
    let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        [before.clone(), queued.clone()].concat(),
        "same items, same seqs"
    );
    assert_eq!(
        event_message(&items[1].1, "queued by the newer build"),
        items[1].1
    );
    assert!(matches!(&items[2].1, OutboxItem::Result(r) if r.command_id == "c_newer"));
    // The result queued by the newer build is still the one pending for its command (no second
    // copy with another seq), and new items come after every seq the newer build used.
    assert!(!back.requeue_result(result("c_newer")).await.unwrap());
    let next = back
        .append_outbox(vec![event("after the revert")])
        .await
        .unwrap();
    assert!(next[0] > *queued.last().unwrap());
    back.ack_outbox(next[0]).await.unwrap();
    assert_eq!(back.outbox_len().await.unwrap(), 0);
    drop(back);

    // Upgrading again migrates forward again.
    State::open_blocking_with(&dir, &[NEXT]).unwrap();
    assert_eq!(user_version(&dir), known + 1);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&fresh_dir).unwrap();
}

#[tokio::test]
async fn a_failing_undo_script_leaves_the_file_as_it_was() {
    let dir = temp_dir();
    let known = MIGRATIONS.len() as i64;
    let broken = ExtraMigration {
        up: NEXT.up,
        // Drops the outbox column first, then fails: the whole undo must roll back.
        down: "DROP INDEX outbox_next_origin;
               ALTER TABLE outbox DROP COLUMN next_origin;
               DROP TABLE no_such_table;",
    };
    let newer = State::open_blocking_with(&dir, &[broken]).unwrap();
    newer.append_outbox(vec![event("kept")]).await.unwrap();
    drop(newer);
    let err = format!("{:#}", State::open(&dir).await.unwrap_err());
    assert!(
        err.contains(&format!("cannot undo schema version {}", known + 1))
            && err.contains("no_such_table"),
        "{err}"
    );
    assert_eq!(user_version(&dir), known + 1);
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    let (rows, origin): (i64, Option<String>) = c
        .query_row("SELECT COUNT(*), MAX(next_origin) FROM outbox", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (rows, origin),
        (1, None),
        "the column and the row are still there"
    );
    drop(c);
    // The newer build still opens it as its own.
    State::open_blocking_with(&dir, &[broken]).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
