//! Loopback SMSC throughput.
//!
//! The SMSC runs on a current-thread tokio runtime on its own OS thread (one core). Clients
//! run on a separate multi-thread runtime: each binds as transceiver, keeps up to `--window`
//! submit_sm in flight, counts submit_sm_resp and deliver_sm receipts and answers every receipt
//! with deliver_sm_resp. A run's submit rate is measured from the first submit_sm to the last
//! submit_sm_resp, its receipt rate from the first submit_sm to the last receipt; the median
//! of `--runs` runs is reported.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use clap::Args;
use futures::{FutureExt, SinkExt, StreamExt};
use pinpost_smpp::sim::{SimConfig, SimStats, Smsc};
use rusmpp::{
    Command, CommandId, CommandStatus, Pdu,
    pdus::{BindTransceiver, DeliverSmResp, SubmitSm},
    tokio_codec::CommandCodec,
    types::{COctetString, OctetString},
    values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton},
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Options of `pinpost-bench smsc`.
#[derive(Args, Debug, Clone)]
pub struct SmscArgs {
    /// submit_sm per run, spread evenly over the connections.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Client connections (transceiver binds).
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Outstanding submit_sm per connection.
    #[arg(long, default_value_t = 512)]
    window: u64,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Worker threads of the client runtime (default: available cores - 1, at least 1).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Ask for no delivery receipts (registered_delivery 0).
    #[arg(long)]
    no_receipts: bool,
    /// Delay the SMSC puts between submit_sm_resp and receipt, in milliseconds.
    #[arg(long, default_value_t = 0)]
    receipt_delay_ms: u64,
    /// Let the SMSC write its JSON-lines message record to this file (appended to).
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Give up a run after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Also print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What one client connection saw.
struct ConnResult {
    first_submit: Instant,
    last_resp: Instant,
    last_receipt: Option<Instant>,
    resps: u64,
    errors: u64,
    receipts: u64,
}

/// One run.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    submits: u64,
    submit_secs: f64,
    receipts: u64,
    receipt_secs: f64,
}

impl RunResult {
    fn submit_rate(&self) -> f64 {
        self.submits as f64 / self.submit_secs
    }

    fn receipt_rate(&self) -> f64 {
        if self.receipts == 0 {
            0.0
        } else {
            self.receipts as f64 / self.receipt_secs
        }
    }
}

pub fn run(args: SmscArgs) -> anyhow::Result<()> {
    ensure!(args.connections > 0, "--connections must be at least 1");
    ensure!(args.window > 0, "--window must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.messages >= args.connections,
        "--messages must be at least --connections"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_threads = args
        .client_threads
        .unwrap_or(cores.saturating_sub(1).max(1));
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    println!(
        "loopback SMSC: {} submit_sm over {} connections, window {}, receipts {}, record {}, \
         {} run(s); SMSC on 1 thread, clients on {} thread(s), {} core(s)",
        args.messages,
        args.connections,
        args.window,
        if args.no_receipts { "off" } else { "on" },
        if args.record.is_some() { "on" } else { "off" },
        args.runs,
        client_threads,
        cores
    );
    let mut results = Vec::with_capacity(args.runs);
    for i in 1..=args.runs {
        let r = one_run(&args, &clients).with_context(|| format!("run {i}"))?;
        println!(
            "run {i}: {} submit_sm in {:.3} s = {:.0} submit_sm/s; {} receipts in {:.3} s = {:.0} receipts/s",
            r.submits,
            r.submit_secs,
            r.submit_rate(),
            r.receipts,
            r.receipt_secs,
            r.receipt_rate()
        );
        results.push(r);
    }
    let submit = Summary::of(results.iter().map(RunResult::submit_rate));
    let receipt = Summary::of(results.iter().map(RunResult::receipt_rate));
    println!(
        "submit_sm/s: median {:.0} (min {:.0}, max {:.0}); receipts/s: median {:.0} (min {:.0}, max {:.0})",
        submit.median, submit.min, submit.max, receipt.median, receipt.min, receipt.max
    );
    if args.json {
        let out = serde_json::json!({
            "benchmark": "smsc",
            "messages": args.messages,
            "connections": args.connections,
            "window": args.window,
            "runs": args.runs,
            "receipts": !args.no_receipts,
            "record": args.record.is_some(),
            "client_threads": client_threads,
            "cores": cores,
            "submit_sm_per_s": { "median": submit.median, "min": submit.min, "max": submit.max },
            "receipts_per_s": { "median": receipt.median, "min": receipt.min, "max": receipt.max },
        });
        println!("{out}");
    }
    Ok(())
}

struct Summary {
    median: f64,
    min: f64,
    max: f64,
}

impl Summary {
    fn of(values: impl Iterator<Item = f64>) -> Summary {
        let mut v: Vec<f64> = values.collect();
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

/// Starts the SMSC on its own thread with a current-thread runtime.
fn start_smsc(
    cfg: SimConfig,
    token: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    SimStats,
    std::thread::JoinHandle<anyhow::Result<()>>,
)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new().name("smsc-sim".into()).spawn(
        move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let smsc = match Smsc::bind(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("binding the SMSC: {e}")));
                        return Ok(());
                    }
                };
                let _ = ready_tx.send(
                    smsc.local_addr()
                        .map(|a| (a, smsc.stats()))
                        .map_err(Into::into),
                );
                smsc.run(token).await?;
                Ok(())
            })
        },
    )?;
    let (addr, stats) = ready_rx
        .recv()
        .context("the SMSC thread ended before listening")??;
    Ok((addr, stats, thread))
}

fn one_run(args: &SmscArgs, clients: &tokio::runtime::Runtime) -> anyhow::Result<RunResult> {
    let cfg = SimConfig {
        listen: SocketAddr::from_str("127.0.0.1:0")?,
        receipt_delay: Duration::from_millis(args.receipt_delay_ms),
        record: args.record.clone(),
        ..SimConfig::default()
    };
    let token = CancellationToken::new();
    let (addr, stats, thread) = start_smsc(cfg, token.clone())?;
    let receipts = !args.no_receipts;
    let per_conn = args.messages / args.connections;
    let extra = args.messages % args.connections;
    let outcome = clients.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..args.connections {
            let quota = per_conn + u64::from(i < extra);
            tasks.push(tokio::spawn(client(addr, i, quota, args.window, receipts)));
        }
        let all = futures::future::join_all(tasks);
        let results = tokio::time::timeout(Duration::from_secs(args.timeout_secs), all)
            .await
            .map_err(|_| anyhow!("run did not finish within {} s", args.timeout_secs))?;
        let mut out = Vec::new();
        for r in results {
            out.push(r??);
        }
        // The last deliver_sm_resp may still be on its way to the SMSC.
        let deadline = Instant::now() + Duration::from_secs(5);
        while receipts && stats.receipts_acked() < args.messages && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(out)
    });
    token.cancel();
    thread
        .join()
        .map_err(|_| anyhow!("the SMSC thread panicked"))??;
    let conns = outcome?;

    let s = stats.snapshot();
    let resps: u64 = conns.iter().map(|c| c.resps).sum();
    let errors: u64 = conns.iter().map(|c| c.errors).sum();
    let got_receipts: u64 = conns.iter().map(|c| c.receipts).sum();
    ensure!(errors == 0, "{errors} submit_sm answered with an error");
    ensure!(
        resps == args.messages,
        "{resps} responses for {} submits",
        args.messages
    );
    ensure!(
        s.submits == args.messages && s.messages == args.messages,
        "SMSC counted {} submits, {} messages",
        s.submits,
        s.messages
    );
    if receipts {
        ensure!(
            got_receipts == args.messages && s.receipts_acked == args.messages,
            "{got_receipts} receipts received, {} acknowledged, for {} messages",
            s.receipts_acked,
            args.messages
        );
    }
    let first = conns
        .iter()
        .map(|c| c.first_submit)
        .min()
        .context("no connections")?;
    let last_resp = conns
        .iter()
        .map(|c| c.last_resp)
        .max()
        .context("no connections")?;
    let last_receipt = conns.iter().filter_map(|c| c.last_receipt).max();
    Ok(RunResult {
        submits: resps,
        submit_secs: (last_resp - first).as_secs_f64(),
        receipts: got_receipts,
        receipt_secs: last_receipt.map_or(0.0, |t| (t - first).as_secs_f64()),
    })
}

fn c_octet<const MIN: usize, const MAX: usize>(s: &str) -> anyhow::Result<COctetString<MIN, MAX>> {
    COctetString::from_str(s).map_err(|e| anyhow!("{s:?}: {e}"))
}

/// One pipelined transceiver connection sending `quota` submit_sm.
async fn client(
    addr: SocketAddr,
    index: u64,
    quota: u64,
    window: u64,
    receipts: bool,
) -> anyhow::Result<ConnResult> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, CommandCodec::new());
    framed.set_backpressure_boundary(256 * 1024);

    let bind = BindTransceiver::builder()
        .system_id(c_octet(&format!("bench{index}"))?)
        .password(c_octet("bench")?)
        .interface_version(InterfaceVersion::Smpp3_4)
        .build();
    framed
        .send(Command::new(CommandStatus::EsmeRok, 1, bind))
        .await?;
    let resp = framed.next().await.context("closed during bind")??;
    ensure!(
        resp.id() == CommandId::BindTransceiverResp && resp.status() == CommandStatus::EsmeRok,
        "bind failed: {:?} {:?}",
        resp.id(),
        resp.status()
    );

    let template = SubmitSm::builder()
        .source_addr_ton(Ton::Alphanumeric)
        .source_addr_npi(Npi::Unknown)
        .source_addr(c_octet("PINPOST")?)
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(c_octet(&format!("8190{index:08}"))?)
        .esm_class(EsmClass::from(0x00))
        .registered_delivery(RegisteredDelivery::from(u8::from(receipts)))
        .data_coding(DataCoding::McSpecific)
        .short_message(
            OctetString::from_static_slice(b"Your PIN is 482913. Valid 10 min.")
                .map_err(|e| anyhow!("{e}"))?,
        )
        .build();
    let template = Pdu::from(template);

    let expected_receipts = if receipts { quota } else { 0 };
    let mut seq: u32 = 1;
    let mut sent = 0u64;
    let mut resps = 0u64;
    let mut errors = 0u64;
    let mut got_receipts = 0u64;
    let mut acks: Vec<u32> = Vec::with_capacity(window as usize * 2);
    let first_submit = Instant::now();
    let mut last_resp = first_submit;
    let mut last_receipt = None;

    while resps < quota || got_receipts < expected_receipts {
        while sent < quota && sent - resps < window {
            seq += 1;
            framed
                .feed(Command::new_const(
                    CommandStatus::EsmeRok,
                    seq,
                    template.clone(),
                ))
                .await?;
            sent += 1;
        }
        for ack in acks.drain(..) {
            framed
                .feed(Command::new(
                    CommandStatus::EsmeRok,
                    ack,
                    DeliverSmResp::default(),
                ))
                .await?;
        }
        SinkExt::<Command>::flush(&mut framed).await?;

        // Block for one PDU, then take everything already readable.
        let mut next = Some(framed.next().await);
        while let Some(item) = next {
            let command = item.context("connection closed")??;
            match command.id() {
                CommandId::SubmitSmResp => {
                    resps += 1;
                    if command.status() != CommandStatus::EsmeRok {
                        errors += 1;
                    }
                    last_resp = Instant::now();
                }
                CommandId::DeliverSm => {
                    got_receipts += 1;
                    last_receipt = Some(Instant::now());
                    acks.push(command.sequence_number());
                }
                CommandId::EnquireLink => {
                    framed
                        .feed(Command::new(
                            CommandStatus::EsmeRok,
                            command.sequence_number(),
                            Pdu::EnquireLinkResp,
                        ))
                        .await?;
                }
                other => bail!("unexpected {other:?}"),
            }
            next = framed.next().now_or_never();
        }
    }
    for ack in acks.drain(..) {
        framed
            .feed(Command::new(
                CommandStatus::EsmeRok,
                ack,
                DeliverSmResp::default(),
            ))
            .await?;
    }
    seq += 1;
    framed
        .send(Command::new(CommandStatus::EsmeRok, seq, Pdu::Unbind))
        .await?;
    // The unbind_resp (or the close) ends the session; do not wait long for it.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(c)) = framed.next().await {
            if c.id() == CommandId::UnbindResp {
                break;
            }
        }
    })
    .await;
    Ok(ConnResult {
        first_submit,
        last_resp,
        last_receipt,
        resps,
        errors,
        receipts: got_receipts,
    })
}
