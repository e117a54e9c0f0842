//! Unit tests of the parent module, kept apart to keep it readable.
use std::os::unix::fs::MetadataExt;

use super::*;

const ID: &str = "551e7604-e35c-42b3-b825-416853441234";

fn jail(version: CgroupVersion) -> JailSpec {
    JailSpec {
        id: ID.into(),
        exec_file: "/usr/bin/firecracker".into(),
        uid: 123,
        gid: 100,
        chroot_base: "/srv/jailer".into(),
        cgroup_version: version,
        parent_cgroup: "nexus".into(),
        cgroups: CgroupLimits {
            memory_bytes: (256 + 128) << 20,
            pids_max: 64,
            cpu_weight: 200,
        },
        limits: ResourceLimits::default(),
    }
}

fn input() -> LayoutInput {
    LayoutInput {
        kernel: "/k/vmlinux".into(),
        initrd: None,
        drives: vec![
            ("root".into(), "/pool/d1/disk.ext4".into(), false),
            ("data0".into(), "/pool/d2/disk.ext4".into(), true),
        ],
        config_file: "/run/vm1/firecracker.json".into(),
        log: "/run/vm1/firecracker-7.log".into(),
        metrics: "/run/vm1/firecracker.metrics".into(),
    }
}

fn strings(args: Vec<OsString>) -> Vec<String> {
    args.into_iter().map(|a| a.into_string().unwrap()).collect()
}

#[test]
fn jailer_argv_v1_sets_limits_and_forwards_firecracker_args() {
    let fc: Vec<OsString> = vec!["--api-sock".into(), "/run/firecracker.sock".into()];
    let args = strings(jailer_args(&jail(CgroupVersion::V1), &fc).unwrap());
    assert_eq!(
        args,
        [
            "--id",
            ID,
            "--exec-file",
            "/usr/bin/firecracker",
            "--uid",
            "123",
            "--gid",
            "100",
            "--chroot-base-dir",
            "/srv/jailer",
            "--cgroup-version",
            "1",
            "--parent-cgroup",
            "nexus",
            "--cgroup",
            "memory.limit_in_bytes=402653184",
            "--cgroup",
            "pids.max=64",
            "--cgroup",
            "cpu.shares=2048",
            "--resource-limit",
            "no-file=2048",
            "--",
            "--api-sock",
            "/run/firecracker.sock",
        ]
    );
}

#[test]
fn jailer_argv_v2_uses_unified_file_names() {
    let args = strings(jailer_args(&jail(CgroupVersion::V2), &[]).unwrap());
    let cgroups: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--cgroup")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(
        cgroups,
        ["memory.max=402653184", "pids.max=64", "cpu.weight=200"]
    );
}

#[test]
fn jailer_argv_includes_fsize_when_set() {
    let mut j = jail(CgroupVersion::V2);
    j.limits.fsize = Some(1 << 30);
    let args = strings(jailer_args(&j, &[]).unwrap());
    let limits: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--resource-limit")
        .map(|w| w[1].as_str())
        .collect();
    assert_eq!(limits, ["no-file=2048", "fsize=1073741824"]);
}

#[test]
fn jailer_argv_ends_options_before_firecracker_args() {
    let args = strings(jailer_args(&jail(CgroupVersion::V1), &["--x".into()]).unwrap());
    assert_eq!(&args[args.len() - 2..], ["--", "--x"]);
}

#[test]
fn jail_id_with_underscore_is_refused() {
    let mut j = jail(CgroupVersion::V1);
    j.id = "vm_1".into();
    assert!(matches!(jailer_args(&j, &[]), Err(JailError::BadId(_))));
}

#[test]
fn jail_id_longer_than_64_is_refused() {
    let mut j = jail(CgroupVersion::V1);
    j.id = "a".repeat(65);
    assert!(matches!(jailer_args(&j, &[]), Err(JailError::BadId(_))));
}

#[test]
fn parent_cgroup_with_dotdot_is_refused() {
    let mut j = jail(CgroupVersion::V1);
    j.parent_cgroup = "../x".into();
    assert!(matches!(
        jailer_args(&j, &[]),
        Err(JailError::BadParentCgroup(_))
    ));
}

#[test]
fn chroot_is_base_exec_name_id_root() {
    assert_eq!(
        jail(CgroupVersion::V1).chroot_dir().unwrap(),
        PathBuf::from(format!("/srv/jailer/firecracker/{ID}/root"))
    );
}

#[test]
fn layout_names_every_file_inside_the_chroot() {
    let l = layout(&jail(CgroupVersion::V1), &input()).unwrap();
    let rows: Vec<(&str, &str, bool, bool)> = l
        .entries
        .iter()
        .map(|e| {
            (
                e.host.to_str().unwrap(),
                e.inside.to_str().unwrap(),
                e.owned,
                e.read_only,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("/k/vmlinux", "/vmlinux", false, true),
            ("/pool/d1/disk.ext4", "/drive-root", true, false),
            ("/pool/d2/disk.ext4", "/drive-data0", true, true),
            (
                "/run/vm1/firecracker.json",
                "/firecracker.json",
                false,
                true
            ),
            (
                "/run/vm1/firecracker-7.log",
                "/firecracker.log",
                true,
                false
            ),
            (
                "/run/vm1/firecracker.metrics",
                "/firecracker.metrics",
                true,
                false
            ),
        ]
    );
}

#[test]
fn layout_links_initrd_when_there_is_one() {
    let mut i = input();
    i.initrd = Some("/k/initrd.gz".into());
    let l = layout(&jail(CgroupVersion::V1), &i).unwrap();
    assert_eq!(
        l.inside_path(Path::new("/k/initrd.gz")),
        Some(Path::new("/initrd"))
    );
}

#[test]
fn layout_sockets_are_in_run_inside_the_chroot() {
    let l = layout(&jail(CgroupVersion::V1), &input()).unwrap();
    assert_eq!(
        (l.api_socket.as_path(), l.vsock_uds.as_path()),
        (
            Path::new("/run/firecracker.sock"),
            Path::new("/run/vsock.sock")
        )
    );
    assert_eq!(
        l.host_path(&l.vsock_uds),
        PathBuf::from(format!("/srv/jailer/firecracker/{ID}/root/run/vsock.sock"))
    );
}

struct Fixture {
    _tmp: tempfile::TempDir,
    runtime: PathBuf,
    jail: JailSpec,
    layout: ChrootLayout,
}

/// Host files and a chroot base on one file system (the hard-link case).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("vm");
    fs::create_dir_all(&runtime).unwrap();
    let host = |name: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, name).unwrap();
        p
    };
    let input = LayoutInput {
        kernel: host("vmlinux"),
        initrd: None,
        drives: vec![("root".into(), host("root.ext4"), false)],
        config_file: host("firecracker.json"),
        log: host("firecracker-1.log"),
        metrics: host("firecracker.metrics"),
    };
    let mut jail = jail(CgroupVersion::V1);
    jail.chroot_base = tmp.path().join("jailer");
    let layout = layout(&jail, &input).unwrap();
    Fixture {
        _tmp: tmp,
        runtime,
        jail,
        layout,
    }
}

fn me() -> Option<(u32, u32)> {
    Some((
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    ))
}

#[test]
fn prepare_hard_links_each_file_into_the_chroot() {
    let f = fixture();
    prepare_layout(&f.jail, &f.layout, me(), &f.runtime).unwrap();
    for e in &f.layout.entries {
        let inside = fs::metadata(f.layout.host_path(&e.inside)).unwrap();
        assert_eq!(inside.ino(), fs::metadata(&e.host).unwrap().ino());
    }
}

#[test]
fn prepare_makes_a_private_socket_dir() {
    let f = fixture();
    prepare_layout(&f.jail, &f.layout, me(), &f.runtime).unwrap();
    let dir = fs::metadata(f.layout.host_path(&f.layout.socket_dir)).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
}

#[test]
fn teardown_removes_the_jail_but_not_the_host_files() {
    let f = fixture();
    prepare_layout(&f.jail, &f.layout, me(), &f.runtime).unwrap();
    teardown(&f.runtime, Path::new("/nonexistent"));
    assert!(!f.jail.jail_dir().unwrap().exists());
    assert!(f.layout.entries.iter().all(|e| e.host.exists()));
    assert!(!f.runtime.join(JAIL_RECORD).exists());
}

#[test]
fn prepare_twice_replaces_the_earlier_jail() {
    let f = fixture();
    prepare_layout(&f.jail, &f.layout, me(), &f.runtime).unwrap();
    prepare_layout(&f.jail, &f.layout, me(), &f.runtime).unwrap();
    assert!(f.layout.host_path(Path::new("/vmlinux")).exists());
}

#[test]
fn cgroup_dirs_cover_v1_and_v2_mounts() {
    let mounts = "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n\
                  proc /proc proc rw 0 0\n";
    assert_eq!(
        cgroup_dirs(mounts, "nexus", "id1"),
        [
            PathBuf::from("/sys/fs/cgroup/memory/nexus/id1"),
            PathBuf::from("/sys/fs/cgroup/unified/nexus/id1"),
        ]
    );
}

#[test]
fn hybrid_host_with_v1_memory_uses_v1() {
    let mounts = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nsdelegate 0 0\n\
                  cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n";
    assert_eq!(detect_cgroup_version(mounts), Some(CgroupVersion::V1));
}

#[test]
fn pure_v2_host_uses_v2() {
    let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
    assert_eq!(detect_cgroup_version(mounts), Some(CgroupVersion::V2));
}

#[test]
fn host_without_cgroups_has_no_version() {
    assert_eq!(detect_cgroup_version("proc /proc proc rw 0 0\n"), None);
}

#[test]
fn configured_jailer_is_the_only_candidate() {
    assert_eq!(
        jailer_candidates(
            Some(Path::new("/opt/j")),
            Some(Path::new("/opt/fc/firecracker"))
        ),
        [PathBuf::from("/opt/j")]
    );
}

#[test]
fn jailer_is_looked_for_next_to_firecracker_first() {
    assert_eq!(
        jailer_candidates(None, Some(Path::new("/opt/fc/firecracker"))),
        [
            PathBuf::from("/opt/fc/jailer"),
            PathBuf::from("/usr/local/bin/jailer"),
            PathBuf::from("/usr/bin/jailer"),
        ]
    );
}
