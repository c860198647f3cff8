//! The TAP driver against the paging-terminal simulator (`pinpost_pager::sim`): over
//! `tokio::io::duplex` for the protocol cases, and over a real pty pair (socat) where both
//! ends are opened as serial ports 7E1 with XON/XOFF, the way `PagerChannel::start` opens a
//! line.
//!
//! The pty test needs socat; without it it fails and says what to install.

mod support;

use std::time::Duration;

use pinpost_channel_core::testkit::{self, CANARY_PIN, message};
use pinpost_channel_core::{Channel, ChannelId, Health, SecretString, SendError};
use pinpost_pager::sim::{Terminal, TerminalConfig};
use pinpost_pager::{PagerChannel, PagerConfig, TapConfig, fit_pin_first};
use support::{LogCapture, Socat};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const PAGER: &str = "5551000";

fn config() -> TapConfig {
    let mut c = TapConfig::new(ChannelId::new("tap-test"), "/dev/null");
    c.probe_interval = Duration::from_millis(200);
    c.id_timeout = Duration::from_secs(3);
    c.login_timeout = Duration::from_secs(2);
    c.go_ahead_timeout = Duration::from_secs(2);
    c.block_timeout = Duration::from_secs(2);
    c.logout_timeout = Duration::from_secs(2);
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(500);
    c
}

/// A channel on one end of a duplex pipe, the simulator on the other.
struct Rig {
    ch: PagerChannel,
    term: Terminal,
    task: JoinHandle<std::io::Result<()>>,
}

impl Rig {
    fn new(cfg: TapConfig, term: TerminalConfig) -> Rig {
        let (a, b) = tokio::io::duplex(4096);
        let term = Terminal::new(term);
        let serving = term.clone();
        let task = tokio::spawn(async move { serving.serve(b).await });
        let (tx, _rx) = mpsc::channel(8);
        let ch = PagerChannel::start_tap_with_stream(cfg, tx, a);
        Rig { ch, term, task }
    }

    async fn up(&self) {
        for _ in 0..250 {
            if self.ch.health().await.is_up() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("channel never came up: {:?}", self.ch.health().await);
    }

    async fn finish(self) {
        self.ch.shutdown().await;
        let stats = self.term.stats();
        assert!(stats.violations.is_empty(), "{:?}", stats.violations);
        self.task.abort();
    }
}

#[tokio::test]
async fn testkit_over_duplex() {
    let rig = Rig::new(config(), TerminalConfig::default());
    let term = rig.term.clone();
    testkit::run(&rig.ch, PAGER, move |text| {
        let found = term
            .pages()
            .iter()
            .any(|p| p.pager_id == PAGER && p.message == text);
        async move { found }
    })
    .await;
    let stats = rig.term.stats();
    assert_eq!(stats.logins, 1, "one session carried the three pages");
    assert_eq!(stats.logouts, 1, "shutdown logged out");
    rig.finish().await;
}

#[tokio::test]
async fn testkit_over_a_pty_pair_opened_as_serial_ports() {
    let pair = Socat::pty_pair();
    let (driver_end, terminal_end) = (pair.ptys[0].clone(), pair.ptys[1].clone());

    let term = Terminal::new(TerminalConfig::default());
    let serving = term.clone();
    let port = pinpost_pager::serial::open_serial(terminal_end.as_ref(), 1200)
        .expect("open the terminal's pty");
    let task = tokio::spawn(async move { serving.serve(port).await });

    let mut cfg = config();
    cfg.device = driver_end.into();
    cfg.baud = 1200;
    let (tx, _rx) = mpsc::channel(8);
    let ch = PagerChannel::start(PagerConfig::Tap(cfg), tx);
    let t = term.clone();
    testkit::run(&ch, PAGER, move |text| {
        let found = t.pages().iter().any(|p| p.message == text);
        async move { found }
    })
    .await;
    let stats = term.stats();
    assert!(stats.violations.is_empty(), "{:?}", stats.violations);
    assert_eq!(stats.checksum_errors, 0);
    assert_eq!(term.pages().len(), 3);
    task.abort();
}

#[tokio::test]
async fn a_login_nak_is_retried() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            login_naks: 2,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    rig.ch
        .send(&message("d1", PAGER, "PIN 4921"))
        .await
        .expect("page");
    let stats = rig.term.stats();
    assert_eq!(stats.login_naks, 2);
    assert_eq!(stats.logins, 1);
    rig.finish().await;
}

#[tokio::test]
async fn a_login_refused_past_the_retries_keeps_the_channel_down() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            login_naks: 100,
            ..TerminalConfig::default()
        },
    );
    match rig.ch.send(&message("d1", PAGER, "PIN 4921")).await {
        Err(SendError::Unavailable { reason }) => {
            assert!(reason.contains("login refused"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(rig.ch.health().await, Health::Down { .. }));
    assert!(rig.term.pages().is_empty());
    rig.finish().await;
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let mut cfg = config();
    cfg.password = Some(SecretString::from("654321"));
    let rig = Rig::new(
        cfg,
        TerminalConfig {
            password: Some("123456".into()),
            ..TerminalConfig::default()
        },
    );
    match rig.ch.send(&message("d1", PAGER, "PIN 4921")).await {
        Err(SendError::Unavailable { reason }) => {
            assert!(reason.contains("hung up"), "{reason}");
            assert!(!reason.contains("654321"));
        }
        other => panic!("{other:?}"),
    }
    assert!(rig.term.stats().login_refusals >= 1);
    rig.finish().await;
}

#[tokio::test]
async fn the_right_password_logs_in() {
    let mut cfg = config();
    cfg.password = Some(SecretString::from("123456"));
    let rig = Rig::new(
        cfg,
        TerminalConfig {
            password: Some("123456".into()),
            probes_before_id: 2,
            ..TerminalConfig::default()
        },
    );
    rig.ch
        .send(&message("d1", PAGER, "PIN 4921"))
        .await
        .expect("page");
    rig.finish().await;
}

#[tokio::test]
async fn a_corrupted_block_is_nakked_and_resent() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            corrupt_blocks: 1,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    rig.ch
        .send(&message("d1", PAGER, "PIN 4921 7730 5561"))
        .await
        .expect("resent and taken");
    let stats = rig.term.stats();
    assert_eq!(stats.checksum_errors, 1);
    assert_eq!(stats.blocks, 2);
    assert_eq!(rig.term.pages().len(), 1);
    assert_eq!(rig.term.pages()[0].message, "PIN 4921 7730 5561");
    rig.finish().await;
}

#[tokio::test]
async fn a_block_corrupted_every_time_is_transient() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            corrupt_blocks: 100,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    match rig.ch.send(&message("d1", PAGER, "PIN 4921")).await {
        Err(SendError::Transient { reason }) => {
            assert!(reason.contains("refused 4 times"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rig.term.stats().checksum_errors,
        4,
        "sent once, resent three times"
    );
    assert!(rig.term.pages().is_empty());
    rig.finish().await;
}

#[tokio::test]
async fn an_invalid_pager_id_is_permanent_and_the_session_goes_on() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            invalid_ids: vec!["5550550".into()],
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    match rig.ch.send(&message("d1", "5550550", "PIN 4921")).await {
        Err(SendError::Permanent { code, reason }) => {
            assert_eq!(code, "tap:511");
            assert!(reason.contains("Invalid Pager ID"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    rig.ch
        .send(&message("d2", PAGER, "PIN 4921"))
        .await
        .expect("next page");
    let stats = rig.term.stats();
    assert_eq!(stats.rejected, 1);
    assert_eq!(stats.logins, 1, "the session survived the <RS>");
    rig.finish().await;
}

#[tokio::test]
async fn a_long_message_is_split_into_blocks() {
    let mut cfg = config();
    cfg.max_message_chars = 600;
    let rig = Rig::new(
        cfg,
        TerminalConfig {
            max_message_chars: 600,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    let rest: String = (0..520)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    let body = format!("PIN 4921 7730 5561\n{rest}");
    rig.ch
        .send(&message("d1", PAGER, &body))
        .await
        .expect("multi-block page");
    let pages = rig.term.pages();
    assert_eq!(pages.len(), 1);
    // 8 (ID+CR) + 539 (text) + 1 (CR) = 548 characters: 250 + 250 + 48.
    assert_eq!(pages[0].blocks, 3);
    assert_eq!(pages[0].message, format!("PIN 4921 7730 5561 {rest}"));
    rig.finish().await;

    // Small blocks and the longest pager ID.
    let mut cfg = config();
    cfg.block_chars = 40;
    let rig = Rig::new(
        cfg,
        TerminalConfig {
            max_block_chars: 40,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    let id = "1".repeat(32);
    let body = "PIN 4921 7730 5561 and then some more text to fill three blocks of forty";
    rig.ch
        .send(&message("d2", &id, body))
        .await
        .expect("small blocks");
    let pages = rig.term.pages();
    assert_eq!(pages[0].message, body);
    assert_eq!(pages[0].pager_id, id);
    assert_eq!(pages[0].blocks, 3);
    rig.finish().await;
}

#[tokio::test]
async fn the_pin_survives_trimming() {
    let mut cfg = config();
    cfg.max_message_chars = 40;
    let rig = Rig::new(
        cfg,
        TerminalConfig {
            max_message_chars: 40,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    let body = format!(
        "Your PIN {CANARY_PIN}\nAmount 12000 JPY\nPayee Example Shop Ltd\nExpires 2026-12-01"
    );
    rig.ch
        .send(&message("d1", PAGER, &body))
        .await
        .expect("page");
    let got = rig.term.pages()[0].message.clone();
    assert!(got.starts_with(&format!("Your PIN {CANARY_PIN} ")), "{got}");
    assert_eq!(got.chars().count(), 40);
    assert_eq!(got, fit_pin_first(&body, 40, " ").unwrap());

    // A first line that does not fit is refused before anything is written.
    let blocks = rig.term.stats().blocks;
    match rig
        .ch
        .send(&message(
            "d2",
            PAGER,
            &format!("PIN {CANARY_PIN} {CANARY_PIN} {CANARY_PIN}"),
        ))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "message_too_long"),
        other => panic!("{other:?}"),
    }
    assert_eq!(rig.term.stats().blocks, blocks);
    rig.finish().await;
}

#[tokio::test]
async fn non_ascii_text_is_made_7_bit() {
    let rig = Rig::new(config(), TerminalConfig::default());
    rig.up().await;
    rig.ch
        .send(&message("d1", PAGER, "PIN 4921\tpayé"))
        .await
        .expect("page");
    assert_eq!(rig.term.pages()[0].message, "PIN 4921 pay?");
    rig.finish().await;
}

#[tokio::test]
async fn silence_after_the_last_block_is_in_doubt() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            ignore_block: Some(1),
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    match rig.ch.send(&message("d1", PAGER, "PIN 4921")).await {
        Err(SendError::InDoubt { reason }) => assert!(reason.contains("last block"), "{reason}"),
        other => panic!("{other:?}"),
    }
    rig.ch.shutdown().await;
    rig.task.abort();
}

#[tokio::test]
async fn a_hang_up_instead_of_an_answer_is_transient_and_the_next_page_logs_in_again() {
    let rig = Rig::new(
        config(),
        TerminalConfig {
            hang_up_on_block: Some(1),
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    match rig.ch.send(&message("d1", PAGER, "PIN 4921")).await {
        Err(SendError::Transient { reason }) => assert!(reason.contains("hung up"), "{reason}"),
        other => panic!("{other:?}"),
    }
    rig.ch
        .send(&message("d2", PAGER, "PIN 4921"))
        .await
        .expect("a new session on the same line");
    assert_eq!(rig.term.stats().logins, 2);
    assert_eq!(rig.term.pages().len(), 1);
    rig.finish().await;
}

#[tokio::test]
async fn an_idle_session_logs_out_and_the_next_page_logs_in() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(200);
    let rig = Rig::new(cfg, TerminalConfig::default());
    rig.up().await;
    rig.ch
        .send(&message("d1", PAGER, "PIN 1"))
        .await
        .expect("first");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(rig.term.stats().logouts >= 1, "{:?}", rig.term.stats());
    rig.ch
        .send(&message("d2", PAGER, "PIN 2"))
        .await
        .expect("second");
    assert!(rig.term.stats().logins >= 2);
    assert_eq!(rig.term.pages().len(), 2);
    rig.finish().await;
}

#[tokio::test]
async fn a_dead_line_is_unavailable() {
    let (a, b) = tokio::io::duplex(64);
    drop(b);
    let (tx, _rx) = mpsc::channel(8);
    let ch = PagerChannel::start_tap_with_stream(config(), tx, a);
    match ch.send(&message("d1", PAGER, "PIN 1")).await {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(!ch.health().await.is_up());
    ch.shutdown().await;
}

#[tokio::test]
async fn a_refused_config_keeps_the_channel_down() {
    let mut cfg = config();
    cfg.baud = 600;
    let (tx, _rx) = mpsc::channel(8);
    let ch = PagerChannel::start(PagerConfig::Tap(cfg), tx);
    match ch.health().await {
        Health::Down { reason } => assert!(reason.contains("baud"), "{reason}"),
        Health::Up => panic!("up"),
    }
    assert!(matches!(
        ch.send(&message("d1", PAGER, "PIN 1")).await,
        Err(SendError::Unavailable { .. })
    ));
    assert_eq!(ch.capabilities().max_body_chars, 128);
    assert_eq!(ch.capabilities().window, 1);
    assert!(!ch.capabilities().receipts);
}

#[tokio::test]
async fn the_text_never_reaches_the_logs() {
    let logs = LogCapture::start();
    let rig = Rig::new(
        config(),
        TerminalConfig {
            invalid_ids: vec!["5550550".into()],
            corrupt_blocks: 1,
            ..TerminalConfig::default()
        },
    );
    rig.up().await;
    let body = format!("PIN {CANARY_PIN}\nAmount 1200 JPY");
    rig.ch
        .send(&message("d1", PAGER, &body))
        .await
        .expect("page");
    let e = rig
        .ch
        .send(&message("d2", "5550550", &body))
        .await
        .expect_err("invalid id");
    assert!(!format!("{e:?}").contains(CANARY_PIN));
    rig.finish().await;
    let text = logs.text();
    assert!(
        text.contains("page accepted"),
        "debug logs were captured: {text}"
    );
    assert!(!text.contains(CANARY_PIN), "the PIN was logged: {text}");
    assert!(!text.contains("Amount 1200"), "the text was logged: {text}");
}
