//! VMM backends behind one trait. A [`VmSpec`] describes a VM independently of the backend;
//! [`Vmm::spawn`] starts the backend's processes and hands them back as [`Launched`], whose
//! `tokio::process::Child`ren the VM supervisor owns and awaits (exit is noticed at once).
//!
//! Children are put in their own process group and are not killed on drop: VMs outlive a
//! restarting daemon, which re-adopts them.

mod accel;
mod console;
#[cfg(test)]
pub(crate) mod fake;
mod firecracker;
mod firecracker_logs;
pub mod jailer;
mod qemu;
mod select;
mod tsc;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use accel::{Accel, detect_accel};
pub use console::cap_console_log;
pub(crate) use firecracker::is_executable;
pub use firecracker::{FirecrackerVmm, JailerSettings, release_jail};
pub use firecracker_logs::{cap_firecracker_logs, failure_detail};
pub use qemu::QemuVmm;
pub use select::{HostProbe, VmmChoice, select_backend};
pub use tsc::host_tsc_khz;

/// Everything a backend needs to boot one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// The VM's UUID (Firecracker's `--id`, the jailer's jail id).
    pub vm_id: uuid::Uuid,
    /// The boot this launch belongs to (`vm_boots.id`): names per-boot log files.
    pub boot_id: i64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub root_drive: PathBuf,
    pub extra_drives: Vec<DriveSpec>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub vsock_cid: u32,
    /// Host side of the hybrid vsock (`CONNECT <port>\n` protocol), inside `socket_dir`.
    pub vsock_uds: PathBuf,
    /// The one directory the VMM's processes may write: their sockets. Owned by the VM's jail
    /// uid; nothing nexusd trusts lives there.
    pub socket_dir: PathBuf,
    pub tap: Option<TapSpec>,
    /// The VM's own directory for configs and logs (nexusd's; the VMM only sees `socket_dir`).
    pub runtime_dir: PathBuf,
    pub console_log: PathBuf,
}

impl VmSpec {
    /// Checks what every backend needs of a spec: vCPUs, memory, CID and drive ids.
    pub(crate) fn validate_common(&self) -> Result<(), VmmError> {
        let bad = |reason: &str| {
            Err(VmmError::InvalidSpec {
                vm: self.name.clone(),
                reason: reason.into(),
            })
        };
        if self.vcpus == 0 || self.memory_mib < 64 {
            return bad("needs at least 1 vCPU and 64 MiB");
        }
        if self.vsock_cid < 3 {
            return bad("vsock CID must be at least 3");
        }
        let ok_id = |id: &str| {
            !id.is_empty()
                && id != "root"
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !self.extra_drives.iter().all(|d| ok_id(&d.id)) {
            return bad("drive ids must be letters, digits or '_' and not 'root'");
        }
        Ok(())
    }

    /// The VM's own tun device node (see [`crate::jail::make_tun_node`]).
    pub fn tun_node(&self) -> PathBuf {
        self.runtime_dir.join("tun")
    }

    /// What a VMM process sees in its jail of this VM: its socket directory and drives
    /// (writable unless read-only), kernel and initrd (read-only), `/dev/kvm` when `kvm`, and
    /// `/dev/net/tun` with a tap; backends add their own files.
    pub(crate) fn vmm_view(&self, kvm: bool) -> crate::jail::View {
        use crate::jail::Access;
        let mut paths = vec![
            (self.socket_dir.clone(), Access::ReadWrite),
            (self.kernel.clone(), Access::ReadOnly),
            (self.root_drive.clone(), Access::ReadWrite),
        ];
        paths.extend(self.initrd.iter().map(|i| (i.clone(), Access::ReadOnly)));
        paths.extend(self.extra_drives.iter().map(|d| {
            let access = if d.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            (d.path.clone(), access)
        }));
        let mut devices = Vec::new();
        if kvm {
            devices.push("/dev/kvm".into());
        }
        let tun = self.tap.as_ref().map(|_| self.tun_node());
        crate::jail::View {
            paths,
            devices,
            tun,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// Short identifier (letters, digits, `_`), unique within the VM.
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    pub ifname: String,
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmmKind {
    Firecracker,
    Qemu,
}

/// What a process of a launched VM does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessRole {
    /// The VMM proper; the VM is gone when it exits.
    Vmm,
    /// `vhost-device-vsock`, the vsock backend of QEMU.
    VsockBackend,
}

#[derive(Debug)]
pub struct VmmProcess {
    pub role: ProcessRole,
    pub pid: u32,
    pub child: tokio::process::Child,
}

/// The running processes of a VM, to be owned by its supervisor.
#[derive(Debug)]
pub struct Launched {
    /// Ordered as started: helpers first, the VMM last.
    pub processes: Vec<VmmProcess>,
}

impl Launched {
    pub fn vmm_pid(&self) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.role == ProcessRole::Vmm)
            .map(|p| p.pid)
    }

    /// Kills every process (SIGKILL) and reaps them.
    pub async fn kill(&mut self) {
        for p in self.processes.iter_mut().rev() {
            let _ = p.child.kill().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot start {program} for VM {vm}{}", jail_step(log))]
    Spawn {
        vm: String,
        program: String,
        #[source]
        source: std::io::Error,
        /// The process's log, where a jail set-up step that failed names itself.
        log: PathBuf,
    },
    #[error("cannot set up the jail of {program} for VM {vm}")]
    Jail {
        vm: String,
        program: String,
        #[source]
        source: crate::jail::JailError,
    },
    #[error("{program} of VM {vm} exited early ({status}); see {}", log.display())]
    ExitedEarly {
        vm: String,
        program: String,
        status: std::process::ExitStatus,
        log: PathBuf,
    },
    #[error("{} did not appear within {waited:?} for VM {vm}", path.display())]
    SocketTimeout {
        vm: String,
        path: PathBuf,
        waited: Duration,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid VM spec for {vm}: {reason}")]
    InvalidSpec { vm: String, reason: String },
    #[error(
        "the {what} socket path {} of VM {vm} is {len} bytes{}, over the {max}-byte limit of a Unix socket address (sun_path); use a shorter data directory",
        path.display(),
        if *suffix > 0 { format!(" plus up to {suffix} for its `_<port>` listeners") } else { String::new() }
    )]
    SocketPathTooLong {
        vm: String,
        what: &'static str,
        path: PathBuf,
        len: usize,
        suffix: usize,
        max: usize,
    },
    #[error("the firecracker backend needs a firecracker binary, none was found")]
    FirecrackerMissing,
    #[error("the firecracker backend needs a working KVM: {reason}")]
    KvmUnusable { reason: String },
}

impl VmmError {
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { path, source }
    }
}

/// A VMM backend.
pub trait Vmm: Send + Sync {
    fn kind(&self) -> VmmKind;

    /// Starts the VM's processes, in `jail` when there is one; returns once the VMM process is
    /// running.
    fn spawn<'a>(
        &'a self,
        spec: &'a VmSpec,
        jail: Option<&'a crate::jail::VmJail>,
    ) -> BoxFuture<'a, Result<Launched, VmmError>>;
}

/// The guest kernel command line for the agent: serial console, no reboot loop, settings.
pub fn guest_cmdline(hostname: &str, net: Option<&GuestNet>) -> String {
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet nexus.hostname={hostname}");
    if let Some(n) = net {
        cmdline.push_str(&format!(
            " nexus.ip={}/{} nexus.gw={} nexus.mtu={} nexus.dns={}",
            n.ip, n.prefix, n.gateway, n.mtu, n.gateway
        ));
    }
    cmdline
}

/// A guest's network settings, passed on its command line for the agent to apply: address,
/// prefix, gateway (also its resolver) and MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNet {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
}

/// `: <step> failed` when the last line of `log` is a jail set-up failure (see `jail::enter`).
fn jail_step(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let tail = &text[text.len().saturating_sub(256)..];
    String::from_utf8_lossy(tail)
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("nexus jail: "))
        .map(|step| format!(" (jail: {step})"))
        .unwrap_or_default()
}

/// Longest path a Unix socket address holds: `sun_path` is 108 bytes including the NUL.
pub const SUN_PATH_MAX: usize = 107;
/// A hybrid-vsock listener for guest-initiated connections is `<uds>_<port>`; ports nexusd
/// listens on are at most 65535, so `_` and five digits.
pub const VSOCK_LISTENER_SUFFIX: usize = 6;

/// One socket path to check against [`SUN_PATH_MAX`].
#[derive(Debug, Clone, Copy)]
pub struct SocketCheck<'a> {
    pub what: &'static str,
    pub path: &'a Path,
    /// Bytes a variant of the path may add (`_<port>`).
    pub suffix: usize,
}

impl<'a> SocketCheck<'a> {
    pub fn plain(what: &'static str, path: &'a Path) -> Self {
        Self {
            what,
            path,
            suffix: 0,
        }
    }

    /// A hybrid-vsock socket, with room for its `_<port>` listeners.
    pub fn vsock(path: &'a Path) -> Self {
        Self {
            what: "vsock",
            path,
            suffix: VSOCK_LISTENER_SUFFIX,
        }
    }
}

/// Refuses, before anything is spawned, a socket path that could not be bound or connected to:
/// the error names the socket, its path and its length.
pub fn check_socket_paths(vm: &str, sockets: &[SocketCheck<'_>]) -> Result<(), VmmError> {
    use std::os::unix::ffi::OsStrExt;
    for s in sockets {
        let len = s.path.as_os_str().as_bytes().len();
        if len + s.suffix > SUN_PATH_MAX {
            return Err(VmmError::SocketPathTooLong {
                vm: vm.to_owned(),
                what: s.what,
                path: s.path.to_path_buf(),
                len,
                suffix: s.suffix,
                max: SUN_PATH_MAX,
            });
        }
    }
    Ok(())
}

/// Opens (creating, appending) a log file for a child's stdout/stderr.
pub(crate) fn log_file(path: &Path) -> Result<std::fs::File, VmmError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(VmmError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_carries_hostname_and_network() {
        let net = GuestNet {
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            mtu: 1500,
        };
        assert_eq!(
            guest_cmdline("vm1", Some(&net)),
            "console=ttyS0 panic=-1 quiet nexus.hostname=vm1 nexus.ip=10.0.0.2/24 nexus.gw=10.0.0.1 nexus.mtu=1500 nexus.dns=10.0.0.1"
        );
    }

    #[test]
    fn socket_path_of_107_bytes_is_accepted() {
        let path = PathBuf::from(format!("/{}", "s".repeat(106)));
        assert!(check_socket_paths("vm1", &[SocketCheck::plain("api", &path)]).is_ok());
    }

    #[test]
    fn socket_path_of_108_bytes_is_refused_with_path_and_length() {
        let path = PathBuf::from(format!("/{}", "s".repeat(107)));
        let err = check_socket_paths("vm1", &[SocketCheck::plain("api", &path)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the api socket path {} of VM vm1 is 108 bytes, over the 107-byte limit of a Unix socket address (sun_path); use a shorter data directory",
                path.display()
            )
        );
    }

    #[test]
    fn vsock_path_leaves_room_for_its_port_listeners() {
        let path = PathBuf::from(format!("/{}", "s".repeat(101)));
        let err = check_socket_paths("vm1", &[SocketCheck::vsock(&path)]).unwrap_err();
        assert!(matches!(
            err,
            VmmError::SocketPathTooLong {
                len: 102,
                suffix: 6,
                ..
            }
        ));
    }
}
