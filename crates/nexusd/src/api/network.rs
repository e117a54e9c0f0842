//! `/v1/network` and `/v1/vms/{vm}/network`: the host network and a VM's egress policy.

use axum::Json;
use axum::extract::State;
use nexus_lib::api::{ErrorBody, NetworkCleanup, NetworkInfo, UpdateVmNetwork, Vm};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(network_show))
        .routes(routes!(network_gc))
        .routes(routes!(network_down))
        .routes(routes!(update_vm_network))
}

/// The host network: bridge, subnet, gateway, uplink, resolver upstreams and the VMs on it.
#[utoipa::path(
    get, path = "/v1/network", tag = "network",
    responses((status = 200, description = "The host network", body = NetworkInfo),
               (status = 503, description = "The host's routes cannot be read", body = ErrorBody))
)]
async fn network_show(State(state): State<AppState>) -> Result<Json<NetworkInfo>, ApiError> {
    Ok(Json(state.vms.network().info().await?))
}

/// Removes taps and firewall objects of this daemon that no running VM owns, and rebuilds the
/// tables from the database.
#[utoipa::path(
    post, path = "/v1/network/gc", tag = "network",
    responses((status = 200, description = "What was removed", body = NetworkCleanup),
               (status = 503, description = "The host network cannot be changed (e.g. no CAP_NET_ADMIN)", body = ErrorBody))
)]
async fn network_gc(State(state): State<AppState>) -> Result<Json<NetworkCleanup>, ApiError> {
    Ok(Json(state.vms.network().gc().await?))
}

/// Removes everything of Nexus from the host network: resolver, tables, taps, bridge, and the
/// forwarding nexusd turned on. Refused while VMs run on it.
#[utoipa::path(
    post, path = "/v1/network/down", tag = "network",
    responses((status = 200, description = "What was removed", body = NetworkCleanup),
               (status = 409, description = "VMs are running on the network", body = ErrorBody),
               (status = 503, description = "The host network cannot be changed (e.g. no CAP_NET_ADMIN)", body = ErrorBody))
)]
async fn network_down(State(state): State<AppState>) -> Result<Json<NetworkCleanup>, ApiError> {
    Ok(Json(state.vms.network().down().await?))
}

/// Replaces a VM's egress policy; applied at once when the VM runs, noted in its history.
#[utoipa::path(
    patch, path = "/v1/vms/{vm}/network", tag = "network", request_body = UpdateVmNetwork,
    params(("vm" = String, Path, description = "VM id or name")),
    responses(
        (status = 200, description = "The VM with its new policy", body = Vm),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such VM", body = ErrorBody),
        (status = 409, description = "The VM has no nat network", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid policy", body = ErrorBody),
        (status = 503, description = "The firewall cannot be changed", body = ErrorBody),
    )
)]
async fn update_vm_network(
    State(state): State<AppState>,
    ApiPath(vm): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateVmNetwork>,
) -> Result<Json<Vm>, ApiError> {
    Ok(Json(state.vms.set_network(&vm, req).await?))
}
