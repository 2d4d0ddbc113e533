//! relay-backup-bench: the relay self-backup figure of BENCHMARKS.md. It makes a relay.db
//! with the real schema (a `flotilla-relay serve` started and stopped on a temp data dir),
//! fills it with AGENTS enrolled agents and DAYS days of history — the agents' metrics
//! history as the heartbeat flusher keeps it (5-minute points for 24 h and hourly points for
//! the whole period), one fleet-wide command a day with a delivery and result per agent, two
//! events per agent per day, and audit rows — then times `flotilla-relay backup run`,
//! `backup verify` and `restore` onto a fresh data dir, and prints the sizes.
//!
//! Usage: `cargo build -p flotilla-relay -p flotilla-tests --bin relay-backup-bench &&
//! target/debug/relay-backup-bench [AGENTS] [DAYS]` (defaults 10000 and 30). The relay binary
//! is the one beside this bench unless `FLOTILLA_RELAY_BIN` names another.

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(i: usize, default: u64, what: &str) -> Result<u64> {
    std::env::args()
        .nth(i)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| format!("{what} must be a number"))
        .map(|v| v.unwrap_or(default))
}

fn relay_bin() -> PathBuf {
    std::env::var_os("FLOTILLA_RELAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| flotilla_tests::harness::bin("flotilla-relay"))
}

/// Runs `flotilla-relay <args>`; its stdout and how long it took.
fn relay(args: &[&str]) -> Result<(String, f64)> {
    let started = Instant::now();
    let out = Command::new(relay_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run flotilla-relay")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "flotilla-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), secs))
}

/// Starts and stops a relay on `dir`, so relay.db has the real schema and relay.key exists.
fn create_schema(dir: &Path) -> Result<()> {
    let mut child = Command::new(relay_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start flotilla-relay serve")?;
    let started = flotilla_testkit::Poller::new(Duration::from_secs(60))
        .poll_blocking(|| dir.join("listen-addr").exists().then_some(()));
    if started.is_none() {
        let _ = child.kill();
        bail!("the relay did not start within 60 s");
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

fn fill(db: &Path, agents: u64, days: i64) -> Result<()> {
    let mut conn = Connection::open(db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let now = chrono::Utc::now();
    let ts =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let heartbeat = serde_json::json!({
        "cpu_percent": 12.5, "memory_used_bytes": 1_200_000_000u64,
        "memory_total_bytes": 4_000_000_000u64,
        "filesystems": [{"mount": "/", "used_bytes": 20_000_000_000u64, "total_bytes": 80_000_000_000u64}],
        "containers": (0..8).map(|i| serde_json::json!({
            "id": format!("{i:064x}"), "name": format!("app-{i}"), "image": "registry.example/app:1.4.2",
            "state": "running", "health": "healthy", "restart_count": 0
        })).collect::<Vec<_>>()
    })
    .to_string();
    let facts = r#"{"hostname":"tenant","os":"Debian GNU/Linux 12","kernel":"6.1.0","arch":"x86_64","cpus":2,"docker_version":"24.0.5"}"#;
    {
        let mut agent = tx.prepare(
            "INSERT INTO agents (id, name, public_key, labels, facts, enrolled_at, agent_version, \
             last_heartbeat, last_heartbeat_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, '0.1.0', ?7, ?8)",
        )?;
        let mut metric = tx.prepare(
            "INSERT INTO agent_metrics (agent_id, resolution, bucket, cpu, memory, disk, samples) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut event = tx.prepare(
            "INSERT INTO events (agent_id, seq, received_at, kind, event) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let enrolled = ts(now - chrono::Duration::days(days));
        let fine_end = now.timestamp() / 300;
        let coarse_end = now.timestamp() / 3600;
        for a in 0..agents {
            let id = format!("agt_{a:020}");
            agent.execute(params![
                id,
                format!("tenant-{a:05}"),
                format!("{:044}", a),
                r#"{"env":"prod","tier":"tenant"}"#,
                facts,
                enrolled,
                heartbeat,
                ts(now)
            ])?;
            let load = (a % 97) as f64;
            for b in (fine_end - 288)..fine_end {
                metric.execute(params![id, 300, b, load, 30.0 + load / 10.0, 25.0, 5])?;
            }
            for b in (coarse_end - days * 24)..coarse_end {
                metric.execute(params![id, 3600, b, load, 30.0 + load / 10.0, 25.0, 60])?;
            }
            for d in 0..days * 2 {
                let at = now - chrono::Duration::hours(12 * d);
                let body = format!(
                    r#"{{"kind":"container.restarted","at":"{}","container":"app-{}","attributes":{{"image":"registry.example/app:1.4.2"}}}}"#,
                    ts(at),
                    d % 8
                );
                event.execute(params![id, d, ts(at), "container.restarted", body])?;
            }
        }
        let mut command = tx.prepare(
            "INSERT INTO commands (id, kind, command, envelope, signature, audience, created_at, \
             expires_at, created_by) VALUES (?1, 'container.list', ?2, ?3, ?4, ?5, ?6, ?7, 'admin')",
        )?;
        let mut delivery = tx.prepare(
            "INSERT INTO deliveries (command_id, agent_id, position, state, result, updated_at) \
             VALUES (?1, ?2, ?3, 'succeeded', ?4, ?5)",
        )?;
        let mut audit = tx.prepare(
            "INSERT INTO audit (ts, actor, action, target, outcome, detail) \
             VALUES (?1, 'admin', ?2, ?3, 'ok', ?4)",
        )?;
        for d in 0..days {
            let at = now - chrono::Duration::days(d);
            let id = format!("cmd_{d:020}");
            command.execute(params![
                id,
                r#"{"kind":"container.list","args":{"all":true}}"#,
                "e".repeat(400),
                "s".repeat(88),
                r#"{"selector":"env=prod"}"#,
                ts(at),
                ts(at + chrono::Duration::minutes(10))
            ])?;
            for a in 0..agents {
                delivery.execute(params![
                    id,
                    format!("agt_{a:020}"),
                    a,
                    r#"{"ok":true,"output":{"containers":8},"duration_ms":41}"#,
                    ts(at)
                ])?;
            }
            for i in 0..200 {
                audit.execute(params![
                    ts(at + chrono::Duration::seconds(i)),
                    "command.create",
                    id,
                    r#"{"via":"api"}"#
                ])?;
            }
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<()> {
    let agents = arg(1, 10_000, "AGENTS")?;
    let days = arg(2, 30, "DAYS")? as i64;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("relay");
    std::fs::create_dir(&dir)?;
    create_schema(&dir)?;
    let started = Instant::now();
    fill(&dir.join("relay.db"), agents, days)?;
    let db_size = std::fs::metadata(dir.join("relay.db"))?.len();
    println!(
        "relay.db: {agents} agents, {days} days of history: {:.1} MiB (filled in {:.0} s)",
        mib(db_size),
        started.elapsed().as_secs_f64()
    );
    let d = dir.to_str().context("utf-8 path")?;
    let (out, backup_secs) = relay(&["backup", "run", "--data-dir", d])?;
    let name = out
        .split_whitespace()
        .find(|w| w.starts_with("relay-"))
        .context("backup name")?
        .to_string();
    let snapshot = dir.join("backups").join(format!("{name}.sqlite.zst"));
    let size = std::fs::metadata(&snapshot)?.len();
    let (_, verify_secs) = relay(&["backup", "verify", &name, "--data-dir", d])?;
    let fresh = work.path().join("fresh");
    let manifest = dir.join("backups").join(format!("{name}.json"));
    let (_, restore_secs) = relay(&[
        "restore",
        manifest.to_str().context("utf-8 path")?,
        "--data-dir",
        fresh.to_str().context("utf-8 path")?,
    ])?;
    println!(
        "backup run: {backup_secs:.1} s, {:.1} MiB ({:.1} % of relay.db)",
        mib(size),
        100.0 * size as f64 / db_size as f64
    );
    println!(
        "backup verify: {verify_secs:.1} s; restore onto a fresh data dir: {restore_secs:.1} s"
    );
    Ok(())
}
