//! Builds a heartbeat every interval: host metrics (sysinfo, refreshed narrowly — CPU, memory,
//! disks; never the process table) and a Docker snapshot. The latest one is published on a watch
//! channel from which the session sends it.

use crate::docker::DockerClient;
use chrono::Utc;
use flotilla_shared::heartbeat::{DockerSnapshot, FilesystemUsage, Heartbeat, HostMetrics};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use sysinfo::{DiskRefreshKind, Disks, MemoryRefreshKind, System};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Heartbeat interval until the relay's welcome names one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest interval honoured, whatever the relay asks.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

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
            filesystems: filesystems(&self.disks),
        }
    }
}

fn filesystems(disks: &Disks) -> Vec<FilesystemUsage> {
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

/// The heartbeat task's wiring.
pub struct HeartbeatTask {
    pub docker: DockerClient,
    /// Interval chosen by the relay (from its welcome).
    pub interval: watch::Receiver<Duration>,
    /// Build one now (the session asks after each welcome).
    pub poke: Arc<Notify>,
    /// Where the latest heartbeat is published.
    pub out: watch::Sender<Option<Arc<Heartbeat>>>,
}

impl HeartbeatTask {
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut collector = Some(
            tokio::task::spawn_blocking(HostCollector::new)
                .await
                .map_err(|e| anyhow::anyhow!("host metrics task failed: {e}"))?,
        );
        let mut interval = (*self.interval.borrow_and_update()).max(MIN_INTERVAL);
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
                        interval = (*self.interval.borrow_and_update()).max(MIN_INTERVAL);
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
                        tokio::task::spawn_blocking(HostCollector::new)
                            .await
                            .map_err(|e| anyhow::anyhow!("host metrics task failed: {e}"))?,
                    );
                    HostMetrics::default()
                }
            };
            let docker = docker_snapshot(&self.docker).await;
            let hb = Heartbeat {
                at: Utc::now(),
                agent_version: flotilla_shared::VERSION.to_string(),
                host,
                docker,
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
    let version = match docker.version().await {
        Ok(v) => v,
        Err(e) => {
            return DockerSnapshot {
                error: Some(e.to_string()),
                ..Default::default()
            }
        }
    };
    match docker.list(true).await {
        Ok(containers) => DockerSnapshot {
            containers_omitted: 0,
            version: version.version,
            api_version: version.api_version,
            error: None,
            containers,
        },
        Err(e) => DockerSnapshot {
            containers_omitted: 0,
            version: version.version,
            api_version: version.api_version,
            error: Some(e.to_string()),
            containers: Vec::new(),
        },
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
}
