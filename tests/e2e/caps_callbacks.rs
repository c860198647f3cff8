//! Fraud and cost caps, and signed status callbacks, through the real daemon.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

#[test]
fn caps_refuse_before_anything_is_stored_or_sent() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_sections = r#"
[caps]
per_msisdn_hour = 2
[[caps.destination]]
prefix = "+882"
action = "block"
[[caps.destination]]
country = "US"
action = "cap"
per_day = 1
"#
    .into();
    let d = Daemon::start(dir.path(), &o);
    for i in 0..2 {
        let r = d.enqueue(&format!("k{i}"), &delivery("+819012345678", &pin_for(i)));
        assert_eq!(r.status, 202, "{}", r.raw);
    }
    // A replay of an accepted request is not a new send.
    assert_eq!(
        d.enqueue("k0", &delivery("+819012345678", &pin_for(0)))
            .status,
        202
    );
    let over = d.enqueue("k2", &delivery("+819012345678", CANARY));
    assert_eq!(over.status, 429, "{}", over.raw);
    assert_eq!(over.body["error"]["code"], "cap_exceeded");
    let wait: u64 = over.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    // A voucher to the same number is refused the same way, and nothing is minted.
    let v = http(
        "POST",
        &format!("{}/v1/vouchers", d.base),
        Some(&d.token),
        &[("Idempotency-Key", "v-over")],
        Some(
            &json!({"msisdn": "+819012345678", "amount": {"value": "1", "currency": "JPY"},
                    "payee": "*", "funding": {"source": "bank", "institution": "b"}})
            .to_string(),
        ),
    );
    assert_eq!(v.status, 429, "{}", v.raw);

    let blocked = d.enqueue("k3", &delivery("+88234567890", &pin_for(3)));
    assert_eq!(blocked.status, 403, "{}", blocked.raw);
    assert_eq!(blocked.body["error"]["code"], "destination_blocked");
    assert_eq!(
        d.enqueue("k4", &delivery("+12025550123", &pin_for(4)))
            .status,
        202
    );
    let us = d.enqueue("k5", &delivery("+12025550124", &pin_for(5)));
    assert_eq!(us.status, 429, "the US budget is shared: {}", us.raw);

    smsc.wait_messages(3, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        smsc.messages().len(),
        3,
        "refused sends never reach the SMSC"
    );
    let counted = d.admin("GET", "/metrics", None).raw;
    assert!(
        counted.contains("pinpost_caps_denied_total{code=\"cap_exceeded\"} 3"),
        "{counted}"
    );
    assert!(!over.raw.contains(CANARY) && !d.proc.log().contains(CANARY));
    assert!(files_containing(dir.path(), CANARY.as_bytes()).is_empty());

    // The counts survive a restart: they are read back from the database.
    let mut d = d;
    d.restart();
    let again = d.enqueue("k6", &delivery("+819012345678", &pin_for(6)));
    assert_eq!(again.status, 429, "{}", again.raw);
}

type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// A billing system's callback endpoint: records (headers, body) and answers 500 to the
/// first request, 200 afterwards.
fn receiver() -> (String, Calls, tokio::runtime::Runtime) {
    use axum::http::HeaderMap;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got: Calls = Arc::default();
    let g = got.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let g = g.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let mut v = g.lock().unwrap();
                v.push((h("pinpost-signature"), h("idempotency-key"), body));
                if v.len() == 1 {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/events"), got, rt)
}

#[test]
fn signed_callbacks_report_delivery_and_voucher_states() {
    let (url, got, _rt) = receiver();
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let secret = "callback-secret-0123456789abcdef";
    std::fs::write(dir.path().join("cb.secret"), secret).unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_sections =
        "[callbacks]\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"\npoll_interval = \"50ms\"\n"
            .into();
    let config = write_config(dir.path(), &o);
    // Give the billing token a callback secret (the URL comes with each request).
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("token_file = \"{}/billing.token\"", dir.path().display()),
        &format!(
            "token_file = \"{0}/billing.token\"\ncallback_secret_file = \"{0}/cb.secret\"",
            dir.path().display()
        ),
    );
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start_with(dir.path(), &config);

    let r = http(
        "POST",
        &format!("{}/v1/vouchers", d.base),
        Some(&d.token),
        &[("Idempotency-Key", "cb-1")],
        Some(
            &json!({"msisdn": "+819012345678", "amount": {"value": "500", "currency": "JPY"},
                    "payee": "shop-1", "funding": {"source": "carrier_bill", "institution": "carrier"},
                    "callback_url": url})
            .to_string(),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let voucher = r.body["id"].as_str().unwrap().to_owned();
    let msgs = smsc.wait_messages(1, Duration::from_secs(10));
    let text = msgs[0]["text"].as_str().unwrap().to_owned();
    let pin: String = text
        .split("PIN ")
        .nth(1)
        .unwrap()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == ' ')
        .take(19)
        .filter(char::is_ascii_digit)
        .collect();
    // Redeem once the voucher is delivered, so both states are reported.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(
        "GET",
        &format!("{}/v1/vouchers/{voucher}", d.base),
        Some(&d.token),
        &[],
        None,
    )
    .body["state"]
        != "delivered"
    {
        assert!(Instant::now() < deadline, "voucher never delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let red = http(
        "POST",
        &format!("{}/v1/redemptions", d.base),
        Some(SHOP1_TOKEN),
        &[],
        Some(
            &json!({"pin": pin, "amount": {"value": "500", "currency": "JPY"}, "order_ref": "x"})
                .to_string(),
        ),
    );
    assert_eq!(red.status, 201, "{}", red.raw);

    let want = |b: &Value| b["type"] == "voucher.state" && b["voucher"]["state"] == "redeemed";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let calls = got.lock().unwrap().clone();
        let bodies: Vec<Value> = calls
            .iter()
            .map(|(_, _, b)| serde_json::from_str(b).unwrap_or(Value::Null))
            .collect();
        let redeemed = bodies.iter().any(want)
            && bodies
                .iter()
                .any(|b| b["type"] == "delivery.state" && b["delivery"]["state"] == "delivered")
            && bodies
                .iter()
                .any(|b| b["type"] == "voucher.state" && b["voucher"]["state"] == "delivered");
        // The first POST was answered 500: wait for its retry too.
        let retried = calls.len() > 1 && calls[1..].iter().any(|c| c.1 == calls[0].1);
        let done = redeemed && retried;
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no redeemed callback or no retry; got {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let calls = got.lock().unwrap().clone();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut seen = Vec::new();
    for (sig, key, body) in &calls {
        assert!(
            pinpost::callbacks::verify(secret.as_bytes(), sig, body.as_bytes(), now, 300),
            "signature {sig} over {body}"
        );
        assert!(!body.contains(&pin), "PIN in a callback");
        let b: Value = serde_json::from_str(body).unwrap();
        seen.push((b["type"].as_str().unwrap().to_owned(), key.clone(), b));
    }
    // The first POST was answered 500 and retried with the same idempotency key.
    let retry = calls[1..].iter().find(|c| c.1 == calls[0].1);
    assert!(
        retry.is_some_and(|r| r.2 == calls[0].2),
        "the refused callback is retried with its Idempotency-Key and body"
    );
    let has = |t: &str, f: &dyn Fn(&Value) -> bool| seen.iter().any(|(ty, _, b)| ty == t && f(b));
    assert!(has("delivery.state", &|b| b["delivery"]["state"]
        == "delivered"
        && b["voucher"]["id"] == voucher.as_str()));
    assert!(has("voucher.state", &|b| b["voucher"]["state"] == "delivered"));
    assert!(has("voucher.state", &|b| b["voucher"]["state"] == "redeemed"));
    assert!(!d.proc.log().contains(&pin));
    assert!(!d.proc.log().contains(secret));
}
