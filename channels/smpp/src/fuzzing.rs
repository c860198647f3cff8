//! Entry points for the fuzz targets in `fuzz/` (not a stable API).

use pinpost_channel_core::{ChannelId, Receipt};
use rusmpp::pdus::DeliverSm;
use time::OffsetDateTime;

use crate::client::receipt::{self, Inbound};
use crate::sim::SimConfig;

/// Feeds `input` to one loopback SMSC session as a client's bytes and returns what the SMSC
/// wrote back: responses, generic_nacks and receipts. `cfg.listen` is not used.
pub fn smsc_session(cfg: SimConfig, input: &[u8]) -> std::io::Result<Vec<u8>> {
    crate::sim::replay(cfg, input)
}

/// What the SMS driver makes of a deliver_sm: the receipt, or `None` for a mobile-originated
/// message or a receipt that names no message.
pub fn client_receipt(sm: &DeliverSm) -> Option<Receipt> {
    let channel = ChannelId::new("fuzz");
    match receipt::inbound(&channel, sm, OffsetDateTime::UNIX_EPOCH) {
        Inbound::Receipt(r) => Some(r),
        Inbound::ReceiptWithoutId | Inbound::MobileOriginated => None,
    }
}
