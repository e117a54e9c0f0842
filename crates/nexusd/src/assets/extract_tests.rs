//! The path rules of extraction (whole archives are tested through the daemon in
//! `tests/assets.rs`).

use super::*;

#[test]
fn clean_paths_drop_dots_and_refuse_parents_and_roots() {
    assert_eq!(
        clean_path(Path::new("./a/./b")).unwrap().as_deref(),
        Some("a/b")
    );
    assert_eq!(clean_path(Path::new("./")).unwrap(), None);
    assert!(clean_path(Path::new("a/../../b")).is_err());
    assert!(clean_path(Path::new("/etc/passwd")).is_err());
}

#[test]
fn relative_links_inside_the_tree_resolve() {
    assert_eq!(
        resolve_link("usr/lib/x", Path::new("../share/y")).unwrap(),
        "usr/share/y"
    );
    assert_eq!(resolve_link("a", Path::new("b")).unwrap(), "b");
}

#[test]
fn links_out_of_the_tree_or_absolute_are_refused() {
    assert!(resolve_link("a/b", Path::new("../../x")).is_err());
    assert!(resolve_link("a", Path::new("/etc/shadow")).is_err());
    assert!(resolve_link("a", Path::new("")).is_err());
}

#[test]
fn a_tree_member_pattern_must_match_exactly_one_file() {
    let file = TreeFile {
        sha256: "00".into(),
        size: 1,
        executable: false,
    };
    let tree = Tree {
        root: PathBuf::from("/nowhere"),
        files: BTreeMap::from([
            ("boot/vmlinuz-6.1".to_string(), file.clone()),
            ("boot/config-6.1".to_string(), file.clone()),
            ("boot/sub/vmlinuz-x".to_string(), file),
        ]),
    };
    assert_eq!(tree.find("boot/vmlinuz-*").unwrap().0, "boot/vmlinuz-6.1");
    assert!(tree.find("boot/*").is_err());
    assert!(tree.find("lib/*").is_err());
}

/// A tar entry written with raw names (the `tar` crate's builder refuses `..`).
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    path: &str,
    link: &str,
    mode: u32,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(42);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// Unpacks `entries` (kind, path, link target, mode, data) as a rootfs under a fresh directory.
fn rootfs(
    entries: &[(tar::EntryType, &str, &str, u32, &[u8])],
) -> (tempfile::TempDir, Result<RootfsStats, ExtractError>) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, mode, data) in entries {
        raw_entry(&mut b, *kind, path, link, *mode, data);
    }
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, b.into_inner().unwrap()).unwrap();
    let bounds = ExtractBounds {
        max_entries: 100,
        max_bytes: 1 << 20,
    };
    let cancel = CancellationToken::new();
    let result = extract_rootfs(
        &tarball,
        "rootfs.tar",
        &dir.path().join("tree"),
        bounds,
        &Progress::silent(),
        &cancel,
    );
    (dir, result)
}

use tar::EntryType as E;

#[test]
fn a_rootfs_keeps_absolute_symlinks_modes_and_owners_and_skips_devices() {
    let (dir, stats) = rootfs(&[
        (E::Directory, "./etc/", "", 0o755, b""),
        (E::Symlink, "./etc/evil", "/etc", 0o777, b""),
        (E::Symlink, "./sbin", "usr/sbin", 0o777, b""),
        (E::Regular, "./usr/bin/su", "", 0o4755, b"su"),
        (E::Directory, "./usr/lib/ro/", "", 0o555, b""),
        (E::Regular, "./usr/lib/ro/f", "", 0o644, b"f"),
        (E::Char, "./dev/null", "", 0o666, b""),
    ]);
    let tree = dir.path().join("tree");
    let mode = |p: &str| std::fs::symlink_metadata(tree.join(p)).unwrap().mode() & 0o7777;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(stats.unwrap().skipped, 1);
    assert_eq!(
        std::fs::read_link(tree.join("etc/evil")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!((mode("usr/bin/su"), mode("usr/lib/ro")), (0o4755, 0o555));
    assert!(!tree.join("dev/null").exists());
    if rustix::process::geteuid().is_root() {
        let gid = std::fs::symlink_metadata(tree.join("usr/bin/su"))
            .unwrap()
            .gid();
        assert_eq!(gid, 42);
    }
}

#[test]
fn a_rootfs_entry_through_an_absolute_symlink_is_refused_and_nothing_outside_is_written() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let (_dir, result) = rootfs(&[
        (E::Symlink, "./etc", &target, 0o777, b""),
        (E::Regular, "./etc/owned", "", 0o644, b"x"),
    ]);
    assert!(
        matches!(result, Err(ExtractError::Unsafe { .. })),
        "{result:?}"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn a_rootfs_with_dotdot_or_a_hard_link_out_of_the_tree_is_refused() {
    for entries in [
        vec![(E::Regular, "../escape", "", 0o644, &b"x"[..])],
        vec![(E::Link, "./passwd", "../../etc/passwd", 0o644, &b""[..])],
        vec![(E::Link, "./passwd", "/etc/passwd", 0o644, &b""[..])],
        vec![(E::Symlink, "./up", "../../..", 0o777, &b""[..])],
    ] {
        let (_dir, result) = rootfs(&entries);
        assert!(
            matches!(result, Err(ExtractError::Unsafe { .. })),
            "{entries:?}: {result:?}"
        );
    }
}
