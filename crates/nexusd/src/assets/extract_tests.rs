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
