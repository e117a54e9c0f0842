//! The daemon's process behaviour: restart, signals, the home lock, config errors, TCP auth.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestDaemon, rt, signal, spawn_nexusd, wait_bounded};
use nexus_lib::api::{CreateVm, VmState};
use nexus_lib::client::Client;

fn create(d: &TestDaemon, name: &str) -> nexus_lib::api::Vm {
    rt().block_on(d.client.create_vm(&CreateVm {
        name: name.into(),
        ..CreateVm::default()
    }))
    .unwrap()
}

#[test]
fn restart_keeps_records_and_history() {
    let d = TestDaemon::start();
    let vm = create(&d, "keep-me");
    let d = d.restart();
    let rt = rt();
    let again = rt.block_on(d.client.get_vm("keep-me")).unwrap();
    assert_eq!(again, vm);
    let history = rt
        .block_on(d.client.vm_history(&vm.id.to_string()))
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].to, VmState::Created);
}

#[test]
fn sigterm_exits_zero_and_removes_socket() {
    let mut d = TestDaemon::start();
    let socket = d.socket();
    assert!(socket.exists());
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket {} left behind", socket.display());
}

#[test]
fn second_daemon_on_same_home_is_refused() {
    let d = TestDaemon::start();
    let out = Command::new(common::nexusd_bin())
        .arg("--home")
        .arg(d.home())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    // The first daemon still serves on its socket.
    rt().block_on(d.client.health()).unwrap();
}

#[test]
fn unknown_config_key_is_a_startup_error_naming_it() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("nexus.toml"), "shutdown_grace = 5\n").unwrap();
    let mut child = spawn_nexusd(home.path(), &[]);
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    let out = Command::new(common::nexusd_bin())
        .arg("--home")
        .arg(home.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutdown_grace"));
}

#[test]
fn sigint_also_stops_cleanly() {
    let mut d = TestDaemon::start();
    let mut child = d.child.take().unwrap();
    signal(&child, nix::sys::signal::Signal::SIGINT);
    assert!(wait_bounded(&mut child, Duration::from_secs(20)).success());
}

#[test]
fn tcp_listener_requires_the_bearer_token() {
    let home = tempfile::tempdir().unwrap();
    let token_file = home.path().join("token");
    std::fs::write(&token_file, "t0ps3cret\n").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let d = TestDaemon::start_in(
        home,
        &[
            "--tcp-listen",
            &addr,
            "--tcp-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    let rt = rt();
    let good = Client::tcp(addr.clone(), "t0ps3cret");
    rt.block_on(good.health()).unwrap();
    let bad = Client::tcp(addr, "wrong");
    let err = rt.block_on(bad.health()).unwrap_err();
    assert_eq!(err.status(), Some(401));
    drop(d);
}

#[test]
fn socket_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let d = TestDaemon::start();
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}
