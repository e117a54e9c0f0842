//! Rows of VM networking: each VM's network (mode, address, MAC, tap, egress policy), its
//! published ports, and the host network's own settings (the subnet addresses were allocated
//! from, and whether nexusd turned IPv4 forwarding on).
//!
//! Addresses and MACs are allocated inside the transaction that inserts the VM, so two creates
//! can never get the same one (the columns are also `UNIQUE`).

use std::net::Ipv4Addr;

use nexus_lib::api::{EgressPolicy, Ipv4Cidr, NetworkMode, Protocol, Publish, VmNetwork};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::StoreError;

/// What a new VM's network needs.
#[derive(Debug, Clone)]
pub struct NewNetwork {
    pub mode: NetworkMode,
    pub publish: Vec<Publish>,
    pub egress: EgressPolicy,
    /// The subnet to allocate from (`nat`), fixed by [`host_subnet`] before the transaction.
    pub subnet: Option<Ipv4Cidr>,
    /// Prefix of tap names: the tap is `<prefix><key>`.
    pub tap_prefix: String,
}

/// A VM's network row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkRow {
    pub vm_id: Uuid,
    /// Never reused: names the VM's tap and its nftables objects.
    pub key: u32,
    pub mode: NetworkMode,
    pub ip: Option<Ipv4Addr>,
    pub prefix: Option<u8>,
    pub mac: Option<String>,
    pub tap: Option<String>,
    pub egress: EgressPolicy,
    /// Changes with every policy change, so established connections are re-checked.
    pub epoch: u32,
    pub publish: Vec<Publish>,
}

impl NetworkRow {
    /// The API's view.
    pub fn to_api(&self) -> VmNetwork {
        VmNetwork {
            mode: self.mode,
            ip: self.ip,
            prefix: self.prefix,
            gateway: self.ip.zip(self.prefix).map(|(ip, p)| gateway_of(ip, p)),
            mac: self.mac.clone(),
            tap: self.tap.clone(),
            publish: self.publish.clone(),
            egress: self.egress.clone(),
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// The gateway of a subnet: its first host address.
pub fn gateway_of(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(ip) & mask(prefix)) + 1)
}

/// Why a VM's network could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetRefusal {
    /// Every address of the subnet is taken.
    #[error("every address of the subnet {0} is taken")]
    SubnetFull(Ipv4Cidr),
    /// Another VM already publishes this protocol and host port.
    #[error("host port {}/{} is already published by VM {vm}", publish.host_port, publish.protocol.as_str())]
    PortTaken { publish: Publish, vm: String },
}

/// Inserts the network of VM `vm_id` in the caller's transaction `tx`.
pub fn insert_in(
    tx: &Connection,
    vm_id: Uuid,
    new: &NewNetwork,
) -> Result<Result<NetworkRow, NetRefusal>, StoreError> {
    for p in &new.publish {
        let holder: Option<String> = tx
            .query_row(
                "SELECT v.name FROM vm_publish p JOIN vms v ON v.id = p.vm_id
                 WHERE p.protocol = ?1 AND p.host_port = ?2",
                params![p.protocol.as_str(), p.host_port],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(vm) = holder {
            return Ok(Err(NetRefusal::PortTaken { publish: *p, vm }));
        }
    }
    let (ip, prefix) = match (new.mode, new.subnet) {
        (NetworkMode::Nat, Some(subnet)) => match free_address(tx, subnet)? {
            Some(ip) => (Some(ip), Some(subnet.prefix())),
            None => return Ok(Err(NetRefusal::SubnetFull(subnet))),
        },
        _ => (None, None),
    };
    let egress = serde_json::to_string(&new.egress).expect("a policy serializes");
    tx.execute(
        "INSERT INTO vm_networks (vm_id, mode, ip, prefix, egress, epoch) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
        params![
            vm_id.to_string(),
            new.mode.as_str(),
            ip.map(u32::from),
            prefix,
            egress
        ],
    )?;
    let key: u32 = tx.query_row(
        "SELECT key FROM vm_networks WHERE vm_id = ?1",
        [vm_id.to_string()],
        |r| r.get(0),
    )?;
    let (mac, tap) = if new.mode == NetworkMode::Nat {
        let tap = format!("{}{key}", new.tap_prefix);
        let mac = unique_mac(tx)?;
        tx.execute(
            "UPDATE vm_networks SET mac = ?2, tap = ?3 WHERE vm_id = ?1",
            params![vm_id.to_string(), mac, tap],
        )?;
        (Some(mac), Some(tap))
    } else {
        (None, None)
    };
    for p in &new.publish {
        tx.execute(
            "INSERT INTO vm_publish (vm_id, bind, host_port, guest_port, protocol) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                vm_id.to_string(),
                p.bind.to_string(),
                p.host_port,
                p.guest_port,
                p.protocol.as_str()
            ],
        )?;
    }
    Ok(Ok(NetworkRow {
        vm_id,
        key,
        mode: new.mode,
        ip,
        prefix,
        mac,
        tap,
        egress: new.egress.clone(),
        epoch: 1,
        publish: new.publish.clone(),
    }))
}

/// The lowest address of `subnet` that is neither its network, its gateway, its broadcast nor
/// another VM's.
fn free_address(tx: &Connection, subnet: Ipv4Cidr) -> Result<Option<Ipv4Addr>, StoreError> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.last()).saturating_sub(1);
    let mut stmt =
        tx.prepare_cached("SELECT ip FROM vm_networks WHERE ip BETWEEN ?1 AND ?2 ORDER BY ip")?;
    let taken = stmt.query_map(params![first, last], |r| r.get::<_, u32>(0))?;
    let mut candidate = first;
    for ip in taken {
        let ip = ip?;
        if ip > candidate {
            break;
        }
        candidate = ip + 1;
    }
    Ok((candidate <= last).then(|| Ipv4Addr::from(candidate)))
}

/// A random locally administered unicast MAC that no other VM has.
fn unique_mac(tx: &Connection) -> Result<String, StoreError> {
    loop {
        let bytes = *Uuid::new_v4().as_bytes();
        let mac = format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]
        );
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM vm_networks WHERE mac = ?1)",
            [&mac],
            |r| r.get(0),
        )?;
        if !taken {
            return Ok(mac);
        }
    }
}

const COLUMNS: &str = "vm_id, key, mode, ip, prefix, mac, tap, egress, epoch";

/// A network row whose columns ([`COLUMNS`]) start at index `at`.
fn row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<NetworkRow> {
    let conv = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(at + i, rusqlite::types::Type::Text, e.into())
    };
    let vm_id: String = r.get(at)?;
    let mode: String = r.get(at + 2)?;
    let egress: String = r.get(at + 7)?;
    Ok(NetworkRow {
        vm_id: Uuid::parse_str(&vm_id).map_err(|e| conv(0, e.to_string()))?,
        key: r.get(at + 1)?,
        mode: mode.parse().map_err(|e| conv(2, e))?,
        ip: r.get::<_, Option<u32>>(at + 3)?.map(Ipv4Addr::from),
        prefix: r.get(at + 4)?,
        mac: r.get(at + 5)?,
        tap: r.get(at + 6)?,
        egress: serde_json::from_str(&egress).map_err(|e| conv(7, e.to_string()))?,
        epoch: r.get(at + 8)?,
        publish: Vec::new(),
    })
}

fn publish_of(conn: &Connection, vm_id: Uuid) -> Result<Vec<Publish>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT bind, host_port, guest_port, protocol FROM vm_publish WHERE vm_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt
        .query_map([vm_id.to_string()], |r| {
            let bind: String = r.get(0)?;
            let protocol: String = r.get(3)?;
            Ok(Publish {
                bind: bind.parse().unwrap_or(Ipv4Addr::LOCALHOST),
                host_port: r.get(1)?,
                guest_port: r.get(2)?,
                protocol: if protocol == "udp" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The network of VM `vm_id`, if it has a row (VMs created before networking have none).
pub fn get(conn: &Connection, vm_id: Uuid) -> Result<Option<NetworkRow>, StoreError> {
    let row = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM vm_networks WHERE vm_id = ?1"),
            [vm_id.to_string()],
            |r| row_at(r, 0),
        )
        .optional()?;
    match row {
        Some(mut row) => {
            row.publish = publish_of(conn, vm_id)?;
            Ok(Some(row))
        }
        None => Ok(None),
    }
}

/// Every `nat` network row, with the VM's name.
pub fn list_nat(conn: &Connection) -> Result<Vec<(String, NetworkRow)>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT v.name, {} FROM vm_networks n JOIN vms v ON v.id = n.vm_id
         WHERE n.mode = 'nat' ORDER BY n.key",
        COLUMNS
            .split(", ")
            .map(|c| format!("n.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))?;
    let rows = stmt
        .query_map([], |r| {
            let name: String = r.get(0)?;
            Ok((name, row_at(r, 1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter()
        .map(|(name, mut net)| {
            net.publish = publish_of(conn, net.vm_id)?;
            Ok((name, net))
        })
        .collect()
}

/// Replaces the egress policy of VM `vm_id` and bumps its epoch; returns the new row.
pub fn set_egress(
    conn: &Connection,
    vm_id: Uuid,
    egress: &EgressPolicy,
) -> Result<Option<NetworkRow>, StoreError> {
    let json = serde_json::to_string(egress).expect("a policy serializes");
    let n = conn.execute(
        "UPDATE vm_networks SET egress = ?2, epoch = (epoch % 4000000000) + 1 WHERE vm_id = ?1",
        params![vm_id.to_string(), json],
    )?;
    if n == 0 {
        return Ok(None);
    }
    get(conn, vm_id)
}

/// The subnet of the host network, fixed the first time a `nat` VM is created.
pub fn host_subnet(conn: &Connection) -> Result<Option<Ipv4Cidr>, StoreError> {
    let s: Option<String> = conn
        .query_row("SELECT subnet FROM network_host WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(s.and_then(|s| s.parse().ok()))
}

/// Records `subnet` as the host network's, unless one is recorded; returns the one in force.
pub fn fix_host_subnet(conn: &Connection, subnet: Ipv4Cidr) -> Result<Ipv4Cidr, StoreError> {
    conn.execute(
        "INSERT INTO network_host (id, subnet) VALUES (1, ?1) ON CONFLICT (id) DO NOTHING",
        [subnet.to_string()],
    )?;
    Ok(host_subnet(conn)?.unwrap_or(subnet))
}

/// Replaces the recorded subnet (allowed only while no VM holds an address).
pub fn replace_host_subnet(conn: &Connection, subnet: Ipv4Cidr) -> Result<bool, StoreError> {
    let held: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM vm_networks WHERE ip IS NOT NULL)",
        [],
        |r| r.get(0),
    )?;
    if held {
        return Ok(false);
    }
    conn.execute(
        "INSERT INTO network_host (id, subnet) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET subnet = excluded.subnet",
        [subnet.to_string()],
    )?;
    Ok(true)
}

/// Whether nexusd turned `net.ipv4.ip_forward` on (and so turns it off at `network down`).
pub fn forwarding_set_by_us(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .query_row(
            "SELECT forwarding_set_by_us FROM network_host WHERE id = 1",
            [],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .unwrap_or(false))
}

pub fn set_forwarding_set_by_us(conn: &Connection, yes: bool) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE network_host SET forwarding_set_by_us = ?1 WHERE id = 1",
        [yes],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch("PRAGMA foreign_keys = ON").unwrap();
        super::super::migrations::migrations()
            .to_latest(&mut c)
            .unwrap();
        c
    }

    fn vm(c: &Connection, name: &str) -> Uuid {
        let id = Uuid::now_v7();
        c.execute(
            "INSERT INTO vms (id, name, state, vcpus, memory_mib, vsock_cid, created_at_ms, state_changed_at_ms)
             VALUES (?1, ?2, 'created', 1, 256, (SELECT COALESCE(MAX(vsock_cid), 2) + 1 FROM vms), 0, 0)",
            params![id.to_string(), name],
        )
        .unwrap();
        id
    }

    fn nat(subnet: &str, publish: Vec<Publish>) -> NewNetwork {
        NewNetwork {
            mode: NetworkMode::Nat,
            publish,
            egress: EgressPolicy::AllowAll,
            subnet: Some(subnet.parse().unwrap()),
            tap_prefix: "nxab12".into(),
        }
    }

    fn ok(r: Result<NetworkRow, NetRefusal>) -> NetworkRow {
        r.unwrap()
    }

    #[test]
    fn addresses_are_the_lowest_free_and_come_back_when_a_vm_goes() {
        let c = db();
        let net = nat("10.9.0.0/29", vec![]);
        let ids: Vec<Uuid> = (0..5).map(|i| vm(&c, &format!("v{i}"))).collect();
        let rows: Vec<NetworkRow> = ids[..5]
            .iter()
            .map(|id| ok(insert_in(&c, *id, &net).unwrap()))
            .collect();
        let ips: Vec<String> = rows.iter().map(|r| r.ip.unwrap().to_string()).collect();
        assert_eq!(
            ips,
            ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        );
        assert_eq!(
            rows[0].tap.as_deref(),
            Some(&*format!("nxab12{}", rows[0].key))
        );
        let extra = vm(&c, "full");
        assert!(matches!(
            insert_in(&c, extra, &net).unwrap(),
            Err(NetRefusal::SubnetFull(_))
        ));
        c.execute("DELETE FROM vms WHERE id = ?1", [ids[1].to_string()])
            .unwrap();
        let again = ok(insert_in(&c, extra, &net).unwrap());
        assert_eq!(again.ip.unwrap().to_string(), "10.9.0.3");
        // Keys are never reused, so a tap name never names two VMs.
        assert!(rows.iter().all(|r| r.key < again.key));
        let macs: std::collections::HashSet<_> = rows.iter().map(|r| r.mac.clone()).collect();
        assert_eq!(macs.len(), 5);
        assert!(rows[0].mac.as_deref().unwrap().starts_with("02:"));
    }

    #[test]
    fn a_published_port_is_taken_once_per_protocol() {
        let c = db();
        let (a, b) = (vm(&c, "a"), vm(&c, "b"));
        let p: Publish = "8080:80".parse().unwrap();
        ok(insert_in(&c, a, &nat("10.9.0.0/24", vec![p])).unwrap());
        match insert_in(
            &c,
            b,
            &nat("10.9.0.0/24", vec!["0.0.0.0:8080:81".parse().unwrap()]),
        )
        .unwrap()
        {
            Err(NetRefusal::PortTaken { vm, .. }) => assert_eq!(vm, "a"),
            other => panic!("{other:?}"),
        }
        ok(insert_in(
            &c,
            b,
            &nat("10.9.0.0/24", vec!["8080:80/udp".parse().unwrap()]),
        )
        .unwrap());
        let got = get(&c, a).unwrap().unwrap();
        assert_eq!(got.publish, vec![p]);
        assert_eq!(list_nat(&c).unwrap().len(), 2);
    }

    #[test]
    fn a_policy_change_bumps_the_epoch() {
        let c = db();
        let a = vm(&c, "a");
        ok(insert_in(&c, a, &nat("10.9.0.0/24", vec![])).unwrap());
        let row = set_egress(&c, a, &EgressPolicy::DenyAll).unwrap().unwrap();
        assert_eq!((row.epoch, &row.egress), (2, &EgressPolicy::DenyAll));
        assert_eq!(row.to_api().gateway.unwrap().to_string(), "10.9.0.1");
        assert_eq!(row.to_api().ip.unwrap().to_string(), "10.9.0.2");
    }

    #[test]
    fn the_host_subnet_is_fixed_once() {
        let c = db();
        assert_eq!(host_subnet(&c).unwrap(), None);
        let a: Ipv4Cidr = "10.9.0.0/16".parse().unwrap();
        assert_eq!(fix_host_subnet(&c, a).unwrap(), a);
        assert_eq!(
            fix_host_subnet(&c, "10.8.0.0/16".parse().unwrap()).unwrap(),
            a
        );
        assert!(!forwarding_set_by_us(&c).unwrap());
        set_forwarding_set_by_us(&c, true).unwrap();
        assert!(forwarding_set_by_us(&c).unwrap());
    }
}
