//! schemathesis against a real relay with a seeded fleet: every operation of
//! `GET /api/v1/openapi.json`, called with the admin token and generated inputs, must answer
//! without a server error (5xx) and with a body its schema allows.

use flotilla_tests::harness::{scope, Agent, Relay};
use std::process::Command;

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let scope = scope("openapi");
    let relay = Relay::start().await;
    // The seeded fleet: two enrolled, connected agents and a spare enrollment token.
    let _eu = Agent::start(&relay, "st-eu", "region=eu", &scope).await;
    let _us = Agent::start(&relay, "st-us", "region=us", &scope).await;
    let _spare = relay.enrollment_token("region=eu").await;

    let url = format!("{}/api/v1/openapi.json", relay.url());
    let header = format!("Authorization: Bearer {}", relay.admin_token);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .args(["run", &url])
            .args(["--header", &header])
            .args(["--checks", "not_a_server_error,response_schema_conformance"])
            .args(["--max-examples", "20", "--request-timeout", "10"])
            // One worker: with several, hypothesis parses lambda sources on several threads at
            // once, which trips CPython 3.11's AST recursion-depth bug (gh-106905: "AST
            // constructor recursion depth mismatch") as a spurious runtime error.
            .args(["--workers", "1"])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .expect("schemathesis thread")
    .expect("schemathesis must be installed (scripts/test installs it from PyPI)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{text}");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{text}"
    );
}
