//! Several relays on PostgreSQL through an upgrade: a build published through one relay is
//! served by every relay (its bytes are in the database, each relay's file is a cache), and the
//! schema a newer relay migrates the database to decides whether an older relay keeps running
//! beside it or steps down for good.
//!
//! The newer relay's migration is played by the two rows it writes (a new table and
//! `flotilla_schema`'s version and `compatible_from`): the relays under test are real
//! processes of this build, on a real PostgreSQL.

use crate::DEADLINE;
use flotilla_shared::command::Command;
use flotilla_tests::fixtures::testapp_binary;
use flotilla_tests::harness::{bin, eventually, scope, Agent, Relay};
use flotilla_tests::pg::PgServer;
use std::time::Duration;

async fn download(relay: &Relay, version: &str) -> (reqwest::StatusCode, Vec<u8>, String) {
    let resp = reqwest::get(format!("{}/download/agent/{version}/x86_64", relay.url()))
        .await
        .expect("GET build");
    let status = resp.status();
    let sha = resp
        .headers()
        .get("x-flotilla-sha256")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, resp.bytes().await.unwrap().to_vec(), sha)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_published_through_one_relay_is_served_by_every_relay() {
    let pg = PgServer::start();
    let a = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &pg.url)]).await;
    let b = Relay::start_joining(&a).await;
    let build = std::fs::read(testapp_binary().unwrap()).unwrap();
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/releases/1.2.3/x86_64", a.url()))
        .bearer_auth(&a.admin_token)
        .body(build.clone())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        resp.text().await.unwrap()
    );
    let sha = hex_sha256(&build);

    // B never saw the upload: it writes the file from the database and serves the exact bytes.
    for version in ["1.2.3", "latest"] {
        let (status, bytes, header) = download(&b, version).await;
        assert_eq!(status, 200, "{version} from B");
        assert_eq!(header, sha);
        assert!(
            bytes == build,
            "{version} from B: {} bytes differ",
            bytes.len()
        );
    }
    let file = b.dir.path().join("releases/1.2.3/x86_64/flotilla-agent");
    assert_eq!(std::fs::read(&file).unwrap(), build, "B's cached file");

    // The file is a cache: removed or damaged, it is written again.
    std::fs::remove_file(&file).unwrap();
    assert!(download(&b, "1.2.3").await.1 == build);
    std::fs::write(&file, b"damaged").unwrap();
    assert!(download(&b, "1.2.3").await.1 == build);

    // A relay that joins later with an empty data directory serves it too.
    let c = Relay::start_joining(&a).await;
    let (status, bytes, _) = download(&c, "1.2.3").await;
    assert_eq!(status, 200);
    assert!(bytes == build);
}

fn hex_sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn readyz(relay: &Relay) -> (u16, String) {
    let resp = reqwest::get(format!("{}/readyz", relay.url()))
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_relay_runs_beside_a_compatible_schema_and_steps_down_for_an_incompatible_one() {
    let pg = PgServer::start();
    let a = Relay::start_with_env(&[("FLOTILLA_DATABASE_URL", &pg.url)]).await;
    let b = Relay::start_joining(&a).await;
    let scope = scope("rolling");
    let agent = Agent::start(&b, "rolling-1", "tier=rolling", &scope).await;
    let (api_a, api_b) = (a.api(), b.api());
    api_a.wait_online(&agent.id, DEADLINE).await;
    let known: i64 = pg
        .psql("SELECT version FROM flotilla_schema")
        .parse()
        .unwrap();

    // A newer relay migrated the database with a migration this build can ignore (a table of
    // its own; compatible_from unchanged): both relays keep serving, a relay of this build still
    // starts beside it, and commands cross relays as before.
    pg.psql(
        "BEGIN; CREATE TABLE next_release_probe (id BIGINT PRIMARY KEY); \
         UPDATE flotilla_schema SET version = version + 1; COMMIT;",
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    for relay in [&a, &b] {
        assert_eq!(readyz(relay).await.0, 200, "{}", readyz(relay).await.1);
    }
    let mut c = Relay::start_joining(&a).await;
    assert_eq!(readyz(&c).await.0, 200);
    let info = api_a
        .command(&agent.id, Command::Ping(Default::default()), Some(20))
        .await
        .expect("a command beside the newer schema");
    assert_eq!(info.state, flotilla_shared::api::DeliveryState::Succeeded);
    c.terminate(DEADLINE).await;

    // The next migration is one older relays must not write under (compatible_from past what
    // they know): every relay of this build steps down for good, within a few seconds.
    pg.psql("UPDATE flotilla_schema SET version = version + 1, compatible_from = version + 1");
    let started = std::time::Instant::now();
    for relay in [&a, &b] {
        let body = eventually(
            Duration::from_secs(15),
            "the relay to step down",
            || async {
                let (status, body) = readyz(relay).await;
                (status == 503).then_some(body)
            },
        )
        .await;
        assert!(body.contains("schema_too_new"), "{body}");
        assert!(body.contains("upgrade this relay"), "{body}");
    }
    eprintln!(
        "both relays stepped down {:?} after the incompatible migration",
        started.elapsed()
    );
    // Their leases are handed over at their next renewal, long before they would run out (a
    // handed-over lease expires at the epoch), and they leave the cluster.
    eventually(Duration::from_secs(5), "the leases handed over", || async {
        (pg.psql("SELECT count(*) FROM leases WHERE expires_at > '1970-01-02'") == "0")
            .then_some(())
    })
    .await;
    assert_eq!(pg.psql("SELECT count(*) FROM relays"), "0");
    // Writes are refused with the reason; reads still answer.
    let refused = api_a
        .command(&agent.id, Command::Ping(Default::default()), None)
        .await
        .expect_err("a write on a retired relay");
    assert!(refused.to_string().contains("schema_too_new"), "{refused}");
    api_b
        .wait_status(
            &agent.id,
            flotilla_shared::api::AgentStatus::Offline,
            DEADLINE,
        )
        .await;
    // It stays down: a retired relay does not come back while the schema is what it is.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(readyz(&a).await.0, 503);

    // A relay of this build refuses to start on it, naming both schema versions.
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(bin("flotilla-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FLOTILLA_DATABASE_URL", &pg.url)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "schema version {} is newer than this relay understands ({known})",
            known + 2
        )) && stderr.contains(&format!("know schema {} or newer", known + 2)),
        "{stderr}"
    );
}
