//! VM benchmark on the real stack (nexusd + btrfs pool + QEMU + guest agent). Prints, over
//! several boots: start → agent-ready p50/p95 split by phase; exec round trip of `true` through
//! the API and directly to the agent (the difference is nexusd's overhead); nexusd's CPU time per
//! exec; and file read/write throughput through the API. Needs what the VM tests need (root,
//! scripts/setup.sh, NEXUS_AGENT_BIN). Run: `cargo bench -p nexusd --bench vm_boot`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::CreateVm;
use nexus_lib::client::{Client, full_body};
use nexusd::agent::AgentClient;

const BOOTS: usize = 6;
const EXECS: usize = 200;
const FILE_MIB: usize = 64;

fn main() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut daemon = spawn(home.path());
    let client = Client::unix(home.path().join("run/nexusd.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client.health()).is_err() {
        assert!(Instant::now() < deadline, "nexusd did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.block_on(run(&client, daemon.id()));
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

async fn run(client: &Client, nexusd_pid: u32) {
    let vm = client
        .create_vm(&CreateVm {
            name: "bench".into(),
            image: Some("default".into()),
            ..CreateVm::default()
        })
        .await
        .expect("create VM (is the prerequisite setup done? see scripts/setup.sh)");
    let (mut api_ms, mut vmm, mut init, mut ready, mut agent) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut accel = String::new();
    for i in 0..BOOTS {
        let t = Instant::now();
        client.vm_action("bench", "start").await.expect("start");
        api_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let boot = client
            .vm_boots("bench")
            .await
            .expect("boots")
            .pop()
            .expect("a boot");
        accel = format!("{}/{}", boot.backend, boot.accel);
        vmm.push(boot.vmm_ready_ms.unwrap_or(0) as f64);
        init.push(boot.guest_init_ms.unwrap_or(0) as f64);
        ready.push(boot.guest_ready_ms.unwrap_or(0) as f64);
        agent.push(boot.agent_ready_ms.unwrap_or(0) as f64);
        if i + 1 < BOOTS {
            client.vm_action("bench", "stop").await.expect("stop");
        }
    }
    println!("accelerator: {accel}; {BOOTS} boots");
    report("  spawn -> VMM ready (host)", &mut vmm);
    report("  kernel start -> agent as init (guest clock)", &mut init);
    report(
        "  kernel start -> agent listening (guest clock)",
        &mut ready,
    );
    report("  spawn -> agent handshake (host)", &mut agent);
    report("  POST /start wall time (API)", &mut api_ms);
    let overhead: Vec<f64> = api_ms.iter().zip(&agent).map(|(a, b)| a - b).collect();
    report(
        "  nexusd start overhead (API wall - spawn->handshake)",
        &mut overhead.clone(),
    );

    // Exec round trip, through nexusd and straight to the agent.
    let req = ExecRequest::new(["true"]);
    let cpu0 = cpu_ms(nexusd_pid);
    let mut via_api = Vec::new();
    for _ in 0..EXECS {
        let t = Instant::now();
        let mut events = client.exec("bench", &req).await.expect("exec");
        while let Some(e) = events.next().await.expect("event") {
            if let ExecEvent::Exit { code, .. } = e {
                assert_eq!(code, Some(0));
            }
        }
        via_api.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_per_exec = (cpu_ms(nexusd_pid) - cpu0) / EXECS as f64;
    let uds = find_vsock_socket(&vm.id.to_string());
    let direct_client = AgentClient::new(uds);
    let mut direct = Vec::new();
    for _ in 0..EXECS {
        let t = Instant::now();
        let mut events = direct_client.exec(&req).await.expect("direct exec");
        use futures_util::StreamExt;
        while let Some(e) = events.next().await {
            e.expect("event");
        }
        direct.push(t.elapsed().as_secs_f64() * 1e3);
    }
    report("exec `true` round trip via nexusd API", &mut via_api);
    report("exec `true` round trip direct to agent", &mut direct);
    println!(
        "nexusd exec overhead: p50 {:.2} ms; nexusd CPU {:.3} ms per exec",
        pct(&via_api, 0.5) - pct(&direct, 0.5),
        cpu_per_exec
    );

    // File throughput through the API.
    let data = Bytes::from(vec![0x5au8; FILE_MIB << 20]);
    let t = Instant::now();
    client
        .write_file("bench", "/tmp/bench.bin", 0o644, full_body(data.clone()))
        .await
        .expect("write");
    let write_s = t.elapsed().as_secs_f64();
    let mut read_mibs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut body = client
            .read_file("bench", "/tmp/bench.bin")
            .await
            .expect("read");
        let mut n = 0usize;
        while let Some(f) = body.frame().await {
            n += f.expect("frame").data_ref().map_or(0, |d| d.len());
        }
        assert_eq!(n, FILE_MIB << 20);
        read_mibs.push(FILE_MIB as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "file write via API: {:.1} MiB/s ({FILE_MIB} MiB)",
        FILE_MIB as f64 / write_s
    );
    report_unit("file read via API", "MiB/s", &mut read_mibs);
    client.vm_action("bench", "stop").await.expect("stop");
}

fn spawn(home: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_nexusd"))
        .arg("--home")
        .arg(home)
        .args(["--pool-size", "2G"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexusd")
}

fn find_vsock_socket(vm_id: &str) -> PathBuf {
    // The VM's runtime directory is named after its id; its QEMU's command line names it.
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("vhost-device-vsock") && cmdline.contains(vm_id) {
            let uds = cmdline.split("uds-path=").nth(1).expect("uds-path");
            return PathBuf::from(uds.split([',', '\0']).next().expect("path"));
        }
    }
    panic!("no vhost-device-vsock for VM {vm_id}");
}

fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0);
    ticks * 1000.0 / 100.0
}

fn pct(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, samples: &mut [f64]) {
    report_unit(what, "ms", samples)
}

fn report_unit(what: &str, unit: &str, samples: &mut [f64]) {
    println!(
        "{what}: p50 {:.2} {unit}, p95 {:.2} {unit}, p99 {:.2} {unit} (n={})",
        pct(samples, 0.5),
        pct(samples, 0.95),
        pct(samples, 0.99),
        samples.len()
    );
}
