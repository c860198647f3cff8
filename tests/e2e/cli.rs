//! The command line as the README shows it.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn embedded_defaults_serve_enqueue_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("PINPOST__API__LISTEN", "127.0.0.1:0");
    let mut proc = Proc::spawn(cmd);
    let base = proc.wait_line("listening on ", Duration::from_secs(30));
    let base = base.split_whitespace().next().unwrap().to_owned();
    assert!(dir.path().join("state/api.token").exists());
    assert!(dir.path().join("state/pin.key").exists());
    assert!(dir.path().join("state/pinpost.db").exists());
    std::fs::write(dir.path().join("pin.txt"), "4921773055614410\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "enqueue",
            "--url",
            &base,
            "--msisdn",
            "+819012345678",
            "--pin-file",
            "pin.txt",
        ])
        .args([
            "--amount",
            "3000",
            "--currency",
            "JPY",
            "--payee",
            "Example Shop",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "queued");
    let id = v["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(BIN)
            .args(["status", &id, "--url", &base])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if v["state"] == "delivered" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered: {v}\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = proc.sigterm();
    assert!(status.success());
    assert!(!proc.log().contains("4921773055614410"));
}

#[test]
fn check_config_accepts_shipped_configs_and_names_bad_keys() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut shipped = 0;
    for e in std::fs::read_dir(root.join("config")).unwrap().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let out = Command::new(BIN)
                .arg("check-config")
                .arg("--config")
                .arg(&p)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            shipped += 1;
        }
    }
    assert!(shipped >= 1);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[secrets]\npin_key_file = \"k\"\n[[channel]]\nid = \"sms\"\nkind = \"smpp\"\nurl = \"loopback\"\nwindoww = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("windoww") && err.contains("bad.toml"), "{err}");
}
