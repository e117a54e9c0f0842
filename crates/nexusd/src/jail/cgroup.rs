//! Per-VM cgroups with a memory limit, a pids limit and a CPU weight, on cgroup v2 where the host
//! has the controllers there and on v1 otherwise (hybrid hosts keep memory, pids and cpu on v1
//! hierarchies under `/sys/fs/cgroup/<controller>/`), the way Firecracker's jailer supports both.
//!
//! Layout: `<mount>/<parent>/<vm-id>/` in each hierarchy used. The parent (`nexus` by default) is
//! created on first use; on v2 it delegates the three controllers to its children.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::JailError;

/// The controllers every VM cgroup uses.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Limits of one VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids_max: u64,
    /// cgroup v2 `cpu.weight` (1..=10000, 100 is the default share); v1 gets the same share as
    /// `cpu.shares` (1024 per 100).
    pub cpu_weight: u32,
}

/// Which cgroup hierarchy holds the controllers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// One v1 mount per controller, in [`CONTROLLERS`] order.
    V1(Vec<PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

impl Hierarchy {
    /// Finds where the controllers are from the text of `/proc/self/mounts`: v1 when every
    /// controller has a v1 hierarchy (they cannot be on both), else v2 when its mount lists them
    /// all in `cgroup.controllers`.
    pub fn detect(mounts: &str) -> Result<Self, JailError> {
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [_, dir, fstype, opts, ..] = f[..] else {
                continue;
            };
            match fstype {
                "cgroup2" => v2 = v2.or(Some(PathBuf::from(unescape_mount(dir)))),
                "cgroup" => {
                    for c in opts.split(',').filter(|o| CONTROLLERS.contains(o)) {
                        v1.push((c, PathBuf::from(unescape_mount(dir))));
                    }
                }
                _ => {}
            }
        }
        let on_v1: Vec<PathBuf> = CONTROLLERS
            .iter()
            .filter_map(|c| v1.iter().find(|(n, _)| n == c).map(|(_, d)| d.clone()))
            .collect();
        if on_v1.len() == CONTROLLERS.len() {
            return Ok(Self::V1(on_v1));
        }
        let Some(root) = v2 else {
            return Err(JailError::Cgroup(format!(
                "no cgroup v2 mount and no v1 hierarchy for {}",
                missing(&v1.iter().map(|(c, _)| *c).collect::<Vec<_>>())
            )));
        };
        let available = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let have: Vec<&str> = available.split_whitespace().collect();
        let have: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| have.contains(c) || v1.iter().any(|(n, _)| n == c))
            .collect();
        if have.len() < CONTROLLERS.len() || !v1.is_empty() {
            return Err(JailError::Cgroup(format!(
                "controller(s) {} are neither on cgroup v1 nor enabled on the v2 mount {}",
                missing(&have),
                root.display()
            )));
        }
        Ok(Self::V2(root))
    }
}

fn missing(have: &[&str]) -> String {
    CONTROLLERS
        .iter()
        .filter(|c| !have.contains(c))
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// One VM's cgroup (a directory per v1 hierarchy, or one v2 directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCgroup {
    version: u8,
    dirs: Vec<PathBuf>,
}

impl VmCgroup {
    /// The cgroup of `name` under `parent` (not created).
    pub fn new(hierarchy: &Hierarchy, parent: &str, name: &str) -> Self {
        let (version, mounts) = match hierarchy {
            Hierarchy::V1(m) => (1, m.clone()),
            Hierarchy::V2(m) => (2, vec![m.clone()]),
        };
        Self {
            version,
            dirs: mounts.iter().map(|m| m.join(parent).join(name)).collect(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The settings files and values for `limits`.
    pub fn settings(&self, limits: &Limits) -> Vec<(PathBuf, String)> {
        match self.version {
            1 => {
                let shares = (u64::from(limits.cpu_weight) * 1024 / 100).max(2);
                vec![
                    (
                        self.dirs[0].join("memory.limit_in_bytes"),
                        limits.memory_bytes.to_string(),
                    ),
                    (self.dirs[1].join("pids.max"), limits.pids_max.to_string()),
                    (self.dirs[2].join("cpu.shares"), shares.to_string()),
                ]
            }
            _ => vec![
                (
                    self.dirs[0].join("memory.max"),
                    limits.memory_bytes.to_string(),
                ),
                (self.dirs[0].join("memory.swap.max"), "0".to_owned()),
                (self.dirs[0].join("pids.max"), limits.pids_max.to_string()),
                (
                    self.dirs[0].join("cpu.weight"),
                    limits.cpu_weight.to_string(),
                ),
            ],
        }
    }

    /// Creates the cgroup (and its parent) and sets `limits`. An existing cgroup of the same
    /// name (left by a crash) is emptied and reused.
    pub fn create(&self, limits: &Limits) -> Result<(), JailError> {
        for dir in &self.dirs {
            let parent = dir.parent().unwrap_or(dir);
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(JailError::io(parent))?;
            }
            if self.version == 2 {
                delegate_controllers(parent)?;
            }
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    self.kill_all();
                }
                Err(e) => return Err(JailError::io(dir)(e)),
            }
        }
        for (file, value) in self.settings(limits) {
            // memory.swap.max is absent without swap accounting: nothing to limit then.
            if file.ends_with("memory.swap.max") && !file.exists() {
                continue;
            }
            fs::write(&file, &value).map_err(|e| {
                JailError::Cgroup(format!("cannot write {value} to {}: {e}", file.display()))
            })?;
        }
        Ok(())
    }

    /// Opens the `cgroup.procs` files a child writes its pid into before it executes.
    pub fn procs_files(&self) -> Result<Vec<File>, JailError> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .map_err(JailError::io(&p))
            })
            .collect()
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILLs every process still in the cgroup.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what is left in the cgroup and removes it; waits up to `limit` for the processes
    /// to be gone (a cgroup with members cannot be removed). Removing one that does not exist
    /// is fine.
    pub fn remove(&self, limit: Duration) -> Result<(), JailError> {
        let start = Instant::now();
        for dir in &self.dirs {
            loop {
                self.kill_all();
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if start.elapsed() < limit => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(JailError::io(dir)(e)),
                }
            }
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }
}

/// Names of the VM cgroups under `parent` in `hierarchy` (each a VM id).
pub fn list(hierarchy: &Hierarchy, parent: &str) -> Vec<String> {
    let first = match hierarchy {
        Hierarchy::V1(m) => m.clone(),
        Hierarchy::V2(m) => vec![m.clone()],
    };
    let mut names: Vec<String> = first
        .iter()
        .filter_map(|m| fs::read_dir(m.join(parent)).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// On v2, a cgroup's children get only the controllers enabled in its `cgroup.subtree_control`;
/// enables ours from the root down to `dir`.
fn delegate_controllers(dir: &Path) -> Result<(), JailError> {
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for d in chain {
        let control = d.join("cgroup.subtree_control");
        let Ok(current) = fs::read_to_string(&control) else {
            continue;
        };
        let want: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| !current.split_whitespace().any(|e| e == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if want.is_empty() {
            continue;
        }
        fs::write(&control, want.join(" ")).map_err(|e| {
            JailError::Cgroup(format!(
                "cannot enable {} in {}: {e}",
                want.join(" "),
                control.display()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn hybrid_host_uses_v1_hierarchies_in_controller_order() {
        assert_eq!(
            Hierarchy::detect(HYBRID).unwrap(),
            Hierarchy::V1(vec![
                "/sys/fs/cgroup/memory".into(),
                "/sys/fs/cgroup/pids".into(),
                "/sys/fs/cgroup/cpu".into(),
            ])
        );
    }

    #[test]
    fn combined_v1_mount_serves_several_controllers() {
        let m = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                 cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                 cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n";
        let Hierarchy::V1(dirs) = Hierarchy::detect(m).unwrap() else {
            panic!("v1 expected")
        };
        assert_eq!(dirs[2], PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    }

    #[test]
    fn missing_hierarchies_are_named() {
        let m = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n";
        let err = Hierarchy::detect(m).unwrap_err().to_string();
        assert!(err.contains("pids, cpu"), "{err}");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount(r"/a\040b\134c"), r"/a b\c");
    }

    #[test]
    fn v1_settings_use_v1_files_and_shares() {
        let h = Hierarchy::detect(HYBRID).unwrap();
        let cg = VmCgroup::new(&h, "nexus", "vm1");
        let limits = Limits {
            memory_bytes: 512 << 20,
            pids_max: 128,
            cpu_weight: 100,
        };
        assert_eq!(
            cg.settings(&limits),
            vec![
                (
                    "/sys/fs/cgroup/memory/nexus/vm1/memory.limit_in_bytes".into(),
                    "536870912".into()
                ),
                (
                    "/sys/fs/cgroup/pids/nexus/vm1/pids.max".into(),
                    "128".into()
                ),
                (
                    "/sys/fs/cgroup/cpu/nexus/vm1/cpu.shares".into(),
                    "1024".into()
                ),
            ]
        );
    }

    #[test]
    fn v2_settings_live_in_one_directory() {
        let cg = VmCgroup::new(&Hierarchy::V2("/cg".into()), "nexus", "vm1");
        let limits = Limits {
            memory_bytes: 1 << 30,
            pids_max: 64,
            cpu_weight: 50,
        };
        let files: Vec<String> = cg
            .settings(&limits)
            .into_iter()
            .map(|(f, v)| format!("{}={v}", f.display()))
            .collect();
        assert_eq!(
            files,
            [
                "/cg/nexus/vm1/memory.max=1073741824",
                "/cg/nexus/vm1/memory.swap.max=0",
                "/cg/nexus/vm1/pids.max=64",
                "/cg/nexus/vm1/cpu.weight=50",
            ]
        );
    }
}
