//! `pinpost-bench daemon`: the whole path, HTTP API to SMSC, with the release binaries.
//!
//! Each run starts `pinpost smsc-sim` (recording every message with its arrival time) and
//! `pinpost serve` on a fresh SQLite database with `durability = "full"`, then either
//!
//! - throughput: wrk posts deliveries as fast as it can until N are accepted; reported are
//!   deliveries/s from the first request to the last submit_sm at the SMSC, the same up to
//!   the last delivery receipt applied, and the daemon's peak RSS; or
//! - latency (`--rate R`): a paced open-loop client offers R deliveries/s; reported are
//!   p50/p99 of the time from sending the HTTP request to the submit_sm at the SMSC.
//!
//! Runs repeat `--runs` times; medians are reported along with every run.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

#[derive(clap::Args, Debug, Clone)]
pub struct DaemonArgs {
    /// Deliveries per throughput run.
    #[arg(long, default_value_t = 100_000)]
    deliveries: usize,
    /// Concurrent HTTP connections (wrk -c).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offer this many deliveries per second instead (latency mode).
    #[arg(long)]
    rate: Option<u32>,
    /// Seconds of offered load in latency mode.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// SMPP window of the daemon's bind.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// "full" or "normal".
    #[arg(long, default_value = "full")]
    durability: String,
    /// The pinpost binary (default: next to this one).
    #[arg(long)]
    pinpost: Option<PathBuf>,
}

pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Start a process and wait for a stderr line containing `needle`; return the text after it.
pub(crate) fn start(
    mut cmd: Command,
    needle: &str,
    log: &Path,
) -> anyhow::Result<(Killed, String)> {
    let logfile = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile);
    let child = Killed(cmd.spawn().context("spawn")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            let at = l.find(needle).unwrap() + needle.len();
            return Ok((
                child,
                l[at..].split_whitespace().next().unwrap_or("").to_owned(),
            ));
        }
        if Instant::now() > deadline {
            bail!("no {needle:?} in {}:\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (pin text, arrival ms) of every recorded message.
pub(crate) fn recorded(path: &Path) -> Vec<(String, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let ts = v["ts"].as_str().unwrap_or("");
            let ms =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                    .unwrap_or(0);
            (v["text"].as_str().unwrap_or("").to_owned(), ms)
        })
        .collect()
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

pub(crate) fn db_count(db: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    smsc: Killed,
    daemon: Killed,
    base: String,
    token: String,
}

fn setup(a: &DaemonArgs, bin: &Path) -> anyhow::Result<Setup> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_owned();
    let mut sim = Command::new(bin);
    sim.args(["smsc-sim", "--listen", "127.0.0.1:0", "--record"])
        .arg(dir.join("smsc.jsonl"));
    let (smsc, addr) = start(sim, "loopback SMSC listening on ", &dir.join("smsc.log"))?;
    let token = "bench-token-0123456789abcdef0123".to_owned();
    std::fs::write(dir.join("token"), &token)?;
    let config = format!(
        r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "bench"
role = "billing"
token_file = "{d}/token"
[storage]
url = "sqlite://{d}/pinpost.db"
durability = "{dur}"
[secrets]
pin_key_file = "{d}/pin.key"
generate_missing = true
[log]
filter = "warn,pinpost=info"
[[channel]]
id = "sms"
kind = "smpp"
url = "smpp://{addr}"
system_id = "bench"
window = {window}
"#,
        d = dir.display(),
        dur = a.durability,
        window = a.window
    );
    std::fs::write(dir.join("pinpost.toml"), config)?;
    let mut serve = Command::new(bin);
    serve
        .arg("serve")
        .arg("--config")
        .arg(dir.join("pinpost.toml"));
    let (daemon, base) = start(serve, "listening on ", &dir.join("daemon.log"))?;
    // Wait for the bind.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(&base, "/readyz") != 200 {
        if Instant::now() > deadline {
            bail!("daemon never became ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Setup {
        _dir: tmp,
        dir,
        smsc,
        daemon,
        base,
        token,
    })
}

pub(crate) fn http_status(base: &str, path: &str) -> u16 {
    let hostport = base.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(hostport) else {
        return 0;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// wrk script posting deliveries with distinct PINs and idempotency keys: `BENCH_PER_THREAD`
/// requests per thread, `BENCH_TOKEN` as bearer, and an optional `BENCH_PREFIX` that keeps
/// the PINs of several wrk processes apart.
pub(crate) const WRK_SCRIPT: &str = r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
local got = 0
local limit = tonumber(os.getenv("BENCH_PER_THREAD"))
local token = os.getenv("BENCH_TOKEN")
local prefix = os.getenv("BENCH_PREFIX") or ""
function request()
  n = n + 1
  local pin = string.format("%s%02d%014d", prefix, tid, n)
  local body = '{"msisdn":"+819012345678","pin":"' .. pin .. '"}'
  local headers = {}
  headers["Authorization"] = "Bearer " .. token
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "b" .. prefix .. tid .. "-" .. n
  return wrk.format("POST", "/v1/deliveries", headers, body)
end
function response(status, headers, body)
  got = got + 1
  if got >= limit then wrk.thread:stop() end
end
"#;

struct Throughput {
    accepted: i64,
    submit_rate: f64,
    delivered_rate: f64,
    rss_mib: f64,
}

fn throughput_run(a: &DaemonArgs, bin: &Path) -> anyhow::Result<Throughput> {
    let s = setup(a, bin)?;
    let script = s.dir.join("post.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let db = s.dir.join("pinpost.db");
    let t0 = now_ms();
    // wrk's main thread sleeps for the whole -d even after every thread stopped, so it is
    // interrupted (SIGINT: it prints its summary and exits) once N deliveries are stored.
    let mut wrk = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", a.connections),
            "-d600s",
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&script)
        .arg(&s.base)
        .env("BENCH_PER_THREAD", a.deliveries.to_string())
        .env("BENCH_TOKEN", &s.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run wrk (apt-get install wrk)")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while db_count(&db, "SELECT count(*) FROM deliveries") < a.deliveries as i64 {
        if Instant::now() > deadline || wrk.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-INT", &wrk.id().to_string()])
        .status();
    let out = wrk.wait_with_output()?;
    let record = s.dir.join("smsc.jsonl");
    let accepted = db_count(&db, "SELECT count(*) FROM deliveries");
    let deadline = Instant::now() + Duration::from_secs(300);
    while (count_lines(&record) as i64) < accepted {
        if Instant::now() > deadline {
            bail!(
                "only {} of {accepted} reached the SMSC",
                count_lines(&record)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    while db_count(
        &db,
        "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
    ) < accepted
    {
        if Instant::now() > deadline {
            bail!("receipts did not all arrive");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t_delivered = now_ms();
    let last_submit = recorded(&record)
        .iter()
        .map(|(_, ms)| *ms)
        .max()
        .unwrap_or(t0);
    let rss = peak_rss_kib(s.daemon.0.id()) as f64 / 1024.0;
    let errors = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("errors"))
        .collect::<Vec<_>>()
        .join("; ");
    if !errors.is_empty() {
        eprintln!("wrk: {errors}");
    }
    drop(s.smsc);
    Ok(Throughput {
        accepted,
        submit_rate: accepted as f64 * 1000.0 / (last_submit - t0).max(1) as f64,
        delivered_rate: accepted as f64 * 1000.0 / (t_delivered - t0).max(1) as f64,
        rss_mib: rss,
    })
}

struct Latency {
    sent: usize,
    p50: i64,
    p99: i64,
    max: i64,
    rss_mib: f64,
}

fn latency_run(a: &DaemonArgs, bin: &Path, rate: u32) -> anyhow::Result<Latency> {
    let s = setup(a, bin)?;
    let workers = 8u32;
    let per_worker = rate as f64 / workers as f64;
    let total_per_worker = (per_worker * a.seconds as f64) as usize;
    let start = Instant::now() + Duration::from_millis(200);
    let mut handles = Vec::new();
    for w in 0..workers {
        let base = s.base.trim_start_matches("http://").to_owned();
        let token = s.token.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<(String, i64)>> {
            let mut conn = TcpStream::connect(&base)?;
            conn.set_nodelay(true)?;
            let mut sent = Vec::with_capacity(total_per_worker);
            let mut buf = vec![0u8; 4096];
            for i in 0..total_per_worker {
                // Open loop: each request has its own slot, whatever the last one took.
                let due = start + Duration::from_secs_f64((i as f64 + w as f64 / workers as f64) / per_worker);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let pin = format!("{:02}{:014}", w, i);
                let body = format!(r#"{{"msisdn":"+819012345678","pin":"{pin}"}}"#);
                let req = format!(
                    "POST /v1/deliveries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nIdempotency-Key: l{w}-{i}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let t = now_ms();
                conn.write_all(req.as_bytes())?;
                // Read one response (small, fits one read in practice; loop until the body).
                let mut got = Vec::new();
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        bail!("connection closed");
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0);
                        if got.len() >= h + 4 + len {
                            break;
                        }
                    }
                }
                let mut grouped = String::new();
                for (k, c) in pin.chars().enumerate() {
                    if k > 0 && k % 4 == 0 {
                        grouped.push(' ');
                    }
                    grouped.push(c);
                }
                sent.push((grouped, t));
            }
            Ok(sent)
        }));
    }
    let mut sent: HashMap<String, i64> = HashMap::new();
    for h in handles {
        for (pin, t) in h.join().expect("worker")? {
            sent.insert(pin, t);
        }
    }
    let record = s.dir.join("smsc.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_lines(&record) < sent.len() {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} reached the SMSC",
                count_lines(&record),
                sent.len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut lat: Vec<i64> = Vec::with_capacity(sent.len());
    for (text, at) in recorded(&record) {
        if let Some(pin) = text.strip_prefix("PIN ").map(|r| &r[..19])
            && let Some(t) = sent.get(pin)
        {
            lat.push(at - t);
        }
    }
    if lat.len() != sent.len() {
        bail!("matched {} of {} messages", lat.len(), sent.len());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok(Latency {
        sent: sent.len(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: *lat.last().unwrap(),
        rss_mib: peak_rss_kib(s.daemon.0.id()) as f64 / 1024.0,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(a: DaemonArgs) -> anyhow::Result<()> {
    let bin = match &a.pinpost {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pinpost"),
    };
    if !bin.exists() {
        bail!("{} not found: cargo build --release first", bin.display());
    }
    println!("pinpost-bench daemon: {a:?}");
    match a.rate {
        None => {
            let mut runs = Vec::new();
            for i in 0..a.runs {
                let r = throughput_run(&a, &bin)?;
                println!(
                    "run {i}: {} accepted, {:.0} deliveries/s to submit_sm, {:.0}/s to receipt, peak RSS {:.1} MiB",
                    r.accepted, r.submit_rate, r.delivered_rate, r.rss_mib
                );
                runs.push(r);
            }
            println!(
                "median: {:.0} deliveries/s submitted, {:.0}/s delivered (receipt applied), peak RSS {:.1} MiB",
                median(runs.iter().map(|r| r.submit_rate).collect()),
                median(runs.iter().map(|r| r.delivered_rate).collect()),
                median(runs.iter().map(|r| r.rss_mib).collect()),
            );
        }
        Some(rate) => {
            let mut runs = Vec::new();
            for i in 0..a.runs {
                let r = latency_run(&a, &bin, rate)?;
                println!(
                    "run {i}: {} sent at {rate}/s: enqueue->submit p50 {} ms, p99 {} ms, max {} ms, peak RSS {:.1} MiB",
                    r.sent, r.p50, r.p99, r.max, r.rss_mib
                );
                runs.push(r);
            }
            println!(
                "median: p50 {:.0} ms, p99 {:.0} ms, peak RSS {:.1} MiB",
                median(runs.iter().map(|r| r.p50 as f64).collect()),
                median(runs.iter().map(|r| r.p99 as f64).collect()),
                median(runs.iter().map(|r| r.rss_mib).collect()),
            );
        }
    }
    Ok(())
}
