//! The E2B SDK on Nexus next to nexusctl, on the real stack (nexusd + btrfs pool + QEMU + guest
//! agent): `Sandbox.create` → first output of `echo first`, and the `commands.run("true")` round
//! trip through the unmodified E2B Python SDK (benches/e2b/sdk.py, the venv of scripts/setup.sh),
//! next to `nexusctl vm create --image default --start` + `vm exec -- echo first` and `nexusctl
//! vm exec -- true`. Needs what the VM tests need (root, scripts/setup.sh, NEXUS_AGENT_BIN) and
//! a nexusctl built with the same profile:
//! `cargo build --release -p nexusctl && cargo bench -p nexusd --bench e2b`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::report;

const CREATES: usize = 3;
const ROUNDS: usize = 30;

fn main() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut daemon = support::spawn_nexusd(
        home.path(),
        &[
            "--pool-size",
            "2G",
            "--network",
            "none",
            "--e2b-listen",
            "127.0.0.1:0",
        ],
    );
    let result = run(home.path());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = daemon.wait();
    let _ = Command::new("umount")
        .arg(home.path().join("data/pool"))
        .stderr(Stdio::null())
        .status();
    result.expect("benchmark");
}

fn run(home: &Path) -> Result<(), String> {
    let addr_file = home.join("run/e2b.addr");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !addr_file.exists() || !home.join("run/nexusd.sock").exists() {
        if Instant::now() > deadline {
            return Err("nexusd did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!(
        "http://{}",
        std::fs::read_to_string(&addr_file).unwrap().trim()
    );
    let created = ctl(home, &["--json", "token", "create", "--lifecycle"])?;
    let key =
        serde_json::from_str::<serde_json::Value>(&created).map_err(|e| e.to_string())?["token"]
            .as_str()
            .ok_or("no token field")?
            .to_owned();

    // nexusctl: create + start + first output, then `true` round trips.
    let (mut first, mut run_true) = (Vec::new(), Vec::new());
    for i in 0..CREATES {
        let name = format!("bench-{i}");
        let t = Instant::now();
        ctl(
            home,
            &["vm", "create", &name, "--image", "default", "--start"],
        )?;
        ctl(home, &["vm", "exec", &name, "--", "echo", "first"])?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            ctl(home, &["vm", "exec", &name, "--", "true"])?;
            run_true.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ctl(home, &["vm", "stop", &name])?;
        ctl(home, &["vm", "delete", &name])?;
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/e2b/sdk.py");
    let out = Command::new("/opt/nexus-e2b-venv/bin/python")
        .arg(script)
        .args([CREATES.to_string(), ROUNDS.to_string()])
        .env("E2B_API_URL", &url)
        .env("E2B_SANDBOX_URL", &url)
        .env("E2B_API_KEY", &key)
        .output()
        .map_err(|e| format!("run the E2B SDK (scripts/setup.sh installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "sdk.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let sdk: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let samples = |k: &str| -> Vec<f64> {
        sdk[k]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
            .unwrap_or_default()
    };
    report(
        "E2B SDK: Sandbox.create → first output of echo",
        &samples("first_output"),
    );
    report(
        "nexusctl: vm create --start + vm exec echo → first output",
        &first,
    );
    report(
        "E2B SDK: commands.run(\"true\") round trip",
        &samples("run_true"),
    );
    report(
        "nexusctl: vm exec -- true (process start included)",
        &run_true,
    );
    Ok(())
}

fn ctl(home: &Path, args: &[&str]) -> Result<String, String> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_nexusd")).with_file_name("nexusctl");
    let out = Command::new(&path)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .map_err(|e| {
            format!(
                "{}: {e} (build nexusctl with the same profile)",
                path.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "nexusctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
