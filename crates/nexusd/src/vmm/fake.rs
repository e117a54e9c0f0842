//! A fake VMM for the life cycle's unit tests: a real process that behaves like a VMM whose guest
//! runs the agent, started in milliseconds, with no root, KVM or QEMU.
//!
//! [`FakeVmm::spawn`] re-executes the running test binary into [`process_entry`] (an ignored
//! test, selected with `--exact --ignored`), which reads its [`Script`] from [`SCRIPT_ENV`]. Like
//! a booting guest it appends to the VM's console log, then listens on the VM's hybrid-vsock
//! socket (`CONNECT <port>` / `OK`, then the agent protocol, served by [`crate::agent::fake`]),
//! announces the agent's ready line on the console, and powers off (exits 0) when asked to. A
//! [`Guest`] makes it misbehave instead. Its `argv[0]` carries the VM's id, as a VMM's command line
//! does, so recovery after a simulated daemon restart recognises it; it exits once its parent (the
//! test) is gone, so a failing test leaves nothing behind.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use nexus_lib::agent::{
    AGENT_READY_LINE, AgentInfo, BootTimes, ErrorBody, ErrorDetail, Handshake, ShutdownAccepted,
};
use serde::{Deserialize, Serialize};

use super::{Launched, ProcessRole, VmSpec, Vmm, VmmError, VmmKind, VmmProcess, log_file};
use crate::agent::fake::{self, FakeBody, json_reply};
use crate::jail::VmJail;

/// The environment variable carrying the fake process's [`Script`] (JSON).
const SCRIPT_ENV: &str = "NEXUS_FAKE_VMM_SCRIPT";
/// Exit code of [`Guest::ExitsAtOnce`].
pub(crate) const EXIT_AT_ONCE_CODE: i32 = 3;
/// Exit code of [`Guest::CrashesAfter`].
pub(crate) const CRASH_CODE: i32 = 70;
/// What the fake prints on the console when an exec stream it stalled is cancelled by the host.
pub(crate) const EXEC_CANCELLED_LINE: &str = "fake-agent: exec stream cancelled";

/// How the fake guest behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Guest {
    /// Boots, answers the agent protocol, powers off on request.
    Healthy,
    /// The VMM exits with [`EXIT_AT_ONCE_CODE`] right after printing a kernel panic.
    ExitsAtOnce,
    /// Prints the ready line but never answers a `CONNECT` (a wedged vsock).
    NeverAnswers,
    /// Boots; an exec prints one line, then its output stalls for ever.
    StallsExec,
    /// Boots, then the VMM exits with [`CRASH_CODE`] after this long.
    CrashesAfter(Duration),
    /// Boots, accepts a shutdown request but never powers off.
    IgnoresPoweroff,
    /// Like [`Guest::IgnoresPoweroff`], and the VMM ignores SIGTERM too.
    IgnoresPoweroffAndSigterm,
}

/// What the fake process is told to do.
#[derive(Debug, Serialize, Deserialize)]
struct Script {
    guest: Guest,
    vsock_uds: PathBuf,
    console_log: PathBuf,
    /// The test process: the fake exits when it is gone.
    parent: u32,
}

/// A [`Vmm`] whose processes are fake VMMs (see the module comment). It reports itself as QEMU.
pub(crate) struct FakeVmm {
    guest: Guest,
    spawn_delay: Duration,
    launched: Mutex<Vec<Launch>>,
}

/// One fake VMM process this backend started.
struct Launch {
    pid: u32,
    /// Opened while the process was still our unreaped child: it is this process for ever.
    pidfd: OwnedFd,
    spec: VmSpec,
}

impl FakeVmm {
    pub(crate) fn new(guest: Guest) -> Self {
        Self {
            guest,
            spawn_delay: Duration::ZERO,
            launched: Mutex::new(Vec::new()),
        }
    }

    /// A backend that takes `delay` to spawn, as a VMM waiting for its sockets does.
    pub(crate) fn spawning_after(self, delay: Duration) -> Self {
        Self {
            spawn_delay: delay,
            ..self
        }
    }

    /// The specs of every spawn so far, in order.
    pub(crate) fn specs(&self) -> Vec<VmSpec> {
        lock(&self.launched)
            .iter()
            .map(|l| l.spec.clone())
            .collect()
    }

    /// The pids of every process spawned so far.
    pub(crate) fn pids(&self) -> Vec<u32> {
        lock(&self.launched).iter().map(|l| l.pid).collect()
    }

    /// Whether every process spawned so far has exited, waiting up to `limit` for them.
    pub(crate) async fn all_exited_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.all_exited() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn all_exited(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let launched = lock(&self.launched);
        let mut fds: Vec<PollFd<'_>> = launched
            .iter()
            .map(|l| PollFd::new(l.pidfd.as_fd(), PollFlags::POLLIN))
            .collect();
        // A pidfd is readable once its process has exited (reaped or not).
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready as usize == fds.len())
    }

    /// SIGKILLs every process spawned so far (a VMM dying while nexusd is down).
    pub(crate) fn kill_all(&self) {
        for l in lock(&self.launched).iter() {
            let _ = rustix::process::pidfd_send_signal(&l.pidfd, rustix::process::Signal::KILL);
        }
    }

    async fn launch(&self, spec: &VmSpec) -> Result<Launched, VmmError> {
        tokio::time::sleep(self.spawn_delay).await;
        let script = Script {
            guest: self.guest,
            vsock_uds: spec.vsock_uds.clone(),
            console_log: spec.console_log.clone(),
            parent: std::process::id(),
        };
        let exe = std::env::current_exe().map_err(VmmError::io("/proc/self/exe"))?;
        // The test harness's own output goes here, not to the console.
        let log = spec.runtime_dir.join("fake-vmm.log");
        let stdout = log_file(&log)?;
        let stderr = stdout.try_clone().map_err(VmmError::io(&log))?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg0(format!("fake-vmm --id {}", spec.vm_id))
            .args([entry_test(), "--exact", "--ignored", "--nocapture"])
            .env(
                SCRIPT_ENV,
                serde_json::to_string(&script).expect("a script serialises"),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| VmmError::Spawn {
            vm: spec.name.clone(),
            program: exe.display().to_string(),
            source,
            log: log.clone(),
        })?;
        let pid = child.id().expect("a child not waited for has its pid");
        let raw = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(|e| VmmError::io(&log)(e.into()))?;
        lock(&self.launched).push(Launch {
            pid,
            pidfd,
            spec: spec.clone(),
        });
        Ok(Launched {
            processes: vec![VmmProcess {
                role: ProcessRole::Vmm,
                pid,
                child,
            }],
        })
    }
}

impl Vmm for FakeVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn spawn<'a>(
        &'a self,
        spec: &'a VmSpec,
        _jail: Option<&'a VmJail>,
    ) -> BoxFuture<'a, Result<Launched, VmmError>> {
        Box::pin(self.launch(spec))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The name the test harness knows [`process_entry`] by (its path without the crate's name).
fn entry_test() -> &'static str {
    let path = concat!(module_path!(), "::process_entry");
    path.split_once("::").map_or(path, |(_, rest)| rest)
}

/// The fake VMM process itself: does nothing unless [`FakeVmm`] started it.
#[test]
#[ignore = "the fake VMM's process, started by FakeVmm::spawn"]
fn process_entry() {
    let Ok(script) = std::env::var(SCRIPT_ENV) else {
        return;
    };
    let script: Script = serde_json::from_str(&script).expect("the script is valid JSON");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(run(script));
    std::process::exit(code);
}

/// Behaves as the script says; returns the exit code (or exits from a task).
async fn run(script: Script) -> i32 {
    let Script {
        guest,
        vsock_uds,
        console_log,
        parent,
    } = script;
    tokio::spawn(exit_with_parent(parent));
    console(&console_log, "fake-vmm: Linux version 6.1.0-fake booting");
    if guest == Guest::ExitsAtOnce {
        console(
            &console_log,
            "fake-vmm: Kernel panic - not syncing: no init",
        );
        return EXIT_AT_ONCE_CODE;
    }
    let listener = match tokio::net::UnixListener::bind(&vsock_uds) {
        Ok(l) => l,
        Err(e) => {
            console(&console_log, &format!("fake-vmm: cannot bind vsock: {e}"));
            return 1;
        }
    };
    match guest {
        Guest::CrashesAfter(after) => {
            let log = console_log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                console(&log, "fake-vmm: guest crashed");
                std::process::exit(CRASH_CODE);
            });
        }
        Guest::IgnoresPoweroffAndSigterm => {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
            let log = console_log.clone();
            tokio::spawn(async move {
                while term.recv().await.is_some() {
                    console(&log, "fake-vmm: ignoring SIGTERM");
                }
            });
        }
        _ => {}
    }
    console(&console_log, &format!("{AGENT_READY_LINE} port 1024"));
    if guest == Guest::NeverAnswers {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
        return 1;
    }
    fake::serve_on(listener, move |req| agent(guest, &console_log, req)).await;
    1
}

/// The fake agent's answers.
fn agent(guest: Guest, console_log: &Path, req: Request<Incoming>) -> Response<FakeBody> {
    let ok = StatusCode::OK;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/handshake") => json_reply(
            ok,
            &Handshake {
                protocol: 1,
                supported: vec![1],
                agent_version: "fake".into(),
                kernel_release: "6.1.0-fake".into(),
                boot: BootTimes::default(),
            },
        ),
        (&Method::GET, "/v1/info") => json_reply(
            ok,
            &AgentInfo {
                agent_version: "fake".into(),
                protocol: vec![1],
                kernel_release: "6.1.0-fake".into(),
                hostname: "fake".into(),
                uptime_ms: 1,
                mem_total_kib: 1,
                mem_available_kib: 1,
            },
        ),
        (&Method::POST, "/v1/shutdown") => {
            if guest != Guest::IgnoresPoweroff && guest != Guest::IgnoresPoweroffAndSigterm {
                let log = console_log.to_owned();
                tokio::spawn(async move {
                    // After the reply has gone out, as the real agent does.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    console(&log, "fake-vmm: reboot: Power down");
                    std::process::exit(0);
                });
            }
            json_reply(
                ok,
                &ShutdownAccepted {
                    shutting_down: true,
                },
            )
        }
        (&Method::POST, "/v1/exec") if guest == Guest::StallsExec => {
            let (dropped, mut cancelled) = tokio::sync::mpsc::unbounded_channel();
            let log = console_log.to_owned();
            tokio::spawn(async move {
                if cancelled.recv().await.is_some() {
                    console(&log, EXEC_CANCELLED_LINE);
                }
            });
            let line: &'static [u8] = b"{\"type\":\"stdout\",\"data\":\"aGkK\"}\n";
            fake::streaming_reply(vec![line], fake::stall(), dropped)
        }
        (&Method::POST, "/v1/exec") => {
            let lines: &'static [u8] = b"{\"type\":\"stdout\",\"data\":\"aGkK\"}\n{\"type\":\"exit\",\"code\":0,\"signal\":null,\"timed_out\":false}\n";
            let (dropped, _) = tokio::sync::mpsc::unbounded_channel();
            fake::streaming_reply(vec![lines], futures_util::stream::empty(), dropped)
        }
        _ => json_reply(
            StatusCode::NOT_FOUND,
            &ErrorBody {
                error: ErrorDetail {
                    code: "not_found".into(),
                    message: "the fake agent has no such endpoint".into(),
                },
            },
        ),
    }
}

/// Appends a line to the console log, as the guest's serial console does.
fn console(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Exits once the process that started this one is gone.
async fn exit_with_parent(parent: u32) {
    loop {
        if std::os::unix::process::parent_id() != parent {
            std::process::exit(0);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
