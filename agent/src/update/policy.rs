//! Which images a container may be updated to, and the registry credentials for a pull.

use crate::config::UpdateConfig;
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use std::path::Path;

/// Docker Hub's registry name in references and in docker's config file.
pub const DOCKER_HUB: &str = "docker.io";

/// An image reference split the way Docker reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `127.0.0.1:5000`, `ghcr.io`, `docker.io`.
    pub registry: String,
    /// `library/nginx`, `team/app`.
    pub repository: String,
}

impl ImageRef {
    pub fn parse(reference: &str) -> ImageRef {
        let without_digest = reference.split('@').next().unwrap_or(reference);
        let (first, rest) = match without_digest.split_once('/') {
            Some((first, rest)) => (first, Some(rest)),
            None => (without_digest, None),
        };
        let first_is_registry =
            rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
        let (registry, path) = if first_is_registry {
            (first.to_string(), rest.unwrap_or_default().to_string())
        } else {
            (DOCKER_HUB.to_string(), without_digest.to_string())
        };
        // Drop the tag: a `:` after the last `/`.
        let path = match path.rfind(':') {
            Some(i) if !path[i..].contains('/') => path[..i].to_string(),
            _ => path,
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        ImageRef {
            registry,
            repository,
        }
    }

    /// `registry/repository`.
    pub fn full(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// `reference` with `:latest` added when it names neither a tag nor a digest (the engine pulls
/// every tag of an untagged reference).
pub fn with_default_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

flotilla_shared::message_error!(
    /// An image the update policy does not allow (the message names the rule).
    pub ImageRefused
);

/// Checks `new_image` against the configured allow list, or — when none is configured — against
/// the registry `current_image` comes from. The error says what was refused and why.
pub fn check_image(
    config: &UpdateConfig,
    current_image: &str,
    new_image: &str,
) -> Result<(), ImageRefused> {
    check_image_message(config, current_image, new_image).map_err(ImageRefused)
}

fn check_image_message(
    config: &UpdateConfig,
    current_image: &str,
    new_image: &str,
) -> Result<(), String> {
    let new = ImageRef::parse(new_image);
    if config.allowed_images.is_empty() {
        let current = ImageRef::parse(current_image);
        if current.registry == new.registry {
            return Ok(());
        }
        return Err(format!(
            "image {new_image} comes from registry {}, but this container's image comes from {} \
             and the agent allows only that registry by default (set update.allowed_images in \
             agent.toml to allow others)",
            new.registry, current.registry
        ));
    }
    let full = new.full();
    let allowed = config.allowed_images.iter().any(|entry| {
        let entry = entry.trim().trim_end_matches('/');
        if entry.contains('/') {
            full == entry || full.starts_with(&format!("{entry}/"))
        } else {
            new.registry == entry
        }
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "image {new_image} ({full}) is not in this agent's update.allowed_images ({})",
            config.allowed_images.join(", ")
        ))
    }
}

flotilla_shared::message_error!(
    /// Registry credentials that are configured but cannot be read.
    pub CredentialsError
);

/// Credentials for pulling from `registry`: the agent's own configuration first, then the
/// host's Docker config file (`auths` entries with an `auth` field; credential helpers are not
/// run). None means an anonymous pull.
pub fn credentials(
    config: &UpdateConfig,
    registry: &str,
) -> Result<Option<DockerCredentials>, CredentialsError> {
    credentials_message(config, registry).map_err(CredentialsError)
}

fn credentials_message(
    config: &UpdateConfig,
    registry: &str,
) -> Result<Option<DockerCredentials>, String> {
    if let Some(r) = config
        .registries
        .iter()
        .find(|r| same_registry(&r.registry, registry))
    {
        let password = std::fs::read_to_string(&r.password_file).map_err(|e| {
            format!(
                "cannot read the password file {} for registry {}: {e}",
                r.password_file.display(),
                r.registry
            )
        })?;
        return Ok(Some(DockerCredentials {
            username: Some(r.username.clone()),
            password: Some(password.trim_end_matches(['\r', '\n']).to_string()),
            serveraddress: Some(r.registry.clone()),
            ..Default::default()
        }));
    }
    match config.docker_config_path() {
        Some(path) => from_docker_config(&path, registry),
        None => Ok(None),
    }
}

fn from_docker_config(path: &Path, registry: &str) -> Result<Option<DockerCredentials>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read docker config {}: {e}", path.display())),
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let doc: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("docker config {} is not JSON: {e}", path.display()))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (key, entry) in auths {
        if !same_registry(key, registry) {
            continue;
        }
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                format!(
                    "docker config {}: auth for {key} is not base64 user:password",
                    path.display()
                )
            })?;
        let (user, pass) = decoded.split_once(':').ok_or_else(|| {
            format!(
                "docker config {}: auth for {key} is not user:password",
                path.display()
            )
        })?;
        return Ok(Some(DockerCredentials {
            username: Some(user.to_string()),
            password: Some(pass.to_string()),
            serveraddress: Some(registry.to_string()),
            ..Default::default()
        }));
    }
    Ok(None)
}

/// Registry names as written in config files (`https://index.docker.io/v1/`, `host:5000`)
/// compared by host.
fn same_registry(configured: &str, registry: &str) -> bool {
    let host = configured
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or("");
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        h => h,
    };
    host == registry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RegistryAuth;

    #[test]
    fn references() {
        let r = |s: &str| {
            let r = ImageRef::parse(s);
            (r.registry, r.repository)
        };
        assert_eq!(r("nginx"), ("docker.io".into(), "library/nginx".into()));
        assert_eq!(
            r("nginx:1.25"),
            ("docker.io".into(), "library/nginx".into())
        );
        assert_eq!(r("team/app:2"), ("docker.io".into(), "team/app".into()));
        assert_eq!(
            r("127.0.0.1:5000/flotilla-testapp:v1"),
            ("127.0.0.1:5000".into(), "flotilla-testapp".into())
        );
        assert_eq!(
            r("ghcr.io/org/app@sha256:abcd"),
            ("ghcr.io".into(), "org/app".into())
        );
        assert_eq!(r("localhost/app"), ("localhost".into(), "app".into()));
        assert_eq!(
            r("index.docker.io/library/redis"),
            ("docker.io".into(), "library/redis".into())
        );
    }

    #[test]
    fn default_tags() {
        assert_eq!(with_default_tag("nginx"), "nginx:latest");
        assert_eq!(
            with_default_tag("127.0.0.1:5000/app"),
            "127.0.0.1:5000/app:latest"
        );
        assert_eq!(
            with_default_tag("127.0.0.1:5000/app:v2"),
            "127.0.0.1:5000/app:v2"
        );
        assert_eq!(with_default_tag("app@sha256:ab"), "app@sha256:ab");
    }

    #[test]
    fn default_policy_is_the_current_registry() {
        let c = UpdateConfig::default();
        check_image(&c, "127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v2").unwrap();
        check_image(&c, "127.0.0.1:5000/app:v1", "127.0.0.1:5000/other:v2").unwrap();
        let e = check_image(&c, "127.0.0.1:5000/app:v1", "evil.example/app:v2").unwrap_err();
        assert!(
            e.contains("evil.example") && e.contains("127.0.0.1:5000"),
            "{e}"
        );
        check_image(&c, "nginx:1", "nginx:2").unwrap();
        assert!(check_image(&c, "nginx:1", "ghcr.io/x/nginx:2").is_err());
    }

    #[test]
    fn configured_policy() {
        let c = UpdateConfig {
            allowed_images: vec!["ghcr.io".into(), "reg.example.com/team/".into()],
            ..Default::default()
        };
        check_image(&c, "anything", "ghcr.io/a/b:1").unwrap();
        check_image(&c, "anything", "reg.example.com/team/app:1").unwrap();
        let e = check_image(&c, "anything", "reg.example.com/other/app:1").unwrap_err();
        assert!(e.contains("allowed_images"), "{e}");
        assert!(check_image(&c, "anything", "reg.example.com/teamster/app:1").is_err());
    }

    #[test]
    fn credentials_from_config_then_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "s3cret\n").unwrap();
        let docker_config = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("hub:hubpass");
        std::fs::write(
            &docker_config,
            format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{auth}"}}}}}}"#),
        )
        .unwrap();
        let c = UpdateConfig {
            registries: vec![RegistryAuth {
                registry: "127.0.0.1:5001".into(),
                username: "ci".into(),
                password_file: pass,
            }],
            docker_config: Some(docker_config),
            ..Default::default()
        };
        let own = credentials(&c, "127.0.0.1:5001").unwrap().unwrap();
        assert_eq!(own.username.as_deref(), Some("ci"));
        assert_eq!(own.password.as_deref(), Some("s3cret"));
        let hub = credentials(&c, "docker.io").unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert_eq!(hub.password.as_deref(), Some("hubpass"));
        assert!(credentials(&c, "ghcr.io").unwrap().is_none());
        let missing = UpdateConfig {
            registries: vec![RegistryAuth {
                registry: "r".into(),
                username: "u".into(),
                password_file: dir.path().join("nope"),
            }],
            ..Default::default()
        };
        assert!(credentials(&missing, "r")
            .unwrap_err()
            .contains("password file"));
    }
}
