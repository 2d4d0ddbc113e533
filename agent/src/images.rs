//! Image pruning (issue 17 part 6): removes the images no container uses and no rollback needs,
//! on a schedule (`[images] prune_interval_secs`) and by the `image.prune` command (with a dry
//! run), and reports the bytes freed (the engine's layer storage before less after).
//!
//! Kept: every image a container uses (any container on the engine, visible or not), the image
//! each container ran before an update that finished in the last `keep_rollback_days` (a
//! rollback goes back to it), and for an unfinished update both its images and the reference
//! it updates to. The update path itself never removes an image. Which images are candidates at
//! all follows the containers' visibility (`flotilla.ignore`, `only_label`).

use crate::config::ImagesConfig;
use crate::docker::{DockerClient, LocalImage};
use crate::state::{RollbackImages, State};
use chrono::Utc;
use flotilla_shared::command::{error_codes, ErrorInfo};
use flotilla_shared::upkeep::{ImagePruneOutput, PrunedImage};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The pruning service; cheap to clone.
#[derive(Clone)]
pub struct Images {
    pub docker: DockerClient,
    pub state: State,
    pub config: ImagesConfig,
    /// One prune at a time.
    pub lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// What a prune decided, before it acts.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    remove: Vec<LocalImage>,
    /// Unused images kept, with why.
    kept: Vec<(LocalImage, String)>,
}

/// Why each image must stay for a rollback (image id → reason), and the references
/// unfinished updates are updating to.
fn rollback_keep(updates: &[RollbackImages]) -> (HashMap<String, String>, HashSet<String>) {
    let mut keep = HashMap::new();
    let mut targets = HashSet::new();
    for u in updates {
        let when = u.updated_at.format("%Y-%m-%d %H:%M UTC");
        if let Some(id) = &u.old_image_id {
            keep.entry(id.clone()).or_insert_with(|| {
                if u.finished {
                    format!("rollback image of {} (updated {when})", u.container)
                } else {
                    format!("previous image of {} (update in progress)", u.container)
                }
            });
        }
        if !u.finished {
            if let Some(id) = &u.new_image_id {
                keep.entry(id.clone()).or_insert_with(|| {
                    format!("new image of {} (update in progress)", u.container)
                });
            }
            if let Some(t) = &u.target {
                targets.insert(t.clone());
            }
        }
    }
    (keep, targets)
}

/// Images no container uses, split into removable ones and the ones a rollback needs.
fn plan(images: &[LocalImage], used: &HashSet<String>, updates: &[RollbackImages]) -> Plan {
    let (keep, targets) = rollback_keep(updates);
    let mut out = Plan::default();
    for i in images {
        if used.contains(&i.id) {
            continue;
        }
        if let Some(why) = keep.get(&i.id) {
            out.kept.push((i.clone(), why.clone()));
        } else if let Some(t) = i.tags.iter().find(|t| targets.contains(*t)) {
            out.kept.push((
                i.clone(),
                format!("{t}: an update in progress is updating to it"),
            ));
        } else {
            out.remove.push(i.clone());
        }
    }
    out
}

fn described(i: &LocalImage, kept_because: Option<String>, error: Option<String>) -> PrunedImage {
    PrunedImage {
        id: i.id.clone(),
        tags: i.tags.clone(),
        unique_bytes: i.unique_bytes(),
        kept_because,
        error,
    }
}

// === impl Images ===

impl Images {
    /// One prune (or, with `dry_run`, what it would remove).
    pub async fn prune(&self, dry_run: bool) -> Result<ImagePruneOutput, ErrorInfo> {
        let _one = self.lock.lock().await;
        let engine = |e: crate::docker::DockerError| ErrorInfo {
            code: e.code().into(),
            message: e.to_string(),
        };
        let usage = self.docker.image_usage().await.map_err(engine)?;
        let since = Utc::now() - chrono::Duration::days(i64::from(self.config.keep_rollback_days));
        let updates = self
            .state
            .rollback_images(since)
            .await
            .map_err(|e| ErrorInfo {
                code: error_codes::DOCKER.into(),
                message: format!("cannot read the update journal: {e:#}"),
            })?;
        let plan = plan(&usage.images, &usage.used, &updates);
        let kept = plan
            .kept
            .iter()
            .map(|(i, why)| described(i, Some(why.clone()), None))
            .collect();
        if dry_run {
            return Ok(ImagePruneOutput {
                dry_run,
                bytes_freed: plan.remove.iter().map(LocalImage::unique_bytes).sum(),
                removed: plan
                    .remove
                    .iter()
                    .map(|i| described(i, None, None))
                    .collect(),
                kept,
                failed: Vec::new(),
            });
        }
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for i in &plan.remove {
            match self.docker.remove_image(i).await {
                Ok(()) => removed.push(described(i, None, None)),
                Err(e) => failed.push(described(i, None, Some(e.to_string()))),
            }
        }
        let after = self.docker.layers_size().await.map_err(engine)?;
        let out = ImagePruneOutput {
            dry_run,
            removed,
            kept,
            failed,
            bytes_freed: usage.layers_size.saturating_sub(after),
        };
        info!(
            removed = out.removed.len(),
            kept_for_rollback = out.kept.len(),
            failed = out.failed.len(),
            bytes_freed = out.bytes_freed,
            "images pruned"
        );
        Ok(out)
    }

    /// Prunes every `prune_interval_secs` (the first one an interval after the start) until
    /// shutdown; does nothing when the interval is 0.
    pub async fn scheduler(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        if self.config.prune_interval_secs == 0 {
            shutdown.cancelled().await;
            return Ok(());
        }
        let every = Duration::from_secs(self.config.prune_interval_secs);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.prune(false).await {
                warn!(
                    error = e.message,
                    "scheduled image prune failed; trying again next time"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, tag: Option<&str>) -> LocalImage {
        LocalImage {
            id: id.into(),
            tags: tag.map(|t| vec![t.to_string()]).unwrap_or_default(),
            size: 100,
            shared_size: 30,
        }
    }

    fn update(name: &str, old: &str, new: &str, finished: bool) -> RollbackImages {
        RollbackImages {
            container: name.into(),
            finished,
            updated_at: "2026-12-07T10:00:00Z".parse().unwrap(),
            old_image_id: Some(old.into()),
            new_image_id: Some(new.into()),
            target: Some(format!("{name}:next")),
        }
    }

    #[test]
    fn used_and_rollback_images_stay_the_rest_goes() {
        let images = vec![
            image("sha256:used", Some("web:2")),
            image("sha256:old", Some("web:1")),
            image("sha256:junk", Some("junk:1")),
            image("sha256:dangling", None),
            image("sha256:pulled", Some("api:next")),
        ];
        let used: HashSet<String> = ["sha256:used".to_string()].into();
        let updates = vec![
            update("web", "sha256:old", "sha256:used", true),
            update("api", "sha256:api-old", "sha256:api-new", false),
        ];
        let p = plan(&images, &used, &updates);
        let removed: Vec<&str> = p.remove.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(removed, ["sha256:junk", "sha256:dangling"]);
        let kept: Vec<(&str, &str)> = p
            .kept
            .iter()
            .map(|(i, why)| (i.id.as_str(), why.as_str()))
            .collect();
        assert_eq!(kept.len(), 2);
        assert!(kept[0].0 == "sha256:old" && kept[0].1.contains("rollback image of web"));
        assert!(kept[1].0 == "sha256:pulled" && kept[1].1.contains("update in progress"));
        assert_eq!(p.remove[0].unique_bytes(), 70);
    }

    #[test]
    fn an_update_outside_the_window_protects_nothing() {
        let images = vec![image("sha256:old", Some("web:1"))];
        let p = plan(&images, &HashSet::new(), &[]);
        assert_eq!(p.remove.len(), 1);
    }
}
