//! Terminal benchmark on the real stack (nexusd + QEMU + guest agent). Prints keystroke echo
//! latency (one key typed, until its echo from the guest's shell is seen) p50/p99 through the
//! CLI path (`nexusctl vm shell` on a PTY this benchmark owns: host PTY → nexusctl → WebSocket →
//! nexusd → HTTP/2 over vsock → agent → guest PTY and back) and through the WebSocket directly
//! (the typed client), and the guest agent's resident memory per idle session. Needs what the
//! VM tests need (root, scripts/setup.sh, NEXUS_AGENT_BIN). Run:
//! `cargo build --workspace --bins && cargo bench -p nexusd --bench terminal` (nexusctl is taken
//! from beside the nexusd binary; `--profile dev` measures the debug build).

mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::CreateVm;
use nexus_lib::client::Client;
use nexus_lib::term_client::{TermEvent, Terminal};
use nexus_lib::terminal::{TermControl, TermOpen};
use support::report;

const KEYS: usize = 300;
/// The line is cleared (Ctrl-U) every this many keys, so it never wraps.
const LINE: usize = 40;
const IDLE_SESSIONS: usize = 20;
const WAIT: Duration = Duration::from_secs(10);

fn main() {
    let rt = support::runtime();
    let home = tempfile::tempdir().expect("tempdir");
    let mut daemon =
        support::spawn_nexusd(home.path(), &["--pool-size", "1G", "--network", "none"]);
    let client = Client::unix(home.path().join("run/nexusd.sock"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client.health()).is_err() {
        assert!(Instant::now() < deadline, "nexusd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(async {
        let req = CreateVm {
            name: "bench-tty".into(),
            image: Some("default".into()),
            ..CreateVm::default()
        };
        client.create_vm(&req).await.expect("create");
        client.vm_action("bench-tty", "start").await.expect("start");
    });
    report(
        "keystroke echo, WebSocket (typed client)",
        &rt.block_on(ws_echo(&client)),
    );
    report(
        "keystroke echo, CLI (nexusctl vm shell on a PTY)",
        &cli_echo(home.path()),
    );
    rt.block_on(idle_memory(&client));
    rt.block_on(async {
        let _ = client.vm_action("bench-tty", "stop").await;
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = Command::new("umount")
        .arg(home.path().join("data/pool"))
        .stderr(Stdio::null())
        .status();
}

fn shell() -> TermOpen {
    TermOpen {
        cols: 200,
        rows: 50,
        ..TermOpen::default()
    }
}

/// Reads until the output so far contains `needle`.
async fn until(t: &mut Terminal, needle: &str) {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(needle) {
            match t.next().await.expect("event") {
                Some(TermEvent::Output(b)) => seen.push_str(&String::from_utf8_lossy(&b)),
                Some(_) => {}
                None => panic!("terminal closed"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} within {WAIT:?}; got {seen:?}"));
}

async fn ws_echo(client: &Client) -> Vec<f64> {
    let mut t = client
        .open_terminal("bench-tty", &shell())
        .await
        .expect("terminal");
    t.send_input(b"echo rea''dy\r").await.unwrap();
    until(&mut t, "ready").await;
    let mut samples = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        if i % LINE == 0 {
            t.send_input(b"\x15").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain(&mut t).await;
        }
        let start = Instant::now();
        t.send_input(b"q").await.unwrap();
        until(&mut t, "q").await;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    t.send_input(b"\x15exit\r").await.unwrap();
    samples
}

async fn drain(t: &mut Terminal) {
    while let Ok(Ok(Some(_))) = tokio::time::timeout(Duration::from_millis(20), t.next()).await {}
}

/// `nexusctl vm shell` on a PTY: each key written to the master, timed until its echo.
fn cli_echo(home: &Path) -> Vec<f64> {
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 50,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )
    .expect("openpty");
    let slave = || Stdio::from(pty.slave.try_clone().expect("dup"));
    let mut child =
        Command::new(Path::new(env!("CARGO_BIN_EXE_nexusd")).with_file_name("nexusctl"))
            .arg("--home")
            .arg(home)
            .args(["vm", "shell", "bench-tty"])
            .stdin(slave())
            .stdout(slave())
            .stderr(slave())
            .spawn()
            .expect("nexusctl (cargo build --workspace --bins first)");
    let master = std::fs::File::from(pty.master);
    let read_until = |needle: &[u8]| {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(needle.len()).any(|w| w == needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {needle:?} from nexusctl; got {seen:?}");
            let mut fds = [nix::poll::PollFd::new(
                master.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = left.as_millis().min(1000) as u16;
            if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)).unwrap_or(0) > 0 {
                let n = (&master).read(&mut buf).expect("read pty");
                seen.extend_from_slice(&buf[..n]);
            }
        }
    };
    read_until(b"detach with");
    (&master).write_all(b"echo rea''dy\r").unwrap();
    read_until(b"ready");
    let mut samples = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        if i % LINE == 0 {
            (&master).write_all(b"\x15echo cl''ear\r").unwrap();
            read_until(b"clear");
        }
        let start = Instant::now();
        (&master).write_all(b"q").unwrap();
        read_until(b"q");
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    (&master).write_all(b"\x15exit 0\r").unwrap();
    let _ = child.wait();
    samples
}

/// The agent's RSS (its server process is the parent of an exec'd shell), in KiB.
async fn agent_rss_kib(client: &Client) -> f64 {
    let req = ExecRequest::new(["sh", "-c", "grep VmRSS /proc/$PPID/status"]);
    let mut events = client.exec("bench-tty", &req).await.expect("exec");
    let mut out = Vec::new();
    while let Some(e) = events.next().await.expect("event") {
        if let ExecEvent::Stdout { data } = e {
            out.extend(data);
        }
    }
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

async fn idle_memory(client: &Client) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = agent_rss_kib(client).await;
    let mut ids = Vec::new();
    for _ in 0..IDLE_SESSIONS {
        let mut t = client
            .open_terminal("bench-tty", &shell())
            .await
            .expect("terminal");
        if let Some(TermEvent::Control(TermControl::Session { id, .. })) = t.next().await.unwrap() {
            ids.push(id);
        }
        t.send_input(b"echo rea''dy\r").await.unwrap();
        until(&mut t, "ready").await;
        t.detach().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = agent_rss_kib(client).await;
    println!(
        "agent RSS: {before:.0} KiB with no session, {after:.0} KiB with {IDLE_SESSIONS} idle detached shells: {:.1} KiB per idle session",
        (after - before) / IDLE_SESSIONS as f64
    );
    for id in ids {
        let _ = client.kill_terminal_session("bench-tty", &id).await;
    }
}
