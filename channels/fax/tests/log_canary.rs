//! Canary: a PIN sent through the fax channel (accepted, and cut off mid-page) never shows
//! in any log line at any level, nor in an error. Its own test binary, so the global
//! subscriber sees every event.

mod support;

use pinpost_channel_core::Channel;
use pinpost_channel_core::testkit::{self, CANARY_PIN};
use pinpost_fax::FaxChannel;
use pinpost_fax::sim::{Outcome, SimConfig, SimModem};
use support::*;
use tokio::sync::mpsc;

fn start(
    cfg: pinpost_fax::FaxConfig,
) -> (FaxChannel, mpsc::Receiver<pinpost_channel_core::Receipt>) {
    let (tx, rx) = mpsc::channel(16);
    (FaxChannel::start(cfg, tx), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_never_reaches_the_logs() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // Global: this binary holds this one test, and the driver's tasks may run anywhere.
    tracing::subscriber::set_global_default(subscriber).expect("first subscriber");

    let sim = SimModem::start(SimConfig::default().with(
        "0300000005",
        Outcome::HangupMidPage {
            after_bytes: 500,
            code: 0x43,
        },
    ))
    .expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![sim.path().to_owned()]));
    wait_up(&channel).await;
    let text = format!("PIN {CANARY_PIN}\nAmount: JPY 1");
    bounded(channel.send(&testkit::message("d1", "+81312345678", &text)))
        .await
        .expect("accepted");
    let err = bounded(channel.send(&testkit::message("d2", "+81300000005", &text)))
        .await
        .unwrap_err();
    assert!(!format!("{err:?} {err}").contains(CANARY_PIN));
    channel.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("fax page confirmed"),
        "nothing captured:\n{logs}"
    );
    assert!(
        logs.contains("AT+FDT"),
        "modem traces not captured:\n{logs}"
    );
    for needle in [CANARY_PIN, "7305 9177", "73059177"] {
        assert!(
            !logs.contains(needle),
            "the PIN appears in the logs:\n{logs}"
        );
    }
}
