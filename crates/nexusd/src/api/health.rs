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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use crate::api::{AppState, router};
    use crate::storage::{PoolConfig, PoolManager};
    use crate::store::Store;
    use crate::vm::assets::BootAssets;
    use crate::vm::lifecycle::LifecycleConfig;

    fn state(dir: &std::path::Path) -> AppState {
        let store = Store::open(&dir.join("n.db")).unwrap();
        let pool = Arc::new(PoolManager::new(PoolConfig::Dir(dir.join("pool"))));
        let assets = BootAssets::new(dir.join("k"), dir.join("a"), None);
        let cfg = LifecycleConfig {
            vmm: crate::vmm::VmmChoice::Qemu,
            boot_timeout: std::time::Duration::from_secs(1),
            stop_timeout: std::time::Duration::from_secs(1),
            qemu: "qemu-system-x86_64".into(),
            vhost_vsock: "vhost-device-vsock".into(),
            firecracker: None,
            firecracker_kernel: None,
            guest_kernel: None,
            jailer: None,
            jailer_chroot_base: "/srv/jailer".into(),
            console_max_bytes: 4096,
            vms_dir: dir.join("vms"),
            jail: crate::jail::JailConfig::with_defaults(dir),
        };
        let policy = crate::hostpath::ImportPolicy::new(None, Vec::new());
        let asset_service = crate::assets::AssetService::new(
            store.clone(),
            crate::assets::AssetDirs::under(dir),
            Default::default(),
            Arc::new(policy.clone()),
        )
        .unwrap();
        AppState::new(
            store,
            pool,
            assets,
            cfg,
            policy,
            crate::network::NetworkSettings::loopback_only(),
            asset_service,
        )
    }

    async fn health_status(state: AppState) -> StatusCode {
        let req = Request::get("/v1/health").body(Body::empty()).unwrap();
        router(state).oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn readable_database_is_healthy() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(health_status(state(dir.path())).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn unreadable_database_is_503() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path());
        // Corrupt the schema as a damaged file would: every later statement fails to prepare.
        state
            .store
            .call(|c| {
                c.execute_batch(
                    "PRAGMA writable_schema = ON;
                     UPDATE sqlite_master SET sql = 'CREATE TABLE broken(' WHERE type = 'table';
                     PRAGMA writable_schema = OFF;",
                )?;
                let cookie: i64 = c.pragma_query_value(None, "schema_version", |r| r.get(0))?;
                c.pragma_update(None, "schema_version", cookie + 1)?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(health_status(state).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
