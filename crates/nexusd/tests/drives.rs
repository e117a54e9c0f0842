//! Drives through the real nexusd and nexusctl, on a real btrfs pool in each test's own home (needs
//! root, btrfs-progs, e2fsprogs, setpriv; a missing prerequisite fails naming it).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{
    TestDaemon, ctl_json, entries, ext4_bytes, require_storage_prerequisites, sample_tree,
    spawn_logged, stderr,
};
use nexusd::storage::{Pool, PoolConfig};

const NOBODY: u32 = 65534;

/// A daemon with image `base` imported from a small directory.
fn daemon_with_image() -> TestDaemon {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );
    d
}

fn drive_file(d: &TestDaemon, drive: &serde_json::Value) -> PathBuf {
    d.pool_root()
        .join("drives")
        .join(drive["id"].as_str().unwrap())
        .join("rootfs.ext4")
}

/// Puts VM `vm` in `state` behind the daemon's back (the VM lifecycle is not what is tested here).
fn force_vm_state(d: &TestDaemon, vm: &str, state: &str) {
    let db = rusqlite::Connection::open(d.home().join("state/nexus.db")).unwrap();
    let n = db
        .execute("UPDATE vms SET state = ?1 WHERE name = ?2", [state, vm])
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_drive_is_a_writable_copy_of_its_image() {
    let d = daemon_with_image();

    let drive = ctl_json(&d, &["drive", "create", "--image", "base"]);

    let image = ctl_json(&d, &["image", "show", "base"]);
    assert!(
        drive["name"].as_str().unwrap().starts_with("base-"),
        "{drive}"
    );
    assert_eq!(drive["size_bytes"], image["size_bytes"]);
    assert_eq!(drive["image_id"], image["id"]);
    let file = drive_file(&d, &drive);
    assert!(!std::fs::metadata(&file).unwrap().permissions().readonly());
    assert_eq!(ext4_bytes(&file), image["size_bytes"].as_u64().unwrap());
}

#[test]
fn drive_created_with_a_size_has_a_guest_visible_filesystem_of_that_size() {
    let d = daemon_with_image();

    let drive = ctl_json(
        &d,
        &[
            "drive", "create", "--image", "base", "--size", "512M", "--name", "big",
        ],
    );

    assert_eq!(drive["size_bytes"], 512 << 20);
    assert_eq!(ext4_bytes(&drive_file(&d, &drive)), 512 << 20);
}

#[test]
fn a_size_smaller_than_the_image_is_invalid_and_leaves_nothing() {
    let d = daemon_with_image();

    let out = d.ctl(&["drive", "create", "--image", "base", "--size", "1M"]);

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("smaller than image base"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl_json(&d, &["drive", "list"]), serde_json::json!([]));
    assert!(entries(&d.pool_root().join("drives")).is_empty());
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
}

#[test]
fn a_drive_name_clash_is_a_conflict_and_leaves_nothing() {
    let d = daemon_with_image();
    ctl_json(&d, &["drive", "create", "--image", "base", "--name", "d1"]);

    let out = d.ctl(&["drive", "create", "--image", "base", "--name", "d1"]);

    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(entries(&d.pool_root().join("drives")).len(), 1);
}

#[test]
fn a_drive_from_an_unknown_image_is_not_found() {
    let d = daemon_with_image();

    let out = d.ctl(&["drive", "create", "--image", "ghost"]);

    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
fn a_vm_takes_one_root_drive_and_detach_frees_the_slot() {
    let d = daemon_with_image();
    ctl_json(&d, &["vm", "create", "web"]);
    ctl_json(&d, &["drive", "create", "--image", "base", "--name", "a"]);
    ctl_json(&d, &["drive", "create", "--image", "base", "--name", "b"]);

    let first = ctl_json(&d, &["drive", "attach", "a", "--vm", "web", "--root"]);
    let second = d.ctl(&["drive", "attach", "b", "--vm", "web", "--root"]);
    let detached = ctl_json(&d, &["drive", "detach", "a"]);
    let retried = ctl_json(&d, &["drive", "attach", "b", "--vm", "web", "--root"]);

    assert_eq!(first["is_root"], true);
    assert_eq!(second.status.code(), Some(5), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("already has a root drive (a)"),
        "{}",
        stderr(&second)
    );
    assert_eq!(
        (detached["vm_id"].clone(), detached["is_root"].clone()),
        (serde_json::Value::Null, serde_json::json!(false))
    );
    assert_eq!(retried["is_root"], true);
}

#[test]
fn a_drive_attached_to_a_running_vm_cannot_be_detached_or_deleted() {
    let d = daemon_with_image();
    ctl_json(&d, &["vm", "create", "web"]);
    ctl_json(
        &d,
        &["drive", "create", "--image", "base", "--name", "data"],
    );
    ctl_json(&d, &["drive", "attach", "data", "--vm", "web"]);
    force_vm_state(&d, "web", "running");

    let detach = d.ctl(&["drive", "detach", "data"]);
    let delete = d.ctl(&["drive", "delete", "data"]);

    assert_eq!(detach.status.code(), Some(5), "{}", stderr(&detach));
    assert_eq!(delete.status.code(), Some(5), "{}", stderr(&delete));
    assert!(stderr(&delete).contains("running"), "{}", stderr(&delete));
    assert_eq!(entries(&d.pool_root().join("drives")).len(), 1);
}

#[test]
fn vm_create_with_an_image_makes_its_root_drive_and_vm_delete_removes_it() {
    let d = daemon_with_image();

    let vm = ctl_json(
        &d,
        &[
            "vm",
            "create",
            "web",
            "--image",
            "base",
            "--disk-size",
            "256M",
        ],
    );
    let drives = ctl_json(&d, &["drive", "list"]);
    let root = drives[0].clone();
    let size = ext4_bytes(&drive_file(&d, &root));
    ctl_json(&d, &["vm", "delete", "web"]);

    assert_eq!(drives.as_array().unwrap().len(), 1);
    assert_eq!(
        (root["name"].as_str(), root["vm_id"].as_str()),
        (Some("web-root"), vm["id"].as_str())
    );
    assert_eq!(
        (root["is_root"].as_bool(), root["created_with_vm"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(size, 256 << 20);
    assert_eq!(ctl_json(&d, &["drive", "list"]), serde_json::json!([]));
    assert!(entries(&d.pool_root().join("drives")).is_empty());
}

#[test]
fn vm_delete_with_keep_drives_detaches_its_root_drive() {
    let d = daemon_with_image();
    ctl_json(&d, &["vm", "create", "web", "--image", "base"]);

    ctl_json(&d, &["vm", "delete", "web", "--keep-drives"]);

    let drive = ctl_json(&d, &["drive", "show", "web-root"]);
    assert_eq!(
        (drive["vm_id"].clone(), drive["is_root"].clone()),
        (serde_json::Value::Null, serde_json::json!(false))
    );
    assert_eq!(entries(&d.pool_root().join("drives")).len(), 1);
}

#[test]
fn vm_create_with_a_disk_smaller_than_the_image_leaves_no_vm_and_no_drive() {
    let d = daemon_with_image();

    let out = d.ctl(&[
        "vm",
        "create",
        "web",
        "--image",
        "base",
        "--disk-size",
        "1M",
    ]);

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid disk_size"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl_json(&d, &["vm", "list"]), serde_json::json!([]));
    assert!(entries(&d.pool_root().join("drives")).is_empty());
}

#[test]
fn vm_create_with_an_unknown_image_is_not_found_and_leaves_no_vm() {
    let d = daemon_with_image();

    let out = d.ctl(&["vm", "create", "web", "--image", "ghost"]);

    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(ctl_json(&d, &["vm", "list"]), serde_json::json!([]));
}

/// A btrfs of its own mounted for one test, unmounted on drop even when the test fails.
struct LoopBtrfs {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl LoopBtrfs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let pool = Pool::open(&PoolConfig::Image {
            file: dir.path().join("pool.img"),
            size: 1 << 30,
            mountpoint: dir.path().join("mnt"),
        })
        .expect("format and mount a test btrfs");
        let root = pool.root().to_owned();
        std::mem::forget(pool);
        Self { _dir: dir, root }
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn chown(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
fn a_daemon_running_as_an_ordinary_user_imports_and_deletes_without_privileges() {
    require_storage_prerequisites();
    let btrfs = LoopBtrfs::new();
    let pool = btrfs.root.join("nexus");
    std::fs::create_dir(&pool).unwrap();
    chown(&pool);
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown(home.path());
    let tree = sample_tree(home.path());
    let child = spawn_logged(
        common::nexusd_as_nobody(),
        home.path(),
        &["--pool", pool.to_str().unwrap()],
    );
    let d = TestDaemon::wrap(home, child, &[]);
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );
    ctl_json(
        &d,
        &[
            "vm",
            "create",
            "web",
            "--image",
            "base",
            "--disk-size",
            "128M",
        ],
    );
    ctl_json(
        &d,
        &["drive", "create", "--image", "base", "--name", "spare"],
    );

    ctl_json(&d, &["vm", "delete", "web"]);
    ctl_json(&d, &["drive", "delete", "spare"]);
    ctl_json(&d, &["image", "delete", "base"]);

    let pid = d.child.as_ref().unwrap().id();
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        uid.lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{uid}"
    );
    assert!(entries(&pool.join("drives")).is_empty(), "{}", d.log());
    assert!(entries(&pool.join("images")).is_empty(), "{}", d.log());
    assert!(entries(&pool.join("tmp")).is_empty(), "{}", d.log());
}

#[test]
fn the_api_names_the_size_field_when_a_drive_is_smaller_than_its_image() {
    let d = daemon_with_image();

    let err = common::rt()
        .block_on(d.client.create_drive(&nexus_lib::api::CreateDrive {
            image: "base".into(),
            name: None,
            size: Some(nexus_lib::size::ByteSize(1 << 20)),
        }))
        .unwrap_err();

    assert!(
        matches!(err, nexus_lib::client::ClientError::Api { status: 422, ref field, .. } if field.as_deref() == Some("size")),
        "{err:?}"
    );
}
