//! `GET /v1/health`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nexus_lib::api::{DatabaseHealth, Health};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health))
}

/// Daemon status, version, uptime and database; 503 when the database cannot be read.
#[utoipa::path(
    get, path = "/v1/health", tag = "system",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database cannot be read", body = Health),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let schema = state.store.schema_version().await;
    if let Err(e) = &schema {
        tracing::warn!(error = %super::error::error_chain(e), "health: database unreadable");
    }
    let ok = schema.is_ok();
    let report = Health {
        status: if ok { "ok" } else { "degraded" }.into(),
        version: nexus_lib::VERSION.into(),
        uptime_ms: state.started.elapsed().as_millis() as u64,
        database: DatabaseHealth {
            path: state.store.path().display().to_string(),
            schema_version: schema.unwrap_or(0),
            ok,
        },
        pool: pool_health(&state).await,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// The pool's report (statvfs may block on a busy filesystem: off the reactor).
async fn pool_health(state: &AppState) -> Option<nexus_lib::api::PoolHealth> {
    let pool = state.pool.clone();
    tokio::task::spawn_blocking(move || pool.health())
        .await
        .ok()
}
