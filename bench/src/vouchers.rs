//! `pinpost-bench vouchers`: issue and redeem vouchers over HTTP with the release binaries.
//!
//! Each run starts `pinpost smsc-sim` (recording every message, which is where the PINs
//! arrive) and `pinpost serve` with a billing and a merchant token on a fresh SQLite database
//! (`durability = "full"` by default), then
//!
//! 1. issuance: wrk issues N vouchers as fast as it can over `--connections` keep-alive
//!    connections; reported are vouchers issued/s (wrk started to the N-th 201 received) and
//!    the same up to the last PIN recorded by the SMSC;
//! 2. redemption, closed loop: the N PINs are taken from the SMSC's record and wrk redeems
//!    each exactly once (every request a different PIN) with `--latency`; reported are
//!    redemptions/s (wrk started to the N-th 201 received) and wrk's p50/p99;
//! 3. redemption, open loop: another `--rate` x `--seconds` vouchers are issued (not timed),
//!    then a paced client offers `--rate` redemptions/s; reported are p50/p99 of the time from
//!    each request's scheduled send time to its complete response.
//!
//! Every phase checks that each request got a 201 and that the database holds exactly as
//! many vouchers or redemptions. Nothing here asserts a time: the numbers are reported.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::daemon::{Killed, db_count, http_status, median, now_ms, peak_rss_kib, recorded, start};

#[derive(clap::Args, Debug, Clone)]
pub struct VouchersArgs {
    /// Vouchers issued, then redeemed, per run (closed loop).
    #[arg(long, default_value_t = 20_000)]
    vouchers: usize,
    /// Concurrent HTTP connections of wrk (-c).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads (-t); each takes its own share of the vouchers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Offered redemptions/s of the open-loop latency measurement (0: skip it).
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    /// Seconds of offered load in the open-loop measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections (one paced thread each) of the open-loop client.
    #[arg(long, default_value_t = 64)]
    open_connections: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// SMPP window of the daemon's bind.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// "full" or "normal".
    #[arg(long, default_value = "full")]
    durability: String,
    /// Keep each run's directory (config, logs, database, SMSC record) and print its path.
    #[arg(long)]
    keep: bool,
    /// The pinpost binary (default: next to this one).
    #[arg(long)]
    pinpost: Option<PathBuf>,
}

const BILLING_TOKEN: &str = "bench-billing-0123456789abcdef0123";
const MERCHANT_TOKEN: &str = "bench-shop-1-0123456789abcdef01234";

struct Setup {
    _dir: Option<tempfile::TempDir>,
    dir: PathBuf,
    db: PathBuf,
    record: PathBuf,
    smsc: Killed,
    daemon: Killed,
    base: String,
}

fn setup(a: &VouchersArgs, bin: &Path) -> anyhow::Result<Setup> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_owned();
    let tmp = if a.keep {
        let _ = tmp.keep();
        println!("  run directory: {}", dir.display());
        None
    } else {
        Some(tmp)
    };
    let record = dir.join("smsc.jsonl");
    let mut sim = Command::new(bin);
    sim.args(["smsc-sim", "--listen", "127.0.0.1:0", "--record"])
        .arg(&record);
    let (smsc, addr) = start(sim, "loopback SMSC listening on ", &dir.join("smsc.log"))?;
    std::fs::write(dir.join("billing.token"), BILLING_TOKEN)?;
    std::fs::write(dir.join("shop-1.token"), MERCHANT_TOKEN)?;
    let config = format!(
        r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "bench"
role = "billing"
token_file = "{d}/billing.token"
[[api.tokens]]
name = "shop-1"
role = "merchant"
merchant_id = "shop-1"
token_file = "{d}/shop-1.token"
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(&base, "/readyz") != 200 {
        if Instant::now() > deadline {
            bail!("daemon never became ready");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Setup {
        _dir: tmp,
        db: dir.join("pinpost.db"),
        record,
        dir,
        smsc,
        daemon,
        base,
    })
}

/// Shared by both wrk scripts. Thread `tid` of `nthreads` takes items tid, tid + nthreads, ...
/// of the batch, so no two requests use the same one. wrk calls `delay()` before every request
/// (a connection's first too): it reserves the next item, or parks the connection for an hour
/// once every item of its thread is sent or reserved, so no request beyond the batch is sent
/// and wrk's latency distribution holds exactly the batch's requests. wrk also calls
/// `request()` once on the first thread before any connection, only to check the request
/// parses; that call (no reservation) gets a GET /healthz and consumes nothing. When a thread
/// has every answer it writes its status counts to `BENCH_DONE<tid>` and stops.
const WRK_COMMON: &str = r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

nthreads = tonumber(os.getenv("BENCH_THREADS"))
limit = 0
local sent, reserved, extra, answered, started = 0, 0, 0, 0, false
local statuses = {}

-- The next item of this thread, or nil for a request without a reservation: wrk's check
-- before the run, or (counted, never expected) a request after a reconnect.
function next_item()
  if reserved == 0 then
    if started then extra = extra + 1 end
    return nil
  end
  local k = sent
  sent = sent + 1
  reserved = reserved - 1
  return k
end

function delay()
  started = true
  if sent + reserved >= limit then return 3600000 end
  reserved = reserved + 1
  return 0
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  if answered >= limit + extra then
    local f = io.open(os.getenv("BENCH_DONE") .. tid, "w")
    f:write("extra ", extra, "\n")
    for s, n in pairs(statuses) do f:write(s, " ", n, "\n") end
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format("BENCH_LATENCY_US %d %d %d %d %d %d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.requests))
end
"#;

/// Issue `BENCH_COUNT` vouchers numbered from `BENCH_FIRST` (msisdn +8190 followed by
/// 10000000 + the number; Idempotency-Key from the number).
const WRK_ISSUE: &str = r#"
local total = tonumber(os.getenv("BENCH_COUNT"))
local first = tonumber(os.getenv("BENCH_FIRST"))
local auth = "Bearer " .. os.getenv("BENCH_TOKEN")

function init(args)
  limit = math.max(0, math.floor((total - 1 - tid) / nthreads) + 1)
end

function request()
  local k = next_item()
  if k == nil then return wrk.format("GET", "/healthz") end
  local i = first + tid + k * nthreads
  local body = '{"msisdn":"+8190' .. (10000000 + i) ..
    '","amount":{"value":"3000","currency":"JPY"},"payee":"shop-1",' ..
    '"funding":{"source":"credit_company","institution":"card-co"},"ttl":"1h"}'
  local headers = {}
  headers["Authorization"] = auth
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = "v-" .. i
  return wrk.format("POST", "/v1/vouchers", headers, body)
end
"#;

/// Redeem each PIN of the file `BENCH_PINS` (one per line) once, for its full value.
const WRK_REDEEM: &str = r#"
local auth = "Bearer " .. os.getenv("BENCH_TOKEN")
local pins = {}

function init(args)
  local i = 0
  for line in io.lines(os.getenv("BENCH_PINS")) do
    if i % nthreads == tid then pins[#pins + 1] = line end
    i = i + 1
  end
  limit = #pins
end

function request()
  local k = next_item()
  if k == nil then return wrk.format("GET", "/healthz") end
  local body = '{"pin":"' .. pins[k + 1] ..
    '","amount":{"value":"3000","currency":"JPY"},"order_ref":"w' .. tid .. '-' .. k .. '"}'
  local headers = {}
  headers["Authorization"] = auth
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", "/v1/redemptions", headers, body)
end
"#;

/// wrk's closed-loop latency distribution, microseconds.
#[derive(Debug, Clone, Copy, Default)]
struct WrkLatency {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    requests: u64,
}

struct WrkOut {
    statuses: BTreeMap<u16, u64>,
    extra: u64,
    latency: WrkLatency,
    /// wrk's own "Socket errors" line, if any.
    socket_errors: Option<String>,
    /// CPU seconds wrk used.
    cpu_s: f64,
    /// When the last answer arrived (ms since the epoch): the newest `done` file.
    last_answer_ms: i64,
}

impl WrkOut {
    fn created(&self) -> u64 {
        self.statuses.get(&201).copied().unwrap_or(0)
    }
    fn not_created(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| **s != 201)
            .map(|(_, n)| n)
            .sum()
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process so far.
fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / clk_tck()
}

/// Run wrk with `script` until every thread has all its answers, then stop it (SIGINT: it
/// prints its summary and runs `done`, which reports the latency distribution).
fn run_wrk(
    a: &VouchersArgs,
    s: &Setup,
    name: &str,
    script: &str,
    env: &[(&str, String)],
) -> anyhow::Result<WrkOut> {
    let script_path = s.dir.join(format!("{name}.lua"));
    std::fs::write(&script_path, format!("{WRK_COMMON}\n{script}"))?;
    let done_prefix = s.dir.join(format!("{name}.done."));
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{}", a.threads),
        &format!("-c{}", a.connections),
        "-d3600s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
    ])
    .arg(&script_path)
    .arg(&s.base)
    .env("BENCH_THREADS", a.threads.to_string())
    .env("BENCH_DONE", &done_prefix)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut wrk = cmd.spawn().context("run wrk (apt-get install wrk)")?;
    let wrk_pid = wrk.id();
    let marker = |t: usize| PathBuf::from(format!("{}{t}", done_prefix.display()));
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if (0..a.threads).all(|t| marker(t).exists()) {
            break;
        }
        if let Some(st) = wrk.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = wrk.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("wrk exited early ({st}): {err}");
        }
        if Instant::now() > deadline {
            eprintln!("  wrk: not every answer arrived within 900 s; stopping it");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu = cpu_s(wrk_pid);
    let _ = Command::new("kill")
        .args(["-INT", &wrk_pid.to_string()])
        .status();
    let out = wrk.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(s.dir.join(format!("{name}.wrk.txt")), stdout.as_bytes())?;
    let mut latency = WrkLatency::default();
    if let Some(l) = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_LATENCY_US "))
    {
        let v: Vec<u64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [p50, p90, p99, p999, max, requests] = v[..] {
            latency = WrkLatency {
                p50,
                p90,
                p99,
                p999,
                max,
                requests,
            };
        }
    } else {
        bail!("no latency line from wrk:\n{stdout}");
    }
    let mut statuses = BTreeMap::new();
    let mut extra = 0;
    let mut last_answer_ms = 0;
    for t in 0..a.threads {
        if let Ok(m) = std::fs::metadata(marker(t)).and_then(|m| m.modified()) {
            let ms = m.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
            last_answer_ms = last_answer_ms.max(ms);
        }
        let text = std::fs::read_to_string(marker(t)).unwrap_or_default();
        for l in text.lines() {
            let mut it = l.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            if k == "extra" {
                extra += v;
            } else if let Ok(code) = k.parse::<u16>() {
                *statuses.entry(code).or_insert(0) += v;
            }
        }
    }
    let socket_errors = stdout
        .lines()
        .find(|l| l.contains("Socket errors"))
        .map(|l| l.trim().to_owned());
    Ok(WrkOut {
        statuses,
        extra,
        latency,
        socket_errors,
        cpu_s: cpu,
        last_answer_ms,
    })
}

/// CPU use of the daemon and the SMSC between two points in time.
struct Cpu {
    daemon: u32,
    smsc: u32,
    last: (f64, f64),
    since: Instant,
}

/// Cores used (1.0 = one core busy) by the daemon and the SMSC, and wall seconds.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    daemon: f64,
    smsc: f64,
    wall: f64,
}

impl Cpu {
    fn new(s: &Setup) -> Cpu {
        let (daemon, smsc) = (s.daemon.0.id(), s.smsc.0.id());
        Cpu {
            daemon,
            smsc,
            last: (cpu_s(daemon), cpu_s(smsc)),
            since: Instant::now(),
        }
    }
    fn stop(&self) -> CpuUse {
        let wall = self.since.elapsed().as_secs_f64().max(0.001);
        CpuUse {
            daemon: (cpu_s(self.daemon) - self.last.0) / wall,
            smsc: (cpu_s(self.smsc) - self.last.1) / wall,
            wall,
        }
    }
}

/// Unique PINs in the SMSC's record, in order of arrival, with the arrival time (ms).
fn recorded_pins(record: &Path) -> Vec<(String, i64)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (text, ms) in recorded(record) {
        let Some(rest) = text.strip_prefix("PIN ") else {
            continue;
        };
        let grouped = rest.split(" for ").next().unwrap_or("");
        let pin: String = grouped.chars().filter(|c| !c.is_whitespace()).collect();
        if pin.len() == 16 && pin.bytes().all(|b| b.is_ascii_digit()) && seen.insert(pin.clone()) {
            out.push((pin, ms));
        }
    }
    out
}

/// Wait until `want` distinct PINs are at the SMSC and every delivery has its receipt
/// applied, so the next phase does not share the daemon with delivery work.
fn wait_delivered(s: &Setup, want: usize) -> anyhow::Result<Vec<(String, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pins = recorded_pins(&s.record);
        let delivered = db_count(
            &s.db,
            "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
        );
        if pins.len() >= want && delivered >= want as i64 {
            return Ok(pins);
        }
        if Instant::now() > deadline {
            bail!(
                "{} of {want} PINs at the SMSC, {delivered} deliveries delivered",
                pins.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Issued {
    n: i64,
    rate: f64,
    to_smsc_rate: f64,
    wrk: WrkOut,
    cpu: CpuUse,
    secs: f64,
}

/// Issue `count` vouchers numbered from `first` with wrk; wait for their PINs at the SMSC.
fn issue(
    a: &VouchersArgs,
    s: &Setup,
    name: &str,
    first: usize,
    count: usize,
) -> anyhow::Result<(Issued, Vec<String>)> {
    let before = db_count(&s.db, "SELECT count(*) FROM vouchers");
    let cpu = Cpu::new(s);
    let t0 = now_ms();
    let wrk = run_wrk(
        a,
        s,
        name,
        WRK_ISSUE,
        &[
            ("BENCH_TOKEN", BILLING_TOKEN.to_owned()),
            ("BENCH_COUNT", count.to_string()),
            ("BENCH_FIRST", first.to_string()),
        ],
    )?;
    let cpu_used = cpu.stop();
    let n = db_count(&s.db, "SELECT count(*) FROM vouchers") - before;
    if wrk.created() != count as u64 || wrk.not_created() != 0 || n != count as i64 {
        bail!(
            "issuance: {} answered 201, statuses {:?}, {n} vouchers stored, {count} wanted",
            wrk.created(),
            wrk.statuses
        );
    }
    let pins = wait_delivered(s, before as usize + count)?;
    let batch: Vec<(String, i64)> = pins[before as usize..].to_vec();
    let last_at_smsc = batch.iter().map(|(_, ms)| *ms).max().unwrap_or(t0);
    let secs = (wrk.last_answer_ms - t0).max(1) as f64 / 1000.0;
    Ok((
        Issued {
            n,
            rate: n as f64 / secs,
            to_smsc_rate: n as f64 * 1000.0 / (last_at_smsc - t0).max(1) as f64,
            wrk,
            cpu: cpu_used,
            secs,
        },
        batch.into_iter().map(|(p, _)| p).collect(),
    ))
}

struct Redeemed {
    rate: f64,
    wrk: WrkOut,
    cpu: CpuUse,
    secs: f64,
}

fn redeem_closed(a: &VouchersArgs, s: &Setup, pins: &[String]) -> anyhow::Result<Redeemed> {
    let file = s.dir.join("pins.txt");
    std::fs::write(&file, pins.join("\n") + "\n")?;
    let before = db_count(&s.db, "SELECT count(*) FROM redemptions");
    let cpu = Cpu::new(s);
    let t0 = now_ms();
    let wrk = run_wrk(
        a,
        s,
        "redeem",
        WRK_REDEEM,
        &[
            ("BENCH_TOKEN", MERCHANT_TOKEN.to_owned()),
            ("BENCH_PINS", file.display().to_string()),
        ],
    )?;
    let cpu_used = cpu.stop();
    let n = db_count(&s.db, "SELECT count(*) FROM redemptions") - before;
    let want = pins.len();
    if wrk.created() != want as u64 || wrk.not_created() != 0 || n != want as i64 {
        bail!(
            "redemption: {} answered 201, statuses {:?}, {n} redemptions stored, {want} wanted",
            wrk.created(),
            wrk.statuses
        );
    }
    let secs = (wrk.last_answer_ms - t0).max(1) as f64 / 1000.0;
    Ok(Redeemed {
        rate: n as f64 / secs,
        wrk,
        cpu: cpu_used,
        secs,
    })
}

struct OpenLoop {
    sent: usize,
    created: usize,
    achieved: f64,
    /// From the scheduled send time to the complete response, microseconds.
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
    /// From the actual send to the complete response (service time), microseconds.
    svc_p50: u64,
    svc_p99: u64,
    cpu: CpuUse,
    /// CPU seconds of this process (the client) during the measurement.
    client_cpu_s: f64,
}

/// Send one request and read one response; the status code.
fn roundtrip(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    conn.write_all(req)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                return Ok(status);
            }
        }
    }
}

/// A paced client: `open_connections` threads, one keep-alive connection each, together
/// offering `rate` redemptions/s. Every request has its own time slot whatever the previous
/// one took, and its latency counts from that slot, so a slow answer that delays the next
/// request on the connection is charged to that request too (no coordinated omission).
fn redeem_open(a: &VouchersArgs, s: &Setup, pins: &[String]) -> anyhow::Result<OpenLoop> {
    let workers = a.open_connections.max(1);
    let per_worker = a.rate as f64 / workers as f64;
    let total = pins.len();
    let before = db_count(&s.db, "SELECT count(*) FROM redemptions");
    let cpu = Cpu::new(s);
    let me = std::process::id();
    let client_cpu0 = cpu_s(me);
    let hostport = s.base.trim_start_matches("http://").to_owned();
    let start = Instant::now() + Duration::from_millis(300);
    let mut handles = Vec::new();
    for w in 0..workers {
        let mine: Vec<String> = pins.iter().skip(w).step_by(workers).cloned().collect();
        let hostport = hostport.clone();
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<(u64, u64, u16)>> {
                let mut conn = TcpStream::connect(&hostport)?;
                conn.set_nodelay(true)?;
                let mut out = Vec::with_capacity(mine.len());
                let mut buf = Vec::with_capacity(4096);
                for (i, pin) in mine.iter().enumerate() {
                    let slot = (i as f64 + w as f64 / workers as f64) / per_worker;
                    let due = start + Duration::from_secs_f64(slot);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let body = format!(
                        r#"{{"pin":"{pin}","amount":{{"value":"3000","currency":"JPY"}},"order_ref":"o{w}-{i}"}}"#
                    );
                    let req = format!(
                        "POST /v1/redemptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {MERCHANT_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let sent = Instant::now();
                    let status = roundtrip(&mut conn, req.as_bytes(), &mut buf)?;
                    let end = Instant::now();
                    out.push((
                        end.duration_since(due).as_micros() as u64,
                        end.duration_since(sent).as_micros() as u64,
                        status,
                    ));
                }
                Ok(out)
            },
        ));
    }
    let mut lat = Vec::with_capacity(total);
    let mut svc = Vec::with_capacity(total);
    let mut created = 0;
    for h in handles {
        for (l, sv, status) in h.join().expect("worker")? {
            lat.push(l);
            svc.push(sv);
            created += usize::from(status == 201);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_used = cpu.stop();
    let n = db_count(&s.db, "SELECT count(*) FROM redemptions") - before;
    if created != total || n != total as i64 {
        bail!("open loop: {created} of {total} answered 201, {n} redemptions stored");
    }
    lat.sort_unstable();
    svc.sort_unstable();
    let pct = |v: &[u64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    Ok(OpenLoop {
        sent: total,
        created,
        achieved: total as f64 / elapsed,
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        p999: pct(&lat, 0.999),
        max: *lat.last().unwrap(),
        svc_p50: pct(&svc, 0.50),
        svc_p99: pct(&svc, 0.99),
        cpu: cpu_used,
        client_cpu_s: cpu_s(me) - client_cpu0,
    })
}

struct Run {
    issued: Issued,
    redeemed: Redeemed,
    open: Option<OpenLoop>,
    rss_mib: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct_cpu(cpu_s: f64, secs: f64) -> f64 {
    100.0 * cpu_s / secs.max(0.001)
}

fn one_run(a: &VouchersArgs, bin: &Path, i: usize) -> anyhow::Result<Run> {
    let s = setup(a, bin)?;
    let (issued, pins) = issue(a, &s, "issue", 0, a.vouchers)?;
    let w = &issued.wrk;
    println!(
        "run {i} issue:  {} vouchers in {:.2} s: {:.0} issued/s, {:.0}/s to the last PIN at the SMSC; \
         wrk p50 {:.1} ms p99 {:.1} ms; CPU daemon {:.0} %, smsc {:.0} %, wrk {:.0} %",
        issued.n,
        issued.secs,
        issued.rate,
        issued.to_smsc_rate,
        ms(w.latency.p50),
        ms(w.latency.p99),
        100.0 * issued.cpu.daemon,
        100.0 * issued.cpu.smsc,
        pct_cpu(w.cpu_s, issued.cpu.wall),
    );
    let redeemed = redeem_closed(a, &s, &pins)?;
    let w = &redeemed.wrk;
    println!(
        "run {i} redeem: {} redemptions (201) in {:.2} s, non-201 {}: {:.0} redemptions/s; \
         wrk p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms ({} requests); \
         CPU daemon {:.0} %, wrk {:.0} %",
        w.created(),
        redeemed.secs,
        w.not_created(),
        redeemed.rate,
        ms(w.latency.p50),
        ms(w.latency.p90),
        ms(w.latency.p99),
        ms(w.latency.p999),
        ms(w.latency.max),
        w.latency.requests,
        100.0 * redeemed.cpu.daemon,
        pct_cpu(w.cpu_s, redeemed.cpu.wall),
    );
    for w in [&issued.wrk, &redeemed.wrk] {
        if w.extra > 0 {
            println!(
                "  note: {} requests without an item (after a reconnect; sent GET /healthz)",
                w.extra
            );
        }
        if let Some(e) = &w.socket_errors {
            println!("  wrk: {e}");
        }
    }
    let open = if a.rate > 0 {
        let count = a.rate as usize * a.seconds as usize;
        let (_, pins) = issue(a, &s, "issue-open", a.vouchers, count)?;
        let o = redeem_open(a, &s, &pins)?;
        println!(
            "run {i} open:   {} redemptions offered at {}/s over {} connections (achieved {:.0}/s), {} got 201: \
             p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.1} ms (service time p50 {:.2} ms p99 {:.2} ms); \
             CPU daemon {:.0} %, client {:.0} %",
            o.sent,
            a.rate,
            a.open_connections,
            o.achieved,
            o.created,
            ms(o.p50),
            ms(o.p99),
            ms(o.p999),
            ms(o.max),
            ms(o.svc_p50),
            ms(o.svc_p99),
            100.0 * o.cpu.daemon,
            pct_cpu(o.client_cpu_s, o.cpu.wall),
        );
        Some(o)
    } else {
        None
    };
    let rss_mib = peak_rss_kib(s.daemon.0.id()) as f64 / 1024.0;
    println!("run {i}: daemon peak RSS {rss_mib:.1} MiB");
    Ok(Run {
        issued,
        redeemed,
        open,
        rss_mib,
    })
}

pub fn run(a: VouchersArgs) -> anyhow::Result<()> {
    let bin = match &a.pinpost {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pinpost"),
    };
    if !bin.exists() {
        bail!("{} not found: cargo build --release first", bin.display());
    }
    let open_count = a.rate as usize * a.seconds as usize;
    if a.threads == 0
        || a.connections < a.threads
        || a.vouchers < a.threads
        || (a.rate > 0 && open_count < a.open_connections.max(a.threads))
    {
        bail!("every wrk thread and paced connection needs at least one connection and voucher");
    }
    println!("pinpost-bench vouchers: {a:?}");
    let mut runs = Vec::new();
    for i in 0..a.runs {
        runs.push(one_run(&a, &bin, i)?);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    println!(
        "median: {:.0} issued/s ({:.0}/s to the SMSC); {:.0} redemptions/s closed loop, \
         wrk p50 {:.1} ms p99 {:.1} ms; peak RSS {:.1} MiB",
        med(&|r| r.issued.rate),
        med(&|r| r.issued.to_smsc_rate),
        med(&|r| r.redeemed.rate),
        med(&|r| ms(r.redeemed.wrk.latency.p50)),
        med(&|r| ms(r.redeemed.wrk.latency.p99)),
        med(&|r| r.rss_mib),
    );
    if a.rate > 0 {
        let o = |f: &dyn Fn(&OpenLoop) -> f64| {
            median(runs.iter().filter_map(|r| r.open.as_ref()).map(f).collect())
        };
        println!(
            "median open loop at {}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            a.rate,
            o(&|r| ms(r.p50)),
            o(&|r| ms(r.p99)),
            o(&|r| ms(r.p999)),
        );
    }
    Ok(())
}
