//! The E2B adapter: an optional plain-HTTP listener (`e2b_listen`, loopback only) serving the
//! subset of E2B's control-plane API and of its in-sandbox daemon's (envd) API that the official
//! SDK uses, mapped onto Nexus VMs and the Nexus agent. No E2B concept leaks into the core: a
//! sandbox is a VM plus a row in `e2b_sandboxes` (template, metadata, environment, expiry).
//!
//! - `control.rs`: `/v2/sandboxes`, `/sandboxes/{id}` and friends (REST JSON, E2B's shapes).
//! - `sandbox.rs`: the sandbox service (create, list, kill, timeouts) and the expiry task.
//! - `connect.rs`: the Connect protocol's JSON codec and envelopes; `proto.rs` the generated
//!   envd messages.
//! - `process.rs`, `pty.rs`: `process.Process` on the agent's background processes and
//!   terminal sessions; `filesystem.rs`: `filesystem.Filesystem`; `files.rs`: `/files`,
//!   `/health`.
//!
//! API keys (`X-API-KEY`) are nexusd's managed tokens: one made with `--lifecycle` may create
//! sandboxes, and each sees only the VMs in its scope. envd calls are routed by the
//! `E2b-Sandbox-Id` header and authorised by the sandbox's own access token (`X-Access-Token`,
//! returned at create and connect) or by an API key whose scope holds the sandbox.

mod connect;
mod control;
mod files;
mod filesystem;
mod process;
pub mod proto;
mod pty;
mod sandbox;
mod watcher;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::AppState;
use crate::tokens::Scope;

pub use sandbox::{SandboxService, spawn_expiry};

/// Largest control-plane JSON body.
const MAX_CONTROL_BODY: usize = 256 * 1024;

/// The E2B listener's router.
pub fn router(app: AppState, sandboxes: Arc<SandboxService>) -> Router {
    let state = E2bState { app, sandboxes };
    let control = control::routes()
        .layer(axum::extract::DefaultBodyLimit::max(MAX_CONTROL_BODY))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    let envd = process::routes()
        .merge(filesystem::routes())
        .merge(files::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            sandbox::resolve_envd,
        ));
    Router::new()
        .route("/health", axum::routing::get(files::health))
        .merge(control)
        .merge(envd)
        .fallback(not_found)
        .with_state(state)
}

/// What the E2B handlers reach.
#[derive(Clone)]
pub(crate) struct E2bState {
    pub app: AppState,
    pub sandboxes: Arc<SandboxService>,
}

/// An error in E2B's control-plane shape: `{code: <HTTP status>, message}`.
#[derive(Debug)]
pub struct E2bError {
    pub status: StatusCode,
    pub message: String,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<crate::api::error::ApiError> for E2bError {
    fn from(e: crate::api::error::ApiError) -> Self {
        Self::new(e.status, e.message)
    }
}

impl From<crate::vm::VmError> for E2bError {
    fn from(e: crate::vm::VmError) -> Self {
        crate::api::error::ApiError::from(e).into()
    }
}

impl From<crate::store::StoreError> for E2bError {
    fn from(e: crate::store::StoreError) -> Self {
        crate::api::error::ApiError::from(e).into()
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.status.as_u16(), "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Authenticates `X-API-KEY` as a managed token and puts its [`Scope`] on the request.
async fn require_api_key(State(state): State<E2bState>, mut req: Request, next: Next) -> Response {
    match api_key_scope(&state, req.headers()).await {
        Ok(Some(scope)) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        Ok(None) => E2bError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown X-API-KEY: use a token from `nexusctl token create`",
        )
        .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The scope of the request's `X-API-KEY`, when it names a managed token.
async fn api_key_scope(
    state: &E2bState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Scope>, E2bError> {
    let Some(key) = headers.get("x-api-key") else {
        return Ok(None);
    };
    let found = state.app.tokens.authenticate(key.as_bytes()).await?;
    Ok(found.map(Scope::Token))
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> E2bError {
    E2bError::not_found(format!("no route for {method} {}", uri.path()))
}
