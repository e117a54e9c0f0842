//! The VMM jail, checked on real VMs booted by the real nexusd (as root, like CI): the processes
//! of a VM are unprivileged, see only their own files, sit in a limited cgroup, survive a daemon
//! restart jailed, and leave nothing behind when they stop.
//!
//! Needs what the VM tests need (scripts/setup.sh, root) plus `nsenter` and `setpriv`
//! (util-linux); a missing prerequisite fails the test naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{TestDaemon, rt, stderr, stdout};
use nexus_lib::api::VmState;

/// A daemon (with `extra` flags) and running VMs `names`, booted from the default image.
fn daemon_with_vms(extra: &[&str], names: &[&str]) -> TestDaemon {
    common::require_boot_prerequisites();
    common::require_storage_prerequisites();
    let mut args = vec!["--pool-size", "1G"];
    args.extend_from_slice(extra);
    let d = TestDaemon::start_logged(tempfile::tempdir().expect("tempdir"), &args);
    for name in names {
        let out = d.ctl(&["vm", "create", name, "--image", "default", "--start"]);
        assert!(
            out.status.success(),
            "vm create --start {name}: {}\n{}",
            stderr(&out),
            d.log()
        );
    }
    d
}

/// The pids of VM `vm`'s processes whose command name starts with `comm`.
fn vm_pids(d: &TestDaemon, vm: &str, comm: &str) -> Vec<u32> {
    let id = rt()
        .block_on(d.client.get_vm(vm))
        .expect("vm")
        .id
        .to_string();
    common::pids_mentioning(&d.home().display().to_string(), &id)
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(comm))
        })
        .collect()
}

fn one_pid(d: &TestDaemon, vm: &str, comm: &str) -> u32 {
    let pids = vm_pids(d, vm, comm);
    assert_eq!(pids.len(), 1, "one {comm} for {vm}: {pids:?}");
    pids[0]
}

/// `Key:` of `/proc/<pid>/status`, first field.
fn status(pid: u32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Whether `path` exists in the mount namespace of `pid`.
fn exists_in_namespace(pid: u32, path: &Path) -> bool {
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--", "/usr/bin/test", "-e"])
        .arg(path)
        .output()
        .expect("nsenter (util-linux) runs");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("nsenter into {pid} failed: {}", stderr(&out)),
    }
}

/// The cgroup directory of `pid` in the v1 hierarchy of `controller` (or v2).
fn cgroup_dir(pid: u32, controller: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
        }
    }
    let v2 = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a v1 or v2 cgroup");
    Path::new("/sys/fs/cgroup").join(v2.trim_start_matches('/'))
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn root_drive(d: &TestDaemon, vm: &str) -> PathBuf {
    let drives = rt().block_on(d.client.list_drives()).expect("drives");
    let id = rt().block_on(d.client.get_vm(vm)).expect("vm").id;
    let drive = drives
        .into_iter()
        .find(|dr| dr.vm_id == Some(id) && dr.is_root)
        .expect("root drive");
    d.pool_root()
        .join("drives")
        .join(drive.id.to_string())
        .join("rootfs.ext4")
}

#[test]
fn vmm_and_vsock_helper_are_unprivileged_in_their_own_namespace_and_cgroup() {
    let d = daemon_with_vms(&[], &["jail-a", "jail-b"]);
    let qemu = one_pid(&d, "jail-a", "qemu-system");
    let vhost = one_pid(&d, "jail-a", "vhost-device");
    for pid in [qemu, vhost] {
        assert_ne!(status(pid, "Uid"), "0", "pid {pid} runs as root");
        assert_ne!(status(pid, "Gid"), "0", "pid {pid} has gid 0");
        assert_eq!(status(pid, "NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(status(pid, "CapEff"), "0000000000000000", "pid {pid}");
        assert_eq!(status(pid, "CapBnd"), "0000000000000000", "pid {pid}");
        assert!(
            !exists_in_namespace(pid, Path::new("/root")),
            "pid {pid} sees /root"
        );
        assert!(
            !exists_in_namespace(pid, &root_drive(&d, "jail-b")),
            "pid {pid} sees another VM's drive"
        );
    }
    assert_eq!(
        status(qemu, "Seccomp"),
        "2",
        "QEMU runs under its seccomp filter"
    );
    assert!(
        exists_in_namespace(qemu, &root_drive(&d, "jail-a")),
        "QEMU sees its own drive"
    );
    assert!(
        !exists_in_namespace(vhost, &root_drive(&d, "jail-a")),
        "the vsock helper needs no drive"
    );
    assert_ne!(
        status(qemu, "Uid"),
        status(one_pid(&d, "jail-b", "qemu-system"), "Uid"),
        "each VM has its own uid"
    );

    // 256 MiB of guest memory plus the default 256 MiB of overhead.
    let memory = cgroup_dir(qemu, "memory");
    let limit = ["memory.limit_in_bytes", "memory.max"]
        .iter()
        .map(|f| memory.join(f))
        .find(|p| p.exists())
        .expect("a memory limit file");
    assert_eq!(read_trimmed(&limit), (512u64 << 20).to_string());
    assert_eq!(
        cgroup_dir(vhost, "memory"),
        memory,
        "both processes share the VM's cgroup"
    );
}

#[test]
fn a_fork_bomb_by_the_vmm_uid_in_its_cgroup_is_stopped_by_the_pids_limit() {
    let d = daemon_with_vms(&["--jail-pids-max", "64"], &["bomb"]);
    let qemu = one_pid(&d, "bomb", "qemu-system");
    let uid = status(qemu, "Uid");
    let pids = cgroup_dir(qemu, "pids");
    let procs: Vec<String> = ["memory", "pids", "cpu"]
        .iter()
        .map(|c| {
            cgroup_dir(qemu, c)
                .join("cgroup.procs")
                .display()
                .to_string()
        })
        .collect();
    // Join the VM's cgroups as root, become the VM's uid, then try 400 processes (bounded: the
    // loop ends, and every sleeper ends within 30 s).
    let script = format!(
        "for f in {procs}; do echo $$ > $f; done; exec setpriv --reuid {uid} --regid {uid} --clear-groups -- \
         sh -c 'n=0; i=0; while [ $i -lt 400 ]; do sleep 30 </dev/null >/dev/null 2>&1 & [ $? -eq 0 ] && n=$((n+1)); i=$((i+1)); done 2>/dev/null; echo $n'",
        procs = procs.join(" ")
    );
    let started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .expect("sh");
    let current: u64 = read_trimmed(&pids.join("pids.current")).parse().unwrap();
    let events = read_trimmed(&pids.join("pids.events"));
    // Clean up the sleepers before asserting.
    for pid in vm_pids(&d, "bomb", "sleep") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = Command::new("pkill")
        .args(["-KILL", "-U", &uid, "-x", "sleep"])
        .status();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(current <= 64, "pids.current {current} passed pids.max 64");
    assert!(
        events.starts_with("max ") && events != "max 0",
        "the limit was hit: {events}; {}",
        stdout(&out)
    );
    assert_eq!(read_trimmed(&pids.join("pids.max")), "64");
}

#[test]
fn a_restarted_daemon_readopts_a_jailed_vm_and_stop_leaves_no_cgroup() {
    let d = daemon_with_vms(&[], &["keeper"]);
    let qemu = one_pid(&d, "keeper", "qemu-system");
    let dirs: Vec<PathBuf> = ["memory", "pids", "cpu"]
        .iter()
        .map(|c| cgroup_dir(qemu, c))
        .collect();
    let d = d.restart();
    assert_eq!(
        one_pid(&d, "keeper", "qemu-system"),
        qemu,
        "the same jailed QEMU"
    );
    let out = d.ctl(&["vm", "exec", "keeper", "--", "echo", "still jailed"]);
    assert_eq!(stdout(&out), "still jailed\n", "{}", stderr(&out));
    let out = d.ctl(&["vm", "stop", "keeper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(vm_pids(&d, "keeper", "").is_empty(), "processes left");
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn a_vm_whose_jail_cannot_be_set_up_fails_with_the_reason_and_runs_nothing() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    // The jail's mount point is taken by a file: the jail cannot be built.
    std::fs::create_dir_all(d.home().join("data")).unwrap();
    std::fs::write(d.home().join("data/jail-root"), b"in the way").unwrap();
    let out = d.ctl(&["vm", "create", "nojail", "--image", "default", "--start"]);
    assert!(!out.status.success(), "started without its jail");
    let vm = rt().block_on(d.client.get_vm("nojail")).unwrap();
    assert_eq!(vm.state, VmState::Failed);
    let reason = rt()
        .block_on(d.client.vm_history("nojail"))
        .unwrap()
        .pop()
        .unwrap()
        .reason;
    assert!(reason.contains("jail"), "{reason}");
    assert!(
        reason.contains("jail-root"),
        "names what was missing: {reason}"
    );
    assert!(
        vm_pids(&d, "nojail", "").is_empty(),
        "something ran unjailed"
    );
}

#[test]
fn jail_false_runs_the_vmm_unconfined_and_says_so() {
    let d = daemon_with_vms(&["--jail", "false"], &["loose"]);
    let qemu = one_pid(&d, "loose", "qemu-system");
    assert_eq!(status(qemu, "Uid"), "0");
    assert!(
        d.log().contains("jail = false"),
        "no warning in the log:\n{}",
        d.log()
    );
    let out = d.ctl(&["vm", "exec", "loose", "--", "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Kills a launched VM and removes its cgroup, even when the test fails.
struct Launch {
    launched: Option<nexusd::vmm::Launched>,
    jailer: nexusd::jail::Jailer,
    id: String,
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Some(mut l) = self.launched.take() {
            rt().block_on(l.kill());
        }
        self.jailer.remove_cgroup(&self.id);
        self.jailer.remove_parent_if_empty();
    }
}

#[test]
fn a_firecracker_named_fake_runs_jailed_through_the_firecracker_launch_path() {
    use nexusd::jail::{JailConfig, Jailer};
    use nexusd::vmm::{FirecrackerVmm, VmSpec, Vmm};
    use std::os::unix::fs::PermissionsExt;

    common::require_storage_prerequisites();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A stand-in that behaves like a VMM that never exits: it ignores its arguments and waits.
    std::fs::create_dir_all(w.join("bin")).unwrap();
    let fake = w.join("bin/firecracker");
    std::fs::write(&fake, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(w.join("vmlinux"), b"not a kernel").unwrap();
    std::fs::write(w.join("root.ext4"), b"not a drive").unwrap();
    let runtime = w.join("vm");
    let sockets = runtime.join("sock");
    std::fs::create_dir_all(&sockets).unwrap();

    let id = uuid::Uuid::now_v7();
    let jailer = Jailer::new(JailConfig::with_defaults(&w.join("data")));
    let cid = 3 + std::process::id() % 100_000;
    let jail = jailer
        .prepare(
            &id.to_string(),
            cid,
            256 << 20,
            &[sockets.clone(), w.join("root.ext4")],
        )
        .expect("jail");
    let spec = VmSpec {
        name: "fake".into(),
        vm_id: id,
        boot_id: 1,
        kernel: w.join("vmlinux"),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        root_drive: w.join("root.ext4"),
        extra_drives: vec![],
        vcpus: 1,
        memory_mib: 256,
        vsock_cid: cid,
        vsock_uds: sockets.join("vsock.sock"),
        socket_dir: sockets,
        tap: None,
        console_log: runtime.join("console.log"),
        runtime_dir: runtime,
    };
    let launched = rt()
        .block_on(FirecrackerVmm::new(&fake).spawn(&spec, Some(&jail)))
        .expect("launch");
    let guard = Launch {
        launched: Some(launched),
        jailer,
        id: id.to_string(),
    };
    let pid = guard.launched.as_ref().unwrap().vmm_pid().expect("pid");

    assert_eq!(
        read_trimmed(Path::new(&format!("/proc/{pid}/comm"))),
        "firecracker"
    );
    assert_eq!(status(pid, "Uid"), jail.uid.to_string());
    assert_eq!(status(pid, "Gid"), jail.gid.to_string());
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert_eq!(status(pid, "CapEff"), "0000000000000000");
    assert!(!exists_in_namespace(pid, Path::new("/root")), "sees /root");
    assert!(
        !exists_in_namespace(pid, &w.join("bin")),
        "sees the host's view of its own binary's directory"
    );
    assert!(exists_in_namespace(pid, &spec.kernel), "sees its kernel");
    assert!(exists_in_namespace(pid, &spec.root_drive), "sees its drive");
    assert!(
        exists_in_namespace(pid, Path::new("/dev/kvm")),
        "sees /dev/kvm"
    );
    for controller in ["memory", "pids", "cpu"] {
        let dir = cgroup_dir(pid, controller);
        assert!(
            jail.cgroup.dirs().contains(&dir),
            "{controller}: {}",
            dir.display()
        );
    }
}

#[test]
fn a_socket_link_planted_by_the_vm_uid_does_not_steer_nexusd() {
    common::require_storage_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("host-service.sock");
    let planted = dir.path().join("vsock.sock");
    rt().block_on(async {
        let listener = tokio::net::UnixListener::bind(&real).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Answer the `CONNECT` line once it has arrived, as vhost-device-vsock does.
                let mut line = [0u8; 13];
                if s.read_exact(&mut line).await.is_ok() {
                    let _ = s.write_all(b"OK 1\n").await;
                }
            }
        });
        std::os::unix::fs::symlink(&real, &planted).unwrap();
        // As the jailed uid would own it.
        std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();
        assert!(nexusd::agent::dial_hybrid_vsock(&real, 1024).await.is_ok());
        let err = nexusd::agent::dial_hybrid_vsock(&planted, 1024)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("vsock.sock"), "{err}");
    });
}
