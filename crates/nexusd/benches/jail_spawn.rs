//! What the jail adds to starting one process: `/usr/bin/true` spawned and reaped through a VM
//! jail (mount namespace with its binds, cgroup join, uid switch) against the same spawn
//! unjailed, alternating in one process; and what preparing a VM's jail (cgroup with limits,
//! chown) costs. Needs root. Run: `cargo bench -p nexusd --bench jail_spawn`.

mod support;

use std::path::Path;
use std::time::Instant;

use nexusd::jail::{Access, JailConfig, Jailer, View};
use support::{pct, report};

const ROUNDS: usize = 100;

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the jail benchmark needs root"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let work = tempfile::tempdir().expect("tempdir");
    let sockets = work.path().join("sock");
    std::fs::create_dir_all(&sockets).expect("socket dir");
    let drive = work.path().join("root.ext4");
    std::fs::write(&drive, b"drive").expect("drive");
    let jailer = Jailer::new(JailConfig::with_defaults(&work.path().join("data")));
    let view = View {
        paths: vec![
            (sockets.clone(), Access::ReadWrite),
            (drive.clone(), Access::ReadWrite),
        ],
        devices: vec![],
        tun: None,
    };
    let program = Path::new("/usr/bin/true");

    let mut prepare = Vec::new();
    let mut jailed = Vec::new();
    let mut plain = Vec::new();
    for i in 0..ROUNDS {
        let id = format!("bench-{}-{i}", std::process::id());
        let t = Instant::now();
        let jail = jailer
            .prepare(&id, 3, 256 << 20, &[sockets.clone(), drive.clone()])
            .expect("prepare the jail");
        prepare.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let mut cmd = jail.command(program, &[], &view).expect("jailed command");
        let status = rt.block_on(async { cmd.spawn().expect("spawn").wait().await });
        assert!(status.expect("wait").success());
        jailed.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let status = rt.block_on(async {
            tokio::process::Command::new(program)
                .spawn()
                .expect("spawn")
                .wait()
                .await
        });
        assert!(status.expect("wait").success());
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        jailer.remove_cgroup(&id);
    }
    jailer.remove_parent_if_empty();
    report("prepare a VM jail (cgroup + limits + chown)", &prepare);
    report("spawn + reap /usr/bin/true, jailed", &jailed);
    report("spawn + reap /usr/bin/true, unjailed", &plain);
    println!(
        "jail cost per process: p50 {:+.2} ms (jailed / unjailed p50 ratio {:.1})",
        pct(&jailed, 0.5) - pct(&plain, 0.5),
        pct(&jailed, 0.5) / pct(&plain, 0.5)
    );
}
