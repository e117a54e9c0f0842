//! Extractors that answer bad input with the API's JSON error body instead of axum's plain text:
//! malformed JSON is 400, a body of the wrong shape (unknown field, wrong type) 422, an oversized
//! body 413, a wrong content type 415.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// JSON body extractor with API errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let text = r.body_text();
    match r {
        JsonRejection::JsonDataError(_) => {
            let field = data_error_field(&text);
            ApiError {
                field,
                ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", text)
            }
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(text),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than {} bytes", super::MAX_JSON_BODY),
            )
        }
        other => ApiError::new(other.status(), "bad_request", text),
    }
}

/// The field path serde reported (`vcpus: invalid type ...` → `vcpus`), if any.
fn data_error_field(text: &str) -> Option<String> {
    let detail = text.split_once("target type: ")?.1;
    let (path, _) = detail.split_once(": ")?;
    (!path.is_empty() && !path.contains(' ') && path != ".").then(|| path.to_owned())
}

/// Query-string extractor with API errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::bad_request(r.body_text()))
            }
            Err(r) => Err(ApiError::bad_request(r.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_is_taken_from_serde_path() {
        let t =
            "Failed to deserialize the JSON body into the target type: vcpus: invalid type: string";
        assert_eq!(data_error_field(t).as_deref(), Some("vcpus"));
        let t = "Failed to deserialize the JSON body into the target type: missing field `name` at line 1";
        assert_eq!(data_error_field(t), None);
    }
}
