//! The SMPP driver against a third-party SMPP server: the npm `smpp` package, run by
//! `peers/node/smpp-server.js` on a loopback port. The server records every PDU it decodes
//! as a JSON line; the tests check what it saw (esm_class, data_coding, UDH, the text as
//! that library decodes it) and what came back (receipts).
//!
//! Needs Node.js and `cd peers/node && npm install`; without them these tests fail and say so.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pinpost_channel_core::testkit::{self, message};
use pinpost_channel_core::{
    Channel, ChannelId, Health, Receipt, ReceiptStatus, SecretString, SendError,
};
use pinpost_smpp::client::{InterfaceVersion, SmppChannel, SmppConfig, SmppService};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

const TO: &str = "+819012345678";

fn peer_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers/node")
}

/// A running `node smpp-server.js`; killed on drop.
struct NodePeer {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl NodePeer {
    fn start(args: &[&str]) -> NodePeer {
        let dir = peer_dir();
        let dir = dir.canonicalize().unwrap_or(dir);
        match Command::new("node").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "Node.js is needed for the SMPP interop tests and `node` was not found: install \
                 Node.js 18 or later (Debian/Ubuntu: `apt-get install nodejs npm`), then run \
                 `cd peers/node && npm install`"
            ),
        }
        assert!(
            dir.join("node_modules/smpp/package.json").is_file(),
            "peers/node/node_modules is missing the `smpp` package: run `cd {} && npm install`",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("smpp-server.js")
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn node smpp-server.js");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v["event"] == "listening" {
                    let _ = port_tx.send(v["port"].as_u64().unwrap_or(0) as u16);
                }
                sink.lock().unwrap().push(v);
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the node SMPP server did not start listening");
        NodePeer {
            child,
            _stdin: stdin,
            port,
            lines,
        }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }

    /// Wait until the server has reported at least `n` events of `kind` (its stdout is
    /// asynchronous, so a line may trail the PDU it describes).
    async fn wait_events(&self, kind: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events(kind);
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "the server reported {} {kind} events, expected {n}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = self._stdin.flush();
        self.kill();
    }
}

fn config(id: &str, url: String) -> SmppConfig {
    let mut c = SmppConfig::new(
        ChannelId::new(id),
        url,
        "pinpost",
        SecretString::from("secret".to_owned()),
        "PINPOST",
    );
    c.response_timeout = Duration::from_secs(5);
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(500);
    c
}

async fn bound(ch: &SmppChannel) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = ch.health().await;
        if h.is_up() {
            return;
        }
        assert!(Instant::now() < deadline, "never bound: {h:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Receive receipts until one for `provider_ref` arrives.
async fn receipt_for(rx: &mut mpsc::Receiver<Receipt>, provider_ref: &str) -> Receipt {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no receipt for {provider_ref}"))
            .expect("sink open");
        if r.provider_ref == provider_ref {
            return r;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_passes_the_core_test_kit() {
    let peer = NodePeer::start(&[]);
    let (tx, _rx) = mpsc::channel(256);
    let ch = SmppChannel::start(
        config("npm-kit", format!("smpp://127.0.0.1:{}", peer.port)),
        tx,
    );
    let lines = peer.lines.clone();
    testkit::run(&ch, TO, move |text| {
        let lines = lines.clone();
        async move {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|v| v["event"] == "submit_sm" && v["text"] == text.as_str())
        }
    })
    .await;

    let submits = peer.wait_events("submit_sm", 3).await;
    assert_eq!(
        submits.len(),
        3,
        "the send after shutdown never reached the server"
    );
    for s in &submits {
        assert_eq!(s["esm_class"], 0x00, "single part: esm_class 0x00");
        assert_eq!(s["data_coding"], 0x00);
        assert_eq!(s["destination_addr"], "819012345678");
        assert_eq!(s["dest_addr_ton"], 1);
        assert_eq!(s["dest_addr_npi"], 1);
        assert_eq!(s["source_addr"], "PINPOST");
        assert_eq!(s["source_addr_ton"], 5);
        assert_eq!(s["source_addr_npi"], 0);
        assert_eq!(s["registered_delivery"], 1);
        assert_eq!(s["service_type"], "");
        assert_eq!(s["udh_hex"], "");
    }
    until("unbind seen by the server", || {
        !peer.events("unbind").is_empty()
    })
    .await;
    assert_eq!(
        peer.wait_events("bind_transceiver", 1).await[0]["interface_version"],
        0x50
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_receipt_round_trip_gsm_escapes_and_concatenated_ucs2() {
    let peer = NodePeer::start(&["--receipts", "tlv"]);
    let (tx, mut rx) = mpsc::channel(256);
    let mut cfg = config("npm-dlr", format!("smpp://127.0.0.1:{}", peer.port));
    cfg.interface_version = InterfaceVersion::V34;
    let ch = SmppChannel::start(cfg, tx);
    bound(&ch).await;
    assert_eq!(
        peer.wait_events("bind_transceiver", 1).await[0]["interface_version"],
        0x34
    );

    // GSM with extension-table characters, decoded by the other library.
    let gsm = "PIN {7305} [9177] ~ €5 @ $ _";
    let a = ch.send(&message("d-gsm", TO, gsm)).await.expect("accepted");
    assert_eq!(a.provider_refs.len(), 1);
    let r = receipt_for(&mut rx, &a.provider_refs[0]).await;
    assert_eq!(r.status, ReceiptStatus::Delivered);
    assert_eq!(r.error_code.as_deref(), Some("000"));
    assert_eq!(r.channel.as_str(), "npm-dlr");
    let s = &peer.wait_events("submit_sm", 1).await[0];
    assert_eq!(s["data_coding"], 0x00);
    assert_eq!(s["esm_class"], 0x00);
    assert_eq!(
        s["text"], gsm,
        "the third-party GSM decoder reads our septets back"
    );
    assert_eq!(s["message_id"], a.provider_refs[0].as_str());

    // Concatenated UCS-2: Japanese, three parts.
    let ja = "ご利用ありがとうございます。お支払い用の暗証番号は 7305 9177 3518 6203 です。\
              有効期限は本日23時59分までです。この番号を他人に教えないでください。"
        .repeat(2);
    let units = ja.encode_utf16().count();
    let parts = units.div_ceil(67);
    assert!(parts >= 2, "{units} units");
    let b = ch.send(&message("d-ja", TO, &ja)).await.expect("accepted");
    assert_eq!(b.provider_refs.len(), parts);
    let submits = peer.wait_events("submit_sm", 1 + parts).await;
    let ja_parts = &submits[1..];
    assert_eq!(ja_parts.len(), parts);
    let mut text = String::new();
    let mut reference = None;
    for (i, p) in ja_parts.iter().enumerate() {
        assert_eq!(p["esm_class"], 0x40, "concatenated: UDHI set");
        assert_eq!(p["data_coding"], 0x08);
        let udh = p["udh_hex"].as_str().unwrap();
        assert_eq!(udh.len(), 12, "{udh}");
        assert_eq!(&udh[..6], "050003");
        let r = &udh[6..8];
        assert_eq!(
            *reference.get_or_insert(r.to_owned()),
            r,
            "one reference for all parts"
        );
        assert_eq!(&udh[8..], format!("{parts:02x}{:02x}", i + 1));
        assert_eq!(
            p["message_id"],
            b.provider_refs[i].as_str(),
            "refs in part order"
        );
        text.push_str(p["text"].as_str().unwrap());
    }
    assert_eq!(text, ja, "the parts decode back to the text");
    for id in &b.provider_refs {
        assert_eq!(
            receipt_for(&mut rx, id).await.status,
            ReceiptStatus::Delivered
        );
    }
    until("every deliver_sm answered", || {
        peer.events("deliver_sm_resp").len() == 1 + parts
    })
    .await;
    assert!(
        peer.events("deliver_sm_resp")
            .iter()
            .all(|v| v["command_status"] == 0)
    );
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_text_only_receipts_pass_the_decimal_id_through() {
    let peer = NodePeer::start(&["--receipts", "text"]);
    let (tx, mut rx) = mpsc::channel(256);
    let ch = SmppChannel::start(
        config("npm-text", format!("smpp://127.0.0.1:{}", peer.port)),
        tx,
    );
    bound(&ch).await;
    let a = ch.send(&message("d1", TO, "PIN 1234")).await.unwrap();
    let hex = &a.provider_refs[0];
    let decimal = u64::from_str_radix(hex, 16).unwrap().to_string();
    let r = receipt_for(&mut rx, &decimal).await;
    assert_eq!(r.status, ReceiptStatus::Delivered);
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_ussd_push_and_confirmation() {
    let peer = NodePeer::start(&[]);
    let (tx, mut rx) = mpsc::channel(256);
    let mut cfg = config("npm-ussd", format!("smpp://127.0.0.1:{}", peer.port));
    cfg.service = SmppService::Ussd { op: 3 };
    let ch = SmppChannel::start(cfg, tx);
    bound(&ch).await;
    let a = ch.send(&message("d1", TO, "PIN 4321")).await.unwrap();
    let s = &peer.wait_events("submit_sm", 1).await[0];
    assert_eq!(s["service_type"], "USSD");
    assert_eq!(s["ussd_service_op"], 3);
    assert_eq!(s["esm_class"], 0x00);
    assert_eq!(s["text"], "PIN 4321");
    let r = receipt_for(&mut rx, &a.provider_refs[0]).await;
    assert_eq!(r.status, ReceiptStatus::Delivered);
    ch.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_over_tls_with_a_private_ca() {
    let peer = NodePeer::start(&["--tls"]);
    let (tx, _rx) = mpsc::channel(256);
    let url = format!("smpps://localhost:{}", peer.port);

    // Without the CA the certificate is refused and the channel stays down.
    let untrusted = SmppChannel::start(config("npm-tls-untrusted", url.clone()), tx.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match untrusted.health().await {
            Health::Down { reason } if reason.contains("connect failed") => {
                assert!(reason.to_lowercase().contains("certificate"), "{reason}");
                break;
            }
            Health::Down { .. } => {}
            Health::Up => panic!("bound over TLS to an untrusted server"),
        }
        assert!(Instant::now() < deadline, "no TLS failure reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    untrusted.shutdown().await;

    let mut cfg = config("npm-tls", url);
    cfg.tls_ca_file = Some(peer_dir().join("tls/ca.pem"));
    let ch = SmppChannel::start(cfg, tx);
    bound(&ch).await;
    let a = ch.send(&message("d1", TO, "PIN over TLS")).await.unwrap();
    assert_eq!(a.provider_refs.len(), 1);
    assert_eq!(peer.wait_events("submit_sm", 1).await.len(), 1);
    ch.shutdown().await;
    assert_eq!(
        peer.events("bind_transceiver").len(),
        1,
        "the untrusted channel never bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_smpp_server_restart_is_survived() {
    let mut peer = NodePeer::start(&[]);
    let port = peer.port;
    let (tx, _rx) = mpsc::channel(256);
    let ch = SmppChannel::start(
        config("npm-restart", format!("smpp://127.0.0.1:{port}")),
        tx,
    );
    bound(&ch).await;
    ch.send(&message("d1", TO, "PIN 1")).await.unwrap();

    peer.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ch.health().await.is_up() {
        assert!(Instant::now() < deadline, "still up after the server died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        ch.send(&message("d2", TO, "PIN 2")).await,
        Err(SendError::Unavailable { .. })
    ));

    let port_arg = port.to_string();
    let peer2 = NodePeer::start(&["--port", &port_arg]);
    assert_eq!(peer2.port, port);
    bound(&ch).await;
    ch.send(&message("d3", TO, "PIN 3")).await.unwrap();
    assert_eq!(peer2.wait_events("submit_sm", 1).await.len(), 1);
    ch.shutdown().await;
}
