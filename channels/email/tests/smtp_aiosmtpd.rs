//! The e-mail channel against a real SMTP server written elsewhere (PyPI aiosmtpd, run by
//! `peers/email/smtp_server.py` on a loopback port), with the messages it received decrypted
//! by GnuPG and parsed by Python's email package.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::testkit::{self, CANARY_PIN};
use pinpost_channel_core::{Channel, Health, SendError};
use pinpost_email::{
    DkimAlgorithm, DkimConfig, EmailChannel, EmailConfig, EmailDevice, KeyLookup, MemoryKeyLookup,
    Tls,
};
use support::{
    Gpg, KeyKind, Peer, PeerOptions, armored_payload, config, contains, inspect_mime,
    inspect_mime_bytes, verify_dkim,
};

const SUBSCRIBER: &str = "subscriber@pinpost.test";

fn receipts() -> pinpost_channel_core::ReceiptSink {
    tokio::sync::mpsc::channel(8).0
}

fn device(address: &str, key: Option<String>, allow_plaintext: bool) -> EmailDevice {
    EmailDevice {
        address: address.into(),
        openpgp_public_key: key,
        allow_plaintext,
    }
}

async fn wait_up(channel: &EmailChannel) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match channel.health().await {
            Health::Up => return,
            Health::Down { reason } => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "channel never came up: {reason}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_down(channel: &EmailChannel) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Health::Down { reason } = channel.health().await
            && reason != "connecting"
        {
            return reason;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel never went down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The decrypted text of a received PGP/MIME message, as GnuPG and Python's email package
/// read it.
async fn decrypted_text(gpg: &Gpg, raw: &[u8]) -> Option<String> {
    let armored = armored_payload(raw)?;
    let inner = gpg.decrypt(&armored).await?;
    let entity = inspect_mime_bytes(&inner).await;
    assert_eq!(entity["content_type"], "text/plain", "{entity}");
    assert_eq!(entity["params"]["charset"], "utf-8", "{entity}");
    Some(entity["parts"][0]["payload"].as_str()?.to_owned())
}

/// Check the RFC 3156 structure of a received message with Python's email package.
async fn assert_pgp_mime(received: &support::Received) {
    let m = inspect_mime(&received.path).await;
    assert_eq!(m["content_type"], "multipart/encrypted", "{m}");
    assert_eq!(m["params"]["protocol"], "application/pgp-encrypted", "{m}");
    assert_eq!(m["defects"], serde_json::json!([]), "{m}");
    let parts = m["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{m}");
    assert_eq!(parts[0]["content_type"], "application/pgp-encrypted");
    assert_eq!(parts[0]["payload"].as_str().unwrap().trim(), "Version: 1");
    assert_eq!(parts[1]["content_type"], "application/octet-stream");
    let payload = parts[1]["payload"].as_str().unwrap();
    assert!(
        payload
            .trim_start()
            .starts_with("-----BEGIN PGP MESSAGE-----")
    );
    assert!(payload.trim_end().ends_with("-----END PGP MESSAGE-----"));
    assert_eq!(m["headers"]["auto-submitted"], "auto-generated");
    assert_eq!(m["headers"]["mime-version"], "1.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_test_kit_passes_against_aiosmtpd() {
    let peer = Arc::new(Peer::start(PeerOptions::default()).await);
    let gpg = Gpg::new();
    let key = gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await;
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(key),
        false,
    )]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());

    let (p, g) = (peer.clone(), gpg.clone());
    testkit::run(&channel, SUBSCRIBER, move |text| {
        let (peer, gpg) = (p.clone(), g.clone());
        async move {
            for m in peer.messages() {
                if let Some(plain) = decrypted_text(&gpg, &m.raw).await
                    && plain.contains(&text)
                {
                    return true;
                }
            }
            false
        }
    })
    .await;

    let received = peer.messages();
    assert_eq!(received.len(), 3, "the kit sends three messages");
    for m in &received {
        assert!(
            !contains(&m.raw, CANARY_PIN.as_bytes()),
            "PIN in the clear on the wire"
        );
        assert_pgp_mime(m).await;
        assert_eq!(m.meta["tls"], true);
        assert_eq!(m.meta["authenticated"], true);
        assert_eq!(m.meta["login"], support::USER);
        assert_eq!(m.meta["mail_from"], "pins@pinpost.test");
        assert_eq!(m.meta["rcpt_tos"], serde_json::json!([SUBSCRIBER]));
        assert_eq!(m.meta["helo"], "client.pinpost.test");
    }
    assert!(
        peer.auth_log()
            .lines()
            .all(|l| l.contains("tls=True ok=True")),
        "{}",
        peer.auth_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgp_mime_decrypts_with_gnupg_for_curve25519_and_rsa_keys() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::new());
    let ecc = "ecc@pinpost.test";
    let rsa = "rsa@pinpost.test";
    keys.insert(device(
        ecc,
        Some(gpg.generate(ecc, KeyKind::Curve25519).await),
        false,
    ));
    keys.insert(device(
        rsa,
        Some(gpg.generate(rsa, KeyKind::Rsa).await),
        false,
    ));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    wait_up(&channel).await;

    for address in [ecc, rsa] {
        let body = format!("Your payment PIN is {CANARY_PIN}.\nValid for 10 minutes. ünïcödé");
        let accepted = channel
            .send(&testkit::message("d-1", address, &body))
            .await
            .unwrap();
        assert!(!accepted.receipt_expected);
        assert_eq!(accepted.provider_refs.len(), 1);
        // The reference is the queue id from "250 2.0.0 Ok: queued as <id>".
        let m = peer.wait_for(&accepted.provider_refs[0]).await;
        assert_eq!(m.meta["rcpt_tos"], serde_json::json!([address]));
        assert!(!contains(&m.raw, CANARY_PIN.as_bytes()), "PIN in the clear");
        assert!(m.raw.is_ascii());
        assert_pgp_mime(&m).await;
        let text = decrypted_text(&gpg, &m.raw)
            .await
            .expect("GnuPG decrypts it");
        assert_eq!(text.replace("\r\n", "\n").trim_end(), body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_is_permanent_and_nothing_is_sent() {
    let peer = Peer::start(PeerOptions::default()).await;
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        "nokey@pinpost.test",
        None,
        false,
    )]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    wait_up(&channel).await;
    for address in ["nokey@pinpost.test", "unknown@pinpost.test"] {
        match channel
            .send(&testkit::message("d-2", address, CANARY_PIN))
            .await
        {
            Err(SendError::Permanent { code, .. }) => assert_eq!(code, "no_openpgp_key"),
            other => panic!("{address}: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(peer.raw_files().is_empty(), "something reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_key_is_permanent_even_if_plaintext_is_allowed() {
    let peer = Peer::start(PeerOptions::default()).await;
    let signonly = include_str!("keys/signonly.pub.asc").to_owned();
    let revoked = include_str!("keys/revoked.pub.asc").to_owned();
    let keys = Arc::new(MemoryKeyLookup::with_devices([
        device("signonly@pinpost.test", Some(signonly), true),
        device("revoked@pinpost.test", Some(revoked), true),
        device("garbage@pinpost.test", Some("not a key".into()), true),
    ]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    wait_up(&channel).await;
    for address in [
        "signonly@pinpost.test",
        "revoked@pinpost.test",
        "garbage@pinpost.test",
    ] {
        match channel
            .send(&testkit::message("d-3", address, CANARY_PIN))
            .await
        {
            Err(SendError::Permanent { code, reason }) => {
                assert_eq!(code, "bad_openpgp_key", "{reason}");
                assert!(!reason.contains(CANARY_PIN));
            }
            other => panic!("{address}: {other:?}"),
        }
    }
    assert!(peer.raw_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_for_a_device_that_allows_it() {
    let peer = Peer::start(PeerOptions::default()).await;
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        "plain@pinpost.test",
        None,
        true,
    )]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    wait_up(&channel).await;
    let body = format!("Your PIN {CANARY_PIN}");
    let accepted = channel
        .send(&testkit::message("d-4", "plain@pinpost.test", &body))
        .await
        .unwrap();
    let m = peer.wait_for(&accepted.provider_refs[0]).await;
    assert_eq!(
        m.meta["tls"], true,
        "plaintext bodies still travel over TLS"
    );
    let parsed = inspect_mime(&m.path).await;
    assert_eq!(parsed["content_type"], "text/plain");
    assert!(
        parsed["parts"][0]["payload"]
            .as_str()
            .unwrap()
            .contains(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_without_starttls_is_refused_without_sending_credentials() {
    let peer = Peer::start(PeerOptions {
        tls: "none",
        ..PeerOptions::default()
    })
    .await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    let reason = wait_down(&channel).await;
    assert!(reason.contains("STARTTLS"), "{reason}");
    match channel
        .send(&testkit::message("d-5", SUBSCRIBER, CANARY_PIN))
        .await
    {
        Err(SendError::Unavailable { reason }) => assert!(reason.contains("STARTTLS"), "{reason}"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        peer.raw_files().is_empty(),
        "a message went out in plaintext"
    );
    assert_eq!(peer.auth_log(), "", "credentials went out in plaintext");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_refused() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let cfg = EmailConfig {
        tls_ca_file: None,
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    let reason = wait_down(&channel).await;
    assert!(reason.contains("STARTTLS"), "{reason}");
    assert!(matches!(
        channel
            .send(&testkit::message("d-6", SUBSCRIBER, CANARY_PIN))
            .await,
        Err(SendError::Unavailable { .. })
    ));
    assert!(peer.raw_files().is_empty());
    assert_eq!(peer.auth_log(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls() {
    let peer = Peer::start(PeerOptions {
        tls: "implicit",
        ..PeerOptions::default()
    })
    .await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let cfg = EmailConfig {
        tls: Tls::Implicit,
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;
    let accepted = channel
        .send(&testkit::message("d-7", SUBSCRIBER, CANARY_PIN))
        .await
        .unwrap();
    let m = peer.wait_for(&accepted.provider_refs[0]).await;
    assert_eq!(m.meta["tls"], true);
    assert_eq!(m.meta["authenticated"], true);
    assert!(
        decrypted_text(&gpg, &m.raw)
            .await
            .unwrap()
            .contains(CANARY_PIN)
    );

    // STARTTLS against an implicit-TLS port fails; it never falls back.
    let cfg = config("mail2", peer.port);
    let keys: Arc<dyn KeyLookup> = Arc::new(MemoryKeyLookup::new());
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_down(&channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_replies_are_classified() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let key = gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await;
    let addresses = [
        "tempfail@pinpost.test",
        "reject@pinpost.test",
        "datatemp@pinpost.test",
        "datareject@pinpost.test",
        SUBSCRIBER,
    ];
    let keys = Arc::new(MemoryKeyLookup::with_devices(
        addresses.map(|a| device(a, Some(key.clone()), false)),
    ));
    let cfg = EmailConfig {
        pool_size: 1,
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;
    let send = |address: &'static str| {
        let channel = channel.clone();
        async move {
            channel
                .send(&testkit::message("d-8", address, CANARY_PIN))
                .await
        }
    };

    match send("tempfail@pinpost.test").await {
        Err(SendError::Transient { reason }) => {
            assert!(
                reason.contains("RCPT TO") && reason.contains("451"),
                "{reason}"
            )
        }
        other => panic!("451: {other:?}"),
    }
    match send("reject@pinpost.test").await {
        Err(SendError::Permanent { code, reason }) => {
            assert_eq!(code, "smtp_550");
            assert!(reason.contains("5.1.1"), "{reason}");
        }
        other => panic!("550: {other:?}"),
    }
    match send("datatemp@pinpost.test").await {
        Err(SendError::Transient { reason }) => assert!(reason.contains("452"), "{reason}"),
        other => panic!("452: {other:?}"),
    }
    match send("datareject@pinpost.test").await {
        Err(SendError::Permanent { code, .. }) => assert_eq!(code, "smtp_554"),
        other => panic!("554: {other:?}"),
    }
    // The single pooled connection was reset after each refusal and still works.
    let accepted = send(SUBSCRIBER).await.unwrap();
    let m = peer.wait_for(&accepted.provider_refs[0]).await;
    assert_eq!(m.meta["rcpt_tos"], serde_json::json!([SUBSCRIBER]));
    assert_eq!(peer.messages().len(), 1, "only the last one was stored");
    assert_eq!(
        peer.auth_log().lines().count(),
        1,
        "one connection, one AUTH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_after_data_is_in_doubt() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let key = gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await;
    let keys = Arc::new(MemoryKeyLookup::with_devices(
        ["hangup@pinpost.test", "slow@pinpost.test", SUBSCRIBER]
            .map(|a| device(a, Some(key.clone()), false)),
    ));
    let cfg = EmailConfig {
        data_timeout: Duration::from_secs(1),
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;

    // The server takes the content, then drops the connection without a reply.
    match channel
        .send(&testkit::message("d-9", "hangup@pinpost.test", CANARY_PIN))
        .await
    {
        Err(SendError::InDoubt { reason }) => assert!(!reason.contains(CANARY_PIN)),
        other => panic!("hangup: {other:?}"),
    }
    // The server takes the content and never answers.
    // Without data_timeout this send would wait for ever; the guard only stops the test.
    let sent = tokio::time::timeout(
        Duration::from_secs(60),
        channel.send(&testkit::message("d-10", "slow@pinpost.test", CANARY_PIN)),
    )
    .await
    .expect("data_timeout bounds the wait");
    match sent {
        Err(SendError::InDoubt { reason }) => assert!(reason.contains("no reply"), "{reason}"),
        other => panic!("slow: {other:?}"),
    }
    // Both messages did reach the server: that is why they are in doubt, not failed.
    assert_eq!(peer.raw_files().len(), 2);
    // The channel carries on with fresh connections.
    channel
        .send(&testkit::message("d-11", SUBSCRIBER, CANARY_PIN))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unavailable() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let cfg = EmailConfig {
        password: Some("wrong".into()),
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    let reason = wait_down(&channel).await;
    assert!(
        reason.contains("AUTH") && reason.contains("535"),
        "{reason}"
    );
    assert!(!reason.contains("wrong"));
    assert!(matches!(
        channel
            .send(&testkit::message("d-12", SUBSCRIBER, CANARY_PIN))
            .await,
        Err(SendError::Unavailable { .. })
    ));
    assert!(peer.raw_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_server() {
    // A port with nothing behind it yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(include_str!("keys/alice.pub.asc").to_owned()),
        false,
    )]));
    let channel = EmailChannel::start(config("mail", port), keys, receipts());
    let reason = wait_down(&channel).await;
    assert!(reason.contains("connect"), "{reason}");
    match channel
        .send(&testkit::message("d-13", SUBSCRIBER, CANARY_PIN))
        .await
    {
        Err(SendError::Unavailable { reason }) => assert!(reason.contains("connect"), "{reason}"),
        other => panic!("{other:?}"),
    }

    let peer = Peer::start(PeerOptions {
        port: Some(port),
        ..PeerOptions::default()
    })
    .await;
    wait_up(&channel).await;
    peer.stop().await;
    let reason = wait_down(&channel).await;
    assert!(!reason.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_id_the_reference_is_the_message_id() {
    let peer = Peer::start(PeerOptions {
        queue_id: false,
        ..PeerOptions::default()
    })
    .await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let channel = EmailChannel::start(config("mail", peer.port), keys, receipts());
    wait_up(&channel).await;
    let accepted = channel
        .send(&testkit::message("d-14", SUBSCRIBER, CANARY_PIN))
        .await
        .unwrap();
    let reference = &accepted.provider_refs[0];
    assert!(reference.ends_with("@pinpost.test"), "{reference}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let m = loop {
        if let Some(m) = peer.messages().pop() {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let parsed = inspect_mime(&m.path).await;
    assert_eq!(
        parsed["headers"]["message-id"].as_str().unwrap(),
        format!("<{reference}>")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_pooled() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let cfg = EmailConfig {
        pool_size: 2,
        health_interval: Duration::from_secs(60),
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;
    let sends = (0..8).map(|i| {
        let channel = channel.clone();
        async move {
            channel
                .send(&testkit::message(
                    &format!("d-p{i}"),
                    SUBSCRIBER,
                    CANARY_PIN,
                ))
                .await
        }
    });
    let results = futures::future::join_all(sends).await;
    let refs: std::collections::HashSet<String> = results
        .into_iter()
        .map(|r| r.unwrap().provider_refs.remove(0))
        .collect();
    assert_eq!(refs.len(), 8);
    assert_eq!(peer.messages().len(), 8);
    // Every connection authenticates once: at most pool_size of them for 8 messages.
    let auths = peer.auth_log().lines().count();
    assert!((1..=2).contains(&auths), "{auths} connections");
    assert!(channel.idle_connections() <= 2);
    channel.shutdown().await;
    assert_eq!(channel.idle_connections(), 0, "shutdown closes the pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signature_verifies_with_dkimpy() {
    let peer = Peer::start(PeerOptions::default()).await;
    let gpg = Gpg::new();
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(gpg.generate(SUBSCRIBER, KeyKind::Curve25519).await),
        false,
    )]));
    let cfg = EmailConfig {
        dkim: Some(DkimConfig {
            selector: "pin2025".into(),
            domain: "pinpost.test".into(),
            private_key_file: support::crate_dir().join("tests/keys/dkim-rsa.pem"),
            algorithm: DkimAlgorithm::Rsa,
        }),
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;
    let accepted = channel
        .send(&testkit::message("d-15", SUBSCRIBER, CANARY_PIN))
        .await
        .unwrap();
    let m = peer.wait_for(&accepted.provider_refs[0]).await;
    let record = include_str!("keys/dkim-rsa.txt").trim();
    let v = verify_dkim(&m.path, record).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["domain"], "pinpost.test");
    assert_eq!(v["selector"], "pin2025");
    // A changed header or body does not verify.
    let text = String::from_utf8(m.raw.clone()).unwrap();
    for (from, to) in [
        ("Subject: Your payment PIN", "Subject: Your payment PIM"),
        ("Version: 1", "Version: 2"),
    ] {
        assert!(text.contains(from));
        let tampered = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tampered.path(), text.replacen(from, to, 1)).unwrap();
        assert_eq!(
            verify_dkim(tampered.path(), record).await["ok"],
            false,
            "{to}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_channel_is_down_and_unavailable() {
    let keys: Arc<dyn KeyLookup> = Arc::new(MemoryKeyLookup::new());
    let cfg = EmailConfig {
        tls_ca_file: Some("/nonexistent/ca.pem".into()),
        ..config("mail", 25)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    match channel.health().await {
        Health::Down { reason } => assert!(reason.contains("tls_ca_file"), "{reason}"),
        Health::Up => panic!("up"),
    }
    assert!(matches!(
        channel
            .send(&testkit::message("d-16", SUBSCRIBER, CANARY_PIN))
            .await,
        Err(SendError::Unavailable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_any_smtp_command() {
    let peer = Peer::start(PeerOptions::default()).await;
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(include_str!("keys/alice.pub.asc").to_owned()),
        false,
    )]));
    let cfg = EmailConfig {
        max_body_chars: 100,
        ..config("mail", peer.port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;

    let mut expired = testkit::message("d-17", SUBSCRIBER, CANARY_PIN);
    expired.expires_at = Some(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    let long = testkit::message("d-18", SUBSCRIBER, &"x".repeat(101));
    let bad_address = testkit::message("d-19", "subscriber@pinpost.test\r\nRCPT TO:<x@y>", "x");
    let no_domain = testkit::message("d-20", "subscriber", "x");
    for (msg, want) in [
        (expired, "expired"),
        (long, "message_too_long"),
        (bad_address, "invalid_address"),
        (no_domain, "invalid_address"),
    ] {
        match channel.send(&msg).await {
            Err(SendError::Permanent { code, .. }) => assert_eq!(code, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    assert!(peer.raw_files().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_pooled_connection_is_replaced_transparently() {
    let peer = Peer::start(PeerOptions::default()).await;
    let port = peer.port;
    let keys = Arc::new(MemoryKeyLookup::with_devices([device(
        SUBSCRIBER,
        Some(include_str!("keys/alice.pub.asc").to_owned()),
        false,
    )]));
    let cfg = EmailConfig {
        pool_size: 1,
        health_interval: Duration::from_secs(3600),
        ..config("mail", port)
    };
    let channel = EmailChannel::start(cfg, keys, receipts());
    wait_up(&channel).await;
    channel
        .send(&testkit::message("d-21", SUBSCRIBER, CANARY_PIN))
        .await
        .unwrap();
    assert_eq!(channel.idle_connections(), 1);

    // The server restarts: the pooled connection is dead, the channel does not know yet.
    peer.stop().await;
    let peer = Peer::start(PeerOptions {
        port: Some(port),
        ..PeerOptions::default()
    })
    .await;
    let accepted = channel
        .send(&testkit::message("d-22", SUBSCRIBER, CANARY_PIN))
        .await
        .expect("retried on a fresh connection");
    peer.wait_for(&accepted.provider_refs[0]).await;
}
