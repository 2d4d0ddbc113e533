//! Agent releases: the admin API (`PUT /api/v1/releases/{version}/{arch}` with the raw binary,
//! `GET /api/v1/releases`, `POST`/`DELETE /api/v1/releases/{version}/{arch}/broken`) and the
//! unauthenticated downloads an installer needs before it has any token: `GET /install.sh`,
//! `GET /download/agent/{version}/{arch}` (the binary), `.../manifest` (the exact signed
//! manifest text), `.../manifest.sig` (its base64 signature) and `GET /download/systemd/{unit}`.
//! Binaries are streamed from disk, never read whole into memory. See `crate::releases`.

use super::error::JsonBody;
use super::{audit, ApiError, Caller};
use crate::releases::{self as rel, PublishError, Published, ResolveError};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_shared::api::Scope;
use flotilla_shared::release::{
    validate_version, MarkBrokenRequest, ReleaseInfo, MAX_RELEASE_BYTES,
};
use std::net::SocketAddr;

/// Bytes read from a build's file per chunk of a download.
const CHUNK: usize = 64 * 1024;
/// Longest broken reason an operator may give.
const MAX_REASON_LEN: usize = 1000;

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::InvalidVersion(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_version", e.to_string())
        }
        PublishError::InvalidArch(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_arch", e.to_string())
        }
        PublishError::TooLarge => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        }
        PublishError::Empty | PublishError::Body(_) => ApiError::bad_request(e.to_string()),
        PublishError::NotABuild { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_build", e.to_string())
        }
        PublishError::Conflict { .. }
        | PublishError::SamePrecedence { .. }
        | PublishError::Concurrent { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
        }
        PublishError::Io { .. } => {
            tracing::error!(error = %e, "cannot store a published build");
            ApiError::internal()
        }
        PublishError::Store(e) => ApiError::from(e),
    }
}

fn resolve_error(e: ResolveError) -> ApiError {
    match e {
        ResolveError::Broken(_) => ApiError::new(StatusCode::GONE, "release_broken", e.to_string()),
        ResolveError::Store(e) => ApiError::from(e),
        _ => ApiError::not_found(e.to_string()),
    }
}

/// The (version, canonical arch) of an admin path, or a 400 naming what is wrong.
fn build_of(version: &str, arch: &str) -> Result<(String, &'static str), ApiError> {
    validate_version(version).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_version",
            format!("invalid version: {e}"),
        )
    })?;
    let arch = flotilla_shared::release::canonical_arch(arch)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_arch", e))?;
    Ok((version.to_string(), arch))
}

/// `PUT /api/v1/releases/{version}/{arch}` (admin), body = the agent binary: 201 with the new
/// build, 200 when the same bytes were published already (the file is rewritten from the
/// upload), 409 for different bytes or a version equal to a published one but for its build
/// metadata (`1.0.0+a` / `1.0.0+b`), 413 over
/// 64 MiB (at once when Content-Length says so), 400 for a bad version or architecture.
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path((version, arch)): Path<(String, String)>,
    request: Request,
) -> Result<(StatusCode, Json<ReleaseInfo>), ApiError> {
    caller.require(Scope::Admin)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let result = async {
        // Refuse before anything is read (or written) when the size is declared.
        build_of(&version, &arch)?;
        if declared.is_some_and(|n| n > MAX_RELEASE_BYTES) {
            return Err(publish_error(PublishError::TooLarge));
        }
        let body = request.into_body().into_data_stream();
        rel::publish(&state.releases, &version, &arch, body, caller.name())
            .await
            .map_err(publish_error)
    }
    .await;
    let detail = match &result {
        Ok(Published::Created(i)) => Some(format!("sha256={} size={}", i.sha256, i.size)),
        Ok(Published::Existing(i)) => Some(format!("unchanged sha256={}", i.sha256)),
        Err(_) => None,
    };
    audit(
        &state,
        caller.name(),
        "release.publish",
        &format!("{version}/{arch}"),
        &result,
        detail,
    )
    .await;
    Ok(match result? {
        Published::Created(info) => (StatusCode::CREATED, Json(info)),
        Published::Existing(info) => (StatusCode::OK, Json(info)),
    })
}

/// `GET /api/v1/releases` (read): every build, newest version first.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ReleaseInfo>>, ApiError> {
    caller.require(Scope::Read)?;
    Ok(Json(
        state
            .store
            .releases()
            .await?
            .into_iter()
            .map(|r| r.info)
            .collect(),
    ))
}

/// `POST /api/v1/releases/{version}/{arch}/broken` (admin) with `{"reason"}`: the build is never
/// sent to an agent again (undelivered copies are ended) and not served for download.
pub async fn mark_broken(
    State(state): State<AppState>,
    caller: Caller,
    Path((version, arch)): Path<(String, String)>,
    JsonBody(req): JsonBody<MarkBrokenRequest>,
) -> Result<Json<ReleaseInfo>, ApiError> {
    caller.require(Scope::Admin)?;
    let result = async {
        let (version, arch) = build_of(&version, &arch)?;
        let reason = req.reason.trim();
        if reason.is_empty()
            || reason.len() > MAX_REASON_LEN
            || reason.chars().any(char::is_control)
        {
            return Err(ApiError::bad_request(format!(
                "reason must be 1-{MAX_REASON_LEN} characters without control characters"
            )));
        }
        rel::mark_broken(&state.releases, &version, arch, reason, caller.name())
            .await?
            .map(|r| r.info)
            .ok_or_else(|| {
                ApiError::not_found(format!("no build of flotilla-agent {version} for {arch}"))
            })
    }
    .await;
    audit(
        &state,
        caller.name(),
        "release.broken",
        &format!("{version}/{arch}"),
        &result,
        Some(req.reason.clone()),
    )
    .await;
    result.map(Json)
}

/// `DELETE /api/v1/releases/{version}/{arch}/broken` (admin): clears the mark.
pub async fn unmark_broken(
    State(state): State<AppState>,
    caller: Caller,
    Path((version, arch)): Path<(String, String)>,
) -> Result<Json<ReleaseInfo>, ApiError> {
    caller.require(Scope::Admin)?;
    let result = async {
        let (version, arch) = build_of(&version, &arch)?;
        state
            .store
            .unmark_release_broken(version.clone(), arch.to_string())
            .await?
            .map(|r| r.info)
            .ok_or_else(|| {
                ApiError::not_found(format!("no build of flotilla-agent {version} for {arch}"))
            })
    }
    .await;
    audit(
        &state,
        caller.name(),
        "release.unbroken",
        &format!("{version}/{arch}"),
        &result,
        None,
    )
    .await;
    if result.is_ok() {
        tracing::info!(%version, %arch, by = caller.name(), "agent build no longer marked broken");
    }
    result.map(Json)
}

// === unauthenticated downloads ===

fn no_store() -> (header::HeaderName, HeaderValue) {
    (header::CACHE_CONTROL, HeaderValue::from_static("no-store"))
}

/// `GET /install.sh`: the installer with this relay's URL, key fingerprint and public key.
pub async fn install_sh(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let peer_is_proxy = state
        .config
        .trusted_proxies
        .iter()
        .any(|p| p.to_canonical() == peer.ip().to_canonical());
    let header_text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = |name: &str| {
        header_text(name)
            .filter(|_| peer_is_proxy)
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let proto = match forwarded("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    let host = forwarded("x-forwarded-host").or(header_text(header::HOST.as_str()));
    let url = rel::relay_url(&state.config.alerts.public_url, proto, host)
        .map_err(ApiError::bad_request)?;
    let script = rel::render_install_sh(
        rel::INSTALL_SH,
        &url,
        &state.fingerprint,
        &state.key.public_key().to_base64(),
    );
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
            ),
            no_store(),
        ],
        script,
    )
        .into_response())
}

/// Headers naming the build a download resolved to (useful with `latest`).
fn build_headers(r: &crate::store::releases::StoredRelease) -> [(&'static str, String); 3] {
    [
        ("x-flotilla-version", r.info.version.clone()),
        ("x-flotilla-arch", r.info.arch.clone()),
        ("x-flotilla-sha256", r.info.sha256.clone()),
    ]
}

fn with_build_headers(
    mut response: Response,
    r: &crate::store::releases::StoredRelease,
) -> Response {
    for (name, value) in build_headers(r) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /download/agent/{version}/{arch}`: the binary, streamed from this relay's file (written
/// from the database first when it lacks it); `latest` is the
/// highest build not marked broken. 404 naming what exists, 410 for a broken build.
pub async fn download_binary(
    State(state): State<AppState>,
    Path((version, arch)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let release = rel::resolve(&state.store, &version, &arch)
        .await
        .map_err(resolve_error)?;
    let path = rel::binary_path(
        &state.config.data_dir,
        &release.info.version,
        &release.info.arch,
    );
    // The file is this relay's cache of the bytes in the database: written from there when
    // it is missing or has the wrong size (published through another relay, restored, ...).
    match rel::materialise(&state.store, &state.config.data_dir, &release).await {
        Ok(_) => {}
        Err(rel::MaterialiseError::Store(e)) => return Err(e.into()),
        Err(e) => {
            tracing::error!(error = %e, "cannot write a published build's file from the database");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "release_corrupt",
                format!("{e}; publish the same build again to restore it"),
            ));
        }
    }
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "cannot open a published build");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "release_missing",
            format!(
                "the file of flotilla-agent {} for {} is missing on the relay; publish the same \
                 build again to restore it",
                release.info.version, release.info.arch
            ),
        )
    })?;
    let len = file
        .metadata()
        .await
        .map(|m| m.len())
        .map_err(|_| ApiError::internal())?;
    if len != release.info.size {
        tracing::error!(path = %path.display(), len, size = release.info.size, "a published build's file does not match its manifest");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "release_corrupt",
            format!(
                "the file of flotilla-agent {} for {} on the relay is {len} bytes, not the {} its \
                 manifest says; publish the same build again to restore it",
                release.info.version, release.info.arch, release.info.size
            ),
        ));
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
    let response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_LENGTH, HeaderValue::from(len)),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"flotilla-agent\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    Ok(with_build_headers(response, &release))
}

/// `GET /download/agent/{version}/{arch}/manifest` (the exact signed JSON) and
/// `.../manifest.sig` (the base64 signature, no newline).
pub async fn download_manifest(
    State(state): State<AppState>,
    Path((version, arch, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    if file != "manifest" && file != "manifest.sig" {
        return Err(ApiError::not_found(format!(
            "no such download {file:?}: a build has `manifest` and `manifest.sig`"
        )));
    }
    let release = rel::resolve(&state.store, &version, &arch)
        .await
        .map_err(resolve_error)?;
    let (text, content_type) = if file == "manifest" {
        (release.manifest.manifest.clone(), "application/json")
    } else {
        (
            release.manifest.signature.clone(),
            "text/plain; charset=utf-8",
        )
    };
    Ok(with_build_headers(
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            text,
        )
            .into_response(),
        &release,
    ))
}

/// `GET /download/systemd/{unit}`: the unit files the installer installs.
pub async fn download_unit(Path(unit): Path<String>) -> Result<Response, ApiError> {
    let Some((_, text)) = rel::UNITS.iter().find(|(name, _)| *name == unit) else {
        let names: Vec<&str> = rel::UNITS.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::not_found(format!(
            "no unit {unit:?}; the relay serves {}",
            names.join(", ")
        )));
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        *text,
    )
        .into_response())
}
