//! Interop: the third-party Python SMPP client smpplib against the loopback SMSC.
//!
//! Needs `python3` with smpplib (`pip install -r peers/python/requirements.txt`); without them
//! this test fails and says so.

mod sim_support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use pinpost_smpp::sim::SimConfig;
use sim_support::*;

const GSM_TEXT: &str = "pinpost PIN 4821 [valid 10 min] fee 0€ {ok}";
const UCS2_TEXT: &str = "pinpost の暗証番号は 4821 です";

fn long_text() -> String {
    let mut s = String::from("pinpost long notice: your settlement PIN is 4821.");
    while s.chars().count() < 400 {
        s.push_str(" Use it once, for the amount and payee you chose, before it expires.");
    }
    s
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../peers/python/smpplib_client.py")
}

/// Fails (never skips) when the third-party peer is not available.
async fn require_smpplib() {
    let out = tokio::process::Command::new("python3")
        .args(["-c", "import smpplib, smpplib.gsm"])
        .output()
        .await;
    match out {
        Err(e) => panic!(
            "python3 is required for the smpplib interop test and could not be run: {e}; \
             install python3 and `pip install -r peers/python/requirements.txt`"
        ),
        Ok(o) if !o.status.success() => panic!(
            "smpplib is required for the interop test: `pip install -r peers/python/requirements.txt` \
             ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
}

#[tokio::test]
async fn smpplib_transceiver_gets_receipts_and_texts_are_recorded() {
    require_smpplib().await;
    let path = temp_record("smpplib");
    let sim = start(SimConfig {
        record: Some(path.clone()),
        system_id: Some("smpplib".into()),
        password: Some("secret".into()),
        ..SimConfig::default()
    })
    .await;
    let long = long_text();
    let child = tokio::process::Command::new("python3")
        .arg(script())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &sim.addr.port().to_string(),
        ])
        .args(["--system-id", "smpplib", "--password", "secret"])
        .args([
            "--gsm-text",
            GSM_TEXT,
            "--ucs2-text",
            UCS2_TEXT,
            "--long-text",
            &long,
        ])
        .args(["--timeout", "20"])
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python3");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("smpplib client did not finish within 60 s")
        .expect("smpplib client output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smpplib client failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");

    // What smpplib sent: 1 GSM part, 1 UCS-2 part, a concatenated GSM message.
    let messages = summary["messages"].as_array().unwrap();
    let parts: Vec<u64> = messages
        .iter()
        .map(|m| m["parts"].as_u64().unwrap())
        .collect();
    assert_eq!(parts[..2], [1, 1]);
    assert!(parts[2] >= 3, "long text in {} parts", parts[2]);
    assert_eq!(messages[1]["data_coding"], 8);
    assert_eq!(messages[2]["esm_class"], 0x40);
    let total: u64 = parts.iter().sum();

    // Every part got a receipt whose id (TLV and text) is one of the ids smpplib was given.
    let ids: Vec<String> = messages
        .iter()
        .flat_map(|m| m["message_ids"].as_array().unwrap().clone())
        .map(|v| v.as_str().expect("message id").to_owned())
        .collect();
    let receipts = summary["receipts"].as_array().unwrap();
    assert_eq!(receipts.len() as u64, total, "{summary}");
    for r in receipts {
        let id = r["receipted_message_id"]
            .as_str()
            .expect("receipted_message_id");
        assert!(ids.iter().any(|i| i == id), "receipt for unknown id {id}");
        assert_eq!(r["id_in_text"], id);
        assert_eq!(r["stat"], "DELIVRD");
        assert_eq!(r["message_state"], 2);
        assert_eq!(r["esm_class"], 4);
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while sim.stats.receipts_acked() < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "smpplib's deliver_sm_resp not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The record shows the three texts as the handset would.
    let lines = wait_for_lines(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let find = |text: &str| {
        lines
            .iter()
            .find(|l| l["text"] == text)
            .unwrap_or_else(|| panic!("{text:?} not in the record: {lines:?}"))
    };
    let gsm_line = find(GSM_TEXT);
    assert_eq!(gsm_line["data_coding"], 0);
    assert_eq!(gsm_line["system_id"], "smpplib");
    assert_eq!(find(UCS2_TEXT)["data_coding"], 8);
    let long_line = find(&long);
    assert_eq!(long_line["parts"], parts[2]);
    assert_eq!(long_line["message_id"], messages[2]["message_ids"]);
    assert_eq!(sim.stats.messages(), 3);
    sim.stop().await;
    let _ = std::fs::remove_file(&path);
}
