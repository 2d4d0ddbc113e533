//! Fan-out jobs: one command to every agent matching a selector, with max-concurrency and
//! max-errors (SSM semantics), and offline agents counted as undelivered, not as errors.

use crate::{images, DEADLINE};
use flotilla_shared::api::AgentStatus;
use flotilla_shared::api::{CreateJob, DeliveryState, JobState};
use flotilla_shared::command::{Command, ContainerListArgs, ContainerStopArgs};
use flotilla_shared::limit::Limit;
use flotilla_tests::harness::{scope, Agent, Containers, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_runs_everywhere_and_stops_dispatching_after_max_errors() {
    let img = images().await;
    let scope = scope("fan");
    let docker = Containers::new(&scope).await;
    docker.run("web", &img.v1, &[], &[], true).await;
    let relay = Relay::start().await;
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(Agent::start(&relay, &format!("build-{i}"), "tier=build", &scope).await);
    }
    let other = Agent::start(&relay, "web-0", "tier=web", &scope).await;
    let api = relay.api();
    for a in agents.iter().chain([&other]) {
        api.wait_online(&a.id, DEADLINE).await;
    }

    // Succeeds everywhere it is sent, and only where the selector matches.
    let job = api
        .job(&CreateJob {
            selector: "tier=build".parse().unwrap(),
            command: Command::ContainerList(ContainerListArgs {
                all: true,
                label: None,
            }),
            max_concurrency: Some(Limit::Percent(50)),
            max_errors: None,
            ttl_secs: None,
        })
        .await
        .unwrap();
    assert_eq!(job.counts.targets, 3);
    assert_eq!(job.max_concurrency, 2, "50% of 3 rounds up");
    let job = api.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    assert_eq!(job.counts.succeeded, 3);
    assert!(job.targets.iter().all(|t| t.agent_id != other.id));

    // One at a time, no error tolerated: the first failure stops dispatching.
    let job = api
        .job(&CreateJob {
            selector: "tier=build".parse().unwrap(),
            command: Command::ContainerStop(ContainerStopArgs {
                container: "no-such-container".into(),
                timeout_secs: None,
            }),
            max_concurrency: Some(Limit::Count(1)),
            max_errors: Some(Limit::Count(0)),
            ttl_secs: None,
        })
        .await
        .unwrap();
    let job = api.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, JobState::Stopped, "{job:#?}");
    assert_eq!(job.counts.failed, 1, "{job:#?}");
    assert_eq!(job.counts.skipped, 2, "{job:#?}");
    let failed = job
        .targets
        .iter()
        .find(|t| t.state == DeliveryState::Failed)
        .unwrap();
    assert_eq!(
        failed.result.as_ref().unwrap().error.as_ref().unwrap().code,
        "no_such_container"
    );

    // max-errors 1 tolerates one failure: the second stops it.
    let job = api
        .job(&CreateJob {
            selector: "tier=build".parse().unwrap(),
            command: Command::ContainerStop(ContainerStopArgs {
                container: "no-such-container".into(),
                timeout_secs: None,
            }),
            max_concurrency: Some(Limit::Count(1)),
            max_errors: Some(Limit::Count(1)),
            ttl_secs: None,
        })
        .await
        .unwrap();
    let job = api.wait_job(&job.id, DEADLINE).await;
    assert_eq!(
        (job.state, job.counts.failed, job.counts.skipped),
        (JobState::Stopped, 2, 1),
        "{job:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agents_count_as_undelivered_not_as_errors() {
    let scope = scope("undeliv");
    let relay = Relay::start().await;
    let online = Agent::start(&relay, "on", "tier=build", &scope).await;
    let mut offline = Agent::start(&relay, "off", "tier=build", &scope).await;
    let api = relay.api();
    api.wait_online(&online.id, DEADLINE).await;
    api.wait_online(&offline.id, DEADLINE).await;
    offline.kill().await;
    api.wait_status(&offline.id, AgentStatus::Offline, DEADLINE)
        .await;

    let job = api
        .job(&CreateJob {
            selector: "tier=build".parse().unwrap(),
            command: Command::Ping(Default::default()),
            max_concurrency: None,
            max_errors: Some(Limit::Count(0)),
            ttl_secs: Some(3),
        })
        .await
        .unwrap();
    let job = api.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, JobState::Completed, "{job:#?}");
    assert_eq!(
        (
            job.counts.succeeded,
            job.counts.undelivered,
            job.counts.failed
        ),
        (1, 1, 0),
        "{job:#?}"
    );
}
