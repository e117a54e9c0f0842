//! The web UI at `/ui/`: a VM list with states and the last boot's phase timings, start and
//! stop, the console, and terminals (xterm.js over the terminal WebSocket). Plain HTML, CSS and
//! ES modules from `ui/static/` in the repository, compiled into the binary; xterm.js comes
//! from npm (`ui/package-lock.json`) and is embedded by `build.rs` when installed, so nothing
//! is loaded from elsewhere at run time.
//!
//! The pages hold no data: everything shown comes from the API (`/v1/...`), with the
//! browser's session on the TCP listener (`sessions.rs`, `api/auth.rs`) or with no auth on
//! the Unix socket, as for the API. The login page, its form and the static files are open;
//! `/ui/` itself sends a browser without a session to the login page.
//!
//! Every response here carries a strict Content-Security-Policy: scripts only from this
//! origin (no inline script, no eval), nothing framed (`frame-ancestors 'none'`), and
//! `nosniff`. Styles allow `'unsafe-inline'` because xterm.js writes `<style>` elements for
//! its cell sizes and theme; scripts stay `'self'` only.

pub mod sessions;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::AppState;
use crate::api::auth::{TcpAuth, cross_origin, same_origin};
use crate::api::error::ApiError;

mod vendor {
    include!(concat!(env!("OUT_DIR"), "/ui_vendor.rs"));
}

/// The policy every UI response carries.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Largest login form accepted.
const MAX_LOGIN_BODY: usize = 8 * 1024;

const INDEX: &str = include_str!("../../../../ui/static/index.html");
const LOGIN: &str = include_str!("../../../../ui/static/login.html");
const LOGIN_ERROR: &str = r#"<p class="error" role="alert">That token was not accepted.</p>"#;
const LOGIN_ERROR_SLOT: &str = "<!--error-->";

/// The UI's own files, served under `/ui/static/`.
static OWN: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../../../../ui/static/app.js")),
    (
        "terminal.js",
        JS,
        include_bytes!("../../../../ui/static/terminal.js"),
    ),
    (
        "style.css",
        CSS,
        include_bytes!("../../../../ui/static/style.css"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Whether the xterm.js files were embedded at build time.
pub fn has_terminal_assets() -> bool {
    !vendor::VENDOR.is_empty()
}

/// The UI's routes; `login` is the TCP listener's auth (none on the Unix socket).
pub(crate) fn router(login: Option<TcpAuth>) -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(index))
        .route(
            "/ui/login",
            get({
                let on_tcp = login.is_some();
                move || async move {
                    if on_tcp {
                        page(StatusCode::OK, LOGIN.replace(LOGIN_ERROR_SLOT, ""))
                    } else {
                        redirect("/ui/")
                    }
                }
            })
            .post({
                let login = login.clone();
                move |headers: HeaderMap, body: Bytes| log_in(login, headers, body)
            }),
        )
        .route(
            "/ui/logout",
            axum::routing::post(move |headers: HeaderMap| log_out(login, headers)),
        )
        .route("/ui/static/{file}", get(static_file))
        .layer(axum::middleware::map_response(protect))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_LOGIN_BODY))
}

/// Paths open without a session on the TCP listener.
pub fn is_public(path: &str) -> bool {
    path == "/ui/login"
        || path == "/ui/logout"
        || path
            .strip_prefix("/ui/static/")
            .is_some_and(|f| !f.is_empty() && !f.contains('/'))
}

/// Paths of the UI's pages: without a session they lead to the login page.
pub fn is_page(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The answer to a page request without a (live) session: the login page, the stale cookie
/// removed.
pub fn to_login(secure: bool) -> Response {
    let mut resp = redirect("/ui/login");
    if let Ok(v) = HeaderValue::from_str(&sessions::clear_cookie(secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    add_security_headers(resp.headers_mut());
    resp
}

async fn index() -> Response {
    page(StatusCode::OK, INDEX.to_owned())
}

async fn static_file(Path(file): Path<String>) -> Response {
    let found = OWN
        .iter()
        .chain(vendor::VENDOR.iter())
        .find(|(name, _, _)| *name == file);
    match found {
        Some((_, ty, bytes)) => {
            let mut resp = Response::new(Body::from(*bytes));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        None if file.starts_with("xterm") || file.starts_with("addon-") => ApiError::not_found(
            "the terminal assets were not installed: run `npm ci --prefix ui` (scripts/setup.sh does) and rebuild nexusd",
        )
        .into_response(),
        None => ApiError::not_found(format!("no UI file {file:?}")).into_response(),
    }
}

/// `POST /ui/login` with the form field `token`: a valid token gets a session cookie and the
/// UI; a wrong one the login page again, with 401.
async fn log_in(login: Option<TcpAuth>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(auth) = login else {
        return redirect("/ui/");
    };
    // A login forged by another site would log the victim into the attacker's session.
    if headers.contains_key(header::ORIGIN) && !same_origin(&headers, auth.secure) {
        return cross_origin().into_response();
    }
    let token = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body)
        .ok()
        .and_then(|fields| fields.into_iter().find(|(k, _)| k == "token"))
        .map(|(_, v)| v.trim().to_owned())
        .filter(|t| !t.is_empty() && t.len() <= 4096);
    let scope = match &token {
        Some(t) => match auth.scope_of(t.as_bytes()).await {
            Ok(scope) => scope,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    match (token, scope) {
        (Some(token), Some(_)) => {
            let id = auth.sessions.create(&token);
            let mut resp = redirect("/ui/");
            if let Ok(v) = HeaderValue::from_str(&sessions::set_cookie(&id, auth.secure)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        _ => page(
            StatusCode::UNAUTHORIZED,
            LOGIN.replace(LOGIN_ERROR_SLOT, LOGIN_ERROR),
        ),
    }
}

/// `POST /ui/logout`: ends the browser's session.
async fn log_out(login: Option<TcpAuth>, headers: HeaderMap) -> Response {
    let Some(auth) = login else {
        return redirect("/ui/");
    };
    if !same_origin(&headers, auth.secure) {
        return cross_origin().into_response();
    }
    if let Some(id) = sessions::session_cookie(&headers) {
        auth.sessions.remove(&id);
    }
    to_login(auth.secure)
}

fn page(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn redirect(to: &'static str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    resp
}

/// Adds the security headers to a UI response.
async fn protect(mut resp: Response) -> Response {
    add_security_headers(resp.headers_mut());
    resp
}

fn add_security_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` on a form POST, which the
    // same-origin rule must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}
