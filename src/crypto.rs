//! Keys and the two primitives PINs need at rest: AEAD encryption (AES-256-GCM) for the
//! copy kept until delivery ends, and a keyed hash (HMAC-SHA256) for anything that must be
//! compared without keeping the secret (idempotency fingerprints, later redemption).
//!
//! One 32-byte master key lives in a file (hex, mode 0600); sub-keys are derived from it
//! per purpose, so the AEAD key is never used as an HMAC key.

use std::fs;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// Derived keys. Cloning shares nothing mutable.
#[derive(Clone)]
pub struct Keys {
    aead: Aes256Gcm,
    fingerprint: HmacSha256,
    pin_hash: HmacSha256,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

/// Write a new random key file (fails if it exists).
pub fn generate_key_file(path: &Path) -> Result<(), KeyError> {
    let err = |message: String| KeyError::File {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
    }
    let mut key = Zeroizing::new([0u8; 32]);
    rand::rng().fill_bytes(key.as_mut());
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| err(format!("cannot create key file: {e}")))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| err(format!("cannot write key file: {e}")))?;
    Ok(())
}

impl Keys {
    /// Load the master key from `path`, creating it first when `generate_missing`.
    pub fn load(path: &Path, generate_missing: bool) -> Result<Keys, KeyError> {
        if generate_missing && !path.exists() {
            generate_key_file(path)?;
        }
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let text = Zeroizing::new(
            fs::read_to_string(path).map_err(|e| err(format!("cannot read PIN key: {e}")))?,
        );
        let mut master = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), master.as_mut())
            .map_err(|_| err("PIN key must be 64 hex characters (32 bytes)".into()))?;
        Ok(Keys::from_master(&master))
    }

    pub fn from_master(master: &[u8; 32]) -> Keys {
        let derive = |label: &[u8]| {
            let mut mac = <HmacSha256 as Mac>::new_from_slice(master).expect("any key length");
            mac.update(label);
            Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()))
        };
        let aead_key = derive(b"pinpost/aead/v1");
        let fp_key = derive(b"pinpost/fingerprint/v1");
        let pin_hash_key = derive(b"pinpost/pin-hash/v1");
        Keys {
            aead: Aes256Gcm::new_from_slice(aead_key.as_slice()).expect("32-byte key"),
            fingerprint: <HmacSha256 as Mac>::new_from_slice(fp_key.as_slice())
                .expect("any key length"),
            pin_hash: <HmacSha256 as Mac>::new_from_slice(pin_hash_key.as_slice())
                .expect("any key length"),
        }
    }

    /// Encrypt a PIN, bound to `aad` (the delivery id), as `nonce || ciphertext+tag`.
    pub fn seal(&self, pin: &SecretString, aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: pin.expose_secret().as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encryption of a short message cannot fail");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypt what [`Keys::seal`] produced for the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<SecretString> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        let plain = Zeroizing::new(
            self.aead
                .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
                .ok()?,
        );
        let s = std::str::from_utf8(&plain).ok()?;
        Some(SecretString::from(s.to_owned()))
    }

    /// The keyed hash a voucher's PIN is looked up by at redemption. Its own key, so a
    /// fingerprint can never be mistaken for a PIN hash.
    pub fn pin_hash(&self, pin: &SecretString) -> [u8; 32] {
        let mut mac = self.pin_hash.clone();
        mac.update(pin.expose_secret().as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A keyed fingerprint of `parts` (each length-prefixed, so boundaries count).
    pub fn fingerprint(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.fingerprint.clone();
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let keys = Keys::from_master(&[7u8; 32]);
        let pin = SecretString::from("4921773055614410".to_owned());
        let sealed = keys.seal(&pin, b"d1");
        assert!(!sealed.windows(16).any(|w| w == b"4921773055614410"));
        assert_eq!(
            keys.open(&sealed, b"d1").unwrap().expose_secret(),
            "4921773055614410"
        );
        assert!(keys.open(&sealed, b"d2").is_none(), "bound to its delivery");
        let other = Keys::from_master(&[8u8; 32]);
        assert!(other.open(&sealed, b"d1").is_none(), "bound to its key");
        assert_ne!(keys.seal(&pin, b"d1"), sealed, "fresh nonce per seal");
    }

    #[test]
    fn fingerprint_is_keyed_and_boundary_aware() {
        let a = Keys::from_master(&[1u8; 32]);
        let b = Keys::from_master(&[2u8; 32]);
        assert_ne!(a.fingerprint(&[b"x"]), b.fingerprint(&[b"x"]));
        assert_ne!(a.fingerprint(&[b"ab", b"c"]), a.fingerprint(&[b"a", b"bc"]));
        assert_eq!(a.fingerprint(&[b"q"]), a.fingerprint(&[b"q"]));
    }

    #[test]
    fn key_file_generated_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/pin.key");
        let k1 = Keys::load(&path, true).unwrap();
        let k2 = Keys::load(&path, true).unwrap();
        assert_eq!(k1.fingerprint(&[b"x"]), k2.fingerprint(&[b"x"]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(Keys::load(&dir.path().join("missing"), false).is_err());
        fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(Keys::load(&dir.path().join("bad"), false).is_err());
    }
}
