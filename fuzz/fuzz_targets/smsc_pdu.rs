//! The loopback SMSC's PDU handling: the input (after a first byte that picks the SMSC's
//! faults) is what a client sends on one connection. Whatever comes in, the SMSC must not
//! panic, and everything it writes back must be well-framed SMPP that decodes; each
//! receipt must read, for the SMS driver, as a receipt for a message the SMSC took.

#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pinpost_channel_core::ReceiptStatus;
use pinpost_smpp::fuzzing::{client_receipt, smsc_session};
use pinpost_smpp::sim::{FIRST_MESSAGE_ID, IdBase, SimConfig};
use rusmpp::{Command, Pdu, decode::DecodeWithLength};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let bit = |n: u8| flags & (1 << n) != 0;
    let cfg = SimConfig {
        system_id: bit(0).then(|| "smpp".to_owned()),
        password: bit(0).then(|| "secret".to_owned()),
        throttle_fraction: if bit(1) { 0.5 } else { 0.0 },
        reject_prefix: if bit(2) {
            vec!["8190".into()]
        } else {
            Vec::new()
        },
        undeliverable_prefix: if bit(2) {
            vec!["8180".into()]
        } else {
            Vec::new()
        },
        response_delay: if bit(3) {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        },
        receipt_delay: if bit(3) {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        },
        no_answer_every: bit(4).then_some(3),
        drop_after_pdus: bit(5).then_some(6),
        receipt_id_base: if bit(6) { IdBase::Decimal } else { IdBase::Hex },
        // The record decodes and serialises every message text.
        record: bit(7).then(|| "/dev/null".into()),
        seed: 7,
        ..SimConfig::default()
    };
    let receipt_radix = if bit(6) { 10 } else { 16 };
    let out = smsc_session(cfg, input).expect("a valid config");

    let mut answered: HashSet<u64> = HashSet::new();
    let mut rest = &out[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 16, "a truncated PDU header");
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        assert!((16..=rest.len()).contains(&len), "command_length {len}");
        let mut frame = BytesMut::from(&rest[4..len]);
        let (command, _) = Command::decode(&mut frame, len - 4).expect("the SMSC's PDU decodes");
        rest = &rest[len..];
        match command.pdu() {
            Some(Pdu::SubmitSmResp(resp)) => {
                let id = u64::from_str_radix(resp.message_id().as_str(), 16).expect("a hex id");
                assert!(id >= FIRST_MESSAGE_ID);
                answered.insert(id);
            }
            Some(Pdu::DeliverSm(sm)) => {
                let receipt = client_receipt(sm).expect("a receipt that names its message");
                assert!(matches!(
                    receipt.status,
                    ReceiptStatus::Delivered | ReceiptStatus::Undeliverable
                ));
                let id = u64::from_str_radix(&receipt.provider_ref, receipt_radix)
                    .expect("an id in the receipt base");
                // A submit left unanswered on purpose still gets its receipt.
                assert!(
                    answered.contains(&id) || bit(4),
                    "receipt for an unknown message"
                );
            }
            _ => {}
        }
    }
});
