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
    /// Undelivered notifications each channel may hold in the relay's outbox; when a channel
    /// holds this many, further notifications for it are recorded as given up at once (and
    /// counted), never waited for.
    pub queue_capacity: usize,
    /// Delivery attempts per notification and channel before it is given up (logged as an
    /// error and counted as failed); 0: no limit, only `[alerts] notify_give_up_after_secs`
    /// ends the retries.
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
            max_attempts: 0,
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
        if self.max_attempts > 100_000 {
            return Err(invalid(
                "notify.max_attempts",
                format!("{} is not 0 (no limit) to 100000", self.max_attempts),
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
mod tests;
