//! End-to-end tests: the real `pinpost` binary as daemon and as loopback SMSC, over
//! loopback TCP, with temp state directories.

mod api;
mod caps_callbacks;
mod cli;
mod console;
mod delivery;
mod email;
mod fax;
mod harness;
mod metrics;
mod multinode;
mod openapi;
mod push;
mod registry;
mod reload;
mod systemd;
mod vouchers;
