//! dashboard-bench: the dashboard's figures in BENCHMARKS.md, on a real relay process.
//!
//! - N agents enrolled through the API (in the store; none connected), then the overview and
//!   agents pages rendered for a signed-in operator and the API calls behind them (the fleet
//!   overview, the first and the last page of the agents list by cursor, a selector), 20 times
//!   each: time per request on loopback (relay time plus a loopback round trip), p50 and max,
//!   and the answer's weight;
//! - the weight of the dashboard's script and stylesheet;
//! - the live stream: time from an enrollment's API call to its `agent.enrolled` event
//!   arriving at a stream client, 20 rounds.
//!
//! Usage: `cargo build --release --workspace --bins && target/release/dashboard-bench [N]`
//! (default 10000).

use anyhow::{bail, Context, Result};
use flotilla_shared::api::{
    AgentFacts, CreateEnrollmentToken, EnrollRequest, EnrollmentTokenCreated,
};
use flotilla_shared::signing::SigningKey;
use flotilla_tests::harness::Relay;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()
        .context("N must be a number")?
        .unwrap_or(10_000);
    let relay = Relay::start_with_env(&[
        ("FLOTILLA_ENROLL_RATE_PER_MINUTE", "100000000"),
        ("FLOTILLA_LOG", "warn"),
    ])
    .await;
    let base = relay.url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()?;
    let token: EnrollmentTokenCreated = http
        .post(format!("{base}/api/v1/enrollment-tokens"))
        .bearer_auth(&relay.admin_token)
        .json(&CreateEnrollmentToken {
            max_uses: Some(n as u32 + 100),
            ttl_secs: Some(3600),
            // The simulated agents name their own region.
            agent_label_keys: vec!["region".into()],
            ..CreateEnrollmentToken::default()
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let started = Instant::now();
    let key = SigningKey::generate().public_key().to_base64();
    let enroll = |i: usize| {
        let (http, base, token, key) =
            (http.clone(), base.clone(), token.token.clone(), key.clone());
        async move {
            http.post(format!("{base}/api/v1/enroll"))
                .json(&EnrollRequest {
                    token,
                    name: Some(format!("bench-{i:05}")),
                    public_key: key,
                    labels: [("region".to_string(), ["eu", "us", "ap"][i % 3].to_string())].into(),
                    facts: AgentFacts::default(),
                })
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }
    };
    futures_util::stream::iter(0..n)
        .map(enroll)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    println!(
        "{n} agents enrolled in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let session = sign_in(&http, &base, &relay.admin_token).await?;
    // The cursor of the deepest page of 500 (the last one).
    let mut deepest = String::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/agents?limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = http
            .get(url)
            .bearer_auth(&relay.admin_token)
            .send()
            .await?
            .error_for_status()?;
        match resp.headers().get("x-next-cursor") {
            Some(c) => {
                let c = c.to_str()?.to_string();
                deepest = c.clone();
                cursor = Some(c);
            }
            None => break,
        }
    }
    let cookie = format!("flotilla_session={session}");
    let deepest_path = format!("/api/v1/agents?limit=500&cursor={deepest}");
    let cases: [(&str, &str, bool); 7] = [
        ("/ui/", "overview page", true),
        ("/ui/agents", "agents page (first 100)", true),
        (
            "/ui/agents?status=online",
            "agents page, filter matching none (walks all)",
            true,
        ),
        (
            "/api/v1/fleet/overview",
            "GET /api/v1/fleet/overview",
            false,
        ),
        (
            "/api/v1/agents?limit=500",
            "GET /api/v1/agents?limit=500 (first page)",
            false,
        ),
        (
            &deepest_path,
            "GET /api/v1/agents?limit=500 (last page, by cursor)",
            false,
        ),
        (
            "/api/v1/agents?selector=region%3Dap&limit=500",
            "GET /api/v1/agents?selector=region=ap&limit=500",
            false,
        ),
    ];
    for (path, label, page) in cases {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let request = http.get(format!("{base}{path}"));
            let request = if page {
                request.header("cookie", &cookie)
            } else {
                request.bearer_auth(&relay.admin_token)
            };
            let resp = request.send().await?;
            if !resp.status().is_success() {
                bail!("{path}: {}", resp.status());
            }
            bytes = resp.bytes().await?.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{label} with {n} agents: p50 {:.1} ms, max {:.1} ms; {:.1} KB",
            times[times.len() / 2].as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            bytes as f64 / 1000.0
        );
    }
    let mut assets = 0;
    for asset in ["app.js", "app.css"] {
        assets += http
            .get(format!("{base}/ui/assets/{asset}"))
            .send()
            .await?
            .bytes()
            .await?
            .len();
    }
    println!("script + stylesheet: {:.1} KB", assets as f64 / 1000.0);

    // The live stream: enrollment → `agent.enrolled` at a client.
    let resp = http
        .get(format!("{base}/api/v1/events/stream?kinds=agent"))
        .bearer_auth(&relay.admin_token)
        .send()
        .await?
        .error_for_status()?;
    let mut body = resp;
    let mut buffer = String::new();
    let mut latencies = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        enroll(n + i).await?;
        let name = format!("bench-{:05}", n + i);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if buffer.contains(&name) && buffer.contains("agent.enrolled") {
                break;
            }
            let chunk = tokio::time::timeout_at(deadline.into(), body.chunk())
                .await
                .context("no agent.enrolled event within 10 s")??
                .context("the stream ended")?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
        latencies.push(t.elapsed());
        buffer.clear();
    }
    latencies.sort();
    println!(
        "live stream: enrollment call → agent.enrolled at the client, 20 rounds: p50 {:.1} ms, max {:.1} ms",
        latencies[10].as_secs_f64() * 1e3,
        latencies[19].as_secs_f64() * 1e3
    );
    Ok(())
}

async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> Result<String> {
    let form = http.get(format!("{base}/ui/login")).send().await?;
    let cookie_of = |resp: &reqwest::Response, name: &str| {
        resp.headers().get_all("set-cookie").iter().find_map(|v| {
            let v = v.to_str().ok()?;
            Some(
                v.strip_prefix(&format!("{name}="))?
                    .split(';')
                    .next()?
                    .to_string(),
            )
        })
    };
    let login = cookie_of(&form, "flotilla_login").context("no login cookie")?;
    let html = form.text().await?;
    let at = html
        .find("name=\"csrf\" value=\"")
        .context("no csrf field")?
        + 19;
    let csrf = html[at..].split('"').next().unwrap_or_default().to_string();
    let resp = http
        .post(format!("{base}/ui/login"))
        .header("cookie", format!("flotilla_login={login}"))
        .form(&[("token", token), ("csrf", &csrf)])
        .send()
        .await?;
    cookie_of(&resp, "flotilla_session").context("sign-in gave no session")
}
