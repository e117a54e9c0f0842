//! Bounded console logs. The VMM writes the serial console straight into a file opened with
//! `O_APPEND` (QEMU `append=on`, Firecracker's stdout), so the VM never blocks on a reader and keeps
//! logging while nexusd restarts. The supervisor calls [`cap_console_log`] periodically: once the
//! file passes its limit, its content moves to `<log>.1` and the file is truncated in place, which an
//! `O_APPEND` writer follows. Bytes written between the copy and the truncation are lost; that
//! small window is the price of never stalling the guest.

use std::fs;
use std::path::{Path, PathBuf};

use super::VmmError;

/// Rotates `log` into `<log>.1` when it is larger than `max_bytes`; returns whether it rotated.
/// At most about `2 * max_bytes` of console output is kept.
pub fn cap_console_log(log: &Path, max_bytes: u64) -> Result<bool, VmmError> {
    let size = match fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(VmmError::Io {
                path: log.to_path_buf(),
                source: e,
            });
        }
    };
    if size <= max_bytes {
        return Ok(false);
    }
    let rotated = rotated_path(log);
    fs::copy(log, &rotated).map_err(VmmError::io(&rotated))?;
    fs::OpenOptions::new()
        .write(true)
        .open(log)
        .and_then(|f| f.set_len(0))
        .map_err(VmmError::io(log))?;
    Ok(true)
}

fn rotated_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_over_limit_is_rotated_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, vec![b'x'; 100]).unwrap();
        assert!(cap_console_log(&log, 10).unwrap());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            fs::metadata(dir.path().join("console.log.1"))
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn log_under_limit_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, b"boot").unwrap();
        assert!(!cap_console_log(&log, 10).unwrap());
    }
}
