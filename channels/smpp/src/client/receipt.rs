//! Delivery receipts: what a deliver_sm says about an earlier submit.
//!
//! The reference comes from the `receipted_message_id` TLV, else from the `id:` field of the
//! receipt text; the status from the `message_state` TLV, else from `stat:`; the error from
//! `err:`, else from the `network_error_code` TLV. The text after `text:` echoes the start of
//! the original message (the PIN): it is never parsed, kept or logged.

use pinpost_channel_core::{ChannelId, Receipt, ReceiptStatus};
use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::TlvValue;
use time::OffsetDateTime;

/// The fields of an SMSC receipt text
/// (`id:X sub:001 dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DELIVRD err:000`).
/// Every field is optional; values are passed through as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedReceipt {
    pub id: Option<String>,
    pub sub: Option<String>,
    pub dlvrd: Option<String>,
    pub submit_date: Option<String>,
    pub done_date: Option<String>,
    pub stat: Option<String>,
    pub err: Option<String>,
}

impl ParsedReceipt {
    /// The status the `stat:` field names, if there is one.
    pub fn status(&self) -> Option<ReceiptStatus> {
        self.stat.as_deref().map(stat_to_status)
    }
}

/// The keys of a receipt text, in the spelling we match against (lower case, `_` → space).
const KEYS: [&str; 7] = [
    "id",
    "sub",
    "dlvrd",
    "submit date",
    "done date",
    "stat",
    "err",
];

/// Parse an SMSC receipt text. Keys match regardless of case and of spaces around `:`;
/// fields may be missing or in any order; everything from `text:` on is ignored. Returns
/// `None` when neither an `id:` nor a `stat:` field is present.
pub fn parse_receipt_text(text: &[u8]) -> Option<ParsedReceipt> {
    // Receipt texts are ASCII; map each octet to one char so byte offsets stay aligned.
    let raw: String = text.iter().map(|&b| char::from(b)).collect();
    let folded: String = raw
        .chars()
        .map(|c| match c {
            '_' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    // Nothing at or after `text:` is looked at.
    let end = find_key(&folded, "text", folded.len()).map_or(folded.len(), |(at, _)| at);

    let mut out = ParsedReceipt::default();
    for key in KEYS {
        let Some((_, value_at)) = find_key(&folded, key, end) else {
            continue;
        };
        let value = value_token(&raw[value_at..end]);
        let slot = match key {
            "id" => &mut out.id,
            "sub" => &mut out.sub,
            "dlvrd" => &mut out.dlvrd,
            "submit date" => &mut out.submit_date,
            "done date" => &mut out.done_date,
            "stat" => &mut out.stat,
            _ => &mut out.err,
        };
        *slot = value;
    }
    if out.id.is_none() && out.stat.is_none() {
        return None;
    }
    Some(out)
}

/// Find `key` followed by optional spaces and `:` at a word start, before `end`. Returns the
/// key's offset and the offset just after the colon.
fn find_key(folded: &str, key: &str, end: usize) -> Option<(usize, usize)> {
    let hay = &folded[..end];
    let mut from = 0;
    while let Some(pos) = hay[from..].find(key) {
        let at = from + pos;
        from = at + 1;
        let word_start = at == 0 || hay[..at].ends_with(|c: char| c.is_ascii_whitespace());
        if !word_start {
            continue;
        }
        let after = &hay[at + key.len()..];
        let trimmed = after.trim_start_matches([' ', '\t']);
        if let Some(rest) = trimmed.strip_prefix(':') {
            let value_at = end - rest.len();
            return Some((at, value_at));
        }
    }
    None
}

/// The first whitespace-delimited token, unless it is the next `key:` (an empty field).
fn value_token(s: &str) -> Option<String> {
    let token = s.split_ascii_whitespace().next()?;
    if let Some((k, _)) = token.split_once(':') {
        let k = k.to_ascii_lowercase();
        if KEYS.contains(&k.as_str()) || k == "submit" || k == "done" || k == "text" {
            return None;
        }
    }
    Some(token.to_owned())
}

/// Map a `stat:` value to a [`ReceiptStatus`].
pub fn stat_to_status(stat: &str) -> ReceiptStatus {
    match stat.trim().to_ascii_uppercase().as_str() {
        "DELIVRD" | "DELIVERED" => ReceiptStatus::Delivered,
        "UNDELIV" | "UNDELIVERABLE" | "REJECTD" | "REJECTED" | "DELETED" => {
            ReceiptStatus::Undeliverable
        }
        "EXPIRED" => ReceiptStatus::Expired,
        "ENROUTE" | "ACCEPTD" | "ACCEPTED" | "SCHEDULED" => ReceiptStatus::Pending,
        _ => ReceiptStatus::Unknown,
    }
}

/// Map a `message_state` TLV value to a [`ReceiptStatus`].
pub fn message_state_to_status(state: u8) -> ReceiptStatus {
    match state {
        2 => ReceiptStatus::Delivered,
        3 => ReceiptStatus::Expired,
        4 | 5 | 8 => ReceiptStatus::Undeliverable,
        0 | 1 | 6 => ReceiptStatus::Pending,
        _ => ReceiptStatus::Unknown,
    }
}

/// What an incoming deliver_sm is.
#[derive(Debug)]
pub(crate) enum Inbound {
    Receipt(Receipt),
    /// Marked as a receipt but names no message id: nothing to correlate.
    ReceiptWithoutId,
    /// A mobile-originated message (or anything else): answered and dropped.
    MobileOriginated,
}

/// The esm_class message types that carry a receipt: SMSC delivery receipt (0x04), SME
/// delivery acknowledgement (0x08), intermediate delivery notification (0x20).
fn is_receipt_type(esm_class: u8) -> bool {
    matches!(esm_class & 0x3C, 0x04 | 0x08 | 0x20)
}

/// USSD confirmations that stand for a delivered push: USSR confirm (18), USSN confirm (19).
fn is_ussd_confirm(op: u8) -> bool {
    matches!(op, 18 | 19)
}

/// Classify a deliver_sm and, for a receipt, build the [`Receipt`].
/// Whether a deliver_sm belongs to USSD (it carries the ussd_service_op TLV).
pub(crate) fn is_ussd(sm: &DeliverSm) -> bool {
    sm.tlvs()
        .iter()
        .any(|t| matches!(t.value(), Some(TlvValue::UssdServiceOp(_))))
}

pub(crate) fn inbound(channel: &ChannelId, sm: &DeliverSm, now: OffsetDateTime) -> Inbound {
    let mut receipted_id: Option<String> = None;
    let mut message_state: Option<u8> = None;
    let mut network_error: Option<(u8, u16)> = None;
    let mut ussd_op: Option<u8> = None;
    let mut payload: Option<Vec<u8>> = None;
    for tlv in sm.tlvs() {
        match tlv.value() {
            Some(TlvValue::ReceiptedMessageId(id)) => {
                let id = id.as_str().trim();
                if !id.is_empty() {
                    receipted_id = Some(id.to_owned());
                }
            }
            Some(TlvValue::MessageState(state)) => message_state = Some(u8::from(*state)),
            Some(TlvValue::NetworkErrorCode(code)) => {
                network_error = Some((u8::from(code.network_type), code.error_code))
            }
            Some(TlvValue::UssdServiceOp(op)) => ussd_op = Some(u8::from(*op)),
            Some(TlvValue::MessagePayload(p)) => payload = Some(p.value.to_vec()),
            _ => {}
        }
    }
    let esm_class = u8::from(sm.esm_class);

    if let (Some(op), Some(id)) = (ussd_op, receipted_id.as_ref())
        && is_ussd_confirm(op)
    {
        return Inbound::Receipt(Receipt {
            channel: channel.clone(),
            provider_ref: id.clone(),
            status: ReceiptStatus::Delivered,
            error_code: None,
            received_at: now,
        });
    }

    if !is_receipt_type(esm_class) && receipted_id.is_none() {
        return Inbound::MobileOriginated;
    }

    let text: &[u8] = if sm.short_message().is_empty() {
        payload.as_deref().unwrap_or_default()
    } else {
        sm.short_message().as_ref()
    };
    let parsed = parse_receipt_text(text).unwrap_or_default();

    let Some(provider_ref) = receipted_id.or(parsed.id.clone()) else {
        return Inbound::ReceiptWithoutId;
    };
    let status = message_state
        .map(message_state_to_status)
        .or_else(|| parsed.status())
        .unwrap_or(ReceiptStatus::Unknown);
    let error_code = parsed
        .err
        .clone()
        .or_else(|| network_error.map(|(network_type, code)| format!("{network_type}/{code}")));
    Inbound::Receipt(Receipt {
        channel: channel.clone(),
        provider_ref,
        status,
        error_code,
        received_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::types::{COctetString, OctetString};
    use rusmpp::values::{
        ErrorCodeNetworkType, EsmClass, MessageState, NetworkErrorCode, UssdServiceOp,
    };

    const STANDARD: &[u8] = b"id:0A1B2C3D sub:001 dlvrd:001 submit date:2501311200 \
done date:2501311201 stat:DELIVRD err:000 text:Your PIN 73059177";

    #[test]
    fn the_standard_text_parses() {
        let r = parse_receipt_text(STANDARD).unwrap();
        assert_eq!(r.id.as_deref(), Some("0A1B2C3D"));
        assert_eq!(r.sub.as_deref(), Some("001"));
        assert_eq!(r.dlvrd.as_deref(), Some("001"));
        assert_eq!(r.submit_date.as_deref(), Some("2501311200"));
        assert_eq!(r.done_date.as_deref(), Some("2501311201"));
        assert_eq!(r.stat.as_deref(), Some("DELIVRD"));
        assert_eq!(r.err.as_deref(), Some("000"));
        assert_eq!(r.status(), Some(ReceiptStatus::Delivered));
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("73059177"),
            "the echoed text must not be kept"
        );
    }

    #[test]
    fn case_spacing_order_and_missing_fields_are_tolerated() {
        let r = parse_receipt_text(b"ID: 12345  STAT : undeliv   Err:  069").unwrap();
        assert_eq!(r.id.as_deref(), Some("12345"));
        assert_eq!(r.stat.as_deref(), Some("undeliv"));
        assert_eq!(r.err.as_deref(), Some("069"));
        assert_eq!(r.status(), Some(ReceiptStatus::Undeliverable));
        assert_eq!(r.sub, None);

        let r = parse_receipt_text(b"stat:EXPIRED id:ff00 Submit_Date:2501010000").unwrap();
        assert_eq!(r.id.as_deref(), Some("ff00"));
        assert_eq!(r.submit_date.as_deref(), Some("2501010000"));
        assert_eq!(r.status(), Some(ReceiptStatus::Expired));

        // No text: field at all.
        let r = parse_receipt_text(b"id:7 sub:001 dlvrd:000 stat:REJECTD err:0x0b").unwrap();
        assert_eq!(r.status(), Some(ReceiptStatus::Undeliverable));
        assert_eq!(r.err.as_deref(), Some("0x0b"));
    }

    #[test]
    fn ids_pass_through_raw_hex_or_decimal() {
        for id in [
            "000123",
            "7B",
            "7b",
            "123456789012345678901234567890",
            "a-b_c",
        ] {
            let text = format!("id:{id} stat:DELIVRD");
            let r = parse_receipt_text(text.as_bytes()).unwrap();
            assert_eq!(r.id.as_deref(), Some(id));
        }
    }

    #[test]
    fn an_empty_field_does_not_swallow_the_next_key() {
        let r = parse_receipt_text(b"id: stat:DELIVRD err:").unwrap();
        assert_eq!(r.id, None);
        assert_eq!(r.stat.as_deref(), Some("DELIVRD"));
        assert_eq!(r.err, None);
    }

    #[test]
    fn keys_inside_the_message_text_are_ignored() {
        let r = parse_receipt_text(b"id:1 stat:DELIVRD text:id:999 stat:UNDELIV err:5").unwrap();
        assert_eq!(r.id.as_deref(), Some("1"));
        assert_eq!(r.stat.as_deref(), Some("DELIVRD"));
        assert_eq!(r.err, None);
        // Keys only match at a word start: "paid:" is not "id:".
        let r = parse_receipt_text(b"paid:5 id:6 stat:ENROUTE").unwrap();
        assert_eq!(r.id.as_deref(), Some("6"));
        assert_eq!(r.status(), Some(ReceiptStatus::Pending));
    }

    #[test]
    fn text_without_receipt_fields_is_none() {
        assert_eq!(parse_receipt_text(b"hello, this is a reply"), None);
        assert_eq!(parse_receipt_text(b""), None);
        assert_eq!(parse_receipt_text(b"text:id:5 stat:DELIVRD"), None);
    }

    #[test]
    fn stat_and_state_map_to_statuses() {
        for (stat, want) in [
            ("DELIVRD", ReceiptStatus::Delivered),
            ("delivrd", ReceiptStatus::Delivered),
            ("UNDELIV", ReceiptStatus::Undeliverable),
            ("REJECTD", ReceiptStatus::Undeliverable),
            ("DELETED", ReceiptStatus::Undeliverable),
            ("EXPIRED", ReceiptStatus::Expired),
            ("ENROUTE", ReceiptStatus::Pending),
            ("ACCEPTD", ReceiptStatus::Pending),
            ("UNKNOWN", ReceiptStatus::Unknown),
            ("WHATEVER", ReceiptStatus::Unknown),
        ] {
            assert_eq!(stat_to_status(stat), want, "{stat}");
        }
        for (state, want) in [
            (1, ReceiptStatus::Pending),
            (2, ReceiptStatus::Delivered),
            (3, ReceiptStatus::Expired),
            (4, ReceiptStatus::Undeliverable),
            (5, ReceiptStatus::Undeliverable),
            (6, ReceiptStatus::Pending),
            (7, ReceiptStatus::Unknown),
            (8, ReceiptStatus::Undeliverable),
        ] {
            assert_eq!(message_state_to_status(state), want, "{state}");
        }
    }

    fn deliver_sm(esm: u8, text: &[u8], tlvs: Vec<TlvValue>) -> DeliverSm {
        let mut sm = DeliverSm::builder()
            .source_addr(COctetString::from_str_checked("819012345678"))
            .esm_class(EsmClass::from(esm))
            .short_message(OctetString::from_vec(text.to_vec()).unwrap())
            .build();
        for t in tlvs {
            sm.push_tlv(t_into(t));
        }
        sm
    }

    fn t_into(t: TlvValue) -> rusmpp::tlvs::MessageDeliveryRequestTlvValue {
        match t {
            TlvValue::ReceiptedMessageId(v) => {
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::ReceiptedMessageId(v)
            }
            TlvValue::MessageState(v) => {
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::MessageState(v)
            }
            TlvValue::NetworkErrorCode(v) => {
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::NetworkErrorCode(v)
            }
            TlvValue::UssdServiceOp(v) => {
                rusmpp::tlvs::MessageDeliveryRequestTlvValue::UssdServiceOp(v)
            }
            _ => unreachable!("not used in these tests"),
        }
    }

    trait FromStrChecked {
        fn from_str_checked(s: &str) -> Self;
    }
    impl<const MIN: usize, const MAX: usize> FromStrChecked for COctetString<MIN, MAX> {
        fn from_str_checked(s: &str) -> Self {
            COctetString::from_string(s.to_owned()).unwrap()
        }
    }

    fn receipt(i: Inbound) -> Receipt {
        match i {
            Inbound::Receipt(r) => r,
            other => panic!("expected a receipt, got {other:?}"),
        }
    }

    #[test]
    fn a_deliver_sm_receipt_prefers_the_tlvs() {
        let ch = ChannelId::new("sms-1");
        let now = OffsetDateTime::UNIX_EPOCH;
        let sm = deliver_sm(
            0x04,
            b"id:999 stat:UNDELIV err:001 text:Your PIN",
            vec![
                TlvValue::ReceiptedMessageId(COctetString::from_str_checked("0a1b")),
                TlvValue::MessageState(MessageState::Delivered),
            ],
        );
        let r = receipt(inbound(&ch, &sm, now));
        assert_eq!(r.provider_ref, "0a1b");
        assert_eq!(r.status, ReceiptStatus::Delivered);
        assert_eq!(r.error_code.as_deref(), Some("001"));
        assert_eq!(r.channel, ch);
    }

    #[test]
    fn a_deliver_sm_receipt_falls_back_to_the_text() {
        let ch = ChannelId::new("sms-1");
        let now = OffsetDateTime::UNIX_EPOCH;
        let r = receipt(inbound(&ch, &deliver_sm(0x04, STANDARD, vec![]), now));
        assert_eq!(r.provider_ref, "0A1B2C3D");
        assert_eq!(r.status, ReceiptStatus::Delivered);
        assert_eq!(r.error_code.as_deref(), Some("000"));

        // Intermediate notification (0x20) with ENROUTE is a pending receipt.
        let r = receipt(inbound(
            &ch,
            &deliver_sm(0x20, b"id:5 stat:ENROUTE", vec![]),
            now,
        ));
        assert_eq!(r.status, ReceiptStatus::Pending);

        // The network error TLV when the text has no err:.
        let r = receipt(inbound(
            &ch,
            &deliver_sm(
                0x04,
                b"id:5 stat:UNDELIV",
                vec![TlvValue::NetworkErrorCode(NetworkErrorCode::new(
                    ErrorCodeNetworkType::Gsm,
                    27,
                ))],
            ),
            now,
        ));
        assert_eq!(r.status, ReceiptStatus::Undeliverable);
        assert_eq!(r.error_code.as_deref(), Some("3/27"));
    }

    #[test]
    fn ussd_confirmations_are_delivered_receipts() {
        let ch = ChannelId::new("ussd-1");
        let sm = deliver_sm(
            0x00,
            b"",
            vec![
                TlvValue::UssdServiceOp(UssdServiceOp::UssnConfirm),
                TlvValue::ReceiptedMessageId(COctetString::from_str_checked("77")),
            ],
        );
        let r = receipt(inbound(&ch, &sm, OffsetDateTime::UNIX_EPOCH));
        assert_eq!(r.provider_ref, "77");
        assert_eq!(r.status, ReceiptStatus::Delivered);
    }

    #[test]
    fn mobile_originated_and_id_less_receipts_are_told_apart() {
        let ch = ChannelId::new("sms-1");
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(matches!(
            inbound(&ch, &deliver_sm(0x00, b"id:5 stat:DELIVRD", vec![]), now),
            Inbound::MobileOriginated
        ));
        assert!(matches!(
            inbound(&ch, &deliver_sm(0x04, b"stat:DELIVRD", vec![]), now),
            Inbound::ReceiptWithoutId
        ));
        // A USSR confirm without a receipted id is the subscriber's answer, not a receipt.
        assert!(matches!(
            inbound(
                &ch,
                &deliver_sm(
                    0x00,
                    b"1",
                    vec![TlvValue::UssdServiceOp(UssdServiceOp::UssrConfirm)]
                ),
                now
            ),
            Inbound::MobileOriginated
        ));
    }
}
