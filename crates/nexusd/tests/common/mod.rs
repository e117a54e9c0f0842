//! A real `nexusd` on a temporary home, for integration tests, plus the real `nexusctl`.
#![allow(dead_code)]

pub mod kernel;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::client::Client;

/// The nexusd binary under test.
pub fn nexusd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexusd"))
}

/// The nexusctl binary, built next to nexusd by a workspace build.
pub fn nexusctl_bin() -> PathBuf {
    let p = nexusd_bin().with_file_name("nexusctl");
    assert!(
        p.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace) or `cargo build -p nexusctl` first",
        p.display()
    );
    p
}

/// A running daemon; killed on drop if still running, and its home's embedded storage pool
/// (`<home>/data/pool`) unmounted, even when the test failed.
pub struct TestDaemon {
    pub home: tempfile::TempDir,
    pub child: Option<Child>,
    pub client: Client,
    /// The extra flags it was started with, reused by [`TestDaemon::restart`].
    pub extra: Vec<String>,
}

impl TestDaemon {
    /// Starts nexusd on a fresh home and waits until it answers.
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// Starts nexusd on `home` with extra flags and waits until it answers.
    pub fn start_in(home: tempfile::TempDir, extra: &[&str]) -> Self {
        let child = spawn_nexusd(home.path(), extra);
        Self::wrap(home, child, extra)
    }

    /// Starts nexusd on a fresh home with a small (1 GiB) embedded pool and an info-level log in
    /// `<home>/nexusd.log`. Fails at once, naming it, when a storage prerequisite is missing.
    pub fn start_with_storage() -> Self {
        require_storage_prerequisites();
        Self::start_logged(
            tempfile::tempdir().expect("tempdir"),
            &["--pool-size", "1G"],
        )
    }

    /// Starts nexusd on `home` with its log (info level) in `<home>/nexusd.log`.
    pub fn start_logged(home: tempfile::TempDir, extra: &[&str]) -> Self {
        let child = spawn_logged(Command::new(nexusd_bin()), home.path(), extra);
        Self::wrap(home, child, extra)
    }

    /// Takes over `child`, a nexusd started on `home`, and waits until it answers.
    pub fn wrap(home: tempfile::TempDir, child: Child, extra: &[&str]) -> Self {
        let client = Client::unix(home.path().join("run/nexusd.sock"));
        let mut d = Self {
            home,
            child: Some(child),
            client,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.wait_ready();
        d
    }

    /// What the daemon logged so far (daemons started with [`TestDaemon::start_logged`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home().join("nexusd.log")).unwrap_or_default()
    }

    /// The embedded pool's mount point.
    pub fn pool_root(&self) -> PathBuf {
        self.home().join("data/pool")
    }

    /// Kills the daemon with SIGKILL (no shutdown at all) and starts a new one on the same home.
    pub fn kill_and_restart(mut self) -> Self {
        let mut child = self.child.take().expect("daemon already stopped");
        signal(&child, nix::sys::signal::Signal::SIGKILL);
        wait_bounded(&mut child, Duration::from_secs(20));
        let home = std::mem::replace(&mut self.home, tempfile::tempdir().expect("tempdir"));
        let extra = std::mem::take(&mut self.extra);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Self::start_logged(home, &extra)
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("run/nexusd.sock")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let rt = rt();
        loop {
            if rt.block_on(self.client.health()).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nexusd exited during start-up: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "nexusd did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `nexusctl --home <home> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(self.home(), args)
    }

    /// Creates VM `name` from the built-in default image (with `extra` flags) and starts it;
    /// a failure quotes nexusctl's error and the daemon's log.
    pub fn start_default_vm(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["vm", "create", name, "--image", "default", "--start"];
        args.extend_from_slice(extra);
        let out = self.ctl(&args);
        assert!(
            out.status.success(),
            "vm create {name} --start failed: {}\n{}",
            stderr(&out),
            self.log()
        );
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        wait_bounded(&mut child, Duration::from_secs(20))
    }

    /// Stops the daemon and starts a new one on the same home.
    pub fn restart(mut self) -> Self {
        let status = self.stop();
        assert!(status.success(), "nexusd exited with {status}");
        let home = std::mem::replace(&mut self.home, tempfile::tempdir().expect("tempdir"));
        let extra = std::mem::take(&mut self.extra);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        if home.path().join("nexusd.log").exists() {
            Self::start_logged(home, &extra)
        } else {
            Self::start_in(home, &extra)
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // VMs outlive their daemon by design: kill the ones this home started.
        kill_processes_mentioning(self.home());
        // Their cgroups are this home's own (the parent is derived from the data directory).
        nexusd::jail::Jailer::new(nexusd::jail::JailConfig::with_defaults(
            &self.home().join("data"),
        ))
        .remove_all_cgroups();
        // The pool stays mounted when nexusd was killed (or when it was busy): unmount it before the
        // temporary home is removed. Not mounted is fine.
        let _ = nix::mount::umount2(&self.pool_root(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Spawns `nexusd` (the program `cmd` runs, possibly through a wrapper such as `setpriv`) on `home`
/// with an info-level log appended to `<home>/nexusd.log`.
pub fn spawn_logged(mut cmd: Command, home: &Path, extra: &[&str]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("nexusd.log"))
        .expect("open nexusd.log");
    cmd.arg("--home")
        .arg(home)
        .args(extra)
        .args(network_default(extra))
        .env_remove("NEXUS_HOME")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn nexusd")
}

/// A `Command` running nexusd as uid/gid 65534 (through `setpriv`), for [`spawn_logged`].
pub fn nexusd_as_nobody() -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(nexusd_bin());
    cmd
}

/// Storage tests need root (to loop-mount btrfs), btrfs-progs and e2fsprogs: fail naming what is
/// missing rather than pass silently.
pub fn require_storage_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "storage integration tests need root (to loop-mount the btrfs pool)"
    );
    for tool in [
        "mkfs.btrfs",
        "mount",
        "mke2fs",
        "e2fsck",
        "resize2fs",
        "dumpe2fs",
        "debugfs",
        "setpriv",
    ] {
        assert!(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|dir| Path::new(dir).join(tool).is_file()),
            "storage integration tests need `{tool}` (apt-get install btrfs-progs e2fsprogs util-linux)"
        );
    }
}

/// Daemons of tests run side by side, and the host network (bridge, subnet, resolver on the
/// gateway) is one per daemon: tests that do not set up their own (tests/network.rs) make VMs
/// with `network: none`.
pub fn network_default(extra: &[&str]) -> &'static [&'static str] {
    if extra.iter().any(|a| a.starts_with("--network")) {
        &[]
    } else {
        &["--network", "none"]
    }
}

pub fn spawn_nexusd(home: &Path, extra: &[&str]) -> Child {
    Command::new(nexusd_bin())
        .arg("--home")
        .arg(home)
        .args(extra)
        .args(network_default(extra))
        .env_remove("NEXUS_HOME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexusd")
}

pub fn ctl(home: &Path, args: &[&str]) -> Output {
    Command::new(nexusctl_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("NEXUS_HOME")
        .env_remove("NEXUS_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run nexusctl")
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal nexusd");
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small runtime for driving the async client from synchronous tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `nexusctl --json ARGS` against `d`, asserting success, and parses its output.
pub fn ctl_json(d: &TestDaemon, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = d.ctl(&all);
    assert!(
        out.status.success(),
        "nexusctl {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("nexusctl printed JSON")
}

/// The reason recorded with VM `vm`'s newest move to `running` (what its start checked).
#[allow(dead_code)]
pub fn running_reason(d: &TestDaemon, vm: &str) -> String {
    let history = ctl_json(d, &["vm", "history", vm]);
    let running = history
        .as_array()
        .expect("a history")
        .iter()
        .rfind(|t| t["to"] == "running")
        .unwrap_or_else(|| panic!("{vm} never ran: {history}"));
    running["reason"].as_str().unwrap_or_default().to_owned()
}

/// Installs `tarball` as the `rootfs` asset `name`, version 1, through the `url` provider and
/// `file://`.
#[allow(dead_code)]
pub fn rootfs_asset(d: &TestDaemon, name: &str, tarball: &[u8]) {
    use sha2::Digest;
    let file = d.home().join(format!("{name}.tar"));
    std::fs::write(&file, tarball).unwrap();
    let sha = format!("{:x}", sha2::Sha256::digest(tarball));
    let url = format!("file://{}", file.display());
    let out = d.ctl(&[
        "rootfs",
        "download",
        "--url",
        &url,
        "--sha256",
        &sha,
        "--name",
        name,
        "--version",
        "1",
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
}

/// A small directory tree to import: `/etc/hostname` and `/home/user/note`.
pub fn sample_tree(at: &Path) -> PathBuf {
    let tree = at.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("home/user")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "nexus\n").unwrap();
    std::fs::write(tree.join("home/user/note"), "hello\n").unwrap();
    tree
}

/// An ext4 image of `size` bytes made by mke2fs on a sparse file.
pub fn make_ext4(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mke2fs {}", path.display());
}

/// Sorted names in `dir` (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The filesystem size `dumpe2fs -h` reports for the ext4 image at `path` (what a guest sees).
pub fn ext4_bytes(path: &Path) -> u64 {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dumpe2fs {}: {}",
        path.display(),
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in dumpe2fs output"))
    };
    field("Block count:") * field("Block size:")
}

/// Processes whose command line contains `needle` (and `also`).
pub fn pids_mentioning(needle: &str, also: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains(also) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs every process (VMMs, vsock backends) started for VMs under `home`.
pub fn kill_processes_mentioning(home: &Path) {
    let home = home.display().to_string();
    for pid in pids_mentioning(&home, "") {
        if pid != std::process::id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The QEMU processes of the VM named `vm` under this daemon's home.
pub fn vmm_pids(vm: &str, d: &TestDaemon) -> Vec<u32> {
    pids_mentioning(
        &d.home().display().to_string(),
        &format!("nexus.hostname={vm} "),
    )
    .into_iter()
    .filter(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.starts_with("qemu-system"))
    })
    .collect()
}

/// VM tests need the storage prerequisites plus QEMU, vhost-device-vsock, the guest kernel
/// package, a static busybox and the static agent: fail naming what is missing.
pub fn require_boot_prerequisites() {
    require_storage_prerequisites();
    let in_path = |tool: &str| {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
    };
    assert!(
        in_path("qemu-system-x86_64"),
        "VM tests need qemu-system-x86_64 (apt-get install qemu-system-x86; scripts/setup.sh)"
    );
    let home_cargo = std::env::var_os("HOME")
        .map(|h| {
            Path::new(&h)
                .join(".cargo/bin/vhost-device-vsock")
                .is_file()
        })
        .unwrap_or(false);
    assert!(
        in_path("vhost-device-vsock") || home_cargo,
        "VM tests need vhost-device-vsock (cargo install vhost-device-vsock; scripts/setup.sh)"
    );
    let agent = std::env::var_os("NEXUS_AGENT_BIN").map(PathBuf::from);
    assert!(
        agent.as_ref().is_some_and(|a| a.is_file()),
        "VM tests need the static guest agent: run them with scripts/test.sh, or set NEXUS_AGENT_BIN to the output of scripts/build-agent.sh"
    );
    let kernel_dir = std::env::var_os("NEXUS_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/nexus/kernel"));
    let has_deb = std::fs::read_dir(&kernel_dir)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with("-cloud-amd64_amd64.deb")
                    || e.file_name().to_string_lossy().contains("-cloud-amd64_")
            })
        })
        .unwrap_or(false);
    assert!(
        has_deb,
        "VM tests need the guest kernel package in {} (scripts/test.sh fetches it, or scripts/fetch-kernel.sh DIR with NEXUS_KERNEL_DIR=DIR)",
        kernel_dir.display()
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "VM tests need a static busybox for the default image (apt-get install busybox-static)"
    );
}

/// The bearer token of [`tcp_daemon`].
pub const TCP_TOKEN: &str = "t0ps3cret-token";

/// A nexusd with a TCP listener on a free loopback port, the token in `<home>/token`, `extra`
/// flags, and a human-format log (the format where a raw newline would forge a line).
pub fn tcp_daemon(extra: &[&str]) -> TestDaemon {
    let home = tempfile::tempdir().unwrap();
    let token = home.path().join("token");
    std::fs::write(&token, format!("{TCP_TOKEN}\n")).unwrap();
    let mut args = vec![
        "--tcp-listen",
        "127.0.0.1:0",
        "--tcp-token-file",
        token.to_str().unwrap(),
        "--log-format",
        "human",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestDaemon::start_logged(home, &args)
}

/// The address the TCP listener of `d` bound.
pub fn tcp_addr(d: &TestDaemon) -> String {
    std::fs::read_to_string(d.home().join("run/tcp.addr"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A daemon with a pool and a running VM `name` booted from the built-in default image through
/// the CLI. Fails at once, naming it, when a boot prerequisite is missing.
pub fn daemon_with_running_vm(name: &str) -> TestDaemon {
    require_boot_prerequisites();
    let d = TestDaemon::start_with_storage();
    let out = d.ctl(&["vm", "create", name, "--image", "default", "--start"]);
    assert!(
        out.status.success(),
        "vm create --start failed: {}\n{}",
        stderr(&out),
        d.log()
    );
    d
}

/// One raw HTTP/1.1 request over a fresh TCP connection to `addr`, with an optional extra header
/// line (`"Name: value"`) and a JSON body; the status and the body. Raw, so tests can send what a
/// typed client would refuse to.
pub fn raw_http(
    addr: &str,
    method: &str,
    path: &str,
    header: Option<String>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let header = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{header}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {out:?}"));
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}
