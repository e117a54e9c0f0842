//! `/v1/tokens`: managed API tokens for the TCP listener. Only callers that see everything (the
//! Unix socket, or the configured TCP token) reach these routes; a managed token gets 403 from the
//! route guard.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use nexus_lib::api::{CreateToken, CreatedToken, ErrorBody, Token};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
}

/// Creates a token scoped to the given VMs; the reply holds its secret, shown this once.
#[utoipa::path(
    post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses(
        (status = 201, description = "Created; `token` is the secret", body = CreatedToken),
        (status = 403, description = "A managed token may not manage tokens", body = ErrorBody),
        (status = 404, description = "A VM of `vms` does not exist", body = ErrorBody),
        (status = 422, description = "Invalid field", body = ErrorBody),
    )
)]
async fn create_token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    Ok((StatusCode::CREATED, Json(state.tokens.create(req).await?)))
}

/// Lists the tokens, oldest first (never their secrets).
#[utoipa::path(
    get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "All tokens", body = Vec<Token>),
               (status = 403, description = "A managed token may not manage tokens", body = ErrorBody))
)]
async fn list_tokens(State(state): State<AppState>) -> Result<Json<Vec<Token>>, ApiError> {
    Ok(Json(state.tokens.list().await?))
}

/// Revokes a token: it is refused from the next request on.
#[utoipa::path(
    delete, path = "/v1/tokens/{token}", tag = "tokens",
    params(("token" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"),
               (status = 403, description = "A managed token may not manage tokens", body = ErrorBody),
               (status = 404, description = "No such token", body = ErrorBody))
)]
async fn revoke_token(
    State(state): State<AppState>,
    ApiPath(token): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.tokens.revoke(&token).await?;
    Ok(StatusCode::NO_CONTENT)
}
