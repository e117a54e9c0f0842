//! The kernel source: Debian's `linux-source-*` package, fetched through the host's apt
//! configuration, and what is inside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::KernelBuildError;
use super::host::{check_host, clean_command, output};

/// The newest `<package>_*.deb` in `dir`, downloaded with `apt-get download` (through the host's
/// apt configuration) when there is none.
pub fn find_or_download_source(package: &str, dir: &Path) -> Result<PathBuf, KernelBuildError> {
    if let Some(deb) = find_package(package, dir) {
        return Ok(deb);
    }
    check_host(&[("apt-get", "apt")])?;
    fs::create_dir_all(dir).map_err(KernelBuildError::io("cannot create", dir))?;
    let mut cmd = clean_command("apt-get");
    cmd.current_dir(dir).args(["download", "--", package]);
    output(&mut cmd).map_err(|source| KernelBuildError::Download {
        package: package.to_owned(),
        source,
    })?;
    find_package(package, dir).ok_or_else(|| KernelBuildError::NoPackage {
        package: package.to_owned(),
        dir: dir.to_owned(),
    })
}

pub(super) fn find_package(package: &str, dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    // 6.1.192 after 6.1.99: digit runs compare as numbers.
    debs.sort_by_cached_key(|p| {
        p.to_string_lossy()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|run| run.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    debs.pop()
}

pub(super) fn find_tarball(usr_src: &Path) -> Option<PathBuf> {
    fs::read_dir(usr_src)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        })
}

/// The one directory inside `dir`.
pub(super) fn single_dir(dir: &Path) -> Option<PathBuf> {
    let entries: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    match entries.as_slice() {
        [only] if only.is_dir() => Some(only.clone()),
        _ => None,
    }
}

/// The source tarball's modification time (fixed by its package) as the kernel's build stamp.
pub(super) fn build_timestamp(tarball: &Path) -> String {
    let mtime = fs::metadata(tarball)
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(mtime).to_string()
}
