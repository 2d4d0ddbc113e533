//! The systemd notification protocol (`sd_notify(3)`), spoken directly: no crate, no libsystemd.
//!
//! A unit with `Type=notify` starts the process with `NOTIFY_SOCKET` naming a unix datagram
//! socket — a path, or an abstract-namespace name written with a leading `@`. Each message is
//! one datagram of newline-separated `KEY=VALUE` assignments: `READY=1` once the service is up
//! (systemd holds `systemctl start` and ordered units until then), `STATUS=...` for
//! `systemctl status`, `WATCHDOG=1` to feed the watchdog and `STOPPING=1` when shutting down.
//! systemd learns the sender's pid from the kernel, so nothing else is needed.
//!
//! Every send is a no-op when `NOTIFY_SOCKET` is unset (run by hand, in tests, under Docker).
//! Sends go through tokio's reactor on a fresh, connected, non-blocking socket — never the
//! blocking pool, which long backups may fill — so a watchdog ping reflects the event loop
//! alone. A fresh socket per message also survives `systemctl daemon-reexec`, which re-creates
//! the notification socket.
//!
//! With `WatchdogSec=` systemd sets `WATCHDOG_USEC` (and `WATCHDOG_PID`, the process meant to
//! feed it); [`watchdog_interval`] returns half the timeout, the cadence `sd_watchdog_enabled(3)`
//! recommends. [`run_watchdog`] is the loop both binaries use: on every tick it runs a health
//! check bounded by the interval and feeds the watchdog only when the check passes, so a stuck
//! runtime or an unanswering store ends in systemd's restart rather than a silent hang.

use std::future::Future;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The environment variable naming systemd's notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog timeout in microseconds, set by systemd when the unit has `WatchdogSec=`.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid that should feed the watchdog; when set and not ours, the watchdog is not ours.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// How long one notification may wait for room in systemd's socket queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses a `NOTIFY_SOCKET` value: an absolute path, or `@name` for the abstract namespace.
pub fn parse_notify_socket(value: &str) -> io::Result<SocketAddr> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{NOTIFY_SOCKET}={value:?} {why}"),
        )
    };
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(invalid("names an empty abstract socket"));
        }
        abstract_addr(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(invalid(
            "is neither an absolute path nor an @abstract name (other transports are not supported)",
        ))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// Sends `state` (one or more `KEY=VALUE` lines) as a single datagram to `addr`.
pub async fn send_to(addr: &SocketAddr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.connect_addr(addr)?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::UnixDatagram::from_std(socket)?;
    let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(state.as_bytes()))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the notification socket stayed full",
            )
        })??;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

/// Sends `state` to the socket named by `socket` (a `NOTIFY_SOCKET` value). `Ok(false)` when
/// there is none (unset or empty), `Ok(true)` when sent.
pub async fn notify_with(socket: Option<&str>, state: &str) -> io::Result<bool> {
    match socket.filter(|s| !s.is_empty()) {
        None => Ok(false),
        Some(value) => {
            send_to(&parse_notify_socket(value)?, state).await?;
            Ok(true)
        }
    }
}

/// Sends `state` to systemd if this process runs under `Type=notify`: `Ok(false)` without a
/// `NOTIFY_SOCKET`, `Ok(true)` when sent.
pub async fn notify(state: &str) -> io::Result<bool> {
    let socket = std::env::var(NOTIFY_SOCKET).ok();
    notify_with(socket.as_deref(), state).await
}

/// [`notify`], logging a failure instead of returning it (systemd's notifications are advisory
/// to the process: failing to send one must not stop the service).
async fn notify_logged(state: &str) {
    match notify(state).await {
        Ok(true) => debug!(state = state.replace('\n', " "), "notified systemd"),
        Ok(false) => {}
        Err(e) => warn!(
            error = %e,
            state = state.replace('\n', " "),
            "cannot notify systemd"
        ),
    }
}

/// Tells systemd the service is up (`READY=1`), with a `STATUS=` line.
pub async fn ready(status: &str) {
    notify_logged(&format!("READY=1\nSTATUS={}", one_line(status))).await;
}

/// Tells systemd the service is shutting down (`STOPPING=1`).
pub async fn stopping() {
    notify_logged("STOPPING=1\nSTATUS=stopping").await;
}

/// Sets the line `systemctl status` shows (`STATUS=...`).
pub async fn status(status: &str) {
    notify_logged(&format!("STATUS={}", one_line(status))).await;
}

/// Feeds the watchdog (`WATCHDOG=1`).
pub async fn watchdog() {
    notify_logged("WATCHDOG=1").await;
}

/// A status text fit for one `STATUS=` line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// How often to feed the watchdog: half of `WATCHDOG_USEC`, or `None` when systemd runs no
/// watchdog for this process (unset, zero, unparsable, or `WATCHDOG_PID` names another one).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from explicit values: `usec` is `WATCHDOG_USEC`, `pid` is
/// `WATCHDOG_PID`, `our_pid` this process's id.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == our_pid => {}
            _ => return None,
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    // At least 1 ms, so a tiny timeout cannot become a busy loop.
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Feeds the watchdog every `interval` until `stop` is cancelled, but only on ticks where
/// `healthy` answers `true` within `interval`; a failed or slow check is logged and the ping
/// skipped, so systemd restarts a service that stays unhealthy for the whole `WatchdogSec=`.
///
/// The ticks come from the runtime's own timer: a blocked event loop sends nothing.
pub async fn run_watchdog<F, Fut>(interval: Duration, healthy: F, stop: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let socket = std::env::var(NOTIFY_SOCKET).ok();
    run_watchdog_with(socket, interval, healthy, stop).await;
}

/// [`run_watchdog`] feeding the socket named by `socket` (a `NOTIFY_SOCKET` value; `None` runs
/// the checks and sends nothing).
pub async fn run_watchdog_with<F, Fut>(
    socket: Option<String>,
    interval: Duration,
    mut healthy: F,
    stop: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let checked = tokio::select! {
            _ = stop.cancelled() => return,
            checked = tokio::time::timeout(interval, healthy()) => checked,
        };
        match checked {
            Ok(true) => {
                if let Err(e) = notify_with(socket.as_deref(), "WATCHDOG=1").await {
                    warn!(error = %e, "cannot feed the systemd watchdog");
                }
            }
            Ok(false) => warn!("health check failed; not feeding the systemd watchdog"),
            Err(_) => warn!(
                timeout_ms = interval.as_millis() as u64,
                "health check did not answer in time; not feeding the systemd watchdog"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram socket bound in a fresh temporary directory, as systemd binds its own.
    fn bound() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.to_str().unwrap().to_string())
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[tokio::test]
    async fn messages_arrive_as_single_datagrams() {
        let (_dir, socket, path) = bound();
        assert!(notify_with(Some(&path), "READY=1\nSTATUS=up")
            .await
            .unwrap());
        assert_eq!(recv(&socket), "READY=1\nSTATUS=up");
        assert!(notify_with(Some(&path), "WATCHDOG=1").await.unwrap());
        assert_eq!(recv(&socket), "WATCHDOG=1");
    }

    #[tokio::test]
    async fn helpers_send_the_documented_assignments() {
        let (_dir, socket, path) = bound();
        let addr = parse_notify_socket(&path).unwrap();
        send_to(&addr, &format!("READY=1\nSTATUS={}", one_line("a\nb")))
            .await
            .unwrap();
        assert_eq!(recv(&socket), "READY=1\nSTATUS=a b");
        send_to(&addr, "STOPPING=1\nSTATUS=stopping").await.unwrap();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=stopping");
    }

    #[tokio::test]
    async fn no_socket_is_a_no_op() {
        assert!(!notify_with(None, "READY=1").await.unwrap());
        assert!(!notify_with(Some(""), "READY=1").await.unwrap());
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody-listens");
        let err = notify_with(Some(path.to_str().unwrap()), "READY=1")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn abstract_sockets_are_supported() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("flotilla-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let value = format!("@{name}");
        let parsed = parse_notify_socket(&value).unwrap();
        assert_eq!(parsed.as_abstract_name(), Some(name.as_bytes()));
        assert!(parsed.as_pathname().is_none());
        assert!(notify_with(Some(&value), "READY=1").await.unwrap());
        assert_eq!(recv(&socket), "READY=1");
    }

    #[test]
    fn socket_values_are_parsed() {
        let p = parse_notify_socket("/run/systemd/notify").unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        for bad in ["@", "relative/path", "vsock:2:1234"] {
            let err = parse_notify_socket(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains(NOTIFY_SOCKET), "{err}");
        }
        // Longer than sun_path.
        let long = format!("/{}", "x".repeat(200));
        assert!(parse_notify_socket(&long).is_err());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout() {
        let f = watchdog_interval_from;
        assert_eq!(f(Some("500000"), None, 7), Some(Duration::from_millis(250)));
        assert_eq!(f(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(
            f(Some(" 30000000\n"), Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(f(Some("1"), None, 7), Some(Duration::from_millis(1)));
        // Not ours, not set, disabled or garbage: no watchdog.
        assert_eq!(f(Some("30000000"), Some("8"), 7), None);
        assert_eq!(f(Some("30000000"), Some("x"), 7), None);
        assert_eq!(f(None, None, 7), None);
        assert_eq!(f(None, Some("7"), 7), None);
        assert_eq!(f(Some("0"), None, 7), None);
        assert_eq!(f(Some("-5"), None, 7), None);
        assert_eq!(f(Some("30s"), None, 7), None);
    }

    #[tokio::test]
    async fn the_watchdog_is_fed_only_while_healthy() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_dir, socket, path) = bound();
        let stop = CancellationToken::new();
        let checks = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = checks.clone();
        // Healthy, unhealthy, never answering, in turn.
        let task = tokio::spawn(run_watchdog_with(
            Some(path),
            Duration::from_millis(20),
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n % 3 {
                        0 => true,
                        1 => false,
                        _ => std::future::pending().await,
                    }
                }
            },
            stop.clone(),
        ));
        flotilla_testkit::Poller::new(Duration::from_secs(10))
            .every(Duration::from_millis(10))
            .until("nine health checks (too few ran)", || async {
                (checks.load(Ordering::SeqCst) >= 9).then_some(())
            })
            .await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watchdog loop stops when cancelled")
            .unwrap();
        let total = checks.load(Ordering::SeqCst);
        socket.set_nonblocking(true).unwrap();
        let mut fed = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1");
            fed += 1;
        }
        assert!(fed >= 3, "fed {fed} times in {total} checks");
        assert!(
            fed <= total.div_ceil(3),
            "fed {fed} times in {total} checks"
        );
    }
}
