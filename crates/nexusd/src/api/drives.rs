//! `/v1/drives`: copy-on-write drives made from images, and their attachment to VMs.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nexus_lib::api::{AttachDrive, CreateDrive, Drive, ErrorBody};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_drive, list_drives))
        .routes(routes!(get_drive, delete_drive))
        .routes(routes!(attach_drive))
        .routes(routes!(detach_drive))
}

/// Creates a drive: a writable snapshot of an image, optionally grown to `size`.
#[utoipa::path(
    post, path = "/v1/drives", tag = "drives", request_body = CreateDrive,
    responses(
        (status = 201, description = "Created", body = Drive),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 409, description = "Name taken, or the image is broken", body = ErrorBody),
        (status = 422, description = "Invalid field (a size smaller than the image, a bad name)", body = ErrorBody),
        (status = 503, description = "The storage pool cannot be opened", body = ErrorBody),
        (status = 507, description = "The storage pool is out of space", body = ErrorBody),
    )
)]
async fn create_drive(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateDrive>,
) -> Result<(StatusCode, Json<Drive>), ApiError> {
    state
        .images
        .ensure_default(Some(req.image.as_str()))
        .await?;
    Ok((StatusCode::CREATED, Json(state.drives.create(req).await?)))
}

/// Lists drives, oldest first.
#[utoipa::path(
    get, path = "/v1/drives", tag = "drives",
    responses((status = 200, description = "All drives", body = Vec<Drive>))
)]
async fn list_drives(State(state): State<AppState>) -> Result<Json<Vec<Drive>>, ApiError> {
    Ok(Json(state.drives.list().await?))
}

/// One drive by id or name.
#[utoipa::path(
    get, path = "/v1/drives/{drive}", tag = "drives",
    params(("drive" = String, Path, description = "Drive id or name")),
    responses((status = 200, description = "The drive", body = Drive),
               (status = 404, description = "No such drive", body = ErrorBody))
)]
async fn get_drive(
    State(state): State<AppState>,
    ApiPath(drive): ApiPath<String>,
) -> Result<Json<Drive>, ApiError> {
    Ok(Json(state.drives.get(&drive).await?))
}

/// Deletes a drive that is not attached to a live VM.
#[utoipa::path(
    delete, path = "/v1/drives/{drive}", tag = "drives",
    params(("drive" = String, Path, description = "Drive id or name")),
    responses((status = 204, description = "Deleted"),
               (status = 404, description = "No such drive", body = ErrorBody),
               (status = 409, description = "Attached to a live VM", body = ErrorBody))
)]
async fn delete_drive(
    State(state): State<AppState>,
    ApiPath(drive): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.drives.delete(&drive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Attaches a drive to a VM that is not live (as its root drive with `root: true`).
#[utoipa::path(
    post, path = "/v1/drives/{drive}/attach", tag = "drives", request_body = AttachDrive,
    params(("drive" = String, Path, description = "Drive id or name")),
    responses((status = 200, description = "Attached", body = Drive),
               (status = 404, description = "No such drive or VM", body = ErrorBody),
               (status = 409, description = "Already attached, VM live, root taken, or drive broken", body = ErrorBody))
)]
async fn attach_drive(
    State(state): State<AppState>,
    ApiPath(drive): ApiPath<String>,
    ApiJson(req): ApiJson<AttachDrive>,
) -> Result<Json<Drive>, ApiError> {
    Ok(Json(state.drives.attach(&drive, req).await?))
}

/// Detaches a drive from its VM, which must not be live.
#[utoipa::path(
    post, path = "/v1/drives/{drive}/detach", tag = "drives",
    params(("drive" = String, Path, description = "Drive id or name")),
    responses((status = 200, description = "Detached", body = Drive),
               (status = 404, description = "No such drive", body = ErrorBody),
               (status = 409, description = "Not attached, or its VM is live", body = ErrorBody))
)]
async fn detach_drive(
    State(state): State<AppState>,
    ApiPath(drive): ApiPath<String>,
) -> Result<Json<Drive>, ApiError> {
    Ok(Json(state.drives.detach(&drive).await?))
}
