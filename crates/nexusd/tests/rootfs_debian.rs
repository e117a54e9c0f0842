//! The `debian-rootfs` provider for real: `nexusctl rootfs build debian` runs mmdebstrap against
//! the host's own apt configuration (Debian's archive through the host's mirrors; the guest
//! never reaches it), imports the tarball as an image with the agent in it, and a VM booted
//! from that image under QEMU runs python3 (Debian's kernel + initramfs, then the built guest
//! kernel without one). A template on `asset:debian-bookworm` builds an image with a user, files
//! and a python3 service gated by a ready check. Bad inputs, an unknown suite and a cancelled
//! build leave nothing.
//!
//! Needs root, mmdebstrap, everything the VM tests need (scripts/setup.sh) and NEXUS_AGENT_BIN.
//! mmdebstrap runs three times: one full build (about 2 minutes on these 2 cores), one that
//! fails at `apt-get update`, one cancelled after it started.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{TestDaemon, rt, stderr, stdout};
use nexus_lib::api::{AssetKind, DownloadEvent, DownloadRequest};

/// A daemon with room for a Debian image in its pool, and mmdebstrap on the host.
fn daemon(extra: &[&str]) -> TestDaemon {
    common::require_storage_prerequisites();
    assert!(
        Path::new("/usr/bin/mmdebstrap").is_file(),
        "this test needs mmdebstrap (apt-get install mmdebstrap; scripts/setup.sh)"
    );
    let mut args = vec!["--pool-size", "6G"];
    args.extend_from_slice(extra);
    TestDaemon::start_logged(tempfile::tempdir().unwrap(), &args)
}

/// Nothing of a run is left: no asset, no staging directory, no process, no mount.
fn assert_nothing_left(d: &TestDaemon) {
    let assets = rt().block_on(d.client.list_assets(None)).unwrap();
    assert!(assets.is_empty(), "installed: {assets:?}");
    let home = d.home().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let tmp: Vec<_> = std::fs::read_dir(d.home().join("data/assets/tmp"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        let procs: Vec<u32> = common::pids_mentioning(&home, "mmdebstrap");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mounted = mounts
            .lines()
            .any(|l| l.contains(&format!("{home}/data/assets")));
        if (tmp.is_empty() && procs.is_empty() && !mounted) || Instant::now() > deadline {
            break (tmp, procs, mounted);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        left,
        (vec![], vec![], false),
        "left behind: staging, processes, mounts"
    );
}

fn vm_exec_python(d: &TestDaemon, vm: &str) {
    let out = d.ctl(&["vm", "exec", vm, "--", "python3", "-c", "print(6*7)"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    assert_eq!(stdout(&out), "42\n");
}

/// Starts `vm` from `image` and returns start → agent ready (ms) of its boot.
fn boot(d: &TestDaemon, vm: &str, image: &str) -> u64 {
    let out = d.ctl(&[
        "vm",
        "create",
        vm,
        "--image",
        image,
        "--network",
        "none",
        "--start",
    ]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let boots = rt().block_on(d.client.vm_boots(vm)).unwrap();
    boots.last().and_then(|b| b.agent_ready_ms).unwrap()
}

#[test]
fn rootfs_build_debian_makes_an_image_whose_vm_runs_python_also_on_the_built_kernel() {
    common::require_boot_prerequisites();
    let mut d = daemon(&[]);

    let started = Instant::now();
    let out = d.ctl(&["--json", "rootfs", "build", "debian"]);
    let took = started.elapsed();

    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let built: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let (asset, image) = (&built["asset"], &built["image"]);
    let name = image["name"].as_str().unwrap();
    assert!(name.starts_with("debian-"), "{name}");
    assert_eq!(asset["kind"], "rootfs");
    let step = &asset["inputs"]["steps"][0]["mmdebstrap"];
    assert_eq!(step["variant"], "apt");
    assert_eq!(
        step["packages"],
        serde_json::json!(["python3", "git", "curl", "ca-certificates"])
    );
    assert!(step["installed"]["python3"].is_string(), "{step}");
    assert!(step["source_date_epoch"].is_u64());
    assert!(
        image["source"]
            .as_str()
            .unwrap()
            .contains(asset["sha256"].as_str().unwrap()),
        "{image}"
    );
    eprintln!(
        "FIGURES rootfs build+import {:.1} s (mmdebstrap {} s), tarball {} bytes, image {} bytes",
        took.as_secs_f64(),
        step["build_secs"],
        asset["size_bytes"],
        image["size_bytes"]
    );

    // The import alone, timed: the same asset as a second image.
    let started = Instant::now();
    let id = asset["id"].as_str().unwrap();
    let again = d.ctl(&[
        "--json",
        "image",
        "import",
        "--asset",
        id,
        "--name",
        "debian-1g",
        "--size",
        "1G",
    ]);
    assert!(again.status.success(), "{}", stderr(&again));
    let sized: serde_json::Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_eq!(sized["size_bytes"], 1u64 << 30);
    eprintln!(
        "FIGURES image import of the rootfs asset {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ready = boot(&d, "deb", name);
    vm_exec_python(&d, "deb");
    let curl = d.ctl(&[
        "vm",
        "exec",
        "deb",
        "--",
        "sh",
        "-c",
        "git --version && curl --version | head -1 && ls /etc/ssl/certs | wc -l",
    ]);
    assert!(curl.status.success(), "{}", stderr(&curl));
    eprintln!("FIGURES debian image, Debian kernel + initramfs: start -> agent ready {ready} ms");

    template_on_the_debian_asset(
        &d,
        asset["name"].as_str().unwrap(),
        image["id"].as_str().unwrap(),
    );

    // The same image on the built guest kernel: no initramfs, init=/sbin/nexus-agent from it.
    let kernel = common::kernel::built_kernel();
    assert!(d.stop().success());
    let home = std::mem::replace(&mut d.home, tempfile::tempdir().unwrap());
    let vmlinux = kernel.vmlinux.display().to_string();
    let d = TestDaemon::start_logged(home, &["--pool-size", "6G", "--guest-kernel", &vmlinux]);
    let ready = boot(&d, "deb-built", name);
    vm_exec_python(&d, "deb-built");
    eprintln!("FIGURES debian image, built kernel (PVH): start -> agent ready {ready} ms");
}

/// Issue 13's template on the Debian rootfs: `base = "asset:NAME"` resolves to the image the
/// build above imported (same tarball), a step creates a user with Debian's `useradd` and writes
/// into `/opt`, a python3 `start` service with a `ready` port check answers in the VM.
fn template_on_the_debian_asset(d: &TestDaemon, asset: &str, image_id: &str) {
    let text = format!(
        r#"name = "deb-app"
base = "asset:{asset}"

[[files]]
content = "hello from debian\n"
dest = "/opt/app/hello.txt"
mode = "0640"

[[run]]
command = "useradd --create-home --uid 1000 app && chown app:app /opt/app/hello.txt && echo built > /opt/app/built.txt"

[start]
command = "python3 -m http.server 8000 --bind 127.0.0.1 --directory /opt/app"

[ready]
port = 8000
timeout_secs = 120
"#
    );
    let path = d.home().join("deb-app.toml");
    std::fs::write(&path, text).unwrap();
    let out = d.ctl(&["template", "create", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let started = Instant::now();
    let out = d.ctl(&["--json", "template", "build", "deb-app"]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let build: nexus_lib::api::Build = serde_json::from_str(&stdout(&out)).unwrap();
    let log = stdout(&d.ctl(&["build", "logs", &build.id.to_string()]));
    assert!(log.contains(&format!("from image {image_id}")), "{log}");
    let phases: Vec<String> = build
        .steps
        .iter()
        .map(|s| format!("{} {} ms", s.name, s.duration_ms))
        .collect();
    eprintln!(
        "FIGURES template build on the debian asset {:.1} s: {}",
        took.as_secs_f64(),
        phases.join(", ")
    );

    let out = d.ctl(&["vm", "create", "deb-app", "--template", "deb-app"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let sh = |cmd: &str| {
        let out = d.ctl(&["vm", "exec", "deb-app", "--", "sh", "-c", cmd]);
        assert!(out.status.success(), "{cmd}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(
        sh("stat -c '%a %U' /opt/app/hello.txt && id -u app && cat /opt/app/built.txt"),
        "640 app\n1000\nbuilt\n"
    );
    assert_eq!(
        sh("curl -s http://127.0.0.1:8000/hello.txt"),
        "hello from debian\n"
    );
    let reason = common::running_reason(d, "deb-app");
    assert!(
        reason.contains("ready check (port 8000) passed"),
        "{reason}"
    );
    assert!(d.ctl(&["vm", "stop", "deb-app"]).status.success());
}

#[test]
fn bad_rootfs_inputs_are_refused_before_mmdebstrap_runs_and_install_nothing() {
    let d = daemon(&[]);
    let many = vec!["ab"; 65].join(",");
    for (args, expect) in [
        (vec!["--packages", "python3,Bad_Name"], "Bad_Name"),
        (
            vec!["--packages", "python3,,git"],
            "not a Debian package name",
        ),
        (vec!["--packages", many.as_str()], "at most 64"),
        (vec!["--suite", "../etc"], "suite"),
        (vec!["--suite", "Bookworm"], "not a Debian suite name"),
        (vec!["--variant", "extract"], "variant"),
    ] {
        let mut cmd = vec!["rootfs", "build", "debian"];
        cmd.extend(args.iter().copied());
        let started = Instant::now();

        let out = d.ctl(&cmd);

        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{cmd:?}: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{cmd:?} ran something"
        );
    }
    assert_nothing_left(&d);
}

#[test]
fn an_unknown_suite_fails_with_apts_words_and_installs_nothing() {
    let d = daemon(&[]);

    let out = d.ctl(&["rootfs", "build", "debian", "--suite", "nosuchsuite"]);

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("nosuchsuite"), "{text}");
    assert!(text.contains("mmdebstrap"), "{text}");
    assert_nothing_left(&d);
}

#[test]
fn a_client_that_goes_away_cancels_the_build_and_leaves_nothing() {
    let d = daemon(&[]);
    let req = DownloadRequest {
        provider: "debian-rootfs".into(),
        vars: Default::default(),
    };
    rt().block_on(async {
        let mut events = d.client.download(&req).await.unwrap();
        // mmdebstrap is running once it reported its first step.
        loop {
            match events.next().await.unwrap() {
                Some(DownloadEvent::Note { .. }) => break,
                Some(DownloadEvent::Done { .. } | DownloadEvent::Error { .. }) | None => {
                    panic!("the build ended before it could be cancelled")
                }
                Some(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(events);
    });

    assert_nothing_left(&d);
    let rootfs = rt()
        .block_on(d.client.list_assets(Some(AssetKind::Rootfs)))
        .unwrap();
    assert!(rootfs.is_empty());
}

/// A tar archive of (type, path, link target, data), names written raw (so `..` is possible).
fn tarball(entries: &[(tar::EntryType, &str, &str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (kind, path, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn image_import_of_a_hostile_rootfs_asset_is_refused_and_makes_no_image() {
    use tar::EntryType as E;
    let d = daemon(&[]);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().display().to_string();
    let cases = [
        ("dotdot", tarball(&[(E::Regular, "../escape", "", b"x")])),
        (
            "through-link",
            tarball(&[
                (E::Symlink, "./etc", &target, b""),
                (E::Regular, "./etc/owned", "", b"x"),
            ]),
        ),
        (
            "hard-link",
            tarball(&[(E::Link, "./passwd", "/etc/passwd", b"")]),
        ),
    ];
    for (name, bytes) in &cases {
        common::rootfs_asset(&d, name, bytes);

        let out = d.ctl(&["image", "import", "--asset", name]);

        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("unsafe archive"),
            "{name}: {}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    let images = rt().block_on(d.client.list_images()).unwrap();
    assert!(images.is_empty(), "{images:?}");
}

#[test]
fn a_rootfs_assets_absolute_symlinks_reach_the_image_as_links() {
    use tar::EntryType as E;
    common::require_boot_prerequisites();
    let d = daemon(&[]);
    let bytes = tarball(&[
        (E::Directory, "./usr/", "", b""),
        (E::Directory, "./usr/sbin/", "", b""),
        (E::Symlink, "./sbin", "/usr/sbin", b""),
        (E::Directory, "./etc/", "", b""),
        (E::Symlink, "./etc/shadow-link", "/etc/shadow", b""),
    ]);
    common::rootfs_asset(&d, "links", &bytes);

    let out = d.ctl(&["--json", "image", "import", "--asset", "links"]);

    assert!(out.status.success(), "{}\n{}", stderr(&out), d.log());
    let image: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let ext4 = d
        .pool_root()
        .join("images")
        .join(image["id"].as_str().unwrap())
        .join("rootfs.ext4");
    let debugfs = |req: &str| {
        let o = std::process::Command::new("debugfs")
            .args(["-R", req])
            .arg(&ext4)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(debugfs("stat /etc/shadow-link").contains("Fast link dest: \"/etc/shadow\""));
    assert!(debugfs("stat /usr/sbin/nexus-agent").contains("Mode:  0755"));
}
