//! The loopback SMSC's SMPP behaviour, driven by a raw rusmpp codec client over loopback TCP.

mod sim_support;

use std::time::{Duration, Instant};

use pinpost_smpp::sim::{FIRST_MESSAGE_ID, IdBase, SimConfig};
use rusmpp::{
    Command, CommandId, CommandStatus, Pdu,
    tlvs::MessageSubmissionRequestTlvValue,
    types::COctetString,
    values::{InterfaceVersion, MessageState, ServiceType, UssdServiceOp},
};
use sim_support::*;

fn sc_version(resp: &Command) -> Option<InterfaceVersion> {
    match resp.pdu() {
        Some(Pdu::BindTransceiverResp(r)) => r.sc_interface_version(),
        Some(Pdu::BindTransmitterResp(r)) => r.sc_interface_version(),
        Some(Pdu::BindReceiverResp(r)) => r.sc_interface_version(),
        other => panic!("not a bind resp: {other:?}"),
    }
}

#[tokio::test]
async fn binds_report_interface_version_per_client_version() {
    let sim = start(SimConfig::default()).await;
    for (kind, version, expected, resp_id) in [
        (
            Bind::Transceiver,
            InterfaceVersion::Smpp3_4,
            Some(InterfaceVersion::Smpp3_4),
            CommandId::BindTransceiverResp,
        ),
        (
            Bind::Transmitter,
            InterfaceVersion::Smpp5_0,
            Some(InterfaceVersion::Smpp5_0),
            CommandId::BindTransmitterResp,
        ),
        (
            Bind::Receiver,
            InterfaceVersion::Smpp3_3OrEarlier(0x33),
            None,
            CommandId::BindReceiverResp,
        ),
    ] {
        let mut client = Client::connect(sim.addr).await;
        let resp = client.bind_as(kind, "esme", "pw", version).await;
        assert_eq!(resp.status(), CommandStatus::EsmeRok);
        assert_eq!(resp.id(), resp_id);
        assert_eq!(sc_version(&resp), expected, "{kind:?} {version:?}");
    }
    assert_eq!(sim.stats.binds(), 3);
    sim.stop().await;
}

#[tokio::test]
async fn bind_failures_carry_the_right_status() {
    let sim = start(SimConfig {
        system_id: Some("esme".into()),
        password: Some("secret".into()),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::connect(sim.addr).await;
    let resp = client
        .bind_as(
            Bind::Transceiver,
            "other",
            "secret",
            InterfaceVersion::Smpp3_4,
        )
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRinvsysid);
    let resp = client
        .bind_as(
            Bind::Transceiver,
            "esme",
            "wrong",
            InterfaceVersion::Smpp3_4,
        )
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRinvpaswd);
    // The connection stays usable after a refused bind.
    let resp = client
        .bind_as(
            Bind::Transceiver,
            "esme",
            "secret",
            InterfaceVersion::Smpp3_4,
        )
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRok);
    let resp = client
        .bind_as(
            Bind::Transmitter,
            "esme",
            "secret",
            InterfaceVersion::Smpp3_4,
        )
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRalybnd);
    assert_eq!(sim.stats.binds(), 1);
    assert_eq!(sim.stats.bind_failures(), 3);
    sim.stop().await;

    let sim = start(SimConfig {
        refuse_binds: true,
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::connect(sim.addr).await;
    let resp = client
        .bind_as(Bind::Transmitter, "esme", "pw", InterfaceVersion::Smpp5_0)
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRbindfail);
    assert_eq!(resp.id(), CommandId::BindTransmitterResp);
    sim.stop().await;
}

async fn submit_and_receipt(message_base: IdBase, receipt_base: IdBase) -> (String, String) {
    let sim = start(SimConfig {
        message_id_base: message_base,
        receipt_id_base: receipt_base,
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let seq = client
        .send(submit(
            "819012345678",
            &gsm("Your PIN is 4321, valid 10 min"),
            0,
            0,
        ))
        .await;
    let (resp, early) = client.submit_resp(seq).await;
    assert!(early.is_empty(), "receipt before the submit_sm_resp");
    assert_eq!(resp.status(), CommandStatus::EsmeRok);
    let id = message_id(&resp);
    let receipt = client.next_deliver().await;
    assert_eq!(u8::from(receipt.esm_class), 0x04);
    assert_eq!(receipt.source_addr.as_str(), "819012345678");
    assert_eq!(receipt.destination_addr.as_str(), "PINPOST");
    let text = text_of(&receipt);
    let rid = receipted_id(&receipt).expect("receipted_message_id TLV");
    assert!(
        text.starts_with(&format!("id:{rid} sub:001 dlvrd:001 submit date:")),
        "{text}"
    );
    assert!(
        text.contains(" stat:DELIVRD err:000 text:Your PIN is 4321, va"),
        "{text}"
    );
    assert!(text.ends_with("text:Your PIN is 4321, va"), "{text}");
    let dates: Vec<&str> = text.split(" date:").skip(1).map(|s| &s[..10]).collect();
    assert_eq!(dates.len(), 2);
    assert!(
        dates.iter().all(|d| d.bytes().all(|b| b.is_ascii_digit())),
        "{text}"
    );
    assert_eq!(message_state(&receipt), Some(MessageState::Delivered));
    // Wait until the SMSC has seen the deliver_sm_resp.
    let deadline = Instant::now() + STEP;
    while sim.stats.receipts_acked() < 1 {
        assert!(Instant::now() < deadline, "deliver_sm_resp not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.stats.receipts_sent(), 1);
    sim.stop().await;
    (id, rid)
}

#[tokio::test]
async fn submit_resp_and_receipt_in_hex() {
    let (id, rid) = submit_and_receipt(IdBase::Hex, IdBase::Hex).await;
    assert_eq!(id, format!("{FIRST_MESSAGE_ID:x}"));
    assert_eq!(rid, id);
}

#[tokio::test]
async fn submit_resp_and_receipt_in_decimal() {
    let (id, rid) = submit_and_receipt(IdBase::Decimal, IdBase::Decimal).await;
    assert_eq!(id, FIRST_MESSAGE_ID.to_string());
    assert_eq!(rid, id);
}

#[tokio::test]
async fn receipt_base_differs_from_response_base() {
    let (id, rid) = submit_and_receipt(IdBase::Hex, IdBase::Decimal).await;
    assert_ne!(id, rid);
    assert_eq!(
        u64::from_str_radix(&id, 16).unwrap(),
        rid.parse::<u64>().unwrap()
    );
    let (id, rid) = submit_and_receipt(IdBase::Decimal, IdBase::Hex).await;
    assert_eq!(
        id.parse::<u64>().unwrap(),
        u64::from_str_radix(&rid, 16).unwrap()
    );
}

#[tokio::test]
async fn message_ids_are_unique_and_monotonic() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let seq = client.send(submit("8190", &gsm("x"), 0, 0)).await;
        let (resp, _) = client.submit_resp(seq).await;
        ids.push(u64::from_str_radix(&message_id(&resp), 16).unwrap());
    }
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    sim.stop().await;
}

#[tokio::test]
async fn submit_needs_a_transmitting_bind() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::connect(sim.addr).await;
    let seq = client.send(submit("8190", &gsm("early"), 0, 0)).await;
    let resp = client.recv().await;
    assert_eq!(
        (resp.sequence_number(), resp.status()),
        (seq, CommandStatus::EsmeRinvbndsts)
    );

    let mut rx = Client::bind_ok(sim.addr, Bind::Receiver, "esme").await;
    let seq = rx.send(submit("8190", &gsm("from receiver"), 0, 0)).await;
    let resp = rx.recv().await;
    assert_eq!(resp.id(), CommandId::SubmitSmResp);
    assert_eq!(
        (resp.sequence_number(), resp.status()),
        (seq, CommandStatus::EsmeRinvbndsts)
    );
    assert_eq!(sim.stats.messages(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn receipts_for_a_transmitter_go_to_a_receiver_of_the_same_system_id() {
    let sim = start(SimConfig::default()).await;
    let mut other = Client::bind_ok(sim.addr, Bind::Receiver, "someone-else").await;
    let mut rx = Client::bind_ok(sim.addr, Bind::Receiver, "esme").await;
    let mut tx = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let seq = tx.send(submit("8190", &gsm("routed"), 0, 0)).await;
    let (resp, _) = tx.submit_resp(seq).await;
    let receipt = rx.next_deliver().await;
    assert_eq!(receipted_id(&receipt), Some(message_id(&resp)));
    assert!(
        tx.recv_within(Duration::from_millis(200)).await.is_none(),
        "a transmitter bind got a deliver_sm"
    );
    assert!(
        other
            .recv_within(Duration::from_millis(100))
            .await
            .is_none()
    );
    sim.stop().await;
}

#[tokio::test]
async fn receipts_wait_for_a_receiver_and_unacked_ones_are_redelivered() {
    let sim = start(SimConfig::default()).await;
    let mut tx = Client::bind_ok(sim.addr, Bind::Transmitter, "esme").await;
    let seq = tx.send(submit("8190", &gsm("held"), 0, 0)).await;
    let (resp, _) = tx.submit_resp(seq).await;
    let id = message_id(&resp);

    // No receiver yet: the receipt is held, then delivered on bind.
    let mut trx = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let c = trx.recv().await;
    let Some(Pdu::DeliverSm(d)) = c.pdu() else {
        panic!("expected the held receipt, got {:?}", c.id())
    };
    assert_eq!(receipted_id(d), Some(id.clone()));
    // Not acknowledged; the connection goes away.
    drop(trx);

    let mut again = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let d = again.next_deliver().await;
    assert_eq!(receipted_id(&d), Some(id));
    assert_eq!(sim.stats.receipts_sent(), 2);
    sim.stop().await;
}

#[tokio::test]
async fn receipt_honours_registered_delivery_and_delay() {
    let sim = start(SimConfig {
        receipt_delay: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let mut quiet = submit("8190", &gsm("no receipt wanted"), 0, 0);
    quiet.registered_delivery = rusmpp::values::RegisteredDelivery::from(0x00);
    let seq = client.send(quiet).await;
    client.submit_resp(seq).await;
    let seq = client
        .send(submit("8190", &gsm("receipt wanted"), 0, 0))
        .await;
    let started = Instant::now();
    let (resp, early) = client.submit_resp(seq).await;
    assert!(early.is_empty());
    let receipt = client.next_deliver().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(280),
        "receipt after {waited:?}"
    );
    assert_eq!(receipted_id(&receipt), Some(message_id(&resp)));
    assert!(
        client
            .recv_within(Duration::from_millis(400))
            .await
            .is_none()
    );
    assert_eq!(sim.stats.receipts_sent(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn receipts_can_be_switched_off() {
    let sim = start(SimConfig {
        receipts: false,
        ..SimConfig::default()
    })
    .await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let seq = client.send(submit("8190", &gsm("silent"), 0, 0)).await;
    client.submit_resp(seq).await;
    assert!(
        client
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(sim.stats.receipts_sent(), 0);
    sim.stop().await;
}

fn ussd_submit(op: UssdServiceOp) -> rusmpp::pdus::SubmitSm {
    let mut sm = submit("819011112222", &gsm("PIN 5555"), 0, 0);
    sm.service_type = ServiceType::new(COctetString::from_static_slice(b"USSD\0").unwrap());
    sm.registered_delivery = rusmpp::values::RegisteredDelivery::from(0x00);
    sm.push_tlv(MessageSubmissionRequestTlvValue::UssdServiceOp(op));
    sm
}

#[tokio::test]
async fn ussd_requests_get_confirmations() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;

    let seq = client.send(ussd_submit(UssdServiceOp::UssnRequest)).await;
    let (resp, _) = client.submit_resp(seq).await;
    let d = client.next_deliver().await;
    assert_eq!(ussd_op(&d), Some(19));
    assert_eq!(receipted_id(&d), Some(message_id(&resp)));
    assert_eq!(d.service_type.value().as_str(), "USSD");
    assert_ne!(
        u8::from(d.esm_class),
        0x04,
        "a USSN confirm is not a text receipt"
    );
    assert!(d.short_message().is_empty());

    let seq = client.send(ussd_submit(UssdServiceOp::UssrRequest)).await;
    let (resp, _) = client.submit_resp(seq).await;
    let d = client.next_deliver().await;
    assert_eq!(ussd_op(&d), Some(18));
    assert_eq!(text_of(&d), "1");
    assert_eq!(receipted_id(&d), Some(message_id(&resp)));
    sim.stop().await;
}

#[tokio::test]
async fn enquire_link_unknown_and_malformed_pdus() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::connect(sim.addr).await;
    let seq = client.send(Pdu::EnquireLink).await;
    let resp = client.recv().await;
    assert_eq!(
        (resp.id(), resp.sequence_number()),
        (CommandId::EnquireLinkResp, seq)
    );

    // Unknown command_id 0x00000111 with an empty body.
    let mut raw = Vec::new();
    for word in [16u32, 0x0000_0111, 0, 77] {
        raw.extend_from_slice(&word.to_be_bytes());
    }
    client.send_raw(&raw).await;
    let nack = client.recv().await;
    assert_eq!(nack.id(), CommandId::GenericNack);
    assert_eq!(
        (nack.sequence_number(), nack.status()),
        (77, CommandStatus::EsmeRinvcmdid)
    );

    // bind_transmitter whose strings have no NUL terminator.
    let mut raw = Vec::new();
    for word in [20u32, 0x0000_0002, 0, 78] {
        raw.extend_from_slice(&word.to_be_bytes());
    }
    raw.extend_from_slice(b"abcd");
    client.send_raw(&raw).await;
    let nack = client.recv().await;
    assert_eq!(nack.id(), CommandId::GenericNack);
    assert_eq!(
        (nack.sequence_number(), nack.status()),
        (78, CommandStatus::EsmeRinvcmdlen)
    );

    // Still in business.
    let resp = client
        .bind_as(Bind::Transceiver, "esme", "pw", InterfaceVersion::Smpp3_4)
        .await;
    assert_eq!(resp.status(), CommandStatus::EsmeRok);

    // Broken framing: command_length below the header size closes the connection.
    let mut raw = Vec::new();
    for word in [8u32, 0x0000_0004, 0, 79] {
        raw.extend_from_slice(&word.to_be_bytes());
    }
    client.send_raw(&raw).await;
    let nack = client.recv().await;
    assert_eq!(
        (nack.id(), nack.status()),
        (CommandId::GenericNack, CommandStatus::EsmeRinvcmdlen)
    );
    assert!(
        client.closed_within(STEP).await,
        "connection left open after broken framing"
    );
    assert_eq!(sim.stats.generic_nacks(), 3);

    // The server survived and serves new connections.
    let _other = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    sim.stop().await;
}

#[tokio::test]
async fn unbind_is_answered_and_closes() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let seq = client.send(Pdu::Unbind).await;
    let resp = client.recv().await;
    assert_eq!(
        (resp.id(), resp.sequence_number()),
        (CommandId::UnbindResp, seq)
    );
    assert!(client.closed_within(STEP).await);
    sim.stop().await;
}

#[tokio::test]
async fn shutdown_unbinds_bound_sessions() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let mut idle = Client::connect(sim.addr).await;
    sim.token.cancel();
    let unbind = client.recv().await;
    assert_eq!(unbind.id(), CommandId::Unbind);
    client
        .send_command(Command::new(
            CommandStatus::EsmeRok,
            unbind.sequence_number(),
            Pdu::UnbindResp,
        ))
        .await;
    assert!(client.closed_within(STEP).await);
    assert!(
        idle.closed_within(STEP).await,
        "unbound connection left open"
    );
    tokio::time::timeout(STEP, sim.handle)
        .await
        .expect("run did not return")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn receipt_answered_with_an_error_is_sent_again() {
    let sim = start(SimConfig::default()).await;
    let mut client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    let seq = client.send(submit("8190", &gsm("retry me"), 0, 0)).await;
    let mut first = None;
    // The response and the receipt, in either order; the receipt is refused (ESME_RX_T_APPN).
    while first.is_none() || client.recv_within(Duration::ZERO).await.is_some() {
        let c = client.recv().await;
        match c.pdu() {
            Some(Pdu::DeliverSm(d)) => {
                first = receipted_id(d);
                client
                    .send_command(Command::new(
                        CommandStatus::EsmeRxTAppn,
                        c.sequence_number(),
                        rusmpp::pdus::DeliverSmResp::default(),
                    ))
                    .await;
            }
            _ => assert_eq!(
                (c.id(), c.sequence_number()),
                (CommandId::SubmitSmResp, seq)
            ),
        }
    }
    let refused_at = Instant::now();
    let again = client.next_deliver().await;
    let waited = refused_at.elapsed();
    assert_eq!(receipted_id(&again), first);
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert_eq!(sim.stats.receipts_sent(), 2);
    sim.stop().await;
}

#[tokio::test]
async fn shutdown_gives_up_on_a_peer_that_does_not_read() {
    use tokio::io::AsyncWriteExt;

    let sim = start(SimConfig::default()).await;
    let client = Client::bind_ok(sim.addr, Bind::Transceiver, "esme").await;
    // Pre-encode 60,000 submits (~10 MB of responses and receipts) and write them without
    // ever reading, until the SMSC stops reading too.
    let mut bytes = bytes::BytesMut::new();
    let mut codec = rusmpp::tokio_codec::CommandCodec::new();
    for seq in 10..60_010u32 {
        let command = Command::new(
            CommandStatus::EsmeRok,
            seq,
            submit("8190", &gsm("flood"), 0, 0),
        );
        tokio_util::codec::Encoder::encode(&mut codec, command, &mut bytes).unwrap();
    }
    let mut stream = client.into_inner();
    let writer = tokio::spawn(async move {
        let _ = stream.write_all(&bytes).await;
        // Keep the socket open (and unread) until the test ends.
        std::future::pending::<()>().await;
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while sim.stats.submits() < 10_000 {
        assert!(
            Instant::now() < deadline,
            "only {} submits read",
            sim.stats.submits()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.token.cancel();
    // Without the 1 s limit on a closing connection's output, run never returns here.
    tokio::time::timeout(Duration::from_secs(30), sim.handle)
        .await
        .expect("run hung on a peer that does not read")
        .unwrap()
        .unwrap();
    writer.abort();
}
