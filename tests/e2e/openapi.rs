//! The OpenAPI document at `/v1/openapi.json`, and schemathesis (a property-based API
//! fuzzer written elsewhere) run against the live daemon from it: no answer may be a 5xx,
//! and every status and body must be one the document declares.

use std::process::Command;

use serde_json::Value;

use crate::harness::*;

fn start() -> (Smsc, tempfile::TempDir, Daemon) {
    let smsc = Smsc::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    // Thousands of requests: keep the collected log small.
    o.log_filter = "info";
    // Caps, so that the fuzzer also meets their refusals (403 and 429).
    o.extra_sections =
        "[caps]\nper_msisdn_hour = 3\n[[caps.destination]]\nprefix = \"+1\"\naction = \"block\"\n"
            .into();
    let d = Daemon::start(dir.path(), &o);
    (smsc, dir, d)
}

#[test]
fn the_document_is_served_without_a_token() {
    let (_smsc, _dir, d) = start();
    let r = http(
        "GET",
        &format!("{}/v1/openapi.json", d.base),
        None,
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().expect("paths");
    for p in [
        "/v1/deliveries",
        "/v1/deliveries/{id}",
        "/v1/subscribers/{msisdn}",
        "/v1/vouchers",
        "/v1/redemptions",
        "/v1/settlements/{date}",
        "/v1/admin/overview",
        "/v1/admin/deliveries",
        "/v1/admin/failures",
        "/console",
        "/console/console.js",
        "/console/console.css",
        "/metrics",
        "/healthz",
        "/readyz",
        "/v1/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    assert_eq!(
        r.body["paths"]["/v1/deliveries"]["post"]["security"],
        serde_json::json!([{"bearer": []}])
    );
}

/// A path segment that is not UTF-8 once percent-decoded is answered in the API's error
/// format as `400 invalid_path` (it was a bare-text 400 the document did not declare).
#[test]
fn a_malformed_path_segment_is_a_documented_json_error() {
    let (_smsc, _dir, d) = start();
    for (method, path) in [
        ("GET", "/v1/deliveries/%FF"),
        ("DELETE", "/v1/deliveries/%FF"),
        ("GET", "/v1/subscribers/%C3%28"),
        ("PUT", "/v1/subscribers/%FF"),
        ("DELETE", "/v1/subscribers/%2B81%FF/devices/x"),
        ("GET", "/v1/vouchers/%FF"),
        ("POST", "/v1/vouchers/%FF/revoke"),
        ("GET", "/v1/settlements/%FF"),
        ("POST", "/v1/settlements/%FF"),
    ] {
        let r = http(
            method,
            &format!("{}{path}", d.base),
            Some(ADMIN_TOKEN),
            &[],
            None,
        );
        assert_eq!(r.status, 400, "{method} {path}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], "invalid_path", "{method} {path}");
    }
    let r = http(
        "POST",
        &format!("{}/v1/redemptions/%FF/reverse", d.base),
        Some(SHOP1_TOKEN),
        &[],
        None,
    );
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(r.body["error"]["code"], "invalid_path");
}

/// A query string serde cannot read (here `format` twice) is `422 invalid_request` like any
/// other bad format (it was a bare-text 400 the document did not declare).
#[test]
fn a_repeated_settlement_format_is_a_documented_json_error() {
    let (_smsc, _dir, d) = start();
    for method in ["GET", "POST"] {
        let r = d.admin(
            method,
            "/v1/settlements/2026-11-01?format=csv&format=json",
            None,
        );
        assert_eq!(r.status, 422, "{method}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], "invalid_request");
    }
    // The format given once still works.
    let r = d.admin("POST", "/v1/settlements/2026-11-01?format=json", None);
    assert!(r.status == 201 || r.status == 200, "{}", r.raw);
    assert_eq!(r.body["date"], "2026-11-01");
}

/// The document declares the body of `PUT /v1/subscribers/{msisdn}` optional and nullable;
/// `null` is therefore the same as no body, or `{}` (it was a 422).
#[test]
fn a_null_subscriber_body_is_an_empty_one() {
    let (_smsc, _dir, d) = start();
    let put = |body: Option<&str>| {
        http(
            "PUT",
            &format!("{}/v1/subscribers/+819012345678", d.base),
            Some(ADMIN_TOKEN),
            &[],
            body,
        )
    };
    let r = put(Some(r#"{"name": "Taro"}"#));
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(r.body["name"], "Taro", "{}", r.raw);
    // PUT replaces the details: without a name, the subscriber has none.
    for body in [Some("null"), None, Some("{}")] {
        let r = put(Some(r#"{"name": "Jiro"}"#));
        assert_eq!(r.body["name"], "Jiro", "{}", r.raw);
        let r = put(body);
        assert_eq!(r.status, 200, "{body:?}: {}", r.raw);
        assert_eq!(r.body["name"], Value::Null, "{body:?}: {}", r.raw);
    }
    let r = put(Some(r#""Taro""#));
    assert_eq!(r.status, 422, "{}", r.raw);
}

/// Run `schemathesis run` against the daemon's document with `token`; `extra` narrows it.
/// Fails (never skips) when schemathesis is not installed.
fn schemathesis(d: &Daemon, token: &str, extra: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let version = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .output()
        .expect("run python3");
    assert!(
        version.status.success(),
        "schemathesis is not installed: pip install -r peers/python/requirements.txt\n{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{}/v1/openapi.json", d.base))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance,\
             content_type_conformance,response_headers_conformance",
            "--max-examples",
            "100",
            "--seed",
            "20261124",
            "--workers",
            "2",
            "--request-timeout",
            "20",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .args(extra)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{}\n--- daemon log tail ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&d.proc.log(), 40)
    );
    // It did test: every selected operation, and requests were made.
    assert!(stdout.contains("Tested:"), "{stdout}");
    assert!(
        !stdout.contains("Tested: 0"),
        "no operation was tested:\n{stdout}"
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let (_smsc, _dir, d) = start();
    // Everything with an admin token (redemptions then answer 403, as documented) ...
    schemathesis(&d, ADMIN_TOKEN, &[]);
    // ... and the redemption endpoints with a merchant token: declines, lockouts, reversals.
    schemathesis(
        &d,
        SHOP1_TOKEN,
        &["--include-path-regex", "^/v1/redemptions"],
    );
    // The daemon is still healthy afterwards.
    let r = http("GET", &format!("{}/readyz", d.base), None, &[], None);
    assert_eq!(r.status, 200, "{}", r.raw);
    let doc: Value = http(
        "GET",
        &format!("{}/v1/openapi.json", d.base),
        None,
        &[],
        None,
    )
    .body;
    assert!(doc["paths"].is_object());
}
