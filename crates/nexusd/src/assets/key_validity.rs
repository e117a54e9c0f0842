//! Whether a pinned key may vouch for a data signature: the layer rPGP leaves to applications
//! (it checks that signatures verify, not what they mean). The pin in nexus.toml says which key
//! the operator trusts; these rules refuse what apt and gpgv would refuse from that key.
//!
//! - Algorithms: a data signature hashed with MD5, SHA-1 or RIPEMD-160 is refused, and so is
//!   an RSA or DSA primary key or signing subkey shorter than 2048 bits. Checked before the
//!   signature is verified.
//! - The signature's own times: it must have a creation time, not after the key's (or
//!   subkey's) creation, at most a day in the future (clock skew), and its signature
//!   expiration time (if any) must not have passed.
//! - Revocation: a key revocation signature on the primary key, issued by it and verifying,
//!   makes every signature by the key and its subkeys refused; a subkey revocation by the
//!   primary does the same for that subkey. Soft reasons (key superseded, key retired) keep
//!   signatures made before the revocation valid; any other reason, or none, refuses all.
//! - Expiry: the primary key's expiration time comes from its newest valid self-signature
//!   (user ID certification or direct key signature), a subkey's from its newest valid
//!   binding; a signing key expired now is refused (apt's `EXPKEYSIG`), even for signatures it
//!   made while valid.
//! - A signing subkey must carry the sign flag in its newest valid binding.

use std::path::Path;
use std::time::SystemTime;

use pgp::composed::{SignedPublicKey, SignedPublicSubKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{RevocationCode, Signature, SignatureType};
use pgp::ser::Serialize;
use pgp::types::{KeyDetails, PublicParams, Tag, Timestamp};

use super::signature::{SignatureError, normalize_fingerprint};

/// How far in the future a signature's creation time may lie (clocks disagree).
pub const MAX_CLOCK_SKEW_SECS: u32 = 24 * 60 * 60;
/// The shortest RSA or DSA key accepted, in bits.
pub const MIN_RSA_DSA_BITS: u32 = 2048;

/// Which key of a pinned key a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Key,
    SigningSubkey,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Key => "key",
            Self::SigningSubkey => "signing subkey",
        })
    }
}

/// A moment in OpenPGP's seconds since the epoch, shown as RFC 3339 (wider than rPGP's
/// `Timestamp`: an expiry is a creation time plus a lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date(pub u64);

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(self.0);
        humantime::format_rfc3339_seconds(t).fmt(f)
    }
}

/// The key a data signature names as its issuer.
#[derive(Clone, Copy)]
pub enum Signer<'a> {
    Primary,
    Subkey(&'a SignedPublicSubKey),
}

/// What the checks name in their errors.
pub struct Context<'a> {
    /// The signed artifact.
    pub signed: &'a str,
    /// The pinned primary fingerprint.
    pub key: &'a str,
    /// The pinned key file.
    pub path: &'a Path,
}

/// Refuses weak hashes and short RSA/DSA keys; run before the signature is verified.
pub fn check_algorithms(
    ctx: &Context<'_>,
    key: &SignedPublicKey,
    signer: Signer<'_>,
    sig: &Signature,
) -> Result<(), SignatureError> {
    if let Some(hash) = sig.hash_alg().filter(|h| is_weak_hash(*h)) {
        return Err(SignatureError::WeakHash {
            signed: ctx.signed.into(),
            key: ctx.key.into(),
            algorithm: hash.to_string(),
        });
    }
    let mut keys = vec![(
        Role::Key,
        key.primary_key.public_params(),
        ctx.key.to_owned(),
    )];
    if let Signer::Subkey(sub) = signer {
        keys.push((
            Role::SigningSubkey,
            sub.key.public_params(),
            fpr_of(&sub.key),
        ));
    }
    for (role, params, fingerprint) in keys {
        if let Some((algorithm, bits)) = modulus_bits(params).filter(|(_, b)| is_short(*b)) {
            return Err(SignatureError::WeakKey {
                signed: ctx.signed.into(),
                role,
                key: fingerprint,
                algorithm,
                bits,
            });
        }
    }
    Ok(())
}

/// MD5, SHA-1 and RIPEMD-160: collisions are practical or near enough (apt refuses SHA-1).
pub fn is_weak_hash(hash: HashAlgorithm) -> bool {
    matches!(
        hash,
        HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160
    )
}

/// Whether an RSA or DSA key of `bits` is too short.
pub fn is_short(bits: u32) -> bool {
    bits < MIN_RSA_DSA_BITS
}

/// The algorithm and size of an RSA or DSA key (the modulus, or DSA's `p`): the bit count of
/// the first MPI of its public parameters. `None` for other algorithms, whose sizes are fixed.
pub fn modulus_bits(params: &PublicParams) -> Option<(&'static str, u32)> {
    let (algorithm, bytes) = match params {
        PublicParams::RSA(p) => ("RSA", p.to_bytes()),
        PublicParams::DSA(p) => ("DSA", p.to_bytes()),
        _ => return None,
    };
    let bytes = bytes.ok()?;
    let prefix = bytes.first_chunk::<2>()?;
    Some((algorithm, u32::from(u16::from_be_bytes(*prefix))))
}

/// Whether `key` (and `signer`, a subkey of it) may vouch, at `now`, for `sig`, which
/// verified.
pub fn check_validity(
    ctx: &Context<'_>,
    key: &SignedPublicKey,
    signer: Signer<'_>,
    sig: &Signature,
    now: Timestamp,
) -> Result<(), SignatureError> {
    let Some(made) = sig.created() else {
        return Err(SignatureError::Bad {
            signed: ctx.signed.into(),
            key: ctx.key.into(),
            message: "the signature has no creation time".into(),
        });
    };
    check_signature_times(ctx, sig, made, now)?;

    let primary = &key.primary_key;
    let revocations = key
        .details
        .revocation_signatures
        .iter()
        .filter(|r| r.typ() == Some(SignatureType::KeyRevocation))
        .filter(|r| r.verify_key(primary).is_ok());
    check_revocations(ctx, Role::Key, ctx.key, revocations, made)?;
    check_created(ctx, Role::Key, ctx.key, primary.created_at(), made)?;
    let expires = newest_self_signature(key).and_then(|s| s.key_expiration_time());
    check_expiry(
        ctx,
        Role::Key,
        ctx.key,
        primary.created_at(),
        expires.map(|d| d.as_secs()),
        now,
    )?;

    let Signer::Subkey(sub) = signer else {
        return Ok(());
    };
    let fingerprint = fpr_of(&sub.key);
    let binding = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
        .filter(|s| s.verify_subkey_binding(primary, &sub.key).is_ok())
        .max_by_key(|s| s.created().map(Timestamp::as_secs));
    if !binding.is_some_and(|b| b.key_flags().sign()) {
        return Err(SignatureError::NotSigningKey {
            signed: ctx.signed.into(),
            subkey: fingerprint,
            key: ctx.key.into(),
        });
    }
    let revocations = sub
        .signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
        .filter(|s| s.verify_subkey_binding(primary, &sub.key).is_ok());
    check_revocations(ctx, Role::SigningSubkey, &fingerprint, revocations, made)?;
    check_created(
        ctx,
        Role::SigningSubkey,
        &fingerprint,
        sub.key.created_at(),
        made,
    )?;
    let expires = binding.and_then(|b| b.key_expiration_time());
    check_expiry(
        ctx,
        Role::SigningSubkey,
        &fingerprint,
        sub.key.created_at(),
        expires.map(|d| d.as_secs()),
        now,
    )
}

fn check_signature_times(
    ctx: &Context<'_>,
    sig: &Signature,
    made: Timestamp,
    now: Timestamp,
) -> Result<(), SignatureError> {
    if u64::from(made.as_secs()) > u64::from(now.as_secs()) + u64::from(MAX_CLOCK_SKEW_SECS) {
        return Err(SignatureError::SignedInFuture {
            signed: ctx.signed.into(),
            key: ctx.key.into(),
            made: Date(u64::from(made.as_secs())),
        });
    }
    // A signature expiration time of zero means none.
    let lifetime = sig.signature_expiration_time().map(|d| d.as_secs());
    if let Some(lifetime) = lifetime.filter(|l| *l != 0) {
        let expired = u64::from(made.as_secs()) + u64::from(lifetime);
        if expired <= u64::from(now.as_secs()) {
            return Err(SignatureError::SignatureExpired {
                signed: ctx.signed.into(),
                key: ctx.key.into(),
                expired: Date(expired),
            });
        }
    }
    Ok(())
}

fn check_created(
    ctx: &Context<'_>,
    role: Role,
    fingerprint: &str,
    created: Timestamp,
    made: Timestamp,
) -> Result<(), SignatureError> {
    if made.as_secs() < created.as_secs() {
        return Err(SignatureError::SignedBeforeKey {
            signed: ctx.signed.into(),
            role,
            key: fingerprint.into(),
            made: Date(u64::from(made.as_secs())),
            created: Date(u64::from(created.as_secs())),
        });
    }
    Ok(())
}

/// The first revocation that applies to a signature made at `made`.
fn check_revocations<'s>(
    ctx: &Context<'_>,
    role: Role,
    fingerprint: &str,
    revocations: impl Iterator<Item = &'s Signature>,
    made: Timestamp,
) -> Result<(), SignatureError> {
    for revocation in revocations {
        let code = revocation.revocation_reason_code().copied();
        let soft = matches!(
            code,
            Some(RevocationCode::KeySuperseded | RevocationCode::KeyRetired)
        );
        // A revocation without a creation time is taken as dating from the start.
        let revoked = revocation.created().map_or(0, Timestamp::as_secs);
        if soft && made.as_secs() < revoked {
            continue;
        }
        return Err(SignatureError::Revoked {
            signed: ctx.signed.into(),
            role,
            key: fingerprint.into(),
            revoked: Date(u64::from(revoked)),
            reason: reason(code, revocation.revocation_reason_string()),
            made: Date(u64::from(made.as_secs())),
            rule: if soft {
                "a key retired or superseded vouches only for signatures made before then"
            } else {
                "a key revoked for this reason vouches for no signature"
            },
        });
    }
    Ok(())
}

/// `lifetime` is the key expiration time, in seconds after `created`; zero means none.
fn check_expiry(
    ctx: &Context<'_>,
    role: Role,
    fingerprint: &str,
    created: Timestamp,
    lifetime: Option<u32>,
    now: Timestamp,
) -> Result<(), SignatureError> {
    let Some(lifetime) = lifetime.filter(|l| *l != 0) else {
        return Ok(());
    };
    let expired = u64::from(created.as_secs()) + u64::from(lifetime);
    if expired <= u64::from(now.as_secs()) {
        return Err(SignatureError::KeyExpired {
            signed: ctx.signed.into(),
            role,
            key: fingerprint.into(),
            expired: Date(expired),
            path: ctx.path.to_owned(),
        });
    }
    Ok(())
}

/// The primary key's newest self-signature that verifies: a certification of one of its user
/// IDs, or a direct key signature. Its key expiration time is the key's.
fn newest_self_signature(key: &SignedPublicKey) -> Option<&Signature> {
    let primary = &key.primary_key;
    let certifications = key.details.users.iter().flat_map(|user| {
        user.signatures
            .iter()
            .filter(|s| s.is_certification() && s.typ() != Some(SignatureType::CertRevocation))
            .filter(move |s| {
                s.verify_certification(primary, Tag::UserId, &user.id)
                    .is_ok()
            })
    });
    let direct = key
        .details
        .direct_signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::Key))
        .filter(|s| s.verify_key(primary).is_ok());
    certifications
        .chain(direct)
        .max_by_key(|s| s.created().map(Timestamp::as_secs))
}

fn reason(code: Option<RevocationCode>, comment: Option<&pgp::bytes::Bytes>) -> String {
    let mut text = match code {
        None => "no reason given".to_owned(),
        Some(RevocationCode::NoReason) => "no reason specified".to_owned(),
        Some(RevocationCode::KeySuperseded) => "key superseded".to_owned(),
        Some(RevocationCode::KeyCompromised) => "key compromised".to_owned(),
        Some(RevocationCode::KeyRetired) => "key retired".to_owned(),
        Some(other) => format!("reason code {}", u8::from(other)),
    };
    let comment = comment.map(|c| String::from_utf8_lossy(c).trim().to_owned());
    if let Some(comment) = comment.filter(|c| !c.is_empty()) {
        text.push_str(&format!(
            ": {:?}",
            comment.chars().take(200).collect::<String>()
        ));
    }
    text
}

fn fpr_of(key: &impl KeyDetails) -> String {
    normalize_fingerprint(&key.fingerprint().to_string())
}

#[cfg(test)]
#[path = "key_validity_tests.rs"]
mod tests;
