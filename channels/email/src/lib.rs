//! E-mail channel for pinpost: the PIN notice goes to the subscriber's PC as an
//! OpenPGP-encrypted PGP/MIME message (RFC 3156), submitted over SMTP with TLS.
//!
//! Layout:
//! - [`config`] — [`EmailConfig`], [`Tls`], [`DkimConfig`] and their validation.
//! - [`keys`] — [`KeyLookup`], how the channel finds a recipient's OpenPGP key (the daemon
//!   backs it with its subscriber registry), [`EmailDevice`] and [`MemoryKeyLookup`].
//! - `openpgp` — checking the recipient's key and encrypting to it (rPGP).
//! - `mime` — the message on the wire: PGP/MIME, or text/plain for a device that allows it;
//!   Message-IDs; DKIM signing (lettre).
//! - `pool` — opening SMTP connections (STARTTLS or implicit TLS, never plaintext; AUTH),
//!   one mail transaction with each step classified, the idle-connection pool.
//! - [`reply`] — classifying SMTP replies into `SendError`, the queue id of a 250 reply.
//! - `channel` — [`EmailChannel`]: `Channel` for the pool, the health check, shutdown.
//!
//! Tests: unit tests in each module; `tests/smtp_aiosmtpd.rs` runs the channel against a real
//! SMTP server (Python `aiosmtpd`, `peers/email/smtp_server.py`) and decrypts what it received
//! with GnuPG. See `README.md`.

mod channel;
pub mod config;
pub mod keys;
mod mime;
mod openpgp;
mod pool;
pub mod reply;

pub use channel::EmailChannel;
pub use config::{ConfigError, DkimAlgorithm, DkimConfig, EmailConfig, Tls};
pub use keys::{EmailDevice, KeyLookup, MemoryKeyLookup};
pub use reply::{Stage, classify_reply, parse_queue_id};
