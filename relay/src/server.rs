//! The relay's composition root: [`start`] opens the data directory, store and keys, builds the
//! commands service and every engine with exactly what it uses, binds, serves, and runs the
//! background tasks (heartbeat flusher, job engine, expiry sweeper, rollout engine, alerts,
//! rate-limit pruner, retention sweep) until the shutdown token is cancelled. `main` and the
//! tests both go through [`start`]; nothing else wires parts together.

use crate::cluster::run_singleton;
use crate::commands::Commands;
use crate::config::RelayConfig;
use crate::heartbeats::{run_flusher, HeartbeatCache};
use crate::hub::Hub;
use crate::jobs::{ExpirySweeper, JobEngine};
use crate::keys::{ensure_admin_token, load_or_create_relay_key, KeyError};
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::retention::Retention;
use crate::rollouts::RolloutEngine;
use crate::state::{AppState, Shared};
use crate::store::{Store, StoreError};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DB_FILE: &str = "relay.db";
pub const LISTEN_ADDR_FILE: &str = "listen-addr";

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    ListenAddrFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the PostgreSQL database {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error("cannot read {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("startup task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Notify(#[from] crate::alerts::notify::NotifyConfigError),
}

/// A relay serving in this process.
pub struct RunningRelay {
    addr: SocketAddr,
    admin_token_created: Option<String>,
    state: AppState,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningRelay {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The admin token, if it was created by this start (first start only).
    pub fn admin_token_created(&self) -> Option<&str> {
        self.admin_token_created.as_deref()
    }

    pub fn fingerprint(&self) -> &str {
        &self.state.fingerprint
    }

    /// The relay's store, for dev mode and tests that seed or read it directly.
    #[doc(hidden)]
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The whole app state (its key, hub, heartbeat cache, commands service, ...), for the
    /// crate's integration tests only: they build engines over the relay's own parts and read
    /// what no API serves. Not part of the embedding surface ([`crate::embed`]).
    #[doc(hidden)]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancel it to stop the relay (same as [`RunningRelay::shutdown`] without waiting).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Stops serving, closes agent connections, writes the latest heartbeats, and waits for
    /// every task to end.
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.state.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the relay stops (its shutdown token was cancelled elsewhere).
    pub async fn wait(self) -> Result<(), StartError> {
        let served = self
            .server
            .await
            .map_err(|e| StartError::Task(e.to_string()))?;
        // The server only ends by shutdown or error; either way stop the rest.
        self.state.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        served.map_err(|source| StartError::Bind {
            addr: self.addr,
            source,
        })
    }
}

fn create_data_dir(path: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        std::fs::create_dir_all(path).map_err(err)?;
        // Holds the signing key and the admin token: owner only.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// systemd integration (`Type=notify`, a no-op elsewhere): `READY=1` now that the store is open
/// and the listener bound; a watchdog fed only while the store answers a trivial read within the
/// interval (a wedged database or runtime ends in systemd's restart, not a silent hang);
/// `STOPPING=1` as soon as shutdown begins.
async fn systemd_tasks(
    store: Store,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Vec<JoinHandle<()>> {
    use flotilla_daemon::systemd;
    systemd::ready(&format!("serving on {addr}")).await;
    let mut tasks = Vec::new();
    if let Some(interval) = systemd::watchdog_interval() {
        let healthy = move || {
            let store = store.clone();
            async move {
                match store.has_admin_token().await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "watchdog: the store did not answer");
                        false
                    }
                }
            }
        };
        tasks.push(tokio::spawn(systemd::run_watchdog(
            interval,
            healthy,
            shutdown.clone(),
        )));
    }
    tasks.push(tokio::spawn(async move {
        shutdown.cancelled().await;
        systemd::stopping().await;
    }));
    tasks
}

/// Connects to the PostgreSQL database (password from `password_file`, first line). Errors name the database by host and name, never with the password.
async fn open_postgres(url: &str, password_file: Option<&Path>) -> Result<Store, StartError> {
    let password = match password_file {
        Some(path) => {
            Some(
                crate::store::read_password_file(path).map_err(|source| StartError::Io {
                    what: format!("the database password file {}", path.display()),
                    source,
                })?,
            )
        }
        None => None,
    };
    let shown = crate::store::redact_database_url(url);
    Store::open_postgres(url, password)
        .await
        .map_err(|source| StartError::Database { url: shown, source })
}

/// Opens everything, binds `config.listen`, writes `<data-dir>/listen-addr` and starts serving.
pub async fn start(config: RelayConfig) -> Result<RunningRelay, StartError> {
    let data_dir = config.data_dir.clone();
    let key = {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            create_data_dir(&data_dir)?;
            Ok::<_, StartError>(load_or_create_relay_key(&data_dir)?)
        })
        .await
        .map_err(|e| StartError::Task(e.to_string()))??
    };
    let store = match &config.database_url {
        Some(url) => open_postgres(url, config.database_password_file.as_deref()).await?,
        None => {
            let db_path = data_dir.join(DB_FILE);
            Store::open(&db_path)
                .await
                .map_err(|source| StartError::Store {
                    path: db_path.clone(),
                    source,
                })?
        }
    };
    let admin_token_created = ensure_admin_token(&store, &data_dir).await?;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let addr_file = data_dir.join(LISTEN_ADDR_FILE);
    tokio::fs::write(&addr_file, addr.to_string())
        .await
        .map_err(|source| StartError::ListenAddrFile {
            path: addr_file.clone(),
            source,
        })?;

    let shutdown = CancellationToken::new();
    let stream = Arc::new(crate::stream::EventBus::default());
    let rollouts = crate::rollouts::RolloutKicker::default();
    let (cluster, outbox) = crate::cluster::Cluster::new(&store);
    let hub = Arc::new(Hub::new());
    let key = Arc::new(key);
    let metrics = Arc::new(Metrics::default());
    let commands = Commands::new(
        store.clone(),
        hub.clone(),
        key.clone(),
        metrics.clone(),
        config.default_command_ttl_secs,
    )
    .with_stream(stream.clone())
    .with_cluster(cluster.clone());
    let jobs = JobEngine::new(store.clone(), commands.clone());
    let releases = crate::releases::Releases::new(
        store.clone(),
        commands.clone(),
        key.clone(),
        config.data_dir.clone(),
    );
    // Builds published before the database kept their bytes get them from this relay's files.
    tokio::spawn({
        let (store, data_dir) = (store.clone(), config.data_dir.clone());
        async move {
            if let Err(e) = crate::releases::backfill(&store, &data_dir).await {
                tracing::warn!(error = %e, "cannot store the bytes of earlier builds");
            }
        }
    });
    let sweeper = ExpirySweeper::new(
        store.clone(),
        commands.clone(),
        Duration::from_secs(config.result_grace_secs),
    );
    let retention = Retention::new(store.clone(), config.retention_days);
    let heartbeats = Arc::new(HeartbeatCache::default());
    // Once, so listing agents never has to parse heartbeat JSON from the database.
    heartbeats.load(store.latest_heartbeats().await.map_err(
        |source| match &config.database_url {
            Some(url) => StartError::Database {
                url: crate::store::redact_database_url(url),
                source,
            },
            None => StartError::Store {
                path: data_dir.join(DB_FILE),
                source,
            },
        },
    )?);
    let state = AppState(Arc::new(Shared {
        fingerprint: key.public_key().fingerprint(),
        enroll_limiter: Arc::new(RateLimiter::new(config.enroll_rate_per_minute)),
        login_limiter: Arc::new(RateLimiter::new(crate::web::SIGN_IN_PER_MINUTE)),
        handshakes: Arc::new(crate::ratelimit::handshakes::PendingHandshakes::new(
            config.max_pending_handshakes,
            config.max_pending_handshakes_per_address,
        )),
        api_limits: crate::ratelimit::ApiLimits::new(
            config.api_rate_per_sec,
            config.api_rate_burst,
        ),
        config,
        store: store.clone(),
        hub,
        key,
        metrics,
        heartbeats: heartbeats.clone(),
        releases,
        commands,
        jobs: jobs.clone(),
        rollouts: rollouts.clone(),
        shutdown: shutdown.clone(),
        ready: AtomicBool::new(false),
        alerts: Arc::new(crate::alerts::AlertsHandle::default()),
        stream: stream.clone(),
        cluster: cluster.clone(),
    }));

    let rollout_engine = RolloutEngine::new(
        store.clone(),
        state.commands.clone(),
        state.hub.clone(),
        heartbeats.clone(),
        state.alerts.started_at,
        &state.config,
    );
    // Notifications: the alerts engine (and the lifecycle task) write them to the store's
    // outbox where they decide them; the notifier delivers from there under its lease.
    let notifier = crate::alerts::notify::Notifier::new(
        &state.config.notify,
        state.config.alerts.notify_give_up_after_secs,
        store.clone(),
    )?;
    // Lifecycle notifications read the live bus, subscribed before the relay serves (and
    // again whenever this relay takes the lease over); only when a channel wants one.
    let wants_lifecycle = crate::alerts::notify::NotifyEvent::ALL
        .into_iter()
        .any(|e| e.is_lifecycle() && notifier.wants(e));
    let lifecycle = {
        let (stream, notifier, hub, metrics) = (
            stream.clone(),
            notifier.clone(),
            state.hub.clone(),
            state.metrics.clone(),
        );
        let after = crate::alerts::unreachable_after(&state.config);
        move || {
            crate::alerts::notify::lifecycle::LifecycleTask::new(
                &stream,
                notifier.clone(),
                hub.clone(),
                metrics.clone(),
                after,
            )
        }
    };
    // Subscribed now, so the first run misses nothing from before serving.
    let mut first_lifecycle = Some(lifecycle());
    let alerts = crate::alerts::AlertsEngine::new(
        store.clone(),
        state.hub.clone(),
        heartbeats.clone(),
        state.metrics.clone(),
        state.alerts.clone(),
        &state.config,
        notifier.clone(),
    );
    let singleton = |name: &'static str| crate::cluster::Lease {
        cluster: cluster.clone(),
        store: store.clone(),
        name,
        shutdown: shutdown.clone(),
    };
    let mut tasks = vec![
        tokio::spawn(run_singleton(singleton("alerts"), {
            let stream = stream.clone();
            move |stop| alerts.clone().run(stream.clone(), stop)
        })),
        tokio::spawn(run_flusher(
            heartbeats.clone(),
            store.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(run_singleton(singleton("jobs"), move |stop| {
            jobs.clone().run(stop)
        })),
        tokio::spawn(run_singleton(singleton("expiry"), move |stop| {
            sweeper.clone().run(stop)
        })),
        tokio::spawn(run_singleton(singleton("rollouts"), {
            let kicks = rollouts.clone();
            move |stop| rollout_engine.clone().run(kicks.clone(), stop)
        })),
        tokio::spawn(crate::ratelimit::run_pruner(
            state.enroll_limiter.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(crate::ratelimit::run_pruner(
            state.login_limiter.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(crate::ratelimit::run_pruner(
            state.api_limits.by_credential.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(crate::ratelimit::run_pruner(
            state.api_limits.by_address.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(run_singleton(singleton("retention"), move |stop| {
            retention.clone().run(stop)
        })),
    ];
    // The relay's own backups, under their lease: at most one relay of a cluster backs up.
    if state.config.backup.enabled {
        let backup =
            crate::selfbackup::SelfBackup::new(store.clone(), &state.config, cluster.relay_id());
        tasks.push(tokio::spawn(run_singleton(
            singleton(crate::selfbackup::LEASE),
            move |stop| crate::selfbackup::run_scheduled(backup.clone(), stop),
        )));
    }
    if !notifier.channels().is_empty() {
        tasks.push(tokio::spawn(run_singleton(
            singleton("notify"),
            move |stop| notifier.clone().run(stop),
        )));
    }
    if wants_lifecycle {
        tasks.push(tokio::spawn(run_singleton(
            singleton("notify-lifecycle"),
            move |stop| {
                let task = first_lifecycle.take().unwrap_or_else(&lifecycle);
                task.run(stop)
            },
        )));
    }
    tasks.extend(
        crate::peers::ClusterTasks {
            cluster: cluster.clone(),
            store: store.clone(),
            hub: state.hub.clone(),
            commands: state.commands.clone(),
            stream: stream.clone(),
            heartbeats: heartbeats.clone(),
            rollouts: rollouts.clone(),
            alerts: state.alerts.clone(),
            address: addr.to_string(),
        }
        .start(outbox, shutdown.clone()),
    );
    let app = crate::api::router(
        state.clone(),
        axum::routing::get(crate::ws::connect),
        crate::web::routes(),
    );
    // Header-read and idle timeouts, a per-address connection cap, TCP_NODELAY (listener.rs).
    let limits = crate::listener::Limits {
        header_read_timeout: Duration::from_secs(state.config.header_read_timeout_secs),
        max_per_address: state.config.max_connections_per_address,
        exempt: state.config.trusted_proxies.clone(),
    };
    let server = tokio::spawn(crate::listener::serve(
        listener,
        app,
        limits,
        state.metrics.clone(),
        shutdown.clone(),
    ));
    state.ready.store(true, Ordering::Release);
    tasks.extend(systemd_tasks(store.clone(), addr, shutdown.clone()).await);
    tracing::info!(%addr, fingerprint = %state.fingerprint, "relay serving");
    Ok(RunningRelay {
        addr,
        admin_token_created,
        state,
        server,
        tasks,
    })
}
