//! The fax channel against the Class 2.0 simulator on a pty, the driver opening the slave
//! path with tokio-serial; the captured page checked with hayro-ccitt, libtiff and tesseract.

mod support;

use std::time::Duration;

use pinpost_channel_core::testkit::{self, CANARY_PIN};
use pinpost_channel_core::{Channel, ReceiptStatus, SendError};
use pinpost_fax::class2::SessionParams;
use pinpost_fax::mh;
use pinpost_fax::page::{Resolution, render_page};
use pinpost_fax::sim::{Outcome, SimConfig, SimModem};
use pinpost_fax::{FaxChannel, FaxConfig};
use support::*;
use tokio::sync::mpsc;

const NOTICE: &str = "PIN 7305917735186203\n\
Amount: JPY 12,800\n\
Payee: Example Books Ltd.\n\
Expires: 2026-12-31 23:59 JST\n\
Issuer: Trusted Third Party Co.";

fn start(cfg: FaxConfig) -> (FaxChannel, mpsc::Receiver<pinpost_channel_core::Receipt>) {
    let (tx, rx) = mpsc::channel(16);
    (FaxChannel::start(cfg, tx), rx)
}

#[tokio::test]
async fn full_send_through_the_pty_simulator() {
    let sim = SimModem::start(SimConfig::default()).expect("pty simulator");
    let (channel, mut receipts) = start(test_config(vec![sim.path().to_owned()]));
    wait_up(&channel).await;

    let msg = testkit::message("d-1", "+81 3 1234 5678", NOTICE);
    let accepted = tokio::time::timeout(Duration::from_secs(30), channel.send(&msg))
        .await
        .expect("send bounded")
        .expect("accepted");
    assert_eq!(accepted.provider_refs.len(), 1);
    assert!(accepted.receipt_expected);
    let receipt = tokio::time::timeout(Duration::from_secs(5), receipts.recv())
        .await
        .expect("receipt in time")
        .expect("receipt");
    assert_eq!(receipt.provider_ref, accepted.provider_refs[0]);
    assert_eq!(receipt.status, ReceiptStatus::Delivered);

    // The dialogue, in order.
    let commands = sim.record().commands();
    let want = [
        "ATZ",
        "ATE0V1Q0",
        "AT+FCLASS=2.0",
        "AT+FLO=2",
        "AT+FBO=0",
        "AT+FCC=1,5,0,2,0,0,0,0",
        "AT+FLI=\"+81 3 0000 0000\"",
        "AT+FNR=1,1,1,0",
        "ATDT0312345678",
        "AT+FDT",
    ];
    let at = commands.iter().position(|c| c == "ATZ").expect("ATZ sent");
    assert_eq!(&commands[at..at + want.len()], &want, "{commands:?}");

    // The page: exactly what we rendered, row for row (hayro-ccitt).
    let pages = sim.record().complete_pages();
    assert_eq!(pages.len(), 1);
    let page = &pages[0];
    assert_eq!(page.number, "0312345678");
    assert_eq!(page.bit_order, 0);
    assert_eq!(page.resolution(), Resolution::Fine);
    let expected = render_page(NOTICE, Resolution::Fine).unwrap();
    assert_same_rows(
        &hayro_decode(&page.data, 1728, expected.height(), true),
        &expected,
    );

    // libtiff reads it as a 1728 × 2286 fine page; tesseract reads the PIN off it.
    let dir = tempfile::tempdir().unwrap();
    let tif = fax2tiff(dir.path(), &page.data, Resolution::Fine, false);
    let (width, rows, info) = tiffinfo_size(&tif);
    assert_eq!((width, rows), (1728, 2286), "{info}");
    let text = ocr(&tif);
    assert!(
        digits(&text).contains(CANARY_PIN),
        "tesseract did not read the PIN from the received page:\n{text}"
    );
    assert!(text.contains("JPY 12,800"), "amount not read:\n{text}");

    channel.shutdown().await;
}

#[tokio::test]
async fn core_testkit_against_the_simulator() {
    let sim = SimModem::start(SimConfig::default()).expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![sim.path().to_owned()]));
    let record = sim.record().clone();
    testkit::run(&channel, "+81312345678", |text| {
        let record = record.clone();
        async move {
            let want = mh::encode_for_modem(&render_page(&text, Resolution::Fine).unwrap());
            record.complete_pages().iter().any(|p| p.data == want)
        }
    })
    .await;
}

#[tokio::test]
async fn failures_are_classified() {
    let sim = SimModem::start(
        SimConfig::default()
            .with("0300000001", Outcome::Busy)
            .with("0300000002", Outcome::NoAnswer)
            .with("0300000003", Outcome::NoCarrier)
            .with("0300000004", Outcome::HangupAtDial(0x23))
            .with(
                "0300000005",
                Outcome::HangupMidPage {
                    after_bytes: 2000,
                    code: 0x43,
                },
            )
            .with("0300000006", Outcome::HangupAfterPage(0x54))
            .with("0300000007", Outcome::Rtn)
            .with("0300000008", Outcome::NoDialtone)
            .with("0300000009", Outcome::HangupAtDial(0x05)),
    )
    .expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![sim.path().to_owned()]));
    wait_up(&channel).await;

    let send = |n: &str| {
        let msg = testkit::message("d", &format!("+81{}", &n[1..]), NOTICE);
        let channel = channel.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), channel.send(&msg))
                .await
                .expect("send bounded")
        }
    };
    let dials = |n: &str| {
        sim.record()
            .calls()
            .iter()
            .filter(|c| c.number == n)
            .count()
    };

    // Busy, no answer, no carrier, ringback without answer: redialled (max_dials = 2),
    // then Transient.
    for n in ["0300000001", "0300000002", "0300000003", "0300000009"] {
        match send(n).await {
            Err(SendError::Transient { reason }) => {
                assert!(reason.contains("2 dials"), "{n}: {reason}")
            }
            other => panic!("{n}: expected Transient, got {other:?}"),
        }
        assert_eq!(dials(n), 2, "{n} dialled twice");
    }
    // Other hang-ups: Permanent with the code, no redial.
    match send("0300000004").await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "FHS:23"),
        other => panic!("expected Permanent FHS:23, got {other:?}"),
    }
    assert_eq!(dials("0300000004"), 1);
    match send("0300000005").await {
        Err(SendError::Permanent { code, reason }) => {
            assert_eq!(code, "FHS:43");
            assert!(reason.contains("underflow"), "{reason}");
        }
        other => panic!("expected Permanent FHS:43, got {other:?}"),
    }
    let cut = sim
        .record()
        .pages()
        .into_iter()
        .find(|p| p.number == "0300000005")
        .expect("partial page");
    assert!(!cut.complete());
    assert_eq!(cut.data.len(), 2000);
    // The whole page went out but no MCF came: in doubt, never blindly resent.
    assert!(matches!(
        send("0300000006").await,
        Err(SendError::InDoubt { .. })
    ));
    // RTN: the remote asks for the page again.
    match send("0300000007").await {
        Err(SendError::Transient { reason }) => assert!(reason.contains("RTN"), "{reason}"),
        other => panic!("expected Transient for RTN, got {other:?}"),
    }
    assert!(matches!(
        send("0300000008").await,
        Err(SendError::Unavailable { .. })
    ));

    // Refused before any dial.
    match bounded(channel.send(&testkit::message("d", "03-1234;ATH", NOTICE))).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "invalid_address"),
        other => panic!("{other:?}"),
    }
    let mut expired = testkit::message("d", "+81312345678", NOTICE);
    expired.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    match bounded(channel.send(&expired)).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "expired"),
        other => panic!("{other:?}"),
    }
    match bounded(channel.send(&testkit::message("d", "+81312345678", " \n "))).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "empty_message"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sim.record()
            .calls()
            .iter()
            .filter(|c| c.number == "0312345678")
            .count(),
        0
    );

    // After all that, the modem still delivers.
    let ok = send("0312345678")
        .await
        .expect("delivered after the failures");
    assert_eq!(ok.provider_refs.len(), 1);
    channel.shutdown().await;
}

#[tokio::test]
async fn remote_without_fine_gets_a_standard_page() {
    let mut standard_only = SessionParams::ours(Resolution::Standard);
    standard_only.br = 3; // 9600 bit/s
    let sim = SimModem::start(SimConfig {
        remote_dis: standard_only,
        ..SimConfig::default()
    })
    .expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![sim.path().to_owned()]));
    wait_up(&channel).await;
    bounded(channel.send(&testkit::message("d", "+81312345678", NOTICE)))
        .await
        .expect("accepted");
    let page = sim.record().complete_pages().pop().expect("a page");
    assert_eq!(page.resolution(), Resolution::Standard);
    assert_eq!(page.session.bit_rate(), 9600);
    let expected = render_page(NOTICE, Resolution::Standard).unwrap();
    assert_same_rows(&hayro_decode(&page.data, 1728, 1143, true), &expected);
    let dir = tempfile::tempdir().unwrap();
    let tif = fax2tiff(dir.path(), &page.data, Resolution::Standard, false);
    assert_eq!(tiffinfo_size(&tif).1, 1143);
    channel.shutdown().await;
}

#[tokio::test]
async fn noisy_echoing_modem_with_split_answers() {
    let sim = SimModem::start(SimConfig {
        noise: true,
        split_writes: true,
        echo: true,
        ..SimConfig::default()
    })
    .expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![sim.path().to_owned()]));
    wait_up(&channel).await;
    bounded(channel.send(&testkit::message("d", "+81312345678", NOTICE)))
        .await
        .expect("accepted despite noise, echo and split answers");
    assert_eq!(sim.record().complete_pages().len(), 1);
    channel.shutdown().await;
}

#[tokio::test]
async fn a_pool_of_modems_calls_in_parallel() {
    let slow = || SimConfig {
        dial_delay: Duration::from_secs(2),
        ..SimConfig::default()
    };
    let a = SimModem::start(slow()).expect("pty simulator");
    let b = SimModem::start(slow()).expect("pty simulator");
    let (channel, _receipts) = start(test_config(vec![a.path().to_owned(), b.path().to_owned()]));
    assert_eq!(channel.capabilities().window, 2);
    // Both modems probed, and at least one ready (a send waits for the other to open).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.record().commands().is_empty() || b.record().commands().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "modems not probed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_up(&channel).await;
    let m1 = testkit::message("d1", "+81311111111", NOTICE);
    let m2 = testkit::message("d2", "+81322222222", NOTICE);
    let (c1, c2) = (channel.clone(), channel.clone());
    let h1 = tokio::spawn(async move { c1.send(&m1).await });
    let h2 = tokio::spawn(async move { c2.send(&m2).await });
    // Parallel: both modems are dialling (each dial takes 2 s) before either send is over.
    let mut overlapped = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !(h1.is_finished() || h2.is_finished()) && tokio::time::Instant::now() < deadline {
        if a.record().calls().len() == 1 && b.record().calls().len() == 1 {
            overlapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        overlapped,
        "the second call did not start while the first was in progress"
    );
    let (r1, r2) = bounded(async { (h1.await.unwrap(), h2.await.unwrap()) }).await;
    let (r1, r2) = (r1.expect("first"), r2.expect("second"));
    assert_ne!(r1.provider_refs, r2.provider_refs);
    assert_eq!(a.record().calls().len(), 1, "one call per modem");
    assert_eq!(b.record().calls().len(), 1, "one call per modem");
    channel.shutdown().await;
}

#[tokio::test]
async fn missing_device_is_down_and_unavailable() {
    let (channel, _receipts) = start(test_config(vec!["/dev/pinpost-no-such-modem".into()]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health = channel.health().await;
    assert!(!health.is_up());
    match bounded(channel.send(&testkit::message("d", "+81312345678", NOTICE))).await {
        Err(SendError::Unavailable { reason }) => {
            assert!(reason.contains("no-such-modem"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    channel.shutdown().await;

    let mut bad = test_config(vec!["/dev/null".into()]);
    bad.local_id = "x".repeat(21);
    let (channel, _receipts) = start(bad);
    assert!(
        matches!(channel.health().await, pinpost_channel_core::Health::Down { reason } if reason.contains("local_id"))
    );
    assert!(matches!(
        bounded(channel.send(&testkit::message("d", "+81312345678", NOTICE))).await,
        Err(SendError::Unavailable { .. })
    ));
}
