//! Delivery through the loopback SMSC: receipts, faults, expiry, crashes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn enqueue_many(d: &Daemon, prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let r = d.enqueue(
                &format!("{prefix}-{i}"),
                &delivery("+819012345678", &pin_for(i)),
            );
            assert_eq!(r.status, 202, "{}", r.raw);
            r.body["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// How often each of the PINs 0..n reached the SMSC (waits for at least n records).
fn pin_counts(smsc: &Smsc, n: usize) -> Vec<usize> {
    smsc.wait_messages(n, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let texts = smsc.texts();
    (0..n)
        .map(|i| {
            let mut grouped = String::new();
            for (k, c) in pin_for(i).chars().enumerate() {
                if k > 0 && k % 4 == 0 {
                    grouped.push(' ');
                }
                grouped.push(c);
            }
            texts.iter().filter(|t| t.contains(&grouped)).count()
        })
        .collect()
}

#[test]
fn enqueue_to_delivered_by_receipt_across_id_bases() {
    // Hex message ids in submit_sm_resp, decimal in receipts: a common SMSC habit.
    let smsc = Smsc::start(&[
        "--message-id-base",
        "hex",
        "--receipt-id-base",
        "dec",
        "--receipt-delay",
        "100ms",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let body = json!({"msisdn": "+819012345678", "pin": "4921773055614410",
                      "amount": {"value": "3000", "currency": "JPY"}, "payee": "Example Shop",
                      "expires_at": "2099-12-01T00:00:00Z"});
    let r = d.enqueue("r-1", &body);
    assert_eq!(r.status, 202, "{}", r.raw);
    assert_eq!(r.body["state"], "queued");
    let id = r.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(20),
    );
    let v = d.get(&id).body;
    assert_eq!(v["msisdn"], "+819012345678");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(v["attempts"][0]["outcome"], "delivered");
    assert_eq!(v["attempts"][0]["channel"], "sms");
    assert!(
        v["attempts"][0]["provider_ref"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(v.get("pin").is_none());
    let msgs = smsc.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["destination_addr"], "819012345678");
    let text = msgs[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "PIN 4921 7730 5561 4410 for 3000 JPY at Example Shop, valid until 2099-12-01"
        ),
        "{text}"
    );
    assert_eq!(msgs[0]["data_coding"], 0, "GSM 7-bit for a text that fits");
}

#[test]
fn throttling_delays_but_loses_and_burns_nothing() {
    let smsc = Smsc::start(&["--throttle", "0.3", "--seed", "7"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let n = 150;
    let ids = enqueue_many(&d, "t", n);
    d.wait_states(&ids, &["delivered"], Duration::from_secs(90));
    for id in ids.iter().take(20) {
        let v = d.get(id).body;
        assert_eq!(
            v["attempts"].as_array().unwrap().len(),
            1,
            "a throttle is not an attempt: {v}"
        );
    }
    let counts = pin_counts(&smsc, n);
    assert!(
        counts.iter().all(|&c| c == 1),
        "each PIN accepted exactly once: {counts:?}"
    );
}

#[test]
fn dropped_connections_lose_nothing_and_bound_duplicates() {
    let window = 10;
    let smsc = Smsc::start(&["--drop-after", "60"]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.window = window;
    let d = Daemon::start(dir.path(), &o);
    let n = 200;
    let ids = enqueue_many(&d, "drop", n);
    d.wait_states(&ids, &["delivered"], Duration::from_secs(120));
    let counts = pin_counts(&smsc, n);
    assert!(counts.iter().all(|&c| c >= 1), "every PIN reached the SMSC");
    let duplicates: usize = counts.iter().map(|c| c - 1).sum();
    let binds = smsc
        .proc
        .log()
        .lines()
        .filter(|l| l.contains("bound"))
        .count()
        .max(1);
    eprintln!("duplicates at the SMSC: {duplicates} over {binds} binds");
    assert!(
        binds >= 2,
        "the connection was dropped at least once:\n{}",
        smsc.proc.log()
    );
    assert!(
        duplicates <= window * binds,
        "{duplicates} duplicates over {binds} binds with window {window}"
    );
    // The in-doubt ones are visible as such in their attempts.
    let in_doubt = ids
        .iter()
        .filter(|id| d.get(id).raw.contains("in_doubt"))
        .count();
    assert!(
        in_doubt >= duplicates,
        "every duplicate went through in_doubt ({in_doubt} < {duplicates})"
    );
}

#[test]
fn nothing_is_submitted_after_expiry() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://127.0.0.1:{port}")),
    );
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = d.enqueue(
        "exp-1",
        &json!({"msisdn": "+819012345678", "pin": "4921773055614410", "expires_at": expires}),
    );
    assert_eq!(r.status, 202, "{}", r.raw);
    let id = r.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["expired"],
        Duration::from_secs(15),
    );
    // Now the SMSC appears; the expired PIN must not be sent to it.
    let smsc = Smsc::start_on(&format!("127.0.0.1:{port}"), &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http("GET", &format!("{}/readyz", d.base), None, &[], None).status != 200 {
        assert!(Instant::now() < deadline, "never bound");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A fresh delivery goes through, proving the bind works...
    let r2 = d.enqueue("exp-2", &delivery("+819012345678", "4921773055614411"));
    let id2 = r2.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id2),
        &["delivered"],
        Duration::from_secs(20),
    );
    // ...and the expired one never reached it.
    smsc.wait_messages(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smsc.messages().len(), 1, "{:?}", smsc.texts());
    assert!(!smsc.texts()[0].contains("4921 7730 5561 4410"));
    assert_eq!(d.state(&id), "expired");
}

#[test]
fn kill_9_under_load_loses_no_accepted_delivery() {
    let smsc = Smsc::start(&["--response-delay", "5ms"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (base, token) = (d.base.clone(), d.token.clone());
        let accepted = accepted.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            for i in 0..250 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let n = w * 1000 + i;
                let body = delivery("+819012345678", &pin_for(n)).to_string();
                let url = format!("{base}/v1/deliveries");
                let key = format!("k9-{n}");
                let r = std::panic::catch_unwind(|| {
                    http(
                        "POST",
                        &url,
                        Some(&token),
                        &[("Idempotency-Key", &key)],
                        Some(&body),
                    )
                });
                match r {
                    Ok(r) if r.status == 202 => accepted
                        .lock()
                        .unwrap()
                        .push(r.body["id"].as_str().unwrap().to_owned()),
                    _ => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "load never reached 200 accepted");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.proc.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let ids = accepted.lock().unwrap().clone();
    d.restart();
    d.wait_states(&ids, &["delivered"], Duration::from_secs(90));
    smsc.wait_messages(ids.len(), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let texts = smsc.texts();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for t in &texts {
        *seen.entry(t.as_str()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|c| c - 1).sum();
    eprintln!(
        "{} accepted before kill -9; {duplicates} duplicates at the SMSC",
        ids.len()
    );
    assert!(
        duplicates <= 2 * 10,
        "duplicates bounded by the window: {duplicates}"
    );
}

#[test]
fn sigterm_drains_and_a_restart_finishes_the_rest() {
    let smsc = Smsc::start(&["--response-delay", "20ms"]);
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let ids = enqueue_many(&d, "term", 60);
    let status = d.proc.sigterm();
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        d.proc.log()
    );
    assert!(d.proc.log().contains("shutting down"));
    d = Daemon::start_with(&d.dir.clone(), &d.config.clone());
    d.wait_states(&ids, &["delivered"], Duration::from_secs(60));
    let counts = pin_counts(&smsc, 60);
    assert!(counts.iter().all(|&c| c >= 1));
}
