//! `/v1/images`: master images.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nexus_lib::api::{AssetKind, CreateImage, ErrorBody, Image, MAX_IMAGE_PATH_CHARS};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::caller::ApiCaller;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(import_image, list_images))
        .routes(routes!(get_image, delete_image))
}

/// Imports a master image from an ext4 file or a directory on the daemon's host, or from a
/// `rootfs` asset (a tarball unpacked into ext4 with the guest agent added).
#[utoipa::path(
    post, path = "/v1/images", tag = "images", request_body = CreateImage,
    responses(
        (status = 201, description = "Imported", body = Image),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "The caller may not import this path: outside `import_roots` (none over TCP by default), unreadable by the connecting user, through a symlink or `..` out of its root, or a protected location", body = ErrorBody),
        (status = 404, description = "No such rootfs asset", body = ErrorBody),
        (status = 409, description = "Name taken, or an asset name shared by several assets", body = ErrorBody),
        (status = 422, description = "Invalid field: a missing or unusable path (not a directory or regular file, too long, a NUL, unreadable), a file that is not ext4, a directory over `import_max_entries` or `import_max_bytes`, an import past `import_timeout_secs`, a bad name", body = ErrorBody),
        (status = 503, description = "The storage pool cannot be opened (e.g. mounting it needs root), or the import was cancelled (the client went away)", body = ErrorBody),
        (status = 507, description = "The storage pool is out of space", body = ErrorBody),
    )
)]
async fn import_image(
    State(state): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiJson(req): ApiJson<CreateImage>,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    if let Some(key) = &req.asset {
        if !req.path.is_empty() {
            return Err(ApiError::invalid(
                "asset",
                "invalid asset: give either `path` or `asset`, not both",
            ));
        }
        let asset = state.assets.get(key, Some(AssetKind::Rootfs)).await?;
        return Ok((
            StatusCode::CREATED,
            Json(
                state
                    .images
                    .import_rootfs(&asset, req.name, req.size)
                    .await?,
            ),
        ));
    }
    // The wire schema's bounds (`^/`, at most 1024 characters), checked as the document says.
    if !req.path.starts_with('/') {
        return Err(ApiError::invalid(
            "path",
            format!("invalid path: {:?} is not an absolute path", req.path),
        ));
    }
    if req.path.chars().count() > MAX_IMAGE_PATH_CHARS {
        return Err(ApiError::invalid(
            "path",
            format!("invalid path: longer than {MAX_IMAGE_PATH_CHARS} characters"),
        ));
    }
    Ok((
        StatusCode::CREATED,
        Json(state.images.import(req, &caller).await?),
    ))
}

/// Lists images, oldest first.
#[utoipa::path(
    get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "All images", body = Vec<Image>))
)]
async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<Image>>, ApiError> {
    Ok(Json(state.images.list().await?))
}

/// One image by id or name.
#[utoipa::path(
    get, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Image id or name")),
    responses((status = 200, description = "The image", body = Image),
               (status = 404, description = "No such image", body = ErrorBody))
)]
async fn get_image(
    State(state): State<AppState>,
    ApiPath(image): ApiPath<String>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(state.images.get(&image).await?))
}

/// Deletes an image no drive depends on.
#[utoipa::path(
    delete, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "Image id or name")),
    responses((status = 204, description = "Deleted"),
               (status = 404, description = "No such image", body = ErrorBody),
               (status = 409, description = "Drives depend on the image", body = ErrorBody))
)]
async fn delete_image(
    State(state): State<AppState>,
    ApiPath(image): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.images.delete(&image).await?;
    Ok(StatusCode::NO_CONTENT)
}
