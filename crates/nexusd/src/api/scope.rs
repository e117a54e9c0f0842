//! What a request may reach, by its [`Scope`]: the Unix socket and the configured TCP token see
//! everything; a managed token (see `tokens/`) only its VMs.
//!
//! [`guard`] runs as a route layer, after routing, so it decides on the matched route template
//! and on the path parameters as axum decoded them for the handler (never a second decoding of
//! the raw path). For a managed token: a VM route whose VM is outside its scope answers 404, as
//! if the VM did not exist; creating and deleting VMs needs `lifecycle`; the VM list is filtered
//! by its handler; reading images, health and the OpenAPI document is allowed; `/mcp` applies
//! the scope in each tool; anything else (a VM's egress policy, drives, the host network, image
//! import and delete, tokens) is 403.

use std::convert::Infallible;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::tokens::Scope;
use crate::vm::VmError;

/// Applies the request's scope (inserting [`Scope::All`] when no listener set one: the Unix
/// socket) to the matched route.
pub(super) async fn guard(
    State(state): State<AppState>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    mut req: Request,
    next: Next,
) -> Response {
    let scope = req
        .extensions()
        .get::<Scope>()
        .cloned()
        .unwrap_or(Scope::All);
    req.extensions_mut().insert(scope.clone());
    let Scope::Token(token) = &scope else {
        return next.run(req).await;
    };
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let method = req.method().clone();
    // Decoded as the handler's own path extractor decodes them; undecodable means no VM.
    let vm = params.ok().and_then(|p| {
        p.iter()
            .find(|(key, _)| *key == "vm")
            .map(|(_, value)| value.to_owned())
    });
    let decision = match (&method, template.as_str(), vm) {
        (_, "/mcp", _) => Ok(()),
        (&Method::GET, "/v1/health" | "/v1/openapi.json" | "/v1/images", _) => Ok(()),
        (&Method::GET, "/v1/images/{image}" | "/v1/vms", _) => Ok(()),
        (&Method::POST, "/v1/vms", _) if token.lifecycle => Ok(()),
        (&Method::POST, "/v1/vms", _) => Err(forbidden(
            "this token may not create VMs (it was made without --lifecycle)",
        )),
        // A VM's egress policy is the operator's to set, not its token holder's to lift.
        (_, "/v1/vms/{vm}/network", _) => {
            Err(forbidden("this token may not change a VM's network policy"))
        }
        (_, t, Some(vm)) if t.starts_with("/v1/vms/{vm}") => match state.vms.get(&vm).await {
            Ok(found) if scope.sees(found.id) => {
                if method == Method::DELETE && t == "/v1/vms/{vm}" && !token.lifecycle {
                    Err(forbidden(
                        "this token may not delete VMs (it was made without --lifecycle)",
                    ))
                } else {
                    Ok(())
                }
            }
            Ok(_) => Err(ApiError::from(VmError::NotFound(vm))),
            Err(e) => Err(ApiError::from(e)),
        },
        _ => Err(forbidden(
            "this token may only use its VMs (and list images); use the Unix socket or the configured token for the rest",
        )),
    };
    match decision {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// The request's scope, for handlers that filter (the VM list) or record (a created VM).
pub struct ApiScope(pub Scope);

impl<S: Send + Sync> FromRequestParts<S> for ApiScope {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self(
            parts
                .extensions
                .get::<Scope>()
                .cloned()
                .unwrap_or(Scope::All),
        ))
    }
}
