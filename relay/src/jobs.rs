//! Fan-out jobs: one signed command (audience: the job's selector) delivered to every target
//! agent, with AWS SSM-style limits.
//!
//! - `max_concurrency`: at most this many deliveries in flight (queued, sent or received) at once;
//!   the rest wait as `pending` and are dispatched in target order as others finish.
//! - `max_errors`: errors are failed + rejected deliveries. Once errors exceed `max_errors`, no
//!   new target is dispatched: every pending delivery becomes `skipped`, and the job ends
//!   `stopped` when nothing is in flight any more. A job whose errors never exceeded the limit
//!   ends `completed`.
//! - Undelivered (expired before the agent received it) is not an error.
//!
//! All dispatch state lives in the database, so a restarted relay resumes every running job.
//! [`JobEngine`] re-evaluates a job whenever one of its deliveries finishes (a completion of
//! the commands service); [`ExpirySweeper`] ends the deliveries that ran out of time.

use crate::commands::Commands;
use crate::store::{JobStep, Store, StoreError};
use chrono::{DateTime, Utc};
use flotilla_shared::api::{DeliveryState, JobState};
use flotilla_shared::stream::EventKind;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;

/// How often expired deliveries are looked for.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// How often every running job is looked at even without a completion: a completion another
/// relay announced may have been lost on the way (`crate::cluster`).
pub const JOB_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// The jobs engine: advances a job whenever one of its deliveries finishes (it subscribes to
/// the commands service's completions), and every running job at start.
#[derive(Clone)]
pub struct JobEngine {
    store: Store,
    commands: Commands,
}

impl JobEngine {
    pub fn new(store: Store, commands: Commands) -> JobEngine {
        JobEngine { store, commands }
    }

    /// One dispatch step of one job: updates the job in the database, then sends its command
    /// to the agents that were queued now.
    pub async fn advance(&self, job_id: &str) -> Result<Option<JobStep>, StoreError> {
        let step = self.store.advance_job(job_id.to_string()).await?;
        if let Some(step) = &step {
            if let (Some(signed), false) = (&step.signed, step.queued.is_empty()) {
                self.commands
                    .dispatch(&step.command_id, signed, &step.queued)
                    .await?;
            }
            if step.skipped > 0 {
                tracing::info!(
                    job_id,
                    skipped = step.skipped,
                    "job exceeded max-errors; skipped the remaining targets"
                );
            }
            if let (true, Some(state)) = (step.finished, step.state) {
                // One event per job (never one per target): the step that ended it.
                let state = match state {
                    JobState::Running => "running",
                    JobState::Completed => "completed",
                    JobState::Stopped => "stopped",
                };
                self.commands.stream().publish(
                    EventKind::JobFinished,
                    None,
                    Some(job_id),
                    format!("job {job_id} {state}"),
                    Some(serde_json::json!({
                        "state": state,
                        "command_id": step.command_id,
                        "skipped": step.skipped,
                    })),
                );
            }
        }
        Ok(step)
    }

    /// One pass: advances every running job. The dispatch state is all in the database, so
    /// `now` is not needed by the decisions; it is the engines' common signature.
    pub async fn step(&self, _now: DateTime<Utc>) -> Result<(), StoreError> {
        for id in self.store.running_jobs().await? {
            self.advance_logged(&id).await;
        }
        Ok(())
    }

    async fn advance_logged(&self, id: &str) {
        if let Err(e) = self.advance(id).await {
            tracing::error!(job_id = %id, error = %e, "cannot advance job");
        }
    }

    /// Runs until shutdown: a pass at start (running jobs resume), then one evaluation per job
    /// whose delivery finished, bursts coalesced; a pass whenever completions were missed, and
    /// every [`JOB_RESCAN_INTERVAL`].
    pub async fn run(self, shutdown: CancellationToken) {
        // Subscribed before the first pass, so nothing finishing meanwhile is missed.
        let mut completions = self.commands.subscribe();
        if let Err(e) = self.step(crate::store::now()).await {
            tracing::error!(error = %e, "cannot list running jobs; they resume when one of their deliveries finishes");
        }
        let start = tokio::time::Instant::now() + JOB_RESCAN_INTERVAL;
        let mut rescan = tokio::time::interval_at(start, JOB_RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = rescan.tick() => Err(RecvError::Lagged(0)),
                c = completions.recv() => c,
            };
            let mut ids = BTreeSet::new();
            let mut lagged = false;
            let mut next = Some(first);
            // Coalesce bursts (a job with many results arriving at once needs one evaluation).
            while let Some(received) = next {
                match received {
                    Ok(c) => ids.extend(c.job_id),
                    Err(RecvError::Lagged(_)) => lagged = true,
                    Err(RecvError::Closed) => return,
                }
                next = match completions.try_recv() {
                    Ok(c) => Some(Ok(c)),
                    Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                };
            }
            if lagged {
                // Some completions were missed: look at every running job.
                if let Err(e) = self.step(crate::store::now()).await {
                    tracing::error!(error = %e, "cannot list running jobs");
                }
                continue;
            }
            for id in ids {
                self.advance_logged(&id).await;
            }
        }
    }
}

/// Ends deliveries whose command expired before the agent received it (undelivered), and
/// accepted ones whose result is overdue by more than `result_grace` (failed `no_result`).
#[derive(Clone)]
pub struct ExpirySweeper {
    store: Store,
    commands: Commands,
    result_grace: Duration,
}

impl ExpirySweeper {
    pub fn new(store: Store, commands: Commands, result_grace: Duration) -> ExpirySweeper {
        ExpirySweeper {
            store,
            commands,
            result_grace,
        }
    }

    /// One sweep at `now`.
    pub async fn step(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let ended = self.store.expire_deliveries(now, self.result_grace).await?;
        for f in &ended {
            if f.state == DeliveryState::Undelivered {
                tracing::info!(command_id = %f.command_id, agent_id = %f.agent_id, "command expired before delivery");
            } else {
                tracing::warn!(command_id = %f.command_id, agent_id = %f.agent_id, "agent accepted the command but sent no result in time; marked failed (no_result)");
            }
        }
        self.commands.all_finished(&ended);
        Ok(())
    }

    /// A sweep every [`EXPIRY_SWEEP_INTERVAL`] until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.step(crate::store::now()).await {
                tracing::error!(error = %e, "cannot expire deliveries");
            }
        }
    }
}
