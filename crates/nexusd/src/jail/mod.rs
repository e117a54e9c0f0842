//! The jail every VMM and helper process runs in, so that a guest that escapes its VMM lands in an
//! empty, unprivileged box: a per-VM uid and gid (`jail_uid_base + vsock CID`, so no two live VMs
//! share one), no capabilities, `no_new_privs`, a private mount namespace whose root holds only
//! what the process needs (its VM's socket directory, drives, kernel and initrd, the read-only
//! system libraries, a few device nodes), and a per-VM cgroup with memory, pids and CPU limits.
//! Seccomp is the VMM's own (QEMU `-sandbox`, Firecracker's filters).
//!
//! [`Jailer`] holds the host-wide part (settings, cgroup hierarchy); [`VmJail`] is one VM's jail,
//! prepared before its processes start and torn down after they exit; [`VmJail::command`] builds
//! the command of one jailed process. Paths keep their host names inside the jail, so command
//! lines, socket paths and re-adoption look the same with and without it.

mod cgroup;
mod enter;

use std::ffi::{CString, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::MsFlags;
use nix::unistd::{Gid, Uid};

pub use cgroup::{Hierarchy, Limits, VmCgroup};
use enter::{Plan, PlannedBind};

/// Where jailed programs are bound inside the jail.
pub const JAIL_BIN_DIR: &str = "/nexus/bin";

/// Device nodes every jailed process gets.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

/// Host-wide jail settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// `false` runs VMMs unjailed, as nexusd's own children (a warning at every start).
    pub enabled: bool,
    /// A VM's uid and gid are `uid_base + its vsock CID`.
    pub uid_base: u32,
    /// Parent cgroup of the per-VM cgroups, relative to each hierarchy's root.
    pub cgroup_parent: String,
    /// Memory a VM's processes may use beyond the guest's memory (VMM code, TCG translation
    /// cache, vsock backend, page tables).
    pub memory_overhead_bytes: u64,
    pub pids_max: u64,
    pub cpu_weight: u32,
    /// An empty directory the jail's tmpfs root is mounted on, inside each jailed process's own
    /// mount namespace (nothing is ever mounted on it in the host's view).
    pub root_dir: PathBuf,
    /// `/proc/self/mounts`, read to find the cgroup hierarchies.
    pub mounts_file: PathBuf,
}

impl JailConfig {
    pub const DEFAULT_UID_BASE: u32 = 1_800_000_000;
    pub const DEFAULT_MEMORY_OVERHEAD: u64 = 256 << 20;
    pub const DEFAULT_PIDS_MAX: u64 = 256;
    pub const DEFAULT_CPU_WEIGHT: u32 = 100;

    /// The defaults, with the tmpfs mount point under `data_dir`.
    pub fn with_defaults(data_dir: &Path) -> Self {
        Self {
            enabled: true,
            uid_base: Self::DEFAULT_UID_BASE,
            cgroup_parent: default_cgroup_parent(data_dir),
            memory_overhead_bytes: Self::DEFAULT_MEMORY_OVERHEAD,
            pids_max: Self::DEFAULT_PIDS_MAX,
            cpu_weight: Self::DEFAULT_CPU_WEIGHT,
            root_dir: data_dir.join("jail-root"),
            mounts_file: "/proc/self/mounts".into(),
        }
    }
}

/// `nexus/<first 8 hex digits of the SHA-256 of the data directory>`: one parent per daemon, so
/// that daemons on other homes (tests run many at once) never take each other's cgroups for
/// orphans.
pub fn default_cgroup_parent(data_dir: &Path) -> String {
    format!("nexus/{}", crate::settings::data_dir_tag(data_dir, 4))
}

/// Why a jail could not be set up; the VM then fails to start with this as its reason.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "the VMM jail needs root (mount namespaces, uid switch, cgroups); run nexusd as root or set `jail = false`"
    )]
    NotRoot,
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} cannot be put in a jail: {reason}", path.display())]
    BadPath { path: PathBuf, reason: &'static str },
    #[error("uid {base} + CID {cid} overflows")]
    UidRange { base: u32, cid: u32 },
}

impl JailError {
    fn io(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { path, source }
    }
}

/// The host-wide jail: settings and where the cgroup controllers are.
#[derive(Debug)]
pub struct Jailer {
    cfg: JailConfig,
    /// Found on first use, so a host without cgroups fails VM starts, not the daemon.
    hierarchy: std::sync::OnceLock<Result<Hierarchy, String>>,
}

impl Jailer {
    pub fn new(cfg: JailConfig) -> Self {
        Self {
            cfg,
            hierarchy: std::sync::OnceLock::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn hierarchy(&self) -> Result<&Hierarchy, JailError> {
        self.hierarchy
            .get_or_init(|| {
                let mounts = std::fs::read_to_string(&self.cfg.mounts_file)
                    .map_err(|e| format!("cannot read {}: {e}", self.cfg.mounts_file.display()))?;
                Hierarchy::detect(&mounts).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| JailError::Cgroup(e.clone()))
    }

    /// The cgroup of VM `id` (which may not exist).
    pub fn cgroup(&self, id: &str) -> Result<VmCgroup, JailError> {
        Ok(VmCgroup::new(
            self.hierarchy()?,
            &self.cfg.cgroup_parent,
            id,
        ))
    }

    /// VM cgroups that exist under the parent, by name (VM id).
    pub fn cgroups(&self) -> Vec<String> {
        match self.hierarchy() {
            Ok(h) => cgroup::list(h, &self.cfg.cgroup_parent),
            Err(_) => Vec::new(),
        }
    }

    /// Removes the cgroup of VM `id` after killing anything left in it; blocking.
    pub fn remove_cgroup(&self, id: &str) {
        let Ok(cg) = self.cgroup(id) else { return };
        if cg.exists()
            && let Err(e) = cg.remove(Duration::from_secs(5))
        {
            tracing::warn!(vm = id, error = %nexus_lib::error::error_chain(&e), "cannot remove the VM's cgroup");
        }
    }

    /// Kills and removes every VM cgroup of this daemon and then the parent, if the host lets
    /// us (blocking; for tests and tear-down).
    pub fn remove_all_cgroups(&self) {
        for name in self.cgroups() {
            self.remove_cgroup(&name);
        }
        self.remove_parent_if_empty();
    }

    /// Removes the cgroup parent when no VM cgroup is left in it (at daemon shutdown); one
    /// still in use stays.
    pub fn remove_parent_if_empty(&self) {
        let Ok(h) = self.hierarchy() else { return };
        let mounts = match h {
            Hierarchy::V1(m) => m.clone(),
            Hierarchy::V2(m) => vec![m.clone()],
        };
        for mount in mounts {
            for dir in mount.join(&self.cfg.cgroup_parent).ancestors() {
                if dir == mount || std::fs::remove_dir(dir).is_err() {
                    break;
                }
            }
        }
    }

    /// Prepares the jail of one VM (blocking): checks privileges, creates its cgroup with its
    /// limits, and gives the VM's uid the files its VMM must write (`writable`: the socket
    /// directory and the drives).
    pub fn prepare(
        &self,
        id: &str,
        cid: u32,
        guest_memory_bytes: u64,
        writable: &[PathBuf],
    ) -> Result<VmJail, JailError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(JailError::NotRoot);
        }
        let uid = self
            .cfg
            .uid_base
            .checked_add(cid)
            .filter(|u| *u < u32::MAX - 1)
            .ok_or(JailError::UidRange {
                base: self.cfg.uid_base,
                cid,
            })?;
        std::fs::create_dir_all(&self.cfg.root_dir).map_err(JailError::io(&self.cfg.root_dir))?;
        let cgroup = self.cgroup(id)?;
        let limits = Limits {
            memory_bytes: guest_memory_bytes.saturating_add(self.cfg.memory_overhead_bytes),
            pids_max: self.cfg.pids_max,
            cpu_weight: self.cfg.cpu_weight,
        };
        cgroup.create(&limits)?;
        for path in writable {
            nix::unistd::chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))
                .map_err(|e| JailError::io(path)(e.into()))?;
        }
        Ok(VmJail {
            uid,
            gid: uid,
            cgroup,
            cgroup_parent: self.cfg.cgroup_parent.clone(),
            root_dir: self.cfg.root_dir.clone(),
            limits,
        })
    }
}

/// What a jailed process may see, besides the system libraries and device nodes every jailed
/// process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Files and directories bound at their own path, read-only unless `writable`.
    pub paths: Vec<(PathBuf, Access)>,
    /// Extra device nodes (`/dev/kvm`).
    pub devices: Vec<PathBuf>,
    /// A tun device node made for this VM (owned by its uid, see [`make_tun_node`]), bound at
    /// `/dev/net/tun`: hosts commonly keep theirs root-only.
    pub tun: Option<PathBuf>,
}

/// The device numbers of `/dev/net/tun` (`misc` major 10, minor 200).
const TUN_DEV: (u64, u64) = (10, 200);

/// Makes a tun device node at `path` that only `uid` may open (mode 0600), replacing any file
/// there, for a jailed VMM to open its tap through.
pub fn make_tun_node(path: &Path, uid: u32) -> std::io::Result<()> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(TUN_DEV.0, TUN_DEV.1),
    )?;
    nix::unistd::chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid)))?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// One VM's jail.
#[derive(Debug, Clone)]
pub struct VmJail {
    pub uid: u32,
    pub gid: u32,
    pub cgroup: VmCgroup,
    /// Parent of the VM's cgroup (what Firecracker's jailer calls `--parent-cgroup`).
    pub cgroup_parent: String,
    pub limits: Limits,
    root_dir: PathBuf,
}

impl VmJail {
    /// A jail value for unit tests of code that only reads it (nothing is created).
    #[cfg(test)]
    pub(crate) fn for_tests(uid: u32, cgroup_parent: &str) -> Self {
        Self {
            uid,
            gid: uid,
            cgroup: VmCgroup::new(
                &Hierarchy::V2("/nonexistent-cg".into()),
                cgroup_parent,
                "vm",
            ),
            cgroup_parent: cgroup_parent.into(),
            limits: Limits {
                memory_bytes: 512 << 20,
                pids_max: 256,
                cpu_weight: 100,
            },
            root_dir: "/nonexistent-jail-root".into(),
        }
    }

    /// The command that runs `program` with `args` inside this jail, seeing `view`. A program
    /// outside `/usr` is bound read-only at [`JAIL_BIN_DIR`]`/<its file name>`; the environment
    /// is empty but for `PATH`.
    pub fn command(
        &self,
        program: &Path,
        args: &[OsString],
        view: &View,
    ) -> Result<tokio::process::Command, JailError> {
        let program =
            std::fs::canonicalize(find_program(program)).map_err(JailError::io(program))?;
        let name = program.file_name().ok_or(JailError::BadPath {
            path: program.clone(),
            reason: "not a file",
        })?;
        // Programs of the system run from where they are (QEMU finds its modules relative to
        // its own path); others are bound at JAIL_BIN_DIR.
        let inside = if program.starts_with("/usr/") {
            program.clone()
        } else {
            Path::new(JAIL_BIN_DIR).join(name)
        };
        let cgroup_procs = self
            .cgroup
            .procs_files()?
            .into_iter()
            .map(OwnedFd::from)
            .collect();
        let plan = self.plan(&program, &inside, view, cgroup_procs)?;
        let plan = Arc::new(plan);
        let mut cmd = tokio::process::Command::new(&inside);
        cmd.args(args).env_clear().env("PATH", "/usr/bin:/bin");
        // SAFETY: `enter` only makes system calls on the plan prepared above (no allocation,
        // no locks), as required between fork and exec.
        unsafe {
            cmd.pre_exec(move || enter::enter(&plan));
        }
        Ok(cmd)
    }

    fn plan(
        &self,
        program: &Path,
        program_inside: &Path,
        view: &View,
        cgroup_procs: Vec<OwnedFd>,
    ) -> Result<Plan, JailError> {
        let mut b = PlanBuilder::new(&self.root_dir);
        // The system's libraries and the dynamic loader, read-only; /bin, /lib... as on the host
        // (symlinks into /usr on merged-/usr systems).
        b.bind(Path::new("/usr"), Path::new("/usr"), ro())?;
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(top);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(p).map_err(JailError::io(p))?;
                    b.symlink(&target, p)?;
                }
                Ok(m) if m.is_dir() => b.bind(p, p, ro())?,
                _ => {}
            }
        }
        let ld_cache = Path::new("/etc/ld.so.cache");
        if ld_cache.exists() {
            b.bind(ld_cache, ld_cache, ro())?;
        }
        if program != program_inside {
            b.bind(program, program_inside, ro())?;
        }
        for dev in DEVICES
            .iter()
            .map(Path::new)
            .chain(view.devices.iter().map(PathBuf::as_path))
        {
            b.bind(dev, dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
        }
        if let Some(tun) = &view.tun {
            b.bind(
                tun,
                Path::new("/dev/net/tun"),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            )?;
        }
        for (path, access) in &view.paths {
            let flags = match access {
                Access::ReadOnly => ro(),
                Access::ReadWrite => MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            };
            b.bind(path, path, flags)?;
        }
        let groups = view
            .devices
            .iter()
            .filter_map(|d| std::fs::metadata(d).ok())
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .filter(|g| *g != 0)
            .map(Gid::from_raw)
            .collect();
        Ok(Plan {
            root: cstring(&self.root_dir)?,
            dirs: b.dirs,
            files: b.files,
            symlinks: b.symlinks,
            binds: b.binds,
            cgroup_procs,
            uid: Uid::from_raw(self.uid),
            gid: Gid::from_raw(self.gid),
            groups,
        })
    }
}

/// `program` itself when it names a path, else the first executable of that name in `PATH`.
fn find_program(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_owned();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|p| crate::vmm::is_executable(p))
        .unwrap_or_else(|| program.to_owned())
}

fn ro() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

fn cstring(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::BadPath {
        path: path.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// Collects the directories, files, symlinks and binds of a jail root.
struct PlanBuilder {
    root: PathBuf,
    made: std::collections::HashSet<PathBuf>,
    dirs: Vec<CString>,
    files: Vec<CString>,
    symlinks: Vec<(CString, CString)>,
    binds: Vec<PlannedBind>,
}

impl PlanBuilder {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            made: std::collections::HashSet::new(),
            dirs: Vec::new(),
            files: Vec::new(),
            symlinks: Vec::new(),
            binds: Vec::new(),
        }
    }

    /// `inside` (absolute, without `..`) as a path under the root.
    fn under_root(&self, inside: &Path) -> Result<PathBuf, JailError> {
        let rel = inside.strip_prefix("/").map_err(|_| JailError::BadPath {
            path: inside.to_owned(),
            reason: "not absolute",
        })?;
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(JailError::BadPath {
                path: inside.to_owned(),
                reason: "not a plain absolute path",
            });
        }
        Ok(self.root.join(rel))
    }

    /// Creates the parents of `inside` in the jail.
    fn parents(&mut self, inside: &Path) -> Result<(), JailError> {
        let mut chain: Vec<&Path> = inside.ancestors().skip(1).collect();
        chain.reverse();
        for dir in chain.into_iter().filter(|d| *d != Path::new("/")) {
            if self.made.insert(dir.to_owned()) {
                let at = self.under_root(dir)?;
                self.dirs.push(cstring(&at)?);
            }
        }
        Ok(())
    }

    fn bind(&mut self, source: &Path, inside: &Path, flags: MsFlags) -> Result<(), JailError> {
        let meta = std::fs::metadata(source).map_err(JailError::io(source))?;
        self.parents(inside)?;
        let at = self.under_root(inside)?;
        if !self.made.insert(inside.to_owned()) {
            return Err(JailError::BadPath {
                path: inside.to_owned(),
                reason: "is bound twice",
            });
        }
        if meta.is_dir() {
            self.dirs.push(cstring(&at)?);
        } else {
            self.files.push(cstring(&at)?);
        }
        self.binds.push(PlannedBind {
            source: cstring(source)?,
            target: cstring(&at)?,
            flags,
        });
        Ok(())
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), JailError> {
        self.parents(link)?;
        self.made.insert(link.to_owned());
        let at = self.under_root(link)?;
        self.symlinks.push((cstring(target)?, cstring(&at)?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(root: &Path) -> VmJail {
        VmJail {
            root_dir: root.to_owned(),
            ..VmJail::for_tests(1000, "nexus")
        }
    }

    #[test]
    fn nested_binds_create_each_parent_once() {
        let mut b = PlanBuilder::new(Path::new("/j"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("drive.ext4");
        std::fs::write(&f, b"x").unwrap();
        b.bind(&f, Path::new("/a/b/drive.ext4"), ro()).unwrap();
        b.bind(dir.path(), Path::new("/a/c"), ro()).unwrap();
        let dirs: Vec<&str> = b.dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/j/a", "/j/a/b", "/j/a/c"]);
        assert_eq!(b.files[0].to_str().unwrap(), "/j/a/b/drive.ext4");
    }

    #[test]
    fn relative_and_dotdot_targets_are_refused() {
        let b = PlanBuilder::new(Path::new("/j"));
        assert!(b.under_root(Path::new("a/b")).is_err());
        assert!(b.under_root(Path::new("/a/../etc")).is_err());
    }

    #[test]
    fn the_same_target_cannot_be_bound_twice() {
        let mut b = PlanBuilder::new(Path::new("/j"));
        b.bind(Path::new("/dev/null"), Path::new("/dev/null"), ro())
            .unwrap();
        assert!(
            b.bind(Path::new("/dev/null"), Path::new("/dev/null"), ro())
                .is_err()
        );
    }

    #[test]
    fn plan_binds_program_libraries_devices_and_view() {
        let dir = tempfile::tempdir().unwrap();
        let drive = dir.path().join("root.ext4");
        std::fs::write(&drive, b"x").unwrap();
        let view = View {
            paths: vec![(drive.clone(), Access::ReadWrite)],
            devices: vec![],
            tun: None,
        };
        let j = jail(Path::new("/j"));
        let plan = j
            .plan(
                Path::new("/bin/true"),
                Path::new("/nexus/bin/true"),
                &view,
                Vec::new(),
            )
            .unwrap();
        let targets: Vec<String> = plan
            .binds
            .iter()
            .map(|b| b.target.to_str().unwrap().to_owned())
            .collect();
        assert!(targets.contains(&"/j/usr".to_owned()));
        assert!(targets.contains(&"/j/nexus/bin/true".to_owned()));
        assert!(targets.contains(&"/j/dev/null".to_owned()));
        assert!(targets.contains(&format!("/j{}", drive.display())));
        let drive_bind = plan.binds.last().unwrap();
        assert!(!drive_bind.flags.contains(MsFlags::MS_RDONLY));
        assert!(plan.binds[0].flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(plan.uid, Uid::from_raw(1000));
    }
}
