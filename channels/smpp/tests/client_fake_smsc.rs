//! The SMPP driver against a scripted fake SMSC over `tokio::io::duplex` (paused time).

mod client_support;

use std::time::Duration;

use client_support::{FakeSmsc, Reply, config, eventually, gsm_ascii};
use pinpost_channel_core::testkit::{self, CANARY_PIN, message};
use pinpost_channel_core::{Channel, Health, ReceiptStatus, SendError};
use pinpost_smpp::client::{InterfaceVersion, SmppChannel};
use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::MessageDeliveryRequestTlvValue;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{EsmClass, MessageState};
use tokio::sync::mpsc;
use tokio::time::Instant;

const TO: &str = "+819012345678";

async fn bound(ch: &SmppChannel) {
    eventually("bound", Duration::from_secs(30), || async {
        ch.health().await.is_up()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn core_test_kit_passes_and_shutdown_unbinds() {
    let fake = FakeSmsc::accepting();
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("kit"), tx);
    let f = fake.clone();
    testkit::run(&ch, TO, move |text| {
        let f = f.clone();
        async move {
            f.record()
                .submits
                .iter()
                .any(|s| gsm_ascii(&s.short_message).as_deref() == Some(text.as_str()))
        }
    })
    .await;
    let r = fake.record();
    assert_eq!(r.unbinds, 1, "shutdown must unbind");
    assert_eq!(
        r.submits.len(),
        3,
        "the send after shutdown must not reach the SMSC"
    );
    let s = &r.submits[0];
    assert_eq!(s.destination_addr, "819012345678");
    assert_eq!((s.dest_ton, s.dest_npi), (1, 1));
    assert_eq!((s.source_ton, s.source_npi), (5, 0));
    assert_eq!(s.source_addr, "PINPOST");
    assert_eq!(s.registered_delivery, 1);
    assert_eq!(s.service_type, "");
    assert_eq!(r.bind_versions, vec![0x50]);
}

#[tokio::test(start_paused = true)]
async fn the_window_is_never_exceeded() {
    let fake = FakeSmsc::new(|s| {
        Reply::After(
            Duration::from_millis(50),
            Box::new(Reply::Ok(format!("w{}", s.index))),
        )
    });
    let mut cfg = config("window");
    cfg.window = 3;
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    bound(&ch).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            ch.send(&message(&format!("d{i}"), TO, &format!("PIN {i}")))
                .await
        }));
    }
    let mut refs = Vec::new();
    for t in tasks {
        let a = t.await.unwrap().expect("every send is accepted");
        refs.extend(a.provider_refs);
    }
    refs.sort();
    refs.dedup();
    assert_eq!(refs.len(), 30);
    let r = fake.record();
    assert_eq!(r.submits.len(), 30);
    assert_eq!(
        r.max_outstanding, 3,
        "window 3: at most (and, under load, exactly) 3 outstanding"
    );
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn throttling_pauses_the_whole_bind_and_retries_without_failures() {
    // Every fourth submit is throttled (or finds the queue full).
    let fake = FakeSmsc::new(|s| match s.index % 8 {
        1 => Reply::Status(0x58),
        5 => Reply::Status(0x14),
        _ => Reply::After(
            Duration::from_millis(10),
            Box::new(Reply::Ok(format!("t{}", s.index))),
        ),
    });
    let mut cfg = config("throttle");
    cfg.window = 5;
    cfg.throttle_pause = Duration::from_secs(1);
    cfg.throttle_retry_budget = Duration::from_secs(60);
    let pause = cfg.throttle_pause;
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    bound(&ch).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            ch.send(&message(&format!("d{i}"), TO, "PIN 1234")).await
        }));
    }
    for t in tasks {
        let a = t
            .await
            .unwrap()
            .expect("throttled sends are retried, not failed");
        assert_eq!(a.provider_refs.len(), 1);
    }
    let r = fake.record();
    let throttles: Vec<Instant> = r
        .error_replies
        .iter()
        .filter(|(_, st)| *st == 0x58 || *st == 0x14)
        .map(|(at, _)| *at)
        .collect();
    assert!(throttles.len() >= 2, "the script throttled at least twice");
    assert_eq!(
        r.submits.len(),
        20 + throttles.len(),
        "each throttled PDU is sent again"
    );
    assert_eq!(
        ch.throttled_total(),
        throttles.len() as u64,
        "every slow-down answer is counted"
    );
    // After each throttle answer, no submit reaches the SMSC until the pause is over.
    for t in &throttles {
        let during: Vec<_> = r
            .submits
            .iter()
            .filter(|s| s.at > *t && s.at < *t + pause - Duration::from_millis(1))
            .collect();
        assert!(
            during.is_empty(),
            "submits during a pause: {}",
            during.len()
        );
    }
    assert!(start.elapsed() >= pause, "the bind paused at least once");
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn throttling_beyond_the_budget_returns_throttled() {
    let fake = FakeSmsc::new(|_| Reply::Status(0x58));
    let mut cfg = config("budget");
    cfg.throttle_pause = Duration::from_secs(1);
    cfg.throttle_retry_budget = Duration::from_secs(3);
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    bound(&ch).await;
    let start = Instant::now();
    let out = ch.send(&message("d1", TO, "PIN 1")).await;
    assert_eq!(
        out,
        Err(SendError::Throttled {
            retry_after: Duration::from_secs(1)
        })
    );
    let took = start.elapsed();
    assert!(took <= Duration::from_secs(3), "{took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(fake.record().submits.len() >= 3, "the same PDU was retried");
    assert_eq!(
        ch.throttled_total(),
        fake.record().submits.len() as u64,
        "every answer was a slow-down, and each is counted"
    );
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_answer_is_in_doubt_after_the_response_timeout() {
    let fake = FakeSmsc::new(|s| {
        if s.index == 0 {
            Reply::Silent
        } else {
            Reply::Ok("after".into())
        }
    });
    let mut cfg = config("silent");
    cfg.response_timeout = Duration::from_secs(7);
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    bound(&ch).await;
    let start = Instant::now();
    let out = ch.send(&message("d1", TO, "PIN 1")).await;
    assert!(matches!(out, Err(SendError::InDoubt { .. })), "{out:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(
        fake.record().submits.len(),
        1,
        "an in-doubt PDU is never resent"
    );
    // The bind stays usable.
    let a = ch.send(&message("d2", TO, "PIN 2")).await.unwrap();
    assert_eq!(a.provider_refs, vec!["after".to_owned()]);
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_drop_with_the_submit_in_flight_is_in_doubt() {
    let fake = FakeSmsc::new(|s| {
        if s.index == 0 {
            Reply::Drop
        } else {
            Reply::Ok(format!("r{}", s.index))
        }
    });
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("inflight"), tx);
    bound(&ch).await;
    let out = ch.send(&message("d1", TO, "PIN 1")).await;
    assert!(matches!(out, Err(SendError::InDoubt { .. })), "{out:?}");
    bound(&ch).await;
    assert!(ch.send(&message("d2", TO, "PIN 2")).await.is_ok());
    assert_eq!(fake.record().submits.len(), 2);
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_goes_down_then_rebinds_and_sends_again() {
    let fake = FakeSmsc::accepting();
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("drop"), tx);
    bound(&ch).await;
    ch.send(&message("d1", TO, "PIN 1")).await.unwrap();

    fake.drop_connection();
    eventually("down after the drop", Duration::from_secs(5), || async {
        !ch.health().await.is_up()
    })
    .await;
    match ch.send(&message("d2", TO, "PIN 2")).await {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("a send while down must be Unavailable, got {other:?}"),
    }
    bound(&ch).await;
    let a = ch.send(&message("d3", TO, "PIN 3")).await.unwrap();
    assert_eq!(a.provider_refs.len(), 1);
    let r = fake.record();
    assert_eq!(r.binds, 2);
    assert_eq!(r.submits.len(), 2);
    assert_eq!(
        r.submits[1].conn, 1,
        "the later send went over the new bind"
    );

    // The SMSC may also unbind: answered, then rebound.
    fake.unbind();
    eventually(
        "rebound after the SMSC's unbind",
        Duration::from_secs(10),
        || {
            let f = fake.clone();
            let ch = ch.clone();
            async move { f.record().binds == 3 && ch.health().await.is_up() }
        },
    )
    .await;
    assert!(ch.send(&message("d4", TO, "PIN 4")).await.is_ok());
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sends_while_not_bound_are_unavailable_at_once() {
    let fake = FakeSmsc::accepting();
    fake.refuse_connects(true);
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("nobind"), tx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    match ch.health().await {
        Health::Down { reason } => assert!(reason.contains("connect"), "{reason}"),
        Health::Up => panic!("up without a connection"),
    }
    let start = Instant::now();
    let out = ch.send(&message("d1", TO, "PIN 1")).await;
    assert!(matches!(out, Err(SendError::Unavailable { .. })), "{out:?}");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(fake.record().submits.is_empty());

    // Connections come back: the backoff retries and binds.
    fake.refuse_connects(false);
    bound(&ch).await;
    assert!(ch.send(&message("d2", TO, "PIN 2")).await.is_ok());
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_refused_bind_keeps_the_channel_down_with_the_status() {
    let fake = FakeSmsc::accepting();
    fake.refuse_binds_with(0x0E);
    let (tx, _rx) = mpsc::channel(16);
    let mut cfg = config("badpw");
    cfg.interface_version = InterfaceVersion::V34;
    let ch = fake.start(cfg, tx);
    eventually("a bind attempt", Duration::from_secs(5), || {
        let f = fake.clone();
        async move { f.record().binds >= 1 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    match ch.health().await {
        Health::Down { reason } => {
            assert!(reason.contains("ESME_RINVPASWD"), "{reason}");
            assert!(!reason.contains("secret"), "{reason}");
        }
        Health::Up => panic!("up after a refused bind"),
    }
    assert_eq!(fake.record().bind_versions[0], 0x34);
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn error_statuses_are_classified() {
    let fake = FakeSmsc::new(|s| match s.index {
        0 => Reply::Status(0x0B),
        1 => Reply::Status(0x08),
        2 => Reply::Status(0x45),
        3 => Reply::Status(0x104),
        4 => Reply::Status(0x433),
        5 => Reply::GenericNack(0),
        _ => Reply::GenericNack(0x03),
    });
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("codes"), tx);
    bound(&ch).await;
    let send = |i: usize| {
        let ch = ch.clone();
        async move { ch.send(&message(&format!("d{i}"), TO, "PIN 1")).await }
    };
    match send(0).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "0x0000000b"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(send(1).await, Err(SendError::Transient { .. })));
    assert!(matches!(send(2).await, Err(SendError::Transient { .. })));
    match send(3).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "0x00000104"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(send(4).await, Err(SendError::Transient { .. })));
    // A generic_nack is never an acceptance; its status classifies like any other.
    match send(5).await {
        Err(SendError::Transient { reason }) => {
            assert!(reason.contains("generic_nack"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    match send(6).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "0x00000003"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fake.record().submits.len(),
        7,
        "failures are not retried by the driver"
    );
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn local_refusals_are_permanent_and_write_nothing() {
    let fake = FakeSmsc::accepting();
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("local"), tx);
    bound(&ch).await;
    match ch.send(&message("d1", "819012345678", "PIN")).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "invalid_address"),
        other => panic!("{other:?}"),
    }
    match ch.send(&message("d2", TO, &"a".repeat(153 * 8 + 1))).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "message_too_long"),
        other => panic!("{other:?}"),
    }
    let mut late = message("d3", TO, "PIN");
    late.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
    match ch.send(&late).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "expired"),
        other => panic!("{other:?}"),
    }
    assert!(fake.record().submits.is_empty());
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn single_parts_are_esm_0x00_and_long_texts_are_concatenated_with_0x40() {
    let fake = FakeSmsc::accepting();
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("parts"), tx);
    bound(&ch).await;

    let mut short = message("d1", TO, "Your PIN 1234");
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    short.expires_at = Some(expires);
    let a = ch.send(&short).await.unwrap();
    assert_eq!(a.provider_refs, vec!["m0".to_owned()]);
    assert!(a.receipt_expected);

    let long = "暗証番号".repeat(40); // 160 UCS-2 units: 3 parts of ≤ 67
    let b = ch.send(&message("d2", TO, &long)).await.unwrap();
    assert_eq!(b.provider_refs, vec!["m1", "m2", "m3"]);

    let r = fake.record();
    let s0 = &r.submits[0];
    assert_eq!(
        s0.esm_class, 0x00,
        "single part: esm_class 0x00 on the wire"
    );
    assert_eq!(s0.data_coding, 0x00);
    assert_eq!(s0.short_message, b"Your PIN 1234");
    let vp = &s0.validity_period;
    assert_eq!(vp.len(), 16, "{vp}");
    assert!(vp.ends_with("000+"), "{vp}");
    let utc = expires.to_offset(time::UtcOffset::UTC);
    assert_eq!(
        &vp[..6],
        format!(
            "{:02}{:02}{:02}",
            utc.year() % 100,
            u8::from(utc.month()),
            utc.day()
        )
    );

    let parts = &r.submits[1..];
    assert_eq!(parts.len(), 3);
    let reference = parts[0].short_message[3];
    let mut text_units: Vec<u16> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(p.esm_class, 0x40);
        assert_eq!(p.data_coding, 0x08);
        assert_eq!(
            &p.short_message[..6],
            &[0x05, 0x00, 0x03, reference, 3, i as u8 + 1]
        );
        assert!(p.short_message.len() <= 140);
        text_units.extend(
            p.short_message[6..]
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        );
        assert!(p.validity_period.is_empty());
    }
    assert_eq!(String::from_utf16(&text_units).unwrap(), long);

    // The next concatenated message uses the next reference.
    ch.send(&message("d3", TO, &long)).await.unwrap();
    let r = fake.record();
    assert_eq!(r.submits[4].short_message[3], reference.wrapping_add(1));
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_later_part_failing_returns_that_parts_class() {
    let fake = FakeSmsc::new(|s| match s.index {
        1 => Reply::Status(0x0B),
        4 => Reply::Status(0x08),
        i => Reply::Ok(format!("p{i}")),
    });
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("partfail"), tx);
    bound(&ch).await;
    let long = "a".repeat(300); // 2 GSM parts
    match ch.send(&message("d1", TO, &long)).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "0x0000000b"),
        other => panic!("{other:?}"),
    }
    // Submits 2 and 3 are the next message: 3 accepted, then 4 transient.
    let long3 = "b".repeat(400); // 3 GSM parts: indexes 2, 3, 4
    assert!(matches!(
        ch.send(&message("d2", TO, &long3)).await,
        Err(SendError::Transient { .. })
    ));
    assert_eq!(fake.record().submits.len(), 5);
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_tps_limit_paces_submits() {
    let fake = FakeSmsc::accepting();
    let mut cfg = config("tps");
    cfg.max_tps = Some(5);
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    bound(&ch).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..15 {
        let ch = ch.clone();
        tasks.push(tokio::spawn(async move {
            ch.send(&message(&format!("d{i}"), TO, "PIN")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // 5 at once from the full bucket, then 10 at 5/s.
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1990), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    ch.shutdown().await;
}

fn deliver_sm(esm: u8, text: &[u8], tlvs: Vec<MessageDeliveryRequestTlvValue>) -> DeliverSm {
    let mut sm = DeliverSm::builder()
        .source_addr(COctetString::from_string("819012345678".into()).unwrap())
        .destination_addr(COctetString::from_string("PINPOST".into()).unwrap())
        .esm_class(EsmClass::from(esm))
        .short_message(OctetString::from_vec(text.to_vec()).unwrap())
        .build();
    for t in tlvs {
        sm.push_tlv(t);
    }
    sm
}

#[tokio::test(start_paused = true)]
async fn receipts_reach_the_sink_and_every_deliver_sm_is_answered() {
    let fake = FakeSmsc::new(|s| Reply::Ok(format!("{:X}", 0xABC0 + s.index)));
    let (tx, mut rx) = mpsc::channel(16);
    let ch = fake.start(config("dlr"), tx);
    bound(&ch).await;
    let a = ch.send(&message("d1", TO, "PIN 1")).await.unwrap();
    let b = ch.send(&message("d2", TO, "PIN 2")).await.unwrap();
    assert_eq!(a.provider_refs, vec!["ABC0"]);
    assert_eq!(b.provider_refs, vec!["ABC1"]);

    // TLV form.
    let s1 = fake.deliver(deliver_sm(
        0x04,
        b"id:43968 stat:UNDELIV",
        vec![
            MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                COctetString::from_string("ABC0".into()).unwrap(),
            ),
            MessageDeliveryRequestTlvValue::MessageState(MessageState::Delivered),
        ],
    ));
    // Text form, with the decimal id an SMSC may use in receipts and the echoed text.
    let text = format!(
        "id:43969 sub:001 dlvrd:000 submit date:2501311200 done date:2501311201 \
stat:UNDELIV err:034 text:PIN {CANARY_PIN}"
    );
    let s2 = fake.deliver(deliver_sm(0x04, text.as_bytes(), vec![]));
    // A mobile-originated message: answered and dropped.
    let s3 = fake.deliver(deliver_sm(0x00, b"hello", vec![]));

    let r1 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.provider_ref, "ABC0");
    assert_eq!(r1.status, ReceiptStatus::Delivered);
    assert_eq!(r1.channel.as_str(), "dlr");
    let r2 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r2.provider_ref, "43969", "ids are passed through raw");
    assert_eq!(r2.status, ReceiptStatus::Undeliverable);
    assert_eq!(r2.error_code.as_deref(), Some("034"));
    assert!(!format!("{r2:?}").contains(CANARY_PIN));

    eventually("three deliver_sm_resp", Duration::from_secs(5), || {
        let f = fake.clone();
        async move { f.record().deliver_sm_resps.len() == 3 }
    })
    .await;
    let resps = fake.record().deliver_sm_resps;
    assert_eq!(resps, vec![(s1, 0), (s2, 0), (s3, 0)]);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), rx.recv())
            .await
            .is_err(),
        "an MO message is not a receipt"
    );
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_closed_receipt_sink_makes_the_smsc_retry() {
    let fake = FakeSmsc::accepting();
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    let ch = fake.start(config("nosink"), tx);
    bound(&ch).await;
    let seq = fake.deliver(deliver_sm(0x04, b"id:1 stat:DELIVRD", vec![]));
    eventually("the deliver_sm_resp", Duration::from_secs(5), || {
        let f = fake.clone();
        async move { !f.record().deliver_sm_resps.is_empty() }
    })
    .await;
    assert_eq!(
        fake.record().deliver_sm_resps,
        vec![(seq, 0x64)],
        "ESME_RX_T_APPN"
    );
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_in_flight_submits_then_unbinds() {
    let fake =
        FakeSmsc::new(|_| Reply::After(Duration::from_secs(2), Box::new(Reply::Ok("slow".into()))));
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("drain"), tx);
    bound(&ch).await;
    let sender = {
        let ch = ch.clone();
        tokio::spawn(async move { ch.send(&message("d1", TO, "PIN")).await })
    };
    eventually("the submit is out", Duration::from_secs(1), || {
        let f = fake.clone();
        async move { f.record().submits.len() == 1 }
    })
    .await;
    let start = Instant::now();
    ch.shutdown().await;
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(sender.await.unwrap().unwrap().provider_refs, vec!["slow"]);
    assert_eq!(fake.record().unbinds, 1);
    assert!(matches!(
        ch.send(&message("d2", TO, "PIN")).await,
        Err(SendError::Unavailable { .. })
    ));
    assert!(!ch.health().await.is_up());
}

#[tokio::test(start_paused = true)]
async fn ussd_pushes_carry_service_type_and_op_and_confirms_are_receipts() {
    let fake = FakeSmsc::new(|s| Reply::Ok(format!("u{}", s.index)));
    let mut cfg = config("ussd");
    cfg.service = pinpost_smpp::client::SmppService::Ussd { op: 3 };
    cfg.request_receipts = false;
    let (tx, mut rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    assert_eq!(
        ch.capabilities().kind,
        pinpost_channel_core::ChannelKind::Ussd
    );
    assert_eq!(ch.capabilities().max_body_chars, 182);
    bound(&ch).await;
    let a = ch.send(&message("d1", TO, "PIN 4321")).await.unwrap();
    assert!(!a.receipt_expected);
    let r = fake.record();
    assert_eq!(r.submits[0].service_type, "USSD");
    assert_eq!(r.submits[0].tlv_count, 1);
    assert_eq!(r.submits[0].registered_delivery, 0);
    assert!(matches!(
        ch.send(&message("d2", TO, &"a".repeat(183))).await,
        Err(SendError::Permanent { .. })
    ));
    fake.deliver(deliver_sm(
        0x00,
        b"",
        vec![
            MessageDeliveryRequestTlvValue::UssdServiceOp(
                rusmpp::values::UssdServiceOp::UssnConfirm,
            ),
            MessageDeliveryRequestTlvValue::ReceiptedMessageId(
                COctetString::from_string("u0".into()).unwrap(),
            ),
        ],
    ));
    let rc = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rc.provider_ref, "u0");
    assert_eq!(rc.status, ReceiptStatus::Delivered);
    ch.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_unbinds() {
    let fake = FakeSmsc::accepting();
    let (tx, _rx) = mpsc::channel(16);
    let ch = fake.start(config("dropped"), tx);
    bound(&ch).await;
    let clone = ch.clone();
    drop(ch);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fake.record().unbinds, 0, "a clone is still alive");
    assert!(clone.health().await.is_up());
    drop(clone);
    eventually(
        "unbind after the last handle dropped",
        Duration::from_secs(10),
        || {
            let f = fake.clone();
            async move { f.record().unbinds == 1 }
        },
    )
    .await;
}
