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
//! The engine task re-evaluates a job whenever one of its deliveries finishes.

use crate::state::{AppState, Shared};
use crate::store::{JobStep, StoreError};
use flotilla_shared::api::{JobCounts, JobState};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often expired deliveries are looked for.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// What one evaluation of a job decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Errors exceeded max-errors just now: skip every pending delivery.
    pub stop: bool,
    /// How many pending deliveries to dispatch now.
    pub dispatch: usize,
    /// The job's state after this step.
    pub state: JobState,
}

/// Pure dispatch arithmetic of one job step, given its current delivery counts, its resolved
/// limits and whether it was already stopped.
pub fn plan_step(
    counts: &JobCounts,
    max_concurrency: u32,
    max_errors: Option<u32>,
    already_stopped: bool,
) -> Plan {
    let errors = counts.failed + counts.rejected;
    let exceeded = max_errors.is_some_and(|m| errors > m);
    let stopped = already_stopped || exceeded;
    let (dispatch, pending_after) = if stopped {
        (0, 0)
    } else {
        let free = max_concurrency.saturating_sub(counts.in_flight);
        let n = free.min(counts.pending);
        (n, counts.pending - n)
    };
    let in_flight_after = counts.in_flight + dispatch;
    let state = if in_flight_after > 0 || pending_after > 0 {
        JobState::Running
    } else if stopped {
        JobState::Stopped
    } else {
        JobState::Completed
    };
    Plan {
        stop: stopped && !already_stopped,
        dispatch: dispatch as usize,
        state,
    }
}

/// Asks the engine to re-evaluate a job.
#[derive(Clone)]
pub struct JobKicker(mpsc::UnboundedSender<String>);

impl JobKicker {
    pub fn channel() -> (JobKicker, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (JobKicker(tx), rx)
    }

    pub fn kick(&self, job_id: &str) {
        // Fails only after the engine stopped at shutdown; running jobs resume at next start.
        let _ = self.0.send(job_id.to_string());
    }
}

/// One dispatch step: updates the job in the database, then sends its command to the agents
/// that were queued now.
pub async fn advance(state: &Shared, job_id: &str) -> Result<Option<JobStep>, StoreError> {
    let step = state.store.advance_job(job_id.to_string()).await?;
    if let Some(step) = &step {
        if let (Some(signed), false) = (&step.signed, step.queued.is_empty()) {
            state
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
    }
    Ok(step)
}

/// Runs until shutdown, evaluating every job it is kicked for (and every running job at start).
pub async fn run_engine(
    state: AppState,
    mut rx: mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
) {
    match state.store.running_jobs().await {
        Ok(ids) => {
            for id in ids {
                state.jobs.kick(&id);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list running jobs; they resume when one of their deliveries finishes")
        }
    }
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            id = rx.recv() => match id { Some(id) => id, None => return },
        };
        // Coalesce bursts (a job with many results arriving at once needs one evaluation).
        let mut ids = BTreeSet::from([first]);
        while let Ok(id) = rx.try_recv() {
            ids.insert(id);
        }
        for id in ids {
            if let Err(e) = advance(&state, &id).await {
                tracing::error!(job_id = %id, error = %e, "cannot advance job");
            }
        }
    }
}

/// Every few seconds, ends deliveries whose command expired before the agent received it
/// (undelivered), and accepted ones whose result is overdue by more than `result_grace_secs`
/// (failed `no_result`).
pub async fn run_expiry_sweeper(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let grace = Duration::from_secs(state.config.result_grace_secs);
        match state.store.expire_deliveries(grace).await {
            Ok(ended) => {
                for f in ended {
                    if f.state == flotilla_shared::api::DeliveryState::Undelivered {
                        tracing::info!(command_id = %f.command_id, agent_id = %f.agent_id, "command expired before delivery");
                    } else {
                        tracing::warn!(command_id = %f.command_id, agent_id = %f.agent_id, "agent accepted the command but sent no result in time; marked failed (no_result)");
                    }
                    state.delivery_finished(
                        &f.command_id,
                        &f.agent_id,
                        f.job_id.as_deref(),
                        f.state,
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot expire deliveries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pending: u32, in_flight: u32, failed: u32, rejected: u32, done: u32) -> JobCounts {
        JobCounts {
            targets: pending + in_flight + failed + rejected + done,
            pending,
            in_flight,
            succeeded: done,
            failed,
            rejected,
            ..JobCounts::default()
        }
    }

    fn check(
        c: JobCounts,
        max_concurrency: u32,
        max_errors: Option<u32>,
        stopped: bool,
        expected: (bool, usize, JobState),
    ) {
        let p = plan_step(&c, max_concurrency, max_errors, stopped);
        assert_eq!(
            (p.stop, p.dispatch, p.state),
            expected,
            "{c:?} conc={max_concurrency} errs={max_errors:?} stopped={stopped}"
        );
    }

    #[test]
    fn concurrency_fills_free_slots() {
        check(
            counts(5, 0, 0, 0, 0),
            2,
            None,
            false,
            (false, 2, JobState::Running),
        );
        check(
            counts(3, 2, 0, 0, 0),
            2,
            None,
            false,
            (false, 0, JobState::Running),
        );
        check(
            counts(3, 1, 0, 0, 1),
            2,
            None,
            false,
            (false, 1, JobState::Running),
        );
        check(
            counts(1, 0, 0, 0, 4),
            10,
            None,
            false,
            (false, 1, JobState::Running),
        );
        check(
            counts(0, 0, 0, 0, 5),
            2,
            None,
            false,
            (false, 0, JobState::Completed),
        );
        check(
            counts(0, 0, 0, 0, 0),
            1,
            None,
            false,
            (false, 0, JobState::Completed),
        );
    }

    #[test]
    fn errors_must_exceed_max_errors() {
        // max_errors 1: one error is tolerated, the second stops.
        check(
            counts(3, 0, 1, 0, 0),
            1,
            Some(1),
            false,
            (false, 1, JobState::Running),
        );
        check(
            counts(2, 0, 1, 1, 0),
            1,
            Some(1),
            false,
            (true, 0, JobState::Stopped),
        );
        // max_errors 0: the first error stops; in-flight ones finish first.
        check(
            counts(3, 1, 1, 0, 0),
            2,
            Some(0),
            false,
            (true, 0, JobState::Running),
        );
        check(
            counts(0, 0, 2, 0, 0),
            2,
            Some(0),
            true,
            (false, 0, JobState::Stopped),
        );
        // No limit: errors never stop a job.
        check(
            counts(1, 0, 9, 0, 0),
            1,
            None,
            false,
            (false, 1, JobState::Running),
        );
        // Errors exceeding the limit on the last result still mark the job stopped.
        check(
            counts(0, 0, 1, 0, 2),
            3,
            Some(0),
            false,
            (true, 0, JobState::Stopped),
        );
        // Rejections count as errors too.
        check(
            counts(1, 0, 0, 2, 0),
            1,
            Some(1),
            false,
            (true, 0, JobState::Stopped),
        );
    }

    #[test]
    fn undelivered_is_not_an_error() {
        let c = JobCounts {
            targets: 3,
            pending: 1,
            undelivered: 2,
            ..JobCounts::default()
        };
        check(c, 1, Some(0), false, (false, 1, JobState::Running));
    }
}
