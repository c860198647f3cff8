//! Encrypting the PIN notice to the subscriber's OpenPGP key with rPGP.
//!
//! The key is a transferable public key, ASCII-armored. Every self-signature is verified; a
//! revoked or expired primary key is refused. The encryption key is the newest subkey whose
//! latest binding signature is valid, unexpired, not revoked and flagged for encryption (the
//! primary key itself only when no subkey qualifies and its own flags allow it). The message
//! is a SEIPD v1 packet (MDC) for v4 keys, as every OpenPGP implementation including GnuPG
//! reads it, and SEIPD v2 (AES-256-OCB) for v6 keys. The cipher is the first of AES-256,
//! AES-192, AES-128 the key prefers, AES-128 when it states no preference. No compression.

use std::time::{SystemTime, UNIX_EPOCH};

use pgp::composed::{
    ArmorOptions, Deserializable, MessageBuilder, SignedPublicKey, SignedPublicSubKey,
};
use pgp::crypto::aead::{AeadAlgorithm, ChunkSize};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{Signature, SignatureType};
use pgp::types::{KeyDetails, KeyVersion};
use rand08::rngs::OsRng;

/// Why a registered key cannot be used. The text names the key by fingerprint, never the
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("not an ASCII-armored OpenPGP public key: {0}")]
    Parse(String),
    #[error("key {0}: a self-signature does not verify: {1}")]
    BadSignature(String, String),
    #[error("key {0} is revoked")]
    Revoked(String),
    #[error("key {0} has expired")]
    Expired(String),
    #[error("key {0} has no usable encryption key")]
    NoEncryptionKey(String),
    #[error("encryption failed: {0}")]
    Encrypt(String),
}

/// Which key of a certificate receives the session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Primary,
    Subkey(usize),
}

/// A parsed, checked recipient certificate.
#[derive(Debug)]
pub(crate) struct RecipientKey {
    cert: SignedPublicKey,
    target: Target,
    sym: SymmetricKeyAlgorithm,
    fingerprint: String,
}

impl RecipientKey {
    /// The primary key's fingerprint, upper-case hex.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The fingerprint of the key the message is encrypted to, upper-case hex.
    pub(crate) fn encryption_fingerprint(&self) -> String {
        match self.target {
            Target::Primary => self.fingerprint.clone(),
            Target::Subkey(i) => hex_upper(self.cert.public_subkeys[i].key.fingerprint()),
        }
    }
}

fn hex_upper(fp: impl std::fmt::Display) -> String {
    fp.to_string().to_ascii_uppercase()
}

fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sig_time(sig: &Signature) -> u64 {
    sig.created().map_or(0, |t| u64::from(t.as_secs()))
}

/// Parse and check `armored` at the instant `now`.
pub(crate) fn recipient_key(armored: &str, now: SystemTime) -> Result<RecipientKey, KeyError> {
    let (cert, _headers) =
        SignedPublicKey::from_string(armored).map_err(|e| KeyError::Parse(e.to_string()))?;
    let fingerprint = hex_upper(cert.primary_key.fingerprint());
    cert.verify_bindings()
        .map_err(|e| KeyError::BadSignature(fingerprint.clone(), e.to_string()))?;
    let now = unix_now(now);

    if !cert.details.revocation_signatures.is_empty() {
        return Err(KeyError::Revoked(fingerprint));
    }

    // The newest self-signature over the primary key (user ids, direct-key) speaks for it.
    let newest_self_sig = cert
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(cert.details.direct_signatures.iter())
        .filter(|s| s.typ() != Some(SignatureType::CertRevocation))
        .max_by_key(|s| sig_time(s));
    let primary_created = u64::from(cert.primary_key.created_at().as_secs());
    if let Some(exp) = newest_self_sig.and_then(|s| s.key_expiration_time())
        && exp.as_secs() != 0
        && primary_created + u64::from(exp.as_secs()) <= now
    {
        return Err(KeyError::Expired(fingerprint));
    }

    let usable_subkey = |sk: &SignedPublicSubKey| -> bool {
        if sk
            .signatures
            .iter()
            .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
        {
            return false;
        }
        let Some(binding) = sk
            .signatures
            .iter()
            .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
            .max_by_key(|s| sig_time(s))
        else {
            return false;
        };
        let flags = binding.key_flags();
        if !(flags.encrypt_comms() || flags.encrypt_storage()) {
            return false;
        }
        if !sk.key.algorithm().can_encrypt() {
            return false;
        }
        let created = u64::from(sk.key.created_at().as_secs());
        match binding.key_expiration_time() {
            Some(exp) if exp.as_secs() != 0 => created + u64::from(exp.as_secs()) > now,
            _ => true,
        }
    };
    let target = cert
        .public_subkeys
        .iter()
        .enumerate()
        .filter(|(_, sk)| usable_subkey(sk))
        .max_by_key(|(_, sk)| sk.key.created_at().as_secs())
        .map(|(i, _)| Target::Subkey(i))
        .or_else(|| {
            let flags = newest_self_sig?.key_flags();
            ((flags.encrypt_comms() || flags.encrypt_storage())
                && cert.primary_key.algorithm().can_encrypt())
            .then_some(Target::Primary)
        })
        .ok_or_else(|| KeyError::NoEncryptionKey(fingerprint.clone()))?;

    let preferred = newest_self_sig.map_or(&[][..], |s| s.preferred_symmetric_algs());
    let sym = [
        SymmetricKeyAlgorithm::AES256,
        SymmetricKeyAlgorithm::AES192,
        SymmetricKeyAlgorithm::AES128,
    ]
    .into_iter()
    .find(|a| preferred.contains(a))
    .unwrap_or(SymmetricKeyAlgorithm::AES128);

    Ok(RecipientKey {
        cert,
        target,
        sym,
        fingerprint,
    })
}

/// Encrypt `plaintext` (a whole MIME entity) to `key`; returns the ASCII-armored message
/// (`-----BEGIN PGP MESSAGE-----`), CRLF line ends.
pub(crate) fn encrypt(key: &RecipientKey, plaintext: &[u8]) -> Result<String, KeyError> {
    let mut rng = OsRng;
    let builder = MessageBuilder::from_bytes("", plaintext.to_vec());
    let armored = match key.cert.primary_key.version() {
        KeyVersion::V6 => {
            let mut b =
                builder.seipd_v2(&mut rng, key.sym, AeadAlgorithm::Ocb, ChunkSize::default());
            match key.target {
                Target::Primary => b.encrypt_to_key(&mut rng, &key.cert.primary_key),
                Target::Subkey(i) => b.encrypt_to_key(&mut rng, &key.cert.public_subkeys[i]),
            }
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
            b.to_armored_string(rng, ArmorOptions::default())
        }
        _ => {
            let mut b = builder.seipd_v1(&mut rng, key.sym);
            match key.target {
                Target::Primary => b.encrypt_to_key(&mut rng, &key.cert.primary_key),
                Target::Subkey(i) => b.encrypt_to_key(&mut rng, &key.cert.public_subkeys[i]),
            }
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
            b.to_armored_string(rng, ArmorOptions::default())
        }
    }
    .map_err(|e| KeyError::Encrypt(e.to_string()))?;
    // Armor lines are 64 characters; make every line end CRLF for the MIME part.
    let mut out = String::with_capacity(armored.len() + armored.len() / 32);
    for line in armored.lines() {
        out.push_str(line);
        out.push_str("\r\n");
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pgp::composed::{Message, SignedSecretKey};
    use pgp::types::Password;

    pub(crate) const ALICE_PUB: &str = include_str!("../tests/keys/alice.pub.asc");
    const ALICE_SEC: &str = include_str!("../tests/keys/alice.sec.asc");
    const RSA_PUB: &str = include_str!("../tests/keys/rsa.pub.asc");
    const RSA_SEC: &str = include_str!("../tests/keys/rsa.sec.asc");
    const SIGNONLY_PUB: &str = include_str!("../tests/keys/signonly.pub.asc");
    const EXPIRED_PUB: &str = include_str!("../tests/keys/expired.pub.asc");
    const REVOKED_PUB: &str = include_str!("../tests/keys/revoked.pub.asc");

    fn decrypt(armored: &str, secret: &str) -> Vec<u8> {
        let (sec, _) = SignedSecretKey::from_string(secret).unwrap();
        let (msg, _) = Message::from_string(armored).unwrap();
        let mut msg = msg.decrypt(&Password::empty(), &sec).unwrap();
        msg.as_data_vec().unwrap()
    }

    #[test]
    fn round_trip_curve25519_and_rsa() {
        for (public, secret, name) in [(ALICE_PUB, ALICE_SEC, "cv25519"), (RSA_PUB, RSA_SEC, "rsa")]
        {
            let key = recipient_key(public, SystemTime::now()).unwrap();
            assert_ne!(
                key.encryption_fingerprint(),
                key.fingerprint(),
                "{name}: a subkey is chosen"
            );
            let plain = b"Content-Type: text/plain\r\n\r\nPIN 1234567890123456\r\n";
            let armored = encrypt(&key, plain).unwrap();
            assert!(armored.starts_with("-----BEGIN PGP MESSAGE-----\r\n"));
            assert!(armored.ends_with("-----END PGP MESSAGE-----\r\n"));
            assert!(!armored.contains("1234567890123456"));
            assert!(armored.lines().all(|l| l.len() <= 76));
            assert_eq!(decrypt(&armored, secret), plain, "{name}");
        }
    }

    #[test]
    fn unusable_keys_are_refused() {
        let now = SystemTime::now();
        assert!(matches!(
            recipient_key("garbage", now),
            Err(KeyError::Parse(_))
        ));
        assert!(matches!(
            recipient_key(SIGNONLY_PUB, now),
            Err(KeyError::NoEncryptionKey(_))
        ));
        assert!(matches!(
            recipient_key(EXPIRED_PUB, now),
            Err(KeyError::Expired(_))
        ));
        assert!(matches!(
            recipient_key(REVOKED_PUB, now),
            Err(KeyError::Revoked(_))
        ));
        // The expired key was fine while it lasted (2020-01-01 + 1 year).
        let mid_2020 = UNIX_EPOCH + std::time::Duration::from_secs(1_590_000_000);
        recipient_key(EXPIRED_PUB, mid_2020).unwrap();
    }

    #[test]
    fn a_tampered_key_is_refused() {
        // Swap the encryption subkey of one certificate into another: the binding signature
        // no longer verifies.
        let (mut alice, _) = SignedPublicKey::from_string(ALICE_PUB).unwrap();
        let (rsa, _) = SignedPublicKey::from_string(RSA_PUB).unwrap();
        alice.public_subkeys = rsa.public_subkeys.clone();
        let armored = alice.to_armored_string(ArmorOptions::default()).unwrap();
        assert!(matches!(
            recipient_key(&armored, SystemTime::now()),
            Err(KeyError::BadSignature(..))
        ));
    }
}
