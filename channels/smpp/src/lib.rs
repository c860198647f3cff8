//! SMPP for pinpost: the SMS (and USSD) channel driver and the loopback SMSC.
//!
//! Layout:
//! - [`client`] — the driver, a [`pinpost_channel_core::Channel`] over one rusmppc bind with a
//!   window, a TPS limit, reconnect/rebind and receipt parsing.
//! - [`sim`] — the loopback SMSC, a real SMPP server on rusmpp's codec with fault injection;
//!   `pinpost smsc-sim` runs it, tests and benchmarks point the daemon at it.

pub mod client;
#[doc(hidden)]
pub mod fuzzing;
mod gsm;
pub mod sim;
