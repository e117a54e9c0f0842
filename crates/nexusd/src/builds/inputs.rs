//! A build's inputs and its cache key. Host files named by `src` are copied, under the caller's
//! import rights and the template's size bounds, into the build's scratch directory while they
//! are hashed, so the key describes exactly the bytes the build copies into the guest (a file
//! changed afterwards changes nothing).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use nexus_lib::api::template::{MAX_SRC_FILE_BYTES, MAX_SRC_TOTAL_BYTES, TemplateSpec};
use sha2::{Digest, Sha256};

use crate::hostpath::{Caller, ImportPolicy};

use super::BuildError;

/// Where the content of one `[[files]]` entry comes from during the build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileInput {
    Inline(Vec<u8>),
    /// A copy in the build's scratch directory.
    Copied(PathBuf),
}

/// Everything a build reads besides the template and the base.
#[derive(Debug, Default)]
pub struct Inputs {
    pub files: Vec<FileInput>,
    /// sha256 (hex) of each file's content, in template order.
    pub digests: Vec<String>,
}

/// Copies (and hashes) the host files of `spec` into `scratch`, checking each path with
/// `policy` for `caller`. Blocking.
pub fn gather(
    spec: &TemplateSpec,
    policy: &ImportPolicy,
    caller: &Caller,
    scratch: &Path,
) -> Result<Inputs, BuildError> {
    let mut inputs = Inputs::default();
    let mut total = 0u64;
    for (i, file) in spec.files.iter().enumerate() {
        let field = format!("files[{i}].src");
        let Some(src) = &file.src else {
            let content = file.content.clone().unwrap_or_default().into_bytes();
            inputs.digests.push(hex(&Sha256::digest(&content)));
            inputs.files.push(FileInput::Inline(content));
            continue;
        };
        let resolved = policy
            .open(Path::new(src), caller)
            .map_err(|source| BuildError::Path {
                field: field.clone(),
                source,
            })?;
        if resolved.is_dir {
            return Err(BuildError::Input {
                field,
                message: format!("{src} is a directory; name a file"),
            });
        }
        std::fs::create_dir_all(scratch).map_err(|e| BuildError::io(scratch, e))?;
        let dest = scratch.join(format!("file-{i}"));
        let (len, digest) =
            copy_hashed(&resolved.proc_path(), &dest, MAX_SRC_FILE_BYTES).map_err(|e| match e {
                CopyError::TooBig => BuildError::Input {
                    field: field.clone(),
                    message: format!("{src} is larger than {MAX_SRC_FILE_BYTES} bytes"),
                },
                CopyError::Io(e) => BuildError::Input {
                    field: field.clone(),
                    message: format!("cannot read {src}: {e}"),
                },
            })?;
        total += len;
        if total > MAX_SRC_TOTAL_BYTES {
            return Err(BuildError::Input {
                field: "files".into(),
                message: format!("more than {MAX_SRC_TOTAL_BYTES} bytes of host files in all"),
            });
        }
        inputs.digests.push(digest);
        inputs.files.push(FileInput::Copied(dest));
    }
    Ok(inputs)
}

enum CopyError {
    TooBig,
    Io(std::io::Error),
}

fn copy_hashed(src: &Path, dest: &Path, limit: u64) -> Result<(u64, String), CopyError> {
    let mut input = std::fs::File::open(src).map_err(CopyError::Io)?;
    let mut out = std::fs::File::create(dest).map_err(CopyError::Io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(CopyError::Io)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        if len > limit {
            return Err(CopyError::TooBig);
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Io)?;
    }
    Ok((len, hex(&hasher.finalize())))
}

/// The cache key: sha256 over a version tag, the canonical template (not its text: comments
/// and layout do not count), the base image's id and every file's content digest.
pub fn cache_key(spec: &TemplateSpec, base_image: &str, digests: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(b"nexus-build-v1\0");
    h.update(spec.canonical().as_bytes());
    h.update(b"\0base\0");
    h.update(base_image.as_bytes());
    for (i, d) in digests.iter().enumerate() {
        h.update(format!("\0file{i}\0{d}").as_bytes());
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> TemplateSpec {
        TemplateSpec::parse(&format!(
            "name = \"t\"\nbase = \"default\"\n{extra}[[files]]\ncontent = \"hi\"\ndest = \"/opt/hi\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_key_depends_on_template_base_and_file_contents_only() {
        let a = cache_key(&spec(""), "img-1", &["d1".into()]);
        assert_eq!(
            a,
            cache_key(&spec("# a comment\n"), "img-1", &["d1".into()])
        );
        assert_ne!(
            a,
            cache_key(&spec("size = \"1G\"\n"), "img-1", &["d1".into()])
        );
        assert_ne!(a, cache_key(&spec(""), "img-2", &["d1".into()]));
        assert_ne!(a, cache_key(&spec(""), "img-1", &["d2".into()]));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn host_files_are_copied_and_hashed_and_their_content_changes_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in.txt");
        std::fs::write(&src, "one").unwrap();
        let spec = TemplateSpec::parse(&format!(
            "name = \"t\"\nbase = \"default\"\n[[files]]\nsrc = \"{}\"\ndest = \"/x\"\n",
            src.display()
        ))
        .unwrap();
        let policy = ImportPolicy::new(None, vec![]);
        let scratch = dir.path().join("scratch");
        let a = gather(&spec, &policy, &Caller::Daemon, &scratch).unwrap();
        assert_eq!(a.digests[0], hex(&Sha256::digest(b"one")));
        let FileInput::Copied(copy) = &a.files[0] else {
            panic!("not copied")
        };
        assert_eq!(std::fs::read(copy).unwrap(), b"one");
        std::fs::write(&src, "two").unwrap();
        let b = gather(&spec, &policy, &Caller::Daemon, &scratch).unwrap();
        assert_ne!(a.digests, b.digests);
    }

    #[test]
    fn a_missing_host_file_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let spec = TemplateSpec::parse(
            "name = \"t\"\nbase = \"default\"\n[[files]]\nsrc = \"/nonexistent/x\"\ndest = \"/x\"\n",
        )
        .unwrap();
        let err = gather(
            &spec,
            &ImportPolicy::new(None, vec![]),
            &Caller::Daemon,
            dir.path(),
        )
        .unwrap_err();
        assert!(
            matches!(err, BuildError::Path { ref field, .. } if field == "files[0].src"),
            "{err}"
        );
    }
}
