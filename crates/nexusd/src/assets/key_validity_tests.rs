//! Keys and signatures made at test time with rPGP, with chosen creation, expiration and
//! revocation times, verified through `signature::verify_at` as the stage does.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use pgp::bytes::Bytes;
use pgp::composed::{
    ArmorOptions, DetachedSignature, KeyType, SecretKeyParamsBuilder, SignedKeyDetails,
    SignedSecretKey, SubkeyParamsBuilder,
};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{
    KeyFlags, PubKeyInner, PublicKey, RevocationCode, SecretKey, Signature, SignatureConfig,
    SignatureType, Subpacket, SubpacketData, UserId,
};
use pgp::types::{
    Duration, KeyDetails, KeyVersion, Password, SignedUser, SigningKey, Tag, Timestamp,
};

use super::*;
use crate::assets::signature::verify_at;

const DAY: u32 = 24 * 60 * 60;
const DATA: &[u8] = b"0123abcd  vmlinux.gz\n";

fn now() -> u32 {
    Timestamp::now().as_secs()
}

fn ago(days: u32) -> u32 {
    now() - days * DAY
}

/// An Ed25519 key made `created` (seconds), able to sign, with a signing subkey if asked.
fn key(key_type: KeyType, created: u32, subkey: bool) -> SignedSecretKey {
    let subkeys = if subkey {
        vec![
            SubkeyParamsBuilder::default()
                .key_type(KeyType::Ed25519)
                .can_sign(true)
                .created_at(Timestamp::from_secs(created))
                .build()
                .unwrap(),
        ]
    } else {
        vec![]
    };
    SecretKeyParamsBuilder::default()
        .key_type(key_type)
        .can_certify(true)
        .can_sign(true)
        .created_at(Timestamp::from_secs(created))
        .primary_user_id("validity test <test@localhost>".into())
        .subkeys(subkeys)
        .build()
        .unwrap()
        .generate(rand::thread_rng())
        .unwrap()
}

fn ed25519(created: u32) -> SignedSecretKey {
    key(KeyType::Ed25519, created, false)
}

fn with_subkey(created: u32) -> SignedSecretKey {
    key(KeyType::Ed25519, created, true)
}

/// One RSA-2048 key for the tests that need RSA: seconds to make in a debug build.
fn rsa2048() -> &'static SignedSecretKey {
    static KEY: OnceLock<SignedSecretKey> = OnceLock::new();
    KEY.get_or_init(|| key(KeyType::Rsa(2048), ago(10), false))
}

fn subpacket(data: SubpacketData) -> Subpacket {
    Subpacket::regular(data).unwrap()
}

fn created_at(secs: u32) -> Subpacket {
    subpacket(SubpacketData::SignatureCreationTime(Timestamp::from_secs(
        secs,
    )))
}

/// A detached signature over `DATA` by `signer`, made at `made`, valid for `lifetime`.
fn sign(signer: &impl SigningKey, hash: HashAlgorithm, made: u32, lifetime: Option<u32>) -> String {
    let mut config = SignatureConfig::v4(SignatureType::Binary, signer.algorithm(), hash);
    config.hashed_subpackets = vec![
        created_at(made),
        subpacket(SubpacketData::IssuerFingerprint(signer.fingerprint())),
    ];
    if let Some(lifetime) = lifetime {
        config
            .hashed_subpackets
            .push(subpacket(SubpacketData::SignatureExpirationTime(
                Duration::from_secs(lifetime),
            )));
    }
    let signature = config.sign(signer, &Password::empty(), DATA).unwrap();
    DetachedSignature::new(signature)
        .to_armored_string(ArmorOptions::default())
        .unwrap()
}

/// An RSA-1024 key, made from packets: rPGP's key builder refuses to make one.
/// A SHA-256 signature over the data by the key's first subkey, made at `made`.
fn sign_by_subkey(secret: &SignedSecretKey, made: u32) -> String {
    sign(
        &secret.secret_subkeys[0].key,
        HashAlgorithm::Sha256,
        made,
        None,
    )
}

fn assert_revoked(err: &SignatureError, expected: Role) {
    assert!(
        matches!(err, SignatureError::Revoked { role, .. } if *role == expected),
        "{err:?}"
    );
}

fn rsa1024(created: u32) -> SignedSecretKey {
    let (public, secret) = KeyType::Rsa(1024).generate(rand::thread_rng()).unwrap();
    let inner = PubKeyInner::new(
        KeyVersion::V4,
        KeyType::Rsa(1024).to_alg(),
        Timestamp::from_secs(created),
        None,
        public,
    )
    .unwrap();
    let primary = SecretKey::new(PublicKey::from_inner(inner).unwrap(), secret).unwrap();
    let id = UserId::from_str(Default::default(), "short <short@localhost>").unwrap();
    let mut config = SignatureConfig::v4(
        SignatureType::CertPositive,
        primary.algorithm(),
        HashAlgorithm::Sha256,
    );
    config.hashed_subpackets = vec![
        created_at(created),
        subpacket(SubpacketData::IssuerFingerprint(primary.fingerprint())),
    ];
    let certification = config
        .sign_certification(
            &primary,
            primary.public_key(),
            &Password::empty(),
            Tag::UserId,
            &id,
        )
        .unwrap();
    let details = SignedKeyDetails::new(
        vec![],
        vec![],
        vec![SignedUser::new(id, vec![certification])],
        vec![],
    );
    SignedSecretKey::new(primary, details, vec![], vec![])
}

/// Replaces the primary's self-signature by one made at `at` whose key expires `lifetime`
/// after the key's creation.
fn self_sign(secret: &mut SignedSecretKey, at: u32, lifetime: u32) -> Signature {
    let primary = &secret.primary_key;
    let mut flags = KeyFlags::default();
    flags.set_certify(true);
    flags.set_sign(true);
    let mut config = SignatureConfig::v4(
        SignatureType::CertPositive,
        primary.algorithm(),
        HashAlgorithm::Sha256,
    );
    config.hashed_subpackets = vec![
        created_at(at),
        subpacket(SubpacketData::IssuerFingerprint(primary.fingerprint())),
        subpacket(SubpacketData::KeyFlags(flags)),
        subpacket(SubpacketData::KeyExpirationTime(Duration::from_secs(
            lifetime,
        ))),
    ];
    let user = &secret.details.users[0].id;
    config
        .sign_certification(
            primary,
            primary.public_key(),
            &Password::empty(),
            Tag::UserId,
            user,
        )
        .unwrap()
}

/// A binding of the first subkey made at `at`, with the sign flag if `sign`, expiring
/// `lifetime` after the subkey's creation.
fn bind(secret: &SignedSecretKey, at: u32, sign: bool, lifetime: Option<u32>) -> Signature {
    let primary = &secret.primary_key;
    let sub = &secret.secret_subkeys[0].key;
    let mut flags = KeyFlags::default();
    flags.set_sign(sign);
    let mut config = SignatureConfig::v4(
        SignatureType::SubkeyBinding,
        primary.algorithm(),
        HashAlgorithm::Sha256,
    );
    config.hashed_subpackets = vec![
        created_at(at),
        subpacket(SubpacketData::IssuerFingerprint(primary.fingerprint())),
        subpacket(SubpacketData::KeyFlags(flags)),
    ];
    if let Some(lifetime) = lifetime {
        config
            .hashed_subpackets
            .push(subpacket(SubpacketData::KeyExpirationTime(
                Duration::from_secs(lifetime),
            )));
    }
    if sign {
        let back = sub
            .sign_primary_key_binding(rand::thread_rng(), primary.public_key(), &Password::empty())
            .unwrap();
        config
            .hashed_subpackets
            .push(subpacket(SubpacketData::EmbeddedSignature(Box::new(back))));
    }
    config
        .sign_subkey_binding(
            primary,
            primary.public_key(),
            &Password::empty(),
            sub.public_key(),
        )
        .unwrap()
}

fn revocation_config(
    typ: SignatureType,
    secret: &SignedSecretKey,
    code: RevocationCode,
    at: u32,
) -> SignatureConfig {
    let primary = &secret.primary_key;
    let mut config = SignatureConfig::v4(typ, primary.algorithm(), HashAlgorithm::Sha256);
    config.hashed_subpackets = vec![
        created_at(at),
        subpacket(SubpacketData::IssuerFingerprint(primary.fingerprint())),
        subpacket(SubpacketData::RevocationReason(
            code,
            Bytes::from_static(b"test"),
        )),
    ];
    config
}

fn revoke_key(secret: &mut SignedSecretKey, code: RevocationCode, at: u32) {
    let config = revocation_config(SignatureType::KeyRevocation, secret, code, at);
    let primary = &secret.primary_key;
    let revocation = config
        .sign_key(primary, &Password::empty(), primary.public_key())
        .unwrap();
    secret.details.revocation_signatures.push(revocation);
}

fn revoke_subkey(secret: &mut SignedSecretKey, code: RevocationCode, at: u32) {
    let config = revocation_config(SignatureType::SubkeyRevocation, secret, code, at);
    let primary = &secret.primary_key;
    let revocation = config
        .sign_subkey_binding(
            primary,
            primary.public_key(),
            &Password::empty(),
            secret.secret_subkeys[0].key.public_key(),
        )
        .unwrap();
    secret.secret_subkeys[0].signatures.push(revocation);
}

/// Pins `secret`'s public half and verifies `signature` over `DATA` as the stage does, now.
fn verify(secret: &SignedSecretKey, signature: &str) -> Result<String, SignatureError> {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("key.asc");
    let public = secret.to_public_key();
    std::fs::write(
        &key_path,
        public.to_armored_string(ArmorOptions::default()).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("SHA256SUMS"), DATA).unwrap();
    std::fs::write(dir.path().join("SHA256SUMS.asc"), signature).unwrap();
    let fingerprint = fpr_of(&secret.primary_key);
    let pinned = BTreeMap::from([(fingerprint.clone(), key_path)]);
    verify_at(
        &pinned,
        &[fingerprint],
        &dir.path().join("SHA256SUMS"),
        "SHA256SUMS",
        &dir.path().join("SHA256SUMS.asc"),
        "SHA256SUMS.asc",
        Timestamp::now(),
    )
}

#[test]
fn a_current_signature_by_a_valid_key_is_accepted() {
    let secret = ed25519(ago(10));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(1), None);

    let signed_by = verify(&secret, &signature).unwrap();

    assert_eq!(signed_by, fpr_of(&secret.primary_key));
}

#[test]
fn a_signature_by_a_valid_signing_subkey_is_accepted() {
    let secret = with_subkey(ago(10));
    let signature = sign_by_subkey(&secret, ago(1));

    let signed_by = verify(&secret, &signature).unwrap();

    assert_eq!(signed_by, fpr_of(&secret.primary_key));
}

#[test]
fn an_expired_primary_key_is_refused_naming_the_date_and_the_key_file() {
    let mut secret = ed25519(ago(10));
    let certification = self_sign(&mut secret, ago(10), 5 * DAY);
    secret.details.users[0].signatures = vec![certification];
    // Made while the key was valid: apt refuses it all the same (EXPKEYSIG).
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(7), None);

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(
            err,
            SignatureError::KeyExpired {
                role: Role::Key,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&Date(u64::from(ago(5))).to_string()[..10])
            && message.contains("refresh the pinned key file")
            && message.contains("key.asc"),
        "{message}"
    );
}

#[test]
fn a_newer_self_signature_extending_the_expiry_is_the_one_that_counts() {
    let mut secret = ed25519(ago(10));
    let old = self_sign(&mut secret, ago(10), 5 * DAY);
    let extended = self_sign(&mut secret, ago(6), 30 * DAY);
    secret.details.users[0].signatures = vec![extended, old];
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(1), None);

    assert!(verify(&secret, &signature).is_ok());
}

#[test]
fn an_expired_signing_subkey_is_refused() {
    let mut secret = with_subkey(ago(10));
    let binding = bind(&secret, ago(10), true, Some(3 * DAY));
    secret.secret_subkeys[0].signatures = vec![binding];
    let signature = sign_by_subkey(&secret, ago(8));

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(
            err,
            SignatureError::KeyExpired {
                role: Role::SigningSubkey,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_subkey_whose_newest_binding_drops_the_sign_flag_is_refused() {
    let mut secret = with_subkey(ago(10));
    let signing = bind(&secret, ago(10), true, None);
    let not_signing = bind(&secret, ago(2), false, None);
    secret.secret_subkeys[0].signatures = vec![not_signing, signing];
    let signature = sign_by_subkey(&secret, ago(1));

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(err, SignatureError::NotSigningKey { .. }),
        "{err:?}"
    );
}

#[test]
fn a_key_revoked_as_compromised_refuses_signatures_made_before_the_revocation() {
    let mut secret = ed25519(ago(10));
    revoke_key(&mut secret, RevocationCode::KeyCompromised, ago(1));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(5), None);

    let err = verify(&secret, &signature).unwrap_err();

    assert_revoked(&err, Role::Key);
    assert!(err.to_string().contains("key compromised"), "{err}");
}

#[test]
fn a_key_retired_after_the_signature_was_made_still_vouches_for_it() {
    let mut secret = ed25519(ago(10));
    revoke_key(&mut secret, RevocationCode::KeyRetired, ago(1));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(5), None);

    assert!(verify(&secret, &signature).is_ok());
}

#[test]
fn a_key_retired_before_the_signature_was_made_is_refused() {
    let mut secret = ed25519(ago(10));
    revoke_key(&mut secret, RevocationCode::KeyRetired, ago(5));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(1), None);

    let err = verify(&secret, &signature).unwrap_err();

    assert!(matches!(err, SignatureError::Revoked { .. }), "{err:?}");
    assert!(err.to_string().contains("key retired"), "{err}");
}

#[test]
fn a_revoked_signing_subkey_is_refused() {
    let mut secret = with_subkey(ago(10));
    revoke_subkey(&mut secret, RevocationCode::NoReason, ago(1));
    let signature = sign_by_subkey(&secret, ago(5));

    let err = verify(&secret, &signature).unwrap_err();

    assert_revoked(&err, Role::SigningSubkey);
}

#[test]
fn a_revoked_primary_refuses_signatures_by_its_subkeys() {
    let mut secret = with_subkey(ago(10));
    revoke_key(&mut secret, RevocationCode::KeyCompromised, ago(1));
    let signature = sign_by_subkey(&secret, ago(5));

    let err = verify(&secret, &signature).unwrap_err();

    assert_revoked(&err, Role::Key);
}

#[test]
fn a_signature_past_its_own_expiration_is_refused() {
    let secret = ed25519(ago(10));
    let signature = sign(
        &secret.primary_key,
        HashAlgorithm::Sha256,
        ago(3),
        Some(DAY),
    );

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(err, SignatureError::SignatureExpired { .. }),
        "{err:?}"
    );
}

#[test]
fn a_signature_dated_more_than_a_day_ahead_is_refused() {
    let secret = ed25519(ago(10));
    let signature = sign(
        &secret.primary_key,
        HashAlgorithm::Sha256,
        now() + 2 * DAY,
        None,
    );

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(err, SignatureError::SignedInFuture { .. }),
        "{err:?}"
    );
}

#[test]
fn a_signature_dated_before_its_key_was_created_is_refused() {
    let secret = ed25519(ago(2));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(3), None);

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(
            err,
            SignatureError::SignedBeforeKey {
                role: Role::Key,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_sha1_signature_is_refused_naming_the_hash() {
    // Ed25519 cannot sign SHA-1 digests; RSA can.
    let secret = rsa2048();
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha1, ago(1), None);

    let err = verify(secret, &signature).unwrap_err();

    assert!(matches!(err, SignatureError::WeakHash { .. }), "{err:?}");
    assert!(err.to_string().contains("SHA1"), "{err}");
}

#[test]
fn the_same_rsa_key_signing_with_sha256_is_accepted() {
    let secret = rsa2048();
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(1), None);

    assert!(verify(secret, &signature).is_ok());
}

#[test]
fn an_rsa_key_size_is_read_from_its_modulus() {
    let bits = modulus_bits(rsa2048().primary_key.public_params());

    assert_eq!(bits, Some(("RSA", 2048)));
}

#[test]
fn a_signature_by_an_rsa_1024_key_is_refused_naming_its_size() {
    let secret = rsa1024(ago(10));
    let signature = sign(&secret.primary_key, HashAlgorithm::Sha256, ago(1), None);

    let err = verify(&secret, &signature).unwrap_err();

    assert!(
        matches!(
            err,
            SignatureError::WeakKey {
                algorithm: "RSA",
                bits: 1024,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn md5_sha1_and_ripemd160_are_weak_and_sha2_is_not() {
    let weak = [
        HashAlgorithm::Md5,
        HashAlgorithm::Sha1,
        HashAlgorithm::Ripemd160,
        HashAlgorithm::Sha256,
        HashAlgorithm::Sha512,
    ]
    .map(is_weak_hash);

    assert_eq!(weak, [true, true, true, false, false]);
}

#[test]
fn rsa_and_dsa_keys_below_2048_bits_are_short() {
    assert_eq!(
        [1024, 2047, 2048, 4096].map(is_short),
        [true, true, false, false]
    );
}
