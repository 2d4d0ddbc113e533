//! Off-site backup destinations against real storage: S3 through moto's server (an
//! S3-compatible server from PyPI, started per test on loopback) and a directory in a tempdir.
//! Without moto these tests fail, they never skip: scripts/test installs it with
//! `python3 -m pip install 'moto[server]'`.

use flotilla_agent::backup::config::{DestinationConfig, DestinationKind};
use flotilla_agent::backup::destination::{Destination, RemoteObject};
use flotilla_testkit::Poller;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const INSTALL_HINT: &str = "install moto with: python3 -m pip install 'moto[server]'";

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    async fn start() -> Moto {
        let probe = Command::new("python3")
            .args(["-c", "import moto.server"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
        assert!(
            probe.status.success(),
            "moto's server is not importable ({}); {INSTALL_HINT}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        let port = free_port();
        let log_dir = tempfile::tempdir().unwrap();
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto's server ({e}); {INSTALL_HINT}"));
        let mut moto = Moto {
            child,
            port,
            _log_dir: log_dir,
        };
        let client = reqwest::Client::new();
        let ready = Poller::new(Duration::from_secs(60));
        loop {
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto's server exited ({status}): {}\n{INSTALL_HINT}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if client.get(moto.url("")).send().await.is_ok() {
                break;
            }
            assert!(
                !ready.expired(),
                "moto's server did not answer within 60 s: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            ready.pause().await;
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.endpoint())
    }

    /// moto accepts an unsigned path-style `PUT /<bucket>`.
    async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .put(self.url(bucket))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "create bucket: {}",
            response.status()
        );
    }

    /// The ETag of an object, read without the code under test. moto refuses anonymous reads
    /// of private objects but does not check signatures, so any SigV4-shaped header will do.
    async fn etag(&self, bucket: &str, key: &str) -> String {
        let response = reqwest::Client::new()
            .head(self.url(&format!("{bucket}/{key}")))
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260301/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=00",
            )
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "HEAD {key}: {}",
            response.status()
        );
        response.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_string()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Deterministic, incompressible-looking bytes (xorshift).
fn pseudo_random_bytes(len: u64, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

fn sha256_file(path: &Path) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(path).unwrap(),
    ))
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// An s3 destination named `offsite` with credentials files in `dir`.
fn s3_config(dir: &Path, endpoint: &str, bucket: &str) -> DestinationConfig {
    DestinationConfig {
        name: "offsite".into(),
        kind: DestinationKind::S3,
        path: None,
        endpoint: Some(endpoint.into()),
        region: None,
        bucket: Some(bucket.into()),
        prefix: "backups/".into(),
        // Whitespace around the values, as editors leave it, is not part of them.
        access_key_id_file: Some(write_file(dir, "access_key_id", b"testing\n")),
        secret_access_key_file: Some(write_file(dir, "secret_access_key", b" testing \n")),
        path_style: true,
        allow_http: true,
        part_size_bytes: 5 * MIB,
    }
}

#[tokio::test]
async fn s3_single_and_multipart_uploads_download_list_and_delete() {
    let moto = Moto::start().await;
    moto.create_bucket("fleet-backups").await;
    let dir = tempfile::tempdir().unwrap();
    let destination =
        Destination::from_config(&s3_config(dir.path(), &moto.endpoint(), "fleet-backups"))
            .unwrap();
    assert_eq!((destination.name(), destination.kind()), ("offsite", "s3"));

    let small = write_file(dir.path(), "small.zst", &pseudo_random_bytes(1000, 1));
    let started = Instant::now();
    let location = destination
        .upload(&small, "host1/pg/pg-app-20260301T020000Z.pgdump.zst")
        .await
        .unwrap();
    eprintln!("single put: {:?}", started.elapsed());
    assert_eq!(
        location,
        "backups/host1/pg/pg-app-20260301T020000Z.pgdump.zst"
    );
    let etag = moto.etag("fleet-backups", &location).await;
    assert!(
        !etag.contains('-'),
        "a small file is one PUT, got ETag {etag}"
    );

    // 12 MiB in 5 MiB parts: three parts, the last one short.
    let large = write_file(dir.path(), "large.zst", &pseudo_random_bytes(12 * MIB, 2));
    let started = Instant::now();
    let large_location = destination
        .upload(&large, "host1/pg/pg-app-20260302T020000Z.pgdump.zst")
        .await
        .unwrap();
    eprintln!("multipart upload of 12 MiB: {:?}", started.elapsed());
    let etag = moto.etag("fleet-backups", &large_location).await;
    assert!(
        etag.ends_with("-3"),
        "expected a 3-part multipart ETag, got {etag}"
    );

    let other = write_file(dir.path(), "other.rdb.zst", b"redis");
    destination
        .upload(&other, "host1/redis/redis-20260301T020000Z.rdb.zst")
        .await
        .unwrap();

    // A location and a key name the same object.
    let restored = dir.path().join("restored/large.zst");
    std::fs::create_dir_all(restored.parent().unwrap()).unwrap();
    let started = Instant::now();
    let bytes = destination
        .download(&large_location, &restored)
        .await
        .unwrap();
    eprintln!("download of 12 MiB: {:?}", started.elapsed());
    assert_eq!(bytes, 12 * MIB);
    assert_eq!(sha256_file(&restored), sha256_file(&large));
    assert!(!dir.path().join("restored/large.zst.partial").exists());
    let restored_small = dir.path().join("restored/small.zst");
    destination
        .download(
            "host1/pg/pg-app-20260301T020000Z.pgdump.zst",
            &restored_small,
        )
        .await
        .unwrap();
    assert_eq!(sha256_file(&restored_small), sha256_file(&small));

    assert_eq!(
        destination.list("host1/pg").await.unwrap(),
        vec![
            RemoteObject {
                location: location.clone(),
                size: 1000
            },
            RemoteObject {
                location: large_location.clone(),
                size: 12 * MIB
            },
        ]
    );
    assert_eq!(destination.list("host1/").await.unwrap().len(), 3);
    assert_eq!(destination.list("").await.unwrap().len(), 3);
    assert!(destination.list("host1/p").await.unwrap().is_empty());
    assert!(destination.list("host2").await.unwrap().is_empty());

    destination.delete(&large_location).await.unwrap();
    // Retention may run again after a partial failure: deleting twice is fine.
    destination.delete(&large_location).await.unwrap();
    destination
        .delete("host1/pg/never-uploaded.zst")
        .await
        .unwrap();
    assert_eq!(
        destination.list("host1/pg").await.unwrap(),
        vec![RemoteObject {
            location,
            size: 1000
        }]
    );
    let e = destination
        .download(&large_location, &dir.path().join("gone.zst"))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(
        e.to_string()
            .starts_with("destination offsite (s3): download of"),
        "{e}"
    );
    assert!(!dir.path().join("gone.zst").exists());
    assert!(!dir.path().join("gone.zst.partial").exists());

    let e = destination
        .upload(&small, "host1/../escape.zst")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid key"), "{e}");
}

#[tokio::test]
async fn s3_settings_and_credentials_files_are_checked_with_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.secret_access_key_file = Some(dir.path().join("no-such-secret"));
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(
        e.starts_with("destination offsite (s3): cannot read secret_access_key_file")
            && e.contains("no-such-secret"),
        "{e}"
    );

    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.access_key_id_file = Some(write_file(dir.path(), "empty", b"\n"));
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(
        e.contains("access_key_id_file") && e.contains("empty"),
        "{e}"
    );

    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.access_key_id_file = None;
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("access_key_id_file: is required"), "{e}");

    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.allow_http = false;
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("endpoint") && e.contains("allow_http"), "{e}");

    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.part_size_bytes = MIB;
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("part_size_bytes"), "{e}");

    let mut config = s3_config(dir.path(), "http://127.0.0.1:9", "bucket");
    config.bucket = None;
    let e = Destination::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("bucket: is required"), "{e}");
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_naming_the_destination_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    // Bound and released: nothing listens there, so connections are refused.
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let destination =
        Destination::from_config(&s3_config(dir.path(), &endpoint, "bucket")).unwrap();
    let file = write_file(dir.path(), "dump.zst", b"dump");
    let started = Instant::now();
    let e = destination
        .upload(&file, "host1/pg/dump.zst")
        .await
        .unwrap_err()
        .to_string();
    let elapsed = started.elapsed();
    eprintln!("unreachable endpoint failed after {elapsed:?}: {e}");
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(
        e.starts_with("destination offsite (s3): upload of host1/pg/dump.zst failed:"),
        "{e}"
    );
    assert!(e.to_lowercase().contains("connect"), "{e}");
}

#[tokio::test]
async fn dir_destination_uploads_lists_downloads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nas");
    let config = DestinationConfig {
        name: "nas".into(),
        kind: DestinationKind::Dir,
        path: Some(root.clone()),
        endpoint: None,
        region: None,
        bucket: None,
        prefix: "/fleet/".into(),
        access_key_id_file: None,
        secret_access_key_file: None,
        path_style: false,
        allow_http: false,
        part_size_bytes: 16 * MIB,
    };
    let destination = Destination::from_config(&config).unwrap();
    assert_eq!((destination.name(), destination.kind()), ("nas", "dir"));

    let dump = write_file(dir.path(), "dump.zst", &pseudo_random_bytes(3 * MIB + 5, 3));
    // An unmounted share must not turn into a directory on the local disk.
    let e = destination
        .upload(&dump, "host1/pg/pg-app-20260301T020000Z.pgdump.zst")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a directory"), "{e}");
    assert!(!root.exists());
    std::fs::create_dir(&root).unwrap();

    let location = destination
        .upload(&dump, "host1/pg/pg-app-20260301T020000Z.pgdump.zst")
        .await
        .unwrap();
    let expected = root.join("fleet/host1/pg/pg-app-20260301T020000Z.pgdump.zst");
    assert_eq!(Path::new(&location), expected);
    assert_eq!(sha256_file(&expected), sha256_file(&dump));
    // Leftovers of an interrupted copy are not backups.
    std::fs::write(root.join("fleet/host1/pg/x.zst.partial"), b"half").unwrap();
    destination
        .upload(&dump, "host1/mysql/mysql-shop-20260301T020000Z.sql.zst")
        .await
        .unwrap();

    assert_eq!(
        destination.list("host1/pg").await.unwrap(),
        vec![RemoteObject {
            location: location.clone(),
            size: 3 * MIB + 5
        }]
    );
    assert_eq!(destination.list("").await.unwrap().len(), 2);
    assert!(destination.list("host2").await.unwrap().is_empty());

    let restored = dir.path().join("restored.zst");
    let bytes = destination.download(&location, &restored).await.unwrap();
    assert_eq!(bytes, 3 * MIB + 5);
    assert_eq!(sha256_file(&restored), sha256_file(&dump));

    // Locations outside the destination are refused, not followed.
    let outside = dump.display().to_string();
    let e = destination.delete(&outside).await.unwrap_err().to_string();
    assert!(e.starts_with("destination nas (dir): invalid key"), "{e}");
    assert!(dump.exists());
    let e = destination.delete("host1/../../x").await.unwrap_err();
    assert!(e.to_string().contains("invalid key"), "{e}");

    destination.delete(&location).await.unwrap();
    destination.delete(&location).await.unwrap();
    assert!(!expected.exists());
    assert!(destination.list("host1/pg").await.unwrap().is_empty());
    let e = destination
        .download("host1/pg/pg-app-20260301T020000Z.pgdump.zst", &restored)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");

    let e = destination
        .upload(&dir.path().join("missing.zst"), "host1/pg/missing.zst")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("destination nas (dir): upload of host1/pg/missing.zst failed")
            && e.contains("missing.zst"),
        "{e}"
    );
}

/// A scripted HTTP/1.1 server on loopback: answers each request with `answer(method, target)`
/// and records the requests' first lines.
struct FakeS3 {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

type Answer = (u16, Vec<(&'static str, String)>, String);

impl FakeS3 {
    async fn start(answer: impl Fn(&str, &str, usize) -> Answer + Send + Sync + 'static) -> FakeS3 {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let answer = std::sync::Arc::new(answer);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (answer, recorded) = (answer.clone(), recorded.clone());
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut first = String::new();
                        if stream.read_line(&mut first).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut line = String::new();
                            stream.read_line(&mut line).await.unwrap();
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap();
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        stream.read_exact(&mut body).await.unwrap();
                        let mut parts = first.split_whitespace();
                        let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
                        let seen = {
                            let mut requests = recorded.lock().unwrap();
                            requests.push(format!("{method} {target}"));
                            requests
                                .iter()
                                .filter(|r| r.starts_with(&format!("{method} ")))
                                .count()
                        };
                        let (status, headers, body) = answer(method, target, seen);
                        let mut response = format!("HTTP/1.1 {status} X\r\n");
                        for (name, value) in &headers {
                            response.push_str(&format!("{name}: {value}\r\n"));
                        }
                        if !headers.iter().any(|(n, _)| *n == "content-length") {
                            response.push_str(&format!("content-length: {}\r\n", body.len()));
                        }
                        response.push_str("\r\n");
                        if method != "HEAD" {
                            response.push_str(&body);
                        }
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeS3 {
            port,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeS3 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let server = FakeS3::start(|method, _, seen| match method {
        // Two 503s, then success: within the three retries.
        "PUT" if seen <= 2 => (503, vec![], "<Error><Code>SlowDown</Code></Error>".into()),
        "PUT" => (200, vec![("etag", "\"e\"".into())], String::new()),
        "HEAD" => (200, vec![("content-length", "4".into())], String::new()),
        _ => (500, vec![], String::new()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let destination =
        Destination::from_config(&s3_config(dir.path(), &endpoint, "bucket")).unwrap();
    let file = write_file(dir.path(), "dump.zst", b"dump");
    destination
        .upload(&file, "host1/pg/dump.zst")
        .await
        .unwrap();
    assert_eq!(
        server.requests(),
        [
            "PUT /bucket/backups/host1/pg/dump.zst",
            "PUT /bucket/backups/host1/pg/dump.zst",
            "PUT /bucket/backups/host1/pg/dump.zst",
            "HEAD /bucket/backups/host1/pg/dump.zst",
        ]
    );
}

#[tokio::test]
async fn a_failed_multipart_upload_is_aborted_and_a_short_copy_is_refused() {
    let server = FakeS3::start(|method, target, _| match method {
        "POST" => (
            200,
            vec![],
            "<InitiateMultipartUploadResult><UploadId>u-1</UploadId></InitiateMultipartUploadResult>"
                .into(),
        ),
        "PUT" if target.contains("partNumber=2") => (
            403,
            vec![],
            "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".into(),
        ),
        "PUT" => (200, vec![("etag", "\"e\"".into())], String::new()),
        "DELETE" => (204, vec![], String::new()),
        // A store that kept fewer bytes than were sent.
        "HEAD" => (200, vec![("content-length", "3".into())], String::new()),
        _ => (500, vec![], String::new()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let destination =
        Destination::from_config(&s3_config(dir.path(), &endpoint, "bucket")).unwrap();
    let large = write_file(dir.path(), "large.zst", &pseudo_random_bytes(11 * MIB, 4));
    let e = destination
        .upload(&large, "host1/pg/large.zst")
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "destination offsite (s3): upload of host1/pg/large.zst failed: HTTP 403 Forbidden: \
         AccessDenied: Access Denied"
    );
    let requests = server.requests();
    assert_eq!(
        requests.last().map(String::as_str),
        Some("DELETE /bucket/backups/host1/pg/large.zst?uploadId=u-1"),
        "{requests:?}"
    );

    let small = write_file(dir.path(), "small.zst", b"dump");
    let e = destination
        .upload(&small, "host1/pg/small.zst")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("stored size 3 bytes differs from local size 4 bytes"),
        "{e}"
    );
}
