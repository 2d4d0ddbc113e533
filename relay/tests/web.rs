//! The dashboard over real HTTP against an in-process relay: sign-in (login CSRF, bad token,
//! rate limit), the session cookie's attributes, pages behind the session, the security
//! headers, escaping of hostile text an agent reports, CSRF and scope on the JSON API through
//! the cookie (refusals audited), sign-out and token revocation ending the session.

mod support;

use flotilla_shared::api::{
    AgentFacts, AgentInfo, ApiTokenCreated, AuditRecord, CreateApiToken, CreateEnrollmentToken,
    FleetOverview, MetricsHistory, Scope,
};
use flotilla_shared::heartbeat::{DockerSnapshot, Heartbeat, HostMetrics};
use flotilla_shared::protocol::AgentFrame;
use flotilla_shared::signing::SigningKey;
use flotilla_testkit::agent::{enroll, ScriptedAgent};
use flotilla_testkit::eventually;
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode};
use std::time::Duration;
use support::TestRelay;

const WAIT: Duration = Duration::from_secs(20);
const HOSTILE: &str = "<script>window.__pwned=1</script>\"'><img src=x onerror=alert(1)>";

fn no_redirects() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of `name` in a `Set-Cookie` header of `resp`, with the whole header.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<(String, String)> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let value = v.strip_prefix(&format!("{name}="))?.split(';').next()?;
        Some((value.to_string(), v.to_string()))
    })
}

/// The hidden `csrf` input of a page.
fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

fn meta_csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf-token\" content=\"")
        .expect("a csrf meta")
        + 27;
    html[at..].split('"').next().unwrap().to_string()
}

/// Signs in with `token`; returns the session cookie's value.
async fn sign_in(http: &Client, base: &str, token: &str) -> String {
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let (login_cookie, _) = set_cookie(&form, "flotilla_login").expect("login csrf cookie");
    let csrf = hidden_csrf(&form.text().await.unwrap());
    let resp = http
        .post(format!("{base}/ui/login"))
        .header(COOKIE, format!("flotilla_login={login_cookie}"))
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/ui/");
    let (session, header) = set_cookie(&resp, "flotilla_session").expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(header.contains(attr), "{header}");
    }
    assert!(!header.contains("Secure"), "plain loopback: {header}");
    session
}

async fn page(http: &Client, base: &str, path: &str, session: &str) -> reqwest::Response {
    http.get(format!("{base}{path}"))
        .header(COOKIE, format!("flotilla_session={session}"))
        .send()
        .await
        .unwrap()
}

async fn audit(t: &TestRelay) -> Vec<AuditRecord> {
    t.http
        .get(format!("{}/api/v1/audit?limit=100", t.base))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn sign_in_pages_csrf_scope_and_sign_out() {
    let t = TestRelay::in_process("relay-web").start().await;
    let (base, http) = (t.base.clone(), no_redirects());

    // Not signed in: pages go to the sign-in page; the root goes to the dashboard.
    let resp = http.get(format!("{base}/ui/agents")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.headers()[LOCATION], "/ui/");

    // The sign-in page carries the policy; a POST without the double-submit cookie is refused.
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let csp = form.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert_eq!(form.headers()["x-frame-options"], "DENY");
    let resp = http
        .post(format!("{base}/ui/login"))
        .form(&[("token", t.admin.as_str()), ("csrf", "made-up")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(set_cookie(&resp, "flotilla_session").is_none());

    // A wrong token: 401, no session, and the page does not echo the token.
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let (login_cookie, _) = set_cookie(&form, "flotilla_login").unwrap();
    let csrf = hidden_csrf(&form.text().await.unwrap());
    let resp = http
        .post(format!("{base}/ui/login"))
        .header(COOKIE, format!("flotilla_login={login_cookie}"))
        .form(&[("token", "flt_not-a-token"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(set_cookie(&resp, "flotilla_session").is_none());
    assert!(!resp.text().await.unwrap().contains("flt_not-a-token"));

    // An agent reports hostile text; every page shows it escaped.
    let token = t.enrollment_token(&CreateEnrollmentToken::default()).await;
    let key = SigningKey::generate();
    let enrolled = enroll(&t.http, &base, token, "web-1", AgentFacts::default(), &key)
        .await
        .unwrap();
    let mut agent = ScriptedAgent::new(enrolled.agent_id.clone(), key, "test");
    agent.connect(&t.ws_url()).await.unwrap();
    let container: flotilla_shared::command::ContainerInfo =
        serde_json::from_value(serde_json::json!({
            "id": "c1", "name": "web", "image": HOSTILE, "image_id": "sha256:abc",
            "state": "running", "status": HOSTILE, "restart_count": 0, "oom_killed": false
        }))
        .unwrap();
    agent
        .send(&AgentFrame::Heartbeat(Box::new(Heartbeat {
            at: chrono::Utc::now(),
            agent_version: "test".into(),
            // A host certificate with hostile names, expiring in 5 days.
            host: HostMetrics {
                certificates: vec![flotilla_shared::heartbeat::HostCertificate {
                    kind: flotilla_shared::heartbeat::CertificateSourceKind::File,
                    source: "/etc/letsencrypt/live/shop/fullchain.pem".into(),
                    subject: Some(HOSTILE.into()),
                    sans: vec!["shop.example.com".into(), HOSTILE.into()],
                    issuer: Some("R11".into()),
                    not_after: Some(chrono::Utc::now() + chrono::Duration::hours(5 * 24 + 1)),
                    warning: Some(HOSTILE.into()),
                    checked_at: chrono::Utc::now(),
                }],
                ..HostMetrics::default()
            },
            docker: DockerSnapshot {
                containers: vec![container],
                ..DockerSnapshot::default()
            },
            backup: None,
            // A compose container running another image than its project declares.
            compose_drift: vec![flotilla_shared::compose::ComposeDrift {
                container: "web".into(),
                project: "shop".into(),
                service: "web".into(),
                running_image: HOSTILE.into(),
                declared_image: Some("shop:v1".into()),
                problem: None,
            }],
        })))
        .await
        .unwrap();

    let admin_session = sign_in(&http, &base, &t.admin).await;
    let agent_path = format!("/ui/agents/{}", enrolled.agent_id);
    let html = eventually(WAIT, "the agent page shows the container", || {
        let (http, base, s, p) = (
            http.clone(),
            base.clone(),
            admin_session.clone(),
            agent_path.clone(),
        );
        async move {
            let html = page(&http, &base, &p, &s).await.text().await.unwrap();
            html.contains("data-container=\"web\"").then_some(html)
        }
    })
    .await;
    assert!(!html.contains("<script>window"), "unescaped: {html}");
    assert!(!html.contains("<img src=x"), "unescaped: {html}");
    assert!(html.contains("&lt;script&gt;"), "{html}");
    assert!(html.contains("data-test=\"container-row\""));
    assert!(html.contains("data-test=\"compose-drift-row\""), "{html}");
    assert!(html.contains("shop:v1"), "{html}");
    assert!(
        html.contains("data-test=\"host-certificate-row\""),
        "{html}"
    );
    assert!(
        html.contains("/etc/letsencrypt/live/shop/fullchain.pem"),
        "{html}"
    );
    assert!(html.contains("shop.example.com"), "{html}");
    assert!(html.contains(">R11<"), "{html}");
    assert!(
        html.contains("data-test=\"certificate-expiring\">5<"),
        "days left: {html}"
    );
    assert!(html.contains("class=\"action\""), "admin sees actions");
    for path in [
        "/ui/",
        "/ui/agents",
        "/ui/rollouts",
        "/ui/alerts",
        "/ui/backups",
        "/ui/releases",
        "/ui/audit",
        "/ui/tokens",
    ] {
        let resp = page(&http, &base, path, &admin_session).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
        let html = resp.text().await.unwrap();
        assert!(!html.contains("<script>window"), "{path}: {html}");
        assert!(!html.contains(&t.admin), "{path} shows the token");
    }

    // The JSON API through the cookie: reads work; a write needs the session's CSRF token.
    let api = |method: reqwest::Method, path: &str, session: &str, csrf: Option<&str>| {
        let mut req = http
            .request(method, format!("{base}{path}"))
            .header(COOKIE, format!("flotilla_session={session}"));
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req
    };
    let resp = api(reqwest::Method::GET, "/api/v1/agents", &admin_session, None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let admin_csrf = meta_csrf(
        &page(&http, &base, "/ui/", &admin_session)
            .await
            .text()
            .await
            .unwrap(),
    );
    let body = CreateApiToken {
        name: "viewer".into(),
        scope: Scope::Read,
    };
    let resp = api(
        reqwest::Method::POST,
        "/api/v1/api-tokens",
        &admin_session,
        None,
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let resp = api(
        reqwest::Method::POST,
        "/api/v1/api-tokens",
        &admin_session,
        Some("wrong"),
    )
    .json(&body)
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "wrong CSRF token");
    let viewer: ApiTokenCreated = api(
        reqwest::Method::POST,
        "/api/v1/api-tokens",
        &admin_session,
        Some(&admin_csrf),
    )
    .json(&body)
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();

    // A read-scope session: no action buttons; a forged POST with its cookie and its own
    // valid CSRF token is refused and audited under its name.
    let read_session = sign_in(&http, &base, &viewer.token).await;
    let html = page(&http, &base, &agent_path, &read_session)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-container=\"web\""));
    assert!(
        !html.contains("class=\"action\""),
        "read scope sees no actions: {html}"
    );
    assert!(
        !html.contains("href=\"/ui/tokens\""),
        "read scope sees no tokens page"
    );
    let read_csrf = meta_csrf(&html);
    let resp = api(
        reqwest::Method::POST,
        &format!("/api/v1/agents/{}/commands", enrolled.agent_id),
        &read_session,
        Some(&read_csrf),
    )
    .json(&serde_json::json!({"kind": "container.stop", "args": {"container": "web"}}))
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let rows = audit(&t).await;
    assert!(
        rows.iter().any(|r| r.actor == "viewer"
            && r.action == "request.refused"
            && r.target.contains("/commands")
            && r.outcome == "error: forbidden"),
        "{rows:#?}"
    );
    assert!(rows
        .iter()
        .any(|r| r.action == "request.refused" && r.outcome == "error: csrf_failed"));
    assert!(rows
        .iter()
        .any(|r| r.actor == "viewer" && r.action == "session.create"));
    assert!(rows
        .iter()
        .any(|r| r.actor == "unauthenticated" && r.action == "session.create"));

    // Revoking the API token ends its session.
    let resp = t
        .http
        .delete(format!("{base}/api/v1/api-tokens/{}", viewer.id))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = page(&http, &base, "/ui/", &read_session).await;
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    let resp = api(reqwest::Method::GET, "/api/v1/agents", &read_session, None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Sign-out needs the session's CSRF token, then the old cookie is refused.
    let resp = http
        .post(format!("{base}/ui/logout"))
        .header(COOKIE, format!("flotilla_session={admin_session}"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = http
        .post(format!("{base}/ui/logout"))
        .header(COOKIE, format!("flotilla_session={admin_session}"))
        .form(&[("csrf", admin_csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let resp = page(&http, &base, "/ui/", &admin_session).await;
    assert_eq!(resp.headers()[LOCATION], "/ui/login");
    let resp = api(reqwest::Method::GET, "/api/v1/agents", &admin_session, None)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let t = TestRelay::in_process("relay-web-limit").start().await;
    let (base, http) = (t.base.clone(), no_redirects());
    let form = http.get(format!("{base}/ui/login")).send().await.unwrap();
    let (login_cookie, _) = set_cookie(&form, "flotilla_login").unwrap();
    let csrf = hidden_csrf(&form.text().await.unwrap());
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = http
            .post(format!("{base}/ui/login"))
            .header(COOKIE, format!("flotilla_login={login_cookie}"))
            .form(&[("token", "wrong"), ("csrf", &csrf)])
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 2], "{statuses:?}");
}

/// An enrollment token for `uses` agents with these labels.
async fn bulk_token(t: &TestRelay, labels: &str, uses: u32) -> String {
    t.enrollment_token(&CreateEnrollmentToken {
        labels: flotilla_shared::selector::parse_labels(labels).unwrap(),
        max_uses: Some(uses),
        ..CreateEnrollmentToken::default()
    })
    .await
}

/// Every page of `GET /api/v1/agents?{query}`, following X-Next-Cursor and checking that Link
/// says the same; the pages' sizes and the agents' names.
async fn all_pages(t: &TestRelay, query: &str) -> (Vec<usize>, Vec<AgentInfo>) {
    let mut url = format!("{}/api/v1/agents?{query}", t.base);
    let (mut sizes, mut all) = (Vec::new(), Vec::new());
    loop {
        let resp = t.http.get(&url).bearer_auth(&t.admin).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let next = resp
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_string());
        let link = resp
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let page: Vec<AgentInfo> = resp.json().await.unwrap();
        sizes.push(page.len());
        all.extend(page);
        match (next, link) {
            (None, None) => return (sizes, all),
            (Some(cursor), Some(link)) => {
                let target = link
                    .strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""))
                    .expect("a next link");
                assert!(target.starts_with("/api/v1/agents?"), "{link}");
                assert!(target.contains(&format!("cursor={cursor}")), "{link}");
                url = format!("{}{target}", t.base);
            }
            other => panic!("cursor and link disagree: {other:?}"),
        }
    }
}

#[tokio::test]
async fn agents_are_listed_a_page_at_a_time_and_the_overview_counts_exactly() {
    let t = TestRelay::in_process("relay-paging")
        .config(|c| c.enroll_rate_per_minute = 1000)
        .start()
        .await;
    let (eu, us) = (
        bulk_token(&t, "region=eu", 100).await,
        bulk_token(&t, "region=us", 100).await,
    );
    let mut ids = Vec::new();
    let mut keys: Vec<Option<SigningKey>> = Vec::new();
    for i in 0..105 {
        let key = SigningKey::generate();
        let token = if i % 3 == 0 { us.clone() } else { eu.clone() };
        let e = enroll(
            &t.http,
            &t.base,
            token,
            &format!("node-{i:03}"),
            AgentFacts::default(),
            &key,
        )
        .await
        .unwrap();
        ids.push(e.agent_id);
        keys.push(Some(key));
    }
    // Three online, one of them with a heartbeat (its metrics make a point).
    let mut online = Vec::new();
    for i in [4, 50, 101] {
        let key = keys[i].take().unwrap();
        let mut a = ScriptedAgent::new(ids[i].clone(), key, "test");
        a.connect(&t.ws_url()).await.unwrap();
        online.push(a);
    }
    let host = HostMetrics {
        cpu_percent: 42.0,
        memory_total_bytes: 1000,
        memory_used_bytes: 250,
        ..HostMetrics::default()
    };
    online[0]
        .send(&AgentFrame::Heartbeat(Box::new(Heartbeat {
            at: chrono::Utc::now(),
            agent_version: "test".into(),
            host,
            docker: DockerSnapshot::default(),
            backup: None,
            compose_drift: Vec::new(),
        })))
        .await
        .unwrap();
    let revoked = &ids[7];
    let resp = t
        .http
        .delete(format!("{}/api/v1/agents/{revoked}", t.base))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    // By name, 40 a page: every agent once, in order.
    let (sizes, all) = all_pages(&t, "limit=40").await;
    assert_eq!(sizes, [40, 40, 25]);
    let names: Vec<_> = all.iter().map(|a| a.name.clone()).collect();
    let want: Vec<_> = (0..105).map(|i| format!("node-{i:03}")).collect();
    assert_eq!(names, want);
    // The default page holds them all; newest enrollment first.
    let (sizes, all) = all_pages(&t, "sort=-enrolled_at").await;
    assert_eq!(sizes, [105]);
    assert_eq!(all[0].name, "node-104");
    // Filters apply before paging: pages are full until the last.
    let (sizes, all) = all_pages(&t, "selector=region%3Dus&limit=10").await;
    assert_eq!(sizes, [10, 10, 10, 5]);
    assert!(all.iter().all(|a| a.labels["region"] == "us"));
    let (_, all) = all_pages(&t, "q=NODE-05&limit=3&sort=-name").await;
    let names: Vec<_> = all.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        (50..60)
            .rev()
            .map(|i| format!("node-{i:03}"))
            .collect::<Vec<_>>()
    );
    let (_, all) = eventually(WAIT, "the three agents online", || async {
        let (sizes, all) = all_pages(&t, "status=online&limit=2").await;
        (all.len() == 3).then_some((sizes, all))
    })
    .await;
    assert_eq!(
        all.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [ids[4].as_str(), ids[50].as_str(), ids[101].as_str()]
    );
    // Nothing is updating or rolled back here; the filters exist and answer empty pages.
    for status in ["updating", "rolled_back"] {
        let (sizes, _) = all_pages(&t, &format!("status={status}")).await;
        assert_eq!(sizes, [0], "{status}");
    }
    let (_, all) = all_pages(&t, "status=revoked").await;
    assert_eq!(all.len(), 1);
    assert_eq!(&all[0].id, revoked);
    let (_, all) = all_pages(&t, "status=offline&limit=1000").await;
    assert_eq!(all.len(), 105 - 3 - 1);

    // Bad input names what was wrong.
    for (query, says) in [
        ("cursor=bm90IG91cnM", "cursor"),
        ("cursor=%%%", "cursor"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("sort=cpu", "sort"),
        ("status=asleep", "status"),
    ] {
        let resp = t
            .http
            .get(format!("{}/api/v1/agents?{query}", t.base))
            .bearer_auth(&t.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{query}: {text}");
    }
    // A cursor of one order is refused in another.
    let resp = t
        .http
        .get(format!("{}/api/v1/agents?limit=1", t.base))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    let cursor = resp.headers()["x-next-cursor"]
        .to_str()
        .unwrap()
        .to_string();
    let resp = t
        .http
        .get(format!(
            "{}/api/v1/agents?sort=-name&cursor={cursor}",
            t.base
        ))
        .bearer_auth(&t.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // The overview's counts.
    let overview: FleetOverview = t.get_json("/api/v1/fleet/overview").await;
    assert_eq!(
        (
            overview.agents.enrolled,
            overview.agents.online,
            overview.agents.offline
        ),
        (104, 3, 101)
    );
    assert_eq!(overview.agents.revoked, 1);
    assert!(overview.rollouts.is_empty() && overview.jobs.is_empty());

    // The heartbeat made a metrics point once flushed.
    let history: MetricsHistory = eventually(WAIT, "a metrics point", || async {
        let h: MetricsHistory = t
            .get_json(&format!("/api/v1/agents/{}/metrics", ids[4]))
            .await;
        (!h.points.is_empty()).then_some(h)
    })
    .await;
    assert_eq!(
        (history.range.as_str(), history.resolution_seconds),
        ("24h", 300)
    );
    assert!((history.points[0].cpu_percent - 42.0).abs() < 0.01);
    assert!((history.points[0].memory_used_percent - 25.0).abs() < 0.01);
    for (path, status) in [
        (
            format!("/api/v1/agents/{}/metrics?range=7d", ids[4]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/agents/ag_nope/metrics".to_string(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let resp = t
            .http
            .get(format!("{}{path}", t.base))
            .bearer_auth(&t.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{path}");
    }

    // The dashboard: 100 a page with a link to the next; the agent page charts its history.
    let http = no_redirects();
    let session = sign_in(&http, &t.base, &t.admin).await;
    let html = page(&http, &t.base, "/ui/agents", &session)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(html.matches("data-test=\"agent-row\"").count(), 100);
    let at = html
        .find("data-test=\"next-page\"")
        .expect("a next-page link");
    let href = html[..at].rsplit("href=\"").next().unwrap();
    let href = href.split('"').next().unwrap().replace("&amp;", "&");
    let html = page(&http, &t.base, &href, &session)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(html.matches("data-test=\"agent-row\"").count(), 5, "{href}");
    assert!(!html.contains("data-test=\"next-page\""));
    assert!(html.contains("data-test=\"first-page\""));
    let html = page(&http, &t.base, &format!("/ui/agents/{}", ids[4]), &session)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("data-test=\"metrics-chart\" data-points=\"1\""),
        "{html}"
    );
    // One point so far: drawn as a dot of each series, on the 24 h axis.
    assert_eq!(html.matches("<circle").count(), 3, "{html}");
    let html = page(&http, &t.base, "/ui/", &session)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-test=\"count-online\""));
    drop(online);
}
