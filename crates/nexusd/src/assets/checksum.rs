//! The `checksum` stage: the expected sha256 of an artifact, given inline or read from a
//! checksum file (`sha256sum` output as in `SHA256SUMS` and Firecracker's `*.sha256.txt`:
//! `<hex>  <name>` or `<hex> *<name>`; or the BSD form `SHA256 (<name>) = <hex>`).

use std::path::PathBuf;

/// Largest checksum file read.
pub const MAX_SUMS_BYTES: u64 = 1 << 20;

/// Why a checksum did not check out.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    #[error("sha256 of {artifact:?} is {actual}, expected {expected} ({origin})")]
    Mismatch {
        artifact: String,
        actual: String,
        expected: String,
        origin: String,
    },
    #[error("{file:?} has no sha256 for {entry:?}")]
    NoEntry { file: String, entry: String },
    #[error("{file:?} lists {entry:?} more than once, with different sha256s")]
    Ambiguous { file: String, entry: String },
    #[error("{file:?} is larger than {MAX_SUMS_BYTES} bytes: not a checksum file")]
    TooBig { file: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Parses one line into (hex, name); `None` for lines that are no sha256 entry.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return is_sha256(hex).then_some((hex, name));
    }
    let (hex, rest) = match line.split_once([' ', '\t']) {
        Some(pair) => pair,
        None => (line, ""),
    };
    if !is_sha256(hex) {
        return None;
    }
    let name = rest.trim_start_matches([' ', '\t']);
    let name = name.strip_prefix('*').unwrap_or(name);
    Some((hex, name))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Finds the sha256 of `entry` in the text of checksum file `file`. `./entry` and a path ending
/// in `/entry` match too; a file holding one bare hash and no name is that hash.
pub fn lookup(text: &str, file: &str, entry: &str) -> Result<String, ChecksumError> {
    let mut found: Option<&str> = None;
    let mut bare = Vec::new();
    for (hex, name) in text.lines().filter_map(parse_line) {
        if name.is_empty() {
            bare.push(hex);
            continue;
        }
        let matches = name == entry
            || name.strip_prefix("./") == Some(entry)
            || name.rsplit_once('/').is_some_and(|(_, base)| base == entry);
        if !matches {
            continue;
        }
        match found {
            Some(prev) if !prev.eq_ignore_ascii_case(hex) => {
                return Err(ChecksumError::Ambiguous {
                    file: file.into(),
                    entry: entry.into(),
                });
            }
            _ => found = Some(hex),
        }
    }
    match (found, bare.as_slice()) {
        (Some(hex), _) => Ok(hex.to_ascii_lowercase()),
        (None, [only]) => Ok(only.to_ascii_lowercase()),
        _ => Err(ChecksumError::NoEntry {
            file: file.into(),
            entry: entry.into(),
        }),
    }
}

/// Reads a checksum file artifact, refusing one over [`MAX_SUMS_BYTES`].
pub fn read_sums(path: &std::path::Path, file: &str) -> Result<String, ChecksumError> {
    let read = |source| ChecksumError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_SUMS_BYTES {
        return Err(ChecksumError::TooBig { file: file.into() });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Compares `actual` with `expected` (case-insensitive hex).
pub fn compare(
    artifact: &str,
    actual: &str,
    expected: &str,
    origin: String,
) -> Result<(), ChecksumError> {
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ChecksumError::Mismatch {
            artifact: artifact.into(),
            actual: actual.into(),
            expected: expected.to_ascii_lowercase(),
            origin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn gnu_text_and_binary_lines_are_read() {
        let text = format!("{A}  vmlinux\n{B} *rootfs.tar.gz\n");
        assert_eq!(lookup(&text, "SUMS", "vmlinux").unwrap(), A);
        assert_eq!(lookup(&text, "SUMS", "rootfs.tar.gz").unwrap(), B);
    }

    #[test]
    fn bsd_lines_are_read() {
        let text = format!("SHA256 (fc.tgz) = {A}\n");
        assert_eq!(lookup(&text, "SUMS", "fc.tgz").unwrap(), A);
    }

    #[test]
    fn a_missing_entry_is_an_error() {
        let text = format!("{A}  other\n");
        assert!(matches!(
            lookup(&text, "SUMS", "vmlinux"),
            Err(ChecksumError::NoEntry { .. })
        ));
    }

    #[test]
    fn two_different_hashes_for_one_entry_are_an_error() {
        let text = format!("{A}  x\n{B}  ./x\n");
        assert!(matches!(
            lookup(&text, "SUMS", "x"),
            Err(ChecksumError::Ambiguous { .. })
        ));
    }

    #[test]
    fn a_lone_bare_hash_is_the_file_hash() {
        assert_eq!(lookup(&format!("{A}\n"), "x.sha256", "x").unwrap(), A);
    }

    #[test]
    fn a_sha512_line_is_not_a_sha256() {
        let text = format!("{A}{A}  x\n");
        assert!(lookup(&text, "SUMS", "x").is_err());
    }
}
