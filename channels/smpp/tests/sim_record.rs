//! The loopback SMSC's message record: decoding, reassembly and prompt flushing.

mod sim_support;

use pinpost_smpp::sim::{IdBase, SimConfig};
use rusmpp::{
    CommandStatus,
    tlvs::MessageSubmissionRequestTlvValue,
    types::COctetString,
    values::{RegisteredDelivery, ServiceType, UssdServiceOp},
};
use serde_json::json;
use sim_support::*;

fn udh8(reference: u8, total: u8, seq: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x05, 0x00, 0x03, reference, total, seq];
    v.extend_from_slice(data);
    v
}

fn udh16(reference: u16, total: u8, seq: u8, data: &[u8]) -> Vec<u8> {
    let [hi, lo] = reference.to_be_bytes();
    let mut v = vec![0x06, 0x08, 0x04, hi, lo, total, seq];
    v.extend_from_slice(data);
    v
}

#[tokio::test]
async fn record_decodes_gsm_ucs2_latin1_and_payload() {
    let path = temp_record("decode");
    let sim = start(SimConfig {
        record: Some(path.clone()),
        message_id_base: IdBase::Decimal,
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;

    // GSM 03.38 with basic-table specials and every escape-table character.
    let mut gsm_text = vec![0x00, 0x01, 0x02, 0x03, 0x20];
    gsm_text.extend_from_slice(&gsm("PIN 1234 "));
    for ext in [0x65, 0x3c, 0x3e, 0x28, 0x29, 0x40, 0x2f, 0x14, 0x3d] {
        gsm_text.extend_from_slice(&[0x1b, ext]);
    }
    let japanese = "暗証番号は 4821 です";
    let messages = [
        (
            submit("819011110001", &gsm_text, 0x00, 0),
            "@£$¥ PIN 1234 €[]{}|\\^~",
        ),
        (submit("819011110002", &ucs2(japanese), 0x08, 0), japanese),
        (
            submit(
                "819011110003",
                &[0x63, 0x61, 0x66, 0xe9, 0x20, 0xa3, 0x35],
                0x03,
                0,
            ),
            "café £5",
        ),
        (
            submit_payload("819011110004", &gsm("payload PIN 9999"), 0x01),
            "payload PIN 9999",
        ),
    ];
    let mut ids = Vec::new();
    for (sm, _) in messages.iter() {
        let seq = client.send(sm.clone()).await;
        let (resp, _) = client.submit_resp(seq).await;
        assert_eq!(resp.status(), CommandStatus::EsmeRok);
        ids.push(message_id(&resp));
    }
    // Lines show up while the SMSC keeps running (the writer flushes every 100 ms), not
    // only at shutdown.
    let lines = wait_for_lines(&path, messages.len()).await;
    for (i, ((sm, text), line)) in messages.iter().zip(&lines).enumerate() {
        assert_eq!(line["text"], *text, "line {i}");
        assert_eq!(line["message_id"], ids[i]);
        assert_eq!(line["system_id"], "esme");
        assert_eq!(line["source_addr"], "PINPOST");
        assert_eq!(line["destination_addr"], sm.destination_addr.as_str());
        assert_eq!(line["data_coding"], u8::from(sm.data_coding));
        assert_eq!(line["esm_class"], 0);
        assert_eq!(line["parts"], 1);
        assert_eq!(line["service_type"], "");
        assert_eq!(line["ussd_service_op"], serde_json::Value::Null);
        let ts = line["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2025-01-01T00:00:00.000Z".len(), "{ts}");
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok()
        );
    }
    assert_eq!(sim.stats.messages(), 4);
    sim.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn concatenated_messages_are_recorded_once_with_all_part_ids() {
    let path = temp_record("concat");
    let sim = start(SimConfig {
        record: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;

    // 8-bit reference, GSM, three parts sent out of order; the escape for '€' straddles
    // parts 1 and 2.
    let mut p1 = gsm("Your PIN is 1234. Cost: 5");
    p1.push(0x1b);
    let p2 = [&[0x65u8][..], &gsm(". Part two")[..]].concat();
    let p3 = gsm(". The end.");
    let gsm_parts = [
        udh8(0xa7, 3, 3, &p3),
        udh8(0xa7, 3, 1, &p1),
        udh8(0xa7, 3, 2, &p2),
    ];
    // 16-bit reference, UCS-2, a surrogate pair split across the two parts.
    let utf16 = ucs2("PIN 😀 ok");
    let (u1, u2) = utf16.split_at(10);
    let ucs_parts = [udh16(0x1234, 2, 1, u1), udh16(0x1234, 2, 2, u2)];
    // Same reference on another destination is another message.
    let other = [
        udh8(0xa7, 2, 1, &gsm("other ")),
        udh8(0xa7, 2, 2, &gsm("dest")),
    ];

    // Receipts that arrive while waiting for later responses.
    let mut receipt_ids = Vec::new();
    let mut gsm_ids = Vec::new();
    for part in &gsm_parts {
        let seq = client.send(submit("819022220001", part, 0x00, 0x40)).await;
        let (resp, receipts) = client.submit_resp(seq).await;
        gsm_ids.push(message_id(&resp));
        receipt_ids.extend(receipts.iter().filter_map(receipted_id));
    }
    let mut ucs_ids = Vec::new();
    for part in &ucs_parts {
        let seq = client.send(submit("819022220002", part, 0x08, 0x40)).await;
        let (resp, receipts) = client.submit_resp(seq).await;
        ucs_ids.push(message_id(&resp));
        receipt_ids.extend(receipts.iter().filter_map(receipted_id));
    }
    for part in &other {
        let seq = client.send(submit("819022220003", part, 0x00, 0x40)).await;
        let (_, receipts) = client.submit_resp(seq).await;
        receipt_ids.extend(receipts.iter().filter_map(receipted_id));
    }

    let lines = wait_for_lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0]["text"],
        "Your PIN is 1234. Cost: 5€. Part two. The end."
    );
    // Part ids in part order: sent as 3, 1, 2.
    assert_eq!(
        lines[0]["message_id"],
        json!([gsm_ids[1], gsm_ids[2], gsm_ids[0]])
    );
    assert_eq!(lines[0]["parts"], 3);
    assert_eq!(lines[0]["esm_class"], 0x40);
    assert_eq!(lines[1]["text"], "PIN 😀 ok");
    assert_eq!(lines[1]["message_id"], json!(ucs_ids));
    assert_eq!(lines[1]["data_coding"], 8);
    assert_eq!(lines[2]["text"], "other dest");
    assert_eq!(sim.stats.messages(), 3);

    // Each part gets its own receipt, carrying its own id.
    while receipt_ids.len() < 7 {
        receipt_ids.push(receipted_id(&client.next_deliver().await).unwrap());
    }
    for id in gsm_ids.iter().chain(&ucs_ids) {
        assert!(receipt_ids.contains(id), "no receipt for part {id}");
    }
    sim.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn ussd_is_recorded_with_its_operation_and_never_reassembled() {
    let path = temp_record("ussd");
    let sim = start(SimConfig {
        record: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let mut sm = submit("819033330001", &udh8(1, 2, 1, &gsm("PIN 7777")), 0x00, 0x40);
    sm.service_type = ServiceType::new(COctetString::from_static_slice(b"USSD\0").unwrap());
    sm.registered_delivery = RegisteredDelivery::from(0);
    sm.push_tlv(MessageSubmissionRequestTlvValue::UssdServiceOp(
        UssdServiceOp::UssnRequest,
    ));
    let seq = client.send(sm).await;
    let (resp, _) = client.submit_resp(seq).await;
    let lines = wait_for_lines(&path, 1).await;
    assert_eq!(lines[0]["ussd_service_op"], 3);
    assert_eq!(lines[0]["service_type"], "USSD");
    assert_eq!(lines[0]["parts"], 1);
    assert_eq!(lines[0]["text"], "PIN 7777");
    assert_eq!(lines[0]["message_id"], message_id(&resp));
    let confirm = client.next_deliver().await;
    assert_eq!(ussd_op(&confirm), Some(19));
    sim.stop().await;
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn record_is_flushed_on_shutdown_and_appended_to() {
    let path = temp_record("append");
    for round in 0..2 {
        let sim = start(SimConfig {
            record: Some(path.clone()),
            ..SimConfig::default()
        })
        .await;
        let mut client = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
        let seq = client
            .send(submit("8190", &gsm(&format!("round {round}")), 0, 0))
            .await;
        client.submit_resp(seq).await;
        drop(client);
        sim.stop().await;
        // Right after run returns, without polling.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), round + 1, "{text}");
    }
    let lines = wait_for_lines(&path, 2).await;
    assert_eq!(lines[0]["text"], "round 0");
    assert_eq!(lines[1]["text"], "round 1");
    let _ = std::fs::remove_file(&path);
}
