//! Three daemons on one PostgreSQL database, one killed with SIGKILL mid-run.
//!
//! Needs the PostgreSQL server the test suite uses (`PINPOST_TEST_POSTGRES`, default
//! postgres@127.0.0.1:5432/test; `.ci/run` starts one). Each run works in its own schema.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

fn pg_base() -> String {
    std::env::var("PINPOST_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Run one SQL statement with psql; its unaligned output.
fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .arg(pg_base())
        .args(["-v", "ON_ERROR_STOP=1", "-qtA", "-c", sql])
        .output()
        .expect("psql (postgresql-client)");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Schema(String);

impl Schema {
    /// A fresh schema of this process; `tag` tells apart the tests running side by side.
    fn new(tag: &str) -> Schema {
        let name = format!("e2e_{}_{tag}", std::process::id());
        psql(&format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
        ));
        Schema(name)
    }
    fn q(&self, sql: &str) -> String {
        psql(&format!("SET search_path TO {}; {sql}", self.0))
    }
    fn url(&self) -> String {
        let sep = if pg_base().contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", pg_base(), self.0)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(pg_base())
            .args(["-c", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0)])
            .output();
    }
}

fn start_node(schema: &Schema, smsc: &Smsc, name: &str) -> (tempfile::TempDir, Daemon) {
    start_node_with(schema, smsc, name, "", "")
}

/// A node with more `[storage]` keys and more keys on its `sms` channel.
fn start_node_with(
    schema: &Schema,
    smsc: &Smsc,
    name: &str,
    storage: &str,
    sms: &str,
) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = DaemonOpts::new(&format!("smpp://{}", smsc.addr));
    o.extra_delivery = "in_doubt_action = \"resend\"\nreceipt_timeout = \"5s\"";
    o.log_filter = "info,pinpost::dispatch=debug";
    let config = write_config(dir.path(), &o);
    // Share one PIN key: any node may send any delivery.
    std::fs::write(
        dir.path().join("pin.key"),
        "8f3c0a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556677889900aabbccd",
    )
    .unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let sqlite = format!("url = \"sqlite://{}/pinpost.db\"", dir.path().display());
    assert!(text.contains(&sqlite));
    let text = text.replace(
        &sqlite,
        &format!(
            "url = \"{}\"\nlease = \"3s\"\npool_size = 4\nnode = \"{name}\"\n{storage}",
            schema.url()
        ),
    );
    let channel_end = "response_timeout = \"2s\"";
    assert!(text.ends_with(&format!("{channel_end}\n\n")));
    let text = text.replace(channel_end, &format!("{channel_end}\n{sms}"));
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start_with(dir.path(), &config);
    (dir, d)
}

#[test]
fn three_nodes_one_killed_every_delivery_ends_and_duplicates_are_bounded() {
    let schema = Schema::new("kill");
    let smsc = Smsc::start(&["--response-delay", "400ms"]);
    let mut nodes: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| start_node(&schema, &smsc, n))
        .collect();

    const N: usize = 600;
    let mut ids = Vec::new();
    for i in 0..N {
        let d = &nodes[i % 3].1;
        let r = d.enqueue(&format!("mn-{i}"), &delivery("+819012345678", &pin_for(i)));
        assert_eq!(r.status, 202, "{}", r.raw);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }

    // Kill n1 while all three are sending (the SMSC answers each submit_sm after 400 ms, so
    // every node has its window of 10 in flight).
    let deadline = Instant::now() + Duration::from_secs(60);
    while schema
        .q("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
        .parse::<usize>()
        .unwrap()
        < N / 4
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let held_by_n1 = loop {
        let held: i64 = schema
            .q("SELECT count(*) FROM deliveries WHERE lease_owner = 'n1' AND state = 'sending'")
            .parse()
            .unwrap();
        if held >= 3 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "n1 never held sends: {}\nsubmitted by n1, n2, n3: {:?}\nn1 log:\n{}",
            schema.q("SELECT state, lease_owner, count(*) FROM deliveries GROUP BY 1, 2"),
            nodes
                .iter()
                .map(|(_, d)| d.proc.log().matches(" submitted ").count())
                .collect::<Vec<_>>(),
            tail(&nodes[0].1.proc.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    nodes[0].1.proc.kill9();
    eprintln!("killed n1 holding about {held_by_n1} sends");

    // Every delivery reaches a final state on the two survivors (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = schema
            .q("SELECT count(*) FROM deliveries WHERE NOT final")
            .parse()
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} deliveries still open: {}\nn2 log:\n{}",
            schema.q(
                "SELECT state, lease_owner, count(*) FROM deliveries WHERE NOT final GROUP BY 1, 2"
            ),
            tail(&nodes[1].1.proc.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        schema.q("SELECT count(*) FROM deliveries"),
        N.to_string(),
        "nothing lost"
    );
    assert_eq!(
        schema.q(
            "SELECT count(*) FROM deliveries WHERE state = 'sending' OR lease_owner IS NOT NULL"
        ),
        "0",
        "nothing stays claimed"
    );
    let by_state = schema.q("SELECT state, count(*) FROM deliveries GROUP BY 1 ORDER BY 1");
    eprintln!("final states:\n{by_state}");
    let delivered: usize = schema
        .q("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
        .parse()
        .unwrap();

    // Duplicates at the SMSC: the same text (each PIN is distinct) submitted twice.
    let texts = smsc.texts();
    let mut distinct = texts.clone();
    distinct.sort();
    distinct.dedup();
    let duplicates = texts.len() - distinct.len();
    assert_eq!(distinct.len(), N, "every PIN reached the SMSC");
    let rescued: usize = schema
        .q("SELECT count(*) FROM attempts WHERE outcome = 'in_doubt'
            AND error LIKE 'the node sending it stopped%'")
        .parse()
        .unwrap();
    let in_doubt: usize = schema
        .q("SELECT count(*) FROM attempts WHERE outcome = 'in_doubt'")
        .parse()
        .unwrap();
    eprintln!(
        "submits {}, duplicates {duplicates}, rescued from n1 {rescued}, in-doubt attempts {in_doubt}, delivered {delivered}",
        texts.len()
    );
    assert!(
        duplicates <= in_doubt,
        "only sends whose outcome was unknown are sent twice"
    );
    assert!(rescued >= 1, "the kill interrupted sends in flight");
    assert!(
        rescued <= 10,
        "a dead node's in-flight work is at most its window (10): {rescued}"
    );
    // Receipts came back on whichever node's bind the SMSC chose: almost all delivered.
    assert!(
        delivered + rescued >= N - 10,
        "delivered {delivered} of {N}:\n{by_state}"
    );
    // The survivors' metrics read the shared queue.
    let m = http(
        "GET",
        &format!("{}/metrics", nodes[1].1.base),
        None,
        &[],
        None,
    );
    assert_eq!(m.status, 200);
    assert!(
        m.raw.contains("pinpost_queue_depth"),
        "{}",
        tail(&m.raw, 20)
    );
    for (_, d) in nodes.iter_mut().skip(1) {
        d.proc.sigterm();
    }
    // No PIN in any node's log, the killed one's included.
    for (i, (_, d)) in nodes.iter().enumerate() {
        let log = d.proc.log();
        for p in [pin_for(0), pin_for(N / 2), pin_for(N - 1)] {
            assert!(!log.contains(&p), "node {} logged a PIN", i + 1);
        }
    }
}

/// A metric's value in a node's `/metrics` text (None while the sample is absent).
fn metric(d: &Daemon, sample: &str) -> Option<f64> {
    let m = http("GET", &format!("{}/metrics", d.base), None, &[], None);
    assert_eq!(m.status, 200);
    m.raw
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Wait (bounded) until every node in `nodes` reports `limit` for the sms bind and `live`.
fn wait_shares(nodes: &[&Daemon], live: f64, limit: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in nodes {
        loop {
            let l = metric(d, "pinpost_live_nodes");
            let t = metric(d, "pinpost_channel_tps_limit{channel=\"sms\"}");
            if l == Some(live) && t == Some(limit) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}: live nodes {l:?}, sms limit {t:?}; expected {live} and {limit}\n{}",
                d.base,
                tail(&d.proc.log(), 20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_shared_tps_budget_is_split_among_live_nodes_and_taken_back_when_one_goes() {
    const BUDGET: f64 = 30.0;
    let schema = Schema::new("tps");
    let smsc = Smsc::start(&[]);
    let mut nodes: Vec<_> = ["t1", "t2", "t3"]
        .iter()
        .map(|n| start_node_with(&schema, &smsc, n, "share_tps = true", "max_tps = 30"))
        .collect();
    let all: Vec<&Daemon> = nodes.iter().map(|(_, d)| d).collect();
    wait_shares(&all, 3.0, BUDGET / 3.0);

    // The three send 150 messages together no faster than the budget. Each bucket may
    // start full (one share each, the budget in all), so the SMSC sees the first
    // submit and the last at least (150 - 30) / 30 = 4 s apart (less 0.5 s for the
    // recording's jitter). Unshared, the three binds would send at 90/s and take about 1.3 s.
    const N: usize = 150;
    for i in 0..N {
        let r = nodes[i % 3]
            .1
            .enqueue(&format!("tps-{i}"), &delivery("+819012345678", &pin_for(i)));
        assert_eq!(r.status, 202, "{}", r.raw);
    }
    let msgs = smsc.wait_messages(N, Duration::from_secs(120));
    let ts: Vec<time::OffsetDateTime> = msgs
        .iter()
        .map(|m| {
            time::OffsetDateTime::parse(
                m["ts"].as_str().unwrap(),
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap()
        })
        .collect();
    let span = *ts.iter().max().unwrap() - *ts.iter().min().unwrap();
    let floor = (N as f64 - BUDGET) / BUDGET;
    eprintln!("{N} submits over {span} with a budget of {BUDGET}/s (floor {floor} s)");
    assert!(
        span.as_seconds_f64() >= floor - 0.5,
        "the nodes together exceeded the budget: {N} submits in {span}"
    );

    // A clean stop hands its share over at the survivors' next count.
    nodes[2].1.proc.sigterm();
    wait_shares(&[&nodes[0].1, &nodes[1].1], 2.0, BUDGET / 2.0);
    // A killed node is noticed once its heartbeat is a lease (3 s) old.
    nodes[1].1.proc.kill9();
    wait_shares(&[&nodes[0].1], 1.0, BUDGET);
    assert!(
        nodes[0]
            .1
            .proc
            .log()
            .contains("shared TPS budget: this node's share sms=30/s"),
        "the survivor logs its new share"
    );
    nodes[0].1.proc.sigterm();
    for (_, d) in &nodes {
        let log = d.proc.log();
        for p in [pin_for(0), pin_for(N - 1)] {
            assert!(!log.contains(&p), "a node logged a PIN");
        }
    }
}
