//! Fallback across channels with the real daemon: SMS refused → USSD refused → e-mail,
//! encrypted to the device's OpenPGP key, received by aiosmtpd over STARTTLS and decrypted
//! with GnuPG.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const INSTALL: &str = "the e-mail tests need python3 with aiosmtpd (pip install -r peers/email/requirements.txt) and GnuPG (apt-get install gnupg)";

struct SmtpPeer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp(dir: &Path) -> SmtpPeer {
    let tls = root().join("channels/email/tests/tls");
    let maildir = dir.join("mail");
    let mut child = Command::new("python3")
        .arg(root().join("peers/email/smtp_server.py"))
        .args([
            "--tls",
            "starttls",
            "--auth",
            "pinpost:smtp-secret",
            "--maildir",
        ])
        .arg(&maildir)
        .arg("--cert")
        .arg(tls.join("server.pem"))
        .arg("--key")
        .arg(tls.join("server.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL} ({e})"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{INSTALL}: got {line:?}"));
    SmtpPeer {
        child,
        port,
        maildir,
    }
}

/// Every stored message's raw bytes.
fn received(maildir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(maildir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let eml = p.with_extension("eml");
            if let Ok(b) = std::fs::read(&eml) {
                out.push(b);
            }
        }
    }
    out
}

fn gpg(home: &Path, args: &[&str], input: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new("gpg")
        .arg("--homedir")
        .arg(home)
        .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL} ({e})"));
    if let Some(i) = input {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(i).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn sms_and_ussd_refused_fall_back_to_encrypted_email() {
    let smsc = Smsc::start(&["--reject-prefix", "8190"]);
    let dir = tempfile::tempdir().unwrap();
    let smtp = start_smtp(dir.path());
    std::fs::write(dir.path().join("smtp.password"), "smtp-secret\n").unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_channels = format!(
        r#"
[[channel]]
id = "ussd"
kind = "ussd"
url = "smpp://{smsc}"
system_id = "pinpost"
password = "secret"
template = "PIN {{pin}}"

[[channel]]
id = "mail"
kind = "smtp"
host = "127.0.0.1"
port = {port}
tls = "starttls"
tls_ca_file = "{ca}"
username = "pinpost"
password_file = "{dir}/smtp.password"
from = "pins@carrier.example"
"#,
        smsc = smsc.addr,
        port = smtp.port,
        ca = root().join("channels/email/tests/tls/ca.pem").display(),
        dir = dir.path().display(),
    );
    let d = Daemon::start(dir.path(), &o);
    let key =
        std::fs::read_to_string(root().join("channels/email/tests/keys/alice.pub.asc")).unwrap();
    d.register(
        "+819012345678",
        &[
            json!({"kind": "sms", "address": "+819012345678", "priority": 10}),
            json!({"kind": "ussd", "address": "+819012345678", "priority": 20}),
            json!({"kind": "email", "address": "alice@pinpost.test", "priority": 30, "options": {"openpgp_key": key}}),
        ],
    );
    // E-mail has no receipts: accepted by the server (250 to DATA) is as far as it goes.
    let body = json!({"msisdn": "+819012345678", "pin": CANARY, "payee": "Example Shop"});
    let v = d.deliver("mail-1", &body, &["submitted"], Duration::from_secs(60));
    let steps = v["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sms", "ussd", "email"], "{v}");
    assert_eq!(steps[0]["outcome"], "failed");
    assert_eq!(steps[1]["outcome"], "failed");
    assert_eq!(steps[2]["outcome"], "unknown", "accepted, no receipt: {v}");
    assert_eq!(v["channel"], "mail");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut msgs = received(&smtp.maildir);
    while msgs.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        msgs = received(&smtp.maildir);
    }
    assert_eq!(msgs.len(), 1, "one message received");
    let raw = &msgs[0];
    let text = String::from_utf8_lossy(raw);
    assert!(
        text.contains("multipart/encrypted"),
        "PGP/MIME: {text:.400}"
    );
    for needle in [CANARY, CANARY_GROUPED] {
        assert!(!text.contains(needle), "the PIN crossed the wire in clear");
    }
    // Decrypt with GnuPG and the subscriber's secret key.
    let home = tempfile::Builder::new()
        .prefix("g")
        .tempdir_in("/tmp")
        .unwrap();
    let sec = root().join("channels/email/tests/keys/alice.sec.asc");
    let imp = gpg(home.path(), &["--import", sec.to_str().unwrap()], None);
    assert!(
        imp.status.success(),
        "{INSTALL}: {}",
        String::from_utf8_lossy(&imp.stderr)
    );
    let start = text
        .find("-----BEGIN PGP MESSAGE-----")
        .expect("armored part");
    let end = text
        .find("-----END PGP MESSAGE-----")
        .expect("armored part end")
        + "-----END PGP MESSAGE-----".len();
    let dec = gpg(
        home.path(),
        &["--decrypt"],
        Some(text[start..end].as_bytes()),
    );
    assert!(
        dec.status.success(),
        "gpg --decrypt: {}",
        String::from_utf8_lossy(&dec.stderr)
    );
    let plain = String::from_utf8_lossy(&dec.stdout);
    assert!(plain.contains(CANARY_GROUPED), "decrypted: {plain}");
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home.path())
        .args(["--kill", "gpg-agent"])
        .status();
    // The daemon's own log and database never saw the PIN in clear.
    let log = d.proc.log();
    assert!(!log.contains(CANARY) && !log.contains(CANARY_GROUPED));
}
