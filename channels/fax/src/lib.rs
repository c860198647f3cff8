//! Fax channel for pinpost: PIN notice pages, T.4 MH encoding, Class 2.0 modems.
//!
//! Layout:
//! - [`page`] — the notice as a 1728-pel page ([`render_page`]): the body convention (first
//!   line = the PIN, large, grouped in fours), DejaVu Sans via `ab_glyph`, 1-bit.
//! - [`mh`] — our T.4 Modified Huffman (1-D) encoder.
//! - [`preview`] — [`render_preview`]: the page as PNG or TIFF Class F.
//! - [`dialplan`] — address → dial string (prefix, E.164 → national/international).
//! - [`class2`] — one call through a Service Class 2.0 modem (T.32) over `pinpost-modem`,
//!   with its failures classified.
//! - [`channel`] — [`FaxChannel`], the `Channel`: a pool of modems, one actor per modem,
//!   redial policy, receipts for confirmed pages.
//! - [`sim`] — a Class 2.0 modem simulator on a pty, for tests.
//!
//! `fonts/` holds DejaVu Sans and DejaVu Sans Bold (Bitstream Vera license, `fonts/LICENSE`).

pub mod channel;
pub mod class2;
pub mod dialplan;
pub mod mh;
pub mod page;
pub mod preview;
pub mod sim;

pub use channel::{ConfigError, FaxChannel, FaxConfig, RedialPolicy};
pub use class2::{CallFailure, CallReport, CallSettings, CallTimeouts, SessionParams};
pub use dialplan::DialPlan;
pub use page::{Bitmap, RenderError, Resolution, render_page};
pub use preview::{PreviewFormat, render_preview};
