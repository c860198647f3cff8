//! Every event the channel and its libraries (lettre, rPGP, rustls, through `log` too) emit at
//! TRACE, during accepted sends, refusals, plaintext delivery and a lost reply, must not
//! contain the PIN. One test per binary: it installs the global subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpost_channel_core::testkit::{self, CANARY_PIN};
use pinpost_channel_core::{Channel, SendError};
use pinpost_email::{EmailChannel, EmailConfig, EmailDevice, MemoryKeyLookup};
use support::{Gpg, KeyKind, Peer, PeerOptions, config};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_never_reaches_a_log_line() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber in this binary");

    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let key = gpg
        .generate("subscriber@pinpost.test", KeyKind::Curve25519)
        .await;
    let devices = [
        ("subscriber@pinpost.test", Some(key.clone()), false),
        ("reject@pinpost.test", Some(key.clone()), false),
        ("hangup@pinpost.test", Some(key.clone()), false),
        ("plain@pinpost.test", None, true),
        ("nokey@pinpost.test", None, false),
    ]
    .map(|(a, k, p)| EmailDevice {
        address: a.into(),
        openpgp_public_key: k,
        allow_plaintext: p,
    });
    let keys = Arc::new(MemoryKeyLookup::with_devices(devices));
    let cfg = EmailConfig {
        data_timeout: Duration::from_secs(2),
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, tokio::sync::mpsc::channel(1).0);
    let body = format!("Your PIN {CANARY_PIN}");
    let send = |address: &'static str| {
        let (channel, body) = (channel.clone(), body.clone());
        async move {
            channel
                .send(&testkit::message("canary-delivery", address, &body))
                .await
        }
    };
    let accepted = send("subscriber@pinpost.test").await.unwrap();
    send("plain@pinpost.test").await.unwrap();
    assert!(matches!(
        send("reject@pinpost.test").await,
        Err(SendError::Permanent { .. })
    ));
    assert!(matches!(
        send("nokey@pinpost.test").await,
        Err(SendError::Permanent { .. })
    ));
    assert!(matches!(
        send("hangup@pinpost.test").await,
        Err(SendError::InDoubt { .. })
    ));
    assert!(matches!(
        send("not an address").await,
        Err(SendError::Permanent { .. })
    ));
    channel.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("canary-delivery"),
        "spans carry the delivery id:\n{logs}"
    );
    assert!(
        logs.contains(&accepted.provider_refs[0]),
        "the queue id is logged:\n{logs}"
    );
    assert!(logs.contains("message_id=pinpost."), "{logs}");
    for (i, line) in logs.lines().enumerate() {
        assert!(
            !line.contains(CANARY_PIN),
            "log line {i} contains the PIN: {line}"
        );
    }
}
