//! Test fixtures shared by every end-to-end test: the static `flotilla-testapp` binary, the
//! container images built from it, a real local registry (`docker-registry`), and a check that
//! the Docker engine is reachable.
//!
//! Everything here is blocking (it shells out to `cargo` and `docker`); async tests call it from
//! `tokio::task::spawn_blocking`. Every function is idempotent and safe to call from several test
//! processes at once: builds are skipped when their inputs have not changed, and run under a file
//! lock when they must happen.
//!
//! The tests need a real engine: when it is missing they fail with a message saying so, never
//! skip.

mod db;
mod http;
mod lock;
mod python;
mod registry;
mod s3;
mod smtp;
pub mod systemd;
mod webhook;

pub use db::{
    ensure_db_image, DbContainer, DbEngine, DbImages, DB_BUILD_LABEL, DB_ENGINE_LABEL,
    MARIADB_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE,
};
pub use http::{http_get, http_request, wait_for_http_status, HttpResponse};
pub use registry::{start_registry, start_registry_with_auth, Registry};
pub use s3::{start_s3, S3Server};
pub use smtp::{start_smtp_sink, ReceivedMail, SmtpSink};
pub use webhook::{
    signature_is_valid, start_webhook_receiver, ReceivedRequest, Reply, WebhookReceiver,
};

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// Docker label on every test image, and so on every container made from one: `scripts/test`
/// removes leftover containers carrying it before a run.
pub const TEST_LABEL: &str = "flotilla.test";
/// Docker label holding a hash of everything an image was built from, so a current image is
/// never rebuilt.
pub const BUILD_LABEL: &str = "flotilla.testapp.build";
/// Repository of the test images.
pub const TESTAPP_REPO: &str = "flotilla-testapp";
/// Port the test application listens on inside its container.
pub const TESTAPP_PORT: u16 = 8080;

/// How long one fixture build may wait for another process's build to finish.
const BUILD_LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// The tags of the test images, all built from the same static testapp binary. Every image
/// carries the label `flotilla.testapp.variant=<tag>` and `ENV APP_VERSION=<tag>` (`v1`, `v2`,
/// ...), so a test can tell which image a container's defaults came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImages {
    /// `flotilla-testapp:v1`: healthy, reports version `v1`; no HEALTHCHECK.
    pub v1: String,
    /// `flotilla-testapp:v2`: the same, reporting version `v2`.
    pub v2: String,
    /// `flotilla-testapp:broken`: exits with status 1 about one second after starting.
    pub broken: String,
    /// `flotilla-testapp:v2-health`: v2 with a Docker HEALTHCHECK (every second) that passes.
    pub v2_health: String,
    /// `flotilla-testapp:v2-unhealthy`: the same HEALTHCHECK, but `/health` answers 500, so the
    /// container turns `unhealthy` about two seconds after it starts.
    pub v2_unhealthy: String,
    /// `flotilla-testapp:v2-crash-later`: turns healthy within about a second, then exits with
    /// status 3 four seconds after starting (inside an update's stability window).
    pub v2_crash_later: String,
    /// The static binary inside the images.
    pub binary: PathBuf,
    /// Hex sha256 of that binary.
    pub binary_sha256: String,
}

impl TestImages {
    /// A Docker health check `test` for containers of these images: the images have no shell,
    /// so the binary probes its own `/health` (`testapp --healthcheck` exits 0 or 1).
    pub fn healthcheck_cmd(&self) -> Vec<String> {
        ["CMD", "/testapp", "--healthcheck"]
            .map(String::from)
            .to_vec()
    }

    /// Every image tag, with the short tag (`v1`, `v2-health`, ...) it carries.
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("v1", &self.v1),
            ("v2", &self.v2),
            ("broken", &self.broken),
            ("v2-health", &self.v2_health),
            ("v2-unhealthy", &self.v2_unhealthy),
            ("v2-crash-later", &self.v2_crash_later),
        ]
    }
}

/// Starts a local registry (requiring these credentials when given) and pushes the test image
/// `variants` to it as `flotilla-testapp:<variant>` (v1 always, and it keeps its local tag; the
/// others exist only in the registry, so an update really pulls them). Returns the registry and
/// the registry reference of each variant. Blocking.
pub fn registry_with_variants(
    images: &TestImages,
    variants: &[&'static str],
    auth: Option<(&str, &str)>,
) -> anyhow::Result<(Registry, std::collections::HashMap<&'static str, String>)> {
    let registry = match auth {
        Some((user, password)) => start_registry_with_auth(user, password),
        None => start_registry(),
    }?;
    let mut wanted: Vec<&'static str> = vec!["v1"];
    wanted.extend(variants.iter().filter(|v| **v != "v1"));
    let mut refs = std::collections::HashMap::new();
    for variant in wanted {
        let (_, local) = images
            .all()
            .into_iter()
            .find(|(v, _)| *v == variant)
            .with_context(|| format!("no test image variant {variant}"))?;
        let repo_tag = format!("flotilla-testapp:{variant}");
        let reference = if variant == "v1" {
            registry.push(local, &repo_tag)
        } else {
            registry.push_remote_only(local, &repo_tag)
        }
        .with_context(|| format!("push {local}"))?;
        refs.insert(variant, reference);
    }
    Ok((registry, refs))
}

/// Docker label on every test image naming its variant (`v1`, `v2`, `v2-health`, ...): an image
/// default that must not survive an update to an image without it.
pub const VARIANT_LABEL: &str = "flotilla.testapp.variant";

/// The HEALTHCHECK of the images that have one: exec form (the images have no shell), every
/// second, unhealthy after two failed probes.
const HEALTHCHECK: &str =
    "HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/testapp\", \"--healthcheck\"]";

/// One image variant: its tag, the environment baked into it and whether it has a HEALTHCHECK.
struct ImageSpec {
    tag: &'static str,
    env: &'static [(&'static str, &'static str)],
    healthcheck: bool,
}

const IMAGE_SPECS: [ImageSpec; 6] = [
    ImageSpec {
        tag: "v1",
        env: &[("APP_VERSION", "v1")],
        healthcheck: false,
    },
    ImageSpec {
        tag: "v2",
        env: &[("APP_VERSION", "v2")],
        healthcheck: false,
    },
    ImageSpec {
        tag: "broken",
        env: &[
            ("APP_VERSION", "broken"),
            ("APP_EXIT_AFTER_SECS", "1"),
            ("APP_EXIT_CODE", "1"),
        ],
        healthcheck: false,
    },
    ImageSpec {
        tag: "v2-health",
        env: &[("APP_VERSION", "v2-health")],
        healthcheck: true,
    },
    ImageSpec {
        tag: "v2-unhealthy",
        env: &[("APP_VERSION", "v2-unhealthy"), ("APP_MODE", "unhealthy")],
        healthcheck: true,
    },
    ImageSpec {
        tag: "v2-crash-later",
        env: &[
            ("APP_VERSION", "v2-crash-later"),
            ("APP_EXIT_AFTER_SECS", "4"),
            ("APP_EXIT_CODE", "3"),
        ],
        healthcheck: true,
    },
];

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Where the testapp is built: its own target dir, so its static-linking RUSTFLAGS never
/// invalidate the main build cache.
fn testapp_target_dir() -> PathBuf {
    workspace_root().join("target").join("testapp")
}

/// Fails with a clear message when the Docker engine cannot be reached. The end-to-end tests
/// need a real engine and must fail, not skip, without one.
pub fn docker_available() -> anyhow::Result<()> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if host.is_empty() || host.starts_with("unix://") {
        let socket = host
            .strip_prefix("unix://")
            .unwrap_or("/var/run/docker.sock")
            .to_string();
        ping_unix_socket(Path::new(&socket)).with_context(|| {
            format!(
                "the Docker engine is not reachable at {socket}: the end-to-end tests need a \
                 running Docker engine (start dockerd, or set DOCKER_HOST)"
            )
        })?;
    }
    let version = docker(&["version", "--format", "{{.Server.Version}}"])
        .context("the docker CLI cannot talk to the engine: the end-to-end tests need it")?;
    if version.trim().is_empty() {
        bail!("the docker CLI reported no engine version: is the Docker engine running?");
    }
    Ok(())
}

fn ping_unix_socket(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot connect to {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    if !answer.starts_with("HTTP/1.") || !answer.ends_with("OK") {
        bail!(
            "unexpected answer to /_ping: {:?}",
            answer.lines().next().unwrap_or_default()
        );
    }
    Ok(())
}

/// Runs the docker CLI and returns its stdout; a non-zero exit becomes an error carrying stderr.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("cannot run the docker CLI (is it installed and on PATH?)")?;
    if !output.status.success() {
        bail!(
            "`docker {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// === impl testapp binary ===

/// Builds the static testapp binary unless it is newer than its sources, and returns its path.
pub fn testapp_binary() -> anyhow::Result<PathBuf> {
    let target_dir = testapp_target_dir();
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("cannot create {}", target_dir.display()))?;
    let binary = target_dir.join("x86_64-unknown-linux-gnu/release/flotilla-testapp");
    // Cargo would notice an up-to-date build by itself, but asking it costs a process start and
    // its build lock on every test; the stamp is touched after each successful build because
    // cargo leaves the binary's mtime alone when nothing changed.
    let stamp = target_dir.join("flotilla-testapp.stamp");
    if binary.exists() && !sources_newer_than(&stamp)? {
        return Ok(binary);
    }
    let _lock = lock::FileLock::acquire(&target_dir.join("build.lock"), BUILD_LOCK_TIMEOUT)?;
    if binary.exists() && !sources_newer_than(&stamp)? {
        return Ok(binary);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "flotilla-testapp",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // An outer cargo may have set these for its own build; they would override RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .output()
        .context("cannot run cargo to build flotilla-testapp")?;
    if !output.status.success() {
        bail!(
            "building the static flotilla-testapp failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if !binary.exists() {
        bail!("cargo succeeded but {} does not exist", binary.display());
    }
    std::fs::write(&stamp, b"").with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(binary)
}

/// Whether any input of the testapp build is newer than `stamp` (true when it is missing).
fn sources_newer_than(stamp: &Path) -> anyhow::Result<bool> {
    let Ok(stamp_time) = std::fs::metadata(stamp).and_then(|m| m.modified()) else {
        return Ok(true);
    };
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for input in [
        root.join("Cargo.toml"),
        root.join("Cargo.lock"),
        root.join("tests/testapp"),
    ] {
        newest = newest.max(newest_mtime(&input)?);
    }
    Ok(newest > stamp_time)
}

fn newest_mtime(path: &Path) -> anyhow::Result<SystemTime> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mut newest = meta.modified()?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            newest = newest.max(newest_mtime(&entry?.path())?);
        }
    }
    Ok(newest)
}

// === impl images ===

/// Builds (when missing or out of date) the test images `flotilla-testapp:v1`, `:v2`, `:broken`,
/// `:v2-health`, `:v2-unhealthy` and `:v2-crash-later`, all `FROM scratch` holding only the
/// static testapp binary, and returns their tags.
pub fn ensure_test_images() -> anyhow::Result<TestImages> {
    docker_available()?;
    let binary = testapp_binary()?;
    let bytes =
        std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let binary_sha256 = sha256_hex(&bytes);

    let wanted: Vec<(String, String, String)> = IMAGE_SPECS
        .iter()
        .map(|spec| {
            let tag = format!("{TESTAPP_REPO}:{}", spec.tag);
            let dockerfile = dockerfile(spec);
            let build_id = sha256_hex(format!("{binary_sha256}\n{dockerfile}").as_bytes());
            (tag, dockerfile, build_id)
        })
        .collect();

    let current = |tag: &str, build_id: &str| image_build_id(tag).as_deref() == Some(build_id);
    if !wanted.iter().all(|(tag, _, id)| current(tag, id)) {
        let _lock = lock::FileLock::acquire(
            &testapp_target_dir().join("images.lock"),
            BUILD_LOCK_TIMEOUT,
        )?;
        // The builds are independent and each mostly waits on the engine: run them at once.
        std::thread::scope(|scope| {
            let builds: Vec<_> = wanted
                .iter()
                .filter(|(tag, _, build_id)| !current(tag, build_id))
                .map(|(tag, dockerfile, build_id)| {
                    let binary = &binary;
                    scope.spawn(move || build_image(binary, tag, dockerfile, build_id))
                })
                .collect();
            builds
                .into_iter()
                .try_for_each(|b| b.join().expect("image build thread panicked"))
        })?;
    }
    let tag = |i: usize| wanted[i].0.clone();
    Ok(TestImages {
        v1: tag(0),
        v2: tag(1),
        broken: tag(2),
        v2_health: tag(3),
        v2_unhealthy: tag(4),
        v2_crash_later: tag(5),
        binary,
        binary_sha256,
    })
}

fn dockerfile(spec: &ImageSpec) -> String {
    let mut text = String::from("FROM scratch\nCOPY testapp /testapp\n");
    for (key, value) in spec.env {
        text.push_str(&format!("ENV {key}={value}\n"));
    }
    text.push_str(&format!(
        "LABEL {TEST_LABEL}=1 {VARIANT_LABEL}={}\nEXPOSE {TESTAPP_PORT}\nENTRYPOINT [\"/testapp\"]\n",
        spec.tag
    ));
    if spec.healthcheck {
        text.push_str(HEALTHCHECK);
        text.push('\n');
    }
    text
}

/// The build id label of a local image, or None when the image does not exist.
fn image_build_id(tag: &str) -> Option<String> {
    let format = format!("{{{{index .Config.Labels \"{BUILD_LABEL}\"}}}}");
    docker(&["image", "inspect", "--format", &format, tag])
        .ok()
        .map(|s| s.trim().to_string())
}

fn build_image(binary: &Path, tag: &str, dockerfile: &str, build_id: &str) -> anyhow::Result<()> {
    let context = tempfile::Builder::new()
        .prefix("flotilla-testapp-image-")
        .tempdir()
        .context("cannot create a temporary build context")?;
    std::fs::copy(binary, context.path().join("testapp"))
        .context("cannot copy the testapp binary into the build context")?;
    std::fs::write(context.path().join("Dockerfile"), dockerfile)
        .context("cannot write the Dockerfile")?;
    let label = format!("{BUILD_LABEL}={build_id}");
    let context_dir = context.path().to_string_lossy().into_owned();
    // The classic builder: this machine's engine (20.10) has no buildx, and the image is two
    // layers of plain COPY, so BuildKit would bring nothing.
    let output = Command::new("docker")
        .args([
            "build",
            "--quiet",
            "--label",
            &label,
            "--tag",
            tag,
            &context_dir,
        ])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .context("cannot run docker build")?;
    if !output.status.success() {
        bail!(
            "`docker build` of {tag} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if image_build_id(tag).as_deref() != Some(build_id) {
        bail!("`docker build` of {tag} succeeded but the image does not carry the expected build label");
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// A name for a test container or resource that no other test process will pick.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfiles_differ_per_variant_and_label_test_containers() {
        let files: Vec<String> = IMAGE_SPECS.iter().map(dockerfile).collect();
        assert!(files[0].contains("ENV APP_VERSION=v1\n"));
        assert!(files[2].contains("ENV APP_EXIT_AFTER_SECS=1\n"));
        assert!(files
            .iter()
            .all(|f| f.contains("LABEL flotilla.test=1 flotilla.testapp.variant=")));
        assert!(files[0].contains("flotilla.testapp.variant=v1\n"));
        assert!(!files[0].contains("HEALTHCHECK"));
        assert!(files[3].contains("HEALTHCHECK --interval=1s"));
        assert!(files[4].contains("ENV APP_MODE=unhealthy\n"));
        assert!(files[5].contains("ENV APP_EXIT_AFTER_SECS=4\n"));
        let mut unique = files.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            files.len(),
            "every variant is a distinct image"
        );
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("c"), unique_name("c"));
    }
}
