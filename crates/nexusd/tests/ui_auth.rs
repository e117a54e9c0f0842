//! The web UI's browser auth on the real TCP listener, over raw HTTP: login trades a token for
//! a session cookie, the cookie works where the bearer header does (and only for its token's
//! scope), cross-origin use of the cookie is refused, and UI answers carry a strict CSP.

mod common;
#[path = "ui/http.rs"]
mod http;

use common::{TCP_TOKEN, ctl_json, stderr, tcp_addr, tcp_daemon};
use http::{login, post_login, request};

#[test]
fn ui_without_a_session_redirects_to_login_and_the_api_answers_401() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);

    let page = request(&addr, "GET", "/ui/", &[], "");
    let api = request(&addr, "GET", "/v1/vms", &[], "");

    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.header("location"), Some("/ui/login"));
    assert_eq!(api.status, 401, "{}", api.body);
}

#[test]
fn login_page_and_static_files_are_open_and_carry_a_strict_csp() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);

    for path in ["/ui/login", "/ui/static/app.js", "/ui/static/style.css"] {
        let a = request(&addr, "GET", path, &[], "");
        assert_eq!(a.status, 200, "{path}: {}", a.body);
        let csp = a.header("content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'self'",
            "script-src 'self';",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp:?} lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe-eval"), "{csp}");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[test]
fn a_wrong_token_is_refused_at_login_and_gets_no_cookie() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);

    let a = post_login(&addr, "not-the-token");

    assert_eq!(a.status, 401, "{}", a.body);
    assert!(a.header("set-cookie").is_none());
    assert!(a.body.contains("not accepted"), "{}", a.body);
}

#[test]
fn the_session_cookie_is_httponly_strict_and_opens_the_ui_and_the_api() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    let a = post_login(&addr, TCP_TOKEN);
    let cookie_attrs = a.header("set-cookie").unwrap_or_default().to_owned();
    let cookie = cookie_attrs.split(';').next().unwrap().to_owned();

    let page = request(&addr, "GET", "/ui/", &[("Cookie", &cookie)], "");
    let vms = request(&addr, "GET", "/v1/vms", &[("Cookie", &cookie)], "");

    assert_eq!((a.status, a.header("location")), (303, Some("/ui/")));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie_attrs.contains(attr), "{cookie_attrs}");
    }
    assert!(
        !cookie_attrs.contains(TCP_TOKEN),
        "the cookie holds the token"
    );
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/ui/static/app.js"), "{}", page.body);
    assert_eq!(vms.status, 200, "{}", vms.body);
}

#[test]
fn a_cookie_with_a_foreign_origin_is_refused_on_post_and_websocket_upgrade() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    let cookie = login(&addr, TCP_TOKEN).expect("login");
    let evil = [
        ("Cookie", cookie.as_str()),
        ("Origin", "http://evil.example"),
    ];
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    let post = request(
        &addr,
        "POST",
        "/v1/vms",
        &[evil[0], evil[1], ("Content-Type", "application/json")],
        r#"{"name":"x"}"#,
    );
    let ws_headers: Vec<_> = evil.iter().chain(upgrade.iter()).copied().collect();
    let ws = request(
        &addr,
        "GET",
        "/v1/vms/any/terminal?cols=80&rows=24",
        &ws_headers,
        "",
    );
    let no_origin = request(&addr, "POST", "/v1/vms/any/stop", &[evil[0]], "");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let other_port = format!(
        "http://{host}:{}",
        port.parse::<u16>().unwrap().wrapping_add(1)
    );
    let same_site = request(
        &addr,
        "POST",
        "/v1/vms/any/stop",
        &[evil[0], ("Origin", &other_port)],
        "",
    );

    assert_eq!(post.status, 403, "{}", post.body);
    assert_eq!(ws.status, 403, "{}", ws.body);
    assert_eq!(no_origin.status, 403, "{}", no_origin.body);
    assert_eq!(same_site.status, 403, "{}", same_site.body);
    assert_eq!(
        ctl_json(&d, &["vm", "list"]),
        serde_json::json!([]),
        "a VM was created"
    );
}

#[test]
fn a_cookie_from_the_own_origin_may_change_state() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    let cookie = login(&addr, TCP_TOKEN).expect("login");
    let origin = format!("http://{addr}");

    let a = request(
        &addr,
        "POST",
        "/v1/vms",
        &[
            ("Cookie", &cookie),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
        ],
        r#"{"name":"fromui"}"#,
    );

    assert_eq!(a.status, 201, "{}", a.body);
}

#[test]
fn logout_ends_the_session() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    let cookie = login(&addr, TCP_TOKEN).expect("login");
    let origin = format!("http://{addr}");

    let out = request(
        &addr,
        "POST",
        "/ui/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        "",
    );
    let after = request(&addr, "GET", "/v1/vms", &[("Cookie", &cookie)], "");

    assert_eq!(out.status, 303);
    assert_eq!(after.status, 401, "{}", after.body);
}

#[test]
fn a_scoped_tokens_browser_session_lists_only_its_vms_and_dies_with_the_token() {
    let d = tcp_daemon(&[]);
    let addr = tcp_addr(&d);
    for vm in ["mine", "theirs"] {
        let out = d.ctl(&["vm", "create", vm]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let created = ctl_json(
        &d,
        &["token", "create", "--vm", "mine", "--name", "browser"],
    );
    let secret = created["token"].as_str().unwrap();
    let cookie = login(&addr, secret).expect("login with a managed token");

    let list = request(&addr, "GET", "/v1/vms", &[("Cookie", &cookie)], "");
    let theirs = request(
        &addr,
        "GET",
        "/v1/vms/theirs/console",
        &[("Cookie", &cookie)],
        "",
    );
    let revoked = d.ctl(&["token", "revoke", created["id"].as_str().unwrap()]);
    let after = request(&addr, "GET", "/v1/vms", &[("Cookie", &cookie)], "");

    let names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&list.body)
        .unwrap_or_else(|_| panic!("{}", list.body))
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["mine"]);
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    assert_eq!(after.status, 401, "{}", after.body);
}

#[test]
fn the_unix_socket_serves_the_ui_without_login() {
    let d = common::TestDaemon::start();

    let page = unix_get(&d.socket(), "/ui/");

    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy:"),
        "{page}"
    );
}

fn unix_get(socket: &std::path::Path, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
