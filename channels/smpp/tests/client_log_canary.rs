//! No PIN in the driver's logs: a send, an error, an in-doubt send and a receipt that echoes
//! the PIN, with every event captured at TRACE. Alone in its own test binary, so no other
//! test's threads touch tracing's per-callsite interest cache while it runs.

mod client_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client_support::{FakeSmsc, Reply, config, eventually};
use pinpost_channel_core::Channel;
use pinpost_channel_core::testkit::{CANARY_PIN, message};
use rusmpp::pdus::DeliverSm;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::EsmClass;
use tokio::sync::mpsc;

const TO: &str = "+819012345678";

fn deliver_sm(esm: u8, text: &[u8]) -> DeliverSm {
    DeliverSm::builder()
        .source_addr(COctetString::from_string("819012345678".into()).unwrap())
        .destination_addr(COctetString::from_string("PINPOST".into()).unwrap())
        .esm_class(EsmClass::from(esm))
        .short_message(OctetString::from_vec(text.to_vec()).unwrap())
        .build()
}

/// Collects every log line our code (and rusmppc) writes while a PIN goes out and its
/// receipt, which echoes the PIN, comes back.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_pin_never_appears_in_our_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_target(true)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let fake = FakeSmsc::new(move |s| {
        c2.fetch_add(1, Ordering::SeqCst);
        match s.index {
            1 => Reply::Status(0x0B),
            2 => Reply::Silent,
            _ => Reply::Ok(format!("x{}", s.index)),
        }
    });
    let mut cfg = config("canary");
    cfg.response_timeout = Duration::from_secs(2);
    let (tx, mut rx) = mpsc::channel(16);
    let ch = fake.start(cfg, tx);
    eventually("bound", Duration::from_secs(30), || async {
        ch.health().await.is_up()
    })
    .await;
    let body = format!("Your PIN {CANARY_PIN}");
    let ok = ch.send(&message("canary-1", TO, &body)).await.unwrap();
    let perm = ch.send(&message("canary-2", TO, &body)).await.unwrap_err();
    let doubt = ch.send(&message("canary-3", TO, &body)).await.unwrap_err();
    for e in [&perm, &doubt] {
        assert!(!e.to_string().contains(CANARY_PIN));
    }
    fake.deliver(deliver_sm(
        0x04,
        format!(
            "id:{} stat:DELIVRD err:000 text:Your PIN {CANARY_PIN}",
            ok.provider_refs[0]
        )
        .as_bytes(),
    ));
    fake.deliver(deliver_sm(0x00, format!("MO {CANARY_PIN}").as_bytes()));
    let _ = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    ch.shutdown().await;
    assert!(count.load(Ordering::SeqCst) >= 3);

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("canary-2"),
        "the delivery id is logged (span field)"
    );
    assert!(logs.contains("smpp"), "our events were captured");
    // rusmpp's codec logs whole PDUs at DEBUG; every deployment filters `rusmpp::codec`.
    let leaks: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(CANARY_PIN) && !l.contains("rusmpp::codec"))
        .collect();
    assert!(leaks.is_empty(), "PIN in logs:\n{}", leaks.join("\n"));
}
