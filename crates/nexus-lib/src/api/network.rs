//! Wire types of VM networking: the network mode, published ports, the egress policy (CIDRs and
//! domain patterns) and what `GET /v1/network` reports.
//!
//! Parsing lives here so that nexusd and nexusctl refuse the same inputs with the same words.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most published ports of one VM.
pub const MAX_PUBLISH: usize = 32;
/// Most CIDRs in one egress policy.
pub const MAX_EGRESS_CIDRS: usize = 256;
/// Most domain patterns in one egress policy.
pub const MAX_EGRESS_DOMAINS: usize = 256;

/// How a VM is connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// A tap on nexusd's bridge, an address from its subnet, NAT out of the uplink.
    #[default]
    Nat,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nat => "nat",
        }
    }
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "nat" => Ok(Self::Nat),
            _ => Err(format!("unknown network mode {s:?} (none or nat)")),
        }
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

fn loopback() -> Ipv4Addr {
    Ipv4Addr::LOCALHOST
}

/// A host port forwarded to a port of the VM (DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Host address the port is published on: loopback by default, `0.0.0.0` for every address.
    #[serde(default = "loopback")]
    #[schema(value_type = String, format = "ipv4", default = "127.0.0.1")]
    pub bind: Ipv4Addr,
    #[schema(minimum = 1, maximum = 65535)]
    pub host_port: u16,
    #[schema(minimum = 1, maximum = 65535)]
    pub guest_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl Publish {
    /// Ports are 1..=65535; the bind address is loopback, unspecified or a unicast address.
    pub fn validate(&self) -> Result<(), String> {
        if self.host_port == 0 || self.guest_port == 0 {
            return Err(format!("{self}: ports are 1..=65535"));
        }
        if self.bind.is_multicast() || self.bind.is_broadcast() {
            return Err(format!("{self}: cannot publish on {}", self.bind));
        }
        Ok(())
    }
}

/// `[BIND:]HOST_PORT:GUEST_PORT[/tcp|udp]`.
impl FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid publish rule {s:?}: {why} (expected [BIND:]HOST_PORT:GUEST_PORT[/tcp|udp])"
            )
        };
        let (ports, protocol) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad("the protocol is tcp or udp")),
            None => (s, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (bind, host, guest) = match parts.as_slice() {
            [h, g] => (loopback(), *h, *g),
            [b, h, g] => (
                b.parse()
                    .map_err(|_| bad("the bind address is an IPv4 address"))?,
                *h,
                *g,
            ),
            _ => return Err(bad("wrong number of fields")),
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("ports are 1..=65535"))
        };
        let publish = Publish {
            bind,
            host_port: port(host)?,
            guest_port: port(guest)?,
            protocol,
        };
        publish.validate()?;
        Ok(publish)
    }
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}/{}",
            self.bind,
            self.host_port,
            self.guest_port,
            self.protocol.as_str()
        )
    }
}

/// An IPv4 network `ADDR/PREFIX` with no host bits set (a bare address means `/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Fails when `prefix > 32` or `addr` has bits set past the prefix.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        if prefix > 32 {
            return Err(format!("{addr}/{prefix}: the prefix is 0..=32"));
        }
        let cidr = Self { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "{addr}/{prefix} has host bits set (the network is {}/{prefix})",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The last address (broadcast) of the network.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (
                a,
                // Plain decimal: no sign, no leading zero (`u8::from_str` takes both).
                p.parse::<u8>()
                    .ok()
                    .filter(|n| n.to_string() == p)
                    .ok_or_else(|| format!("{s:?}: the prefix is 0..=32"))?,
            ),
            None => (s, 32),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or ADDR/PREFIX"))?;
        Self::new(addr, prefix)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A domain name (`example.com`) or a wildcard over its subdomains (`*.example.com`, which
/// matches `a.example.com` and `a.b.example.com` but not `example.com`). Lower case, no
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainPattern(String);

/// Longest domain name in text form (RFC 1035).
pub const MAX_DOMAIN_LEN: usize = 253;

impl DomainPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// Whether `name` (any case, with or without a trailing dot) is allowed by this pattern.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(base) => {
                name.len() > base.len() + 1 && name.ends_with(base) && {
                    name.as_bytes()[name.len() - base.len() - 1] == b'.'
                }
            }
            None => name == self.0,
        }
    }
}

impl FromStr for DomainPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let name = lower.strip_prefix("*.").unwrap_or(&lower);
        let bad = |why: &str| Err(format!("invalid domain {s:?}: {why}"));
        if name.is_empty() || s.len() > MAX_DOMAIN_LEN {
            return bad("1 to 253 characters");
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return bad("each label is 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return bad(
                    "labels are letters, digits, '-' and '_', not starting or ending with '-'",
                );
            }
        }
        // No top-level domain starts with a digit; this is also what tells an address (a CIDR
        // rule) from a name.
        if !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            return bad("the last label starts with a letter (an address is a CIDR rule)");
        }
        Ok(Self(lower))
    }
}

impl fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_wire_type {
    ($ty:ty, $pattern:expr, $desc:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                use utoipa::openapi::schema::{ObjectBuilder, Type};
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .max_length(Some(MAX_DOMAIN_LEN))
                    .description(Some($desc))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}

/// The wire form of [`Ipv4Cidr`], exactly what its `FromStr` accepts: a bare address, or for
/// each prefix length the addresses whose bits past it are zero (the octet the prefix ends in
/// is a multiple of 2^(bits left), the octets after it 0).
fn cidr_pattern() -> String {
    const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    let mut alternatives = vec![format!(r"{OCTET}(\.{OCTET}){{3}}(/32)?")];
    for prefix in 0..32u32 {
        let (whole, bits) = (prefix / 8, prefix % 8);
        let step = 1usize << (8 - bits);
        let boundary: Vec<String> = (0..256).step_by(step).map(|n| n.to_string()).collect();
        alternatives.push(format!(
            "{}({}){}/{prefix}",
            format!(r"{OCTET}\.").repeat(whole as usize),
            boundary.join("|"),
            r"\.0".repeat(3 - whole as usize),
        ));
    }
    format!("^({})$", alternatives.join("|"))
}

string_wire_type!(
    Ipv4Cidr,
    cidr_pattern(),
    "An IPv4 network ADDR/PREFIX with no host bits set; a bare address is a /32"
);
/// The wire form of [`DomainPattern`]: exactly what its `FromStr` accepts, with the length bound
/// (`maxLength`) on the side.
const DOMAIN_PATTERN: &str = r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$";

string_wire_type!(
    DomainPattern,
    DOMAIN_PATTERN,
    "A domain name, or *.NAME for its subdomains"
);

/// Where a VM may send traffic beyond its gateway (DNS to the gateway is always answered, under
/// the same policy).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "mode",
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "EgressWire"
)]
pub enum EgressPolicy {
    /// Anything out of the uplink.
    #[default]
    AllowAll,
    /// Nothing, not even DNS answers.
    DenyAll,
    /// Only these networks, and the addresses nexusd's resolver returned to this VM for these
    /// names (for as long as the record's TTL).
    Allow {
        #[serde(default)]
        cidrs: Vec<Ipv4Cidr>,
        #[serde(default)]
        domains: Vec<DomainPattern>,
    },
}

/// What [`EgressPolicy`] is read from: serde lets a unit variant of an internally tagged enum
/// carry any other keys, so `{"mode": "allow-all", "domains": [...]}` would pass silently.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressWire {
    mode: EgressMode,
    cidrs: Option<Vec<Ipv4Cidr>>,
    domains: Option<Vec<DomainPattern>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum EgressMode {
    AllowAll,
    DenyAll,
    Allow,
}

impl TryFrom<EgressWire> for EgressPolicy {
    type Error = String;
    fn try_from(w: EgressWire) -> Result<Self, String> {
        match (w.mode, w.cidrs, w.domains) {
            (EgressMode::Allow, cidrs, domains) => Ok(Self::Allow {
                cidrs: cidrs.unwrap_or_default(),
                domains: domains.unwrap_or_default(),
            }),
            (EgressMode::AllowAll, None, None) => Ok(Self::AllowAll),
            (EgressMode::DenyAll, None, None) => Ok(Self::DenyAll),
            _ => Err("only mode `allow` takes `cidrs` and `domains`".into()),
        }
    }
}

/// Written out because the derived schema of an internally tagged enum leaves out
/// `additionalProperties: false`, which `deny_unknown_fields` enforces.
impl utoipa::PartialSchema for EgressPolicy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Type,
        };
        let variant = |mode: &str, description: &str| {
            ObjectBuilder::new()
                .description(Some(description))
                .property(
                    "mode",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([mode])),
                )
                .required("mode")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        };
        let list = |item: &str, max: usize| {
            ArrayBuilder::new()
                .items(utoipa::openapi::Ref::from_schema_name(item))
                .max_items(Some(max))
        };
        OneOfBuilder::new()
            .item(variant("allow-all", "Anything out of the uplink."))
            .item(variant("deny-all", "Nothing, not even DNS answers."))
            .item(
                variant(
                    "allow",
                    "Only these networks, and the addresses nexusd's resolver returned to this \
                     VM for these names (for as long as the record's TTL).",
                )
                .property("cidrs", list("Ipv4Cidr", MAX_EGRESS_CIDRS))
                .property("domains", list("DomainPattern", MAX_EGRESS_DOMAINS)),
            )
            .description(Some(
                "Where a VM may send traffic beyond its gateway (DNS to the gateway is always \
                 answered, under the same policy).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for EgressPolicy {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        for (name, schema) in [
            ("Ipv4Cidr", <Ipv4Cidr as utoipa::PartialSchema>::schema()),
            (
                "DomainPattern",
                <DomainPattern as utoipa::PartialSchema>::schema(),
            ),
        ] {
            schemas.push((name.into(), schema));
        }
    }
}

impl EgressPolicy {
    /// The policy that flags or tool arguments ask for (deny everything, or allow these networks
    /// and names); `None` when they ask for nothing, so the daemon's default applies.
    pub fn from_choices(
        deny: bool,
        cidrs: Vec<Ipv4Cidr>,
        domains: Vec<DomainPattern>,
    ) -> Option<Self> {
        if deny {
            Some(Self::DenyAll)
        } else if cidrs.is_empty() && domains.is_empty() {
            None
        } else {
            Some(Self::Allow { cidrs, domains })
        }
    }

    /// Bounds the lists and removes duplicates (keeping order).
    pub fn normalized(self) -> Result<Self, String> {
        match self {
            Self::Allow { cidrs, domains } => {
                if cidrs.len() > MAX_EGRESS_CIDRS {
                    return Err(format!("at most {MAX_EGRESS_CIDRS} CIDRs"));
                }
                if domains.len() > MAX_EGRESS_DOMAINS {
                    return Err(format!("at most {MAX_EGRESS_DOMAINS} domains"));
                }
                Ok(Self::Allow {
                    cidrs: dedup(cidrs),
                    domains: dedup(domains),
                })
            }
            other => Ok(other),
        }
    }

    /// Whether DNS queries for `name` are answered.
    pub fn allows_name(&self, name: &str) -> bool {
        match self {
            Self::AllowAll => true,
            Self::DenyAll => false,
            Self::Allow { domains, .. } => domains.iter().any(|d| d.matches(name)),
        }
    }

    pub fn summary(&self) -> String {
        match self {
            Self::AllowAll => "allow-all".into(),
            Self::DenyAll => "deny-all".into(),
            Self::Allow { cidrs, domains } => {
                let all: Vec<String> = cidrs
                    .iter()
                    .map(ToString::to_string)
                    .chain(domains.iter().map(ToString::to_string))
                    .collect();
                format!("allow {}", all.join(","))
            }
        }
    }
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// A VM's network, as its record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmNetwork {
    pub mode: NetworkMode,
    /// The VM's address (`nat` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "ipv4")]
    pub ip: Option<Ipv4Addr>,
    /// The subnet's prefix length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "ipv4")]
    pub gateway: Option<Ipv4Addr>,
    /// `aa:bb:cc:dd:ee:ff`, locally administered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host's tap device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default)]
    pub publish: Vec<Publish>,
    pub egress: EgressPolicy,
}

/// Body of `PATCH /v1/vms/{vm}/network`: the new egress policy, applied at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVmNetwork {
    pub egress: EgressPolicy,
}

/// One VM on the bridge, in [`NetworkInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkVm {
    pub name: String,
    #[schema(value_type = String, format = "ipv4")]
    pub ip: Ipv4Addr,
    pub mac: String,
    pub tap: String,
    /// Whether the tap exists on the host now.
    pub tap_present: bool,
}

/// Body of `GET /v1/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkInfo {
    pub bridge: String,
    #[schema(value_type = String)]
    pub subnet: Ipv4Cidr,
    #[schema(value_type = String, format = "ipv4")]
    pub gateway: Ipv4Addr,
    /// The interface NAT leaves through (configured, or that of the default route).
    pub uplink: Option<String>,
    /// The nftables table nexusd owns (family `inet`; a `bridge` table of the same name guards
    /// the VMs' source addresses).
    pub table: String,
    pub mtu: u32,
    /// Whether the bridge, the table and the resolver are up now.
    pub up: bool,
    /// Upstream DNS servers the resolver forwards to.
    pub dns_upstream: Vec<String>,
    pub vms: Vec<NetworkVm>,
}

/// Body of `POST /v1/network/gc` and `POST /v1/network/down`: what was removed from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkCleanup {
    pub removed: Vec<String>,
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
