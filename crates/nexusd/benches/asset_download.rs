//! Asset download throughput: a 200 MB fixture served on 127.0.0.1, run through the asset
//! service's pipeline (fetch with streaming sha256, checksum, install into the content-addressed
//! store and the SQLite row) in this process, next to `curl -o` of the same file, and the
//! re-hash of `verify`. Prints medians and p95 over several rounds. The fixture and every copy
//! live in a temporary directory removed at the end.
//!
//! Run with `cargo bench -p nexusd --bench asset_download` (`NEXUS_BENCH_ASSET_MB` and
//! `NEXUS_BENCH_ROUNDS` change the size and the rounds).

#[path = "../tests/common/fixture_server.rs"]
mod fixture_server;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fixture_server::{Behaviour, Content, FixtureServer};
use nexus_lib::api::{CreateProvider, DownloadEvent, DownloadRequest, ProviderKind};
use nexusd::assets::{AssetDirs, AssetService, AssetSettings};
use nexusd::hostpath::{Caller, ImportPolicy};
use nexusd::store::Store;
use sha2::{Digest, Sha256};

/// Writes `mb` MiB of incompressible bytes; returns their sha256.
fn write_fixture(path: &Path, mb: usize) -> String {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mb {
        for chunk in block.chunks_mut(8) {
            // xorshift64: cheap bytes that no codec or cache shortcut can shrink.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        hasher.update(&block);
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn stats(label: &str, times: &mut [Duration], bytes: u64) {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    let (p50, p95) = (at(0.5), at(0.95));
    let mbps = |d: Duration| bytes as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "{label:<46} p50 {:>7.3} s ({:>6.0} MiB/s)   p95 {:>7.3} s ({:>6.0} MiB/s)   n={}",
        p50.as_secs_f64(),
        mbps(p50),
        p95.as_secs_f64(),
        mbps(p95),
        times.len()
    );
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let mb = env_usize("NEXUS_BENCH_ASSET_MB", 200);
    let rounds = env_usize("NEXUS_BENCH_ROUNDS", 7);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let fixture = scratch.path().join("fixture.bin");
    let sha = write_fixture(&fixture, mb);
    let bytes = (mb as u64) << 20;
    let server = FixtureServer::start();
    server.put(
        "/fixture.bin",
        Content::File {
            path: fixture.clone(),
            len: bytes,
        },
        Behaviour::Serve,
    );
    let url = format!("{}/fixture.bin", server.url());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("asset download: {mb} MiB over 127.0.0.1, {rounds} rounds each");

    let data = scratch.path().join("data");
    let store = Store::open(&scratch.path().join("state/nexus.db")).unwrap();
    let service = AssetService::new(
        store,
        AssetDirs::under(&data),
        AssetSettings::default(),
        Arc::new(ImportPolicy::new(None, Vec::new())),
    )
    .unwrap();
    let provider = CreateProvider {
        name: "bench".into(),
        kind: ProviderKind::Url,
        settings: serde_json::from_value(serde_json::json!({"no_signature": true})).unwrap(),
        stages: None,
    };
    rt.block_on(async {
        service.start().await.unwrap();
        service.add_provider(provider).await.unwrap();
    });
    let req = DownloadRequest {
        provider: "bench".into(),
        vars: [
            ("url", url.as_str()),
            ("sha256", sha.as_str()),
            ("name", "fixture"),
            ("kind", "file"),
            ("version", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };

    let mut pipeline = Vec::new();
    let mut verify = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        rt.block_on(async {
            let mut run = service
                .download(req.clone(), &Caller::Daemon)
                .await
                .unwrap();
            let mut last = None;
            while let Some(event) = run.events.recv().await {
                last = Some(event);
            }
            match last {
                Some(DownloadEvent::Done { .. }) => {}
                other => panic!("the download failed: {other:?}"),
            }
        });
        pipeline.push(started.elapsed());
        let started = Instant::now();
        let verdict = rt.block_on(service.verify("fixture", None)).unwrap();
        verify.push(started.elapsed());
        assert!(verdict.ok, "{verdict:?}");
        rt.block_on(service.remove("fixture", None)).unwrap();
    }

    let mut curl = Vec::new();
    let out = scratch.path().join("curl.bin");
    for _ in 0..rounds {
        let _ = std::fs::remove_file(&out);
        let started = Instant::now();
        let status = Command::new("curl")
            .args(["-sS", "--fail", "-o"])
            .arg(&out)
            .arg(&url)
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => curl.push(started.elapsed()),
            Ok(s) => panic!("curl failed: {s}"),
            Err(e) => {
                println!("curl: not run ({e}); install curl to compare");
                break;
            }
        }
    }

    stats(
        "nexusd fetch + sha256 + checksum + install",
        &mut pipeline,
        bytes,
    );
    stats(
        "nexusd verify (re-hash of the installed file)",
        &mut verify,
        bytes,
    );
    if !curl.is_empty() {
        stats("curl -o (no hashing)", &mut curl, bytes);
    }
}
