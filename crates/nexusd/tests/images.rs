//! Master images through the real nexusd and nexusctl, on a real loop-mounted btrfs pool in each
//! test's own home (needs root, btrfs-progs, e2fsprogs; a missing prerequisite fails naming it).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestDaemon, ctl_json, entries, ext4_bytes, make_ext4, sample_tree, stderr, stdout};

#[test]
fn health_reports_the_embedded_pool_as_not_created_until_the_first_import() {
    let d = TestDaemon::start_with_storage();

    let health = ctl_json(&d, &["status"]);

    assert_eq!(health["pool"]["status"], "not created yet");
    assert_eq!(health["pool"]["mounted"], false);
    assert!(!d.home().join("data/pool.img").exists());
}

#[test]
fn import_from_a_directory_makes_a_ready_readonly_ext4_image() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());

    let image = ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );

    assert_eq!(
        (image["name"].as_str(), image["state"].as_str()),
        (Some("base"), Some("ready"))
    );
    let file = d
        .pool_root()
        .join("images")
        .join(image["id"].as_str().unwrap())
        .join("rootfs.ext4");
    assert_eq!(ext4_bytes(&file), image["size_bytes"].as_u64().unwrap());
    let health = ctl_json(&d, &["status"]);
    assert_eq!(
        (
            health["pool"]["status"].as_str(),
            health["pool"]["mounted"].as_bool()
        ),
        (Some("ready"), Some(true))
    );
    assert!(health["pool"]["free_bytes"].as_u64().unwrap() > 0);
    let listed = stdout(&d.ctl(&["image", "list"]));
    assert!(
        listed.contains("base") && listed.contains("ready"),
        "{listed}"
    );
}

#[test]
fn import_from_an_ext4_file_keeps_its_content_and_sha256() {
    let d = TestDaemon::start_with_storage();
    let file = d.home().join("disk.ext4");
    make_ext4(&file, 64 << 20);
    let sha = Command::new("sha256sum").arg(&file).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);

    let image = ctl_json(&d, &["image", "import", file.to_str().unwrap()]);

    assert_eq!(image["name"], "disk", "name derived from the file name");
    assert_eq!(image["sha256"].as_str(), sha.split_whitespace().next());
    assert_eq!(image["size_bytes"], 64 << 20);
    assert!(image["source"].as_str().unwrap().starts_with("ext4:"));
}

#[test]
fn importing_a_file_that_is_not_ext4_is_invalid_and_leaves_nothing() {
    let d = TestDaemon::start_with_storage();
    let file = d.home().join("junk.img");
    std::fs::write(&file, vec![7u8; 1 << 20]).unwrap();

    let out = d.ctl(&["image", "import", file.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not an ext4 image"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
    assert!(entries(&d.pool_root().join("images")).is_empty());
}

#[test]
fn importing_a_missing_path_is_invalid_and_leaves_nothing() {
    let d = TestDaemon::start_with_storage();

    let out = d.ctl(&["image", "import", "/nonexistent/nexus/rootfs"]);

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
}

#[test]
fn importing_under_a_taken_name_is_a_conflict_and_leaves_nothing() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );

    let out = d.ctl(&["image", "import", tree.to_str().unwrap(), "--name", "base"]);

    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(entries(&d.pool_root().join("images")).len(), 1);
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
}

#[test]
fn deleting_an_image_is_refused_while_a_drive_depends_on_it() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );
    ctl_json(&d, &["drive", "create", "--image", "base", "--name", "d1"]);

    let refused = d.ctl(&["image", "delete", "base"]);
    ctl_json(&d, &["drive", "delete", "d1"]);
    let deleted = d.ctl(&["image", "delete", "base"]);

    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("d1"), "{}", stderr(&refused));
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(entries(&d.pool_root().join("images")).is_empty());
    assert!(entries(&d.pool_root().join("drives")).is_empty());
}

#[test]
fn sigkill_mid_import_leaves_no_half_image_after_restart() {
    let d = TestDaemon::start_with_storage();
    // Make the pool exist, then import a directory big enough to be caught in the act.
    let small = sample_tree(d.home());
    ctl_json(
        &d,
        &[
            "image",
            "import",
            small.to_str().unwrap(),
            "--name",
            "first",
        ],
    );
    let big = d.home().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..24 {
        let data: Vec<u8> = (0..(8 << 20))
            .map(|n: u32| (n.wrapping_mul(2_654_435_761) >> (i % 24)) as u8)
            .collect();
        std::fs::write(big.join(format!("f{i}")), data).unwrap();
    }
    let mut import = Command::new(common::nexusctl_bin())
        .arg("--home")
        .arg(d.home())
        .args(["image", "import", big.to_str().unwrap(), "--name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp = d.pool_root().join("tmp");
    let deadline = Instant::now() + Duration::from_secs(30);
    while entries(&tmp).is_empty() {
        assert!(Instant::now() < deadline, "the import never started");
        std::thread::sleep(Duration::from_millis(5));
    }

    let d = d.kill_and_restart();
    let _ = import.wait();

    let images = ctl_json(&d, &["image", "list"]);
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first"]);
    assert_eq!(entries(&d.pool_root().join("images")).len(), 1);
    assert!(entries(&tmp).is_empty());
    let log = d.log();
    assert!(
        log.contains("storage reconciled: removed or marked"),
        "{log}"
    );
}

#[test]
fn restart_removes_orphan_subvolumes_and_marks_rows_without_one_broken() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    let image = ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );
    let drive = ctl_json(
        &d,
        &["drive", "create", "--image", "base", "--name", "gone"],
    );
    let pool = d.pool_root();
    let image_dir = pool.join("images").join(image["id"].as_str().unwrap());
    // An orphan: a published image subvolume without a row (as after a crash before the insert).
    nexusd::storage::btrfs::snapshot(&image_dir, &pool.join("images/orphan-1"), true).unwrap();
    // A row without a subvolume.
    nexusd::storage::btrfs::delete_subvolume(
        &pool.join("drives").join(drive["id"].as_str().unwrap()),
    )
    .unwrap();

    let d = d.kill_and_restart();

    assert_eq!(
        entries(&d.pool_root().join("images")),
        [image["id"].as_str().unwrap()]
    );
    assert_eq!(ctl_json(&d, &["drive", "show", "gone"])["state"], "broken");
    let log = d.log();
    assert!(log.contains("orphan-1") && log.contains("gone"), "{log}");
    let deleted = d.ctl(&["drive", "delete", "gone"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
}

#[test]
fn clean_shutdown_unmounts_the_pool_it_mounted() {
    let mut d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );

    let status = d.stop();

    assert!(status.success(), "{status}");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = std::fs::canonicalize(d.pool_root()).unwrap();
    assert!(
        !mountinfo.contains(&format!(" {} ", root.display())),
        "{mountinfo}"
    );
}

#[test]
fn restart_reopens_the_pool_with_its_images() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "base"],
    );

    let d = d.restart();

    assert_eq!(ctl_json(&d, &["image", "show", "base"])["state"], "ready");
    assert_eq!(ctl_json(&d, &["status"])["pool"]["mounted"], true);
}

#[test]
fn importing_into_a_full_pool_is_insufficient_storage_and_leaves_nothing() {
    common::require_storage_prerequisites();
    let d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &["--pool-size", "256M"]);
    // 320 MiB of incompressible data in an ext4 file: more than the pool can hold.
    let tree = d.home().join("random");
    std::fs::create_dir(&tree).unwrap();
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    for i in 0..10 {
        let mut f = std::fs::File::create(tree.join(format!("r{i}"))).unwrap();
        std::io::copy(&mut std::io::Read::take(&mut urandom, 32 << 20), &mut f).unwrap();
    }
    let file = d.home().join("big.ext4");
    let mke2fs = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&file)
        .arg("400M")
        .status()
        .unwrap();
    assert!(mke2fs.success());

    let err = common::rt()
        .block_on(d.client.import_image(&nexus_lib::api::CreateImage {
            path: file.to_string_lossy().into_owned(),
            name: None,
            asset: None,
            size: None,
        }))
        .unwrap_err();

    assert_eq!(err.status(), Some(507), "{err}");
    assert!(err.to_string().contains("out of space"), "{err}");
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
    assert!(entries(&d.pool_root().join("images")).is_empty());
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
}

/// A home owned by uid 65534 and a nexusd running as that user, with the embedded pool.
fn unprivileged_daemon_home() -> tempfile::TempDir {
    common::require_storage_prerequisites();
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        home.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(home.path(), Some(65534), Some(65534)).unwrap();
    home
}

#[test]
fn without_root_the_first_import_says_how_to_use_a_btrfs_directory() {
    let home = unprivileged_daemon_home();
    let tree = sample_tree(home.path());
    let child = common::spawn_logged(common::nexusd_as_nobody(), home.path(), &[]);
    let d = TestDaemon::wrap(home, child, &[]);

    let out = d.ctl(&["image", "import", tree.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs root") && stderr(&out).contains("pool = "),
        "{}",
        stderr(&out)
    );
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
}

#[test]
fn without_root_an_existing_embedded_pool_is_a_startup_error_naming_the_fix() {
    let home = unprivileged_daemon_home();
    std::fs::create_dir_all(home.path().join("data")).unwrap();
    std::fs::write(home.path().join("data/pool.img"), b"").unwrap();
    for p in ["data", "data/pool.img"] {
        std::os::unix::fs::chown(home.path().join(p), Some(65534), Some(65534)).unwrap();
    }

    let mut child = common::spawn_logged(common::nexusd_as_nobody(), home.path(), &[]);
    let status = common::wait_bounded(&mut child, Duration::from_secs(20));

    assert!(!status.success());
    let log = std::fs::read_to_string(home.path().join("nexusd.log")).unwrap();
    assert!(
        log.contains("needs root") && log.contains("pool = "),
        "{log}"
    );
}

#[test]
fn openapi_document_covers_the_storage_routes() {
    let d = TestDaemon::start();

    let doc: serde_json::Value = common::rt()
        .block_on(
            d.client
                .request(http::Method::GET, "/v1/openapi.json", None::<&()>),
        )
        .unwrap();

    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/images", "get"),
        ("/v1/images", "post"),
        ("/v1/images/{image}", "get"),
        ("/v1/images/{image}", "delete"),
        ("/v1/drives", "get"),
        ("/v1/drives", "post"),
        ("/v1/drives/{drive}", "get"),
        ("/v1/drives/{drive}", "delete"),
        ("/v1/drives/{drive}/attach", "post"),
        ("/v1/drives/{drive}/detach", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let params = &paths["/v1/vms/{vm}"]["delete"]["parameters"];
    assert!(params.to_string().contains("keep_drives"), "{params}");
}

/// A daemon with storage and extra flags.
fn storage_daemon(extra: &[&str]) -> TestDaemon {
    common::require_storage_prerequisites();
    let mut flags = vec!["--pool-size", "1G"];
    flags.extend_from_slice(extra);
    TestDaemon::start_logged(tempfile::tempdir().unwrap(), &flags)
}

/// `POST /v1/images` with `path` as JSON (any text, NUL included): the status and the body.
fn import_raw(d: &TestDaemon, path: &str, name: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "path": path, "name": name }).to_string();
    common::rt().block_on(async {
        let resp = d
            .client
            .send_raw(
                http::Method::POST,
                "/v1/images",
                Some(bytes::Bytes::from(body)),
                Some("application/json"),
            )
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = nexus_lib::client::read_body(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

/// A tree of `n` empty files in one directory.
fn empty_files(at: &std::path::Path, n: usize) -> std::path::PathBuf {
    std::fs::create_dir_all(at).unwrap();
    for i in 0..n {
        std::fs::File::create(at.join(format!("f{i}"))).unwrap();
    }
    at.to_owned()
}

fn mke2fs_of(d: &TestDaemon) -> Vec<u32> {
    common::pids_mentioning("mke2fs", &d.home().display().to_string())
}

#[test]
fn bad_import_paths_answer_422_or_403_with_a_message_and_change_nothing() {
    let d = TestDaemon::start_with_storage();
    let tree = sample_tree(d.home());
    ctl_json(
        &d,
        &["image", "import", tree.to_str().unwrap(), "--name", "first"],
    );
    let home = d.home();
    let fifo = home.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let dev = home.join("null");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let sock = home.join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let looped = home.join("loop");
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let junk = home.join("junk.img");
    std::fs::write(&junk, b"not ext4").unwrap();
    let long_component = home.join("x".repeat(300));
    let s = |p: &std::path::Path| p.display().to_string();
    let pool = d.pool_root();
    let cases: Vec<(String, u16, &str)> = vec![
        (s(&fifo), 422, "neither a directory nor a regular file"),
        (s(&dev), 422, "neither a directory nor a regular file"),
        (s(&sock), 422, "neither a directory nor a regular file"),
        (s(&junk), 422, "not an ext4 image"),
        (s(&long_component), 422, "longer than 255 bytes"),
        (format!("{}/a\u{0}b", s(home)), 422, "NUL"),
        ("/nonexistent/nexus".into(), 422, "does not exist"),
        (s(&looped), 403, "symbolic link"),
        ("/proc/self/mem".into(), 403, "/proc"),
        (s(&pool), 403, "never importable"),
        (s(&pool.join("images")), 403, "never importable"),
        (s(&pool.join("tmp")), 403, "never importable"),
        (s(&home.join("data/pool.img")), 403, "never importable"),
    ];

    for (i, (path, status, says)) in cases.iter().enumerate() {
        let (got, body) = import_raw(&d, path, &format!("bad{i}"));
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(got, *status, "{path:.60}: {body}");
        assert!(message.contains(says), "{path:.60}: {body}");
    }

    let names: Vec<String> = ctl_json(&d, &["image", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["first"]);
    assert_eq!(entries(&d.pool_root().join("images")).len(), 1);
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
}

#[test]
fn a_fifo_swapped_in_during_imports_never_hangs_them() {
    let d = storage_daemon(&["--import-timeout-secs", "4"]);
    let home = d.home().to_owned();
    // A file import whose path flips between an ext4 file and a FIFO, and a directory import
    // whose only file flips between a regular file and a FIFO.
    make_ext4(&home.join("disk.ext4"), 64 << 20);
    let flip_file = home.join("flip-file");
    nix::unistd::mkfifo(&flip_file, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let tree = home.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("a"), b"data").unwrap();
    nix::unistd::mkfifo(&home.join("fifo-b"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, home, tree) = (stop.clone(), home.clone(), tree.clone());
        std::thread::spawn(move || {
            use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (a, b) in [
                    (home.join("disk.ext4"), home.join("flip-file")),
                    (tree.join("a"), home.join("fifo-b")),
                ] {
                    renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).unwrap();
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    let mut statuses = Vec::new();
    // Each round may wait for the 4 s timeout (mke2fs blocked opening the FIFO): few rounds.
    for i in 0..4 {
        for path in [&flip_file, &tree] {
            let started = Instant::now();
            let (status, body) = import_raw(&d, path.to_str().unwrap(), &format!("i{i}"));
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(15),
                "{path:?} took {took:?}: {body}"
            );
            assert!([201, 422].contains(&status), "{path:?}: {status} {body}");
            statuses.push(status);
            if status == 201 {
                d.ctl(&["image", "delete", &format!("i{i}")]);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();

    assert!(mke2fs_of(&d).is_empty());
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
    eprintln!("statuses while flipping: {statuses:?}");
}

#[test]
fn the_entry_cap_answers_422_naming_its_key() {
    let d = storage_daemon(&["--import-max-entries", "100"]);
    let tree = empty_files(&d.home().join("many"), 200);

    let (status, body) = import_raw(&d, tree.to_str().unwrap(), "many");

    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("import_max_entries"),
        "{body}"
    );
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
}

#[test]
fn sparse_files_are_sized_by_their_data_and_capped_by_their_apparent_size() {
    let d = storage_daemon(&["--import-max-bytes", "16G"]);
    let tree = d.home().join("sparse");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..3 {
        let f = std::fs::File::create(tree.join(format!("s{i}"))).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 1 << 20], 1 << 30).unwrap();
        f.set_len(4 << 30).unwrap();
    }

    let (ok, image) = import_raw(&d, tree.to_str().unwrap(), "sparse");
    std::fs::File::options()
        .write(true)
        .open(tree.join("s0"))
        .unwrap()
        .set_len(9 << 30)
        .unwrap();
    let (refused, body) = import_raw(&d, tree.to_str().unwrap(), "too-sparse");

    assert_eq!(ok, 201, "{image}");
    assert!(
        image["size_bytes"].as_u64().unwrap() < 256 << 20,
        "sized by the allocated bytes, not 12 GiB: {image}"
    );
    assert_eq!(refused, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("import_max_bytes"), "{body}");
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
}

#[test]
fn the_timeout_stops_a_slow_directory_import_with_422_naming_its_key() {
    let d = storage_daemon(&["--import-timeout-secs", "2"]);
    // mke2fs -d needs tens of seconds for 20,000 files in one directory.
    let tree = empty_files(&d.home().join("slow"), 20_000);

    let started = Instant::now();
    let (status, body) = import_raw(&d, tree.to_str().unwrap(), "slow");

    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("import_timeout_secs"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(mke2fs_of(&d).is_empty());
    assert!(entries(&d.pool_root().join("tmp")).is_empty());
    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
}

#[test]
fn a_client_that_disconnects_stops_its_directory_import() {
    let d = TestDaemon::start_with_storage();
    let tree = empty_files(&d.home().join("slow"), 20_000);
    let mut import = Command::new(common::nexusctl_bin())
        .arg("--home")
        .arg(d.home())
        .args(["image", "import", tree.to_str().unwrap(), "--name", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while mke2fs_of(&d).is_empty() {
        assert!(Instant::now() < deadline, "mke2fs never started");
        std::thread::sleep(Duration::from_millis(20));
    }

    common::signal(&import, nix::sys::signal::Signal::SIGKILL);
    let _ = import.wait();
    let killed = Instant::now();
    while !mke2fs_of(&d).is_empty() || !entries(&d.pool_root().join("tmp")).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "mke2fs {:?} or tmp/ {:?} still there",
            mke2fs_of(&d),
            entries(&d.pool_root().join("tmp"))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "mke2fs gone and tmp/ empty {:?} after the client",
        killed.elapsed()
    );

    assert_eq!(ctl_json(&d, &["image", "list"]), serde_json::json!([]));
    assert!(d.log().contains("import stopped"), "{}", d.log());
}
