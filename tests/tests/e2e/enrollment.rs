//! Enrollment tokens: one use by default, expire, can be revoked; refusals are clear; the
//! token decides an agent's labels, and what the agent asked for is shown apart.

use crate::DEADLINE;
use flotilla_shared::api::{CreateEnrollmentToken, EnrollmentTokenCreated, EnrollmentTokenInfo};
use flotilla_tests::harness::{enroll_with_token, eventually, labels, Relay};

async fn token(relay: &Relay, ttl_secs: u64, max_uses: u32) -> EnrollmentTokenCreated {
    token_with(relay, "tier=build", ttl_secs, max_uses, &[]).await
}

/// A token setting `token_labels` that lets agents add the `agent_keys`.
async fn token_with(
    relay: &Relay,
    token_labels: &str,
    ttl_secs: u64,
    max_uses: u32,
    agent_keys: &[&str],
) -> EnrollmentTokenCreated {
    relay
        .api()
        .post(
            "/api/v1/enrollment-tokens",
            &CreateEnrollmentToken {
                labels: labels(token_labels),
                ttl_secs: Some(ttl_secs),
                max_uses: Some(max_uses),
                note: Some("e2e".into()),
                agent_label_keys: agent_keys.iter().map(|k| k.to_string()).collect(),
            },
        )
        .await
        .unwrap()
}

/// `flotilla-agent enroll --labels <claimed>` into `dir`; returns (success, stdout+stderr).
async fn enroll_claiming(
    relay: &Relay,
    token: &str,
    name: &str,
    claimed: &str,
    dir: &std::path::Path,
) -> (bool, String) {
    let out = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla-agent"))
        .args(["enroll", "--relay", &relay.url(), "--token", token])
        .args(["--name", name, "--labels", claimed])
        .arg("--state-dir")
        .arg(dir)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `flotilla-agent enroll` into a fresh state dir; returns (success, stdout+stderr).
async fn enroll(relay: &Relay, token: &str, name: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = enroll_with_token(&relay.url(), token, dir.path(), name)
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_use_token_enrolls_once_and_is_then_refused() {
    let relay = Relay::start().await;
    let t = token(&relay, 600, 1).await;
    let (ok, out) = enroll(&relay, &t.token, "first").await;
    assert!(ok, "{out}");
    let (ok, out) = enroll(&relay, &t.token, "second").await;
    assert!(!ok, "a used token must be refused: {out}");
    assert!(out.contains("already been used"), "clear message: {out}");

    let listed: Vec<EnrollmentTokenInfo> =
        relay.api().get("/api/v1/enrollment-tokens").await.unwrap();
    let info = listed.iter().find(|i| i.id == t.info.id).unwrap();
    assert_eq!(info.uses, 1);
    // The secret itself is never listed.
    let raw = serde_json::to_string(&listed).unwrap();
    assert!(!raw.contains(&t.token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_expired_and_revoked_tokens_are_refused() {
    let relay = Relay::start().await;

    let (ok, out) = enroll(&relay, "flt_not_a_real_token", "x").await;
    assert!(!ok);
    assert!(out.contains("not valid"), "{out}");

    // Many uses, so only the expiry can refuse it.
    let short = token(&relay, 1, 1000).await;
    let out = eventually(DEADLINE, "token to expire", || async {
        let (ok, out) = enroll(&relay, &short.token, "late").await;
        (!ok).then_some(out)
    })
    .await;
    assert!(out.contains("expired"), "{out}");

    let revoked = token(&relay, 600, 5).await;
    relay
        .api()
        .delete(&format!("/api/v1/enrollment-tokens/{}", revoked.info.id))
        .await
        .unwrap();
    let (ok, out) = enroll(&relay, &revoked.token, "r").await;
    assert!(!ok);
    assert!(out.contains("revoked"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_use_token_merges_token_and_agent_labels() {
    let relay = Relay::start().await;
    // The token lets agents set `region` (and `tier`, which it sets itself: it still wins).
    let t = token_with(&relay, "tier=build", 600, 2, &["region", "tier"]).await;
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla-agent"))
        .args([
            "enroll",
            "--relay",
            &relay.url(),
            "--token",
            &t.token,
            "--name",
            "labelled",
        ])
        .arg("--state-dir")
        .arg(dir.path())
        .args(["--labels", "region=eu,tier=web"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agents: Vec<flotilla_shared::api::AgentInfo> =
        relay.api().get("/api/v1/agents").await.unwrap();
    let a = agents.iter().find(|a| a.name == "labelled").unwrap();
    assert_eq!(
        a.labels,
        labels("region=eu,tier=build"),
        "token labels win on conflict"
    );
    // Enrolling again into the same state dir is refused rather than silently replacing the key.
    let again = tokio::process::Command::new(flotilla_tests::harness::bin("flotilla-agent"))
        .args(["enroll", "--relay", &relay.url(), "--token", &t.token])
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
}

/// Review finding 11: a token made for `env=staging` cannot enroll a host into `env=prod` (or
/// any other part of the fleet the agent names): the token's labels win, keys it does not list
/// are not applied, the agent is told, and the API shows the claim apart from the labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolling_host_cannot_place_itself_outside_its_tokens_labels() {
    let relay = Relay::start().await;
    let api = relay.api();
    let t = token_with(&relay, "env=staging", 600, 1, &[]).await;
    assert!(t.info.agent_label_keys.is_empty(), "{:?}", t.info);
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = enroll_claiming(
        &relay,
        &t.token,
        "claimer",
        "env=prod,region=us",
        dir.path(),
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("did not apply") && out.contains("env=prod") && out.contains("region=us"),
        "the agent says which labels were not applied: {out}"
    );
    let agents: Vec<flotilla_shared::api::AgentInfo> = api.get("/api/v1/agents").await.unwrap();
    let a = agents.iter().find(|a| a.name == "claimer").unwrap();
    assert_eq!(a.labels, labels("env=staging"), "the token's labels only");
    let detail = api.agent(&a.id).await;
    assert_eq!(detail.agent.labels, labels("env=staging"));
    assert_eq!(
        detail.claimed_labels,
        labels("env=prod,region=us"),
        "what it asked for is shown apart"
    );
    for (selector, expected) in [("env=prod", 0), ("region=us", 0), ("env=staging", 1)] {
        let matched: Vec<flotilla_shared::api::AgentInfo> = api
            .get(&format!("/api/v1/agents?selector={selector}"))
            .await
            .unwrap();
        assert_eq!(
            matched.len(),
            expected,
            "agents matching {selector}: {matched:?}"
        );
    }
    // A token listing a key lets agents set it; the token's own keys still win.
    let t = token_with(&relay, "env=staging", 600, 1, &["region", "env"]).await;
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = enroll_claiming(
        &relay,
        &t.token,
        "allowed",
        "env=prod,region=us",
        dir.path(),
    )
    .await;
    assert!(ok, "{out}");
    let agents: Vec<flotilla_shared::api::AgentInfo> = api.get("/api/v1/agents").await.unwrap();
    let b = agents.iter().find(|a| a.name == "allowed").unwrap();
    assert_eq!(b.labels, labels("env=staging,region=us"));
    // Bad key lists are refused with the reason.
    let e = api
        .post::<_, EnrollmentTokenCreated>(
            "/api/v1/enrollment-tokens",
            &CreateEnrollmentToken {
                agent_label_keys: vec!["bad key".into()],
                ..CreateEnrollmentToken::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("agent_label_keys"), "{e}");
}
