//! The off-site settings the agent's `[backup]` and the relay's own `[backup]` share: where
//! copies go (`[[backup.destinations]]`, directory or S3-compatible) and the
//! grandfather-father-son retention policy. Each daemon keeps its own defaults for the rest.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Grandfather-father-son retention: the newest backup of each of the last `daily` days,
/// `weekly` ISO weeks and `monthly` months that have one is kept; the rest are removed after
/// a fully successful run, locally and at every destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            daily: 7,
            weekly: 4,
            monthly: 3,
        }
    }
}

/// Kind of an off-site destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationKind {
    /// A directory (a mounted disk or network share).
    Dir,
    /// S3-compatible object storage (AWS S3, Backblaze B2, Cloudflare R2, MinIO, ...).
    S3,
}

/// `[[backup.destinations]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Name used by jobs' `destinations` and in manifests.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DestinationKind,
    /// `dir`: the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `s3`: endpoint URL (`https://s3.eu-central-003.backblazeb2.com`,
    /// `https://<account>.r2.cloudflarestorage.com`); default AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `s3`: region (`auto` for R2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket (or directory); the agent adds `<agent name>/<job>/`.
    #[serde(default)]
    pub prefix: String,
    /// `s3`: file holding the access key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    /// `s3`: file holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// `s3`: path-style requests (`endpoint/bucket/key`) instead of virtual-hosted style.
    #[serde(default)]
    pub path_style: bool,
    /// `s3`: allow a plain http:// endpoint (tests, a MinIO on a private network).
    #[serde(default)]
    pub allow_http: bool,
    /// `s3`: objects larger than this are uploaded in parts of this size (5-64 MiB; two parts
    /// are held in memory during an upload). Default 8 MiB.
    #[serde(default = "default_part_size")]
    pub part_size_bytes: u64,
}

fn default_part_size() -> u64 {
    8 * 1024 * 1024
}
