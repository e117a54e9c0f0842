//! The schema of `nexus.toml`. Every key here can also be set by a `nexusd` flag; flags win.
//! Unknown keys and bad values are errors that name the key, so a typo never goes unnoticed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// How `nexusd` formats its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    #[default]
    Auto,
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (auto, human, json)")),
        }
    }
}

/// The contents of `nexus.toml`. All keys are optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the API socket (default from [`crate::paths::Paths`]).
    pub socket: Option<PathBuf>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Log filter in `tracing` env-filter syntax, such as `info` or `nexusd=debug`.
    pub log_level: Option<String>,
    /// Optional TCP listener (requires a bearer token). Loopback unless you mean otherwise.
    pub tcp_listen: Option<SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    pub tcp_token_file: Option<PathBuf>,
    /// PEM certificate chain for the TCP listener; with `tls_key_file`, the listener speaks TLS.
    /// Required when `tcp_listen` is not a loopback address.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Most TCP connections open at once (1..=65536, default 256); more are closed at accept.
    pub tcp_max_connections: Option<usize>,
    /// Seconds a TCP client gets to send a request's headers (1..=600, default 10); an idle or
    /// slow connection is closed after that.
    pub tcp_header_timeout_secs: Option<u64>,
    /// Optional E2B-compatible listener (plain HTTP, loopback only; off unless set): the E2B SDK
    /// drives Nexus VMs through it with `E2B_API_URL` and `E2B_SANDBOX_URL` pointing here and a
    /// managed token (`nexusctl token create`) as `E2B_API_KEY`.
    pub e2b_listen: Option<SocketAddr>,
    /// Absolute host directories under which API clients may name paths (image import). Unset:
    /// none over TCP, and over the Unix socket anything the connecting user can read.
    pub import_roots: Option<Vec<PathBuf>>,
    /// Most entries (files, directories, links) a directory import may hold (1..=100,000,000;
    /// default 1,000,000); a bigger tree is refused before anything is built.
    pub import_max_entries: Option<u64>,
    /// Most bytes a directory import may hold (`"64G"` or bytes; default 64 GiB), counted both as
    /// allocated on disk and as apparent size, so a tree of sparse files cannot exceed it.
    pub import_max_bytes: Option<ByteSize>,
    /// Seconds an image import may take (1..=86400, default 1800); past it the build is killed.
    pub import_timeout_secs: Option<u64>,
    /// Template builds that may run at once (1..=64, default 2); more wait queued.
    pub max_concurrent_builds: Option<usize>,
    /// Images of each template's builds kept (0..=1000, default 3): after a build succeeds, the
    /// template's older built images past the newest this many are deleted unless drives use them.
    pub build_images_keep: Option<u32>,
    /// Seconds to let in-flight requests finish at shutdown (0..=600).
    pub shutdown_grace_secs: Option<u64>,
    /// VMM backend: `auto` (Firecracker where it and KVM work, else QEMU), `firecracker`, `qemu`.
    pub vmm: Option<String>,
    /// Seconds a booting VM gets to answer the agent handshake (1..=600).
    pub boot_timeout_secs: Option<u64>,
    /// Seconds a stopping guest gets to power off before the VMM is terminated (1..=600).
    pub stop_timeout_secs: Option<u64>,
    /// Stop every VM when nexusd stops (default: VMs keep running and are re-adopted).
    pub stop_vms_on_shutdown: Option<bool>,
    /// Directory holding the guest kernel package (`linux-image-*-cloud-amd64_*.deb`).
    pub kernel_dir: Option<PathBuf>,
    /// The statically linked guest agent (`nexus-agent`).
    pub agent_binary: Option<PathBuf>,
    /// `qemu-system-x86_64` to run.
    pub qemu_binary: Option<PathBuf>,
    /// `vhost-device-vsock` to run.
    pub vhost_vsock_binary: Option<PathBuf>,
    /// `firecracker` to run.
    pub firecracker_binary: Option<PathBuf>,
    /// A Firecracker-ready guest kernel (uncompressed `vmlinux`, virtio-mmio built in). Without
    /// one, `vmm = "auto"` uses QEMU even where Firecracker and KVM work.
    pub firecracker_kernel: Option<PathBuf>,
    /// Nexus's own guest kernel: the ELF `vmlinux` of a kernel build (everything built in, PVH
    /// entry). QEMU boots it without an initramfs (root drive mounted by the kernel, the agent
    /// `/sbin/nexus-agent` of the image as PID 1); Firecracker too when `firecracker_kernel` is
    /// unset. Unset: Debian's cloud kernel with a generated initramfs.
    pub guest_kernel: Option<PathBuf>,
    /// The kernel build cache of the `kernel-build` provider: one directory per set of build
    /// inputs, so building the same inputs again is a cache hit. Default
    /// `<data>/assets/kernel-build`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_build_dir: Option<PathBuf>,
    /// Firecracker's `jailer`. Unset: looked for next to the Firecracker binary, then in
    /// `/usr/local/bin` and `/usr/bin`; when one is found, Firecracker is started through it.
    pub jailer_binary: Option<PathBuf>,
    /// The jailer's `--chroot-base-dir` (default `/srv/jailer`, the jailer's own default).
    pub jailer_chroot_base: Option<PathBuf>,
    /// Console log size (bytes) past which it is rotated (4096..=1 GiB).
    pub console_max_bytes: Option<u64>,
    /// Storage pool: an existing directory on btrfs, used as is. Unset: the embedded pool, a sparse
    /// image file under the data directory that nexusd formats and loop-mounts (needs root).
    pub pool: Option<PathBuf>,
    /// Size of the embedded pool's sparse image (`"20G"` or bytes; default 20 GiB, at least 256M).
    pub pool_size: Option<ByteSize>,
    /// Run every VMM and helper in a jail (per-VM uid, mount namespace, cgroup). Default true;
    /// `false` runs them as nexusd's unconfined children, with a warning at every start.
    pub jail: Option<bool>,
    /// First uid/gid of the jail range: a VM runs as `jail_uid_base + its vsock CID`.
    pub jail_uid_base: Option<u32>,
    /// Memory a VM's processes may use on top of the guest's memory (`"256M"` or bytes).
    pub jail_memory_overhead: Option<ByteSize>,
    /// Most processes and threads in a VM's cgroup (16..=65536).
    pub jail_pids_max: Option<u64>,
    /// CPU weight of a VM's cgroup (1..=10000; 100 is an ordinary process's share).
    pub jail_cpu_weight: Option<u32>,
    /// Parent of the per-VM cgroups, relative to each cgroup hierarchy's root.
    pub jail_cgroup_parent: Option<String>,
    /// Network of new VMs that do not ask for one: `nat` (default) or `none`.
    pub network: Option<crate::api::NetworkMode>,
    /// The host bridge VMs are attached to (at most 15 bytes; default `nexus0`). nexusd's
    /// nftables tables carry the same name.
    pub network_bridge: Option<String>,
    /// The VMs' IPv4 subnet (prefix 8..=28). Unset: the first of a few RFC 1918 /16s that
    /// overlaps no route of the host. A configured subnet that overlaps one is refused.
    pub network_subnet: Option<crate::api::Ipv4Cidr>,
    /// The interface NAT leaves through. Unset: that of the host's default route.
    pub network_uplink: Option<String>,
    /// MTU of the bridge, the taps and the guests (576..=9000, default 1500).
    pub network_mtu: Option<u32>,
    /// Upstream DNS servers (`ADDR` or `ADDR:PORT`) of the VMs' resolver. Unset: the
    /// `nameserver`s of the host's /etc/resolv.conf.
    pub network_dns: Option<Vec<String>>,
    /// Egress policy of new VMs that do not give one (default `{ mode = "allow-all" }`).
    pub network_egress: Option<crate::api::EgressPolicy>,
    /// OpenPGP keys that asset pipelines may trust, pinned by fingerprint:
    /// `{ "<40 or 64 hex digits>" = "/path/to/key.asc" }`. A signature stage names fingerprints;
    /// a key file whose fingerprint differs from its pin is refused.
    pub asset_keys: Option<std::collections::BTreeMap<String, PathBuf>>,
    /// Base URLs replacing providers' own: `{ "<provider>" = "https://mirror/..." }`, or a
    /// `file:///dir` for an air-gapped directory.
    pub asset_mirrors: Option<std::collections::BTreeMap<String, String>>,
    /// Largest file a pipeline downloads (`"8G"` or bytes; default 8 GiB, at least 1M).
    pub asset_max_download_bytes: Option<ByteSize>,
    /// Most bytes a pipeline decompresses, unpacks or converts one input into (default 16 GiB,
    /// at least 1M): past it the stage fails as a decompression bomb.
    pub asset_max_unpacked_bytes: Option<ByteSize>,
    /// Most entries of an archive a pipeline unpacks (1..=10,000,000; default 200,000).
    pub asset_max_entries: Option<u64>,
    /// Seconds a download may go without receiving a byte (1..=3600, default 60).
    pub asset_fetch_idle_timeout_secs: Option<u64>,
    /// Seconds one download may take in all (1..=604800, default 21600).
    pub asset_fetch_timeout_secs: Option<u64>,
    /// Characters of command output an MCP `run_command` result carries (1000..=200000,
    /// default 20000); longer output is cut in the middle and saved whole in a file in the VM.
    /// The result carries it twice (text and structured content) and clients bound a message
    /// (the Python SDK at 1 MiB), hence the upper bound.
    pub mcp_output_max_chars: Option<usize>,
}

/// Default of `mcp_output_max_chars`.
pub const DEFAULT_MCP_OUTPUT_MAX_CHARS: usize = 20_000;
/// Accepted values of `mcp_output_max_chars`.
pub const MCP_OUTPUT_MAX_CHARS_RANGE: std::ops::RangeInclusive<usize> = 1_000..=200_000;

/// Parses an upstream DNS server: `ADDR` (port 53) or `ADDR:PORT`.
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address or ADDR:PORT"))
}

/// Whether `name` is a usable interface name (1..=15 bytes of letters, digits, `-`, `_`, `.`).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A config file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}` in {path}: {message}")]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Smallest embedded pool image accepted (`mkfs.btrfs` needs some room for its own metadata).
pub const MIN_POOL_SIZE: u64 = 256 << 20;

/// Upper bound of `import_max_entries`.
pub const MAX_IMPORT_ENTRIES: u64 = 100_000_000;

/// Upper bound of `shutdown_grace_secs`.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 600;

impl Config {
    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the `network*` keys; the error names the key.
    fn validate_network(&self) -> Result<(), (&'static str, String)> {
        if let Some(b) = &self.network_bridge
            && !valid_ifname(b)
        {
            return Err((
                "network_bridge",
                format!("{b:?} is not an interface name (1 to 15 letters, digits, '-', '_', '.')"),
            ));
        }
        if let Some(u) = &self.network_uplink
            && !valid_ifname(u)
        {
            return Err(("network_uplink", format!("{u:?} is not an interface name")));
        }
        if let Some(net) = &self.network_subnet
            && !(8..=28).contains(&net.prefix())
        {
            return Err((
                "network_subnet",
                format!("{net}: the prefix must be 8..=28"),
            ));
        }
        if let Some(mtu) = self.network_mtu
            && !(576..=9000).contains(&mtu)
        {
            return Err(("network_mtu", format!("{mtu} is outside 576..=9000")));
        }
        for server in self.network_dns.iter().flatten() {
            parse_dns_server(server).map_err(|e| ("network_dns", e))?;
        }
        if let Some(egress) = &self.network_egress {
            egress
                .clone()
                .normalized()
                .map_err(|e| ("network_egress", e))?;
        }
        Ok(())
    }

    /// Checks the `asset_*` keys; the error names the key.
    fn validate_assets(&self) -> Result<(), (&'static str, String)> {
        for (fpr, file) in self.asset_keys.iter().flatten() {
            if !crate::api::pipeline::valid_fingerprint(fpr) {
                return Err((
                    "asset_keys",
                    format!("{fpr:?} is not a fingerprint (40 or 64 hex digits)"),
                ));
            }
            if !file.is_absolute() {
                return Err((
                    "asset_keys",
                    format!("{} is not an absolute path", file.display()),
                ));
            }
        }
        for (provider, url) in self.asset_mirrors.iter().flatten() {
            crate::names::validate_name(provider)
                .map_err(|e| ("asset_mirrors", format!("{provider:?}: {e}")))?;
            crate::api::pipeline::validate_var("base_url", url)
                .map_err(|e| ("asset_mirrors", e))?;
            if !["http://", "https://", "file:///"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return Err((
                    "asset_mirrors",
                    format!("{url:?} is not an http://, https:// or file:/// URL"),
                ));
            }
        }
        for (key, size) in [
            ("asset_max_download_bytes", self.asset_max_download_bytes),
            ("asset_max_unpacked_bytes", self.asset_max_unpacked_bytes),
        ] {
            if let Some(size) = size
                && size.bytes() < 1 << 20
            {
                return Err((key, format!("{} bytes is less than 1M", size.bytes())));
            }
        }
        for (key, value, max) in [
            ("asset_max_entries", self.asset_max_entries, 10_000_000),
            (
                "asset_fetch_idle_timeout_secs",
                self.asset_fetch_idle_timeout_secs,
                3600,
            ),
            (
                "asset_fetch_timeout_secs",
                self.asset_fetch_timeout_secs,
                604_800,
            ),
        ] {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                return Err((key, format!("{v} is outside 1..={max}")));
            }
        }
        Ok(())
    }

    /// Checks values that the types alone do not bound.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, message: String| ConfigError::Value {
            path: path.to_owned(),
            key,
            message,
        };
        if let Some(g) = self.shutdown_grace_secs
            && g > MAX_SHUTDOWN_GRACE_SECS
        {
            return Err(bad(
                "shutdown_grace_secs",
                format!("{g} is more than {MAX_SHUTDOWN_GRACE_SECS}"),
            ));
        }
        if self.tcp_listen.is_some() && self.tcp_token_file.is_none() {
            return Err(bad(
                "tcp_listen",
                "a TCP listener needs a bearer token: set `tcp_token_file` too".into(),
            ));
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => {
                return Err(bad(
                    "tls_key_file",
                    "`tls_cert_file` needs `tls_key_file` too".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "tls_cert_file",
                    "`tls_key_file` needs `tls_cert_file` too".into(),
                ));
            }
            _ => {}
        }
        if let Some(addr) = self.tcp_listen
            && !addr.ip().is_loopback()
            && self.tls_cert_file.is_none()
        {
            return Err(bad(
                "tcp_listen",
                format!(
                    "{addr} is not a loopback address: a TCP listener reachable from other hosts needs TLS; set `tls_cert_file` and `tls_key_file` (or listen on 127.0.0.1)"
                ),
            ));
        }
        if let Some(addr) = self.e2b_listen
            && !addr.ip().is_loopback()
        {
            return Err(bad(
                "e2b_listen",
                format!(
                    "{addr} is not a loopback address: the E2B listener speaks plain HTTP, so it listens on loopback only (put a TLS proxy in front to reach it from elsewhere)"
                ),
            ));
        }
        if let Some(n) = self.tcp_max_connections
            && !(1..=65536).contains(&n)
        {
            return Err(bad(
                "tcp_max_connections",
                format!("{n} is outside 1..=65536"),
            ));
        }
        if let Some(roots) = &self.import_roots {
            for root in roots {
                if !root.is_absolute() {
                    return Err(bad(
                        "import_roots",
                        format!("{} is not an absolute path", root.display()),
                    ));
                }
            }
        }
        if let Some(n) = self.max_concurrent_builds
            && !(1..=64).contains(&n)
        {
            return Err(bad(
                "max_concurrent_builds",
                format!("{n} is outside 1..=64"),
            ));
        }
        if let Some(n) = self.build_images_keep
            && n > 1000
        {
            return Err(bad("build_images_keep", format!("{n} is outside 0..=1000")));
        }
        if let Some(n) = self.import_max_entries
            && !(1..=MAX_IMPORT_ENTRIES).contains(&n)
        {
            return Err(bad(
                "import_max_entries",
                format!("{n} is outside 1..={MAX_IMPORT_ENTRIES}"),
            ));
        }
        if let Some(size) = self.import_max_bytes
            && size.bytes() < 1 << 20
        {
            return Err(bad(
                "import_max_bytes",
                format!("{} bytes is less than 1M", size.bytes()),
            ));
        }
        if let Some(v) = self.import_timeout_secs
            && !(1..=86400).contains(&v)
        {
            return Err(bad(
                "import_timeout_secs",
                format!("{v} is outside 1..=86400"),
            ));
        }
        if let Some(vmm) = &self.vmm
            && !["auto", "firecracker", "qemu"].contains(&vmm.as_str())
        {
            return Err(bad(
                "vmm",
                format!("{vmm:?} is not one of auto, firecracker, qemu"),
            ));
        }
        for (key, value) in [
            ("boot_timeout_secs", self.boot_timeout_secs),
            ("stop_timeout_secs", self.stop_timeout_secs),
            ("tcp_header_timeout_secs", self.tcp_header_timeout_secs),
        ] {
            if let Some(v) = value
                && !(1..=600).contains(&v)
            {
                return Err(bad(key, format!("{v} is outside 1..=600")));
            }
        }
        if let Some(v) = self.mcp_output_max_chars
            && !MCP_OUTPUT_MAX_CHARS_RANGE.contains(&v)
        {
            return Err(bad(
                "mcp_output_max_chars",
                format!("{v} is outside 1000..=200000"),
            ));
        }
        if let Some(v) = self.console_max_bytes
            && !(4096..=1 << 30).contains(&v)
        {
            return Err(bad(
                "console_max_bytes",
                format!("{v} is outside 4096..=1073741824"),
            ));
        }
        if let Some(size) = self.pool_size
            && size.bytes() < MIN_POOL_SIZE
        {
            return Err(bad(
                "pool_size",
                format!("{} bytes is less than the minimum of 256M", size.bytes()),
            ));
        }
        if let Some(pool) = &self.pool
            && !pool.is_absolute()
        {
            return Err(bad(
                "pool",
                format!("{} is not an absolute path", pool.display()),
            ));
        }
        if let Some(v) = self.jail_uid_base
            && !(1000..=u32::MAX - 70_000).contains(&v)
        {
            return Err(bad(
                "jail_uid_base",
                format!("{v} is outside 1000..={}", u32::MAX - 70_000),
            ));
        }
        if let Some(v) = self.jail_pids_max
            && !(16..=65536).contains(&v)
        {
            return Err(bad("jail_pids_max", format!("{v} is outside 16..=65536")));
        }
        if let Some(v) = self.jail_cpu_weight
            && !(1..=10000).contains(&v)
        {
            return Err(bad("jail_cpu_weight", format!("{v} is outside 1..=10000")));
        }
        if let Some(v) = self.jail_memory_overhead
            && v.bytes() < 32 << 20
        {
            return Err(bad(
                "jail_memory_overhead",
                format!("{} bytes is less than 32M", v.bytes()),
            ));
        }
        if let Some(parent) = &self.jail_cgroup_parent
            && !parent.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
        {
            return Err(bad(
                "jail_cgroup_parent",
                format!("{parent:?} must be relative names of letters, digits, '.', '_', '-'"),
            ));
        }
        self.validate_network()
            .map_err(|(key, msg)| bad(key, msg))?;
        self.validate_assets().map_err(|(key, msg)| bad(key, msg))?;
        if let Some(level) = &self.log_level
            && level.trim().is_empty()
        {
            return Err(bad("log_level", "must not be empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("nexus.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("sokcet = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("sokcet"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = parse("log_format = \"xml\"").unwrap_err().to_string();
        assert!(err.contains("log_format"), "{err}");
        let err = parse("shutdown_grace_secs = 9000").unwrap_err().to_string();
        assert!(err.contains("shutdown_grace_secs"), "{err}");
    }

    #[test]
    fn unknown_vmm_is_named() {
        let err = parse("vmm = \"xen\"").unwrap_err().to_string();
        assert!(err.contains("vmm"), "{err}");
    }

    #[test]
    fn pool_size_accepts_suffixes_and_names_the_key_when_bad() {
        assert_eq!(
            parse("pool_size = \"20G\"").unwrap().pool_size,
            Some(ByteSize(20 << 30))
        );
        let err = parse("pool_size = \"20X\"").unwrap_err().to_string();
        assert!(err.contains("pool_size"), "{err}");
        let err = parse("pool_size = \"1M\"").unwrap_err().to_string();
        assert!(err.contains("pool_size"), "{err}");
        let err = parse("pool = \"rel/dir\"").unwrap_err().to_string();
        assert!(err.contains("`pool`"), "{err}");
    }

    #[test]
    fn jail_keys_are_bounded_and_named() {
        for bad in [
            "jail_pids_max = 1",
            "network_bridge = \"a-very-long-bridge-name\"",
            "network_subnet = \"10.0.0.1/16\"",
            "network_subnet = \"10.0.0.0/30\"",
            "network_mtu = 100",
            "network_dns = [\"dns.example\"]",
            "network = \"bridge\"",
            "network_egress = { mode = \"allow\", cidrs = [\"1.2.3.4/40\"] }",
            "jail_cpu_weight = 0",
            "jail_uid_base = 0",
            "jail_memory_overhead = \"1M\"",
            "jail_cgroup_parent = \"../escape\"",
            "jail_cgroup_parent = \"/abs\"",
        ] {
            let key = bad.split(' ').next().unwrap();
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(parse("jail = false\njail_cgroup_parent = \"machine.slice/nexus\"").is_ok());
    }

    #[test]
    fn network_keys_parse() {
        let cfg = parse(
            "network = \"none\"\nnetwork_bridge = \"nx-test0\"\nnetwork_subnet = \"10.77.0.0/24\"\n\
             network_dns = [\"192.0.2.1\", \"192.0.2.2:5353\"]\n\
             network_egress = { mode = \"allow\", domains = [\"*.pypi.org\"] }",
        )
        .unwrap();
        assert_eq!(cfg.network, Some(crate::api::NetworkMode::None));
        assert_eq!(
            parse_dns_server("192.0.2.2:5353").unwrap().to_string(),
            "192.0.2.2:5353"
        );
        assert_eq!(parse_dns_server("192.0.2.1").unwrap().port(), 53);
    }

    #[test]
    fn non_loopback_tcp_without_tls_is_refused_naming_the_tls_keys() {
        let err = parse("tcp_listen = \"0.0.0.0:7000\"\ntcp_token_file = \"/t\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls_cert_file") && err.contains("tls_key_file"),
            "{err}"
        );
        let ok = "tcp_listen = \"0.0.0.0:7000\"\ntcp_token_file = \"/t\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"";
        assert!(parse(ok).is_ok());
    }

    #[test]
    fn a_tls_cert_without_key_names_the_missing_key() {
        let err = parse("tls_cert_file = \"/c\"").unwrap_err().to_string();
        assert!(err.contains("tls_key_file"), "{err}");
    }

    #[test]
    fn import_bounds_are_checked_and_name_their_key() {
        for (text, key) in [
            ("import_max_entries = 0", "import_max_entries"),
            ("import_max_bytes = \"1K\"", "import_max_bytes"),
            ("import_timeout_secs = 0", "import_timeout_secs"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let cfg =
            parse("import_max_entries = 10\nimport_max_bytes = \"2G\"\nimport_timeout_secs = 5")
                .unwrap();
        assert_eq!(
            (
                cfg.import_max_entries,
                cfg.import_max_bytes,
                cfg.import_timeout_secs
            ),
            (Some(10), Some(ByteSize(2 << 30)), Some(5))
        );
    }

    #[test]
    fn relative_import_roots_are_refused() {
        let err = parse("import_roots = [\"/srv\", \"rel\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("import_roots"), "{err}");
        let cfg = parse("import_roots = [\"/srv/images\"]").unwrap();
        assert_eq!(cfg.import_roots, Some(vec![PathBuf::from("/srv/images")]));
    }

    #[test]
    fn asset_keys_are_checked_and_named() {
        let fpr = "A".repeat(40);
        assert!(parse(&format!("[asset_keys]\n\"{fpr}\" = \"/etc/nexus/k.asc\"\n")).is_ok());
        let bad_fpr = parse("[asset_keys]\n\"xyz\" = \"/k.asc\"\n").unwrap_err();
        let relative = parse(&format!("[asset_keys]\n\"{fpr}\" = \"k.asc\"\n")).unwrap_err();
        assert!(bad_fpr.to_string().contains("asset_keys"), "{bad_fpr}");
        assert!(relative.to_string().contains("asset_keys"), "{relative}");
    }

    #[test]
    fn asset_mirrors_must_be_urls_of_named_providers() {
        assert!(parse("[asset_mirrors]\nfirecracker-release = \"file:///srv/fc\"\n").is_ok());
        let err = parse("[asset_mirrors]\nfirecracker-release = \"ftp://x\"\n").unwrap_err();
        assert!(err.to_string().contains("asset_mirrors"), "{err}");
    }

    #[test]
    fn asset_bounds_are_checked_and_named() {
        let err = parse("asset_fetch_idle_timeout_secs = 0\n").unwrap_err();
        assert!(
            err.to_string().contains("asset_fetch_idle_timeout_secs"),
            "{err}"
        );
        let err = parse("asset_max_unpacked_bytes = \"1K\"\n").unwrap_err();
        assert!(
            err.to_string().contains("asset_max_unpacked_bytes"),
            "{err}"
        );
    }

    #[test]
    fn tcp_without_token_is_refused() {
        let err = parse("tcp_listen = \"127.0.0.1:7000\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tcp_token_file"), "{err}");
    }
}
