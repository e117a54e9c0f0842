//! The Firecracker backend: the whole VM is described by one `--config-file` JSON (Firecracker's
//! documented `boot-source`, `drives`, `machine-config`, `network-interfaces` and `vsock`
//! objects), and `--api-sock` stays available for pause/resume/snapshot. The serial console is
//! Firecracker's stdout, appended to the console log.
//!
//! Started directly, every path in the JSON is the absolute host path (a mount-namespace jail
//! binds those same paths). Started through Firecracker's `jailer` (see [`super::jailer`]),
//! every path is the chroot-relative name the layout gives it.
//!
//! Log and metrics: `--log-path`, `--level` and `--metrics-path` go on the command line, not in
//! the JSON. On the command line the logger exists before the config file is read, so an
//! unreadable or rejected config is logged too; and Firecracker applies a `logger` object by
//! reopening the file at offset 0, which would overwrite its own earlier lines. Firecracker
//! opens these files read-write without `O_APPEND`, so each boot gets its own log file
//! (`firecracker-<boot>.log`, the last [`super::KEEP_BOOT_LOGS`] kept) and its own stderr file, created
//! fresh by nexusd; metrics (one ~5 KB JSON line a minute) go to `firecracker.metrics`, recreated
//! at each launch. [`super::cap_firecracker_logs`] bounds them while the VM runs by punching a hole over
//! everything but the newest bytes: a writer without `O_APPEND` keeps its offset, so truncating
//! would not free anything a rotation could keep, while a hole frees the disk blocks, keeps the
//! newest lines where they are and never tears a line the VMM is writing. The files stay sparse
//! (their apparent size grows; their disk use does not). [`super::failure_detail`] quotes the newest
//! bytes of this boot's stderr and log into the VM's history.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::process::Command;

use crate::jail::{Access, View, VmJail};

use super::firecracker_logs::{KEEP_BOOT_LOGS, log_path, prune_boot_logs, stderr_path};
use super::jailer::{
    self, CgroupLimits, CgroupVersion, ChrootLayout, JailSpec, LayoutInput, ResourceLimits,
};
use super::{
    Launched, ProcessRole, SocketCheck, VmSpec, Vmm, VmmError, VmmKind, VmmProcess,
    check_socket_paths, log_file,
};

/// Firecracker's log level: warnings and errors (Firecracker rate-limits both per call site).
const LOG_LEVEL: &str = "Warning";

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    pub boot_args: String,
}

/// How guest writes reach the host: `Writeback` honours the guest's flushes, so a synced file
/// survives a host crash (Firecracker's default, `Unsafe`, ignores them; Nexus never asks for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CacheType {
    Writeback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
    pub cache_type: CacheType,
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

impl FirecrackerConfig {
    /// The config with absolute host paths (Firecracker started directly).
    pub fn for_spec(spec: &VmSpec) -> Self {
        Self::build(spec, |p| p.to_path_buf(), spec.vsock_uds.clone())
    }

    /// The config as a Firecracker jailed in `layout.chroot` sees it: every path chroot-relative.
    pub fn for_chroot(spec: &VmSpec, layout: &ChrootLayout) -> Self {
        let inside = |p: &Path| {
            layout
                .inside_path(p)
                .expect("the layout covers every file of the spec")
                .to_path_buf()
        };
        Self::build(spec, inside, layout.vsock_uds.clone())
    }

    fn build(spec: &VmSpec, path: impl Fn(&Path) -> PathBuf, vsock_uds: PathBuf) -> Self {
        let drive = |drive_id: &str, host: &Path, root: bool, read_only: bool| Drive {
            drive_id: drive_id.into(),
            path_on_host: path(host),
            is_root_device: root,
            is_read_only: read_only,
            cache_type: CacheType::Writeback,
        };
        let mut drives = vec![drive("root", &spec.root_drive, true, false)];
        drives.extend(
            spec.extra_drives
                .iter()
                .map(|d| drive(&d.id, &d.path, false, d.read_only)),
        );
        Self {
            boot_source: BootSource {
                kernel_image_path: path(&spec.kernel),
                initrd_path: spec.initrd.as_deref().map(&path),
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
                uds_path: vsock_uds,
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

/// The files of one boot in the VM's runtime directory (host paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub config: PathBuf,
    pub log: PathBuf,
    pub stderr: PathBuf,
    pub metrics: PathBuf,
    pub api_socket: PathBuf,
}

impl BootFiles {
    /// nexusd's files in `runtime_dir`; the API socket in the VM's `socket_dir`.
    pub fn new(runtime_dir: &Path, socket_dir: &Path, boot: i64) -> Self {
        Self {
            config: runtime_dir.join("firecracker.json"),
            log: log_path(runtime_dir, boot),
            stderr: stderr_path(runtime_dir, boot),
            metrics: runtime_dir.join("firecracker.metrics"),
            api_socket: socket_dir.join("firecracker.sock"),
        }
    }

    fn of(spec: &VmSpec) -> Self {
        Self::new(&spec.runtime_dir, &spec.socket_dir, spec.boot_id)
    }
}

/// Paths as Firecracker sees them, for its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgPaths {
    pub api_socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub metrics: PathBuf,
}

/// Firecracker's own arguments. `id` is given only when Firecracker is started directly: the
/// jailer passes `--id` (and the `--start-time-*` values) itself, and a second `--id` would be
/// refused.
pub fn firecracker_args(id: Option<&str>, paths: &ArgPaths) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    if let Some(id) = id {
        args.extend(["--id".into(), id.into()]);
    }
    let mut pair = |flag: &str, value: &Path| {
        args.push(flag.into());
        args.push(value.into());
    };
    pair("--api-sock", &paths.api_socket);
    pair("--config-file", &paths.config);
    pair("--log-path", &paths.log);
    pair("--metrics-path", &paths.metrics);
    args.extend([
        "--level".into(),
        LOG_LEVEL.into(),
        "--show-level".into(),
        "--show-log-origin".into(),
    ]);
    args
}

/// How to start Firecracker through its jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerSettings {
    pub binary: PathBuf,
    pub chroot_base: PathBuf,
    /// `None` when the host has no usable cgroup hierarchy: a jailed start then fails.
    pub cgroup_version: Option<CgroupVersion>,
}

impl JailerSettings {
    /// The jailer's view of one VM's jail: the uid, gid and cgroup parent of `vm_jail`.
    pub fn jail(
        &self,
        spec: &VmSpec,
        exec_file: &Path,
        vm_jail: &VmJail,
    ) -> Result<JailSpec, VmmError> {
        let cgroup_version = self.cgroup_version.ok_or_else(|| VmmError::InvalidSpec {
            vm: spec.name.clone(),
            reason: "the jailer needs a cgroup hierarchy (v1 memory controller or cgroup2) in /proc/mounts, none was found".into(),
        })?;
        Ok(JailSpec {
            id: spec.vm_id.to_string(),
            exec_file: exec_file.to_path_buf(),
            uid: vm_jail.uid,
            gid: vm_jail.gid,
            chroot_base: self.chroot_base.clone(),
            cgroup_version,
            parent_cgroup: vm_jail.cgroup_parent.clone(),
            cgroups: CgroupLimits {
                memory_bytes: vm_jail.limits.memory_bytes,
                pids_max: u32::try_from(vm_jail.limits.pids_max).unwrap_or(u32::MAX),
                cpu_weight: vm_jail.limits.cpu_weight,
            },
            limits: ResourceLimits::default(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct FirecrackerVmm {
    pub binary: PathBuf,
    pub jailer: Option<JailerSettings>,
}

impl FirecrackerVmm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            jailer: None,
        }
    }

    /// Starts Firecracker through the jailer.
    pub fn with_jailer(mut self, jailer: Option<JailerSettings>) -> Self {
        self.jailer = jailer;
        self
    }

    /// The API socket nexusd talks to (a link into the chroot when jailed).
    pub fn api_socket(spec: &VmSpec) -> PathBuf {
        BootFiles::of(spec).api_socket
    }

    /// The jail and its layout, when jailed.
    fn jail_layout(
        &self,
        spec: &VmSpec,
        vm_jail: Option<&VmJail>,
    ) -> Result<Option<(JailSpec, ChrootLayout)>, VmmError> {
        let (Some(settings), Some(vm_jail)) = (&self.jailer, vm_jail) else {
            return Ok(None);
        };
        let jail = settings.jail(spec, &self.binary, vm_jail)?;
        let files = BootFiles::of(spec);
        let input = LayoutInput {
            kernel: spec.kernel.clone(),
            initrd: spec.initrd.clone(),
            drives: std::iter::once(("root".to_string(), spec.root_drive.clone(), false))
                .chain(
                    spec.extra_drives
                        .iter()
                        .map(|d| (d.id.clone(), d.path.clone(), d.read_only)),
                )
                .collect(),
            config_file: files.config,
            log: files.log,
            metrics: files.metrics,
        };
        let layout = jailer::layout(&jail, &input).map_err(|e| VmmError::InvalidSpec {
            vm: spec.name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some((jail, layout)))
    }

    fn validate(&self, spec: &VmSpec, layout: Option<&ChrootLayout>) -> Result<(), VmmError> {
        spec.validate_common()?;
        let api = Self::api_socket(spec);
        let mut sockets = vec![
            SocketCheck::vsock(&spec.vsock_uds),
            SocketCheck::plain("Firecracker API", &api),
        ];
        // Jailed, nexusd reaches both through links; a guest-initiated vsock listener would
        // have to be bound at the real path inside the chroot.
        let chroot_vsock = layout.map(|l| l.host_path(&l.vsock_uds));
        if let Some(path) = &chroot_vsock {
            sockets.push(SocketCheck::vsock(path));
        }
        check_socket_paths(&spec.name, &sockets)
    }

    /// What Firecracker sees in the VM's jail when no `jailer` is installed: its sockets, this
    /// boot's config, log and metrics, kernel, initrd, drives, KVM and the tap device.
    pub fn view(spec: &VmSpec, files: &BootFiles) -> View {
        let mut view = spec.vmm_view(true);
        view.paths.extend([
            (files.config.clone(), Access::ReadOnly),
            (files.log.clone(), Access::ReadWrite),
            (files.metrics.clone(), Access::ReadWrite),
        ]);
        view
    }

    /// Starts Firecracker: through its `jailer` when one is installed and the VM is jailed,
    /// in nexusd's own jail when only the latter, directly with `jail = false`.
    async fn launch(&self, spec: &VmSpec, vm_jail: Option<&VmJail>) -> Result<Launched, VmmError> {
        let jailed = self.jail_layout(spec, vm_jail)?;
        self.validate(spec, jailed.as_ref().map(|(_, l)| l))?;
        let dir = &spec.runtime_dir;
        fs::create_dir_all(dir).map_err(VmmError::io(dir))?;
        fs::create_dir_all(&spec.socket_dir).map_err(VmmError::io(&spec.socket_dir))?;
        let files = BootFiles::of(spec);
        prune_boot_logs(dir, spec.boot_id, KEEP_BOOT_LOGS);
        // Fresh files for this boot: Firecracker writes from offset 0 without O_APPEND.
        for file in [&files.log, &files.metrics] {
            let _ = fs::remove_file(file);
            log_file(file)?;
        }
        for stale in [&files.api_socket, &spec.vsock_uds] {
            let _ = fs::remove_file(stale);
        }
        let (program, args, config) = match &jailed {
            None => {
                let paths = ArgPaths {
                    api_socket: files.api_socket.clone(),
                    config: files.config.clone(),
                    log: files.log.clone(),
                    metrics: files.metrics.clone(),
                };
                let id = spec.vm_id.to_string();
                let args = firecracker_args(Some(&id), &paths);
                (self.binary.clone(), args, FirecrackerConfig::for_spec(spec))
            }
            Some((jail, layout)) => {
                let inside = |p: &Path| layout.inside_path(p).unwrap_or(p).to_path_buf();
                let paths = ArgPaths {
                    api_socket: layout.api_socket.clone(),
                    config: inside(&files.config),
                    log: inside(&files.log),
                    metrics: inside(&files.metrics),
                };
                let args =
                    jailer::jailer_args(jail, &firecracker_args(None, &paths)).map_err(|e| {
                        VmmError::InvalidSpec {
                            vm: spec.name.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                let jailer = self.jailer.as_ref().map(|j| j.binary.clone());
                (
                    jailer.unwrap_or_default(),
                    args,
                    FirecrackerConfig::for_chroot(spec, layout),
                )
            }
        };
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| VmmError::io(&files.config)(e.into()))?;
        fs::write(&files.config, json).map_err(VmmError::io(&files.config))?;
        if let Some((jail, layout)) = &jailed {
            jailer::prepare_layout(jail, layout, Some((jail.uid, jail.gid)), dir)?;
            // nexusd reaches the sockets through short links in the runtime directory.
            for (link, inside) in [
                (&spec.vsock_uds, &layout.vsock_uds),
                (&files.api_socket, &layout.api_socket),
            ] {
                std::os::unix::fs::symlink(layout.host_path(inside), link)
                    .map_err(VmmError::io(link))?;
            }
        }
        let mut cmd = match (&jailed, vm_jail) {
            (None, Some(vm_jail)) => {
                // Firecracker writes its log and metrics by path: they belong to the VM's uid.
                for file in [&files.log, &files.metrics] {
                    nix::unistd::chown(
                        file.as_path(),
                        Some(nix::unistd::Uid::from_raw(vm_jail.uid)),
                        Some(nix::unistd::Gid::from_raw(vm_jail.gid)),
                    )
                    .map_err(|e| VmmError::io(file)(e.into()))?;
                }
                vm_jail
                    .command(&program, &args, &Self::view(spec, &files))
                    .map_err(|source| VmmError::Jail {
                        vm: spec.name.clone(),
                        program: program.display().to_string(),
                        source,
                    })?
            }
            _ => {
                let mut cmd = Command::new(&program);
                cmd.args(&args);
                cmd
            }
        };
        let console = log_file(&spec.console_log)?;
        let stderr = log_file(&files.stderr)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                vm: spec.name.clone(),
                program: program.display().to_string(),
                source,
                log: files.stderr.clone(),
            })?;
        let pid = child.id().unwrap_or(0);
        Ok(Launched {
            processes: vec![VmmProcess {
                role: ProcessRole::Vmm,
                pid,
                child,
            }],
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

/// Undoes what a jailed launch prepared (the chroot, its mounts, the VM's cgroups); a no-op for
/// a VM that was not jailed. Call once the VMM has exited.
pub fn release_jail(runtime_dir: &Path) {
    jailer::teardown(runtime_dir, Path::new("/proc/mounts"));
}

/// Whether `path` looks like an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::vmm::qemu::tests::spec;

    fn config() -> Value {
        serde_json::to_value(FirecrackerConfig::for_spec(&spec())).unwrap()
    }

    fn jailed() -> (FirecrackerVmm, VmSpec) {
        let vmm = FirecrackerVmm::new("/usr/bin/firecracker").with_jailer(Some(JailerSettings {
            binary: "/usr/bin/jailer".into(),
            chroot_base: "/srv/jailer".into(),
            cgroup_version: Some(CgroupVersion::V2),
        }));
        (vmm, spec())
    }

    fn chroot_config() -> Value {
        let (vmm, spec) = jailed();
        let (_, layout) = vmm
            .jail_layout(&spec, Some(&VmJail::for_tests(1007, "nexus")))
            .unwrap()
            .unwrap();
        serde_json::to_value(FirecrackerConfig::for_chroot(&spec, &layout)).unwrap()
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
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
                "machine-config",
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
    fn drives_list_root_first_then_extras_with_writeback_cache() {
        assert_eq!(
            config()["drives"],
            json!([
                {"drive_id": "root", "path_on_host": "/d/root.ext4", "is_root_device": true, "is_read_only": false, "cache_type": "Writeback"},
                {"drive_id": "work", "path_on_host": "/d/work,1.ext4", "is_root_device": false, "is_read_only": true, "cache_type": "Writeback"},
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
    fn chroot_config_boot_source_is_chroot_relative() {
        assert_eq!(
            chroot_config()["boot-source"],
            json!({
                "kernel_image_path": "/vmlinux",
                "initrd_path": "/initrd",
                "boot_args": "console=ttyS0 reboot=k pci=off",
            })
        );
    }

    #[test]
    fn chroot_config_drives_are_chroot_relative() {
        let cfg = chroot_config();
        let paths: Vec<&str> = cfg["drives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path_on_host"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["/drive-root", "/drive-work"]);
    }

    #[test]
    fn chroot_config_vsock_is_in_the_chroot_run_dir() {
        assert_eq!(
            chroot_config()["vsock"],
            json!({"guest_cid": 7, "uds_path": "/run/vsock.sock"})
        );
    }

    #[test]
    fn direct_args_carry_id_log_level_and_metrics() {
        let files = BootFiles::new(Path::new("/run/vm1"), Path::new("/run/vm1"), 4);
        let paths = ArgPaths {
            api_socket: files.api_socket,
            config: files.config,
            log: files.log,
            metrics: files.metrics,
        };
        assert_eq!(
            strings(firecracker_args(Some("u-1"), &paths)),
            [
                "--id",
                "u-1",
                "--api-sock",
                "/run/vm1/firecracker.sock",
                "--config-file",
                "/run/vm1/firecracker.json",
                "--log-path",
                "/run/vm1/firecracker-4.log",
                "--metrics-path",
                "/run/vm1/firecracker.metrics",
                "--level",
                "Warning",
                "--show-level",
                "--show-log-origin",
            ]
        );
    }

    #[test]
    fn jailed_argv_has_no_id_after_the_separator_and_chroot_paths() {
        let (vmm, spec) = jailed();
        let (jail, layout) = vmm
            .jail_layout(&spec, Some(&VmJail::for_tests(1007, "nexus")))
            .unwrap()
            .unwrap();
        let paths = ArgPaths {
            api_socket: layout.api_socket.clone(),
            config: "/firecracker.json".into(),
            log: "/firecracker.log".into(),
            metrics: "/firecracker.metrics".into(),
        };
        let args = strings(jailer::jailer_args(&jail, &firecracker_args(None, &paths)).unwrap());
        let after: Vec<&str> = args
            .iter()
            .skip_while(|a| *a != "--")
            .skip(1)
            .map(String::as_str)
            .collect();
        assert_eq!(
            after,
            [
                "--api-sock",
                "/run/firecracker.sock",
                "--config-file",
                "/firecracker.json",
                "--log-path",
                "/firecracker.log",
                "--metrics-path",
                "/firecracker.metrics",
                "--level",
                "Warning",
                "--show-level",
                "--show-log-origin",
            ]
        );
    }

    #[test]
    fn jail_uses_vm_uuid_and_per_cid_identity() {
        let (vmm, spec) = jailed();
        let (jail, _) = vmm
            .jail_layout(&spec, Some(&VmJail::for_tests(1007, "nexus")))
            .unwrap()
            .unwrap();
        assert_eq!(
            (jail.id, jail.uid, jail.gid),
            (spec.vm_id.to_string(), 1007, 1007)
        );
    }

    #[test]
    fn jail_without_cgroups_is_refused() {
        let (mut vmm, spec) = jailed();
        vmm.jailer.as_mut().unwrap().cgroup_version = None;
        assert!(matches!(
            vmm.jail_layout(&spec, Some(&VmJail::for_tests(1007, "nexus"))),
            Err(VmmError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn long_runtime_dir_fails_validation_naming_the_socket() {
        let mut s = spec();
        s.runtime_dir = PathBuf::from(format!("/{}", "d".repeat(100)));
        s.vsock_uds = s.runtime_dir.join("vsock.sock");
        let err = FirecrackerVmm::new("fc").validate(&s, None).unwrap_err();
        assert!(matches!(err, VmmError::SocketPathTooLong { .. }));
    }

    #[test]
    fn boot_args_are_not_duplicated() {
        assert_eq!(
            boot_args("console=ttyS0 pci=off reboot=k"),
            "console=ttyS0 pci=off reboot=k"
        );
    }
}
