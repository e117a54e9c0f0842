//! nexusd's nftables tables, driven through `nft -j` (libnftables' JSON schema): one `inet`
//! table for NAT, published ports and per-VM egress, and one `bridge` table that keeps each
//! VM to its own MAC and address. Both are named after the bridge and owned entirely by
//! nexusd: created, changed and deleted by it alone.
//!
//! ```text
//! table inet T
//!   map egress  { ipv4_addr : verdict }                  VM address → jump vm_<key>
//!   map publish { inet_proto . inet_service : verdict }  host port  → jump pub_<key>
//!   chain forward (filter)   br→br drop; replies of published connections; VM → uplink by
//!                            @egress; nothing else from or to the bridge
//!   chain input (filter)     from the bridge: DNS and ping to the gateway, replies; else drop
//!   chain prerouting/output (nat)  @publish
//!   chain postrouting (nat)  masquerade the subnet out of the uplink, and loopback clients of
//!                            published ports towards the bridge
//!   per VM: set vm_<key>_cidr (interval), set vm_<key>_dns (timeout), chain vm_<key>,
//!           chain pub_<key>
//! table bridge T
//!   set taps { ifname }, set ports { ifname . ether_addr . ipv4_addr }; chain prerouting:
//!   frames from a VM's tap must come from its MAC and address (IPv4 and ARP), anything
//!   else from a tap is dropped
//! ```
//!
//! A VM's chain accepts established connections only while they carry the VM's policy
//! `epoch` in their conntrack mark, so a policy change re-checks open connections at once.

use std::net::Ipv4Addr;
use std::time::Duration;

use nexus_lib::api::{EgressPolicy, Ipv4Cidr, Protocol, Publish};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// The host side every rule refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Name of both tables.
    pub table: String,
    pub bridge: String,
    pub subnet: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// NAT leaves only through this interface; `None`: through any but the bridge.
    pub uplink: Option<String>,
}

/// One VM's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRules {
    pub key: u32,
    pub tap: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub egress: EgressPolicy,
    pub epoch: u32,
    pub publish: Vec<Publish>,
}

/// Errors of `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (apt-get install nftables)")]
    Spawn(#[source] std::io::Error),
    #[error("nft refused the change: {stderr}")]
    Refused { stderr: String },
    #[error(
        "nft refused the change: Operation not permitted (nexusd needs CAP_NET_ADMIN for VM networking)"
    )]
    NotPermitted,
    #[error("cannot read nft's output")]
    Output(#[source] serde_json::Error),
}

/// A list of commands applied in one `nft` transaction: all or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch(pub Vec<Value>);

impl Batch {
    fn add(&mut self, object: &str, body: Value) {
        self.0.push(json!({ "add": { object: body } }));
    }

    fn cmd(&mut self, verb: &str, object: &str, body: Value) {
        self.0.push(json!({ verb: { object: body } }));
    }

    pub fn to_json(&self) -> Value {
        json!({ "nftables": self.0 })
    }
}

fn meta(key: &str) -> Value {
    json!({ "meta": { "key": key } })
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({ "payload": { "protocol": protocol, "field": field } })
}

fn ct(key: &str) -> Value {
    json!({ "ct": { "key": key } })
}

fn m(left: Value, op: &str, right: Value) -> Value {
    json!({ "match": { "op": op, "left": left, "right": right } })
}

fn accept() -> Value {
    json!({ "accept": null })
}

fn drop() -> Value {
    json!({ "drop": null })
}

fn prefix(net: &Ipv4Cidr) -> Value {
    if net.prefix() == 32 {
        json!(net.addr().to_string())
    } else {
        json!({ "prefix": { "addr": net.addr().to_string(), "len": net.prefix() } })
    }
}

fn vm_chain(key: u32) -> String {
    format!("vm_{key}")
}

fn pub_chain(key: u32) -> String {
    format!("pub_{key}")
}

fn cidr_set(key: u32) -> String {
    format!("vm_{key}_cidr")
}

fn dns_set(key: u32) -> String {
    format!("vm_{key}_dns")
}

fn proto_name(p: Protocol) -> &'static str {
    p.as_str()
}

impl HostSpec {
    fn obj(&self, family: &str, extra: Value) -> Value {
        let mut v = json!({ "family": family, "table": self.table });
        if let (Value::Object(o), Value::Object(e)) = (&mut v, extra) {
            o.extend(e);
        }
        v
    }

    fn rule(&self, family: &str, chain: &str, expr: Vec<Value>) -> Value {
        self.obj(family, json!({ "chain": chain, "expr": expr }))
    }

    fn base_chain(&self, family: &str, name: &str, kind: &str, hook: &str, prio: i32) -> Value {
        self.obj(
            family,
            json!({ "name": name, "type": kind, "hook": hook, "prio": prio, "policy": "accept" }),
        )
    }

    fn uplink_match(&self) -> Value {
        match &self.uplink {
            Some(u) => m(meta("oifname"), "==", json!(u)),
            None => m(meta("oifname"), "!=", json!(self.bridge)),
        }
    }
}

/// Both tables with their fixed chains, maps and sets, and no VM.
pub fn create_tables(h: &HostSpec) -> Batch {
    let mut b = Batch::default();
    let br = json!(h.bridge);
    b.add("table", json!({ "family": "inet", "name": h.table }));
    b.add(
        "map",
        h.obj(
            "inet",
            json!({ "name": "egress", "type": "ipv4_addr", "map": "verdict" }),
        ),
    );
    b.add(
        "map",
        h.obj(
            "inet",
            json!({ "name": "publish", "type": ["inet_proto", "inet_service"], "map": "verdict" }),
        ),
    );
    b.add(
        "chain",
        h.base_chain("inet", "forward", "filter", "forward", 0),
    );
    let iif = || m(meta("iifname"), "==", br.clone());
    let oif = || m(meta("oifname"), "==", br.clone());
    for expr in [
        vec![iif(), oif(), drop()],
        vec![iif(), m(ct("status"), "in", json!("dnat")), accept()],
        vec![
            iif(),
            h.uplink_match(),
            json!({ "vmap": { "key": payload("ip", "saddr"), "data": "@egress" } }),
        ],
        vec![iif(), drop()],
        vec![
            oif(),
            m(ct("state"), "in", json!(["established", "related"])),
            accept(),
        ],
        vec![oif(), m(ct("status"), "in", json!("dnat")), accept()],
        vec![oif(), drop()],
    ] {
        b.add("rule", h.rule("inet", "forward", expr));
    }
    b.add("chain", h.base_chain("inet", "input", "filter", "input", 0));
    let gw = || m(payload("ip", "daddr"), "==", json!(h.gateway.to_string()));
    for expr in [
        vec![
            iif(),
            m(ct("state"), "in", json!(["established", "related"])),
            accept(),
        ],
        vec![
            iif(),
            gw(),
            m(payload("udp", "dport"), "==", json!(53)),
            accept(),
        ],
        vec![
            iif(),
            gw(),
            m(payload("tcp", "dport"), "==", json!(53)),
            accept(),
        ],
        vec![
            iif(),
            gw(),
            m(payload("icmp", "type"), "==", json!("echo-request")),
            accept(),
        ],
        vec![iif(), drop()],
    ] {
        b.add("rule", h.rule("inet", "input", expr));
    }
    let publish_vmap = json!({ "vmap": {
        "key": { "concat": [meta("l4proto"), payload("th", "dport")] },
        "data": "@publish",
    } });
    b.add(
        "chain",
        h.base_chain("inet", "prerouting", "nat", "prerouting", -100),
    );
    b.add(
        "rule",
        h.rule("inet", "prerouting", vec![publish_vmap.clone()]),
    );
    b.add(
        "chain",
        h.base_chain("inet", "output", "nat", "output", -100),
    );
    b.add("rule", h.rule("inet", "output", vec![publish_vmap]));
    b.add(
        "chain",
        h.base_chain("inet", "postrouting", "nat", "postrouting", 100),
    );
    let loopback: Ipv4Cidr = "127.0.0.0/8".parse().expect("a CIDR");
    for expr in [
        vec![
            oif(),
            m(ct("status"), "in", json!("dnat")),
            m(payload("ip", "saddr"), "==", prefix(&loopback)),
            json!({ "masquerade": null }),
        ],
        vec![
            m(payload("ip", "saddr"), "==", prefix(&h.subnet)),
            h.uplink_match(),
            json!({ "masquerade": null }),
        ],
    ] {
        b.add("rule", h.rule("inet", "postrouting", expr));
    }

    b.add("table", json!({ "family": "bridge", "name": h.table }));
    b.add(
        "set",
        h.obj(
            "bridge",
            json!({ "name": "ports", "type": ["ifname", "ether_addr", "ipv4_addr"] }),
        ),
    );
    b.add(
        "set",
        h.obj("bridge", json!({ "name": "taps", "type": "ifname" })),
    );
    b.add(
        "chain",
        h.base_chain("bridge", "prerouting", "filter", "prerouting", -200),
    );
    let own = |proto: &str, field: &str| {
        m(
            json!({ "concat": [meta("iifname"), payload("ether", "saddr"), payload(proto, field)] }),
            "==",
            json!("@ports"),
        )
    };
    for expr in [
        // Frames that do not come from one of our VMs' taps are not ours to judge.
        vec![m(meta("iifname"), "!=", json!("@taps")), accept()],
        vec![
            m(payload("ether", "type"), "==", json!("ip")),
            own("ip", "saddr"),
            accept(),
        ],
        vec![
            m(payload("ether", "type"), "==", json!("arp")),
            own("arp", "saddr ip"),
            accept(),
        ],
        vec![drop()],
    ] {
        b.add("rule", h.rule("bridge", "prerouting", expr));
    }
    b
}

/// The rules of the VM's egress chain for its policy.
fn egress_rules(h: &HostSpec, vm: &VmRules) -> Vec<Value> {
    let chain = vm_chain(vm.key);
    let mark = || json!({ "mangle": { "key": ct("mark"), "value": vm.epoch } });
    let mut rules = vec![h.rule(
        "inet",
        &chain,
        vec![
            m(ct("state"), "in", json!(["established", "related"])),
            m(ct("mark"), "==", json!(vm.epoch)),
            accept(),
        ],
    )];
    match &vm.egress {
        EgressPolicy::AllowAll => rules.push(h.rule("inet", &chain, vec![mark(), accept()])),
        EgressPolicy::DenyAll => rules.push(h.rule("inet", &chain, vec![drop()])),
        EgressPolicy::Allow { .. } => {
            for set in [cidr_set(vm.key), dns_set(vm.key)] {
                rules.push(h.rule(
                    "inet",
                    &chain,
                    vec![
                        m(payload("ip", "daddr"), "==", json!(format!("@{set}"))),
                        mark(),
                        accept(),
                    ],
                ));
            }
            rules.push(h.rule("inet", &chain, vec![drop()]));
        }
    }
    rules
}

fn cidr_elements(vm: &VmRules) -> Vec<Value> {
    match &vm.egress {
        EgressPolicy::Allow { cidrs, .. } => cidrs.iter().map(prefix).collect(),
        _ => Vec::new(),
    }
}

/// Everything of VM `vm`: sets, chains, map elements, its port in the bridge table.
pub fn add_vm(h: &HostSpec, vm: &VmRules) -> Batch {
    let mut b = Batch::default();
    b.add(
        "set",
        h.obj(
            "inet",
            json!({ "name": cidr_set(vm.key), "type": "ipv4_addr", "flags": ["interval"] }),
        ),
    );
    b.add(
        "set",
        h.obj(
            "inet",
            json!({ "name": dns_set(vm.key), "type": "ipv4_addr", "flags": ["timeout"] }),
        ),
    );
    let cidrs = cidr_elements(vm);
    if !cidrs.is_empty() {
        b.add(
            "element",
            h.obj("inet", json!({ "name": cidr_set(vm.key), "elem": cidrs })),
        );
    }
    b.add("chain", h.obj("inet", json!({ "name": vm_chain(vm.key) })));
    for rule in egress_rules(h, vm) {
        b.add("rule", rule);
    }
    b.add("chain", h.obj("inet", json!({ "name": pub_chain(vm.key) })));
    for p in &vm.publish {
        let dest = if p.bind.is_unspecified() {
            m(
                json!({ "fib": { "result": "type", "flags": ["daddr"] } }),
                "==",
                json!("local"),
            )
        } else {
            m(payload("ip", "daddr"), "==", json!(p.bind.to_string()))
        };
        b.add(
            "rule",
            h.rule(
                "inet",
                &pub_chain(vm.key),
                vec![
                    dest,
                    m(payload(proto_name(p.protocol), "dport"), "==", json!(p.host_port)),
                    json!({ "dnat": { "family": "ip", "addr": vm.ip.to_string(), "port": p.guest_port } }),
                ],
            ),
        );
        b.add(
            "element",
            h.obj(
                "inet",
                json!({ "name": "publish", "elem": [[
                    { "concat": [proto_name(p.protocol), p.host_port] },
                    { "jump": { "target": pub_chain(vm.key) } },
                ]] }),
            ),
        );
    }
    b.add(
        "element",
        h.obj(
            "inet",
            json!({ "name": "egress", "elem": [[vm.ip.to_string(), { "jump": { "target": vm_chain(vm.key) } }]] }),
        ),
    );
    b.add(
        "element",
        h.obj(
            "bridge",
            json!({ "name": "ports", "elem": [{ "concat": [vm.tap, vm.mac, vm.ip.to_string()] }] }),
        ),
    );
    b.add(
        "element",
        h.obj("bridge", json!({ "name": "taps", "elem": [vm.tap] })),
    );
    b
}

/// Removes everything [`add_vm`] added (the chains last, once nothing jumps to them).
pub fn remove_vm(h: &HostSpec, vm: &VmRules) -> Batch {
    let mut b = Batch::default();
    b.cmd(
        "delete",
        "element",
        h.obj(
            "bridge",
            json!({ "name": "ports", "elem": [{ "concat": [vm.tap, vm.mac, vm.ip.to_string()] }] }),
        ),
    );
    b.cmd(
        "delete",
        "element",
        h.obj(
            "inet",
            json!({ "name": "egress", "elem": [vm.ip.to_string()] }),
        ),
    );
    for p in &vm.publish {
        b.cmd(
            "delete",
            "element",
            h.obj(
                "inet",
                json!({ "name": "publish", "elem": [{ "concat": [proto_name(p.protocol), p.host_port] }] }),
            ),
        );
    }
    for chain in [vm_chain(vm.key), pub_chain(vm.key)] {
        b.cmd("flush", "chain", h.obj("inet", json!({ "name": chain })));
        b.cmd("delete", "chain", h.obj("inet", json!({ "name": chain })));
    }
    for set in [cidr_set(vm.key), dns_set(vm.key)] {
        b.cmd("delete", "set", h.obj("inet", json!({ "name": set })));
    }
    b
}

/// Replaces the VM's policy: its chain and both sets are emptied and refilled (addresses the
/// resolver admitted under the old policy go: the VM resolves again under the new one).
pub fn set_egress(h: &HostSpec, vm: &VmRules) -> Batch {
    let mut b = Batch::default();
    b.cmd(
        "flush",
        "chain",
        h.obj("inet", json!({ "name": vm_chain(vm.key) })),
    );
    for set in [cidr_set(vm.key), dns_set(vm.key)] {
        b.cmd("flush", "set", h.obj("inet", json!({ "name": set })));
    }
    let cidrs = cidr_elements(vm);
    if !cidrs.is_empty() {
        b.add(
            "element",
            h.obj("inet", json!({ "name": cidr_set(vm.key), "elem": cidrs })),
        );
    }
    for rule in egress_rules(h, vm) {
        b.add("rule", rule);
    }
    b
}

/// Shortest and longest time an admitted address stays in a VM's DNS set.
pub const MIN_ADMIT: Duration = Duration::from_secs(30);
pub const MAX_ADMIT: Duration = Duration::from_secs(24 * 3600);

/// How long an address resolved with `ttl` stays admitted.
pub fn admit_time(ttl: Duration) -> Duration {
    ttl.clamp(MIN_ADMIT, MAX_ADMIT)
}

/// Admits `addrs` (each for its TTL, clamped to [`MIN_ADMIT`]..=[`MAX_ADMIT`]) to VM `key`'s
/// DNS set. Adding an address already there sets its new timeout.
pub fn allow_resolved(h: &HostSpec, key: u32, addrs: &[(Ipv4Addr, Duration)]) -> Batch {
    let mut b = Batch::default();
    let elem: Vec<Value> = addrs
        .iter()
        .map(|(ip, ttl)| {
            json!({ "elem": { "val": ip.to_string(), "timeout": admit_time(*ttl).as_secs() } })
        })
        .collect();
    if !elem.is_empty() {
        b.add(
            "element",
            h.obj("inet", json!({ "name": dns_set(key), "elem": elem })),
        );
    }
    b
}

/// Runs `batch` as one `nft -j -f -` transaction.
pub async fn apply(batch: &Batch) -> Result<(), NftError> {
    if batch.0.is_empty() {
        return Ok(());
    }
    run(&["-j", "-f", "-"], Some(batch.to_json().to_string()))
        .await
        .map(|_| ())
}

async fn run(args: &[&str], input: Option<String>) -> Result<String, NftError> {
    let mut cmd = tokio::process::Command::new("nft");
    cmd.args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(NftError::Spawn)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(NftError::Spawn)?;
    }
    let out = child.wait_with_output().await.map_err(NftError::Spawn)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("Operation not permitted") {
        return Err(NftError::NotPermitted);
    }
    Err(NftError::Refused {
        stderr: crate::sanitize::Escaped(stderr.trim().chars().take(2000).collect::<String>())
            .to_string(),
    })
}

/// Whether table `table` of `family` exists.
async fn table_exists(family: &str, table: &str) -> Result<bool, NftError> {
    let out = run(&["-j", "list", "tables", family], None).await?;
    let v: Value = serde_json::from_str(&out).map_err(NftError::Output)?;
    Ok(v["nftables"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|i| i["table"]["name"].as_str() == Some(table))
    }))
}

/// The addresses in VM `key`'s DNS set with the time they have left.
async fn admitted(h: &HostSpec, key: u32) -> Vec<(Ipv4Addr, Duration)> {
    let Ok(out) = run(
        &["-j", "list", "set", "inet", &h.table, &dns_set(key)],
        None,
    )
    .await
    else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&out) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            let ip = e["elem"]["val"].as_str().and_then(|s| s.parse().ok());
            let left = e["elem"]["expires"].as_u64();
            if let (Some(ip), Some(left)) = (ip, left) {
                found.push((ip, Duration::from_secs(left.max(1))));
            }
        }
    }
    found
}

/// Replaces both tables with exactly `vms`, in one transaction. With `preserve_dns`, the
/// addresses the resolver admitted for VMs that stay are kept with the time they had left.
pub async fn rebuild(h: &HostSpec, vms: &[VmRules], preserve_dns: bool) -> Result<(), NftError> {
    let mut kept = Vec::new();
    if preserve_dns && table_exists("inet", &h.table).await? {
        for vm in vms {
            let addrs = admitted(h, vm.key).await;
            if !addrs.is_empty() {
                kept.push(allow_resolved(h, vm.key, &addrs));
            }
        }
    }
    let mut b = Batch::default();
    for family in ["inet", "bridge"] {
        if table_exists(family, &h.table).await? {
            b.cmd(
                "delete",
                "table",
                json!({ "family": family, "name": h.table }),
            );
        }
    }
    b.0.extend(create_tables(h).0);
    for vm in vms {
        b.0.extend(add_vm(h, vm).0);
    }
    for k in kept {
        // Clamping to MIN_ADMIT may lengthen what was left: only by at most 30 s.
        b.0.extend(k.0);
    }
    apply(&b).await
}

/// Deletes both tables; `false` when neither existed.
pub async fn delete_tables(table: &str) -> Result<bool, NftError> {
    let mut b = Batch::default();
    for family in ["inet", "bridge"] {
        if table_exists(family, table).await? {
            b.cmd(
                "delete",
                "table",
                json!({ "family": family, "name": table }),
            );
        }
    }
    let any = !b.0.is_empty();
    apply(&b).await?;
    Ok(any)
}

#[cfg(test)]
#[path = "nft_tests.rs"]
mod tests;
