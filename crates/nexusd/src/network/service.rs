//! The network service: what the API and the VM life cycle ask of the host network.
//!
//! The host side (bridge, sysctls, nftables tables, resolver) comes up lazily, the first time a
//! `nat` VM starts or at daemon start when such VMs are running, so a daemon whose VMs all use
//! `network: none` never needs `CAP_NET_ADMIN`. Every host operation runs under one async mutex:
//! taps, rules and set elements are changed by one task at a time.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use nexus_lib::api::{
    EgressPolicy, Ipv4Cidr, NetworkCleanup, NetworkInfo, NetworkMode, NetworkVm, Protocol, Publish,
};
use uuid::Uuid;

use super::dns::{ClientPolicy, DnsConfig, DnsServer, EgressHooks, VmKey};
use super::{NetworkSettings, link, nft, sysctl};
use crate::store::network::{self as rows, NetworkRow, NewNetwork, gateway_of};
use crate::store::{Store, StoreError};
use crate::vmm::{GuestNet, TapSpec};

/// Errors of network operations.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error(
        "the configured network_subnet {configured} overlaps {route}, a network the host already routes; choose another subnet"
    )]
    SubnetCollides {
        configured: Ipv4Cidr,
        route: Ipv4Cidr,
    },
    #[error("no free subnet: every candidate /16 overlaps a route of the host; set network_subnet")]
    NoFreeSubnet,
    #[error(
        "network_subnet is {configured} but VMs hold addresses in {recorded}; delete them first or restore the setting"
    )]
    SubnetChanged {
        configured: Ipv4Cidr,
        recorded: Ipv4Cidr,
    },
    #[error("VM {vm} has address {ip}, outside the host network's subnet {subnet}")]
    OutsideSubnet {
        vm: String,
        ip: Ipv4Addr,
        subnet: Ipv4Cidr,
    },
    #[error("cannot read or change the host's links")]
    Link(#[from] link::LinkError),
    #[error("cannot set up the bridge")]
    Bridge(#[from] link::BridgeError),
    #[error("cannot set up the VM's tap")]
    Tap(#[from] link::TapError),
    #[error("cannot talk to the kernel's network configuration")]
    Open(#[from] link::OpenError),
    #[error("cannot set a network sysctl")]
    Sysctl(#[from] sysctl::SysctlError),
    #[error("cannot change nexusd's nftables tables")]
    Nft(#[from] nft::NftError),
    #[error("cannot start the VMs' DNS resolver on {addr}")]
    Dns {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The network service; cheap to clone.
#[derive(Clone)]
pub struct NetworkService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NetworkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkService")
            .field("bridge", &self.inner.settings.bridge)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: NetworkSettings,
    store: Store,
    host: tokio::sync::Mutex<Option<HostUp>>,
    /// The egress policy of each attached VM by address, for the resolver.
    clients: RwLock<HashMap<Ipv4Addr, ClientPolicy>>,
    /// When each address nexusd admitted for a VM (by key) leaves its DNS set.
    admitted: Mutex<HashMap<(u32, Ipv4Addr), Instant>>,
}

/// The host side once it is up.
struct HostUp {
    spec: nft::HostSpec,
    dns: DnsServer,
    upstream: Vec<SocketAddr>,
    /// Attached VMs: their rules are in the tables and their taps exist.
    attached: HashMap<Uuid, (String, NetworkRow)>,
}

fn vm_rules(row: &NetworkRow) -> Option<nft::VmRules> {
    Some(nft::VmRules {
        key: row.key,
        tap: row.tap.clone()?,
        mac: row.mac.clone()?,
        ip: row.ip?,
        egress: row.egress.clone(),
        epoch: row.epoch,
        publish: row.publish.clone(),
    })
}

impl NetworkService {
    pub fn new(settings: NetworkSettings, store: Store) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                store,
                host: tokio::sync::Mutex::new(None),
                clients: RwLock::new(HashMap::new()),
                admitted: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn settings(&self) -> &NetworkSettings {
        &self.inner.settings
    }

    /// Validates the network part of a create request and applies the defaults; for `nat`,
    /// fixes the host subnet (the first time) so the address can be allocated in the VM's
    /// transaction.
    pub async fn plan(
        &self,
        mode: Option<NetworkMode>,
        publish: Vec<Publish>,
        egress: Option<EgressPolicy>,
    ) -> Result<NewNetwork, NetworkError> {
        let s = &self.inner.settings;
        let mode = mode.unwrap_or(s.default_mode);
        let invalid = |field, message: String| NetworkError::Invalid { field, message };
        if mode == NetworkMode::None {
            if !publish.is_empty() {
                return Err(invalid(
                    "publish",
                    "a VM with network none has no ports to publish".into(),
                ));
            }
            if egress.is_some() {
                return Err(invalid(
                    "egress",
                    "a VM with network none has no egress".into(),
                ));
            }
        }
        if publish.len() > nexus_lib::api::MAX_PUBLISH {
            return Err(invalid(
                "publish",
                format!("at most {} published ports", nexus_lib::api::MAX_PUBLISH),
            ));
        }
        for (i, p) in publish.iter().enumerate() {
            p.validate().map_err(|m| invalid("publish", m))?;
            if publish[..i]
                .iter()
                .any(|q| q.protocol == p.protocol && q.host_port == p.host_port)
            {
                return Err(invalid("publish", format!("{p}: host port given twice")));
            }
            port_is_free(p).map_err(NetworkError::Conflict)?;
        }
        let egress = egress
            .unwrap_or_else(|| s.default_egress.clone())
            .normalized()
            .map_err(|m| invalid("egress", m))?;
        let subnet = match mode {
            NetworkMode::Nat => Some(self.subnet().await?),
            NetworkMode::None => None,
        };
        Ok(NewNetwork {
            mode,
            publish,
            egress,
            subnet,
            tap_prefix: s.tap_prefix.clone(),
        })
    }

    /// The host subnet: the recorded one, else the configured one, else a free one, checked
    /// against the host's routes and recorded.
    async fn subnet(&self) -> Result<Ipv4Cidr, NetworkError> {
        let store = &self.inner.store;
        let recorded = store.call(|c| rows::host_subnet(c)).await?;
        let configured = self.inner.settings.subnet;
        match (recorded, configured) {
            (Some(r), None) => return Ok(r),
            (Some(r), Some(c)) if r == c => return Ok(r),
            _ => {}
        }
        let routes = self.foreign_routes().await?;
        let subnet = match configured {
            Some(c) => {
                if let Some(route) = routes.iter().find(|r| r.overlaps(&c)) {
                    return Err(NetworkError::SubnetCollides {
                        configured: c,
                        route: *route,
                    });
                }
                c
            }
            None => link::pick_subnet(&routes).ok_or(NetworkError::NoFreeSubnet)?,
        };
        match recorded {
            None => Ok(store
                .call(move |c| rows::fix_host_subnet(c, subnet))
                .await?),
            Some(r) => {
                if store
                    .call(move |c| rows::replace_host_subnet(c, subnet))
                    .await?
                {
                    tracing::info!(from = %r, to = %subnet, "host network subnet changed (no VM held an address)");
                    Ok(subnet)
                } else {
                    Err(NetworkError::SubnetChanged {
                        configured: subnet,
                        recorded: r,
                    })
                }
            }
        }
    }

    /// The host's routes and interface networks, without our own bridge's.
    async fn foreign_routes(&self) -> Result<Vec<Ipv4Cidr>, NetworkError> {
        let ours = self.inner.store.call(|c| rows::host_subnet(c)).await?;
        Ok(nl()?
            .routes_v4()
            .await?
            .into_iter()
            .filter(|r| Some(*r) != ours && r.prefix() > 0)
            .collect())
    }

    /// Puts VM `vm_id` on the network before its VMM starts: its tap (owned by `owner`, the
    /// jail's uid and gid, so the jailed VMM can open it), its rules, its resolver policy.
    /// `None` for a VM without a `nat` network.
    pub async fn attach(
        &self,
        vm_id: Uuid,
        vm_name: &str,
        owner: (u32, u32),
    ) -> Result<Option<(TapSpec, GuestNet)>, NetworkError> {
        let row = self.inner.store.call(move |c| rows::get(c, vm_id)).await?;
        let Some(row) = row.filter(|r| r.mode == NetworkMode::Nat) else {
            return Ok(None);
        };
        let (Some(rules), Some(ip), Some(prefix)) = (vm_rules(&row), row.ip, row.prefix) else {
            return Ok(None);
        };
        let mut host = self.inner.host.lock().await;
        let up = self.ensure_up(&mut host).await?;
        if !up.spec.subnet.contains(ip) || up.spec.subnet.prefix() != prefix {
            return Err(NetworkError::OutsideSubnet {
                vm: vm_name.to_owned(),
                ip,
                subnet: up.spec.subnet,
            });
        }
        if up.attached.remove(&vm_id).is_some() {
            nft::apply(&nft::remove_vm(&up.spec, &rules)).await?;
        }
        let nl = nl()?;
        nl.create_tap(&rules.tap, owner.0, owner.1).await?;
        nl.attach_port(&rules.tap, &up.spec.bridge, self.inner.settings.mtu)
            .await?;
        nft::apply(&nft::add_vm(&up.spec, &rules)).await?;
        self.set_client(&row);
        let gateway = up.spec.gateway;
        up.attached.insert(vm_id, (vm_name.to_owned(), row.clone()));
        tracing::info!(vm = vm_name, tap = %rules.tap, %ip, "VM attached to the network");
        Ok(Some((
            TapSpec {
                ifname: rules.tap.clone(),
                mac: rules.mac.clone(),
            },
            GuestNet {
                ip,
                prefix,
                gateway,
                mtu: self.inner.settings.mtu,
            },
        )))
    }

    /// Takes VM `vm_id` off the network once its VMM is gone: rules, tap, resolver policy.
    pub async fn release(&self, vm_id: Uuid) {
        let mut host = self.inner.host.lock().await;
        let Some(up) = host.as_mut() else { return };
        let Some((name, row)) = up.attached.remove(&vm_id) else {
            return;
        };
        if let Some(rules) = vm_rules(&row) {
            if let Err(e) = nft::apply(&nft::remove_vm(&up.spec, &rules)).await {
                tracing::warn!(vm = %name, error = %nexus_lib::error::error_chain(&e), "cannot remove the VM's firewall rules");
            }
            if let Err(e) = delete_link(&rules.tap).await {
                tracing::warn!(vm = %name, tap = %rules.tap, error = %nexus_lib::error::error_chain(&e), "cannot delete the VM's tap");
            }
        }
        self.forget_client(&row);
        tracing::info!(vm = %name, "VM detached from the network");
    }

    /// Replaces the egress policy of VM `vm_id` (recorded, then applied at once if attached).
    pub async fn set_egress(
        &self,
        vm_id: Uuid,
        egress: EgressPolicy,
    ) -> Result<Option<NetworkRow>, NetworkError> {
        let egress = egress
            .normalized()
            .map_err(|message| NetworkError::Invalid {
                field: "egress",
                message,
            })?;
        let mut host = self.inner.host.lock().await;
        let Some(row) = self
            .inner
            .store
            .call(move |c| rows::set_egress(c, vm_id, &egress))
            .await?
        else {
            return Ok(None);
        };
        if let Some(up) = host.as_mut()
            && let Some(entry) = up.attached.get_mut(&vm_id)
        {
            if let Some(rules) = vm_rules(&row) {
                nft::apply(&nft::set_egress(&up.spec, &rules)).await?;
            }
            entry.1 = row.clone();
            self.set_client(&row);
        }
        Ok(Some(row))
    }

    fn set_client(&self, row: &NetworkRow) {
        let Some(ip) = row.ip else { return };
        self.inner
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(key, _), _| *key != row.key);
        self.inner
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                ip,
                ClientPolicy {
                    vm: VmKey::from(row.key),
                    egress: Arc::new(row.egress.clone()),
                },
            );
    }

    fn forget_client(&self, row: &NetworkRow) {
        if let Some(ip) = row.ip {
            self.inner
                .clients
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ip);
        }
        self.inner
            .admitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(key, _), _| *key != row.key);
    }

    /// Brings the host side up if it is not: bridge and gateway address, forwarding, both
    /// tables (rebuilt with the VMs attached so far), the resolver.
    async fn ensure_up<'a>(
        &self,
        host: &'a mut Option<HostUp>,
    ) -> Result<&'a mut HostUp, NetworkError> {
        if host.is_none() {
            *host = Some(self.bring_up(HashMap::new()).await?);
        }
        Ok(host.as_mut().expect("just set"))
    }

    async fn bring_up(
        &self,
        attached: HashMap<Uuid, (String, NetworkRow)>,
    ) -> Result<HostUp, NetworkError> {
        let s = &self.inner.settings;
        let subnet = self.subnet().await?;
        let gateway = gateway_of(subnet.network(), subnet.prefix());
        let nl = nl()?;
        nl.ensure_bridge(&s.bridge, gateway, subnet.prefix(), s.mtu)
            .await?;
        self.enable_forwarding().await?;
        sysctl::Sysctl::default().set_route_localnet(&s.bridge, true)?;
        let uplink = match &s.uplink {
            Some(u) => Some(u.clone()),
            None => nl.default_route_dev().await?,
        };
        let spec = nft::HostSpec {
            table: s.bridge.clone(),
            bridge: s.bridge.clone(),
            subnet,
            gateway,
            uplink,
        };
        let vms: Vec<nft::VmRules> = attached.values().filter_map(|(_, r)| vm_rules(r)).collect();
        nft::rebuild(&spec, &vms, true).await?;
        let upstream = self.upstream();
        let listen = SocketAddr::new(gateway.into(), 53);
        let dns = DnsServer::start(
            DnsConfig::new(listen, upstream.clone()),
            Arc::new(Hooks(Arc::downgrade(&self.inner))),
        )
        .await
        .map_err(|source| NetworkError::Dns {
            addr: listen,
            source,
        })?;
        for (_, row) in attached.values() {
            self.set_client(row);
        }
        tracing::info!(bridge = %s.bridge, %subnet, uplink = ?spec.uplink, dns = ?upstream, "host network up");
        Ok(HostUp {
            spec,
            dns,
            upstream,
            attached,
        })
    }

    async fn enable_forwarding(&self) -> Result<(), NetworkError> {
        let sysctl = sysctl::Sysctl::default();
        if sysctl.ip_forward()? {
            return Ok(());
        }
        sysctl.set_ip_forward(true)?;
        self.inner
            .store
            .call(|c| rows::set_forwarding_set_by_us(c, true))
            .await?;
        tracing::info!("enabled net.ipv4.ip_forward (restored by `nexusctl network down`)");
        Ok(())
    }

    /// At daemon start, after the VMs were re-adopted: when `live` (the VMs whose VMM runs)
    /// includes `nat` VMs, or nexusd's bridge exists, brings the host side up with exactly
    /// those VMs attached and removes what no VM owns.
    pub async fn reconcile(&self, live: &[Uuid]) -> Result<NetworkCleanup, NetworkError> {
        let nat = self.inner.store.call(|c| rows::list_nat(c)).await?;
        let attached: HashMap<Uuid, (String, NetworkRow)> = nat
            .into_iter()
            .filter(|(_, row)| live.contains(&row.vm_id))
            .map(|(name, row)| (row.vm_id, (name, row)))
            .collect();
        let bridge_exists = nl()?
            .list_links()
            .await?
            .iter()
            .any(|l| l.name == self.inner.settings.bridge);
        if attached.is_empty() && !bridge_exists {
            return Ok(NetworkCleanup::default());
        }
        let mut host = self.inner.host.lock().await;
        if let Some(up) = host.take() {
            up.dns.shutdown().await;
        }
        let up = self.bring_up(attached).await?;
        let removed = self.remove_stray_taps(&up).await?;
        *host = Some(up);
        Ok(NetworkCleanup { removed })
    }

    /// `network gc`: removes taps of this daemon that no attached VM owns and rebuilds both
    /// tables from the database (keeping the addresses the resolver admitted).
    pub async fn gc(&self) -> Result<NetworkCleanup, NetworkError> {
        let mut host = self.inner.host.lock().await;
        let Some(up) = host.as_mut() else {
            drop(host);
            let live = self.live_vms().await?;
            return self.reconcile(&live).await;
        };
        let vms: Vec<nft::VmRules> = up
            .attached
            .values()
            .filter_map(|(_, r)| vm_rules(r))
            .collect();
        nft::rebuild(&up.spec, &vms, true).await?;
        let removed = self.remove_stray_taps(up).await?;
        Ok(NetworkCleanup { removed })
    }

    async fn live_vms(&self) -> Result<Vec<Uuid>, NetworkError> {
        let host = self.inner.host.lock().await;
        Ok(host
            .as_ref()
            .map(|up| up.attached.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn remove_stray_taps(&self, up: &HostUp) -> Result<Vec<String>, NetworkError> {
        let ours: Vec<&str> = up
            .attached
            .values()
            .filter_map(|(_, r)| r.tap.as_deref())
            .collect();
        let mut removed = Vec::new();
        for l in nl()?.list_links().await? {
            if l.name.starts_with(&self.inner.settings.tap_prefix)
                && !ours.contains(&l.name.as_str())
            {
                delete_link(&l.name).await?;
                removed.push(format!("tap {}", l.name));
            }
        }
        Ok(removed)
    }

    /// `network down`: removes the resolver, both tables, every tap of this daemon and the
    /// bridge, and turns forwarding off if nexusd turned it on. Refused while VMs are attached.
    pub async fn down(&self) -> Result<NetworkCleanup, NetworkError> {
        let mut host = self.inner.host.lock().await;
        if let Some(up) = host.as_ref()
            && !up.attached.is_empty()
        {
            let mut names: Vec<&str> = up.attached.values().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            return Err(NetworkError::Conflict(format!(
                "VMs are running on the network ({}); stop them first",
                names.join(", ")
            )));
        }
        let mut removed = Vec::new();
        if let Some(up) = host.take() {
            up.dns.shutdown().await;
            removed.push(format!("resolver on {}:53", up.spec.gateway));
        }
        let s = &self.inner.settings;
        if nft::delete_tables(&s.bridge).await? {
            removed.push(format!("nftables tables inet {0} and bridge {0}", s.bridge));
        }
        for l in nl()?.list_links().await? {
            if l.name.starts_with(&s.tap_prefix) {
                delete_link(&l.name).await?;
                removed.push(format!("tap {}", l.name));
            }
        }
        if nl()?.list_links().await?.iter().any(|l| l.name == s.bridge) {
            delete_link(&s.bridge).await?;
            removed.push(format!("bridge {}", s.bridge));
        }
        if self
            .inner
            .store
            .call(|c| rows::forwarding_set_by_us(c))
            .await?
        {
            sysctl::Sysctl::default().set_ip_forward(false)?;
            self.inner
                .store
                .call(|c| rows::set_forwarding_set_by_us(c, false))
                .await?;
            removed.push("net.ipv4.ip_forward (back to 0)".into());
        }
        self.inner
            .clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(NetworkCleanup { removed })
    }

    /// `GET /v1/network`.
    pub async fn info(&self) -> Result<NetworkInfo, NetworkError> {
        let host = self.inner.host.lock().await;
        let s = &self.inner.settings;
        let subnet = match &*host {
            Some(up) => up.spec.subnet,
            None => match self.inner.store.call(|c| rows::host_subnet(c)).await? {
                Some(r) => r,
                None => match s.subnet {
                    Some(c) => c,
                    None => link::pick_subnet(&self.foreign_routes().await?)
                        .ok_or(NetworkError::NoFreeSubnet)?,
                },
            },
        };
        let links = match nl() {
            Ok(nl) => nl.list_links().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let nat = self.inner.store.call(|c| rows::list_nat(c)).await?;
        let vms = nat
            .into_iter()
            .filter_map(|(name, row)| {
                Some(NetworkVm {
                    name,
                    ip: row.ip?,
                    mac: row.mac.clone()?,
                    tap_present: links.iter().any(|l| Some(&l.name) == row.tap.as_ref()),
                    tap: row.tap?,
                })
            })
            .collect();
        let uplink = match (&*host, &s.uplink) {
            (Some(up), _) => up.spec.uplink.clone(),
            (None, Some(u)) => Some(u.clone()),
            (None, None) => match nl() {
                Ok(nl) => nl.default_route_dev().await.ok().flatten(),
                Err(_) => None,
            },
        };
        let upstream = match &*host {
            Some(up) => up.upstream.clone(),
            None => self.upstream(),
        };
        Ok(NetworkInfo {
            bridge: s.bridge.clone(),
            subnet,
            gateway: gateway_of(subnet.network(), subnet.prefix()),
            uplink,
            table: s.bridge.clone(),
            mtu: s.mtu,
            up: host.is_some(),
            dns_upstream: upstream.iter().map(ToString::to_string).collect(),
            vms,
        })
    }

    /// The resolver's upstream servers: configured, else the host's /etc/resolv.conf.
    fn upstream(&self) -> Vec<SocketAddr> {
        match &self.inner.settings.dns {
            Some(servers) => servers.clone(),
            None => super::dns::upstream_from_resolv_conf(std::path::Path::new("/etc/resolv.conf"))
                .unwrap_or_default(),
        }
    }

    /// Stops the resolver at daemon shutdown; taps and rules stay for the VMs that keep
    /// running, and the next daemon re-adopts them.
    pub async fn shutdown(&self) {
        if let Some(up) = self.inner.host.lock().await.take() {
            up.dns.shutdown().await;
        }
    }
}

/// A route-netlink connection of this thread's namespace.
fn nl() -> Result<link::Netlink, NetworkError> {
    Ok(link::Netlink::open()?)
}

async fn delete_link(name: &str) -> Result<bool, NetworkError> {
    Ok(nl()?.delete_link(name).await?)
}

/// Refuses a host port something on the host already listens on (DNAT would hide it).
fn port_is_free(p: &Publish) -> Result<(), String> {
    let addr = SocketAddr::new(p.bind.into(), p.host_port);
    let taken = match p.protocol {
        Protocol::Tcp => std::net::TcpListener::bind(addr).err(),
        Protocol::Udp => std::net::UdpSocket::bind(addr).err(),
    };
    match taken {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "host port {}/{} is in use on the host",
            p.host_port,
            p.protocol.as_str()
        )),
        Some(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            Err(format!("{} is not an address of this host", p.bind))
        }
        _ => Ok(()),
    }
}

/// The resolver's view of the service.
struct Hooks(std::sync::Weak<Inner>);

impl EgressHooks for Hooks {
    fn policy(&self, client: Ipv4Addr) -> Option<ClientPolicy> {
        let inner = self.0.upgrade()?;
        let clients = inner.clients.read().unwrap_or_else(|e| e.into_inner());
        clients.get(&client).cloned()
    }

    fn resolved(
        &self,
        client: ClientPolicy,
        addrs: Vec<(Ipv4Addr, Duration)>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let inner = self.0.clone();
        Box::pin(async move {
            let inner = inner.upgrade().ok_or("nexusd is shutting down")?;
            let key = u32::try_from(client.vm).map_err(|_| "unknown VM key".to_string())?;
            let now = Instant::now();
            // Only what is not admitted for at least half its new time goes to nft.
            let fresh: Vec<(Ipv4Addr, Duration)> = {
                let admitted = inner.admitted.lock().unwrap_or_else(|e| e.into_inner());
                addrs
                    .into_iter()
                    .map(|(ip, ttl)| (ip, nft::admit_time(ttl)))
                    .filter(|(ip, ttl)| {
                        admitted
                            .get(&(key, *ip))
                            .is_none_or(|until| *until < now + *ttl / 2)
                    })
                    .collect()
            };
            if fresh.is_empty() {
                return Ok(());
            }
            let host = inner.host.lock().await;
            let up = host.as_ref().ok_or("the host network is down")?;
            // Policies change under the host lock: if this VM's is not the one the name was
            // allowed under any more, admit nothing (the VM asks again, under the new one).
            let current = inner
                .clients
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|c| c.vm == client.vm && Arc::ptr_eq(&c.egress, &client.egress));
            if !current {
                return Err("the VM's egress policy changed during the query".into());
            }
            nft::apply(&nft::allow_resolved(&up.spec, key, &fresh))
                .await
                .map_err(|e| nexus_lib::error::error_chain(&e))?;
            let mut admitted = inner.admitted.lock().unwrap_or_else(|e| e.into_inner());
            for (ip, ttl) in fresh {
                admitted.insert((key, ip), now + ttl);
            }
            Ok(())
        })
    }
}
