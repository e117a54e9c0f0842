//! The API trust boundary (issue 7): which listener may import which host path, the TCP
//! listener's token check, connection cap, header timeout and TLS, and escaped logs. Runs the
//! real nexusd as root (like CI); imports that must succeed use the real btrfs pool.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TCP_TOKEN as TOKEN, TestDaemon, sample_tree, tcp_addr, tcp_daemon};

fn tcp_storage_daemon(extra: &[&str]) -> TestDaemon {
    common::require_storage_prerequisites();
    let mut args = vec!["--pool-size", "1G"];
    args.extend_from_slice(extra);
    tcp_daemon(&args)
}

/// One HTTP/1.1 request over a fresh TCP connection, with `auth` as `Authorization`.
fn http(addr: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> (u16, String) {
    common::raw_http(
        addr,
        method,
        path,
        auth.map(|a| format!("Authorization: {a}")),
        body,
    )
}

fn import_body(path: &Path, name: &str) -> String {
    serde_json::json!({"path": path, "name": name}).to_string()
}

fn tcp_import(d: &TestDaemon, path: &Path, name: &str) -> (u16, String) {
    http(
        &tcp_addr(d),
        "POST",
        "/v1/images",
        Some(&format!("Bearer {TOKEN}")),
        &import_body(path, name),
    )
}

fn unix_import(
    d: &TestDaemon,
    path: &Path,
    name: &str,
) -> Result<(), nexus_lib::client::ClientError> {
    common::rt()
        .block_on(d.client.import_image(&nexus_lib::api::CreateImage {
            path: path.to_string_lossy().into_owned(),
            name: Some(name.into()),
            asset: None,
            size: None,
        }))
        .map(drop)
}

fn assert_forbidden(status: u16, body: &str, reason: &str) {
    assert_eq!(status, 403, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "forbidden", "{body}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(reason), "{msg:?} does not say {reason:?}");
}

/// A directory to use as an import root: a tree inside, a symlink to `/etc`, and a sibling
/// directory outside it.
struct Roots {
    dir: tempfile::TempDir,
}

impl Roots {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("allowed/sub")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        sample_tree(&dir.path().join("allowed"));
        symlink("/etc", dir.path().join("allowed/etc-link")).unwrap();
        Self { dir }
    }
    fn allowed(&self) -> PathBuf {
        self.dir.path().join("allowed")
    }
}

#[test]
fn tcp_import_of_etc_root_or_slash_is_forbidden_without_import_roots() {
    let d = tcp_daemon(&[]);
    for path in ["/etc", "/root", "/"] {
        let (status, body) = tcp_import(&d, Path::new(path), "x");
        assert_forbidden(status, &body, "import_roots");
    }
}

#[test]
fn tcp_import_of_etc_root_or_slash_is_forbidden_outside_import_roots() {
    let roots = Roots::new();
    let d = tcp_daemon(&["--import-roots", roots.allowed().to_str().unwrap()]);
    for path in ["/etc", "/root", "/"] {
        let (status, body) = tcp_import(&d, Path::new(path), "x");
        assert_forbidden(status, &body, "not under an import root");
    }
}

#[test]
fn import_root_slash_still_refuses_slash_because_it_contains_proc() {
    let d = tcp_daemon(&["--import-roots", "/"]);
    let (status, body) = tcp_import(&d, Path::new("/"), "x");
    assert_forbidden(status, &body, "never importable");
}

#[test]
fn symlink_or_dot_dot_out_of_an_import_root_is_forbidden_over_tcp() {
    let roots = Roots::new();
    let d = tcp_daemon(&["--import-roots", roots.allowed().to_str().unwrap()]);
    let (status, body) = tcp_import(&d, &roots.allowed().join("etc-link"), "x");
    assert_forbidden(status, &body, "symbolic link");
    let (status, body) = tcp_import(&d, &roots.allowed().join("sub/../../outside"), "x");
    assert_forbidden(status, &body, "leaves its import root");
}

#[test]
fn symlink_or_dot_dot_out_of_an_import_root_is_forbidden_over_the_unix_socket() {
    let roots = Roots::new();
    let d = tcp_daemon(&["--import-roots", roots.allowed().to_str().unwrap()]);
    let err = unix_import(&d, &roots.allowed().join("etc-link"), "x").unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let err = unix_import(&d, &roots.allowed().join("sub/../../outside"), "x").unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");
    assert!(err.to_string().contains("leaves its import root"), "{err}");
}

#[test]
fn tcp_import_inside_an_import_root_works() {
    let roots = Roots::new();
    let d = tcp_storage_daemon(&["--import-roots", roots.allowed().to_str().unwrap()]);
    let (status, body) = tcp_import(&d, &roots.allowed().join("tree"), "inside");
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "ready", "{body}");
}

/// A nexusd whose socket uid 65534 can reach (test set-up: the daemon makes it 0600 and
/// only root, the test, widens it), with the embedded pool.
fn daemon_reachable_by_nobody() -> (TestDaemon, tempfile::TempDir) {
    common::require_storage_prerequisites();
    let sock_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = sock_dir.path().join("nexusd.sock");
    let home = tempfile::tempdir().unwrap();
    let child = common::spawn_logged(
        Command::new(common::nexusd_bin()),
        home.path(),
        &["--pool-size", "1G", "--socket", sock.to_str().unwrap()],
    );
    let mut d = TestDaemon {
        home,
        child: Some(child),
        client: nexus_lib::client::Client::unix(&sock),
        extra: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::rt().block_on(d.client.health()).is_err() {
        assert!(
            Instant::now() < deadline,
            "nexusd did not start:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    d.extra.push(sock.display().to_string());
    (d, sock_dir)
}

/// `POST /v1/images` over the Unix socket `sock` by a client running as uid/gid 65534 (curl
/// through setpriv); the status and the body.
fn import_as_nobody(sock: &Path, path: &Path, name: &str) -> (u16, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["curl", "-sS", "--max-time", "60", "-w", "\n%{http_code}"])
        .arg("--unix-socket")
        .arg(sock)
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(import_body(path, name))
        .arg("http://nexus/v1/images")
        .output()
        .expect("run curl through setpriv (util-linux, curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl: {text:?} {out:?}")),
        body.to_owned(),
    )
}

/// A tree under a directory everyone may traverse; `mode` is the tree's own mode.
fn world_tree(mode: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tree = sample_tree(dir.path());
    for p in ["etc", "home", "home/user"] {
        std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for p in ["etc/hostname", "home/user/note"] {
        std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, tree)
}

#[test]
fn unix_peer_that_cannot_read_the_directory_is_forbidden() {
    let (d, _sock_dir) = daemon_reachable_by_nobody();
    let sock = PathBuf::from(&d.extra[0]);
    let (_dir, tree) = world_tree(0o700);

    let (status, body) = import_as_nobody(&sock, &tree, "secret");

    assert_forbidden(status, &body, "uid 65534 may not read");
    assert!(common::entries(&d.pool_root().join("images")).is_empty());
}

#[test]
fn unix_peer_that_cannot_read_a_file_inside_the_directory_is_forbidden() {
    let (d, _sock_dir) = daemon_reachable_by_nobody();
    let sock = PathBuf::from(&d.extra[0]);
    let (_dir, tree) = world_tree(0o755);
    std::fs::write(tree.join("etc/shadow"), "root:x\n").unwrap();
    std::fs::set_permissions(
        tree.join("etc/shadow"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    let (status, body) = import_as_nobody(&sock, &tree, "secret");

    assert_forbidden(status, &body, "etc/shadow");
}

#[test]
fn unix_peer_may_import_a_directory_it_can_read() {
    let (d, _sock_dir) = daemon_reachable_by_nobody();
    let sock = PathBuf::from(&d.extra[0]);
    let (_dir, tree) = world_tree(0o755);

    let (status, body) = import_as_nobody(&sock, &tree, "readable");

    assert_eq!(status, 201, "{body}");
    drop(d);
}

#[test]
fn lower_case_bearer_is_accepted() {
    let d = tcp_daemon(&[]);
    let (status, body) = http(
        &tcp_addr(&d),
        "GET",
        "/v1/health",
        Some(&format!("bearer {TOKEN}")),
        "",
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_wrong_token_of_another_length_is_rejected() {
    let d = tcp_daemon(&[]);
    for wrong in ["x", "t0ps3cret-token-but-longer", "t0ps3cret-tokeN"] {
        let (status, _) = http(
            &tcp_addr(&d),
            "GET",
            "/v1/health",
            Some(&format!("Bearer {wrong}")),
            "",
        );
        assert_eq!(status, 401, "{wrong}");
    }
}

#[test]
fn the_token_never_reaches_the_log() {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let log = std::fs::File::create(home.path().join("nexusd.log")).unwrap();
    let child = Command::new(common::nexusd_bin())
        .arg("--home")
        .arg(home.path())
        .args(["--tcp-listen", "127.0.0.1:0", "--tcp-token-file"])
        .arg(&token)
        .env_remove("NEXUS_HOME")
        // Everything, from every crate (hyper, rustls, tower-http included).
        .env("RUST_LOG", "trace")
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let d = TestDaemon::wrap(home, child, &[]);

    http(
        &tcp_addr(&d),
        "GET",
        "/v1/health",
        Some(&format!("Bearer {TOKEN}")),
        "",
    );
    http(
        &tcp_addr(&d),
        "GET",
        "/v1/health",
        Some("Bearer wrong-token-value"),
        "",
    );

    let log = d.log();
    assert!(
        log.contains("/v1/health"),
        "the trace log has no request?\n{log}"
    );
    assert!(
        !log.contains(TOKEN) && !log.contains("wrong-token-value"),
        "{log}"
    );
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn idle_connections_beyond_the_cap_are_closed() {
    let d = tcp_daemon(&[
        "--tcp-max-connections",
        "4",
        "--tcp-header-timeout-secs",
        "60",
    ]);
    let addr = tcp_addr(&d);
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // Accepted in order: give the daemon a moment to take the first four slots.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();

    for s in &mut extra {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "a connection over the cap stayed open"
        );
    }
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(200)),
            "a connection under the cap was closed"
        );
    }
}

#[test]
fn a_connection_that_sends_no_headers_is_closed_after_the_header_timeout() {
    let d = tcp_daemon(&["--tcp-header-timeout-secs", "1"]);
    let mut s = TcpStream::connect(tcp_addr(&d)).unwrap();
    let start = Instant::now();

    assert!(closed_within(&mut s, Duration::from_secs(10)));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn non_loopback_tcp_without_tls_is_refused_at_start() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), TOKEN).unwrap();
    let out = Command::new(common::nexusd_bin())
        .arg("--home")
        .arg(home.path())
        .args(["--tcp-listen", "0.0.0.0:0", "--tcp-token-file"])
        .arg(home.path().join("token"))
        .env_remove("NEXUS_HOME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tls_cert_file") && stderr.contains("tls_key_file"),
        "{stderr}"
    );
}

#[test]
fn tls_listener_serves_a_real_tls_client() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let d = tcp_daemon(&[
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
    ]);
    let addr = tcp_addr(&d);

    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&cert_file)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("https://{addr}/v1/health"))
        .output()
        .expect("run curl");

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("version").is_some(), "{v}");
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{addr}/v1/health"))
        .output()
        .unwrap();
    assert!(!plain.status.success());
}

#[test]
fn a_newline_in_an_import_path_does_not_forge_a_log_line() {
    let roots = Roots::new();
    let d = tcp_storage_daemon(&["--import-roots", roots.allowed().to_str().unwrap()]);
    // Refused (outside the root): the refusal is logged with the path.
    let forged = "/etc\nFORGED level=ERROR refused";
    let (status, _) = tcp_import(&d, Path::new(forged), "x");
    assert_eq!(status, 403);
    // Imported: the success is logged with the path.
    let tree = roots.allowed().join("tree\nFORGED imported");
    std::fs::rename(roots.allowed().join("tree"), &tree).unwrap();
    let (status, body) = tcp_import(&d, &tree, "newline");
    assert_eq!(status, 201, "{body}");

    let log = d.log();
    assert!(log.contains("\\nFORGED level=ERROR refused"), "{log}");
    assert!(log.contains("\\nFORGED imported"), "{log}");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "{log}");
}
