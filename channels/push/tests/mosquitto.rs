//! The push channel against a real broker: Mosquitto 2, started per test on free loopback
//! ports (`support::Broker`), with simulated head units (rumqttc clients) on the other side.

mod support;

use std::time::Duration;

use pinpost_channel_core::{
    Channel, OutboundMessage, ReceiptStatus, SecretString, SendError, testkit,
};
use pinpost_push::{CONTENT_TYPE, PushChannel};
use support::{Broker, HeadUnit, HeadUnitOptions, correlation, payload_json};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};

const UP: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(10);

fn quiet() -> HeadUnitOptions {
    HeadUnitOptions {
        persistent: false,
        answer: None,
    }
}

fn answering(status: &'static str) -> HeadUnitOptions {
    HeadUnitOptions {
        persistent: false,
        answer: Some(status),
    }
}

fn pin(delivery_id: &str, vehicle: &str, text: &str, expires_in: Option<i64>) -> OutboundMessage {
    OutboundMessage {
        delivery_id: delivery_id.into(),
        address: vehicle.into(),
        body: SecretString::from(text.to_owned()),
        expires_at: expires_in.map(|s| OffsetDateTime::now_utc() + time::Duration::seconds(s)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_test_kit_over_tls_with_client_certificate() {
    let broker = Broker::start().await;
    let unit = HeadUnit::connect(broker.plain_port, "hu-kit", "VINKIT0001", quiet()).await;
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-kit"), tx);
    let unit = &unit;
    testkit::run(&channel, "VINKIT0001", |text| async move {
        unit.has_text(&text)
    })
    .await;
    // The kit's shutdown sent a normal DISCONNECT.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !broker.log().contains("Received DISCONNECT from gw-kit") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker saw no DISCONNECT: {}",
            broker.log()
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_carries_expiry_correlation_response_topic_and_json() {
    let broker = Broker::start().await;
    let unit = HeadUnit::connect(broker.plain_port, "hu-props", "VINPROPS01", quiet()).await;
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-props"), tx);
    support::wait_up(&channel, UP).await;

    let accepted = channel
        .send(&pin(
            "d-props",
            "VINPROPS01",
            "PIN 4711 until noon",
            Some(120),
        ))
        .await
        .expect("accepted");
    assert!(accepted.receipt_expected);
    assert_eq!(accepted.provider_refs.len(), 1);
    let reference = &accepted.provider_refs[0];
    assert!(reference.starts_with("d-props."), "{reference}");

    let got = unit.wait_for(1, WAIT).await;
    assert_eq!(got.topic.as_ref(), b"vehicles/VINPROPS01/pin");
    assert_eq!(got.qos, rumqttc::v5::mqttbytes::QoS::AtLeastOnce);
    assert!(!got.retain);
    let props = got.properties.clone().expect("properties");
    let expiry = props
        .message_expiry_interval
        .expect("message expiry interval");
    assert!((115..=120).contains(&expiry), "expiry interval {expiry}");
    assert_eq!(&correlation(&got), reference);
    assert_eq!(
        props.response_topic.as_deref(),
        Some("pinpost/gw-props/acks")
    );
    assert_eq!(props.content_type.as_deref(), Some(CONTENT_TYPE));
    assert_eq!(props.payload_format_indicator, Some(1));
    assert_eq!(
        payload_json(&got),
        serde_json::json!({"type": "pin", "text": "PIN 4711 until noon", "delivery_id": "d-props"})
    );

    // Without an expiry the property is absent: the broker holds it as long as the session.
    channel
        .send(&pin("d-noexp", "VINPROPS01", "PIN 1", None))
        .await
        .expect("accepted");
    let got = unit.wait_for(2, WAIT).await;
    assert_eq!(got.properties.and_then(|p| p.message_expiry_interval), None);
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_unit_acknowledgement_becomes_a_receipt() {
    let broker = Broker::start().await;
    let _shown = HeadUnit::connect(
        broker.plain_port,
        "hu-shown",
        "VINSHOWN01",
        answering("displayed"),
    )
    .await;
    let _refused = HeadUnit::connect(
        broker.plain_port,
        "hu-refused",
        "VINREFUSE1",
        answering("rejected"),
    )
    .await;
    let (tx, mut rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-ack"), tx);
    support::wait_up(&channel, UP).await;

    let accepted = channel
        .send(&pin("d-shown", "VINSHOWN01", "PIN 1111", Some(300)))
        .await
        .expect("accepted");
    let receipt = support::next_receipt(&mut rx, WAIT).await;
    assert_eq!(receipt.provider_ref, accepted.provider_refs[0]);
    assert_eq!(receipt.status, ReceiptStatus::Delivered);
    assert_eq!(receipt.channel.as_str(), "carnav-test");

    let accepted = channel
        .send(&pin("d-refused", "VINREFUSE1", "PIN 2222", Some(300)))
        .await
        .expect("accepted");
    let receipt = support::next_receipt(&mut rx, WAIT).await;
    assert_eq!(receipt.provider_ref, accepted.provider_refs[0]);
    assert_eq!(receipt.status, ReceiptStatus::Undeliverable);
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_wait_for_a_full_sink_and_none_is_lost() {
    let broker = Broker::start().await;
    let _unit = HeadUnit::connect(
        broker.plain_port,
        "hu-many",
        "VINMANY001",
        answering("displayed"),
    )
    .await;
    // Room for one receipt; nobody reads until all sends are done.
    let (tx, mut rx) = mpsc::channel(1);
    let channel = PushChannel::start(broker.channel_config("gw-many"), tx);
    support::wait_up(&channel, UP).await;
    let mut refs = Vec::new();
    for i in 0..5 {
        let a = channel
            .send(&pin(&format!("d-{i}"), "VINMANY001", "PIN 3333", Some(300)))
            .await
            .expect("accepted");
        refs.push(a.provider_refs[0].clone());
    }
    sleep(Duration::from_millis(500)).await;
    assert!(
        channel.health().await.is_up(),
        "a full sink must not stall the session"
    );
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(support::next_receipt(&mut rx, WAIT).await.provider_ref);
    }
    got.sort();
    refs.sort();
    assert_eq!(got, refs);
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_head_unit_gets_no_receipt_yet_send_is_accepted() {
    let broker = Broker::start().await;
    // The head unit registered a persistent session, then the car was switched off.
    let persistent = HeadUnitOptions {
        persistent: true,
        answer: Some("displayed"),
    };
    HeadUnit::connect(broker.plain_port, "hu-offline", "VINOFF0001", persistent)
        .await
        .go_offline()
        .await;
    let (tx, mut rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-offline"), tx);
    support::wait_up(&channel, UP).await;

    let accepted = channel
        .send(&pin("d-offline", "VINOFF0001", "PIN 5555", Some(300)))
        .await
        .expect("accepted while the head unit is offline");
    assert!(accepted.receipt_expected);
    assert!(
        timeout(Duration::from_millis(1500), rx.recv())
            .await
            .is_err(),
        "a receipt arrived for an offline head unit"
    );

    // A vehicle nobody ever subscribed for: PUBACK 0x10 (no matching subscribers) is accepted.
    channel
        .send(&pin("d-nobody", "VINNOBODY1", "PIN 6666", Some(300)))
        .await
        .expect("no matching subscribers counts as accepted");

    // The car comes back: the broker hands it the queued PIN and its answer becomes a receipt.
    let unit = HeadUnit::connect(broker.plain_port, "hu-offline", "VINOFF0001", persistent).await;
    let got = unit.wait_for(1, WAIT).await;
    assert_eq!(correlation(&got), accepted.provider_refs[0]);
    let receipt = support::next_receipt(&mut rx, WAIT).await;
    assert_eq!(receipt.provider_ref, accepted.provider_refs[0]);
    assert_eq!(receipt.status, ReceiptStatus::Delivered);
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_pins_are_refused_and_the_broker_drops_them_when_they_expire() {
    let broker = Broker::start().await;
    let persistent = HeadUnitOptions {
        persistent: true,
        answer: None,
    };
    HeadUnit::connect(broker.plain_port, "hu-expiry", "VINEXP0001", persistent)
        .await
        .go_offline()
        .await;
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-expiry"), tx);
    support::wait_up(&channel, UP).await;

    match channel
        .send(&pin("d-late", "VINEXP0001", "PIN 7777", Some(-5)))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "expired"),
        other => panic!("an expired PIN must be refused as Permanent expired: {other:?}"),
    }
    // Two seconds of life while the car is off: the broker discards it.
    channel
        .send(&pin("d-short", "VINEXP0001", "PIN 8888", Some(2)))
        .await
        .expect("accepted");
    sleep(Duration::from_millis(3500)).await;
    let unit = HeadUnit::connect(broker.plain_port, "hu-expiry", "VINEXP0001", persistent).await;
    sleep(Duration::from_millis(1000)).await;
    assert!(
        unit.received().is_empty(),
        "the head unit got an expired (or refused) PIN"
    );
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_goes_down_then_up_and_sends_again() {
    let mut broker = Broker::start().await;
    let (tx, mut rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-restart"), tx);
    support::wait_up(&channel, UP).await;
    let unit = HeadUnit::connect(
        broker.plain_port,
        "hu-restart",
        "VINRST0001",
        answering("displayed"),
    )
    .await;
    let before = channel
        .send(&pin("d-before", "VINRST0001", "PIN 1", Some(300)))
        .await
        .expect("accepted before the restart");
    let receipt = support::next_receipt(&mut rx, WAIT).await;
    assert_eq!(receipt.provider_ref, before.provider_refs[0]);
    drop(unit);

    broker.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while channel.health().await.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still Up with the broker gone"
        );
        sleep(Duration::from_millis(20)).await;
    }
    match channel
        .send(&pin("d-down", "VINRST0001", "PIN 2", Some(300)))
        .await
    {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("send with the broker down must be Unavailable: {other:?}"),
    }
    broker.restart().await;
    support::wait_up(&channel, UP).await;

    let _unit = HeadUnit::connect(
        broker.plain_port,
        "hu-restart",
        "VINRST0001",
        answering("displayed"),
    )
    .await;
    let accepted = channel
        .send(&pin("d-after", "VINRST0001", "PIN 3", Some(300)))
        .await
        .expect("accepted after the restart");
    // Receipts are at least once: if the broker went down before it read the PUBACK for the
    // first acknowledgement, it delivers that one again from the persistent session.
    loop {
        let receipt = support::next_receipt(&mut rx, WAIT).await;
        if receipt.provider_ref == accepted.provider_refs[0] {
            assert_eq!(receipt.status, ReceiptStatus::Delivered);
            break;
        }
        assert_eq!(receipt.provider_ref, before.provider_refs[0], "{receipt:?}");
    }
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_client_certificate_is_never_up() {
    let broker = Broker::start().await;
    let mut cfg = broker.channel_config("gw-rogue");
    cfg.client_cert_file = Some(support::tls_file("rogue-client.pem"));
    cfg.client_key_file = Some(support::tls_file("rogue-client.key"));
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(cfg, tx);
    let reason = support::stays_down(&channel, Duration::from_secs(3)).await;
    assert!(!reason.is_empty());
    let log = broker.log();
    assert!(log.contains("certificate verify failed"), "{log}");
    assert!(
        !log.contains("as gw-rogue"),
        "an MQTT session was established: {log}"
    );
    match channel
        .send(&pin("d-rogue", "VINROGUE01", "PIN 1", Some(300)))
        .await
    {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("{other:?}"),
    }
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_never_up() {
    let broker = Broker::start().await;
    let mut cfg = broker.channel_config("gw-nocert");
    cfg.client_cert_file = None;
    cfg.client_key_file = None;
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(cfg, tx);
    let reason = support::stays_down(&channel, Duration::from_secs(3)).await;
    assert!(reason.contains("CertificateRequired"), "{reason}");
    let log = broker.log();
    assert!(log.contains("peer did not return a certificate"), "{log}");
    assert!(
        !log.contains("as gw-nocert"),
        "an MQTT session was established: {log}"
    );
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_broker_certificate_is_never_up() {
    let broker = Broker::start().await;
    let mut cfg = broker.channel_config("gw-wrongca");
    cfg.tls_ca_file = Some(support::tls_file("rogue-ca.pem"));
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(cfg, tx);
    let reason = support::stays_down(&channel, Duration::from_secs(3)).await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(!broker.log().contains("as gw-wrongca"));
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_when_configured() {
    let broker = Broker::start().await;
    let mut cfg = broker.channel_config("gw-plain");
    cfg.broker_url = format!("mqtt://127.0.0.1:{}", broker.plain_port);
    cfg.tls_ca_file = None;
    cfg.client_cert_file = None;
    cfg.client_key_file = None;

    let (tx, _rx) = mpsc::channel(16);
    let refused = PushChannel::start(cfg.clone(), tx.clone());
    let reason = support::stays_down(&refused, Duration::from_secs(1)).await;
    assert!(reason.contains("allow_plaintext"), "{reason}");
    match refused
        .send(&pin("d-plain", "VINPLAIN01", "PIN 1", Some(300)))
        .await
    {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(
        !broker.log().contains("gw-plain"),
        "a refused plaintext config reached the broker"
    );

    cfg.allow_plaintext = true;
    let unit = HeadUnit::connect(broker.plain_port, "hu-plain", "VINPLAIN01", quiet()).await;
    let allowed = PushChannel::start(cfg, tx);
    support::wait_up(&allowed, UP).await;
    allowed
        .send(&pin("d-plain", "VINPLAIN01", "PIN 1", Some(300)))
        .await
        .expect("accepted over plaintext when configured");
    unit.wait_for(1, WAIT).await;
    allowed.shutdown().await;
    refused.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_refusal_and_bad_addresses_are_permanent() {
    let broker = Broker::start().await;
    let (tx, _rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-acl"), tx);
    support::wait_up(&channel, UP).await;

    // The broker's ACL denies this vehicle's topic: PUBACK 0x87.
    match channel
        .send(&pin("d-denied", "DENIED", "PIN 1", Some(300)))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "0x87"),
        other => panic!("an ACL refusal must be Permanent 0x87: {other:?}"),
    }
    // An address that would leave its topic level never reaches the broker.
    match channel
        .send(&pin("d-bad", "VIN/../other", "PIN 1", Some(300)))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "invalid_address"),
        other => panic!("{other:?}"),
    }
    match channel
        .send(&pin("d-long", "VINLONG001", &"9".repeat(1025), Some(300)))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "message_too_long"),
        other => panic!("{other:?}"),
    }
    // The session survives all of it.
    channel
        .send(&pin("d-fine", "VINFINE001", "PIN 1", Some(300)))
        .await
        .expect("accepted");
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_share_the_session() {
    let broker = Broker::start().await;
    let unit = HeadUnit::connect(broker.plain_port, "hu-conc", "VINCONC001", quiet()).await;
    let (tx, _rx) = mpsc::channel(16);
    let mut cfg = broker.channel_config("gw-conc");
    cfg.window = 4;
    let channel = PushChannel::start(cfg, tx);
    support::wait_up(&channel, UP).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            channel
                .send(&pin(
                    &format!("d-{i}"),
                    "VINCONC001",
                    &format!("PIN {i}"),
                    Some(300),
                ))
                .await
        }));
    }
    let mut refs = Vec::new();
    for t in tasks {
        refs.push(t.await.unwrap().expect("accepted").provider_refs[0].clone());
    }
    refs.sort();
    refs.dedup();
    assert_eq!(refs.len(), 40);
    unit.wait_for(40, WAIT).await;
    let mut seen: Vec<String> = unit.received().iter().map(correlation).collect();
    seen.sort();
    assert_eq!(seen, refs);
    channel.shutdown().await;
}
