//! A real `nexusd` on a temporary home, for integration tests, plus the real `nexusctl`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nexus_lib::client::Client;

/// The nexusd binary under test.
pub fn nexusd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nexusd"))
}

/// The nexusctl binary, built next to nexusd by a workspace build.
pub fn nexusctl_bin() -> PathBuf {
    let p = nexusd_bin().with_file_name("nexusctl");
    assert!(
        p.exists(),
        "{} is missing: run the tests for the whole workspace (cargo nextest run --workspace) or `cargo build -p nexusctl` first",
        p.display()
    );
    p
}

/// A running daemon; killed on drop if still running.
pub struct TestDaemon {
    pub home: tempfile::TempDir,
    pub child: Option<Child>,
    pub client: Client,
}

impl TestDaemon {
    /// Starts nexusd on a fresh home and waits until it answers.
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), &[])
    }

    /// Starts nexusd on `home` with extra flags and waits until it answers.
    pub fn start_in(home: tempfile::TempDir, extra: &[&str]) -> Self {
        let child = spawn_nexusd(home.path(), extra);
        let client = Client::unix(home.path().join("run/nexusd.sock"));
        let mut d = Self {
            home,
            child: Some(child),
            client,
        };
        d.wait_ready();
        d
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("run/nexusd.sock")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let rt = rt();
        loop {
            if rt.block_on(self.client.health()).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nexusd exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nexusd did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs `nexusctl --home <home> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(self.home(), args)
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        signal(&child, nix::sys::signal::Signal::SIGTERM);
        wait_bounded(&mut child, Duration::from_secs(20))
    }

    /// Stops the daemon and starts a new one on the same home.
    pub fn restart(mut self) -> Self {
        let status = self.stop();
        assert!(status.success(), "nexusd exited with {status}");
        let home = std::mem::replace(&mut self.home, tempfile::tempdir().expect("tempdir"));
        Self::start_in(home, &[])
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn spawn_nexusd(home: &Path, extra: &[&str]) -> Child {
    Command::new(nexusd_bin())
        .arg("--home")
        .arg(home)
        .args(extra)
        .env_remove("NEXUS_HOME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn nexusd")
}

pub fn ctl(home: &Path, args: &[&str]) -> Output {
    Command::new(nexusctl_bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("NEXUS_HOME")
        .env_remove("NEXUS_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run nexusctl")
}

pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, sig).expect("signal nexusd");
}

pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A small runtime for driving the async client from synchronous tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
