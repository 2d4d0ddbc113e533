//! Grandfather-father-son retention: which backups of one series (one job and database) to
//! keep and which to delete. Pure: the caller lists the successful backups of the series, this
//! module decides, the caller removes. The rules work like `restic forget --keep-daily/weekly/
//! monthly`: each rule walks the backups newest first and keeps the newest backup of each of its
//! most recent calendar periods that hold one, independently of the other rules, so one backup
//! may be kept for several reasons. Periods are calendar days, ISO weeks and months in the time
//! zone the caller passes (the agent passes `chrono::Local`, so "a day" is the operator's day).

use crate::config::RetentionConfig;
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// One successful backup of the series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionItem {
    pub id: String,
    pub finished_at: DateTime<Utc>,
}

/// Why a backup is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The newest backup of the series: kept whatever the policy says, so a series never
    /// loses its last good backup.
    Newest,
    /// The newest backup of one of the `daily` most recent days that have one.
    Daily,
    /// The newest backup of one of the `weekly` most recent ISO weeks that have one.
    Weekly,
    /// The newest backup of one of the `monthly` most recent months that have one.
    Monthly,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Newest => "newest",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
        }
    }
}

/// The decision for one series. Both lists are newest first; every id passed in is in exactly
/// one of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Kept ids, each with its reasons (sorted: newest, daily, weekly, monthly).
    pub keep: Vec<(String, Vec<Reason>)>,
    pub delete: Vec<String>,
}

/// Decides which of `items` (the successful backups of ONE series, in any order) to keep under
/// `policy`, with days, weeks and months taken in `time_zone`.
///
/// "Newest" means the latest `finished_at`; two backups finished in the same instant are
/// ordered by id (the greater id counts as newer) so the plan never depends on input order.
/// A period without a backup does not use up a slot: `daily = 7` keeps the newest backup of
/// each of the last 7 days that have one, however far back they reach.
pub fn plan<Tz: TimeZone>(
    items: &[RetentionItem],
    policy: &RetentionConfig,
    time_zone: &Tz,
) -> RetentionPlan {
    let mut newest_first: Vec<&RetentionItem> = items.iter().collect();
    newest_first.sort_by(|a, b| {
        b.finished_at
            .cmp(&a.finished_at)
            .then_with(|| b.id.cmp(&a.id))
    });

    let local_dates: Vec<NaiveDate> = newest_first
        .iter()
        .map(|item| item.finished_at.with_timezone(time_zone).date_naive())
        .collect();

    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); newest_first.len()];
    if let Some(first) = reasons.first_mut() {
        first.push(Reason::Newest);
    }
    keep_newest_per_period(
        &local_dates,
        policy.daily,
        Reason::Daily,
        &mut reasons,
        |d| d,
    );
    // The ISO year, not the calendar year: 2021-01-01 belongs to 2020-W53, and pairing it with
    // the calendar year would split that week in two.
    keep_newest_per_period(
        &local_dates,
        policy.weekly,
        Reason::Weekly,
        &mut reasons,
        |d| {
            let week = d.iso_week();
            (week.year(), week.week())
        },
    );
    keep_newest_per_period(
        &local_dates,
        policy.monthly,
        Reason::Monthly,
        &mut reasons,
        |d| (d.year(), d.month()),
    );

    let mut retention_plan = RetentionPlan::default();
    for (item, item_reasons) in newest_first.into_iter().zip(reasons) {
        if item_reasons.is_empty() {
            retention_plan.delete.push(item.id.clone());
        } else {
            retention_plan.keep.push((item.id.clone(), item_reasons));
        }
    }
    retention_plan
}

/// Marks with `reason` the first (newest) backup of each of the `slots` most recent periods.
/// `local_dates` is sorted newest first, so the backups of one period are contiguous and the
/// first of them is the period's newest.
fn keep_newest_per_period<Period: PartialEq>(
    local_dates: &[NaiveDate],
    slots: u32,
    reason: Reason,
    reasons: &mut [Vec<Reason>],
    period_of: impl Fn(NaiveDate) -> Period,
) {
    let mut slots_used = 0;
    let mut previous_period: Option<Period> = None;
    for (index, date) in local_dates.iter().enumerate() {
        if slots_used >= slots {
            break;
        }
        let period = period_of(*date);
        if previous_period.as_ref() != Some(&period) {
            reasons[index].push(reason);
            slots_used += 1;
            previous_period = Some(period);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, FixedOffset};
    use Reason::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    /// Items named by their finish time, so expectations read as dates.
    fn items(times: &[&str]) -> Vec<RetentionItem> {
        times
            .iter()
            .map(|t| RetentionItem {
                id: (*t).to_string(),
                finished_at: at(t),
            })
            .collect()
    }

    fn policy(daily: u32, weekly: u32, monthly: u32) -> RetentionConfig {
        RetentionConfig {
            daily,
            weekly,
            monthly,
        }
    }

    /// Nightly backups at 02:15 UTC from `first` to `last` (dates), inclusive.
    fn nightly(first: &str, last: &str) -> Vec<RetentionItem> {
        let first: NaiveDate = first.parse().unwrap();
        let last: NaiveDate = last.parse().unwrap();
        first
            .iter_days()
            .take_while(|d| *d <= last)
            .map(|d| RetentionItem {
                id: format!("{d}T02:15:00Z"),
                finished_at: at(&format!("{d}T02:15:00Z")),
            })
            .collect()
    }

    /// Plans `input` (reversed too, to prove order does not matter) and compares the kept ids
    /// and reasons with `expected_keep`; every other id must be deleted.
    fn check<Tz: TimeZone>(
        input: &[RetentionItem],
        retention: RetentionConfig,
        time_zone: &Tz,
        expected_keep: &[(&str, &[Reason])],
    ) {
        let result = plan(input, &retention, time_zone);
        let kept: Vec<(&str, &[Reason])> = result
            .keep
            .iter()
            .map(|(id, reasons)| (id.as_str(), reasons.as_slice()))
            .collect();
        assert_eq!(kept, expected_keep);

        let mut expected_delete: Vec<&RetentionItem> = input
            .iter()
            .filter(|i| !expected_keep.iter().any(|(id, _)| *id == i.id))
            .collect();
        expected_delete.sort_by(|a, b| {
            b.finished_at
                .cmp(&a.finished_at)
                .then_with(|| b.id.cmp(&a.id))
        });
        let expected_delete: Vec<&str> = expected_delete.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(result.delete, expected_delete);

        let mut reversed = input.to_vec();
        reversed.reverse();
        assert_eq!(plan(&reversed, &retention, time_zone), result);
    }

    #[test]
    fn ninety_nightly_backups_keep_seven_days_four_weeks_three_months() {
        // 2025-12-02 … 2026-03-01 is 90 nights; 2026-03-01 is a Sunday, so the newest backup
        // of each ISO week is a Sunday's.
        let input = nightly("2025-12-02", "2026-03-01");
        assert_eq!(input.len(), 90);
        check(
            &input,
            policy(7, 4, 3),
            &Utc,
            &[
                ("2026-03-01T02:15:00Z", &[Newest, Daily, Weekly, Monthly]),
                ("2026-02-28T02:15:00Z", &[Daily, Monthly]),
                ("2026-02-27T02:15:00Z", &[Daily]),
                ("2026-02-26T02:15:00Z", &[Daily]),
                ("2026-02-25T02:15:00Z", &[Daily]),
                ("2026-02-24T02:15:00Z", &[Daily]),
                ("2026-02-23T02:15:00Z", &[Daily]),
                ("2026-02-22T02:15:00Z", &[Weekly]),
                ("2026-02-15T02:15:00Z", &[Weekly]),
                ("2026-02-08T02:15:00Z", &[Weekly]),
                ("2026-01-31T02:15:00Z", &[Monthly]),
            ],
        );
    }

    #[test]
    fn only_the_newest_backup_of_a_day_counts() {
        check(
            &items(&[
                "2026-03-01T02:15:00Z",
                "2026-03-01T14:00:00Z",
                "2026-03-01T20:30:00Z",
                "2026-02-28T02:15:00Z",
                "2026-02-28T09:00:00Z",
                "2026-02-27T02:15:00Z",
            ]),
            policy(2, 0, 0),
            &Utc,
            &[
                ("2026-03-01T20:30:00Z", &[Newest, Daily]),
                ("2026-02-28T09:00:00Z", &[Daily]),
            ],
        );
    }

    #[test]
    fn days_without_backups_do_not_use_up_slots() {
        check(
            &items(&[
                "2026-03-01T02:15:00Z",
                "2026-02-25T02:15:00Z",
                "2026-02-20T02:15:00Z",
                "2026-02-10T02:15:00Z",
            ]),
            policy(3, 0, 0),
            &Utc,
            &[
                ("2026-03-01T02:15:00Z", &[Newest, Daily]),
                ("2026-02-25T02:15:00Z", &[Daily]),
                ("2026-02-20T02:15:00Z", &[Daily]),
            ],
        );
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_iso_year_boundary() {
        // 2026-W53 runs from Monday 2026-12-28 to Sunday 2027-01-03.
        check(
            &nightly("2026-12-21", "2027-01-10"),
            policy(0, 3, 0),
            &Utc,
            &[
                ("2027-01-10T02:15:00Z", &[Newest, Weekly]),
                ("2027-01-03T02:15:00Z", &[Weekly]),
                ("2026-12-27T02:15:00Z", &[Weekly]),
            ],
        );
        // 2020-W53 runs from Monday 2020-12-28 to Sunday 2021-01-03: 2020-12-31 and
        // 2021-01-01 are the same week, so only 2021-01-01 (the newer) is that week's.
        check(
            &items(&[
                "2020-12-24T02:15:00Z",
                "2020-12-31T02:15:00Z",
                "2021-01-01T02:15:00Z",
                "2021-01-04T02:15:00Z",
            ]),
            policy(0, 5, 0),
            &Utc,
            &[
                ("2021-01-04T02:15:00Z", &[Newest, Weekly]),
                ("2021-01-01T02:15:00Z", &[Weekly]),
                ("2020-12-24T02:15:00Z", &[Weekly]),
            ],
        );
    }

    #[test]
    fn months_roll_over_the_year_end() {
        check(
            &items(&[
                "2025-11-15T02:15:00Z",
                "2025-11-30T02:15:00Z",
                "2025-12-01T02:15:00Z",
                "2025-12-31T23:00:00Z",
                "2026-01-01T00:30:00Z",
                "2026-01-20T02:15:00Z",
            ]),
            policy(0, 0, 3),
            &Utc,
            &[
                ("2026-01-20T02:15:00Z", &[Newest, Monthly]),
                ("2025-12-31T23:00:00Z", &[Monthly]),
                ("2025-11-30T02:15:00Z", &[Monthly]),
            ],
        );
        // The same month of two years is two periods.
        check(
            &items(&["2025-03-10T02:15:00Z", "2026-03-10T02:15:00Z"]),
            policy(0, 0, 12),
            &Utc,
            &[
                ("2026-03-10T02:15:00Z", &[Newest, Monthly]),
                ("2025-03-10T02:15:00Z", &[Monthly]),
            ],
        );
    }

    #[test]
    fn an_empty_policy_keeps_only_the_newest() {
        check(
            &nightly("2026-02-01", "2026-03-01"),
            policy(0, 0, 0),
            &Utc,
            &[("2026-03-01T02:15:00Z", &[Newest])],
        );
        check(&[], policy(7, 4, 3), &Utc, &[]);
    }

    #[test]
    fn days_are_taken_in_the_given_time_zone() {
        let input = items(&[
            "2026-02-28T12:00:00Z",
            "2026-03-01T10:00:00Z",
            "2026-03-01T23:30:00Z",
        ]);
        // In UTC the last two share 1 March.
        check(
            &input,
            policy(2, 0, 0),
            &Utc,
            &[
                ("2026-03-01T23:30:00Z", &[Newest, Daily]),
                ("2026-02-28T12:00:00Z", &[Daily]),
            ],
        );
        // At +02:00 the 23:30 UTC backup is 01:30 on 2 March, so 1 March's newest is 10:00.
        let plus_two = FixedOffset::east_opt(2 * 3600).unwrap();
        check(
            &input,
            policy(2, 0, 0),
            &plus_two,
            &[
                ("2026-03-01T23:30:00Z", &[Newest, Daily]),
                ("2026-03-01T10:00:00Z", &[Daily]),
            ],
        );
    }

    #[test]
    fn ties_are_broken_by_id_not_by_input_order() {
        let finished_at = at("2026-03-01T02:15:00Z");
        let input = vec![
            RetentionItem {
                id: "bk_a".into(),
                finished_at,
            },
            RetentionItem {
                id: "bk_b".into(),
                finished_at,
            },
            RetentionItem {
                id: "bk_c".into(),
                finished_at: finished_at - Duration::days(1),
            },
        ];
        check(
            &input,
            policy(2, 0, 0),
            &Utc,
            &[("bk_b", &[Newest, Daily]), ("bk_c", &[Daily])],
        );
    }
}
