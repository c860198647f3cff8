//! Pager channel for pinpost: SNPP (RFC 1861) and TAP/IXO 1.8.
//!
//! Layout:
//! - [`config`] — [`PagerConfig`] (`Snpp` | `Tap`), [`SnppConfig`], [`TapConfig`] and their
//!   validation.
//! - `channel` — [`PagerChannel`], the [`pinpost_channel_core::Channel`] handle, and the actor
//!   task that owns the connection and keeps one session open between pages.
//! - `snpp` — the SNPP client: `PAGE`/`MESS`/`DATA`/`SEND`/`RESE`/`QUIT`/`LOGI` one command
//!   at a time over any `AsyncRead + AsyncWrite`, reply classification, the TCP/TLS connector
//!   (tokio-rustls with ring).
//! - [`tap`] — the TAP client: probe, login, go-ahead, checksummed blocks split with
//!   `<US>`/`<ETB>`, `<ACK>`/`<NAK>`/`<RS>`/`<ESC><EOT>`, logout; the checksum and block
//!   builder are public.
//! - [`serial`] — opening a serial line 7E1 with XON/XOFF (tokio-serial, no libudev).
//! - `text` — the PIN-first trimming convention ([`fit_pin_first`]), character clean-up,
//!   scrubbing of peer replies.
//! - `wire` — a buffered stream with deadlines shared by both protocols.
//! - [`sim`] — a TAP paging-terminal simulator with fault injection, for tests.
//! - `tests/` — the SNPP client against Perl's `Net::SNPP::Server`
//!   (`peers/pager/snpp-server.pl`, TLS through socat), the TAP client against [`sim`] over
//!   `tokio::io::duplex` and over a socat pty pair opened as serial ports.
//!
//! What the driver receives is the rendered text with the PIN on its first line. Texts over
//! the configured length are trimmed from the end, never into the first line (see
//! [`fit_pin_first`]). Neither SNPP levels 1–2 nor TAP return a message reference: the
//! provider reference of an accepted page is generated (`snpp-…`/`tap-…`) and no receipt
//! follows. The text is never logged.

mod channel;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod serial;
pub mod sim;
mod snpp;
pub mod tap;
mod text;
mod wire;

pub use channel::PagerChannel;
pub use config::{ConfigError, PagerConfig, SnppConfig, SnppLogin, SnppMessageCommand, TapConfig};
pub use text::{FitError, fit_pin_first};
