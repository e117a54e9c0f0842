//! The key nexusd signs what it builds with (the kernel build's `SHA256SUMS`), generated on first
//! use and pinned: an Ed25519 OpenPGP key whose secret half stays in `<data>/assets/keys/`
//! (mode 0600, owned by nexusd's user), next to its public half and the fingerprint recorded
//! when it was made. A key file later found to have another fingerprint is refused rather than
//! trusted: replacing the key means removing the directory, and every build is then signed anew.
//!
//! The public half and the fingerprint are what the kernel-build stage verifies a build's
//! signature with, so a build directory (fresh, or a cached one that a later run would trust)
//! counts only with a good signature by this key over sums that match its files.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgp::composed::{
    ArmorOptions, Deserializable, DetachedSignature, KeyType, SecretKeyParamsBuilder,
    SignedSecretKey,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::types::{KeyDetails, Password};

use super::kernel_build::SumsSigner;
use super::signature::normalize_fingerprint;

const SECRET: &str = "build.key";
const PUBLIC: &str = "build.pub.asc";
const PINNED: &str = "build.fingerprint";
/// Larger than any key file this module writes; a bound on what a damaged file makes us read.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Why the build key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildKeyError {
    #[error("cannot {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a usable OpenPGP secret key: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "the build key {} has fingerprint {actual}, but {pinned} was pinned when it was made; remove {} to make a new key",
        path.display(), dir.display()
    )]
    NotPinned {
        path: PathBuf,
        dir: PathBuf,
        actual: String,
        pinned: String,
    },
    #[error("cannot generate the build key: {0}")]
    Generate(String),
}

/// The pinned build key.
pub struct BuildKey {
    secret: SignedSecretKey,
    fingerprint: String,
    public_path: PathBuf,
    signature_name: String,
}

impl std::fmt::Debug for BuildKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildKey")
            .field("fingerprint", &self.fingerprint)
            .field("public_path", &self.public_path)
            .finish_non_exhaustive()
    }
}

impl BuildKey {
    /// The key in `dir`, made (and pinned) there when there is none. Blocking.
    pub fn load_or_create(dir: &Path) -> Result<Self, BuildKeyError> {
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| BuildKeyError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod", dir))?;
        let secret_path = dir.join(SECRET);
        if !secret_path.exists() {
            create(dir)?;
        }
        let text = read_bounded(&secret_path).map_err(io("read", &secret_path))?;
        let (secret, _) =
            SignedSecretKey::from_string(&text).map_err(|e| BuildKeyError::Invalid {
                path: secret_path.clone(),
                message: e.to_string(),
            })?;
        let fingerprint = fingerprint_of(&secret);
        let pinned_path = dir.join(PINNED);
        let pinned = read_bounded(&pinned_path).map_err(io("read", &pinned_path))?;
        let pinned = normalize_fingerprint(pinned.trim());
        if pinned != fingerprint {
            return Err(BuildKeyError::NotPinned {
                path: secret_path,
                dir: dir.to_owned(),
                actual: fingerprint,
                pinned,
            });
        }
        let public_path = dir.join(PUBLIC);
        let public = public_armored(&secret)?;
        if read_bounded(&public_path).ok().as_deref() != Some(public.as_str()) {
            write_new(&public_path, public.as_bytes(), 0o644, true)?;
        }
        let signature_name = format!("SHA256SUMS.{}.asc", &fingerprint[fingerprint.len() - 16..]);
        Ok(Self {
            secret,
            fingerprint,
            public_path,
            signature_name,
        })
    }

    /// Uppercase hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The armored public key, as `signature::verify` reads pinned keys.
    pub fn public_path(&self) -> &Path {
        &self.public_path
    }

    /// The keyring holding this key alone, for `signature::verify`.
    pub fn keyring(&self) -> BTreeMap<String, PathBuf> {
        BTreeMap::from([(self.fingerprint.clone(), self.public_path.clone())])
    }
}

impl SumsSigner for BuildKey {
    /// Named after the key, so build directories shared by several nexusd (one build cache)
    /// carry each one's signature side by side.
    fn signature_name(&self) -> &str {
        &self.signature_name
    }

    fn sign(&self, sums: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        let signature = DetachedSignature::sign_binary_data(
            rand::thread_rng(),
            &self.secret.primary_key,
            &Password::empty(),
            HashAlgorithm::Sha256,
            sums,
        )?;
        Ok(signature
            .to_armored_string(ArmorOptions::default())?
            .into_bytes())
    }
}

/// Generates a key and writes its three files; the secret last, so a crash in between leaves
/// no secret without its pin (the next call starts over).
fn create(dir: &Path) -> Result<(), BuildKeyError> {
    let params = SecretKeyParamsBuilder::default()
        .key_type(KeyType::Ed25519)
        .can_certify(true)
        .can_sign(true)
        .primary_user_id("nexusd build key <nexusd@localhost>".into())
        .build()
        .map_err(|e| BuildKeyError::Generate(e.to_string()))?;
    let secret = params
        .generate(rand::thread_rng())
        .map_err(|e| BuildKeyError::Generate(e.to_string()))?;
    let armored = secret
        .to_armored_string(ArmorOptions::default())
        .map_err(|e| BuildKeyError::Generate(e.to_string()))?;
    let fingerprint = fingerprint_of(&secret);
    write_new(
        &dir.join(PINNED),
        format!("{fingerprint}\n").as_bytes(),
        0o644,
        true,
    )?;
    write_new(
        &dir.join(PUBLIC),
        public_armored(&secret)?.as_bytes(),
        0o644,
        true,
    )?;
    write_new(&dir.join(SECRET), armored.as_bytes(), 0o600, false)?;
    tracing::info!(%fingerprint, dir = %dir.display(), "generated the build signing key");
    Ok(())
}

fn fingerprint_of(secret: &SignedSecretKey) -> String {
    normalize_fingerprint(&secret.primary_key.fingerprint().to_string())
}

fn public_armored(secret: &SignedSecretKey) -> Result<String, BuildKeyError> {
    secret
        .to_public_key()
        .to_armored_string(ArmorOptions::default())
        .map_err(|e| BuildKeyError::Generate(e.to_string()))
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, created with
/// `mode`; `replace` says whether an existing file may be replaced.
fn write_new(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), BuildKeyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |op, path: &Path| {
        let path = path.to_owned();
        move |source| BuildKeyError::Io { op, path, source }
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".key-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io("create a file in", dir))?;
    tmp.write_all(bytes).map_err(io("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io("sync", tmp.path()))?;
    if replace {
        tmp.persist(path)
            .map_err(|e| e.error)
            .map_err(io("write", path))?;
    } else {
        tmp.persist_noclobber(path)
            .map_err(|e| e.error)
            .map_err(io("write", path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_and_then_loaded_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let first = BuildKey::load_or_create(dir.path()).unwrap();
        let again = BuildKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.fingerprint().len(), 40);
        let mode = fs::metadata(dir.path().join(SECRET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_signature_verifies_with_the_pinned_public_key_alone() {
        let dir = tempfile::tempdir().unwrap();
        let key = BuildKey::load_or_create(dir.path()).unwrap();
        let sums = dir.path().join("SHA256SUMS");
        fs::write(&sums, b"00  vmlinux\n").unwrap();
        let sig = dir.path().join(key.signature_name());
        fs::write(&sig, key.sign(b"00  vmlinux\n").unwrap()).unwrap();
        let verify = || {
            super::super::signature::verify(
                &key.keyring(),
                &[key.fingerprint().to_owned()],
                &sums,
                "SHA256SUMS",
                &sig,
                "sig",
            )
        };
        assert_eq!(verify().unwrap(), key.fingerprint());

        fs::write(&sums, b"11  vmlinux\n").unwrap();
        assert!(verify().is_err());
    }

    #[test]
    fn a_replaced_secret_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        BuildKey::load_or_create(dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        BuildKey::load_or_create(other.path()).unwrap();
        fs::copy(other.path().join(SECRET), dir.path().join(SECRET)).unwrap();
        let err = BuildKey::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, BuildKeyError::NotPinned { .. }), "{err}");
    }
}
