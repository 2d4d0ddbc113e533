//! flotilla-testapp: the tiny HTTP server that end-to-end tests run as a container image.
//!
//! Everything it does is set by environment variables, so one static binary serves as every test
//! image (`v1`, `v2`, `broken`, ...):
//!
//! - `APP_PORT` (default 8080): port to listen on (all interfaces).
//! - `APP_VERSION` (default "dev"): reported in the start line and by `GET /`.
//! - `APP_MODE` = `healthy` (default) | `unhealthy`: `GET /health` answers 200 `ok` or 500.
//! - `APP_EXIT_AFTER_SECS=N`: exit with `APP_EXIT_CODE` (default 1) after N seconds.
//! - `APP_START_DELAY_SECS=N`: do not listen until N seconds after start.
//! - `APP_LOG_LINES=N`: print `testapp line <i>` for i in 1..=N to stdout at start.
//! - `APP_ALLOC_MB=N`: touch N MiB of memory at start and keep it (run with a smaller memory
//!   limit to get the container OOM-killed).
//! - `APP_DATA_FILE=/path`: append `<version> started` to that file at start (a file in a volume
//!   then records every container that ran on it; the images have no shell to write one).
//!
//! `testapp --healthcheck` asks `127.0.0.1:$APP_PORT/health` and exits 0 (healthy) or 1, for use
//! as a Docker HEALTHCHECK in images that have no shell or curl.
//!
//! Run under a file name containing `flotilla-agent`, the binary is instead a broken agent
//! build for the self-update tests (see [`fake_agent`]): `--version` prints `flotilla-agent
//! <version>`, anything else exits 1 at once.
//!
//! The process is PID 1 in its container, and the kernel delivers no signal to PID 1 for which it
//! has not installed a handler: without one, `docker stop` would wait out its whole timeout and
//! then SIGKILL. So SIGTERM and SIGINT are handled (through `signal-hook`, since std alone cannot
//! install signal handlers) and end the process promptly with status 0.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long a client may take to send its request head or read the answer.
const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted; tests only ever send tiny GETs.
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

#[derive(Clone, Debug)]
struct Settings {
    port: u16,
    version: String,
    healthy: bool,
    exit_after_secs: Option<u64>,
    exit_code: u8,
    start_delay_secs: u64,
    log_lines: u64,
    alloc_mb: u64,
    data_file: Option<String>,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let mode = env_or("APP_MODE", "healthy");
        let healthy = match mode.as_str() {
            "healthy" => true,
            "unhealthy" => false,
            other => {
                return Err(format!(
                    "invalid APP_MODE {other:?}: expected healthy or unhealthy"
                ))
            }
        };
        Ok(Settings {
            port: env_parse("APP_PORT")?.unwrap_or(8080),
            version: env_or("APP_VERSION", "dev"),
            healthy,
            exit_after_secs: env_parse("APP_EXIT_AFTER_SECS")?,
            exit_code: env_parse("APP_EXIT_CODE")?.unwrap_or(1),
            start_delay_secs: env_parse("APP_START_DELAY_SECS")?.unwrap_or(0),
            log_lines: env_parse("APP_LOG_LINES")?.unwrap_or(0),
            alloc_mb: env_parse("APP_ALLOC_MB")?.unwrap_or(0),
            data_file: std::env::var("APP_DATA_FILE")
                .ok()
                .filter(|v| !v.is_empty()),
        })
    }

    fn mode(&self) -> &'static str {
        if self.healthy {
            "healthy"
        } else {
            "unhealthy"
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid {name} {v:?}: expected a non-negative integer")),
        _ => Ok(None),
    }
}

fn main() -> ExitCode {
    if let Some(code) = fake_agent() {
        return code;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("testapp: {e}");
            return ExitCode::from(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--healthcheck") => return healthcheck(settings.port),
        Some(other) => {
            eprintln!("testapp: unknown argument {other:?}: expected no argument or --healthcheck");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = install_signal_handlers() {
        eprintln!("testapp: cannot install signal handlers: {e}");
        return ExitCode::from(2);
    }
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testapp: {e}");
            ExitCode::from(2)
        }
    }
}

/// The version stamp of `flotilla_shared::release` (marker `FLOTILLA-VERSION-STAMP:` NUL, then 64
/// NUL-padded bytes), so `release::stamp_version` gives a copy of this binary a version exactly
/// as it does an agent build. The marker is written only here: the binary must hold it once.
#[used]
static VERSION_STAMP: [u8; 24 + 64] = {
    let mut buf = [0u8; 24 + 64];
    let marker = *b"FLOTILLA-VERSION-STAMP:\0";
    let mut i = 0;
    while i < marker.len() {
        buf[i] = marker[i];
        i += 1;
    }
    buf
};

/// A deliberately broken agent build, for the self-update tests: when the program's file name
/// contains `flotilla-agent` (as a staged, partially downloaded or installed agent binary's
/// does), `--version`
/// prints `flotilla-agent <stamped version>` (so an upgrading agent's smoke test passes) and
/// every other invocation exits with status 1 at once, like a build that crashes at start.
/// `None` under any other name (the test images run `/testapp`).
fn fake_agent() -> Option<ExitCode> {
    let argv0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    if !name.contains("flotilla-agent") {
        return None;
    }
    // black_box: read the bytes the file holds at run time, not the all-zero initial value.
    let stamp: &[u8; 24 + 64] = std::hint::black_box(&VERSION_STAMP);
    let slot = &stamp[24..];
    let len = slot.iter().position(|b| *b == 0).unwrap_or(slot.len());
    let version = String::from_utf8_lossy(&slot[..len]).into_owned();
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("flotilla-agent {version}");
        return Some(ExitCode::SUCCESS);
    }
    eprintln!("flotilla-agent {version} (flotilla-testapp posing as a broken agent build): exiting at start");
    Some(ExitCode::from(1))
}

fn install_signal_handlers() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                println!("testapp received {name}, exiting");
                std::process::exit(0);
            }
        })?;
    Ok(())
}

fn serve(settings: Settings) -> std::io::Result<()> {
    for i in 1..=settings.log_lines {
        println!("testapp line {i}");
    }
    if let Some(path) = &settings.data_file {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot open {path}: {e}")))?;
        writeln!(file, "{} started", settings.version)?;
        file.sync_all()?;
        println!("testapp recorded its start in {path}");
    }
    // Held until the process ends; every page is written so it really counts against the limit.
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for _ in 0..settings.alloc_mb {
        hoard.push(vec![0x5a; 1024 * 1024]);
    }
    if settings.alloc_mb > 0 {
        std::hint::black_box(&hoard);
        println!("testapp holding {} MiB", settings.alloc_mb);
    }
    if let Some(secs) = settings.exit_after_secs {
        let code = settings.exit_code;
        std::thread::Builder::new()
            .name("exit-timer".into())
            .spawn(move || {
                std::thread::sleep(Duration::from_secs(secs));
                println!("testapp exiting with code {code} after {secs}s as configured");
                std::process::exit(i32::from(code));
            })?;
    }
    if settings.start_delay_secs > 0 {
        println!(
            "testapp waiting {}s before listening",
            settings.start_delay_secs
        );
        std::thread::sleep(Duration::from_secs(settings.start_delay_secs));
    }
    let listener = TcpListener::bind(("0.0.0.0", settings.port))?;
    println!(
        "testapp {} listening on {}",
        settings.version,
        listener.local_addr()?.port()
    );
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            // A client that went away between SYN and accept is no reason to stop serving.
            Err(_) => continue,
        };
        let settings = settings.clone();
        std::thread::spawn(move || {
            // Errors here concern one client only (timeouts, resets); nothing to report.
            let _ = handle(stream, &settings);
        });
    }
    Ok(())
}

// === impl HTTP ===

fn handle(mut stream: TcpStream, settings: &Settings) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let request_line = head.lines().next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let (status, content_type, body) = route(method, path, settings);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

fn route(method: &str, path: &str, settings: &Settings) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            TEXT,
            "method not allowed\n".into(),
        );
    }
    match path {
        "/health" if settings.healthy => ("200 OK", TEXT, "ok".into()),
        "/health" => ("500 Internal Server Error", TEXT, "unhealthy".into()),
        "/" => (
            "200 OK",
            "application/json",
            format!(
                "{{\"version\":\"{}\",\"mode\":\"{}\"}}",
                json_escape(&settings.version),
                settings.mode()
            ),
        ),
        _ => ("404 Not Found", TEXT, "not found\n".into()),
    }
}

/// Reads up to the blank line that ends the request head (the body, if any, is ignored).
fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_HEAD_BYTES as u64));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let end = line == "\r\n" || line == "\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    Ok(head)
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

// === impl healthcheck ===

fn healthcheck(port: u16) -> ExitCode {
    match probe_health(port) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("testapp: /health did not answer 200");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("testapp: cannot reach 127.0.0.1:{port}/health: {e}");
            ExitCode::from(1)
        }
    }
}

fn probe_health(port: u16) -> std::io::Result<bool> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, CLIENT_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(CLIENT_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_IO_TIMEOUT))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    Ok(status_line.split_whitespace().nth(1) == Some("200"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(healthy: bool) -> Settings {
        Settings {
            port: 0,
            version: "v\"1".into(),
            healthy,
            exit_after_secs: None,
            exit_code: 1,
            start_delay_secs: 0,
            log_lines: 0,
            alloc_mb: 0,
            data_file: None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/health", &settings(true)).0, "200 OK");
        assert_eq!(
            route("GET", "/health", &settings(false)).0,
            "500 Internal Server Error"
        );
        let (status, _, body) = route("GET", "/", &settings(false));
        assert_eq!(status, "200 OK");
        assert_eq!(body, r#"{"version":"v\"1","mode":"unhealthy"}"#);
        assert_eq!(route("GET", "/nope", &settings(true)).0, "404 Not Found");
        assert_eq!(
            route("POST", "/health", &settings(true)).0,
            "405 Method Not Allowed"
        );
    }
}
