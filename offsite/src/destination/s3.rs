//! The S3 calls backups need (PutObject, the multipart upload calls, HeadObject, ranged
//! GetObject, DeleteObject, ListObjectsV2), signed with AWS Signature Version 4 and retried
//! on transient failures.

use super::{error_chain, RemoteObject};
use bytes::Bytes;
use flotilla_daemon::backoff::Backoff;
use reqwest::{Method, StatusCode};
use ring::{digest, hmac};
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::time::Duration;
use xml::{parse_list, xml_escape, xml_unescape, xml_value};

mod xml;

/// Retries of a request after a connection error, a timeout, a 5xx, 408 or 429. With the
/// backoff below an unreachable endpoint fails in at most 7 s (refused) or about 30 s
/// (black-holed: four connect timeouts).
const MAX_RETRIES: u32 = 3;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests that move data: a part, a ranged GET, and completing an upload (S3 may take
/// minutes over a large one). 16 MiB in 10 minutes is 28 KiB/s.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);
/// Requests that move only metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(60);
/// Error and upload-id answers are read up to this size.
const MAX_SMALL_ANSWER_BYTES: usize = 64 * 1024;
/// One page of a listing (at most 1000 keys of at most 1 KiB each, plus markup).
const MAX_LIST_ANSWER_BYTES: usize = 8 * 1024 * 1024;
/// SHA-256 of an empty body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Where requests go: the host (with the bucket in it for virtual-hosted style) and the
/// path of the bucket (`/<bucket>` for path style).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Target {
    scheme: String,
    host: String,
    bucket_path: String,
}

impl Target {
    pub(super) fn parse(
        endpoint: &str,
        bucket: &str,
        path_style: bool,
        allow_http: bool,
    ) -> Result<Target, String> {
        let url =
            reqwest::Url::parse(endpoint).map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => {
                return Err(format!(
                    "{endpoint:?} is plain http; set allow_http = true to allow it"
                ))
            }
            _ => return Err(format!("{endpoint:?} is not an http(s):// URL")),
        }
        if url.query().is_some() || !url.username().is_empty() {
            return Err(format!(
                "{endpoint:?} must not carry a query or credentials"
            ));
        }
        let host_name = url
            .host_str()
            .ok_or_else(|| format!("{endpoint:?} has no host"))?;
        let host = match url.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        let base = url.path().trim_end_matches('/');
        let (host, bucket_path) = if path_style {
            (host, format!("{base}/{}", uri_encode(bucket, true)))
        } else if host.starts_with(&format!("{bucket}.")) {
            (host, base.to_string())
        } else if host_name.parse::<std::net::IpAddr>().is_err() && !host_name.starts_with('[') {
            (format!("{bucket}.{host}"), base.to_string())
        } else {
            return Err(format!(
                "{endpoint:?} is an IP address, which has no virtual-hosted style; set \
                 path_style = true"
            ));
        };
        Ok(Target {
            scheme: url.scheme().to_string(),
            host,
            bucket_path,
        })
    }
}

/// Everything a client needs; built from the configuration without I/O.
#[derive(Clone)]
pub(super) struct Settings {
    pub target: Target,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub part_size_bytes: u64,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("target", &self.target)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("part_size_bytes", &self.part_size_bytes)
            .finish_non_exhaustive()
    }
}

/// A request body with its SHA-256, computed once (on a blocking thread for parts) however
/// often the request is retried.
pub(super) struct Payload {
    pub data: Bytes,
    sha256: String,
}

impl Payload {
    pub(super) fn new(data: Bytes) -> Payload {
        let sha256 = hex::encode(digest::digest(&digest::SHA256, &data));
        Payload { data, sha256 }
    }
}

pub(super) struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
}

/// A request that failed, after its retries.
#[derive(Debug)]
pub(super) struct Error {
    status: Option<StatusCode>,
    /// S3's error code (`NoSuchKey`, `AccessDenied`, ...), when the answer had one.
    code: Option<String>,
    message: String,
}

impl Error {
    /// The object (not the bucket) does not exist.
    pub(super) fn is_not_found(&self) -> bool {
        self.status == Some(StatusCode::NOT_FOUND)
            && self
                .code
                .as_deref()
                .is_none_or(|c| c == "NoSuchKey" || c == "NotFound")
    }

    fn protocol(message: &str) -> Error {
        Error {
            status: None,
            code: None,
            message: message.to_string(),
        }
    }

    async fn from_response(response: reqwest::Response, attempts: u32) -> Error {
        let status = response.status();
        let body = read_body(response, MAX_SMALL_ANSWER_BYTES)
            .await
            .unwrap_or_default();
        Error::from_answer(status, &body, attempts)
    }

    fn from_answer(status: StatusCode, body: &str, attempts: u32) -> Error {
        let code = xml_value(body, "Code").map(xml_unescape);
        let mut message = format!("HTTP {status}");
        if let Some(code) = &code {
            let _ = write!(message, ": {code}");
        }
        if let Some(text) = xml_value(body, "Message") {
            let _ = write!(message, ": {}", xml_unescape(text));
        }
        Error {
            status: Some(status),
            code,
            message: with_attempts(message, attempts),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn with_attempts(message: String, attempts: u32) -> String {
    if attempts > 1 {
        format!("{message} (after {attempts} attempts)")
    } else {
        message
    }
}

/// A transport error with its causes ("tcp connect error: Connection refused").
pub(super) fn transport_error(e: &reqwest::Error) -> String {
    error_chain(e)
}

struct Request<'a> {
    method: Method,
    /// `None`: the bucket itself.
    key: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    /// Sent and signed besides host, x-amz-date and x-amz-content-sha256.
    headers: Vec<(&'static str, String)>,
    body: Option<Payload>,
    timeout: Duration,
}

impl<'a> Request<'a> {
    fn new(method: Method, key: Option<&'a str>, timeout: Duration) -> Self {
        Request {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            timeout,
        }
    }
}

pub(super) struct Client {
    http: reqwest::Client,
    settings: Settings,
}

impl Client {
    /// Blocking: loads the system's TLS roots.
    pub(super) fn new(settings: Settings) -> Result<Client, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // Connections close soon after a backup rather than idling until the next.
            .pool_idle_timeout(Duration::from_secs(20))
            // A redirect would lose the signature; S3 only redirects to another region.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot create the HTTP client: {}", error_chain(&e)))?;
        Ok(Client { http, settings })
    }

    pub(super) async fn put_object(&self, key: &str, body: Payload) -> Result<(), Error> {
        let mut request = Request::new(Method::PUT, Some(key), TRANSFER_TIMEOUT);
        request.body = Some(body);
        self.send(&request).await.map(drop)
    }

    /// Returns the upload id.
    pub(super) async fn create_multipart_upload(&self, key: &str) -> Result<String, Error> {
        let mut request = Request::new(Method::POST, Some(key), METADATA_TIMEOUT);
        request.query.push(("uploads", String::new()));
        let response = self.send(&request).await?;
        let body = read_body(response, MAX_SMALL_ANSWER_BYTES).await?;
        xml_value(&body, "UploadId")
            .map(xml_unescape)
            .ok_or_else(|| Error::protocol("the answer to CreateMultipartUpload has no UploadId"))
    }

    /// Returns the part's ETag.
    pub(super) async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Payload,
    ) -> Result<String, Error> {
        let mut request = Request::new(Method::PUT, Some(key), TRANSFER_TIMEOUT);
        request.query.push(("partNumber", number.to_string()));
        request.query.push(("uploadId", upload_id.to_string()));
        request.body = Some(body);
        let response = self.send(&request).await?;
        response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| Error::protocol("the answer to UploadPart has no ETag"))
    }

    pub(super) async fn complete_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), Error> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (number, etag) in parts {
            let _ = write!(
                xml,
                "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag></Part>",
                xml_escape(etag)
            );
        }
        xml.push_str("</CompleteMultipartUpload>");
        let mut request = Request::new(Method::POST, Some(key), TRANSFER_TIMEOUT);
        request.query.push(("uploadId", upload_id.to_string()));
        request
            .headers
            .push(("content-type", "application/xml".to_string()));
        request.body = Some(Payload::new(Bytes::from(xml)));
        let response = self.send(&request).await?;
        // S3 may answer 200 and report a failure in the body (it starts answering early to
        // keep the connection alive while it assembles the parts).
        let status = response.status();
        let body = read_body(response, MAX_SMALL_ANSWER_BYTES).await?;
        if body.contains("<Error>") {
            return Err(Error::from_answer(status, &body, 1));
        }
        Ok(())
    }

    pub(super) async fn abort_multipart_upload(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), Error> {
        let mut request = Request::new(Method::DELETE, Some(key), METADATA_TIMEOUT);
        request.query.push(("uploadId", upload_id.to_string()));
        match self.send(&request).await {
            Ok(_) => Ok(()),
            Err(e) if e.code.as_deref() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn head(&self, key: &str) -> Result<ObjectMeta, Error> {
        let request = Request::new(Method::HEAD, Some(key), METADATA_TIMEOUT);
        let response = self.send(&request).await?;
        let headers = response.headers();
        // From the header: a HEAD answer's body, and so its size hint, is empty.
        let size = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::protocol("the answer to HeadObject has no Content-Length"))?;
        let etag = headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(ObjectMeta { size, etag })
    }

    /// The bytes `range` of an object, which must still have the ETag `if_match`. The caller
    /// reads the body and checks its length.
    pub(super) async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<reqwest::Response, Error> {
        let mut request = Request::new(Method::GET, Some(key), TRANSFER_TIMEOUT);
        request.headers.push((
            "range",
            format!("bytes={}-{}", range.start, range.end.saturating_sub(1)),
        ));
        if let Some(etag) = if_match {
            request.headers.push(("if-match", etag.to_string()));
        }
        self.send(&request).await
    }

    /// Deleting an object that does not exist succeeds.
    pub(super) async fn delete(&self, key: &str) -> Result<(), Error> {
        let request = Request::new(Method::DELETE, Some(key), METADATA_TIMEOUT);
        match self.send(&request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object whose key starts with `prefix`, page by page.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, Error> {
        let mut objects = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut request = Request::new(Method::GET, None, METADATA_TIMEOUT);
            request.query.push(("list-type", "2".to_string()));
            if !prefix.is_empty() {
                request.query.push(("prefix", prefix.to_string()));
            }
            if let Some(token) = continuation.take() {
                request.query.push(("continuation-token", token));
            }
            let response = self.send(&request).await?;
            let body = read_body(response, MAX_LIST_ANSWER_BYTES).await?;
            let (page, next) = parse_list(&body)?;
            objects.extend(page);
            match next {
                Some(token) => continuation = Some(token),
                None => return Ok(objects),
            }
        }
    }

    /// Signs and sends a request, retrying transient failures; returns a 2xx answer.
    async fn send(&self, request: &Request<'_>) -> Result<reqwest::Response, Error> {
        let target = &self.settings.target;
        let path = match request.key {
            Some(key) => format!("{}/{}", target.bucket_path, uri_encode(key, false)),
            None if target.bucket_path.is_empty() => "/".to_string(),
            None => target.bucket_path.clone(),
        };
        let mut query: Vec<(String, String)> = request
            .query
            .iter()
            .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        // Valueless parameters (`?uploads`) are sent bare, as S3's own clients do.
        let url_query = query
            .iter()
            .map(|(k, v)| match v.is_empty() {
                true => k.clone(),
                false => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("&");
        let url = match url_query.is_empty() {
            true => format!("{}://{}{path}", target.scheme, target.host),
            false => format!("{}://{}{path}?{url_query}", target.scheme, target.host),
        };
        let payload_sha256 = request
            .body
            .as_ref()
            .map_or(EMPTY_SHA256, |b| b.sha256.as_str());

        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            let mut headers: Vec<(String, String)> = vec![
                ("host".into(), target.host.clone()),
                ("x-amz-content-sha256".into(), payload_sha256.into()),
                ("x-amz-date".into(), amz_date.clone()),
            ];
            headers.extend(
                request
                    .headers
                    .iter()
                    .map(|(name, value)| (name.to_string(), value.clone())),
            );
            let authorization = authorization(
                &self.settings,
                request.method.as_str(),
                &path,
                &canonical_query,
                &mut headers,
                payload_sha256,
                &amz_date,
            );
            let mut builder = self
                .http
                .request(request.method.clone(), &url)
                .timeout(request.timeout)
                .header(reqwest::header::AUTHORIZATION, authorization);
            // reqwest derives Host from the URL, the same value as signed.
            for (name, value) in headers.iter().filter(|(name, _)| name != "host") {
                builder = builder.header(name.as_str(), value.as_str());
            }
            if let Some(body) = &request.body {
                builder = builder.body(body.data.clone());
            }
            let last = attempts > MAX_RETRIES;
            match builder.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let transient = status.is_server_error()
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status == StatusCode::REQUEST_TIMEOUT;
                    if !transient || last {
                        return Err(Error::from_response(response, attempts).await);
                    }
                    tracing::debug!(%status, attempts, "s3 request failed, retrying");
                }
                Err(e) if last || e.is_builder() => {
                    return Err(Error {
                        status: None,
                        code: None,
                        message: with_attempts(transport_error(&e), attempts),
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempts, "s3 request failed, retrying");
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// AWS Signature Version 4 (in the Authorization header) of one request. `headers` are
/// the lowercase names and values to sign, `host` among them; they are sorted here.
fn authorization(
    settings: &Settings,
    method: &str,
    path: &str,
    canonical_query: &str,
    headers: &mut [(String, String)],
    payload_sha256: &str,
    amz_date: &str,
) -> String {
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut canonical = format!("{method}\n{path}\n{canonical_query}\n");
    for (name, value) in headers.iter() {
        let _ = writeln!(canonical, "{name}:{}", value.trim());
    }
    let _ = write!(canonical, "\n{signed_headers}\n{payload_sha256}");
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", settings.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let secret = format!("AWS4{}", settings.secret_access_key);
    let signing_key = [date, settings.region.as_str(), "s3", "aws4_request"]
        .iter()
        .fold(
            hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            |key, part| {
                hmac::Key::new(
                    hmac::HMAC_SHA256,
                    hmac::sign(&key, part.as_bytes()).as_ref(),
                )
            },
        );
    let signature = hex::encode(hmac::sign(&signing_key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        settings.access_key_id
    )
}

/// S3's URI encoding: every byte but `A-Za-z0-9-_.~` (and `/` in paths) as `%XX`.
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

async fn read_body(mut response: reqwest::Response, max_bytes: usize) -> Result<String, Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error {
        status: None,
        code: None,
        message: transport_error(&e),
    })? {
        if body.len() + chunk.len() > max_bytes {
            return Err(Error::protocol(&format!(
                "the answer is larger than {max_bytes} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials and request of AWS's published Signature Version 4 examples for S3.
    fn example_settings() -> Settings {
        Settings {
            target: Target::parse("https://s3.amazonaws.com", "examplebucket", false, false)
                .unwrap(),
            region: "us-east-1".into(),
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            part_size_bytes: 16 << 20,
        }
    }

    fn check_signature(
        method: &str,
        path: &str,
        query: &str,
        extra_headers: &[(&str, &str)],
        payload_sha256: &str,
        expected_signature: &str,
    ) {
        let settings = example_settings();
        assert_eq!(settings.target.host, "examplebucket.s3.amazonaws.com");
        let amz_date = "20130524T000000Z";
        let mut headers = vec![
            ("host".to_string(), settings.target.host.clone()),
            ("x-amz-content-sha256".into(), payload_sha256.into()),
            ("x-amz-date".into(), amz_date.into()),
        ];
        headers.extend(
            extra_headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string())),
        );
        let header = authorization(
            &settings,
            method,
            path,
            query,
            &mut headers,
            payload_sha256,
            amz_date,
        );
        assert!(
            header.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
                 aws4_request, SignedHeaders="
            ),
            "{header}"
        );
        assert!(
            header.ends_with(&format!("Signature={expected_signature}")),
            "{method} {path}?{query}: {header}"
        );
    }

    #[test]
    fn signatures_match_aws_published_examples() {
        // GET Object with a Range header.
        check_signature(
            "GET",
            "/test.txt",
            "",
            &[("range", "bytes=0-9")],
            EMPTY_SHA256,
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        );
        // PUT Object: a key needing URI encoding, a payload hash, extra signed headers.
        check_signature(
            "PUT",
            &format!("/{}", uri_encode("test$file.text", false)),
            "",
            &[
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ],
            &hex::encode(digest::digest(&digest::SHA256, b"Welcome to Amazon S3.")),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        );
        // GET Bucket lifecycle: a valueless query parameter.
        check_signature(
            "GET",
            "/",
            "lifecycle=",
            &[],
            EMPTY_SHA256,
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        );
        // GET Bucket (list objects): sorted query parameters.
        check_signature(
            "GET",
            "/",
            "max-keys=2&prefix=J",
            &[],
            EMPTY_SHA256,
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        );
    }

    #[test]
    fn targets_for_path_and_virtual_hosted_style() {
        let t = |endpoint, path_style, allow_http| {
            Target::parse(endpoint, "bk", path_style, allow_http)
        };
        let b2 = t("https://s3.eu-central-003.backblazeb2.com/", true, false).unwrap();
        assert_eq!(
            (b2.host.as_str(), b2.bucket_path.as_str()),
            ("s3.eu-central-003.backblazeb2.com", "/bk")
        );
        let b2 = t("https://s3.eu-central-003.backblazeb2.com", false, false).unwrap();
        assert_eq!(
            (b2.host.as_str(), b2.bucket_path.as_str()),
            ("bk.s3.eu-central-003.backblazeb2.com", "")
        );
        let own = t("https://bk.example.com", false, false).unwrap();
        assert_eq!(own.host, "bk.example.com");
        let minio = t("http://127.0.0.1:9000/s3", true, true).unwrap();
        assert_eq!(
            (minio.host.as_str(), minio.bucket_path.as_str()),
            ("127.0.0.1:9000", "/s3/bk")
        );
        assert!(t("http://127.0.0.1:9000", true, false)
            .unwrap_err()
            .contains("allow_http"));
        assert!(t("https://127.0.0.1:9000", false, false)
            .unwrap_err()
            .contains("path_style"));
        assert!(t("s3.example.com", true, false).is_err());
        assert!(t("ftp://s3.example.com", true, false).is_err());
    }

    #[test]
    fn error_answers_name_status_code_and_message() {
        let body = "<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not \
                    exist</Message></Error>";
        let e = Error::from_answer(StatusCode::NOT_FOUND, body, 1);
        assert_eq!(
            e.to_string(),
            "HTTP 404 Not Found: NoSuchBucket: The specified bucket does not exist"
        );
        assert!(
            !e.is_not_found(),
            "a missing bucket is not a missing object"
        );
        let e = Error::from_answer(StatusCode::NOT_FOUND, "", 1);
        assert!(e.is_not_found());
        let e = Error::from_answer(StatusCode::SERVICE_UNAVAILABLE, "", 4);
        assert_eq!(
            e.to_string(),
            "HTTP 503 Service Unavailable (after 4 attempts)"
        );
    }
}
