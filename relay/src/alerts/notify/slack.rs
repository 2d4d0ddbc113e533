//! Slack-compatible incoming webhooks: `{"text": ...}` only, which Slack, Mattermost,
//! Rocket.Chat and Discord's `/slack` endpoint all render.

use super::{http, Attempt, Notification, NotificationKind};
use reqwest::Url;
use std::time::Duration;

/// Escapes Slack's control characters (`&`, `<`, `>`), so agent-controlled text cannot
/// become a mention (`<!channel>`) or a disguised link (`<http://x|y>`).
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The message text: a readable first line, then the labels and the link. Every
/// agent-controlled string (message, labels, subject, names) is [`escape`]d.
pub(super) fn text(n: &Notification) -> String {
    let icon = match (n.kind, n.severity) {
        (NotificationKind::Resolved, _) => ":white_check_mark:",
        (_, flotilla_shared::alert::Severity::Hard) => ":red_circle:",
        _ => ":large_orange_circle:",
    };
    let state = match n.kind {
        NotificationKind::Firing => "",
        NotificationKind::Resolved => "RESOLVED ",
    };
    let mut second = Vec::new();
    let labels = n.labels_text();
    if !labels.is_empty() {
        second.push(escape(&labels));
    }
    if n.subject != n.location() {
        second.push(format!("subject: {}", escape(&n.subject)));
    }
    second.push(n.url.clone());
    format!(
        "{icon} {state}[{}] {} on {}: {}\n{}",
        n.severity.as_str().to_uppercase(),
        escape(&n.rule),
        escape(n.location()),
        escape(&n.message),
        second.join(" · ")
    )
}

/// One configured Slack-compatible webhook.
pub(super) struct SlackTransport {
    client: reqwest::Client,
    url: Url,
    timeout: Duration,
}

impl SlackTransport {
    pub(super) fn new(url: Url, timeout: Duration) -> Self {
        SlackTransport {
            client: http::client(timeout),
            url,
            timeout,
        }
    }

    /// POSTs the text with the delivery id beside it (receivers ignore the field they do not
    /// know; a bridge can de-duplicate on it).
    pub(super) async fn attempt(&self, delivery_id: &str, n: &Notification) -> Attempt {
        let request = self.client.post(self.url.clone()).json(&serde_json::json!({
            "text": text(n),
            "flotilla_delivery_id": delivery_id,
        }));
        http::send(request, self.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::sample;
    use super::*;
    use flotilla_shared::alert::Severity;

    #[test]
    fn agent_text_cannot_mention_or_link() {
        let mut n = sample(Severity::Hard);
        n.message = "<!channel> see <http://evil.example|docs> & more".into();
        n.subject = "<@U123>".into();
        n.agent_name = Some("<!here>".into());
        n.agent_labels = [("team".to_string(), "<!everyone>".to_string())].into();
        let t = text(&n);
        assert!(!t.contains("<!"), "{t}");
        assert!(!t.contains("<@"), "{t}");
        assert!(!t.contains("<http://evil"), "{t}");
        assert!(t.contains("&lt;!channel&gt; see &lt;http://evil.example|docs&gt; &amp; more"));
        assert!(t.contains("&lt;!here&gt;"));
        assert!(t.contains("subject: &lt;@U123&gt;"));
        assert!(t.contains("team=&lt;!everyone&gt;"));
    }

    #[test]
    fn text_has_a_headline_labels_and_the_link() {
        let mut n = sample(Severity::Hard);
        n.subject = "/var".into();
        n.message = "/var is 91% full".into();
        assert_eq!(
            text(&n),
            ":red_circle: [HARD] agent_unreachable on web-12: /var is 91% full\n\
             env=prod, region=eu · subject: /var · https://relay.example.com/api/v1/alerts/alr_test1"
        );
        n.kind = NotificationKind::Resolved;
        n.agent_labels.clear();
        n.agent_name = None;
        n.agent_id = None;
        n.subject = "relay.example.com:443".into();
        assert_eq!(
            text(&n),
            ":white_check_mark: RESOLVED [HARD] agent_unreachable on relay.example.com:443: \
             /var is 91% full\nhttps://relay.example.com/api/v1/alerts/alr_test1"
        );
    }
}
