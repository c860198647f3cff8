//! TAP through a dial-up modem: the driver initialises the modem, dials the paging
//! terminal's number and runs TAP once it answers CONNECT. A small modem front end on a pty
//! answers the AT dialogue, then hands the line to the paging-terminal simulator.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpost_channel_core::testkit;
use pinpost_channel_core::{Channel, ChannelId, SendError};
use pinpost_pager::sim::{Terminal, TerminalConfig};
use pinpost_pager::{PagerChannel, PagerConfig, TapConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::{SerialPort, SerialStream};

const PAGER: &str = "5551000";
const TERMINAL_NUMBER: &str = "0312345678";

/// Answer AT commands until a dial; `busy_first` dials are answered BUSY. Returns every
/// command line seen.
async fn modem_front_end(
    mut line: SerialStream,
    busy_first: usize,
    seen: Arc<Mutex<Vec<String>>>,
) -> SerialStream {
    let mut busy_left = busy_first;
    let mut cmd = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if line.read(&mut b).await.unwrap_or(0) == 0 {
            continue;
        }
        match b[0] & 0x7f {
            b'\r' => {
                let text = String::from_utf8_lossy(&cmd).trim().to_owned();
                cmd.clear();
                if text.is_empty() {
                    continue;
                }
                seen.lock().unwrap().push(text.clone());
                if text.to_ascii_uppercase().starts_with("ATD") {
                    if busy_left > 0 {
                        busy_left -= 1;
                        line.write_all(b"\r\nBUSY\r\n").await.unwrap();
                        continue;
                    }
                    line.write_all(b"\r\nCONNECT 1200\r\n").await.unwrap();
                    return line;
                }
                line.write_all(b"\r\nOK\r\n").await.unwrap();
            }
            b'\n' => {}
            c => cmd.push(c),
        }
    }
}

fn config(device: &str) -> TapConfig {
    let mut c = TapConfig::new(ChannelId::new("tap-dialup"), device);
    c.dial = Some(TERMINAL_NUMBER.into());
    c.connect_timeout = Duration::from_secs(5);
    c.probe_interval = Duration::from_millis(200);
    c.id_timeout = Duration::from_secs(3);
    c.login_timeout = Duration::from_secs(2);
    c.go_ahead_timeout = Duration::from_secs(2);
    c.block_timeout = Duration::from_secs(2);
    c.logout_timeout = Duration::from_secs(2);
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(300);
    c
}

#[tokio::test]
async fn pages_go_through_a_dialled_modem_after_a_busy_line() {
    let (master, slave) = SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty path");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let term = Terminal::new(TerminalConfig::default());
    let serving = term.clone();
    let front_seen = seen.clone();
    let task = tokio::spawn(async move {
        let line = modem_front_end(master, 1, front_seen).await;
        let _ = serving.serve(line).await;
    });
    let (tx, _rx) = mpsc::channel(8);
    let ch = PagerChannel::start(PagerConfig::Tap(config(&path)), tx);
    let t = term.clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        testkit::run(&ch, PAGER, move |text| {
            let found = t.pages().iter().any(|p| p.message == text);
            async move { found }
        }),
    )
    .await
    .expect("test kit within a minute");
    let seen = seen.lock().unwrap().clone();
    let dials: Vec<&String> = seen.iter().filter(|c| c.starts_with("ATD")).collect();
    assert_eq!(dials.len(), 2, "busy, then dialled again: {seen:?}");
    assert_eq!(dials[1], &format!("ATDT{TERMINAL_NUMBER}"));
    assert!(
        seen.iter().any(|c| c == "ATZ"),
        "the modem was initialised: {seen:?}"
    );
    assert!(
        term.stats().violations.is_empty(),
        "{:?}",
        term.stats().violations
    );
    assert_eq!(term.pages().len(), 3);
    drop(slave);
    task.abort();
}

#[test]
fn a_bad_dial_string_is_refused_by_validation() {
    let mut c = config("/dev/null");
    c.dial = Some("03-1234;DROP".into());
    let e = c.validate().unwrap_err();
    assert_eq!(e.field, "dial");
    let mut c = config("/dev/null");
    c.modem_init = vec!["RESET".into()];
    assert_eq!(c.validate().unwrap_err().field, "modem_init");
}

#[tokio::test]
async fn a_refused_config_never_sends() {
    let mut c = config("/dev/null");
    c.dial = Some("x".into());
    let (tx, _rx) = mpsc::channel(8);
    let ch = PagerChannel::start(PagerConfig::Tap(c), tx);
    let r = ch.send(&testkit::message("d1", PAGER, "PIN 4921")).await;
    assert!(matches!(r, Err(SendError::Unavailable { .. })), "{r:?}");
}
