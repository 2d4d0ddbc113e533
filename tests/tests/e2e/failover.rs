//! Failover of agents between relays (issue 15): three relays on one PostgreSQL, ten real
//! agents; kill -9 of the relay holding the most agents. The agents come back on the survivors
//! and a fan-out job issued right after the kill runs exactly once on every agent. Once behind a
//! real HAProxy (TCP mode, health checks on /readyz, as packaging/haproxy.cfg), once with the
//! agents listing the relays themselves (`relay_urls`).

use flotilla_shared::api::{CreateJob, DeliveryState, JobState};
use flotilla_shared::command::{Command, ContainerListArgs};
use flotilla_tests::harness::{eventually, scope, Agent, Api, Relay};
use flotilla_tests::pg::PgServer;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

const AGENTS: usize = 10;

/// Deadline for the agents to be back; the goal is 30 s, the measured time is printed.
const BACK_DEADLINE: Duration = Duration::from_secs(45);

/// A Debian HAProxy in front of the relays, on a free loopback port, started by the test.
struct Haproxy {
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
    url: String,
}

impl Haproxy {
    async fn start(relays: &[&Relay]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-haproxy-")
            .tempdir()
            .expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 120s\n    \
             timeout server 120s\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\
             frontend flotilla\n    bind 127.0.0.1:{port}\n    default_backend relays\n\
             backend relays\n    balance roundrobin\n    option httpchk GET /readyz\n    \
             http-check expect status 200\n    \
             default-server check inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n"
        );
        for (i, relay) in relays.iter().enumerate() {
            config.push_str(&format!("    server relay{i} {}\n", relay.addr));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log");
        let child = tokio::process::Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start /usr/sbin/haproxy (apt-get install haproxy)");
        let url = format!("http://127.0.0.1:{port}");
        // Up once a relay answers /readyz through it.
        eventually(
            Duration::from_secs(20),
            "HAProxy forwarding /readyz",
            || {
                let url = url.clone();
                async move {
                    let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
                    r.status().is_success().then_some(())
                }
            },
        )
        .await;
        Haproxy {
            _dir: dir,
            _child: child,
            url,
        }
    }
}

/// Which relay holds each of `agents`' connections, read from the routes table.
async fn routes(pg: &PgServer, agents: &[Agent]) -> BTreeMap<String, String> {
    let out = tokio::process::Command::new("psql")
        .arg(&pg.url)
        .args([
            "-At",
            "-F",
            " ",
            "-c",
            "SELECT agent_id, relay_id FROM agent_routes",
        ])
        .output()
        .await
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: BTreeSet<&str> = agents.iter().map(|a| a.id.as_str()).collect();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(agent, _)| ids.contains(agent))
        .map(|(a, r)| (a.to_string(), r.to_string()))
        .collect()
}

async fn relay_id(api: &Api) -> String {
    let s: flotilla_shared::api::ClusterStatus = api.get("/api/v1/cluster").await.unwrap();
    s.relay_id
}

/// How many times the agent journaled `command_id` (its own record of what it ran), and
/// whether that entry is done.
fn journaled(agent: &Agent, command_id: &str) -> (u32, bool) {
    let conn = rusqlite::Connection::open_with_flags(
        agent.dir.path().join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open agent.db");
    conn.query_row(
        "SELECT count(*), coalesce(sum(status = 'done'), 0) FROM journal WHERE id = ?1",
        [command_id],
        |r| Ok((r.get::<_, u32>(0)?, r.get::<_, u32>(1)? == 1)),
    )
    .expect("read the journal")
}

/// The scenario; `via_haproxy`: agents enroll at and connect to HAProxy, else they enroll at
/// the first relay and list all three in `FLOTILLA_RELAY_URLS`.
async fn kill_the_busiest_relay(via_haproxy: bool) {
    let pg = PgServer::start();
    let first = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &pg.url)]).await;
    let mut relays = vec![first];
    for _ in 0..2 {
        let next = Relay::start_joining(&relays[0]).await;
        relays.push(next);
    }
    let haproxy = if via_haproxy {
        Some(Haproxy::start(&relays.iter().collect::<Vec<_>>()).await)
    } else {
        None
    };
    let relay_urls = relays.iter().map(|r| r.url()).collect::<Vec<_>>().join(",");
    let tag = if via_haproxy { "fo_lb" } else { "fo_list" };
    let scope = scope(tag);
    let labels = format!("tier={tag}");
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let name = format!("{tag}-{i}");
        let mut agent = match &haproxy {
            Some(lb) => Agent::enroll_via(&relays[0], &lb.url, &name, &labels, &scope).await,
            None => Agent::enroll(&relays[0], &name, &labels, &scope).await,
        };
        if !via_haproxy {
            agent.set_env("FLOTILLA_RELAY_URLS", &relay_urls);
        }
        agent.run().await;
        agents.push(agent);
    }
    let mut ids = Vec::new();
    for r in &relays {
        ids.push(relay_id(&r.api()).await);
    }
    for a in &agents {
        relays[0].api().wait_online(&a.id, crate::DEADLINE).await;
    }
    let before = eventually(crate::DEADLINE, "a route for every agent", || async {
        let r = routes(&pg, &agents).await;
        (r.len() == AGENTS).then_some(r)
    })
    .await;
    let mut per_relay: BTreeMap<&str, usize> = BTreeMap::new();
    for relay in before.values() {
        *per_relay.entry(relay.as_str()).or_default() += 1;
    }
    eprintln!("agents per relay before the kill: {per_relay:?}");
    if !via_haproxy {
        // Everyone starts with the first URL of the list.
        assert_eq!(
            per_relay.get(ids[0].as_str()),
            Some(&AGENTS),
            "{per_relay:?}"
        );
    }
    let (victim_id, victim_count) = per_relay
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, n)| (id.to_string(), *n))
        .unwrap();
    let victim = ids.iter().position(|id| *id == victim_id).unwrap();
    let survivor = (victim + 1) % relays.len();
    let api = relays[survivor].api();

    // kill -9 of the busiest relay, then at once a fan-out job to every agent.
    relays[victim].kill().await;
    let killed = Instant::now();
    let job = api
        .job(&CreateJob {
            selector: labels.parse().unwrap(),
            command: Command::ContainerList(ContainerListArgs {
                all: true,
                label: None,
            }),
            max_concurrency: None,
            max_errors: None,
            ttl_secs: Some(120),
        })
        .await
        .expect("a job through a survivor during the failure");
    assert_eq!(job.counts.targets as usize, AGENTS, "{job:#?}");

    // Every agent back: its route names a survivor, and the survivor's API shows it online.
    eventually(BACK_DEADLINE, "every agent on a survivor", || async {
        let r = routes(&pg, &agents).await;
        (r.len() == AGENTS && r.values().all(|relay| *relay != victim_id)).then_some(())
    })
    .await;
    for a in &agents {
        api.wait_online(&a.id, BACK_DEADLINE).await;
    }
    let back = killed.elapsed();
    eprintln!(
        "{} agents back on the survivors {back:?} after kill -9 of the relay holding {victim_count} ({})",
        AGENTS,
        if via_haproxy {
            "through HAProxy"
        } else {
            "relay_urls"
        }
    );

    // The job issued during the failure: done on every target, exactly once.
    let done = api.wait_job(&job.id, Duration::from_secs(60)).await;
    eprintln!(
        "the job issued during the failure ended {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(done.state, JobState::Completed, "{done:#?}");
    assert_eq!(done.counts.succeeded as usize, AGENTS, "{done:#?}");
    assert_eq!(done.targets.len(), AGENTS, "{done:#?}");
    for t in &done.targets {
        assert_eq!(t.state, DeliveryState::Succeeded, "{t:#?}");
    }
    for a in &agents {
        assert_eq!(
            journaled(a, &done.command_id),
            (1, true),
            "agent {} ran the job's command once",
            a.name
        );
    }
    drop(haproxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_the_busiest_relay_behind_haproxy() {
    kill_the_busiest_relay(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_of_the_busiest_relay_with_relay_urls() {
    kill_the_busiest_relay(false).await;
}

/// `/readyz` of `relay`: its status code and body.
async fn readyz(relay: &Relay) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/readyz", relay.url()))
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.unwrap_or_default()))
}

/// A relay cut off from PostgreSQL (a blackholing proxy of the test's own between them) steps
/// down within its lease: `/readyz` 503 `stepped_down`, its agents move to the other relays,
/// its leases are taken over; once the link heals it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_postgres_steps_down_and_rejoins() {
    let pg = PgServer::start();
    let (_, tail) = pg.url.rsplit_once(':').expect("postgres://…:PORT/db");
    let (port, _) = tail.split_once('/').expect("PORT/db");
    let upstream = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = flotilla_tests::tcpproxy::TcpProxy::start(upstream).await;
    let proxied = pg
        .url
        .replacen(&format!(":{port}/"), &format!(":{}/", proxy.addr.port()), 1);
    // The cut-off relay starts first and alone, so it holds every lease.
    let cut = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &proxied)]).await;
    let cut_id = relay_id(&cut.api()).await;
    eventually(
        crate::DEADLINE,
        "the first relay holding every lease",
        || async {
            let s: flotilla_shared::api::ClusterStatus =
                cut.api().get("/api/v1/cluster").await.ok()?;
            (s.leases.len() >= 5 && s.leases.iter().all(|l| l.holder == cut_id)).then_some(())
        },
    )
    .await;
    let direct = [("FLOTILLA_DATABASE_URL", pg.url.as_str())];
    let a = Relay::start_joining_with_env(&cut, &direct).await;
    let b = Relay::start_joining_with_env(&cut, &direct).await;
    let relay_urls = [&cut, &a, &b]
        .iter()
        .map(|r| r.url())
        .collect::<Vec<_>>()
        .join(",");
    let scope = scope("fo_part");
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut agent = Agent::enroll(&cut, &format!("fo-part-{i}"), "tier=part", &scope).await;
        agent.set_env("FLOTILLA_RELAY_URLS", &relay_urls);
        agent.run().await;
        agents.push(agent);
    }
    eventually(
        crate::DEADLINE,
        "every agent on the first relay",
        || async {
            let r = routes(&pg, &agents).await;
            (r.len() == agents.len() && r.values().all(|relay| *relay == cut_id)).then_some(())
        },
    )
    .await;

    proxy.blackhole();
    let cut_at = Instant::now();
    eventually(
        Duration::from_secs(30),
        "/readyz 503 stepped_down",
        || async {
            let (status, body) = readyz(&cut).await?;
            (status == 503 && body.contains("stepped_down")).then_some(())
        },
    )
    .await;
    let stepped_down = cut_at.elapsed();
    eprintln!("stepped down {stepped_down:?} after the cut");
    assert!(
        stepped_down <= Duration::from_secs(15),
        "a cut-off relay steps down within its lease; took {stepped_down:?}"
    );
    let api = a.api();
    eventually(
        Duration::from_secs(45),
        "the agents on the other relays",
        || async {
            let r = routes(&pg, &agents).await;
            (r.len() == agents.len() && r.values().all(|relay| *relay != cut_id)).then_some(())
        },
    )
    .await;
    for agent in &agents {
        api.wait_online(&agent.id, crate::DEADLINE).await;
    }
    eprintln!("agents moved {:?} after the cut", cut_at.elapsed());
    eventually(Duration::from_secs(45), "the leases taken over", || async {
        let s: flotilla_shared::api::ClusterStatus = api.get("/api/v1/cluster").await.ok()?;
        (s.leases.len() >= 5 && s.leases.iter().all(|l| l.holder != cut_id)).then_some(())
    })
    .await;
    eprintln!("leases moved {:?} after the cut", cut_at.elapsed());
    // The survivors still work: a command through A reaches an agent wherever it is now.
    let info = api
        .command(&agents[0].id, Command::Ping(Default::default()), Some(20))
        .await
        .expect("a command after the partition");
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:#?}");

    proxy.heal();
    let healed = Instant::now();
    eventually(
        Duration::from_secs(45),
        "/readyz 200 after the heal",
        || async {
            let (status, _) = readyz(&cut).await?;
            (status == 200).then_some(())
        },
    )
    .await;
    eprintln!("ready again {:?} after the heal", healed.elapsed());
    eventually(
        Duration::from_secs(20),
        "the healed relay back in the cluster",
        || async {
            let s: flotilla_shared::api::ClusterStatus = api.get("/api/v1/cluster").await.ok()?;
            s.relays.iter().any(|r| r.relay_id == cut_id).then_some(())
        },
    )
    .await;
}
