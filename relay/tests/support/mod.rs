//! The in-process relay of the relay's integration tests:
//! `TestRelay::in_process("name").config(|c| …).start().await` runs the real server on
//! 127.0.0.1:0 with a fresh data directory (removed on drop) and hands back the running relay,
//! its base URL, the admin token it created and an HTTP client. A module of each test crate
//! (`mod support;`), not part of flotilla-testkit, which must not link the server.

use flotilla_relay_server::config::RelayConfig;
use flotilla_relay_server::RunningRelay;

/// A running in-process relay and what a test talks to it with.
pub struct TestRelay {
    pub relay: RunningRelay,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token of this (first) start.
    pub admin: String,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The configuration of a relay about to start.
pub struct Builder {
    name: &'static str,
    config: RelayConfig,
}

impl TestRelay {
    /// A relay on 127.0.0.1:0 with the default settings otherwise; `name` prefixes its data
    /// directory.
    pub fn in_process(name: &'static str) -> Builder {
        Builder {
            name,
            config: RelayConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                // Every client is 127.0.0.1: the API's per-client limits are lifted unless a
                // test sets them.
                api_rate_per_sec: 1_000_000,
                api_rate_burst: 1_000_000,
                ..RelayConfig::default()
            },
        }
    }

    /// The websocket URL agents connect to.
    #[allow(dead_code, reason = "not every test crate connects agents")]
    pub fn ws_url(&self) -> String {
        format!(
            "ws://{}{}",
            self.relay.local_addr(),
            flotilla_shared::protocol::CONNECT_PATH
        )
    }
}

impl TestRelay {
    /// A new enrollment token (its secret) made with the admin token.
    #[allow(dead_code, reason = "not every test crate enrolls agents")]
    pub async fn enrollment_token(
        &self,
        req: &flotilla_shared::api::CreateEnrollmentToken,
    ) -> String {
        let created: flotilla_shared::api::EnrollmentTokenCreated = self
            .http
            .post(format!("{}/api/v1/enrollment-tokens", self.base))
            .bearer_auth(&self.admin)
            .json(req)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        created.token
    }

    /// `GET path` with the admin token, answered 200 with JSON.
    #[allow(dead_code, reason = "not every test crate reads the API this way")]
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET {path}");
        resp.json().await.unwrap()
    }
}

impl Builder {
    /// Changes the settings (the data directory is set at start).
    #[allow(dead_code, reason = "not every test crate changes settings")]
    pub fn config(mut self, configure: impl FnOnce(&mut RelayConfig)) -> Builder {
        configure(&mut self.config);
        self
    }

    /// Starts the relay in a fresh data directory.
    pub async fn start(self) -> TestRelay {
        let dir = flotilla_testkit::temp_dir(self.name);
        let config = RelayConfig {
            data_dir: dir.path().to_path_buf(),
            ..self.config
        };
        let relay = flotilla_relay_server::start(config).await.unwrap();
        TestRelay {
            admin: relay.admin_token_created().unwrap().to_string(),
            base: relay.base_url(),
            http: reqwest::Client::new(),
            relay,
            _dir: dir,
        }
    }
}
