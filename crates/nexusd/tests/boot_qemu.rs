//! End to end below the daemon: Debian's cloud kernel + the generated agent initramfs + a busybox
//! ext4 root, booted with the QEMU backend (TCG here), driven through the agent client.
//!
//! Needs root, qemu-system-x86_64, vhost-device-vsock, mke2fs, busybox-static, the agent binary
//! (`NEXUS_AGENT_BIN`, from scripts/build-agent.sh) and the kernel .deb (`NEXUS_KERNEL_DIR`,
//! default /var/cache/nexus/kernel, from scripts/fetch-kernel.sh). Missing pieces fail the test
//! with a message naming them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexusd::agent::AgentClient;
use nexusd::boot::{self, DEFAULT_MODULES, RootfsOptions};
use nexusd::vmm::{Launched, ProcessRole, QemuVmm, VmSpec, Vmm, guest_cmdline};
use sha2::{Digest, Sha256};

const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const FILE_MIB: usize = 50;

fn agent_binary() -> PathBuf {
    let path = std::env::var_os("NEXUS_AGENT_BIN")
        .map(PathBuf::from)
        .expect("NEXUS_AGENT_BIN is not set: build the agent with scripts/build-agent.sh and export its path");
    assert!(
        path.is_file(),
        "NEXUS_AGENT_BIN={} does not exist: run scripts/build-agent.sh",
        path.display()
    );
    path
}

fn kernel_deb_dir() -> PathBuf {
    std::env::var_os("NEXUS_KERNEL_DIR")
        .map_or_else(|| PathBuf::from("/var/cache/nexus/kernel"), PathBuf::from)
}

fn vhost_device_vsock() -> PathBuf {
    let candidates = [
        std::env::var_os("NEXUS_VHOST_VSOCK").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/vhost-device-vsock")),
        Some(PathBuf::from("/usr/local/bin/vhost-device-vsock")),
        Some(PathBuf::from("/usr/bin/vhost-device-vsock")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .expect("vhost-device-vsock not found: `cargo install vhost-device-vsock` or set NEXUS_VHOST_VSOCK")
}

/// Kills the VM's processes when the test ends, and shows the console when it failed.
struct VmGuard {
    pids: Vec<u32>,
    run_dir: PathBuf,
}

impl Drop for VmGuard {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::thread::panicking() {
            for log in ["console.log", "vhost-vsock.log", "qemu.log"] {
                let text = std::fs::read_to_string(self.run_dir.join(log)).unwrap_or_default();
                eprintln!("--- {log} ---\n{text}\n---");
            }
        }
    }
}

struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: Option<i32>,
}

async fn run(client: &AgentClient, req: ExecRequest) -> Output {
    let mut events = client.exec(&req).await.expect("exec request");
    let mut out = Output {
        stdout: Vec::new(),
        stderr: Vec::new(),
        code: None,
    };
    while let Some(event) = events.next().await {
        match event.expect("exec event") {
            ExecEvent::Stdout { data } => out.stdout.extend(data),
            ExecEvent::Stderr { data } => out.stderr.extend(data),
            ExecEvent::Exit { code, .. } => out.code = code,
            ExecEvent::Error { message } => panic!("exec {:?} failed: {message}", req.argv),
        }
    }
    out
}

/// Runs a command whose stream may break (the agent may die); returns whether it ended cleanly.
async fn run_raw(client: &AgentClient, req: ExecRequest) -> bool {
    match client.exec(&req).await {
        Ok(events) => events.try_collect::<Vec<_>>().await.is_ok(),
        Err(_) => false,
    }
}

fn chunk(i: usize) -> Bytes {
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let data: Vec<u8> = (0..1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    Bytes::from(data)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1000.0
}

async fn prepare(work: &Path) -> (VmSpec, String) {
    let agent = agent_binary();
    let assets = kernel_deb_dir();
    let kernel = tokio::task::spawn_blocking(move || boot::unpack_debian_kernel(&assets))
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "kernel asset: {e} (run scripts/fetch-kernel.sh {})",
                kernel_deb_dir().display()
            )
        });
    let work_dir = work.to_path_buf();
    let k = kernel.clone();
    let (initrd, rootfs) = tokio::task::spawn_blocking(move || {
        let initrd = boot::build_initramfs(&k, &agent, DEFAULT_MODULES, &work_dir.join("cache"))
            .expect("initramfs");
        let dir = work_dir.join("rootfs");
        boot::build_busybox_rootfs(
            &dir,
            &RootfsOptions {
                hostname: "e2e".into(),
                ..RootfsOptions::default()
            },
        )
        .expect("busybox rootfs (apt-get install busybox-static)");
        let image = work_dir.join("root.ext4");
        nexusd::storage::ext4::build_from_dir(&dir, &image, 256 << 20)
            .expect("mke2fs (apt-get install e2fsprogs)");
        (initrd, image)
    })
    .await
    .unwrap();
    let run_dir = work.join("run");
    let spec = VmSpec {
        name: "e2e".into(),
        vm_id: uuid::Uuid::new_v4(),
        boot_id: 1,
        kernel: kernel.kernel.clone(),
        initrd: Some(initrd),
        cmdline: guest_cmdline("e2e-vm", None),
        root_drive: rootfs,
        extra_drives: vec![],
        vcpus: 1,
        memory_mib: 256,
        vsock_cid: 3 + std::process::id() % 1000,
        vsock_uds: run_dir.join("vsock.sock"),
        socket_dir: run_dir.clone(),
        tap: None,
        console_log: run_dir.join("console.log"),
        runtime_dir: run_dir,
    };
    (spec, kernel.release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_vm_boots_and_agent_serves_exec_files_and_shutdown() {
    let work = tempfile::tempdir().unwrap();
    let (spec, release) = prepare(work.path()).await;
    let vmm = QemuVmm::for_host("qemu-system-x86_64", vhost_device_vsock());
    let accel = vmm.accel;
    println!("guest cmdline: {}", vmm.cmdline(&spec));

    let spawned_at = Instant::now();
    let mut launched: Launched = vmm.spawn(&spec, None).await.expect("spawn qemu");
    let _guard = VmGuard {
        pids: launched.processes.iter().map(|p| p.pid).collect(),
        run_dir: spec.runtime_dir.clone(),
    };
    let qemu_index = launched
        .processes
        .iter()
        .position(|p| p.role == ProcessRole::Vmm)
        .unwrap();
    let (client, handshake) = tokio::select! {
        connected = async {
            // As nexusd does: dial only once the agent has announced itself on the console.
            nexusd::agent::wait_for_ready_line(&spec.console_log, 0, BOOT_TIMEOUT).await;
            AgentClient::connect(&spec.vsock_uds, BOOT_TIMEOUT).await
        } => connected.expect("agent handshake"),
        status = launched.processes[qemu_index].child.wait() => {
            panic!("QEMU exited before the agent answered: {status:?}")
        }
    };
    let ready = spawned_at.elapsed();
    println!(
        "accel={accel:?} spawn->agent-ready {} ms (guest: init {} ms, root {} ms, agent listening {} ms)",
        ready.as_millis(),
        handshake.boot.init_ms,
        handshake.boot.root_ms,
        handshake.boot.ready_ms
    );
    assert_eq!(handshake.protocol, 1);

    // uname names the guest kernel, not the host's.
    let uname = run(&client, ExecRequest::new(["uname", "-a"])).await;
    let uname_text = String::from_utf8_lossy(&uname.stdout).into_owned();
    let host_release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    assert!(uname_text.contains(&release), "uname -a: {uname_text}");
    assert!(
        host_release == release || !uname_text.contains(&host_release),
        "host kernel in {uname_text}"
    );
    assert!(
        uname_text.contains("e2e-vm"),
        "hostname missing from {uname_text}"
    );

    // A protocol the agent does not speak is refused clearly.
    let mismatch = client.handshake_offering(&[99]).await.unwrap_err();
    assert!(
        matches!(mismatch, nexusd::agent::AgentError::Protocol(_)),
        "{mismatch}"
    );

    // cwd and env are applied; a missing program is an error event, not a hang.
    let mut pwd = ExecRequest::new(["sh", "-c", "pwd; echo $GREETING"]);
    pwd.cwd = Some("/tmp".into());
    pwd.env.insert("GREETING".into(), "hi".into());
    assert_eq!(run(&client, pwd).await.stdout, b"/tmp\nhi\n");
    let mut missing = client
        .exec(&ExecRequest::new(["no-such-program"]))
        .await
        .unwrap();
    let first = missing.next().await.unwrap().unwrap();
    assert!(matches!(first, ExecEvent::Error { .. }), "{first:?}");

    // stdin reaches the process.
    let mut cat = ExecRequest::new(["cat"]);
    cat.stdin = Some(b"hello through stdin\n".to_vec());
    assert_eq!(run(&client, cat).await.stdout, b"hello through stdin\n");

    // A non-zero exit code and stderr come back.
    let failing = run(
        &client,
        ExecRequest::new(["sh", "-c", "echo oops >&2; exit 7"]),
    )
    .await;
    assert_eq!(
        (failing.code, failing.stderr.as_slice()),
        (Some(7), b"oops\n".as_slice())
    );

    // 20 concurrent execs on the one connection, each with its own answer.
    let concurrent = futures_util::future::join_all((0..20).map(|i| {
        let client = client.clone();
        async move {
            run(
                &client,
                ExecRequest::new(["sh", "-c", &format!("sleep 0.2; echo {i}")]),
            )
            .await
        }
    }))
    .await;
    for (i, out) in concurrent.iter().enumerate() {
        assert_eq!(
            (out.code, String::from_utf8_lossy(&out.stdout).into_owned()),
            (Some(0), format!("{i}\n"))
        );
    }

    // A timeout kills the process group.
    let mut slow = ExecRequest::new(["sleep", "30"]);
    slow.timeout_ms = Some(300);
    let mut events = client.exec(&slow).await.unwrap();
    let mut timed_out = false;
    while let Some(ev) = events.next().await {
        if let ExecEvent::Exit {
            timed_out: t,
            signal,
            ..
        } = ev.unwrap()
        {
            timed_out = t && signal == Some(9);
        }
    }
    assert!(timed_out, "sleep 30 with a 300 ms timeout was not killed");

    // 50 MiB written and read back with the same sha256.
    let expected: Vec<u8> = (0..FILE_MIB)
        .fold(Sha256::new(), |mut h, i| {
            h.update(chunk(i));
            h
        })
        .finalize()
        .to_vec();
    let upload =
        futures_util::stream::iter((0..FILE_MIB).map(|i| Ok::<_, std::io::Error>(chunk(i))));
    let started = Instant::now();
    let stat = client
        .write_file("/root/big.bin", 0o600, upload)
        .await
        .expect("write_file");
    let write_time = started.elapsed();
    assert_eq!(
        (stat.size, stat.mode),
        ((FILE_MIB * 1024 * 1024) as u64, 0o600)
    );
    let started = Instant::now();
    let mut hasher = Sha256::new();
    let mut stream = client.read_file("/root/big.bin").await.expect("read_file");
    while let Some(piece) = stream.try_next().await.expect("read chunk") {
        hasher.update(&piece);
    }
    let read_time = started.elapsed();
    assert_eq!(hasher.finalize().to_vec(), expected);
    let mib = FILE_MIB as f64;
    println!(
        "file {FILE_MIB} MiB: write {:.1} MiB/s, read {:.1} MiB/s",
        mib / write_time.as_secs_f64(),
        mib / read_time.as_secs_f64()
    );

    // stat, list and remove.
    let listing = client.list("/root").await.unwrap();
    assert!(listing.entries.iter().any(|e| e.name == "big.bin"));
    client.remove("/root/big.bin", false).await.unwrap();
    let missing = client.stat("/root/big.bin").await.unwrap_err();
    assert!(
        matches!(
            missing,
            nexusd::agent::AgentError::Remote { status: 404, .. }
        ),
        "{missing}"
    );

    // Exec round trip of `true`.
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        let started = Instant::now();
        let out = run(&client, ExecRequest::new(["true"])).await;
        times.push(started.elapsed());
        assert_eq!(out.code, Some(0));
    }
    times.sort();
    println!(
        "exec true round trip: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );

    // Reference: the guest's own fork+exec of /bin/true from busybox sh, without the agent.
    let loop_script = "i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done";
    let started = Instant::now();
    run(&client, ExecRequest::new(["sh", "-c", loop_script])).await;
    println!(
        "in-guest fork+exec of /bin/true: {:.2} ms each",
        started.elapsed().as_secs_f64() * 1000.0 / 50.0
    );

    // Orphans are reaped by PID 1: no zombies are left behind.
    run(
        &client,
        ExecRequest::new(["sh", "-c", "sleep 0.1 & exit 0"]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps = run(&client, ExecRequest::new(["ps", "-o", "stat"])).await;
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains('Z'),
        "zombies: {}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // When the agent server dies, PID 1 restarts it and the client re-dials.
    let _ = run_raw(&client, ExecRequest::new(["sh", "-c", "kill -9 $PPID"])).await;
    let restarted = Instant::now();
    let again = loop {
        match client.exec(&ExecRequest::new(["echo", "back"])).await {
            Ok(events) => break events.try_collect::<Vec<_>>().await.unwrap(),
            Err(_) if restarted.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("agent did not come back: {e}"),
        }
    };
    assert!(again.contains(&ExecEvent::Stdout {
        data: b"back\n".to_vec()
    }));
    println!(
        "agent restarted and answered {} ms after being killed",
        restarted.elapsed().as_millis()
    );

    let info = client.info().await.unwrap();
    assert_eq!(
        (info.hostname.as_str(), info.kernel_release.as_str()),
        ("e2e-vm", release.as_str())
    );

    // Shutdown through the agent makes QEMU exit.
    client.shutdown().await.expect("shutdown");
    let qemu = launched
        .processes
        .iter_mut()
        .find(|p| p.role == ProcessRole::Vmm)
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), qemu.child.wait())
        .await
        .expect("QEMU did not exit within 30 s of the shutdown request")
        .unwrap();
    println!(
        "QEMU exited with {status} {} ms after boot",
        spawned_at.elapsed().as_millis()
    );
    launched.kill().await;
}
