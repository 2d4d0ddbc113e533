//! The agent page's "Host certificates" table: the certificates the agent read on its host
//! (files and local TLS endpoints, `host.certificates` of its latest heartbeat), with the days
//! left and any warning the agent gave for a file or endpoint it could not read.

use chrono::{DateTime, Utc};
use flotilla_shared::heartbeat::HostCertificate;
use maud::{html, Markup};

/// Fewer days left than this is shown as a warning (the relay's default medium threshold,
/// `[alerts] certificate_warn_days`; the alert itself follows the configured value).
const WARN_DAYS: i64 = 14;

/// One row per certificate, soonest expiry first (unreadable ones last).
pub fn table(list: &[HostCertificate], now: DateTime<Utc>) -> Markup {
    let mut rows: Vec<&HostCertificate> = list.iter().collect();
    rows.sort_by_key(|c| (c.not_after.is_none(), c.not_after, c.source.clone()));
    html! {
        table data-test="host-certificates" {
            thead { tr {
                th { "Source" } th { "Subject" } th { "Names" } th { "Issuer" }
                th { "Not after" } th { "Days left" } th { "Warning" }
            } }
            tbody {
                @for c in rows {
                    tr data-test="host-certificate-row" data-source=(c.source) {
                        td { code { (c.source) } }
                        td { (c.subject.as_deref().unwrap_or("")) }
                        td { (c.sans.join(", ")) }
                        td { (c.issuer.as_deref().unwrap_or("")) }
                        td {
                            @if let Some(t) = c.not_after { (t.format("%Y-%m-%d %H:%M UTC")) }
                            @else { (crate::web::layout::none()) }
                        }
                        td { (days_left(c.not_after, now)) }
                        td {
                            @if let Some(w) = &c.warning { span.error { (w) } }
                        }
                    }
                }
            }
        }
    }
}

/// `12`, `expired 3 days ago` or a dash; fewer than [`WARN_DAYS`] in the warning colour.
fn days_left(not_after: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    let Some(t) = not_after else {
        return crate::web::layout::none();
    };
    let days = (t - now).num_days();
    html! {
        @if t <= now {
            span.error data-test="certificate-expired" { "expired " ((now - t).num_days()) " days ago" }
        } @else if days < WARN_DAYS {
            span.medium data-test="certificate-expiring" { (days) }
        } @else {
            (days)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use flotilla_shared::heartbeat::CertificateSourceKind;

    fn cert(source: &str, days: Option<i64>, now: DateTime<Utc>) -> HostCertificate {
        HostCertificate {
            kind: CertificateSourceKind::File,
            source: source.into(),
            subject: Some("<script>alert(1)</script>".into()),
            sans: vec!["shop.example.com".into(), "<img src=x>".into()],
            issuer: Some("R11".into()),
            not_after: days.map(|d| now + Duration::days(d) + Duration::hours(1)),
            warning: days.is_none().then(|| "garbage <b>file</b>".to_string()),
            checked_at: now,
        }
    }

    #[test]
    fn the_table_shows_days_left_warnings_and_escapes_what_the_host_said() {
        let now = Utc::now();
        let list = [
            cert("/etc/ok.pem", Some(80), now),
            cert("/etc/soon.pem", Some(5), now),
            cert("/etc/bad.pem", None, now),
            cert("/etc/old.pem", Some(-3), now),
        ];
        let html = table(&list, now).into_string();
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<img src=x>"), "{html}");
        assert!(!html.contains("<b>file</b>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("garbage &lt;b&gt;file&lt;/b&gt;"), "{html}");
        assert!(html.contains("<span class=\"medium\" data-test=\"certificate-expiring\">5</span>"));
        assert!(html.contains("expired 2 days ago"), "{html}");
        // Soonest first, the unreadable one last.
        let at = |s: &str| html.find(s).unwrap();
        assert!(at("/etc/old.pem") < at("/etc/soon.pem"));
        assert!(at("/etc/soon.pem") < at("/etc/ok.pem"));
        assert!(at("/etc/ok.pem") < at("/etc/bad.pem"));
        assert!(html.contains(">80<"), "{html}");
    }
}
