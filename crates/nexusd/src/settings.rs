//! Command-line flags and the settings the daemon runs with: flags override `nexus.toml`, which
//! overrides the built-in defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use nexus_lib::config::{Config, ConfigError, LogFormat};
use nexus_lib::paths::{HOME_ENV, Paths};
use nexus_lib::size::ByteSize;

use crate::storage::PoolConfig;

/// Default cap on open TCP connections.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 256;
/// Default seconds a TCP client gets to send its request headers.
pub const DEFAULT_TCP_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default seconds for in-flight requests at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;

/// `nexusd` flags. Each config key has a flag of the same name.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "nexusd",
    version,
    about = "The Nexus daemon: one microVM per AI agent"
)]
pub struct Args {
    /// Put config, database, data and sockets under DIR.
    #[arg(long, env = HOME_ENV, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Config file (default: <home>/nexus.toml or $XDG_CONFIG_HOME/nexus/nexus.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API socket path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Log format: auto, human or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `nexusd=debug` (RUST_LOG also works).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Also listen on this TCP address (needs --tcp-token-file).
    #[arg(long, value_name = "ADDR")]
    pub tcp_listen: Option<SocketAddr>,
    /// File holding the bearer token for the TCP listener.
    #[arg(long, value_name = "FILE")]
    pub tcp_token_file: Option<PathBuf>,
    /// PEM certificate chain: the TCP listener speaks TLS (needs --tls-key-file).
    #[arg(long, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Most TCP connections open at once (default 256).
    #[arg(long, value_name = "N")]
    pub tcp_max_connections: Option<usize>,
    /// Seconds a TCP client gets to send a request's headers (default 10).
    #[arg(long, value_name = "SECS")]
    pub tcp_header_timeout_secs: Option<u64>,
    /// Serve the E2B-compatible API (control plane and envd) on this loopback address.
    #[arg(long, value_name = "ADDR")]
    pub e2b_listen: Option<SocketAddr>,
    /// Directories API clients may import from, comma-separated (default: none over TCP,
    /// whatever the connecting user can read over the Unix socket).
    #[arg(long, value_name = "DIR,...", value_delimiter = ',')]
    pub import_roots: Option<Vec<PathBuf>>,
    /// Most entries a directory import may hold (default 1000000).
    #[arg(long, value_name = "N")]
    pub import_max_entries: Option<u64>,
    /// Most bytes a directory import may hold, allocated or apparent, e.g. 64G (default 64G).
    #[arg(long, value_name = "SIZE")]
    pub import_max_bytes: Option<ByteSize>,
    /// Seconds an image import may take before it is stopped (default 1800).
    #[arg(long, value_name = "SECS")]
    pub import_timeout_secs: Option<u64>,
    /// Template builds that may run at once (default 2).
    #[arg(long, value_name = "N")]
    pub max_concurrent_builds: Option<usize>,
    /// Built images kept per template (default 3); older unused ones are deleted.
    #[arg(long, value_name = "N")]
    pub build_images_keep: Option<u32>,
    /// Seconds to let in-flight requests finish at shutdown.
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// VMM backend: auto, firecracker or qemu.
    #[arg(long, value_name = "BACKEND")]
    pub vmm: Option<String>,
    /// Seconds a booting VM gets to answer the agent handshake.
    #[arg(long, value_name = "SECS")]
    pub boot_timeout_secs: Option<u64>,
    /// Seconds a stopping guest gets to power off before the VMM is terminated.
    #[arg(long, value_name = "SECS")]
    pub stop_timeout_secs: Option<u64>,
    /// Stop every VM when nexusd stops.
    #[arg(long, value_name = "BOOL")]
    pub stop_vms_on_shutdown: Option<bool>,
    /// Directory holding the guest kernel .deb.
    #[arg(long, env = "NEXUS_KERNEL_DIR", value_name = "DIR")]
    pub kernel_dir: Option<PathBuf>,
    /// The static guest agent binary.
    #[arg(long, env = "NEXUS_AGENT_BIN", value_name = "FILE")]
    pub agent_binary: Option<PathBuf>,
    /// qemu-system-x86_64 binary.
    #[arg(long, value_name = "FILE")]
    pub qemu_binary: Option<PathBuf>,
    /// vhost-device-vsock binary.
    #[arg(long, value_name = "FILE")]
    pub vhost_vsock_binary: Option<PathBuf>,
    /// firecracker binary.
    #[arg(long, value_name = "FILE")]
    pub firecracker_binary: Option<PathBuf>,
    /// A Firecracker-ready vmlinux (needed for the firecracker backend).
    #[arg(long, value_name = "FILE")]
    pub firecracker_kernel: Option<PathBuf>,
    /// Nexus's built guest kernel (ELF vmlinux): booted without an initramfs.
    #[arg(long, env = "NEXUS_GUEST_KERNEL", value_name = "FILE")]
    pub guest_kernel: Option<PathBuf>,
    /// The kernel build cache (default <data>/assets/kernel-build).
    #[arg(long, env = "NEXUS_KERNEL_BUILD_DIR", value_name = "DIR")]
    pub kernel_build_dir: Option<PathBuf>,
    /// Firecracker's jailer binary (default: next to firecracker, /usr/local/bin, /usr/bin).
    #[arg(long, value_name = "FILE")]
    pub jailer_binary: Option<PathBuf>,
    /// The jailer's chroot base directory (default /srv/jailer).
    #[arg(long, value_name = "DIR")]
    pub jailer_chroot_base: Option<PathBuf>,
    /// Console log size (bytes) past which it is rotated.
    #[arg(long, value_name = "BYTES")]
    pub console_max_bytes: Option<u64>,
    /// Characters of command output an MCP result carries before it is cut (default 20000).
    #[arg(long, value_name = "CHARS")]
    pub mcp_output_max_chars: Option<usize>,
    /// Storage pool: an existing directory on btrfs (default: an embedded loop-mounted image).
    #[arg(long, value_name = "DIR")]
    pub pool: Option<PathBuf>,
    /// Size of the embedded pool image, e.g. 20G (default 20G).
    #[arg(long, value_name = "SIZE")]
    pub pool_size: Option<ByteSize>,
    /// Jail every VMM and helper (default true; false runs them unconfined).
    #[arg(long, value_name = "BOOL")]
    pub jail: Option<bool>,
    /// First uid/gid of the jail range (a VM runs as base + its vsock CID).
    #[arg(long, value_name = "UID")]
    pub jail_uid_base: Option<u32>,
    /// Memory a VM's processes may use beyond the guest's, e.g. 256M.
    #[arg(long, value_name = "SIZE")]
    pub jail_memory_overhead: Option<ByteSize>,
    /// Most processes and threads in a VM's cgroup.
    #[arg(long, value_name = "N")]
    pub jail_pids_max: Option<u64>,
    /// CPU weight of a VM's cgroup (1..=10000, default 100).
    #[arg(long, value_name = "WEIGHT")]
    pub jail_cpu_weight: Option<u32>,
    /// Parent of the per-VM cgroups (default nexus).
    #[arg(long, value_name = "NAME")]
    pub jail_cgroup_parent: Option<String>,
    /// Network of new VMs that do not ask for one: nat (default) or none.
    #[arg(long, value_name = "MODE")]
    pub network: Option<nexus_lib::api::NetworkMode>,
    /// Host bridge of the VMs (default nexus0).
    #[arg(long, value_name = "NAME")]
    pub network_bridge: Option<String>,
    /// The VMs' IPv4 subnet (default: a free RFC 1918 /16).
    #[arg(long, value_name = "CIDR")]
    pub network_subnet: Option<nexus_lib::api::Ipv4Cidr>,
    /// Interface NAT leaves through (default: that of the default route).
    #[arg(long, value_name = "IFACE")]
    pub network_uplink: Option<String>,
    /// MTU of the bridge, taps and guests (default 1500).
    #[arg(long, value_name = "BYTES")]
    pub network_mtu: Option<u32>,
    /// Upstream DNS server of the VMs' resolver, ADDR or ADDR:PORT (repeatable; default: the
    /// host's /etc/resolv.conf).
    #[arg(long, value_name = "ADDR")]
    pub network_dns: Option<Vec<String>>,
    /// Egress policy of new VMs, as JSON (default {"mode":"allow-all"}).
    #[arg(long, value_name = "JSON", value_parser = parse_egress_json)]
    pub network_egress: Option<nexus_lib::api::EgressPolicy>,
    /// OpenPGP keys asset pipelines may trust: FINGERPRINT=FILE, comma-separated.
    #[arg(long, value_name = "FPR=FILE,...", value_delimiter = ',', value_parser = parse_pair)]
    pub asset_keys: Option<Vec<(String, String)>>,
    /// Base URLs replacing providers' own: PROVIDER=URL, comma-separated.
    #[arg(long, value_name = "PROVIDER=URL,...", value_delimiter = ',', value_parser = parse_pair)]
    pub asset_mirrors: Option<Vec<(String, String)>>,
    /// Largest file a pipeline downloads, e.g. 8G (default 8G).
    #[arg(long, value_name = "SIZE")]
    pub asset_max_download_bytes: Option<ByteSize>,
    /// Most bytes a pipeline unpacks one input into, e.g. 16G (default 16G).
    #[arg(long, value_name = "SIZE")]
    pub asset_max_unpacked_bytes: Option<ByteSize>,
    /// Most entries of an archive a pipeline unpacks (default 200000).
    #[arg(long, value_name = "N")]
    pub asset_max_entries: Option<u64>,
    /// Seconds a download may go without receiving a byte (default 60).
    #[arg(long, value_name = "SECS")]
    pub asset_fetch_idle_timeout_secs: Option<u64>,
    /// Seconds one download may take in all (default 21600).
    #[arg(long, value_name = "SECS")]
    pub asset_fetch_timeout_secs: Option<u64>,
}

/// `KEY=VALUE`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn parse_egress_json(s: &str) -> Result<nexus_lib::api::EgressPolicy, String> {
    serde_json::from_str(s).map_err(|e| e.to_string())
}

/// Default directory of the guest kernel package (filled by scripts/setup.sh).
pub const DEFAULT_KERNEL_DIR: &str = "/var/cache/nexus/kernel";
/// Default seconds for a boot (TCG boots take ~2 s; generous for loaded hosts).
pub const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 60;
/// Default seconds for a guest to power off.
pub const DEFAULT_STOP_TIMEOUT_SECS: u64 = 10;
/// Default chroot base of Firecracker's jailer (the jailer's own default).
pub const DEFAULT_JAILER_CHROOT_BASE: &str = "/srv/jailer";
/// Default console log cap.
pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 4 << 20;

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub paths: Paths,
    pub log_format: LogFormat,
    pub log_level: String,
    pub tcp_listen: Option<SocketAddr>,
    pub tcp_token_file: Option<PathBuf>,
    /// Certificate chain and key files of the TCP listener's TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub tcp_max_connections: usize,
    pub tcp_header_timeout: Duration,
    pub e2b_listen: Option<SocketAddr>,
    pub import_roots: Option<Vec<PathBuf>>,
    pub import_limits: crate::images::ImportLimits,
    pub max_concurrent_builds: usize,
    pub build_images_keep: u32,
    pub shutdown_grace: Duration,
    pub vmm: crate::vmm::VmmChoice,
    pub boot_timeout: Duration,
    pub stop_timeout: Duration,
    pub stop_vms_on_shutdown: bool,
    pub kernel_dir: PathBuf,
    pub agent_binary: Option<PathBuf>,
    pub qemu_binary: PathBuf,
    pub vhost_vsock_binary: PathBuf,
    pub firecracker_binary: Option<PathBuf>,
    pub firecracker_kernel: Option<PathBuf>,
    pub guest_kernel: Option<PathBuf>,
    pub jailer_binary: Option<PathBuf>,
    pub jailer_chroot_base: PathBuf,
    pub console_max_bytes: u64,
    pub pool: PoolConfig,
    pub jail: crate::jail::JailConfig,
    pub network: crate::network::NetworkSettings,
    pub assets: crate::assets::AssetSettings,
    pub mcp: crate::mcp::McpSettings,
}

impl Settings {
    /// Merges flags over the config file over defaults.
    pub fn resolve(args: &Args) -> Result<Self, ConfigError> {
        let mut paths = Paths::resolve(args.home.as_deref());
        let config_path = args
            .config
            .clone()
            .unwrap_or_else(|| paths.config_file.clone());
        let file = Config::load(&config_path)?;
        let cfg = Config {
            socket: args.socket.clone().or(file.socket),
            log_format: args.log_format.or(file.log_format),
            log_level: args.log_level.clone().or(file.log_level),
            tcp_listen: args.tcp_listen.or(file.tcp_listen),
            tcp_token_file: args.tcp_token_file.clone().or(file.tcp_token_file),
            tls_cert_file: args.tls_cert_file.clone().or(file.tls_cert_file),
            tls_key_file: args.tls_key_file.clone().or(file.tls_key_file),
            tcp_max_connections: args.tcp_max_connections.or(file.tcp_max_connections),
            tcp_header_timeout_secs: args
                .tcp_header_timeout_secs
                .or(file.tcp_header_timeout_secs),
            e2b_listen: args.e2b_listen.or(file.e2b_listen),
            import_roots: args.import_roots.clone().or(file.import_roots),
            import_max_entries: args.import_max_entries.or(file.import_max_entries),
            import_max_bytes: args.import_max_bytes.or(file.import_max_bytes),
            import_timeout_secs: args.import_timeout_secs.or(file.import_timeout_secs),
            max_concurrent_builds: args.max_concurrent_builds.or(file.max_concurrent_builds),
            build_images_keep: args.build_images_keep.or(file.build_images_keep),
            shutdown_grace_secs: args.shutdown_grace_secs.or(file.shutdown_grace_secs),
            vmm: args.vmm.clone().or(file.vmm),
            boot_timeout_secs: args.boot_timeout_secs.or(file.boot_timeout_secs),
            stop_timeout_secs: args.stop_timeout_secs.or(file.stop_timeout_secs),
            stop_vms_on_shutdown: args.stop_vms_on_shutdown.or(file.stop_vms_on_shutdown),
            kernel_dir: args.kernel_dir.clone().or(file.kernel_dir),
            agent_binary: args.agent_binary.clone().or(file.agent_binary),
            qemu_binary: args.qemu_binary.clone().or(file.qemu_binary),
            vhost_vsock_binary: args.vhost_vsock_binary.clone().or(file.vhost_vsock_binary),
            firecracker_binary: args.firecracker_binary.clone().or(file.firecracker_binary),
            firecracker_kernel: args.firecracker_kernel.clone().or(file.firecracker_kernel),
            guest_kernel: args.guest_kernel.clone().or(file.guest_kernel),
            kernel_build_dir: args.kernel_build_dir.clone().or(file.kernel_build_dir),
            jailer_binary: args.jailer_binary.clone().or(file.jailer_binary),
            jailer_chroot_base: args.jailer_chroot_base.clone().or(file.jailer_chroot_base),
            console_max_bytes: args.console_max_bytes.or(file.console_max_bytes),
            pool: args.pool.clone().or(file.pool),
            pool_size: args.pool_size.or(file.pool_size),
            jail: args.jail.or(file.jail),
            jail_uid_base: args.jail_uid_base.or(file.jail_uid_base),
            jail_memory_overhead: args.jail_memory_overhead.or(file.jail_memory_overhead),
            jail_pids_max: args.jail_pids_max.or(file.jail_pids_max),
            jail_cpu_weight: args.jail_cpu_weight.or(file.jail_cpu_weight),
            jail_cgroup_parent: args.jail_cgroup_parent.clone().or(file.jail_cgroup_parent),
            network: args.network.or(file.network),
            network_bridge: args.network_bridge.clone().or(file.network_bridge),
            network_subnet: args.network_subnet.or(file.network_subnet),
            network_uplink: args.network_uplink.clone().or(file.network_uplink),
            network_mtu: args.network_mtu.or(file.network_mtu),
            network_dns: args.network_dns.clone().or(file.network_dns),
            network_egress: args.network_egress.clone().or(file.network_egress),
            asset_keys: args
                .asset_keys
                .as_ref()
                .map(|pairs| pairs.iter().map(|(k, v)| (k.clone(), v.into())).collect())
                .or(file.asset_keys),
            asset_mirrors: args
                .asset_mirrors
                .as_ref()
                .map(|pairs| pairs.iter().cloned().collect())
                .or(file.asset_mirrors),
            asset_max_download_bytes: args
                .asset_max_download_bytes
                .or(file.asset_max_download_bytes),
            asset_max_unpacked_bytes: args
                .asset_max_unpacked_bytes
                .or(file.asset_max_unpacked_bytes),
            asset_max_entries: args.asset_max_entries.or(file.asset_max_entries),
            asset_fetch_idle_timeout_secs: args
                .asset_fetch_idle_timeout_secs
                .or(file.asset_fetch_idle_timeout_secs),
            asset_fetch_timeout_secs: args
                .asset_fetch_timeout_secs
                .or(file.asset_fetch_timeout_secs),
            mcp_output_max_chars: args.mcp_output_max_chars.or(file.mcp_output_max_chars),
        };
        cfg.validate(&config_path)?;
        let assets = asset_settings(&cfg);
        paths.config_file = config_path;
        if let Some(socket) = cfg.socket {
            paths.socket = socket;
        }
        let pool = match cfg.pool {
            Some(dir) => PoolConfig::Dir(dir),
            None => match (PoolConfig::embedded(&paths.data_dir), cfg.pool_size) {
                (
                    PoolConfig::Image {
                        file, mountpoint, ..
                    },
                    Some(size),
                ) => PoolConfig::Image {
                    file,
                    size: size.bytes(),
                    mountpoint,
                },
                (embedded, _) => embedded,
            },
        };
        let tap_prefix = crate::network::tap_prefix(&paths.data_dir);
        let defaults = crate::jail::JailConfig::with_defaults(&paths.data_dir);
        let jail = crate::jail::JailConfig {
            enabled: cfg.jail.unwrap_or(defaults.enabled),
            uid_base: cfg.jail_uid_base.unwrap_or(defaults.uid_base),
            cgroup_parent: cfg.jail_cgroup_parent.unwrap_or(defaults.cgroup_parent),
            memory_overhead_bytes: cfg
                .jail_memory_overhead
                .map_or(defaults.memory_overhead_bytes, |s| s.bytes()),
            pids_max: cfg.jail_pids_max.unwrap_or(defaults.pids_max),
            cpu_weight: cfg.jail_cpu_weight.unwrap_or(defaults.cpu_weight),
            ..defaults
        };
        Ok(Self {
            paths,
            log_format: cfg.log_format.unwrap_or_default(),
            log_level: cfg.log_level.unwrap_or_else(|| "info".into()),
            tcp_listen: cfg.tcp_listen,
            tcp_token_file: cfg.tcp_token_file,
            tls: cfg.tls_cert_file.zip(cfg.tls_key_file),
            tcp_max_connections: cfg
                .tcp_max_connections
                .unwrap_or(DEFAULT_TCP_MAX_CONNECTIONS),
            tcp_header_timeout: Duration::from_secs(
                cfg.tcp_header_timeout_secs
                    .unwrap_or(DEFAULT_TCP_HEADER_TIMEOUT_SECS),
            ),
            e2b_listen: cfg.e2b_listen,
            import_roots: cfg.import_roots,
            max_concurrent_builds: cfg
                .max_concurrent_builds
                .unwrap_or(crate::builds::DEFAULT_MAX_CONCURRENT),
            build_images_keep: cfg
                .build_images_keep
                .unwrap_or(crate::builds::DEFAULT_IMAGES_KEPT),
            import_limits: crate::images::ImportLimits {
                max_entries: cfg
                    .import_max_entries
                    .unwrap_or(crate::images::ImportLimits::DEFAULT.max_entries),
                max_bytes: cfg
                    .import_max_bytes
                    .map_or(crate::images::ImportLimits::DEFAULT.max_bytes, |b| {
                        b.bytes()
                    }),
                timeout: cfg.import_timeout_secs.map_or(
                    crate::images::ImportLimits::DEFAULT.timeout,
                    Duration::from_secs,
                ),
            },
            shutdown_grace: Duration::from_secs(
                cfg.shutdown_grace_secs
                    .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
            ),
            // Validated above, so the parse cannot fail.
            vmm: cfg
                .vmm
                .as_deref()
                .unwrap_or("auto")
                .parse()
                .unwrap_or_default(),
            boot_timeout: Duration::from_secs(
                cfg.boot_timeout_secs.unwrap_or(DEFAULT_BOOT_TIMEOUT_SECS),
            ),
            stop_timeout: Duration::from_secs(
                cfg.stop_timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
            ),
            stop_vms_on_shutdown: cfg.stop_vms_on_shutdown.unwrap_or(false),
            kernel_dir: cfg.kernel_dir.unwrap_or_else(|| DEFAULT_KERNEL_DIR.into()),
            agent_binary: cfg
                .agent_binary
                .or_else(crate::vm::assets::default_agent_binary),
            qemu_binary: cfg
                .qemu_binary
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            vhost_vsock_binary: cfg.vhost_vsock_binary.unwrap_or_else(default_vhost_vsock),
            firecracker_binary: cfg.firecracker_binary,
            firecracker_kernel: cfg.firecracker_kernel,
            guest_kernel: cfg.guest_kernel,
            jailer_binary: cfg.jailer_binary,
            jailer_chroot_base: cfg
                .jailer_chroot_base
                .unwrap_or_else(|| DEFAULT_JAILER_CHROOT_BASE.into()),
            console_max_bytes: cfg.console_max_bytes.unwrap_or(DEFAULT_CONSOLE_MAX_BYTES),
            mcp: crate::mcp::McpSettings {
                output_max_chars: cfg
                    .mcp_output_max_chars
                    .unwrap_or(nexus_lib::config::DEFAULT_MCP_OUTPUT_MAX_CHARS),
            },
            pool,
            jail,
            network: crate::network::NetworkSettings {
                default_mode: cfg.network.unwrap_or(nexus_lib::api::NetworkMode::Nat),
                bridge: cfg.network_bridge.unwrap_or_else(|| "nexus0".into()),
                subnet: cfg.network_subnet,
                uplink: cfg.network_uplink,
                mtu: cfg.network_mtu.unwrap_or(1500),
                dns: cfg.network_dns.map(|servers| {
                    servers
                        .iter()
                        .filter_map(|s| nexus_lib::config::parse_dns_server(s).ok())
                        .collect()
                }),
                default_egress: cfg
                    .network_egress
                    .map(|e| e.normalized().unwrap_or_default())
                    .unwrap_or_default(),
                tap_prefix,
            },
            assets,
        })
    }
}

/// The `asset_*` keys over their defaults.
fn asset_settings(cfg: &Config) -> crate::assets::AssetSettings {
    let d = crate::assets::AssetLimits::DEFAULT;
    crate::assets::AssetSettings {
        limits: crate::assets::AssetLimits {
            max_download_bytes: cfg
                .asset_max_download_bytes
                .map_or(d.max_download_bytes, |b| b.bytes()),
            max_unpacked_bytes: cfg
                .asset_max_unpacked_bytes
                .map_or(d.max_unpacked_bytes, |b| b.bytes()),
            max_entries: cfg.asset_max_entries.unwrap_or(d.max_entries),
            fetch_idle_timeout: cfg
                .asset_fetch_idle_timeout_secs
                .map_or(d.fetch_idle_timeout, Duration::from_secs),
            fetch_timeout: cfg
                .asset_fetch_timeout_secs
                .map_or(d.fetch_timeout, Duration::from_secs),
        },
        keys: cfg.asset_keys.clone().unwrap_or_default(),
        mirrors: cfg.asset_mirrors.clone().unwrap_or_default(),
        kernel_build_dir: cfg.kernel_build_dir.clone(),
    }
}

/// The first `bytes` bytes of the SHA-256 of `data_dir`, in hex: names what one daemon owns on
/// the host (its cgroup parent, its taps), so daemons on different homes never touch each
/// other's.
pub fn data_dir_tag(data_dir: &std::path::Path, bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::ffi::OsStrExt;
    Sha256::digest(data_dir.as_os_str().as_bytes())[..bytes]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `vhost-device-vsock` from PATH, else where `cargo install` puts it.
fn default_vhost_vsock() -> PathBuf {
    let name = "vhost-device-vsock";
    let in_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    in_path
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cargo/bin").join(name))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_overrides_config_file() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("nexus.toml"),
            "shutdown_grace_secs = 3\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let args = Args {
            home: Some(home.path().into()),
            shutdown_grace_secs: Some(7),
            ..Args::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.shutdown_grace, Duration::from_secs(7));
        assert_eq!(s.log_level, "debug");
    }

    #[test]
    fn pool_size_flag_overrides_config_and_pool_dir_wins_over_the_image() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("nexus.toml"), "pool_size = \"20G\"\n").unwrap();
        let args = Args {
            home: Some(home.path().into()),
            pool_size: Some(ByteSize(1 << 30)),
            ..Args::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert!(matches!(s.pool, PoolConfig::Image { size, .. } if size == 1 << 30));
        let args = Args {
            pool: Some("/srv/btrfs/nexus".into()),
            ..args
        };
        assert_eq!(
            Settings::resolve(&args).unwrap().pool,
            PoolConfig::Dir("/srv/btrfs/nexus".into())
        );
    }

    #[test]
    fn a_too_small_pool_size_flag_names_the_key() {
        let home = tempfile::tempdir().unwrap();
        let args = Args {
            home: Some(home.path().into()),
            pool_size: Some(ByteSize(1 << 20)),
            ..Args::default()
        };
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("pool_size"), "{err}");
    }

    #[test]
    fn tcp_flag_without_token_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let args = Args {
            home: Some(home.path().into()),
            tcp_listen: Some("127.0.0.1:1".parse().unwrap()),
            ..Args::default()
        };
        assert!(Settings::resolve(&args).is_err());
    }
}
