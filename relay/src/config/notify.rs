//! The `[notify]` section of relay.toml: where notifications go and how hard delivery tries.
//!
//! The structs are plain data (they are part of `RelayConfig`, compared and serialised like the
//! rest of it); [`NotifyConfig::validate`] checks them and [`NotifyConfig::resolve`] reads the
//! secret files, so a relay with a bad `[notify]` section refuses to start with an error naming
//! the key, instead of failing at the first alert.

use flotilla_shared::alert::Severity;
use lettre::message::Mailbox;
use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;

/// Settings of alert notifications (`[notify]` in relay.toml). No channel configured: the
/// relay records alerts but notifies nobody.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Generic JSON webhooks (`[[notify.webhooks]]`), each request signed with HMAC-SHA256.
    pub webhooks: Vec<WebhookConfig>,
    /// Slack-compatible incoming webhooks (`[[notify.slack]]`): Slack, Mattermost, Rocket.Chat,
    /// Discord's `/slack` endpoint.
    pub slack: Vec<SlackConfig>,
    /// E-mail over SMTP (`[[notify.email]]`).
    pub email: Vec<EmailConfig>,
    /// Notifications each channel may hold waiting for delivery; when a channel's queue is full
    /// further notifications for it are dropped (and counted), never waited for.
    pub queue_capacity: usize,
    /// Delivery attempts per notification and channel before it is given up (logged as an
    /// error and counted as failed).
    pub max_attempts: u32,
    /// Wait before the first retry, in seconds; doubled after every failed attempt (with jitter).
    pub initial_backoff_secs: u64,
    /// Longest wait between attempts, in seconds (also caps a receiver's `Retry-After`).
    pub max_backoff_secs: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhooks: Vec::new(),
            slack: Vec::new(),
            email: Vec::new(),
            queue_capacity: 10_000,
            max_attempts: 8,
            initial_backoff_secs: 1,
            max_backoff_secs: 300,
        }
    }
}

/// Default `timeout_secs` of every channel.
const DEFAULT_TIMEOUT_SECS: u64 = 10;

fn default_timeout_secs() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

fn default_min_severity() -> Severity {
    Severity::Medium
}

/// What a channel can subscribe to (`events = [...]` of a `[[notify.webhooks]]` entry): the
/// two alert notifications and the fleet's lifecycle events, a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum NotifyEvent {
    #[serde(rename = "alert.firing")]
    AlertFiring,
    #[serde(rename = "alert.resolved")]
    AlertResolved,
    #[serde(rename = "agent.enrolled")]
    AgentEnrolled,
    #[serde(rename = "agent.revoked")]
    AgentRevoked,
    /// Disconnected and not back within the alerts' unreachable grace.
    #[serde(rename = "agent.offline")]
    AgentOffline,
    #[serde(rename = "update.finished")]
    UpdateFinished,
    /// A rollout reached a final state (completed, aborted, reverted).
    #[serde(rename = "rollout.finished")]
    RolloutFinished,
    /// A database backup an agent reported as failed.
    #[serde(rename = "backup.failed")]
    BackupFailed,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 8] = [
        NotifyEvent::AlertFiring,
        NotifyEvent::AlertResolved,
        NotifyEvent::AgentEnrolled,
        NotifyEvent::AgentRevoked,
        NotifyEvent::AgentOffline,
        NotifyEvent::UpdateFinished,
        NotifyEvent::RolloutFinished,
        NotifyEvent::BackupFailed,
    ];

    /// What a channel without `events` gets: today's alert notifications.
    pub const DEFAULT: [NotifyEvent; 2] = [NotifyEvent::AlertFiring, NotifyEvent::AlertResolved];

    pub const fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::AlertFiring => "alert.firing",
            NotifyEvent::AlertResolved => "alert.resolved",
            NotifyEvent::AgentEnrolled => "agent.enrolled",
            NotifyEvent::AgentRevoked => "agent.revoked",
            NotifyEvent::AgentOffline => "agent.offline",
            NotifyEvent::UpdateFinished => "update.finished",
            NotifyEvent::RolloutFinished => "rollout.finished",
            NotifyEvent::BackupFailed => "backup.failed",
        }
    }

    pub fn parse(s: &str) -> Option<NotifyEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// Not an alert notification: decided from the live event bus.
    pub fn is_lifecycle(self) -> bool {
        !Self::DEFAULT.contains(&self)
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One generic JSON webhook. Its `Debug` shows the URL as scheme and host only (a URL may
/// carry a token in its path or query).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Channel name for logs and metrics (letters, digits, `.`, `_`, `-`; unique).
    pub name: String,
    /// `http://` or `https://` URL the notification is POSTed to.
    pub url: String,
    /// HMAC-SHA256 key for the `X-Flotilla-Signature` and `webhook-signature` headers, inline
    /// (`whsec_<base64>`: the Standard Webhooks signature is keyed with the decoded bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<InlineSecret>,
    /// File holding the HMAC key (surrounding whitespace is ignored). Exactly one of `secret`
    /// and `secret_file` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Alerts below this severity are not sent here.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Seconds one request may take (connect + answer) before it counts as failed and is
    /// retried.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
    /// What this webhook receives ([`NotifyEvent`] names); absent: `alert.firing` and
    /// `alert.resolved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = Url::parse(self.url.trim())
            .map(|u| loggable_url(&u))
            .unwrap_or_else(|_| "<unparseable>".to_string());
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &url)
            .field("secret", &self.secret)
            .field("secret_file", &self.secret_file)
            .field("min_severity", &self.min_severity)
            .field("timeout_secs", &self.timeout_secs)
            .field("events", &self.events)
            .finish()
    }
}

/// One Slack-compatible incoming webhook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// Channel name for logs and metrics.
    pub name: String,
    /// The incoming-webhook URL. It embeds a token: only its scheme and host are ever logged.
    pub url: InlineSecret,
    /// Alerts below this severity are not sent here.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Seconds one request may take before it is retried.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// One e-mail channel: a set of recipients behind one SMTP server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Channel name for logs and metrics.
    pub name: String,
    /// SMTP server host name (also the name its TLS certificate must carry).
    pub smtp_host: String,
    /// SMTP port; default 587, or 465 with `starttls = "tls"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    /// `true`: STARTTLS, required (default); `"tls"`: implicit TLS (port 465); `false`: plain
    /// text, only allowed without credentials or to a loopback server.
    #[serde(default)]
    pub starttls: SmtpSecurity,
    /// SMTP user name; needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the SMTP password (surrounding whitespace is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Sender, `alerts@example.com` or `Flotilla <alerts@example.com>`.
    pub from: String,
    /// Recipients (at least one).
    pub to: Vec<String>,
    /// Alerts below this severity are not sent here.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Seconds one SMTP exchange may take before it is retried.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// How the SMTP connection is secured (`starttls = true | false | "tls"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS; refuses a server that does not offer it.
    #[default]
    StartTls,
    /// TLS from the first byte (SMTPS, usually port 465).
    ImplicitTls,
    /// No TLS at all.
    Plain,
}

impl Serialize for SmtpSecurity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SmtpSecurity::StartTls => serializer.serialize_bool(true),
            SmtpSecurity::Plain => serializer.serialize_bool(false),
            SmtpSecurity::ImplicitTls => serializer.serialize_str("tls"),
        }
    }
}

impl<'de> Deserialize<'de> for SmtpSecurity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(SmtpSecurity::StartTls),
            Raw::Bool(false) => Ok(SmtpSecurity::Plain),
            Raw::Text(t) if t == "tls" => Ok(SmtpSecurity::ImplicitTls),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "invalid starttls {t:?}: expected true, false or \"tls\""
            ))),
        }
    }
}

/// A secret given inline in relay.toml: compared and serialised like a string, but never
/// shown by `Debug`, so a logged config cannot leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InlineSecret(pub String);

impl fmt::Debug for InlineSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A `[notify]` setting that cannot work; the message names the key (`notify.webhooks[0].url`).
#[derive(Debug, thiserror::Error)]
pub enum NotifyConfigError {
    /// A value that cannot work (out of range, not a URL, a bad combination, ...).
    #[error("invalid {key}: {problem}")]
    Invalid { key: String, problem: String },
    /// A secret file that cannot be read.
    #[error("cannot read {key} {path}: {source}")]
    SecretFile {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> NotifyConfigError {
    NotifyConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// `scheme://host[:port]` of a URL: what may be logged of a URL that can carry credentials.
pub fn loggable_url(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}://", url.scheme()),
    }
}

// === impl NotifyConfig ===

/// A channel's settings after validation, with secrets read from their files.
#[derive(Clone)]
pub(crate) enum ResolvedChannel {
    Webhook {
        name: String,
        url: Url,
        secret: Vec<u8>,
        min_severity: Severity,
        timeout_secs: u64,
        events: Vec<NotifyEvent>,
    },
    Slack {
        name: String,
        url: Url,
        min_severity: Severity,
        timeout_secs: u64,
    },
    Email {
        name: String,
        host: String,
        port: u16,
        security: SmtpSecurity,
        credentials: Option<(String, String)>,
        from: Mailbox,
        to: Vec<Mailbox>,
        min_severity: Severity,
        timeout_secs: u64,
    },
}

impl fmt::Debug for ResolvedChannel {
    /// Only the kind and name: the rest holds secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match self {
            ResolvedChannel::Webhook { name, .. } => ("webhook", name),
            ResolvedChannel::Slack { name, .. } => ("slack", name),
            ResolvedChannel::Email { name, .. } => ("email", name),
        };
        write!(f, "{kind} {name:?}")
    }
}

impl NotifyConfig {
    /// Checks every setting without touching files (secret files are read by
    /// [`NotifyConfig::resolve`], which also runs this).
    pub fn validate(&self) -> Result<(), NotifyConfigError> {
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(invalid(
                "notify.queue_capacity",
                format!("{} is not 1 to 1000000", self.queue_capacity),
            ));
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(invalid(
                "notify.max_attempts",
                format!("{} is not 1 to 100", self.max_attempts),
            ));
        }
        if !(1..=86_400).contains(&self.initial_backoff_secs) {
            return Err(invalid(
                "notify.initial_backoff_secs",
                format!("{} is not 1 to 86400 seconds", self.initial_backoff_secs),
            ));
        }
        if !(self.initial_backoff_secs..=86_400).contains(&self.max_backoff_secs) {
            return Err(invalid(
                "notify.max_backoff_secs",
                format!(
                    "{} is not between initial_backoff_secs ({}) and 86400 seconds",
                    self.max_backoff_secs, self.initial_backoff_secs
                ),
            ));
        }
        let mut names: Vec<(String, String)> = Vec::new();
        let mut check_name = |key: String, name: &str| {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(invalid(
                    key,
                    format!("{name:?} is not 1-64 letters, digits, '.', '_' or '-'"),
                ));
            }
            if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
                return Err(invalid(
                    key,
                    format!("channel name {name:?} is already used by {first}"),
                ));
            }
            names.push((name.to_string(), key));
            Ok(())
        };
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("notify.webhooks[{i}].{field}");
            check_name(key("name"), &w.name)?;
            parse_http_url(&key("url"), &w.url)?;
            match (&w.secret, &w.secret_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        key("secret"),
                        "give either secret or secret_file, not both",
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        key("secret"),
                        "a webhook needs secret or secret_file (the HMAC key)",
                    ))
                }
                (Some(s), None) if s.0.trim().is_empty() => {
                    return Err(invalid(key("secret"), "the secret is empty"))
                }
                (Some(s), None) => check_standard_secret(&key("secret"), s.0.trim())?,
                _ => {}
            }
            check_timeout(&key("timeout_secs"), w.timeout_secs)?;
            parse_events(&key("events"), w.events.as_deref())?;
        }
        for (i, s) in self.slack.iter().enumerate() {
            let key = |field: &str| format!("notify.slack[{i}].{field}");
            check_name(key("name"), &s.name)?;
            parse_http_url(&key("url"), &s.url.0)?;
            check_timeout(&key("timeout_secs"), s.timeout_secs)?;
        }
        for (i, e) in self.email.iter().enumerate() {
            let key = |field: &str| format!("notify.email[{i}].{field}");
            check_name(key("name"), &e.name)?;
            self.validate_email(e, &key)?;
        }
        Ok(())
    }

    fn validate_email(
        &self,
        e: &EmailConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(), NotifyConfigError> {
        let host = e.smtp_host.trim();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(invalid(
                key("smtp_host"),
                format!("{:?} is not a host name", e.smtp_host),
            ));
        }
        if e.smtp_port == Some(0) {
            return Err(invalid(key("smtp_port"), "0 is not a port"));
        }
        match (&e.username, &e.password_file) {
            (Some(_), None) => {
                return Err(invalid(
                    key("password_file"),
                    "username is set but password_file is not",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    key("username"),
                    "password_file is set but username is not",
                ))
            }
            (Some(u), Some(_)) if u.trim().is_empty() => {
                return Err(invalid(key("username"), "the user name is empty"))
            }
            _ => {}
        }
        if e.starttls == SmtpSecurity::Plain && e.username.is_some() && !is_loopback_host(host) {
            return Err(invalid(
                key("starttls"),
                format!(
                    "false would send the SMTP password in clear text to {host}; use true or \
                     \"tls\" (plain text is only allowed to a loopback server)"
                ),
            ));
        }
        e.from.parse::<Mailbox>().map_err(|err| {
            invalid(
                key("from"),
                format!("{:?} is not an e-mail address: {err}", e.from),
            )
        })?;
        if e.to.is_empty() {
            return Err(invalid(key("to"), "at least one recipient is needed"));
        }
        for (j, to) in e.to.iter().enumerate() {
            to.parse::<Mailbox>().map_err(|err| {
                invalid(
                    format!("{}[{j}]", key("to")),
                    format!("{to:?} is not an e-mail address: {err}"),
                )
            })?;
        }
        check_timeout(&key("timeout_secs"), e.timeout_secs)
    }

    /// Validates, then reads every secret file: the channels ready to start.
    pub(crate) fn resolve(&self) -> Result<Vec<ResolvedChannel>, NotifyConfigError> {
        self.validate()?;
        let mut channels = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let secret = match (&w.secret, &w.secret_file) {
                (Some(s), _) => s.0.trim().as_bytes().to_vec(),
                (None, Some(path)) => {
                    let key = format!("notify.webhooks[{i}].secret_file");
                    let secret = read_secret(&key, path)?;
                    check_standard_secret(&key, &secret)?;
                    secret.into_bytes()
                }
                (None, None) => unreachable!("validate() requires a secret"),
            };
            channels.push(ResolvedChannel::Webhook {
                name: w.name.clone(),
                url: Url::parse(w.url.trim()).expect("validated"),
                secret,
                min_severity: w.min_severity,
                timeout_secs: w.timeout_secs,
                events: parse_events(&format!("notify.webhooks[{i}].events"), w.events.as_deref())
                    .expect("validated"),
            });
        }
        for s in &self.slack {
            channels.push(ResolvedChannel::Slack {
                name: s.name.clone(),
                url: Url::parse(s.url.0.trim()).expect("validated"),
                min_severity: s.min_severity,
                timeout_secs: s.timeout_secs,
            });
        }
        for (i, e) in self.email.iter().enumerate() {
            let credentials = match (&e.username, &e.password_file) {
                (Some(user), Some(path)) => Some((
                    user.trim().to_string(),
                    read_secret(&format!("notify.email[{i}].password_file"), path)?,
                )),
                _ => None,
            };
            channels.push(ResolvedChannel::Email {
                name: e.name.clone(),
                host: e.smtp_host.trim().to_string(),
                port: e.smtp_port.unwrap_or(match e.starttls {
                    SmtpSecurity::ImplicitTls => 465,
                    SmtpSecurity::StartTls | SmtpSecurity::Plain => 587,
                }),
                security: e.starttls,
                credentials,
                from: e.from.parse().expect("validated"),
                to: e.to.iter().map(|t| t.parse().expect("validated")).collect(),
                min_severity: e.min_severity,
                timeout_secs: e.timeout_secs,
            });
        }
        Ok(channels)
    }
}

/// The events of `events = [...]` (`None`: [`NotifyEvent::DEFAULT`]); a name outside the set,
/// a repeated one or an empty list is an error naming `key[index]`.
fn parse_events(
    key: &str,
    events: Option<&[String]>,
) -> Result<Vec<NotifyEvent>, NotifyConfigError> {
    let Some(names) = events else {
        return Ok(NotifyEvent::DEFAULT.to_vec());
    };
    if names.is_empty() {
        return Err(invalid(
            key,
            "an empty list sends nothing; leave events out for the alert notifications",
        ));
    }
    let mut parsed = Vec::with_capacity(names.len());
    for (j, name) in names.iter().enumerate() {
        let Some(event) = NotifyEvent::parse(name.trim()) else {
            let allowed: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
            return Err(invalid(
                format!("{key}[{j}]"),
                format!(
                    "{name:?} is not an event; expected one of {}",
                    allowed.join(", ")
                ),
            ));
        };
        if parsed.contains(&event) {
            return Err(invalid(
                format!("{key}[{j}]"),
                format!("{event} is listed twice"),
            ));
        }
        parsed.push(event);
    }
    Ok(parsed)
}

/// Shortest key a `whsec_` secret may decode to.
const MIN_STANDARD_KEY: usize = 24;

/// A `whsec_` secret must be Standard Webhooks' `whsec_<base64>` of at least
/// [`MIN_STANDARD_KEY`] bytes (the error never shows it).
fn check_standard_secret(key: &str, secret: &str) -> Result<(), NotifyConfigError> {
    match crate::alerts::notify::webhook::standard_key(secret.as_bytes()) {
        // Standard Webhooks secrets are 24 to 64 bytes; a short key makes forgeable signatures.
        Ok(k)
            if secret.starts_with(crate::alerts::notify::webhook::STANDARD_SECRET_PREFIX)
                && k.len() < MIN_STANDARD_KEY =>
        {
            Err(invalid(
                key,
                format!(
                    "the key after whsec_ decodes to {} bytes; it must be at least \
                 {MIN_STANDARD_KEY} (the value is not shown)",
                    k.len()
                ),
            ))
        }
        Ok(_) => Ok(()),
        Err(_) => Err(invalid(
            key,
            "a secret starting with whsec_ must continue with standard base64 (the Standard \
             Webhooks key); the value is not shown",
        )),
    }
}

fn check_timeout(key: &str, secs: u64) -> Result<(), NotifyConfigError> {
    if (1..=300).contains(&secs) {
        Ok(())
    } else {
        Err(invalid(key, format!("{secs} is not 1 to 300 seconds")))
    }
}

/// Parses an `http(s)` URL; the error never repeats the URL (it may hold a token).
fn parse_http_url(key: &str, text: &str) -> Result<Url, NotifyConfigError> {
    let url = Url::parse(text.trim())
        .map_err(|e| invalid(key, format!("not a URL ({e}); the value is not shown")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            key,
            format!(
                "{} is not an http:// or https:// URL with a host",
                loggable_url(&url)
            ),
        ));
    }
    Ok(url)
}

fn read_secret(key: &str, path: &PathBuf) -> Result<String, NotifyConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| NotifyConfigError::SecretFile {
        key: key.to_string(),
        path: path.clone(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(secret.to_string())
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        toml::from_str::<NotifyConfig>(text).map_err(|e| e.to_string())
    }

    /// `text` parses but `resolve()` fails with an error containing every one of `needles`.
    fn check_rejected(text: &str, needles: &[&str]) {
        let config = parse(text).unwrap_or_else(|e| panic!("{text} does not parse: {e}"));
        let Err(e) = config.resolve() else {
            panic!("{text} was accepted");
        };
        let e = e.to_string();
        for needle in needles {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn defaults_and_a_full_example() {
        let c = parse("").unwrap();
        assert_eq!(c, NotifyConfig::default());
        assert!(c.resolve().unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hook.secret");
        std::fs::write(&secret, "  s3cret\n").unwrap();
        let password = dir.path().join("smtp.password");
        std::fs::write(&password, "pw\n").unwrap();
        let text = format!(
            r#"
            max_attempts = 3
            [[webhooks]]
            name = "ops"
            url = "https://hooks.example.com/flotilla"
            secret_file = "{}"
            [[webhooks]]
            name = "inline"
            url = "http://127.0.0.1:9/x"
            secret = "abc"
            min_severity = "hard"
            timeout_secs = 2
            [[slack]]
            name = "chat"
            url = "https://hooks.slack.com/services/T0/B0/XXXX"
            [[email]]
            name = "mail"
            smtp_host = "smtp.example.com"
            starttls = "tls"
            username = "alerts"
            password_file = "{}"
            from = "Flotilla <alerts@example.com>"
            to = ["ops@example.com", "Pager <pager@example.com>"]
            "#,
            secret.display(),
            password.display()
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.webhooks[0].min_severity, Severity::Medium);
        assert_eq!(c.webhooks[0].timeout_secs, 10);
        assert_eq!(c.email[0].starttls, SmtpSecurity::ImplicitTls);
        let channels = c.resolve().unwrap();
        assert_eq!(channels.len(), 4);
        match &channels[0] {
            ResolvedChannel::Webhook { secret, .. } => assert_eq!(secret, b"s3cret"),
            _ => panic!("webhook first"),
        }
        match &channels[3] {
            ResolvedChannel::Email {
                port, credentials, ..
            } => {
                assert_eq!(*port, 465);
                assert_eq!(
                    credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
                    Some(("alerts", "pw"))
                );
            }
            _ => panic!("email last"),
        }
        // Secrets never show in Debug output, nor do webhook URL paths (may carry a token).
        let debug = format!("{c:?}");
        assert!(!debug.contains("XXXX") && !debug.contains("abc"), "{debug}");
        let mut w = c.webhooks[0].clone();
        w.url = "https://hooks.example.com/t/SECRET-TOKEN?key=QUERYTOKEN".into();
        let debug = format!("{w:?}");
        assert!(
            !debug.contains("SECRET-TOKEN") && !debug.contains("QUERYTOKEN"),
            "{debug}"
        );
        assert!(debug.contains("https://hooks.example.com"), "{debug}");
        // Round trip through the serialised form (RelayConfig's documentation test uses it).
        let back: NotifyConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_settings_are_named() {
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"ftp://x/\"\nsecret = \"s\"",
            &["notify.webhooks[0].url", "ftp://x"],
        );
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"",
            &["notify.webhooks[0].secret", "needs secret"],
        );
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"s\"\nsecret_file = \"/f\"",
            &["notify.webhooks[0].secret", "not both"],
        );
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret_file = \"/nonexistent/hook\"",
            &["notify.webhooks[0].secret_file", "/nonexistent/hook"],
        );
        check_rejected(
            "[[webhooks]]\nname = \"a b\"\nurl = \"https://x/\"\nsecret = \"s\"",
            &["notify.webhooks[0].name"],
        );
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"s\"\n\
             [[slack]]\nname = \"a\"\nurl = \"https://y/\"",
            &[
                "notify.slack[0].name",
                "already used by notify.webhooks[0].name",
            ],
        );
        // A Slack URL that does not parse is not echoed (it holds a token).
        check_rejected(
            "[[slack]]\nname = \"s\"\nurl = \"hooks.slack.com/services/T/B/TOKEN\"",
            &["notify.slack[0].url", "not shown"],
        );
        let e = parse("[[slack]]\nname = \"s\"\nurl = \"x:TOKEN\"")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("TOKEN"), "{e}");
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"s\"\ntimeout_secs = 0",
            &["notify.webhooks[0].timeout_secs"],
        );
        check_rejected("queue_capacity = 0", &["notify.queue_capacity"]);
        check_rejected("max_attempts = 0", &["notify.max_attempts"]);
        check_rejected(
            "initial_backoff_secs = 10\nmax_backoff_secs = 5",
            &["notify.max_backoff_secs"],
        );
        let mail = "[[email]]\nname = \"m\"\nsmtp_host = \"smtp.example.com\"\n\
                    from = \"alerts@example.com\"\nto = [\"ops@example.com\"]\n";
        check_rejected(
            &format!("{mail}username = \"u\"\n"),
            &["notify.email[0].password_file", "username is set"],
        );
        check_rejected(
            &format!("{mail}password_file = \"/p\"\n"),
            &["notify.email[0].username"],
        );
        check_rejected(
            &format!("{mail}username = \"u\"\npassword_file = \"/nonexistent/pw\"\n"),
            &["notify.email[0].password_file", "/nonexistent/pw"],
        );
        check_rejected(
            &format!("{mail}starttls = false\nusername = \"u\"\npassword_file = \"/p\"\n"),
            &["notify.email[0].starttls", "clear text"],
        );
        check_rejected(
            "[[email]]\nname = \"m\"\nsmtp_host = \"h\"\nfrom = \"not an address\"\nto = [\"a@b.c\"]",
            &["notify.email[0].from"],
        );
        check_rejected(
            "[[email]]\nname = \"m\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = []",
            &["notify.email[0].to", "at least one"],
        );
        check_rejected(
            "[[email]]\nname = \"m\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\", \"x\"]",
            &["notify.email[0].to[1]"],
        );
        // Plain text without credentials, or with them to loopback, is fine.
        parse(&format!("{mail}starttls = false\n"))
            .unwrap()
            .validate()
            .unwrap();
        parse(
            "[[email]]\nname = \"m\"\nsmtp_host = \"127.0.0.1\"\nstarttls = false\nusername = \"u\"\n\
             password_file = \"/p\"\nfrom = \"a@b.c\"\nto = [\"a@b.c\"]",
        )
        .unwrap()
        .validate()
        .unwrap();
        // Type-level mistakes are parse errors that name the key.
        let e = parse(&format!("{mail}starttls = \"yes\"\n")).unwrap_err();
        assert!(e.contains("starttls"), "{e}");
        let e = parse(&format!("{mail}smtp_prot = 25\n")).unwrap_err();
        assert!(e.contains("smtp_prot"), "{e}");
        let e = parse(&format!("{mail}min_severity = \"loud\"\n")).unwrap_err();
        assert!(e.contains("loud"), "{e}");
    }

    #[test]
    fn relay_toml_documents_every_notify_setting() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/relay.toml");
        let text = std::fs::read_to_string(&path).expect("packaging/relay.toml");
        let section = &text[text.find("\n[notify]\n").expect("a [notify] section")..];
        let full = NotifyConfig {
            webhooks: vec![WebhookConfig {
                name: "w".into(),
                url: "https://h/".into(),
                secret: Some(InlineSecret("s".into())),
                secret_file: Some("/s".into()),
                min_severity: Severity::Medium,
                timeout_secs: 10,
                events: Some(vec!["alert.firing".into()]),
            }],
            slack: vec![SlackConfig {
                name: "s".into(),
                url: InlineSecret("https://h/".into()),
                min_severity: Severity::Medium,
                timeout_secs: 10,
            }],
            email: vec![EmailConfig {
                name: "e".into(),
                smtp_host: "h".into(),
                smtp_port: Some(587),
                starttls: SmtpSecurity::StartTls,
                username: Some("u".into()),
                password_file: Some("/p".into()),
                from: "a@b.c".into(),
                to: vec!["a@b.c".into()],
                min_severity: Severity::Medium,
                timeout_secs: 10,
            }],
            ..NotifyConfig::default()
        };
        let value = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        for list in ["webhooks", "slack", "email"] {
            keys.extend(value[list][0].as_object().unwrap().keys().cloned());
        }
        for key in keys {
            assert!(
                section.contains(&format!("\n{key} = ")) || section.contains(&format!("\n# {key} = ")),
                "notify key {key} is not documented in the [notify] section of packaging/relay.toml"
            );
        }
    }

    #[test]
    fn events_are_a_closed_set_named_by_index() {
        let hook = "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"s\"\n";
        let events_of = |c: &NotifyConfig| match &c.resolve().unwrap()[0] {
            ResolvedChannel::Webhook { events, .. } => events.clone(),
            _ => panic!("a webhook"),
        };
        assert_eq!(events_of(&parse(hook).unwrap()), NotifyEvent::DEFAULT);
        let c = parse(&format!(
            "{hook}events = [\"agent.enrolled\", \"alert.firing\", \"backup.failed\"]"
        ))
        .unwrap();
        assert_eq!(
            events_of(&c),
            [
                NotifyEvent::AgentEnrolled,
                NotifyEvent::AlertFiring,
                NotifyEvent::BackupFailed
            ]
        );
        check_rejected(
            &format!("{hook}events = [\"agent.enrolled\", \"agent.revoked\", \"agent.gone\"]"),
            &[
                "notify.webhooks[0].events[2]",
                "\"agent.gone\"",
                "alert.firing, alert.resolved, agent.enrolled, agent.revoked, agent.offline, \
                 update.finished, rollout.finished, backup.failed",
            ],
        );
        check_rejected(
            &format!("{hook}events = [\"agent.offline\", \"agent.offline\"]"),
            &["notify.webhooks[0].events[1]", "twice"],
        );
        check_rejected(
            &format!("{hook}events = []"),
            &["notify.webhooks[0].events"],
        );
        for e in NotifyEvent::ALL {
            assert_eq!(NotifyEvent::parse(e.as_str()), Some(e));
            assert_eq!(serde_json::to_value(e).unwrap(), e.as_str());
        }
    }

    #[test]
    fn whsec_secrets_must_be_base64() {
        check_rejected(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"whsec_TOPSECRET!\"",
            &["notify.webhooks[0].secret", "whsec_", "base64"],
        );
        let e = parse(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"whsec_TOPSECRET!\"",
        )
        .unwrap()
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(!e.contains("TOPSECRET"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "whsec_%%%\n").unwrap();
        check_rejected(
            &format!(
                "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret_file = \"{}\"",
                file.display()
            ),
            &["notify.webhooks[0].secret_file", "base64"],
        );
        // Too short a key (4 bytes, or none at all) would make forgeable signatures.
        for short in ["whsec_MTIzNA==", "whsec_"] {
            check_rejected(
                &format!("[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"{short}\""),
                &["notify.webhooks[0].secret", "at least 24"],
            );
        }
        parse(
            "[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\n\
             secret = \"whsec_ZmxvdGlsbGEtdGVzdC1rZXktMDEyMzQ1Njc4OWFiY2Q=\"",
        )
        .unwrap()
        .resolve()
        .unwrap();
    }

    #[test]
    fn loggable_url_drops_path_query_and_credentials() {
        let url = Url::parse("https://user:pw@hooks.slack.com:8443/services/T/B/X?t=1").unwrap();
        assert_eq!(loggable_url(&url), "https://hooks.slack.com:8443");
    }
}
