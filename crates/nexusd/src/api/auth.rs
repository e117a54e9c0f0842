//! Bearer-token check for the optional TCP listener. The Unix socket is protected by its file
//! mode (0600) instead. The token of `tcp_token_file` grants everything; a managed token (see
//! `tokens/`, recognised by the digest of its secret) grants its scope. The request carries the
//! [`Scope`] on to the route guard (`scope.rs`), the handlers and the MCP tools.
//!
//! The comparison is of SHA-256 digests, in constant time (`subtle`): its duration depends on
//! neither where the first difference is nor the presented token's length. The scheme name is
//! matched case-insensitively (RFC 9110). The token is never logged: the request span records
//! only method and path, and the answer to a wrong token does not echo it.
//!
//! Browsers log in at `/ui/login` and then present a session cookie instead of the header (see
//! `ui/sessions.rs` for why a session id and not the token). The token behind the session is
//! checked here on every request, exactly as a header's would be. A cookie-authenticated
//! request that changes state or upgrades to a WebSocket must carry an `Origin` equal to this
//! listener's (scheme and `Host`), or it is refused with 403: cross-site WebSocket hijacking
//! and CSRF from a page of the same site (another port) are refused even where `SameSite`
//! would let the cookie through.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::tokens::{Scope, TokenService};
use crate::ui::sessions::{BrowserSessions, session_cookie};

/// The secret a TCP client must present as `Authorization: Bearer <token>`, kept as its digest.
#[derive(Clone)]
pub struct BearerToken(Arc<[u8; 32]>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl BearerToken {
    pub fn new(token: &str) -> Self {
        Self(Arc::new(digest(token.as_bytes())))
    }

    /// Compares in time independent of the content and length of `presented`.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(&digest(presented)).into()
    }
}

/// The credentials of an `Authorization` header value with the `Bearer` scheme, any case.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(rest[start..].trim_ascii_end())
}

/// What the TCP listener checks a bearer token (or a browser session's token) against.
#[derive(Debug, Clone)]
pub(crate) struct TcpAuth {
    pub token: BearerToken,
    pub tokens: TokenService,
    /// Browser sessions opened by `/ui/login` (see `ui/sessions.rs`).
    pub sessions: BrowserSessions,
    /// Whether the listener has TLS: the cookie gets `Secure`, origins are `https://`.
    pub secure: bool,
}

impl TcpAuth {
    /// The scope a presented token grants, if it is valid.
    pub(crate) async fn scope_of(&self, presented: &[u8]) -> Result<Option<Scope>, ApiError> {
        if self.token.matches(presented) {
            return Ok(Some(Scope::All));
        }
        Ok(self
            .tokens
            .authenticate(presented)
            .await
            .map_err(ApiError::from)?
            .map(Scope::Token))
    }
}

/// How a request proved itself.
enum Credential {
    Bearer(Vec<u8>),
    /// A browser session: subject to the same-origin rule.
    Cookie(Option<String>),
    None,
}

pub(super) async fn require_bearer(
    State(auth): State<TcpAuth>,
    mut req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let credential = match headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()))
    {
        Some(p) => Credential::Bearer(p.to_vec()),
        None => match session_cookie(headers) {
            Some(id) => Credential::Cookie(auth.sessions.secret(&id)),
            None => Credential::None,
        },
    };
    let (presented, by_cookie) = match credential {
        Credential::Bearer(p) => (Some(p), false),
        Credential::Cookie(secret) => (secret.map(String::into_bytes), true),
        Credential::None => (None, false),
    };
    let scope = match presented {
        Some(p) => match auth.scope_of(&p).await {
            Ok(found) => found,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let path = req.uri().path();
    match scope {
        Some(scope) => {
            if by_cookie && needs_same_origin(&req) && !same_origin(req.headers(), auth.secure) {
                return cross_origin().into_response();
            }
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        // The login page, its form and the UI's static files are open to all (they hold no
        // data); the UI itself sends a browser to the login page.
        None if crate::ui::is_public(path) => next.run(req).await,
        None if crate::ui::is_page(path) => crate::ui::to_login(auth.secure),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (or browser session: log in at /ui/login)",
        )
        .into_response(),
    }
}

/// Whether a cookie-authenticated request must come from the listener's own origin: anything
/// but a plain read, and every WebSocket upgrade (a cross-site page could otherwise open a
/// terminal with the user's cookie).
fn needs_same_origin(req: &Request) -> bool {
    !matches!(*req.method(), Method::GET | Method::HEAD)
        || req.headers().contains_key(axum::http::header::UPGRADE)
}

/// Whether `Origin` names this listener: the scheme of the listener and the request's `Host`.
/// A missing `Origin` fails: browsers send it on every request this check guards.
pub(crate) fn same_origin(headers: &axum::http::HeaderMap, secure: bool) -> bool {
    let origin = headers
        .get(axum::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok());
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let scheme = if secure { "https://" } else { "http://" };
    origin
        .strip_prefix(scheme)
        .is_some_and(|rest| !host.is_empty() && rest.eq_ignore_ascii_case(host))
}

pub(crate) fn cross_origin() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "cross-origin request refused: a browser session only works from this listener's own pages",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let t = BearerToken::new("s3cret");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b"s3cres"));
        assert!(!t.matches(b"s3cret-and-much-longer"));
        assert!(!t.matches(b""));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        assert_eq!(bearer_credentials(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"BEARER  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
    }

    #[test]
    fn other_schemes_and_empty_credentials_are_refused() {
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b"Bearerabc"), None);
        assert_eq!(bearer_credentials(b"Bearer "), None);
    }

    fn origin_headers(origin: Option<&str>, host: &str) -> axum::http::HeaderMap {
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(axum::http::header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_origin_needs_the_listeners_scheme_and_host() {
        let h = |o| origin_headers(o, "127.0.0.1:7470");
        assert!(same_origin(&h(Some("http://127.0.0.1:7470")), false));
        assert!(!same_origin(&h(Some("https://127.0.0.1:7470")), false));
        assert!(same_origin(&h(Some("https://127.0.0.1:7470")), true));
        assert!(!same_origin(&h(Some("http://127.0.0.1:7471")), false));
        assert!(!same_origin(&h(Some("http://127.0.0.1:7470.evil")), false));
        assert!(!same_origin(&h(Some("null")), false));
        assert!(!same_origin(&h(None), false));
    }

    #[test]
    fn debug_does_not_show_the_token() {
        assert_eq!(
            format!("{:?}", BearerToken::new("s3cret")),
            "BearerToken(..)"
        );
    }
}
