//! The PIN never reaches a log line: every `tracing` event and every `log` record (rumqttc and
//! rustls log through `log`) is captured at TRACE while a canary PIN is sent, acknowledged,
//! refused and lost, and none may contain it.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpost_channel_core::testkit::CANARY_PIN;
use pinpost_channel_core::{Channel, OutboundMessage, SecretString};
use pinpost_push::PushChannel;
use support::{Broker, HeadUnit, HeadUnitOptions};
use time::OffsetDateTime;
use tokio::sync::mpsc;

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

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn pin(delivery_id: &str, vehicle: &str, text: &str, expires_in: i64) -> OutboundMessage {
    OutboundMessage {
        delivery_id: delivery_id.into(),
        address: vehicle.into(),
        body: SecretString::from(text.to_owned()),
        expires_at: Some(OffsetDateTime::now_utc() + time::Duration::seconds(expires_in)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_never_appears_in_any_log_line() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(capture.clone())
        .try_init()
        .expect("the only subscriber of this test binary");

    let mut broker = Broker::start().await;
    let _unit = HeadUnit::connect(
        broker.plain_port,
        "hu-canary",
        "VINCANARY1",
        HeadUnitOptions {
            persistent: false,
            answer: Some("displayed"),
        },
    )
    .await;
    let (tx, mut rx) = mpsc::channel(16);
    let channel = PushChannel::start(broker.channel_config("gw-canary"), tx);
    support::wait_up(&channel, Duration::from_secs(10)).await;

    let text = format!("Your PIN {CANARY_PIN}");
    channel
        .send(&pin("d-canary", "VINCANARY1", &text, 300))
        .await
        .expect("accepted");
    support::next_receipt(&mut rx, Duration::from_secs(10)).await;
    // Refusals of every kind, each carrying the canary.
    let refusals = [
        pin("d-expired", "VINCANARY1", &text, -1),
        pin("d-address", "VIN/CANARY", &text, 300),
        pin(
            "d-long",
            "VINCANARY1",
            &format!("{text}{}", "x".repeat(1100)),
            300,
        ),
        pin("d-acl", "DENIED", &text, 300),
    ];
    for msg in &refusals {
        let err = channel.send(msg).await.expect_err("refused");
        assert!(!err.to_string().contains(CANARY_PIN), "{err}");
        assert!(!format!("{err:?}").contains(CANARY_PIN), "{err:?}");
    }
    // Broker gone: the send is refused and the reconnect loop logs.
    broker.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = channel
        .send(&pin("d-down", "VINCANARY1", &text, 300))
        .await
        .expect_err("broker down");
    assert!(!err.to_string().contains(CANARY_PIN));
    channel.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("push channel up") && logs.contains("Publish. Topic"),
        "the capture saw the driver's and rumqttc's events:\n{logs}"
    );
    for line in logs.lines() {
        assert!(
            !line.contains(CANARY_PIN),
            "the PIN leaked into a log line: {line}"
        );
    }
    assert!(!broker.log().contains(CANARY_PIN));
}
