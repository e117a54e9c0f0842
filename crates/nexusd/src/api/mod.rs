//! The HTTP API: routes, the OpenAPI document generated from them, and the middleware around
//! them (request ids and spans, body limits, bearer auth on TCP). Handlers parse and validate,
//! then call a domain service.

mod assets;
pub(crate) mod auth;
mod builds;
mod caller;
mod drives;
pub mod error;
pub mod extract;
mod guest;
mod health;
mod images;
mod limits;
mod network;
mod openapi;
mod parse_errors;
mod scope;
mod terminal;
mod tokens;
mod vms;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, Request, Uri};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::assets::AssetService;
use crate::drives::DriveService;
use crate::hostpath::ImportPolicy;
use crate::images::ImageService;
use crate::storage::PoolManager;
use crate::store::Store;
use crate::tokens::Scope;
use crate::vm::VmService;
use crate::vm::assets::BootAssets;
use crate::vm::lifecycle::{Lifecycle, LifecycleConfig};
use error::ApiError;
use nexus_lib::api::{CreateVm, Vm};

pub use auth::BearerToken;
pub use caller::UnixPeer;
pub use parse_errors::{JsonErrors, JsonErrorsListener};

/// Largest JSON request body accepted.
pub const MAX_JSON_BODY: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub vms: VmService,
    pub lifecycle: Lifecycle,
    pub pool: Arc<PoolManager>,
    pub images: ImageService,
    pub drives: DriveService,
    pub assets: AssetService,
    pub started: Instant,
    /// The MCP server's settings (`/mcp`).
    pub mcp: crate::mcp::McpSettings,
    /// Cancelled when the daemon stops: ends MCP sessions and their open streams.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub tokens: crate::tokens::TokenService,
    /// Per-VM MCP servers connected through their agents (their tools are on `/mcp`).
    pub guest_mcp: crate::mcp::GuestServers,
    /// Templates and their builds.
    pub builds: crate::builds::BuildService,
    /// Open terminal WebSockets on all listeners: an upgraded connection leaves the TCP
    /// listener's connection cap, so it is bounded here (`terminal::MAX_TERMINALS`).
    pub terminals: terminal::TerminalSlots,
}

impl AppState {
    pub fn new(
        store: Store,
        pool: Arc<PoolManager>,
        assets: BootAssets,
        lifecycle: LifecycleConfig,
        import_policy: ImportPolicy,
        network: crate::network::NetworkSettings,
        asset_service: AssetService,
    ) -> Self {
        let drives = DriveService::new(store.clone(), pool.clone());
        let network = crate::network::NetworkService::new(network, store.clone());
        let vms = VmService::new(store.clone(), drives.clone(), network);
        let policy = Arc::new(import_policy);
        let images = ImageService::new(store.clone(), pool.clone(), policy.clone())
            .with_agent(assets.agent().map(std::path::Path::to_path_buf));
        let lifecycle = Lifecycle::new(store.clone(), vms.clone(), assets, lifecycle);
        let builds = crate::builds::BuildService::new(
            store.clone(),
            lifecycle.clone(),
            images.clone(),
            asset_service.clone(),
            policy,
            std::env::temp_dir().join(format!("nexus-builds-{}", std::process::id())),
            crate::builds::DEFAULT_MAX_CONCURRENT,
        );
        Self {
            builds,
            lifecycle,
            vms,
            images,
            drives,
            assets: asset_service,
            pool,
            store: store.clone(),
            started: Instant::now(),
            mcp: crate::mcp::McpSettings::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            tokens: crate::tokens::TokenService::new(store.clone()),
            guest_mcp: crate::mcp::GuestServers::default(),
            terminals: terminal::TerminalSlots::default(),
        }
    }
}

impl AppState {
    /// Records a VM (building the built-in `default` image first when it is asked for and does
    /// not exist yet), puts it in the scope of the token that asked (before booting, so a boot
    /// that fails leaves it the token's to delete), and boots it when `start` says so:
    /// `POST /v1/vms` and the MCP tool `vm_create`.
    pub async fn create_vm(&self, req: CreateVm, scope: &Scope) -> Result<Vm, ApiError> {
        let start = req.start;
        self.images.ensure_default(req.image.as_deref()).await?;
        let vm = self.vms.create(req).await?;
        if let Scope::Token(token) = scope {
            self.tokens.grant_vm(token.id, vm.id).await?;
        }
        Ok(if start {
            self.lifecycle.start(&vm.id.to_string()).await?
        } else {
            vm
        })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nexus API",
        description = "The nexusd API: microVMs for AI agents. Every error, whatever its status, is the JSON body `{\"error\":{\"code\",\"message\",\"field\"}}` (`field` when one request field is at fault). Over TCP every operation needs `Authorization: Bearer <token>`; over the Unix socket none does."
    ),
    tags((name = "system"), (name = "vms"), (name = "guest"), (name = "images"), (name = "drives"), (name = "network"), (name = "assets"), (name = "tokens"), (name = "templates"), (name = "builds"))
)]
struct ApiDoc;

/// Routes and their OpenAPI description, built together so the document cannot drift.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::routes())
        .merge(vms::routes())
        .merge(guest::routes())
        .merge(terminal::routes())
        .merge(images::routes())
        .merge(drives::routes())
        .merge(network::routes())
        .merge(assets::routes())
        .merge(tokens::routes())
        .merge(builds::routes())
}

/// The full application: API routes, `/v1/openapi.json`, the MCP endpoint `/mcp`, the web UI
/// at `/ui/`, JSON fallbacks and middleware (the Unix socket's: no login).
pub fn router(state: AppState) -> Router {
    app(state, None)
}

/// The application; `login` is the TCP listener's auth, which the UI's login page uses.
fn app(state: AppState, login: Option<auth::TcpAuth>) -> Router {
    let (router, mut doc) = routes().split_for_parts();
    utoipa::Modify::modify(&openapi::Common, &mut doc);
    let doc = Arc::new(doc);
    let mcp = crate::mcp::service(state.clone(), state.mcp, state.shutdown.child_token());
    router
        .route_service("/mcp", mcp)
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            scope::guard,
        ))
        // After the scope guard: the UI's pages and files hold no data; what they show comes
        // from the API, under the scope of the browser's session.
        .merge(crate::ui::router(login))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .layer(axum::middleware::from_fn(limits::enforce))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .extensions()
                    .get::<RequestId>()
                    .and_then(|id| id.header_value().to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", id, method = %req.method(), path = %req.uri().path())
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(SeqRequestId::default()))
        .with_state(state)
}

/// The router for the TCP listener: the same API behind a bearer token (the configured one, or
/// a managed token with its scope) or a browser session made from one at `/ui/login`. `tls`
/// says whether the listener has TLS (the session cookie is then `Secure`).
pub fn tcp_router(state: AppState, token: BearerToken, tls: bool) -> Router {
    let auth = auth::TcpAuth {
        token,
        tokens: state.tokens.clone(),
        sessions: crate::ui::sessions::BrowserSessions::default(),
        secure: tls,
    };
    app(state, Some(auth.clone())).layer(axum::middleware::from_fn_with_state(
        auth,
        auth::require_bearer,
    ))
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Request ids: a process-wide sequence, short and greppable in logs.
#[derive(Debug, Clone, Default)]
struct SeqRequestId(Arc<AtomicU64>);

impl MakeRequestId for SeqRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        HeaderValue::from_str(&format!("r{n}"))
            .ok()
            .map(RequestId::new)
    }
}
