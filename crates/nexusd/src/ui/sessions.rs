//! Browser sessions of the TCP listener: a browser cannot put `Authorization` on a WebSocket
//! upgrade (nor on a page load), so `/ui/login` trades a token for a cookie.
//!
//! Design: the cookie holds an opaque session id (32 random bytes, base64url), never the token.
//! nexusd keeps, in memory, the id's SHA-256 digest → the token that logged in and an absolute
//! expiry ([`SESSION_TTL`]). Compared with putting the token itself in the cookie:
//! - the long-lived token never sits in the browser's cookie jar, and a leaked cookie dies at
//!   its expiry, at logout, or when nexusd restarts (the user logs in again);
//! - logout really ends the session server-side;
//! - every request re-checks the stored token exactly as a bearer header would be checked
//!   (`api::auth`), so revoking a managed token ends its browser sessions at once and a
//!   session's scope is always the token's current scope.
//!
//! Lookup is by the digest of the presented id, so the map's lookup time tells an attacker
//! nothing about stored ids; the id has 256 bits of entropy. The number of sessions is capped
//! ([`MAX_SESSIONS`]): expired ones go first, then the one closest to expiry.
//!
//! The cookie is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (not sent on requests
//! started by other sites), `Path=/`, `Secure` when the listener has TLS. `SameSite` does not
//! separate origins of the same site (another port on the same host is same-site), so
//! cookie-authenticated requests that change state or open a WebSocket must also carry an
//! `Origin` equal to the listener's own (`api::auth`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "nexus_session";
/// How long a browser session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most browser sessions held at once.
pub const MAX_SESSIONS: usize = 256;
/// Length of a session id in the cookie (32 bytes, base64url without padding).
const ID_LEN: usize = 43;

struct Entry {
    secret: String,
    expires: Instant,
}

/// The live browser sessions of one TCP listener.
#[derive(Clone, Default)]
pub struct BrowserSessions(Arc<Mutex<HashMap<[u8; 32], Entry>>>);

impl std::fmt::Debug for BrowserSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrowserSessions(..)")
    }
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl BrowserSessions {
    /// Opens a session for a token already checked; returns the new session id.
    pub fn create(&self, secret: &str) -> String {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|_, e| e.expires > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k);
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            key(&id),
            Entry {
                secret: secret.to_owned(),
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// The token behind a live session id.
    pub fn secret(&self, id: &str) -> Option<String> {
        if id.len() != ID_LEN {
            return None;
        }
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = key(id);
        match map.get(&k) {
            Some(e) if e.expires > Instant::now() => Some(e.secret.clone()),
            Some(_) => {
                map.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn remove(&self, id: &str) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&key(id));
    }
}

/// The session id in a request's `Cookie` headers, if any.
pub fn session_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| v.len() == ID_LEN)
}

/// The `Set-Cookie` value that stores `id` in the browser.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_maps_to_its_token_until_removed() {
        let s = BrowserSessions::default();
        let id = s.create("tok");
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(s.secret(&id).as_deref(), Some("tok"));
        s.remove(&id);
        assert_eq!(s.secret(&id), None);
    }

    #[test]
    fn unknown_or_malformed_ids_find_nothing() {
        let s = BrowserSessions::default();
        s.create("tok");
        assert_eq!(s.secret("nope"), None);
        assert_eq!(s.secret(&"A".repeat(ID_LEN)), None);
    }

    #[test]
    fn the_number_of_sessions_is_capped() {
        let s = BrowserSessions::default();
        let first = s.create("tok");
        for _ in 0..MAX_SESSIONS {
            s.create("tok");
        }
        assert_eq!(s.0.lock().unwrap().len(), MAX_SESSIONS);
        assert_eq!(s.secret(&first), None);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        let id = "x".repeat(ID_LEN);
        h.insert(
            http::header::COOKIE,
            format!("a=b; {COOKIE}={id}; c=d").parse().unwrap(),
        );
        assert_eq!(session_cookie(&h), Some(id));
    }

    #[test]
    fn cookie_attributes_are_strict() {
        let c = set_cookie("abc", true);
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(c.contains(attr), "{c}");
        }
        assert!(!set_cookie("abc", false).contains("Secure"));
    }
}
