//! End-to-end tests: the real `pinpost` binary as daemon and as loopback SMSC, over
//! loopback TCP, with temp state directories.

mod api;
mod caps_callbacks;
mod cli;
mod delivery;
mod email;
mod fax;
mod harness;
mod push;
mod registry;
mod reload;
mod systemd;
mod vouchers;
