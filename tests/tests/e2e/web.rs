//! The dashboard in a real headless Chromium (tests/src/browser.rs) against a real relay, real
//! agents and the real Docker engine: signing in and out, live pages, actions through the
//! confirm dialog, scopes, CSRF, and hostile text rendered as text.

use crate::{images, DEADLINE};
use flotilla_shared::api::{ApiTokenCreated, AuditRecord, CreateApiToken, Scope};
use flotilla_tests::browser::{Browser, CookieClient, PAGE_DEADLINE};
use flotilla_tests::fixtures;
use flotilla_tests::harness::{eventually, scope, Agent, Containers, Relay};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

/// Upper bound for a rollout of one agent through the page (local registry, 1 s soak).
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(120);

/// Text that runs script if a page inserts it as HTML.
const HOSTILE: &str = "\"><img src=x onerror=window.__pwned=1><script>window.__pwned=1</script>";

/// A relay evaluating alerts every second (rollout alerts show up at once).
async fn relay() -> Relay {
    Relay::start_with_config("[alerts]\nevaluate_interval_secs = 1\n", &[]).await
}

fn row(container: &str) -> String {
    format!("[data-test=container-row][data-container=\"{container}\"]")
}

/// Sign in with the admin token, the agent online on the overview (screenshot, also the
/// README's), CSRF refusals, then sign out: the old cookie is refused for pages and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_shows_the_agent_online_and_sign_out_refuses_the_old_cookie() {
    let started = Instant::now();
    let scope = scope("web-in");
    let relay = relay().await;
    let agent = Agent::start(&relay, &format!("{scope}-host"), "region=eu", &scope).await;
    relay.api().wait_online(&agent.id, DEADLINE).await;

    let browser = Browser::start(&relay.url()).await;
    // Unsigned, a page sends the browser to the sign-in page.
    browser.open("/ui/").await;
    browser.wait_for("#login").await;
    assert_eq!(browser.path().await, "/ui/login");
    // A wrong token is refused with a message, and no session starts.
    let field = browser.wait_for("#login input[name=token]").await;
    field.send_keys("flt_not-a-token").await.unwrap();
    browser
        .wait_for("#login [data-test=sign-in]")
        .await
        .click()
        .await
        .unwrap();
    browser.wait_for("[data-test=login-error]").await;
    assert!(browser.session_cookie().await.is_none());

    browser.sign_in(&relay.admin_token).await;
    let agent_row = format!("[data-test=agent-row][data-agent-id=\"{}\"]", agent.id);
    browser
        .wait_text(
            &format!("{agent_row} [data-test=agent-status]"),
            "the agent online on the overview",
            |t| t == "online",
        )
        .await;
    browser
        .wait_text("[data-test=count-online] .n", "one agent online", |t| {
            t == "1"
        })
        .await;
    // The token never appears in the page or the URL.
    let source = browser.client.source().await.unwrap();
    assert!(
        !source.contains(&relay.admin_token),
        "the token is in the page"
    );
    assert!(!browser.path().await.contains(&relay.admin_token));
    let shot = browser.screenshot("overview").await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());
    // Copies of target/screenshots/{overview,agent,rollout}.png are kept in docs/screenshots
    // (the README shows the overview); the tests do not write into the source tree.

    // CSRF: a state-changing request with the cookie but without the session's token is
    // refused, from the page itself and from outside it; with the token it passes.
    let cookie = browser
        .session_cookie()
        .await
        .expect("a session cookie after signing in");
    let body = json!({"name": "from-the-page", "scope": "read"}).to_string();
    let (status, text) = browser
        .fetch_in_page(
            "POST",
            "/api/v1/api-tokens",
            json!({"Content-Type": "application/json"}),
            Some(&body),
        )
        .await;
    assert_eq!(status, 403, "a POST without X-CSRF-Token: {text}");
    let outside = CookieClient::new(&relay.url(), &cookie);
    let (status, _, text) = outside
        .send(
            Method::POST,
            "/api/v1/api-tokens",
            None,
            Some(json!({"name": "forged", "scope": "admin"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    let (status, _, text) = outside
        .send(
            Method::POST,
            "/api/v1/api-tokens",
            Some("fcs_wrong"),
            Some(json!({"name": "forged", "scope": "admin"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "a wrong CSRF token: {text}");
    let tokens: Vec<serde_json::Value> = relay.api().get("/api/v1/api-tokens").await.unwrap();
    assert!(
        !tokens
            .iter()
            .any(|t| t["name"] == "forged" || t["name"] == "from-the-page"),
        "{tokens:?}"
    );
    let csrf = browser.csrf().await;
    let (status, text) = browser
        .fetch_in_page("GET", "/api/v1/agents", json!({"X-CSRF-Token": csrf}), None)
        .await;
    assert_eq!(status, 200, "the page's session reads the API: {text}");

    browser.sign_out().await;
    assert!(browser.session_cookie().await.is_none());
    // The old cookie is dead on the server, not only forgotten by the browser.
    let (status, location, _) = outside.send(Method::GET, "/ui/", None, None).await.unwrap();
    assert!(
        (300..400).contains(&status) && location.as_deref() == Some("/ui/login"),
        "a page with the old cookie: {status} {location:?}"
    );
    let (status, _, text) = outside
        .send(Method::GET, "/api/v1/agents", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401, "the API with the old cookie: {text}");
    browser.open("/ui/agents").await;
    browser.wait_for("#login").await;
    browser.assert_no_injected_script().await;
    browser.close().await.unwrap();
    eprintln!("sign in / out: {:?}", started.elapsed());
}

/// A read-scope token sees no action buttons; a forged POST with its cookie and a valid CSRF
/// token is refused 403 and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_no_actions_and_its_forged_post_is_refused_and_audited() {
    let started = Instant::now();
    let img = images().await;
    let scope = scope("web-ro");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = relay().await;
    let agent = Agent::start(&relay, &format!("{scope}-host"), "", &scope).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let viewer: ApiTokenCreated = api
        .post(
            "/api/v1/api-tokens",
            &CreateApiToken {
                name: format!("{scope}-viewer"),
                scope: Scope::Read,
            },
        )
        .await
        .expect("create a read token");

    let browser = Browser::start(&relay.url()).await;
    browser.sign_in(&viewer.token).await;
    browser
        .wait_text("[data-test=scope]", "the read scope shown", |t| t == "read")
        .await;
    browser.open(&format!("/ui/agents/{}", agent.id)).await;
    browser.wait_for(&row(&web)).await;
    for path in [
        format!("/ui/agents/{}", agent.id),
        "/ui/rollouts".to_string(),
        "/ui/alerts".to_string(),
    ] {
        browser.open(&path).await;
        browser.wait_for("#content").await;
        assert!(
            browser.all("button.action, form.api-form").await.is_empty(),
            "a read token sees no action on {path}"
        );
    }

    let cookie = browser.session_cookie().await.expect("a session cookie");
    let csrf = browser.csrf().await;
    let forged = CookieClient::new(&relay.url(), &cookie);
    let (status, _, text) = forged
        .send(
            Method::POST,
            &format!("/api/v1/agents/{}/commands?wait=10", agent.id),
            Some(&csrf),
            Some(json!({"command": {"kind": "container.stop", "args": {"container": web}}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(docker.running(&web).await, "the container was not touched");
    let refusal = eventually(DEADLINE, "the refused POST in the audit log", || async {
        let rows: Vec<AuditRecord> = api.get("/api/v1/audit").await.ok()?;
        rows.into_iter()
            .find(|r| r.actor == viewer.name && r.outcome.starts_with("error"))
    })
    .await;
    assert!(refusal.outcome.contains("forbidden"), "{refusal:?}");
    browser.close().await.unwrap();
    eprintln!("read scope: {:?}", started.elapsed());
}

/// Stop a real container from its agent page (confirm dialog): the row turns exited live,
/// without navigating, and the engine agrees. Screenshot of the agent page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_container_from_its_page_updates_the_page_live_and_the_engine() {
    let started = Instant::now();
    let img = images().await;
    let scope = scope("web-stop");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &img.v1, &[], &[], true).await;
    let relay = relay().await;
    let agent = Agent::start(&relay, &format!("{scope}-host"), "", &scope).await;
    relay.api().wait_online(&agent.id, DEADLINE).await;

    let browser = Browser::start(&relay.url()).await;
    browser.sign_in(&relay.admin_token).await;
    let page = format!("/ui/agents/{}", agent.id);
    browser.open(&page).await;
    let state = format!("{} [data-test=container-state]", row(&web));
    browser
        .wait_text(&state, "the container running on its page", |t| {
            t == "running"
        })
        .await;
    browser.screenshot("agent").await;
    let before = browser.live_revision().await;
    let stop = browser
        .wait_for(&format!(
            "{} button.action[data-confirm^=\"Stop\"]",
            row(&web)
        ))
        .await;
    browser.click_confirmed(&stop).await;
    let (ok, text) = browser.flash().await;
    assert!(ok, "stop failed: {text}");
    browser
        .wait_text(&state, "the row to show exited", |t| t == "exited")
        .await;
    assert!(
        browser.live_revision().await > before,
        "the page changed by a live swap"
    );
    assert_eq!(browser.path().await, page, "no navigation");
    assert!(!docker.running(&web).await, "stopped on the engine");
    browser.close().await.unwrap();
    eprintln!("stop live: {:?}", started.elapsed());
}

/// A container whose start line carries HTML and script, shown in the logs view: rendered as
/// text, no script runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_log_lines_render_as_text_and_run_no_script() {
    let started = Instant::now();
    let img = images().await;
    let scope = scope("web-xss");
    let docker = Containers::new(&scope).await;
    let version = format!("APP_VERSION={HOSTILE}");
    let web = docker
        .run("web", &img.v1, &[&version], &[("note", HOSTILE)], true)
        .await;
    let relay = relay().await;
    let agent = Agent::start(&relay, &format!("{scope}-host"), "", &scope).await;
    relay.api().wait_online(&agent.id, DEADLINE).await;

    let browser = Browser::start(&relay.url()).await;
    browser.sign_in(&relay.admin_token).await;
    browser.open(&format!("/ui/agents/{}", agent.id)).await;
    let logs = browser
        .wait_for(&format!("{} button.logs", row(&web)))
        .await;
    logs.click().await.unwrap();
    let shown = browser
        .wait_text("#output", "the logs view with the hostile line", |t| {
            t.contains("<script>window.__pwned=1</script>")
        })
        .await;
    assert!(shown.contains("onerror=window.__pwned=1"), "{shown}");
    assert!(
        browser
            .all("#output *, #content img, #content script")
            .await
            .is_empty(),
        "the hostile text became elements"
    );
    browser.assert_no_injected_script().await;
    browser.close().await.unwrap();
    eprintln!("hostile text: {:?}", started.elapsed());
}

/// Start a rollout from the page and watch it complete; a failing canary pauses it live; the
/// paused rollout's alert is acked from the alerts page; abort-and-revert from the page.
/// Screenshot of a rollout page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_from_the_page_complete_pause_live_and_abort_and_revert() {
    let started = Instant::now();
    let img = images().await.clone();
    let (registry, refs) = tokio::task::spawn_blocking(move || {
        fixtures::registry_with_variants(&img, &["v2", "v2-unhealthy"], None)
    })
    .await
    .expect("registry thread")
    .expect("a local registry with the test images");
    let _registry = registry;
    let scope = scope("web-ro");
    let docker = Containers::new(&scope).await;
    let web = docker.run("web", &refs["v1"], &[], &[], true).await;
    let relay = relay().await;
    let agent = Agent::start(&relay, &format!("{scope}-host"), "", &scope).await;
    relay.api().wait_online(&agent.id, DEADLINE).await;

    let browser = Browser::start(&relay.url()).await;
    browser.sign_in(&relay.admin_token).await;

    let start_rollout = |image: String, health: &'static str| {
        let browser = &browser;
        let web = web.clone();
        async move {
            browser.open("/ui/rollouts").await;
            let form = browser.wait_for("#rollout-form").await;
            for (name, value) in [
                ("container", web.as_str()),
                ("image", image.as_str()),
                ("stages", "100%"),
                ("health", health),
            ] {
                let field = form
                    .find(fantoccini::Locator::Css(&format!("[name={name}]")))
                    .await
                    .unwrap_or_else(|e| panic!("the rollout form's {name} field: {e}"));
                field.clear().await.unwrap();
                field.send_keys(value).await.unwrap();
            }
            browser
                .wait_for("#rollout-form [data-test=start-rollout]")
                .await
                .click()
                .await
                .unwrap();
            browser.confirm().await;
            eventually(PAGE_DEADLINE, "the new rollout's page", || async {
                let p = browser.path().await;
                (p.starts_with("/ui/rollouts/ro") || p.len() > "/ui/rollouts/".len())
                    .then_some(p)
                    .filter(|p| p.starts_with("/ui/rollouts/"))
            })
            .await
        }
    };

    // Healthy: the stage bar reaches updated and the rollout completes.
    let page = start_rollout(refs["v2"].clone(), "running").await;
    browser
        .wait_for("[data-test=stage][data-stage=\"0\"]")
        .await;
    eventually(
        ROLLOUT_DEADLINE,
        "the rollout page to show completed",
        || async {
            let state = browser
                .client
                .find(fantoccini::Locator::Css("[data-test=rollout-state]"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let bar = browser
                .client
                .find(fantoccini::Locator::Css(
                    "[data-test=stage][data-stage=\"0\"]",
                ))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (state == "completed" && bar.contains("1 updated")).then_some(())
        },
    )
    .await;
    assert!(browser.live_revision().await > 0, "it advanced live");
    assert_eq!(browser.path().await, page);
    browser.screenshot("rollout").await;
    let running = docker.inspect_json(&web).await;
    assert_eq!(running["Config"]["Image"], refs["v2"].as_str());

    // Failing canary: the page shows paused live, with the reason.
    let page = start_rollout(refs["v2-unhealthy"].clone(), "docker").await;
    browser
        .wait_text("[data-test=rollout-state]", "the rollout paused", |t| {
            t == "paused"
        })
        .await;
    assert!(browser.live_revision().await > 0, "paused shown live");
    assert_eq!(browser.path().await, page);
    browser.wait_for("[data-test=rollout-reason]").await;

    // Ack its alert.
    browser.open("/ui/alerts").await;
    let ack = browser
        .wait_for("[data-test=alert-row] button.action[data-url$=\"/ack\"]")
        .await;
    browser.click_confirmed(&ack).await;
    let (ok, text) = browser.flash().await;
    assert!(ok, "ack failed: {text}");
    browser
        .wait_text("[data-test=acked-by]", "the alert acked", |t| t == "admin")
        .await;

    // Abort and revert from the rollout page.
    browser.open(&page).await;
    let button = browser
        .wait_for("[data-test=rollout-actions] button.action[data-url$=\"/abort\"][data-body*=\"revert\"]")
        .await;
    browser.click_confirmed(&button).await;
    let (ok, text) = browser.flash().await;
    assert!(ok, "abort-and-revert failed: {text}");
    browser
        .wait_text("[data-test=rollout-state]", "the rollout ended", |t| {
            t == "aborted" || t == "reverted"
        })
        .await;
    let after = docker.inspect_json(&web).await;
    assert!(
        after["Config"]["Image"] != refs["v2-unhealthy"].as_str(),
        "the failed canary does not run the failing image: {}",
        after["Config"]["Image"]
    );
    browser.assert_no_injected_script().await;
    browser.close().await.unwrap();
    eprintln!("rollouts: {:?}", started.elapsed());
}
