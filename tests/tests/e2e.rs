//! End-to-end tests: real `flotilla-relay` and `flotilla-agent` processes on loopback, the real
//! Docker engine, real SQLite files. Each test gets its own relay and its own scope label, so tests
//! run in parallel on one engine without seeing each other's containers.

mod e2e {
    pub mod alerts;
    pub mod api;
    pub mod backup;
    // issue 17 part 4
    pub mod backup_expected;
    pub mod certs;
    pub mod cli;
    pub mod commands;
    pub mod compose;
    pub mod database_tls;
    pub mod delivery;
    pub mod enrollment;
    pub mod events;
    pub mod failover;
    pub mod fanout;
    pub mod ha;
    pub mod heartbeats;
    pub mod install;
    // issue 18 parts 4-5: timeouts, connection caps, rate limits, /metrics
    pub mod limits;
    pub mod migrate;
    // issue 18 part 2: notifications across relay crashes
    pub mod notify;
    pub mod openapi;
    pub mod protocol_abuse;
    // issue 15 item 8: the relay backs up its own database
    pub mod relay_backup;
    pub mod restore;
    pub mod rolling;
    pub mod rollout;
    pub mod secrets;
    pub mod tls;
    pub mod trust;
    pub mod update;
    // issue 17 part 6
    pub mod upkeep;
    pub mod web;
}

use std::time::Duration;

/// Generous upper bound for an effect that normally takes well under a second; tests poll and
/// return as soon as the effect is seen.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The test images (built once per test process; building is idempotent across processes).
pub async fn images() -> &'static flotilla_tests::fixtures::TestImages {
    static IMAGES: tokio::sync::OnceCell<flotilla_tests::fixtures::TestImages> =
        tokio::sync::OnceCell::const_new();
    IMAGES
        .get_or_init(|| async {
            tokio::task::spawn_blocking(flotilla_tests::fixtures::ensure_test_images)
                .await
                .expect("fixture thread")
                .expect("build test images (is the Docker engine reachable?)")
        })
        .await
}
