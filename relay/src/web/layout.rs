//! The page shell (head, navigation, the confirm dialog, the live-update hooks), the sign-in
//! page, and the formatting helpers every page uses. Markup only: no data is fetched here.

use super::assets;
use super::viewer::Viewer;
use chrono::{DateTime, Utc};
use flotilla_shared::api::Scope;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// What a page listens to on the live stream (see `assets/app.js`): kind prefixes, and
/// optionally only events about one agent or one subject (a rollout id).
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub kinds: &'static str,
    pub agent: Option<String>,
    pub subject: Option<String>,
}

impl Live {
    pub fn kinds(kinds: &'static str) -> Live {
        Live {
            kinds,
            ..Live::default()
        }
    }
}

/// The navigation entries: (path, label, scope needed to see it).
const NAV: &[(&str, &str, Scope)] = &[
    ("/ui/", "Overview", Scope::Read),
    ("/ui/agents", "Agents", Scope::Read),
    ("/ui/rollouts", "Rollouts", Scope::Read),
    ("/ui/alerts", "Alerts", Scope::Read),
    ("/ui/backups", "Backups", Scope::Read),
    ("/ui/releases", "Releases", Scope::Read),
    ("/ui/audit", "Audit", Scope::Read),
    ("/ui/tokens", "Tokens", Scope::Admin),
];

fn head(title: &str, csrf: Option<&str>) -> Markup {
    let v = assets::version();
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            @if let Some(csrf) = csrf {
                meta name="csrf-token" content=(csrf);
            }
            title { (title) " · Flotilla" }
            link rel="stylesheet" href={ "/ui/assets/app.css?v=" (v) };
            script src={ "/ui/assets/app.js?v=" (v) } defer {}
        }
    }
}

/// A whole dashboard page around `body`.
pub fn page(title: &str, nav: &str, viewer: &Viewer, live: &Live, body: Markup) -> Markup {
    let scope = viewer.caller.scope();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, Some(&viewer.csrf)))
            body {
                header.top {
                    a.brand href="/ui/" { "Flotilla" }
                    nav {
                        @for (path, label, needed) in NAV {
                            @if scope >= *needed {
                                a href=(path) class=[(*path == nav).then_some("active")] { (label) }
                            }
                        }
                    }
                    div.who {
                        span data-test="signed-in-as" { (viewer.caller.name()) }
                        " "
                        span.scope data-test="scope" { (scope.as_str()) }
                        form #logout method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" data-test="sign-out" { "Sign out" }
                        }
                    }
                }
                div #flash role="status" aria-live="polite" {}
                main #content data-live=(live.kinds) data-live-agent=[live.agent.as_deref()]
                    data-live-subject=[live.subject.as_deref()] data-live-revision="0" {
                    h1 { (title) }
                    (body)
                }
                dialog #confirm {
                    p #confirm-text {}
                    div.buttons {
                        button #confirm-no type="button" { "Cancel" }
                        button #confirm-yes type="button" { "Confirm" }
                    }
                }
                pre #output hidden {}
            }
        }
    }
}

/// The sign-in page.
pub fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", None))
            body.login {
                main #content {
                    h1 { "Flotilla" }
                    p { "Sign in with an API token: the admin token the relay printed, or one from "
                        code { "flotilla api-token create" } "." }
                    @if let Some(error) = error {
                        p.error data-test="login-error" role="alert" { (error) }
                    }
                    form #login method="post" action="/ui/login" autocomplete="off" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="token" { "API token" }
                        input #token type="password" name="token" required autofocus
                            autocomplete="off" spellcheck="false";
                        button type="submit" data-test="sign-in" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// An action button: the script confirms, then calls the JSON API with the session.
pub fn action(label: &str, method: &str, url: &str, body: Option<&str>, confirm: &str) -> Markup {
    html! {
        button.action type="button" data-method=(method) data-url=(url) data-body=[body]
            data-confirm=(confirm) { (label) }
    }
}

/// Time since `t`, as people read it ("3 min ago").
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    if secs < 0 {
        return format!("in {}", span(-secs));
    }
    format!("{} ago", span(secs))
}

/// A duration in the largest sensible unit.
pub fn span(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// A timestamp with its age.
pub fn when(t: DateTime<Utc>, now: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) title=(t.format("%Y-%m-%d %H:%M:%S UTC")) { (ago(t, now)) } }
}

/// Bytes in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A percentage with a meter (no inline style: the CSP forbids it).
pub fn meter(percent: f32) -> Markup {
    let p = percent.clamp(0.0, 100.0);
    html! {
        span.meter {
            meter min="0" max="100" low="70" high="90" optimum="0" value=(format!("{p:.0}")) {}
            " " (format!("{p:.0} %"))
        }
    }
}

/// A horizontal bar of segments (label, count, css class), drawn as SVG so no inline style is
/// needed; the counts are also written out as text.
pub fn segments(parts: &[(&str, u32, &str)]) -> Markup {
    let total: u32 = parts.iter().map(|p| p.1).sum();
    let mut x = 0.0f64;
    let rects: Vec<(f64, f64, &str, String)> = parts
        .iter()
        .filter(|p| p.1 > 0)
        .map(|(label, n, class)| {
            let w = if total == 0 {
                0.0
            } else {
                f64::from(*n) * 100.0 / f64::from(total)
            };
            let r = (x, w, *class, format!("{label}: {n}"));
            x += w;
            r
        })
        .collect();
    html! {
        div.bar {
            svg viewBox="0 0 100 4" preserveAspectRatio="none" role="img"
                aria-label=(parts.iter().map(|p| format!("{} {}", p.1, p.0)).collect::<Vec<_>>().join(", ")) {
                rect.track x="0" y="0" width="100" height="4" {}
                @for (x, w, class, title) in &rects {
                    rect class=(class) x=(format!("{x:.3}")) y="0" width=(format!("{w:.3}")) height="4" {
                        title { (title) }
                    }
                }
            }
            span.legend {
                @for (label, n, class) in parts {
                    @if *n > 0 {
                        span class=(class) { (n) " " (label) } " "
                    }
                }
            }
        }
    }
}

/// One series of a chart: its name, CSS class and (unix time, value) points.
pub type Series<'a> = (&'a str, &'a str, Vec<(i64, f64)>);

/// A small line chart of up to three series over the time `window` (unix seconds, from, to;
/// SVG, no script). A series breaks where two points are more than `gap` seconds apart (the
/// agent was offline), and a lone point is drawn as a dot.
pub fn chart(title: &str, series: &[Series], max: f64, window: (i64, i64), gap: i64) -> Markup {
    let (w, h) = (600.0, 120.0);
    let (x0, x1) = if window.1 > window.0 {
        (window.0 as f64, window.1 as f64)
    } else {
        (window.0 as f64 - 1.0, window.0 as f64 + 1.0)
    };
    let max = if max > 0.0 { max } else { 1.0 };
    let xy = |(t, v): &(i64, f64)| {
        (
            (*t as f64 - x0) / (x1 - x0) * w,
            h - (v / max).clamp(0.0, 1.0) * h,
        )
    };
    // Runs of points without a gap.
    let runs = |pts: &[(i64, f64)]| -> Vec<Vec<(f64, f64)>> {
        let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
        let mut last: Option<i64> = None;
        for p in pts {
            if last.is_none_or(|l| p.0 - l > gap) {
                runs.push(Vec::new());
            }
            if let Some(run) = runs.last_mut() {
                run.push(xy(p));
            }
            last = Some(p.0);
        }
        runs
    };
    let empty = series.iter().all(|s| s.2.is_empty());
    html! {
        figure.chart {
            figcaption { (title) }
            @if empty {
                p.muted { "No history yet." }
            } @else {
                svg viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none" role="img" aria-label=(title) {
                    line.axis x1="0" y1=(h) x2=(w) y2=(h) {}
                    @for (name, class, pts) in series {
                        @for run in runs(pts) {
                            @if run.len() == 1 {
                                circle class=(class) cx=(format!("{:.1}", run[0].0)) cy=(format!("{:.1}", run[0].1)) r="2" { title { (name) } }
                            } @else {
                                polyline class=(class) fill="none"
                                    points=(run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect::<Vec<_>>().join(" "))
                                    { title { (name) } }
                            }
                        }
                    }
                }
                p.legend {
                    @for (name, class, _) in series { span class=(class) { "— " (name) } " " }
                }
            }
        }
    }
}

/// Literal markup for a non-breaking dash of an empty cell.
pub fn none() -> Markup {
    PreEscaped("&ndash;".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_span_their_window_break_at_gaps_and_dot_lone_points() {
        // 0..=600 then, after a gap, one point at 3000, on a window of 0..3600.
        let pts = vec![(0, 0.0), (300, 50.0), (600, 100.0), (3000, 25.0)];
        let series = [("cpu", "cpu", pts)];
        let svg = chart("t", &series, 100.0, (0, 3600), 600).into_string();
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert!(
            svg.contains("points=\"0.0,120.0 50.0,60.0 100.0,0.0\""),
            "{svg}"
        );
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.contains("cx=\"500.0\" cy=\"90.0\""), "{svg}");
        let none: [Series; 1] = [("cpu", "cpu", vec![])];
        assert!(chart("t", &none, 100.0, (0, 1), 1)
            .into_string()
            .contains("No history yet"));
    }

    #[test]
    fn formats_people_read() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(span(42), "42 s");
        assert_eq!(span(3 * 3600 + 120), "3 h 2 min");
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(ago(now - chrono::Duration::seconds(90), now), "1 min ago");
        assert_eq!(
            ago(now + chrono::Duration::seconds(3600), now),
            "in 1 h 0 min"
        );
    }

    #[test]
    fn every_value_is_escaped() {
        let hostile = "<script>window.__pwned=1</script>\"'&";
        let out = action(hostile, "POST", hostile, Some(hostile), hostile).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;"), "{out}");
        let bar = segments(&[(hostile, 1, "ok")]).into_string();
        assert!(!bar.contains("<script>"), "{bar}");
    }
}
