//! Streaming decompression (gz, xz, zstd, lz4) with a bound on the output: the `decompress`
//! stage, tarballs inside `extract`, and a bzImage's payload in `convert`. Decoders are the
//! maintained pure-Rust crates (flate2/miniz_oxide, lzma-rust2, ruzstd, lz4_flex); only the
//! framing of the legacy LZ4 format that kernels use (`lz4 -l`: a magic number, then blocks each
//! prefixed by its compressed length) is read here, each block decoded by lz4_flex.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use nexus_lib::api::pipeline::Compression;
use tokio_util::sync::CancellationToken;

use super::hashio::{self, FileError, HashWriter, file_err};
use super::progress::Progress;

/// Memory an xz stream's dictionary may ask for.
const XZ_MEM_LIMIT_KIB: u32 = 256 * 1024;
/// Magic of the legacy LZ4 format.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Largest block of the legacy LZ4 format, uncompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Why decompression failed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error(
        "decompressed {what} is larger than the bound of {limit} bytes (a decompression bomb, or raise `asset_max_unpacked_bytes`)"
    )]
    Bomb { what: String, limit: u64 },
    #[error("{what} is not {format} data, or is corrupt")]
    Corrupt {
        what: String,
        format: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what}: unknown compression (first bytes {head})")]
    Unknown { what: String, head: String },
    #[error("cancelled")]
    Cancelled,
    #[error(transparent)]
    Io(#[from] FileError),
}

/// A concrete format (what `auto` resolves to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    None,
    Gz,
    Xz,
    Zstd,
    Lz4Frame,
    Lz4Legacy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Gz => "gzip",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Lz4Frame | Self::Lz4Legacy => "lz4",
        }
    }
}

/// The format told by the first bytes of `head`.
pub fn sniff(head: &[u8]) -> Option<Format> {
    match head {
        [0x1f, 0x8b, ..] => Some(Format::Gz),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some(Format::Xz),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some(Format::Zstd),
        [0x04, 0x22, 0x4d, 0x18, ..] => Some(Format::Lz4Frame),
        [0x02, 0x21, 0x4c, 0x18, ..] => Some(Format::Lz4Legacy),
        _ => None,
    }
}

/// Resolves `wanted` for the stream `input` (peeking at its first bytes): `auto` is sniffed, and
/// `lz4` is told apart into frames or legacy. `none` under `auto` is what nothing matched.
pub fn resolve(
    wanted: Compression,
    input: &mut impl BufRead,
    what: &str,
) -> Result<Format, DecompressError> {
    let head = input
        .fill_buf()
        .map_err(|source| DecompressError::Corrupt {
            what: what.into(),
            format: "readable",
            source,
        })?;
    let sniffed = sniff(head);
    let unknown = || DecompressError::Unknown {
        what: what.into(),
        head: head.iter().take(6).map(|b| format!("{b:02x}")).collect(),
    };
    Ok(match wanted {
        Compression::None => Format::None,
        Compression::Auto => sniffed.unwrap_or(Format::None),
        Compression::Gz => Format::Gz,
        Compression::Xz => Format::Xz,
        Compression::Zstd => Format::Zstd,
        Compression::Lz4 => match sniffed {
            Some(f @ (Format::Lz4Frame | Format::Lz4Legacy)) => f,
            _ => return Err(unknown()),
        },
    })
}

/// A reader of the decompressed stream of `input` in `format`.
pub fn decoder<'a, R: BufRead + Send + 'a>(
    format: Format,
    input: R,
    what: &str,
) -> Result<Box<dyn Read + Send + 'a>, DecompressError> {
    Ok(match format {
        Format::None => Box::new(input),
        Format::Gz => Box::new(flate2::bufread::MultiGzDecoder::new(input)),
        Format::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            true,
            XZ_MEM_LIMIT_KIB,
        )),
        Format::Zstd => Box::new(ZstdFrames {
            input: Some(input),
            frame: None,
        }),
        Format::Lz4Frame => Box::new(lz4_flex::frame::FrameDecoder::new(input)),
        Format::Lz4Legacy => Box::new(Lz4Legacy::new(input, what)),
    })
}

/// Every zstd frame of a stream, one after the other (ruzstd decodes one frame at a time).
struct ZstdFrames<R: BufRead> {
    input: Option<R>,
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(frame) = self.frame.as_mut() {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.input = self.frame.take().map(|f| f.into_inner());
            }
            let Some(mut input) = self.input.take() else {
                return Ok(0);
            };
            if input.fill_buf()?.is_empty() {
                return Ok(0);
            }
            let decoder = ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            self.frame = Some(decoder);
        }
    }
}

/// The legacy LZ4 format: `02 21 4c 18`, then blocks `[len u32 LE][len bytes]` of at most 8 MiB
/// uncompressed each, up to the end (or a 4-byte trailer, which kernels append).
struct Lz4Legacy<R> {
    input: R,
    what: String,
    started: bool,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<R: Read> Lz4Legacy<R> {
    fn new(input: R, what: &str) -> Self {
        Self {
            input,
            what: what.into(),
            started: false,
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }

    /// Reads up to 4 bytes; fewer means the end.
    fn read_u32(&mut self) -> io::Result<Option<u32>> {
        let mut word = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.input.read(&mut word[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok((got == 4).then(|| u32::from_le_bytes(word)))
    }

    fn corrupt(&self, why: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", self.what))
    }

    /// Decodes the next block into `out`; false at the end.
    fn next_block(&mut self) -> io::Result<bool> {
        if !self.started {
            self.started = true;
            if self.read_u32()? != Some(LZ4_LEGACY_MAGIC) {
                return Err(self.corrupt("no legacy LZ4 magic"));
            }
        }
        loop {
            let Some(len) = self.read_u32()? else {
                return Ok(false);
            };
            if len == LZ4_LEGACY_MAGIC {
                continue;
            }
            let len = len as usize;
            let mut block = Vec::with_capacity(len.min(LZ4_LEGACY_BLOCK));
            (&mut self.input).take(len as u64).read_to_end(&mut block)?;
            if block.is_empty() {
                // A length and nothing after it: the trailer kernels append.
                return Ok(false);
            }
            if block.len() != len
                || len > lz4_flex::block::get_maximum_output_size(LZ4_LEGACY_BLOCK)
            {
                return Err(self.corrupt("a block is truncated or too large"));
            }
            self.out.resize(LZ4_LEGACY_BLOCK, 0);
            let n = lz4_flex::block::decompress_into(&block, &mut self.out)
                .map_err(|e| self.corrupt(&e.to_string()))?;
            self.out.truncate(n);
            self.pos = 0;
            return Ok(true);
        }
    }
}

impl<R: Read> Read for Lz4Legacy<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.done || !self.next_block()? {
                self.done = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Decompresses the file `src` into the new file `dest`, at most `limit` bytes; returns the
/// output's sha256 and size. Blocking.
pub fn decompress_file(
    src: &Path,
    what: &str,
    dest: &Path,
    wanted: Compression,
    limit: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(String, u64), DecompressError> {
    let file = File::open(src).map_err(file_err("open", src))?;
    let total_in = file.metadata().ok().map(|m| m.len());
    let mut input = BufReader::with_capacity(hashio::BUF, file);
    let format = resolve(wanted, &mut input, what)?;
    if format == Format::None {
        return Err(DecompressError::Unknown {
            what: what.into(),
            head: input
                .fill_buf()
                .unwrap_or_default()
                .iter()
                .take(6)
                .map(|b| format!("{b:02x}"))
                .collect(),
        });
    }
    let counted = CountingReader::new(input);
    let read_so_far = counted.count.clone();
    let mut reader = decoder(format, BufReader::new(counted), what)?;
    let out = hashio::create_new(dest).map_err(file_err("create", dest))?;
    let mut out = HashWriter::new(io::BufWriter::new(out), limit);
    hashio::copy_with(&mut reader, &mut out, cancel, |_| {
        progress.bytes(
            read_so_far.load(std::sync::atomic::Ordering::Relaxed),
            total_in,
        )
    })
    .map_err(|e| classify(e, what, format, limit))?;
    let (buffered, sha256, size) = out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| file_err("write", dest)(e.into_error()))?;
    file.sync_all().map_err(file_err("sync", dest))?;
    Ok((sha256, size))
}

/// Maps an error of a decompressing copy to what it means.
pub fn classify(e: io::Error, what: &str, format: Format, limit: u64) -> DecompressError {
    if hashio::exceeded(&e).is_some() {
        DecompressError::Bomb {
            what: what.into(),
            limit,
        }
    } else if hashio::is_cancelled(&e) {
        DecompressError::Cancelled
    } else {
        DecompressError::Corrupt {
            what: what.into(),
            format: format.name(),
            source: e,
        }
    }
}

/// Counts the compressed bytes read, for progress.
pub struct CountingReader<R> {
    inner: R,
    pub count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            count: Default::default(),
        }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
#[path = "decompress_tests.rs"]
mod tests;
