//! Timing behaviour under paused tokio time: the channel over `tokio::io::duplex` to the
//! simulator (`sim::serve`), so minutes of redial delays and timeouts take no real time.

mod support;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pinpost_channel_core::testkit;
use pinpost_channel_core::{Channel, SendError};
use pinpost_fax::channel::{BoxedPort, Connector};
use pinpost_fax::sim::{self, Outcome, SimConfig, SimRecord};
use pinpost_fax::{FaxChannel, FaxConfig, RedialPolicy};
use support::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

const NOTICE: &str = "PIN 7305917735186203\nAmount: JPY 12,800";

/// A connector that starts a simulator per open, the first `fail_first` opens failing.
fn sim_connector(
    cfg: SimConfig,
    record: SimRecord,
    fail_first: usize,
) -> (Connector, Arc<AtomicUsize>) {
    let opens = Arc::new(AtomicUsize::new(0));
    let counter = opens.clone();
    let connector: Connector = Arc::new(move |_path: String| {
        let cfg = cfg.clone();
        let record = record.clone();
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n < fail_first {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such modem (yet)",
                ));
            }
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(sim::serve(theirs, cfg, record));
            Ok(Box::new(ours) as BoxedPort)
        })
    });
    (connector, opens)
}

fn start(
    cfg: FaxConfig,
    sim: SimConfig,
    fail_first: usize,
) -> (FaxChannel, SimRecord, Arc<AtomicUsize>) {
    let record = SimRecord::default();
    let (connector, opens) = sim_connector(sim, record.clone(), fail_first);
    let (tx, rx) = mpsc::channel(16);
    std::mem::forget(rx);
    (
        FaxChannel::start_with_connector(cfg, tx, connector),
        record,
        opens,
    )
}

fn config() -> FaxConfig {
    let mut cfg = test_config(vec!["sim0".into()]);
    cfg.redial = RedialPolicy {
        max_dials: 3,
        delays: vec![Duration::from_secs(30), Duration::from_secs(90)],
    };
    cfg.timeouts = Default::default();
    cfg.confirmed_page_receipts = false;
    cfg
}

#[tokio::test(start_paused = true)]
async fn redials_wait_the_configured_delays() {
    let (channel, record, _) = start(
        config(),
        SimConfig::default().with("0312345678", Outcome::Busy),
        0,
    );
    wait_up(&channel).await;
    let t0 = Instant::now();
    let r = channel
        .send(&testkit::message("d", "+81312345678", NOTICE))
        .await;
    let elapsed = t0.elapsed();
    assert!(
        matches!(&r, Err(SendError::Transient { reason }) if reason.contains("busy (3 dials)")),
        "{r:?}"
    );
    assert_eq!(record.calls().len(), 3);
    assert!(
        elapsed >= Duration::from_secs(120) && elapsed < Duration::from_secs(125),
        "30 s + 90 s of redial delay expected, took {elapsed:?}"
    );
    channel.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn redialling_never_outlives_the_pin() {
    let (channel, record, _) = start(
        config(),
        SimConfig::default().with("0312345678", Outcome::NoAnswer),
        0,
    );
    wait_up(&channel).await;
    let mut msg = testkit::message("d", "+81312345678", NOTICE);
    // Wall clock: the PIN expires in 60 s, the next dial would be in 30 s, the one after
    // in 120 s.
    msg.expires_at = Some(time::OffsetDateTime::now_utc() + time::Duration::seconds(60));
    let r = channel.send(&msg).await;
    assert!(matches!(&r, Err(SendError::Transient { .. })), "{r:?}");
    assert_eq!(
        record.calls().len(),
        2,
        "the third dial would come after the expiry"
    );
    channel.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_line_is_bounded_by_the_dial_timeout() {
    let (channel, record, _) = start(
        config(),
        SimConfig::default().with("0399999999", Outcome::Silent),
        0,
    );
    wait_up(&channel).await;
    let t0 = Instant::now();
    let r = channel
        .send(&testkit::message("d", "+81399999999", NOTICE))
        .await;
    let elapsed = t0.elapsed();
    assert!(
        matches!(&r, Err(SendError::Transient { reason }) if reason.contains("Dial")),
        "{r:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(120) && elapsed < Duration::from_secs(130),
        "{elapsed:?}"
    );
    assert!(
        record.commands().iter().any(|c| c == "ATH0"),
        "hung up after the timeout"
    );
    // The modem is usable afterwards.
    channel
        .send(&testkit::message("d", "+81312345678", NOTICE))
        .await
        .expect("next call works");
    channel.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_port_is_reopened_with_backoff() {
    let (channel, _record, opens) = start(config(), SimConfig::default(), 3);
    assert!(!channel.health().await.is_up());
    wait_up(&channel).await;
    assert_eq!(opens.load(Ordering::SeqCst), 4);
    channel
        .send(&testkit::message("d", "+81312345678", NOTICE))
        .await
        .expect("accepted once the port opened");
    channel.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn sends_queue_for_the_only_modem() {
    let sim = SimConfig {
        dial_delay: Duration::from_secs(20),
        ..SimConfig::default()
    };
    let mut cfg = config();
    cfg.queue_timeout = Duration::from_secs(60);
    let (channel, record, _) = start(cfg.clone(), sim.clone(), 0);
    wait_up(&channel).await;
    let m1 = testkit::message("d1", "+81311111111", NOTICE);
    let m2 = testkit::message("d2", "+81322222222", NOTICE);
    let t0 = Instant::now();
    let (a, b) = tokio::join!(channel.send(&m1), channel.send(&m2));
    a.expect("first");
    b.expect("second, after the first");
    assert!(
        t0.elapsed() >= Duration::from_secs(40),
        "one modem, one call at a time"
    );
    assert_eq!(record.calls().len(), 2);
    channel.shutdown().await;

    // Waiting for a modem is bounded by queue_timeout.
    cfg.queue_timeout = Duration::from_secs(10);
    let (channel, record, _) = start(cfg, sim, 0);
    wait_up(&channel).await;
    let (a, b) = tokio::join!(channel.send(&m1), channel.send(&m2));
    a.expect("first");
    assert!(
        matches!(&b, Err(SendError::Unavailable { reason }) if reason.contains("busy")),
        "{b:?}"
    );
    assert_eq!(record.calls().len(), 1);
    channel.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_the_call_in_progress_finish() {
    let sim = SimConfig {
        dial_delay: Duration::from_secs(20),
        ..SimConfig::default()
    };
    let (channel, record, _) = start(config(), sim, 0);
    wait_up(&channel).await;
    let sender = channel.clone();
    let call = tokio::spawn(async move {
        sender
            .send(&testkit::message("d", "+81312345678", NOTICE))
            .await
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(record.calls().len(), 1, "dialling");
    channel.shutdown().await;
    call.await.unwrap().expect("the call in progress completed");
    assert_eq!(record.complete_pages().len(), 1);
    assert!(!channel.health().await.is_up());
    assert!(matches!(
        channel
            .send(&testkit::message("d", "+81312345678", NOTICE))
            .await,
        Err(SendError::Unavailable { .. })
    ));
    assert!(
        record.commands().last().is_some_and(|c| c == "ATH0"),
        "on hook at shutdown"
    );
}
