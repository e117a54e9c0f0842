//! The `kernel-build` provider end to end through the real nexusd and `nexusctl kernel build`:
//! the source package through the host's apt, the build in the daemon's build cache, its
//! `SHA256SUMS` signed with the key nexusd generated and pinned, the kernels installed as
//! assets, and a VM that then boots the built kernel without being told to.
//!
//! The daemon's cache is a private copy of the one `tests/common/kernel.rs` fills (a fresh
//! machine builds it once, about 6 minutes on 2 cores), so this test builds nothing itself and
//! can change its copy. Needs what the VM tests need (tests/vm_boot.rs) and the kernel build's
//! packages (scripts/setup.sh).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::kernel::built_kernel;
use common::{TestDaemon, ctl_json, stderr, stdout};

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn kernel_build_installs_a_signed_kernel_that_new_vms_boot_and_refuses_a_tampered_cache() {
    common::require_boot_prerequisites();
    let kernel = built_kernel();
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join(&kernel.record.key);
    copy_dir(&kernel.dir, &dir);
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--pool-size",
            "1G",
            "--kernel-build-dir",
            cache.path().to_str().unwrap(),
        ],
    );

    // The build: found in the cache, signed by the new key, its two kernels installed.
    let assets = ctl_json(&d, &["kernel", "build"]);
    let assets = assets.as_array().unwrap();
    let version = format!(
        "{}-{}",
        kernel.record.kernel_release,
        &kernel.record.key[..12]
    );
    let mut names: Vec<&str> = assets.iter().map(|a| a["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["nexus-guest", "nexus-guest-bzimage"]);
    for asset in assets {
        assert_eq!(asset["kind"], "kernel");
        assert_eq!(asset["version"], version.as_str(), "{asset}");
        assert_eq!(asset["provider"], "kernel-build");
    }
    let vmlinux = assets.iter().find(|a| a["name"] == "nexus-guest").unwrap();
    assert_eq!(vmlinux["sha256"], sha256_hex(&kernel.vmlinux).as_str());

    let keys = d.home().join("data/assets/keys");
    let secret = std::fs::metadata(keys.join("build.key")).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    let fingerprint = std::fs::read_to_string(keys.join("build.fingerprint")).unwrap();
    let fingerprint = fingerprint.trim();
    let signature = dir.join(format!("SHA256SUMS.{}.asc", &fingerprint[24..]));
    assert!(signature.is_file(), "no {}", signature.display());

    let verify = d.ctl(&["kernel", "verify", "nexus-guest"]);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // A VM made now boots the installed kernel: no --guest-kernel, no initramfs.
    d.start_default_vm("onbuilt", &[]);
    let out = d.ctl(&[
        "vm",
        "exec",
        "onbuilt",
        "--",
        "sh",
        "-c",
        "uname -r; cat /proc/cmdline",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&kernel.record.kernel_release), "{text}");
    assert!(text.contains("init=/sbin/nexus-agent"), "{text}");
    let stop = d.ctl(&["vm", "stop", "onbuilt"]);
    assert!(stop.status.success(), "{}", stderr(&stop));

    // Building again is a cache hit that finds the same assets installed.
    let again = ctl_json(&d, &["kernel", "build"]);
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v.iter().map(|a| a["id"].to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(again.as_array().unwrap()), ids(assets));

    // A cached build changed behind nexusd's back, with sums to match, is refused: its
    // signature no longer covers the sums.
    let mut bytes = std::fs::read(dir.join("vmlinux")).unwrap();
    bytes.push(0);
    std::fs::write(dir.join("vmlinux"), &bytes).unwrap();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let old = sha256_hex(&kernel.vmlinux);
    let new = sha256_hex(&dir.join("vmlinux"));
    std::fs::write(dir.join("SHA256SUMS"), sums.replace(&old, &new)).unwrap();
    let out = d.ctl(&["kernel", "build"]);
    assert!(!out.status.success(), "a tampered cache was installed");
    let err = stderr(&out);
    assert!(
        err.contains("not signed by this nexusd's build key"),
        "{err}"
    );
    let kernels = ctl_json(&d, &["kernel", "list"]);
    assert_eq!(kernels.as_array().unwrap().len(), 2, "{kernels}");
}
