//! `flotilla-relay dev`: a relay plus one in-process agent enrolled against it and the local
//! Docker engine, for trying Flotilla on one machine.

use anyhow::Context;
use flotilla_agent::config::AgentConfig;
use flotilla_agent::enroll::{enroll, EnrollOptions};
use flotilla_relay_server::config::RelayConfig;
use flotilla_relay_server::embed::{now, read_admin_token, NewEnrollmentToken};
use flotilla_relay_server::start;
use flotilla_shared::ids;
use flotilla_shared::selector::Labels;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Remembers which agent `dev` enrolled, so later runs reuse it.
const DEV_AGENT_ID_FILE: &str = "dev-agent-id";

/// Runs the relay and the dev agent until `shutdown` completes.
pub async fn run(config: RelayConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let relay = start(config).await.context("cannot start the relay")?;
    let base_url = local_url(relay.local_addr());
    let admin_token = match relay.admin_token_created() {
        Some(t) => t.to_string(),
        None => read_admin_token(&data_dir).context("cannot read the admin token")?,
    };
    let agent_state_dir = data_dir.join("agent");
    let agent_id = match enrolled_agent(&data_dir, &agent_state_dir).await? {
        Some(id) => id,
        None => {
            let id = enroll_dev_agent(&relay, &base_url, &agent_state_dir).await?;
            tokio::fs::write(data_dir.join(DEV_AGENT_ID_FILE), format!("{id}\n"))
                .await
                .context("cannot record the dev agent's id")?;
            id
        }
    };

    let mut agent_config =
        AgentConfig::load(None).context("cannot build the dev agent's configuration")?;
    agent_config.state_dir = agent_state_dir;
    agent_config.relay_url = Some(base_url.clone());
    let agent_shutdown = CancellationToken::new();
    let agent = tokio::spawn(flotilla_agent::run(agent_config, agent_shutdown.clone()));

    println!("flotilla dev: relay and one agent running");
    println!("  dashboard:   {base_url}/ui/  (sign in with the admin token)");
    println!("  API:         {base_url}");
    println!("  admin token: {admin_token}");
    println!("  fingerprint: {}", relay.fingerprint());
    println!("  agent:       {agent_id}");
    println!();
    println!("Try (in another terminal):");
    let cli = cli_path();
    println!("  export FLOTILLA_ADDR={base_url} FLOTILLA_TOKEN={admin_token}");
    println!("  {cli} agents");
    println!("  {cli} agent show {agent_id}");
    println!("  {cli} run --agent {agent_id} container.list --wait");
    println!();
    println!("Press Ctrl-C to stop.");

    let relay_token = relay.shutdown_token();
    tokio::select! {
        _ = shutdown => {}
        _ = relay_token.cancelled() => {}
    }
    agent_shutdown.cancel();
    match agent.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "dev agent ended with an error"),
        Err(e) => tracing::warn!(error = %e, "dev agent task failed"),
    }
    relay.shutdown().await.context("relay shutdown failed")?;
    Ok(())
}

/// The URL the in-process agent dials. A relay listening on every address (`0.0.0.0`, `[::]`)
/// is reached over loopback: the unspecified address is not a destination, and the agent only
/// allows plain `ws://` to loopback hosts.
fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The id of the agent a previous `dev` run enrolled, if its state is still there.
async fn enrolled_agent(data_dir: &Path, agent_state_dir: &Path) -> anyhow::Result<Option<String>> {
    if !tokio::fs::try_exists(agent_state_dir.join("agent.db"))
        .await
        .unwrap_or(false)
    {
        return Ok(None);
    }
    match tokio::fs::read_to_string(data_dir.join(DEV_AGENT_ID_FILE)).await {
        Ok(id) if !id.trim().is_empty() => Ok(Some(id.trim().to_string())),
        _ => Ok(None),
    }
}

async fn enroll_dev_agent(
    relay: &flotilla_relay_server::RunningRelay,
    base_url: &str,
    agent_state_dir: &Path,
) -> anyhow::Result<String> {
    let token = ids::new_secret_token("fle");
    let created_at = now();
    let mut labels = Labels::new();
    labels.insert("env".into(), "dev".into());
    relay
        .store()
        .create_enrollment_token(NewEnrollmentToken {
            id: ids::new_id("et"),
            token_hash: ids::token_hash(&token),
            labels: labels.clone(),
            created_at,
            expires_at: created_at + chrono::Duration::minutes(10),
            max_uses: 1,
            note: Some("flotilla-relay dev".into()),
            created_by: "dev".into(),
            agent_label_keys: vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()],
        })
        .await
        .context("cannot create an enrollment token")?;
    let response = enroll(EnrollOptions {
        relay_url: base_url.to_string(),
        token,
        state_dir: agent_state_dir.to_path_buf(),
        name: None,
        labels,
    })
    .await
    .context("cannot enroll the dev agent")?;
    Ok(response.agent_id)
}

/// How to call the operator CLI from here: the `flotilla` binary built next to this one (a new
/// user has not installed it on their PATH); from a cargo build where it was not built yet,
/// `cargo run` for it; else plain `flotilla`.
fn cli_path() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "flotilla".to_string();
    };
    let beside = exe.with_file_name("flotilla");
    if beside.is_file() {
        return beside.display().to_string();
    }
    let profile = exe
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str());
    let in_cargo_target = exe
        .ancestors()
        .any(|a| a.file_name().is_some_and(|n| n == "target"));
    match profile {
        Some(p) if in_cargo_target => {
            let release = if p == "release" { " --release" } else { "" };
            format!("cargo run -q{release} -p flotilla-cli --")
        }
        _ => "flotilla".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::local_url;

    #[test]
    fn unspecified_listen_addresses_become_loopback() {
        let url = |a: &str| local_url(a.parse().unwrap());
        assert_eq!(url("0.0.0.0:8700"), "http://127.0.0.1:8700");
        assert_eq!(url("[::]:8700"), "http://[::1]:8700");
        assert_eq!(url("127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(url("192.0.2.1:8700"), "http://192.0.2.1:8700");
    }
}
