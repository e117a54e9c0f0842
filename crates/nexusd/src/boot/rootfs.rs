//! The quick-start root filesystem: Debian's static busybox with its applet links and the handful
//! of `/etc` files a shell expects, written into a directory and packed into ext4 by `mke2fs -d`.
//! Booted with Debian's kernel, the agent comes from the initramfs; a kernel that boots without
//! one (the built kernel) runs the agent from the image, at [`ROOT_AGENT_PATH`], so the image
//! carries it when given one.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::BootError;
use crate::command;

/// Inputs of [`build_busybox_rootfs`].
#[derive(Debug, Clone)]
pub struct RootfsOptions {
    /// A static busybox binary (Debian's `busybox-static` installs `/bin/busybox`).
    pub busybox: PathBuf,
    pub hostname: String,
    /// The static guest agent, installed as [`ROOT_AGENT_PATH`].
    pub agent: Option<PathBuf>,
}

/// Where the guest agent sits in a root drive booted without an initramfs (`init=` names it).
pub const ROOT_AGENT_PATH: &str = "/sbin/nexus-agent";

impl Default for RootfsOptions {
    fn default() -> Self {
        Self {
            busybox: PathBuf::from("/bin/busybox"),
            hostname: "nexus".into(),
            agent: None,
        }
    }
}

const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("sbin", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("etc", 0o755),
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("var/tmp", 0o1777),
    ("var/log", 0o755),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
];

/// Fills `dir` (created if missing) with a busybox system.
pub fn build_busybox_rootfs(dir: &Path, opts: &RootfsOptions) -> Result<(), BootError> {
    for (sub, mode) in DIRS {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(BootError::io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
            .map_err(BootError::io(&path))?;
    }
    let mut binaries = vec![(&opts.busybox, "bin/busybox")];
    if let Some(agent) = &opts.agent {
        binaries.push((agent, ROOT_AGENT_PATH.trim_start_matches('/')));
    }
    for (from, to) in binaries {
        let to = dir.join(to);
        fs::copy(from, &to).map_err(BootError::io(from))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).map_err(BootError::io(&to))?;
    }
    let applets = command::run(Command::new(&opts.busybox).arg("--list-full"), &[0])?.stdout;
    for applet in String::from_utf8_lossy(&applets).lines().map(str::trim) {
        let link = dir.join(applet);
        if applet.is_empty() || applet.contains("..") || link.exists() {
            continue;
        }
        symlink("/bin/busybox", &link).map_err(BootError::io(&link))?;
    }
    let os_release = "NAME=\"Nexus busybox\"\nID=nexus-busybox\nPRETTY_NAME=\"Nexus busybox quick-start image\"\n";
    let files = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n"),
        ("etc/hostname", &format!("{}\n", opts.hostname)),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("etc/os-release", os_release),
        (
            "etc/profile",
            "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n",
        ),
        ("etc/resolv.conf", ""),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        fs::write(&path, content).map_err(BootError::io(&path))?;
    }
    let shadow = dir.join("etc/shadow");
    fs::set_permissions(&shadow, fs::Permissions::from_mode(0o600)).map_err(BootError::io(&shadow))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_agent_is_installed_executable_where_init_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("nexus-agent");
        fs::write(&agent, b"agent bytes").unwrap();
        let root = dir.path().join("root");
        let opts = RootfsOptions {
            agent: Some(agent),
            ..RootfsOptions::default()
        };

        build_busybox_rootfs(&root, &opts).unwrap();

        let installed = root.join("sbin/nexus-agent");
        assert_eq!(fs::read(&installed).unwrap(), b"agent bytes");
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn without_an_agent_the_image_has_none() {
        let dir = tempfile::tempdir().unwrap();

        build_busybox_rootfs(dir.path(), &RootfsOptions::default()).unwrap();

        assert!(!dir.path().join("sbin/nexus-agent").exists());
    }
}
