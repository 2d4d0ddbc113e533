//! The CLI's HTTP client for the dashboard API: bearer auth, URL building, and turning the API's
//! `{"error": {"code", "message"}}` bodies into [`CliError`]s.

use flotilla_shared::api::{ErrorBody, NEXT_CURSOR_HEADER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long one API call may take, on top of any server-side wait it asked for.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything that ends the CLI with exit status 2: bad usage, an API error, an unreachable or
/// confused relay.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    /// The API answered with an error body; `message` is the API's sentence.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cannot reach the relay at {addr}: {reason}")]
    Transport { addr: String, reason: String },
    #[error("unexpected answer from the relay: {0}")]
    Decode(String),
}

/// A client of one relay's API (cheap to clone: the connection pool is shared).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl ApiClient {
    /// `addr` is the relay's base URL (`http://127.0.0.1:8700`; a bare `host:port` means http).
    pub fn new(addr: &str, token: Option<String>) -> Result<ApiClient, CliError> {
        ApiClient::with_ca_file(addr, token, None)
    }

    /// Like [`ApiClient::new`], also trusting the CA certificates of the PEM file `ca_file`
    /// (`--ca-file`) for an https relay, besides the system's roots.
    pub fn with_ca_file(
        addr: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<ApiClient, CliError> {
        let base = parse_base_url(addr)?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("flotilla-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            for cert in read_ca_file(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| match ca_file {
            Some(path) => CliError::Usage(format!(
                "--ca-file {}: cannot use its certificates: {}",
                path.display(),
                error_chain(&e)
            )),
            None => CliError::Usage(format!("cannot set up the HTTP client: {e}")),
        })?;
        Ok(ApiClient {
            http,
            base,
            token: token.filter(|t| !t.trim().is_empty()),
        })
    }

    /// The URL of `segments` under the base URL; each segment is percent-encoded, so ids typed
    /// by the operator cannot escape their place in the path.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base URL checked to be http(s)")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.send(Method::GET, segments, query, None::<&()>, Duration::ZERO)
            .await
    }

    /// GET without a bearer token (`/healthz`).
    pub async fn get_public(&self, segments: &[&str]) -> Result<Value, CliError> {
        let url = self.url(segments, &[]);
        let request = self.http.get(url).timeout(REQUEST_TIMEOUT);
        self.finish(request).await
    }

    pub async fn post<B: Serialize>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        body: &B,
        server_wait: Duration,
    ) -> Result<Value, CliError> {
        self.send(Method::POST, segments, query, Some(body), server_wait)
            .await
    }

    pub async fn patch<B: Serialize>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<Value, CliError> {
        self.send(Method::PATCH, segments, &[], Some(body), Duration::ZERO)
            .await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.delete_with_query(segments, &[]).await
    }

    pub async fn delete_with_query(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.send(Method::DELETE, segments, query, None::<&()>, Duration::ZERO)
            .await
    }

    async fn send<B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
        server_wait: Duration,
    ) -> Result<Value, CliError> {
        let token = self.token()?;
        let mut request = self
            .http
            .request(method, self.url(segments, query))
            .bearer_auth(token)
            .timeout(REQUEST_TIMEOUT + server_wait);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.finish(request).await
    }

    fn token(&self) -> Result<&str, CliError> {
        self.token.as_deref().ok_or_else(|| {
            CliError::Usage(
                "no API token: pass --token or --token-file, or set FLOTILLA_TOKEN or \
                 FLOTILLA_TOKEN_FILE (the relay printed its admin token on first start and \
                 keeps it in <data-dir>/admin-token)"
                    .into(),
            )
        })
    }

    /// Opens the live event stream (`GET /api/v1/events/stream`) with `query`, resuming after
    /// `last_event_id`; `Ok(None)` when the relay answers 404 (it predates the stream). No
    /// overall timeout: the body is read for as long as the caller wants.
    pub async fn open_stream(
        &self,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<Option<reqwest::Response>, CliError> {
        let mut request = self
            .http
            .get(self.url(&["api", "v1", "events", "stream"], query))
            .bearer_auth(self.token()?)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request.send())
            .await
            .map_err(|_| CliError::Transport {
                addr: self.addr(),
                reason: "no answer to the event stream request".into(),
            })?
            .map_err(|e| CliError::Transport {
                addr: self.addr(),
                reason: error_chain(&e),
            })?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(Some(response))
    }

    fn addr(&self) -> String {
        self.base.to_string().trim_end_matches('/').to_string()
    }

    /// PUT of a streamed raw body of `len` bytes (`flotilla release publish`); `timeout` bounds
    /// the whole exchange.
    pub async fn put_body(
        &self,
        segments: &[&str],
        body: reqwest::Body,
        len: u64,
        timeout: Duration,
    ) -> Result<Value, CliError> {
        let request = self
            .http
            .put(self.url(segments, &[]))
            .bearer_auth(self.token()?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .timeout(timeout);
        self.finish(request).await
    }

    /// GET of a paginated list (`X-Next-Cursor`), following the cursor to the last page; the
    /// pages' arrays concatenated.
    pub async fn get_all_pages(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let token = self.token()?;
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let mut previous: Option<String> = None;
        loop {
            let mut q = query.to_vec();
            q.extend(cursor.take().map(|c| ("cursor", c)));
            let request = self
                .http
                .get(self.url(segments, &q))
                .bearer_auth(token)
                .timeout(REQUEST_TIMEOUT);
            let (value, headers) = self.finish_with_headers(request).await?;
            match value {
                Value::Array(items) => all.extend(items),
                other => {
                    let text = other.to_string();
                    return Err(CliError::Decode(format!(
                        "expected a list, got {}",
                        text.chars().take(200).collect::<String>()
                    )));
                }
            }
            let next = headers
                .get(NEXT_CURSOR_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            match next {
                None => return Ok(Value::Array(all)),
                // A relay that hands out the same cursor again would page for ever.
                Some(c) if Some(&c) == previous.as_ref() => {
                    return Err(CliError::Decode(format!(
                        "the relay gave the same next-page cursor twice ({c}); stopping"
                    )))
                }
                Some(c) => {
                    previous = Some(c.clone());
                    cursor = Some(c);
                }
            }
        }
    }

    async fn finish(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        Ok(self.finish_with_headers(request).await?.0)
    }

    async fn finish_with_headers(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(Value, reqwest::header::HeaderMap), CliError> {
        let response = request.send().await.map_err(|e| CliError::Transport {
            addr: self.base.to_string().trim_end_matches('/').to_string(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| CliError::Transport {
            addr: self.base.to_string(),
            reason: error_chain(&e),
        })?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        if text.trim().is_empty() {
            return Ok((Value::Null, headers));
        }
        let value = serde_json::from_str(&text)
            .map_err(|e| CliError::Decode(format!("{status} with a body that is not JSON: {e}")))?;
        Ok((value, headers))
    }
}

/// The token of `--token-file`: the file's content, trimmed; an error naming the file when it
/// cannot be read or holds nothing.
pub fn read_token_file(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "--token-file {}: cannot read it: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "--token-file {}: the file is empty",
            path.display()
        )));
    }
    Ok(token.to_string())
}

/// The CA certificates of `--ca-file` (PEM); an error naming the file when it cannot be read or
/// holds no PEM certificate.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, CliError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CliError::Usage(format!("--ca-file {}: cannot read it: {e}", path.display()))
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| {
        CliError::Usage(format!(
            "--ca-file {}: not a PEM file of CA certificates: {}",
            path.display(),
            error_chain(&e)
        ))
    })?;
    if certs.is_empty() {
        return Err(CliError::Usage(format!(
            "--ca-file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        )));
    }
    Ok(certs)
}

fn parse_base_url(addr: &str) -> Result<Url, CliError> {
    let addr = addr.trim();
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| CliError::Usage(format!("invalid relay address {addr:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(CliError::Usage(format!(
            "invalid relay address {addr:?}: expected http://host:port or https://host:port"
        )));
    }
    Ok(url)
}

/// The API's error sentence when the body is the documented error shape, else the status and
/// the start of whatever came back (a proxy's HTML page, say).
pub fn api_error(status: StatusCode, body: &str) -> CliError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => CliError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
        },
        Err(_) => {
            let snippet: String = body.trim().chars().take(200).collect();
            CliError::Api {
                status: status.as_u16(),
                code: "http".into(),
                message: if snippet.is_empty() {
                    format!("the relay answered {status}")
                } else {
                    format!("the relay answered {status}: {snippet}")
                },
            }
        }
    }
}

/// Reads an API answer as its typed form.
pub fn decode<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, CliError> {
    serde_json::from_value(value.clone()).map_err(|e| CliError::Decode(format!("{what}: {e}")))
}

/// reqwest's top-level message is "error sending request for url (...)", which repeats the
/// address already named; its causes say why ("tcp connect error: Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.len() > 1 && parts[0].starts_with("error sending request") {
        parts.remove(0);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_queries() {
        let c = ApiClient::new("127.0.0.1:8700", Some("t".into())).unwrap();
        assert_eq!(
            c.url(&["api", "v1", "agents", "a/b c"], &[]).as_str(),
            "http://127.0.0.1:8700/api/v1/agents/a%2Fb%20c"
        );
        assert_eq!(
            c.url(&["api", "v1", "agents"], &[("selector", "a=b,!c".into())])
                .as_str(),
            "http://127.0.0.1:8700/api/v1/agents?selector=a%3Db%2C%21c"
        );
        let prefixed = ApiClient::new("https://ops.example/flotilla/", None).unwrap();
        assert_eq!(
            prefixed.url(&["healthz"], &[]).as_str(),
            "https://ops.example/flotilla/healthz"
        );
        assert!(ApiClient::new("ftp://x", None).is_err());
    }

    #[test]
    fn api_errors_carry_the_api_message() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"unknown agent ag_1"}}"#,
        );
        assert_eq!(e.to_string(), "unknown agent ag_1");
        assert!(matches!(e, CliError::Api { status: 404, .. }));
        let e = api_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(
            e.to_string(),
            "the relay answered 502 Bad Gateway: <html>bad gateway</html>"
        );
    }

    #[tokio::test]
    async fn missing_token_is_a_usage_error() {
        let c = ApiClient::new("http://127.0.0.1:9", None).unwrap();
        let e = c.get(&["api", "v1", "agents"], &[]).await.unwrap_err();
        assert!(matches!(e, CliError::Usage(_)));
        assert!(e.to_string().contains("FLOTILLA_TOKEN"), "{e}");
    }

    #[tokio::test]
    async fn paginated_lists_follow_the_cursor_to_the_last_page() {
        use axum::extract::Query;
        use std::collections::HashMap;
        // Three pages: a, b (cursor p2), c (cursor p3), then no cursor.
        async fn pages(
            Query(q): Query<HashMap<String, String>>,
        ) -> (axum::http::HeaderMap, axum::Json<Value>) {
            assert_eq!(q.get("selector").map(String::as_str), Some("region=eu"));
            let mut headers = axum::http::HeaderMap::new();
            let (items, next) = match q.get("cursor").map(String::as_str) {
                None => (serde_json::json!(["a", "b"]), Some("p2")),
                Some("p2") => (serde_json::json!(["c"]), Some("p3")),
                Some("p3") => (serde_json::json!([]), None),
                Some(other) => panic!("unexpected cursor {other}"),
            };
            if let Some(n) = next {
                headers.insert(NEXT_CURSOR_HEADER, n.parse().unwrap());
            }
            (headers, axum::Json(items))
        }
        let app = axum::Router::new().route("/api/v1/agents", axum::routing::get(pages));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let c = ApiClient::new(&addr.to_string(), Some("t".into())).unwrap();
        let all = c
            .get_all_pages(
                &["api", "v1", "agents"],
                &[("selector", "region=eu".into())],
            )
            .await
            .unwrap();
        assert_eq!(all, serde_json::json!(["a", "b", "c"]));
    }
}
