//! The agent's settings from the kernel command line (`nexus.hostname=`, `nexus.ip=`, `nexus.gw=`,
//! `nexus.mtu=`, `nexus.dns=`).
//!
//! The host passes per-VM settings on the command line because it is the one channel that exists
//! before any device or network is up.

use std::net::Ipv4Addr;

/// Settings the host passed on the kernel command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    pub hostname: Option<String>,
    /// Address and prefix length for the first network interface.
    pub ip: Option<(Ipv4Addr, u8)>,
    pub gateway: Option<Ipv4Addr>,
    /// MTU of that interface (576..=9000).
    pub mtu: Option<u32>,
    /// Name servers for /etc/resolv.conf (at most 3, comma-separated on the command line).
    pub dns: Vec<Ipv4Addr>,
}

impl BootConfig {
    /// Parses a kernel command line; unknown or malformed `nexus.*` values are ignored.
    pub fn parse(cmdline: &str) -> Self {
        let mut cfg = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "nexus.hostname" if valid_hostname(value) => cfg.hostname = Some(value.to_string()),
                "nexus.ip" => cfg.ip = parse_cidr(value),
                "nexus.gw" => cfg.gateway = value.parse().ok(),
                "nexus.mtu" => {
                    cfg.mtu = value.parse().ok().filter(|m| (576..=9000).contains(m));
                }
                "nexus.dns" => {
                    cfg.dns = value
                        .split(',')
                        .filter_map(|a| a.parse().ok())
                        .take(3)
                        .collect();
                }
                _ => {}
            }
        }
        cfg
    }
}

fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn parse_cidr(value: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = value.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hostname_ip_and_gateway() {
        let cfg = BootConfig::parse(
            "console=ttyS0 nexus.hostname=vm-1 nexus.ip=10.1.0.5/24 nexus.gw=10.1.0.1 nexus.mtu=1400 nexus.dns=10.1.0.1,x",
        );
        assert_eq!(
            cfg,
            BootConfig {
                hostname: Some("vm-1".into()),
                ip: Some((Ipv4Addr::new(10, 1, 0, 5), 24)),
                gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
                mtu: Some(1400),
                dns: vec![Ipv4Addr::new(10, 1, 0, 1)],
            }
        );
    }

    #[test]
    fn ignores_invalid_hostname() {
        assert_eq!(BootConfig::parse("nexus.hostname=a/b").hostname, None);
    }

    #[test]
    fn ignores_prefix_over_32() {
        assert_eq!(BootConfig::parse("nexus.ip=10.0.0.1/33").ip, None);
    }
}
