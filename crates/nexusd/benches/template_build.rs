//! Template build benchmark on the real stack (nexusd + btrfs pool + QEMU + guest agent): a
//! template on the busybox `default` image (two files, two steps) built several times with
//! `--no-cache`, printing each phase (boot the build VM, files, each step, config, export =
//! sync and stop, import = publish the drive as an image) and the whole build, p50/p95; then the
//! time of a cache hit (`POST /v1/templates/{t}/build` answered from the cache). Needs what the
//! VM tests need (root, scripts/setup.sh, NEXUS_AGENT_BIN). Run:
//! `cargo bench -p nexusd --bench template_build`.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nexus_lib::client::Client;
use support::report;

const BUILDS: usize = 5;
const HITS: usize = 30;

const TEMPLATE: &str = r##"
name = "bench"
base = "default"
[[files]]
content = "hello\n"
dest = "/opt/hello.txt"
[[files]]
content = "#!/bin/sh\necho hi\n"
dest = "/usr/local/bin/hi"
mode = "0755"
[[run]]
command = "echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && mkdir -p /home/app"
[[run]]
command = "/usr/local/bin/hi > /opt/out.txt"
"##;

fn main() {
    let rt = support::runtime();
    let home = tempfile::tempdir().expect("tempdir");
    let mut child = support::spawn_nexusd(home.path(), &["--pool-size", "2G", "--network", "none"]);
    let client = Client::unix(home.path().join("run/nexusd.sock"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.block_on(client.health()).is_err() {
        assert!(Instant::now() < deadline, "nexusd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    rt.block_on(run(&client));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let _ = std::process::Command::new("umount")
        .arg(home.path().join("data/pool"))
        .status();
}

async fn run(client: &Client) {
    client.create_template(TEMPLATE).await.expect("template");
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut totals = Vec::new();
    for i in 0..BUILDS {
        let t = Instant::now();
        let b = client.start_build("bench", true).await.expect("build");
        let id = b.id.to_string();
        let b = loop {
            let b = client.get_build(&id).await.expect("build");
            if b.state.is_final() {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(b.state.as_str(), "succeeded", "{b:?}");
        totals.push(t.elapsed().as_secs_f64() * 1e3);
        for s in &b.steps {
            phases
                .entry(s.name.clone())
                .or_default()
                .push(s.duration_ms as f64);
        }
        eprintln!("build {i}: {:.0} ms", totals[i]);
        if i + 1 < BUILDS {
            // Keep the pool small: only the newest image stays.
            if let Some(image) = b.image_id {
                let _ = client.delete_image(&image.to_string()).await;
            }
        }
    }
    let order = [
        "create", "boot", "files", "run[0]", "run[1]", "config", "export", "import",
    ];
    for name in order {
        if let Some(samples) = phases.get(name) {
            report(&format!("build phase {name:<7}"), samples);
        }
    }
    report(
        "build total (queued to succeeded, seen by polling)",
        &totals,
    );
    let mut hits = Vec::new();
    for _ in 0..HITS {
        let t = Instant::now();
        let b = client.start_build("bench", false).await.expect("hit");
        hits.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(b.cached_from.is_some(), "not a cache hit: {b:?}");
    }
    report("cache hit (POST build answered from the cache)", &hits);
}
