//! The quick-start root filesystem: Debian's static busybox with its applet links and the handful
//! of `/etc` files a shell expects, written into a directory and packed into ext4 by `mke2fs -d`.
//! The agent itself comes from the initramfs, so the image needs no init of its own.

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
}

impl Default for RootfsOptions {
    fn default() -> Self {
        Self {
            busybox: PathBuf::from("/bin/busybox"),
            hostname: "nexus".into(),
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
    let busybox = dir.join("bin/busybox");
    fs::copy(&opts.busybox, &busybox).map_err(BootError::io(&opts.busybox))?;
    fs::set_permissions(&busybox, fs::Permissions::from_mode(0o755))
        .map_err(BootError::io(&busybox))?;
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
