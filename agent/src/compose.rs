//! Compose projects as the agent sees them: a container's compose labels (project, service,
//! working directory, config files), what image its project's files declare for it, and the
//! minimal edit that makes them declare another one — the service's `image:` value, or the
//! `.env` variable (or default) it interpolates — so that `docker-compose up -d` after an
//! update keeps the new image instead of silently putting the old one back.
//!
//! `yaml.rs` finds the value's bytes, `interp.rs` resolves interpolation and `.env`,
//! `files.rs` guards paths (`[compose] allowed_dirs`, no symlinks out) and writes atomically,
//! `tool.rs` asks the compose tool for the service's config hash, `drift.rs` finds containers
//! that run another image than their project declares (for the heartbeat).

pub mod drift;
pub mod files;
pub mod interp;
pub mod tool;
pub mod yaml;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
pub const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";
pub const CONFIG_HASH_LABEL: &str = "com.docker.compose.config-hash";

flotilla_shared::message_error!(
    /// Why a compose project's files cannot be read or edited (the message names the file).
    pub ComposeError
);

/// The compose project a container belongs to, from its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub service: String,
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
}

impl Project {
    /// None when the container is not from compose; an error when its labels are incomplete.
    pub fn from_labels(
        label: impl Fn(&str) -> Option<String>,
    ) -> Option<Result<Project, ComposeError>> {
        let name = label(PROJECT_LABEL)?;
        Some(Self::complete(name, label))
    }

    fn complete(
        name: String,
        label: impl Fn(&str) -> Option<String>,
    ) -> Result<Project, ComposeError> {
        let missing = |l: &str| {
            ComposeError(format!(
                "the container belongs to compose project {name} but has no {l} label"
            ))
        };
        let service = label(SERVICE_LABEL).ok_or_else(|| missing(SERVICE_LABEL))?;
        let working_dir =
            PathBuf::from(label(WORKING_DIR_LABEL).ok_or_else(|| missing(WORKING_DIR_LABEL))?);
        let files = label(CONFIG_FILES_LABEL).ok_or_else(|| missing(CONFIG_FILES_LABEL))?;
        let config_files: Vec<PathBuf> = files
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| working_dir.join(f))
            .collect();
        if config_files.is_empty() {
            return Err(missing(CONFIG_FILES_LABEL));
        }
        Ok(Project {
            name,
            service,
            working_dir,
            config_files,
        })
    }

    /// The project's `.env` (compose reads it from the project directory).
    pub fn env_file(&self) -> PathBuf {
        self.working_dir.join(".env")
    }

    /// Project from the labels of an inspect JSON (`Config.Labels`).
    pub fn from_inspect(inspect: &serde_json::Value) -> Option<Result<Project, ComposeError>> {
        let labels = inspect
            .pointer("/Config/Labels")
            .and_then(|l| l.as_object());
        Project::from_labels(|k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
    }
}

/// One file changed by an update: its resolved path and its text before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEdit {
    pub path: PathBuf,
    pub original: String,
    pub edited: String,
}

/// What a project declares for a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    /// The image with interpolation resolved.
    pub image: String,
    /// Where: `file:line`.
    pub at: String,
}

struct Text {
    original: String,
    current: String,
}

/// A project's files loaded for reading or editing.
pub struct Workspace {
    config_files: Vec<PathBuf>,
    env_file: Option<PathBuf>,
    texts: BTreeMap<PathBuf, Text>,
}

impl Workspace {
    /// Loads the project's files. With `allowed` (to edit them), every file must pass
    /// [`files::check_writable`] and is kept under its resolved path.
    pub fn open(
        project: &Project,
        allowed: Option<&[(PathBuf, PathBuf)]>,
    ) -> Result<Workspace, ComposeError> {
        let mut texts = BTreeMap::new();
        let mut config_files = Vec::new();
        let load = |path: &Path,
                    texts: &mut BTreeMap<PathBuf, Text>|
         -> Result<Option<PathBuf>, ComposeError> {
            let exists = std::fs::symlink_metadata(path).is_ok();
            if !exists {
                return Ok(None);
            }
            let path = match allowed {
                Some(dirs) => {
                    files::check_writable(path, dirs).map_err(|e| ComposeError(e.into()))?
                }
                None => path.to_path_buf(),
            };
            let text = files::read_text(&path)
                .map_err(|e| ComposeError(e.into()))?
                .unwrap_or_default();
            texts.insert(
                path.clone(),
                Text {
                    original: text.clone(),
                    current: text,
                },
            );
            Ok(Some(path))
        };
        for f in &project.config_files {
            match load(f, &mut texts)? {
                Some(p) => config_files.push(p),
                None => {
                    return Err(ComposeError(format!(
                        "compose file {} of project {} does not exist",
                        f.display(),
                        project.name
                    )))
                }
            }
        }
        let env_file = load(&project.env_file(), &mut texts)?;
        Ok(Workspace {
            config_files,
            env_file,
            texts,
        })
    }

    fn env(&self) -> BTreeMap<String, interp::EnvValue> {
        self.env_file
            .as_ref()
            .and_then(|p| self.texts.get(p))
            .map(|t| interp::parse_env(&t.current))
            .unwrap_or_default()
    }

    /// The last config file that sets the service's image, and where (later files override).
    fn locate(&self, service: &str) -> Result<(PathBuf, yaml::ImageSpan), ComposeError> {
        let mut found = None;
        let mut seen = false;
        for f in &self.config_files {
            let text = &self.texts[f].current;
            match yaml::find_image(text, service)
                .map_err(|e| ComposeError(format!("{}: {e}", f.display())))?
            {
                yaml::Found::Image(span) => found = Some((f.clone(), span)),
                yaml::Found::NoImage => seen = true,
                yaml::Found::NoService => {}
            }
        }
        found.ok_or_else(|| {
            ComposeError(if seen {
                format!("service {service} sets no image: in its compose files (built locally?)")
            } else {
                format!("service {service} is not in the project's compose files")
            })
        })
    }

    /// What the files declare for `service`.
    pub fn declared(&self, service: &str) -> Result<Declared, ComposeError> {
        let (file, span) = self.locate(service)?;
        let at = format!("{}:{}", file.display(), span.line);
        let parts = interp::parse(&span.value).map_err(|e| ComposeError(format!("{at}: {e}")))?;
        let image =
            interp::resolve(&parts, &self.env()).map_err(|e| ComposeError(format!("{at}: {e}")))?;
        Ok(Declared { image, at })
    }

    /// Edits the files (in memory) so that `service` declares `new_image`.
    pub fn set_image(&mut self, service: &str, new_image: &str) -> Result<(), ComposeError> {
        let (file, span) = self.locate(service)?;
        let at = format!("{}:{}", file.display(), span.line);
        let parts = interp::parse(&span.value).map_err(|e| ComposeError(format!("{at}: {e}")))?;
        if !interp::has_vars(&parts) {
            let value = new_image.replace('$', "$$");
            if value != span.value {
                let t = self.texts.get_mut(&file).expect("a loaded file");
                t.current = yaml::splice(&t.current, &span.span, &value);
            }
            return Ok(());
        }
        let env = self.env();
        let edit = interp::edit_for(&parts, &env, new_image)
            .map_err(|e| ComposeError(format!("{at}: {e}")))?;
        match edit {
            interp::VarEdit::Nothing => {}
            interp::VarEdit::EnvValue { name, value } => {
                let env_file = self.env_file.clone().expect("a variable from .env");
                let v = &env[&name];
                if !v.quoted && value.contains([' ', '#', '"', '\'']) {
                    return Err(ComposeError(format!(
                        "{}: {value:?} cannot be written unquoted for {name}",
                        env_file.display()
                    )));
                }
                let t = self.texts.get_mut(&env_file).expect("a loaded file");
                t.current = yaml::splice(&t.current, &v.span, &value);
            }
            interp::VarEdit::Default { value, span: d, .. } => {
                let abs = span.span.start + d.start..span.span.start + d.end;
                let t = self.texts.get_mut(&file).expect("a loaded file");
                t.current = yaml::splice(&t.current, &abs, &value.replace('$', "$$"));
            }
        }
        Ok(())
    }

    /// The files whose text changed.
    pub fn edits(&self) -> Vec<FileEdit> {
        self.texts
            .iter()
            .filter(|(_, t)| t.current != t.original)
            .map(|(p, t)| FileEdit {
                path: p.clone(),
                original: t.original.clone(),
                edited: t.current.clone(),
            })
            .collect()
    }
}

/// Writes the edits: each file's previous content to `<file>.flotilla.bak`, then the new
/// content, both atomically. On an error the files already written are put back.
pub fn apply(edits: &[FileEdit]) -> Result<(), ComposeError> {
    for (i, e) in edits.iter().enumerate() {
        let written = files::write_atomic(&files::backup_path(&e.path), e.original.as_bytes())
            .and_then(|()| files::write_atomic(&e.path, e.edited.as_bytes()));
        if let Err(err) = written {
            let _ = restore(&edits[..i]);
            return Err(ComposeError(err.into()));
        }
    }
    Ok(())
}

/// Puts the files back byte for byte. A file someone changed since the edit is left as it
/// is and named in the error.
pub fn restore(edits: &[FileEdit]) -> Result<(), ComposeError> {
    let mut problems = Vec::new();
    for e in edits {
        match files::read_text(&e.path) {
            Ok(Some(now)) if now == e.original => {}
            Ok(Some(now)) if now != e.edited => problems.push(format!(
                "{} was changed by someone else since the update edited it; left as it is (the \
                 previous content is in {})",
                e.path.display(),
                files::backup_path(&e.path).display()
            )),
            _ => {
                if let Err(err) = files::write_atomic(&e.path, e.original.as_bytes()) {
                    problems.push(err.to_string());
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ComposeError(problems.join("; ")))
    }
}

/// `reference` spelled in full (`docker.io/library/x:latest`), to compare two spellings.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (first, rest) = name.split_once('/').unwrap_or(("", name));
    let full = if !first.is_empty()
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
        name.to_string()
    } else if first.is_empty() {
        format!("docker.io/library/{rest}")
    } else {
        format!("docker.io/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    let tagged = if last.contains(':') || digest.is_some() {
        full
    } else {
        format!("{full}:latest")
    };
    match digest {
        Some(d) => format!("{tagged}@{d}"),
        None => tagged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(dir: &Path, files: &str) -> Project {
        let labels: BTreeMap<&str, String> = [
            (PROJECT_LABEL, "shop".to_string()),
            (SERVICE_LABEL, "web".to_string()),
            (WORKING_DIR_LABEL, dir.display().to_string()),
            (CONFIG_FILES_LABEL, files.to_string()),
        ]
        .into();
        Project::from_labels(|k| labels.get(k).cloned())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn labels_make_a_project_or_a_clear_error() {
        let p = project(
            Path::new("/srv/shop"),
            "/srv/shop/compose.yaml,override.yaml",
        );
        assert_eq!(
            p.config_files,
            vec![
                PathBuf::from("/srv/shop/compose.yaml"),
                PathBuf::from("/srv/shop/override.yaml")
            ]
        );
        assert_eq!(p.env_file(), PathBuf::from("/srv/shop/.env"));
        assert!(Project::from_labels(|_| None).is_none());
        let e = Project::from_labels(|k| (k == PROJECT_LABEL).then(|| "x".to_string()))
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains(SERVICE_LABEL));
    }

    #[test]
    fn an_override_file_wins_and_env_tags_are_edited_in_env() {
        let tmp = flotilla_testkit::temp_dir("compose-ws");
        let dir = tmp.path();
        std::fs::write(
            dir.join("compose.yaml"),
            "services:\n  web:\n    image: app:${TAG}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("override.yaml"),
            "services:\n  web:\n    image: \"reg.example/app:${TAG:-v0}\"\n",
        )
        .unwrap();
        std::fs::write(dir.join(".env"), "# tag\nTAG=v1\n").unwrap();
        let p = project(dir, "compose.yaml,override.yaml");
        let allowed = files::canonical_dirs(&[dir.display().to_string()]);
        let mut ws = Workspace::open(&p, Some(&allowed)).unwrap();
        assert_eq!(ws.declared("web").unwrap().image, "reg.example/app:v1");
        ws.set_image("web", "reg.example/app:v2").unwrap();
        let edits = ws.edits();
        assert_eq!(edits.len(), 1);
        assert_eq!(edits[0].edited, "# tag\nTAG=v2\n");
        apply(&edits).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(".env")).unwrap(),
            "# tag\nTAG=v2\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(".env.flotilla.bak")).unwrap(),
            "# tag\nTAG=v1\n"
        );
        restore(&edits).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(".env")).unwrap(),
            "# tag\nTAG=v1\n"
        );
    }

    #[test]
    fn references_normalize() {
        assert_eq!(normalize("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(normalize("team/app:v1"), "docker.io/team/app:v1");
        assert_eq!(normalize("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(normalize("ghcr.io/a/b@sha256:ab"), "ghcr.io/a/b@sha256:ab");
    }
}
