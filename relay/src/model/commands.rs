//! A command as the store persists it: the signed envelope, its audience, expiry and first
//! delivery state per target. Built by the commands service, carried by engine decisions (a
//! rollout's dispatch), inserted by the store before anything is sent.

use chrono::{DateTime, Utc};
use flotilla_shared::api::DeliveryState;
use flotilla_shared::command::{Audience, Command, SignedCommand};

/// A signed command and who it goes to, persisted before anything is sent.
#[derive(Clone, Debug)]
pub struct NewCommand {
    pub id: String,
    pub command: Command,
    pub signed: SignedCommand,
    pub audience: Audience,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub job_id: Option<String>,
    /// Target agents in dispatch order, each with its first delivery state.
    pub targets: Vec<(String, DeliveryState)>,
}
