//! Asset pipelines through the real nexusd: providers added over the API, downloads from an HTTP
//! server the test runs on 127.0.0.1 serving fixture releases signed with a key the test
//! generated and pinned in the daemon's `asset_keys`. Success, resume after a dropped
//! connection, and each bad input (wrong checksum, bad signature, unknown key, truncated
//! download, stalled server, hostile tarballs, decompression bomb): a clear error, nothing
//! installed, nothing written outside the store.

mod common;
#[path = "common/fixture_server.rs"]
mod fixture_server;
#[path = "common/release.rs"]
mod release;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{TestDaemon, rt};
use fixture_server::{Behaviour, FixtureServer};
use nexus_lib::api::{Asset, CreateProvider, DownloadEvent, DownloadRequest, ProviderKind};
use release::{Entry, Signer, gz, sha256_hex, sums, tar_gz};
use serde_json::json;

/// A daemon trusting one generated key, and the fixture server.
struct Env {
    d: TestDaemon,
    server: FixtureServer,
    signer: Signer,
}

fn env_with(extra: &[&str]) -> Env {
    let signer = Signer::generate("release");
    let home = tempfile::tempdir().unwrap();
    let key = home.path().join("release.asc");
    std::fs::write(&key, signer.public_armored()).unwrap();
    let pin = format!("{}={}", signer.fingerprint, key.display());
    let mut flags = vec!["--asset-keys", pin.as_str()];
    flags.extend_from_slice(extra);
    let server = FixtureServer::start();
    let d = TestDaemon::start_logged(home, &flags);
    Env { d, server, signer }
}

fn env() -> Env {
    env_with(&[])
}

/// What a download ended with.
struct Outcome {
    events: Vec<DownloadEvent>,
    result: Result<Vec<Asset>, (String, String)>,
}

impl Outcome {
    fn code(&self) -> &str {
        match &self.result {
            Err((code, _)) => code,
            Ok(_) => panic!("the download succeeded: {:?}", self.events),
        }
    }

    fn assets(&self) -> &[Asset] {
        match &self.result {
            Ok(a) => a,
            Err((code, message)) => panic!("download failed: {code}: {message}"),
        }
    }
}

impl Env {
    fn add(&self, name: &str, settings: serde_json::Value, stages: serde_json::Value) {
        let req = CreateProvider {
            name: name.into(),
            kind: ProviderKind::Url,
            settings: serde_json::from_value(settings).unwrap(),
            stages: Some(serde_json::from_value(stages).unwrap()),
        };
        rt().block_on(self.d.client.add_provider(&req))
            .unwrap_or_else(|e| panic!("add provider {name}: {e}"));
    }

    fn download(&self, provider: &str, vars: &[(&str, &str)]) -> Outcome {
        let req = DownloadRequest {
            provider: provider.into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        rt().block_on(async {
            let mut stream = self.d.client.download(&req).await.expect("download starts");
            let mut events = Vec::new();
            while let Some(e) = stream.next().await.expect("event stream") {
                events.push(e);
            }
            let result = match events.last() {
                Some(DownloadEvent::Done { assets }) => Ok(assets.clone()),
                Some(DownloadEvent::Error { code, message, .. }) => {
                    Err((code.clone(), message.clone()))
                }
                other => panic!("the stream ended with {other:?}"),
            };
            Outcome { events, result }
        })
    }

    fn assets_dir(&self) -> PathBuf {
        self.d.home().join("data/assets")
    }

    /// No asset row, an empty store and no staging directory left.
    fn assert_nothing_installed(&self) {
        let assets = rt().block_on(self.d.client.list_assets(None)).unwrap();
        assert!(assets.is_empty(), "installed: {assets:?}");
        assert_eq!(
            files_under(&self.assets_dir().join("sha256")),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            files_under(&self.assets_dir().join("tmp")),
            Vec::<PathBuf>::new()
        );
    }

    /// A signed release of `vmlinux.gz` (content `payload`) whose SHA256SUMS says `listed`.
    fn serve_signed_kernel(&self, payload: &[u8], listed: &str, signer: &Signer) {
        let packed = gz(payload);
        let sums = format!("{listed}  vmlinux.gz\n");
        let s = &self.server;
        s.put_bytes("/k/vmlinux.gz", packed, Behaviour::Serve);
        s.put_bytes(
            "/k/SHA256SUMS.asc",
            signer.sign(sums.as_bytes()),
            Behaviour::Serve,
        );
        s.put_bytes("/k/SHA256SUMS", sums, Behaviour::Serve);
    }

    /// A provider running the signed-kernel pipeline against the fixture server.
    fn add_signed_kernel_provider(&self) {
        self.add(
            "signed",
            json!({"base_url": self.server.url(), "vars": {"version": "1.0"}}),
            json!([
                {"stage": "fetch", "source": {"url": "{base_url}/k/vmlinux.gz"}, "into": "packed"},
                {"stage": "fetch", "source": {"url": "{base_url}/k/SHA256SUMS"}, "into": "sums"},
                {"stage": "fetch", "source": {"url": "{base_url}/k/SHA256SUMS.asc"}, "into": "sums_sig"},
                {"stage": "signature", "artifact": "sums", "signature": "sums_sig", "keys": [self.signer.fingerprint]},
                {"stage": "checksum", "artifact": "packed", "expected": {"file": {"artifact": "sums", "entry": "vmlinux.gz"}}},
                {"stage": "decompress", "artifact": "packed", "format": "auto", "into": "vmlinux"},
                {"stage": "install", "artifact": "vmlinux", "kind": "kernel", "name": "test-kernel", "version": "{version}"}
            ]),
        );
    }

    /// A provider fetching `{base_url}/{file}`, checked against `{sha256}`, unpacked as a tar
    /// archive, installing `bin/tool`.
    fn add_tarball_provider(&self) {
        self.add(
            "tarball",
            json!({"base_url": self.server.url(), "no_signature": true}),
            json!([
                {"stage": "fetch", "source": {"url": "{base_url}/{file}"}, "into": "tarball"},
                {"stage": "checksum", "artifact": "tarball", "expected": {"sha256": "{sha256}"}},
                {"stage": "extract", "artifact": "tarball", "format": "tar", "into": "tree"},
                {"stage": "install", "artifact": "tree", "member": "bin/tool", "kind": "file", "name": "tool", "version": "1"}
            ]),
        );
    }

    /// Serves a tarball of `entries` as `/{file}` and downloads it through `tarball`.
    fn download_tarball(&self, file: &str, entries: &[Entry<'_>]) -> Outcome {
        let tgz = tar_gz(entries);
        let sha = sha256_hex(&tgz);
        self.server
            .put_bytes(&format!("/{file}"), tgz, Behaviour::Serve);
        self.add_tarball_provider();
        self.download("tarball", &[("file", file), ("sha256", &sha)])
    }
}

/// Every regular file and symlink under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => out.push(e.path()),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A marker name no test writes legitimately.
fn marker() -> String {
    format!("escaped-{}", uuid::Uuid::new_v4().simple())
}

fn assert_no_file_named(root: &Path, name: &str) {
    let found: Vec<_> = files_under(root)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == name))
        .collect();
    assert!(found.is_empty(), "written outside the tree: {found:?}");
    assert!(!Path::new("/tmp").join(name).exists());
}

#[test]
fn a_signed_release_is_verified_decompressed_and_installed() {
    let env = env();
    let kernel = payload(300_000);
    env.serve_signed_kernel(&kernel, &sha256_hex(&gz(&kernel)), &env.signer);
    env.add_signed_kernel_provider();

    let out = env.download("signed", &[]);

    let asset = &out.assets()[0];
    assert_eq!(
        (
            asset.name.as_str(),
            asset.version.as_str(),
            asset.sha256.clone()
        ),
        ("test-kernel", "1.0", sha256_hex(&kernel))
    );
    assert_eq!(std::fs::read(&asset.path).unwrap(), kernel);
    let stages = out
        .events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::Stage { .. }));
    assert_eq!(stages.count(), 7);
    let verdict = rt()
        .block_on(env.d.client.verify_asset(&asset.name, None))
        .unwrap();
    assert!(verdict.ok, "{verdict:?}");
}

#[test]
fn a_download_cut_halfway_is_resumed_with_range_by_the_next_run() {
    let env = env();
    let data = payload(1 << 20);
    let sha = sha256_hex(&data);
    env.server.put_bytes(
        "/big.bin",
        data.clone(),
        Behaviour::DropAfter {
            bytes: 1 << 19,
            times: 1,
        },
    );
    env.add(
        "plain",
        json!({"base_url": env.server.url(), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/big.bin"}, "into": "file"},
            {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
            {"stage": "install", "artifact": "file", "kind": "file", "name": "big", "version": "1"}
        ]),
    );

    let first = env.download("plain", &[("sha256", &sha)]);
    assert_eq!(first.code(), "truncated");
    env.assert_nothing_installed();
    let second = env.download("plain", &[("sha256", &sha)]);

    let requests = env.server.requests("/big.bin");
    assert_eq!(requests.len(), 2, "{requests:?}");
    let range = requests[1]
        .range
        .clone()
        .expect("the second request carries Range");
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Range {range:?}"));
    assert!(offset > 0 && offset < 1 << 20, "{range}");
    let asset = &second.assets()[0];
    assert_eq!(asset.sha256, sha);
    assert_eq!(sha256_hex(&std::fs::read(&asset.path).unwrap()), sha);
}

#[test]
fn a_client_that_goes_away_cancels_the_run_and_the_next_run_resumes() {
    let env = env();
    let data = payload(1 << 20);
    let sha = sha256_hex(&data);
    env.server.put_bytes(
        "/gone.bin",
        data.clone(),
        Behaviour::StallAfter { bytes: 300_000 },
    );
    env.add(
        "gone",
        json!({"base_url": env.server.url(), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/gone.bin"}, "into": "file", "idle_timeout_secs": 60},
            {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
            {"stage": "install", "artifact": "file", "kind": "file", "name": "gone", "version": "1"}
        ]),
    );
    let req = DownloadRequest {
        provider: "gone".into(),
        vars: [("sha256".to_string(), sha.clone())].into(),
    };
    rt().block_on(async {
        let mut stream = env.d.client.download(&req).await.unwrap();
        while let Some(event) = stream.next().await.unwrap() {
            if matches!(event, DownloadEvent::Progress { .. }) {
                break;
            }
        }
        // Let the first bytes land in the part, then go away mid-download.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });

    // The run's staging directory goes once the run is cancelled.
    let tmp = env.assets_dir().join("tmp");
    let staging = || std::fs::read_dir(&tmp).map_or(0, |d| d.count());
    let deadline = Instant::now() + Duration::from_secs(10);
    while staging() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(staging(), 0, "the run went on after its client left");
    env.assert_nothing_installed();
    env.server.put_bytes("/gone.bin", data, Behaviour::Serve);
    let second = env.download("gone", &[("sha256", &sha)]);

    assert_eq!(second.assets()[0].sha256, sha);
    let requests = env.server.requests("/gone.bin");
    assert!(requests[1].range.is_some(), "{requests:?}");
}

#[test]
fn a_wrong_checksum_is_refused_and_nothing_is_installed() {
    let env = env();
    let kernel = payload(10_000);
    env.serve_signed_kernel(&kernel, &sha256_hex(b"something else"), &env.signer);
    env.add_signed_kernel_provider();

    let out = env.download("signed", &[]);

    assert_eq!(out.code(), "checksum_mismatch");
    env.assert_nothing_installed();
}

#[test]
fn a_signature_over_other_content_is_a_bad_signature() {
    let env = env();
    let kernel = payload(10_000);
    env.serve_signed_kernel(&kernel, &sha256_hex(&gz(&kernel)), &env.signer);
    // The checksum file changes after it was signed.
    env.server.put_bytes(
        "/k/SHA256SUMS",
        sums(&[("vmlinux.gz", b"tampered")]),
        Behaviour::Serve,
    );
    env.add_signed_kernel_provider();

    let out = env.download("signed", &[]);

    assert_eq!(out.code(), "bad_signature");
    env.assert_nothing_installed();
}

#[test]
fn a_signature_by_a_key_that_is_not_pinned_is_refused() {
    let env = env();
    let stranger = Signer::generate("stranger");
    let kernel = payload(10_000);
    env.serve_signed_kernel(&kernel, &sha256_hex(&gz(&kernel)), &stranger);
    env.add_signed_kernel_provider();

    let out = env.download("signed", &[]);

    assert_eq!(out.code(), "unknown_key");
    assert!(
        out.result
            .as_ref()
            .unwrap_err()
            .1
            .contains(&stranger.fingerprint)
    );
    env.assert_nothing_installed();
}

#[test]
fn a_truncated_download_is_refused_and_its_part_kept_for_resuming() {
    let env = env();
    let data = payload(200_000);
    let sha = sha256_hex(&data);
    env.server
        .put_bytes("/t.bin", data, Behaviour::TruncateAlways { bytes: 50_000 });
    env.add(
        "trunc",
        json!({"base_url": env.server.url(), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/t.bin"}, "into": "file"},
            {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
            {"stage": "install", "artifact": "file", "kind": "file", "name": "t", "version": "1"}
        ]),
    );

    let out = env.download("trunc", &[("sha256", &sha)]);

    assert_eq!(out.code(), "truncated", "{:?}", out.result);
    assert!(
        out.result.as_ref().unwrap_err().1.contains("200000"),
        "{:?}",
        out.result
    );
    env.assert_nothing_installed();
    let parts = files_under(&env.assets_dir().join("partial"));
    assert!(
        parts
            .iter()
            .any(|p| p.extension().is_some_and(|x| x == "part")),
        "{parts:?}"
    );
}

#[test]
fn a_server_that_stalls_hits_the_idle_timeout() {
    let env = env();
    env.server.put_bytes(
        "/slow.bin",
        payload(100_000),
        Behaviour::StallAfter { bytes: 10_000 },
    );
    env.add(
        "slow",
        json!({"base_url": env.server.url(), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/slow.bin"}, "into": "file", "idle_timeout_secs": 1},
            {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
            {"stage": "install", "artifact": "file", "kind": "file", "name": "slow", "version": "1"}
        ]),
    );
    let started = Instant::now();

    let out = env.download("slow", &[("sha256", &"0".repeat(64))]);

    assert_eq!(out.code(), "stalled");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    env.assert_nothing_installed();
}

#[test]
fn a_tarball_with_a_dotdot_path_is_refused_and_writes_nothing_outside() {
    let env = env();
    let name = marker();
    let escape = format!("../../../../../../../../../../tmp/{name}");

    let out = env.download_tarball(
        "dotdot.tgz",
        &[
            Entry::Exec("bin/tool", b"#!/bin/sh\n"),
            Entry::File(&escape, b"owned"),
        ],
    );

    assert_eq!(out.code(), "unsafe_archive");
    assert!(
        out.result.as_ref().unwrap_err().1.contains(".."),
        "{:?}",
        out.result
    );
    env.assert_nothing_installed();
    assert_no_file_named(env.d.home(), &name);
}

#[test]
fn a_tarball_with_an_absolute_symlink_is_refused() {
    let env = env();

    let out = env.download_tarball("abslink.tgz", &[Entry::Symlink("bin/tool", "/etc/shadow")]);

    assert_eq!(out.code(), "unsafe_archive");
    assert!(
        out.result
            .as_ref()
            .unwrap_err()
            .1
            .contains("absolute symlink"),
        "{:?}",
        out.result
    );
    env.assert_nothing_installed();
}

#[test]
fn a_tarball_with_a_hard_link_out_of_the_tree_is_refused() {
    let env = env();
    let name = marker();
    let target = format!("../../../../../../../../../../tmp/{name}");
    std::fs::write(Path::new("/tmp").join(&name), b"outside").unwrap();
    let _cleanup = scopeguard(Path::new("/tmp").join(&name));

    let out = env.download_tarball("hardlink.tgz", &[Entry::HardLink("bin/tool", &target)]);

    assert_eq!(out.code(), "unsafe_archive");
    assert!(
        out.result.as_ref().unwrap_err().1.contains("hard link"),
        "{:?}",
        out.result
    );
    env.assert_nothing_installed();
    let links = std::fs::metadata(Path::new("/tmp").join(&name)).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.nlink()
    });
    assert_eq!(links.unwrap(), 1, "a link to the outside file was made");
}

#[test]
fn a_tarball_with_a_device_node_is_refused() {
    let env = env();

    let out = env.download_tarball(
        "dev.tgz",
        &[Entry::Exec("bin/tool", b"x"), Entry::CharDevice("dev/mem")],
    );

    assert_eq!(out.code(), "unsafe_archive");
    env.assert_nothing_installed();
}

#[test]
fn a_decompression_bomb_past_the_configured_bound_is_refused() {
    let env = env_with(&["--asset-max-unpacked-bytes", "4M"]);
    let bomb = gz(&vec![0u8; 16 << 20]);
    let sha = sha256_hex(&bomb);
    env.server.put_bytes("/bomb.gz", bomb, Behaviour::Serve);
    env.add(
        "bomb",
        json!({"base_url": env.server.url(), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/bomb.gz"}, "into": "packed"},
            {"stage": "checksum", "artifact": "packed", "expected": {"sha256": "{sha256}"}},
            {"stage": "decompress", "artifact": "packed", "format": "gz", "into": "file"},
            {"stage": "install", "artifact": "file", "kind": "file", "name": "bomb", "version": "1"}
        ]),
    );

    let out = env.download("bomb", &[("sha256", &sha)]);

    assert_eq!(out.code(), "decompression_bomb");
    assert!(
        out.result.as_ref().unwrap_err().1.contains("4194304"),
        "{:?}",
        out.result
    );
    env.assert_nothing_installed();
}

#[test]
fn a_debian_package_from_a_local_directory_is_unpacked_and_its_member_installed() {
    let env = env();
    let mirror = env.d.home().join("mirror");
    std::fs::create_dir(&mirror).unwrap();
    let deb = release::deb(&[
        Entry::Dir("./usr/"),
        Entry::Exec("./usr/bin/tool", b"#!/bin/sh\necho tool\n"),
        Entry::Symlink("./usr/bin/alias", "tool"),
    ]);
    std::fs::write(mirror.join("tool_1.0_amd64.deb"), &deb).unwrap();
    env.add(
        "local-deb",
        json!({"base_url": format!("file://{}", mirror.display()), "no_signature": true}),
        json!([
            {"stage": "fetch", "source": {"url": "{base_url}/tool_1.0_amd64.deb"}, "into": "deb"},
            {"stage": "checksum", "artifact": "deb", "expected": {"sha256": "{sha256}"}},
            {"stage": "extract", "artifact": "deb", "format": "deb", "into": "tree"},
            {"stage": "install", "artifact": "tree", "member": "usr/bin/tool", "kind": "file", "name": "tool", "version": "1.0"}
        ]),
    );

    let out = env.download("local-deb", &[("sha256", &sha256_hex(&deb))]);

    let asset = &out.assets()[0];
    assert_eq!(
        std::fs::read(&asset.path).unwrap(),
        b"#!/bin/sh\necho tool\n"
    );
    let mode = std::fs::metadata(&asset.path).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o555);
}

#[test]
fn a_pipeline_without_a_signature_is_refused_unless_the_provider_declares_none() {
    let env = env();
    let req = CreateProvider {
        name: "unsigned".into(),
        kind: ProviderKind::Url,
        settings: Default::default(),
        stages: Some(
            serde_json::from_value(json!([
                {"stage": "fetch", "source": {"url": "{url}"}, "into": "file"},
                {"stage": "checksum", "artifact": "file", "expected": {"sha256": "{sha256}"}},
                {"stage": "install", "artifact": "file", "kind": "file", "name": "x", "version": "1"}
            ]))
            .unwrap(),
        ),
    };

    let err = rt().block_on(env.d.client.add_provider(&req)).unwrap_err();

    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("no_signature"), "{err}");
}

/// Removes a file when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scopeguard(path: PathBuf) -> Cleanup {
    Cleanup(path)
}
