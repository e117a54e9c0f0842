//! The E2B-compatible listener driven by the unmodified E2B Python SDK (PyPI `e2b`, pinned in
//! scripts/setup.sh and installed into /opt/nexus-e2b-venv; `NEXUS_E2B_PYTHON` names another
//! interpreter) against a real nexusd and VMs under QEMU. The SDK scenarios are in
//! tests/e2b/check.py; each fails loudly naming what it expected. The control plane's refusals
//! are checked with plain HTTP requests.
//!
//! VM tests need what tests/vm_boot.rs needs (root, QEMU, the kernel package, NEXUS_AGENT_BIN).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{TestDaemon, stderr, stdout};

fn python() -> PathBuf {
    let python = std::env::var_os("NEXUS_E2B_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nexus-e2b-venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import e2b"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "E2B tests need the official E2B SDK: {} cannot import e2b (run scripts/setup.sh, or set NEXUS_E2B_PYTHON)",
        python.display()
    );
    python
}

/// A daemon with a pool and the E2B listener on a free loopback port.
fn e2b_daemon() -> TestDaemon {
    let d = TestDaemon::start_logged(
        tempfile::tempdir().expect("tempdir"),
        &["--pool-size", "2G", "--e2b-listen", "127.0.0.1:0"],
    );
    assert!(
        d.home().join("run/e2b.addr").exists(),
        "nexusd did not write run/e2b.addr:\n{}",
        d.log()
    );
    d
}

fn e2b_addr(d: &TestDaemon) -> String {
    std::fs::read_to_string(d.home().join("run/e2b.addr"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A managed token's secret (`nexusctl token create [flags] --json`).
fn token(d: &TestDaemon, flags: &[&str]) -> String {
    let mut args = vec!["token", "create"];
    args.extend_from_slice(flags);
    let created = common::ctl_json(d, &args);
    created["token"].as_str().expect("token field").to_owned()
}

/// Runs a scenario of tests/e2b/check.py with `key`; returns its last stdout line as JSON.
fn scenario(d: &TestDaemon, key: &str, args: &[&str]) -> serde_json::Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/check.py");
    let url = format!("http://{}", e2b_addr(d));
    let out = Command::new(python())
        .arg(&script)
        .args(args)
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", key)
        .env_remove("E2B_DOMAIN")
        .env_remove("E2B_ACCESS_TOKEN")
        .output()
        .expect("run the E2B SDK scenario");
    assert!(
        out.status.success(),
        "E2B scenario {args:?} failed ({}):\n{}\n{}\n--- nexusd log ---\n{}",
        out.status,
        stdout(&out),
        stderr(&out),
        d.log()
    );
    let text = stdout(&out);
    let last = text.lines().last().unwrap_or("{}");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("scenario output {last:?}: {e}"))
}

/// One raw HTTP/1.1 request to the E2B listener, with `key` as `X-API-KEY`.
fn http(d: &TestDaemon, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let addr = e2b_addr(d);
    common::raw_http(
        &addr,
        method,
        path,
        key.map(|k| format!("X-API-KEY: {k}")),
        body,
    )
}

fn vm_names(d: &TestDaemon) -> Vec<String> {
    common::ctl_json(d, &["vm", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_control_plane_refuses_unknown_keys_and_keys_without_lifecycle() {
    let d = e2b_daemon();
    let (status, body) = http(&d, "GET", "/v2/sandboxes", None, "");
    assert_eq!(status, 401, "{body}");
    let (status, body) = http(&d, "GET", "/v2/sandboxes", Some("nxt_wrong"), "");
    assert_eq!(status, 401, "{body}");
    let scoped = token(&d, &[]);
    let (status, body) = http(&d, "GET", "/v2/sandboxes", Some(&scoped), "");
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, body) = http(
        &d,
        "POST",
        "/v2/sandboxes",
        Some(&scoped),
        r#"{"templateID":"base"}"#,
    );
    assert_eq!(status, 403, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["code"], 403);
    let lifecycle = token(&d, &["--lifecycle"]);
    for bad in [
        r#"{"templateID":"base","timeout":0}"#,
        r#"{"templateID":"Not An Image"}"#,
        r#"{"templateID":"base","autoPause":true}"#,
        r#"{"nothing":1}"#,
    ] {
        let (status, body) = http(&d, "POST", "/v2/sandboxes", Some(&lifecycle), bad);
        assert!((400..500).contains(&status), "{bad} → {status} {body}");
    }
    let (status, _) = http(
        &d,
        "DELETE",
        "/sandboxes/e2b-000000000000",
        Some(&lifecycle),
        "",
    );
    assert_eq!(status, 404);
    assert!(vm_names(&d).is_empty(), "a refused create left a VM");
}

#[test]
fn the_sdk_runs_commands_files_watchers_and_ptys_in_one_sandbox() {
    common::require_boot_prerequisites();
    let d = e2b_daemon();
    let key = token(&d, &["--lifecycle"]);
    let facts = scenario(&d, &key, &["all", "run-all"]);
    let sandbox = facts["sandbox"].as_str().unwrap();
    assert!(
        !vm_names(&d).iter().any(|n| n == sandbox),
        "sbx.kill() left the VM {sandbox}"
    );
}

#[test]
fn a_background_command_is_reconnected_by_pid_from_a_second_client_after_three_minutes() {
    common::require_boot_prerequisites();
    let d = e2b_daemon();
    let key = token(&d, &["--lifecycle"]);
    let started = scenario(&d, &key, &["start-long", "run-long"]);
    let sandbox = started["sandbox"].as_str().unwrap().to_owned();
    let pid = started["pid"].to_string();
    std::thread::sleep(Duration::from_secs(170));
    scenario(&d, &key, &["reconnect", "run-long", &sandbox, &pid]);
}

#[test]
fn set_timeout_expires_a_sandbox_even_across_a_restart_and_records_why_and_pause_is_refused() {
    common::require_boot_prerequisites();
    let d = e2b_daemon();
    let key = token(&d, &["--lifecycle"]);
    // Pause is answered honestly while Nexus cannot pause: 409 on a sandbox that exists.
    let (status, body) = http(
        &d,
        "POST",
        "/v2/sandboxes",
        Some(&key),
        r#"{"templateID":"base","timeout":600,"metadata":{"run":"pause"}}"#,
    );
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["sandboxID"].as_str().unwrap().to_owned();
    assert_eq!(created["envdVersion"], "0.5.7");
    let (status, body) = http(
        &d,
        "POST",
        &format!("/sandboxes/{id}/pause"),
        Some(&key),
        "",
    );
    assert_eq!(status, 409, "{body}");
    let other = token(&d, &["--lifecycle"]);
    let (status, _) = http(&d, "GET", &format!("/sandboxes/{id}"), Some(&other), "");
    assert_eq!(status, 404, "another key saw the sandbox");
    // Its expiry is in the database: it holds across a daemon killed outright.
    let (status, body) = http(
        &d,
        "POST",
        &format!("/sandboxes/{id}/timeout"),
        Some(&key),
        r#"{"timeout":20}"#,
    );
    assert_eq!(status, 204, "{body}");
    let d = d.kill_and_restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while vm_names(&d).contains(&id) {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox outlived its timeout across a restart:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let reason = rusqlite_reason(&find_db(d.home()), &id);
    assert!(reason.starts_with("timeout"), "recorded reason {reason:?}");

    let facts = scenario(&d, &key, &["timeout", "run-timeout"]);
    let sandbox = facts["sandbox"].as_str().unwrap();
    assert!(
        !vm_names(&d).iter().any(|n| n == sandbox),
        "the expired VM is still there"
    );
    let reason = rusqlite_reason(&find_db(d.home()), sandbox);
    assert!(reason.starts_with("timeout"), "recorded reason {reason:?}");
}

/// The database under a test home.
fn find_db(home: &std::path::Path) -> PathBuf {
    let out = Command::new("find")
        .arg(home)
        .args(["-name", "nexus.db"])
        .output()
        .unwrap();
    PathBuf::from(
        stdout(&out)
            .lines()
            .next()
            .expect("nexus.db under the home"),
    )
}

/// Why a sandbox ended, read with Python's sqlite3 module (no sqlite3 CLI needed).
fn rusqlite_reason(db: &std::path::Path, sandbox: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); r=c.execute('select reason from e2b_sandbox_ends where sandbox_id=?',(sys.argv[2],)).fetchone(); print(r[0] if r else '')",
        ])
        .arg(db)
        .arg(sandbox)
        .output()
        .unwrap();
    stdout(&out).trim().to_owned()
}
