//! The built guest kernel booted many times through nexusd, two VMs at a time, while a CPU hog
//! competes for the host: every boot must reach the agent. A boot still waiting after
//! [`slow`] is examined while it waits (does the VM's vsock answer `CONNECT`? where is the guest
//! CPU? the console's end), so a rare stall leaves evidence of where it stalled.
//!
//! Ignored by default (about 5–10 minutes here): `cargo nextest run -p nexusd --test
//! kernel_reliability --run-ignored only --no-capture`; `NEXUS_RELIABILITY_BOOTS` sets the count
//! (default 200). Needs what tests/kernel_build.rs needs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::kernel::built_kernel;
use common::{TestDaemon, rt};
use nexus_lib::api::CreateVm;

/// A start still waiting after this long is examined (`NEXUS_RELIABILITY_SLOW_SECS`, default 15).
fn slow() -> Duration {
    let secs = std::env::var("NEXUS_RELIABILITY_SLOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}

/// A CPU hog for the length of a test, killed on drop.
struct Hog(Child);

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boots() -> usize {
    std::env::var("NEXUS_RELIABILITY_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// What a waiting VM shows: its vsock's answer to `CONNECT 1024`, the guest's status and
/// instruction pointer from QMP, and the end of its console.
fn examine(vm_dir: &Path) -> String {
    let sock = vm_dir.join("sock");
    let vsock = vsock_answer(&sock.join("vsock.sock")).unwrap_or_else(|e| format!("vsock: {e}"));
    let qmp = qmp_report(&sock.join("qmp.sock")).unwrap_or_else(|e| format!("qmp: {e}"));
    let console = std::fs::read(vm_dir.join("console.log")).unwrap_or_default();
    let tail = String::from_utf8_lossy(&console[console.len().saturating_sub(400)..]).into_owned();
    format!("{vsock}; {qmp}; console ends: {tail:?}")
}

fn vsock_answer(path: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"CONNECT 1024\n")?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 64 {
        match s.read(&mut byte) {
            Ok(0) => return Ok(format!("vsock closed after {line:?}")),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Ok(format!("vsock: no answer to CONNECT within 5 s ({e})")),
        }
    }
    Ok(format!(
        "vsock answered {:?}",
        String::from_utf8_lossy(&line).trim()
    ))
}

fn qmp_report(path: &Path) -> std::io::Result<String> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = s.try_clone()?;
    let mut lines = BufReader::new(s).lines();
    let _greeting = lines.next();
    let mut ask = |json: &str| -> std::io::Result<String> {
        out.write_all(json.as_bytes())?;
        out.write_all(b"\n")?;
        lines.next().unwrap_or(Ok(String::new()))
    };
    ask(r#"{"execute":"qmp_capabilities"}"#)?;
    let status = ask(r#"{"execute":"query-status"}"#)?;
    let regs = ask(
        r#"{"execute":"human-monitor-command","arguments":{"command-line":"info registers"}}"#,
    )?;
    let rip = regs
        .split("\\r\\n")
        .find(|l| l.starts_with("RIP="))
        .unwrap_or("RIP unknown")
        .to_owned();
    Ok(format!("qmp status {status}, {rip}"))
}

#[test]
#[ignore = "long: 200 boots of the built kernel, two at a time, beside a CPU hog; run with --run-ignored only"]
fn boots_of_the_built_kernel_under_load_never_hang() {
    common::require_boot_prerequisites();
    let vmlinux = built_kernel().vmlinux.display().to_string();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--pool-size",
            "2G",
            "--guest-kernel",
            &vmlinux,
            "--boot-timeout-secs",
            "60",
        ],
    );
    let _hog = Hog(Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .stdout(Stdio::null())
        .spawn()
        .expect("sh"));
    let (total, slow_after) = (boots(), slow());
    let (hung, failed, slow) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let times = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for lane in 0..2 {
            let (d, hung, failed, slow, times) = (&d, &hung, &failed, &slow, &times);
            s.spawn(move || {
                let rt = rt();
                let name = format!("loop{lane}");
                let vm = rt
                    .block_on(d.client.create_vm(&CreateVm {
                        name: name.clone(),
                        image: Some("default".into()),
                        ..CreateVm::default()
                    }))
                    .expect("create");
                let vm_dir = d.home().join("data/vms").join(vm.id.to_string());
                for i in (lane..total).step_by(2) {
                    let t = Instant::now();
                    let result = rt.block_on(async {
                        let start = d.client.vm_action(&name, "start");
                        tokio::pin!(start);
                        if let Ok(done) = tokio::time::timeout(slow_after, &mut start).await {
                            return done;
                        }
                        slow.fetch_add(1, Ordering::SeqCst);
                        let dir = vm_dir.clone();
                        let seen = tokio::task::spawn_blocking(move || examine(&dir)).await;
                        eprintln!(
                            "boot {i} of {name} still waiting after {slow_after:?}: {seen:?}"
                        );
                        start.await
                    });
                    match result {
                        Ok(_) => {
                            times.lock().unwrap().push(t.elapsed());
                            rt.block_on(d.client.vm_action(&name, "stop"))
                                .expect("stop");
                        }
                        Err(e) => {
                            let text = nexus_lib::error::error_chain(&e);
                            let counter = if text.contains("did not answer") {
                                hung
                            } else {
                                failed
                            };
                            counter.fetch_add(1, Ordering::SeqCst);
                            eprintln!("boot {i} of {name} failed: {text}");
                        }
                    }
                }
            });
        }
    });
    let mut times = times.into_inner().unwrap();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize].as_secs_f64();
    let (hung, failed, slow) = (hung.into_inner(), failed.into_inner(), slow.into_inner());
    println!(
        "built kernel under load: {total} boots, {} reached the agent, {hung} hung, {failed} failed otherwise, {slow} slower than {slow_after:?}; POST /start p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        times.len(),
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    assert_eq!((hung, failed), (0, 0), "{}", d.log());
}
