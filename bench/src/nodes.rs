//! `pinpost-bench nodes`: deliveries/s with 1, 2 and 3 daemons on one PostgreSQL database,
//! next to one daemon on SQLite, in one run.
//!
//! Each run starts `pinpost smsc-sim` and the daemons (each with its own SMPP bind to that
//! SMSC; on PostgreSQL all of them on one fresh schema), then one wrk per daemon posts
//! N / nodes deliveries to it. Reported: accepted deliveries / (first request → every
//! delivery `delivered`, receipt applied), and submits the SMSC saw more than once.
//! Configurations run interleaved (sqlite, pg×1, pg×2, pg×3, then again) so that drift of a
//! noisy machine spreads over all of them; medians are reported.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::daemon::{Killed, WRK_SCRIPT, db_count, http_status, now_ms, recorded, start};

#[derive(clap::Args, Debug, Clone)]
pub struct NodesArgs {
    /// Deliveries per run, split evenly over the nodes.
    #[arg(long, default_value_t = 30_000)]
    deliveries: usize,
    /// HTTP connections per node (wrk -c).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Node counts to run on PostgreSQL.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// PostgreSQL to run on (each run gets its own schema, dropped afterwards).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// SMPP window of each node's bind.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// The pinpost binary (default: next to this one).
    #[arg(long)]
    pinpost: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Sqlite,
    Postgres(usize),
}

impl Backend {
    fn label(self) -> String {
        match self {
            Backend::Sqlite => "SQLite, 1 node".into(),
            Backend::Postgres(1) => "PostgreSQL, 1 node".into(),
            Backend::Postgres(n) => format!("PostgreSQL, {n} nodes"),
        }
    }
}

fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .context("psql (postgresql-client)")?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Outcome {
    accepted: i64,
    rate: f64,
    duplicates: usize,
}

fn one_run(a: &NodesArgs, bin: &Path, backend: Backend, run: usize) -> anyhow::Result<Outcome> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_owned();
    let mut sim = Command::new(bin);
    sim.args(["smsc-sim", "--listen", "127.0.0.1:0", "--record"])
        .arg(dir.join("smsc.jsonl"));
    let (smsc, addr) = start(sim, "loopback SMSC listening on ", &dir.join("smsc.log"))?;
    let token = "bench-token-0123456789abcdef0123";
    std::fs::write(dir.join("token"), token)?;
    std::fs::write(
        dir.join("pin.key"),
        "5f0e1d2c3b4a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    )?;
    let (nodes, schema) = match backend {
        Backend::Sqlite => (1, None),
        Backend::Postgres(n) => {
            let schema = format!("bench_{}_{run}_{n}", std::process::id());
            psql(
                &a.postgres,
                &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
            )?;
            (n, Some(schema))
        }
    };
    let sep = if a.postgres.contains('?') { '&' } else { '?' };
    let pg_url = schema
        .as_ref()
        .map(|s| format!("{}{sep}options=-csearch_path%3D{s}", a.postgres));
    let mut daemons: Vec<(Killed, String)> = Vec::new();
    for i in 0..nodes {
        let storage = match &pg_url {
            None => format!("url = \"sqlite://{}/pinpost.db\"", dir.display()),
            Some(u) => format!("url = \"{u}\"\nnode = \"bench-{i}\""),
        };
        let config = format!(
            r#"
[api]
listen = "127.0.0.1:0"
[[api.tokens]]
name = "bench"
role = "billing"
token_file = "{d}/token"
[storage]
{storage}
[secrets]
pin_key_file = "{d}/pin.key"
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
            window = a.window
        );
        let path = dir.join(format!("node{i}.toml"));
        std::fs::write(&path, config)?;
        let mut serve = Command::new(bin);
        serve.arg("serve").arg("--config").arg(&path);
        let (child, base) = start(serve, "listening on ", &dir.join(format!("node{i}.log")))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_status(&base, "/readyz") != 200 {
            if Instant::now() > deadline {
                bail!("node {i} never became ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        daemons.push((child, base));
    }
    let count = |sql: &str| -> i64 {
        match &pg_url {
            None => db_count(&dir.join("pinpost.db"), sql),
            Some(u) => psql(u, sql).ok().and_then(|s| s.parse().ok()).unwrap_or(0),
        }
    };
    let script = dir.join("post.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let per_node = a.deliveries / nodes;
    let total = (per_node * nodes) as i64;
    let t0 = now_ms();
    let mut wrks = Vec::new();
    for (i, (_, base)) in daemons.iter().enumerate() {
        wrks.push(
            Command::new("wrk")
                .args([
                    "-t1",
                    &format!("-c{}", a.connections),
                    "-d600s",
                    "--timeout",
                    "10s",
                    "-s",
                ])
                .arg(&script)
                .arg(base)
                .env("BENCH_PER_THREAD", per_node.to_string())
                .env("BENCH_TOKEN", token)
                .env("BENCH_PREFIX", format!("{:02}", 10 + i))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("run wrk (apt-get install wrk)")?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while count("SELECT count(*) FROM deliveries") < total {
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} stored",
                count("SELECT count(*) FROM deliveries")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for w in &mut wrks {
        let _ = Command::new("kill")
            .args(["-INT", &w.id().to_string()])
            .status();
        let _ = w.wait();
    }
    let accepted = count("SELECT count(*) FROM deliveries");
    while count("SELECT count(*) FROM deliveries WHERE state = 'delivered'") < accepted {
        if Instant::now() > deadline {
            bail!("receipts did not all arrive");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t_done = now_ms();
    drop(daemons);
    drop(smsc);
    let texts = recorded(&dir.join("smsc.jsonl"));
    let mut distinct: Vec<&str> = texts.iter().map(|(t, _)| t.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if let Some(s) = schema {
        psql(&a.postgres, &format!("DROP SCHEMA IF EXISTS {s} CASCADE"))?;
    }
    Ok(Outcome {
        accepted,
        rate: accepted as f64 * 1000.0 / (t_done - t0).max(1) as f64,
        duplicates: texts.len() - distinct.len(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(a: NodesArgs) -> anyhow::Result<()> {
    let bin = match &a.pinpost {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("pinpost"),
    };
    let mut configs = vec![Backend::Sqlite];
    configs.extend(a.nodes.iter().map(|&n| Backend::Postgres(n)));
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    println!("| run | configuration | deliveries | deliveries/s to receipt | SMSC duplicates |");
    println!("|---|---|---:|---:|---:|");
    for run in 1..=a.runs {
        for (i, &b) in configs.iter().enumerate() {
            let o = one_run(&a, &bin, b, run)?;
            println!(
                "| {run} | {} | {} | {:.0} | {} |",
                b.label(),
                o.accepted,
                o.rate,
                o.duplicates
            );
            rates[i].push(o.rate);
        }
    }
    println!();
    println!("| configuration | median deliveries/s to receipt |");
    println!("|---|---:|");
    for (b, r) in configs.iter().zip(rates) {
        println!("| {} | **{:.0}** |", b.label(), median(r));
    }
    Ok(())
}
