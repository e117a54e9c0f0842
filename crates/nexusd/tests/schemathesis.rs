//! The API contract, checked by `schemathesis` (PyPI) against the real daemon: every operation
//! that does not boot a VM, generated from `/v1/openapi.json`, with all checks, over the TCP
//! listener with a bearer token (so the security scheme is exercised), on a real btrfs pool.
//!
//! Excluded operations: start and restart (they boot a VM), exec, files and terminal (a WebSocket
//! upgrade; their success needs a
//! running VM), asset downloads (they would fetch from whatever URL a generated body names: tests
//! send traffic to loopback only; `tests/assets.rs` covers them against a local server), template
//! builds (a valid template's build boots a build VM; `tests/templates.rs` covers them). One check is turned off for one operation, for a written reason: see
//! [`CONFIG`].

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestDaemon;

const TOKEN: &str = "schemathesis-t0ken";
/// The pinned version `scripts/setup.sh` installs.
const INSTALL: &str = "scripts/setup.sh (or: python3 -m venv /opt/nexus-venv && /opt/nexus-venv/bin/pip install schemathesis==4.32.5)";
/// Operations whose success needs a VM that boots.
const EXCLUDED_PATHS: &str = "/(start|restart|exec|files|download|terminal|build)$";
/// `positive_data_acceptance` is off for `POST /v1/images` only: a schema-valid body without a
/// `name` is refused (422) when no name can be derived from the path's last component (`/`,
/// `/..`, a file name without a letter or digit), a rule about the content of another field
/// that JSON Schema cannot state exactly. Every other check runs on it.
/// `positive_data_acceptance` is off for `POST /v1/providers` too: a schema-valid pipeline is
/// refused (422) when its stages read artifacts no earlier stage made, or install a file without
/// the checksum and signature the provider's settings promise, rules across fields and array
/// items that JSON Schema cannot state.
/// Every check is on (`[checks] enabled = true`, the config-file form of `--checks all`: the
/// command-line flag would override the per-operation exception).
const CONFIG: &str = r#"
[checks]
enabled = true

[[operations]]
include-path = "/v1/images"
include-method = "POST"
checks.positive_data_acceptance.enabled = false

[[operations]]
include-path = "/v1/providers"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"#;
/// Generous bound on the whole run; it takes well under a minute.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn schemathesis() -> PathBuf {
    let candidates = [
        std::env::var_os("NEXUS_SCHEMATHESIS").map(PathBuf::from),
        Some(PathBuf::from("/opt/nexus-venv/bin/schemathesis")),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return p;
    }
    let on_path = Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        on_path,
        "schemathesis is missing: install it with {INSTALL}"
    );
    PathBuf::from("schemathesis")
}

#[test]
fn the_api_conforms_to_its_openapi_document() {
    let st = schemathesis();
    common::require_storage_prerequisites();
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let d = TestDaemon::start_logged(
        home,
        &[
            "--pool-size",
            "1G",
            "--tcp-listen",
            "127.0.0.1:0",
            "--tcp-token-file",
            token.to_str().unwrap(),
        ],
    );
    let addr = std::fs::read_to_string(d.home().join("run/tcp.addr")).unwrap();
    let config = d.home().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let seed = std::env::var("NEXUS_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    // Into a file, not a pipe: a long report must not block the run.
    let log_path = d.home().join("schemathesis.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{}/v1/openapi.json", addr.trim()))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--exclude-path-regex", EXCLUDED_PATHS])
        .args(["--max-examples", "40"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "30"])
        .args(["--seed", &seed])
        .current_dir(d.home())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e}; install it with {INSTALL}",
                st.display()
            )
        });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let report = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{report}");
    assert!(
        status.success(),
        "schemathesis found failures ({status}):\n{report}\n--- nexusd log ---\n{}",
        d.log()
    );
}
