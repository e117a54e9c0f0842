//! The `signature` stage: an OpenPGP detached signature (armored or binary) over an artifact,
//! verified with rPGP (pure Rust) against keys pinned in nexus.toml by fingerprint
//! (`asset_keys`: fingerprint → public key file). A key is never taken from the source being
//! verified: the pipeline names fingerprints, the operator's config supplies the keys, and a key
//! file whose primary fingerprint differs from its pin is refused.
//!
//! What counts: the signature's issuer (fingerprint, else key id) must be the primary key or a
//! subkey of one of the stage's allowed keys; the key's self-signatures and subkey bindings
//! must verify. The pin is the operator's statement of trust, not a promise to ignore what the
//! key's holder said since: expiry, revocation, the signing flag, the signature's own times and
//! weak algorithms are interpreted as apt and gpgv do (rules in `key_validity.rs`), each
//! refusal its own error.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::{KeyDetails, Timestamp};

use super::key_validity::{self, Context, Date, Role, Signer};

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
    #[error(
        "{signed:?} is signed with {algorithm}, a hash too weak to trust (MD5, SHA-1 and RIPEMD-160 are refused) by {key}"
    )]
    WeakHash {
        signed: String,
        key: String,
        algorithm: String,
    },
    #[error(
        "{signed:?} is signed under the {bits}-bit {algorithm} {role} {key}: RSA and DSA keys shorter than {} bits are refused",
        key_validity::MIN_RSA_DSA_BITS
    )]
    WeakKey {
        signed: String,
        role: Role,
        key: String,
        algorithm: &'static str,
        bits: u32,
    },
    #[error(
        "{signed:?} was signed by subkey {subkey} of {key}, whose newest binding does not allow signing"
    )]
    NotSigningKey {
        signed: String,
        subkey: String,
        key: String,
    },
    #[error(
        "{signed:?} was signed on {made} by {role} {key}, which was revoked on {revoked} ({reason}): {rule}"
    )]
    Revoked {
        signed: String,
        role: Role,
        key: String,
        revoked: Date,
        reason: String,
        made: Date,
        rule: &'static str,
    },
    #[error(
        "{signed:?} is signed by {role} {key}, which expired on {expired}; refresh the pinned key file {} (nexus.toml `asset_keys`) from the key's publisher",
        path.display()
    )]
    KeyExpired {
        signed: String,
        role: Role,
        key: String,
        expired: Date,
        path: PathBuf,
    },
    #[error("the signature by {key} over {signed:?} expired on {expired}")]
    SignatureExpired {
        signed: String,
        key: String,
        expired: Date,
    },
    #[error(
        "the signature by {key} over {signed:?} claims to be made on {made}, more than a day from now (check the clock)"
    )]
    SignedInFuture {
        signed: String,
        key: String,
        made: Date,
    },
    #[error(
        "the signature over {signed:?} is dated {made}, before its {role} {key} was created ({created})"
    )]
    SignedBeforeKey {
        signed: String,
        role: Role,
        key: String,
        made: Date,
        created: Date,
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
/// that signed, whose key is valid now (see `key_validity`). Blocking: reads `data` once.
pub fn verify(
    pinned: &BTreeMap<String, PathBuf>,
    allowed: &[String],
    data: &Path,
    data_name: &str,
    signature: &Path,
    signature_name: &str,
) -> Result<String, SignatureError> {
    verify_at(
        pinned,
        allowed,
        data,
        data_name,
        signature,
        signature_name,
        Timestamp::now(),
    )
}

/// [`verify`] with the keys' and signature's validity judged at `now`.
pub(super) fn verify_at(
    pinned: &BTreeMap<String, PathBuf>,
    allowed: &[String],
    data: &Path,
    data_name: &str,
    signature: &Path,
    signature_name: &str,
    now: Timestamp,
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
        let signer = if is_issuer(&fpr_of(&key.primary_key), &key_id_of(&key.primary_key)) {
            Signer::Primary
        } else {
            match key
                .public_subkeys
                .iter()
                .find(|sub| is_issuer(&fpr_of(&sub.key), &key_id_of(&sub.key)))
            {
                Some(sub) => Signer::Subkey(sub),
                None => continue,
            }
        };
        let ctx = Context {
            signed: data_name,
            key: fpr,
            path,
        };
        key_validity::check_algorithms(&ctx, &key, signer, &sig.signature)?;
        let verified = match signer {
            Signer::Primary => verify_with(&sig, &key.primary_key, data),
            Signer::Subkey(sub) => verify_with(&sig, &sub.key, data),
        };
        if let Err(message) = verified {
            return Err(SignatureError::Bad {
                signed: data_name.into(),
                key: fpr.clone(),
                message,
            });
        }
        key_validity::check_validity(&ctx, &key, signer, &sig.signature, now)?;
        return Ok(fpr.clone());
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
