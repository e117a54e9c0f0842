//! Templates → builds → images, end to end under QEMU: a template on the built-in busybox image
//! is built in a real build VM by the real nexusd, driven through the real nexusctl; the image
//! boots and holds what the template put there; an unchanged template is a cache hit; a changed
//! input file rebuilds; a failing step, a cancel and a restart leave no VM, drive or image.
//!
//! Needs what the VM tests need (see tests/vm_boot.rs); a missing prerequisite fails naming it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestDaemon, ctl_json, rt, stderr, stdout};
use nexus_lib::api::{Build, BuildState};

/// A daemon with a pool that can boot VMs.
fn daemon() -> TestDaemon {
    common::require_boot_prerequisites();
    TestDaemon::start_with_storage()
}

/// Writes `text` as a template file in the daemon's home and stores it with `template create`.
fn create_template(d: &TestDaemon, file: &str, text: &str) {
    let path = d.home().join(file);
    std::fs::write(&path, text).unwrap();
    let out = d.ctl(&["template", "create", path.to_str().unwrap()]);
    assert!(out.status.success(), "template create: {}", stderr(&out));
}

/// `template build NAME` with `--json`; the build record (the command may fail).
fn build(d: &TestDaemon, name: &str, extra: &[&str]) -> (Build, bool) {
    let mut args = vec!["--json", "template", "build", name];
    args.extend_from_slice(extra);
    let out = d.ctl(&args);
    if out.status.success() {
        (serde_json::from_str(&stdout(&out)).unwrap(), true)
    } else {
        let newest = ctl_json(d, &["build", "list", "--template", name]);
        let newest: Vec<Build> = serde_json::from_value(newest).unwrap();
        (newest.into_iter().next().expect("a build record"), false)
    }
}

fn log_of(d: &TestDaemon, build: &Build) -> String {
    let out = d.ctl(&["build", "logs", &build.id.to_string()]);
    assert!(out.status.success(), "build logs: {}", stderr(&out));
    stdout(&out)
}

/// Runs `sh -c CMD` in VM `vm`; its stdout (the command must succeed).
fn sh(d: &TestDaemon, vm: &str, cmd: &str) -> String {
    let out = d.ctl(&["vm", "exec", vm, "--", "/bin/sh", "-c", cmd]);
    assert!(
        out.status.success(),
        "`{cmd}` in {vm}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// The names of what exists: VMs, drives and images.
fn inventory(d: &TestDaemon) -> (Vec<String>, Vec<String>, Vec<String>) {
    let names = |noun: &str| -> Vec<String> {
        ctl_json(d, &[noun, "list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    (names("vm"), names("drive"), names("image"))
}

/// The drive subvolumes in the pool.
fn drive_dirs(d: &TestDaemon) -> Vec<String> {
    common::entries(&d.pool_root().join("drives"))
}

fn hello_template(src: &Path) -> String {
    format!(
        r#"name = "hello"
base = "default"

[[files]]
src = "{}"
dest = "/opt/hello.txt"
mode = "0640"

[[files]]
content = "<h1>served</h1>\n"
dest = "/opt/www/index.html"

[[run]]
command = "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown app:app /home/app /opt/hello.txt"

[[run]]
command = "echo \"step two in $(pwd) says $GREETING\" && echo built > built.txt"
workdir = "/opt"
env = {{ GREETING = "hi" }}

[start]
command = "httpd -f -p 8080 -h /opt/www"

[ready]
port = 8080
"#,
        src.display()
    )
}

#[test]
fn a_template_builds_an_image_with_its_files_and_user_and_an_unchanged_one_is_a_cache_hit() {
    let d = daemon();
    let src = d.home().join("hello.txt");
    std::fs::write(&src, "hello from the host\n").unwrap();
    create_template(&d, "hello.toml", &hello_template(&src));

    let (first, ok) = build(&d, "hello", &[]);
    assert!(ok, "build failed: {first:?}\n{}", log_of(&d, &first));
    let t = Instant::now();
    let (second, ok) = build(&d, "hello", &[]);
    let hit_time = t.elapsed();

    assert!(ok);
    assert_eq!(first.state, BuildState::Succeeded);
    let steps: Vec<&str> = first.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        steps,
        [
            "create", "boot", "files", "run[0]", "run[1]", "config", "export", "import"
        ]
    );
    assert!(log_of(&d, &first).contains("step two in /opt says hi"));
    assert_eq!(second.cached_from, Some(first.id));
    assert_eq!(second.image_id, first.image_id);
    eprintln!("cache hit through nexusctl: {hit_time:?}");
    assert!(hit_time < Duration::from_secs(1), "{hit_time:?}");
    let (vms, drives, _) = inventory(&d);
    assert!(vms.is_empty() && drives.is_empty(), "{vms:?} {drives:?}");
    assert!(drive_dirs(&d).is_empty());

    let out = d.ctl(&["vm", "create", "web", "--template", "hello"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    assert_eq!(sh(&d, "web", "cat /opt/hello.txt"), "hello from the host\n");
    assert_eq!(
        sh(
            &d,
            "web",
            "stat -c '%a %U' /opt/hello.txt /opt/www/index.html"
        ),
        "640 app\n644 root\n"
    );
    assert_eq!(sh(&d, "web", "id -u app"), "1000\n");
    assert_eq!(sh(&d, "web", "cat /opt/built.txt"), "built\n");
    assert_eq!(
        sh(&d, "web", "wget -qO- http://127.0.0.1:8080/"),
        "<h1>served</h1>\n"
    );
    let reason = common::running_reason(&d, "web");
    assert!(
        reason.contains("start service running")
            && reason.contains("ready check (port 8080) passed"),
        "{reason}"
    );
}

#[test]
fn a_ready_check_that_never_passes_fails_the_start_naming_the_check() {
    let d = daemon();
    create_template(
        &d,
        "never.toml",
        "name = \"never\"\nbase = \"default\"\n[ready]\nport = 9999\ntimeout_secs = 3\n",
    );

    let out = d.ctl(&["vm", "create", "never", "--template", "never"]);

    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ready check (port 9999) did not pass within 3 s"),
        "{}",
        stderr(&out)
    );
    let vm = ctl_json(&d, &["vm", "show", "never"]);
    assert_eq!(vm["state"], "failed");
}

#[test]
fn changing_an_input_file_rebuilds_and_older_unused_images_are_collected() {
    common::require_boot_prerequisites();
    let d = TestDaemon::start_logged(
        tempfile::tempdir().unwrap(),
        &["--pool-size", "1G", "--build-images-keep", "2"],
    );
    let src = d.home().join("hello.txt");
    std::fs::write(&src, "one\n").unwrap();
    create_template(&d, "hello.toml", &hello_template(&src));
    let (first, ok) = build(&d, "hello", &[]);
    assert!(ok, "{}", log_of(&d, &first));

    std::fs::write(&src, "two\n").unwrap();
    let (second, ok) = build(&d, "hello", &[]);

    assert!(ok, "{}", log_of(&d, &second));
    assert_eq!(second.cached_from, None);
    assert_ne!(second.cache_key, first.cache_key);
    assert_ne!(second.image_id, first.image_id);
    // A VM keeps the first image in use.
    let first_image = first.image_id.unwrap().to_string();
    let out = d.ctl(&["vm", "create", "old", "--image", &first_image]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (forced, ok) = build(&d, "hello", &["--no-cache"]);
    assert!(ok);
    assert_eq!(forced.cached_from, None);
    assert_eq!(forced.cache_key, second.cache_key);

    // Three images, two kept: the first one is past them, but in use.
    let built = |d: &TestDaemon| -> Vec<String> {
        let (_, _, mut names) = inventory(d);
        names.retain(|n| n.starts_with("hello-"));
        names.sort();
        names
    };
    let name_of = |b: &Build| b.image.clone().expect("an image name");
    let mut expect = vec![name_of(&first), name_of(&second), name_of(&forced)];
    expect.sort();
    assert_eq!(built(&d), expect);
    // Once free, it goes with the next build, and so does the second image.
    assert!(d.ctl(&["vm", "delete", "old"]).status.success());
    let (last, ok) = build(&d, "hello", &["--no-cache"]);
    assert!(ok);
    let mut expect = vec![name_of(&forced), name_of(&last)];
    expect.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    while built(&d) != expect && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(built(&d), expect, "{}", d.log());
    assert!(d.log().contains("older built image deleted"));
}

#[test]
fn a_failing_step_fails_the_build_with_its_output_in_the_log_and_leaves_no_image() {
    let d = daemon();
    create_template(
        &d,
        "bad.toml",
        "name = \"bad\"\nbase = \"default\"\n[[run]]\ncommand = \"echo fine\"\n[[run]]\ncommand = \"echo about to fail; echo oops >&2; exit 3\"\n[[run]]\ncommand = \"echo never\"\n",
    );

    let out = d.ctl(&["template", "build", "bad", "--follow"]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let followed = stderr(&out);
    assert!(
        followed.contains("about to fail") && followed.contains("run[1] failed: exit code 3"),
        "{followed}"
    );
    let (b, ok) = build(&d, "bad", &[]);
    assert!(!ok);
    assert_eq!(b.state, BuildState::Failed);
    assert!(b.image_id.is_none());
    assert!(
        b.error
            .as_deref()
            .unwrap()
            .contains("run[1] failed: exit code 3"),
        "{:?}",
        b.error
    );
    let log = log_of(&d, &b);
    assert!(
        log.contains("about to fail") && log.contains("oops"),
        "{log}"
    );
    assert!(!log.contains("\nnever\n"), "{log}");
    let (vms, drives, images) = inventory(&d);
    assert!(vms.is_empty() && drives.is_empty(), "{vms:?} {drives:?}");
    assert_eq!(images, ["default"]);
    assert!(drive_dirs(&d).is_empty());
}

/// Starts a build of a template whose step sleeps, and waits until the step runs.
fn build_sleeping(d: &TestDaemon) -> Build {
    create_template(
        d,
        "slow.toml",
        "name = \"slow\"\nbase = \"default\"\n[[run]]\ncommand = \"echo sleeping; sleep 60\"\n",
    );
    let rt = rt();
    let b = rt.block_on(d.client.start_build("slow", false)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log_of(d, &b).contains("\nsleeping\n") {
        assert!(
            Instant::now() < deadline,
            "the step never started: {}",
            log_of(d, &b)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b
}

#[test]
fn cancelling_a_build_during_a_step_leaves_nothing_behind() {
    let d = daemon();
    let b = build_sleeping(&d);

    let out = d.ctl(&["--json", "build", "cancel", &b.id.to_string()]);

    assert!(out.status.success(), "{}", stderr(&out));
    let cancelled: Build = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(cancelled.state, BuildState::Cancelled);
    let (vms, drives, images) = inventory(&d);
    assert!(vms.is_empty() && drives.is_empty(), "{vms:?} {drives:?}");
    assert_eq!(images, ["default"]);
    assert!(drive_dirs(&d).is_empty());
    assert!(common::vmm_pids(&nexusd_vm_name(&b), &d).is_empty());
}

#[test]
fn a_restart_fails_a_running_build_with_a_reason_and_removes_its_vm() {
    let d = daemon();
    let b = build_sleeping(&d);

    let d = d.kill_and_restart();

    let after = rt()
        .block_on(d.client.get_build(&b.id.to_string()))
        .unwrap();
    assert_eq!(after.state, BuildState::Failed);
    assert!(
        after.error.as_deref().unwrap().contains("restarted"),
        "{after:?}"
    );
    let (vms, drives, images) = inventory(&d);
    assert!(vms.is_empty() && drives.is_empty(), "{vms:?} {drives:?}");
    assert_eq!(images, ["default"]);
}

#[test]
fn an_invalid_template_is_refused_naming_the_key_and_stores_nothing() {
    let d = TestDaemon::start();
    let path = d.home().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"x\"\nbase = \"default\"\n[[files]]\ncontent = \"a\"\ndest = \"/opt/../etc/x\"\n",
    )
    .unwrap();

    let out = d.ctl(&["template", "create", path.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("files[0].dest"), "{}", stderr(&out));
    assert_eq!(ctl_json(&d, &["template", "list"]), serde_json::json!([]));
}

/// The build VM's name as nexusd derives it.
fn nexusd_vm_name(b: &Build) -> String {
    let hex = b.id.simple().to_string();
    format!("build-{}", &hex[hex.len() - 12..])
}

/// Writes `bytes` as a blob of the layout at `layout`; its descriptor (digest, size).
fn blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// `tar -czf` of the directory `dir`, owned by root.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-czf",
            "-",
            "-C",
        ])
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An OCI image archive of two layers: a busybox system with `/etc/remove-me` and `/opt/old`,
/// then a layer adding `/etc/layer2`, whiting out `/etc/remove-me` and making `/opt` opaque
/// with `/opt/new`.
fn oci_archive(at: &Path) -> std::path::PathBuf {
    let l1 = at.join("l1");
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "opt", "root"] {
        std::fs::create_dir_all(l1.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", l1.join("bin/busybox")).unwrap();
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list-full")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = l1.join(applet.trim());
        if !applet.trim().is_empty() && !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", link).unwrap();
        }
    }
    std::fs::write(l1.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(l1.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(l1.join("etc/remove-me"), "lower\n").unwrap();
    std::fs::write(l1.join("opt/old"), "lower\n").unwrap();
    let l2 = at.join("l2");
    std::fs::create_dir_all(l2.join("etc")).unwrap();
    std::fs::create_dir_all(l2.join("opt")).unwrap();
    std::fs::write(l2.join("etc/layer2"), "second layer\n").unwrap();
    std::fs::write(l2.join("etc/.wh.remove-me"), "").unwrap();
    std::fs::write(l2.join("opt/.wh..wh..opq"), "").unwrap();
    std::fs::write(l2.join("opt/new"), "upper\n").unwrap();

    let layout = at.join("layout");
    let layer = |dir: &Path| {
        let (digest, size) = blob(&layout, &tar_gz(dir));
        serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    };
    let layers = vec![layer(&l1), layer(&l2)];
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let (config_digest, config_size) = blob(&layout, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layers,
    });
    let (digest, size) = blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = at.join("image.tar");
    let out = std::process::Command::new("tar")
        .args(["-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    archive
}

#[test]
fn an_oci_archive_made_here_is_a_usable_base_with_its_whiteouts_honoured() {
    let d = daemon();
    let archive = oci_archive(d.home());
    create_template(
        &d,
        "oci.toml",
        &format!(
            "name = \"fromoci\"\nbase = \"oci:{}\"\n[[run]]\ncommand = \"cat /etc/layer2 && ls /opt\"\n",
            archive.display()
        ),
    );

    let (b, ok) = build(&d, "fromoci", &[]);

    assert!(ok, "{b:?}\n{}\n{}", log_of(&d, &b), d.log());
    assert!(
        log_of(&d, &b).contains("second layer\nnew\n"),
        "{}",
        log_of(&d, &b)
    );
    let out = d.ctl(&["vm", "create", "oci", "--template", "fromoci"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        sh(
            &d,
            "oci",
            "cat /etc/layer2; ls /opt; test -e /etc/remove-me || echo removed"
        ),
        "second layer\nnew\nremoved\n"
    );
}

/// A tar of a minimal root filesystem: the host's static busybox as `/bin/busybox` with the
/// applets a build and these checks use linked to it.
fn busybox_rootfs_tar() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("a static busybox at /bin/busybox");
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "bin", std::io::empty()).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o755);
    file.set_size(busybox.len() as u64);
    b.append_data(&mut file, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in ["sh", "mkdir", "chmod", "chown", "cat", "echo", "sync"] {
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_mode(0o777);
        link.set_size(0);
        b.append_link(&mut link, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn images(d: &TestDaemon) -> Vec<serde_json::Value> {
    ctl_json(d, &["image", "list"]).as_array().unwrap().clone()
}

#[test]
fn a_rootfs_asset_base_is_imported_on_first_use_and_reused_after() {
    let d = daemon();
    let tar = busybox_rootfs_tar();
    let sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&tar));
    common::rootfs_asset(&d, "bb", &tar);
    for (name, word) in [("onbb", "first"), ("onbb2", "second")] {
        create_template(
            &d,
            &format!("{name}.toml"),
            &format!(
                "name = \"{name}\"\nbase = \"asset:bb\"\n[[run]]\ncommand = \"echo {word} > /built.txt\"\n"
            ),
        );
    }

    let (first, ok) = build(&d, "onbb", &[]);
    assert!(ok, "{first:?}\n{}\n{}", log_of(&d, &first), d.log());
    let (second, ok) = build(&d, "onbb2", &[]);
    assert!(ok, "{second:?}\n{}", log_of(&d, &second));

    // One image of the asset, named after it, recording where it came from; both builds used it.
    let from_asset: Vec<_> = images(&d)
        .into_iter()
        .filter(|i| {
            i["source"]
                .as_str()
                .unwrap()
                .starts_with("asset:rootfs/bb@1 ")
        })
        .collect();
    assert_eq!(from_asset.len(), 1, "{from_asset:?}");
    assert_eq!(from_asset[0]["name"], "bb");
    assert!(
        from_asset[0]["source"].as_str().unwrap().contains(&sha),
        "{from_asset:?}"
    );
    let base_id = from_asset[0]["id"].as_str().unwrap();
    for b in [&first, &second] {
        assert!(log_of(&d, b).contains(&format!("from image {base_id}")));
    }
    let image = first.image_id.unwrap().to_string();
    let out = d.ctl(&["vm", "create", "onbb", "--image", &image, "--start"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    assert_eq!(sh(&d, "onbb", "cat /built.txt"), "first\n");

    // An unknown asset is refused before anything is made, naming the base.
    create_template(
        &d,
        "nosuch.toml",
        "name = \"nosuch\"\nbase = \"asset:nosuch\"\n",
    );
    let before = images(&d).len();
    let out = d.ctl(&["template", "build", "nosuch"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("base: no asset \"nosuch\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(images(&d).len(), before);
}
