//! What the build needs of the host and how it runs commands there: the packages it checks for,
//! a clean environment (`PATH` and `LC_ALL=C` only), `nice`, kbuild's reproducibility stamps, the
//! bounded log, and the lock that serialises builds of the same inputs.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use tokio_util::sync::CancellationToken;

use super::KernelBuildError;
use super::log::{BoundedLog, describe};
use crate::command::CommandError;

/// What the build needs on the host, with the Debian package providing it.
pub(super) const TOOLS: &[(&str, &str)] = &[
    ("make", "build-essential"),
    ("gcc", "build-essential"),
    ("ld", "binutils"),
    ("bc", "bc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("perl", "perl"),
    ("tar", "tar"),
    ("xz", "xz-utils"),
    ("lz4", "lz4"),
    ("nice", "coreutils"),
];
const HEADERS: &[(&str, &str)] = &[
    ("/usr/include/gelf.h", "libelf-dev"),
    ("/usr/include/openssl/opensslv.h", "libssl-dev"),
];
/// The running commands of one build, all logged to one bounded log.
pub(super) struct Step<'a> {
    pub(super) log: &'a mut BoundedLog,
    pub(super) nice: i32,
    /// `KBUILD_BUILD_TIMESTAMP`: the build does not embed the time it ran at.
    pub(super) stamp: &'a str,
    /// Fired: the running command's process group is killed and the build stops.
    pub(super) cancel: &'a CancellationToken,
}

impl Step<'_> {
    /// `nice -n N program`, in the clean environment plus kbuild's reproducibility variables.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut cmd = clean_command("nice");
        cmd.arg("-n")
            .arg(self.nice.to_string())
            .arg(program)
            .env("KBUILD_BUILD_USER", "nexus")
            .env("KBUILD_BUILD_HOST", "nexus")
            .env("KBUILD_BUILD_VERSION", "1")
            .env("KBUILD_BUILD_TIMESTAMP", self.stamp);
        cmd
    }

    /// `make ARGS` in the kernel tree.
    pub(super) fn make(&self, tree: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command("make");
        cmd.current_dir(tree).args(args);
        cmd
    }

    /// Runs `cmd` into the log; a failure quotes the log's tail.
    pub(super) fn run(
        &mut self,
        cmd: Command,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), KernelBuildError> {
        let command = describe(&cmd);
        if self.cancel.is_cancelled() {
            return Err(KernelBuildError::Cancelled);
        }
        let status =
            self.log
                .run(cmd, on_line, self.cancel)
                .map_err(|source| KernelBuildError::Spawn {
                    command: command.clone(),
                    source,
                })?;
        if status.success() {
            return Ok(());
        }
        if self.cancel.is_cancelled() {
            return Err(KernelBuildError::Cancelled);
        }
        Err(KernelBuildError::Step {
            command,
            status: status.to_string(),
            log: self.log.path().to_owned(),
            tail: self.log.tail(),
        })
    }
}

/// A command with an empty environment but `PATH` and `LC_ALL=C`: nothing the caller happens
/// to export (`ARCH`, `CC`, `KCONFIG_CONFIG`, `MAKEFLAGS`…) changes what is built.
pub(super) fn clean_command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", search_path())
        .env("LC_ALL", "C");
    cmd
}

pub(super) fn search_path() -> std::ffi::OsString {
    std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into())
}

/// Runs a short command through nexusd's one runner and returns its stdout.
pub(super) fn output(cmd: &mut Command) -> Result<String, CommandError> {
    let out = crate::command::run(cmd, &[0])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails naming the first tool of `tools` that is not on `PATH`, and on a host that is not x86-64.
pub(super) fn check_host(tools: &[(&'static str, &'static str)]) -> Result<(), KernelBuildError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(KernelBuildError::UnsupportedHost(std::env::consts::ARCH));
    }
    let path = search_path();
    for (tool, package) in tools {
        if !std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()) {
            return Err(KernelBuildError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// Fails naming the first header of the build's libraries that is missing.
pub(super) fn check_headers() -> Result<(), KernelBuildError> {
    for (header, package) in HEADERS {
        if !Path::new(header).is_file() {
            return Err(KernelBuildError::MissingHeader { header, package });
        }
    }
    Ok(())
}

/// The exclusive lock of one key's build: a second build of the same inputs waits, then finds
/// the outputs.
pub(super) fn lock(path: &Path) -> Result<Flock<File>, KernelBuildError> {
    let file = File::create(path).map_err(KernelBuildError::io("cannot create", path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| KernelBuildError::Io {
        op: "cannot lock",
        path: path.to_owned(),
        source: errno.into(),
    })
}
