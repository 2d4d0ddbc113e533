//! The store's facade for fan-out jobs: async methods of [`Store`], each one blocking call
//! in `sql/jobs.rs` off the async threads.

use super::*;

impl Store {
    pub async fn job_info(&self, id: String) -> Result<Option<JobInfo>, StoreError> {
        self.read(move |c| Sql::job_info(c, &id)).await
    }

    pub async fn running_jobs(&self) -> Result<Vec<String>, StoreError> {
        self.read(Sql::running_jobs).await
    }

    /// One dispatch step of a job (see `jobs::plan_step`), in one transaction.
    pub async fn advance_job(&self, id: String) -> Result<Option<JobStep>, StoreError> {
        self.write(move |c| Sql::advance_job(c, &id, now())).await
    }
}
