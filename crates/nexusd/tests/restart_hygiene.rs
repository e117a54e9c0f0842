//! What a daemon killed with `-9` leaves behind is cleaned up by the next one: the embedded pool
//! it mounted is unmounted (and its loop device freed) at the next clean shutdown.
//! Needs root, btrfs-progs and e2fsprogs (a missing prerequisite fails naming it).

mod common;

use std::path::{Path, PathBuf};

use common::{TestDaemon, ctl_json, sample_tree};

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
    assert!(!is_mounted(&root), "pool still mounted at {}", root.display());
    assert_eq!(loop_devices_backing(&image), Vec::<PathBuf>::new());
    assert!(!d.home().join("data/pool.img.mounted").exists());
}
