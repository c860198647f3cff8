//! `GET /metrics` after real sends: deliveries by state and channel, queue depth, latency
//! histograms, TPS in use and the peer's throttling.

use std::time::Duration;

use crate::harness::*;

const MSISDN: &str = "+819055501234";

/// A sample of a metric: the value of the first line starting with `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_cover_queue_latency_tps_and_throttles() {
    // Every other submit_sm is answered ESME_RTHROTTLED (seeded: the same every run).
    let smsc = Smsc::start(&["--receipt-delay", "50ms", "--throttle", "0.5"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let mut ids = Vec::new();
    for i in 0..6 {
        let r = d.enqueue(&format!("m-{i}"), &delivery(MSISDN, &pin_for(i)));
        assert_eq!(r.status, 202, "{}", r.raw);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    d.wait_states(&ids, &["delivered"], Duration::from_secs(60));
    let m = d.admin("GET", "/metrics", None).raw;
    let at = |s: &str| sample(&m, s).unwrap_or_else(|| panic!("no {s} in\n{m}"));
    assert_eq!(
        at("pinpost_deliveries{state=\"delivered\",channel=\"sms\"}"),
        6.0
    );
    assert_eq!(
        at("pinpost_deliveries{state=\"queued\",channel=\"sms\"}"),
        0.0
    );
    assert_eq!(at("pinpost_queue_depth{channel=\"sms\"}"), 0.0);
    assert_eq!(at("pinpost_queue_due{channel=\"sms\"}"), 0.0);
    assert_eq!(
        at("pinpost_enqueue_to_submit_seconds_count{channel=\"sms\"}"),
        6.0
    );
    assert_eq!(
        at("pinpost_submit_to_receipt_seconds_count{channel=\"sms\"}"),
        6.0
    );
    // The SMSC sends each receipt 50 ms after its submit: none can come sooner.
    assert!(at("pinpost_submit_to_receipt_seconds_sum{channel=\"sms\"}") >= 6.0 * 0.05);
    assert!(at("pinpost_throttles_total{channel=\"sms\"}") >= 1.0, "{m}");
    assert!(
        sample(&m, "pinpost_channel_tps{channel=\"sms\"}").is_some(),
        "{m}"
    );
    assert_eq!(
        at("pinpost_attempts_total{channel=\"sms\",outcome=\"submitted\"}"),
        6.0
    );
    assert!(!m.contains(MSISDN) && !m.contains(&pin_for(0)));
    // What the driver logs while sending carries the send span: delivery id and channel.
    let log = d.proc.log();
    assert!(
        log.lines().any(|l| l.contains("throttled")
            && ids
                .iter()
                .any(|id| l.contains(&format!("send{{delivery_id={id} channel=sms}}")))),
        "{}",
        tail(&log, 40)
    );
}
