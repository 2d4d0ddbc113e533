//! restore-bench: the "server is gone" restore figure BENCHMARKS.md reports (issue 17 §3),
//! measured on a real PostgreSQL server in a container, moto's S3 server and the real agent
//! binary.
//!
//! It seeds a database of about SIZE MiB of pg_dump output, backs it up with
//! `flotilla-agent backup run` (age-encrypted, copied to S3), throws that agent's state
//! directory away, and restores the backup with a second state directory that has only the
//! destination settings: `flotilla-agent backup restore <id> --offsite --identity <key>
//! --into <new empty container>`, the off-site download, checksum, decryption, decompression
//! and pg_restore included, sampling the process's RSS every 20 ms. The restored row count is
//! compared with the seeded one.
//!
//! Usage: `cargo build --release -p flotilla-agent && cargo build -p flotilla-tests --bin
//! restore-bench && target/debug/restore-bench [SIZE_MIB]` (default 1024). The agent binary is
//! `target/release/flotilla-agent` unless `FLOTILLA_AGENT_BIN` names another. Needs moto
//! (`pip install 'moto[server]'`) and age-keygen.

use anyhow::{bail, Context, Result};
use flotilla_tests::fixtures::{self, start_s3, DbContainer, DbEngine};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-password";

/// Runs `flotilla-agent backup <args>`, returning (seconds, peak RSS KiB, stdout).
fn run_agent(bin: &Path, state: &Path, config: &Path, args: &[&str]) -> Result<(f64, u64, String)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("backup")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start flotilla-agent")?;
    let pid = child.id();
    let mut peak = 0;
    // stdout is small (one JSON document); read it after the exit.
    loop {
        if let Ok(rss) = flotilla_tests::procfs::rss_kib(pid) {
            peak = peak.max(rss);
        }
        if child.try_wait()?.is_some() {
            break;
        }
        flotilla_testkit::hold_blocking(Duration::from_millis(20), "the RSS sampling interval");
    }
    let secs = started.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "flotilla-agent backup {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        secs,
        peak,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn main() -> Result<()> {
    let size_mib: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("SIZE_MIB must be a number")?
        .unwrap_or(1024);
    let bin = std::env::var_os("FLOTILLA_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| fixtures::workspace_root().join("target/release/flotilla-agent"));
    if !bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p flotilla-agent",
            bin.display()
        );
    }
    fixtures::docker_available()?;
    let work = tempfile::Builder::new()
        .prefix("restore-bench-")
        .tempdir()?;
    let identity = work.path().join("backup-key.txt");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()?;
    if !out.status.success() {
        bail!("age-keygen failed");
    }
    let recipient = std::fs::read_to_string(&identity)?
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .context("age-keygen wrote no public key")?
        .to_string();
    let s3 = start_s3()?;
    s3.create_bucket("backups")?;
    std::fs::write(work.path().join("key-id"), "testing\n")?;
    std::fs::write(work.path().join("secret"), "testing\n")?;
    let destination = format!(
        "[[backup.destinations]]\nname = \"offsite\"\ntype = \"s3\"\nendpoint = \"{}\"\n\
         region = \"us-east-1\"\nbucket = \"backups\"\nprefix = \"fleet\"\n\
         access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\npath_style = true\n\
         allow_http = true\n",
        s3.endpoint(),
        work.path().join("key-id").display(),
        work.path().join("secret").display(),
    );

    let name = fixtures::unique_name("restore-bench");
    eprintln!("starting PostgreSQL ({name})");
    let db = DbContainer::start(
        DbEngine::Postgres,
        &name,
        &[],
        &[("POSTGRES_PASSWORD", PASSWORD)],
    )?;
    // About 190 bytes of dump output per row, as in backup-bench.
    let rows = size_mib * 1024 * 1024 / 190;
    eprintln!("seeding {rows} rows (about {size_mib} MiB of dump output)");
    db.psql("postgres", "CREATE DATABASE bench")?;
    db.psql(
        "bench",
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, a text, b text);
             INSERT INTO big SELECT i, md5(i::text), repeat(md5((i * 7)::text), 4)
             FROM generate_series(1, {rows}) i;"
        ),
    )?;

    // Server A backs up (age-encrypted, copied to S3).
    let state_a = work.path().join("state-a");
    std::fs::create_dir_all(&state_a)?;
    let config_a = work.path().join("agent-a.toml");
    std::fs::write(
        &config_a,
        format!(
            "[backup]\nenabled = false\ndiscover = false\nage_recipients = [\"{recipient}\"]\n\
             {destination}[[backup.jobs]]\nname = \"bench\"\ncontainer = \"{name}\"\n\
             databases = [\"bench\"]\n"
        ),
    )?;
    let (backup_secs, backup_peak, _) = run_agent(&bin, &state_a, &config_a, &["run", "bench"])?;
    let (_, _, listed) = run_agent(
        &bin,
        &state_a,
        &config_a,
        &["list", "--json", "--job", "bench", "--database", "bench"],
    )?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let m = &listed["backups"][0];
    let id = m["id"].as_str().context("no backup listed")?.to_string();
    let (raw, stored) = (
        m["bytes"].as_u64().unwrap_or(0),
        m["compressed_bytes"].as_u64().unwrap_or(0),
    );
    println!(
        "backup {id}: dump output {:.0} MiB, stored (zstd + age) {:.0} MiB, backup run {backup_secs:.1} s \
         (peak RSS {:.1} MiB)",
        raw as f64 / 1048576.0,
        stored as f64 / 1048576.0,
        backup_peak as f64 / 1024.0
    );

    // Server A is gone; a new state directory with only the destination, a new container.
    drop(db);
    std::fs::remove_dir_all(&state_a)?;
    let fresh_name = fixtures::unique_name("restore-bench-new");
    let fresh = DbContainer::start(
        DbEngine::Postgres,
        &fresh_name,
        &[],
        &[("POSTGRES_PASSWORD", PASSWORD)],
    )?;
    let state_b = work.path().join("state-b");
    std::fs::create_dir_all(&state_b)?;
    let config_b = work.path().join("agent-b.toml");
    std::fs::write(
        &config_b,
        format!("[backup]\nenabled = false\ndiscover = false\n{destination}"),
    )?;
    let identity_arg = identity.display().to_string();
    let (secs, peak, _) = run_agent(
        &bin,
        &state_b,
        &config_b,
        &[
            "restore",
            &id,
            "--offsite",
            "--identity",
            &identity_arg,
            "--into",
            &fresh_name,
            "--json",
        ],
    )?;
    let count: u64 = fresh
        .psql("bench", "SELECT count(*) FROM big")?
        .trim()
        .parse()?;
    if count != rows {
        bail!("restored {count} rows, seeded {rows}");
    }
    println!(
        "restore from the off-site copy (download, checksum, age, zstd, pg_restore): {secs:.1} s \
         ({:.0} MiB/s of dump output), peak RSS {:.1} MiB; {count} rows restored",
        raw as f64 / 1048576.0 / secs,
        peak as f64 / 1024.0
    );
    drop(fresh);
    Ok(())
}
