//! Writing and reading files while hashing them (sha256), with a bound on the bytes written and
//! a stop check: every stage that makes a file goes through [`HashWriter`], so an artifact's
//! hash is known the moment it is complete and a decompression bomb stops at its bound.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Size of the buffers used to copy and hash.
pub const BUF: usize = 1 << 20;

/// A file operation that failed, naming the file: the I/O variant of every stage's error.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}")]
pub struct FileError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// `map_err` adapter naming the operation and the file: `.map_err(file_err("open", path))?`.
pub fn file_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError + use<> {
    let path = path.to_owned();
    move |source| FileError { op, path, source }
}

/// The error a [`HashWriter`] returns when more than its limit is written.
#[derive(Debug, thiserror::Error)]
#[error("more than {limit} bytes")]
pub struct LimitExceeded {
    pub limit: u64,
}

/// The error a copy returns when it was cancelled.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// The limit an I/O error reports, when it is a [`LimitExceeded`].
pub fn exceeded(e: &io::Error) -> Option<u64> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<LimitExceeded>())
        .map(|l| l.limit)
}

/// Whether an I/O error is a [`Cancelled`].
pub fn is_cancelled(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<Cancelled>().is_some())
}

/// Lowercase hex of a sha256 digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what it writes and refuses to write more than `limit` bytes in total.
pub struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            limit,
        }
    }

    /// Continues a hash over bytes already written elsewhere (a resumed download's prefix).
    pub fn resume(inner: W, limit: u64, hasher: Sha256, written: u64) -> Self {
        Self {
            inner,
            hasher,
            written,
            limit,
        }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The inner writer, the hex sha256 and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::other(LimitExceeded { limit: self.limit }));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Copies `reader` into `writer` in [`BUF`] chunks, calling `tick` with the bytes copied so far
/// after each chunk and stopping when `cancel` is cancelled.
pub fn copy_with(
    reader: &mut impl Read,
    writer: &mut impl Write,
    cancel: &CancellationToken,
    mut tick: impl FnMut(u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Err(io::Error::other(Cancelled));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
        tick(total);
    }
}

/// Reads `reader` to its end, returning the hasher over its bytes and their count.
pub fn hash_reader(
    reader: &mut impl Read,
    cancel: &CancellationToken,
) -> io::Result<(Sha256, u64)> {
    let mut sink = HashWriter::new(io::sink(), u64::MAX);
    copy_with(reader, &mut sink, cancel, |_| {})?;
    let written = sink.written;
    Ok((sink.hasher, written))
}

/// The hex sha256 and size of the file at `path`.
pub fn hash_file(path: &Path, cancel: &CancellationToken) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let (hasher, size) = hash_reader(&mut f, cancel)?;
    Ok((hex(&hasher.finalize()), size))
}

/// Creates `path` (which must not exist) for writing, readable by its owner only.
pub fn create_new(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_writer_hashes_what_it_writes() {
        let mut w = HashWriter::new(Vec::new(), 100);
        w.write_all(b"abc").unwrap();
        let (data, sha, n) = w.finish();
        assert_eq!(
            (data.as_slice(), sha.as_str(), n),
            (
                &b"abc"[..],
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                3
            )
        );
    }

    #[test]
    fn hash_writer_refuses_to_pass_its_limit() {
        let mut w = HashWriter::new(Vec::new(), 4);
        let err = w.write_all(b"hello").unwrap_err();
        assert_eq!(exceeded(&err), Some(4));
    }

    #[test]
    fn copy_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = copy_with(&mut &b"data"[..], &mut Vec::new(), &cancel, |_| {}).unwrap_err();
        assert!(is_cancelled(&err));
    }
}
