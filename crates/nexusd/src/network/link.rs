//! Host links of VM networking over rtnetlink: the bridge and its gateway address, one persistent
//! tap per VM (owned by the VM's jail uid so the unprivileged VMM opens it by name), bridge ports
//! isolated from each other, and the routes that a new subnet must not collide with (the sysctls
//! NAT needs are in `sysctl.rs`).
//!
//! Everything acts on the network namespace of the thread that does it: [`Netlink::open`] binds its
//! socket to the namespace of the calling thread, and [`Netlink::create_tap`] opens `/dev/net/tun`
//! on the thread that polls it. The daemon lives in one namespace, so that is the host's; tests
//! run these on a thread that unshared its own namespace, under a current-thread runtime.

use std::fs::OpenOptions;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use futures_util::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoTun, LinkAttribute, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use nexus_lib::api::Ipv4Cidr;
use rtnetlink::packet_core::Nla;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, RouteMessageBuilder};

/// Longest interface name the kernel takes (`IFNAMSIZ` less the NUL).
pub const MAX_IFNAME: usize = 15;

/// The main routing table.
const RT_TABLE_MAIN: u32 = 254;

/// A netlink request that failed; permission failures say which capability is missing.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkFailure {
    #[error("{op} {name} needs CAP_NET_ADMIN (run nexusd as root or grant it the capability)")]
    NotPermitted { name: String, op: &'static str },
    #[error("{op} {name}")]
    Failed {
        name: String,
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

impl NetlinkFailure {
    fn new(name: &str, op: &'static str, source: rtnetlink::Error) -> Self {
        let name = name.to_owned();
        if errno(&source) == Some(libc::EPERM) {
            Self::NotPermitted { name, op }
        } else {
            Self::Failed { name, op, source }
        }
    }

    pub fn is_not_permitted(&self) -> bool {
        matches!(self, Self::NotPermitted { .. })
    }
}

/// The kernel's errno of a netlink error reply.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// Opening the route-netlink socket.
#[derive(Debug, thiserror::Error)]
#[error("could not open a route-netlink socket")]
pub struct OpenError(#[source] io::Error);

/// Failures of [`Netlink::ensure_bridge`].
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid bridge name {0:?} (1 to 15 bytes, no '/', whitespace or ':')")]
    InvalidName(String),
    #[error("{bridge} exists and is not a bridge (it is a {kind})")]
    NotABridge { bridge: String, kind: String },
    #[error(transparent)]
    Netlink(#[from] NetlinkFailure),
}

/// Failures of [`Netlink::create_tap`] and [`Netlink::attach_port`].
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap name {0:?} (1 to 15 bytes, no '/', whitespace or ':')")]
    InvalidName(String),
    #[error("{tap} exists and is not a tap (it is a {kind})")]
    NotATap { tap: String, kind: String },
    #[error("tap {tap} does not exist")]
    NoTap { tap: String },
    #[error("bridge {bridge} for tap {tap} does not exist")]
    NoBridge { tap: String, bridge: String },
    #[error("opening /dev/net/tun for tap {tap}")]
    OpenTun {
        tap: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{op} on tap {tap} needs CAP_NET_ADMIN (run nexusd as root or grant it the capability)"
    )]
    NotPermitted { tap: String, op: &'static str },
    #[error("{op} on tap {tap}")]
    Ioctl {
        tap: String,
        op: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Netlink(#[from] NetlinkFailure),
}

/// Failures of the queries and of [`Netlink::delete_link`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkFailure),
}

/// One network interface, as [`Netlink::list_links`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// `bridge`, `tun`, `veth`, … (`None` for a physical device or loopback).
    pub kind: Option<String>,
    /// Index of the bridge (or bond) this link is a port of.
    pub master: Option<u32>,
}

/// What the kernel says about a tun/tap device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapInfo {
    /// A tap (Ethernet frames) rather than a tun (IP packets).
    pub tap: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub persistent: bool,
}

/// Whether `name` can be a Linux interface name (`dev_valid_name`).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

/// A route-netlink connection in the network namespace of the thread that opened it.
pub struct Netlink {
    handle: Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens the socket in the calling thread's network namespace; needs a tokio runtime, which
    /// drives the connection until this is dropped.
    pub fn open() -> Result<Self, OpenError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(OpenError)?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkFailure> {
        let mut replies = self.handle.link().get().match_name(name).execute();
        match replies.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(NetlinkFailure::new(name, "looking up link", e)),
        }
    }

    async fn set_link(
        &self,
        name: &str,
        op: &'static str,
        msg: LinkMessage,
    ) -> Result<(), NetlinkFailure> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| NetlinkFailure::new(name, op, e))
    }

    /// Creates the bridge when missing, gives it `gateway/prefix` when it lacks that address, sets
    /// its MTU and brings it up. Idempotent; returns the bridge's interface index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    ) -> Result<u32, BridgeError> {
        if !valid_ifname(name) {
            return Err(BridgeError::InvalidName(name.to_owned()));
        }
        let link = match self.link_by_name(name).await? {
            Some(link) => link,
            None => {
                let add = self.handle.link().add(LinkBridge::new(name).build());
                match add.execute().await {
                    Ok(()) => {}
                    // Created meanwhile by someone else: the kind check below decides.
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                    Err(e) => return Err(NetlinkFailure::new(name, "creating bridge", e).into()),
                }
                let created = self.link_by_name(name).await?;
                created.ok_or_else(|| {
                    NetlinkFailure::new(name, "creating bridge", rtnetlink::Error::RequestFailed)
                })?
            }
        };
        let info = link_info(&link);
        if info.kind.as_deref() != Some("bridge") {
            let kind = info.kind.unwrap_or_else(|| "device".into());
            return Err(BridgeError::NotABridge {
                bridge: name.to_owned(),
                kind,
            });
        }
        let index = info.index;
        self.set_link(
            name,
            "setting MTU and up on bridge",
            LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
        )
        .await?;
        let has_gateway = self
            .addresses_v4()
            .await?
            .iter()
            .any(|(i, addr, p)| *i == index && *addr == gateway && *p == prefix);
        if !has_gateway {
            let add = self
                .handle
                .address()
                .add(index, IpAddr::V4(gateway), prefix);
            match add.execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(
                        NetlinkFailure::new(name, "adding the gateway address to", e).into(),
                    );
                }
            }
        }
        Ok(index)
    }

    /// Creates `name` as a persistent tap owned by `uid:gid` (so that the jailed VMM can open it by
    /// name without privileges), or reuses it when it already is one with that owner. A tap with
    /// another owner is taken over, which fails while a VMM holds it open.
    pub async fn create_tap(&self, name: &str, uid: u32, gid: u32) -> Result<(), TapError> {
        if !valid_ifname(name) {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        if let Some(link) = self.link_by_name(name).await? {
            match tap_info(&link) {
                Some(t)
                    if t.tap && t.persistent && t.owner == Some(uid) && t.group == Some(gid) =>
                {
                    return Ok(());
                }
                Some(t) if t.tap => {}
                _ => {
                    let kind = link_info(&link).kind.unwrap_or_else(|| "device".into());
                    return Err(TapError::NotATap {
                        tap: name.to_owned(),
                        kind,
                    });
                }
            }
        }
        // These ioctls never wait, and must run on this thread to act in its namespace.
        persistent_tap(name, uid, gid)
    }

    /// Makes `name` a port of `bridge`: MTU, up, and isolated, so that it can only talk to the
    /// bridge itself (the host), never to another VM's port. Learning stays as the kernel sets it.
    pub async fn attach_port(&self, name: &str, bridge: &str, mtu: u32) -> Result<(), TapError> {
        let Some(bridge_link) = self.link_by_name(bridge).await? else {
            return Err(TapError::NoBridge {
                tap: name.to_owned(),
                bridge: bridge.to_owned(),
            });
        };
        let Some(port) = self.link_by_name(name).await? else {
            return Err(TapError::NoTap {
                tap: name.to_owned(),
            });
        };
        let index = port.header.index;
        let msg = LinkUnspec::new_with_index(index)
            .controller(bridge_link.header.index)
            .mtu(mtu)
            .up()
            .build();
        self.set_link(name, "attaching to the bridge", msg).await?;
        // RTM_NEWLINK with bridge-port data, as `ip link set dev X type bridge_slave isolated on`.
        let isolate = LinkBridgePort::new(index).isolated(true).build();
        self.handle
            .link()
            .set_port(isolate)
            .execute()
            .await
            .map_err(|e| NetlinkFailure::new(name, "isolating bridge port", e))?;
        Ok(())
    }

    /// Deletes the link; `Ok(false)` when there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(NetlinkFailure::new(name, "deleting link", e).into()),
        }
    }

    pub async fn list_links(&self) -> Result<Vec<LinkInfo>, LinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkFailure::new("all links", "listing", e))?;
        Ok(links.iter().map(link_info).collect())
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        Ok(self.link_by_name(name).await?.as_ref().map(link_info))
    }

    /// Whether `name` is a bridge port with isolation on, read back from the kernel.
    pub async fn port_isolated(&self, name: &str) -> Result<bool, LinkError> {
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchLink(name.to_owned()))?;
        Ok(link_infos(&link).any(|i| {
            matches!(i, netlink_packet_route::link::LinkInfo::PortData(InfoPortData::BridgePort(p))
                if p.contains(&InfoBridgePort::Isolated(true)))
        }))
    }

    /// The tun/tap attributes of `name`; `None` when it is no tun/tap.
    pub async fn tap_info(&self, name: &str) -> Result<Option<TapInfo>, LinkError> {
        let link = self
            .link_by_name(name)
            .await?
            .ok_or_else(|| LinkError::NoSuchLink(name.to_owned()))?;
        Ok(tap_info(&link))
    }

    /// Interface index, address and prefix of every IPv4 address.
    async fn addresses_v4(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkFailure> {
        let mut request = self.handle.address().get();
        request.message_mut().header.family = AddressFamily::Inet;
        let msgs: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkFailure::new("all interfaces", "listing addresses of", e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) => {
                        Some((m.header.index, *ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            })
            .collect())
    }

    async fn main_routes_v4(&self) -> Result<Vec<RouteMessage>, NetlinkFailure> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await
            .map_err(|e| NetlinkFailure::new("the main table", "listing routes of", e))?;
        Ok(routes
            .into_iter()
            .filter(|r| route_table(r) == RT_TABLE_MAIN && r.header.kind == RouteType::Unicast)
            .collect())
    }

    /// The IPv4 networks in use on this host: destinations of the main table (the default route
    /// aside) and the network of every interface address. A new subnet must overlap none.
    pub async fn routes_v4(&self) -> Result<Vec<Ipv4Cidr>, LinkError> {
        let mut taken: Vec<Ipv4Cidr> = self
            .main_routes_v4()
            .await?
            .iter()
            .filter(|r| r.header.destination_prefix_length > 0)
            .filter_map(|r| {
                let dest = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
                    _ => None,
                })?;
                network_of(dest, r.header.destination_prefix_length)
            })
            .collect();
        taken.extend(
            self.addresses_v4()
                .await?
                .into_iter()
                .filter_map(|(_, ip, prefix)| network_of(ip, prefix)),
        );
        taken.sort();
        taken.dedup();
        Ok(taken)
    }

    /// The interface of the main table's default route with the lowest metric, if any: the
    /// uplink NAT leaves through when none is configured.
    pub async fn default_route_dev(&self) -> Result<Option<String>, LinkError> {
        let mut defaults: Vec<(u32, u32)> = self
            .main_routes_v4()
            .await?
            .iter()
            .filter(|r| r.header.destination_prefix_length == 0)
            .filter_map(|r| {
                let metric = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
                    _ => None,
                })?;
                Some((metric.unwrap_or(0), oif))
            })
            .collect();
        defaults.sort();
        let Some(&(_, index)) = defaults.first() else {
            return Ok(None);
        };
        let mut replies = self.handle.link().get().match_index(index).execute();
        let link = replies
            .try_next()
            .await
            .map_err(|e| NetlinkFailure::new(&format!("#{index}"), "looking up link", e))?;
        Ok(link.map(|l| link_info(&l).name))
    }
}

fn network_of(ip: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ipv4Cidr::new(Ipv4Addr::from(u32::from(ip) & mask), prefix).ok()
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn link_infos(link: &LinkMessage) -> impl Iterator<Item = &netlink_packet_route::link::LinkInfo> {
    link.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.iter()),
            _ => None,
        })
        .flatten()
}

fn link_info(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: link.header.index,
        kind: None,
        master: None,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Controller(master) => info.master = Some(*master),
            _ => {}
        }
    }
    info.kind = link_infos(link).find_map(|i| match i {
        netlink_packet_route::link::LinkInfo::Kind(kind) => Some(kind.to_string()),
        _ => None,
    });
    info
}

// IFLA_TUN_* (linux/if_link.h); netlink-packet-route leaves them undecoded.
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;

fn tap_info(link: &LinkMessage) -> Option<TapInfo> {
    let is_tun = link_infos(link)
        .any(|i| matches!(i, netlink_packet_route::link::LinkInfo::Kind(InfoKind::Tun)));
    if !is_tun {
        return None;
    }
    let mut info = TapInfo {
        tap: false,
        owner: None,
        group: None,
        persistent: false,
    };
    let attrs = link_infos(link).filter_map(|i| match i {
        netlink_packet_route::link::LinkInfo::Data(InfoData::Tun(attrs)) => Some(attrs),
        _ => None,
    });
    for attr in attrs.flatten() {
        let InfoTun::Other(nla) = attr else { continue };
        let mut value = vec![0u8; nla.value_len()];
        nla.emit_value(&mut value);
        let u32_value = <[u8; 4]>::try_from(value.as_slice())
            .ok()
            .map(u32::from_ne_bytes);
        match nla.kind() {
            IFLA_TUN_OWNER => info.owner = u32_value,
            IFLA_TUN_GROUP => info.group = u32_value,
            IFLA_TUN_TYPE => info.tap = value.first() == Some(&(libc::IFF_TAP as u8)),
            IFLA_TUN_PERSIST => info.persistent = value.first() == Some(&1),
            _ => {}
        }
    }
    Some(info)
}

nix::ioctl_write_ptr_bad!(tunsetiff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tunsetowner, libc::TUNSETOWNER);
nix::ioctl_write_int_bad!(tunsetgroup, libc::TUNSETGROUP);
nix::ioctl_write_int_bad!(tunsetpersist, libc::TUNSETPERSIST);

/// Creates (or takes over) the tap through `/dev/net/tun` and leaves it persistent, owned by
/// `uid:gid`, when the descriptor closes.
fn persistent_tap(name: &str, uid: u32, gid: u32) -> Result<(), TapError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| TapError::OpenTun {
            tap: name.to_owned(),
            source,
        })?;
    let fd = tun.as_raw_fd();
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and addresses);
    // all zeroes is a valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    let check = |op: &'static str, r: nix::Result<libc::c_int>| match r {
        Ok(_) => Ok(()),
        Err(nix::Error::EPERM) => Err(TapError::NotPermitted {
            tap: name.to_owned(),
            op,
        }),
        Err(source) => Err(TapError::Ioctl {
            tap: name.to_owned(),
            op,
            source,
        }),
    };
    // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` a valid, NUL-terminated ifreq
    // (the name is at most 15 bytes, checked by the caller) that outlives the call.
    check("TUNSETIFF", unsafe { tunsetiff(fd, &req) })?;
    // SAFETY: integer-argument ioctls on the open tun descriptor.
    check("TUNSETOWNER", unsafe {
        tunsetowner(fd, uid as libc::c_int)
    })?;
    // SAFETY: as above.
    check("TUNSETGROUP", unsafe {
        tunsetgroup(fd, gid as libc::c_int)
    })?;
    // SAFETY: as above.
    check("TUNSETPERSIST", unsafe { tunsetpersist(fd, 1) })?;
    Ok(())
}

/// First-choice subnets, in order: /16s of RFC 1918 space that home and office networks rarely use.
fn subnet_candidates() -> impl Iterator<Item = Ipv4Cidr> {
    let tens = (213..=254).map(|b| Ipv4Addr::new(10, b, 0, 0));
    let one_seven_twos = (24..=31).rev().map(|b| Ipv4Addr::new(172, b, 0, 0));
    tens.chain(one_seven_twos)
        .map(|addr| Ipv4Cidr::new(addr, 16).expect("a /16 network address"))
}

/// The first candidate /16 that overlaps nothing in `taken` (see [`Netlink::routes_v4`]).
pub fn pick_subnet(taken: &[Ipv4Cidr]) -> Option<Ipv4Cidr> {
    subnet_candidates().find(|c| !taken.iter().any(|t| t.overlaps(c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn pick_subnet_takes_the_first_candidate_on_a_bare_host() {
        assert_eq!(pick_subnet(&[]), Some(cidr("10.213.0.0/16")));
    }

    #[test]
    fn pick_subnet_skips_candidates_that_overlap_a_route() {
        let taken = [
            cidr("10.213.4.0/24"),
            cidr("10.214.0.0/15"),
            cidr("192.168.1.0/24"),
        ];
        assert_eq!(pick_subnet(&taken), Some(cidr("10.216.0.0/16")));
    }

    #[test]
    fn pick_subnet_falls_back_to_172_when_10_slash_8_is_routed() {
        assert_eq!(
            pick_subnet(&[cidr("10.0.0.0/8")]),
            Some(cidr("172.31.0.0/16"))
        );
    }

    #[test]
    fn pick_subnet_gives_up_when_everything_is_taken() {
        assert_eq!(
            pick_subnet(&[cidr("10.0.0.0/8"), cidr("172.16.0.0/12")]),
            None
        );
    }

    #[test]
    fn network_of_clears_host_bits() {
        assert_eq!(
            network_of(Ipv4Addr::new(192, 168, 7, 9), 24),
            Some(cidr("192.168.7.0/24"))
        );
        assert_eq!(
            network_of(Ipv4Addr::new(10, 1, 2, 3), 32),
            Some(cidr("10.1.2.3/32"))
        );
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(valid_ifname("nx-tap-0123456"));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "sixteen-bytes-xx"] {
            assert!(!valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn netlink_eperm_names_the_missing_capability() {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-libc::EPERM);

        let err = NetlinkFailure::new(
            "nxbr0",
            "creating bridge",
            rtnetlink::Error::NetlinkError(msg),
        );

        assert!(err.is_not_permitted());
        assert!(err.to_string().contains("CAP_NET_ADMIN"), "{err}");
    }
}
