//! The operator console in headless Chromium (Debian `chromium`, driven by npm
//! `playwright-core` from `peers/node/console-check.js`) and its admin JSON. A canary PIN
//! must appear nowhere the console can show.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

const MSISDN: &str = "+819055501234";
/// The loopback SMSC rejects numbers with this prefix for good.
const REJECTED: &str = "+817055501234";

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

fn node_peers() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/node")
}

/// GET with headers kept: (status, content-security-policy, body).
fn get_with_headers(url: &str) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().expect("http");
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), csp, body)
}

fn assert_no_pin(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "the PIN appears in {what}");
    assert!(
        !text.contains(CANARY_GROUPED),
        "the grouped PIN appears in {what}"
    );
}

/// Run the browser check; its JSON report. Fails (never skips) without Chromium or
/// playwright-core.
fn run_browser(base: &str, id: &str, state: &str, out: &Path) -> Value {
    let browser = chromium();
    assert!(
        Path::new(&browser).exists(),
        "headless Chromium is needed at {browser} (apt-get install chromium; .ci/run does)"
    );
    let peers = node_peers();
    assert!(
        peers.join("node_modules/playwright-core").is_dir(),
        "peers/node/node_modules has no playwright-core: run `cd {} && npm ci`",
        peers.display()
    );
    let shot = out.join("console.png");
    let stdout = out.join("console-check.out");
    let stderr = out.join("console-check.err");
    let mut child = Command::new("node")
        .arg("console-check.js")
        .args([base, ADMIN_TOKEN, MSISDN, id, state])
        .arg(&shot)
        .current_dir(&peers)
        .env("CHROMIUM", &browser)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("node must be installed to run the console check");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the console check did not finish within 120 s:\n{}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        status.success(),
        "the console check failed ({status}):\n{err}"
    );
    let text = std::fs::read_to_string(&stdout).unwrap();
    let mut report: Value = serde_json::from_str(text.trim()).expect("one JSON line");
    report["screenshot"] = Value::String(shot.display().to_string());
    report
}

/// Decode the screenshot: (width, height, RGBA pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).expect("screenshot written");
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("a valid PNG frame");
    buf.truncate(info.buffer_size());
    let rgba: Vec<u8> = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

/// Distinct colours and the variance of the luma in a rectangle of the image.
fn region_stats(w: u32, rgba: &[u8], x0: u32, y0: u32, x1: u32, y1: u32) -> (usize, f64) {
    let mut colours = std::collections::HashSet::new();
    let (mut n, mut sum, mut sq) = (0f64, 0f64, 0f64);
    for y in y0..y1 {
        for x in x0..x1 {
            let i = ((y * w + x) * 4) as usize;
            let p = &rgba[i..i + 4];
            colours.insert([p[0], p[1], p[2]]);
            let luma = 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64;
            n += 1.0;
            sum += luma;
            sq += luma * luma;
        }
    }
    let mean = sum / n.max(1.0);
    (colours.len(), sq / n.max(1.0) - mean * mean)
}

#[test]
fn console_shows_deliveries_in_chromium_and_never_the_pin() {
    let smsc = Smsc::start(&["--receipt-delay", "50ms", "--reject-prefix", "8170"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        dir.path(),
        &DaemonOpts::new(&format!("smpp://{}", smsc.addr)),
    );
    let delivered = d.deliver(
        "console-1",
        &delivery(MSISDN, CANARY),
        &["delivered"],
        Duration::from_secs(30),
    );
    let id = delivered["id"].as_str().unwrap().to_owned();
    let failed = d.deliver(
        "console-2",
        &delivery(REJECTED, &pin_for(7)),
        &["failed"],
        Duration::from_secs(30),
    );
    let failed_id = failed["id"].as_str().unwrap().to_owned();

    // The JSON behind the page: admin only.
    let admin_paths = [
        "/v1/admin/overview".to_owned(),
        format!("/v1/admin/deliveries?msisdn={}", MSISDN.replace('+', "%2B")),
        format!("/v1/admin/deliveries?id={id}"),
        "/v1/admin/failures".to_owned(),
    ];
    for path in &admin_paths {
        let url = format!("{}{path}", d.base);
        assert_eq!(http("GET", &url, None, &[], None).status, 401, "{path}");
        let billing = http("GET", &url, Some(&d.token), &[], None);
        assert_eq!(billing.status, 403, "{path}: {}", billing.raw);
        assert_eq!(billing.body["error"]["code"], "forbidden");
        let merchant = http("GET", &url, Some(SHOP1_TOKEN), &[], None);
        assert_eq!(merchant.status, 403, "{path}");
        let admin = d.admin("GET", path, None);
        assert_eq!(admin.status, 200, "{path}: {}", admin.raw);
        assert_no_pin(path, &admin.raw);
        assert!(!admin.raw.contains("pin"), "{path}: {}", admin.raw);
    }
    let overview = d.admin("GET", "/v1/admin/overview", None).body;
    let sms = &overview["channels"][0];
    assert_eq!(sms["id"], "sms", "{overview}");
    assert_eq!(sms["up"], true, "{overview}");
    assert_eq!(sms["waiting"], 0, "{overview}");
    assert_eq!(sms["states"]["delivered"], 1, "{overview}");
    assert_eq!(overview["totals"]["failed"], 1, "{overview}");
    let by_number = d
        .admin(
            "GET",
            &format!("/v1/admin/deliveries?msisdn={}", MSISDN.replace('+', "%2B")),
            None,
        )
        .body;
    let rows = by_number["deliveries"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_number}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["state"], "delivered");
    assert_eq!(rows[0]["final"], true);
    // A national number is read in the configured region (JP).
    let national = d
        .admin("GET", "/v1/admin/deliveries?msisdn=090-5550-1234", None)
        .body;
    assert_eq!(national["deliveries"][0]["id"], id.as_str(), "{national}");
    let failures = d.admin("GET", "/v1/admin/failures", None).body;
    let listed: Vec<&str> = failures["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [failed_id.as_str()], "{failures}");
    let bad = d.admin("GET", "/v1/admin/deliveries?msisdn=12", None);
    assert_eq!(bad.status, 422, "{}", bad.raw);
    let both = d.admin(
        "GET",
        &format!("/v1/admin/deliveries?id={id}&msisdn=%2B819055501234"),
        None,
    );
    assert_eq!(both.status, 422, "{}", both.raw);

    // The page itself: static, under a strict policy.
    let (status, csp, html) = get_with_headers(&format!("{}/console", d.base));
    assert_eq!(status, 200);
    let csp = csp.expect("a Content-Security-Policy header");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(html.contains("pinpost console"));

    // The browser: sign in, look the number up, wait for the delivered row.
    let report = run_browser(&d.base, &id, "delivered", dir.path());
    let text = report["text"].as_str().unwrap();
    let page_html = report["html"].as_str().unwrap();
    assert!(text.contains(&id), "{text}");
    assert!(text.contains("delivered"), "{text}");
    assert!(text.contains(&failed_id), "the failure list: {text}");
    assert!(text.contains(MSISDN), "{text}");
    assert_no_pin("the page text", text);
    assert_no_pin("the page HTML", page_html);
    assert!(
        !page_html.contains(ADMIN_TOKEN) && !text.contains(ADMIN_TOKEN),
        "the token is not shown"
    );
    let responses = report["responses"].as_array().unwrap();
    assert!(
        responses.iter().any(|r| r["url"]
            .as_str()
            .unwrap()
            .contains("/v1/admin/deliveries?msisdn=")
            && r["body"].as_str().unwrap().contains(&id)),
        "{responses:?}"
    );
    for r in responses {
        assert_eq!(r["status"], 200, "{r}");
        assert_no_pin("a JSON response to the page", r["body"].as_str().unwrap());
    }
    let console: Vec<&str> = report["console"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(
        !console
            .iter()
            .any(|m| m.contains("Content Security Policy") || m.starts_with("pageerror")),
        "{console:?}"
    );
    assert_eq!(report["csp"].as_str(), Some(csp.as_str()));
    assert_eq!(report["storage"]["local"], serde_json::json!([]));
    assert_eq!(
        report["storage"]["session"],
        serde_json::json!(["pinpost.console.token"])
    );

    // The screenshot: a PNG of the viewport, and the lookup table is not blank.
    let (w, h, rgba) = decode_png(Path::new(report["screenshot"].as_str().unwrap()));
    assert_eq!(
        (w as u64, h as u64),
        (
            report["width"].as_u64().unwrap(),
            report["height"].as_u64().unwrap()
        )
    );
    let (colours, variance) = region_stats(w, &rgba, 0, 0, w, h);
    assert!(
        colours > 20 && variance > 100.0,
        "{colours} colours, variance {variance}"
    );
    let b = &report["table"];
    let clamp = |v: f64, max: u32| (v.max(0.0) as u32).min(max);
    let (x0, y0) = (
        clamp(b["x"].as_f64().unwrap(), w),
        clamp(b["y"].as_f64().unwrap(), h),
    );
    let x1 = clamp(b["x"].as_f64().unwrap() + b["width"].as_f64().unwrap(), w);
    let y1 = clamp(b["y"].as_f64().unwrap() + b["height"].as_f64().unwrap(), h);
    assert!(
        x1 > x0 + 100 && y1 > y0 + 20,
        "the lookup table is on screen: {b}"
    );
    let (colours, variance) = region_stats(w, &rgba, x0, y0, x1, y1);
    assert!(
        colours > 10 && variance > 50.0,
        "the lookup table region looks blank: {colours} colours, variance {variance}"
    );

    assert_no_pin("the daemon log", &d.proc.log());
}
