//! When scheduled backup runs start: a 5-field cron expression (minute, hour, day of month,
//! month, day of week; also `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), evaluated by
//! croner in the caller's time zone, plus a per-agent jitter so a fleet configured with the same
//! "0 2 * * *" does not hit its storage in the same second.
//!
//! The jitter moves a run, not the slot: the run for the slot at 02:00 with 7 minutes of jitter
//! starts at 02:07, and asking for the next run at 02:07:30 (right after it) yields tomorrow's,
//! never the 02:00 slot again.
//!
//! Daylight saving time (the agent evaluates in `chrono::Local`), as croner 3 handles it: a
//! fixed-time expression such as "30 2 * * *" whose time falls into a spring-forward gap runs
//! once at the first valid time after the gap (03:00); on a fall-back night it runs once, at
//! the earlier of the two 02:30s. Expressions with wildcard or stepped hours/minutes skip the
//! wall-clock times that do not exist and match each of the repeated ones.

use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use ring::digest;
use std::time::Duration;

/// Fields of a standard cron expression, in order, for errors.
const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
/// The aliases croner expands.
const ALIASES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// A parsed cron expression.
#[derive(Clone, Debug)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

flotilla_shared::message_error!(
    /// A cron expression that is not one (the message quotes it).
    pub InvalidSchedule
);

impl Schedule {
    /// Parses a 5-field cron expression or an `@daily`-style alias. Seconds and year fields
    /// are refused: the config documents 5 fields, and a 6-field typo would otherwise silently
    /// shift every field by one.
    pub fn parse(expression: &str) -> Result<Schedule, InvalidSchedule> {
        Self::parse_message(expression).map_err(InvalidSchedule)
    }

    fn parse_message(expression: &str) -> Result<Schedule, String> {
        let trimmed = expression.trim();
        let invalid = |why: String| format!("invalid cron expression {expression:?}: {why}");
        if trimmed.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        if trimmed.starts_with('@') {
            if !ALIASES.iter().any(|a| a.eq_ignore_ascii_case(trimmed)) {
                return Err(invalid(format!(
                    "unknown alias; expected one of {}",
                    ALIASES.join(", ")
                )));
            }
        } else {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            if fields.len() != FIELD_NAMES.len() {
                return Err(invalid(format!(
                    "expected 5 fields ({}), found {}",
                    FIELD_NAMES.join(" "),
                    fields.len()
                )));
            }
        }
        let cron = parse_with_croner(trimmed).map_err(|e| {
            let why = name_the_bad_field(trimmed).unwrap_or_else(|| croner_message(&e));
            invalid(why)
        })?;
        Ok(Schedule {
            expression: trimmed.to_string(),
            cron,
        })
    }

    /// The expression as configured (trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// When the next run starts: the first slot S of the schedule (in `after`'s time zone) with
    /// S + `jitter` strictly after `after`, as S + `jitter`. Equivalently the first slot
    /// strictly after `after - jitter`, so the scheduler can call `next_after(now, jitter)`
    /// after each run (which started at S + jitter, so now ≥ S + jitter) without running the
    /// same slot twice. Slots are whole seconds; `after` is compared at full precision.
    ///
    /// `None` when the expression never matches again (e.g. "0 0 30 2 *") or the time is out
    /// of range.
    pub fn next_after<Tz: TimeZone>(
        &self,
        after: DateTime<Tz>,
        jitter: Duration,
    ) -> Option<DateTime<Utc>> {
        let jitter = TimeDelta::from_std(jitter).ok()?;
        let slot_search_start = after.checked_sub_signed(jitter)?;
        // croner steps in whole seconds and would carry a fraction into its answer; flooring
        // keeps slots on the second, and a slot in the floored second is not after the
        // unfloored instant anyway, so the exclusive search stays exact.
        let slot_search_start = slot_search_start
            .duration_trunc(TimeDelta::seconds(1))
            .ok()?;
        let slot = self
            .cron
            .find_next_occurrence(&slot_search_start, false)
            .ok()?;
        slot.with_timezone(&Utc).checked_add_signed(jitter)
    }
}

/// This agent's delay for `job`'s scheduled runs: the same every day and across restarts and
/// builds (SHA-256 of agent id and job, not a process-seeded hasher), spread uniformly over
/// whole seconds in `[0, max_secs)`. `max_secs = 0` is no jitter.
pub fn agent_jitter(agent_id: &str, job: &str, max_secs: u64) -> Duration {
    if max_secs == 0 {
        return Duration::ZERO;
    }
    let mut hashed = digest::Context::new(&digest::SHA256);
    // The prefix keeps these bytes from meaning anything elsewhere; the NUL separators keep
    // ("ab", "c") and ("a", "bc") apart.
    hashed.update(b"flotilla backup jitter\0");
    hashed.update(agent_id.as_bytes());
    hashed.update(b"\0");
    hashed.update(job.as_bytes());
    let hash = hashed.finish();
    let mut first_eight = [0u8; 8];
    first_eight.copy_from_slice(&hash.as_ref()[..8]);
    // Multiply and keep the high half: maps the uniform 64-bit value evenly onto
    // [0, max_secs) (to within max_secs / 2^64) and never reaches max_secs.
    let offset_secs = ((u64::from_be_bytes(first_eight) as u128 * max_secs as u128) >> 64) as u64;
    Duration::from_secs(offset_secs)
}

fn parse_with_croner(expression: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
}

/// croner says "number out of bounds" without saying where; parsing each field alone among
/// wildcards finds the first one croner refuses, so the error can name it.
fn name_the_bad_field(expression: &str) -> Option<String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != FIELD_NAMES.len() {
        return None;
    }
    fields.iter().enumerate().find_map(|(index, field)| {
        let mut probe = ["*"; 5];
        probe[index] = field;
        parse_with_croner(&probe.join(" ")).err().map(|e| {
            format!(
                "{} field {field:?}: {}",
                FIELD_NAMES[index],
                croner_message(&e)
            )
        })
    })
}

/// croner's messages are capitalised sentences; ours are lowercase without a final period.
fn croner_message(error: &croner::errors::CronError) -> String {
    error
        .to_string()
        .trim()
        .trim_end_matches('.')
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn at(text: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(text).unwrap()
    }

    /// The next run of `expression` after `after` (RFC 3339, its offset is the time zone) with
    /// `jitter_secs`, compared with `expected` (RFC 3339, or None).
    fn check(expression: &str, after: &str, jitter_secs: u64, expected: Option<&str>) {
        let schedule = Schedule::parse(expression).unwrap();
        let next = schedule.next_after(at(after), Duration::from_secs(jitter_secs));
        let expected = expected.map(|e| at(e).with_timezone(&Utc));
        assert_eq!(
            next, expected,
            "{expression} after {after} with {jitter_secs}s"
        );
    }

    fn check_invalid(expression: &str, expected_fragment: &str) {
        let error = Schedule::parse(expression).unwrap_err();
        assert!(
            error.contains(&format!("{expression:?}")),
            "error does not name the expression: {error}"
        );
        assert!(error.contains(expected_fragment), "{error}");
        assert!(!error.ends_with('.'), "{error}");
    }

    #[test]
    fn next_run_is_strictly_after() {
        check(
            "0 2 * * *",
            "2026-03-01T01:00:00Z",
            0,
            Some("2026-03-01T02:00:00Z"),
        );
        check(
            "0 2 * * *",
            "2026-03-01T02:00:00Z",
            0,
            Some("2026-03-02T02:00:00Z"),
        );
        check(
            "0 2 * * *",
            "2026-03-01T01:59:59.500Z",
            0,
            Some("2026-03-01T02:00:00Z"),
        );
        check(
            "0 2 * * *",
            "2026-03-01T02:00:00.001Z",
            0,
            Some("2026-03-02T02:00:00Z"),
        );
        check(
            "*/15 * * * *",
            "2026-03-01T10:07:00Z",
            0,
            Some("2026-03-01T10:15:00Z"),
        );
    }

    #[test]
    fn slots_are_in_the_time_zone_of_after() {
        // 02:00 at +01:00 is 01:00 UTC.
        check(
            "0 2 * * *",
            "2026-03-01T01:00:00+01:00",
            0,
            Some("2026-03-01T01:00:00Z"),
        );
        check(
            "0 2 * * *",
            "2026-03-01T02:00:00+01:00",
            0,
            Some("2026-03-02T01:00:00Z"),
        );
    }

    #[test]
    fn jitter_delays_a_run_without_repeating_its_slot() {
        check(
            "0 2 * * *",
            "2026-03-01T01:00:00Z",
            420,
            Some("2026-03-01T02:07:00Z"),
        );
        // Between the slot and its jittered start the same slot is still ahead.
        check(
            "0 2 * * *",
            "2026-03-01T02:03:00Z",
            420,
            Some("2026-03-01T02:07:00Z"),
        );
        // The scheduler asks again right as (or after) the run starts: tomorrow's run.
        check(
            "0 2 * * *",
            "2026-03-01T02:07:00Z",
            420,
            Some("2026-03-02T02:07:00Z"),
        );
        check(
            "0 2 * * *",
            "2026-03-01T02:09:30Z",
            420,
            Some("2026-03-02T02:07:00Z"),
        );
    }

    #[test]
    fn aliases_are_accepted() {
        check(
            "@daily",
            "2026-03-01T10:00:00Z",
            0,
            Some("2026-03-02T00:00:00Z"),
        );
        check(
            "@hourly",
            "2026-03-01T10:00:00Z",
            0,
            Some("2026-03-01T11:00:00Z"),
        );
        assert_eq!(
            Schedule::parse(" 0 2 * * * ").unwrap().expression(),
            "0 2 * * *"
        );
    }

    #[test]
    fn an_expression_that_never_matches_has_no_next_run() {
        check("0 0 30 2 *", "2026-03-01T10:00:00Z", 0, None);
    }

    #[test]
    fn invalid_expressions_are_named() {
        check_invalid(
            "61 * * * *",
            "minute field \"61\": component error: number out of bounds",
        );
        check_invalid("nonsense", "expected 5 fields");
        check_invalid("", "empty");
        check_invalid("   ", "empty");
        check_invalid("0 0 2 * * *", "found 6");
        check_invalid("0 25 * * *", "hour field \"25\"");
        check_invalid("0 2 * * 8", "day-of-week field \"8\"");
        check_invalid("0 2 * JANUARY *", "month field");
        check_invalid("@sometimes", "unknown alias; expected one of @yearly");
    }

    #[test]
    fn agent_jitter_is_stable_and_below_the_maximum() {
        assert_eq!(
            agent_jitter("ag_5f0c2e9a41b7d3c8e1a2", "postgres", 600),
            Duration::from_secs(EXPECTED_JITTER_SECS)
        );
        assert_eq!(agent_jitter("ag_1", "job", 0), Duration::ZERO);
        assert_eq!(agent_jitter("ag_1", "job", 1), Duration::ZERO);
        let mut distinct = std::collections::BTreeSet::new();
        for agent in 0..200 {
            let jitter = agent_jitter(&format!("ag_{agent}"), "postgres", 600);
            assert!(jitter < Duration::from_secs(600));
            distinct.insert(jitter);
        }
        // 200 agents over 600 seconds: a working hash spreads them over many distinct delays.
        assert!(distinct.len() > 100, "{}", distinct.len());
        assert_ne!(
            agent_jitter("ag_1", "a", 3600),
            agent_jitter("ag_1", "b", 3600)
        );
    }

    /// Computed independently (Python hashlib). Pinned so a change of hash input or scaling
    /// (which would move every agent's backups) is a deliberate, visible change.
    const EXPECTED_JITTER_SECS: u64 = 199;
}
