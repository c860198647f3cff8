//! The loopback SMSC.
