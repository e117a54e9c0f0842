//! `/v1/templates` and `/v1/builds`: template versions, builds started from them, their logs.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use nexus_lib::api::template::MAX_TEMPLATE_BYTES;
use nexus_lib::api::{
    Build, BuildListQuery, BuildLogQuery, CreateTemplate, ErrorBody, StartBuild, Template,
};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use super::AppState;
use super::caller::ApiCaller;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::guest::stream_response;
use crate::builds::LogSource;

/// How often a followed log is looked at for new bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(
            routes!(create_template, list_templates)
                .layer(DefaultBodyLimit::max(2 * MAX_TEMPLATE_BYTES + 4096)),
        )
        .routes(routes!(get_template, delete_template))
        .routes(routes!(template_versions))
        .routes(routes!(start_build))
        .routes(routes!(list_builds))
        .routes(routes!(get_build))
        .routes(routes!(cancel_build))
        .routes(routes!(build_logs))
}

/// Stores a new version of a template (its TOML text, parsed and validated first).
#[utoipa::path(
    post, path = "/v1/templates", tag = "templates", request_body = CreateTemplate,
    responses((status = 201, description = "Stored", body = Template),
               (status = 422, description = "Invalid template; `field` names the key", body = ErrorBody))
)]
async fn create_template(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateTemplate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.builds.create_template(req.source).await?),
    ))
}

/// The newest version of every template.
#[utoipa::path(
    get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "Templates", body = Vec<Template>))
)]
async fn list_templates(State(s): State<AppState>) -> Result<Json<Vec<Template>>, ApiError> {
    Ok(Json(s.builds.list_templates().await?))
}

/// The newest version of a template (by name or id, or `name@version`).
#[utoipa::path(
    get, path = "/v1/templates/{template}", tag = "templates",
    params(("template" = String, Path, description = "Template name, id or name@version")),
    responses((status = 200, description = "The template", body = Template),
               (status = 404, description = "No such template", body = ErrorBody))
)]
async fn get_template(
    State(s): State<AppState>,
    ApiPath(template): ApiPath<String>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(s.builds.get_template(&template).await?))
}

/// Every version of a template, oldest first.
#[utoipa::path(
    get, path = "/v1/templates/{template}/versions", tag = "templates",
    params(("template" = String, Path, description = "Template name or id")),
    responses((status = 200, description = "Versions", body = Vec<Template>),
               (status = 404, description = "No such template", body = ErrorBody))
)]
async fn template_versions(
    State(s): State<AppState>,
    ApiPath(template): ApiPath<String>,
) -> Result<Json<Vec<Template>>, ApiError> {
    Ok(Json(s.builds.template_versions(&template).await?))
}

/// Deletes every version of a template; its builds and images stay.
#[utoipa::path(
    delete, path = "/v1/templates/{template}", tag = "templates",
    params(("template" = String, Path, description = "Template name or id")),
    responses((status = 204, description = "Deleted"),
               (status = 404, description = "No such template", body = ErrorBody))
)]
async fn delete_template(
    State(s): State<AppState>,
    ApiPath(template): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.builds.delete_template(&template).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Builds a template in the background (202), or answers from the cache: when a build of the
/// same inputs succeeded and its image exists, a new succeeded build pointing at it (200).
#[utoipa::path(
    post, path = "/v1/templates/{template}/build", tag = "builds", request_body = StartBuild,
    params(("template" = String, Path, description = "Template name, id or name@version")),
    responses((status = 200, description = "Cache hit: already succeeded", body = Build),
               (status = 202, description = "Queued", body = Build),
               (status = 403, description = "A host file the caller may not read", body = ErrorBody),
               (status = 404, description = "No such template or base image", body = ErrorBody),
               (status = 422, description = "An input cannot be used", body = ErrorBody))
)]
async fn start_build(
    State(s): State<AppState>,
    ApiCaller(caller): ApiCaller,
    ApiPath(template): ApiPath<String>,
    ApiJson(req): ApiJson<StartBuild>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let build = s.builds.start(&template, req.no_cache, &caller).await?;
    let status = if build.state.is_final() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(build)))
}

/// Builds, newest first (at most 500).
#[utoipa::path(
    get, path = "/v1/builds", tag = "builds", params(BuildListQuery),
    responses((status = 200, description = "Builds", body = Vec<Build>))
)]
async fn list_builds(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<BuildListQuery>,
) -> Result<Json<Vec<Build>>, ApiError> {
    Ok(Json(s.builds.list(q.template).await?))
}

/// One build.
#[utoipa::path(
    get, path = "/v1/builds/{build}", tag = "builds",
    params(("build" = String, Path, description = "Build id (or a unique prefix of 8+ characters)")),
    responses((status = 200, description = "The build", body = Build),
               (status = 404, description = "No such build", body = ErrorBody))
)]
async fn get_build(
    State(s): State<AppState>,
    ApiPath(build): ApiPath<String>,
) -> Result<Json<Build>, ApiError> {
    Ok(Json(s.builds.get(&build).await?))
}

/// Cancels a queued or running build; answers once its VM and drive are gone.
#[utoipa::path(
    post, path = "/v1/builds/{build}/cancel", tag = "builds",
    params(("build" = String, Path, description = "Build id")),
    responses((status = 200, description = "Cancelled", body = Build),
               (status = 404, description = "No such build", body = ErrorBody),
               (status = 409, description = "The build is over", body = ErrorBody))
)]
async fn cancel_build(
    State(s): State<AppState>,
    ApiPath(build): ApiPath<String>,
) -> Result<Json<Build>, ApiError> {
    Ok(Json(s.builds.cancel(&build).await?))
}

/// The build's log (at most 1 MiB kept; a gap is marked). With `follow`, streamed until the
/// build is over.
#[utoipa::path(
    get, path = "/v1/builds/{build}/logs", tag = "builds",
    params(("build" = String, Path, description = "Build id"), BuildLogQuery),
    responses((status = 200, description = "Log text", content_type = "text/plain"),
               (status = 404, description = "No such build", body = ErrorBody))
)]
async fn build_logs(
    State(s): State<AppState>,
    ApiPath(build): ApiPath<String>,
    ApiQuery(q): ApiQuery<BuildLogQuery>,
) -> Result<Response, ApiError> {
    let body = match s.builds.log(&build).await? {
        LogSource::Stored(log) => Body::from(log),
        LogSource::Live { log, done } => {
            let read = move |offset: u64| {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                (log.read_from(offset), log.total())
            };
            if !q.follow {
                Body::from(read(0).0)
            } else {
                let stream = futures_util::stream::unfold((0u64, false), move |(offset, over)| {
                    let (read, done) = (read.clone(), done.clone());
                    async move {
                        if over {
                            return None;
                        }
                        loop {
                            let finished = done.is_cancelled();
                            let (bytes, total) = read(offset);
                            if !bytes.is_empty() || finished {
                                return Some((
                                    Ok::<_, std::io::Error>(Bytes::from(bytes)),
                                    (total, finished),
                                ));
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                                _ = done.cancelled() => {}
                            }
                        }
                    }
                });
                Body::from_stream(stream)
            }
        }
    };
    Ok(stream_response(body, "text/plain; charset=utf-8"))
}
