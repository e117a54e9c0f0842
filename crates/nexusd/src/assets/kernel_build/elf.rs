//! What makes a file a bootable ELF `vmlinux` here: an x86-64 ELF executable carrying the PVH
//! entry note (`XEN_ELFNOTE_PHYS32_ENTRY`) that QEMU enters it through. Firecracker loads the same
//! file by its ELF entry point.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const EM_X86_64: u64 = 62;
const PT_NOTE: u64 = 4;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point of a PVH kernel.
const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;
/// Bounds on what a malformed file makes us read.
const MAX_HEADERS: usize = 64;
const MAX_NOTE_SEGMENT: u64 = 64 * 1024;

/// Checks that `path` is an x86-64 ELF executable with a PVH entry note; the error says what
/// is wrong.
pub fn check_pvh_vmlinux(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|_| "it is truncated".to_owned())?;
        Ok(buf)
    };
    let mut magic = [0u8; 4];
    if file.read_exact_at(&mut magic, 0).is_err() || &magic != b"\x7fELF" {
        return Err("it is not an ELF file (a bzImage? use the vmlinux)".into());
    }
    let header = read(0, 64)?;
    if header[4] != 2 || header[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    if le(&header[18..20]) != EM_X86_64 {
        return Err("it is not built for x86-64".into());
    }
    let (phoff, phentsize, phnum) = (
        le(&header[32..40]),
        le(&header[54..56]) as usize,
        le(&header[56..58]) as usize,
    );
    if phentsize < 56 || phnum > MAX_HEADERS {
        return Err("its program headers are malformed".into());
    }
    let table = read(phoff, phentsize * phnum)?;
    for ph in table.chunks_exact(phentsize) {
        if le(&ph[..4]) != PT_NOTE {
            continue;
        }
        let (offset, size) = (le(&ph[8..16]), le(&ph[32..40]));
        if size > MAX_NOTE_SEGMENT {
            return Err("a note segment is implausibly large".into());
        }
        if has_pvh_note(&read(offset, size as usize)?) {
            return Ok(());
        }
    }
    Err("it has no PVH entry note (CONFIG_PVH is off)".into())
}

/// Whether the notes in `segment` include Xen's PVH entry point.
fn has_pvh_note(segment: &[u8]) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= segment.len() {
        let namesz = le(&segment[at..at + 4]) as usize;
        let descsz = le(&segment[at + 4..at + 8]) as usize;
        let kind = le(&segment[at + 8..at + 12]);
        let name_at = at + 12;
        let Some(name) = segment.get(name_at..name_at + namesz) else {
            return false;
        };
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return true;
        }
        at = name_at + align4(namesz) + align4(descsz);
    }
    false
}

fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |v, b| (v << 8) | u64::from(*b))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The smallest file [`check_pvh_vmlinux`] accepts: for tests elsewhere that need a kernel.
    pub(crate) fn pvh_elf() -> Vec<u8> {
        elf_with_notes(&note(b"Xen\0", 18, &[0, 0, 0, 1]))
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((desc.len() as u32).to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(name);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out.extend(desc);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    /// A minimal ELF64 x86-64 file with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[..4].copy_from_slice(&4u32.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        f.extend(notes);
        f
    }

    fn check(bytes: &[u8]) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, bytes).unwrap();
        check_pvh_vmlinux(&path)
    }

    #[test]
    fn an_elf_with_the_pvh_note_after_another_note_is_bootable() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(b"Xen\0", 18, &[0, 0, 0, 1]));

        assert_eq!(check(&elf_with_notes(&notes)), Ok(()));
    }

    #[test]
    fn an_elf_without_the_pvh_note_is_refused() {
        let notes = note(b"Xen\0", 17, &[0; 8]);

        let err = check(&elf_with_notes(&notes)).unwrap_err();

        assert!(err.contains("no PVH entry note"), "{err}");
    }

    #[test]
    fn a_bzimage_is_refused_as_not_elf() {
        let mut bz = vec![0u8; 1024];
        bz[0x202..0x206].copy_from_slice(b"HdrS");

        let err = check(&bz).unwrap_err();

        assert!(err.contains("not an ELF file"), "{err}");
    }

    #[test]
    fn a_file_shorter_than_an_elf_header_is_not_elf() {
        let err = check(b"MZ").unwrap_err();

        assert!(err.contains("not an ELF file"), "{err}");
    }

    #[test]
    fn a_truncated_note_is_not_read_past_its_segment() {
        let mut notes = note(b"Xen\0", 18, &[0; 4]);
        notes[..4].copy_from_slice(&1000u32.to_le_bytes());

        assert!(check(&elf_with_notes(&notes)).is_err());
    }
}
