//! USSD push and car-navigation push through the real daemon.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Mosquitto 2 broker of the test's own on a free loopback port.
fn mosquitto(dir: &std::path::Path) -> (Broker, u16) {
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("mosquitto is not installed: apt-get install -y mosquitto");
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Broker(child), port)
}

#[test]
fn ussd_push_is_delivered_by_the_handset_confirmation() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_channels = format!(
        "[[channel]]\nid = \"ussd\"\nkind = \"ussd\"\nurl = \"smpp://{}\"\nsystem_id = \"pinpost\"\npassword = \"secret\"\n",
        smsc.addr
    );
    let d = Daemon::start(dir.path(), &o);
    d.register(
        "+819012345678",
        &[json!({"kind": "ussd", "address": "+819012345678"})],
    );
    let body = delivery("+819012345678", "4921773055614410");
    let v = d.deliver("ussd-1", &body, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["channel"], "ussd");
    let msgs = smsc.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs[0]["service_type"], "USSD");
    assert_eq!(msgs[0]["ussd_service_op"], 3, "a USSN request");
    assert_eq!(msgs[0]["parts"], 1, "never concatenated");
}

#[test]
fn offline_head_unit_falls_through_to_sms_after_its_step_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, port) = mosquitto(dir.path());
    let smsc = Smsc::start(&[]);
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_channels = format!(
        "[[channel]]\nid = \"carnav\"\nkind = \"mqtt\"\nbroker_url = \"mqtt://127.0.0.1:{port}\"\nallow_plaintext = true\nclient_id = \"pinpost-e2e\"\n"
    );
    let d = Daemon::start(dir.path(), &o);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http("GET", &format!("{}/readyz", d.base), None, &[], None).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the MQTT channel never came up:\n{}",
            d.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.register(
        "+819012345678",
        &[
            json!({"kind": "carnav", "address": "VIN-JT123", "priority": 10, "step_timeout": "1s"}),
            json!({"kind": "sms", "address": "+819012345678", "priority": 20}),
        ],
    );
    let body = delivery("+819012345678", "4921773055614410");
    let v = d.deliver("car-1", &body, &["delivered"], Duration::from_secs(30));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[0]["kind"], "carnav");
    assert_eq!(steps[0]["outcome"], "timed_out", "{v}");
    assert_eq!(steps[1]["outcome"], "delivered", "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["channel"], "carnav");
    assert_eq!(
        attempts[0]["outcome"], "unknown",
        "published (PUBACK), never acknowledged: {v}"
    );
    assert_eq!(smsc.wait_messages(1, Duration::from_secs(10)).len(), 1);
}

#[test]
fn ussd_can_share_the_sms_bind() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_channels =
        "[[channel]]\nid = \"ussd\"\nkind = \"ussd\"\nurl = \"channel:sms\"\n".into();
    let d = Daemon::start(dir.path(), &o);
    d.register(
        "+819012345678",
        &[json!({"kind": "ussd", "address": "+819012345678"})],
    );
    let v = d.deliver(
        "shared-1",
        &delivery("+819012345678", "4921773055614410"),
        &["delivered"],
        Duration::from_secs(20),
    );
    assert_eq!(v["channel"], "ussd");
    assert_eq!(v["attempts"][0]["channel"], "ussd");
    // SMS still goes over the same bind.
    let v = d.deliver(
        "shared-2",
        &delivery("+818011112222", "4921773055614411"),
        &["delivered"],
        Duration::from_secs(20),
    );
    assert_eq!(v["channel"], "sms");
    let msgs = smsc.wait_messages(2, Duration::from_secs(10));
    let services: Vec<&str> = msgs
        .iter()
        .map(|m| m["service_type"].as_str().unwrap_or(""))
        .collect();
    assert!(services.contains(&"USSD"), "{services:?}");
    let binds = smsc
        .proc
        .log()
        .lines()
        .filter(|l| l.contains("bound peer="))
        .count();
    assert_eq!(binds, 1, "one bind for both channels:\n{}", smsc.proc.log());
}
