//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes entries in order; call [`CpioWriter::finish`] to add the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data)
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, (0, 0), 0, 0)?;
        self.pad()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{path}: over 4 GiB")))?;
        self.header(path.trim_start_matches('/'), mode, nlink, rdev, size, ino)?;
        self.write(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
        ino: u32,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for field in fields {
            header.push_str(&format!("{field:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let padding = (4 - (self.written % 4) as usize) % 4;
        self.write(&[0; 3][..padding])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_entry_has_newc_header_and_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"abc").unwrap();
        let out = w.finish().unwrap();
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[14..22], "000081ed");
        assert_eq!(&header[54..62], "00000003");
        assert_eq!(&header[94..102], "00000005");
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(out.len() % 4, 0);
    }
}
