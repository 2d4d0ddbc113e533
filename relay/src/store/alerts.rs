//! Alert persistence: domain methods of [`Store`] for the alerts engine and API (SQL in
//! `sql/alerts.rs`). The engine's evaluation is one call, [`Store::apply_alert_conditions`],
//! one transaction: the diff of the conditions with the firing alerts, silences, and the
//! notification decisions with their outbox rows (`store/notifications.rs`).

use super::{Sql, Store, StoreError};
use crate::model::alerts::rules::{Condition, FinishedUpdate, RequestedStop};
use crate::model::alerts::{AlertPolicy, AlertQuery, Applied};
use chrono::{DateTime, Utc};
use flotilla_shared::alert::{AlertInfo, Silence};
use flotilla_shared::heartbeat::AgentEvent;

impl Store {
    /// Applies one evaluation's conditions (see the module doc); returns the notifications to
    /// hand over and the counts of firing alerts.
    pub async fn apply_alert_conditions(
        &self,
        conditions: Vec<Condition>,
        policy: AlertPolicy,
    ) -> Result<Applied, StoreError> {
        self.write(move |c| Sql::apply_conditions(c, &conditions, &policy))
            .await
    }

    /// Keys (agent id or "", rule, subject) of the firing alerts of these rules.
    pub async fn firing_alert_keys(
        &self,
        rules: Vec<&'static str>,
    ) -> Result<crate::model::alerts::rules::FiringKeys, StoreError> {
        self.read(move |c| Sql::firing_alert_keys(c, &rules)).await
    }

    /// Alerts, firing first, then newest first.
    pub async fn alerts(&self, query: AlertQuery) -> Result<Vec<AlertInfo>, StoreError> {
        self.read(move |c| Sql::alerts(c, &query)).await
    }

    pub async fn alert(&self, id: String) -> Result<Option<AlertInfo>, StoreError> {
        self.read(move |c| Sql::alert(c, &id)).await
    }

    /// Acknowledges an alert (an acknowledged alert is not notified again; it stays firing).
    /// None when there is no such alert.
    pub async fn ack_alert(
        &self,
        id: String,
        by: String,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertInfo>, StoreError> {
        self.write(move |c| Sql::ack_alert(c, &id, &by, now)).await
    }

    pub async fn create_silence(&self, silence: Silence) -> Result<(), StoreError> {
        self.write(move |c| Sql::create_silence(c, &silence)).await
    }

    /// Silences that have not ended as of `now`.
    pub async fn silences(&self, now: DateTime<Utc>) -> Result<Vec<Silence>, StoreError> {
        self.read(move |c| Sql::silences(c, now)).await
    }

    /// Ends a silence now; false when there is no such silence still in force or to come.
    pub async fn end_silence(&self, id: String, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.write(move |c| Sql::end_silence(c, &id, now)).await
    }

    /// Deletes resolved alerts, ended silences and finished notifications older than `cutoff`;
    /// returns the alerts gone.
    pub async fn prune_alerts(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write(move |c| {
            let n = Sql::prune_alerts(c, cutoff)?;
            Sql::prune_notifications(c, cutoff)?;
            Ok(n)
        })
        .await
    }

    /// Container died/OOM/restart-loop events received since `since`, oldest first, with
    /// their agent ids, and how many unreadable rows were skipped.
    pub async fn container_alert_events(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<(String, AgentEvent)>, usize), StoreError> {
        self.read(move |c| Sql::container_events(c, since)).await
    }

    /// Stops and restarts the relay was asked for since `since`, and how many unreadable
    /// rows were skipped.
    pub async fn requested_stops(
        &self,
        since: DateTime<Utc>,
    ) -> Result<(Vec<RequestedStop>, usize), StoreError> {
        self.read(move |c| Sql::requested_stops(c, since)).await
    }

    /// Updates finished since `since`.
    pub async fn finished_updates(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<FinishedUpdate>, StoreError> {
        self.read(move |c| Sql::finished_updates(c, since)).await
    }
}
