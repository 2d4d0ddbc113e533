//! The store's facade for backup reports and history: async methods of [`Store`], each one blocking call
//! in `sql/backups.rs` off the async threads.

use super::*;

impl Store {
    /// Stores a backup report, one row per database, unless (agent, run, key) is stored
    /// already (the outbox re-sends, a status file is read again). Returns what was new.
    pub async fn record_backup_report(
        &self,
        agent_id: String,
        report: BackupReport,
    ) -> Result<RecordedBackups, StoreError> {
        self.write(move |c| Sql::record_backup_report(c, &agent_id, &report, now()))
            .await
    }

    /// Forgets one database of one agent: every stored row of that key (a database that was
    /// dropped, or a job that was renamed, would otherwise stay stale and keep the agent's
    /// alert up for ever). Returns the rows removed.
    pub async fn forget_backup_key(
        &self,
        agent_id: String,
        key: String,
    ) -> Result<u64, StoreError> {
        self.write(move |c| Sql::forget_backup_key(c, &agent_id, &key))
            .await
    }

    /// One agent's backups: the latest state of each database (of `query.key` only, if given),
    /// its history newest first, and the agent's alert level over all its databases, as of
    /// `now`.
    pub async fn agent_backups(
        &self,
        agent_id: String,
        query: BackupQuery,
        now: DateTime<Utc>,
    ) -> Result<AgentBackups, StoreError> {
        let id = agent_id.clone();
        let key = query.key.clone();
        let (latest, history) = self
            .read(move |c| {
                // One snapshot for both reads.
                let latest = Sql::latest_backups(c, Some(&id))?;
                let history = Sql::backup_history(c, &id, query.key.as_deref(), query.limit)?;
                Ok((latest, history))
            })
            .await?;
        let mut databases: Vec<DatabaseBackupState> =
            latest.into_iter().map(|l| l.into_state(now)).collect();
        // The alert is the agent's, whatever the key filter: it is read from every database.
        let alert = agent_alert(&databases.iter().map(|d| d.state).collect::<Vec<_>>());
        if let Some(k) = key {
            databases.retain(|d| d.key == k);
        }
        Ok(AgentBackups {
            agent_id,
            alert,
            databases,
            history,
        })
    }

    /// The latest backup of every database of every agent that is not revoked, ordered by
    /// agent name and key; only those in `state` when given, at most `limit`, as of `now`.
    pub async fn fleet_backups(
        &self,
        state: Option<DatabaseState>,
        limit: u32,
        now: DateTime<Utc>,
    ) -> Result<FleetBackups, StoreError> {
        let latest = self.read(move |c| Sql::latest_backups(c, None)).await?;
        let mut databases: Vec<DatabaseBackupState> = latest
            .into_iter()
            .map(|l| l.into_state(now))
            .filter(|d| state.is_none_or(|s| d.state == s))
            .collect();
        let truncated = databases.len() > limit as usize;
        databases.truncate(limit as usize);
        Ok(FleetBackups {
            databases,
            truncated,
        })
    }

    /// How many databases of agents that are not revoked are ok, failed and stale at `now`.
    pub async fn backup_state_counts(&self, now: DateTime<Utc>) -> Result<[u64; 3], StoreError> {
        let latest = self.read(move |c| Sql::latest_backups(c, None)).await?;
        let mut counts = [0u64; 3];
        for l in latest {
            let i = match l.into_state(now).state {
                DatabaseState::Ok => 0,
                DatabaseState::Failed => 1,
                DatabaseState::Stale => 2,
            };
            counts[i] += 1;
        }
        Ok(counts)
    }
}
