//! Firecracker's own `jailer`: when one is installed, Firecracker is started through it, so it runs
//! chrooted in `<chroot-base>/<exec-name>/<id>/root`, as an unprivileged uid/gid, in a per-VM
//! cgroup (v1 or v2) with resource limits.
//!
//! Three pure parts, unit-tested on their exact output: [`jailer_args`] (the argv), [`layout`]
//! (which host files appear at which chroot-relative names, and where the sockets are), and
//! [`detect_cgroup_version`] (from `/proc/mounts` text). Two that touch the disk:
//! [`prepare_layout`] (hard link when on the same file system, else a bind mount; chown what
//! Firecracker must write) and [`teardown`] (unmount, remove the jail, remove the VM's cgroups).
//!
//! Facts from Firecracker's `docs/jailer.md` and `src/jailer/src/env.rs` (v1.16): the jailer
//! itself passes `--id`, `--start-time-us`, `--start-time-cpu-us` and `--parent-cpu-time-us` to
//! Firecracker, so they never appear after our `--`; it copies the exec file to
//! `<chroot>/<exec-name>`, creates `<chroot>/dev/{kvm,net/tun}`, chowns `<chroot>` itself, and
//! does nothing when the chroot already exists (so the layout can be prepared first); it neither
//! removes the chroot nor the cgroups afterwards: that is the operator's job ([`teardown`]).

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VmmError;

/// Longest id the jailer accepts.
pub const MAX_JAIL_ID_LEN: usize = 64;
/// Open files of the VMM (the jailer's own default).
pub const NO_FILE: u64 = 2048;
/// Name of the file in the VM's runtime directory that records its jail for [`teardown`].
const JAIL_RECORD: &str = "jail.json";

/// Which cgroup hierarchy the jailer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn arg(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2 => "2",
        }
    }
}

/// Per-VM cgroup settings, written by the jailer through `--cgroup <file>=<value>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    pub pids_max: u32,
    /// Relative CPU share: 100 is one ordinary task (v2 `cpu.weight`; v1 `cpu.shares` scales it
    /// to 1024).
    pub cpu_weight: u32,
}

impl CgroupLimits {
    /// The `<file>=<value>` pairs for `version`.
    pub fn files(&self, version: CgroupVersion) -> Vec<String> {
        match version {
            CgroupVersion::V1 => vec![
                format!("memory.limit_in_bytes={}", self.memory_bytes),
                format!("pids.max={}", self.pids_max),
                format!("cpu.shares={}", u64::from(self.cpu_weight) * 1024 / 100),
            ],
            CgroupVersion::V2 => vec![
                format!("memory.max={}", self.memory_bytes),
                format!("pids.max={}", self.pids_max),
                format!("cpu.weight={}", self.cpu_weight),
            ],
        }
    }
}

/// `setrlimit` bounds the jailer applies (`--resource-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    pub no_file: u64,
    /// `RLIMIT_FSIZE`. Off by default: Linux checks it against the *offset* of every write, not
    /// against growth, so it must exceed the largest drive, and Firecracker's log offset only
    /// ever grows (it writes without `O_APPEND`); a VMM past it dies of `SIGXFSZ`.
    pub fsize: Option<u64>,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self {
            no_file: NO_FILE,
            fsize: None,
        }
    }
}

/// Everything the jailer needs for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The VM's UUID (alphanumerics and `-`, at most 64 bytes).
    pub id: String,
    pub exec_file: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    pub cgroup_version: CgroupVersion,
    pub parent_cgroup: String,
    pub cgroups: CgroupLimits,
    pub limits: ResourceLimits,
}

/// Why a VM cannot be jailed as asked.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail id {0:?} must be 1 to 64 letters, digits or '-'")]
    BadId(String),
    #[error("exec file {} has no file name", .0.display())]
    NoExecName(PathBuf),
    #[error("parent cgroup {0:?} must be a relative path without '.' or '..'")]
    BadParentCgroup(String),
}

impl JailSpec {
    fn validate(&self) -> Result<(), JailError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= MAX_JAIL_ID_LEN
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !id_ok {
            return Err(JailError::BadId(self.id.clone()));
        }
        let parent = Path::new(&self.parent_cgroup);
        if self.parent_cgroup.is_empty()
            || parent
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(JailError::BadParentCgroup(self.parent_cgroup.clone()));
        }
        self.exec_name().map(drop)
    }

    fn exec_name(&self) -> Result<&std::ffi::OsStr, JailError> {
        self.exec_file
            .file_name()
            .ok_or_else(|| JailError::NoExecName(self.exec_file.clone()))
    }

    /// `<chroot-base>/<exec-name>/<id>`: what [`teardown`] removes.
    pub fn jail_dir(&self) -> Result<PathBuf, JailError> {
        Ok(self.chroot_base.join(self.exec_name()?).join(&self.id))
    }

    /// `<chroot-base>/<exec-name>/<id>/root`: Firecracker's `/`.
    pub fn chroot_dir(&self) -> Result<PathBuf, JailError> {
        Ok(self.jail_dir()?.join("root"))
    }
}

/// The jailer's argv (without the program), then `--` and `firecracker_args`. Never `--daemonize`
/// (the supervisor owns the process: the jailer execs Firecracker in place, keeping its pid) nor
/// `--new-pid-ns` (which would fork and give Firecracker another pid).
pub fn jailer_args(
    jail: &JailSpec,
    firecracker_args: &[OsString],
) -> Result<Vec<OsString>, JailError> {
    jail.validate()?;
    let mut args: Vec<OsString> = Vec::new();
    let mut pair = |flag: &str, value: OsString| {
        args.push(flag.into());
        args.push(value);
    };
    pair("--id", jail.id.clone().into());
    pair("--exec-file", jail.exec_file.clone().into());
    pair("--uid", jail.uid.to_string().into());
    pair("--gid", jail.gid.to_string().into());
    pair("--chroot-base-dir", jail.chroot_base.clone().into());
    pair("--cgroup-version", jail.cgroup_version.arg().into());
    pair("--parent-cgroup", jail.parent_cgroup.clone().into());
    for file in jail.cgroups.files(jail.cgroup_version) {
        pair("--cgroup", file.into());
    }
    pair(
        "--resource-limit",
        format!("no-file={}", jail.limits.no_file).into(),
    );
    if let Some(fsize) = jail.limits.fsize {
        pair("--resource-limit", format!("fsize={fsize}").into());
    }
    args.push("--".into());
    args.extend(firecracker_args.iter().cloned());
    Ok(args)
}

/// One host file made visible inside the chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutEntry {
    pub host: PathBuf,
    /// Absolute as Firecracker sees it (`/vmlinux`); the host path is `<chroot>` + this.
    pub inside: PathBuf,
    /// Chowned to the jail's uid/gid (drives, which Firecracker opens read-write, and its log
    /// and metrics files).
    pub owned: bool,
    /// Bind mounts of it are made read-only.
    pub read_only: bool,
}

/// The host files a jailed Firecracker needs, by role; input of [`layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutInput {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `(drive id, host path, read-only)`, the root drive first.
    pub drives: Vec<(String, PathBuf, bool)>,
    pub config_file: PathBuf,
    pub log: PathBuf,
    pub metrics: PathBuf,
}

/// Where everything sits in a chroot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrootLayout {
    /// The host directory that is Firecracker's `/`.
    pub chroot: PathBuf,
    pub entries: Vec<LayoutEntry>,
    /// Directory (inside) holding Firecracker's sockets, owned by the jail's uid/gid.
    pub socket_dir: PathBuf,
    pub api_socket: PathBuf,
    pub vsock_uds: PathBuf,
}

impl ChrootLayout {
    /// The host path of something inside the chroot.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.chroot.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// The chroot-relative name given to `host`, if it is in the layout.
    pub fn inside_path(&self, host: &Path) -> Option<&Path> {
        self.entries
            .iter()
            .find(|e| e.host == host)
            .map(|e| e.inside.as_path())
    }
}

/// Names inside the chroot are fixed (never the host's names), so nothing the host path holds
/// (commas, length, `..`) reaches Firecracker, and `<chroot>/firecracker` (the jailer's copy of
/// the binary) and `<chroot>/dev` never clash.
pub fn layout(jail: &JailSpec, input: &LayoutInput) -> Result<ChrootLayout, JailError> {
    jail.validate()?;
    let entry = |host: &Path, inside: String, owned: bool, read_only: bool| LayoutEntry {
        host: host.to_path_buf(),
        inside: PathBuf::from(inside),
        owned,
        read_only,
    };
    let mut entries = vec![entry(&input.kernel, "/vmlinux".into(), false, true)];
    if let Some(initrd) = &input.initrd {
        entries.push(entry(initrd, "/initrd".into(), false, true));
    }
    for (id, path, read_only) in &input.drives {
        entries.push(entry(path, format!("/drive-{id}"), true, *read_only));
    }
    entries.push(entry(
        &input.config_file,
        "/firecracker.json".into(),
        false,
        true,
    ));
    entries.push(entry(&input.log, "/firecracker.log".into(), true, false));
    entries.push(entry(
        &input.metrics,
        "/firecracker.metrics".into(),
        true,
        false,
    ));
    Ok(ChrootLayout {
        chroot: jail.chroot_dir()?,
        entries,
        socket_dir: "/run".into(),
        api_socket: "/run/firecracker.sock".into(),
        vsock_uds: "/run/vsock.sock".into(),
    })
}

/// What [`teardown`] needs, kept in the VM's runtime directory so a restarted daemon (or the
/// next boot) still finds a jail left behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct JailRecord {
    jail_dir: PathBuf,
    chroot: PathBuf,
    inside: Vec<PathBuf>,
    id: String,
    parent_cgroup: String,
}

/// Builds the chroot on disk: each entry hard-linked (same file system) or else bind-mounted
/// over an empty file, owned entries and the socket directory chowned to `owner`. Records the
/// jail in `runtime_dir` first, so a failure half way is still torn down.
pub fn prepare_layout(
    jail: &JailSpec,
    layout: &ChrootLayout,
    owner: Option<(u32, u32)>,
    runtime_dir: &Path,
) -> Result<(), VmmError> {
    let jail_dir = jail
        .jail_dir()
        .map_err(|e| VmmError::io(&jail.chroot_base)(std::io::Error::other(e)))?;
    // A jail left by an earlier boot (a crash, a daemon killed mid-start) goes first.
    teardown(runtime_dir, Path::new("/proc/mounts"));
    let record = JailRecord {
        jail_dir,
        chroot: layout.chroot.clone(),
        inside: layout.entries.iter().map(|e| e.inside.clone()).collect(),
        id: jail.id.clone(),
        parent_cgroup: jail.parent_cgroup.clone(),
    };
    let record_path = runtime_dir.join(JAIL_RECORD);
    let json = serde_json::to_vec(&record).map_err(|e| VmmError::io(&record_path)(e.into()))?;
    fs::write(&record_path, json).map_err(VmmError::io(&record_path))?;

    fs::create_dir_all(&layout.chroot).map_err(VmmError::io(&layout.chroot))?;
    let socket_dir = layout.host_path(&layout.socket_dir);
    fs::create_dir_all(&socket_dir).map_err(VmmError::io(&socket_dir))?;
    fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o700))
        .map_err(VmmError::io(&socket_dir))?;
    chown(&socket_dir, owner)?;
    for e in &layout.entries {
        let target = layout.host_path(&e.inside);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(VmmError::io(parent))?;
        }
        link_or_bind(&e.host, &target, e.read_only)?;
        if e.owned {
            chown(&target, owner)?;
        }
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), VmmError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(VmmError::io(path))
}

fn link_or_bind(host: &Path, target: &Path, read_only: bool) -> Result<(), VmmError> {
    // A leftover of a jail whose record was lost; a leftover mount point refuses (EBUSY).
    match fs::remove_file(target) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(VmmError::io(target)(e)),
        _ => {}
    }
    match fs::hard_link(host, target) {
        Ok(()) => Ok(()),
        // Another file system, or another btrfs subvolume (a drive in the pool).
        Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => bind(host, target, read_only),
        Err(e) => Err(VmmError::io(target)(e)),
    }
}

fn bind(host: &Path, target: &Path, read_only: bool) -> Result<(), VmmError> {
    use nix::mount::{MsFlags, mount};
    fs::File::create(target).map_err(VmmError::io(target))?;
    let errno = |e: nix::Error| VmmError::io(target)(std::io::Error::from(e));
    mount::<Path, Path, str, str>(Some(host), target, None, MsFlags::MS_BIND, None)
        .map_err(errno)?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount::<str, Path, str, str>(None, target, None, flags, None).map_err(errno)?;
    }
    Ok(())
}

/// Undoes [`prepare_layout`] for the VM whose runtime directory is `runtime_dir`, and removes
/// the cgroups the jailer made for it (found through `proc_mounts`). Best effort and idempotent:
/// nothing recorded, nothing done. Unmounts come first, so removing the jail never reaches
/// through a bind mount into a drive.
pub fn teardown(runtime_dir: &Path, proc_mounts: &Path) {
    let record_path = runtime_dir.join(JAIL_RECORD);
    let Ok(text) = fs::read(&record_path) else {
        return;
    };
    let Ok(record) = serde_json::from_slice::<JailRecord>(&text) else {
        let _ = fs::remove_file(&record_path);
        return;
    };
    for inside in &record.inside {
        let target = record
            .chroot
            .join(inside.strip_prefix("/").unwrap_or(inside));
        // EINVAL: not a mount point (a hard link), nothing to undo.
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
    }
    match fs::remove_dir_all(&record.jail_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %record.jail_dir.display(), error = %e, "cannot remove a Firecracker jail");
            return;
        }
    }
    let mounts = fs::read_to_string(proc_mounts).unwrap_or_default();
    for dir in cgroup_dirs(&mounts, &record.parent_cgroup, &record.id) {
        // Busy (a process still in it) or gone: either way nothing more to do here.
        let _ = fs::remove_dir(&dir);
    }
    let _ = fs::remove_file(&record_path);
}

/// `<mount>/<parent>/<id>` under every cgroup (v1 or v2) mount point.
fn cgroup_dirs(proc_mounts: &str, parent: &str, id: &str) -> Vec<PathBuf> {
    proc_mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| Path::new(mount).join(parent).join(id))
        })
        .collect()
}

/// The hierarchy the jailer should use: v1 when the memory controller is on a v1 mount (hybrid
/// hosts such as these machines), else v2 when a `cgroup2` mount exists.
pub fn detect_cgroup_version(proc_mounts: &str) -> Option<CgroupVersion> {
    let mut v2 = false;
    for line in proc_mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, _, fstype, options, ..] = fields[..] else {
            continue;
        };
        match fstype {
            "cgroup" if options.split(',').any(|o| o == "memory") => {
                return Some(CgroupVersion::V1);
            }
            "cgroup2" => v2 = true,
            _ => {}
        }
    }
    v2.then_some(CgroupVersion::V2)
}

/// Where to look for a jailer: the configured one only, when set; else next to the Firecracker
/// binary, then `/usr/local/bin` and `/usr/bin`.
pub fn jailer_candidates(configured: Option<&Path>, firecracker: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = configured {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    if let Some(dir) = firecracker.and_then(Path::parent) {
        out.push(dir.join("jailer"));
    }
    for p in ["/usr/local/bin/jailer", "/usr/bin/jailer"] {
        if !out.iter().any(|o| o == Path::new(p)) {
            out.push(p.into());
        }
    }
    out
}

#[cfg(test)]
#[path = "jailer_tests.rs"]
mod tests;
