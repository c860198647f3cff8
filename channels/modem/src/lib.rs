//! AT-command engine shared by pinpost's fax and TAP pager drivers.
//!
//! Layout:
//! - [`engine`] — [`Modem`], generic over `AsyncRead + AsyncWrite + Unpin`: commands and
//!   their framed, timed answers, dialling, hanging up, raw data mode.
//! - [`response`] — final result codes ([`FinalResult`]) and [`Response`].
//! - [`dle`] — DLE stuffing and un-stuffing for fax page data.
//! - [`serial`] — [`Modem::open_serial`], the only code that opens a device (tokio-serial,
//!   no libudev).
//!
//! The engine owns no task: a driver's actor owns one `Modem` and calls it. Tests drive it
//! over [`tokio::io::duplex`] or a pty.

pub mod dle;
pub mod engine;
pub mod response;
pub mod serial;

pub use engine::{DataSent, DialMode, Modem, ModemError, ModemOptions, is_dial_string};
pub use response::{FinalResult, Response};
pub use serial::{FlowControl, SerialModem, SerialSettings};
pub use tokio_serial::SerialStream;
