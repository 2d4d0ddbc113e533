//! `compose.update`: every service of one compose project that runs a given image repository
//! (an app and its worker) updated together — one edit of the project's files, one pull, all
//! old containers stopped and all new ones started, ONE health gate over all of them, then all
//! committed or all rolled back (files restored byte for byte).
//!
//! Each container keeps its own journal record (`<command id>.<service>`, marked with the
//! group). A crash in the middle is converged for the group as a whole (`recover_group`):
//! once any container was committing (every health gate had passed) the others are committed
//! too, otherwise every touched container is rolled back and the files are put back, so the
//! project ends all new or all old; the group then files its one result, marked recovered.
//! Only `stop-first` is supported: the services of a project share its ports.

use super::compose::{plan_edits, ComposeJournal};
use super::{empty_report, policy, refuse, Journal, Outcome, Run, Updater};
use crate::compose::{self, Project};
use crate::frame::keep_newest_lines;
use chrono::Utc;
use flotilla_shared::command::{error_codes, CommandResult, ErrorInfo, ResultStatus};
use flotilla_shared::compose::{ComposeReport, ComposeUpdateArgs, ComposeUpdateReport};
use flotilla_shared::update::{
    UpdateOutcome, UpdatePhase, UpdateReport, UpdateStrategy, BACKUP_NAME_MARKER, NEW_NAME_MARKER,
};
use tracing::{error, info, warn};

/// One container of the project to update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub service: String,
}

impl Updater {
    /// The project's running containers that run `args.image`'s repository (and are among
    /// `args.services` when given), or a refusal naming what is missing.
    pub async fn compose_members(
        &self,
        args: &ComposeUpdateArgs,
    ) -> Result<Vec<Member>, ErrorInfo> {
        let running = self
            .docker
            .running_labelled()
            .await
            .map_err(|e| ErrorInfo {
                code: e.code().into(),
                message: e.to_string(),
            })?;
        let wanted = policy::ImageRef::parse(&args.image);
        let mut in_project = Vec::new();
        let mut members = Vec::new();
        for c in running {
            let label = |k: &str| c.labels.get(k).cloned().unwrap_or_default();
            if label(compose::PROJECT_LABEL) != args.project
                || c.container.name.contains(BACKUP_NAME_MARKER)
                || c.container.name.contains(NEW_NAME_MARKER)
            {
                continue;
            }
            let service = label(compose::SERVICE_LABEL);
            in_project.push(format!("{service} ({})", c.image));
            if !args.services.is_empty() && !args.services.contains(&service) {
                continue;
            }
            if policy::ImageRef::parse(&c.image) == wanted {
                members.push(Member {
                    name: c.container.name.clone(),
                    service,
                });
            }
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        for s in &args.services {
            if !members.iter().any(|m| &m.service == s) {
                return Err(refuse(
                    error_codes::NO_SUCH_CONTAINER,
                    format!(
                        "service {s} of compose project {} runs no container of {}'s repository \
                         (running: {})",
                        args.project,
                        args.image,
                        if in_project.is_empty() {
                            "none".into()
                        } else {
                            in_project.join(", ")
                        }
                    ),
                ));
            }
        }
        if members.is_empty() {
            return Err(refuse(
                error_codes::NO_SUCH_CONTAINER,
                format!(
                    "compose project {} has no running container of {}'s repository (running: {})",
                    args.project,
                    args.image,
                    if in_project.is_empty() {
                        "none".into()
                    } else {
                        in_project.join(", ")
                    }
                ),
            ));
        }
        Ok(members)
    }

    /// Files the refusal of a `compose.update` that changed nothing.
    pub async fn refuse_compose(
        &self,
        command_id: &str,
        args: &ComposeUpdateArgs,
        error: ErrorInfo,
    ) {
        let report = ComposeUpdateReport {
            project: args.project.clone(),
            image: args.image.clone(),
            outcome: UpdateOutcome::FailedUnchanged,
            reason: Some(error.message.clone()),
            compose: None,
            services: Vec::new(),
        };
        self.file_group(command_id, report, Some(error), Utc::now())
            .await;
    }

    /// Runs the group to its end and files its one result.
    pub async fn run_compose(
        &self,
        command_id: &str,
        args: &ComposeUpdateArgs,
        members: Vec<Member>,
    ) {
        if args.strategy == UpdateStrategy::StartFirst {
            let e = refuse(
                error_codes::INVALID_ARGS,
                "compose.update supports stop-first only (a project's services share its ports)"
                    .into(),
            );
            return self.refuse_compose(command_id, args, e).await;
        }
        let started_at = Utc::now();
        let mut runs: Vec<Run> = Vec::new();
        for m in &members {
            let cargs = args.for_container(&m.name);
            let mut report = empty_report(&cargs);
            let sub_id = format!("{command_id}.{}", m.service);
            match self.prepare(&sub_id, &cargs, &mut report, true).await {
                Ok(mut run) => {
                    run.j.group = Some(command_id.to_string());
                    // Every service's report names its project and service (the relay's
                    // update history keeps one record per container under the group).
                    run.j.report.compose = Some(ComposeReport {
                        project: args.project.clone(),
                        service: m.service.clone(),
                        ..Default::default()
                    });
                    runs.push(run);
                }
                Err(e) => {
                    let why = format!("service {}: {}", m.service, e.message);
                    return self
                        .end_unchanged(command_id, args, runs, None, why, Some(e))
                        .await;
                }
            }
        }
        for run in &runs {
            self.updating.insert(&run.j.name, &run.j.command_id);
        }
        info!(
            command_id,
            project = args.project,
            image = args.image,
            services = runs.len(),
            "updating compose services together"
        );
        let names: Vec<String> = runs.iter().map(|r| r.j.name.clone()).collect();
        let (report, error) = self.drive_group(args, &mut runs).await;
        for name in &names {
            self.updating.remove(name);
        }
        self.file_group(command_id, report, error, started_at).await;
    }

    async fn drive_group(
        &self,
        args: &ComposeUpdateArgs,
        runs: &mut Vec<Run>,
    ) -> (ComposeUpdateReport, Option<ErrorInfo>) {
        // The files: one plan for every service.
        let project = match Project::from_inspect(&runs[0].j.old_inspect) {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(String::from(e)),
            None => Err("the containers carry no compose labels".into()),
        };
        let svc_names: Vec<String> = runs
            .iter()
            .filter_map(|r| {
                Project::from_inspect(&r.j.old_inspect)
                    .and_then(Result::ok)
                    .map(|p| p.service)
            })
            .collect();
        let planned = project.and_then(|p| {
            let names: Vec<&str> = svc_names.iter().map(String::as_str).collect();
            plan_edits(&self.compose.allowed_dirs, &p, &names, &args.image).map(|e| (p, e))
        });
        let mut group_report = ComposeReport {
            project: args.project.clone(),
            service: svc_names.join(","),
            ..Default::default()
        };
        let (project, edits) = match planned {
            Ok((p, e)) => (Some(p), e),
            Err(why) if args.allow_drift => {
                let drift = format!("the project's files were not edited (allow_drift): {why}");
                for run in runs.iter_mut() {
                    if let Some(c) = run.j.report.compose.as_mut() {
                        c.drift = Some(drift.clone());
                    }
                }
                group_report.drift = Some(drift);
                (None, Vec::new())
            }
            Err(why) => {
                let msg = format!(
                    "compose project {} would still name the old image: {why}",
                    args.project
                );
                let e = refuse(error_codes::POLICY, msg.clone());
                let taken = std::mem::take(runs);
                return self
                    .unchanged_report(args, taken, Some(group_report), msg, Some(e))
                    .await;
            }
        };
        group_report.files = edits.iter().map(|e| e.path.display().to_string()).collect();
        if let Some(p) = &project {
            for (run, service) in runs.iter_mut().zip(&svc_names) {
                let mut own = p.clone();
                own.service = service.clone();
                run.j.report.compose = Some(ComposeReport {
                    project: p.name.clone(),
                    service: service.clone(),
                    files: group_report.files.clone(),
                    ..Default::default()
                });
                run.j.compose = Some(ComposeJournal {
                    project: own,
                    edits: edits.clone(),
                    applied: false,
                    grouped: true,
                });
            }
        }
        // One pull (the others find the image present).
        for run in runs.iter_mut() {
            if let Err(e) = self.pull(run).await {
                let taken = std::mem::take(runs);
                return self
                    .unchanged_report(args, taken, Some(group_report), e, None)
                    .await;
            }
        }
        // Journal, then write the files; then every service's config hash.
        if project.is_some() {
            for run in runs.iter_mut() {
                if let Some(c) = run.j.compose.as_mut() {
                    c.applied = true;
                }
                if let Err(e) = self.save(run).await {
                    let taken = std::mem::take(runs);
                    return self
                        .unchanged_report(args, taken, Some(group_report), e, None)
                        .await;
                }
            }
            let e = edits.clone();
            let applied = tokio::task::spawn_blocking(move || compose::apply(&e))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(String::from));
            if let Err(e) = applied {
                let why = format!("cannot edit the compose project's files: {e}");
                let taken = std::mem::take(runs);
                return self
                    .unchanged_report(args, taken, Some(group_report), why, None)
                    .await;
            }
            for (run, service) in runs.iter_mut().zip(&svc_names) {
                let p = run.j.compose.as_ref().map(|c| c.project.clone());
                if let Some(p) = p {
                    let hash = self.config_hash(&p, service).await;
                    self.set_hash(run, hash);
                }
            }
        }
        // Stop every old container and start every new one.
        let mut failure: Option<String> = None;
        let mut touched = 0;
        for run in runs.iter_mut() {
            touched += 1;
            let step = match self.stop_old(run, true).await {
                Ok(()) => self.create_and_start(run, false).await,
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                failure = Some(format!("service {}: {e}", run.j.name));
                break;
            }
        }
        // One health gate over all of them.
        if failure.is_none() {
            let gates = futures_util::future::join_all(runs.iter_mut().map(|r| async move {
                let name = r.j.name.clone();
                self.gate_new(r).await.map_err(|e| format!("{name}: {e}"))
            }))
            .await;
            let failed: Vec<String> = gates.into_iter().filter_map(Result::err).collect();
            if !failed.is_empty() {
                failure = Some(format!(
                    "the health gate failed for {}; every service was rolled back",
                    failed.join("; ")
                ));
            }
        }
        let mut outcomes = Vec::new();
        match &failure {
            None => {
                for run in runs.iter_mut() {
                    outcomes.push(match self.commit(run).await {
                        Ok(()) => Outcome::Updated,
                        Err(e) => Outcome::CommitFailed(e),
                    });
                }
            }
            Some(why) => {
                for (i, run) in runs.iter_mut().enumerate() {
                    outcomes.push(if i < touched {
                        self.rollback(run, why.clone()).await
                    } else {
                        Outcome::Unchanged(why.clone())
                    });
                }
                if project.is_some() && !edits.is_empty() {
                    let e = edits.clone();
                    let restored = tokio::task::spawn_blocking(move || compose::restore(&e))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(String::from));
                    match restored {
                        Ok(()) => group_report.restored = true,
                        Err(e) => {
                            group_report.warning =
                                Some(format!("cannot restore the compose files: {e}"))
                        }
                    }
                }
            }
        }
        let mut reports = Vec::new();
        let taken = std::mem::take(runs);
        for (run, outcome) in taken.into_iter().zip(outcomes) {
            let started = run.j.started_at;
            reports.push(self.finish(run, outcome, started).await);
        }
        if let Some(h) = reports
            .iter()
            .find_map(|r| r.compose.as_ref().and_then(|c| c.warning.clone()))
        {
            group_report.warning.get_or_insert(h);
        }
        let outcome = group_outcome(&reports);
        (
            ComposeUpdateReport {
                project: args.project.clone(),
                image: args.image.clone(),
                outcome,
                reason: failure,
                compose: Some(group_report),
                services: reports,
            },
            None,
        )
    }

    /// Ends prepared runs that changed nothing, and files the group's result.
    async fn end_unchanged(
        &self,
        command_id: &str,
        args: &ComposeUpdateArgs,
        runs: Vec<Run>,
        compose: Option<ComposeReport>,
        why: String,
        error: Option<ErrorInfo>,
    ) {
        let started_at = runs
            .first()
            .map(|r| r.j.started_at)
            .unwrap_or_else(Utc::now);
        let (report, error) = self.unchanged_report(args, runs, compose, why, error).await;
        self.file_group(command_id, report, error, started_at).await;
    }

    async fn unchanged_report(
        &self,
        args: &ComposeUpdateArgs,
        runs: Vec<Run>,
        compose: Option<ComposeReport>,
        why: String,
        error: Option<ErrorInfo>,
    ) -> (ComposeUpdateReport, Option<ErrorInfo>) {
        let mut reports = Vec::new();
        for run in runs {
            let started = run.j.started_at;
            reports.push(
                self.finish(run, Outcome::Unchanged(why.clone()), started)
                    .await,
            );
        }
        (
            ComposeUpdateReport {
                project: args.project.clone(),
                image: args.image.clone(),
                outcome: UpdateOutcome::FailedUnchanged,
                reason: Some(why),
                compose,
                services: reports,
            },
            error,
        )
    }

    async fn file_group(
        &self,
        command_id: &str,
        mut report: ComposeUpdateReport,
        refusal: Option<ErrorInfo>,
        started_at: chrono::DateTime<Utc>,
    ) {
        let max_frame = self.frame_limit.load(std::sync::atomic::Ordering::Relaxed);
        let share = max_frame / 4 / report.services.len().max(1);
        for r in &mut report.services {
            let (lines, _) = keep_newest_lines(std::mem::take(&mut r.failed_logs), share);
            r.failed_logs = lines;
        }
        let error = refusal.or_else(|| {
            report.outcome.error_code().map(|code| ErrorInfo {
                code: code.into(),
                message: report
                    .reason
                    .clone()
                    .unwrap_or_else(|| report.outcome.to_string()),
            })
        });
        let result = CommandResult {
            command_id: command_id.to_string(),
            status: if error.is_none() {
                ResultStatus::Succeeded
            } else {
                ResultStatus::Failed
            },
            output: serde_json::to_value(&report).ok(),
            error,
            started_at,
            finished_at: Utc::now(),
        };
        if let Err(e) = self.state.finish_update(result, String::new()).await {
            error!(
                command_id,
                error = format!("{e:#}"),
                "cannot store compose.update result"
            );
        }
    }
}

impl Updater {
    /// Converges the containers of the `compose.update` `group` a previous process left
    /// unfinished, all one way, and files the group's one result (see the module doc). The
    /// caller holds every unfinished container's lock.
    pub async fn recover_group(&self, group: &str) {
        let records = match self.state.group_update_records(group).await {
            Ok(r) => r,
            Err(e) => {
                error!(
                    group,
                    error = format!("{e:#}"),
                    "cannot read the update journal"
                );
                return;
            }
        };
        let journals: Vec<Journal> = records
            .iter()
            .filter_map(|r| match serde_json::from_str::<Journal>(r) {
                Ok(j) => Some(j),
                Err(e) => {
                    error!(group, error = %e, "unreadable update journal record; leaving it");
                    None
                }
            })
            .collect();
        let Some(first) = journals.first() else {
            return;
        };
        let started_at = journals
            .iter()
            .map(|j| j.started_at)
            .min()
            .unwrap_or(first.started_at);
        let image = first.args.image.clone();
        let project = first
            .report
            .compose
            .as_ref()
            .map(|c| c.project.clone())
            .unwrap_or_default();
        let files = first
            .compose
            .as_ref()
            .map(|c| {
                c.edits
                    .iter()
                    .map(|e| e.path.display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        // Every gate passed before the first commit: one committing (or committed) container
        // means the group had decided to commit.
        let commit = journals.iter().any(|j| {
            j.report.phase == UpdatePhase::Committing
                || (j.report.phase == UpdatePhase::Done
                    && j.report.outcome == UpdateOutcome::Updated)
        });
        warn!(
            group,
            project,
            containers = journals.len(),
            commit,
            "the agent stopped during a compose.update; converging its containers together"
        );
        let mut reports = Vec::new();
        for j in journals {
            let phase = j.report.phase;
            if phase == UpdatePhase::Done {
                reports.push(j.report);
                continue;
            }
            self.updating.insert(&j.name, &j.command_id);
            let mut run = Run {
                j,
                recovering: true,
            };
            run.j.report.recovered = true;
            let outcome = match phase {
                UpdatePhase::HealthGate | UpdatePhase::Committing if commit => {
                    match self.commit(&mut run).await {
                        Ok(()) => Outcome::Updated,
                        Err(e) => Outcome::CommitFailed(e),
                    }
                }
                UpdatePhase::Validated | UpdatePhase::Pulling | UpdatePhase::Pulled => {
                    Outcome::Unchanged(format!(
                        "the agent stopped during compose.update {group} (this container at \
                         phase {phase}, not touched yet); nothing was changed"
                    ))
                }
                _ => {
                    let why = format!(
                        "the agent stopped during compose.update {group} before every service \
                         was proven (this container at phase {phase}); every service was rolled \
                         back"
                    );
                    self.rollback(&mut run, why).await
                }
            };
            self.updating.remove(&run.j.name);
            let started = run.j.started_at;
            reports.push(self.finish(run, outcome, started).await);
        }
        let outcome = group_outcome(&reports);
        let restored = reports
            .iter()
            .any(|r| r.compose.as_ref().is_some_and(|c| c.restored));
        let warning = reports
            .iter()
            .find_map(|r| r.compose.as_ref().and_then(|c| c.warning.clone()));
        let services: Vec<String> = reports
            .iter()
            .filter_map(|r| r.compose.as_ref().map(|c| c.service.clone()))
            .collect();
        let report = ComposeUpdateReport {
            project: project.clone(),
            image,
            outcome,
            reason: (outcome != UpdateOutcome::Updated).then(|| {
                format!(
                    "the agent restarted during this compose.update before every service was \
                     proven; {}",
                    if outcome == UpdateOutcome::FailedUnchanged {
                        "no container had been touched"
                    } else {
                        "every service was rolled back"
                    }
                )
            }),
            compose: Some(ComposeReport {
                project,
                service: services.join(","),
                files,
                restored,
                warning,
                ..Default::default()
            }),
            services: reports,
        };
        self.file_group(group, report, None, started_at).await;
    }
}

/// The group's outcome: `updated` only when every service is.
fn group_outcome(reports: &[UpdateReport]) -> UpdateOutcome {
    let has = |o: UpdateOutcome| reports.iter().any(|r| r.outcome == o);
    if reports.iter().all(|r| r.outcome == UpdateOutcome::Updated) {
        UpdateOutcome::Updated
    } else if has(UpdateOutcome::RollbackFailed) {
        UpdateOutcome::RollbackFailed
    } else if has(UpdateOutcome::RolledBack) || has(UpdateOutcome::Updated) {
        UpdateOutcome::RolledBack
    } else {
        UpdateOutcome::FailedUnchanged
    }
}
