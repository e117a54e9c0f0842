//! What the benchmarks share: percentiles and the one-line report, the runtime, a daemon.
// Each bench includes this module and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The `p` quantile (0..=1) of `samples`, nearest rank.
pub fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// Prints p50, p95 and p99 of `samples` in `unit`.
pub fn report_unit(what: &str, unit: &str, samples: &[f64]) {
    println!(
        "{what}: p50 {:.2} {unit}, p95 {:.2} {unit}, p99 {:.2} {unit} (n={})",
        pct(samples, 0.5),
        pct(samples, 0.95),
        pct(samples, 0.99),
        samples.len()
    );
}

/// Starts VM `name` through the API: the `POST /start` wall time in ms and the record of the
/// boot it made.
pub async fn start_recorded(
    client: &nexus_lib::client::Client,
    name: &str,
) -> (f64, nexus_lib::api::BootRecord) {
    let t = std::time::Instant::now();
    client.vm_action(name, "start").await.expect("start");
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let boot = client
        .vm_boots(name)
        .await
        .expect("boots")
        .pop()
        .expect("a boot");
    (wall, boot)
}

/// [`report_unit`] in milliseconds.
pub fn report(what: &str, samples: &[f64]) {
    report_unit(what, "ms", samples)
}

/// The benchmarks' tokio runtime (two workers, like a small host).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Spawns the bench profile's nexusd on `home` with `args` and a warn-level log on stderr.
pub fn spawn_nexusd(home: &Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nexusd"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexusd")
}
