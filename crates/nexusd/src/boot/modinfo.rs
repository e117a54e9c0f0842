//! Kernel modules of an unpacked kernel: an index by name, `depends=` read from each module's
//! `.modinfo` ELF section, and a dependency-first load order (Debian's package has no modules.dep).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use super::BootError;
use crate::command;

/// Every module under a `lib/modules/<release>` directory, by normalised name (`-` → `_`).
#[derive(Debug, Default)]
pub struct ModuleIndex {
    root: PathBuf,
    modules: BTreeMap<String, PathBuf>,
}

impl ModuleIndex {
    pub fn scan(modules_dir: &Path) -> Result<Self, BootError> {
        let mut index = Self {
            root: modules_dir.to_path_buf(),
            modules: BTreeMap::new(),
        };
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).map_err(BootError::io(&dir))? {
                let path = entry.map_err(BootError::io(&dir))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = module_name(&path) {
                    index.modules.insert(name, path);
                }
            }
        }
        Ok(index)
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.modules.get(&normalise(name)).map(PathBuf::as_path)
    }

    /// The modules needed for `wanted`, dependencies before dependents, each once.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, BootError> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        for name in wanted {
            self.visit(&normalise(name), &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        path_stack: &mut Vec<String>,
        done: &mut HashSet<String>,
        order: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), BootError> {
        if done.contains(name) {
            return Ok(());
        }
        if path_stack.iter().any(|n| n == name) {
            return Err(BootError::DependencyCycle {
                name: name.to_string(),
            });
        }
        let path = self
            .path(name)
            .ok_or_else(|| BootError::ModuleMissing {
                name: name.to_string(),
                dir: self.root.clone(),
            })?
            .to_path_buf();
        let image = read_module(&path)?;
        path_stack.push(name.to_string());
        for dep in modinfo_depends(&image).map_err(|reason| BootError::BadModule {
            path: path.clone(),
            reason,
        })? {
            self.visit(&normalise(&dep), path_stack, done, order)?;
        }
        path_stack.pop();
        done.insert(name.to_string());
        order.push((name.to_string(), path));
        Ok(())
    }
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// `virtio-rng.ko`, `x.ko.xz`, `x.ko.zst` → normalised module name.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalise(stem))
}

/// A module's uncompressed ELF image; compressed modules are inflated with the `xz`/`zstd`/`gzip` tool.
pub fn read_module(path: &Path) -> Result<Vec<u8>, BootError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(BootError::io(path)),
        Some(tool) => Ok(command::run(command::tool(tool).arg("-dc").arg(path), &[0])?.stdout),
    }
}

/// The `depends=` list of a module image's `.modinfo` section.
pub fn modinfo_depends(image: &[u8]) -> Result<Vec<String>, String> {
    let modinfo = elf_section(image, ".modinfo")?;
    let depends = modinfo
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .unwrap_or_default();
    let text = std::str::from_utf8(depends).map_err(|_| "depends= is not UTF-8".to_string())?;
    Ok(text
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect())
}

/// The contents of the named section of a little-endian ELF64 file.
fn elf_section<'a>(image: &'a [u8], wanted: &str) -> Result<&'a [u8], String> {
    if image.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err("not a little-endian ELF64 file".into());
    }
    let shoff = read_u64(image, 0x28)? as usize;
    let shentsize = read_u16(image, 0x3a)? as usize;
    let shnum = read_u16(image, 0x3c)? as usize;
    let shstrndx = read_u16(image, 0x3e)? as usize;
    let section = |i: usize| -> Result<(u32, &'a [u8]), String> {
        let base = shoff + i * shentsize;
        let name = read_u32(image, base)?;
        let offset = read_u64(image, base + 0x18)? as usize;
        let size = read_u64(image, base + 0x20)? as usize;
        let data = image
            .get(offset..offset.saturating_add(size))
            .ok_or("section out of bounds")?;
        Ok((name, data))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_off, data) = section(i)?;
        let name = names
            .get(name_off as usize..)
            .ok_or("section name out of bounds")?;
        let name = name.split(|b| *b == 0).next().unwrap_or_default();
        if name == wanted.as_bytes() {
            return Ok(data);
        }
    }
    Err(format!("no {wanted} section"))
}

fn read_u16(b: &[u8], at: usize) -> Result<u16, String> {
    Ok(u16::from_le_bytes(
        b.get(at..at + 2)
            .ok_or("truncated ELF")?
            .try_into()
            .map_err(|_| "ELF")?,
    ))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, String> {
    Ok(u32::from_le_bytes(
        b.get(at..at + 4)
            .ok_or("truncated ELF")?
            .try_into()
            .map_err(|_| "ELF")?,
    ))
}

fn read_u64(b: &[u8], at: usize) -> Result<u64, String> {
    Ok(u64::from_le_bytes(
        b.get(at..at + 8)
            .ok_or("truncated ELF")?
            .try_into()
            .map_err(|_| "ELF")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and one `.modinfo` section.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut image = vec![0u8; 64];
        image[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_off = image.len();
        image.extend_from_slice(names);
        let info_off = image.len();
        image.extend_from_slice(modinfo);
        let shoff = image.len();
        image[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        image[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        image[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        image[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, names_off, names.len()),
            (11, info_off, modinfo.len()),
        ] {
            let mut sh = vec![0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            image.extend_from_slice(&sh);
        }
        image
    }

    #[test]
    fn depends_are_read_from_modinfo_section() {
        let image = fake_module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_blk\0");
        assert_eq!(
            modinfo_depends(&image).unwrap(),
            vec!["virtio", "virtio_ring"]
        );
    }

    #[test]
    fn empty_depends_is_empty_list() {
        let image = fake_module(b"depends=\0name=virtio_ring\0");
        assert!(modinfo_depends(&image).unwrap().is_empty());
    }

    #[test]
    fn non_elf_is_rejected() {
        assert!(modinfo_depends(b"not an elf").is_err());
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("kernel/drivers");
        fs::create_dir_all(&kernel).unwrap();
        fs::write(kernel.join("a.ko"), fake_module(b"depends=b,c-d\0")).unwrap();
        fs::write(kernel.join("b.ko"), fake_module(b"depends=c_d\0")).unwrap();
        fs::write(kernel.join("c-d.ko"), fake_module(b"depends=\0")).unwrap();
        let index = ModuleIndex::scan(dir.path()).unwrap();
        let order: Vec<String> = index
            .load_order(&["a"])
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(order, vec!["c_d", "b", "a"]);
    }

    #[test]
    fn missing_module_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kernel")).unwrap();
        let index = ModuleIndex::scan(dir.path()).unwrap();
        assert!(matches!(
            index.load_order(&["nope"]),
            Err(BootError::ModuleMissing { .. })
        ));
    }
}
