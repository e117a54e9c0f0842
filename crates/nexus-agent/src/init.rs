//! PID 1 duties: the initramfs stage (load modules, mount the root drive, switch root), the early
//! mounts, hostname and address, and the reaper loop that supervises the agent and powers off.
//!
//! Everything here runs before any thread exists: the agent server is forked off as a child process
//! and builds its tokio runtime there, so PID 1 stays a small single-threaded reaper.

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nexus_lib::agent::BootTimes;
use nix::errno::Errno;
use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, kill, sigaction};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, chroot, fork, sethostname};

use crate::cmdline::BootConfig;
use crate::{net, sysinfo};

/// Present only in the initramfs nexusd generates.
const INITRAMFS_MARKER: &str = "/.nexus-initramfs";
/// Module file names, one a line, in load order (relative to [`MODULE_DIR`]).
const MODULE_ORDER: &str = "/modules/order";
const MODULE_DIR: &str = "/modules";
const ROOT_DEVICE: &str = "/dev/vda";
const NEW_ROOT: &str = "/newroot";
/// Exit code with which the agent child asks PID 1 to power off.
pub const EXIT_SHUTDOWN: i32 = 100;
/// Restarts of the agent child tolerated within [`RESTART_WINDOW`] before rebooting.
const MAX_RESTARTS: u32 = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(30);

static SHUTDOWN_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_shutdown_signal(_: nix::libc::c_int) {
    SHUTDOWN_REQUESTED.store(true, Ordering::SeqCst);
}

/// Runs PID 1 forever; `serve` is the agent server, run in a forked child.
pub fn run(serve: fn(BootTimes) -> i32) -> ! {
    let init_ms = sysinfo::uptime_ms();
    if let Err(e) = early_setup() {
        log(&format!("early setup failed: {e}"));
        power_off();
    }
    let root_ms = sysinfo::uptime_ms();
    let cfg = BootConfig::parse(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if let Some(name) = &cfg.hostname
        && let Err(e) = sethostname(name)
    {
        log(&format!("sethostname {name}: {e}"));
    }
    if let Err(e) = net::configure(&cfg) {
        log(&format!("network setup: {e}"));
    }
    install_signal_handlers();
    let times = BootTimes {
        init_ms,
        root_ms,
        ready_ms: 0,
    };
    reap_forever(serve, times)
}

fn early_setup() -> Result<(), String> {
    if Path::new(INITRAMFS_MARKER).exists() {
        mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID)?;
        mount_fs(
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )?;
        load_modules();
        switch_root()?;
    }
    mount_standard_filesystems()
}

fn load_modules() {
    let order = fs::read_to_string(MODULE_ORDER).unwrap_or_default();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULE_DIR).join(name);
        let result = File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| match finit_module(&f, c"", ModuleInitFlags::empty()) {
                Ok(()) | Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e.to_string()),
            });
        if let Err(e) = result {
            log(&format!("loading module {}: {e}", path.display()));
        }
    }
}

fn switch_root() -> Result<(), String> {
    wait_for(Path::new(ROOT_DEVICE), Duration::from_secs(10))?;
    fs::create_dir_all(NEW_ROOT).map_err(|e| format!("mkdir {NEW_ROOT}: {e}"))?;
    mount_root(MsFlags::empty())
        .or_else(|e| match e {
            // A read-only drive (shared base image) still boots, read-only.
            Errno::EACCES | Errno::EROFS => mount_root(MsFlags::MS_RDONLY),
            e => Err(e),
        })
        .map_err(|e| format!("mount {ROOT_DEVICE} on {NEW_ROOT}: {e}"))?;
    for fs in ["/dev", "/proc"] {
        let target = format!("{NEW_ROOT}{fs}");
        let _ = fs::create_dir_all(&target);
        mount::<str, str, str, str>(Some(fs), &target, None, MsFlags::MS_MOVE, None)
            .map_err(|e| format!("move {fs} to {target}: {e}"))?;
    }
    chdir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount::<str, str, str, str>(Some("."), "/", None, MsFlags::MS_MOVE, None)
        .map_err(|e| format!("move {NEW_ROOT} to /: {e}"))?;
    chroot(".").map_err(|e| format!("chroot: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))
}

fn mount_root(flags: MsFlags) -> nix::Result<()> {
    mount::<str, str, str, str>(Some(ROOT_DEVICE), NEW_ROOT, Some("ext4"), flags, None)
}

fn mount_standard_filesystems() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID;
    let secure = nosuid | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 7] = [
        ("proc", "/proc", "proc", secure, None),
        ("sysfs", "/sys", "sysfs", secure, None),
        ("devtmpfs", "/dev", "devtmpfs", nosuid, None),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            nosuid | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=620,ptmxmode=666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            nosuid | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            nosuid | MsFlags::MS_NODEV,
            Some("mode=755"),
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        if is_mountpoint(target) {
            continue;
        }
        let _ = fs::create_dir_all(target);
        mount(Some(src), target, Some(fstype), flags, data)
            .map_err(|e| format!("mount {fstype} on {target}: {e}"))?;
    }
    Ok(())
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    mount::<str, str, str, str>(Some(src), target, Some(fstype), flags, None)
        .map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

/// A directory is a mount point when it lives on another device than its parent.
fn is_mountpoint(path: &str) -> bool {
    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
    match (fs::metadata(path), fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev() || m.ino() == p.ino(),
        _ => false,
    }
}

fn wait_for(path: &Path, limit: Duration) -> Result<(), String> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            return Err(format!(
                "{} did not appear within {limit:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn install_signal_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(on_shutdown_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            log(&format!("sigaction {sig}: {e}"));
        }
    }
}

/// Restores default signal dispositions in a forked child.
fn reset_signal_handlers() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        // SAFETY: installing SIG_DFL has no handler code to be unsafe.
        let _ = unsafe { sigaction(sig, &default) };
    }
}

fn spawn_agent(serve: fn(BootTimes) -> i32, times: BootTimes) -> Option<Pid> {
    // SAFETY: PID 1 is single-threaded (no thread was ever started), so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            reset_signal_handlers();
            std::process::exit(serve(times));
        }
        Ok(ForkResult::Parent { child }) => Some(child),
        Err(e) => {
            log(&format!("fork: {e}"));
            None
        }
    }
}

fn reap_forever(serve: fn(BootTimes) -> i32, times: BootTimes) -> ! {
    let mut agent = spawn_agent(serve, times);
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        if SHUTDOWN_REQUESTED.load(Ordering::SeqCst) {
            power_off();
        }
        let status = match waitpid(None::<Pid>, None) {
            Ok(status) => status,
            Err(Errno::EINTR) => continue,
            Err(Errno::ECHILD) => {
                agent = respawn(serve, times, &mut restarts);
                continue;
            }
            Err(e) => {
                log(&format!("waitpid: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let pid = match status {
            WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _) => pid,
            _ => continue,
        };
        if Some(pid) != agent {
            continue;
        }
        if matches!(status, WaitStatus::Exited(_, EXIT_SHUTDOWN)) {
            power_off();
        }
        log(&format!("agent exited ({status:?}), restarting"));
        agent = respawn(serve, times, &mut restarts);
    }
}

fn respawn(
    serve: fn(BootTimes) -> i32,
    times: BootTimes,
    restarts: &mut Vec<Instant>,
) -> Option<Pid> {
    restarts.retain(|t| t.elapsed() < RESTART_WINDOW);
    if restarts.len() as u32 >= MAX_RESTARTS {
        log("agent keeps failing, rebooting");
        power_off();
    }
    restarts.push(Instant::now());
    std::thread::sleep(Duration::from_millis(100));
    spawn_agent(serve, times)
}

/// Stops every process, makes the root read-only and reboots (the VMM exits on reboot).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    reap_until_empty(Duration::from_secs(2));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap_until_empty(Duration::from_millis(500));
    nix::unistd::sync();
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Err(e) = mount::<str, str, str, str>(None, "/", None, flags, None) {
        log(&format!("remount / read-only: {e}"));
    }
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    std::process::exit(1)
}

fn reap_until_empty(limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
            _ => {}
        }
    }
}

/// Writes to the console (PID 1's stderr is `/dev/console`).
pub fn log(msg: &str) {
    eprintln!("nexus-agent: {msg}");
}
