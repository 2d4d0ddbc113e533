//! The notification outbox's facade (statements in `sql/notifications.rs`): notifications are
//! written where they are decided (alerts: inside [`Store::apply_alert_conditions`]; lifecycle
//! events: [`Store::queue_notifications`]), then claimed, sent and finished by the delivery
//! engine. Its writes run under the `notify` lease and are fenced like every singleton's.

use super::*;
use crate::model::alerts::outbox::{
    AttemptOutcome, ChannelFailures, Claimed, NewNotification, NotificationQuery,
};
use flotilla_shared::alert::NotificationDelivery;

impl Store {
    /// Writes decided notifications (a second decision of the same delivery id and channel
    /// changes nothing). Returns (rows written, of which given up at once for a full queue).
    pub async fn queue_notifications(
        &self,
        rows: Vec<NewNotification>,
        capacity: usize,
        now: DateTime<Utc>,
    ) -> Result<(usize, usize), StoreError> {
        self.write(move |c| Sql::insert_notifications(c, &rows, capacity, now))
            .await
    }

    /// Claims up to `limit` of `channel`'s notifications due at `now` for one attempt each,
    /// until `claim_until` (then a notification whose attempt never finished is due again).
    pub async fn claim_notifications(
        &self,
        channel: String,
        now: DateTime<Utc>,
        claim_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.write(move |c| Sql::claim_notifications(c, &channel, now, claim_until, limit))
            .await
    }

    /// Records how a claimed attempt ended; false when the attempt no longer owned the row.
    pub async fn finish_notification(
        &self,
        claimed: Claimed,
        outcome: AttemptOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Sql::finish_notification(c, &claimed, &outcome, now))
            .await
    }

    /// When `channel`'s next pending notification is due.
    pub async fn next_notification_due(
        &self,
        channel: String,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |c| Sql::next_notification_due(c, &channel))
            .await
    }

    /// Stored notifications, newest first (`GET /api/v1/notifications`).
    pub async fn notifications(
        &self,
        query: NotificationQuery,
    ) -> Result<Vec<NotificationDelivery>, StoreError> {
        self.read(move |c| Sql::notifications(c, &query)).await
    }

    /// Channels that gave a notification up and delivered none since.
    pub async fn notification_failures(&self) -> Result<Vec<ChannelFailures>, StoreError> {
        self.read(Sql::notification_failures).await
    }
}
