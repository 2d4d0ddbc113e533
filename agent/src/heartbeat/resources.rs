//! Per-container memory and CPU from the kernel's cgroup files (issue 17 part 6): a few small
//! reads under `/sys/fs/cgroup` per running container at each heartbeat, never a `docker
//! stats` stream. Works with cgroup v1 (the `memory` and `cpuacct` hierarchies) and v2 (the
//! unified one), for the engine's `cgroupfs` and `systemd` drivers; a container's directory is
//! found from its id at the places those drivers use, else from `/proc/<pid>/cgroup`, and
//! remembered while the container lives.
//!
//! Memory is what `docker stats` shows: usage less inactive page cache. CPU is the usage
//! counter's growth between two heartbeats over the wall time between them, in percent of one
//! CPU. A container above [`MEMORY_NEAR_LIMIT_PERCENT`] of its limit carries since when, so the
//! relay can alert on one that stays there.

use chrono::{DateTime, Utc};
use flotilla_shared::command::ContainerInfo;
use flotilla_shared::upkeep::{ContainerResources, MEMORY_NEAR_LIMIT_PERCENT};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// v1 reports "no limit" as a huge page-aligned number; anything at or above this is none.
const V1_NO_LIMIT: u64 = 1 << 62;

/// Where one container's figures are read.
#[derive(Clone, Debug, PartialEq)]
enum Paths {
    V2(PathBuf),
    V1 { memory: PathBuf, cpuacct: PathBuf },
}

/// One reading of a container's cgroup.
#[derive(Clone, Debug, PartialEq)]
struct Reading {
    memory_bytes: u64,
    memory_limit_bytes: Option<u64>,
    cpu_usage_ns: u64,
}

/// What is kept per container between heartbeats.
struct Tracked {
    paths: Paths,
    previous: Option<(u64, Instant)>,
    near_limit_since: Option<DateTime<Utc>>,
    seen: bool,
}

/// Reads and remembers containers' cgroups across heartbeats. Blocking (file reads).
pub struct ResourceTracker {
    root: PathBuf,
    proc: PathBuf,
    v2: bool,
    tracked: HashMap<String, Tracked>,
}

impl Default for ResourceTracker {
    fn default() -> Self {
        ResourceTracker::new(Path::new("/sys/fs/cgroup"), Path::new("/proc"))
    }
}

impl ResourceTracker {
    pub fn new(root: &Path, proc: &Path) -> Self {
        ResourceTracker {
            v2: root.join("cgroup.controllers").is_file(),
            root: root.to_path_buf(),
            proc: proc.to_path_buf(),
            tracked: HashMap::new(),
        }
    }

    /// Fills `resources` of every running container (`pids`: id → main process id, from the
    /// inspect the heartbeat already made); forgets containers no longer listed.
    pub fn fill(&mut self, containers: &mut [ContainerInfo], pids: &HashMap<String, i64>) {
        let now = Utc::now();
        let clock = Instant::now();
        for t in self.tracked.values_mut() {
            t.seen = false;
        }
        for c in containers.iter_mut() {
            if c.state != "running" {
                continue;
            }
            c.resources = self.one(&c.id, pids.get(&c.id).copied(), now, clock);
        }
        self.tracked.retain(|_, t| t.seen);
    }

    fn one(
        &mut self,
        id: &str,
        pid: Option<i64>,
        now: DateTime<Utc>,
        clock: Instant,
    ) -> Option<ContainerResources> {
        if !self.tracked.contains_key(id) {
            let paths = self.locate(id, pid)?;
            self.tracked.insert(
                id.to_string(),
                Tracked {
                    paths,
                    previous: None,
                    near_limit_since: None,
                    seen: false,
                },
            );
        }
        let t = self.tracked.get_mut(id)?;
        t.seen = true;
        let Some(r) = read(&t.paths) else {
            // The directory went away (the container stopped between list and read): look it
            // up afresh next time.
            self.tracked.remove(id);
            return None;
        };
        let cpu_percent = t.previous.and_then(|(usage, at)| {
            let wall = clock.duration_since(at).as_nanos() as f64;
            (wall > 0.0 && r.cpu_usage_ns >= usage)
                .then(|| ((r.cpu_usage_ns - usage) as f64 * 100.0 / wall) as f32)
        });
        t.previous = Some((r.cpu_usage_ns, clock));
        let mut res = ContainerResources {
            memory_bytes: r.memory_bytes,
            memory_limit_bytes: r.memory_limit_bytes,
            cpu_percent,
            memory_near_limit_since: None,
        };
        let near = res
            .memory_percent_of_limit()
            .is_some_and(|p| p > MEMORY_NEAR_LIMIT_PERCENT);
        t.near_limit_since = if near {
            Some(t.near_limit_since.unwrap_or(now))
        } else {
            None
        };
        res.memory_near_limit_since = t.near_limit_since;
        Some(res)
    }

    /// The container's cgroup directories: the drivers' usual places first, then what
    /// `/proc/<pid>/cgroup` names.
    fn locate(&self, id: &str, pid: Option<i64>) -> Option<Paths> {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let leaves = [
            format!("system.slice/docker-{id}.scope"),
            format!("docker/{id}"),
        ];
        if self.v2 {
            let found = leaves
                .iter()
                .map(|l| self.root.join(l))
                .find(|p| p.join("memory.current").is_file());
            if found.is_some() {
                return found.map(Paths::V2);
            }
        } else {
            for l in &leaves {
                let memory = self.root.join("memory").join(l);
                let cpuacct = self.root.join("cpuacct").join(l);
                if memory.join("memory.usage_in_bytes").is_file()
                    && cpuacct.join("cpuacct.usage").is_file()
                {
                    return Some(Paths::V1 { memory, cpuacct });
                }
            }
        }
        let text = std::fs::read_to_string(self.proc.join(pid?.to_string()).join("cgroup")).ok()?;
        from_proc_cgroup(&self.root, self.v2, &text)
    }
}

/// The directories `/proc/<pid>/cgroup` names (v2: the `0::` line; v1: the `memory` and
/// `cpuacct` controllers' lines). Paths that climb out of the namespace (`/..`) are refused.
fn from_proc_cgroup(root: &Path, v2: bool, text: &str) -> Option<Paths> {
    let mut unified = None;
    let mut memory = None;
    let mut cpuacct = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if path.contains("..") {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(rel));
        }
        for c in controllers.split(',') {
            match c {
                "memory" => memory = Some(root.join("memory").join(rel)),
                "cpuacct" => cpuacct = Some(root.join(controllers).join(rel)),
                _ => {}
            }
        }
    }
    if v2 {
        unified.map(Paths::V2)
    } else {
        Some(Paths::V1 {
            memory: memory?,
            cpuacct: cpuacct?,
        })
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The value of `key` in a `memory.stat` / `cpu.stat` style file.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read(paths: &Paths) -> Option<Reading> {
    match paths {
        Paths::V2(dir) => {
            let usage = read_u64(&dir.join("memory.current"))?;
            let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
            let inactive = stat_value(&stat, "inactive_file").unwrap_or(0);
            let max = std::fs::read_to_string(dir.join("memory.max")).ok();
            let limit = max.and_then(|m| m.trim().parse::<u64>().ok());
            let cpu = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
            let usage_usec = stat_value(&cpu, "usage_usec")?;
            Some(Reading {
                memory_bytes: usage.saturating_sub(inactive),
                memory_limit_bytes: limit,
                cpu_usage_ns: usage_usec.saturating_mul(1000),
            })
        }
        Paths::V1 { memory, cpuacct } => {
            let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
            let stat = std::fs::read_to_string(memory.join("memory.stat")).unwrap_or_default();
            let inactive = stat_value(&stat, "total_inactive_file").unwrap_or(0);
            let limit =
                read_u64(&memory.join("memory.limit_in_bytes")).filter(|l| *l < V1_NO_LIMIT);
            let cpu = read_u64(&cpuacct.join("cpuacct.usage"))?;
            Some(Reading {
                memory_bytes: usage.saturating_sub(inactive),
                memory_limit_bytes: limit,
                cpu_usage_ns: cpu,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: "web".into(),
            image: "web:1".into(),
            image_id: "sha256:1".into(),
            state: "running".into(),
            status: "Up".into(),
            health: None,
            restart_count: 0,
            oom_killed: false,
            exit_code: None,
            started_at: None,
            compose_project: None,
            compose_service: None,
            resources: None,
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn v2_figures_with_a_limit_and_the_near_limit_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root, "cgroup.controllers", "cpu memory\n");
        let dir = root.join("system.slice/docker-abc123.scope");
        write(&dir, "memory.current", "960\n");
        write(&dir, "memory.stat", "anon 900\ninactive_file 10\n");
        write(&dir, "memory.max", "1000\n");
        write(&dir, "cpu.stat", "usage_usec 1000\nuser_usec 600\n");
        let mut t = ResourceTracker::new(root, &root.join("proc"));
        let mut cs = vec![container("abc123")];
        t.fill(&mut cs, &HashMap::new());
        let r = cs[0].resources.clone().unwrap();
        assert_eq!(r.memory_bytes, 950);
        assert_eq!(r.memory_limit_bytes, Some(1000));
        assert_eq!(r.cpu_percent, None, "no previous reading yet");
        let since = r.memory_near_limit_since.expect("95 % is near the limit");
        write(&dir, "cpu.stat", "usage_usec 2000\n");
        t.fill(&mut cs, &HashMap::new());
        let r = cs[0].resources.clone().unwrap();
        assert!(r.cpu_percent.is_some());
        assert_eq!(
            r.memory_near_limit_since,
            Some(since),
            "the clock keeps its start"
        );
        write(&dir, "memory.current", "500\n");
        t.fill(&mut cs, &HashMap::new());
        assert_eq!(
            cs[0].resources.clone().unwrap().memory_near_limit_since,
            None
        );
        write(&dir, "memory.max", "max\n");
        t.fill(&mut cs, &HashMap::new());
        assert_eq!(cs[0].resources.clone().unwrap().memory_limit_bytes, None);
    }

    #[test]
    fn v1_figures_and_no_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mem = root.join("memory/docker/def456");
        write(&mem, "memory.usage_in_bytes", "4096\n");
        write(&mem, "memory.stat", "cache 100\ntotal_inactive_file 96\n");
        write(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        write(
            &root.join("cpuacct/docker/def456"),
            "cpuacct.usage",
            "123456\n",
        );
        let mut t = ResourceTracker::new(root, &root.join("proc"));
        let mut cs = vec![container("def456"), container("gone")];
        cs[1].state = "exited".into();
        t.fill(&mut cs, &HashMap::new());
        let r = cs[0].resources.clone().unwrap();
        assert_eq!(r.memory_bytes, 4000);
        assert_eq!(r.memory_limit_bytes, None);
        assert!(
            cs[1].resources.is_none(),
            "only running containers are read"
        );
    }

    #[test]
    fn proc_cgroup_lines_name_the_directories() {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = "12:memory:/custom/abc\n4:cpu,cpuacct:/custom/abc\n1:name=systemd:/custom/abc\n";
        assert_eq!(
            from_proc_cgroup(root, false, v1),
            Some(Paths::V1 {
                memory: root.join("memory/custom/abc"),
                cpuacct: root.join("cpu,cpuacct/custom/abc"),
            })
        );
        assert_eq!(
            from_proc_cgroup(root, true, "0::/custom.slice/abc\n"),
            Some(Paths::V2(root.join("custom.slice/abc")))
        );
        assert_eq!(from_proc_cgroup(root, true, "0::/../../x\n"), None);
        assert_eq!(from_proc_cgroup(root, false, "garbage"), None);
    }

    #[test]
    fn a_container_without_a_readable_cgroup_has_no_figures() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = ResourceTracker::new(tmp.path(), &tmp.path().join("proc"));
        let mut cs = vec![container("abc"), container("../../etc")];
        t.fill(&mut cs, &HashMap::new());
        assert!(cs.iter().all(|c| c.resources.is_none()));
    }
}
