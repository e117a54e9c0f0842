//! The two sysctls NAT needs (`net.ipv4.ip_forward`, and `route_localnet` on the bridge so DNAT
//! from 127.0.0.1 can leave through it), read and written under a root that is `/proc/sys` on a
//! host and a temporary directory in tests.

use std::io;
use std::path::{Path, PathBuf};

use super::link::valid_ifname;

/// Failures reading or writing a sysctl; they name the file.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {value:?}, not 0 or 1")]
    NotBoolean { path: PathBuf, value: String },
    #[error("invalid interface name {0:?}")]
    InvalidName(String),
}

/// The boolean sysctls of networking, under a root that is `/proc/sys` on a host (and whose `net/`
/// is that of the namespace of the thread that opens the file) and a temporary directory in tests.
#[derive(Debug, Clone)]
pub struct Sysctl {
    root: PathBuf,
}

impl Default for Sysctl {
    fn default() -> Self {
        Self::new("/proc/sys")
    }
}

impl Sysctl {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `net.ipv4.ip_forward`.
    pub fn ip_forward(&self) -> Result<bool, SysctlError> {
        read_bool(&self.root.join("net/ipv4/ip_forward"))
    }

    pub fn set_ip_forward(&self, on: bool) -> Result<(), SysctlError> {
        write_bool(&self.root.join("net/ipv4/ip_forward"), on)
    }

    /// `net.ipv4.conf.<ifname>.route_localnet`: lets DNAT from 127.0.0.1 leave through `ifname`.
    pub fn route_localnet(&self, ifname: &str) -> Result<bool, SysctlError> {
        read_bool(&self.localnet_path(ifname)?)
    }

    pub fn set_route_localnet(&self, ifname: &str, on: bool) -> Result<(), SysctlError> {
        write_bool(&self.localnet_path(ifname)?, on)
    }

    fn localnet_path(&self, ifname: &str) -> Result<PathBuf, SysctlError> {
        if !valid_ifname(ifname) {
            return Err(SysctlError::InvalidName(ifname.to_owned()));
        }
        Ok(self
            .root
            .join("net/ipv4/conf")
            .join(ifname)
            .join("route_localnet"))
    }
}

fn read_bool(path: &Path) -> Result<bool, SysctlError> {
    let value = std::fs::read_to_string(path).map_err(|source| SysctlError::Io {
        op: "reading",
        path: path.to_owned(),
        source,
    })?;
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => Err(SysctlError::NotBoolean {
            path: path.to_owned(),
            value: other.to_owned(),
        }),
    }
}

fn write_bool(path: &Path, on: bool) -> Result<(), SysctlError> {
    std::fs::write(path, if on { "1\n" } else { "0\n" }).map_err(|source| SysctlError::Io {
        op: "writing",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_read_and_write_under_the_given_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("net/ipv4/conf/nxbr0")).unwrap();
        std::fs::write(root.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        std::fs::write(
            root.path().join("net/ipv4/conf/nxbr0/route_localnet"),
            "0\n",
        )
        .unwrap();
        let sysctl = Sysctl::new(root.path());

        sysctl.set_ip_forward(true).unwrap();
        sysctl.set_route_localnet("nxbr0", true).unwrap();

        assert!(sysctl.ip_forward().unwrap());
        assert!(sysctl.route_localnet("nxbr0").unwrap());
        assert!(matches!(
            sysctl.route_localnet("../x"),
            Err(SysctlError::InvalidName(_))
        ));
    }

    #[test]
    fn a_sysctl_that_is_no_boolean_is_an_error_naming_the_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("net/ipv4")).unwrap();
        std::fs::write(root.path().join("net/ipv4/ip_forward"), "2\n").unwrap();

        let err = Sysctl::new(root.path()).ip_forward().unwrap_err();

        assert!(err.to_string().contains("net/ipv4/ip_forward"), "{err}");
    }
}
