//! The compose side of an update: before anything changes, plan the edit of the container's
//! project files (refused outside `[compose] allowed_dirs` unless `allow_drift`); after the
//! pull, journal and write the edit and ask the compose tool for the service's config hash
//! (the new container gets it as `com.docker.compose.config-hash`); when the update does not
//! end `updated`, put the files back byte for byte.

use super::{Run, StepError, Updater};
use crate::compose::{self, files, FileEdit, Project, Workspace};
use flotilla_shared::command::{error_codes, ErrorInfo};
use flotilla_shared::compose::ComposeReport;
use flotilla_shared::update::{ContainerUpdateArgs, UpdateReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

/// The journal's part for a compose container.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ComposeJournal {
    pub project: Project,
    pub edits: Vec<FileEdit>,
    /// Set (and journaled) BEFORE the files are written, so that a crash puts them back.
    pub applied: bool,
    /// Part of a `compose.update`: the group writes and restores the files, not this run.
    #[serde(default)]
    pub grouped: bool,
}

/// Plans the edits that make `projects`' files declare `image` for their services.
pub(super) fn plan_edits(
    allowed_dirs: &[String],
    project: &Project,
    services: &[&str],
    image: &str,
) -> Result<Vec<FileEdit>, String> {
    let allowed = files::canonical_dirs(allowed_dirs);
    let mut ws = Workspace::open(project, Some(&allowed)).map_err(String::from)?;
    for s in services {
        ws.set_image(s, image).map_err(String::from)?;
    }
    Ok(ws.edits())
}

fn report_for(project: &Project, edits: &[FileEdit]) -> ComposeReport {
    ComposeReport {
        project: project.name.clone(),
        service: project.service.clone(),
        files: edits.iter().map(|e| e.path.display().to_string()).collect(),
        ..Default::default()
    }
}

impl Updater {
    /// For a compose container: the planned edit (journaled with the update), or with
    /// `allow_drift` the reason it is not edited. Errors are refusals.
    pub(super) fn plan_compose(
        &self,
        old: &Value,
        args: &ContainerUpdateArgs,
        report: &mut UpdateReport,
    ) -> Result<Option<ComposeJournal>, ErrorInfo> {
        let Some(project) = Project::from_inspect(old) else {
            return Ok(None);
        };
        let planned = project.map_err(String::from).and_then(|p| {
            plan_edits(&self.compose.allowed_dirs, &p, &[&p.service], &args.image).map(|e| (p, e))
        });
        match planned {
            Ok((project, edits)) => {
                report.compose = Some(report_for(&project, &edits));
                Ok(Some(ComposeJournal {
                    project,
                    edits,
                    applied: false,
                    grouped: false,
                }))
            }
            Err(why) if args.allow_drift => {
                let (name, service) = compose_names(old);
                report.compose = Some(ComposeReport {
                    project: name,
                    service,
                    drift: Some(format!(
                        "the project's files were not edited (allow_drift): {why}"
                    )),
                    ..Default::default()
                });
                Ok(None)
            }
            Err(why) => Err(ErrorInfo {
                code: error_codes::POLICY.into(),
                message: format!(
                    "container {} belongs to a compose project whose files would still name \
                     the old image: {why}",
                    report.container
                ),
            }),
        }
    }

    /// After the pull: journal, write the edits, ask for the config hash.
    pub(super) async fn apply_compose(&self, run: &mut Run) -> Result<(), StepError> {
        let Some(c) = run.j.compose.as_mut() else {
            return Ok(());
        };
        if c.grouped {
            return Ok(());
        }
        c.applied = true;
        let edits = c.edits.clone();
        let project = c.project.clone();
        self.save(run).await?;
        if !edits.is_empty() {
            let e = edits.clone();
            tokio::task::spawn_blocking(move || compose::apply(&e))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot edit the compose project's files: {e}"))?;
            info!(
                project = project.name,
                files = edits.len(),
                "compose files now declare {}",
                run.j.args.image
            );
        }
        let hash = self.config_hash(&project, &project.service).await;
        self.set_hash(run, hash);
        self.save(run).await
    }

    /// The service's config hash by the compose tool, or a warning.
    pub(super) async fn config_hash(
        &self,
        project: &Project,
        service: &str,
    ) -> Result<String, String> {
        compose::tool::config_hash(
            &self.compose.command,
            project,
            service,
            self.docker_host.as_deref(),
        )
        .await
        .map_err(|e| {
            format!(
                "{e}; the new container carries no matching config hash, so `up -d` will \
                 recreate it (with the new image)"
            )
        })
    }

    pub(super) fn set_hash(&self, run: &mut Run, hash: Result<String, String>) {
        let Some(r) = run.j.report.compose.as_mut() else {
            return;
        };
        match hash {
            Ok(h) => r.config_hash = Some(h),
            Err(w) => {
                warn!(
                    container = run.j.name,
                    warning = w,
                    "no compose config hash"
                );
                r.warning = Some(w);
            }
        }
    }

    /// The labels the new container gets beyond the old one's.
    pub(super) fn compose_labels(&self, run: &Run) -> Vec<(String, String)> {
        run.j
            .report
            .compose
            .as_ref()
            .and_then(|r| r.config_hash.clone())
            .filter(|_| run.j.compose.is_some())
            .map(|h| vec![(compose::CONFIG_HASH_LABEL.to_string(), h)])
            .unwrap_or_default()
    }

    /// Puts the files back when the update did not end `updated` (a group's own run leaves
    /// that to the group, except when recovering after a crash).
    pub(super) async fn restore_compose(&self, run: &mut Run) {
        let Some(c) = run.j.compose.as_ref() else {
            return;
        };
        if !c.applied || (c.grouped && !run.recovering) || c.edits.is_empty() {
            return;
        }
        let edits = c.edits.clone();
        let restored = tokio::task::spawn_blocking(move || compose::restore(&edits))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(String::from));
        if let Some(r) = run.j.report.compose.as_mut() {
            match restored {
                Ok(()) => r.restored = true,
                Err(e) => r.warning = Some(format!("cannot restore the compose files: {e}")),
            }
        }
    }
}

/// Project and service from an inspect's labels (empty when absent).
fn compose_names(old: &Value) -> (String, String) {
    let label = |k: &str| {
        old.pointer("/Config/Labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (label(compose::PROJECT_LABEL), label(compose::SERVICE_LABEL))
}
