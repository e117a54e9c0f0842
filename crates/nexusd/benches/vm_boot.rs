//! VM benchmark on the real stack (nexusd + btrfs pool + QEMU + guest agent). Prints, over
//! several boots: start → agent-ready p50/p95 split by phase, jailed and with `jail = false`
//! (two daemons, boots alternating, the difference is the jail's cost); exec round trip of `true` through
//! the API and directly to the agent (the difference is nexusd's overhead); nexusd's CPU time per
//! exec; and file read/write throughput through the API. Needs what the VM tests need (root,
//! scripts/setup.sh, NEXUS_AGENT_BIN). Run: `cargo bench -p nexusd --bench vm_boot`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::CreateVm;
use nexus_lib::client::{Client, full_body};
use nexusd::agent::AgentClient;
use support::{pct, report, report_unit};

const BOOTS: usize = 10;
const EXECS: usize = 200;
const FILE_MIB: usize = 64;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Two daemons side by side: the default (jailed) and one with `jail = false`, whose boots
    // alternate so that both see the same host load.
    let jailed = Daemon::start(&rt, &[]);
    let unjailed = Daemon::start(&rt, &["--jail", "false"]);
    rt.block_on(run(&jailed, &unjailed));
    jailed.stop();
    unjailed.stop();
}

struct Daemon {
    home: tempfile::TempDir,
    child: std::cell::RefCell<Child>,
    client: Client,
}

impl Daemon {
    fn start(rt: &tokio::runtime::Runtime, extra: &[&str]) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let child = spawn(home.path(), extra);
        let client = Client::unix(home.path().join("run/nexusd.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.block_on(client.health()).is_err() {
            assert!(Instant::now() < deadline, "nexusd did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        Self {
            home,
            child: std::cell::RefCell::new(child),
            client,
        }
    }

    fn pid(&self) -> u32 {
        self.child.borrow().id()
    }

    fn stop(self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.borrow_mut().wait();
        let _ = Command::new("umount")
            .arg(self.home.path().join("data/pool"))
            .stderr(Stdio::null())
            .status();
    }
}

/// Phase timings of the boots of one daemon.
#[derive(Default)]
struct Boots {
    api_ms: Vec<f64>,
    vmm: Vec<f64>,
    init: Vec<f64>,
    ready: Vec<f64>,
    agent: Vec<f64>,
    accel: String,
}

impl Boots {
    /// Starts VM `name` once (stopping it again unless `keep`) and records the phases.
    async fn boot(&mut self, client: &Client, name: &str, keep: bool) {
        let (wall, boot) = support::start_recorded(client, name).await;
        self.api_ms.push(wall);
        self.accel = format!("{}/{}", boot.backend, boot.accel);
        self.vmm.push(boot.vmm_ready_ms.unwrap_or(0) as f64);
        self.init.push(boot.guest_init_ms.unwrap_or(0) as f64);
        self.ready.push(boot.guest_ready_ms.unwrap_or(0) as f64);
        self.agent.push(boot.agent_ready_ms.unwrap_or(0) as f64);
        if !keep {
            client.vm_action(name, "stop").await.expect("stop");
        }
    }

    fn report(&self, label: &str) {
        println!(
            "{label}: accelerator {}; {} boots",
            self.accel,
            self.api_ms.len()
        );
        report("  spawn -> VMM ready (host)", &self.vmm);
        report("  kernel start -> agent as init (guest clock)", &self.init);
        report(
            "  kernel start -> agent listening (guest clock)",
            &self.ready,
        );
        report("  spawn -> agent handshake (host)", &self.agent);
        report("  POST /start wall time (API)", &self.api_ms);
        let overhead: Vec<f64> = self
            .api_ms
            .iter()
            .zip(&self.agent)
            .map(|(a, b)| a - b)
            .collect();
        report(
            "  nexusd start overhead (API wall - spawn->handshake)",
            &overhead,
        );
    }
}

async fn create(client: &Client) -> nexus_lib::api::Vm {
    client
        .create_vm(&CreateVm {
            name: "bench".into(),
            image: Some("default".into()),
            ..CreateVm::default()
        })
        .await
        .expect("create VM (is the prerequisite setup done? see scripts/setup.sh)")
}

async fn run(jailed: &Daemon, unjailed: &Daemon) {
    let vm = create(&jailed.client).await;
    create(&unjailed.client).await;
    let (mut with_jail, mut without) = (Boots::default(), Boots::default());
    for i in 0..BOOTS {
        let last = i + 1 == BOOTS;
        without.boot(&unjailed.client, "bench", false).await;
        with_jail.boot(&jailed.client, "bench", last).await;
    }
    with_jail.report("jailed (default)");
    without.report("jail = false");
    let p50 = |v: &[f64]| pct(v, 0.5);
    println!(
        "jail cost, p50 jailed - p50 unjailed: POST /start {:+.1} ms, spawn -> agent handshake {:+.1} ms, spawn -> VMM ready {:+.1} ms",
        p50(&with_jail.api_ms) - p50(&without.api_ms),
        p50(&with_jail.agent) - p50(&without.agent),
        p50(&with_jail.vmm) - p50(&without.vmm),
    );
    let client = &jailed.client;
    let nexusd_pid = jailed.pid();

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
    report("exec `true` round trip via nexusd API", &via_api);
    report("exec `true` round trip direct to agent", &direct);
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
    report_unit("file read via API", "MiB/s", &read_mibs);
    client.vm_action("bench", "stop").await.expect("stop");
}

fn spawn(home: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["--pool-size", "2G", "--network", "none"];
    args.extend_from_slice(extra);
    support::spawn_nexusd(home, &args)
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
