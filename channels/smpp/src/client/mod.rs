//! The SMPP channel driver.
