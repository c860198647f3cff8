//! Test peers for the e-mail channel: the aiosmtpd server (`peers/email/smtp_server.py`),
//! GnuPG in a temporary home, and Python's email parser / dkimpy
//! (`peers/email/inspect_message.py`). Every child process is killed on drop; every wait is
//! bounded.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pinpost_channel_core::{ChannelId, SecretString};
use pinpost_email::EmailConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const USER: &str = "pinpost";
pub const PASSWORD: &str = "s3cret-submission-pw";
pub const FROM: &str = "PIN Service <pins@pinpost.test>";

const INSTALL: &str = "the pinpost-email tests need python3 with aiosmtpd and dkimpy \
(pip install -r peers/email/requirements.txt) and GnuPG 2.2+ (apt-get install gnupg)";

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn repo_root() -> PathBuf {
    crate_dir().join("../..")
}

pub fn tls_dir() -> PathBuf {
    crate_dir().join("tests/tls")
}

fn peer_script(name: &str) -> PathBuf {
    repo_root().join("peers/email").join(name)
}

/// Fail (never skip) with an install hint when a tool is missing.
pub fn require_tools() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECKED.get_or_init(|| {
        let run = |cmd: &str, args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new(cmd)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{cmd}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run("python3", &["-c", "import aiosmtpd.smtp, dkim"])?;
        run("gpg", &["--version"])?;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{INSTALL}\n({e})");
    }
}

async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {limit:?}"))
}

/// How the test server runs.
#[derive(Clone)]
pub struct PeerOptions {
    /// "starttls", "implicit" or "none".
    pub tls: &'static str,
    pub auth: bool,
    pub queue_id: bool,
    pub port: Option<u16>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            tls: "starttls",
            auth: true,
            queue_id: true,
            port: None,
        }
    }
}

/// A message the server stored.
#[derive(Debug, Clone)]
pub struct Received {
    pub queue_id: String,
    pub raw: Vec<u8>,
    pub meta: serde_json::Value,
    pub path: PathBuf,
}

/// The aiosmtpd server, running until dropped.
pub struct Peer {
    pub port: u16,
    pub maildir: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Peer {
    pub async fn start(opts: PeerOptions) -> Peer {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        let stderr = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(peer_script("smtp_server.py"))
            .arg("--tls")
            .arg(opts.tls)
            .arg("--maildir")
            .arg(&maildir)
            .arg("--cert")
            .arg(tls_dir().join("server.pem"))
            .arg("--key")
            .arg(tls_dir().join("server.key"));
        if opts.auth {
            cmd.arg("--auth").arg(format!("{USER}:{PASSWORD}"));
        }
        if !opts.queue_id {
            cmd.arg("--no-queue-id");
        }
        if let Some(port) = opts.port {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL}\n(python3: {e})"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = bounded(
            "SMTP test server start",
            Duration::from_secs(20),
            lines.next_line(),
        )
        .await
        .unwrap()
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
            panic!("the SMTP test server exited at start:\n{log}")
        });
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"));
        Peer {
            port,
            maildir,
            _dir: dir,
            child,
        }
    }

    /// Every message stored so far (complete: its .json is written last).
    pub fn messages(&self) -> Vec<Received> {
        let Ok(entries) = std::fs::read_dir(&self.maildir) else {
            return Vec::new();
        };
        let mut out: Vec<Received> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|json| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
                let eml = json.with_extension("eml");
                Received {
                    queue_id: meta["queue_id"].as_str().unwrap().to_owned(),
                    raw: std::fs::read(&eml).unwrap(),
                    meta,
                    path: eml,
                }
            })
            .collect();
        out.sort_by(|a, b| a.queue_id.cmp(&b.queue_id));
        out
    }

    /// Every stored `.eml`, including those whose sender never got a reply.
    pub fn raw_files(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(&self.maildir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    pub async fn wait_for(&self, queue_id: &str) -> Received {
        bounded("message on the server", Duration::from_secs(10), async {
            loop {
                if let Some(m) = self.messages().into_iter().find(|m| m.queue_id == queue_id) {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub fn auth_log(&self) -> String {
        std::fs::read_to_string(self.maildir.join("auth.log")).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A channel config pointing at `port` on 127.0.0.1 with the test CA and credentials, short
/// timeouts and a fast health check.
pub fn config(name: &str, port: u16) -> EmailConfig {
    let mut cfg = EmailConfig::new(ChannelId::new(name), "127.0.0.1", FROM);
    cfg.port = Some(port);
    cfg.tls_ca_file = Some(tls_dir().join("ca.pem"));
    cfg.username = Some(SecretString::from(USER));
    cfg.password = Some(SecretString::from(PASSWORD));
    cfg.ehlo_name = Some("client.pinpost.test".into());
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.command_timeout = Duration::from_secs(5);
    cfg.data_timeout = Duration::from_secs(5);
    cfg.health_interval = Duration::from_millis(300);
    cfg.health_timeout = Duration::from_secs(3);
    cfg
}

/// The key kinds the tests generate.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    /// GnuPG's `future-default`: Ed25519 primary, Curve25519 (ECDH) encryption subkey.
    Curve25519,
    /// RSA-2048 primary and RSA-2048 encryption subkey.
    Rsa,
}

/// GnuPG with a temporary home, holding the subscribers' secret keys.
pub struct Gpg {
    home: tempfile::TempDir,
    lock: Mutex<()>,
}

impl Gpg {
    pub fn new() -> Arc<Gpg> {
        require_tools();
        // A short path: gpg-agent's socket lives in the home directory.
        let home = tempfile::Builder::new()
            .prefix("ppg")
            .tempdir_in("/tmp")
            .unwrap();
        let mut perms = std::fs::metadata(home.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(home.path(), perms).unwrap();
        Arc::new(Gpg {
            home,
            lock: Mutex::new(()),
        })
    }

    async fn run(&self, args: &[&str], input: Option<&Path>) -> std::process::Output {
        let mut cmd = Command::new("gpg");
        cmd.env("GNUPGHOME", self.home.path())
            .args([
                "--batch",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args);
        if let Some(p) = input {
            cmd.arg(p);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        bounded(
            &format!("gpg {}", args.join(" ")),
            Duration::from_secs(60),
            cmd.output(),
        )
        .await
        .unwrap_or_else(|e| panic!("{INSTALL}\n(gpg: {e})"))
    }

    /// Generate a key for `address`; returns its armored public key.
    pub async fn generate(&self, address: &str, kind: KeyKind) -> String {
        let uid = format!("Subscriber <{address}>");
        let algo = match kind {
            KeyKind::Curve25519 => "future-default",
            KeyKind::Rsa => "rsa2048",
        };
        let out = self
            .run(&["--quick-gen-key", &uid, algo, "default", "never"], None)
            .await;
        assert!(
            out.status.success(),
            "gpg --quick-gen-key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let KeyKind::Rsa = kind {
            let list = self
                .run(&["--with-colons", "--list-keys", address], None)
                .await;
            let text = String::from_utf8(list.stdout).unwrap();
            let fpr = text
                .lines()
                .find_map(|l| l.strip_prefix("fpr:"))
                .and_then(|l| l.split(':').find(|f| f.len() == 40))
                .expect("fingerprint")
                .to_owned();
            let out = self
                .run(&["--quick-add-key", &fpr, "rsa2048", "encr", "never"], None)
                .await;
            assert!(
                out.status.success(),
                "gpg --quick-add-key: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = self.run(&["--armor", "--export", address], None).await;
        assert!(out.status.success());
        let key = String::from_utf8(out.stdout).unwrap();
        assert!(
            key.contains("BEGIN PGP PUBLIC KEY BLOCK"),
            "no key exported"
        );
        key
    }

    /// Decrypt an armored message; `None` when GnuPG cannot.
    pub async fn decrypt(&self, armored: &str) -> Option<Vec<u8>> {
        let file = tempfile::NamedTempFile::new_in(self.home.path()).unwrap();
        std::fs::write(file.path(), armored).unwrap();
        let out = self.run(&["--decrypt"], Some(file.path())).await;
        out.status.success().then_some(out.stdout)
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _guard = self.lock.lock();
        // Stop the gpg-agent of this home only.
        let _ = std::process::Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The structure of a message as Python's email package sees it.
pub async fn inspect_mime(path: &Path) -> serde_json::Value {
    python_json(&["mime", path.to_str().unwrap()]).await
}

/// Parse a MIME entity held in memory (e.g. the decrypted payload).
pub async fn inspect_mime_bytes(bytes: &[u8]) -> serde_json::Value {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    inspect_mime(file.path()).await
}

/// Verify a DKIM signature with dkimpy against `record` (the TXT record).
pub async fn verify_dkim(path: &Path, record: &str) -> serde_json::Value {
    python_json(&["dkim", path.to_str().unwrap(), record]).await
}

async fn python_json(args: &[&str]) -> serde_json::Value {
    let out = bounded(
        "inspect_message.py",
        Duration::from_secs(30),
        Command::new("python3")
            .arg(peer_script("inspect_message.py"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "inspect_message.py {}: {}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The armored OpenPGP message in a received PGP/MIME message.
pub fn armored_payload(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let start = text.find("-----BEGIN PGP MESSAGE-----")?;
    let end = text[start..].find("-----END PGP MESSAGE-----")? + start;
    Some(text[start..end + "-----END PGP MESSAGE-----".len()].to_owned())
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
