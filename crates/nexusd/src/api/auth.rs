//! Bearer-token check for the optional TCP listener. The Unix socket is protected by its file
//! mode (0600) instead. The token of `tcp_token_file` grants everything; a managed token (see
//! `tokens/`, recognised by the digest of its secret) grants its scope. The request carries the
//! [`Scope`] on to the route guard (`scope.rs`), the handlers and the MCP tools.
//!
//! The comparison is of SHA-256 digests, in constant time (`subtle`): its duration depends on
//! neither where the first difference is nor the presented token's length. The scheme name is
//! matched case-insensitively (RFC 9110). The token is never logged: the request span records
//! only method and path, and the answer to a wrong token does not echo it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::tokens::{Scope, TokenService};

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
    fn matches(&self, presented: &[u8]) -> bool {
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

/// What the TCP listener checks a bearer token against.
#[derive(Debug, Clone)]
pub(super) struct TcpAuth {
    pub token: BearerToken,
    pub tokens: TokenService,
}

pub(super) async fn require_bearer(
    State(auth): State<TcpAuth>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| bearer_credentials(v.as_bytes()))
        .map(<[u8]>::to_vec);
    let scope = match presented {
        Some(p) if auth.token.matches(&p) => Some(Scope::All),
        Some(p) => match auth.tokens.authenticate(&p).await {
            Ok(found) => found.map(Scope::Token),
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => None,
    };
    match scope {
        Some(scope) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
        .into_response(),
    }
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

    #[test]
    fn debug_does_not_show_the_token() {
        assert_eq!(
            format!("{:?}", BearerToken::new("s3cret")),
            "BearerToken(..)"
        );
    }
}
