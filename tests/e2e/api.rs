//! The HTTP API: validation, authentication, idempotency, cancellation, PIN secrecy.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn stored_deliveries(d: &Daemon) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        d.dir.join("pinpost.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn bad_requests_get_clear_errors_and_store_nothing() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let url = format!("{}/v1/deliveries", d.base);
    let post = |token: Option<&str>, key: Option<&str>, body: &str| {
        let mut h = vec![];
        if let Some(k) = key {
            h.push(("Idempotency-Key", k));
        }
        http("POST", &url, token, &h, Some(body))
    };
    let ok_body = delivery("+819012345678", "4921773055614410").to_string();
    let big = format!(
        r#"{{"msisdn": "+819012345678", "pin": "4921773055614410", "payee": "{}"}}"#,
        "x".repeat(20_000)
    );
    // (token, idempotency key, body, status, error code)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (None, Some("k"), ok_body.clone(), 401, "unauthorized"),
        (Some("wrong-token-wrong-token"), Some("k"), ok_body.clone(), 401, "unauthorized"),
        (Some(d.token.as_str()), None, ok_body.clone(), 400, "idempotency_key_required"),
        (Some(d.token.as_str()), Some("k1"), delivery("819012345678", "4921773055614410").to_string(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k2"), delivery("+81-90-1234", "4921773055614410").to_string(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k3"), delivery("+819012345678", "49217730556144AB").to_string(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k4"), delivery("+819012345678", "123").to_string(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k5"), delivery("+819012345678", &"1".repeat(40)).to_string(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k6"), r#"{"msisdn": "+819012345678", "pin": "4921773055614410", "colour": "red"}"#.into(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k7"), "{not json".into(), 400, "invalid_json"),
        (Some(d.token.as_str()), Some("k8"), big, 413, "payload_too_large"),
        (Some(d.token.as_str()), Some("k9"), r#"{"msisdn": "+819012345678", "pin": "4921773055614410", "expires_at": "2001-01-01T00:00:00Z"}"#.into(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k10"), r#"{"msisdn": "+819012345678", "pin": "4921773055614410", "amount": {"value": "3,000", "currency": "JPY"}}"#.into(), 422, "invalid_request"),
        (Some(d.token.as_str()), Some("k11"), r#"{"pin": "4921773055614410"}"#.into(), 422, "invalid_request"),
    ];
    for (token, key, body, status, code) in cases {
        let r = post(token, key, &body);
        assert_eq!(r.status, status, "{body:.80}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], code, "{}", r.raw);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.len() > 10),
            "{}",
            r.raw
        );
    }
    assert_eq!(stored_deliveries(&d), 0, "nothing stored");
    let r = http(
        "GET",
        &format!("{}/v1/deliveries/nope", d.base),
        Some(&d.token),
        &[],
        None,
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        http("GET", &format!("{}/healthz", d.base), None, &[], None).status,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(smsc.messages().is_empty(), "nothing sent");
}

#[test]
fn idempotent_replay_and_conflict() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let body = json!({"msisdn": "+819012345678", "pin": "4921773055614410", "amount": {"value": "3000", "currency": "JPY"}});
    let a = d.enqueue("order-1", &body);
    assert_eq!(a.status, 202, "{}", a.raw);
    let b = d.enqueue("order-1", &body);
    assert_eq!(b.status, 202, "{}", b.raw);
    assert_eq!(
        a.body, b.body,
        "a replay answers what the first request got"
    );
    let mut other = body.clone();
    other["pin"] = json!("4921773055614411");
    let c = d.enqueue("order-1", &other);
    assert_eq!(c.status, 422, "{}", c.raw);
    assert_eq!(c.body["error"]["code"], "idempotency_conflict");
    let id = a.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(20),
    );
    smsc.wait_messages(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smsc.messages().len(), 1, "sent once");
    assert_eq!(stored_deliveries(&d), 1);
}

#[test]
fn cancel_before_submission_only() {
    // An SMSC that refuses binds keeps the channel down, so deliveries stay queued.
    let refusing = Smsc::start(&["--refuse-binds"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", refusing.addr)),
    );
    let r = http("GET", &format!("{}/readyz", d.base), None, &[], None);
    assert_eq!(
        r.status, 503,
        "not ready while the bind is refused: {}",
        r.raw
    );
    let a = d.enqueue("c-1", &delivery("+819012345678", "4921773055614410"));
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert_eq!(d.state(&id), "queued");
    let url = format!("{}/v1/deliveries/{id}", d.base);
    let c = http("DELETE", &url, Some(&d.token), &[], None);
    assert_eq!(c.status, 200, "{}", c.raw);
    assert_eq!(d.state(&id), "cancelled");
    let again = http("DELETE", &url, Some(&d.token), &[], None);
    assert_eq!(again.status, 409, "{}", again.raw);
    assert_eq!(again.body["error"]["code"], "not_cancellable");
    assert_eq!(
        http(
            "DELETE",
            &format!("{}/v1/deliveries/none", d.base),
            Some(&d.token),
            &[],
            None
        )
        .status,
        404
    );
    assert!(refusing.messages().is_empty());
}

#[test]
fn delivered_cannot_be_cancelled() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let a = d.enqueue("c-2", &delivery("+819012345678", "4921773055614410"));
    let id = a.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(20),
    );
    let c = http(
        "DELETE",
        &format!("{}/v1/deliveries/{id}", d.base),
        Some(&d.token),
        &[],
        None,
    );
    assert_eq!(c.status, 409, "{}", c.raw);
    let r = http("GET", &format!("{}/readyz", d.base), None, &[], None);
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[test]
fn canary_pin_never_leaks() {
    let smsc = Smsc::start(&["--receipt-delay", "50ms"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let mut bodies = Vec::new();
    let body = json!({"msisdn": "+819012345678", "pin": CANARY, "amount": {"value": "3000", "currency": "JPY"},
                      "payee": "Example Shop", "expires_at": "2099-12-01T00:00:00Z"});
    let a = d.enqueue("canary-1", &body);
    assert_eq!(a.status, 202, "{}", a.raw);
    bodies.push(a.raw.clone());
    bodies.push(d.enqueue("canary-1", &body).raw);
    // Errors whose input holds the PIN in odd places.
    for (k, b) in [
        (
            "canary-e1",
            format!(r#"{{"msisdn": "+819012345678", "pin": {CANARY}}}"#),
        ),
        (
            "canary-e2",
            format!(r#"{{"msisdn": "{CANARY}", "pin": "{CANARY}"}}"#),
        ),
        (
            "canary-e3",
            format!(r#"{{"msisdn": "+819012345678", "pin": "{CANARY}", "{CANARY}": 1}}"#),
        ),
        (
            "canary-e4",
            format!(r#"{{"msisdn": "+819012345678", "pin": "{CANARY}x"}}"#),
        ),
        (
            "canary-1",
            format!(r#"{{"msisdn": "+819012345678", "pin": "{CANARY}", "payee": "other"}}"#),
        ),
    ] {
        let r = http(
            "POST",
            &format!("{}/v1/deliveries", d.base),
            Some(&d.token),
            &[("Idempotency-Key", k)],
            Some(&b),
        );
        assert!(r.status >= 400, "{}", r.raw);
        bodies.push(r.raw);
    }
    let id = a.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(20),
    );
    bodies.push(d.get(&id).raw);
    // The SMSC got it: the search below can find the PIN where it is.
    smsc.wait_messages(1, Duration::from_secs(10));
    assert!(
        smsc.texts().iter().any(|t| t.contains(CANARY_GROUPED)),
        "{:?}",
        smsc.texts()
    );
    for b in &bodies {
        assert!(
            !b.contains(CANARY) && !b.contains(CANARY_GROUPED),
            "a response holds the PIN: {b}"
        );
    }
    let mut d = d;
    let status = d.proc.sigterm();
    assert!(status.success(), "{status}");
    let log = d.proc.log();
    assert!(log.lines().count() > 5, "debug logging was on");
    assert!(
        !log.contains(CANARY) && !log.contains(CANARY_GROUPED),
        "the log holds the PIN"
    );
    for needle in [CANARY, CANARY_GROUPED] {
        let hits = files_containing(dir.path(), needle.as_bytes());
        assert!(hits.is_empty(), "PIN in clear in {hits:?}");
    }
    // The encrypted copy is gone once delivered.
    let conn = rusqlite::Connection::open(dir.path().join("pinpost.db")).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM deliveries WHERE pin_ct IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0);
}
