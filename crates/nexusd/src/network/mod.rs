//! VM networking: a bridge per host, a tap per VM, addresses from a subnet kept in the database,
//! NAT and per-VM egress policies in nftables tables nexusd owns, and a DNS resolver on the
//! gateway whose answers open the domain rules.

pub mod dns;
pub mod link;
pub mod nft;
mod service;
pub mod sysctl;

pub use service::{NetworkError, NetworkService};

use std::net::SocketAddr;
use std::path::Path;

use nexus_lib::api::{EgressPolicy, Ipv4Cidr, NetworkMode};

/// The network settings the daemon runs with (see the `network*` keys of `nexus.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Network of VMs created without one.
    pub default_mode: NetworkMode,
    /// The bridge, and the name of nexusd's nftables tables.
    pub bridge: String,
    /// Configured subnet; `None` picks a free one the first time a `nat` VM is created.
    pub subnet: Option<Ipv4Cidr>,
    /// Configured uplink; `None` follows the default route.
    pub uplink: Option<String>,
    pub mtu: u32,
    /// Configured upstream DNS servers; `None` reads /etc/resolv.conf.
    pub dns: Option<Vec<SocketAddr>>,
    /// Egress policy of VMs created without one.
    pub default_egress: EgressPolicy,
    /// Prefix of this daemon's tap names (`nx` and 4 hex digits of its data directory's hash),
    /// so daemons on different homes never take each other's taps.
    pub tap_prefix: String,
}

impl NetworkSettings {
    /// Settings under which new VMs get `network: none` unless they ask (unit tests, embedding).
    pub fn loopback_only() -> Self {
        Self {
            default_mode: NetworkMode::None,
            bridge: "nexus0".into(),
            subnet: None,
            uplink: None,
            mtu: 1500,
            dns: None,
            default_egress: EgressPolicy::AllowAll,
            tap_prefix: "nx0000".into(),
        }
    }
}

/// `nx` and the first 4 hex digits of the SHA-256 of `data_dir`: with a key of up to 9 digits,
/// a tap name stays within Linux's 15 bytes.
pub fn tap_prefix(data_dir: &Path) -> String {
    format!("nx{}", crate::settings::data_dir_tag(data_dir, 2))
}
