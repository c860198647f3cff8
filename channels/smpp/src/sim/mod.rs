//! The loopback SMSC: a real SMPP 3.4/5.0 server for tests, benchmarks and carriers' own
//! systems, with delivery receipts, USSD confirmations, a JSON-lines record of every message
//! and fault injection.
//!
//! Layout:
//! - this file: [`SimConfig`], [`Smsc`] (listener, accept loop, shutdown) and [`SimStats`].
//! - `session`: one task per connection. It reads PDUs, answers them into a write buffer that is
//!   written once per batch of input, and keeps two FIFO timer queues (delayed responses,
//!   delayed receipts); each queue holds items with one constant delay, so it stays sorted.
//! - `codec`: PDU framing over rusmpp's typed PDUs; a body that does not decode gets a
//!   generic_nack, a broken length closes the connection. Nothing is logged from PDU bodies.
//! - `receipt`: message id formatting (hex or decimal), receipt and USSD confirmation
//!   deliver_sm PDUs.
//! - `router`: receipts for a transmitter bind go to a receiver/transceiver of the same
//!   system_id, or wait until one binds.
//! - `record`: reassembly of concatenated messages and the record file, written by its own
//!   thread.
//! - `text`: GSM 03.38, UCS-2 and Latin-1 decoding and the user data header.
//!
//! Semantics worth knowing:
//! - message ids are one counter per server, starting at 0xa0000 so that hex and decimal forms
//!   differ; each part of a long message gets its own id and its own receipt.
//! - a submit_sm left unanswered by `no_answer_every` was still accepted: it is recorded and its
//!   receipt is sent, as when an SMSC's response is lost on the way.
//! - receipts not acknowledged when a connection closes are delivered again to the next
//!   receiving bind of the same system_id; a deliver_sm_resp with an error status makes the
//!   SMSC retry that receipt a second later (up to five times).
//! - the record holds message text by design (it stands in for the handset); logs never do.

mod codec;
mod receipt;
mod record;
mod router;
mod session;
mod text;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use receipt::IdBase;

/// First message id handed out.
pub const FIRST_MESSAGE_ID: u64 = 0xa0000;

/// How the loopback SMSC behaves. Every field maps to one `pinpost smsc-sim` flag.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on (default `127.0.0.1:2775`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// system_id a bind must carry; `None` accepts any credentials.
    pub system_id: Option<String>,
    /// Password a bind must carry; `None` accepts any password.
    pub password: Option<String>,
    /// Delay between the submit_sm_resp and the delivery receipt (default 0: right after it).
    pub receipt_delay: Duration,
    /// Send delivery receipts when registered_delivery asks for them, and USSD confirmations
    /// (default true).
    pub receipts: bool,
    /// Append one JSON line per complete message to this file.
    pub record: Option<PathBuf>,
    /// Format of message_id in submit_sm_resp (default hex).
    pub message_id_base: IdBase,
    /// Format of the id in receipts (text `id:` and receipted_message_id); set it apart from
    /// `message_id_base` to reproduce SMSCs that answer in hex and report in decimal.
    pub receipt_id_base: IdBase,
    /// Fraction (0.0..=1.0) of submit_sm answered ESME_RTHROTTLED (0x58).
    pub throttle_fraction: f64,
    /// Delay before every submit_sm_resp.
    pub response_delay: Duration,
    /// Never answer every N-th submit_sm (counted over the whole server). The message is still
    /// accepted: it is recorded and receipted, as when the response is lost.
    pub no_answer_every: Option<u64>,
    /// Close each connection when its N-th PDU arrives: the earlier PDUs are answered, the N-th
    /// is neither processed nor answered.
    pub drop_after_pdus: Option<u64>,
    /// Answer every bind with ESME_RBINDFAIL.
    pub refuse_binds: bool,
    /// destination_addr prefixes answered ESME_RINVDSTADR (0x0B).
    pub reject_prefix: Vec<String>,
    /// destination_addr prefixes accepted but reported `stat:UNDELIV err:001` (message_state
    /// UNDELIVERABLE); USSD to them gets no confirmation.
    pub undeliverable_prefix: Vec<String>,
    /// Seed of the random choices (throttling), for reproducible runs.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 2775)),
            system_id: None,
            password: None,
            receipt_delay: Duration::ZERO,
            receipts: true,
            record: None,
            message_id_base: IdBase::Hex,
            receipt_id_base: IdBase::Hex,
            throttle_fraction: 0.0,
            response_delay: Duration::ZERO,
            no_answer_every: None,
            drop_after_pdus: None,
            refuse_binds: false,
            reject_prefix: Vec::new(),
            undeliverable_prefix: Vec::new(),
            seed: 0,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> io::Result<()> {
        let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_owned()));
        if !(0.0..=1.0).contains(&self.throttle_fraction) {
            return invalid("throttle_fraction must be between 0 and 1");
        }
        if self.no_answer_every == Some(0) {
            return invalid("no_answer_every must be at least 1");
        }
        if self.drop_after_pdus == Some(0) {
            return invalid("drop_after_pdus must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    binds: AtomicU64,
    bind_failures: AtomicU64,
    submits: AtomicU64,
    throttled: AtomicU64,
    rejected: AtomicU64,
    unanswered: AtomicU64,
    receipts_sent: AtomicU64,
    receipts_acked: AtomicU64,
    messages: AtomicU64,
    generic_nacks: AtomicU64,
    dropped_connections: AtomicU64,
}

/// Live counters of a running SMSC; a cheap clone that stays valid after it stops.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    inner: Arc<Counters>,
}

/// A copy of all counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SimStatsSnapshot {
    /// TCP connections accepted.
    pub connections: u64,
    /// Successful binds.
    pub binds: u64,
    /// Binds answered with an error.
    pub bind_failures: u64,
    /// submit_sm received (answered or not, accepted or not).
    pub submits: u64,
    /// submit_sm answered ESME_RTHROTTLED.
    pub throttled: u64,
    /// submit_sm answered with another error (reject_prefix, bind state).
    pub rejected: u64,
    /// submit_sm deliberately left unanswered.
    pub unanswered: u64,
    /// deliver_sm sent (receipts and USSD confirmations, retries included).
    pub receipts_sent: u64,
    /// deliver_sm_resp received with status 0.
    pub receipts_acked: u64,
    /// Complete messages (a concatenated message counts once, when its last part arrives).
    pub messages: u64,
    /// generic_nack sent.
    pub generic_nacks: u64,
    /// Connections closed by `drop_after_pdus`.
    pub dropped_connections: u64,
}

macro_rules! getters {
    ($($name:ident),* $(,)?) => {
        impl SimStats {
            $(
                #[doc = concat!("Current value of `", stringify!($name), "`; see [`SimStatsSnapshot`].")]
                pub fn $name(&self) -> u64 {
                    self.inner.$name.load(Ordering::Relaxed)
                }
            )*

            /// All counters at once.
            pub fn snapshot(&self) -> SimStatsSnapshot {
                SimStatsSnapshot { $($name: self.$name()),* }
            }
        }
    };
}

getters!(
    connections,
    binds,
    bind_failures,
    submits,
    throttled,
    rejected,
    unanswered,
    receipts_sent,
    receipts_acked,
    messages,
    generic_nacks,
    dropped_connections,
);

impl SimStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by all sessions of one SMSC.
struct Shared {
    cfg: SimConfig,
    stats: SimStats,
    next_id: AtomicU64,
    submit_count: AtomicU64,
    rng: Mutex<StdRng>,
    router: router::Router,
    messages: record::Messages,
    next_conn: AtomicU64,
}

impl Shared {
    /// Opens the record file; `cfg` is valid.
    fn new(cfg: SimConfig) -> io::Result<Arc<Shared>> {
        let messages = record::Messages::new(cfg.message_id_base, cfg.record.as_deref())?;
        Ok(Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            cfg,
            stats: SimStats::default(),
            next_id: AtomicU64::new(FIRST_MESSAGE_ID),
            submit_count: AtomicU64::new(0),
            router: router::Router::default(),
            messages,
            next_conn: AtomicU64::new(1),
        }))
    }
}

/// Handles `input` as one connection's bytes from a client and returns what the SMSC wrote
/// back (see `session::replay`). Fails only when `cfg` is invalid or its record cannot be
/// opened.
pub(crate) fn replay(cfg: SimConfig, input: &[u8]) -> io::Result<Vec<u8>> {
    cfg.validate()?;
    let shared = Shared::new(cfg)?;
    Ok(session::replay(shared, input))
}

/// A bound (listening) loopback SMSC; [`Smsc::run`] serves it.
pub struct Smsc {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Smsc {
    /// Validates `cfg`, binds the listening socket and opens the record file.
    pub async fn bind(cfg: SimConfig) -> io::Result<Smsc> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let shared = Shared::new(cfg)?;
        Ok(Smsc { listener, shared })
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The live counters.
    pub fn stats(&self) -> SimStats {
        self.shared.stats.clone()
    }

    /// Serves connections until `shutdown` is cancelled, then sends unbind to every bound
    /// session (waiting up to a second for unbind_resp), closes them and flushes the record.
    pub async fn run(self, shutdown: CancellationToken) -> io::Result<()> {
        let Smsc { listener, shared } = self;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "smsc-sim: listening");
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        SimStats::bump(&shared.stats.inner.connections);
                        let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                        tracker.spawn(session::serve(
                            Arc::clone(&shared),
                            stream,
                            peer,
                            conn,
                            shutdown.clone(),
                        ));
                    }
                    Err(e) => {
                        // Out of descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "smsc-sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
        let flushed = shared.messages.close().await;
        let s = shared.stats.snapshot();
        tracing::info!(
            binds = s.binds,
            submits = s.submits,
            messages = s.messages,
            throttled = s.throttled,
            rejected = s.rejected,
            unanswered = s.unanswered,
            dropped_connections = s.dropped_connections,
            receipts_sent = s.receipts_sent,
            receipts_acked = s.receipts_acked,
            "smsc-sim: stopped"
        );
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_invalid_config() {
        for cfg in [
            SimConfig {
                throttle_fraction: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                no_answer_every: Some(0),
                ..SimConfig::default()
            },
            SimConfig {
                drop_after_pdus: Some(0),
                ..SimConfig::default()
            },
        ] {
            let cfg = SimConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                ..cfg
            };
            let err = Smsc::bind(cfg)
                .await
                .err()
                .expect("invalid config accepted");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
