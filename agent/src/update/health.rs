//! The health gate: a container must pass its check before a deadline, then stay up (no exit,
//! no restart, not unhealthy) for a stability window.

use crate::docker::DockerClient;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use flotilla_shared::update::{HealthEvidence, HealthSpec};
use std::time::{Duration, Instant};

/// How often the container's state is polled.
const POLL: Duration = Duration::from_millis(250);
/// Timeout of one http/tcp probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest probe answer or health output kept as evidence.
const MAX_OUTPUT_CHARS: usize = 500;

/// What the state of a container says at one poll.
enum Seen {
    Gone,
    Exited(String),
    Restarted(String),
    Unhealthy,
    Running,
    NotYet,
}

struct Baseline {
    restart_count: i64,
    started_at: Option<String>,
}

/// Runs the gate on container `id`. Never fails itself: the evidence says whether it passed.
pub async fn gate(
    docker: &DockerClient,
    id: &str,
    spec: &HealthSpec,
    timeout: Duration,
    stable: Duration,
) -> HealthEvidence {
    let started = Instant::now();
    let mut ev = HealthEvidence {
        method: String::new(),
        passed: false,
        checks: 0,
        check_ms: 0,
        stable_ms: 0,
        detail: String::new(),
        last_output: None,
    };
    let first = match docker.inspect_id(id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            ev.method = spec.to_string();
            ev.detail = "the container no longer exists".into();
            return ev;
        }
        Err(e) => {
            ev.method = spec.to_string();
            ev.detail = format!("cannot inspect the container: {e}");
            return ev;
        }
    };
    let has_docker_check = has_healthcheck(&first);
    let method = match spec {
        HealthSpec::Auto if has_docker_check => HealthSpec::Docker,
        HealthSpec::Auto => HealthSpec::Running,
        other => other.clone(),
    };
    ev.method = match &method {
        HealthSpec::Http { .. } => "http".into(),
        HealthSpec::Tcp { .. } => "tcp".into(),
        m => m.to_string(),
    };
    if method == HealthSpec::Docker && !has_docker_check {
        ev.detail =
            "health check docker was asked for, but the container has no HEALTHCHECK".into();
        return ev;
    }
    if matches!(method, HealthSpec::Http { .. } | HealthSpec::Tcp { .. }) {
        let mode = first
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();
        if mode == "none" || mode.starts_with("container:") {
            ev.detail = format!(
                "an {} probe needs the container's own address, and network mode {mode} gives it \
                 none; use running or docker",
                ev.method
            );
            return ev;
        }
    }
    let base = baseline(&first);
    let deadline = started + timeout;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();

    // 1. The check itself.
    loop {
        ev.checks += 1;
        let c = match docker.inspect_id(id).await {
            Ok(Some(c)) => Some(c),
            Ok(None) => None,
            Err(e) => {
                ev.detail = format!("cannot inspect the container: {e}");
                ev.check_ms = ms(started.elapsed());
                return ev;
            }
        };
        let seen = judge(c.as_ref(), &base, method == HealthSpec::Docker);
        if let Some(c) = &c {
            if let Some(out) = last_health_output(c) {
                ev.last_output = Some(out);
            }
        }
        let passed = match seen {
            Seen::Gone => return fail(ev, started, "the container was removed"),
            Seen::Exited(how) => return fail(ev, started, &format!("the container {how}")),
            Seen::Restarted(how) => return fail(ev, started, &format!("the container {how}")),
            Seen::Unhealthy => {
                return fail(
                    ev,
                    started,
                    "the container's health check reported unhealthy",
                )
            }
            Seen::NotYet => false,
            Seen::Running => match &method {
                // `judge` says Running for a Docker check only once it reports healthy.
                HealthSpec::Running | HealthSpec::Docker | HealthSpec::Auto => true,
                HealthSpec::Http { port, path } => {
                    let addr = address(c.as_ref().expect("running implies present"));
                    match (&http, addr) {
                        (Ok(client), Some(ip)) => {
                            let url = format!("http://{}{path}", host_port(&ip, *port));
                            match client.get(&url).send().await {
                                Ok(r) => {
                                    let status = r.status();
                                    ev.last_output = Some(format!("GET {url} → {status}"));
                                    status.is_success() || status.is_redirection()
                                }
                                Err(e) => {
                                    ev.last_output = Some(truncate(&format!("GET {url}: {e}")));
                                    false
                                }
                            }
                        }
                        (Err(e), _) => {
                            return fail(ev, started, &format!("cannot build an HTTP client: {e}"))
                        }
                        (_, None) => {
                            ev.last_output = Some("the container has no IP address yet".into());
                            false
                        }
                    }
                }
                HealthSpec::Tcp { port } => {
                    match address(c.as_ref().expect("running implies present")) {
                        Some(ip) => {
                            let target = host_port(&ip, *port);
                            let r = tokio::time::timeout(
                                PROBE_TIMEOUT,
                                tokio::net::TcpStream::connect(&target),
                            )
                            .await;
                            match r {
                                Ok(Ok(_)) => {
                                    ev.last_output = Some(format!("connected to {target}"));
                                    true
                                }
                                Ok(Err(e)) => {
                                    ev.last_output = Some(format!("connect {target}: {e}"));
                                    false
                                }
                                Err(_) => {
                                    ev.last_output = Some(format!("connect {target}: timed out"));
                                    false
                                }
                            }
                        }
                        None => false,
                    }
                }
            },
        };
        if passed {
            break;
        }
        if Instant::now() >= deadline {
            let detail = format!(
                "the {} check did not pass within {} s",
                ev.method,
                timeout.as_secs()
            );
            return fail(ev, started, &detail);
        }
        tokio::time::sleep(POLL).await;
    }
    ev.check_ms = ms(started.elapsed());

    // 2. The stability window.
    let window_start = Instant::now();
    while window_start.elapsed() < stable {
        tokio::time::sleep(POLL.min(stable.saturating_sub(window_start.elapsed()))).await;
        let c = match docker.inspect_id(id).await {
            Ok(c) => c,
            Err(e) => {
                ev.stable_ms = ms(window_start.elapsed());
                ev.detail =
                    format!("cannot inspect the container during the stability window: {e}");
                return ev;
            }
        };
        let problem = match judge(c.as_ref(), &base, method == HealthSpec::Docker) {
            Seen::Gone => Some("was removed".to_string()),
            Seen::Exited(how) => Some(how),
            Seen::Restarted(how) => Some(how),
            Seen::Unhealthy => Some("became unhealthy".into()),
            Seen::Running | Seen::NotYet => None,
        };
        if let Some(p) = problem {
            ev.stable_ms = ms(window_start.elapsed());
            ev.detail = format!(
                "the {} check passed, then the container {p} {:.1} s into the {} s stability window",
                ev.method,
                window_start.elapsed().as_secs_f64(),
                stable.as_secs()
            );
            return ev;
        }
    }
    ev.stable_ms = ms(window_start.elapsed());
    ev.passed = true;
    ev.detail = format!(
        "the {} check passed after {:.1} s and the container stayed up for {} s",
        ev.method,
        ev.check_ms as f64 / 1000.0,
        stable.as_secs()
    );
    ev
}

fn fail(mut ev: HealthEvidence, started: Instant, why: &str) -> HealthEvidence {
    ev.check_ms = ms(started.elapsed());
    ev.detail = why.to_string();
    ev
}

fn judge(c: Option<&ContainerInspectResponse>, base: &Baseline, docker_check: bool) -> Seen {
    let Some(c) = c else { return Seen::Gone };
    let state = c.state.clone().unwrap_or_default();
    let status = state.status.unwrap_or(ContainerStateStatusEnum::EMPTY);
    if c.restart_count.unwrap_or(0) > base.restart_count
        || (base.started_at.is_some()
            && state.started_at != base.started_at
            && status != ContainerStateStatusEnum::CREATED)
    {
        return Seen::Restarted(restart_text(&state));
    }
    match status {
        ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => {
            let code = state.exit_code.unwrap_or(0);
            let how = if state.oom_killed == Some(true) {
                format!("was killed for running out of memory (exit code {code})")
            } else {
                format!("exited with code {code}")
            };
            Seen::Exited(how)
        }
        ContainerStateStatusEnum::RESTARTING => Seen::Restarted(restart_text(&state)),
        ContainerStateStatusEnum::RUNNING => {
            let health = state.health.as_ref().and_then(|h| h.status);
            if docker_check {
                match health {
                    Some(HealthStatusEnum::HEALTHY) => Seen::Running,
                    Some(HealthStatusEnum::UNHEALTHY) => Seen::Unhealthy,
                    _ => Seen::NotYet,
                }
            } else if health == Some(HealthStatusEnum::UNHEALTHY) {
                Seen::Unhealthy
            } else {
                Seen::Running
            }
        }
        _ => Seen::NotYet,
    }
}

fn restart_text(state: &bollard::models::ContainerState) -> String {
    match state.exit_code {
        Some(code) if code != 0 || state.oom_killed == Some(true) => {
            let oom = if state.oom_killed == Some(true) {
                ", out of memory"
            } else {
                ""
            };
            format!("exited with code {code}{oom} and was restarted")
        }
        _ => "restarted".to_string(),
    }
}

fn baseline(c: &ContainerInspectResponse) -> Baseline {
    let state = c.state.clone().unwrap_or_default();
    Baseline {
        restart_count: c.restart_count.unwrap_or(0),
        started_at: state
            .started_at
            .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
    }
}

/// Whether the container runs a Docker HEALTHCHECK (its own or its image's).
pub fn has_healthcheck(c: &ContainerInspectResponse) -> bool {
    let test = c
        .config
        .as_ref()
        .and_then(|cfg| cfg.healthcheck.as_ref())
        .and_then(|h| h.test.clone())
        .unwrap_or_default();
    !test.is_empty() && test.first().map(String::as_str) != Some("NONE")
}

fn last_health_output(c: &ContainerInspectResponse) -> Option<String> {
    c.state
        .as_ref()?
        .health
        .as_ref()?
        .log
        .as_ref()?
        .last()
        .and_then(|l| l.output.as_deref())
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(truncate)
}

/// Where the host reaches the container: its address on the first network that gave it one
/// (by name, for determinism); loopback for host networking.
fn address(c: &ContainerInspectResponse) -> Option<String> {
    let mode = c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .unwrap_or("");
    if mode == "host" {
        return Some("127.0.0.1".into());
    }
    let networks = c.network_settings.as_ref()?.networks.as_ref()?;
    let mut names: Vec<&String> = networks.keys().collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let ep = &networks[n];
        ep.ip_address
            .clone()
            .filter(|ip| !ip.is_empty())
            .or_else(|| ep.global_ipv6_address.clone().filter(|ip| !ip.is_empty()))
    })
}

fn host_port(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_OUTPUT_CHARS {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(MAX_OUTPUT_CHARS).collect();
        t.push('…');
        t
    }
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_for_probes() {
        assert_eq!(host_port("10.0.0.2", 80), "10.0.0.2:80");
        assert_eq!(host_port("fd00::2", 80), "[fd00::2]:80");
        assert_eq!(truncate("abc"), "abc");
        assert_eq!(
            truncate(&"x".repeat(600)).chars().count(),
            MAX_OUTPUT_CHARS + 1
        );
    }
}
