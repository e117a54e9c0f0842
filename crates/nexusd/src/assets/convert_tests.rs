//! A synthetic bzImage carrying a small ELF, in the legacy LZ4 format kernels use.

use super::*;

/// An ELF64 x86-64 executable header with one program header, then filler.
fn tiny_elf(machine: u16) -> Vec<u8> {
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    e.resize(16, 0);
    e.extend(2u16.to_le_bytes()); // e_type: executable
    e.extend(machine.to_le_bytes());
    e.extend(1u32.to_le_bytes()); // e_version
    e.extend(0x100_0000u64.to_le_bytes()); // e_entry
    e.extend(64u64.to_le_bytes()); // e_phoff
    e.extend(0u64.to_le_bytes()); // e_shoff
    e.extend(0u32.to_le_bytes()); // e_flags
    e.extend(64u16.to_le_bytes()); // e_ehsize
    e.extend(56u16.to_le_bytes()); // e_phentsize
    e.extend(1u16.to_le_bytes()); // e_phnum
    e.extend(64u16.to_le_bytes()); // e_shentsize
    e.extend([0u8; 4]); // e_shnum, e_shstrndx
    e.resize(64 * 1024, 0x90);
    e
}

/// A bzImage: one setup sector after the boot sector, then the payload.
fn bzimage(payload: &[u8]) -> Vec<u8> {
    let mut img = vec![0u8; 2 * 512];
    img[0x1f1] = 1;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend_from_slice(payload);
    img
}

fn lz4_legacy_with_size(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
    let block = lz4_flex::block::compress(data);
    out.extend((block.len() as u32).to_le_bytes());
    out.extend(block);
    out.extend((data.len() as u32).to_le_bytes());
    out
}

fn convert(image: &[u8]) -> Result<(Vec<u8>, String), ConvertError> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("bzImage"), dir.path().join("vmlinux"));
    std::fs::write(&src, image).unwrap();
    let (sha, _) = bzimage_to_vmlinux(
        &src,
        "bzImage",
        &dest,
        1 << 30,
        &Progress::silent(),
        &CancellationToken::new(),
    )?;
    Ok((std::fs::read(&dest).unwrap(), sha))
}

#[test]
fn the_elf_inside_a_bzimage_comes_out_whole() {
    let elf = tiny_elf(62);
    let (out, sha) = convert(&bzimage(&lz4_legacy_with_size(&elf))).unwrap();
    assert!(out == elf);
    assert_eq!(
        sha,
        hashio::hex(&<sha2::Sha256 as sha2::Digest>::digest(&elf))
    );
}

#[test]
fn a_payload_that_is_not_x86_64_is_refused() {
    let arm = tiny_elf(183);
    let err = convert(&bzimage(&lz4_legacy_with_size(&arm))).unwrap_err();
    assert!(matches!(err, ConvertError::NotElf { .. }), "{err}");
}

#[test]
fn a_file_without_the_setup_magic_is_not_a_bzimage() {
    let err = convert(&vec![0u8; 4096]).unwrap_err();
    assert!(matches!(err, ConvertError::NotBzImage { .. }), "{err}");
}

#[test]
fn a_wrong_size_trailer_is_refused() {
    let elf = tiny_elf(62);
    let mut payload = lz4_legacy_with_size(&elf);
    let n = payload.len();
    payload[n - 4..].copy_from_slice(&7u32.to_le_bytes());
    let err = convert(&bzimage(&payload)).unwrap_err();
    assert!(matches!(err, ConvertError::SizeMismatch { .. }), "{err}");
}
