//! End to end: VMs on a real network. Each test builds its own world and sends packets nowhere
//! else: a network namespace plays "the internet" (a veth pair is nexusd's uplink; dnsmasq
//! answers for `allowed.test` and `other.test`; a small HTTP server answers with the address it
//! saw), and nexusd runs with its own bridge, subnet, uplink and upstream DNS. Real QEMU/TCG
//! guests fetch pages through NAT, through nexusd's resolver and nftables tables.
//!
//! Needs what the VM tests need (tests/vm_boot.rs) plus iproute2, nftables and dnsmasq
//! (scripts/setup.sh). `net.ipv4.ip_forward` is turned on for the whole run (daemons of tests
//! running side by side would otherwise turn it off under each other).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{TestDaemon, stderr, stdout};

/// The "internet" of one test: namespace `nxw<k>`, host end `nxu<k>` (198.18.k.2), far end
/// 198.18.k.1 (DNS, HTTP) and 198.18.k.3 (HTTP, `other.test`).
struct World {
    k: u8,
    children: Vec<Child>,
}

const HTTP_SERVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith('/bytes/'):
            n = min(int(self.path[7:]), 1 << 30)
            self.send_response(200); self.send_header('Content-Length', str(n)); self.end_headers()
            chunk = b'x' * 65536
            while n > 0:
                self.wfile.write(chunk[:min(n, 65536)]); n -= 65536
            return
        body = ('client=%s\n' % self.client_address[0]).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('0.0.0.0', 80), H).serve_forever()
"#;

fn sh(cmd: &str) -> Output {
    Command::new("sh").args(["-c", cmd]).output().expect("sh")
}

fn must(cmd: &str) {
    let out = sh(cmd);
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
}

impl World {
    fn new(k: u8) -> Self {
        common::require_boot_prerequisites();
        for tool in ["ip", "nft", "dnsmasq"] {
            assert!(
                ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                    .iter()
                    .any(|d| Path::new(d).join(tool).is_file()),
                "network tests need `{tool}` (apt-get install iproute2 nftables dnsmasq-base; scripts/setup.sh)"
            );
        }
        let (ns, up) = (format!("nxw{k}"), format!("nxu{k}"));
        // Leftovers of an earlier run of this test.
        let _ = sh(&format!(
            "ip netns del {ns} 2>/dev/null; ip link del {up} 2>/dev/null"
        ));
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward");
        must(&format!("ip netns add {ns}"));
        must(&format!(
            "ip link add {up} type veth peer name eth0 netns {ns} && \
             ip addr add 198.18.{k}.2/24 dev {up} && ip link set {up} up && \
             ip -n {ns} link set lo up && ip -n {ns} link set eth0 up && \
             ip -n {ns} addr add 198.18.{k}.1/24 dev eth0 && ip -n {ns} addr add 198.18.{k}.3/24 dev eth0"
        ));
        let dns = Command::new("ip")
            .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
            ])
            .arg(format!("--listen-address=198.18.{k}.1"))
            .arg(format!("--address=/allowed.test/198.18.{k}.1"))
            .arg(format!("--address=/other.test/198.18.{k}.3"))
            .args(["--local-ttl=300", "--pid-file="])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let http = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", HTTP_SERVER])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("http server");
        let world = Self {
            k,
            children: vec![dns, http],
        };
        // Both servers answer before any VM asks.
        for _ in 0..100 {
            let ok = sh(&format!(
                "ip netns exec {ns} python3 -c \"import socket; socket.create_connection(('198.18.{k}.1', 80), 1)\""
            ));
            if ok.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        world
    }

    fn bridge(&self) -> String {
        format!("nxb{}", self.k)
    }

    /// nexusd flags for this world.
    fn flags(&self) -> Vec<String> {
        let k = self.k;
        [
            "--pool-size",
            "1G",
            "--network",
            "nat",
            "--network-bridge",
            &self.bridge(),
            "--network-subnet",
            &format!("10.240.{k}.0/24"),
            "--network-uplink",
            &format!("nxu{k}"),
            "--network-dns",
            &format!("198.18.{k}.1"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn daemon(&self) -> TestDaemon {
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestDaemon::start_logged(tempfile::tempdir().unwrap(), &flags)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (k, br) = (self.k, self.bridge());
        // What a daemon that died with its VMs left (a passing test leaves nothing; see
        // `network_down_leaves_nothing`).
        let _ = sh(&format!(
            "for t in $(ip -o link show master {br} 2>/dev/null | awk -F': ' '{{print $2}}' | cut -d@ -f1); do ip link del $t; done; \
             ip link del {br} 2>/dev/null; nft delete table inet {br} 2>/dev/null; nft delete table bridge {br} 2>/dev/null; \
             ip netns del nxw{k} 2>/dev/null; ip link del nxu{k} 2>/dev/null"
        ));
    }
}

fn create(d: &TestDaemon, name: &str, extra: &[&str]) {
    d.start_default_vm(name, extra);
}

/// Runs `cmd` with /bin/sh in VM `vm`.
fn guest(d: &TestDaemon, vm: &str, cmd: &str) -> Output {
    d.ctl(&["vm", "exec", vm, "--", "sh", "-c", cmd])
}

fn fetch(d: &TestDaemon, vm: &str, url: &str) -> Result<String, String> {
    // Not `wget -T`: busybox 1.35's wget crashes with it; `timeout` bounds the fetch instead.
    let out = guest(d, vm, &format!("timeout 5 wget -q -O - {url}"));
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(format!("{}{}", stdout(&out), stderr(&out)))
    }
}

fn vm_ip(d: &TestDaemon, vm: &str) -> Ipv4Addr {
    let v = common::ctl_json(d, &["vm", "show", vm]);
    v["network"]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("{vm} has no address: {v}"))
        .parse()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

#[test]
fn a_vm_reaches_the_internet_by_name_through_nat_and_serves_a_published_port() {
    let world = World::new(41);
    let d = world.daemon();
    let port = free_port();
    let publish = format!("{port}:8080");
    create(&d, "web", &["--publish", &publish]);
    create(&d, "peer", &[]);

    // By name through nexusd's resolver, out through NAT: the server sees the uplink's address.
    let page = fetch(&d, "web", "http://allowed.test/").expect("fetch by name");
    assert_eq!(page, "client=198.18.41.2\n");
    let resolv = stdout(&guest(&d, "web", "cat /etc/resolv.conf"));
    assert!(resolv.contains("nameserver 10.240.41.1"), "{resolv}");

    // A server inside the VM is reachable from the host's loopback through the published port.
    let out = guest(
        &d,
        "web",
        "mkdir -p /www && echo hello-from-web > /www/index.html && httpd -p 8080 -h /www",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reply = http_get(port).expect("published port");
    assert!(reply.contains("hello-from-web"), "{reply}");

    // VMs do not reach each other.
    let web_ip = vm_ip(&d, "web");
    let err = fetch(&d, "peer", &format!("http://{web_ip}:8080/")).unwrap_err();
    assert!(!err.contains("hello-from-web"), "{err}");
    // But the peer has its own way out.
    assert_eq!(
        fetch(&d, "peer", "http://other.test/").unwrap(),
        "client=198.18.41.2\n"
    );
    // Nor the host's other addresses: the gateway answers DNS and nothing else.
    assert!(fetch(&d, "peer", "http://10.240.41.1/").is_err());

    let show = stdout(&d.ctl(&["network", "show"]));
    assert!(
        show.contains("nxb41") && show.contains("web") && show.contains("peer"),
        "{show}"
    );
}

#[test]
fn egress_rules_by_domain_and_their_change_on_a_running_vm() {
    let world = World::new(42);
    let d = world.daemon();
    create(&d, "dom", &["--allow-domain", "allowed.test"]);

    // Not resolved through us: dropped, even the address allowed.test will resolve to.
    assert!(fetch(&d, "dom", "http://198.18.42.1/").is_err());
    // Allowed by name.
    assert_eq!(
        fetch(&d, "dom", "http://allowed.test/").unwrap(),
        "client=198.18.42.2\n"
    );
    // Another name is not resolved, and its address is not reachable either.
    let err = fetch(&d, "dom", "http://other.test/").unwrap_err();
    assert!(
        err.contains("bad address") || err.contains("resolve"),
        "{err}"
    );
    assert!(fetch(&d, "dom", "http://198.18.42.3/").is_err());

    // Deny everything, on the running VM: at once, without a restart.
    let out = d.ctl(&["vm", "network", "dom", "--deny-egress"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fetch(&d, "dom", "http://allowed.test/").is_err());
    // Allow everything again.
    let out = d.ctl(&["vm", "network", "dom", "--allow-all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fetch(&d, "dom", "http://other.test/").unwrap(),
        "client=198.18.42.2\n"
    );
    // Each change is in the VM's history.
    let history = stdout(&d.ctl(&["vm", "history", "dom"]));
    assert!(
        history.contains("egress policy set to deny-all"),
        "{history}"
    );
    assert!(
        history.contains("egress policy set to allow-all"),
        "{history}"
    );
}

fn host_has(what: &str, needle: &str) -> bool {
    stdout(&sh(what)).contains(needle)
}

#[test]
fn networking_survives_kill_9_and_network_down_leaves_nothing() {
    let world = World::new(43);
    let d = world.daemon();
    create(&d, "survivor", &[]);
    let tap = common::ctl_json(&d, &["vm", "show", "survivor"])["network"]["tap"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(fetch(&d, "survivor", "http://allowed.test/").is_ok());

    let d = d.kill_and_restart();
    assert_eq!(
        fetch(&d, "survivor", "http://allowed.test/").unwrap(),
        "client=198.18.43.2\n",
        "{}",
        d.log()
    );

    // Down is refused while a VM runs on the network.
    let out = d.ctl(&["network", "down"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = d.ctl(&["vm", "delete", "survivor"]);
    assert!(!out.status.success(), "a running VM cannot be deleted");
    assert!(d.ctl(&["vm", "stop", "survivor"]).status.success());
    assert!(d.ctl(&["vm", "delete", "survivor"]).status.success());
    let out = d.ctl(&["network", "down"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());

    assert!(!host_has("ip -o link show", &tap), "tap {tap} is left");
    assert!(!host_has("ip -o link show", "nxb43:"), "bridge is left");
    assert!(
        !host_has("nft list tables", "nxb43"),
        "an nftables table is left"
    );
    assert!(
        !host_has("ip -o addr show", "10.240.43."),
        "an address is left"
    );
}

#[test]
fn twenty_concurrent_creates_get_distinct_addresses_and_macs() {
    common::require_storage_prerequisites();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--network",
            "nat",
            "--network-bridge",
            "nxb44",
            "--network-subnet",
            "10.240.44.0/24",
        ],
    );
    let vms = common::rt().block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let client = d.client.clone();
            set.spawn(async move {
                client
                    .create_vm(&nexus_lib::api::CreateVm {
                        name: format!("c{i}"),
                        ..Default::default()
                    })
                    .await
            });
        }
        let mut all = Vec::new();
        while let Some(r) = set.join_next().await {
            all.push(r.unwrap().expect("create"));
        }
        all
    });
    let ips: std::collections::HashSet<_> = vms
        .iter()
        .map(|v| v.network.as_ref().unwrap().ip.unwrap())
        .collect();
    let macs: std::collections::HashSet<_> = vms
        .iter()
        .map(|v| v.network.as_ref().unwrap().mac.clone().unwrap())
        .collect();
    assert_eq!((ips.len(), macs.len()), (20, 20));
    assert!(
        ips.iter()
            .all(|ip| ip.octets()[..3] == [10, 240, 44] && ip.octets()[3] >= 2)
    );
}

#[test]
fn without_cap_net_admin_nat_vms_fail_naming_it_and_none_vms_work() {
    common::require_boot_prerequisites();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"])
        .arg(common::nexusd_bin());
    let flags = [
        "--pool-size",
        "1G",
        "--network",
        "nat",
        "--network-bridge",
        "nxb45",
        "--network-subnet",
        "10.240.45.0/24",
    ];
    let child = common::spawn_logged(cmd, home.path(), &flags);
    let d = TestDaemon::wrap(home, child, &flags);
    let out = d.ctl(&["vm", "create", "natvm", "--image", "default", "--start"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
    create(&d, "plain", &["--network", "none"]);
    let out = guest(&d, "plain", "echo ok");
    assert_eq!(stdout(&out), "ok\n");
}

#[test]
fn a_vm_on_the_built_kernel_gets_its_address_and_reaches_the_internet_through_nat() {
    let world = World::new(46);
    let kernel = common::kernel::built_kernel();
    let mut flags = world.flags();
    flags.extend([
        "--guest-kernel".into(),
        kernel.vmlinux.display().to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &flags);
    create(&d, "built", &[]);

    let addr = stdout(&guest(&d, "built", "ip -4 addr show eth0"));
    let page = fetch(&d, "built", "http://allowed.test/");

    assert!(
        addr.contains(&format!("inet {}/24", vm_ip(&d, "built"))),
        "{addr}"
    );
    assert_eq!(page.as_deref(), Ok("client=198.18.46.2\n"));
}

/// A template whose `run` steps each carry their own egress policy: the build VM gets a
/// network, and each step runs under its policy (a step without one has none at all).
#[test]
fn template_build_steps_run_under_their_own_egress_policy() {
    let world = World::new(47);
    let d = world.daemon();
    let template = r#"
name = "netted"
base = "default"

[[run]]
command = "mkdir -p /opt && timeout 10 wget -q -O /opt/page http://allowed.test/"
network = { mode = "allow", domains = ["allowed.test"] }

[[run]]
command = "if timeout 5 wget -q -O - http://198.18.47.1/; then echo reached; exit 1; fi; echo offline-step"

[[run]]
command = "if timeout 5 wget -q -O - http://198.18.47.1/; then exit 1; fi; timeout 10 wget -q -O /opt/other http://198.18.47.3/"
network = { mode = "allow", cidrs = ["198.18.47.3"] }
"#;
    let path = d.home().join("netted.toml");
    std::fs::write(&path, template).unwrap();
    let out = d.ctl(&["template", "create", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.ctl(&["--json", "template", "build", "netted"]);
    if !out.status.success() {
        let builds = common::ctl_json(&d, &["build", "list", "--template", "netted"]);
        let id = builds[0]["id"].as_str().unwrap_or_default();
        let logs = stdout(&d.ctl(&["build", "logs", id]));
        panic!("build failed: {}\n{logs}\n{}", stderr(&out), d.log());
    }
    let build: nexus_lib::api::Build = serde_json::from_str(&stdout(&out)).unwrap();
    let logs = stdout(&d.ctl(&["build", "logs", &build.id.to_string()]));
    assert!(logs.contains("network nat"), "{logs}");
    assert!(
        logs.contains("run[0]: network allow allowed.test"),
        "{logs}"
    );
    assert!(logs.contains("run[1]: network deny-all"), "{logs}");
    assert!(logs.contains("offline-step"), "{logs}");
    assert!(
        logs.contains("run[2]: network allow 198.18.47.3/32"),
        "{logs}"
    );

    // What the networked steps fetched is in the image.
    let image = build.image_id.expect("the build's image").to_string();
    let out = d.ctl(&[
        "vm",
        "create",
        "fromnet",
        "--image",
        &image,
        "--network",
        "none",
        "--start",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page = stdout(&guest(&d, "fromnet", "cat /opt/page /opt/other"));
    assert_eq!(page, "client=198.18.47.2\nclient=198.18.47.2\n");
}
