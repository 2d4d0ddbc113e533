//! A minimal HTTP/1.1 client for the Docker unix socket, used where the engine's JSON must pass
//! through untouched: bollard's typed models follow the newest API and silently drop fields an
//! older engine still uses (on API 1.41 the container's `Config.MacAddress`, for instance), and a
//! container re-created from a lossy copy of its configuration would not be the same container.
//!
//! One request per connection (`Connection: close`), bodies as JSON values; chunked responses
//! are decoded. Only `docker` uses this.

use super::DockerError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response accepted (an inspect document is a few KiB).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Where the engine's unix socket is, for a configured `docker_host` (None = local default).
/// None when the engine is reached over TCP.
pub fn socket_path(host: Option<&str>) -> Option<PathBuf> {
    let from_env = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
    match host.map(str::to_string).or(from_env) {
        None => Some(PathBuf::from("/var/run/docker.sock")),
        Some(h) => h.strip_prefix("unix://").map(PathBuf::from),
    }
}

/// Sends one request; returns the status code and the body parsed as JSON (Null when empty).
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), DockerError> {
    tokio::time::timeout(timeout, request_inner(socket, method, path, body))
        .await
        .map_err(|_| {
            DockerError::Engine(format!(
                "docker {method} {path} did not answer within {} s",
                timeout.as_secs()
            ))
        })?
}

async fn request_inner(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), DockerError> {
    let io = |e: std::io::Error| {
        DockerError::Engine(format!(
            "cannot talk to docker at {}: {e}",
            socket.display()
        ))
    };
    let mut stream = tokio::net::UnixStream::connect(socket).await.map_err(io)?;
    let body_bytes = match body {
        Some(b) => serde_json::to_vec(b)
            .map_err(|e| DockerError::Engine(format!("cannot encode request: {e}")))?,
        None => Vec::new(),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n");
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body_bytes.len()));
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    stream.write_all(&body_bytes).await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(DockerError::Engine(format!(
            "docker's answer to {method} {path} is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    let (status, body) = parse_response(&raw)
        .map_err(|e| DockerError::Engine(format!("bad answer from docker to {path}: {e}")))?;
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| {
            // Errors are sometimes plain text; keep them readable.
            serde_json::json!({ "message": String::from_utf8_lossy(&body).trim() })
        })
    };
    Ok((status, value))
}

/// Splits a complete HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
    }
}

/// The engine's error message in an error answer.
pub fn error_message(status: u16, body: &serde_json::Value) -> String {
    body.get("message")
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("docker answered HTTP {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (201, b"{\"a\":1}".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab")
                .is_err()
        );
    }

    #[test]
    fn socket_paths() {
        assert_eq!(
            socket_path(Some("unix:///run/d.sock")),
            Some(PathBuf::from("/run/d.sock"))
        );
        assert_eq!(socket_path(Some("tcp://10.0.0.1:2375")), None);
    }
}
