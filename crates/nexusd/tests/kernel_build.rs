//! The guest kernel Nexus builds (`assets::kernel_build`) from Debian's `linux-source-6.1` with
//! `kernel/nexus-guest.config`, and VMs that boot it through the real nexusd under QEMU without
//! an initramfs: the kernel mounts the root drive, the agent in the image is PID 1.
//!
//! Needs what the VM tests need (tests/vm_boot.rs) plus the kernel build's packages
//! (build-essential bc flex bison libelf-dev libssl-dev lz4; scripts/setup.sh). The first run on a
//! machine downloads the source package and builds the kernel (about 6 minutes on 2 cores); later
//! runs find it in /var/cache/nexus/kernel-build by the hash of its inputs.

mod common;

use common::kernel::{built_kernel, fragment};
use common::{TestDaemon, stderr, stdout};
use nexusd::assets::kernel_build::{check_pvh_vmlinux, parse_fragment, unmet, verify_build};

/// A daemon booting the built kernel, with VM `name` running from the default image.
fn running_on_built_kernel(name: &str) -> TestDaemon {
    common::require_boot_prerequisites();
    let kernel = built_kernel();
    let vmlinux = kernel.vmlinux.to_str().unwrap().to_owned();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &["--pool-size", "1G", "--guest-kernel", &vmlinux],
    );
    d.start_default_vm(name, &[]);
    d
}

fn guest(d: &TestDaemon, vm: &str, cmd: &str) -> String {
    let out = d.ctl(&["vm", "exec", vm, "--", "sh", "-c", cmd]);
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn the_built_kernel_verifies_and_records_its_inputs() {
    let kernel = built_kernel();

    let record = verify_build(&kernel.dir).expect("the build verifies against SHA256SUMS");

    assert_eq!(record, kernel.record);
    let package = record.inputs.source_package.as_deref().unwrap_or_default();
    assert!(package.starts_with("linux-source-6.1 6.1."), "{package}");
    assert!(record.kernel_release.ends_with("-nexus"), "{record:?}");
    assert_eq!(check_pvh_vmlinux(&kernel.vmlinux), Ok(()));
    let bzimage = std::fs::read(&kernel.bzimage).unwrap();
    assert_eq!(
        &bzimage[0x202..0x206],
        b"HdrS",
        "a bzImage has the setup header"
    );
}

#[test]
fn the_built_kernel_keeps_every_line_of_the_fragment() {
    let kernel = built_kernel();
    let wanted = parse_fragment(&std::fs::read_to_string(fragment()).unwrap()).unwrap();

    let config = std::fs::read_to_string(kernel.dir.join("config")).unwrap();

    assert_eq!(unmet(&wanted, &config), []);
}

#[test]
fn a_vm_boots_the_built_kernel_without_initramfs_and_answers_exec() {
    let d = running_on_built_kernel("built");

    let release = guest(&d, "built", "uname -r");

    assert_eq!(release.trim(), built_kernel().record.kernel_release);
}

#[test]
fn on_the_built_kernel_the_agent_is_init_on_the_root_drive_the_kernel_mounted() {
    let d = running_on_built_kernel("init");

    let cmdline = guest(&d, "init", "cat /proc/cmdline");
    let mounts = guest(&d, "init", "cat /proc/mounts");
    let init = guest(&d, "init", "readlink /proc/1/exe");

    assert!(
        cmdline.contains("root=/dev/vda rw rootfstype=ext4"),
        "{cmdline}"
    );
    assert!(cmdline.contains("init=/sbin/nexus-agent"), "{cmdline}");
    assert!(cmdline.contains("tsc_early_khz="), "{cmdline}");
    assert!(cmdline.contains("tsc=reliable"), "{cmdline}");
    assert!(
        mounts.lines().any(|l| l.starts_with("/dev/root / ext4 rw")),
        "{mounts}"
    );
    for fs in [
        " /dev devtmpfs",
        " /dev/pts devpts",
        " /proc proc",
        " /sys sysfs",
        " /tmp tmpfs",
    ] {
        assert!(mounts.contains(fs), "{fs} missing: {mounts}");
    }
    assert_eq!(init.trim(), "/sbin/nexus-agent");
}

#[test]
fn a_missing_guest_kernel_fails_the_start_naming_the_setting() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--pool-size",
            "1G",
            "--guest-kernel",
            "/nonexistent/vmlinux",
        ],
    );

    let out = d.ctl(&["vm", "create", "nok", "--image", "default", "--start"]);

    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("guest_kernel /nonexistent/vmlinux cannot boot under QEMU"),
        "{text}"
    );
}

#[test]
fn a_bzimage_as_guest_kernel_is_refused_before_qemu_starts() {
    common::require_boot_prerequisites();
    let kernel = built_kernel();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &[
            "--pool-size",
            "1G",
            "--guest-kernel",
            kernel.bzimage.to_str().unwrap(),
        ],
    );

    let out = d.ctl(&["vm", "create", "bz", "--image", "default", "--start"]);

    let text = stderr(&out);
    assert!(text.contains("not an ELF file"), "{text}");
}
