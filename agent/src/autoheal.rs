//! Auto-heal (issue 17 part 6): Docker's restart policy restarts exited containers, never
//! unhealthy ones. A running container that stays unhealthy for `unhealthy_for_secs` (seen at
//! each heartbeat, whose periodic inspect already carries every container's health: no
//! per-container polling) is restarted, when it opted in (`flotilla.autoheal=true`, or every
//! container with `[autoheal] all = true` unless labelled `false`), with a growing backoff and
//! at most `max_restarts_per_hour`. The executor's glue (`executor/autoheal.rs`) checks the
//! label, skips a container an update, backup or restore holds, and restarts it.
//!
//! This file is the pure tracker: heartbeats in, restart candidates out.

use crate::config::AutohealConfig;
use chrono::{DateTime, Duration, Utc};
use flotilla_shared::command::ContainerInfo;
use std::collections::{HashMap, VecDeque};

/// Per container (by name: an update gives it a new id).
#[derive(Debug, Default)]
struct Track {
    /// When it was first seen unhealthy in the current unhealthy spell.
    unhealthy_since: Option<DateTime<Utc>>,
    /// Auto-heal restarts in the last hour.
    restarts: VecDeque<DateTime<Utc>>,
    /// No restart before this (backoff).
    not_before: Option<DateTime<Utc>>,
    /// The container id whose label said "not opted in" (checked again for another id).
    not_opted_in: Option<String>,
}

/// A container to restart now.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub unhealthy_since: DateTime<Utc>,
    /// Restarts in the last hour before this one.
    pub restarts_in_hour: usize,
}

/// The tracker of unhealthy spells and restarts.
#[derive(Debug)]
pub struct Autoheal {
    config: AutohealConfig,
    tracks: HashMap<String, Track>,
}

impl Autoheal {
    pub fn new(config: AutohealConfig) -> Self {
        Autoheal {
            config,
            tracks: HashMap::new(),
        }
    }

    pub fn all(&self) -> bool {
        self.config.all
    }

    /// Feeds one heartbeat's containers; returns the ones due for a restart.
    pub fn observe(&mut self, containers: &[ContainerInfo], now: DateTime<Utc>) -> Vec<Candidate> {
        let hour = Duration::hours(1);
        let after = Duration::seconds(self.config.unhealthy_for_secs as i64);
        let max = self.config.max_restarts_per_hour as usize;
        let mut due = Vec::new();
        for c in containers {
            let t = self.tracks.entry(c.name.clone()).or_default();
            while t.restarts.front().is_some_and(|r| now - *r >= hour) {
                t.restarts.pop_front();
            }
            let unhealthy = c.state == "running" && c.health.as_deref() == Some("unhealthy");
            if !unhealthy {
                t.unhealthy_since = None;
                continue;
            }
            let since = *t.unhealthy_since.get_or_insert(now);
            if now - since < after
                || t.not_before.is_some_and(|nb| now < nb)
                || t.restarts.len() >= max
                || t.not_opted_in.as_deref() == Some(c.id.as_str())
            {
                continue;
            }
            due.push(Candidate {
                id: c.id.clone(),
                name: c.name.clone(),
                unhealthy_since: since,
                restarts_in_hour: t.restarts.len(),
            });
        }
        // Containers gone from the host and without recent restarts are forgotten.
        let names: std::collections::HashSet<&str> =
            containers.iter().map(|c| c.name.as_str()).collect();
        self.tracks
            .retain(|name, t| names.contains(name.as_str()) || !t.restarts.is_empty());
        due
    }

    /// The container's label says it is not auto-healed (until it gets another id).
    pub fn not_opted_in(&mut self, c: &Candidate) {
        if let Some(t) = self.tracks.get_mut(&c.name) {
            t.not_opted_in = Some(c.id.clone());
        }
    }

    /// A restart was made at `now`: the spell starts over, the backoff doubles.
    pub fn restarted(&mut self, c: &Candidate, now: DateTime<Utc>) {
        let t = self.tracks.entry(c.name.clone()).or_default();
        t.restarts.push_back(now);
        t.unhealthy_since = None;
        let factor = 1i64 << (t.restarts.len().saturating_sub(1)).min(10);
        let backoff = Duration::seconds(self.config.backoff_secs as i64 * factor);
        t.not_before = Some(now + backoff);
    }

    /// Whether labels opt a container in: `flotilla.autoheal=true`, or `all` unless `false`.
    pub fn opted_in(&self, label: Option<&str>) -> bool {
        match label.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            _ => self.config.all,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn c(name: &str, state: &str, health: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: format!("{name}-id"),
            name: name.into(),
            image: "img".into(),
            image_id: "sha256:1".into(),
            state: state.into(),
            status: String::new(),
            health: health.map(str::to_string),
            restart_count: 0,
            oom_killed: false,
            exit_code: None,
            started_at: None,
            compose_project: None,
            compose_service: None,
            resources: None,
        }
    }

    fn healer() -> Autoheal {
        Autoheal::new(AutohealConfig {
            all: false,
            unhealthy_for_secs: 300,
            max_restarts_per_hour: 2,
            backoff_secs: 60,
        })
    }

    #[test]
    fn unhealthy_for_long_enough_is_due_then_backs_off_and_stops_at_the_limit() {
        let mut h = healer();
        let sick = [c("web", "running", Some("unhealthy"))];
        assert!(h.observe(&sick, t(0)).is_empty());
        assert!(h.observe(&sick, t(299)).is_empty());
        let due = h.observe(&sick, t(300));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].unhealthy_since, t(0));
        h.restarted(&due[0], t(300));
        // Still unhealthy after the restart: a new spell, then the backoff (60 s) is over.
        assert!(h.observe(&sick, t(301)).is_empty());
        let due = h.observe(&sick, t(601));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].restarts_in_hour, 1);
        h.restarted(&due[0], t(601));
        // Two restarts within the hour: the limit.
        assert!(h.observe(&sick, t(1000)).is_empty());
        assert!(h.observe(&sick, t(3500)).is_empty());
        // An hour after the first restart one slot is free again.
        assert_eq!(h.observe(&sick, t(3901)).len(), 1);
    }

    #[test]
    fn healthy_stopped_and_starting_containers_reset_the_spell() {
        let mut h = healer();
        assert!(h
            .observe(&[c("web", "running", Some("unhealthy"))], t(0))
            .is_empty());
        assert!(h
            .observe(&[c("web", "running", Some("healthy"))], t(200))
            .is_empty());
        assert!(h
            .observe(&[c("web", "running", Some("unhealthy"))], t(400))
            .is_empty());
        // An operator stopped it: never restarted, whatever its last health.
        assert!(h
            .observe(&[c("web", "exited", Some("unhealthy"))], t(800))
            .is_empty());
        assert!(h.observe(&[c("web", "running", None)], t(900)).is_empty());
    }

    #[test]
    fn labels_opt_in_and_out() {
        let mut h = healer();
        assert!(h.opted_in(Some("true")));
        assert!(!h.opted_in(None));
        h.config.all = true;
        assert!(h.opted_in(None));
        assert!(!h.opted_in(Some("false")));
        let sick = [c("web", "running", Some("unhealthy"))];
        h.observe(&sick, t(0));
        let due = h.observe(&sick, t(300));
        h.not_opted_in(&due[0]);
        assert!(
            h.observe(&sick, t(400)).is_empty(),
            "not asked again for the same id"
        );
        let mut other = sick.clone();
        other[0].id = "new-id".into();
        assert_eq!(h.observe(&other, t(500)).len(), 1);
    }
}
