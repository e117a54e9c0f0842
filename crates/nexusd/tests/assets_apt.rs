//! The `debian-package` provider for real: Debian's cloud kernel through the host's own apt
//! configuration (needs apt-get, apt-cache and the Debian archive reachable through the host's
//! mirrors; a missing prerequisite fails naming it).

mod common;

use std::process::Command;

use common::{TestDaemon, ctl_json, rt, stderr, stdout};
use nexus_lib::api::{CreateProvider, ProviderKind};

const META: &str = "linux-image-cloud-amd64";

/// `apt-cache show` works for the cloud kernel, or the test fails saying what is missing.
fn require_apt() {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", META])
        .output()
        .unwrap_or_else(|e| panic!("this test needs apt-cache (Debian's apt): {e}"));
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "this test needs {META} in the host's apt lists: run `apt-get update` with Debian's archive reachable ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `Field:` of `apt-cache show --no-all-versions spec`.
fn apt_field(spec: &str, field: &str) -> String {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", spec])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}: ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("apt-cache show {spec} has no {field}"))
}

#[test]
fn kernel_download_fetches_the_cloud_kernel_through_the_hosts_apt() {
    require_apt();
    let d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &[]);

    let out = d.ctl(&["--json", "kernel", "download"]);

    assert!(
        out.status.success(),
        "the download through apt failed (is Debian's archive reachable through the host's apt mirrors?): {}\n{}",
        stderr(&out),
        d.log()
    );
    let assets: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (deb, kernel) = (&assets[0], &assets[1]);
    let versioned = kernel["name"].as_str().unwrap();
    assert!(
        versioned.starts_with("linux-image-") && versioned != META,
        "{versioned}"
    );
    assert_eq!(kernel["version"], apt_field(versioned, "Version"));
    assert_eq!(deb["kind"], "package");
    assert_eq!(deb["sha256"], apt_field(versioned, "SHA256"));
    let image = std::fs::read(kernel["path"].as_str().unwrap()).unwrap();
    assert_eq!(&image[0x202..0x206], b"HdrS", "not a bzImage");
    let verified = d.ctl(&["kernel", "verify", versioned]);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

#[test]
fn the_cloud_kernels_bzimage_converts_to_an_x86_64_elf_vmlinux() {
    require_apt();
    let d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &[]);
    let stages = serde_json::json!([
        {"stage": "fetch", "source": {"apt": {"package": "{package}", "follow_depends": "linux-image-"}}, "into": "deb"},
        {"stage": "extract", "artifact": "deb", "format": "deb", "into": "tree", "members": ["boot/vmlinuz-*"]},
        {"stage": "convert", "artifact": "tree", "member": "boot/vmlinuz-*", "to": "vmlinux", "into": "vmlinux"},
        {"stage": "install", "artifact": "vmlinux", "kind": "kernel", "name": "{apt_package}-vmlinux", "version": "{apt_version}"}
    ]);
    let provider = CreateProvider {
        name: "debian-vmlinux".into(),
        kind: ProviderKind::DebianPackage,
        settings: Default::default(),
        stages: Some(serde_json::from_value(stages).unwrap()),
    };
    rt().block_on(d.client.add_provider(&provider)).unwrap();

    let out = d.ctl(&[
        "--json",
        "kernel",
        "download",
        "--provider",
        "debian-vmlinux",
        "--package",
        META,
    ]);

    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let kernels = ctl_json(&d, &["kernel", "list"]);
    let elf = std::fs::read(kernels[0]["path"].as_str().unwrap()).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        62,
        "e_machine is not x86-64"
    );
}

#[test]
fn a_daemon_without_a_kernel_package_installs_one_through_its_provider_when_a_vm_boots() {
    require_apt();
    common::require_boot_prerequisites();
    let empty = tempfile::tempdir().unwrap();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--pool-size",
            "1G",
            "--kernel-dir",
            empty.path().to_str().unwrap(),
        ],
    );

    d.start_default_vm("fromapt", &[]);

    let packages = ctl_json(&d, &["asset", "list"]);
    let deb = packages
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "package")
        .unwrap_or_else(|| panic!("no package asset installed: {packages}"));
    let name = deb["name"].as_str().unwrap();
    assert!(name.ends_with("-cloud-amd64"), "{name}");
    let out = d.ctl(&["vm", "exec", "fromapt", "--", "uname", "-r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        name.strip_prefix("linux-image-").unwrap()
    );
    let stop = d.ctl(&["vm", "stop", "fromapt"]);
    assert!(stop.status.success(), "{}", stderr(&stop));
}
