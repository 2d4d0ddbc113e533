//! The store's facade for the audit trail: async methods of [`Store`], each one blocking call
//! in `sql/audit.rs` off the async threads.

use super::*;

impl Store {
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.write(move |c| Sql::audit(c, &entry)).await
    }

    /// The newest audit rows first.
    pub async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(move |c| Sql::recent_audit(c, limit)).await
    }
}
