//! Enrollment tokens: one use by default, expire, can be revoked; refusals are clear.

use crate::DEADLINE;
use flotilla_shared::api::{CreateEnrollmentToken, EnrollmentTokenCreated, EnrollmentTokenInfo};
use flotilla_tests::harness::{enroll_with_token, eventually, labels, Relay};

async fn token(relay: &Relay, ttl_secs: u64, max_uses: u32) -> EnrollmentTokenCreated {
    relay
        .api()
        .post(
            "/api/v1/enrollment-tokens",
            &CreateEnrollmentToken {
                labels: labels("tier=build"),
                ttl_secs: Some(ttl_secs),
                max_uses: Some(max_uses),
                note: Some("e2e".into()),
            },
        )
        .await
        .unwrap()
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
    let t = token(&relay, 600, 2).await;
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
