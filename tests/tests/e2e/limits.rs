//! What one client can cost the relay before and around authentication (review findings 3, 6
//! and 8): partial HTTP requests and idle kept-alive connections are closed after the header
//! timeout, one address holds a bounded number of connections, API calls are rate-limited per
//! token and per address (429 with `Retry-After`) without touching agents, and `/metrics` needs
//! a token. Loopback has all of 127.0.0.0/8, so a test binds 127.0.0.2, .3, ... to be several
//! clients.

use crate::DEADLINE;
use flotilla_shared::api::{ApiTokenCreated, CreateApiToken, DeliveryState, Scope};
use flotilla_shared::command::Command;
use flotilla_tests::harness::{eventually, scope, Agent, Relay};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn tcp_from(src: &str, relay: &Relay) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{src}:0").parse().unwrap()).unwrap();
    socket.connect(relay.addr.parse().unwrap()).await.unwrap()
}

/// Reads until the relay closes `tcp` (EOF or reset); how long that took.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => continue,
            }
        }
    })
    .await
    .ok()
}

/// One whole `GET /healthz` on `tcp`, keeping the connection; the status line.
async fn healthz_on(tcp: &mut TcpStream) -> String {
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn client_from(src: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(src.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn api_token(relay: &Relay, name: &str, scope: Scope) -> String {
    let created: ApiTokenCreated = relay
        .api()
        .post(
            "/api/v1/api-tokens",
            &CreateApiToken {
                name: name.into(),
                scope,
            },
        )
        .await
        .unwrap();
    created.token
}

/// Finding 8: connections that send part of a request and then nothing, and a kept-alive
/// connection left idle, are closed once the header timeout passes; meanwhile one address is
/// held to its connection cap (the next connection is closed at once) and other clients are
/// served. Afterwards the address may connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_requests_time_out_and_one_address_holds_a_bounded_number_of_connections() {
    const CAP: usize = 20;
    let relay = Relay::start_with_env(&[
        ("FLOTILLA_HEADER_READ_TIMEOUT_SECS", "3"),
        ("FLOTILLA_MAX_CONNECTIONS_PER_ADDRESS", &CAP.to_string()),
    ])
    .await;
    let mut partial = Vec::new();
    for _ in 0..CAP - 1 {
        let mut tcp = tcp_from("127.0.0.2", &relay).await;
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
            .await
            .unwrap();
        partial.push(tcp);
    }
    // The last slot: a kept-alive connection that made one request and then idles.
    let mut idle = tcp_from("127.0.0.2", &relay).await;
    assert!(healthz_on(&mut idle).await.contains("200"));

    let mut over = tcp_from("127.0.0.2", &relay).await;
    let refused = closed_within(&mut over, Duration::from_secs(2))
        .await
        .expect("a connection over the per-address cap is closed at once");
    assert!(refused < Duration::from_secs(2), "{refused:?}");

    // Other clients are served meanwhile.
    let other = client_from("127.0.0.3")
        .get(format!("{}/healthz", relay.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);

    for (i, tcp) in partial
        .iter_mut()
        .chain(std::iter::once(&mut idle))
        .enumerate()
    {
        let took = closed_within(tcp, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("connection {i} is still open {DEADLINE:?} later"));
        assert!(took < DEADLINE, "{took:?}");
    }
    // Their slots are free again.
    let mut again = tcp_from("127.0.0.2", &relay).await;
    assert!(healthz_on(&mut again).await.contains("200"));
    let read = api_token(&relay, "prom", Scope::Read).await;
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", relay.url()))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flotilla_connections_refused_total 1"),
        "{metrics}"
    );
}

/// Finding 6 (rate limits): with the users' plan (30 requests/s, bursts of 50) a burst of 60
/// with one token gets 429s with `Retry-After` after about 50; another token from another
/// address is unaffected; the same token from a fresh address is still limited (per token), and
/// another token from the busy address too (per address); the agent's websocket, heartbeats and
/// commands are never slowed; once the wait has passed the token works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_one_token_is_limited_without_slowing_agents() {
    let relay = Relay::start_with_env(&[
        ("FLOTILLA_API_RATE_PER_SEC", "30"),
        ("FLOTILLA_API_RATE_BURST", "50"),
    ])
    .await;
    let agent = Agent::start(&relay, "steady", "", &scope("ratelimit")).await;
    let api = relay.api();
    api.wait_online(&agent.id, DEADLINE).await;
    let busy = api_token(&relay, "busy", Scope::Read).await;
    let calm = api_token(&relay, "calm", Scope::Read).await;
    let before = api.agent(&agent.id).await.agent.last_heartbeat_at;

    let attacker = client_from("127.0.0.2");
    let url = format!("{}/api/v1/agents", relay.url());
    let answers = futures_util::future::join_all(
        (0..60).map(|_| attacker.get(&url).bearer_auth(&busy).send()),
    )
    .await;
    let mut ok = 0;
    let mut limited = Vec::new();
    for a in answers {
        let a = a.unwrap();
        match a.status().as_u16() {
            200 => ok += 1,
            429 => {
                let retry: u64 = a.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let body = a.text().await.unwrap();
                limited.push((retry, body));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (50..=55).contains(&ok),
        "about the burst of 50 served: {ok}"
    );
    assert_eq!(ok + limited.len(), 60);
    assert!(
        limited
            .iter()
            .all(|(retry, body)| *retry >= 1 && body.contains("rate_limited")),
        "{limited:?}"
    );

    let status = |client: reqwest::Client, token: String| {
        let url = url.clone();
        async move {
            client
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        status(client_from("127.0.0.3"), calm.clone()).await,
        200,
        "another token elsewhere"
    );
    // Twenty at once: the empty bucket refills one request every 1/30 s, so nearly all are
    // refused (with no limit on that side all twenty would pass).
    let refused = |src: &'static str, token: String| {
        let status = &status;
        async move {
            let client = client_from(src);
            let all = futures_util::future::join_all(
                (0..20).map(|_| status(client.clone(), token.clone())),
            )
            .await;
            all.iter().filter(|s| **s == 429).count()
        }
    };
    let per_token = refused("127.0.0.4", busy.clone()).await;
    assert!(
        per_token >= 15,
        "the same token from a fresh address: {per_token} of 20 refused"
    );
    let per_address = refused("127.0.0.2", calm.clone()).await;
    assert!(
        per_address >= 15,
        "another token from the busy address: {per_address} of 20 refused"
    );

    // The agent: still online, still heartbeating, commands answered.
    let ping = api
        .command(&agent.id, Command::Ping(Default::default()), Some(30))
        .await
        .unwrap();
    assert_eq!(ping.state, DeliveryState::Succeeded, "{ping:?}");
    eventually(DEADLINE, "a heartbeat after the burst", || {
        let api = api.clone();
        let id = agent.id.clone();
        async move {
            let now = api.agent(&id).await.agent.last_heartbeat_at;
            (now > before).then_some(())
        }
    })
    .await;

    // The wait passes: the token is served again.
    eventually(DEADLINE, "the busy token served again", || {
        let (client, token) = (client_from("127.0.0.2"), busy.clone());
        let status = &status;
        async move { (status(client, token).await == 200).then_some(()) }
    })
    .await;
}

/// Finding 3: `/metrics` answers only with a token (any scope; Prometheus sends one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token() {
    let relay = Relay::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", relay.url());
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.text().await.unwrap().contains("unauthorized"));
    let bad = http.get(&url).bearer_auth("flt_nope").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let read = api_token(&relay, "prometheus", Scope::Read).await;
    let ok = http.get(&url).bearer_auth(&read).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok
        .text()
        .await
        .unwrap()
        .contains("flotilla_connected_agents"));
}
