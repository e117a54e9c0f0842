//! `nexus-agent`: the guest side of Nexus. As PID 1 (the initramfs's `/init`, or the image's init)
//! it prepares the system and supervises itself; the forked child serves the host over vsock.

mod cmdline;
mod exec;
mod files;
mod init;
mod mcp_servers;
mod net;
mod processes;
mod pty;
mod server;
mod session;
mod sysinfo;
mod terminal;
mod vsock;

use std::sync::Arc;
use std::time::Duration;

use nexus_lib::agent::{AGENT_READY_LINE, AGENT_VSOCK_PORT, BootTimes};

fn main() {
    if std::process::id() == 1 {
        init::run(serve);
    }
    let now = sysinfo::uptime_ms();
    std::process::exit(serve(BootTimes {
        init_ms: now,
        root_ms: now,
        ready_ms: 0,
    }));
}

/// How long blocking-pool tasks (file reads, process waits) may keep running at shutdown.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// Runs the vsock server on a fresh tokio runtime; returns the process exit code.
fn serve(mut boot: BootTimes) -> i32 {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            init::log(&format!("tokio runtime: {e}"));
            return 1;
        }
    };
    let code = runtime.block_on(async {
        let listener = match vsock::VsockListener::bind(AGENT_VSOCK_PORT) {
            Ok(l) => l,
            Err(e) => {
                init::log(&format!("vsock listen on port {AGENT_VSOCK_PORT}: {e}"));
                return 1;
            }
        };
        boot.ready_ms = sysinfo::uptime_ms();
        eprintln!("{AGENT_READY_LINE} port {AGENT_VSOCK_PORT}");
        let state = Arc::new(server::State {
            boot,
            shutdown: tokio::sync::Notify::new(),
            sessions: Arc::default(),
            processes: Arc::new(processes::Registry::new(processes::DIR)),
            mcp_servers: mcp_servers::Servers::default(),
        });
        server::run(listener, state).await
    });
    // Dropping the runtime would wait for every blocking-pool task, and one stuck in a syscall
    // (a read of a hung file system, say) would keep the guest from powering off.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
    code
}

/// One thread per vCPU (at most 4); a single-vCPU guest gets a current-thread runtime, which
/// avoids cross-thread wake-ups that are costly under emulation.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus.min(4))
            .enable_all()
            .build()
    }
}
