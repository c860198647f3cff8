//! Where the channel finds a subscriber's OpenPGP key: [`KeyLookup`], given at build time so
//! the daemon can back it with its subscriber registry, and [`MemoryKeyLookup`] for tests and
//! small fixed setups.

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;

/// One registered e-mail device, as the daemon's registry would hold it.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailDevice {
    /// The recipient address, exactly as the daemon puts it in `OutboundMessage::address`.
    pub address: String,
    /// The subscriber's OpenPGP public key (transferable public key, ASCII-armored).
    pub openpgp_public_key: Option<String>,
    /// Whether the PIN notice may go unencrypted (over TLS to the submission server only)
    /// when there is no key. Never used when a key is present.
    pub allow_plaintext: bool,
}

impl std::fmt::Debug for EmailDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailDevice")
            .field("address", &self.address)
            .field(
                "openpgp_public_key",
                &self.openpgp_public_key.as_ref().map(|_| "[armored key]"),
            )
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

/// Looks up the key of a recipient address.
///
/// `None`: the address is unknown, or it has no key and plaintext is not allowed; the send
/// fails with `Permanent { code: "no_openpgp_key" }` and nothing is sent.
/// `Some((armored_key, allow_plaintext))`: an empty (or all-whitespace) `armored_key` means
/// the device has no key; it is then sent in plaintext only if `allow_plaintext`. A key that
/// is present but unusable (unparsable, revoked, expired, no encryption-capable key) fails with
/// `Permanent { code: "bad_openpgp_key" }`, whatever `allow_plaintext` says.
#[async_trait]
pub trait KeyLookup: Send + Sync + 'static {
    async fn key_for(&self, address: &str) -> Option<(String, bool)>;
}

/// A [`KeyLookup`] over an in-memory table of [`EmailDevice`]s. Addresses match exactly,
/// except that the domain part is compared case-insensitively.
#[derive(Default)]
pub struct MemoryKeyLookup {
    devices: RwLock<HashMap<String, EmailDevice>>,
}

impl MemoryKeyLookup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_devices(devices: impl IntoIterator<Item = EmailDevice>) -> Self {
        let lookup = Self::new();
        for d in devices {
            lookup.insert(d);
        }
        lookup
    }

    /// Adds or replaces the device with this address.
    pub fn insert(&self, device: EmailDevice) {
        let key = normalize(&device.address);
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, device);
    }

    pub fn remove(&self, address: &str) -> Option<EmailDevice> {
        self.devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&normalize(address))
    }
}

#[async_trait]
impl KeyLookup for MemoryKeyLookup {
    async fn key_for(&self, address: &str) -> Option<(String, bool)> {
        let devices = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let device = devices.get(&normalize(address))?;
        match &device.openpgp_public_key {
            Some(key) if !key.trim().is_empty() => Some((key.clone(), device.allow_plaintext)),
            _ if device.allow_plaintext => Some((String::new(), true)),
            _ => None,
        }
    }
}

fn normalize(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lookup_semantics() {
        let keys = MemoryKeyLookup::with_devices([
            EmailDevice {
                address: "a@Example.NET".into(),
                openpgp_public_key: Some("KEY".into()),
                allow_plaintext: false,
            },
            EmailDevice {
                address: "b@example.net".into(),
                openpgp_public_key: None,
                allow_plaintext: true,
            },
            EmailDevice {
                address: "c@example.net".into(),
                openpgp_public_key: None,
                allow_plaintext: false,
            },
        ]);
        assert_eq!(
            keys.key_for("a@example.net").await,
            Some(("KEY".into(), false))
        );
        assert_eq!(
            keys.key_for("b@example.net").await,
            Some((String::new(), true))
        );
        assert_eq!(keys.key_for("c@example.net").await, None);
        assert_eq!(
            keys.key_for("A@example.net").await,
            None,
            "local part is exact"
        );
        assert_eq!(keys.key_for("nobody@example.net").await, None);
        assert!(keys.remove("a@example.net").is_some());
        assert_eq!(keys.key_for("a@example.net").await, None);
    }
}
