//! backup-bench: the backup figures BENCHMARKS.md reports, measured on a real PostgreSQL server
//! in a container and the real agent binary.
//!
//! It seeds a database of about SIZE MiB of pg_dump output, then alternates, ROUNDS times:
//! - the baseline: `docker exec <pg> pg_dump --format=custom --compress=0 | zstd -3 > file`
//!   (the shell pipeline an operator would write; same format and zstd level as the agent);
//! - the agent: `flotilla-agent backup run` (the same code path as a scheduled run: exec API →
//!   zstd → SHA-256 → file, manifest, catalogue), sampling the process's RSS every 20 ms.
//!
//! Printed: seconds and MiB/s (of dump output) for both, the agent's throughput as a share of
//! the baseline's (the agent's run also dumps the globals, a few hundred bytes), and the
//! agent's peak RSS during the dump: the whole process (runtime, SQLite, Docker client, zstd,
//! buffers), so the dump's extra memory is at most that.
//!
//! Usage: `cargo build --release -p flotilla-agent && cargo build -p flotilla-tests --bin
//! backup-bench && target/debug/backup-bench [SIZE_MIB] [ROUNDS]` (defaults 1024 and 2). The
//! agent binary is `target/release/flotilla-agent` unless `FLOTILLA_AGENT_BIN` names another.

use anyhow::{bail, Context, Result};
use flotilla_tests::fixtures::{self, DbContainer, DbEngine};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "bench-password";

fn arg(i: usize, default: u64, what: &str) -> Result<u64> {
    std::env::args()
        .nth(i)
        .map(|s| s.parse())
        .transpose()
        .with_context(|| format!("{what} must be a number"))
        .map(|v| v.unwrap_or(default))
}

/// Runs the agent binary with `args`, returning (seconds, peak RSS KiB).
fn run_agent(bin: &Path, state: &Path, config: &Path, args: &[&str]) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .arg("backup")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start flotilla-agent")?;
    let pid = child.id();
    let mut peak = 0;
    loop {
        if let Ok(rss) = flotilla_tests::procfs::rss_kib(pid) {
            peak = peak.max(rss);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err)?;
                bail!("flotilla-agent backup {args:?} failed: {err}");
            }
            break;
        }
        flotilla_testkit::hold_blocking(Duration::from_millis(20), "the RSS sampling interval");
    }
    Ok((started.elapsed().as_secs_f64(), peak))
}

fn main() -> Result<()> {
    let size_mib = arg(1, 1024, "SIZE_MIB")?;
    let rounds = arg(2, 2, "ROUNDS")?;
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
    let name = fixtures::unique_name("backup-bench");
    eprintln!("starting PostgreSQL ({name})");
    let db = DbContainer::start(
        DbEngine::Postgres,
        &name,
        &[],
        &[("POSTGRES_PASSWORD", PASSWORD)],
    )?;
    // About 190 bytes of dump output per row: an id, an md5 and four more md5s of text.
    let rows = size_mib * 1024 * 1024 / 190;
    eprintln!("seeding {rows} rows (about {size_mib} MiB of dump output)");
    let seeding = Instant::now();
    db.psql("postgres", "CREATE DATABASE bench")?;
    db.psql(
        "bench",
        &format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, a text, b text);
             INSERT INTO big SELECT i, md5(i::text), repeat(md5((i * 7)::text), 4)
             FROM generate_series(1, {rows}) i;"
        ),
    )?;
    eprintln!("seeded in {:.0} s", seeding.elapsed().as_secs_f64());

    let work = tempfile::Builder::new().prefix("backup-bench-").tempdir()?;
    let state = work.path().join("state");
    std::fs::create_dir_all(&state)?;
    let config = work.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[backup]\nenabled = false\ndiscover = false\n[[backup.jobs]]\nname = \"bench\"\n\
             container = \"{name}\"\ndatabases = [\"bench\"]\nretention = {{ daily = 1, weekly = 0, monthly = 0 }}\n"
        ),
    )?;
    let baseline_file = work.path().join("baseline.pgdump.zst");

    let mut base_secs = Vec::new();
    let mut agent_secs = Vec::new();
    let mut peaks = Vec::new();
    let mut dump_bytes = 0u64;
    for round in 0..rounds {
        // Baseline: the operator's shell pipeline.
        let started = Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(
                "docker exec -e PGPASSWORD \"$1\" pg_dump -U postgres --no-password \
                 --format=custom --compress=0 -d bench | zstd -3 -q -f -o \"$2\"",
            )
            .arg("sh")
            .arg(&name)
            .arg(&baseline_file)
            .env("PGPASSWORD", PASSWORD)
            .status()?;
        if !status.success() {
            bail!("the baseline pipeline failed");
        }
        let secs = started.elapsed().as_secs_f64();
        base_secs.push(secs);
        // The agent, the same database.
        let (secs_agent, peak) = run_agent(&bin, &state, &config, &["run", "bench"])?;
        agent_secs.push(secs_agent);
        peaks.push(peak);
        if dump_bytes == 0 {
            let out = Command::new(&bin)
                .args([
                    "backup",
                    "list",
                    "--json",
                    "--job",
                    "bench",
                    "--database",
                    "bench",
                    "--limit",
                    "1",
                ])
                .arg("--state-dir")
                .arg(&state)
                .arg("--config")
                .arg(&config)
                .output()?;
            let list: serde_json::Value =
                serde_json::from_slice(&out.stdout).with_context(|| {
                    format!(
                        "backup list printed {:?} {:?}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            if list["backups"][0]["bytes"].as_u64().is_none() {
                bail!("backup list shows no backup: {list}");
            }
            dump_bytes = list["backups"][0]["bytes"].as_u64().unwrap_or(0);
            let stored = list["backups"][0]["compressed_bytes"].as_u64().unwrap_or(0);
            let base_size = std::fs::metadata(&baseline_file)?.len();
            println!(
                "dump output {:.0} MiB; agent file {:.0} MiB, baseline file {:.0} MiB",
                dump_bytes as f64 / 1048576.0,
                stored as f64 / 1048576.0,
                base_size as f64 / 1048576.0
            );
        }
        println!(
            "round {}: baseline {secs:.1} s, agent {secs_agent:.1} s (peak RSS {:.1} MiB)",
            round + 1,
            peak as f64 / 1024.0
        );
    }
    let mib = dump_bytes as f64 / 1048576.0;
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "baseline: best {:.1} s ({:.0} MiB/s), median {:.1} s",
        best(&base_secs),
        mib / best(&base_secs),
        median(&base_secs)
    );
    println!(
        "agent:    best {:.1} s ({:.0} MiB/s), median {:.1} s",
        best(&agent_secs),
        mib / best(&agent_secs),
        median(&agent_secs)
    );
    println!(
        "agent throughput / baseline: best {:.0} %, median {:.0} %",
        100.0 * best(&base_secs) / best(&agent_secs),
        100.0 * median(&base_secs) / median(&agent_secs)
    );
    let peak = *peaks.iter().max().unwrap_or(&0);
    println!(
        "agent peak RSS during the dump (whole process): {:.1} MiB",
        peak as f64 / 1024.0
    );
    drop(db);
    Ok(())
}
