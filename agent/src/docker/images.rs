//! Engine calls image pruning needs (issue 17 part 6): every local image with its size, the
//! bytes only it holds, its labels and tags, which images any container on the engine uses
//! (visible or not: an image an invisible container runs is still in use), the engine's layer
//! storage, and removing one image without force (the engine refuses one a container uses).
//!
//! Image visibility follows the containers': an image labelled `flotilla.ignore=true` is never
//! offered, and an agent restricted by `only_label` sees only images carrying that label.

use super::ops::{enc, enc_image};
use super::{raw, DockerClient, DockerError};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// One local image as `/system/df` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalImage {
    pub id: String,
    /// `repo:tag` names (none for an untagged image).
    pub tags: Vec<String>,
    pub size: u64,
    /// Bytes it shares with other images.
    pub shared_size: u64,
}

impl LocalImage {
    /// Bytes only this image holds.
    pub fn unique_bytes(&self) -> u64 {
        self.size.saturating_sub(self.shared_size)
    }
}

/// What the engine holds: visible images, the image ids containers use, layer bytes.
#[derive(Clone, Debug, Default)]
pub struct ImageUsage {
    pub images: Vec<LocalImage>,
    pub used: HashSet<String>,
    pub layers_size: u64,
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0).max(0) as u64
}

impl DockerClient {
    /// Visible local images, the ids every container (of any visibility) uses, and the size
    /// of the engine's layer storage, from one `/system/df` and one container list.
    pub async fn image_usage(&self) -> Result<ImageUsage, DockerError> {
        let df = match self.raw("GET", "/system/df", None).await? {
            (200, v) => v,
            (s, v) => return Err(DockerError::Engine(raw::error_message(s, &v))),
        };
        let containers = match self.raw("GET", "/containers/json?all=1", None).await? {
            (200, v) => v,
            (s, v) => return Err(DockerError::Engine(raw::error_message(s, &v))),
        };
        let mut used: HashSet<String> = containers
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("ImageID").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let mut images = Vec::new();
        for i in df
            .get("Images")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = i.get("Id").and_then(Value::as_str) else {
                continue;
            };
            // The engine's own count covers containers created between the two calls.
            if i.get("Containers").and_then(Value::as_i64).unwrap_or(0) > 0 {
                used.insert(id.to_string());
            }
            let labels: HashMap<String, String> = i
                .get("Labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            if !self.visibility.allows(&labels) {
                continue;
            }
            let tags = i
                .get("RepoTags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|t| *t != "<none>:<none>")
                .map(str::to_string)
                .collect();
            images.push(LocalImage {
                id: id.to_string(),
                tags,
                size: u64_of(i, "Size"),
                shared_size: u64_of(i, "SharedSize"),
            });
        }
        Ok(ImageUsage {
            images,
            used,
            layers_size: u64_of(&df, "LayersSize"),
        })
    }

    /// The engine's layer storage in bytes (what a prune frees is measured with it).
    pub async fn layers_size(&self) -> Result<u64, DockerError> {
        match self.raw("GET", "/system/df", None).await? {
            (200, v) => Ok(u64_of(&v, "LayersSize")),
            (s, v) => Err(DockerError::Engine(raw::error_message(s, &v))),
        }
    }

    /// Removes an image without force: each of its tags, then (untagged) the image itself.
    /// The engine refuses an image a container uses (the error says which).
    pub async fn remove_image(&self, image: &LocalImage) -> Result<(), DockerError> {
        let mut refs: Vec<String> = image.tags.iter().map(|t| enc_image(t)).collect();
        if refs.is_empty() {
            refs.push(enc(&image.id));
        }
        for r in refs {
            match self.raw("DELETE", &format!("/images/{r}"), None).await? {
                (200, _) | (404, _) => {}
                (s, v) => {
                    return Err(DockerError::Engine(format!(
                        "cannot remove image {}: {}",
                        image.tags.first().unwrap_or(&image.id),
                        raw::error_message(s, &v)
                    )))
                }
            }
        }
        Ok(())
    }
}
