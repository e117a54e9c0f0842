//! The built guest kernel against Debian's: prints the kernel build's time (the recorded one of
//! the cached build, or a fresh build's with `--rebuild`), then start → agent ready over several
//! boots of each, both in one run, through the real nexusd under QEMU (TCG here): one daemon
//! boots the built `vmlinux` through PVH without an initramfs, the other Debian's cloud kernel
//! with the generated initramfs; their boots alternate, so both see the same host load.
//!
//! Needs what the VM tests need (root, scripts/setup.sh, NEXUS_AGENT_BIN) and, on a machine
//! without a cached build, about 6 minutes for the kernel build.
//! Run: `cargo bench -p nexusd --bench kernel_boot [-- --rebuild]` (`NEXUS_BENCH_BOOTS`, default 10).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant, UNIX_EPOCH};

use common::TestDaemon;
use nexus_lib::api::CreateVm;
use nexus_lib::client::Client;
use support::{pct, report};

/// Start → agent-ready samples of one kernel, in milliseconds.
#[derive(Default)]
struct Samples {
    /// `POST /v1/vms/{vm}/start` wall time: what a client waits for.
    api: Vec<f64>,
    /// Spawn of the VMM → agent handshake, as nexusd records it.
    agent: Vec<f64>,
    /// The guest's clock when the agent started as init.
    init: Vec<f64>,
}

impl Samples {
    async fn boot(&mut self, client: &Client) {
        let t = Instant::now();
        client.vm_action("bench", "start").await.expect("start");
        self.api.push(t.elapsed().as_secs_f64() * 1e3);
        let boot = client
            .vm_boots("bench")
            .await
            .expect("boots")
            .pop()
            .expect("a boot");
        self.agent.push(boot.agent_ready_ms.unwrap_or(0) as f64);
        self.init.push(boot.guest_init_ms.unwrap_or(0) as f64);
        client.vm_action("bench", "stop").await.expect("stop");
    }

    fn report(&self, label: &str) {
        println!("{label} ({} boots):", self.api.len());
        report("  start -> agent ready (POST /start wall)", &self.api);
        report("  spawn -> agent handshake (nexusd's record)", &self.agent);
        report("  kernel start -> agent as init (guest clock)", &self.init);
    }
}

fn main() {
    let rebuild = std::env::args().any(|a| a == "--rebuild");
    let boots = std::env::var("NEXUS_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10usize);
    common::require_boot_prerequisites();

    let kernel = common::kernel::build_kernel(rebuild);
    let record = &kernel.record;
    let when = if kernel.cached {
        let at = UNIX_EPOCH + Duration::from_secs(record.built_at);
        format!(
            "recorded by the cached build of {}",
            humantime::format_rfc3339_seconds(at)
        )
    } else {
        "built now".to_owned()
    };
    let source = record.inputs.source_package.as_deref();
    println!(
        "kernel build of {} ({}): {:.0} s wall, {when}; inputs {} ({})",
        record.kernel_release,
        source.unwrap_or(&record.inputs.source_tarball),
        record.build_secs,
        record.key,
        record.inputs.compiler,
    );
    println!(
        "  vmlinux {} KiB, bzImage {} KiB",
        file_kib(&kernel.vmlinux),
        file_kib(&kernel.bzimage)
    );

    let vmlinux = kernel.vmlinux.display().to_string();
    let built = TestDaemon::start_logged(
        tempfile::tempdir().expect("tempdir"),
        &["--pool-size", "1G", "--guest-kernel", &vmlinux],
    );
    let debian = TestDaemon::start_logged(
        tempfile::tempdir().expect("tempdir"),
        &["--pool-size", "1G"],
    );
    let rt = common::rt();
    rt.block_on(async {
        for d in [&built, &debian] {
            d.client
                .create_vm(&CreateVm {
                    name: "bench".into(),
                    image: Some("default".into()),
                    ..CreateVm::default()
                })
                .await
                .expect("create VM");
        }
        let (mut ours, mut theirs) = (Samples::default(), Samples::default());
        for _ in 0..boots {
            ours.boot(&built.client).await;
            theirs.boot(&debian.client).await;
        }
        ours.report("built kernel, ELF vmlinux via PVH, no initramfs");
        theirs.report("Debian's cloud kernel + generated initramfs");
        println!(
            "p50 start -> agent ready: built {:.0} ms vs Debian {:.0} ms",
            pct(&ours.api, 0.5),
            pct(&theirs.api, 0.5)
        );
    });
}

fn file_kib(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}
