//! The `convert` stage: a bzImage into the ELF `vmlinux` it carries, for Firecracker (which
//! boots an uncompressed ELF on x86-64) and for QEMU's PVH entry.
//!
//! A bzImage (Linux boot protocol ≥ 2.08) is a real-mode setup of `setup_sects` sectors, then
//! the protected-mode part, in which `payload_offset`/`payload_length` (setup header 0x248/0x24c)
//! locate the compressed vmlinux. Kernels append the uncompressed size (4 bytes, little endian)
//! to every payload format but gzip, which carries its own; it is checked against the output.
//! The result must be an x86-64 ELF executable (header read with goblin).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::decompress::{self, DecompressError, Format};
use super::hashio::{self, FileError, HashWriter, file_err};
use super::progress::Progress;

/// Why a bzImage could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{what:?} is not a bzImage: {reason}")]
    NotBzImage { what: String, reason: String },
    #[error(
        "{what:?}: its payload is {format}-compressed, which is not supported (gzip, xz, zstd, lz4 are)"
    )]
    Unsupported { what: String, format: String },
    #[error(
        "{what:?}: the payload decompressed to {actual} bytes, but the kernel recorded {recorded}"
    )]
    SizeMismatch {
        what: String,
        actual: u64,
        recorded: u64,
    },
    #[error("{what:?}: the payload is not an x86-64 ELF executable: {reason}")]
    NotElf { what: String, reason: String },
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error(transparent)]
    Io(#[from] FileError),
}

/// Where the compressed kernel sits in a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub offset: u64,
    pub length: u64,
}

/// Reads the setup header of the bzImage `f` (of `len` bytes) and locates its payload.
pub fn locate_payload(f: &File, len: u64, what: &str) -> Result<Payload, ConvertError> {
    let not = |reason: &str| ConvertError::NotBzImage {
        what: what.into(),
        reason: reason.into(),
    };
    let mut header = [0u8; 0x250];
    f.read_exact_at(&mut header, 0)
        .map_err(|_| not("shorter than a setup header"))?;
    if &header[0x202..0x206] != b"HdrS" {
        return Err(not("no `HdrS` magic at 0x202"));
    }
    let version = u16::from_le_bytes([header[0x206], header[0x207]]);
    if version < 0x0208 {
        return Err(not(&format!(
            "boot protocol {}.{:02} has no payload fields (2.08 or later needed)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match header[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let word = |at: usize| u64::from(u32::from_le_bytes(header[at..at + 4].try_into().unwrap()));
    let offset = (setup_sects + 1) * 512 + word(0x248);
    let length = word(0x24c);
    if length < 16 || offset.saturating_add(length) > len {
        return Err(not("its payload lies outside the file"));
    }
    Ok(Payload { offset, length })
}

/// Extracts the ELF vmlinux of the bzImage `src` into the new file `dest` (at most `limit`
/// bytes). Blocking.
pub fn bzimage_to_vmlinux(
    src: &Path,
    what: &str,
    dest: &Path,
    limit: u64,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(String, u64), ConvertError> {
    let mut file = File::open(src).map_err(file_err("open", src))?;
    let len = file.metadata().map_err(file_err("stat", src))?.len();
    let payload = locate_payload(&file, len, what)?;
    let mut head = [0u8; 8];
    file.read_exact_at(&mut head, payload.offset)
        .map_err(file_err("read", src))?;
    let format = decompress::sniff(&head).ok_or_else(|| ConvertError::Unsupported {
        what: what.into(),
        format: describe_magic(&head),
    })?;
    // Every format but gzip ends with the kernel's 4-byte size trailer.
    let (compressed, recorded) = if format == Format::Gz {
        (payload.length, None)
    } else {
        let mut trailer = [0u8; 4];
        file.read_exact_at(&mut trailer, payload.offset + payload.length - 4)
            .map_err(file_err("read", src))?;
        (
            payload.length - 4,
            Some(u64::from(u32::from_le_bytes(trailer))),
        )
    };
    file.seek(SeekFrom::Start(payload.offset))
        .map_err(file_err("seek", src))?;
    let input = BufReader::with_capacity(hashio::BUF, file.take(compressed));
    let mut reader = decompress::decoder(format, input, what)?;
    let out = hashio::create_new(dest).map_err(file_err("create", dest))?;
    let mut out = HashWriter::new(io::BufWriter::new(out), limit);
    hashio::copy_with(&mut reader, &mut out, cancel, |n| {
        progress.bytes(n, recorded)
    })
    .map_err(|e| decompress::classify(e, what, format, limit))?;
    let (buffered, sha256, size) = out.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| file_err("write", dest)(e.into_error()))?;
    file.sync_all().map_err(file_err("sync", dest))?;
    if let Some(recorded) = recorded.filter(|r| *r != size) {
        return Err(ConvertError::SizeMismatch {
            what: what.into(),
            actual: size,
            recorded,
        });
    }
    drop(file);
    let written = File::open(dest).map_err(file_err("open", dest))?;
    check_elf(&written, what)?;
    Ok((sha256, size))
}

/// Checks that `f` starts with the header of a 64-bit little-endian x86-64 ELF executable with
/// program headers.
pub fn check_elf(f: &File, what: &str) -> Result<(), ConvertError> {
    use goblin::elf::header::{EM_X86_64, ET_EXEC};
    let not = |reason: String| ConvertError::NotElf {
        what: what.into(),
        reason,
    };
    let mut bytes = [0u8; 64];
    f.read_exact_at(&mut bytes, 0)
        .map_err(|_| not("shorter than an ELF header".into()))?;
    let header = goblin::elf::Elf::parse_header(&bytes).map_err(|e| not(e.to_string()))?;
    if header.e_ident[goblin::elf::header::EI_CLASS] != goblin::elf::header::ELFCLASS64 {
        return Err(not("not a 64-bit ELF".into()));
    }
    if header.e_machine != EM_X86_64 {
        return Err(not(format!("machine {} is not x86-64", header.e_machine)));
    }
    if header.e_type != ET_EXEC {
        return Err(not(format!("type {} is not an executable", header.e_type)));
    }
    if header.e_phnum == 0 {
        return Err(not("it has no program headers".into()));
    }
    Ok(())
}

/// Names the compressions kernels use that are not supported here.
fn describe_magic(head: &[u8]) -> String {
    match head {
        [b'B', b'Z', b'h', ..] => "bzip2".into(),
        [0x5d, 0x00, 0x00, ..] => "lzma".into(),
        [0x89, b'L', b'Z', b'O', ..] => "lzo".into(),
        _ => format!(
            "unknown ({})",
            head.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
