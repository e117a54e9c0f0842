//! Storage on a real btrfs: every test formats and loop-mounts its own sparse btrfs image in a fresh
//! temporary directory (needs root, btrfs-progs and e2fsprogs; a missing prerequisite fails the test
//! with its name) and unmounts it on drop, even when the test fails.

mod common;

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nexusd::storage::{
    CreateDriveError, ImageInfo, ImportBounds, ImportError, Pool, PoolConfig, PoolError, SizeError,
    Storage, btrfs, ext4,
};
use tempfile::TempDir;

const NOBODY: u32 = 65534;
const MIB: u64 = 1 << 20;

/// A btrfs filesystem of its own, mounted under a temporary directory for one test.
struct TestPool {
    dir: TempDir,
    root: PathBuf,
}

impl TestPool {
    fn new() -> Self {
        common::require_storage_prerequisites();
        let dir = tempfile::tempdir().expect("create temporary directory");
        // Let the unprivileged helper reach the pool.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod tempdir");
        let config = PoolConfig::Image {
            file: dir.path().join("pool.img"),
            size: 8 << 30,
            mountpoint: dir.path().join("mnt"),
        };
        let pool = Pool::open(&config).expect("format and mount the test pool");
        assert!(pool.mounted_by_us());
        let root = pool.root().to_owned();
        // The guard unmounts on drop; `Pool::close` would consume the pool.
        std::mem::forget(pool);
        Self { dir, root }
    }

    fn storage(&self) -> Storage {
        Storage::open(&self.root).expect("open storage on the test pool")
    }

    /// A scratch path outside the pool.
    fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.root, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A small directory tree: `/etc/hostname` owned by root, `/home/user/note` owned by uid 1234.
/// The pool's storage with an image `base` imported from [`sample_tree`].
fn with_base_image(pool: &TestPool) -> (Storage, ImageInfo) {
    let storage = pool.storage();
    let tree = sample_tree(pool.dir.path());
    let image = storage
        .import_image_from_dir(&tree, &tree, "base", &ImportBounds::unbounded())
        .unwrap();
    (storage, image)
}

fn sample_tree(at: &Path) -> PathBuf {
    let tree = at.join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("home/user")).unwrap();
    fs::write(tree.join("etc/hostname"), "nexus\n").unwrap();
    fs::write(tree.join("home/user/note"), "hello\n").unwrap();
    std::os::unix::fs::chown(tree.join("home/user/note"), Some(1234), Some(1234)).unwrap();
    tree
}

/// An ext4 image of `size` bytes made by mke2fs on a sparse file.
fn make_ext4(path: &Path, size: u64) {
    File::create(path).unwrap().set_len(size).unwrap();
    let status = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mke2fs {}", path.display());
}

/// The owner uid of `path` inside the ext4 image, as `debugfs` reports it.
fn owner_in_image(image: &Path, path: &str) -> u32 {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat {path}"))
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let uid = text.split_whitespace().skip_while(|w| *w != "User:").nth(1);
    uid.and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no owner for {path} in debugfs output: {text}"))
}

/// The size of the ext4 file system in `image` (block count × block size, from `dumpe2fs -h`):
/// what the guest will see.
fn fs_bytes(image: &Path) -> u64 {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name} in dumpe2fs output: {text}"))
    };
    field("Block count") * field("Block size")
}

fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn created_subvolume_is_detected_and_listed() {
    let pool = TestPool::new();
    let plain = pool.root.join("plain");
    fs::create_dir(&plain).unwrap();

    btrfs::create_subvolume(&pool.root.join("sub")).unwrap();

    assert!(btrfs::is_subvolume(&pool.root.join("sub")).unwrap());
    assert!(!btrfs::is_subvolume(&plain).unwrap());
    assert_eq!(btrfs::list_subvolumes(&pool.root).unwrap(), ["sub"]);
}

#[test]
fn readonly_snapshot_refuses_writes_until_made_writable() {
    let pool = TestPool::new();
    let (sub, snap) = (pool.root.join("sub"), pool.root.join("snap"));
    btrfs::create_subvolume(&sub).unwrap();
    fs::write(sub.join("file"), "content").unwrap();

    btrfs::snapshot(&sub, &snap, true).unwrap();

    assert!(btrfs::is_readonly(&snap).unwrap());
    assert!(!btrfs::is_readonly(&sub).unwrap());
    assert_eq!(
        fs::write(snap.join("file"), "x")
            .unwrap_err()
            .raw_os_error(),
        Some(nix::libc::EROFS)
    );
    btrfs::set_readonly(&snap, false).unwrap();
    fs::write(snap.join("file"), "changed").unwrap();
    assert_eq!(fs::read_to_string(sub.join("file")).unwrap(), "content");
}

#[test]
fn delete_removes_a_readonly_subvolume_with_nested_content() {
    let pool = TestPool::new();
    let sub = pool.root.join("sub");
    btrfs::create_subvolume(&sub).unwrap();
    fs::create_dir_all(sub.join("a/b")).unwrap();
    fs::write(sub.join("a/b/file"), "x").unwrap();
    btrfs::create_subvolume(&sub.join("nested")).unwrap();
    btrfs::snapshot(&sub, &pool.root.join("ro"), true).unwrap();

    btrfs::delete_subvolume(&pool.root.join("ro")).unwrap();
    btrfs::delete_subvolume(&sub).unwrap();

    assert!(dir_entries(&pool.root).is_empty());
}

#[test]
fn snapshot_of_a_4gib_ext4_file_shares_data_and_is_independent() {
    let pool = TestPool::new();
    let sub = pool.root.join("image");
    btrfs::create_subvolume(&sub).unwrap();
    let image = sub.join("rootfs.ext4");
    make_ext4(&image, 4 << 30);
    let mut file = File::options().write(true).open(&image).unwrap();
    file.seek(SeekFrom::Start(1 << 30)).unwrap();
    file.write_all(&vec![0xa5; 64 * MIB as usize]).unwrap();
    file.sync_all().unwrap();
    nix::unistd::sync();
    let storage_pool = Pool::open(&PoolConfig::Dir(pool.root.clone())).unwrap();
    let free_before = storage_pool.free_bytes().unwrap();

    let started = std::time::Instant::now();
    btrfs::snapshot(&sub, &pool.root.join("drive"), false).unwrap();
    eprintln!("snapshot of a 4 GiB ext4 file took {:?}", started.elapsed());
    nix::unistd::sync();

    // No data was copied: far less than the 64 MiB of data was consumed.
    assert!(free_before - storage_pool.free_bytes().unwrap() < 16 * MIB);
    let mut drive = File::options()
        .write(true)
        .open(pool.root.join("drive/rootfs.ext4"))
        .unwrap();
    drive.seek(SeekFrom::Start(1 << 30)).unwrap();
    drive.write_all(b"drive-only").unwrap();
    let mut original = [0u8; 10];
    File::open(&image)
        .unwrap()
        .read_exact_at(&mut original, 1 << 30)
        .unwrap();
    assert_eq!(original, [0xa5; 10]);
}

#[test]
fn import_from_dir_keeps_root_and_user_ownership_and_is_readonly() {
    let pool = TestPool::new();
    let storage = pool.storage();
    let tree = sample_tree(pool.dir.path());

    let info = storage
        .import_image_from_dir(&tree, &tree, "base", &ImportBounds::unbounded())
        .unwrap();

    assert!(ext4::is_ext4(&info.path).unwrap());
    assert_eq!(owner_in_image(&info.path, "/"), 0);
    assert_eq!(owner_in_image(&info.path, "/etc/hostname"), 0);
    assert_eq!(owner_in_image(&info.path, "/home/user/note"), 1234);
    assert!(btrfs::is_readonly(&storage.image_dir("base")).unwrap());
    let meta = fs::read(storage.image_dir("base").join("meta.json")).unwrap();
    let meta: ImageInfo = serde_json::from_slice(&meta).unwrap();
    assert_eq!(
        ImageInfo {
            path: info.path.clone(),
            ..meta
        },
        info
    );
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn import_from_ext4_file_copies_it_with_its_sha256() {
    let pool = TestPool::new();
    let storage = pool.storage();
    let src = pool.scratch("src.ext4");
    make_ext4(&src, 64 * MIB);

    let info = storage
        .import_image_from_ext4(&src, &src, "img", &ImportBounds::unbounded())
        .unwrap();

    assert_eq!(info.size_bytes, 64 * MIB);
    assert_eq!(info.sha256, ext4::sha256_file(&src).unwrap());
    assert_eq!(ext4::sha256_file(&info.path).unwrap(), info.sha256);
    assert_eq!(storage.list_image_ids().unwrap(), ["img"]);
}

#[test]
fn import_of_a_non_ext4_file_is_rejected_and_leaves_nothing() {
    let pool = TestPool::new();
    let storage = pool.storage();
    let src = pool.scratch("junk.img");
    fs::write(&src, vec![0x42; 4 * MIB as usize]).unwrap();

    let err = storage
        .import_image_from_ext4(&src, &src, "junk", &ImportBounds::unbounded())
        .unwrap_err();

    assert!(matches!(err, ImportError::NotExt4 { .. }), "{err:?}");
    assert!(dir_entries(&pool.root.join("images")).is_empty());
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn import_of_a_missing_path_is_source_not_found() {
    let pool = TestPool::new();

    let err = pool
        .storage()
        .import_image_from_ext4(
            &pool.scratch("absent"),
            &pool.scratch("absent"),
            "x",
            &ImportBounds::unbounded(),
        )
        .unwrap_err();

    assert!(matches!(err, ImportError::SourceNotFound { .. }), "{err:?}");
}

#[test]
fn import_with_a_taken_id_is_image_exists() {
    let pool = TestPool::new();
    let storage = pool.storage();
    let tree = sample_tree(pool.dir.path());
    storage
        .import_image_from_dir(&tree, &tree, "base", &ImportBounds::unbounded())
        .unwrap();

    let err = storage
        .import_image_from_dir(&tree, &tree, "base", &ImportBounds::unbounded())
        .unwrap_err();

    assert!(matches!(err, ImportError::Exists { .. }), "{err:?}");
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn drive_with_a_size_has_a_grown_filesystem() {
    let pool = TestPool::new();
    let (storage, image) = with_base_image(&pool);

    let drive = storage.create_drive("base", "d1", Some(512 * MIB)).unwrap();

    assert_eq!(drive.size_bytes, 512 * MIB);
    assert_eq!(fs_bytes(&drive.path), 512 * MIB);
    assert_eq!(fs_bytes(&image.path), image.size_bytes);
    assert!(!btrfs::is_readonly(&storage.drive_dir("d1")).unwrap());
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn drive_without_a_size_is_a_writable_copy_of_the_image() {
    let pool = TestPool::new();
    let (storage, image) = with_base_image(&pool);

    let drive = storage.create_drive("base", "d1", None).unwrap();

    assert_eq!(drive.size_bytes, image.size_bytes);
    assert_eq!(ext4::sha256_file(&drive.path).unwrap(), image.sha256);
    assert_eq!(storage.list_drive_ids().unwrap(), ["d1"]);
}

#[test]
fn drive_smaller_than_its_image_is_an_error_and_leaves_nothing() {
    let pool = TestPool::new();
    let (storage, image) = with_base_image(&pool);

    let err = storage
        .create_drive("base", "d1", Some(image.size_bytes - 4096))
        .unwrap_err();

    assert!(
        matches!(err, CreateDriveError::Size(SizeError::TooSmall { .. })),
        "{err:?}"
    );
    assert!(storage.list_drive_ids().unwrap().is_empty());
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn resize_drive_grows_its_filesystem() {
    let pool = TestPool::new();
    let (storage, _) = with_base_image(&pool);
    storage.create_drive("base", "d1", None).unwrap();

    let drive = storage.resize_drive("d1", 256 * MIB).unwrap();

    assert_eq!(fs_bytes(&drive.path), 256 * MIB);
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

#[test]
fn deleting_an_image_leaves_its_drives_intact() {
    let pool = TestPool::new();
    let (storage, image) = with_base_image(&pool);
    let drive = storage.create_drive("base", "d1", None).unwrap();

    storage.delete_image("base").unwrap();

    assert!(storage.list_image_ids().unwrap().is_empty());
    assert_eq!(ext4::sha256_file(&drive.path).unwrap(), image.sha256);
}

#[test]
fn clean_tmp_removes_leftover_work_including_readonly_subvolumes() {
    let pool = TestPool::new();
    let storage = pool.storage();
    let tmp = pool.root.join("tmp");
    btrfs::create_subvolume(&tmp.join("image-x-1-0")).unwrap();
    btrfs::snapshot(&tmp.join("image-x-1-0"), &tmp.join("ro-leftover"), true).unwrap();
    fs::write(tmp.join("stray"), "x").unwrap();

    let removed = storage.clean_tmp().unwrap();

    assert_eq!(removed, ["image-x-1-0", "ro-leftover", "stray"]);
    assert!(dir_entries(&tmp).is_empty());
}

#[test]
fn pool_dir_on_a_non_btrfs_filesystem_is_rejected() {
    let dir = tempfile::tempdir().unwrap();

    let err = Pool::open(&PoolConfig::Dir(dir.path().to_owned())).unwrap_err();

    assert!(matches!(err, PoolError::NotBtrfs { .. }), "{err:?}");
}

#[test]
fn pool_reports_free_and_total_bytes() {
    let pool = TestPool::new();

    let opened = Pool::open(&PoolConfig::Dir(pool.root.clone())).unwrap();

    let (free, total) = (opened.free_bytes().unwrap(), opened.total_bytes().unwrap());
    assert!(
        free > 0 && free <= total && total <= 8 << 30,
        "free {free} total {total}"
    );
}

#[test]
fn delete_as_a_non_root_user_removes_drive_and_readonly_image() {
    let pool = TestPool::new();
    let (storage, _) = with_base_image(&pool);
    storage.create_drive("base", "d1", None).unwrap();
    let image_dir = storage.image_dir("base");
    btrfs::set_readonly(&image_dir, false).unwrap();
    chown_tree(&pool.root, NOBODY);
    btrfs::set_readonly(&image_dir, true).unwrap();

    run_as_nobody("unprivileged_delete_helper", &pool.root);

    assert_eq!(fs::metadata(&pool.root).unwrap().uid(), NOBODY);
    assert!(storage.list_drive_ids().unwrap().is_empty());
    assert!(storage.list_image_ids().unwrap().is_empty());
    assert!(dir_entries(&pool.root.join("tmp")).is_empty());
}

/// Runs as uid 65534 under `delete_as_a_non_root_user_removes_drive_and_readonly_image`.
#[test]
#[ignore = "run as uid 65534 by delete_as_a_non_root_user_removes_drive_and_readonly_image"]
fn unprivileged_delete_helper() {
    let Some(root) = std::env::var_os("NEXUS_TEST_POOL") else {
        return;
    };
    assert_ne!(
        nix::unistd::geteuid().as_raw(),
        0,
        "the helper must not run as root"
    );
    let storage = Storage::open(Path::new(&root)).unwrap();

    storage.delete_drive("d1").unwrap();
    storage.delete_image("base").unwrap();
}

#[test]
fn pool_image_without_root_says_how_to_use_a_btrfs_dir() {
    common::require_storage_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    chown_tree(dir.path(), NOBODY);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

    run_as_nobody("unprivileged_pool_open_helper", dir.path());
}

/// Runs as uid 65534 under `pool_image_without_root_says_how_to_use_a_btrfs_dir`.
#[test]
#[ignore = "run as uid 65534 by pool_image_without_root_says_how_to_use_a_btrfs_dir"]
fn unprivileged_pool_open_helper() {
    let Some(dir) = std::env::var_os("NEXUS_TEST_POOL") else {
        return;
    };
    let config = PoolConfig::embedded(Path::new(&dir));

    let err = Pool::open(&config).unwrap_err();

    assert!(matches!(err, PoolError::NeedsRoot { .. }), "{err:?}");
    assert!(err.to_string().contains("pool = "), "{err}");
}

#[test]
fn build_from_dir_without_root_makes_the_callers_files_root_owned() {
    common::require_storage_prerequisites();
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());
    chown_tree(dir.path(), NOBODY);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();

    run_as_nobody("unprivileged_build_helper", dir.path());

    let image = dir.path().join("out.ext4");
    assert_eq!(owner_in_image(&image, "/"), 0);
    assert_eq!(owner_in_image(&image, "/etc/hostname"), 0);
    assert_eq!(owner_in_image(&image, "/home/user/note"), 0);
}

/// Runs as uid 65534 under `build_from_dir_without_root_makes_the_callers_files_root_owned`.
#[test]
#[ignore = "run as uid 65534 by build_from_dir_without_root_makes_the_callers_files_root_owned"]
fn unprivileged_build_helper() {
    let Some(dir) = std::env::var_os("NEXUS_TEST_POOL") else {
        return;
    };
    let dir = Path::new(&dir);

    ext4::build_from_dir(&dir.join("tree"), &dir.join("out.ext4"), 64 * MIB).unwrap();
}

/// Re-runs this test binary as uid/gid 65534 (through `setpriv`), executing only the ignored test
/// `helper` with `NEXUS_TEST_POOL=path`, and fails unless it passes.
fn run_as_nobody(helper: &str, path: &Path) {
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", helper, "--ignored", "--nocapture", "--quiet"])
        .env("NEXUS_TEST_POOL", path)
        .status()
        .unwrap();
    assert!(status.success(), "{helper} as uid 65534 failed: {status}");
}
