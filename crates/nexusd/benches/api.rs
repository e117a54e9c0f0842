//! API benchmark: prints daemon start → health OK, `nexusctl status` wall time, and VM-record
//! create throughput and latency over the Unix socket. Run with
//! `cargo bench -p nexusd --bench api`. Bounded: a few hundred ms of work per figure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::api::CreateVm;
use nexus_lib::client::Client;

const STARTS: usize = 10;
const STATUS_RUNS: usize = 30;
const CREATES: usize = 2000;
const CONCURRENCY: usize = 16;

fn main() {
    let nexusd = PathBuf::from(env!("CARGO_BIN_EXE_nexusd"));
    let nexusctl = nexusd.with_file_name("nexusctl");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut start_ms = Vec::new();
    for _ in 0..STARTS {
        let home = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        let mut child = spawn(&nexusd, home.path());
        let client = Client::unix(home.path().join("run/nexusd.sock"));
        wait_healthy(&rt, &client, Duration::from_secs(10));
        start_ms.push(t.elapsed().as_secs_f64() * 1e3);
        stop(&mut child);
    }
    report("daemon start -> health OK", "ms", &mut start_ms);

    let home = tempfile::tempdir().expect("tempdir");
    let mut child = spawn(&nexusd, home.path());
    let client = Client::unix(home.path().join("run/nexusd.sock"));
    wait_healthy(&rt, &client, Duration::from_secs(10));

    if nexusctl.exists() {
        let mut status_ms = Vec::new();
        for _ in 0..STATUS_RUNS {
            let t = Instant::now();
            let out = Command::new(&nexusctl)
                .arg("--home")
                .arg(home.path())
                .arg("status")
                .output()
                .expect("run nexusctl");
            assert!(out.status.success());
            status_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        report("nexusctl status wall time", "ms", &mut status_ms);
    } else {
        println!(
            "nexusctl status: skipped ({} not built)",
            nexusctl.display()
        );
    }

    let (mut lat_ms, wall) = rt.block_on(async {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for worker in 0..CONCURRENCY {
            let client = client.clone();
            set.spawn(async move {
                let mut lat = Vec::new();
                for i in (worker..CREATES).step_by(CONCURRENCY) {
                    let t = Instant::now();
                    client
                        .create_vm(&CreateVm {
                            name: format!("bench-{i}"),
                            ..CreateVm::default()
                        })
                        .await
                        .expect("create");
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.extend(r.expect("worker"));
        }
        (all, t.elapsed())
    });
    println!(
        "VM-record create throughput: {:.0} req/s ({CREATES} creates, {CONCURRENCY} concurrent clients)",
        CREATES as f64 / wall.as_secs_f64()
    );
    report("VM-record create latency", "ms", &mut lat_ms);
    stop(&mut child);
}

fn spawn(nexusd: &Path, home: &Path) -> Child {
    Command::new(nexusd)
        .arg("--home")
        .arg(home)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nexusd")
}

fn wait_healthy(rt: &tokio::runtime::Runtime, client: &Client, limit: Duration) {
    let deadline = Instant::now() + limit;
    while rt.block_on(client.health()).is_err() {
        assert!(Instant::now() < deadline, "nexusd did not become healthy");
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
}

fn report(what: &str, unit: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{what}: p50 {:.2} {unit}, p95 {:.2} {unit}, p99 {:.2} {unit}, min {:.2}, max {:.2} (n={})",
        pct(0.5),
        pct(0.95),
        pct(0.99),
        samples[0],
        samples[samples.len() - 1],
        samples.len()
    );
}
