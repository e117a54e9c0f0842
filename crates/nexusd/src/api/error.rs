//! The one place where domain errors become HTTP statuses and the JSON error body
//! `{"error":{"code","message","field"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nexus_lib::api::{ErrorBody, ErrorDetail};

use crate::store::StoreError;
use crate::vm::VmError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(err: &dyn std::error::Error) -> Self {
        // The full chain goes to the log; the client gets a short message without internals.
        tracing::error!(error = %error_chain(err), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the nexusd log",
        )
    }
}

/// `err: cause: cause` on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}

impl From<VmError> for ApiError {
    fn from(e: VmError) -> Self {
        let message = e.to_string();
        match e {
            VmError::NotFound(_) => Self::not_found(message),
            VmError::NameTaken(_) => Self {
                field: Some("name".into()),
                ..Self::new(StatusCode::CONFLICT, "conflict", message)
            },
            VmError::WrongState { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            VmError::Invalid { field, .. } => Self {
                field: Some(field.into()),
                ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            },
            VmError::Store(e) => Self::internal(&e),
        }
    }
}
