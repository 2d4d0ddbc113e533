//! Fan-out jobs' pure model: the dispatch arithmetic of one job step (SSM-style
//! max-concurrency and max-errors), used by the store inside the transaction that advances a
//! job. No I/O.

use flotilla_shared::api::{JobCounts, JobState};

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
