//! End to end: real VMs under QEMU (TCG here, KVM where it works) booted by the real nexusd
//! from a real image on a real btrfs pool, driven through the real nexusctl and typed client.
//!
//! Needs root, btrfs-progs, e2fsprogs, busybox-static, qemu-system-x86, vhost-device-vsock, the
//! guest kernel package (scripts/setup.sh) and the static agent (NEXUS_AGENT_BIN, set by
//! scripts/test.sh). A missing prerequisite fails the test naming it.

mod common;

use std::time::{Duration, Instant};

use common::{TestDaemon, rt, stderr, stdout};
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::{CreateVm, VmState};
use nexus_lib::client::Client;
use sha2::{Digest, Sha256};

/// A daemon with a pool and a running VM booted from the built-in default image.
fn running_vm(name: &str) -> TestDaemon {
    common::daemon_with_running_vm(name)
}

/// Runs a command through the typed client; returns (stdout, stderr, exit code).
async fn exec(client: &Client, vm: &str, req: ExecRequest) -> (Vec<u8>, Vec<u8>, Option<i32>) {
    let mut events = client.exec(vm, &req).await.expect("exec");
    let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
    while let Some(e) = events.next().await.expect("event") {
        match e {
            ExecEvent::Stdout { data } => out.extend(data),
            ExecEvent::Stderr { data } => err.extend(data),
            ExecEvent::Exit { code: c, .. } => code = c,
            ExecEvent::Error { message } => panic!("exec error: {message}"),
        }
    }
    (out, err, code)
}

fn host_release() -> String {
    nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn exec_uname_names_the_guest_kernel() {
    let d = running_vm("uname");
    let out = d.ctl(&["vm", "exec", "uname", "--", "uname", "-a"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("cloud-amd64"), "{text}");
    assert!(text.contains("uname"), "hostname is the VM name: {text}");
    assert!(
        !text.contains(&host_release()),
        "the host kernel answered: {text}"
    );
}

#[test]
fn exec_passes_stdin_and_the_exit_code_through() {
    let d = running_vm("stdin");
    let mut child = std::process::Command::new(common::nexusctl_bin())
        .arg("--home")
        .arg(d.home())
        .args([
            "vm",
            "exec",
            "-i",
            "stdin",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; exit 3",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello guest\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "HELLO GUEST\n");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn twenty_concurrent_execs_each_get_their_own_output() {
    let d = running_vm("many");
    let results = rt().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = d.client.clone();
            set.spawn(async move {
                let req = ExecRequest::new([
                    "sh",
                    "-c",
                    &format!("sleep 0.$((RANDOM % 5)); echo out-{i}; echo err-{i} >&2; exit {i}"),
                ]);
                (i, exec(&client, "many", req).await)
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap());
        }
        all
    });
    assert_eq!(results.len(), 20);
    for (i, (out, err, code)) in results {
        assert_eq!(String::from_utf8_lossy(&out), format!("out-{i}\n"));
        assert_eq!(String::from_utf8_lossy(&err), format!("err-{i}\n"));
        assert_eq!(code, Some(i));
    }
}

#[test]
fn a_50_mib_file_round_trips_with_the_same_sha256() {
    let d = running_vm("files");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.bin");
    let mut data = vec![0u8; 50 << 20];
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    let want = format!("{:x}", Sha256::digest(&data));

    let up = d.ctl(&["vm", "cp", src.to_str().unwrap(), "files:/tmp/big.bin"]);
    assert!(up.status.success(), "{}", stderr(&up));
    let inside = stdout(&d.ctl(&["vm", "exec", "files", "--", "sha256sum", "/tmp/big.bin"]));
    assert!(inside.starts_with(&want), "guest sha256: {inside}");
    let back = dir.path().join("out.bin");
    let down = d.ctl(&["vm", "cp", "files:/tmp/big.bin", back.to_str().unwrap()]);
    assert!(down.status.success(), "{}", stderr(&down));
    let got = format!("{:x}", Sha256::digest(std::fs::read(&back).unwrap()));
    assert_eq!(got, want);
}

#[test]
fn stop_powers_the_guest_off_and_records_it() {
    let d = running_vm("stopme");
    let out = d.ctl(&["--json", "vm", "stop", "stopme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let vm: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vm["state"], "stopped");
    let history = rt().block_on(d.client.vm_history("stopme")).unwrap();
    let last = history.last().unwrap();
    assert!(
        last.reason.contains("powered off on request"),
        "{}",
        last.reason
    );
    assert!(
        common::vmm_pids("stopme", &d).is_empty(),
        "VMM still running"
    );
}

#[test]
fn a_killed_vmm_is_recorded_as_crashed_within_a_second() {
    let d = running_vm("crashme");
    let pids = common::vmm_pids("crashme", &d);
    assert_eq!(pids.len(), 1, "one QEMU for the VM: {pids:?}");
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rt = rt();
    let state = loop {
        let vm = rt.block_on(d.client.get_vm("crashme")).unwrap();
        if vm.state != VmState::Running || killed.elapsed() > Duration::from_secs(1) {
            break vm.state;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(state, VmState::Crashed, "not crashed within 1 s of SIGKILL");
    let reason = rt
        .block_on(d.client.vm_history("crashme"))
        .unwrap()
        .pop()
        .unwrap()
        .reason;
    assert!(reason.contains("SIGKILL"), "{reason}");
}

#[test]
fn a_vm_survives_a_daemon_restart_and_still_runs_commands() {
    let d = running_vm("survivor");
    let before = common::vmm_pids("survivor", &d);
    let d = d.restart();
    let vm = rt().block_on(d.client.get_vm("survivor")).unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(
        common::vmm_pids("survivor", &d),
        before,
        "the same QEMU keeps running"
    );
    let out = d.ctl(&["vm", "exec", "survivor", "--", "echo", "still here"]);
    assert_eq!(stdout(&out), "still here\n", "{}", stderr(&out));
    let out = d.ctl(&["vm", "stop", "survivor"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn console_log_shows_the_guest_boot() {
    let d = running_vm("console");
    let out = d.ctl(&["vm", "logs", "console", "--tail", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!out.stdout.is_empty(), "empty console");
}

#[test]
fn exec_on_a_vm_that_is_not_running_is_a_conflict() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    let vm = CreateVm {
        name: "idle".into(),
        image: Some("default".into()),
        ..CreateVm::default()
    };
    rt().block_on(d.client.create_vm(&vm)).unwrap();
    let out = d.ctl(&["vm", "exec", "idle", "--", "true"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn restart_boots_again_and_a_running_vm_cannot_be_deleted() {
    let d = running_vm("again");
    let delete = d.ctl(&["vm", "delete", "again"]);
    assert_eq!(delete.status.code(), Some(5), "{}", stderr(&delete));
    let out = d.ctl(&["--json", "vm", "restart", "again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let boots = rt().block_on(d.client.vm_boots("again")).unwrap();
    assert_eq!(boots.len(), 2);
    assert!(boots[0].exit.is_some(), "first boot ended: {:?}", boots[0]);
    assert_eq!(boots[1].outcome, "running");
    let out = d.ctl(&["vm", "exec", "again", "--", "echo", "back"]);
    assert_eq!(stdout(&out), "back\n");
}

#[test]
fn stop_during_boot_stops_the_vm_and_leaves_no_vmm() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    let vm = CreateVm {
        name: "early".into(),
        image: Some("default".into()),
        ..CreateVm::default()
    };
    let rt = rt();
    rt.block_on(d.client.create_vm(&vm)).unwrap();
    let (start, stop) = rt.block_on(async {
        let starter = d.client.clone();
        let start = tokio::spawn(async move { starter.vm_action("early", "start").await });
        // Wait until the VM is booting, then stop it.
        loop {
            let vm = d.client.get_vm("early").await.unwrap();
            if vm.state == VmState::Starting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stop = d.client.vm_action("early", "stop").await;
        (start.await.unwrap(), stop)
    });
    assert!(start.is_err(), "the interrupted start reports failure");
    let stopped = stop.expect("stop succeeds");
    assert_eq!(stopped.state, VmState::Stopped);
    assert!(
        common::vmm_pids("early", &d).is_empty(),
        "VMM still running"
    );
}

#[test]
fn a_vm_survives_nexusd_being_killed_and_is_readopted() {
    let d = running_vm("orphan");
    let before = common::vmm_pids("orphan", &d);
    let d = d.kill_and_restart();
    let vm = rt().block_on(d.client.get_vm("orphan")).unwrap();
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(common::vmm_pids("orphan", &d), before);
    let out = d.ctl(&["vm", "exec", "orphan", "--", "echo", "adopted"]);
    assert_eq!(stdout(&out), "adopted\n", "{}", stderr(&out));
    // The re-adopted VMM's exit is still noticed at once.
    let out = d.ctl(&["--json", "vm", "stop", "orphan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(common::vmm_pids("orphan", &d).is_empty());
}

#[test]
fn drives_do_not_move_while_their_vm_is_starting() {
    use nexus_lib::api::{AttachDrive, CreateDrive};
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    let rt = rt();
    let vm = rt
        .block_on(d.client.create_vm(&CreateVm {
            name: "mover".into(),
            image: Some("default".into()),
            ..CreateVm::default()
        }))
        .unwrap();
    rt.block_on(d.client.create_drive(&CreateDrive {
        image: "default".into(),
        name: Some("extra".into()),
        size: None,
    }))
    .unwrap();
    let attach = AttachDrive {
        vm: "mover".into(),
        root: false,
    };
    rt.block_on(d.client.attach_drive("extra", &attach))
        .unwrap();
    let (moves, refusals) = rt.block_on(async {
        let starter = d.client.clone();
        let start = tokio::spawn(async move { starter.vm_action("mover", "start").await });
        let (mut moves, mut refusals) = (0, 0);
        // Move the drive back and forth for as long as the start runs (bounded by the boot
        // timeout); every answer must be a success or a conflict.
        while !start.is_finished() {
            match d.client.detach_drive("extra").await {
                Ok(_) => {
                    moves += 1;
                    if let Err(e) = d.client.attach_drive("extra", &attach).await {
                        assert_eq!(e.status(), Some(409), "attach: {e}");
                        refusals += 1;
                    }
                }
                Err(e) => {
                    assert_eq!(e.status(), Some(409), "detach: {e}");
                    refusals += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        start.await.unwrap().expect("the start succeeds");
        (moves, refusals)
    });
    assert!(refusals > 0, "no move was ever refused ({moves} moves)");
    // What QEMU was started with is exactly what the VM has attached now.
    let drives = rt.block_on(d.client.list_drives()).unwrap();
    let mut attached: Vec<String> = drives
        .iter()
        .filter(|dr| dr.vm_id == Some(vm.id))
        .map(|dr| dr.id.to_string())
        .collect();
    attached.sort();
    let qemu = common::vmm_pids("mover", &d);
    assert_eq!(qemu.len(), 1);
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap())
            .into_owned();
    let mut in_qemu: Vec<String> = cmdline
        .split("/drives/")
        .skip(1)
        .map(|rest| rest.split('/').next().unwrap_or_default().to_owned())
        .collect();
    in_qemu.sort();
    assert_eq!(in_qemu, attached, "QEMU's drives differ from the VM's");
}
