//! The MCP server driven by a real MCP client written by others: the official Python SDK (PyPI
//! `mcp` 2.x, installed by scripts/setup.sh into /opt/nexus-venv; `NEXUS_PYTHON` names another
//! interpreter), over Streamable HTTP on the daemon's Unix socket and through `nexusctl mcp
//! serve` on stdio, in both protocol revisions (the 2025-11-25 `initialize` handshake and the
//! stateless 2026-07-28). The client scenarios are in tests/mcp/check.py; each fails loudly
//! naming what it expected.
//!
//! VM tests need what tests/vm_boot.rs needs (root, QEMU, the kernel package, NEXUS_AGENT_BIN).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use common::{TestDaemon, stderr, stdout, tcp_addr};

const TRANSPORTS: [(&str, &str); 4] = [
    ("http", "legacy"),
    ("http", "2026-07-28"),
    ("stdio", "legacy"),
    ("stdio", "2026-07-28"),
];

fn python() -> PathBuf {
    let python = std::env::var_os("NEXUS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nexus-venv/bin/python"));
    let ok = Command::new(&python)
        .args(["-c", "import mcp, httpx2"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "MCP tests need the official Python MCP SDK: {} cannot import mcp (run scripts/setup.sh, or set NEXUS_PYTHON)",
        python.display()
    );
    python
}

/// Runs one client scenario against `d`; panics with its output (and the daemon's log) when it
/// fails.
fn scenario(d: &TestDaemon, transport: (&str, &str), name: &str, vm: &str) {
    scenario_with_token(d, transport, name, vm, common::TCP_TOKEN);
}

/// [`scenario`] presenting `token` on the TCP listener.
fn scenario_with_token(d: &TestDaemon, transport: (&str, &str), name: &str, vm: &str, token: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/check.py");
    let started = Instant::now();
    let url = match d.home().join("run/tcp.addr").exists() {
        true => format!("http://{}/mcp", tcp_addr(d)),
        false => String::new(),
    };
    let out = Command::new(python())
        .arg(&script)
        .args(["--transport", transport.0, "--mode", transport.1])
        .arg("--socket")
        .arg(d.socket())
        .arg("--nexusctl")
        .arg(common::nexusctl_bin())
        .arg("--home")
        .arg(d.home())
        .args(["--url", &url])
        .args(["--token", token])
        .args(["--vm", vm, name])
        .env_remove("NEXUS_HOME")
        .env_remove("NEXUS_SOCKET")
        .output()
        .expect("run the Python MCP client");
    assert!(
        out.status.success(),
        "MCP scenario {name} over {} ({}) failed ({}):\n{}\n{}\n--- nexusd log ---\n{}",
        transport.0,
        transport.1,
        out.status,
        stdout(&out),
        stderr(&out),
        d.log()
    );
    eprintln!(
        "{name} over {} ({}): {:?}\n{}",
        transport.0,
        transport.1,
        started.elapsed(),
        stdout(&out).trim_end()
    );
}

/// A daemon with storage and a running VM `name`, booted through the CLI.
fn daemon_with_vm(name: &str) -> TestDaemon {
    common::daemon_with_running_vm(name)
}

#[test]
fn tools_are_listed_and_bad_calls_answered_over_every_transport() {
    let d = common::tcp_daemon(&[]);
    for transport in TRANSPORTS
        .into_iter()
        .chain([("tcp", "legacy"), ("tcp", "2026-07-28")])
    {
        scenario(&d, transport, "tools", "none");
    }
}

#[test]
fn mcp_over_tcp_without_the_token_is_refused() {
    let d = common::tcp_daemon(&[]);
    let mut tcp = TcpStream::connect(tcp_addr(&d)).unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );

    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();

    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[test]
fn a_scoped_token_sees_and_touches_only_its_vms_over_mcp() {
    let d = common::tcp_daemon(&[]);
    for vm in ["mine", "theirs"] {
        let out = d.ctl(&["vm", "create", vm]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let created = common::ctl_json(&d, &["token", "create", "--vm", "mine"]);
    let token = created["token"].as_str().expect("token field");

    for transport in [("tcp", "legacy"), ("tcp", "2026-07-28")] {
        scenario_with_token(&d, transport, "scoped", "mine", token);
    }
}

#[test]
fn nexusctl_mcp_tools_lists_what_a_client_sees() {
    let d = TestDaemon::start();

    let out = d.ctl(&["mcp", "tools"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for tool in ["vm_create", "run_command", "read_file", "write_file"] {
        assert!(text.contains(tool), "{tool} missing from:\n{text}");
    }
}

#[test]
fn nexusctl_mcp_serve_without_a_daemon_says_how_to_start_it() {
    let home = tempfile::tempdir().unwrap();

    let out = common::ctl(home.path(), &["mcp", "serve"]);

    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("nexusd"), "{}", stderr(&out));
}

/// A daemon with storage that can boot VMs (none yet).
fn daemon_for_vms() -> TestDaemon {
    common::require_boot_prerequisites();
    TestDaemon::start_with_storage()
}

#[test]
fn a_vm_is_created_driven_and_deleted_over_http_with_the_initialize_handshake() {
    let d = daemon_for_vms();
    scenario(&d, ("http", "legacy"), "vm", "mcp-http");
}

#[test]
fn a_vm_is_created_driven_and_deleted_over_stdio_with_the_stateless_revision() {
    let d = daemon_for_vms();
    scenario(&d, ("stdio", "2026-07-28"), "vm", "mcp-stdio");
}

#[test]
fn cancelling_a_call_kills_its_command_in_the_vm_over_every_transport() {
    let d = daemon_with_vm("cancel");
    for transport in TRANSPORTS {
        scenario(&d, transport, "cancel", "cancel");
    }
}

#[test]
fn background_process_output_is_read_after_the_client_reconnects_and_signals_reach_its_group() {
    let d = daemon_with_vm("bg");
    scenario(&d, ("http", "legacy"), "processes", "bg");
    scenario(&d, ("stdio", "2026-07-28"), "processes", "bg");
}

#[test]
fn five_megabytes_of_output_are_cut_for_the_client_and_saved_whole_in_the_vm() {
    let d = daemon_with_vm("big");
    scenario(&d, ("http", "2026-07-28"), "truncate", "big");
    scenario(&d, ("stdio", "legacy"), "truncate", "big");
}

/// The test per-VM MCP server (a busybox shell script).
fn echo_server() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/echo-server.sh");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn a_per_vm_server_is_called_through_the_host_restarted_after_a_crash_and_gone_when_its_vm_stops() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    scenario(&d, ("http", "legacy"), "guest_servers", "guest");
}

/// Creates and boots `vm` running the echo server, through `nexusctl vm create --mcp-server`.
fn create_vm_with_echo_server(d: &TestDaemon, vm: &str) {
    let server = format!("echo={}", echo_server());
    let out = d.ctl(&[
        "vm",
        "create",
        vm,
        "--image",
        "default",
        "--network",
        "none",
        "--start",
        "--mcp-server",
        &server,
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
}

#[test]
fn a_per_vm_servers_tools_come_back_after_a_daemon_restart() {
    let d = daemon_for_vms();
    create_vm_with_echo_server(&d, "kept");
    scenario(&d, ("http", "legacy"), "guest_tool", "kept");

    let d = d.restart();

    scenario(&d, ("http", "2026-07-28"), "guest_tool", "kept");
}

#[test]
fn a_scoped_token_sees_and_calls_only_its_vms_per_vm_tools() {
    common::require_boot_prerequisites();
    let d = common::tcp_daemon(&["--pool-size", "1G"]);
    for vm in ["mine", "theirs"] {
        create_vm_with_echo_server(&d, vm);
    }
    let created = common::ctl_json(&d, &["token", "create", "--vm", "mine"]);
    let token = created["token"].as_str().expect("token field");

    scenario_with_token(&d, ("tcp", "legacy"), "guest_scoped", "mine", token);
}

#[test]
fn mcp_servers_with_bad_names_or_too_many_are_refused_at_create() {
    let d = TestDaemon::start();
    let many: Vec<String> = (0..=nexus_lib::agent::MAX_MCP_SERVERS)
        .map(|i| format!("s{i}=true"))
        .collect();
    let mut too_many = vec!["vm", "create", "many"];
    for server in &many {
        too_many.extend(["--mcp-server", server.as_str()]);
    }

    let bad_name = d.ctl(&["vm", "create", "bad", "--mcp-server", "Bad_Name=true"]);
    let many_out = d.ctl(&too_many);
    let stray_env = d.ctl(&["vm", "create", "env", "--mcp-env", "nope:A=1"]);

    assert!(!bad_name.status.success() && stderr(&bad_name).contains("MCP server name"));
    assert!(!many_out.status.success() && stderr(&many_out).contains("at most 8"));
    assert!(!stray_env.status.success() && stderr(&stray_env).contains("--mcp-env"));
    let listed = common::ctl_json(&d, &["vm", "list"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
}
