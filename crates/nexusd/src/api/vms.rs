//! `/v1/vms`: VM records.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nexus_lib::api::{CreateVm, ErrorBody, Transition, Vm, VmDeleteQuery, VmListQuery};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::scope::ApiScope;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_vm, list_vms))
        .routes(routes!(get_vm, delete_vm))
        .routes(routes!(vm_history))
}

/// Records a new VM in state `created`.
#[utoipa::path(
    post, path = "/v1/vms", tag = "vms", request_body = CreateVm,
    responses(
        (status = 201, description = "Created", body = Vm),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "A managed token without `lifecycle`", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 409, description = "Name taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
        (status = 507, description = "The storage pool is out of space", body = ErrorBody),
    )
)]
async fn create_vm(
    State(state): State<AppState>,
    ApiScope(scope): ApiScope,
    ApiJson(req): ApiJson<CreateVm>,
) -> Result<(StatusCode, Json<Vm>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.create_vm(req, &scope).await?),
    ))
}

/// Lists VMs, oldest first (only those of its scope for a managed token).
#[utoipa::path(
    get, path = "/v1/vms", tag = "vms", params(VmListQuery),
    responses((status = 200, description = "All VMs", body = Vec<Vm>),
               (status = 400, description = "Bad query", body = ErrorBody))
)]
async fn list_vms(
    State(state): State<AppState>,
    ApiScope(scope): ApiScope,
    ApiQuery(q): ApiQuery<VmListQuery>,
) -> Result<Json<Vec<Vm>>, ApiError> {
    let vms = state.vms.list(q.state).await?;
    Ok(Json(vms.into_iter().filter(|v| scope.sees(v.id)).collect()))
}

/// One VM by id or name.
#[utoipa::path(
    get, path = "/v1/vms/{vm}", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "The VM", body = Vm),
               (status = 404, description = "No such VM", body = ErrorBody))
)]
async fn get_vm(
    State(state): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(state.vms.get(&vm).await?))
}

/// Deletes a VM that is not live, and the drives created with it unless `keep_drives=true`.
#[utoipa::path(
    delete, path = "/v1/vms/{vm}", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name"), VmDeleteQuery),
    responses((status = 204, description = "Deleted"),
               (status = 404, description = "No such VM", body = ErrorBody),
               (status = 409, description = "The VM's state forbids deletion", body = ErrorBody))
)]
async fn delete_vm(
    State(state): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiQuery(q): ApiQuery<VmDeleteQuery>,
) -> Result<StatusCode, ApiError> {
    state.lifecycle.delete(&vm, q.keep_drives).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every state transition of a VM, oldest first.
#[utoipa::path(
    get, path = "/v1/vms/{vm}/history", tag = "vms",
    params(("vm" = String, Path, description = "VM id or name")),
    responses((status = 200, description = "Transitions", body = Vec<Transition>),
               (status = 404, description = "No such VM", body = ErrorBody))
)]
async fn vm_history(
    State(state): State<AppState>,
    ApiPath(vm): ApiPath<String>,
) -> Result<Json<Vec<Transition>>, ApiError> {
    Ok(Json(state.vms.history(&vm).await?))
}
