//! The store's facade for commands and their deliveries: async methods of [`Store`], each one blocking call
//! in `sql/commands.rs` off the async threads.

use super::*;

impl Store {
    /// Persists a command with its deliveries (one transaction).
    pub async fn create_command(&self, command: NewCommand) -> Result<(), StoreError> {
        self.write(move |c| Sql::create_command(c, &command, None))
            .await
    }

    /// Persists a job with its command and deliveries (one transaction).
    pub async fn create_job(&self, job: NewJob, command: NewCommand) -> Result<(), StoreError> {
        self.write(move |c| Sql::create_command(c, &command, Some(&job)))
            .await
    }

    /// The command as seen by one agent. With `agent_id` None the command must be a single
    /// (non-job) command.
    pub async fn command_info(
        &self,
        command_id: String,
        agent_id: Option<String>,
    ) -> Result<CommandLookup, StoreError> {
        self.read(move |c| Sql::command_info(c, &command_id, agent_id.as_deref()))
            .await
    }

    /// Unfinished, unexpired commands for an agent (queued, sent or received), oldest first.
    pub async fn pending_commands(
        &self,
        agent_id: String,
    ) -> Result<Vec<(String, SignedCommand)>, StoreError> {
        self.read(move |c| Sql::pending_commands(c, &agent_id, now()))
            .await
    }

    /// queued → sent for these deliveries (other states are left alone).
    pub async fn mark_sent(
        &self,
        command_id: String,
        agent_ids: Vec<String>,
    ) -> Result<(), StoreError> {
        self.write(move |c| Sql::mark_sent(c, &command_id, &agent_ids, now()))
            .await
    }

    /// queued/sent → received. False when the agent has no such unfinished delivery.
    pub async fn mark_received(
        &self,
        command_id: String,
        agent_id: String,
    ) -> Result<bool, StoreError> {
        self.write(move |c| Sql::mark_received(c, &command_id, &agent_id, now()))
            .await
    }

    /// Records an agent's result unless the delivery is already final. An ending the relay
    /// decided itself (undelivered, failed `no_result`) is replaced by the real result.
    pub async fn record_result(
        &self,
        agent_id: String,
        result: CommandResult,
    ) -> Result<ResultOutcome, StoreError> {
        self.write(move |c| Sql::record_result(c, &agent_id, &result, now()))
            .await
    }

    /// Ends every pending/queued/sent delivery whose command expired as undelivered, and every
    /// received one whose command expired more than `result_grace` ago as failed `no_result`.
    pub async fn expire_deliveries(
        &self,
        now: DateTime<Utc>,
        result_grace: std::time::Duration,
    ) -> Result<Vec<Finalised>, StoreError> {
        let grace = chrono::Duration::from_std(result_grace)
            .unwrap_or_else(|_| chrono::Duration::days(365));
        self.write(move |c| Sql::expire_deliveries(c, now, grace))
            .await
    }

    /// Deletes events, audit rows, finished updates and backup rows older than `cutoff` (never a
    /// database's latest backup row or its newest success), and commands (with deliveries and
    /// finished jobs) that expired before it and are finished, in batches.
    pub async fn prune(&self, cutoff: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let mut total = Pruned::default();
        loop {
            let p = self
                .write(move |c| Sql::prune_batch(c, cutoff, PRUNE_BATCH))
                .await?;
            total.events += p.events;
            total.audit += p.audit;
            total.commands += p.commands;
            total.updates += p.updates;
            total.backups += p.backups;
            let batch = PRUNE_BATCH as usize;
            if [p.events, p.audit, p.commands, p.updates, p.backups]
                .iter()
                .all(|n| *n < batch)
            {
                return Ok(total);
            }
        }
    }
}
