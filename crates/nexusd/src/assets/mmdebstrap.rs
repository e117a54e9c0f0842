//! The `mmdebstrap` stage: a Debian root filesystem built from the host's apt configuration
//! (see [`super::apt_sources`]) into a zstd-compressed tarball in the run's staging directory.
//!
//! Every input is checked before anything runs (suite and package names by Debian's rules, a
//! variant from a fixed list, at most 64 packages). mmdebstrap runs through the one command
//! runner ([`crate::command::run_streaming`]) under `nice`, with an empty environment but `PATH`,
//! `LC_ALL=C`, `SOURCE_DATE_EPOCH` (reproducible output) and `TMPDIR` inside the staging
//! directory, in its own process group, bounded in time and cancellable: a stop kills the whole
//! group. As root it runs in `--mode=root` inside a private mount namespace (`unshare --mount
//! --propagation private`), so the `/proc`, `/sys` and `/dev` it mounts in its chroot never
//! exist in the host's namespace and vanish with it even when it is killed; not as root it uses
//! its own `--mode=unshare`. The resulting tarball is hashed, and the versions of the packages
//! it holds are read back from its `var/lib/dpkg/status` for the asset's record.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nexus_lib::api::pipeline::{
    MmdebstrapStage, check_suite, check_variant, parse_packages, render,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::apt_sources::AptConfig;
use super::decompress::{self, Format};
use super::hashio::{self, FileError, file_err};
use super::progress::Progress;
use crate::command::{self as cmd, CommandError};

/// How long a build may take unless the stage says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The niceness builds run at (the machine is shared with VMs and other builds).
const NICE: &str = "10";
/// Largest `var/lib/dpkg/status` read back.
const MAX_STATUS: u64 = 32 << 20;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum MmdebstrapError {
    #[error("{0}")]
    Invalid(String),
    #[error("no apt sources to build from: {0}")]
    NoSources(String),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("mmdebstrap took longer than {secs} s and was stopped")]
    TimedOut { secs: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] FileError),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Request {
    pub suite: String,
    pub variant: String,
    pub packages: String,
    /// A mirror replacing the host's archives (`base_url`: a provider's, or `asset_mirrors`).
    pub mirror: Option<String>,
    /// `SOURCE_DATE_EPOCH`; default: the date of the host's newest apt index.
    pub source_date_epoch: Option<u64>,
    pub timeout: Duration,
}

impl Request {
    /// The request of stage `m`, its templates rendered with the run's `vars` (`base_url` is
    /// the mirror, `source_date_epoch` the epoch).
    pub fn from_stage(
        m: &MmdebstrapStage,
        vars: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let epoch = vars
            .get("source_date_epoch")
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("source_date_epoch {v:?} is not a number"))
            })
            .transpose()?;
        Ok(Self {
            suite: render(&m.suite, vars)?,
            variant: render(&m.variant, vars)?,
            packages: render(&m.packages, vars)?,
            mirror: vars.get("base_url").cloned(),
            source_date_epoch: epoch,
            timeout: m.timeout_secs.map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        })
    }

    /// What the progress line shows.
    pub fn describe(&self) -> String {
        format!("{} {} +{}", self.suite, self.variant, self.packages)
    }
}

/// A built tarball.
#[derive(Debug, Clone)]
pub struct Built {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// `YYYYMMDD.<12 hex digits of the sha256>`: unique per content.
    pub version: String,
    /// The build's inputs and the package versions it resolved.
    pub record: serde_json::Value,
}

/// Builds the root filesystem of `req` into `<staging>/<into>.tar.zst`. Blocking.
pub fn build(
    req: &Request,
    apt: &AptConfig,
    staging: &Path,
    into: &str,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<Built, MmdebstrapError> {
    check_suite(&req.suite).map_err(MmdebstrapError::Invalid)?;
    check_variant(&req.variant).map_err(MmdebstrapError::Invalid)?;
    let packages = parse_packages(&req.packages).map_err(MmdebstrapError::Invalid)?;
    let sources = match &req.mirror {
        Some(m) => apt.mirror_sources(m, &req.suite),
        None => apt
            .sources_for(&req.suite)
            .map_err(MmdebstrapError::NoSources)?,
    };
    let work = staging.join(format!("{into}.work"));
    std::fs::create_dir(&work).map_err(file_err("create", &work))?;
    let sources_file = work.join("build.sources");
    std::fs::write(&sources_file, &sources).map_err(file_err("write", &sources_file))?;
    let out = staging.join(format!("{into}.tar.zst"));
    let epoch = req.source_date_epoch.unwrap_or_else(apt_index_date);
    let as_root = rustix::process::geteuid().is_root();

    let mut command = cmd::tool("nice");
    command.args(["-n", NICE]);
    if as_root {
        command
            .arg(cmd::program("unshare"))
            .args(["--mount", "--propagation", "private", "--"]);
    }
    command
        .arg(cmd::program("mmdebstrap"))
        .arg(if as_root {
            "--mode=root"
        } else {
            "--mode=unshare"
        })
        .arg(format!("--variant={}", req.variant))
        .arg(format!("--include={}", packages.join(",")))
        // No device nodes in the tarball: the guest mounts devtmpfs on /dev.
        .arg("--skip=output/dev")
        .arg("--format=tar")
        .arg("--")
        .arg(&req.suite)
        .arg(&out)
        .arg(&sources_file)
        .current_dir(&work)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TMPDIR", &work);
    let started = Instant::now();
    let stop = || {
        if cancel.is_cancelled() {
            Err(MmdebstrapError::Cancelled)
        } else if started.elapsed() > req.timeout {
            Err(MmdebstrapError::TimedOut {
                secs: req.timeout.as_secs(),
            })
        } else {
            Ok(())
        }
    };
    let note = |line: &str| {
        if let Some(step) = line.strip_prefix("I: ") {
            progress.note(crate::sanitize::clean(step, 200));
        }
    };
    cmd::run_streaming(&mut command, &[0], &stop, &note)?;
    let took = started.elapsed();

    let (sha256, size) = hashio::hash_file(&out, cancel).map_err(|e| {
        if hashio::is_cancelled(&e) {
            MmdebstrapError::Cancelled
        } else {
            file_err("hash", &out)(e).into()
        }
    })?;
    progress.note(format!(
        "built {size} bytes in {:.0} s; reading package versions",
        took.as_secs_f64()
    ));
    let installed = installed_packages(&out).map_err(file_err("read the dpkg status of", &out))?;
    let day = crate::store::rfc3339_ms(i64::try_from(epoch).unwrap_or(0).saturating_mul(1000));
    let version = format!("{}.{}", day[..10].replace('-', ""), &sha256[..12]);
    let record = json!({
        "suite": req.suite,
        "variant": req.variant,
        "packages": packages,
        "mirror": req.mirror,
        "sources": sources,
        "source_date_epoch": epoch,
        "mmdebstrap": mmdebstrap_version(),
        "build_secs": took.as_secs(),
        "sha256": sha256,
        "size": size,
        "installed": installed,
    });
    let _ = std::fs::remove_dir_all(&work);
    Ok(Built {
        path: out,
        sha256,
        size,
        version,
        record,
    })
}

/// The newest modification time of the host's apt indexes (apt sets it to the archive's
/// `Date`), or now.
fn apt_index_date() -> u64 {
    let newest = std::fs::read_dir("/var/lib/apt/lists")
        .ok()
        .and_then(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
                .filter_map(|e| e.metadata().ok()?.modified().ok())
                .max()
        });
    newest
        .unwrap_or_else(std::time::SystemTime::now)
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `mmdebstrap --version`, or `unknown`.
fn mmdebstrap_version() -> String {
    cmd::run(cmd::tool("mmdebstrap").arg("--version"), &[0])
        .map(|o| crate::sanitize::clean(o.stdout.trim_ascii(), 64))
        .unwrap_or_else(|_| "unknown".into())
}

/// Package → version of every installed package, from the tarball's `var/lib/dpkg/status`.
fn installed_packages(tarball: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let input = BufReader::new(std::fs::File::open(tarball)?);
    let decoded = decompress::decoder(Format::Zstd, input, "rootfs")
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut archive = tar::Archive::new(decoded);
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path.trim_start_matches("./") != "var/lib/dpkg/status" {
            continue;
        }
        let mut text = String::new();
        BufReader::new(entry.take(MAX_STATUS)).read_to_string(&mut text)?;
        return Ok(parse_status(&text));
    }
    Ok(BTreeMap::new())
}

/// The installed packages of a dpkg status file.
fn parse_status(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let (mut name, mut version, mut installed) = (None, None, false);
        for line in stanza.as_bytes().lines().map_while(Result::ok) {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.insert(n, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_file_gives_installed_packages_only() {
        let text = "Package: python3\nStatus: install ok installed\nVersion: 3.11.2-1+b1\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        assert_eq!(
            parse_status(text),
            BTreeMap::from([("python3".to_string(), "3.11.2-1+b1".to_string())])
        );
    }

    #[test]
    fn bad_inputs_are_refused_before_anything_runs() {
        let apt = AptConfig::default();
        let dir = tempfile::tempdir().unwrap();
        let req = |suite: &str, variant: &str, packages: &str| Request {
            suite: suite.into(),
            variant: variant.into(),
            packages: packages.into(),
            mirror: None,
            source_date_epoch: Some(0),
            timeout: DEFAULT_TIMEOUT,
        };
        let cancel = CancellationToken::new();
        for bad in [
            req("Bookworm", "apt", "git"),
            req("bookworm", "extract", "git"),
            req("bookworm", "apt", "git,Bad_Name"),
        ] {
            let err = build(&bad, &apt, dir.path(), "t", &Progress::silent(), &cancel);
            assert!(matches!(err, Err(MmdebstrapError::Invalid(_))), "{err:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
