//! The store's facade for the relay's own backup runs: async methods of [`Store`], each one
//! blocking call in `sql/relaybackups.rs` off the async threads. Writes are fenced like every
//! singleton's: a relay that lost the `relay-backup` lease cannot record a run.

use super::*;
use crate::model::relaybackup::{RelayBackupHealth, RelayBackupRun};

impl Store {
    /// Records that a run started; false when a run of that name exists already.
    pub async fn start_relay_backup(&self, run: RelayBackupRun) -> Result<bool, StoreError> {
        self.write(move |c| Sql::start_relay_backup(c, &run)).await
    }

    /// Records how a started run ended (status, error, size, locations).
    pub async fn finish_relay_backup(&self, run: RelayBackupRun) -> Result<(), StoreError> {
        self.write(move |c| Sql::finish_relay_backup(c, &run)).await
    }

    /// The newest runs first.
    pub async fn relay_backups(&self, limit: u32) -> Result<Vec<RelayBackupRun>, StoreError> {
        self.read(move |c| Sql::relay_backups(c, limit)).await
    }

    /// The latest finished run and the newest success, for the `relay_backup` alert.
    pub async fn relay_backup_health(&self) -> Result<RelayBackupHealth, StoreError> {
        self.read(Sql::relay_backup_health).await
    }
}
