//! Bounded console logs. The VMM writes the serial console straight into a file opened with
//! `O_APPEND` (QEMU `append=on`, Firecracker's stdout), so the VM never blocks on a reader and keeps
//! logging while nexusd restarts. The supervisor calls [`cap_console_log`] periodically, and
//! recovery calls it once for every VM before anything reads a console (a guest may have printed
//! any amount while nexusd was down): once the file passes its limit, its last `max_bytes` move to
//! `<log>.1` and the file is truncated in place, which an `O_APPEND` writer follows. Bytes written
//! between the copy and the truncation are lost; that small window is the price of never stalling
//! the guest.

use std::fs;
use std::path::{Path, PathBuf};

use super::VmmError;

/// Rotates `log` into `<log>.1` when it is larger than `max_bytes`; returns whether it rotated.
/// At most `2 * max_bytes` of console output is kept: only the newest `max_bytes` go to `<log>.1`.
pub fn cap_console_log(log: &Path, max_bytes: u64) -> Result<bool, VmmError> {
    use std::io::{Seek, SeekFrom};
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
    let mut src = fs::File::open(log).map_err(VmmError::io(log))?;
    src.seek(SeekFrom::Start(size - max_bytes))
        .map_err(VmmError::io(log))?;
    let mut dst = fs::File::create(&rotated).map_err(VmmError::io(&rotated))?;
    std::io::copy(&mut std::io::Read::take(src, max_bytes), &mut dst)
        .map_err(VmmError::io(&rotated))?;
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
    fn log_over_limit_keeps_its_newest_bytes_in_the_rotated_file_and_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut content = vec![b'x'; 90];
        content.extend_from_slice(b"0123456789");
        fs::write(&log, content).unwrap();

        assert!(cap_console_log(&log, 10).unwrap());

        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(
            fs::read(dir.path().join("console.log.1")).unwrap(),
            b"0123456789"
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
