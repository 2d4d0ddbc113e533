//! Command acceptance: the checks every command passes before it may run, in the contract's
//! order — signature (pinned relay key), parse, audience, time window, local policy, replay.
//!
//! A refusal always becomes a `command.rejected` event; when the signature verified (so the relay
//! really issued the command and has a record waiting for it) it also becomes a `rejected`
//! result.

use crate::state::{JournalBegin, JournalEntry, State};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use flotilla_shared::command::{
    error_codes, CommandEnvelope, CommandKind, CommandResult, ErrorInfo, ResultStatus,
    SignedCommand,
};
use flotilla_shared::heartbeat::{AgentEvent, EventKind};
use flotilla_shared::protocol::OutboxItem;
use flotilla_shared::selector::Labels;
use flotilla_shared::signing::PublicKey;
use std::collections::{BTreeMap, BTreeSet};

/// How far in the future `issued_at` may lie (clock skew between relay and agent).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// A command refused before running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The command id, when it could be read at all.
    pub command_id: Option<String>,
    /// One of `flotilla_shared::command::error_codes`.
    pub code: &'static str,
    pub reason: String,
    /// The relay's signature verified: the relay has a record of this command and gets a
    /// `rejected` result for it.
    pub authentic: bool,
}

impl Rejection {
    /// The outbox items that report this refusal: always an event, plus a result when the
    /// command was authentic and has an id.
    pub fn outbox_items(&self, now: DateTime<Utc>) -> Vec<OutboxItem> {
        let mut attributes = BTreeMap::new();
        if let Some(id) = &self.command_id {
            attributes.insert("command_id".to_string(), id.clone());
        }
        attributes.insert("code".to_string(), self.code.to_string());
        attributes.insert("reason".to_string(), self.reason.clone());
        let message = match &self.command_id {
            Some(id) => format!("command {id} rejected: {}", self.reason),
            None => format!("command rejected: {}", self.reason),
        };
        let mut items = vec![OutboxItem::Event(AgentEvent {
            kind: EventKind::CommandRejected,
            at: now,
            container_id: None,
            container_name: None,
            message,
            attributes,
        })];
        if let (true, Some(id)) = (self.authentic, &self.command_id) {
            items.push(OutboxItem::Result(CommandResult {
                command_id: id.clone(),
                status: ResultStatus::Rejected,
                output: None,
                error: Some(ErrorInfo {
                    code: self.code.to_string(),
                    message: self.reason.clone(),
                }),
                started_at: now,
                finished_at: now,
            }));
        }
        items
    }
}

/// The agent-side facts a command is checked against.
#[derive(Clone, Debug)]
pub struct Verifier {
    pub agent_id: String,
    pub relay_key: PublicKey,
    pub allowed: BTreeSet<CommandKind>,
}

impl Verifier {
    /// Signature, parse, audience, time window and policy — everything but replay, which needs
    /// the journal. `labels` are those of the latest verified welcome.
    pub fn check(
        &self,
        signed: &SignedCommand,
        labels: &Labels,
        now: DateTime<Utc>,
    ) -> Result<CommandEnvelope, Rejection> {
        // 1. signature over the exact received bytes
        if let Err(e) = self.relay_key.verify(
            flotilla_shared::signing::COMMAND_DOMAIN,
            signed.envelope.as_bytes(),
            &signed.signature,
        ) {
            return Err(Rejection {
                command_id: peek_id(&signed.envelope),
                code: error_codes::BAD_SIGNATURE,
                reason: format!("signature does not verify with the pinned relay key ({e})"),
                authentic: false,
            });
        }
        // 2. parse
        let env: CommandEnvelope =
            serde_json::from_str(&signed.envelope).map_err(|e| Rejection {
                command_id: peek_id(&signed.envelope),
                code: error_codes::MALFORMED,
                reason: format!("command envelope is malformed: {e}"),
                authentic: true,
            })?;
        let reject = |code: &'static str, reason: String| Rejection {
            command_id: Some(env.id.clone()),
            code,
            reason,
            authentic: true,
        };
        // 3. audience
        if !env.audience.includes(&self.agent_id, labels) {
            let reason = match &env.audience {
                flotilla_shared::command::Audience::Agent { agent_id } => {
                    format!(
                        "command is addressed to agent {agent_id}, not {}",
                        self.agent_id
                    )
                }
                flotilla_shared::command::Audience::Selector { selector } => {
                    format!("selector {selector} does not match this agent's labels")
                }
            };
            return Err(reject(error_codes::WRONG_AUDIENCE, reason));
        }
        // 4. time window
        if env.expires_at <= now {
            return Err(reject(
                error_codes::EXPIRED,
                format!("command expired at {}", env.expires_at.to_rfc3339()),
            ));
        }
        if env.issued_at > now + ChronoDuration::seconds(MAX_CLOCK_SKEW_SECS) {
            return Err(reject(
                error_codes::NOT_YET_VALID,
                format!(
                    "command is issued at {}, more than {MAX_CLOCK_SKEW_SECS} s in the future",
                    env.issued_at.to_rfc3339()
                ),
            ));
        }
        // 5. local policy
        let kind = env.command.kind();
        if !self.allowed.contains(&kind) {
            return Err(reject(
                error_codes::POLICY,
                format!("command kind {kind} is not allowed by this agent's policy"),
            ));
        }
        Ok(env)
    }
}

/// Reads the id out of an envelope that failed verification, for the rejection report.
fn peek_id(envelope: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(envelope)
        .ok()?
        .get("id")?
        .as_str()
        .map(str::to_string)
}

/// What to do with a received command.
#[derive(Clone, Debug, PartialEq)]
pub enum Admission {
    /// Passed every check and is now journaled as running: run it.
    Accepted(CommandEnvelope),
    /// Already journaled: do not run again. `stored` is its result when it finished.
    Duplicate {
        command_id: String,
        stored: Option<Box<CommandResult>>,
    },
    Rejected(Rejection),
}

/// All checks including replay: on acceptance the command is journaled (atomically with the
/// replay check), so a second copy can never be accepted.
pub async fn admit(
    verifier: &Verifier,
    state: &State,
    signed: &SignedCommand,
    labels: &Labels,
    now: DateTime<Utc>,
) -> anyhow::Result<Admission> {
    let env = match verifier.check(signed, labels, now) {
        Ok(env) => env,
        Err(r) => return Ok(Admission::Rejected(r)),
    };
    Ok(
        match state
            .journal_begin_with(
                &env.id,
                now,
                env.expires_at,
                serde_json::to_string(&env.command).ok(),
            )
            .await?
        {
            JournalBegin::New => Admission::Accepted(env),
            JournalBegin::Existing(JournalEntry::Running) => Admission::Duplicate {
                command_id: env.id,
                stored: None,
            },
            JournalBegin::Existing(JournalEntry::Done(result)) => Admission::Duplicate {
                command_id: env.id,
                stored: Some(result),
            },
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{result, temp_dir};
    use flotilla_shared::command::{Audience, Command, ContainerRef, PingArgs};
    use flotilla_shared::selector::parse_labels;
    use flotilla_shared::signing::SigningKey;

    struct Fixture {
        relay: SigningKey,
        verifier: Verifier,
        labels: Labels,
        now: DateTime<Utc>,
    }

    fn fixture() -> Fixture {
        let relay = SigningKey::generate();
        let verifier = Verifier {
            agent_id: "ag_me".into(),
            relay_key: relay.public_key(),
            allowed: [CommandKind::Ping, CommandKind::ContainerStart]
                .into_iter()
                .collect(),
        };
        Fixture {
            relay,
            verifier,
            labels: parse_labels("tier=build,region=eu").unwrap(),
            now: Utc::now(),
        }
    }

    fn envelope(f: &Fixture) -> CommandEnvelope {
        CommandEnvelope {
            id: "cmd_1".into(),
            audience: Audience::Agent {
                agent_id: "ag_me".into(),
            },
            command: Command::Ping(PingArgs {}),
            issued_at: f.now - ChronoDuration::seconds(1),
            expires_at: f.now + ChronoDuration::minutes(10),
        }
    }

    /// Signs `env` with the relay key and checks the verdict's code (None = accepted).
    fn check(f: &Fixture, env: &CommandEnvelope, expected: Option<&str>) -> Option<Rejection> {
        let signed = SignedCommand::sign(env, &f.relay);
        let got = f.verifier.check(&signed, &f.labels, f.now);
        assert_eq!(
            got.as_ref().err().map(|r| r.code),
            expected,
            "{got:?} for {env:?}"
        );
        got.err()
    }

    #[test]
    fn accepts_a_good_command() {
        let f = fixture();
        check(&f, &envelope(&f), None);
        let mut e = envelope(&f);
        e.audience = Audience::Selector {
            selector: "tier=build".parse().unwrap(),
        };
        check(&f, &e, None);
        // Issued a little in the future (clock skew) is fine.
        e.issued_at = f.now + ChronoDuration::seconds(200);
        check(&f, &e, None);
    }

    #[test]
    fn forged_signature_is_rejected_without_result() {
        let f = fixture();
        let forged = SignedCommand::sign(&envelope(&f), &SigningKey::generate());
        let r = f.verifier.check(&forged, &f.labels, f.now).unwrap_err();
        assert_eq!(r.code, "bad_signature");
        assert_eq!(r.command_id.as_deref(), Some("cmd_1"));
        assert!(!r.authentic);
        let items = r.outbox_items(f.now);
        assert_eq!(items.len(), 1, "a forged command gets no result: {items:?}");
        match &items[0] {
            OutboxItem::Event(e) => {
                assert_eq!(e.kind, EventKind::CommandRejected);
                assert_eq!(e.attributes["command_id"], "cmd_1");
                assert_eq!(e.attributes["code"], "bad_signature");
                assert!(e.attributes.contains_key("reason"));
            }
            other => panic!("{other:?}"),
        }
        // Tampering with the signed bytes is the same as forging.
        let mut tampered = SignedCommand::sign(&envelope(&f), &f.relay);
        tampered.envelope = tampered.envelope.replace("ping", "container.start");
        assert_eq!(
            f.verifier
                .check(&tampered, &f.labels, f.now)
                .unwrap_err()
                .code,
            "bad_signature"
        );
        // Garbage signature text.
        let mut garbage = SignedCommand::sign(&envelope(&f), &f.relay);
        garbage.signature = "!!".into();
        assert_eq!(
            f.verifier
                .check(&garbage, &f.labels, f.now)
                .unwrap_err()
                .code,
            "bad_signature"
        );
    }

    #[test]
    fn authentic_but_malformed_envelope() {
        let f = fixture();
        let text = r#"{"id":"cmd_9","command":{"kind":"container.nuke"}}"#;
        let signed = SignedCommand {
            envelope: text.into(),
            signature: f
                .relay
                .sign(flotilla_shared::signing::COMMAND_DOMAIN, text.as_bytes()),
        };
        let r = f.verifier.check(&signed, &f.labels, f.now).unwrap_err();
        assert_eq!(r.code, "malformed_command");
        assert_eq!(r.command_id.as_deref(), Some("cmd_9"));
        assert!(r.authentic);
        assert_eq!(r.outbox_items(f.now).len(), 2);
    }

    #[test]
    fn wrong_agent_id() {
        let f = fixture();
        let mut e = envelope(&f);
        e.audience = Audience::Agent {
            agent_id: "ag_other".into(),
        };
        let r = check(&f, &e, Some("wrong_audience")).unwrap();
        assert!(r.reason.contains("ag_other"), "{}", r.reason);
        let items = r.outbox_items(f.now);
        assert_eq!(items.len(), 2);
        match &items[1] {
            OutboxItem::Result(res) => {
                assert_eq!(res.status, ResultStatus::Rejected);
                assert_eq!(res.command_id, "cmd_1");
                assert_eq!(res.error.as_ref().unwrap().code, "wrong_audience");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selector_not_matching_welcome_labels() {
        let f = fixture();
        let mut e = envelope(&f);
        e.audience = Audience::Selector {
            selector: "tier=web".parse().unwrap(),
        };
        check(&f, &e, Some("wrong_audience"));
        e.audience = Audience::Selector {
            selector: "tier=build,!region".parse().unwrap(),
        };
        check(&f, &e, Some("wrong_audience"));
    }

    #[test]
    fn expired_and_future_commands() {
        let f = fixture();
        let mut e = envelope(&f);
        e.expires_at = f.now - ChronoDuration::seconds(1);
        check(&f, &e, Some("expired"));
        e.expires_at = f.now;
        check(&f, &e, Some("expired"));
        let mut e = envelope(&f);
        e.issued_at = f.now + ChronoDuration::seconds(301);
        check(&f, &e, Some("not_yet_valid"));
    }

    #[test]
    fn kind_not_allowed_by_policy() {
        let f = fixture();
        let mut e = envelope(&f);
        e.command = Command::ContainerInspect(ContainerRef {
            container: "web".into(),
        });
        let r = check(&f, &e, Some("policy_denied")).unwrap();
        assert!(r.reason.contains("container.inspect"), "{}", r.reason);
    }

    #[test]
    fn checks_run_in_contract_order() {
        let f = fixture();
        // Expired AND wrong audience AND disallowed kind: audience is reported first.
        let mut e = envelope(&f);
        e.audience = Audience::Agent {
            agent_id: "ag_other".into(),
        };
        e.expires_at = f.now - ChronoDuration::seconds(5);
        e.command = Command::ContainerInspect(ContainerRef {
            container: "web".into(),
        });
        check(&f, &e, Some("wrong_audience"));
        // Expired and disallowed: expiry first.
        e.audience = Audience::Agent {
            agent_id: "ag_me".into(),
        };
        check(&f, &e, Some("expired"));
    }

    #[tokio::test]
    async fn duplicate_id_is_not_accepted_twice() {
        let f = fixture();
        let dir = temp_dir();
        let state = State::open(&dir).await.unwrap();
        let signed = SignedCommand::sign(&envelope(&f), &f.relay);
        let first = admit(&f.verifier, &state, &signed, &f.labels, f.now)
            .await
            .unwrap();
        assert!(matches!(first, Admission::Accepted(ref e) if e.id == "cmd_1"));
        let second = admit(&f.verifier, &state, &signed, &f.labels, f.now)
            .await
            .unwrap();
        assert_eq!(
            second,
            Admission::Duplicate {
                command_id: "cmd_1".into(),
                stored: None
            }
        );
        let r = result("cmd_1");
        state.finish_command(r.clone()).await.unwrap();
        let third = admit(&f.verifier, &state, &signed, &f.labels, f.now)
            .await
            .unwrap();
        assert_eq!(
            third,
            Admission::Duplicate {
                command_id: "cmd_1".into(),
                stored: Some(Box::new(r))
            }
        );
        // A forged copy of a journaled id is still refused for its signature, not deduplicated.
        let forged = SignedCommand::sign(&envelope(&f), &SigningKey::generate());
        let v = admit(&f.verifier, &state, &forged, &f.labels, f.now)
            .await
            .unwrap();
        assert!(matches!(v, Admission::Rejected(ref r) if r.code == "bad_signature"));
        std::fs::remove_dir_all(dir).ok();
    }
}
