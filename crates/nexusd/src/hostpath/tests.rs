//! The policy's rules on real directories (any user; the peer-identity part runs as root in
//! `tests/import_policy.rs`).

use std::os::unix::fs::symlink;

use super::*;

fn policy(roots: Option<&[&Path]>, protected: &[&Path]) -> ImportPolicy {
    ImportPolicy::new(
        roots.map(|r| r.iter().map(|p| p.to_path_buf()).collect()),
        protected.iter().map(|p| p.to_path_buf()).collect(),
    )
}

fn me() -> Caller {
    Caller::Unix(PeerCred {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        groups: Vec::new(),
    })
}

#[test]
fn tcp_without_import_roots_may_import_nothing() {
    let err = policy(None, &[]).locate(Path::new("/srv/img"), &Caller::Tcp);
    assert!(matches!(err, Err(HostPathError::NoRoots)), "{err:?}");
}

#[test]
fn unix_without_import_roots_may_name_any_absolute_path() {
    let (root, rest) = policy(None, &[])
        .locate(Path::new("/srv/img"), &me())
        .unwrap();
    assert_eq!(
        (root.as_path(), rest.as_path()),
        (Path::new("/"), Path::new("srv/img"))
    );
}

#[test]
fn roots_match_whole_components_only() {
    let p = policy(Some(&[Path::new("/srv/images")]), &[]);
    assert!(p.locate(Path::new("/srv/images/a"), &Caller::Tcp).is_ok());
    let err = p.locate(Path::new("/srv/images2/a"), &Caller::Tcp);
    assert!(
        matches!(err, Err(HostPathError::OutsideRoots { .. })),
        "{err:?}"
    );
}

#[test]
fn a_configured_root_applies_to_the_unix_socket_too() {
    let p = policy(Some(&[Path::new("/srv/images")]), &[]);
    let err = p.locate(Path::new("/etc"), &me());
    assert!(
        matches!(err, Err(HostPathError::OutsideRoots { .. })),
        "{err:?}"
    );
}

#[test]
fn the_root_itself_is_dot() {
    let p = policy(Some(&[Path::new("/srv/images")]), &[]);
    let (_, rest) = p.locate(Path::new("/srv/images/"), &Caller::Tcp).unwrap();
    assert_eq!(rest, Path::new("."));
}

#[test]
fn a_relative_path_is_refused() {
    let err = policy(None, &[]).locate(Path::new("srv/img"), &me());
    assert!(
        matches!(err, Err(HostPathError::OutsideRoots { .. })),
        "{err:?}"
    );
}

#[test]
fn dot_dot_out_of_the_root_is_refused_by_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir(dir.path().join("outside")).unwrap();
    let p = policy(Some(&[&root]), &[]);
    let err = p
        .open(&root.join("a/../../outside"), &Caller::Tcp)
        .unwrap_err();
    assert!(matches!(err, HostPathError::Escapes { .. }), "{err:?}");
}

#[test]
fn dot_dot_that_stays_inside_the_root_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    let p = policy(Some(&[dir.path()]), &[]);
    let r = p.open(&dir.path().join("a/b/.."), &Caller::Tcp).unwrap();
    assert!(r.is_dir);
}

#[test]
fn a_symlink_component_is_refused_even_inside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    symlink("real", dir.path().join("link")).unwrap();
    symlink("/etc", dir.path().join("etc")).unwrap();
    let p = policy(Some(&[dir.path()]), &[]);
    for path in ["link", "etc", "etc/passwd"] {
        let err = p.open(&dir.path().join(path), &Caller::Tcp).unwrap_err();
        assert!(
            matches!(err, HostPathError::Symlink { .. }),
            "{path}: {err:?}"
        );
    }
}

#[test]
fn a_symlink_inside_an_imported_tree_is_content_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tree")).unwrap();
    symlink("/etc/shadow", dir.path().join("tree/shadow")).unwrap();
    let p = policy(Some(&[dir.path()]), &[]);
    assert!(p.open(&dir.path().join("tree"), &Caller::Tcp).is_ok());
}

#[test]
fn a_directory_containing_a_protected_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("home/data");
    std::fs::create_dir_all(&data).unwrap();
    let p = policy(Some(&[dir.path()]), &[&data]);
    let err = p.open(&dir.path().join("home"), &Caller::Tcp).unwrap_err();
    assert!(matches!(err, HostPathError::Protected { .. }), "{err:?}");
}

#[test]
fn anything_inside_a_protected_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("pool/x")).unwrap();
    std::fs::write(data.join("f"), b"x").unwrap();
    let p = policy(Some(&[dir.path()]), &[&data]);
    for path in ["data", "data/pool/x", "data/f"] {
        let err = p.open(&dir.path().join(path), &Caller::Tcp).unwrap_err();
        assert!(
            matches!(err, HostPathError::Protected { .. }),
            "{path}: {err:?}"
        );
    }
}

#[test]
fn a_protected_file_is_refused_by_identity() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, b"secret").unwrap();
    std::fs::hard_link(&token, dir.path().join("alias")).unwrap();
    let p = policy(Some(&[dir.path()]), &[&token]);
    let err = p.open(&dir.path().join("alias"), &Caller::Tcp).unwrap_err();
    assert!(matches!(err, HostPathError::Protected { .. }), "{err:?}");
}

#[test]
fn proc_sys_and_dev_are_never_importable_even_under_a_root() {
    let p = policy(Some(&[Path::new("/")]), &[]);
    for path in [
        "/proc",
        "/proc/self/status",
        "/sys/kernel",
        "/dev",
        "/dev/null",
        "/",
    ] {
        let err = p.open(Path::new(path), &Caller::Tcp).unwrap_err();
        assert!(
            err.is_forbidden() || matches!(err, HostPathError::Unsupported { .. }),
            "{path}: {err:?}"
        );
    }
}

#[test]
fn a_missing_path_is_not_found_not_forbidden() {
    let dir = tempfile::tempdir().unwrap();
    let p = policy(Some(&[dir.path()]), &[]);
    let err = p
        .open(&dir.path().join("absent"), &Caller::Tcp)
        .unwrap_err();
    assert!(matches!(err, HostPathError::NotFound { .. }), "{err:?}");
}

#[test]
fn the_opened_descriptor_still_names_the_checked_directory_after_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    std::fs::write(dir.path().join("img/marker"), b"checked").unwrap();
    let p = policy(Some(&[dir.path()]), &[]);
    let r = p.open(&dir.path().join("img"), &Caller::Tcp).unwrap();
    std::fs::rename(dir.path().join("img"), dir.path().join("moved")).unwrap();
    symlink("/etc", dir.path().join("img")).unwrap();
    let marker = std::fs::read(r.proc_path().join("marker")).unwrap();
    assert_eq!(marker, b"checked");
}

#[test]
fn pseudo_file_systems_are_recognised_by_magic() {
    assert_eq!(resolve::pseudo_fs(0x9fa0), Some("procfs"));
    assert_eq!(resolve::pseudo_fs(0xef53), None);
}
