//! The real `flotilla-relay` binary under a stand-in for systemd's notification socket: a unix
//! datagram socket this test binds and names in `NOTIFY_SOCKET`, with `WATCHDOG_USEC` set as
//! `WatchdogSec=` would. The relay must say `READY=1` once serving, feed the watchdog at half
//! the timeout, and say `STOPPING=1` after SIGTERM (what `systemctl stop` sends).

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Kills the relay if the test fails before stopping it.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next datagram, or `None` once `deadline` passes.
fn next_message(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let mut buf = [0u8; 4096];
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("reading the notification socket: {e}"),
    }
}

/// Reads datagrams until one has the line `line`; returns every message read, that one last.
fn wait_for_line(socket: &UnixDatagram, line: &str, deadline: Instant) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match next_message(socket, deadline) {
            Some(m) => {
                let done = m.lines().any(|l| l == line);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            None => panic!("no {line} before the deadline; got {seen:?}"),
        }
    }
}

#[test]
fn relay_reports_ready_feeds_the_watchdog_and_reports_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let data_dir = dir.path().join("data");

    let child = Command::new(env!("CARGO_BIN_EXE_flotilla-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "500000")
        .env_remove("WATCHDOG_PID")
        .env_remove("FLOTILLA_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("flotilla-relay starts");
    let mut relay = Relay(child);

    // READY=1 (with a status line) once the listener is bound and the store open.
    let before_ready = wait_for_line(&socket, "READY=1", Instant::now() + WAIT);
    let ready = before_ready.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=serving on 127.0.0.1:")),
        "{ready:?}"
    );
    assert!(
        data_dir.join("listen-addr").exists(),
        "READY=1 came before the relay was listening"
    );

    // The watchdog: every 250 ms (half of 500 ms); at least two within a couple of seconds.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(3);
    let mut pings = 0;
    while pings < 2 {
        let m = next_message(&socket, deadline)
            .unwrap_or_else(|| panic!("only {pings} WATCHDOG=1 within 3 s"));
        if m == "WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "two pings in {:?}: faster than half the timeout",
        started.elapsed()
    );

    // SIGTERM, like `systemctl stop`: STOPPING=1, then a clean exit.
    let status = Command::new("kill")
        .args(["-TERM", &relay.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    wait_for_line(&socket, "STOPPING=1", Instant::now() + WAIT);
    let exit = flotilla_testkit::Poller::new(WAIT)
        .every(Duration::from_millis(20))
        .until_blocking("the relay to exit after SIGTERM", || {
            relay.0.try_wait().unwrap()
        });
    assert!(exit.success(), "the relay exited with {exit}");
    // At most a watchdog ping already in flight follows STOPPING=1; nothing else does.
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let mut late = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        late.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        late.iter().all(|m| m == "WATCHDOG=1"),
        "unexpected messages after STOPPING=1: {late:?}"
    );
}
