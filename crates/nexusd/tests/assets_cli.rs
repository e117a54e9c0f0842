//! The asset nouns of the real `nexusctl` against the real nexusd, with the built-in providers
//! pointed at an HTTP server the test runs on 127.0.0.1 (`asset_mirrors`, or a `url` variable).

mod common;
#[path = "common/fixture_server.rs"]
mod fixture_server;
#[path = "common/release.rs"]
mod release;

use std::os::unix::fs::PermissionsExt;

use common::{TestDaemon, ctl_json, stderr, stdout};
use fixture_server::{Behaviour, FixtureServer};
use release::{Entry, sha256_hex, sums, tar_gz};

const VERSION: &str = "1.16.1";

/// A Firecracker release tarball laid out as Firecracker publishes it, and its `.sha256.txt`.
fn serve_firecracker_release(server: &FixtureServer) {
    let arch = std::env::consts::ARCH;
    let dir = format!("release-v{VERSION}-{arch}");
    let tgz = tar_gz(&[
        Entry::Dir(&format!("{dir}/")),
        Entry::Exec(
            &format!("{dir}/firecracker-v{VERSION}-{arch}"),
            b"firecracker",
        ),
        Entry::Exec(&format!("{dir}/jailer-v{VERSION}-{arch}"), b"jailer"),
        Entry::File(&format!("{dir}/LICENSE"), b"Apache-2.0"),
    ]);
    let name = format!("firecracker-v{VERSION}-{arch}.tgz");
    let list = sums(&[(name.as_str(), tgz.as_slice())]);
    server.put_bytes(&format!("/v{VERSION}/{name}"), tgz, Behaviour::Serve);
    server.put_bytes(
        &format!("/v{VERSION}/{name}.sha256.txt"),
        list,
        Behaviour::Serve,
    );
}

fn daemon_with_mirror(server: &FixtureServer) -> TestDaemon {
    let mirror = format!("firecracker-release={}", server.url());
    TestDaemon::start_logged(tempfile::tempdir().unwrap(), &["--asset-mirrors", &mirror])
}

#[test]
fn firecracker_download_from_a_mirror_installs_both_executables() {
    let server = FixtureServer::start();
    serve_firecracker_release(&server);
    let d = daemon_with_mirror(&server);

    let out = d.ctl(&["--json", "firecracker", "download", "--version", VERSION]);

    assert!(out.status.success(), "{}", stderr(&out));
    let assets: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let kinds: Vec<&str> = assets
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["firecracker", "jailer"]);
    for a in assets.as_array().unwrap() {
        let mode = std::fs::metadata(a["path"].as_str().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o555, "{a}");
    }
}

#[test]
fn firecracker_verify_and_remove_act_on_both_binaries_of_a_release() {
    let server = FixtureServer::start();
    serve_firecracker_release(&server);
    let d = daemon_with_mirror(&server);
    let downloaded = d.ctl(&["firecracker", "download", "--version", VERSION]);
    assert!(downloaded.status.success(), "{}", stderr(&downloaded));

    let verified = d.ctl(&["firecracker", "verify", VERSION]);
    let removed = d.ctl(&["firecracker", "remove", VERSION]);

    assert!(verified.status.success(), "{}", stderr(&verified));
    assert_eq!(
        stdout(&verified).matches(": ok:").count(),
        2,
        "{}",
        stdout(&verified)
    );
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert_eq!(
        ctl_json(&d, &["firecracker", "list"]),
        serde_json::json!([])
    );
}

#[test]
fn asset_verify_exits_1_when_an_installed_file_changed() {
    let server = FixtureServer::start();
    let kernel = b"not really a kernel".to_vec();
    server.put_bytes("/vmlinux", kernel.clone(), Behaviour::Serve);
    let d = TestDaemon::start_logged(tempfile::tempdir().unwrap(), &[]);
    let url = format!("url={}/vmlinux", server.url());
    let sha = format!("sha256={}", sha256_hex(&kernel));
    let out = d.ctl(&[
        "--json",
        "kernel",
        "download",
        "--provider",
        "url",
        "--version",
        "1",
        "--set",
        &url,
        "--set",
        &sha,
        "--set",
        "name=tiny",
        "--set",
        "kind=kernel",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = ctl_json(&d, &["kernel", "list"])[0]["path"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"tampered").unwrap();

    let verified = d.ctl(&["asset", "verify", "tiny"]);

    assert_eq!(verified.status.code(), Some(1), "{}", stdout(&verified));
    assert!(
        stdout(&verified).contains("FAILED"),
        "{}",
        stdout(&verified)
    );
}

#[test]
fn a_builtin_provider_cannot_be_removed() {
    let d = TestDaemon::start();

    let out = d.ctl(&["provider", "remove", "url"]);

    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("built in"), "{}", stderr(&out));
}

#[test]
fn provider_list_shows_the_builtin_providers() {
    let d = TestDaemon::start();

    let providers = ctl_json(&d, &["provider", "list"]);

    let names: Vec<&str> = providers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "debian-package",
            "debian-rootfs",
            "firecracker-release",
            "kernel-build",
            "url"
        ]
    );
}

#[test]
fn a_download_from_an_unknown_provider_exits_4() {
    let d = TestDaemon::start();

    let out = d.ctl(&["kernel", "download", "--provider", "nowhere"]);

    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}
