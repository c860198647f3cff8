//! Checks that every channel driver passes, against whatever peer the caller set up.
//!
//! The caller builds the driver pointed at a peer (a fake, a simulator, or a real server
//! written elsewhere) and hands the kit a way to see what the peer received. The kit then
//! checks the behaviour the daemon relies on: an accepted send carries references, the body
//! reaches the peer intact, the body never shows in `Debug` output, and a send after
//! `shutdown` is refused without touching the peer.

use std::future::Future;
use std::time::Duration;

use secrecy::SecretString;

use crate::{Channel, OutboundMessage, SendError};

/// A canary PIN for tests: it must never appear anywhere but inside the delivered body.
pub const CANARY_PIN: &str = "7305917735186203";

/// Build a message for `address` whose body contains `text`.
pub fn message(delivery_id: &str, address: &str, text: &str) -> OutboundMessage {
    OutboundMessage {
        delivery_id: delivery_id.to_owned(),
        address: address.to_owned(),
        body: SecretString::from(text.to_owned()),
        expires_at: None,
    }
}

/// Run the kit.
///
/// `received` is called after each accepted send with the text the kit sent, and must
/// return true once the peer shows that text (it may poll; the kit gives it ten seconds).
pub async fn run<C, F, Fut>(channel: &C, address: &str, mut received: F)
where
    C: Channel + ?Sized,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let caps = channel.capabilities().clone();
    assert!(caps.window >= 1, "window must allow one send");
    assert!(
        caps.max_body_chars >= 16,
        "a channel must carry at least a PIN"
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !channel.health().await.is_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let text = format!("Your PIN {CANARY_PIN}");
    let msg = message("testkit-1", address, &text);
    let debug = format!("{msg:?}");
    assert!(
        !debug.contains(CANARY_PIN),
        "Debug of a message shows its body"
    );

    let accepted = channel.send(&msg).await.expect("send to a healthy peer");
    assert!(
        !accepted.provider_refs.is_empty(),
        "accepted without a reference"
    );
    assert!(
        accepted.provider_refs.iter().all(|r| !r.is_empty()),
        "an empty provider reference"
    );
    assert_eq!(accepted.receipt_expected, caps.receipts);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if received(text.clone()).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer never showed the message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two sends in a row get distinct references.
    let a = channel
        .send(&message("testkit-2", address, "one"))
        .await
        .expect("send");
    let b = channel
        .send(&message("testkit-3", address, "two"))
        .await
        .expect("send");
    assert_ne!(a.provider_refs, b.provider_refs, "references repeat");

    channel.shutdown().await;
    channel.shutdown().await;
    match channel.send(&message("testkit-4", address, "late")).await {
        Err(SendError::Unavailable { .. }) => {}
        other => panic!("send after shutdown must be Unavailable, got {other:?}"),
    }
    assert!(!channel.health().await.is_up(), "healthy after shutdown");
}
