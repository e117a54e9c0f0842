//! The Firecracker backend: the whole VM is described by one `--config-file` JSON (Firecracker's
//! documented `boot-source`, `drives`, `machine-config`, `network-interfaces`, `vsock`, `logger`
//! and `metrics` objects), and `--api-sock` stays available for pause/resume/snapshot. The serial
//! console is Firecracker's stdout, appended to the console log.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::process::Command;

use crate::jail::{Access, View, VmJail};

use super::{Accel, Launched, ProcessRole, VmSpec, Vmm, VmmError, VmmKind, VmmProcess, log_file};

/// Firecracker's `--config-file` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirecrackerConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    pub drives: Vec<Drive>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterface>,
    pub vsock: Vsock,
    pub logger: Logger,
    pub metrics: Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    pub smt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logger {
    pub log_path: PathBuf,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub metrics_path: PathBuf,
}

impl FirecrackerConfig {
    pub fn for_spec(spec: &VmSpec) -> Self {
        let mut drives = vec![Drive {
            drive_id: "root".into(),
            path_on_host: spec.root_drive.clone(),
            is_root_device: true,
            is_read_only: false,
        }];
        drives.extend(spec.extra_drives.iter().map(|d| Drive {
            drive_id: d.id.clone(),
            path_on_host: d.path.clone(),
            is_root_device: false,
            is_read_only: d.read_only,
        }));
        Self {
            boot_source: BootSource {
                kernel_image_path: spec.kernel.clone(),
                initrd_path: spec.initrd.clone(),
                boot_args: boot_args(&spec.cmdline),
            },
            drives,
            machine_config: MachineConfig {
                vcpu_count: spec.vcpus,
                mem_size_mib: spec.memory_mib,
                smt: false,
            },
            network_interfaces: spec
                .tap
                .iter()
                .map(|t| NetworkInterface {
                    iface_id: "eth0".into(),
                    host_dev_name: t.ifname.clone(),
                    guest_mac: t.mac.clone(),
                })
                .collect(),
            vsock: Vsock {
                guest_cid: spec.vsock_cid,
                uds_path: spec.vsock_uds.clone(),
            },
            logger: Logger {
                log_path: log_path(spec),
                level: "Warning".into(),
            },
            metrics: Metrics {
                metrics_path: metrics_path(spec),
            },
        }
    }
}

/// Firecracker guests reboot through the keyboard controller (`reboot=k`, which ends the
/// Firecracker process) and have no PCI bus.
fn boot_args(cmdline: &str) -> String {
    let mut args = cmdline.to_string();
    for extra in ["reboot=k", "pci=off"] {
        if !args.split_whitespace().any(|w| w == extra) {
            args.push(' ');
            args.push_str(extra);
        }
    }
    args
}

/// Firecracker opens its log and metrics by path, so they live where it may write.
fn log_path(spec: &VmSpec) -> PathBuf {
    spec.socket_dir.join("firecracker.log")
}

fn metrics_path(spec: &VmSpec) -> PathBuf {
    spec.socket_dir.join("firecracker.metrics")
}

#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    pub binary: PathBuf,
}

impl FirecrackerVmm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
        }
    }

    pub fn api_socket(spec: &VmSpec) -> PathBuf {
        spec.socket_dir.join("firecracker.sock")
    }

    /// What Firecracker sees in the VM's jail when it runs without its own `jailer`.
    pub fn view(spec: &VmSpec, config_path: &Path) -> View {
        let mut paths = vec![
            (spec.socket_dir.clone(), Access::ReadWrite),
            (config_path.to_owned(), Access::ReadOnly),
            (spec.kernel.clone(), Access::ReadOnly),
            (spec.root_drive.clone(), Access::ReadWrite),
        ];
        paths.extend(spec.initrd.iter().map(|i| (i.clone(), Access::ReadOnly)));
        paths.extend(spec.extra_drives.iter().map(|d| {
            let access = if d.read_only {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            (d.path.clone(), access)
        }));
        let mut devices = vec![PathBuf::from("/dev/kvm")];
        if spec.tap.is_some() {
            devices.push("/dev/net/tun".into());
        }
        View { paths, devices }
    }

    async fn launch(&self, spec: &VmSpec, jail: Option<&VmJail>) -> Result<Launched, VmmError> {
        let dir = &spec.runtime_dir;
        std::fs::create_dir_all(&spec.socket_dir).map_err(VmmError::io(&spec.socket_dir))?;
        let config = FirecrackerConfig::for_spec(spec);
        let config_path = dir.join("firecracker.json");
        let json =
            serde_json::to_vec_pretty(&config).map_err(|e| VmmError::io(&config_path)(e.into()))?;
        std::fs::write(&config_path, json).map_err(VmmError::io(&config_path))?;
        // Firecracker opens but does not create its log and metrics files.
        for file in [&config.logger.log_path, &config.metrics.metrics_path] {
            log_file(file)?;
        }
        let api = Self::api_socket(spec);
        for stale in [&api, &spec.vsock_uds] {
            let _ = std::fs::remove_file(stale);
        }
        let console = log_file(&spec.console_log)?;
        let stderr_path = dir.join("firecracker.stderr");
        let stderr = log_file(&stderr_path)?;
        let args: Vec<OsString> = vec![
            "--api-sock".into(),
            api.clone().into(),
            "--config-file".into(),
            config_path.clone().into(),
        ];
        let mut cmd = match jail {
            Some(jail) => jail
                .command(&self.binary, &args, &Self::view(spec, &config_path))
                .map_err(|source| VmmError::Jail {
                    vm: spec.name.clone(),
                    program: self.binary.display().to_string(),
                    source,
                })?,
            None => {
                let mut cmd = Command::new(&self.binary);
                cmd.args(&args);
                cmd
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                vm: spec.name.clone(),
                program: self.binary.display().to_string(),
                source,
                log: stderr_path.clone(),
            })?;
        let pid = child.id().unwrap_or(0);
        Ok(Launched {
            kind: VmmKind::Firecracker,
            accel: Accel::Kvm,
            processes: vec![VmmProcess {
                role: ProcessRole::Vmm,
                pid,
                child,
            }],
            control_socket: api,
        })
    }
}

impl Vmm for FirecrackerVmm {
    fn kind(&self) -> VmmKind {
        VmmKind::Firecracker
    }

    fn spawn<'a>(
        &'a self,
        spec: &'a VmSpec,
        jail: Option<&'a VmJail>,
    ) -> BoxFuture<'a, Result<Launched, VmmError>> {
        Box::pin(self.launch(spec, jail))
    }
}

/// Whether `path` looks like an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::vmm::qemu::tests::spec;

    fn config() -> Value {
        serde_json::to_value(FirecrackerConfig::for_spec(&spec())).unwrap()
    }

    #[test]
    fn top_level_keys_are_the_documented_ones() {
        let cfg = config();
        let mut keys: Vec<&str> = cfg
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "boot-source",
                "drives",
                "logger",
                "machine-config",
                "metrics",
                "network-interfaces",
                "vsock"
            ]
        );
    }

    #[test]
    fn boot_source_has_kernel_initrd_and_args() {
        assert_eq!(
            config()["boot-source"],
            json!({
                "kernel_image_path": "/k/vmlinuz",
                "initrd_path": "/k/initrd.gz",
                "boot_args": "console=ttyS0 reboot=k pci=off",
            })
        );
    }

    #[test]
    fn boot_source_without_initrd_omits_the_field() {
        let mut s = spec();
        s.initrd = None;
        let cfg = serde_json::to_value(FirecrackerConfig::for_spec(&s)).unwrap();
        assert!(cfg["boot-source"].get("initrd_path").is_none());
    }

    #[test]
    fn drives_list_root_first_then_extras() {
        assert_eq!(
            config()["drives"],
            json!([
                {"drive_id": "root", "path_on_host": "/d/root.ext4", "is_root_device": true, "is_read_only": false},
                {"drive_id": "work", "path_on_host": "/d/work,1.ext4", "is_root_device": false, "is_read_only": true},
            ])
        );
    }

    #[test]
    fn machine_config_has_vcpus_and_memory() {
        assert_eq!(
            config()["machine-config"],
            json!({"vcpu_count": 2, "mem_size_mib": 256, "smt": false})
        );
    }

    #[test]
    fn network_interface_names_tap_and_mac() {
        assert_eq!(
            config()["network-interfaces"],
            json!([{"iface_id": "eth0", "host_dev_name": "nx-tap1", "guest_mac": "02:00:00:00:00:01"}])
        );
    }

    #[test]
    fn vsock_has_cid_and_uds_path() {
        assert_eq!(
            config()["vsock"],
            json!({"guest_cid": 7, "uds_path": "/run/vm1/vsock.sock"})
        );
    }

    #[test]
    fn logger_and_metrics_go_to_runtime_dir() {
        let cfg = config();
        assert_eq!(
            cfg["logger"],
            json!({"log_path": "/run/vm1/firecracker.log", "level": "Warning"})
        );
        assert_eq!(
            cfg["metrics"],
            json!({"metrics_path": "/run/vm1/firecracker.metrics"})
        );
    }

    #[test]
    fn boot_args_are_not_duplicated() {
        assert_eq!(
            boot_args("console=ttyS0 pci=off reboot=k"),
            "console=ttyS0 pci=off reboot=k"
        );
    }
}
