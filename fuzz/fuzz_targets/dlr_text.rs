//! Delivery-receipt text (`id:… sub:… stat:…`) as the SMS driver reads it, raw and as the
//! short_message of a receipt deliver_sm; then the input as a whole PDU frame, through the
//! driver's deliver_sm handling when it is one.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pinpost_smpp::client::{ParsedReceipt, parse_receipt_text};
use pinpost_smpp::fuzzing::client_receipt;
use rusmpp::pdus::DeliverSm;
use rusmpp::types::OctetString;
use rusmpp::values::EsmClass;
use rusmpp::{Command, Pdu, decode::DecodeWithLength};

fn fields(r: &ParsedReceipt) -> [(&'static str, &Option<String>); 7] {
    [
        ("id", &r.id),
        ("sub", &r.sub),
        ("dlvrd", &r.dlvrd),
        ("submit date", &r.submit_date),
        ("done date", &r.done_date),
        ("stat", &r.stat),
        ("err", &r.err),
    ]
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_receipt_text(data);
    if let Some(r) = &parsed {
        assert!(r.id.is_some() || r.stat.is_some());
        for (_, value) in fields(r) {
            if let Some(v) = value {
                assert!(!v.is_empty() && !v.chars().any(|c| c.is_ascii_whitespace()));
            }
        }
        let _ = r.status();
        // Written back in the standard layout, plain values read the same.
        let plain = fields(r).iter().all(|(_, v)| {
            v.as_deref()
                .is_none_or(|v| v.chars().all(|c| c.is_ascii_alphanumeric()))
        });
        if plain {
            let text: Vec<String> = fields(r)
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}:{v}")))
                .collect();
            let text = text.join(" ") + " text:x";
            assert_eq!(parse_receipt_text(text.as_bytes()).as_ref(), Some(r));
        }
    }

    if let Ok(short_message) = OctetString::<0, 255>::from_vec(data.to_vec()) {
        let sm = DeliverSm::builder()
            .esm_class(EsmClass::from(0x04))
            .short_message(short_message)
            .build();
        let receipt = client_receipt(&sm);
        assert_eq!(
            receipt.map(|r| r.provider_ref),
            parsed.and_then(|p| p.id),
            "the receipt's reference is the text's id"
        );
    }

    if data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len == data.len() {
            let mut frame = BytesMut::from(&data[4..]);
            if let Ok((command, _)) = Command::decode(&mut frame, len - 4) {
                if let Some(Pdu::DeliverSm(sm)) = command.pdu() {
                    let _ = client_receipt(sm);
                }
            }
        }
    }
});
