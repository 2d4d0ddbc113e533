//! Builds a heartbeat every interval: host metrics (sysinfo, refreshed narrowly — CPU, memory,
//! disks; never the process table) and a Docker snapshot. The latest one is published on a watch
//! channel from which the session sends it.

use crate::docker::DockerClient;
use chrono::Utc;
use flotilla_shared::command::ContainerInfo;
use flotilla_shared::heartbeat::{DockerSnapshot, FilesystemUsage, Heartbeat, HostMetrics};
use flotilla_shared::protocol::AgentFrame;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use sysinfo::{DiskRefreshKind, Disks, MemoryRefreshKind, System};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

// issue 17 part 6: per-container memory and CPU from cgroups
mod resources;
pub use resources::ResourceTracker;

/// Heartbeat interval until the relay's welcome names one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest interval honoured, whatever the relay asks.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest interval honoured (a day): anything longer would overflow timers.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);

/// The interval a relay asks for, bounded to what the agent honours.
pub fn interval_from_secs(secs: u64) -> Duration {
    Duration::from_secs(secs).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// File system types that are not storage anyone runs out of: kernel pseudo file systems,
/// memory-backed ones and container layers.
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "fuse.lxcfs",
    "fuse.fuse-overlayfs",
    "fuse.snapfuse",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "aufs",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "shm",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// Host-side facts that do not change while the agent runs.
#[derive(Clone, Debug, Default)]
struct StaticFacts {
    hostname: String,
    os: String,
    kernel: String,
    arch: String,
}

/// The sysinfo objects kept between ticks, so CPU use is measured over the interval.
struct HostCollector {
    sys: System,
    disks: Disks,
    facts: StaticFacts,
    /// `disk_paths`: always reported, even on pseudo file systems (see [`filesystems`]).
    disk_paths: Vec<String>,
}

impl HostCollector {
    /// Blocking: reads /proc and mounts.
    fn new() -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        // CPU use is a difference between two readings; take the first reading now so the
        // first heartbeat carries a real figure.
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let facts = StaticFacts {
            hostname: System::host_name().unwrap_or_default(),
            os: System::long_os_version()
                .or_else(System::name)
                .unwrap_or_else(|| std::env::consts::OS.to_string()),
            kernel: System::kernel_version().unwrap_or_default(),
            arch: std::env::consts::ARCH.to_string(),
        };
        HostCollector {
            sys,
            disks: Disks::new(),
            facts,
            disk_paths: Vec::new(),
        }
    }

    /// [`HostCollector::new`] that also reports the file systems holding `disk_paths`.
    fn with_paths(disk_paths: Vec<String>) -> Self {
        HostCollector {
            disk_paths,
            ..HostCollector::new()
        }
    }

    /// Blocking: refreshes CPU, memory and disks, never processes.
    fn collect(&mut self) -> HostMetrics {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let load = System::load_average();
        let total = self.sys.total_memory();
        HostMetrics {
            hostname: self.facts.hostname.clone(),
            os: self.facts.os.clone(),
            kernel: self.facts.kernel.clone(),
            arch: self.facts.arch.clone(),
            uptime_secs: System::uptime(),
            cpu_count: self.sys.cpus().len() as u32,
            cpu_percent: self.sys.global_cpu_usage().clamp(0.0, 100.0),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            memory_total_bytes: total,
            memory_used_bytes: total.saturating_sub(self.sys.available_memory()),
            swap_total_bytes: self.sys.total_swap(),
            swap_used_bytes: self.sys.used_swap(),
            filesystems: filesystems(&self.disks, &self.disk_paths),
            certificates: Vec::new(),
        }
    }
}

/// `disk_paths` resolved once at start: each path canonicalised (symlinks and `..` resolved,
/// so the mount lookup sees the real location), duplicates dropped (first wins). A path that
/// cannot be resolved is reported once, as a warning, and skipped. Blocking (file system).
fn canonical_disk_paths(paths: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(paths.len());
    for p in paths {
        match std::fs::canonicalize(p) {
            Ok(c) => {
                let c = c.to_string_lossy().into_owned();
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            Err(e) => {
                warn!(path = %p, error = %e, "disk_paths entry cannot be resolved; not reported");
            }
        }
    }
    out
}

/// The mount point holding `path`: the longest mount point that is a path prefix of it.
fn mount_of<'a>(path: &str, mounts: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let path = path.trim_end_matches('/');
    mounts
        .filter(|m| {
            let m = m.trim_end_matches('/');
            m.is_empty() || path == m || path.starts_with(&format!("{m}/"))
        })
        .max_by_key(|m| m.len())
}

/// The host's storage file systems, plus those holding `disk_paths` whatever their type (a
/// tmpfs-backed Docker volume, say).
fn filesystems(disks: &Disks, disk_paths: &[String]) -> Vec<FilesystemUsage> {
    let mounts: Vec<String> = disks
        .list()
        .iter()
        .map(|d| d.mount_point().to_string_lossy().into_owned())
        .collect();
    let wanted: HashSet<&str> = disk_paths
        .iter()
        .filter_map(|p| mount_of(p, mounts.iter().map(String::as_str)))
        .collect();
    let forced: Vec<FilesystemUsage> = disks
        .list()
        .iter()
        .filter(|d| wanted.contains(d.mount_point().to_string_lossy().as_ref()))
        .map(|d| {
            FilesystemUsage::new(
                d.mount_point().to_string_lossy().into_owned(),
                d.name().to_string_lossy().into_owned(),
                d.file_system().to_string_lossy().into_owned(),
                d.total_space(),
                d.available_space(),
            )
        })
        .collect();
    let mut out = storage_filesystems(disks);
    for f in forced {
        if !out.iter().any(|o| o.mount_point == f.mount_point) {
            out.push(f);
        }
    }
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

fn storage_filesystems(disks: &Disks) -> Vec<FilesystemUsage> {
    let mut out: Vec<FilesystemUsage> = disks
        .list()
        .iter()
        .filter_map(|d| {
            let fs_type = d.file_system().to_string_lossy().into_owned();
            let mount_point = d.mount_point().to_string_lossy();
            if is_pseudo_fs(&fs_type) || is_container_mount(&mount_point) || d.total_space() == 0 {
                return None;
            }
            Some(FilesystemUsage::new(
                d.mount_point().to_string_lossy().into_owned(),
                d.name().to_string_lossy().into_owned(),
                fs_type,
                d.total_space(),
                d.available_space(),
            ))
        })
        .collect();
    // A device mounted in several places (bind mounts) is reported once, at its shortest path.
    out.sort_by(|a, b| {
        a.mount_point
            .len()
            .cmp(&b.mount_point.len())
            .then(a.mount_point.cmp(&b.mount_point))
    });
    let mut seen = HashSet::new();
    out.retain(|f| seen.insert(f.device.clone()));
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out
}

pub fn is_pseudo_fs(fs_type: &str) -> bool {
    PSEUDO_FS.contains(&fs_type)
}

/// Mounts the container engine makes for containers' root file systems and network namespaces
/// (whatever storage driver made them): one per running container, not host storage.
pub fn is_container_mount(mount_point: &str) -> bool {
    const ENGINE_DIRS: [&str; 3] = ["/var/lib/docker/", "/run/docker/", "/var/run/docker/"];
    ENGINE_DIRS.iter().any(|d| mount_point.starts_with(d))
        && mount_point
            .rsplit('/')
            .next()
            .is_some_and(|leaf| matches!(leaf, "merged" | "mnt") || mount_point.contains("/netns/"))
}

// --- compose (issue 17, part 1) ---
/// Compose containers running another image than their project declares: one container list
/// (only when some container is from compose), the files checked on a blocking thread.
async fn compose_drift(
    docker: &DockerClient,
    checker: &Arc<std::sync::Mutex<crate::compose::drift::DriftChecker>>,
) -> Vec<flotilla_shared::compose::ComposeDrift> {
    let running = match docker.running_labelled().await {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "no container list for compose drift");
            return Vec::new();
        }
    };
    if !running
        .iter()
        .any(|c| c.labels.contains_key(crate::compose::PROJECT_LABEL))
    {
        return Vec::new();
    }
    let checker = checker.clone();
    tokio::task::spawn_blocking(move || {
        let list: Vec<crate::compose::drift::Running<'_>> = running
            .iter()
            .map(|c| crate::compose::drift::Running {
                name: &c.container.name,
                image: &c.image,
                labels: &c.labels,
            })
            .collect();
        checker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&list)
    })
    .await
    .unwrap_or_default()
}

/// The heartbeat task's wiring.
pub struct HeartbeatTask {
    pub docker: DockerClient,
    /// Interval chosen by the relay (from its welcome).
    pub interval: watch::Receiver<Duration>,
    /// Build one now (the session asks after each welcome).
    pub poke: Arc<Notify>,
    /// Where the latest heartbeat is published.
    pub out: watch::Sender<Option<Arc<Heartbeat>>>,
    /// The backup service's summary, carried in every heartbeat.
    pub backup: watch::Receiver<Option<flotilla_shared::backup::BackupSummary>>,
    /// Paths whose file systems are always reported (`disk_paths`).
    pub disk_paths: Vec<String>,
    /// The latest reading of the host's certificates (issue 17 §2), carried as
    /// `host.certificates`.
    pub certificates: watch::Receiver<Vec<flotilla_shared::heartbeat::HostCertificate>>,
}

impl HeartbeatTask {
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (paths, first) = tokio::task::spawn_blocking({
            let paths = self.disk_paths.clone();
            move || {
                let paths = canonical_disk_paths(&paths);
                (paths.clone(), HostCollector::with_paths(paths))
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!("host metrics task failed: {e}"))?;
        // Resolved once: a collector built again after a panic reuses them.
        self.disk_paths = paths;
        let mut collector = Some(first);
        let mut tracker: Option<resources::ResourceTracker> = None;
        // --- compose (issue 17, part 1) ---
        let drift = Arc::new(std::sync::Mutex::new(
            crate::compose::drift::DriftChecker::default(),
        ));
        let mut interval = (*self.interval.borrow_and_update()).clamp(MIN_INTERVAL, MAX_INTERVAL);
        let mut interval_open = true;
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(next) => {}
                _ = self.poke.notified() => {}
                changed = self.interval.changed(), if interval_open => {
                    if changed.is_err() {
                        interval_open = false;
                    } else {
                        interval =
                            (*self.interval.borrow_and_update()).clamp(MIN_INTERVAL, MAX_INTERVAL);
                        next = next.min(Instant::now() + interval);
                    }
                    continue;
                }
            }
            let mut c = collector
                .take()
                .expect("collector is put back after each tick");
            let host = match tokio::task::spawn_blocking(move || {
                let m = c.collect();
                (c, m)
            })
            .await
            {
                Ok((c, m)) => {
                    collector = Some(c);
                    m
                }
                Err(e) => {
                    // A panic inside sysinfo: start over with a fresh collector.
                    warn!(error = %e, "host metrics collection failed");
                    collector = Some(
                        tokio::task::spawn_blocking({
                            let paths = self.disk_paths.clone();
                            move || HostCollector::with_paths(paths)
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("host metrics task failed: {e}"))?,
                    );
                    HostMetrics::default()
                }
            };
            let (mut docker, pids) = docker_snapshot_with_pids(&self.docker).await;
            // The cgroup reads are small sysfs reads, but file I/O all the same.
            let mut t = tracker.take().unwrap_or_default();
            let filled = tokio::task::spawn_blocking(move || {
                t.fill(&mut docker.containers, &pids);
                (t, docker)
            })
            .await;
            let docker = match filled {
                Ok((t, d)) => {
                    tracker = Some(t);
                    d
                }
                Err(e) => {
                    warn!(error = %e, "container resource collection failed");
                    docker_snapshot(&self.docker).await
                }
            };
            let compose_drift = compose_drift(&self.docker, &drift).await;
            let mut host = host;
            host.certificates = self.certificates.borrow().clone();
            let hb = Heartbeat {
                at: Utc::now(),
                agent_version: flotilla_shared::release::version().to_string(),
                host,
                docker,
                backup: self.backup.borrow().clone(),
                compose_drift,
            };
            debug!(
                containers = hb.docker.containers.len(),
                cpu_percent = hb.host.cpu_percent,
                "heartbeat built"
            );
            self.out.send_replace(Some(Arc::new(hb)));
            next = Instant::now() + interval;
        }
    }
}

/// Engine version and visible containers; on failure the error text, so host metrics still go.
pub async fn docker_snapshot(docker: &DockerClient) -> DockerSnapshot {
    docker_snapshot_with_pids(docker).await.0
}

/// [`docker_snapshot`] and the running containers' main process ids (id → pid).
async fn docker_snapshot_with_pids(
    docker: &DockerClient,
) -> (DockerSnapshot, HashMap<String, i64>) {
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) => {
            return (
                DockerSnapshot {
                    error: Some(e.to_string()),
                    ..Default::default()
                },
                HashMap::new(),
            )
        }
    };
    match docker.list_with_pids(true, None).await {
        Ok(list) => {
            let mut pids = HashMap::new();
            let containers = list
                .into_iter()
                .map(|(c, pid)| {
                    if let Some(p) = pid {
                        pids.insert(c.id.clone(), p);
                    }
                    c
                })
                .collect();
            (
                DockerSnapshot {
                    containers_omitted: 0,
                    version: version.version,
                    api_version: version.api_version,
                    error: None,
                    containers,
                },
                pids,
            )
        }
        Err(e) => (
            DockerSnapshot {
                containers_omitted: 0,
                version: version.version,
                api_version: version.api_version,
                error: Some(e.to_string()),
                containers: Vec::new(),
            },
            HashMap::new(),
        ),
    }
}

/// A heartbeat frame made to fit in `limit` bytes.
#[derive(Debug)]
pub struct FittedHeartbeat {
    /// The frame's JSON text.
    pub text: String,
    /// Containers left out (also in the frame as `containers_omitted`).
    pub containers_omitted: u32,
    /// The host's file systems had to be left out too.
    pub filesystems_omitted: bool,
}

/// Encodes `hb` as a heartbeat frame of at most `limit` bytes. A host with thousands of
/// containers would otherwise exceed the relay's frame limit, be disconnected and reconnect
/// forever. Containers are left out (counted in `containers_omitted`) healthy running ones
/// first, so the ones that need attention stay visible; only if no container fits are the file
/// systems left out as well. None when not even that fits.
pub fn fit_heartbeat(hb: &Heartbeat, limit: usize) -> Option<FittedHeartbeat> {
    let encode = |hb: Heartbeat| {
        let frame = AgentFrame::Heartbeat(Box::new(hb));
        serde_json::to_string(&frame).unwrap_or_default()
    };
    let text = encode(hb.clone());
    if text.len() <= limit {
        return Some(FittedHeartbeat {
            text,
            containers_omitted: 0,
            filesystems_omitted: false,
        });
    }
    let all = &hb.docker.containers;
    let mut empty = hb.clone();
    empty.docker.containers = Vec::new();
    empty.docker.containers_omitted = u32::try_from(all.len()).unwrap_or(u32::MAX);
    // Upper bound of the frame without containers (the count has its most digits here).
    let base = encode(empty.clone()).len();
    // Most important first; stable, so equal ones keep the engine's order.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&i| drop_rank(&all[i]));
    let mut keep = vec![false; all.len()];
    let mut used = base;
    for &i in &order {
        // Each container costs its encoding plus a separating comma.
        let cost = serde_json::to_string(&all[i]).map(|s| s.len()).unwrap_or(0) + 1;
        if used + cost > limit {
            break;
        }
        used += cost;
        keep[i] = true;
    }
    let mut kept: Vec<usize> = order.iter().copied().filter(|&i| keep[i]).collect();
    loop {
        let mut out = hb.clone();
        let mut chosen = kept.clone();
        chosen.sort_unstable();
        out.docker.containers = chosen.iter().map(|&i| all[i].clone()).collect();
        let omitted = all.len() - chosen.len();
        out.docker.containers_omitted = u32::try_from(omitted).unwrap_or(u32::MAX);
        let text = encode(out.clone());
        if text.len() <= limit {
            return Some(FittedHeartbeat {
                text,
                containers_omitted: out.docker.containers_omitted,
                filesystems_omitted: false,
            });
        }
        if kept.pop().is_none() {
            // Not even without containers: the host part alone is too big.
            out.host.filesystems = Vec::new();
            out.host.certificates = Vec::new();
            let text = encode(out.clone());
            return (text.len() <= limit).then_some(FittedHeartbeat {
                text,
                containers_omitted: out.docker.containers_omitted,
                filesystems_omitted: true,
            });
        }
    }
}

/// Which containers a heartbeat leaves out first (highest rank first): healthy or unchecked
/// running ones, then running ones whose health is still starting, and last the ones that are
/// not running or unhealthy — those are what an operator is looking for.
fn drop_rank(c: &ContainerInfo) -> u8 {
    match (c.state.as_str(), c.health.as_deref()) {
        ("running", Some("unhealthy")) => 0,
        ("running", Some("starting")) => 1,
        ("running", _) => 2,
        _ => 0,
    }
}

/// Host facts for enrollment: hostname, OS, architecture. Blocking (reads a few small files).
pub fn host_facts() -> (String, String, String) {
    (
        System::host_name().unwrap_or_else(|| "unknown".into()),
        System::long_os_version()
            .or_else(System::name)
            .unwrap_or_else(|| std::env::consts::OS.to_string()),
        std::env::consts::ARCH.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_mounts_are_skipped() {
        for m in [
            "/var/lib/docker/fuse-overlayfs/0123abcd/merged",
            "/var/lib/docker/overlay2/0123abcd/merged",
            "/run/docker/netns/0123abcd",
        ] {
            assert!(is_container_mount(m), "{m}");
        }
        for m in [
            "/",
            "/var/lib/docker",
            "/srv/data",
            "/var/lib/docker/volumes",
        ] {
            assert!(!is_container_mount(m), "{m}");
        }
    }

    #[test]
    fn pseudo_file_systems_are_skipped() {
        for fs in ["tmpfs", "overlay", "proc", "sysfs", "cgroup2", "nsfs"] {
            assert!(is_pseudo_fs(fs), "{fs}");
        }
        for fs in ["ext4", "xfs", "btrfs", "vfat", "zfs"] {
            assert!(!is_pseudo_fs(fs), "{fs}");
        }
    }

    fn container(i: usize, state: &str, health: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: format!("{i:064}"),
            name: format!("container-{i}"),
            image: "registry.example.com/team/app:1.2.3".into(),
            image_id: format!("sha256:{i:064}"),
            state: state.into(),
            status: "Up 5 minutes".into(),
            health: health.map(str::to_string),
            restart_count: 0,
            oom_killed: false,
            exit_code: None,
            started_at: Some("2024-01-01T00:00:00Z".into()),
            compose_project: Some("project".into()),
            compose_service: Some("service".into()),
            resources: None,
        }
    }

    fn heartbeat(containers: Vec<ContainerInfo>) -> Heartbeat {
        Heartbeat {
            at: Utc::now(),
            agent_version: "0.1.0".into(),
            host: HostMetrics {
                filesystems: vec![FilesystemUsage::new(
                    "/".into(),
                    "/dev/sda1".into(),
                    "ext4".into(),
                    100,
                    50,
                )],
                ..HostMetrics::default()
            },
            docker: DockerSnapshot {
                containers,
                ..DockerSnapshot::default()
            },
            backup: None,
            compose_drift: Vec::new(),
        }
    }

    fn decode(text: &str) -> Heartbeat {
        match serde_json::from_str::<AgentFrame>(text).unwrap() {
            AgentFrame::Heartbeat(hb) => *hb,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn small_heartbeats_are_sent_whole() {
        let hb = heartbeat((0..10).map(|i| container(i, "running", None)).collect());
        let fitted = fit_heartbeat(&hb, 1 << 20).unwrap();
        assert_eq!(fitted.containers_omitted, 0);
        assert_eq!(decode(&fitted.text), hb);
    }

    #[test]
    fn big_heartbeats_leave_out_healthy_running_containers_first() {
        // 5000 containers are far over 64 KiB; a few need attention.
        let mut containers: Vec<ContainerInfo> = (0..5000)
            .map(|i| container(i, "running", Some("healthy")))
            .collect();
        containers[10] = container(10, "exited", None);
        containers[2500] = container(2500, "running", Some("unhealthy"));
        containers[4999] = container(4999, "restarting", None);
        containers[3000] = container(3000, "running", Some("starting"));
        let hb = heartbeat(containers);
        let limit = 64 * 1024;
        let fitted = fit_heartbeat(&hb, limit).unwrap();
        assert!(fitted.text.len() <= limit, "{}", fitted.text.len());
        assert!(!fitted.filesystems_omitted);
        let back = decode(&fitted.text);
        let kept = back.docker.containers.len();
        assert!(kept > 100, "kept only {kept}");
        assert_eq!(back.docker.containers_omitted as usize, 5000 - kept);
        assert_eq!(fitted.containers_omitted, back.docker.containers_omitted);
        let names: Vec<&str> = back
            .docker
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for must in [
            "container-10",
            "container-2500",
            "container-4999",
            "container-3000",
        ] {
            assert!(names.contains(&must), "{must} was left out");
        }
        // The engine's order is kept among those sent.
        let mut sorted = back.docker.containers.clone();
        sorted.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(sorted, back.docker.containers);
        // It is as full as it can be: one more container would not fit.
        assert!(fitted.text.len() + 400 > limit, "{}", fitted.text.len());
        assert_eq!(back.host, hb.host);
    }

    #[test]
    fn a_tiny_limit_drops_file_systems_or_gives_up() {
        let hb = heartbeat((0..3).map(|i| container(i, "running", None)).collect());
        let mut no_fs = hb.clone();
        no_fs.docker.containers.clear();
        no_fs.docker.containers_omitted = 3;
        no_fs.host.filesystems.clear();
        let min = serde_json::to_string(&AgentFrame::Heartbeat(Box::new(no_fs)))
            .unwrap()
            .len();
        let fitted = fit_heartbeat(&hb, min).unwrap();
        assert!(fitted.filesystems_omitted);
        assert_eq!(fitted.containers_omitted, 3);
        assert!(fit_heartbeat(&hb, min - 1).is_none());
    }

    #[test]
    fn relay_intervals_are_bounded() {
        assert_eq!(interval_from_secs(0), Duration::from_secs(1));
        assert_eq!(interval_from_secs(30), Duration::from_secs(30));
        assert_eq!(interval_from_secs(u64::MAX), Duration::from_secs(86_400));
        // The bounded interval can always be added to a timer.
        let _ = Instant::now() + interval_from_secs(u64::MAX);
    }

    #[test]
    fn host_metrics_are_plausible() {
        let mut c = HostCollector::new();
        let m = c.collect();
        assert!(m.cpu_count >= 1);
        assert!(m.memory_total_bytes > 0);
        assert!(m.memory_used_bytes <= m.memory_total_bytes);
        assert!((0.0..=100.0).contains(&m.cpu_percent));
        for f in &m.filesystems {
            assert!(!is_pseudo_fs(&f.fs_type), "{f:?}");
            assert!(f.total_bytes > 0);
        }
    }

    #[test]
    fn disk_paths_find_their_mount() {
        let mounts = ["/", "/var", "/var/lib/docker/volumes/v/_data", "/varx"];
        let m = |p: &str| mount_of(p, mounts.iter().copied());
        assert_eq!(
            m("/var/lib/docker/volumes/v/_data"),
            Some("/var/lib/docker/volumes/v/_data")
        );
        assert_eq!(
            m("/var/lib/docker/volumes/v/_data/sub/"),
            Some("/var/lib/docker/volumes/v/_data")
        );
        assert_eq!(m("/var/log"), Some("/var"));
        assert_eq!(m("/varx/y"), Some("/varx"));
        assert_eq!(m("/home"), Some("/"));
        assert_eq!(mount_of("/x", ["/var"].into_iter()), None);
    }

    #[test]
    fn disk_paths_are_canonicalised_deduped_and_unresolvable_ones_skipped() {
        let dir = std::env::temp_dir().join(format!("flotilla-disk-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let real = std::fs::canonicalize(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let d = dir.to_string_lossy().into_owned();
        let got = canonical_disk_paths(&[
            format!("{d}/sub/.."),
            d.clone(),
            format!("{d}/"),
            format!("{d}/does-not-exist"),
            format!("{d}/sub"),
        ]);
        assert_eq!(got, vec![real.clone(), format!("{real}/sub")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A real tmpfs mount of this machine is left out by default and reported once a disk path
    /// lies on it.
    #[test]
    fn disk_paths_keep_pseudo_file_systems() {
        let disks = Disks::new_with_refreshed_list();
        let Some(tmpfs) = disks
            .list()
            .iter()
            .find(|d| d.file_system().to_string_lossy() == "tmpfs" && d.total_space() > 0)
            .map(|d| d.mount_point().to_string_lossy().into_owned())
        else {
            eprintln!("no tmpfs mount on this machine; only the mount lookup is tested");
            return;
        };
        assert!(!filesystems(&disks, &[])
            .iter()
            .any(|f| f.mount_point == tmpfs));
        let inside = format!("{}/some/file", tmpfs.trim_end_matches('/'));
        let got = filesystems(&disks, &[inside]);
        let f = got
            .iter()
            .find(|f| f.mount_point == tmpfs)
            .expect("the tmpfs holding the disk path is reported");
        assert_eq!(f.fs_type, "tmpfs");
        assert_eq!(got.iter().filter(|f| f.mount_point == tmpfs).count(), 1);
    }
}
