//! E-mail over SMTP (lettre on tokio with rustls): one plain-text message per notification to
//! all of the channel's recipients. The `Message-ID` is derived from (alert id, kind), so a
//! resolution threads under its firing message (`In-Reply-To` / `References`), and a retried
//! message that did arrive the first time is recognisable as the same message.

use super::{Attempt, Notification, NotificationKind};
use crate::config::notify::SmtpSecurity;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Longest subject line, in characters (the message text is cut with `…`).
const MAX_SUBJECT_CHARS: usize = 200;

/// One configured SMTP channel.
pub(super) struct EmailTransport {
    /// `Err`: the TLS parameters could not be built (reported on every attempt).
    transport: Result<AsyncSmtpTransport<Tokio1Executor>, String>,
    from: Mailbox,
    to: Vec<Mailbox>,
    timeout: Duration,
}

impl EmailTransport {
    pub(super) fn new(
        host: &str,
        port: u16,
        security: SmtpSecurity,
        credentials: Option<(String, String)>,
        from: Mailbox,
        to: Vec<Mailbox>,
        timeout: Duration,
    ) -> Self {
        let transport = build_transport(host, port, security, credentials, timeout);
        EmailTransport {
            transport,
            from,
            to,
            timeout,
        }
    }

    pub(super) async fn attempt(&self, n: &Notification) -> Attempt {
        let transport = match &self.transport {
            Ok(t) => t,
            Err(e) => {
                return Attempt::GiveUp {
                    error: e.to_string(),
                }
            }
        };
        let message = match message(&self.from, &self.to, n) {
            Ok(m) => m,
            Err(e) => {
                return Attempt::GiveUp {
                    error: format!("cannot build the e-mail: {e}"),
                }
            }
        };
        // lettre's timeout bounds each read and write; this bounds the whole exchange.
        let whole = self.timeout * 4;
        match tokio::time::timeout(whole, transport.send(message)).await {
            Err(_) => Attempt::Retry {
                error: format!("the SMTP exchange took longer than {}s", whole.as_secs()),
                retry_after: None,
            },
            Ok(Ok(_)) => Attempt::Delivered,
            Ok(Err(e)) if e.is_permanent() => Attempt::GiveUp {
                error: format!("the SMTP server refused the message: {e}"),
            },
            Ok(Err(e)) => Attempt::Retry {
                error: format!("SMTP: {e}"),
                retry_after: None,
            },
        }
    }
}

fn build_transport(
    host: &str,
    port: u16,
    security: SmtpSecurity,
    credentials: Option<(String, String)>,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = match security {
        SmtpSecurity::Plain => Tls::None,
        SmtpSecurity::StartTls | SmtpSecurity::ImplicitTls => {
            let parameters = TlsParameters::new(host.to_string())
                .map_err(|e| format!("cannot set up TLS for {host}: {e}"))?;
            if security == SmtpSecurity::StartTls {
                Tls::Required(parameters)
            } else {
                Tls::Wrapper(parameters)
            }
        }
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some((user, password)) = credentials {
        builder = builder.credentials(Credentials::new(user, password));
    }
    Ok(builder.build())
}

/// `[flotilla HARD] agent_unreachable on web-12: no heartbeat for 3m` (with `RESOLVED` after
/// the tag for a resolution), on one line and at most [`MAX_SUBJECT_CHARS`] characters.
pub(super) fn subject(n: &Notification) -> String {
    let state = match n.kind {
        NotificationKind::Firing => "",
        NotificationKind::Resolved => "RESOLVED ",
    };
    let text = format!(
        "[flotilla {}] {state}{} on {}: {}",
        n.severity.as_str().to_uppercase(),
        n.rule,
        n.location(),
        n.message
    );
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= MAX_SUBJECT_CHARS {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(MAX_SUBJECT_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The plain-text body: every field of the notification, the labels and the link.
pub(super) fn body(n: &Notification) -> String {
    let mut lines = vec![
        match n.kind {
            NotificationKind::Firing => format!("FIRING: {}", n.message),
            NotificationKind::Resolved => format!("RESOLVED: {}", n.message),
        },
        String::new(),
        format!("Alert:     {}", n.alert_id),
        format!("Rule:      {}", n.rule),
        format!("Severity:  {}", n.severity),
    ];
    match (&n.agent_name, &n.agent_id) {
        (Some(name), Some(id)) => lines.push(format!("Agent:     {name} ({id})")),
        (None, Some(id)) => lines.push(format!("Agent:     {id}")),
        (Some(name), None) => lines.push(format!("Agent:     {name}")),
        (None, None) => {}
    }
    lines.push(format!("Subject:   {}", n.subject));
    let labels = n.labels_text();
    lines.push(format!(
        "Labels:    {}",
        if labels.is_empty() { "-" } else { &labels }
    ));
    lines.push(format!("Started:   {}", n.started_at.to_rfc3339()));
    if let Some(resolved) = n.resolved_at {
        lines.push(format!("Resolved:  {}", resolved.to_rfc3339()));
    }
    lines.push(format!("Link:      {}", n.url));
    lines.push(String::new());
    lines.push("-- ".into());
    lines.push("Sent by flotilla-relay.".into());
    lines.join("\n") + "\n"
}

/// `<alr_x.firing@domain-of-from>`: stable per (alert, kind).
pub(super) fn message_id(from: &Mailbox, alert_id: &str, kind: NotificationKind) -> String {
    let local: String = alert_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .collect();
    format!("<{local}.{}@{}>", kind.as_str(), from.email.domain())
}

fn message(from: &Mailbox, to: &[Mailbox], n: &Notification) -> Result<Message, String> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(subject(n))
        .message_id(Some(message_id(from, &n.alert_id, n.kind)))
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    if n.kind == NotificationKind::Resolved {
        let firing = message_id(from, &n.alert_id, NotificationKind::Firing);
        builder = builder.in_reply_to(firing.clone()).references(firing);
    }
    builder.body(body(n)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use flotilla_shared::alert::Severity;

    #[test]
    fn subject_body_and_threading() {
        let mut n = sample(Severity::Hard);
        assert_eq!(
            subject(&n),
            "[flotilla HARD] agent_unreachable on web-12: no heartbeat for 3m"
        );
        let from: Mailbox = "Flotilla <alerts@example.com>".parse().unwrap();
        let to: Mailbox = "ops@example.com".parse().unwrap();
        let firing = String::from_utf8(
            message(&from, std::slice::from_ref(&to), &n)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(
            firing.contains("Message-ID: <alr_test1.firing@example.com>"),
            "{firing}"
        );
        assert!(!firing.contains("In-Reply-To"), "{firing}");
        for needle in [
            "Alert:     alr_test1",
            "Agent:     web-12 (agt_1)",
            "Labels:    env=prod, region=eu",
            "Started:   2026-01-02T03:04:05+00:00",
            "Link:      https://relay.example.com/api/v1/alerts/alr_test1",
        ] {
            assert!(firing.contains(needle), "{needle} missing from {firing}");
        }
        n.kind = NotificationKind::Resolved;
        n.resolved_at = Some("2026-01-02T04:00:00Z".parse().unwrap());
        n.message = "line one\nline two".into();
        assert_eq!(
            subject(&n),
            "[flotilla HARD] RESOLVED agent_unreachable on web-12: line one line two"
        );
        let resolved = String::from_utf8(message(&from, &[to], &n).unwrap().formatted()).unwrap();
        assert!(
            resolved.contains("Message-ID: <alr_test1.resolved@example.com>"),
            "{resolved}"
        );
        assert!(
            resolved.contains("In-Reply-To: <alr_test1.firing@example.com>"),
            "{resolved}"
        );
        assert!(resolved.contains("Resolved:  2026-01-02T04:00:00+00:00"));
        n.message = "x".repeat(500);
        assert_eq!(subject(&n).chars().count(), MAX_SUBJECT_CHARS);
    }
}
