//! The `signature` stage: an OpenPGP detached signature (armored or binary) over an artifact,
//! verified with rPGP (pure Rust) against keys pinned in nexus.toml by fingerprint
//! (`asset_keys`: fingerprint → public key file). A key is never taken from the source being
//! verified: the pipeline names fingerprints, the operator's config supplies the keys, and a key
//! file whose primary fingerprint differs from its pin is refused.
//!
//! What counts: the signature's issuer (fingerprint, else key id) must be the primary key or a
//! signing-capable subkey of one of the stage's allowed keys; the key's self-signatures and
//! subkey bindings must verify. Expiry and revocation are not interpreted (rPGP leaves that
//! layer to applications; the pin in the config is the operator's statement of trust).

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;

/// Largest signature file read.
const MAX_SIGNATURE_BYTES: u64 = 64 << 10;
/// Largest public key file read.
const MAX_KEY_BYTES: u64 = 1 << 20;

/// Why a signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "none of the keys {} is pinned in nexus.toml (`asset_keys`: fingerprint = key file)",
        .keys.join(", ")
    )]
    NotPinned { keys: Vec<String> },
    #[error("cannot read the public key file {path} (pinned for {fingerprint})")]
    KeyFile {
        fingerprint: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} (pinned for {fingerprint}) is not a usable OpenPGP public key: {message}")]
    KeyInvalid {
        fingerprint: String,
        path: PathBuf,
        message: String,
    },
    #[error("{path} holds key {actual}, not the pinned {fingerprint}")]
    KeyMismatch {
        fingerprint: String,
        path: PathBuf,
        actual: String,
    },
    #[error("{artifact:?} is not an OpenPGP detached signature: {message}")]
    Unparsable { artifact: String, message: String },
    #[error("{artifact:?} is larger than {MAX_SIGNATURE_BYTES} bytes: not a detached signature")]
    TooBig { artifact: String },
    #[error(
        "unknown key: {signed:?} was signed by {issuer}, which is none of the allowed keys ({})",
        .allowed.join(", ")
    )]
    UnknownKey {
        signed: String,
        issuer: String,
        allowed: Vec<String>,
    },
    #[error("bad signature: {signed:?} does not match its signature by {key}: {message}")]
    Bad {
        signed: String,
        key: String,
        message: String,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Uppercase hex, the form fingerprints are compared in.
pub fn normalize_fingerprint(fpr: &str) -> String {
    fpr.to_ascii_uppercase()
}

fn fpr_of(key: &impl KeyDetails) -> String {
    normalize_fingerprint(&key.fingerprint().to_string())
}

fn key_id_of(key: &impl KeyDetails) -> String {
    let id = key.legacy_key_id();
    normalize_fingerprint(&pgp::types::KeyId::to_string(&id))
}

/// Loads the pinned key `fingerprint` from `path` and checks it is that key, self-consistent.
fn load_key(fingerprint: &str, path: &Path) -> Result<SignedPublicKey, SignatureError> {
    let read = |source| SignatureError::KeyFile {
        fingerprint: fingerprint.into(),
        path: path.to_owned(),
        source,
    };
    let invalid = |message: String| SignatureError::KeyInvalid {
        fingerprint: fingerprint.into(),
        path: path.to_owned(),
        message,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    if file.metadata().map_err(read)?.len() > MAX_KEY_BYTES {
        return Err(invalid(format!("larger than {MAX_KEY_BYTES} bytes")));
    }
    let (key, _) = SignedPublicKey::from_reader_single(BufReader::new(file))
        .map_err(|e| invalid(e.to_string()))?;
    let actual = fpr_of(&key.primary_key);
    if actual != fingerprint {
        return Err(SignatureError::KeyMismatch {
            fingerprint: fingerprint.into(),
            path: path.to_owned(),
            actual,
        });
    }
    key.verify_bindings().map_err(|e| invalid(e.to_string()))?;
    Ok(key)
}

/// Verifies that `signature` (a file) is a valid detached signature over `data` (a file) by one
/// of `allowed` (fingerprints, pinned in `pinned`). Returns the fingerprint of the primary key
/// that signed. Blocking: reads `data` once.
pub fn verify(
    pinned: &BTreeMap<String, PathBuf>,
    allowed: &[String],
    data: &Path,
    data_name: &str,
    signature: &Path,
    signature_name: &str,
) -> Result<String, SignatureError> {
    let sig = read_signature(signature, signature_name)?;
    let allowed: Vec<String> = allowed.iter().map(|k| normalize_fingerprint(k)).collect();
    let pinned_allowed: Vec<(&String, &PathBuf)> = allowed
        .iter()
        .filter_map(|fpr| {
            pinned
                .iter()
                .find(|(k, _)| normalize_fingerprint(k) == *fpr)
                .map(|(_, path)| (fpr, path))
        })
        .collect();
    if pinned_allowed.is_empty() {
        return Err(SignatureError::NotPinned { keys: allowed });
    }
    let issuer_fprs: Vec<String> = sig
        .signature
        .issuer_fingerprint()
        .into_iter()
        .map(|f| normalize_fingerprint(&f.to_string()))
        .collect();
    let issuer_ids: Vec<String> = sig
        .signature
        .issuer_key_id()
        .into_iter()
        .map(|id| normalize_fingerprint(&id.to_string()))
        .collect();
    let is_issuer = |fpr: &str, id: &str| {
        issuer_fprs.iter().any(|f| f == fpr) || issuer_ids.iter().any(|i| i == id)
    };
    for (fpr, path) in pinned_allowed {
        let key = load_key(fpr, path)?;
        let verified = if is_issuer(&fpr_of(&key.primary_key), &key_id_of(&key.primary_key)) {
            Some(verify_with(&sig, &key.primary_key, data))
        } else {
            key.public_subkeys
                .iter()
                .filter(|sub| sub.signatures.iter().any(|s| s.key_flags().sign()))
                .find(|sub| is_issuer(&fpr_of(&sub.key), &key_id_of(&sub.key)))
                .map(|sub| verify_with(&sig, &sub.key, data))
        };
        match verified {
            Some(Ok(())) => return Ok(fpr.clone()),
            Some(Err(message)) => {
                return Err(SignatureError::Bad {
                    signed: data_name.into(),
                    key: fpr.clone(),
                    message,
                });
            }
            None => continue,
        }
    }
    let issuer = issuer_fprs
        .first()
        .or(issuer_ids.first())
        .cloned()
        .unwrap_or_else(|| "an unnamed key".into());
    Err(SignatureError::UnknownKey {
        signed: data_name.into(),
        issuer,
        allowed,
    })
}

fn verify_with(
    sig: &DetachedSignature,
    key: &impl pgp::types::VerifyingKey,
    data: &Path,
) -> Result<(), String> {
    let file = std::fs::File::open(data).map_err(|e| e.to_string())?;
    sig.signature
        .verify(key, BufReader::new(file))
        .map_err(|e| e.to_string())
}

fn read_signature(path: &Path, name: &str) -> Result<DetachedSignature, SignatureError> {
    let read = |source| SignatureError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    if file.metadata().map_err(read)?.len() > MAX_SIGNATURE_BYTES {
        return Err(SignatureError::TooBig {
            artifact: name.into(),
        });
    }
    DetachedSignature::from_reader_single(BufReader::new(file))
        .map(|(sig, _)| sig)
        .map_err(|e| SignatureError::Unparsable {
            artifact: name.into(),
            message: e.to_string(),
        })
}
