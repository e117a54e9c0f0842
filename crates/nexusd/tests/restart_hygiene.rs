//! What happens while nexusd is down is bounded by the next one: the embedded pool a daemon killed
//! with `-9` mounted is unmounted (and its loop device freed) at the next clean shutdown, and a
//! console the guest kept filling is capped before anything reads it.
//! Needs root, btrfs-progs and e2fsprogs; the console test also boots a VM (scripts/test.sh).
//! A missing prerequisite fails naming it.

mod common;

use std::path::{Path, PathBuf};

use std::io::Write;

use common::{TestDaemon, ctl_json, rt, sample_tree, stderr};

/// Whether `/proc/self/mountinfo` lists a mount at `root`.
fn is_mounted(root: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.contains(&format!(" {} ", root.display()))
}

/// The loop devices whose backing file is `file`.
fn loop_devices_backing(file: &Path) -> Vec<PathBuf> {
    let file = std::fs::canonicalize(file).unwrap();
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim_end()) == file)
        })
        .map(|e| e.path())
        .collect()
}

#[test]
fn pool_mounted_before_a_kill_9_is_unmounted_and_its_loop_freed_at_the_next_clean_shutdown() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );
    let root = std::fs::canonicalize(d.pool_root()).unwrap();
    let image = d.home().join("data/pool.img");
    assert!(is_mounted(&root));
    let mut d = d.kill_and_restart();

    let status = d.stop();

    assert!(status.success(), "{status}");
    assert!(
        !is_mounted(&root),
        "pool still mounted at {}",
        root.display()
    );
    assert_eq!(loop_devices_backing(&image), Vec::<PathBuf>::new());
    assert!(!d.home().join("data/pool.img.mounted").exists());
}

const CONSOLE_CAP: u64 = 1 << 20;

#[test]
fn console_filled_with_100_mb_while_nexusd_is_down_is_within_its_cap_after_restart() {
    common::require_boot_prerequisites();
    let cap = CONSOLE_CAP.to_string();
    let flags = ["--pool-size", "1G", "--console-max-bytes", cap.as_str()];
    let mut d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &flags);
    let out = d.ctl(&["vm", "create", "chatty", "--image", "default", "--start"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let id = rt().block_on(d.client.get_vm("chatty")).unwrap().id;
    let log = d.home().join(format!("data/vms/{id}/console.log"));
    assert!(d.stop().success());
    // What the guest would print through the VMM's O_APPEND console while no daemon caps it.
    let mut console = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        console.write_all(&chunk).unwrap();
    }
    drop(console);
    let home = std::mem::replace(&mut d.home, tempfile::tempdir().unwrap());

    let d = TestDaemon::start_logged(home, &flags);

    let size = std::fs::metadata(&log).unwrap().len();
    let rotated = std::fs::metadata(log.with_extension("log.1"))
        .unwrap()
        .len();
    assert!(size <= CONSOLE_CAP, "console is {size} bytes");
    assert!(rotated <= CONSOLE_CAP, "rotated console is {rotated} bytes");
    let out = d.ctl(&["vm", "stop", "chatty"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
