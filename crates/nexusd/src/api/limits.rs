//! Request-size limits answered with the API's JSON error body: a request target longer than
//! [`MAX_URI_BYTES`] is 414, more than [`MAX_HEADERS`] headers or more than [`MAX_HEADER_BYTES`] of
//! them 431. hyper has its own, larger limits (a 64 KiB target, 100 headers, a ~400 KiB read
//! buffer) that it answers itself, before routing, with an empty body; `parse_errors.rs` gives
//! those answers (and hyper's 400 for a malformed request) the JSON body of [`unparsed`].

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Longest request target (path and query), bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 64;
/// Largest total of header names and values, bytes.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

pub(super) async fn enforce(req: Request, next: Next) -> Response {
    match check(&req) {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    }
}

fn check(req: &Request) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "{} headers of {bytes} bytes; at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes are accepted",
                headers.len()
            ),
        ));
    }
    None
}

/// The error of a request hyper refused to parse, by the status hyper chose (see
/// `parse_errors.rs`): its own limits are larger than these, and not told to us.
pub(super) fn unparsed(status: StatusCode) -> ApiError {
    match status {
        StatusCode::URI_TOO_LONG => ApiError::new(
            status,
            "uri_too_long",
            format!("the request target is too long; at most {MAX_URI_BYTES} bytes are accepted"),
        ),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::new(
            status,
            "headers_too_large",
            format!(
                "the header section is too large; at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes are accepted"
            ),
        ),
        _ => ApiError::bad_request(
            "the request could not be parsed as HTTP/1.1 (malformed request line or header)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    #[test]
    fn a_long_target_is_414() {
        let req = Request::get(format!("/v1/vms/{}", "a".repeat(MAX_URI_BYTES)))
            .body(Body::empty())
            .unwrap();
        assert_eq!(check(&req).unwrap().status, StatusCode::URI_TOO_LONG);
    }

    #[test]
    fn large_headers_are_431() {
        let req = Request::get("/v1/vms")
            .header("x-big", "a".repeat(MAX_HEADER_BYTES))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            check(&req).unwrap().status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[test]
    fn an_ordinary_request_passes() {
        let req = Request::get("/v1/vms?state=running")
            .header("authorization", "Bearer x")
            .body(Body::empty())
            .unwrap();
        assert!(check(&req).is_none());
    }
}
