//! E2B's control plane, as the SDK's generated client calls it: field names, required fields
//! and status codes follow that client (`e2b/api/client` in the PyPI package).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use nexus_lib::api::{Vm, VmState};
use serde::{Deserialize, Serialize};

use super::sandbox::{
    DEFAULT_TIMEOUT_SECS, MAX_ENV_VARS, MAX_METADATA, MAX_TIMEOUT_SECS, NewSandbox, validate_map,
};
use super::{E2bError, E2bState};
use crate::store::e2b::SandboxRow;
use crate::store::rfc3339_ms;
use crate::tokens::Scope;

/// The envd version reported: 0.5.7 makes the SDK upload files as octet-stream.
pub const ENVD_VERSION: &str = "0.5.7";
const CLIENT_ID: &str = "nexus";
/// Most sandboxes one list page holds, and its default size.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

pub(super) fn routes() -> Router<E2bState> {
    Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(pause))
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/snapshots", post(unsupported))
        .route("/sandboxes/{id}/fork", post(unsupported))
        .route("/sandboxes/{id}/metrics", get(unsupported))
        .route("/v2/sandboxes/{id}/logs", get(unsupported))
        .route("/sandboxes/{id}/network", axum::routing::put(unsupported))
        .route("/templates", get(unsupported))
        .route("/volumes", get(unsupported).post(unsupported))
        .route("/volumes/{id}", delete(unsupported))
}

/// The request's JSON body, with a refusal in E2B's error shape.
struct Body<T>(T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = E2bError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, E2bError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(E2bError::new(e.status(), e.body_text())),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<i64>,
    auto_pause: Option<bool>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: i64,
}

#[derive(Deserialize)]
struct ConnectBody {
    timeout: Option<i64>,
}

/// `Sandbox` of the SDK's client: the answer to create and connect.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxOut {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
}

/// `ListedSandbox` and `SandboxDetail` of the SDK's client.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u32,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    envd_version: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
}

fn timeout_secs(value: Option<i64>) -> Result<i64, E2bError> {
    let secs = value.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(E2bError::bad_request(format!(
            "timeout must be 1–{MAX_TIMEOUT_SECS} seconds"
        )));
    }
    Ok(secs)
}

fn sandbox_out(row: &SandboxRow) -> SandboxOut {
    SandboxOut {
        template_id: row.template_id.clone(),
        sandbox_id: row.sandbox_id.clone(),
        client_id: CLIENT_ID,
        envd_version: ENVD_VERSION,
        envd_access_token: row.access_token.clone(),
    }
}

/// E2B's state of a sandbox: it is `running` while it exists (Nexus has no pause yet).
fn state_of(vm: &Vm) -> &'static str {
    match vm.state {
        VmState::Running | VmState::Starting => "running",
        _ => "running",
    }
}

fn listed(row: &SandboxRow, vm: &Vm, detail: bool) -> Listed {
    Listed {
        template_id: row.template_id.clone(),
        sandbox_id: row.sandbox_id.clone(),
        client_id: CLIENT_ID,
        started_at: rfc3339_ms(row.started_at_ms),
        end_at: rfc3339_ms(row.end_at_ms),
        cpu_count: vm.vcpus,
        memory_mb: vm.memory_mib,
        disk_size_mb: 0,
        state: state_of(vm),
        envd_version: ENVD_VERSION,
        metadata: row.metadata.clone(),
        envd_access_token: detail.then(|| row.access_token.clone()),
    }
}

/// `POST /v2/sandboxes` → 201.
async fn create(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Body(body): Body<CreateBody>,
) -> Result<Response, E2bError> {
    if body.auto_pause == Some(true) {
        return Err(E2bError::bad_request(
            "autoPause is not supported: Nexus cannot pause sandboxes yet",
        ));
    }
    let metadata = body.metadata.unwrap_or_default();
    let env_vars = body.env_vars.unwrap_or_default();
    validate_map("metadata", &metadata, MAX_METADATA)?;
    validate_map("envVars", &env_vars, MAX_ENV_VARS)?;
    if env_vars.keys().any(|k| k.contains('=')) {
        return Err(E2bError::bad_request("envVars: names must not contain '='"));
    }
    if body.template_id.is_empty() || body.template_id.len() > 128 {
        return Err(E2bError::bad_request("templateID must be 1–128 characters"));
    }
    let req = NewSandbox {
        template_id: body.template_id,
        timeout_secs: timeout_secs(body.timeout)?,
        metadata,
        env_vars,
    };
    let (row, _vm) = state.sandboxes.create(&scope, req).await?;
    Ok((StatusCode::CREATED, Json(sandbox_out(&row))).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
}

/// The metadata filter: `k=v&k2=v2` with keys and values percent-encoded once more.
fn metadata_filter(raw: &str) -> Result<Vec<(String, String)>, E2bError> {
    let mut out = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| E2bError::bad_request("metadata filter is not UTF-8"))
        };
        out.push((decode(&k)?, decode(&v)?));
        if out.len() > MAX_METADATA {
            return Err(E2bError::bad_request(format!(
                "metadata filter: at most {MAX_METADATA} pairs"
            )));
        }
    }
    Ok(out)
}

/// `GET /v2/sandboxes` → 200 array; `x-next-token` when more follow.
async fn list(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Query(q): Query<ListQuery>,
) -> Result<Response, E2bError> {
    let filter = match &q.metadata {
        Some(raw) => metadata_filter(raw)?,
        None => Vec::new(),
    };
    let mut want_running = true;
    if let Some(states) = &q.state {
        want_running = false;
        for s in states.split(',') {
            match s {
                "running" => want_running = true,
                "paused" => {}
                other => {
                    return Err(E2bError::bad_request(format!(
                        "unknown state {other:?} (running or paused)"
                    )));
                }
            }
        }
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(E2bError::bad_request(format!("limit must be 1–{MAX_PAGE}")));
    }
    let after = match &q.next_token {
        Some(token) => Some(parse_token(token)?),
        None => None,
    };
    let mut matching: Vec<Listed> = Vec::new();
    if want_running {
        for (row, vm) in state.sandboxes.list(&scope).await? {
            let key = (row.started_at_ms, row.sandbox_id.clone());
            if after.as_ref().is_some_and(|a| &key <= a) {
                continue;
            }
            if filter
                .iter()
                .all(|(k, v)| row.metadata.get(k).is_some_and(|m| m == v))
            {
                matching.push(listed(&row, &vm, false));
            }
        }
    }
    let more = matching.len() > limit;
    matching.truncate(limit);
    let mut resp = Json(&matching).into_response();
    if more && let Some(last) = matching.last() {
        let started = humantime::parse_rfc3339(&last.started_at)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis());
        let token = format!("{started}.{}", last.sandbox_id);
        if let Ok(v) = HeaderValue::from_str(&token) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

/// `<started ms>.<sandbox id>` of the last sandbox of the previous page.
fn parse_token(token: &str) -> Result<(i64, String), E2bError> {
    let bad = || E2bError::bad_request("nextToken is not one this server gave");
    let (ms, id) = token.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    if id.is_empty() || id.len() > 64 {
        return Err(bad());
    }
    Ok((ms, id.to_string()))
}

/// `GET /sandboxes/{id}` → 200 detail.
async fn detail(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<Response, E2bError> {
    let (row, vm) = state.sandboxes.get(&scope, &id).await?;
    Ok(Json(listed(&row, &vm, true)).into_response())
}

/// `DELETE /sandboxes/{id}` → 204 (404 when unknown).
async fn kill(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    if !scope.lifecycle() {
        return Err(E2bError::new(
            StatusCode::FORBIDDEN,
            "this API key may not kill sandboxes (it was made without --lifecycle)",
        ));
    }
    let (row, _) = state.sandboxes.get(&scope, &id).await?;
    state
        .sandboxes
        .end(&row, "killed through the E2B API")
        .await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/timeout {timeout}` → 204.
async fn set_timeout(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    Body(body): Body<TimeoutBody>,
) -> Result<StatusCode, E2bError> {
    let secs = timeout_secs(Some(body.timeout))?;
    let (row, _) = state.sandboxes.get(&scope, &id).await?;
    state.sandboxes.set_timeout(&row.sandbox_id, secs).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v2/sandboxes/{id}/connect {timeout}` → 200 with the sandbox; the expiry moves out to
/// `timeout` from now when that is later.
async fn connect(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    Body(body): Body<ConnectBody>,
) -> Result<Response, E2bError> {
    let asked = body.timeout;
    let (row, _) = state.sandboxes.get(&scope, &id).await?;
    if let Some(asked) = asked {
        let secs = timeout_secs(Some(asked))?;
        if row.end_at_ms < crate::store::now_ms() + secs * 1000 {
            state.sandboxes.set_timeout(&row.sandbox_id, secs).await?;
        }
    }
    Ok((StatusCode::OK, Json(sandbox_out(&row))).into_response())
}

/// `POST /sandboxes/{id}/refreshes {duration}` → 204: keeps the sandbox alive that long.
async fn refresh(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<StatusCode, E2bError> {
    let secs = body
        .and_then(|Json(v)| v.get("duration").and_then(serde_json::Value::as_i64))
        .unwrap_or(60);
    let secs = timeout_secs(Some(secs))?;
    let (row, _) = state.sandboxes.get(&scope, &id).await?;
    if row.end_at_ms < crate::store::now_ms() + secs * 1000 {
        state.sandboxes.set_timeout(&row.sandbox_id, secs).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/pause` (and resume) → 409: Nexus cannot pause a VM yet.
async fn pause(
    State(state): State<E2bState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    state.sandboxes.get(&scope, &id).await?;
    Err(E2bError::new(
        StatusCode::CONFLICT,
        "pausing is not supported by Nexus yet: the sandbox keeps running",
    ))
}

async fn unsupported(headers: HeaderMap) -> E2bError {
    let _ = headers;
    E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        "this E2B API is not supported by Nexus",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_filter_is_decoded_twice_as_the_sdk_encodes_it() {
        // The SDK sends urlencode({quote(k): quote(v)}): `a b` → `a%20b` → `a%2520b`.
        let pairs = metadata_filter("run=a%2520b&suite=nexus").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("run".to_string(), "a b".to_string()),
                ("suite".to_string(), "nexus".to_string())
            ]
        );
    }

    #[test]
    fn page_tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(
            parse_token("1700000000000.e2b-0123456789ab").unwrap(),
            (1_700_000_000_000, "e2b-0123456789ab".to_string())
        );
        assert!(parse_token("garbage").is_err());
        assert!(parse_token("x.e2b-1").is_err());
    }

    #[test]
    fn timeouts_outside_the_bounds_are_refused() {
        assert_eq!(timeout_secs(None).unwrap(), DEFAULT_TIMEOUT_SECS);
        assert!(timeout_secs(Some(0)).is_err());
        assert!(timeout_secs(Some(MAX_TIMEOUT_SECS + 1)).is_err());
    }
}
