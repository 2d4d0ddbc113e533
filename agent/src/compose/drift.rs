//! Drift: compose containers whose running image differs from what their project's files
//! declare (what the next `docker-compose up -d` would put back). Checked with every
//! heartbeat from one container list; a project's files are read again only when one of them
//! changed (size or modification time), so an idle agent only `stat`s a few small files.

use super::{normalize, Project, Workspace};
use flotilla_shared::compose::ComposeDrift;
use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

type Stamp = Vec<Option<(SystemTime, u64)>>;

struct Entry {
    stamp: Stamp,
    declared: Result<String, String>,
}

/// The declared images of the compose services seen, cached by their files' stamps.
#[derive(Default)]
pub struct DriftChecker {
    cache: HashMap<String, Entry>,
}

/// A running container: name, image reference, labels.
pub struct Running<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub labels: &'a HashMap<String, String>,
}

fn stamp(project: &Project) -> Stamp {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    project
        .config_files
        .iter()
        .map(|p| one(p))
        .chain(std::iter::once(one(&project.env_file())))
        .collect()
}

impl DriftChecker {
    /// The drifted (or unreadable) compose containers among `running`.
    pub fn check(&mut self, running: &[Running<'_>]) -> Vec<ComposeDrift> {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        for c in running {
            let Some(project) = Project::from_labels(|k| c.labels.get(k).cloned()) else {
                continue;
            };
            // An image the engine shows by id (its tag moved on) cannot be compared.
            if c.image.starts_with("sha256:") {
                continue;
            }
            let project = match project {
                Ok(p) => p,
                Err(e) => {
                    out.push(ComposeDrift {
                        container: c.name.to_string(),
                        project: c
                            .labels
                            .get(super::PROJECT_LABEL)
                            .cloned()
                            .unwrap_or_default(),
                        service: c
                            .labels
                            .get(super::SERVICE_LABEL)
                            .cloned()
                            .unwrap_or_default(),
                        running_image: c.image.to_string(),
                        declared_image: None,
                        problem: Some(e.into()),
                    });
                    continue;
                }
            };
            let key = format!(
                "{}\u{0}{}\u{0}{}\u{0}{:?}",
                project.name,
                project.service,
                project.working_dir.display(),
                project.config_files
            );
            let now = stamp(&project);
            let fresh = self.cache.get(&key).is_some_and(|e| e.stamp == now);
            if !fresh {
                let declared = Workspace::open(&project, None)
                    .and_then(|ws| ws.declared(&project.service))
                    .map(|d| d.image)
                    .map_err(String::from);
                self.cache.insert(
                    key.clone(),
                    Entry {
                        stamp: now,
                        declared,
                    },
                );
            }
            seen.push(key.clone());
            let entry = &self.cache[&key];
            let drift = match &entry.declared {
                Ok(d) if normalize(d) == normalize(c.image) => continue,
                Ok(d) => ComposeDrift {
                    container: c.name.to_string(),
                    project: project.name.clone(),
                    service: project.service.clone(),
                    running_image: c.image.to_string(),
                    declared_image: Some(d.clone()),
                    problem: None,
                },
                Err(e) => ComposeDrift {
                    container: c.name.to_string(),
                    project: project.name.clone(),
                    service: project.service.clone(),
                    running_image: c.image.to_string(),
                    declared_image: None,
                    problem: Some(e.clone()),
                },
            };
            out.push(drift);
        }
        self.cache.retain(|k, _| seen.contains(k));
        out.sort_by(|a, b| a.container.cmp(&b.container));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_running_another_image_than_declared_drifts() {
        let tmp = flotilla_testkit::temp_dir("compose-drift");
        let dir = tmp.path();
        let file = dir.join("compose.yaml");
        std::fs::write(&file, "services:\n  web:\n    image: app:${TAG}\n").unwrap();
        std::fs::write(dir.join(".env"), "TAG=v1\n").unwrap();
        let labels: HashMap<String, String> = [
            (super::super::PROJECT_LABEL, "shop"),
            (super::super::SERVICE_LABEL, "web"),
            (super::super::WORKING_DIR_LABEL, dir.to_str().unwrap()),
            (super::super::CONFIG_FILES_LABEL, file.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut checker = DriftChecker::default();
        let run = |image: &'static str| {
            [Running {
                name: "shop_web_1",
                image,
                labels: &labels,
            }]
        };
        assert!(checker.check(&run("app:v1")).is_empty());
        let d = checker.check(&run("app:v2"));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].declared_image.as_deref(), Some("app:v1"));
        std::fs::write(dir.join(".env"), "TAG=v22\n").unwrap();
        let d = checker.check(&run("app:v22"));
        assert!(d.is_empty(), "a changed .env is read again: {d:?}");
        std::fs::write(&file, "services:\n  web: {image: x}\n").unwrap();
        let d = checker.check(&run("app:v22"));
        assert!(
            d[0].problem.as_deref().unwrap().contains("flow style"),
            "{d:?}"
        );
    }
}
