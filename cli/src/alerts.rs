//! `flotilla alerts`: the fleet's alerts (`--watch` looks again whenever the relay's event
//! stream reports an alert change, or every 2 s on a relay without the stream: on a terminal it
//! redraws the whole table, else prints one line per alert that fired or resolved), and
//! `alerts ack|silence|silences|unsilence`.

use super::client::{decode, ApiClient, CliError};
use super::events::{StreamQuery, WatchFeed};
use super::render::{self, clean, Table};
use super::run::{emit, print_value};
use super::Outcome;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use flotilla_shared::alert::{AlertInfo, CreateSilence, Severity, Silence};
use flotilla_shared::duration::parse_duration;
use flotilla_shared::selector::Selector;
use flotilla_shared::stream::kind_selected;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

/// How often `--watch` looks again on a relay without the event stream.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// `flotilla alerts`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
    /// firing (default), resolved or all.
    #[arg(long, default_value = "firing")]
    pub state: String,
    /// Only alerts of this severity (soft, medium, hard).
    #[arg(long)]
    pub severity: Option<Severity>,
    /// Only alerts about this agent (id).
    #[arg(long)]
    pub agent: Option<String>,
    /// Only alerts of this rule.
    #[arg(long)]
    pub rule: Option<String>,
    /// Most alerts to show (1-10000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Keep watching: redraw on every alert change (on a terminal), else print alerts as they
    /// fire/resolve.
    #[arg(long)]
    pub watch: bool,
}

/// `flotilla alerts <subcommand>`.
#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Acknowledge an alert: it is not notified again (it resolves when its condition clears).
    Ack {
        /// The alert's id (`alr_...`).
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Silence alerts matching agent labels (and optionally a rule and subject) for a while.
    Silence {
        /// Agent labels (`region=eu,tier!=build`; `*` for every alert).
        #[arg(long)]
        selector: Selector,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        /// How long (`30m`, `2h`, `7d`).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Silences in force or to come.
    Silences,
    /// End a silence now.
    Unsilence {
        /// The silence's id (`sil_...`).
        id: String,
    },
}

fn query(args: &AlertsArgs) -> Vec<(&'static str, String)> {
    let mut q = vec![
        ("state", args.state.clone()),
        ("limit", args.limit.to_string()),
    ];
    if let Some(s) = args.severity {
        q.push(("severity", s.to_string()));
    }
    if let Some(a) = &args.agent {
        q.push(("agent", a.clone()));
    }
    if let Some(r) = &args.rule {
        q.push(("rule", r.clone()));
    }
    q
}

/// Runs `flotilla alerts ...`.
pub async fn alerts(
    client: &ApiClient,
    args: &AlertsArgs,
    json: bool,
    now: DateTime<Utc>,
) -> Result<Outcome, CliError> {
    match &args.command {
        Some(AlertsCommand::Ack { id, comment }) => {
            let body = flotilla_shared::alert::AckRequest {
                comment: comment.clone(),
            };
            let value = client
                .post(
                    &["api", "v1", "alerts", id, "ack"],
                    &[],
                    &body,
                    Duration::ZERO,
                )
                .await?;
            let a: AlertInfo = decode(&value, "alert")?;
            print_value(&value, json, || {
                format!(
                    "acknowledged alert {} ({} {})\n",
                    clean(&a.id),
                    clean(&a.rule),
                    clean(&a.subject)
                )
            });
        }
        Some(AlertsCommand::Silence {
            selector,
            rule,
            subject,
            duration,
            comment,
        }) => {
            let body = CreateSilence {
                selector: selector.clone(),
                rule: rule.clone(),
                subject: subject.clone(),
                starts_at: None,
                ends_at: None,
                duration_secs: Some(duration.as_secs()),
                comment: comment.clone(),
            };
            let value = client
                .post(&["api", "v1", "silences"], &[], &body, Duration::ZERO)
                .await?;
            let s: Silence = decode(&value, "silence")?;
            print_value(&value, json, || {
                format!("silence {} until {}\n", s.id, render::time(s.ends_at))
            });
        }
        Some(AlertsCommand::Silences) => {
            let value = client.get(&["api", "v1", "silences"], &[]).await?;
            let list: Vec<Silence> = decode(&value, "silences")?;
            print_value(&value, json, || silences(&list, now));
        }
        Some(AlertsCommand::Unsilence { id }) => {
            client.delete(&["api", "v1", "silences", id]).await?;
            if json {
                emit(&format!(
                    "{}\n",
                    serde_json::json!({"id": id, "ended": true})
                ));
            } else {
                emit(&format!("ended silence {id}\n"));
            }
        }
        None if args.watch => return watch(client, args, json).await,
        None => {
            let value = client.get(&["api", "v1", "alerts"], &query(args)).await?;
            let list: Vec<AlertInfo> = decode(&value, "alerts")?;
            print_value(&value, json, || alert_table(&list, now));
        }
    }
    Ok(Outcome::Success)
}

/// How often `--watch` on a terminal re-fetches without an event.
const TTY_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

async fn watch(client: &ApiClient, args: &AlertsArgs, json: bool) -> Result<Outcome, CliError> {
    let tty = std::io::stdout().is_terminal() && !json;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    watch_with(client, args, json, tty, &mut |s| emit(s), stop).await
}

/// `alerts --watch`: fetches once, then again whenever the event stream says an alert changed
/// (or, on a relay without the stream, every [`WATCH_INTERVAL`]), until `stop` (Ctrl-C).
pub(crate) async fn watch_with(
    client: &ApiClient,
    args: &AlertsArgs,
    json: bool,
    tty: bool,
    out: &mut dyn FnMut(&str),
    stop: impl std::future::Future<Output = ()>,
) -> Result<Outcome, CliError> {
    let mut feed = WatchFeed::open(client, StreamQuery::kinds("alert"), WATCH_INTERVAL).await?;
    let mut known: Option<BTreeMap<String, AlertInfo>> = None;
    tokio::pin!(stop);
    loop {
        let value = client.get(&["api", "v1", "alerts"], &query(args)).await?;
        let list: Vec<AlertInfo> = decode(&value, "alerts")?;
        let now = Utc::now();
        if tty {
            out(&format!("\x1b[2J\x1b[H{}", alert_table(&list, now)));
        } else {
            let current: BTreeMap<String, AlertInfo> =
                list.into_iter().map(|a| (a.id.clone(), a)).collect();
            let lines = changes(known.as_ref(), &current, json);
            if !lines.is_empty() {
                out(&lines);
            }
            known = Some(current);
        }
        tokio::select! {
            // On a terminal the table also ages ("fired 5 min ago") and shows silences, which
            // the stream does not announce: redraw from a fresh fetch every few seconds too.
            wake = feed.wait(tty.then_some(TTY_REFRESH), |e| kind_selected(&["alert".to_string()], &e.kind)) => {
                wake?;
            }
            () = &mut stop => return Ok(Outcome::Success),
        }
    }
}

/// Lines for alerts new since the previous look (all of them the first time) and for alerts
/// that resolved or left the view; JSON lines with `--json`.
pub fn changes(
    before: Option<&BTreeMap<String, AlertInfo>>,
    now: &BTreeMap<String, AlertInfo>,
    json: bool,
) -> String {
    let mut out = String::new();
    let mut line = |a: &AlertInfo, what: &str| {
        if json {
            out.push_str(&serde_json::to_string(a).unwrap_or_default());
        } else {
            out.push_str(&format!(
                "{} {what} {} {} {} {}: {}",
                render::time(Utc::now()),
                a.severity,
                clean(&a.id),
                clean(&a.rule),
                clean(a.agent_name.as_deref().unwrap_or("-")),
                clean(&a.message)
            ));
        }
        out.push('\n');
    };
    for (id, a) in now {
        let old = before.and_then(|b| b.get(id));
        match old {
            None => line(a, a.state.as_str()),
            Some(o) if o.state != a.state => line(a, a.state.as_str()),
            _ => {}
        }
    }
    if let Some(before) = before {
        for (id, a) in before {
            if !now.contains_key(id) && a.state == flotilla_shared::alert::AlertState::Firing {
                line(a, "resolved");
            }
        }
    }
    out
}

/// The alerts as a table.
pub fn alert_table(list: &[AlertInfo], now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return "no alerts\n".to_string();
    }
    let mut t = Table::new(&[
        "ID", "SEVERITY", "STATE", "RULE", "AGENT", "SUBJECT", "SINCE", "FLAGS", "MESSAGE",
    ]);
    for a in list {
        let mut flags = Vec::new();
        if a.acknowledged_at.is_some() {
            flags.push(format!(
                "acked by {}",
                clean(a.acknowledged_by.as_deref().unwrap_or("?"))
            ));
        }
        if a.silenced {
            flags.push("silenced".to_string());
        }
        if a.notified_at.is_some() {
            flags.push("notified".to_string());
        }
        let state = match a.resolved_at {
            Some(r) => format!("resolved {}", render::ago(r, now)),
            None => a.state.to_string(),
        };
        t.row(vec![
            clean(&a.id),
            a.severity.to_string(),
            state,
            clean(&a.rule),
            clean(
                a.agent_name
                    .as_deref()
                    .or(a.agent_id.as_deref())
                    .unwrap_or("-"),
            ),
            clean(&a.subject),
            render::ago(a.started_at, now),
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(", ")
            },
            clean(&a.message),
        ]);
    }
    t.render()
}

/// The silences as a table.
pub fn silences(list: &[Silence], now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return "no silences\n".to_string();
    }
    let mut t = Table::new(&[
        "ID", "SELECTOR", "RULE", "SUBJECT", "STARTS", "ENDS", "BY", "COMMENT",
    ]);
    for s in list {
        t.row(vec![
            s.id.clone(),
            s.selector.to_string(),
            clean(s.rule.as_deref().unwrap_or("*")),
            clean(s.subject.as_deref().unwrap_or("*")),
            render::ago(s.starts_at, now),
            render::ago(s.ends_at, now),
            clean(&s.created_by),
            clean(&s.comment),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, CliCommand};
    use clap::Parser;
    use flotilla_shared::alert::AlertState;

    fn parse(args: &[&str]) -> AlertsArgs {
        match Cli::try_parse_from(std::iter::once("flotilla").chain(args.iter().copied()))
            .unwrap()
            .command
        {
            CliCommand::Alerts(a) => a,
            other => panic!("not alerts: {other:?}"),
        }
    }

    fn alert(id: &str, state: AlertState) -> AlertInfo {
        let t = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        AlertInfo {
            id: id.into(),
            rule: "disk_full".into(),
            severity: Severity::Medium,
            agent_id: Some("ag_1".into()),
            agent_name: Some("web-1".into()),
            agent_labels: Default::default(),
            subject: "/".into(),
            message: "filesystem / on web-1 is 91 % full (threshold 85 %)".into(),
            state,
            started_at: t,
            fired_at: t,
            resolved_at: None,
            last_seen_at: t,
            acknowledged_by: Some("ops".into()),
            acknowledged_at: Some(t),
            silenced: true,
            silence_id: Some("sil_1".into()),
            notified_at: None,
        }
    }

    #[test]
    fn parses_list_and_subcommands() {
        let a = parse(&["alerts", "--severity", "hard", "--watch"]);
        assert!(a.watch && a.command.is_none());
        assert_eq!(a.state, "firing");
        assert_eq!(a.severity, Some(Severity::Hard));
        let a = parse(&[
            "alerts",
            "silence",
            "--selector",
            "region=eu",
            "--for",
            "2h",
            "--rule",
            "disk_full",
        ]);
        let Some(AlertsCommand::Silence { duration, rule, .. }) = a.command else {
            panic!("not a silence")
        };
        assert_eq!(duration, Duration::from_secs(7200));
        assert_eq!(rule.as_deref(), Some("disk_full"));
        assert!(matches!(
            parse(&["alerts", "ack", "alr_1"]).command,
            Some(AlertsCommand::Ack { .. })
        ));
        assert!(matches!(
            parse(&["alerts", "unsilence", "sil_1"]).command,
            Some(AlertsCommand::Unsilence { .. })
        ));
    }

    #[test]
    fn renders_table_and_watch_lines() {
        let now = DateTime::from_timestamp(1_800_000_060, 0).unwrap();
        let text = alert_table(&[alert("alr_1", AlertState::Firing)], now);
        assert!(text.starts_with("ID  "), "{text}");
        assert!(
            text.contains("alr_1") && text.contains("acked by ops, silenced"),
            "{text}"
        );
        assert!(text.contains("1m ago"), "{text}");
        assert_eq!(alert_table(&[], now), "no alerts\n");

        let first: BTreeMap<String, AlertInfo> =
            [("alr_1".to_string(), alert("alr_1", AlertState::Firing))].into();
        let lines = changes(None, &first, false);
        assert!(
            lines.contains(" firing medium alr_1 disk_full web-1: "),
            "{lines}"
        );
        assert_eq!(changes(Some(&first), &first, false), "");
        let gone = BTreeMap::new();
        let lines = changes(Some(&first), &gone, false);
        assert!(lines.contains(" resolved medium alr_1"), "{lines}");
    }

    #[test]
    fn agent_text_loses_control_characters() {
        let now = DateTime::from_timestamp(1_800_000_060, 0).unwrap();
        let mut a = alert("alr_1", AlertState::Firing);
        a.message = "boom\x1b[2J\x1b]0;pwned\x07\nnext".into();
        a.subject = "/v\x1bar".into();
        a.agent_name = Some("web\r-1".into());
        let text = alert_table(std::slice::from_ref(&a), now);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.contains("boom[2J]0;pwned next"), "{text:?}");
        assert_eq!(text.lines().count(), 2, "{text:?}");
        let map: BTreeMap<String, AlertInfo> = [("alr_1".to_string(), a)].into();
        let lines = changes(None, &map, false);
        assert!(!lines.trim_end().chars().any(char::is_control), "{lines:?}");
        assert!(lines.contains("web -1"), "{lines:?}");
    }
}
