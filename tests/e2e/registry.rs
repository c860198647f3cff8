//! The subscriber registry and delivery plans with fallback, through the real daemon.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn admin(d: &Daemon, method: &str, path: &str, body: Option<serde_json::Value>) -> Resp {
    let b = body.map(|b| b.to_string());
    http(
        method,
        &format!("{}{path}", d.base),
        Some(ADMIN_TOKEN),
        &[],
        b.as_deref(),
    )
}

#[test]
fn registry_api_normalises_numbers_and_validates() {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    // National format with the configured region JP.
    let r = admin(
        &d,
        "PUT",
        "/v1/subscribers/090-1234-5678",
        Some(json!({"name": "Taro"})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.body["msisdn"], "+819012345678");
    assert_eq!(
        admin(
            &d,
            "PUT",
            "/v1/subscribers/+819012345678",
            Some(json!({"name": "Taro Y"}))
        )
        .status,
        200
    );
    let dev = admin(
        &d,
        "POST",
        "/v1/subscribers/+819012345678/devices",
        Some(
            json!({"kind": "email", "address": "taro@example.jp", "priority": 20, "step_timeout": "2m",
                    "options": {"allow_plaintext": false}}),
        ),
    );
    assert_eq!(dev.status, 201, "{}", dev.raw);
    assert_eq!(dev.body["step_timeout"], "2m");
    let sms = admin(
        &d,
        "POST",
        "/v1/subscribers/+819012345678/devices",
        Some(json!({"kind": "sms", "address": "090-1234-5678", "priority": 10})),
    );
    assert_eq!(sms.body["address"], "+819012345678");
    let s = admin(&d, "GET", "/v1/subscribers/+819012345678", None);
    assert_eq!(s.body["name"], "Taro Y");
    let kinds: Vec<&str> = s.body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["sms", "email"], "ordered by priority");
    for (body, what) in [
        (json!({"kind": "pigeon", "address": "x"}), "kind"),
        (json!({"kind": "email", "address": "nobody"}), "address"),
        (json!({"kind": "sms", "address": "12"}), "address"),
        (
            json!({"kind": "sms", "address": "+819012345678", "step_timeout": "soon"}),
            "step_timeout",
        ),
        (
            json!({"kind": "sms", "address": "+819012345678", "colour": 1}),
            "unknown field",
        ),
    ] {
        let r = admin(
            &d,
            "POST",
            "/v1/subscribers/+819012345678/devices",
            Some(body),
        );
        assert_eq!(r.status, 422, "{}", r.raw);
        assert!(r.raw.contains(what), "{what}: {}", r.raw);
    }
    assert_eq!(
        admin(
            &d,
            "POST",
            "/v1/subscribers/+819099999999/devices",
            Some(json!({"kind": "sms", "address": "+819099999999"}))
        )
        .status,
        404
    );
    assert_eq!(
        admin(&d, "GET", "/v1/subscribers/not-a-number", None).status,
        422
    );
    let billing = http(
        "GET",
        &format!("{}/v1/subscribers/+819012345678", d.base),
        Some(&d.token),
        &[],
        None,
    );
    assert_eq!(billing.status, 403, "registry needs an admin token");
    let id = dev.body["id"].as_str().unwrap();
    assert_eq!(
        admin(
            &d,
            "DELETE",
            &format!("/v1/subscribers/+819012345678/devices/{id}"),
            None
        )
        .status,
        204
    );
    assert_eq!(
        admin(
            &d,
            "DELETE",
            &format!("/v1/subscribers/+819012345678/devices/{id}"),
            None
        )
        .status,
        404
    );
    assert_eq!(
        admin(&d, "DELETE", "/v1/subscribers/+819012345678", None).status,
        204
    );
    assert_eq!(
        admin(&d, "GET", "/v1/subscribers/+819012345678", None).status,
        404
    );
}

#[test]
fn sms_rejected_by_the_smsc_falls_through_to_the_next_device() {
    // The SMSC refuses the first phone (ESME_RINVDSTADR); the second is fine.
    let smsc = Smsc::start(&["--reject-prefix", "8190"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    assert_eq!(
        admin(&d, "PUT", "/v1/subscribers/+819012345678", None).status,
        201
    );
    for (addr, prio) in [("+819012345678", 10), ("+818011112222", 20)] {
        let r = admin(
            &d,
            "POST",
            "/v1/subscribers/+819012345678/devices",
            Some(json!({"kind": "sms", "address": addr, "priority": prio})),
        );
        assert_eq!(r.status, 201, "{}", r.raw);
    }
    let r = d.enqueue("fb-1", &delivery("+819012345678", "4921773055614410"));
    let id = r.body["id"].as_str().unwrap().to_owned();
    d.wait_states(
        std::slice::from_ref(&id),
        &["delivered"],
        Duration::from_secs(20),
    );
    let v = d.get(&id).body;
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{v}");
    assert_eq!(steps[0]["outcome"], "failed");
    assert!(
        steps[0]["reason"].as_str().unwrap().contains("0x0000000b"),
        "{v}"
    );
    assert_eq!(steps[1]["outcome"], "delivered");
    assert_eq!(v["attempts"].as_array().unwrap().len(), 2);
    let msgs = smsc.wait_messages(1, Duration::from_secs(10));
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["destination_addr"], "818011112222");
}

#[test]
fn plan_stops_at_expiry() {
    // Both devices are refused for good, and the PIN expires: nothing is tried after it.
    let smsc = Smsc::start(&["--undeliverable-prefix", "8190", "--receipt-delay", "3s"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    admin(&d, "PUT", "/v1/subscribers/+819012345678", None);
    for (addr, prio) in [("+819012345678", 10), ("+818011112222", 20)] {
        admin(
            &d,
            "POST",
            "/v1/subscribers/+819012345678/devices",
            Some(json!({"kind": "sms", "address": addr, "priority": prio})),
        );
    }
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let expires = expires
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = d.enqueue(
        "fb-exp",
        &json!({"msisdn": "+819012345678", "pin": "4921773055614410", "expires_at": expires}),
    );
    let id = r.body["id"].as_str().unwrap().to_owned();
    // The first device's UNDELIV receipt arrives after 3 s, past the expiry: the second
    // device must not be tried.
    d.wait_states(
        std::slice::from_ref(&id),
        &["expired"],
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    let msgs = smsc.wait_messages(1, Duration::from_secs(5));
    assert_eq!(msgs.len(), 1, "only the first device was tried");
    assert_eq!(msgs[0]["destination_addr"], "819012345678");
}

#[test]
fn csv_import_all_or_nothing_unless_partial() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &DaemonOpts::new("smpp://127.0.0.1:9"));
    let csv = dir.path().join("subs.csv");
    std::fs::write(
        &csv,
        "msisdn,name,kind,address,priority,step_timeout\n\
         090-1234-5678,Taro,sms,090-1234-5678,10,2m\n\
         090-1234-5678,Taro,email,taro@example.jp,20,\n\
         not-a-number,Bad,sms,1,,\n\
         +818011112222,Hanako,fax,03-1234-5678,,\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["import", "subscribers"])
            .arg(&csv)
            .arg("--config")
            .arg(&cfg)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":4: rejected") && err.contains("nothing imported"),
        "{err}"
    );
    let show = |m: &str| {
        Command::new(BIN)
            .args(["subscriber", "show", m, "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    assert!(
        !show("+819012345678").status.success(),
        "nothing was imported"
    );
    let out = run(&["--partial"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 new subscribers, 3 devices"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let s = show("+819012345678");
    assert!(s.status.success());
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    assert_eq!(v["devices"][0]["step_timeout_ms"], 120_000);
    let fax: serde_json::Value = serde_json::from_slice(&show("+818011112222").stdout).unwrap();
    assert_eq!(fax["devices"][0]["address"], "+81312345678");
}
