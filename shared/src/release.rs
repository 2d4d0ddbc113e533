//! Agent releases: the manifest the relay signs for every published agent build, the
//! architectures builds exist for, version ordering, and the version stamp that lets one compiled
//! binary carry a release version.
//!
//! A manifest travels as the exact JSON text that was signed (like commands), with domain prefix
//! [`RELEASE_DOMAIN`]. The same bytes are served at `/download/agent/<version>/<arch>/manifest`
//! (signature at `.../manifest.sig`, base64) so `install.sh` can check them with
//! `openssl pkeyutl -verify -rawin`.

use crate::signing::{PublicKey, SigningError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Domain prefix of a release manifest's signed bytes.
pub const RELEASE_DOMAIN: &[u8] = b"flotilla/release/v1\0";

/// Largest agent binary the relay accepts for publishing (and an agent downloads).
pub const MAX_RELEASE_BYTES: u64 = 64 * 1024 * 1024;

/// Architectures agent builds are published for, in the names `uname -m` prints on Linux.
pub const ARCHES: [&str; 2] = ["x86_64", "aarch64"];

/// The canonical architecture name for `uname -m` / Rust / Debian spellings
/// (`amd64` → `x86_64`, `arm64` → `aarch64`); `None` for anything else.
pub fn normalize_arch(s: &str) -> Option<&'static str> {
    match s.trim() {
        "x86_64" | "amd64" | "x86-64" => Some("x86_64"),
        "aarch64" | "arm64" => Some("aarch64"),
        _ => None,
    }
}

/// The architecture this binary was compiled for, canonical.
pub fn this_arch() -> &'static str {
    normalize_arch(std::env::consts::ARCH).unwrap_or(std::env::consts::ARCH)
}

/// The version name that resolves to the highest release that is not broken (a pre-release
/// only for an architecture without any release; see `store::releases::latest_of`).
pub const LATEST: &str = "latest";

message_error!(
    /// An architecture no agent build exists for (the message names the accepted ones).
    pub UnknownArch
);
message_error!(
    /// A file that is not an agent build for a known architecture.
    pub NotAnAgentBuild
);
message_error!(
    /// A release manifest that fails its sanity checks.
    pub InvalidManifest
);
message_error!(
    /// A string that is not a release version.
    pub InvalidVersion
);
message_error!(
    /// Why a binary could not be stamped with a version.
    pub StampError
);

/// The canonical architecture, or an error naming the accepted ones.
pub fn canonical_arch(arch: &str) -> Result<&'static str, UnknownArch> {
    canonical_arch_message(arch).map_err(UnknownArch)
}

fn canonical_arch_message(arch: &str) -> Result<&'static str, String> {
    normalize_arch(arch).ok_or_else(|| {
        format!(
            "unknown architecture {arch:?}: agent builds exist for {} (amd64 and arm64 are \
             accepted too)",
            ARCHES.join(" and ")
        )
    })
}

/// Bytes of an ELF header needed to tell its architecture.
pub const ELF_HEAD: usize = 20;

/// The architecture a 64-bit little-endian ELF executable is built for, from its first
/// [`ELF_HEAD`] bytes, or what is wrong with it.
pub fn elf_arch(head: &[u8]) -> Result<&'static str, NotAnAgentBuild> {
    elf_arch_message(head).map_err(NotAnAgentBuild)
}

fn elf_arch_message(head: &[u8]) -> Result<&'static str, String> {
    if head.len() < ELF_HEAD || &head[..4] != b"\x7fELF" {
        return Err("it is not an ELF executable (an agent build is a Linux binary)".into());
    }
    if head[4] != 2 || head[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF executable".into());
    }
    match u16::from_le_bytes([head[18], head[19]]) {
        62 => Ok("x86_64"),
        183 => Ok("aarch64"),
        m => Err(format!(
            "it is an ELF executable for machine type {m}, not {}",
            ARCHES.join(" or ")
        )),
    }
}

/// The arguments an operator gives `agent.upgrade` (`POST /api/v1/agents/{id}/commands` with
/// `{"kind": "agent.upgrade", "args": {"version": "0.2.0", "rollback": false}}`); the relay turns
/// them into the signed [`AgentUpgradeArgs`] for the agent's architecture.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// A published version, or `latest` (the highest one not broken for the agent's
    /// architecture).
    pub version: String,
    /// Allow a version older than the agent's (the only way an agent accepts one). The version
    /// the agent runs is refused either way.
    #[serde(default)]
    pub rollback: bool,
}

/// What the relay signs for one published build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    /// Always "flotilla-agent".
    pub name: String,
    pub version: String,
    /// Canonical architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Size of the binary in bytes.
    pub size: u64,
    /// SHA-256 of the binary, lower-case hex.
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

/// A manifest as signed: the exact JSON text and the base64 Ed25519 signature over
/// `RELEASE_DOMAIN || manifest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: String,
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("release manifest signature: {0}")]
    Signature(#[from] SigningError),
    #[error("release manifest is not valid: {0}")]
    Malformed(String),
}

impl SignedManifest {
    /// Checks the signature against `key`, then parses and sanity-checks the manifest.
    pub fn verify(&self, key: &PublicKey) -> Result<ReleaseManifest, ManifestError> {
        key.verify(RELEASE_DOMAIN, self.manifest.as_bytes(), &self.signature)?;
        let m: ReleaseManifest = serde_json::from_str(&self.manifest)
            .map_err(|e| ManifestError::Malformed(e.to_string()))?;
        m.validate()
            .map_err(|e| ManifestError::Malformed(e.into()))?;
        Ok(m)
    }
}

impl ReleaseManifest {
    pub fn validate(&self) -> Result<(), InvalidManifest> {
        self.check().map_err(InvalidManifest)
    }

    fn check(&self) -> Result<(), String> {
        if self.name != "flotilla-agent" {
            return Err(format!("name is {:?}, not \"flotilla-agent\"", self.name));
        }
        validate_version(&self.version)?;
        if normalize_arch(&self.arch) != Some(self.arch.as_str()) {
            return Err(format!(
                "arch {:?} is not one of {}",
                self.arch,
                ARCHES.join(", ")
            ));
        }
        if self.size == 0 || self.size > MAX_RELEASE_BYTES {
            return Err(format!(
                "size {} is not between 1 and {MAX_RELEASE_BYTES} bytes",
                self.size
            ));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err("sha256 must be 64 lower-case hex digits".into());
        }
        Ok(())
    }

    /// Signs this manifest: serialises it once and signs those bytes.
    pub fn sign(&self, key: &crate::signing::SigningKey) -> SignedManifest {
        let manifest = serde_json::to_string(self).expect("manifest serialises");
        let signature = key.sign(RELEASE_DOMAIN, manifest.as_bytes());
        SignedManifest {
            manifest,
            signature,
        }
    }
}

/// A release version: `MAJOR.MINOR.PATCH` with an optional `-pre.release` and `+build`, at most
/// 64 characters of `[0-9A-Za-z.+-]`, as semantic versioning writes them: numbers without
/// leading zeros (in the core and in numeric pre-release identifiers), no empty identifiers.
pub fn validate_version(v: &str) -> Result<(), InvalidVersion> {
    version_message(v).map_err(InvalidVersion)
}

fn version_message(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 {
        return Err("version must be 1-64 characters".into());
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
    {
        return Err(format!(
            "version {v:?} may only hold letters, digits, '.', '+' and '-'"
        ));
    }
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "version {v:?} must start with MAJOR.MINOR.PATCH (e.g. 1.4.2)"
        ));
    }
    if parts.iter().any(|p| leading_zero(p)) {
        return Err(format!(
            "version {v:?} has a number with a leading zero (write 1.2.3, not 01.02.03)"
        ));
    }
    if let Some(pre) = pre {
        for id in pre.split('.') {
            if id.is_empty() {
                return Err(format!("version {v:?} has an empty pre-release identifier"));
            }
            if id.bytes().all(|b| b.is_ascii_digit()) && leading_zero(id) {
                return Err(format!(
                    "version {v:?} has a numeric pre-release identifier with a leading zero \
                     ({id:?})"
                ));
            }
        }
    }
    if let Some(build) = build {
        if build.split('.').any(str::is_empty) || build.contains('+') {
            return Err(format!(
                "version {v:?} has an empty or malformed build identifier"
            ));
        }
    }
    Ok(())
}

/// `"0"` is a number, `"01"` one with a leading zero.
fn leading_zero(digits: &str) -> bool {
    digits.len() > 1 && digits.starts_with('0')
}

/// Whether a (valid) version is a pre-release (`1.2.0-rc.1`): `latest` prefers releases.
pub fn is_prerelease(v: &str) -> bool {
    v.split('+').next().unwrap_or(v).contains('-')
}

/// Semantic-version precedence: numeric core first, a pre-release sorts before its release,
/// pre-release identifiers compare numerically when both are numbers, build metadata is ignored.
/// Versions that do not parse compare as strings after every valid one.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> Option<(Vec<u64>, Option<&str>)> {
        validate_version(v).ok()?;
        let v = v.split('+').next().unwrap_or(v);
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        let nums = core
            .split('.')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some((nums, pre))
    }
    match (split(a), split(b)) {
        (Some((an, ap)), Some((bn, bp))) => an.cmp(&bn).then_with(|| match (ap, bp) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let mut xs = x.split('.');
                let mut ys = y.split('.');
                loop {
                    match (xs.next(), ys.next()) {
                        (None, None) => return Ordering::Equal,
                        (None, Some(_)) => return Ordering::Less,
                        (Some(_), None) => return Ordering::Greater,
                        (Some(p), Some(q)) => {
                            let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                                (Ok(m), Ok(n)) => m.cmp(&n),
                                (Ok(_), Err(_)) => Ordering::Less,
                                (Err(_), Ok(_)) => Ordering::Greater,
                                (Err(_), Err(_)) => p.cmp(q),
                            };
                            if o != Ordering::Equal {
                                return o;
                            }
                        }
                    }
                }
            }
        }),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// A published build as the API lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseInfo {
    pub version: String,
    pub arch: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Who published it (the API token's name).
    pub published_by: String,
    /// Set when the build is marked broken: it is never pushed again.
    pub broken: Option<BrokenInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BrokenInfo {
    pub at: DateTime<Utc>,
    pub reason: String,
    /// The agent whose automatic revert marked it, or the operator's token name.
    pub by: String,
}

/// `POST /api/v1/releases/{version}/{arch}/broken`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MarkBrokenRequest {
    pub reason: String,
}

// === version stamp ===

/// Marker that starts the version stamp inside a compiled binary. A release pipeline (and the
/// tests) can give one compiled binary a release version by overwriting the bytes after it
/// ([`stamp_version`]), without recompiling. Only used at compile time: the binary must hold
/// these bytes exactly once, in [`VERSION_STAMP`]; run-time code uses [`MASKED_MARKER`].
const STAMP_MARKER: [u8; 24] = *b"FLOTILLA-VERSION-STAMP:\0";
/// The marker XOR 0x5a, so searching for it does not put a second copy into the binary.
const MASKED_MARKER: [u8; 24] = {
    let mut m = STAMP_MARKER;
    let mut i = 0;
    while i < m.len() {
        m[i] ^= 0x5a;
        i += 1;
    }
    m
};
/// Bytes after the marker that hold the stamped version, NUL-padded.
pub const STAMP_LEN: usize = 64;

#[used]
static VERSION_STAMP: [u8; 24 + STAMP_LEN] = {
    let mut buf = [0u8; 24 + STAMP_LEN];
    let mut i = 0;
    while i < 24 {
        buf[i] = STAMP_MARKER[i];
        i += 1;
    }
    buf
};

/// The version this binary reports: the stamped one when the binary was stamped, else the
/// crate version it was compiled as.
pub fn version() -> &'static str {
    // black_box: the compiler must read the bytes the binary holds at run time, not the
    // all-zero value it saw when compiling.
    let stamp: &'static [u8; 24 + STAMP_LEN] = std::hint::black_box(&VERSION_STAMP);
    let slot = &stamp[24..];
    let len = slot.iter().position(|b| *b == 0).unwrap_or(STAMP_LEN);
    match std::str::from_utf8(&slot[..len]) {
        Ok(v) if len > 0 && validate_version(v).is_ok() => v,
        _ => crate::VERSION,
    }
}

/// Writes `version` into the stamp of a compiled binary (its bytes), so that it reports that
/// version. Fails when the binary holds no stamp, or more than one.
pub fn stamp_version(binary: &mut [u8], version: &str) -> Result<(), StampError> {
    stamp_message(binary, version).map_err(StampError)
}

fn stamp_message(binary: &mut [u8], version: &str) -> Result<(), String> {
    validate_version(version)?;
    let marker: Vec<u8> = MASKED_MARKER.iter().map(|b| b ^ 0x5a).collect();
    let positions: Vec<usize> = binary
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    let [at] = positions[..] else {
        return Err(format!(
            "the binary holds {} version stamps, not exactly one",
            positions.len()
        ));
    };
    let Some(slot) = binary.get_mut(at + marker.len()..at + marker.len() + STAMP_LEN) else {
        return Err("the version stamp is cut short".into());
    };
    slot.fill(0);
    slot[..version.len()].copy_from_slice(version.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SigningKey;

    #[test]
    fn versions_order_like_semver() {
        let ordered = [
            "0.1.0",
            "0.1.1-alpha",
            "0.1.1-alpha.2",
            "0.1.1-alpha.10",
            "0.1.1-beta",
            "0.1.1",
            "0.2.0",
            "0.10.0",
            "1.0.0",
        ];
        for w in ordered.windows(2) {
            assert_eq!(compare_versions(w[0], w[1]), Ordering::Less, "{w:?}");
            assert_eq!(compare_versions(w[1], w[0]), Ordering::Greater, "{w:?}");
        }
        assert_eq!(compare_versions("1.2.3+a", "1.2.3+b"), Ordering::Equal);
        assert!(validate_version("1.2").is_err());
        assert!(validate_version("1.2.x").is_err());
        assert!(validate_version("1.2.3;rm").is_err());
    }

    #[test]
    fn versions_are_semver_without_leading_zeros_or_empty_identifiers() {
        for ok in [
            "0.0.0",
            "0.1.0",
            "10.20.30",
            "1.0.0-0",
            "1.0.0-alpha.0",
            "1.0.0-0a",
            "1.0.0-rc.1+build.007",
            "1.0.0+20240101",
            "1.0.0-x-y.z",
        ] {
            assert_eq!(validate_version(ok), Ok(()), "{ok}");
        }
        for bad in [
            "01.0.0",
            "1.00.0",
            "1.0.007",
            "1.0.0-01",
            "1.0.0-alpha.01",
            "1.0.0-",
            "1.0.0-a..b",
            "1.0.0+",
            "1.0.0+a..b",
            "1.0.0+a+b",
        ] {
            assert!(validate_version(bad).is_err(), "{bad} accepted");
        }
        let e = validate_version("1.02.3").unwrap_err();
        assert!(e.contains("leading zero"), "{e}");
        assert!(is_prerelease("1.0.0-rc.1"));
        assert!(is_prerelease("1.0.0-rc.1+b-2"));
        assert!(!is_prerelease("1.0.0+b-2"));
        assert!(!is_prerelease("1.0.0"));
    }

    #[test]
    fn arch_names_normalise() {
        assert_eq!(normalize_arch("amd64"), Some("x86_64"));
        assert_eq!(normalize_arch("arm64"), Some("aarch64"));
        assert_eq!(normalize_arch("riscv64"), None);
    }

    #[test]
    fn manifests_verify_and_tampering_fails() {
        let key = SigningKey::generate();
        let m = ReleaseManifest {
            name: "flotilla-agent".into(),
            version: "0.2.0".into(),
            arch: "x86_64".into(),
            size: 10,
            sha256: "a".repeat(64),
            created_at: Utc::now(),
        };
        let signed = m.sign(&key);
        assert_eq!(signed.verify(&key.public_key()).unwrap(), m);
        let tampered = SignedManifest {
            manifest: signed.manifest.replace("0.2.0", "0.3.0"),
            ..signed.clone()
        };
        assert!(matches!(
            tampered.verify(&key.public_key()),
            Err(ManifestError::Signature(_))
        ));
        let other = SigningKey::generate();
        assert!(signed.verify(&other.public_key()).is_err());
    }

    #[test]
    fn stamping_changes_the_reported_version() {
        let mut fake = b"xxxx".to_vec();
        fake.extend_from_slice(&VERSION_STAMP);
        fake.extend_from_slice(b"yyyy");
        stamp_version(&mut fake, "9.8.7-rc.1").unwrap();
        let at = 4 + STAMP_MARKER.len();
        assert_eq!(fake.windows(24).filter(|w| *w == STAMP_MARKER).count(), 1);
        assert_eq!(&fake[at..at + 10], b"9.8.7-rc.1");
        assert_eq!(fake[at + 10], 0);
        assert!(stamp_version(&mut b"no stamp here".to_vec(), "1.0.0").is_err());
        assert!(stamp_version(&mut fake.clone(), "not a version").is_err());
        // Unstamped, the compiled version.
        assert_eq!(version(), crate::VERSION);
    }
}
