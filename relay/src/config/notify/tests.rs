//! Tests of the `[notify]` section: parsing, validation errors named by key, secrets.

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
    check_rejected("max_attempts = 100001", &["notify.max_attempts"]);
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
    let e =
        parse("[[webhooks]]\nname = \"a\"\nurl = \"https://x/\"\nsecret = \"whsec_TOPSECRET!\"")
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
