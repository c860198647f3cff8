//! The push channel against a scripted fake broker (rumqttc's MQTT 5 codec over loopback TCP),
//! for what a healthy Mosquitto never does: PUBACKs that never come or carry error codes, a
//! connection dropped right after a PUBLISH, a refused subscription, a small Receive Maximum.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pinpost_channel_core::{Channel, ChannelId, OutboundMessage, SecretString, SendError};
use pinpost_push::{PushChannel, PushConfig};
use rumqttc::v5::mqttbytes::Error as CodecError;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Packet, PingResp, PubAck, PubAckReason, Publish,
    SubAck, SubscribeReasonCode,
};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};

/// What the fake does with one PUBLISH.
#[derive(Clone, Copy, Debug)]
enum OnPublish {
    Ack(PubAckReason),
    AckAfter(Duration),
    Silent,
    Close,
}

type Script = Arc<dyn Fn(&Publish) -> OnPublish + Send + Sync>;

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    publishes: Mutex<Vec<Publish>>,
    disconnects: AtomicUsize,
    max_unacked: AtomicUsize,
    /// PUBLISH packet ids not yet acknowledged on the current connection.
    unacked: Mutex<Vec<u16>>,
}

struct FakeBroker {
    port: u16,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBroker {
    async fn start(receive_max: Option<u16>, suback: SubscribeReasonCode, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    seen.connections.fetch_add(1, Ordering::SeqCst);
                    seen.unacked.lock().unwrap().clear();
                    tokio::spawn(serve(
                        socket,
                        receive_max,
                        suback,
                        script.clone(),
                        seen.clone(),
                    ));
                }
            })
        };
        FakeBroker { port, seen, task }
    }

    fn config(&self) -> PushConfig {
        let mut cfg = PushConfig::new(
            ChannelId::new("carnav-fake"),
            format!("mqtt://127.0.0.1:{}", self.port),
            "gw-fake",
        );
        cfg.allow_plaintext = true;
        cfg.reconnect_min = Duration::from_millis(50);
        cfg.reconnect_max = Duration::from_millis(200);
        cfg.puback_timeout = Duration::from_millis(800);
        cfg
    }

    fn publishes(&self) -> Vec<Publish> {
        self.seen.publishes.lock().unwrap().clone()
    }
}

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

async fn write(writer: &Writer, packet: Packet) -> bool {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, None).expect("encode");
    writer.lock().await.write_all(&buf).await.is_ok()
}

async fn serve(
    socket: TcpStream,
    receive_max: Option<u16>,
    suback: SubscribeReasonCode,
    script: Script,
    seen: Arc<Seen>,
) {
    let (mut reader, writer) = socket.into_split();
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        // A DISCONNECT without reason code (normal disconnection, remaining length 0) is
        // valid MQTT 5 but refused by the codec's reader.
        if buf.starts_with(&[0xe0, 0x00]) {
            seen.disconnects.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let packet = match Packet::read(&mut buf, None) {
            Ok(p) => p,
            Err(CodecError::InsufficientBytes(_)) => match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Err(e) => panic!("fake broker could not decode: {e:?}"),
        };
        let reply = match packet {
            Packet::Connect(..) => {
                let properties = receive_max.map(|m| ConnAckProperties {
                    session_expiry_interval: None,
                    receive_max: Some(m),
                    max_qos: None,
                    retain_available: None,
                    max_packet_size: None,
                    assigned_client_identifier: None,
                    topic_alias_max: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                    wildcard_subscription_available: None,
                    subscription_identifiers_available: None,
                    shared_subscription_available: None,
                    server_keep_alive: None,
                    response_information: None,
                    server_reference: None,
                    authentication_method: None,
                    authentication_data: None,
                });
                Some(Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::Success,
                    properties,
                }))
            }
            Packet::Subscribe(s) => Some(Packet::SubAck(SubAck {
                pkid: s.pkid,
                return_codes: vec![suback],
                properties: None,
            })),
            Packet::PingReq(_) => Some(Packet::PingResp(PingResp)),
            Packet::Disconnect(_) => {
                seen.disconnects.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Packet::Publish(p) => {
                seen.publishes.lock().unwrap().push(p.clone());
                {
                    let mut unacked = seen.unacked.lock().unwrap();
                    unacked.push(p.pkid);
                    seen.max_unacked.fetch_max(unacked.len(), Ordering::SeqCst);
                }
                let pkid = p.pkid;
                let ack = move |reason| {
                    let mut a = PubAck::new(pkid, None);
                    a.reason = reason;
                    Packet::PubAck(a)
                };
                match script(&p) {
                    OnPublish::Ack(reason) => {
                        seen.unacked.lock().unwrap().retain(|k| *k != pkid);
                        Some(ack(reason))
                    }
                    OnPublish::AckAfter(delay) => {
                        // Answered later, without holding up the reader.
                        let seen = seen.clone();
                        let writer = writer.clone();
                        tokio::spawn(async move {
                            sleep(delay).await;
                            seen.unacked.lock().unwrap().retain(|k| *k != pkid);
                            write(&writer, ack(PubAckReason::Success)).await;
                        });
                        None
                    }
                    OnPublish::Silent => None,
                    OnPublish::Close => return,
                }
            }
            _ => None,
        };
        if let Some(reply) = reply
            && !write(&writer, reply).await
        {
            return;
        }
    }
}

fn pin(delivery_id: &str, vehicle: &str) -> OutboundMessage {
    OutboundMessage {
        delivery_id: delivery_id.into(),
        address: vehicle.into(),
        body: SecretString::from("PIN 1234".to_owned()),
        expires_at: Some(OffsetDateTime::now_utc() + time::Duration::minutes(5)),
    }
}

fn ok() -> SubscribeReasonCode {
    SubscribeReasonCode::Success(QoS::AtLeastOnce)
}

async fn up(channel: &PushChannel) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !channel.health().await.is_up() {
        assert!(
            Instant::now() < deadline,
            "not up: {:?}",
            channel.health().await
        );
        sleep(Duration::from_millis(10)).await;
    }
}

fn topic_is(p: &Publish, vehicle: &str) -> bool {
    p.topic.as_ref() == format!("vehicles/{vehicle}/pin").as_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_puback_is_in_doubt() {
    let fake = FakeBroker::start(
        None,
        ok(),
        Arc::new(|p| {
            if topic_is(p, "SILENT") {
                OnPublish::Silent
            } else {
                OnPublish::Ack(PubAckReason::Success)
            }
        }),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let channel = PushChannel::start(fake.config(), tx);
    up(&channel).await;
    let started = Instant::now();
    match channel.send(&pin("d-silent", "SILENT")).await {
        Err(SendError::InDoubt { reason }) => {
            assert!(
                reason.contains("d-silent."),
                "names the correlation id: {reason}"
            );
        }
        other => panic!("no PUBACK must be InDoubt: {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The session carries on.
    channel
        .send(&pin("d-next", "FINE"))
        .await
        .expect("accepted after an in-doubt send");
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_lost_after_publish_is_in_doubt_and_never_resent() {
    let fake = FakeBroker::start(
        None,
        ok(),
        Arc::new(|p| {
            if topic_is(p, "DROP") {
                OnPublish::Close
            } else {
                OnPublish::Ack(PubAckReason::Success)
            }
        }),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let channel = PushChannel::start(fake.config(), tx);
    up(&channel).await;
    match channel.send(&pin("d-drop", "DROP")).await {
        Err(SendError::InDoubt { reason }) => assert!(reason.contains("d-drop."), "{reason}"),
        other => panic!("a connection lost before the PUBACK must be InDoubt: {other:?}"),
    }
    up(&channel).await;
    assert!(fake.seen.connections.load(Ordering::SeqCst) >= 2);
    channel
        .send(&pin("d-after", "FINE"))
        .await
        .expect("accepted after the reconnect");
    sleep(Duration::from_millis(200)).await;
    let dropped: Vec<_> = fake
        .publishes()
        .into_iter()
        .filter(|p| topic_is(p, "DROP"))
        .collect();
    assert_eq!(dropped.len(), 1, "the in-doubt PUBLISH was sent again");
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_reason_codes_are_classified() {
    let fake = FakeBroker::start(
        None,
        ok(),
        Arc::new(|p| {
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            OnPublish::Ack(match topic.as_str() {
                "vehicles/E80/pin" => PubAckReason::UnspecifiedError,
                "vehicles/E83/pin" => PubAckReason::ImplementationSpecificError,
                "vehicles/E87/pin" => PubAckReason::NotAuthorized,
                "vehicles/E90/pin" => PubAckReason::TopicNameInvalid,
                "vehicles/E97/pin" => PubAckReason::QuotaExceeded,
                "vehicles/E99/pin" => PubAckReason::PayloadFormatInvalid,
                "vehicles/E10/pin" => PubAckReason::NoMatchingSubscribers,
                _ => PubAckReason::Success,
            })
        }),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let channel = PushChannel::start(fake.config(), tx);
    up(&channel).await;
    for (vehicle, expect) in [
        ("E80", "transient"),
        ("E83", "transient"),
        ("E87", "permanent"),
        ("E90", "permanent"),
        ("E97", "throttled"),
        ("E99", "permanent"),
    ] {
        let err = channel
            .send(&pin("d-code", vehicle))
            .await
            .expect_err(vehicle);
        assert_eq!(err.class(), expect, "{vehicle}: {err:?}");
        if let SendError::Permanent { code, .. } = &err {
            assert_eq!(code, &format!("0x{}", &vehicle[1..]));
        }
    }
    let a = channel
        .send(&pin("d-code", "E10"))
        .await
        .expect("0x10 accepted");
    assert!(a.receipt_expected);
    assert!(channel.health().await.is_up());
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscription_is_never_up() {
    let fake = FakeBroker::start(
        None,
        SubscribeReasonCode::NotAuthorized,
        Arc::new(|_| OnPublish::Ack(PubAckReason::Success)),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let channel = PushChannel::start(fake.config(), tx);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut reason = String::new();
    while Instant::now() < deadline {
        match channel.health().await {
            pinpost_channel_core::Health::Up => {
                panic!("up without the response-topic subscription")
            }
            pinpost_channel_core::Health::Down { reason: r } => reason = r,
        }
        sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fake.seen.connections.load(Ordering::SeqCst) >= 2,
        "retries with backoff"
    );
    assert!(reason.contains("subscription"), "{reason}");
    assert!(fake.publishes().is_empty());
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_receive_maximum_bounds_the_window() {
    let fake = FakeBroker::start(
        Some(2),
        ok(),
        Arc::new(|_| OnPublish::AckAfter(Duration::from_millis(100))),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let mut cfg = fake.config();
    cfg.window = 8;
    cfg.puback_timeout = Duration::from_secs(5);
    let channel = PushChannel::start(cfg, tx);
    up(&channel).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            channel.send(&pin(&format!("d-{i}"), "WINDOW")).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("accepted");
    }
    assert_eq!(fake.publishes().len(), 8);
    let max = fake.seen.max_unacked.load(Ordering::SeqCst);
    assert!(max <= 2, "{max} PUBLISH packets unacknowledged at once");
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_acknowledges_nothing_is_reconnected() {
    let fake = FakeBroker::start(None, ok(), Arc::new(|_| OnPublish::Silent)).await;
    let (tx, _rx) = mpsc::channel(4);
    let mut cfg = fake.config();
    cfg.window = 1;
    let channel = PushChannel::start(cfg, tx);
    up(&channel).await;
    let err = channel.send(&pin("d-1", "X")).await.expect_err("no PUBACK");
    assert_eq!(err.class(), "in_doubt");
    // Its only packet id is held by an unanswered PUBLISH: the channel reconnects.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.seen.connections.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "no reconnect");
        sleep(Duration::from_millis(10)).await;
    }
    up(&channel).await;
    channel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_puback_then_disconnects() {
    let fake = FakeBroker::start(
        None,
        ok(),
        Arc::new(|_| OnPublish::AckAfter(Duration::from_millis(300))),
    )
    .await;
    let (tx, _rx) = mpsc::channel(4);
    let channel = PushChannel::start(fake.config(), tx);
    up(&channel).await;
    let sender = {
        let channel = channel.clone();
        tokio::spawn(async move { channel.send(&pin("d-drain", "DRAIN")).await })
    };
    // Let the PUBLISH go out, then shut down while its PUBACK is pending.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.publishes().is_empty() {
        assert!(Instant::now() < deadline);
        sleep(Duration::from_millis(5)).await;
    }
    timeout(Duration::from_secs(5), channel.shutdown())
        .await
        .expect("shutdown within its bound");
    sender
        .await
        .unwrap()
        .expect("the in-flight send is answered");
    let deadline = Instant::now() + Duration::from_secs(2);
    while fake.seen.disconnects.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no DISCONNECT");
        sleep(Duration::from_millis(5)).await;
    }
    assert!(!channel.health().await.is_up());
    assert_eq!(
        channel
            .send(&pin("d-late", "DRAIN"))
            .await
            .unwrap_err()
            .class(),
        "unavailable"
    );
}
