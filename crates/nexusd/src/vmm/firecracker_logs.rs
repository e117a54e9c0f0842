//! Firecracker's own log, stderr and metrics files in a VM's runtime directory: one log and one
//! stderr file per boot (`firecracker-<boot>.log`, `.stderr`; the last [`KEEP_BOOT_LOGS`] boots
//! kept), bounded while the VM runs by [`cap_firecracker_logs`], and quoted into the VM's
//! history by [`failure_detail`]. Why files and holes rather than rotation: see the comment of
//! the `firecracker` module.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::VmmError;

/// Per-boot log files kept in a VM's runtime directory (the current boot's included).
pub const KEEP_BOOT_LOGS: usize = 3;
/// How much of Firecracker's own output [`failure_detail`] quotes.
const DETAIL_BYTES: u64 = 2048;

/// `firecracker-<boot>.log`: Firecracker's `--log-path` for that boot.
pub fn log_path(runtime_dir: &Path, boot: i64) -> PathBuf {
    runtime_dir.join(format!("firecracker-{boot}.log"))
}

/// `firecracker-<boot>.stderr`: its standard error for that boot.
pub fn stderr_path(runtime_dir: &Path, boot: i64) -> PathBuf {
    runtime_dir.join(format!("firecracker-{boot}.stderr"))
}

/// Removes per-boot log and stderr files of all but the `keep` newest boots up to `current`.
pub fn prune_boot_logs(dir: &Path, current: i64, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut boots: Vec<i64> = entries
        .flatten()
        .filter_map(|e| boot_of(&e.file_name().to_string_lossy()))
        .filter(|b| *b <= current)
        .collect();
    boots.push(current);
    boots.sort_unstable_by(|a, b| b.cmp(a));
    boots.dedup();
    for old in boots.into_iter().skip(keep) {
        let _ = fs::remove_file(log_path(dir, old));
        let _ = fs::remove_file(stderr_path(dir, old));
    }
}

/// The boot number of `firecracker-<boot>.log` or `.stderr`.
fn boot_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("firecracker-")?;
    let num = rest
        .strip_suffix(".log")
        .or_else(|| rest.strip_suffix(".stderr"))?;
    num.parse().ok()
}

/// Bounds Firecracker's log, stderr and metrics files in `runtime_dir` to about `max_bytes` of
/// disk each, keeping the newest half; returns how many files were capped. Safe while
/// Firecracker writes (see the module comment); the life cycle calls it periodically, like
/// [`super::cap_console_log`].
pub fn cap_firecracker_logs(runtime_dir: &Path, max_bytes: u64) -> Result<usize, VmmError> {
    let Ok(entries) = fs::read_dir(runtime_dir) else {
        return Ok(0);
    };
    let mut capped = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "firecracker.metrics" || boot_of(&name).is_some() {
            capped += usize::from(punch_old_bytes(&entry.path(), max_bytes)?);
        }
    }
    Ok(capped)
}

/// Frees all but about the newest `max_bytes / 2` bytes of `path` once it uses more than
/// `max_bytes` of disk.
fn punch_old_bytes(path: &Path, max_bytes: u64) -> Result<bool, VmmError> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let file = match fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(VmmError::io(path)(e)),
    };
    let meta = file.metadata().map_err(VmmError::io(path))?;
    if meta.blocks() * 512 <= max_bytes {
        return Ok(false);
    }
    const BLOCK: u64 = 4096;
    let end = meta.len().saturating_sub(max_bytes / 2) / BLOCK * BLOCK;
    if end == 0 {
        return Ok(false);
    }
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(&file, flags, 0, end as i64) {
        Ok(()) => Ok(true),
        // A file system without holes: dropping everything is the only bound left.
        Err(nix::errno::Errno::EOPNOTSUPP) => {
            file.set_len(0).map_err(VmmError::io(path))?;
            Ok(true)
        }
        Err(e) => Err(VmmError::io(path)(e.into())),
    }
}

/// Firecracker's own words about boot `boot` of the VM whose runtime directory is
/// `runtime_dir`: the newest bytes (at most about 2 KiB, printable only) of its stderr (where a
/// fatal error ends up as `Error: …`) and of its log. Empty when it said nothing.
pub fn failure_detail(runtime_dir: &Path, boot: i64) -> String {
    let stderr = tail_text(&stderr_path(runtime_dir, boot), DETAIL_BYTES / 2);
    let left = DETAIL_BYTES.saturating_sub(stderr.len() as u64);
    let log = tail_text(&log_path(runtime_dir, boot), left);
    match (stderr.is_empty(), log.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!("stderr: {stderr}"),
        (true, false) => format!("log: {log}"),
        (false, false) => format!("stderr: {stderr}; log: {log}"),
    }
}

/// The newest whole lines in the last `max` bytes of `path`, cleaned, joined with " | ".
fn tail_text(path: &Path, max: u64) -> String {
    crate::sanitize::file_tail(path, max)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_number_is_read_from_log_and_stderr_names() {
        let got: Vec<Option<i64>> = [
            "firecracker-12.log",
            "firecracker-3.stderr",
            "firecracker.metrics",
            "firecracker-x.log",
        ]
        .iter()
        .map(|n| boot_of(n))
        .collect();
        assert_eq!(got, [Some(12), Some(3), None, None]);
    }

    #[test]
    fn only_the_newest_boot_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        for b in 1..=5 {
            fs::write(log_path(dir.path(), b), "x").unwrap();
            fs::write(stderr_path(dir.path(), b), "x").unwrap();
        }
        prune_boot_logs(dir.path(), 6, 3);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "firecracker-4.log",
                "firecracker-4.stderr",
                "firecracker-5.log",
                "firecracker-5.stderr"
            ]
        );
    }

    #[test]
    fn capping_frees_old_bytes_and_keeps_the_newest_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_path(dir.path(), 1);
        let mut text = "old line\n".repeat(20_000);
        text.push_str("the newest line\n");
        fs::write(&log, &text).unwrap();
        assert_eq!(cap_firecracker_logs(dir.path(), 64 << 10).unwrap(), 1);
        let meta = fs::metadata(&log).unwrap();
        assert!(meta.blocks() * 512 <= 64 << 10);
        assert_eq!(meta.len(), text.len() as u64);
        assert!(tail_text(&log, 64).ends_with("the newest line"));
    }

    #[test]
    fn small_logs_are_not_capped() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("firecracker.metrics"), "{}\n").unwrap();
        assert_eq!(cap_firecracker_logs(dir.path(), 64 << 10).unwrap(), 0);
    }

    #[test]
    fn failure_detail_quotes_this_boots_stderr_and_log() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            stderr_path(dir.path(), 2),
            "Error: RunWithApi(BuildFromJson)\n",
        )
        .unwrap();
        fs::write(
            log_path(dir.path(), 2),
            "[anonymous-instance:main] Running Firecracker v1.16.1\n[vm:main:ERROR] Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image\n",
        )
        .unwrap();
        fs::write(log_path(dir.path(), 1), "an older boot\n").unwrap();
        assert_eq!(
            failure_detail(dir.path(), 2),
            "stderr: Error: RunWithApi(BuildFromJson); log: [anonymous-instance:main] Running Firecracker v1.16.1 | [vm:main:ERROR] Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image"
        );
    }

    #[test]
    fn failure_detail_is_bounded_and_printable() {
        let dir = tempfile::tempdir().unwrap();
        let mut noise = vec![0u8; 10_000];
        noise.extend(b"\x1b[31mbad\x07 news\n".repeat(1000));
        fs::write(log_path(dir.path(), 1), &noise).unwrap();
        let detail = failure_detail(dir.path(), 1);
        assert!(detail.len() <= DETAIL_BYTES as usize + 16);
        assert!(!detail.chars().any(char::is_control));
    }

    #[test]
    fn failure_detail_without_files_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(failure_detail(dir.path(), 9), "");
    }
}
