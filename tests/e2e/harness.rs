//! Processes and helpers for the end-to-end tests: the real `pinpost` binary as daemon and
//! as loopback SMSC, each in its own temp directory, on loopback ports chosen by the OS.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pinpost");
/// Never appears anywhere but in the message the SMSC records.
pub const CANARY: &str = "7305917735186203";
pub const CANARY_GROUPED: &str = "7305 9177 3518 6203";
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789abcdef00";
pub const SHOP1_TOKEN: &str = "e2e-shop1-token-0123456789abcdef00";
pub const SHOP2_TOKEN: &str = "e2e-shop2-token-0123456789abcdef00";

/// A child process whose stderr is collected line by line.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pinpost");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Wait for a stderr line containing `needle`; return the text after it.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                let at = l.find(needle).unwrap() + needle.len();
                return l[at..].trim().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "process exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within 30 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The loopback SMSC as its own process.
pub struct Smsc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub record: PathBuf,
    _dir: tempfile::TempDir,
}

impl Smsc {
    pub fn start(args: &[&str]) -> Smsc {
        Self::start_on("127.0.0.1:0", args)
    }

    pub fn start_on(listen: &str, args: &[&str]) -> Smsc {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("smsc.jsonl");
        let mut cmd = Command::new(BIN);
        cmd.args([
            "smsc-sim",
            "--listen",
            listen,
            "--system-id",
            "pinpost",
            "--password",
            "secret",
        ])
        .arg("--record")
        .arg(&record)
        .args(args);
        let mut proc = Proc::spawn(cmd);
        let addr = proc.wait_line("loopback SMSC listening on ", Duration::from_secs(20));
        let addr: SocketAddr = addr
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .expect("sim address");
        Smsc {
            proc,
            addr,
            record,
            _dir: dir,
        }
    }

    /// The recorded messages so far.
    pub fn messages(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("record line"))
            .collect()
    }

    /// Wait until at least `n` messages are recorded (the record is flushed every 100 ms).
    pub fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages recorded",
                m.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn texts(&self) -> Vec<String> {
        self.messages()
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// A free loopback port (bound and released; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct DaemonOpts {
    /// More `[[channel]]` tables, appended to the config.
    pub extra_channels: String,
    pub smsc_url: String,
    pub window: usize,
    pub extra_delivery: &'static str,
    /// More top-level tables (e.g. `[vouchers]`, `[caps]`), placed before `[log]`.
    pub extra_sections: String,
    pub log_filter: &'static str,
}

impl DaemonOpts {
    pub fn new(smsc: &str) -> Self {
        DaemonOpts {
            extra_channels: String::new(),
            smsc_url: smsc.to_owned(),
            window: 10,
            extra_delivery: "",
            extra_sections: String::new(),
            log_filter: "debug",
        }
    }
}

/// The daemon as its own process, with a temp state directory.
pub struct Daemon {
    pub proc: Proc,
    pub base: String,
    pub token: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

pub fn write_config(dir: &Path, o: &DaemonOpts) -> PathBuf {
    let token = "e2e-billing-token-0123456789abcdef";
    std::fs::write(dir.join("billing.token"), token).unwrap();
    std::fs::write(dir.join("admin.token"), ADMIN_TOKEN).unwrap();
    std::fs::write(dir.join("shop1.token"), SHOP1_TOKEN).unwrap();
    std::fs::write(dir.join("shop2.token"), SHOP2_TOKEN).unwrap();
    let text = format!(
        r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "billing"
role = "billing"
token_file = "{dir}/billing.token"
[[api.tokens]]
name = "ops"
role = "admin"
token_file = "{dir}/admin.token"
[[api.tokens]]
name = "shop-1"
role = "merchant"
merchant_id = "shop-1"
token_file = "{dir}/shop1.token"
[[api.tokens]]
name = "shop-2"
role = "merchant"
merchant_id = "shop-2"
token_file = "{dir}/shop2.token"
[registry]
default_region = "JP"
[storage]
url = "sqlite://{dir}/pinpost.db"
[secrets]
pin_key_file = "{dir}/pin.key"
generate_missing = true
[delivery]
in_doubt_after = "1s"
retry_backoff_min = "200ms"
retry_backoff_max = "1s"
{extra}
{sections}
[log]
filter = "{filter}"
[[channel]]
id = "sms"
kind = "smpp"
url = "{url}"
system_id = "pinpost"
password = "secret"
window = {window}
response_timeout = "2s"
{extra_channels}
"#,
        dir = dir.display(),
        extra = o.extra_delivery,
        sections = o.extra_sections,
        filter = o.log_filter,
        url = o.smsc_url,
        window = o.window,
        extra_channels = o.extra_channels,
    );
    let path = dir.join("pinpost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    pub fn start(dir: &Path, o: &DaemonOpts) -> Daemon {
        let config = write_config(dir, o);
        Self::start_with(dir, &config)
    }

    pub fn start_with(dir: &Path, config: &Path) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .current_dir(dir);
        let mut proc = Proc::spawn(cmd);
        let url = proc.wait_line("listening on ", Duration::from_secs(30));
        Daemon {
            proc,
            base: url.split_whitespace().next().unwrap().to_owned(),
            token: "e2e-billing-token-0123456789abcdef".into(),
            dir: dir.to_owned(),
            config: config.to_owned(),
        }
    }

    pub fn restart(&mut self) {
        self.proc.kill9();
        *self = Daemon::start_with(&self.dir.clone(), &self.config.clone());
    }
}

/// A response: status and JSON body (Null when the body is not JSON).
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub raw: String,
    pub retry_after: Option<String>,
}

pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = match body {
        Some(b) => agent
            .run(
                req.header("Content-Type", "application/json")
                    .body(b.as_bytes().to_vec())
                    .unwrap(),
            )
            .expect("http"),
        None => agent.run(req.body(()).unwrap()).expect("http"),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let raw = resp.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Resp {
        status,
        body,
        raw,
        retry_after,
    }
}

impl Daemon {
    pub fn enqueue(&self, key: &str, body: &Value) -> Resp {
        http(
            "POST",
            &format!("{}/v1/deliveries", self.base),
            Some(&self.token),
            &[("Idempotency-Key", key)],
            Some(&body.to_string()),
        )
    }

    pub fn get(&self, id: &str) -> Resp {
        http(
            "GET",
            &format!("{}/v1/deliveries/{id}", self.base),
            Some(&self.token),
            &[],
            None,
        )
    }

    /// A request with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let b = body.map(|b| b.to_string());
        http(
            method,
            &format!("{}{path}", self.base),
            Some(ADMIN_TOKEN),
            &[],
            b.as_deref(),
        )
    }

    /// Register `msisdn` with these devices (each the body of a device POST).
    pub fn register(&self, msisdn: &str, devices: &[Value]) {
        let r = self.admin("PUT", &format!("/v1/subscribers/{msisdn}"), None);
        assert!(r.status == 201 || r.status == 200, "{}", r.raw);
        for dev in devices {
            let r = self.admin(
                "POST",
                &format!("/v1/subscribers/{msisdn}/devices"),
                Some(dev.clone()),
            );
            assert_eq!(r.status, 201, "{}", r.raw);
        }
    }

    /// Enqueue, wait until the delivery is final in one of `states`, return its view.
    pub fn deliver(&self, key: &str, body: &Value, states: &[&str], timeout: Duration) -> Value {
        let r = self.enqueue(key, body);
        assert_eq!(r.status, 202, "{}", r.raw);
        let id = r.body["id"].as_str().unwrap().to_owned();
        self.wait_states(std::slice::from_ref(&id), states, timeout);
        self.get(&id).body
    }

    pub fn state(&self, id: &str) -> String {
        self.get(id).body["state"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    }

    /// Wait until every id is in one of `states` (and `final`), up to `timeout`.
    pub fn wait_states(&self, ids: &[String], states: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<String> = ids.to_vec();
        while !pending.is_empty() {
            pending.retain(|id| {
                let b = self.get(id).body;
                !(states.contains(&b["state"].as_str().unwrap_or(""))
                    && b["final"] == Value::Bool(true))
            });
            if pending.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let sample: Vec<String> =
                    pending.iter().take(3).map(|id| self.get(id).raw).collect();
                panic!(
                    "{} deliveries not in {states:?} after {timeout:?}, e.g. {sample:?}\n--- log tail ---\n{}",
                    pending.len(),
                    tail(&self.proc.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A delivery request with PIN `pin` to `msisdn`.
pub fn delivery(msisdn: &str, pin: &str) -> Value {
    serde_json::json!({"msisdn": msisdn, "pin": pin})
}

/// A distinct 16-digit PIN per index (never the canary).
pub fn pin_for(i: usize) -> String {
    format!("49{:014}", i)
}

/// Files under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}
