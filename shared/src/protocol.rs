//! Websocket frames between agent and relay: JSON text, one message per frame,
//! `{"type": "...", ...}`.
//!
//! Connection life: the relay sends `hello` with a random challenge; the agent answers `auth`
//! signed with its key; the relay answers `welcome` (signed labels) or `error` and closes. Then the
//! relay sends `command`s (re-sent after reconnect until a result arrives or they expire) and
//! `ack`s; the agent sends `heartbeat`s, `received` for each command it journaled, and its durable
//! outbox as `outbox` frames numbered by `seq`, which the relay acknowledges with `ack` once
//! persisted.

use crate::command::{CommandResult, SignedCommand};
use crate::heartbeat::{AgentEvent, Heartbeat};
use crate::selector::Labels;
use crate::signing::{PublicKey, SigningError, SigningKey, WELCOME_DOMAIN};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The websocket path agents connect to.
pub const CONNECT_PATH: &str = "/api/v1/agent/connect";
/// The HTTP path agents enroll at.
pub const ENROLL_PATH: &str = "/api/v1/enroll";

/// Frames the relay sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RelayFrame {
    Hello {
        protocol_version: u32,
        /// 32 random bytes, base64.
        challenge: String,
    },
    Welcome {
        welcome: SignedWelcome,
        heartbeat_interval_secs: u64,
        /// The largest frame the relay accepts; the agent keeps every frame it sends below it
        /// (absent from older relays: the agent then uses its own configured limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_frame_bytes: Option<usize>,
    },
    Command(SignedCommand),
    /// Every outbox item with `seq` at or below this one is persisted by the relay.
    Ack {
        seq: u64,
    },
    Error {
        code: String,
        message: String,
    },
}

/// Frames the agent sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    Auth {
        agent_id: String,
        protocol_version: u32,
        agent_version: String,
        /// Signature over `signing::auth_message(challenge, agent_id)` with AUTH_DOMAIN.
        signature: String,
    },
    Heartbeat(Box<Heartbeat>),
    /// The command is journaled on the agent (it will run, or has run, exactly once).
    Received {
        command_id: String,
    },
    Outbox {
        seq: u64,
        item: OutboxItem,
    },
    Error {
        code: String,
        message: String,
    },
}

/// What goes through the agent's durable outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum OutboxItem {
    Result(CommandResult),
    Event(AgentEvent),
    /// The outcome of a backup run (or of a watched external status file).
    BackupReport(crate::backup::BackupReport),
}

/// Protocol error codes carried by `error` frames.
pub mod error_codes {
    pub const MALFORMED_FRAME: &str = "malformed_frame";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const AUTH_FAILED: &str = "auth_failed";
    pub const REVOKED: &str = "revoked";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_protocol_version";
    pub const UNEXPECTED_FRAME: &str = "unexpected_frame";
    pub const REPLACED: &str = "replaced_by_new_connection";
    pub const INTERNAL: &str = "internal_error";
}

/// What the relay vouches for about an agent at connect time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WelcomeBody {
    pub agent_id: String,
    pub labels: Labels,
    pub issued_at: DateTime<Utc>,
}

/// A welcome body as the exact signed JSON text plus signature (see `signing`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedWelcome {
    pub body: String,
    pub signature: String,
}

impl SignedWelcome {
    pub fn sign(body: &WelcomeBody, key: &SigningKey) -> SignedWelcome {
        let text = serde_json::to_string(body).expect("welcome serialises");
        SignedWelcome {
            signature: key.sign(WELCOME_DOMAIN, text.as_bytes()),
            body: text,
        }
    }

    pub fn verify(&self, relay_key: &PublicKey) -> Result<WelcomeBody, SigningError> {
        relay_key.verify(WELCOME_DOMAIN, self.body.as_bytes(), &self.signature)?;
        serde_json::from_str(&self.body).map_err(|_| SigningError::Key("welcome body is malformed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, ContainerRef, ResultStatus};
    use crate::heartbeat::{DockerSnapshot, EventKind, HostMetrics};
    use serde_json::json;

    fn round_trip_relay(f: RelayFrame) {
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<RelayFrame>(&s).unwrap(), f, "{s}");
    }

    fn round_trip_agent(f: AgentFrame) {
        let s = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<AgentFrame>(&s).unwrap(), f, "{s}");
    }

    #[test]
    fn relay_frames_round_trip() {
        let key = SigningKey::generate();
        round_trip_relay(RelayFrame::Hello {
            protocol_version: 1,
            challenge: "abc".into(),
        });
        round_trip_relay(RelayFrame::Ack { seq: 7 });
        round_trip_relay(RelayFrame::Error {
            code: "x".into(),
            message: "y".into(),
        });
        round_trip_relay(RelayFrame::Welcome {
            welcome: SignedWelcome::sign(
                &WelcomeBody {
                    agent_id: "ag_1".into(),
                    labels: Labels::new(),
                    issued_at: Utc::now(),
                },
                &key,
            ),
            heartbeat_interval_secs: 60,
            max_frame_bytes: Some(1 << 20),
        });
        let env = crate::command::CommandEnvelope {
            id: "cmd_1".into(),
            audience: crate::command::Audience::Agent {
                agent_id: "ag_1".into(),
            },
            command: Command::ContainerStart(ContainerRef {
                container: "web".into(),
            }),
            issued_at: Utc::now(),
            expires_at: Utc::now(),
        };
        let f = RelayFrame::Command(SignedCommand::sign(&env, &key));
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["type"], "command");
        round_trip_relay(f);
    }

    #[test]
    fn agent_frames_round_trip() {
        round_trip_agent(AgentFrame::Auth {
            agent_id: "ag_1".into(),
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            signature: "sig".into(),
        });
        round_trip_agent(AgentFrame::Received {
            command_id: "cmd_1".into(),
        });
        round_trip_agent(AgentFrame::Heartbeat(Box::new(Heartbeat {
            at: Utc::now(),
            agent_version: "0.1.0".into(),
            host: HostMetrics::default(),
            docker: DockerSnapshot::default(),
            backup: None,
            compose_drift: Vec::new(),
        })));
        round_trip_agent(AgentFrame::Outbox {
            seq: 3,
            item: OutboxItem::Result(CommandResult {
                command_id: "cmd_1".into(),
                status: ResultStatus::Succeeded,
                output: Some(json!({"pong": true})),
                error: None,
                started_at: Utc::now(),
                finished_at: Utc::now(),
            }),
        });
        round_trip_agent(AgentFrame::Outbox {
            seq: 4,
            item: OutboxItem::Event(AgentEvent {
                kind: EventKind::ContainerDied,
                at: Utc::now(),
                container_id: Some("abc".into()),
                container_name: Some("web".into()),
                message: "container web died".into(),
                attributes: Default::default(),
            }),
        });
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            "",
            "{}",
            "[1]",
            r#"{"type":"nope"}"#,
            r#"{"type":"outbox","seq":"x"}"#,
            "\u{0}",
        ] {
            assert!(serde_json::from_str::<AgentFrame>(bad).is_err(), "{bad}");
        }
        let e: serde_json::Value =
            serde_json::from_str(r#"{"type":"event","kind":"future.kind"}"#).unwrap();
        assert!(e.is_object());
        let k: EventKind = serde_json::from_value(json!("container.something_new")).unwrap();
        assert_eq!(k, EventKind::Unknown);
    }

    #[test]
    fn welcome_signature() {
        let key = SigningKey::generate();
        let body = WelcomeBody {
            agent_id: "ag_1".into(),
            labels: Labels::new(),
            issued_at: Utc::now(),
        };
        let w = SignedWelcome::sign(&body, &key);
        assert_eq!(w.verify(&key.public_key()).unwrap(), body);
        assert!(w.verify(&SigningKey::generate().public_key()).is_err());
    }
}
