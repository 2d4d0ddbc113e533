//! Several relays on one PostgreSQL database (a throwaway server of the test's own): any relay
//! serves the whole fleet, commands and jobs cross relays, `?wait=` and the event stream on one
//! relay see what happens on another, and the singleton engines' leases move when their holder
//! is killed.

use crate::DEADLINE;
use flotilla_shared::api::{AgentStatus, ClusterStatus, CreateJob, DeliveryState, JobState};
use flotilla_shared::command::{Command, ContainerListArgs};
use flotilla_tests::harness::{eventually, scope, Agent, Api, Relay};
use flotilla_tests::pg::PgServer;
use std::time::{Duration, Instant};

async fn cluster(api: &Api) -> ClusterStatus {
    api.get("/api/v1/cluster")
        .await
        .expect("GET /api/v1/cluster")
}

/// Opens the relay's event stream of command events.
async fn open_stream(relay: &Relay) -> reqwest::Response {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/events/stream?kinds=command",
            relay.url()
        ))
        .bearer_auth(&relay.admin_token)
        .send()
        .await
        .expect("open the event stream");
    assert!(response.status().is_success(), "{}", response.status());
    response
}

/// Reads `stream` until a `command.finished` for `command_id` arrives; returns what it read.
async fn read_until_finished(mut stream: reqwest::Response, command_id: &str) -> String {
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.expect("read the stream") {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("command.finished") && seen.contains(command_id) {
                return;
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read).await.is_err() {
        panic!("no command.finished for {command_id} on the stream; read: {seen}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_jobs_waits_and_events_cross_relays() {
    let pg = PgServer::start();
    let a = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &pg.url)]).await;
    let mut b = Relay::start_joining(&a).await;
    let scope = scope("ha_cross");
    let on_a = Agent::start(&a, "ha-a", "tier=ha", &scope).await;
    // Enrolled through B: enrollment on any relay is for all.
    let on_b = Agent::start(&b, "ha-b", "tier=ha", &scope).await;
    let (api_a, api_b) = (a.api(), b.api());

    // Either relay sees both agents online, with their latest heartbeat.
    for api in [&api_a, &api_b] {
        api.wait_online(&on_a.id, DEADLINE).await;
        api.wait_online(&on_b.id, DEADLINE).await;
    }
    let status = cluster(&api_a).await;
    assert_eq!(status.backend, "postgres");
    assert_eq!(status.relays.len(), 2, "{status:#?}");

    // A command through A to the agent connected to B, with ?wait=: B's result.
    let started = Instant::now();
    let info = api_a
        .command(&on_b.id, Command::Ping(Default::default()), Some(20))
        .await
        .expect("command through A");
    assert_eq!(info.state, DeliveryState::Succeeded, "{info:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The event stream on A, opened before the command, shows B's agent finishing it.
    let stream = open_stream(&a).await;
    let no_wait = api_a
        .command(&on_b.id, Command::Ping(Default::default()), None)
        .await
        .expect("second command through A");
    let seen = read_until_finished(stream, &no_wait.id).await;
    assert!(seen.contains(&on_b.id), "{seen}");

    // A job through B over both agents: each runs it once.
    let job = api_b
        .job(&CreateJob {
            selector: "tier=ha".parse().unwrap(),
            command: Command::ContainerList(ContainerListArgs {
                all: true,
                label: None,
            }),
            max_concurrency: Some(flotilla_shared::limit::Limit::Count(1)),
            max_errors: None,
            ttl_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(job.counts.targets, 2);
    let job = api_a.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    assert_eq!(job.counts.succeeded, 2, "{job:#?}");

    // A clean stop of a relay on PostgreSQL ends promptly (its signals' sender stops with it)
    // and takes it out of the cluster at once.
    let took = b.terminate(Duration::from_secs(20)).await;
    eprintln!("relay on PostgreSQL stopped {took:?} after SIGTERM");
    eventually(Duration::from_secs(5), "A alone in the cluster", || async {
        (cluster(&api_a).await.relays.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_move_to_a_survivor_when_their_holder_is_killed() {
    let pg = PgServer::start();
    let mut a = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &pg.url)]).await;
    // A alone first: it takes every singleton's lease; B, started then, takes none.
    let a_id = cluster(&a.api()).await.relay_id;
    let before = eventually(DEADLINE, "A holding every lease", || async {
        let s = cluster(&a.api()).await;
        (s.leases.len() >= 5 && s.leases.iter().all(|l| l.holder == a_id)).then_some(s)
    })
    .await;
    let b = Relay::start_joining(&a).await;
    let scope = scope("ha_lease");
    let on_a = Agent::start(&a, "lease-a", "tier=lease", &scope).await;
    let on_b = Agent::start(&b, "lease-b", "tier=lease", &scope).await;
    let api_b = b.api();
    api_b.wait_online(&on_a.id, DEADLINE).await;
    api_b.wait_online(&on_b.id, DEADLINE).await;

    let b_id = cluster(&api_b).await.relay_id;
    let still = cluster(&api_b).await;
    assert!(still.leases.iter().all(|l| l.holder == a_id), "{still:#?}");

    // kill -9 of the holder: B takes every lease over with a higher epoch, within the
    // lease's time to live plus a renewal.
    a.kill().await;
    let killed = Instant::now();
    let after = eventually(
        Duration::from_secs(30),
        "leases taken over by B",
        || async {
            let s = cluster(&api_b).await;
            s.leases.iter().all(|l| l.holder == b_id).then_some(s)
        },
    )
    .await;
    let moved = killed.elapsed();
    assert!(
        moved <= Duration::from_secs(20),
        "leases moved after {moved:?}"
    );
    for l in &after.leases {
        let old = before.leases.iter().find(|o| o.name == l.name).unwrap();
        assert_eq!(l.epoch, old.epoch + 1, "{l:?} after {old:?}");
    }
    eprintln!("leases moved {moved:?} after kill -9 of their holder");

    // The dead relay's agent no longer counts as connected; the survivor's job engine runs a
    // job to the agent it holds.
    api_b
        .wait_status(&on_a.id, AgentStatus::Offline, Duration::from_secs(40))
        .await;
    let job = api_b
        .job(&CreateJob {
            selector: "tier=lease".parse().unwrap(),
            command: Command::Ping(Default::default()),
            max_concurrency: None,
            max_errors: None,
            ttl_secs: Some(60),
        })
        .await
        .unwrap();
    let s = cluster(&api_b).await;
    assert_eq!(s.relays.len(), 1, "the dead relay is forgotten: {s:#?}");
    let job = eventually(DEADLINE, "the job's reachable target done", || async {
        let j: flotilla_shared::api::JobInfo = api_b
            .get(&format!("/api/v1/jobs/{}", job.id))
            .await
            .unwrap();
        let t = j.targets.iter().find(|t| t.agent_id == on_b.id)?;
        (t.state == DeliveryState::Succeeded).then_some(j)
    })
    .await;
    assert_eq!(job.counts.targets, 2);
}
