//! `/v1/providers` and `/v1/assets`: download pipelines and what they installed. A download
//! answers with a stream of newline-delimited [`DownloadEvent`]s; its end is a `done` or an
//! `error` event.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use nexus_lib::api::{
    Asset, AssetListQuery, AssetVerification, CreateProvider, DownloadEvent, DownloadRequest,
    ErrorBody, Provider,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::caller::ApiCaller;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers, add_provider))
        .routes(routes!(get_provider, remove_provider))
        .routes(routes!(list_assets))
        .routes(routes!(download))
        .routes(routes!(get_asset, remove_asset))
        .routes(routes!(verify_asset))
}

/// Lists providers, built-in first.
#[utoipa::path(
    get, path = "/v1/providers", tag = "assets",
    responses((status = 200, description = "All providers", body = Vec<Provider>))
)]
async fn list_providers(State(s): State<AppState>) -> Result<Json<Vec<Provider>>, ApiError> {
    Ok(Json(s.assets.list_providers().await?))
}

/// Adds a provider: a kind, settings and (default: the kind's) pipeline, checked before it is
/// stored: bounds, templates, artifact flow, and that every installed file is verified by a
/// checksum and a signature unless the settings declare `no_checksum` / `no_signature`.
#[utoipa::path(
    post, path = "/v1/providers", tag = "assets", request_body = CreateProvider,
    responses(
        (status = 201, description = "Added", body = Provider),
        (status = 409, description = "Name taken (built-in names included)", body = ErrorBody),
        (status = 422, description = "Invalid name, settings or stages (the message names the stage)", body = ErrorBody),
    )
)]
async fn add_provider(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateProvider>,
) -> Result<(StatusCode, Json<Provider>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.assets.add_provider(req).await?)))
}

/// One provider and its pipeline.
#[utoipa::path(
    get, path = "/v1/providers/{provider}", tag = "assets",
    params(("provider" = String, Path, description = "Provider name")),
    responses((status = 200, description = "The provider", body = Provider),
               (status = 404, description = "No such provider", body = ErrorBody))
)]
async fn get_provider(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Provider>, ApiError> {
    Ok(Json(s.assets.get_provider(&name).await?))
}

/// Removes a provider that is not built in (its assets stay).
#[utoipa::path(
    delete, path = "/v1/providers/{provider}", tag = "assets",
    params(("provider" = String, Path, description = "Provider name")),
    responses((status = 204, description = "Removed"),
               (status = 404, description = "No such provider", body = ErrorBody),
               (status = 409, description = "A built-in provider", body = ErrorBody))
)]
async fn remove_provider(
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.assets.remove_provider(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists installed assets, oldest first.
#[utoipa::path(
    get, path = "/v1/assets", tag = "assets", params(AssetListQuery),
    responses((status = 200, description = "Installed assets", body = Vec<Asset>))
)]
async fn list_assets(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AssetListQuery>,
) -> Result<Json<Vec<Asset>>, ApiError> {
    Ok(Json(s.assets.list(q.kind).await?))
}

/// Runs a provider's pipeline. The answer streams `DownloadEvent` lines (stage, progress, note)
/// and ends with `done` (the installed assets) or `error` (nothing installed; an interrupted
/// http(s) download is kept and resumed by the next run). Closing the connection cancels it.
#[utoipa::path(
    post, path = "/v1/assets/download", tag = "assets", request_body = DownloadRequest,
    responses(
        (status = 200, description = "Stream of DownloadEvent lines", content_type = "application/x-ndjson", body = DownloadEvent),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 422, description = "Invalid vars (names, values, count)", body = ErrorBody),
    )
)]
async fn download(
    State(s): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiJson(req): ApiJson<DownloadRequest>,
) -> Result<Response, ApiError> {
    let started = s.assets.download(req, &caller).await?;
    let lines = futures_util::stream::unfold(started, |mut d| async move {
        let event = d.events.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(line)), d))
    });
    Ok(super::guest::stream_response(
        Body::from_stream(lines),
        "application/x-ndjson",
    ))
}

/// One asset by id, by name, or by `NAME@VERSION`.
#[utoipa::path(
    get, path = "/v1/assets/{asset}", tag = "assets",
    params(("asset" = String, Path, description = "Asset id, name or NAME@VERSION"), AssetListQuery),
    responses((status = 200, description = "The asset", body = Asset),
               (status = 404, description = "No such asset", body = ErrorBody),
               (status = 409, description = "The name is shared by several assets", body = ErrorBody))
)]
async fn get_asset(
    State(s): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<AssetListQuery>,
) -> Result<Json<Asset>, ApiError> {
    Ok(Json(s.assets.get(&key, q.kind).await?))
}

/// Removes an asset; its file goes too unless another asset shares it.
#[utoipa::path(
    delete, path = "/v1/assets/{asset}", tag = "assets",
    params(("asset" = String, Path, description = "Asset id, name or NAME@VERSION"), AssetListQuery),
    responses((status = 204, description = "Removed"),
               (status = 404, description = "No such asset", body = ErrorBody),
               (status = 409, description = "The name is shared by several assets", body = ErrorBody))
)]
async fn remove_asset(
    State(s): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<AssetListQuery>,
) -> Result<StatusCode, ApiError> {
    s.assets.remove(&key, q.kind).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hashes an installed asset's file again and compares it with its recorded sha256 and size.
#[utoipa::path(
    post, path = "/v1/assets/{asset}/verify", tag = "assets",
    params(("asset" = String, Path, description = "Asset id, name or NAME@VERSION"), AssetListQuery),
    responses((status = 200, description = "The verdict (`ok` false when the file changed or is missing)", body = AssetVerification),
               (status = 404, description = "No such asset", body = ErrorBody),
               (status = 409, description = "The name is shared by several assets", body = ErrorBody))
)]
async fn verify_asset(
    State(s): State<AppState>,
    ApiPath(key): ApiPath<String>,
    ApiQuery(q): ApiQuery<AssetListQuery>,
) -> Result<Json<AssetVerification>, ApiError> {
    Ok(Json(s.assets.verify(&key, q.kind).await?))
}
