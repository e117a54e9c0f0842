//! The `apt` source of a `fetch`: a Debian package from the host's own apt configuration.
//!
//! `apt-cache show` gives the package's index entry (version, SHA256, size), which apt took from
//! a `Release` file whose signature it checked with the host's keyring. `apt-get download`
//! fetches exactly that version (as `nobody` in a private directory when nexusd is root: the
//! only step that talks to the network runs unprivileged), apt checks the hash itself, and the
//! file is copied into the run's staging directory while it is hashed again and compared with
//! the index entry. A meta package (`linux-image-cloud-amd64`) can be followed to the
//! dependency that holds the files.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::hashio::{self, FileError, HashWriter, file_err};
use super::progress::Progress;
use crate::command::{self as cmd, CommandError};

/// The user `apt-get download` runs as when nexusd is root.
const NOBODY: u32 = 65534;

/// Why the apt step failed.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("{0:?} is not a Debian package name")]
    BadName(String),
    #[error(
        "apt knows no package {package:?} (is it in the host's sources, and has `apt-get update` run?)"
    )]
    NotFound { package: String },
    #[error("apt's entry for {package:?} lacks {field}")]
    Incomplete {
        package: String,
        field: &'static str,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("apt-get download of {package} left no single .deb file")]
    NoDeb { package: String },
    #[error(
        "{package} {version}: the downloaded .deb has sha256 {actual} ({size} bytes), apt's index says {expected} ({expected_size} bytes)"
    )]
    Mismatch {
        package: String,
        version: String,
        actual: String,
        size: u64,
        expected: String,
        expected_size: u64,
    },
    #[error("{package}: larger than the limit of {limit} bytes")]
    TooLarge { package: String, limit: u64 },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] FileError),
}

/// A package's index entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptPackage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    pub depends: String,
}

/// Debian policy: `[a-z0-9][a-z0-9+.-]+`.
pub use nexus_lib::api::pipeline::valid_debian_package as valid_package;

fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
}

/// The fields of the first stanza of `apt-cache show` output that matter here.
fn parse_stanza(text: &str, package: &str) -> Result<AptPackage, AptError> {
    let mut fields = std::collections::HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            fields.insert(key.trim(), value.trim());
        }
    }
    let field = |name: &'static str| {
        fields
            .get(name)
            .map(|v| v.to_string())
            .ok_or(AptError::Incomplete {
                package: package.into(),
                field: name,
            })
    };
    let sha256 = field("SHA256")?;
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(AptError::Incomplete {
            package: package.into(),
            field: "SHA256",
        });
    }
    let version = field("Version")?;
    if !valid_version(&version) {
        return Err(AptError::Incomplete {
            package: package.into(),
            field: "Version",
        });
    }
    Ok(AptPackage {
        name: field("Package")?,
        version,
        sha256: sha256.to_ascii_lowercase(),
        size: field("Size")?.parse().map_err(|_| AptError::Incomplete {
            package: package.into(),
            field: "Size",
        })?,
        depends: fields
            .get("Depends")
            .map(|d| d.to_string())
            .unwrap_or_default(),
    })
}

/// `apt-cache show --no-all-versions SPEC` (`name` or `name=version`).
fn show(spec: &str, package: &str) -> Result<AptPackage, AptError> {
    let mut command = cmd::tool("apt-cache");
    command
        .args(["show", "--no-all-versions", spec])
        .env("LC_ALL", "C");
    let output = cmd::run(&mut command, &[0, 100])?;
    let text = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(100) || text.trim().is_empty() {
        return Err(AptError::NotFound {
            package: package.into(),
        });
    }
    let pkg = parse_stanza(&text, package)?;
    if pkg.name != package {
        return Err(AptError::NotFound {
            package: package.into(),
        });
    }
    Ok(pkg)
}

/// The first dependency of `depends` named `prefix…` (other than `own`), with the version an
/// `(= V)` constraint pins.
fn follow(depends: &str, prefix: &str, own: &str) -> Option<(String, Option<String>)> {
    depends.split(',').find_map(|item| {
        let first = item.split('|').next()?.trim();
        let (name, constraint) = match first.split_once('(') {
            Some((n, c)) => (n.trim(), Some(c.trim_end_matches(')').trim())),
            None => (first, None),
        };
        let name = name.split(':').next()?.trim();
        if !name.starts_with(prefix) || name == own || !valid_package(name) {
            return None;
        }
        let pinned = constraint
            .and_then(|c| c.strip_prefix('='))
            .map(|v| v.trim().to_owned())
            .filter(|v| valid_version(v));
        Some((name.to_owned(), pinned))
    })
}

/// The index entry of `package`, or of its dependency `follow_depends…` when it has one.
pub fn resolve(package: &str, follow_depends: Option<&str>) -> Result<AptPackage, AptError> {
    if !valid_package(package) {
        return Err(AptError::BadName(package.into()));
    }
    let pkg = show(package, package)?;
    let Some(prefix) = follow_depends else {
        return Ok(pkg);
    };
    let Some((dep, pinned)) = follow(&pkg.depends, prefix, package) else {
        return Ok(pkg);
    };
    let spec = match &pinned {
        Some(v) => format!("{dep}={v}"),
        None => dep.clone(),
    };
    show(&spec, &dep)
}

/// Downloads `pkg` with `apt-get download` and copies it into the new file `dest`, checking it
/// against the index entry. Blocking.
pub fn download(
    pkg: &AptPackage,
    dest: &Path,
    max_bytes: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(), AptError> {
    if pkg.size > max_bytes {
        return Err(AptError::TooLarge {
            package: pkg.name.clone(),
            limit: max_bytes,
        });
    }
    let scratch = std::env::temp_dir();
    let dir = tempfile::Builder::new()
        .prefix("nexus-apt-")
        .tempdir_in(&scratch)
        .map_err(file_err("create a directory in", &scratch))?;
    let as_root = rustix::process::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
            .map_err(file_err("chown", dir.path()))?;
    }
    let mut command = cmd::tool("apt-get");
    command
        .args(["download", "-q"])
        .arg(format!("{}={}", pkg.name, pkg.version))
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    if as_root {
        use std::os::unix::process::CommandExt;
        command.uid(NOBODY).gid(NOBODY);
    }
    let stop = || {
        if cancel.is_cancelled() {
            Err(AptError::Cancelled)
        } else {
            Ok(())
        }
    };
    cmd::run_bounded(&mut command, &[0], &stop)?;
    let deb = single_deb(dir.path()).ok_or_else(|| AptError::NoDeb {
        package: pkg.name.clone(),
    })?;
    let mut input = open_nofollow(&deb).map_err(file_err("open", &deb))?;
    let out = hashio::create_new(dest).map_err(file_err("create", dest))?;
    let mut out = HashWriter::new(std::io::BufWriter::new(out), max_bytes);
    hashio::copy_with(&mut input, &mut out, cancel, |n| {
        progress.bytes(n, Some(pkg.size))
    })
    .map_err(|e| {
        if hashio::is_cancelled(&e) {
            AptError::Cancelled
        } else if hashio::exceeded(&e).is_some() {
            AptError::TooLarge {
                package: pkg.name.clone(),
                limit: max_bytes,
            }
        } else {
            file_err("copy", &deb)(e).into()
        }
    })?;
    let (buffered, sha256, size) = out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| file_err("write", dest)(e.into_error()))?;
    file.sync_all().map_err(file_err("sync", dest))?;
    if sha256 != pkg.sha256 || size != pkg.size {
        return Err(AptError::Mismatch {
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            actual: sha256,
            size,
            expected: pkg.sha256.clone(),
            expected_size: pkg.size,
        });
    }
    Ok(())
}

/// The one regular `.deb` file directly in `dir` (not a symlink).
fn single_deb(dir: &Path) -> Option<PathBuf> {
    let mut debs = std::fs::read_dir(dir).ok()?.filter_map(|e| {
        let e = e.ok()?;
        let is_file = e.file_type().ok()?.is_file();
        let path = e.path();
        (is_file && path.extension().is_some_and(|x| x == "deb")).then_some(path)
    });
    let first = debs.next()?;
    debs.next().is_none().then_some(first)
}

fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\nDescription: Linux\n more text\nSize: 1504\nSHA256: 00be21c0c17f08ddf26e82d3b53fe7a41efa4a288938da6bb69e89c4b25c281d\n\nPackage: other\n";

    #[test]
    fn the_first_stanza_gives_version_hash_and_size() {
        let p = parse_stanza(SHOW, "linux-image-cloud-amd64").unwrap();
        assert_eq!(
            (p.version.as_str(), p.size, &p.sha256[..8]),
            ("6.1.192-2", 1504, "00be21c0")
        );
    }

    #[test]
    fn a_meta_package_is_followed_to_its_pinned_dependency() {
        let deps = "initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)";
        assert_eq!(
            follow(deps, "linux-image-", "linux-image-cloud-amd64"),
            Some((
                "linux-image-6.1.0-56-cloud-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        assert_eq!(follow(deps, "linux-headers-", "x"), None);
    }

    #[test]
    fn package_names_follow_debian_policy() {
        assert!(valid_package("linux-image-cloud-amd64"));
        assert!(valid_package("g++"));
        assert!(!valid_package("-o"));
        assert!(!valid_package("a"));
        assert!(!valid_package("Foo"));
    }

    #[test]
    fn an_entry_without_sha256_is_incomplete() {
        let text = "Package: x1\nVersion: 1\nSize: 3\n";
        assert!(matches!(
            parse_stanza(text, "x1"),
            Err(AptError::Incomplete {
                field: "SHA256",
                ..
            })
        ));
    }
}
