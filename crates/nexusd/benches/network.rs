//! Network benchmark on the real stack (nexusd + bridge + nftables + its resolver + QEMU/TCG
//! guests). Builds its own "internet" like tests/network.rs (a namespace behind a veth pair that
//! nexusd uses as its uplink, dnsmasq and an HTTP server in it) and prints, in one run:
//! - VM → internet TCP throughput through NAT (MB/s), next to the host fetching the same bytes;
//! - TCP connect latency through NAT, and DNS query latency through the VM's resolver next to
//!   the same query sent straight to the upstream server (through NAT);
//! - what networking adds to a VM start: `POST /start` with `nat` minus with `none`.
//!
//! Guest-side figures are wall times of `vm exec` batches minus a batch of the same size that
//! spawns `busybox true`, divided by the batch size: process start-up under TCG is paid by both.
//! Needs root and what the VM tests need (scripts/setup.sh, NEXUS_AGENT_BIN). Traffic goes only
//! to the namespace the benchmark made. Run: `cargo bench -p nexusd --bench network`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::agent::{ExecEvent, ExecRequest};
use nexus_lib::api::{CreateVm, NetworkMode};
use nexus_lib::client::Client;
use support::{pct, report, report_unit};

/// The world's number: namespace `nxw<K>`, uplink `nxu<K>`, subnet 10.240.K.0/24.
const K: u8 = 60;
const STARTS: usize = 10;
const BATCHES: usize = 20;
const PER_BATCH: usize = 10;
const FETCH_MIB: usize = 64;
const FETCHES: usize = 3;

const SERVER: &str = r#"
import http.server, socket, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.0'
    def do_GET(self):
        n = min(int(self.path[7:]), 1 << 30) if self.path.startswith('/bytes/') else 3
        self.send_response(200); self.send_header('Content-Length', str(n)); self.end_headers()
        chunk = b'x' * 65536
        while n > 0:
            self.wfile.write(chunk[:min(n, 65536)]); n -= 65536
    def log_message(self, *a): pass
def closer():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', 81)); s.listen(128)
    while True:
        c, _ = s.accept(); c.close()
threading.Thread(target=closer, daemon=True).start()
http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()
"#;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network benchmark needs root (a namespace, a veth pair, nexusd's bridge)"
    );
    let world = World::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let daemon = Daemon::start(&rt);
    rt.block_on(run(&daemon.client));
    drop(daemon);
    drop(world);
}

/// nexusd on a temporary home; on drop (also when the benchmark panics) its VMs are stopped and
/// deleted, the host network taken down, nexusd stopped and the pool unmounted.
struct Daemon {
    home: tempfile::TempDir,
    child: Child,
    client: Client,
    rt: tokio::runtime::Handle,
}

impl Daemon {
    fn start(rt: &tokio::runtime::Runtime) -> Self {
        let home = tempfile::tempdir().expect("tempdir");
        let child = spawn(home.path());
        let client = Client::unix(home.path().join("run/nexusd.sock"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while rt.block_on(client.health()).is_err() {
            assert!(Instant::now() < deadline, "nexusd did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            home,
            child,
            client,
            rt: rt.handle().clone(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let client = &self.client;
        self.rt.block_on(async {
            for name in ["nat", "none"] {
                let _ = client.vm_action(name, "stop").await;
                let _ = client.delete_vm(name, false).await;
            }
            let _ = client.network_action("down").await;
        });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg(self.home.path().join("data/pool"))
            .stderr(Stdio::null())
            .status();
    }
}

async fn run(client: &Client) {
    for (name, network) in [("nat", NetworkMode::Nat), ("none", NetworkMode::None)] {
        client
            .create_vm(&CreateVm {
                name: name.into(),
                image: Some("default".into()),
                network: Some(network),
                ..CreateVm::default()
            })
            .await
            .expect("create VM (is the prerequisite setup done? see scripts/setup.sh)");
    }

    // Start time, boots alternating so that both see the same host load.
    let (mut nat, mut none) = (Vec::new(), Vec::new());
    // Host side of a start: POST /start wall time less the boot's spawn -> agent handshake
    // (the guest's boot, the noisiest part under TCG, is out of it; the tap, rules and the
    // resolver's client entry are in it).
    let (mut nat_host, mut none_host) = (Vec::new(), Vec::new());
    for i in 0..STARTS {
        let last = i + 1 == STARTS;
        // Each mode goes first in every other round, so neither pays for the other's stop.
        let order = if i % 2 == 0 {
            ["none", "nat"]
        } else {
            ["nat", "none"]
        };
        for name in order {
            let (wall, host) = start(client, name, last && name == "nat").await;
            let (walls, hosts) = if name == "nat" {
                (&mut nat, &mut nat_host)
            } else {
                (&mut none, &mut none_host)
            };
            walls.push(wall);
            hosts.push(host);
        }
    }
    report("POST /start, network none", &none);
    report("POST /start, network nat", &nat);
    report(
        "  of which host side (wall - spawn->handshake), none",
        &none_host,
    );
    report(
        "  of which host side (wall - spawn->handshake), nat",
        &nat_host,
    );
    println!(
        "time networking adds to a start: p50 {:+.1} ms wall, {:+.1} ms host side (nat - none)",
        pct(&nat, 0.5) - pct(&none, 0.5),
        pct(&nat_host, 0.5) - pct(&none_host, 0.5)
    );

    let ip = format!("198.18.{K}.1");
    // Guest-side latencies: batches of the operation, each paired with a batch of `busybox
    // true` run just before it (the process spawns and the exec round trip both pay).
    let connect = per_op(client, &format!("busybox nc {ip} 81 </dev/null")).await;
    report(
        "TCP connect (and close) VM -> internet through NAT",
        &connect,
    );
    let ours = per_op(client, "busybox nslookup -type=a allowed.test >/dev/null").await;
    let direct = per_op(
        client,
        &format!("busybox nslookup -type=a allowed.test {ip} >/dev/null"),
    )
    .await;
    report("DNS A query through nexusd's resolver", &ours);
    report("DNS A query straight to the upstream, through NAT", &direct);
    println!(
        "resolver overhead: p50 {:+.2} ms per lookup",
        pct(&ours, 0.5) - pct(&direct, 0.5)
    );

    // Throughput: the guest fetches FETCH_MIB through NAT (less the wall time of an exec of
    // `busybox true` just before); the host fetches the same.
    let bytes = FETCH_MIB << 20;
    let mut guest = Vec::new();
    for _ in 0..FETCHES {
        let base = exec_ms(client, "busybox true").await;
        let ms = exec_ms(
            client,
            &format!("busybox wget -q -O /dev/null http://{ip}/bytes/{bytes}"),
        )
        .await;
        guest.push(bytes as f64 / 1e6 / ((ms - base) / 1e3));
    }
    let mut host = Vec::new();
    for _ in 0..FETCHES {
        host.push(host_fetch(&ip, bytes));
    }
    report_unit(
        &format!("TCP throughput VM -> internet through NAT ({FETCH_MIB} MiB)"),
        "MB/s",
        &guest,
    );
    report_unit("TCP throughput host -> internet (baseline)", "MB/s", &host);
    println!(
        "VM / host throughput: {:.3}",
        pct(&guest, 0.5) / pct(&host, 0.5)
    );
}

/// Starts `name`; returns the `POST /start` wall time and that less the boot's spawn -> agent
/// handshake, in ms. Stops it again unless `keep`.
async fn start(client: &Client, name: &str, keep: bool) -> (f64, f64) {
    let (wall, boot) = support::start_recorded(client, name).await;
    let host = wall - boot.agent_ready_ms.unwrap_or(0) as f64;
    if !keep {
        client.vm_action(name, "stop").await.expect("stop");
    }
    (wall, host)
}

/// Per-operation time (ms) of `cmd` in the `nat` VM: BATCHES rounds, each an exec running `cmd`
/// PER_BATCH times less an exec running `busybox true` as often just before it.
async fn per_op(client: &Client, cmd: &str) -> Vec<f64> {
    let script = |cmd: &str| format!("for i in $(seq {PER_BATCH}); do {cmd} || exit 1; done");
    let (base, measured) = (script("busybox true"), script(cmd));
    let mut out = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let base = exec_ms(client, &base).await;
        out.push((exec_ms(client, &measured).await - base) / PER_BATCH as f64);
    }
    out
}

/// Runs `script` with /bin/sh in the `nat` VM; its wall time in ms. Fails unless it exits 0.
async fn exec_ms(client: &Client, script: &str) -> f64 {
    let req = ExecRequest::new(["/bin/sh", "-c", script]);
    let t = Instant::now();
    let mut events = client.exec("nat", &req).await.expect("exec");
    let mut stderr = Vec::new();
    while let Some(e) = events.next().await.expect("event") {
        match e {
            ExecEvent::Stderr { data } => stderr.extend_from_slice(&data),
            ExecEvent::Exit { code, .. } => assert_eq!(
                code,
                Some(0),
                "{script}: {}",
                String::from_utf8_lossy(&stderr)
            ),
            _ => {}
        }
    }
    t.elapsed().as_secs_f64() * 1e3
}

/// The host fetching `bytes` from the world's HTTP server; MB/s.
fn host_fetch(ip: &str, bytes: usize) -> f64 {
    let t = Instant::now();
    let mut s = TcpStream::connect((ip, 80)).expect("connect to the world's server");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET /bytes/{bytes} HTTP/1.0\r\n\r\n").unwrap();
    let (mut buf, mut n) = (vec![0u8; 1 << 16], 0usize);
    loop {
        match s.read(&mut buf).expect("read") {
            0 => break,
            k => n += k,
        }
    }
    assert!(n > bytes, "short read: {n} bytes");
    bytes as f64 / 1e6 / t.elapsed().as_secs_f64()
}

fn spawn(home: &Path) -> Child {
    let (bridge, subnet) = (format!("nxb{K}"), format!("10.240.{K}.0/24"));
    let (uplink, dns) = (format!("nxu{K}"), format!("198.18.{K}.1"));
    support::spawn_nexusd(
        home,
        &[
            "--pool-size",
            "2G",
            "--network",
            "nat",
            "--network-bridge",
            &bridge,
            "--network-subnet",
            &subnet,
            "--network-uplink",
            &uplink,
            "--network-dns",
            &dns,
        ],
    )
}

/// The benchmark's "internet": removed on drop.
struct World {
    children: Vec<Child>,
}

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

impl World {
    fn new() -> Self {
        let (ns, up) = (format!("nxw{K}"), format!("nxu{K}"));
        sh(&format!(
            "ip netns del {ns} 2>/dev/null; ip link del {up} 2>/dev/null"
        ));
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward");
        assert!(
            sh(&format!(
                "ip netns add {ns} && ip link add {up} type veth peer name eth0 netns {ns} && \
                 ip addr add 198.18.{K}.2/24 dev {up} && ip link set {up} up && \
                 ip -n {ns} link set lo up && ip -n {ns} link set eth0 up && \
                 ip -n {ns} addr add 198.18.{K}.1/24 dev eth0"
            )),
            "could not build the namespace (needs iproute2, root)"
        );
        let dns = Command::new("ip")
            .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--listen-address=198.18.{K}.1"))
            .arg(format!("--address=/allowed.test/198.18.{K}.1"))
            .args(["--local-ttl=300", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        let http = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", SERVER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let world = Self {
            children: vec![dns, http],
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&([198, 18, K, 1], 81).into(), Duration::from_secs(1))
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the world's servers did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        world
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        sh(&format!(
            "ip netns del nxw{K} 2>/dev/null; ip link del nxu{K} 2>/dev/null"
        ));
    }
}
