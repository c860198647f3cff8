//! The SNPP driver against a server written elsewhere: Perl's `Net::SNPP::Server` (Debian
//! `libnet-snpp-perl`), run by `peers/pager/snpp-server.pl` on a free loopback port. The
//! script appends every page the library takes to a file as a JSON line; the tests read it.
//! TLS: `socat OPENSSL-LISTEN` with `peers/pager/tls` in front of the same server.
//!
//! Needs perl with Net::SNPP::Server and JSON::PP, and socat; without them these tests fail
//! and say what to install.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use pinpost_channel_core::testkit::{self, CANARY_PIN, message};
use pinpost_channel_core::{Channel, ChannelId, Health, SecretString, SendError};
use pinpost_pager::{
    PagerChannel, PagerConfig, SnppConfig, SnppLogin, SnppMessageCommand, fit_pin_first,
};
use serde_json::Value;
use support::{LogCapture, Socat, peer_dir};
use tokio::sync::mpsc;

const PAGER: &str = "5551000";

/// A running `snpp-server.pl`; killed (by pid) on drop.
struct Peer {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        match Command::new("perl")
            .args(["-MNet::SNPP::Server", "-MJSON::PP", "-e1"])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "perl cannot load Net::SNPP::Server (the SNPP test peer): install it \
                 (Debian/Ubuntu: `apt-get install libnet-snpp-perl`): {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "perl is needed for the SNPP interop tests and could not be run ({e}): install \
                 perl and Net::SNPP (Debian/Ubuntu: `apt-get install perl libnet-snpp-perl`)"
            ),
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("pages.jsonl");
        let mut child = Command::new("perl")
            .arg(peer_dir().join("snpp-server.pl"))
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn perl snpp-server.pl");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("snpp-server.pl did not start");
        let port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("snpp-server.pl said {line:?}"));
        Peer {
            child,
            _stdin: stdin,
            port,
            out,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("snpp://127.0.0.1:{}", self.port)
    }

    /// (pager ID, message) for every page the server took.
    fn pages(&self) -> Vec<(String, String)> {
        let Ok(text) = std::fs::read_to_string(&self.out) else {
            return Vec::new();
        };
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("a JSON line");
                (
                    v["pager"].as_str().unwrap_or_default().to_owned(),
                    v["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: String) -> SnppConfig {
    let mut c = SnppConfig::new(ChannelId::new("snpp-test"), url);
    c.connect_timeout = Duration::from_secs(5);
    c.reply_timeout = Duration::from_secs(5);
    c.send_timeout = Duration::from_secs(5);
    c.reconnect_min = Duration::from_millis(200);
    c.reconnect_max = Duration::from_secs(1);
    c
}

fn start(cfg: SnppConfig) -> PagerChannel {
    let (tx, _rx) = mpsc::channel(8);
    PagerChannel::start(PagerConfig::Snpp(cfg), tx)
}

async fn wait_up(ch: &PagerChannel) {
    for _ in 0..250 {
        if ch.health().await.is_up() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("channel never came up: {:?}", ch.health().await);
}

#[tokio::test]
async fn testkit_against_net_snpp_server() {
    let peer = Peer::start(&[]);
    let ch = start(config(peer.url()));
    let peer_ref = &peer;
    testkit::run(&ch, PAGER, move |text| {
        let found = peer_ref
            .pages()
            .iter()
            .any(|(id, m)| id == PAGER && *m == text);
        async move { found }
    })
    .await;
    assert_eq!(peer.pages().len(), 3);
}

#[tokio::test]
async fn an_invalid_pager_id_is_permanent_and_the_session_goes_on() {
    let peer = Peer::start(&["--invalid", "5550550"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    match ch.send(&message("d1", "5550550", "PIN 1234 5678")).await {
        Err(SendError::Permanent { code, reason }) => {
            assert_eq!(code, "snpp:550");
            assert!(reason.contains("Invalid Pager ID"), "{reason}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    ch.send(&message("d2", PAGER, "PIN 1234 5678"))
        .await
        .expect("the next page on the same channel");
    assert_eq!(
        peer.pages(),
        [(PAGER.to_owned(), "PIN 1234 5678".to_owned())]
    );
    ch.shutdown().await;
}

#[tokio::test]
async fn a_4xx_answer_is_transient() {
    let peer = Peer::start(&["--reply", "SEND=450 Paging network busy, try later"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    match ch.send(&message("d1", PAGER, "PIN 1234")).await {
        Err(SendError::Transient { reason }) => {
            assert!(reason.contains("450"), "{reason}")
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(peer.pages().is_empty());
    ch.shutdown().await;

    // 421 to PAGE: the gateway closes; a fresh session gets the same, still Transient.
    let peer = Peer::start(&["--reply", "PAGE=421 Gateway Service Unavailable"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    match ch.send(&message("d2", PAGER, "PIN 1234")).await {
        Err(SendError::Transient { reason }) => assert!(reason.contains("421"), "{reason}"),
        other => panic!("expected Transient, got {other:?}"),
    }
    ch.shutdown().await;
}

#[tokio::test]
async fn a_554_failure_is_permanent() {
    let peer = Peer::start(&["--fail", "5551999"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    match ch.send(&message("d1", "5551999", "PIN 1234")).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "snpp:554"),
        other => panic!("expected Permanent, got {other:?}"),
    }
    ch.send(&message("d2", PAGER, "PIN 9"))
        .await
        .expect("next page after RESE");
    ch.shutdown().await;
}

#[tokio::test]
async fn data_carries_lines_and_leading_dots() {
    let peer = Peer::start(&[]);
    let mut cfg = config(peer.url());
    cfg.message_command = SnppMessageCommand::Data;
    let ch = start(cfg);
    wait_up(&ch).await;
    let body = "PIN 4921 7730 5561\n.hidden line\n..two dots\nAmount 1200 JPY";
    ch.send(&message("d1", PAGER, body))
        .await
        .expect("DATA page");
    assert_eq!(peer.pages(), [(PAGER.to_owned(), body.to_owned())]);
    ch.shutdown().await;
}

#[tokio::test]
async fn auto_uses_mess_for_one_line_and_data_for_several() {
    let peer = Peer::start(&["--reply", "DATA=502 DATA not here"]);
    let mut cfg = config(peer.url());
    cfg.message_command = SnppMessageCommand::Auto;
    let ch = start(cfg);
    wait_up(&ch).await;
    ch.send(&message("d1", PAGER, "PIN 4921"))
        .await
        .expect("one line goes with MESS");
    match ch.send(&message("d2", PAGER, "PIN 4921\nAmount 5")).await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "snpp:502"),
        other => panic!("several lines use DATA, which this server refuses: {other:?}"),
    }
    ch.shutdown().await;
}

#[tokio::test]
async fn mess_trims_with_the_pin_first() {
    let peer = Peer::start(&[]);
    let mut cfg = config(peer.url());
    cfg.max_message_chars = 40;
    let ch = start(cfg);
    wait_up(&ch).await;
    let body = "PIN 4921 7730 5561\nAmount 12000 JPY\nPayee Example Shop Ltd\nExpires 2026-12-01";
    ch.send(&message("d1", PAGER, body)).await.expect("page");
    let pages = peer.pages();
    assert_eq!(pages.len(), 1);
    let got = &pages[0].1;
    assert!(got.starts_with("PIN 4921 7730 5561 "), "{got}");
    assert!(got.chars().count() <= 40, "{got}");
    assert_eq!(*got, fit_pin_first(body, 40, " ").unwrap());

    match ch
        .send(&message("d2", PAGER, &format!("PIN {}", "1".repeat(40))))
        .await
    {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "message_too_long"),
        other => panic!("{other:?}"),
    }
    assert_eq!(peer.pages().len(), 1);
    ch.shutdown().await;
}

#[tokio::test]
async fn logi_accepted_and_refused() {
    let peer = Peer::start(&["--login", "gateway:s3cret"]);
    let mut cfg = config(peer.url());
    cfg.login = Some(SnppLogin {
        user: "gateway".into(),
        password: Some(SecretString::from("s3cret")),
    });
    let ch = start(cfg.clone());
    wait_up(&ch).await;
    ch.send(&message("d1", PAGER, "PIN 1")).await.expect("page");
    ch.shutdown().await;

    cfg.login = Some(SnppLogin {
        user: "gateway".into(),
        password: Some(SecretString::from("wrong")),
    });
    let ch = start(cfg);
    match ch.send(&message("d2", PAGER, "PIN 2")).await {
        Err(SendError::Unavailable { reason }) => {
            assert!(reason.contains("login refused: 550"), "{reason}");
            assert!(!reason.contains("wrong"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match ch.health().await {
        Health::Down { reason } => assert!(reason.contains("login refused"), "{reason}"),
        Health::Up => panic!("up with a refused login"),
    }
    assert_eq!(peer.pages().len(), 1);
    ch.shutdown().await;
}

#[tokio::test]
async fn a_session_the_server_timed_out_is_replaced() {
    // The library answers an idle connection with "421 Timeout, Goodbye" and closes it.
    let peer = Peer::start(&["--timeout", "1"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    ch.send(&message("d1", PAGER, "PIN 1"))
        .await
        .expect("first");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ch.send(&message("d2", PAGER, "PIN 2"))
        .await
        .expect("second, on a new session");
    assert_eq!(peer.pages().len(), 2);
    ch.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_unavailable() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ch = start(config(format!("snpp://127.0.0.1:{port}")));
    match ch.send(&message("d1", PAGER, "PIN 1")).await {
        Err(SendError::Unavailable { reason }) => assert!(reason.contains("connect"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(!ch.health().await.is_up());
    ch.shutdown().await;
}

#[tokio::test]
async fn snpps_through_a_tls_terminator() {
    let peer = Peer::start(&[]);
    let proxy = Socat::tls_proxy(peer.port);
    let port = proxy.port.expect("socat port");

    let mut cfg = config(format!("snpps://localhost:{port}"));
    cfg.tls_ca_file = Some(peer_dir().join("tls/ca.pem"));
    let ch = start(cfg);
    let peer_ref = &peer;
    testkit::run(&ch, PAGER, move |text| {
        let found = peer_ref.pages().iter().any(|(_, m)| *m == text);
        async move { found }
    })
    .await;

    // Without the test CA the certificate is not trusted: nothing is sent.
    let before = peer.pages().len();
    let ch = start(config(format!("snpps://localhost:{port}")));
    match ch.send(&message("d9", PAGER, "PIN 1")).await {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(peer.pages().len(), before);
    ch.shutdown().await;
}

#[tokio::test]
async fn the_text_never_reaches_the_logs() {
    let logs = LogCapture::start();
    let peer = Peer::start(&["--invalid", "5550550", "--reply", "HOLD=500 unused"]);
    let ch = start(config(peer.url()));
    wait_up(&ch).await;
    let body = format!("PIN {CANARY_PIN}\nAmount 1200 JPY");
    ch.send(&message("d1", PAGER, &body)).await.expect("page");
    let e = ch
        .send(&message("d2", "5550550", &body))
        .await
        .expect_err("invalid id");
    assert!(!format!("{e:?}").contains(CANARY_PIN));
    ch.shutdown().await;
    let text = logs.text();
    assert!(
        text.contains("page accepted"),
        "debug logs were captured: {text}"
    );
    assert!(!text.contains(CANARY_PIN), "the PIN was logged: {text}");
    assert!(!text.contains("Amount 1200"), "the text was logged: {text}");
}
