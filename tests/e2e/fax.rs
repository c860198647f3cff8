//! Fallback from SMS to fax with the real daemon: the page a Class 2.0 modem simulator
//! received is decoded by libtiff's fax2tiff and read back by tesseract.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

fn tool(name: &str, package: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success());
    assert!(
        ok.unwrap_or(false),
        "{name} is not installed: apt-get install -y {package}"
    );
}

fn ocr_page(dir: &Path, raw: &[u8]) -> String {
    tool("fax2tiff", "libtiff-tools");
    tool("tesseract", "tesseract-ocr tesseract-ocr-eng");
    let raw_path = dir.join("page.raw");
    std::fs::write(&raw_path, raw).unwrap();
    let tif = dir.join("page.tif");
    let out = Command::new("fax2tiff")
        .args(["-3", "-1", "-L", "-R", "196", "-X", "1728", "-o"])
        .arg(&tif)
        .arg(&raw_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fax2tiff: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = Command::new("tiffinfo").arg(&tif).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(info.contains("Image Width: 1728"), "{info}");
    let out = Command::new("tesseract")
        .arg(&tif)
        .arg("stdout")
        .args(["--psm", "6"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tesseract: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn sms_refused_falls_back_to_fax_and_ocr_reads_the_pin() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let modem = {
        let _guard = rt.enter();
        pinpost_fax::sim::SimModem::start(pinpost_fax::sim::SimConfig::default())
            .expect("modem simulator")
    };
    let smsc = Smsc::start(&["--reject-prefix", "8190"]);
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_channels = format!(
        r#"
[[channel]]
id = "fax"
kind = "fax"
devices = ["{}"]
local_id = "+81 3 0000 0000"
country_code = "81"
national_prefix = "0"
international_prefix = "010"
max_dials = 2
redial_delays = ["100ms"]
"#,
        modem.path()
    );
    let d = Daemon::start(dir.path(), &o);
    d.register(
        "+819012345678",
        &[
            json!({"kind": "sms", "address": "+819012345678", "priority": 10}),
            json!({"kind": "fax", "address": "03-1234-5678", "priority": 20}),
        ],
    );
    let pin = "4921773055614410";
    let body = json!({"msisdn": "+819012345678", "pin": pin,
                      "amount": {"value": "3000", "currency": "JPY"}, "payee": "Example Shop"});
    let v = d.deliver("fax-1", &body, &["delivered"], Duration::from_secs(60));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps[0]["outcome"], "failed", "{v}");
    assert_eq!(steps[1]["kind"], "fax");
    assert_eq!(steps[1]["outcome"], "delivered", "{v}");
    let pages = modem.record().complete_pages();
    assert_eq!(pages.len(), 1, "one page received");
    let calls = modem.record().calls();
    assert!(
        calls
            .iter()
            .any(|c| format!("{c:?}").contains("0312345678")),
        "dialled nationally: {calls:?}"
    );
    let text = ocr_page(dir.path(), &pages[0].data);
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    assert!(
        digits.contains(pin),
        "OCR did not read the PIN from the page:\n{text}"
    );
    assert!(smsc.messages().is_empty(), "the SMSC refused the SMS");
    drop(rt);
}

#[test]
fn fax_preview_renders_a_readable_page() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("page.png");
    let tiff = dir.path().join("page.tiff");
    for out in [&png, &tiff] {
        let o = Command::new(BIN)
            .arg("fax-preview")
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    tool("tiffinfo", "libtiff-tools");
    let info = Command::new("tiffinfo").arg(&tiff).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        info.contains("Image Width: 1728") && info.contains("CCITT Group 3"),
        "{info}"
    );
    tool("tesseract", "tesseract-ocr tesseract-ocr-eng");
    let o = Command::new("tesseract")
        .arg(&png)
        .arg("stdout")
        .args(["--psm", "6"])
        .output()
        .unwrap();
    let digits: String = String::from_utf8_lossy(&o.stdout)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    assert!(
        digits.contains("4921773055614410"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let bad = Command::new(BIN)
        .args(["fax-preview", "--out"])
        .arg(dir.path().join("page.gif"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
