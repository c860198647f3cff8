//! The connection actor: connect, bind_transceiver, read the SMSC's PDUs, answer deliver_sm,
//! detect loss, back off and reconnect, unbind on shutdown.
//!
//! One task owns the connection's lifecycle. Senders reach the current bind through
//! [`Link`]: they write submit_sm with rusmppc's no-wait request (so they know the PDU went
//! out) and wait for the matching submit_sm_resp in [`Pending`], which this task fills from
//! the event stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use pinpost_channel_core::{ChannelId, DurableReceipt};

use super::Sink;
use rand::Rng;
use rusmpp::pdus::{DeliverSm, DeliverSmResp};
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use rusmppc::error::Error as ClientError;
use rusmppc::{Client, ConnectionBuilder, Event};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::Shared;
use super::receipt::{self, Inbound};
use super::status;
use super::transport::Connector;

/// The longest deliver_sm backlog between the event loop and the receipt worker, and between
/// the worker and the answers waiting for their receipt to be stored (a commit takes a few
/// milliseconds; at 10,000 receipts/s this holds well over that). When it is full,
/// deliver_sm is answered ESME_RX_T_APPN so the SMSC retries later, instead of stalling the
/// submit_sm_resp that share the connection.
const RECEIPT_QUEUE: usize = 8192;

/// The longest incoming PDU accepted.
const MAX_COMMAND_LENGTH: usize = 16 * 1024;

/// How long an unbind may take at shutdown.
pub(crate) const UNBIND_WAIT: Duration = Duration::from_secs(5);

/// How long a response that arrived before its sender looked for it is kept.
const EARLY_KEEP: Duration = Duration::from_secs(60);

/// How long a timed-out sequence number is remembered, to report a late answer.
const EXPIRED_KEEP: Duration = Duration::from_secs(600);

/// One bound session, as senders see it.
pub(crate) struct Link {
    pub client: Client,
    pub pending: Pending,
}

/// submit_sm_resp (or generic_nack) waiting to be matched with their senders.
#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    closed: bool,
    waiting: HashMap<u32, oneshot::Sender<Command>>,
    early: HashMap<u32, (Instant, Command)>,
    expired: HashMap<u32, (Instant, String)>,
}

/// Why waiting for a response ended without one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoResponse {
    Timeout,
    Closed,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait up to `timeout` for the response to `seq` (a PDU already written).
    pub(crate) async fn wait(
        &self,
        seq: u32,
        timeout: Duration,
        delivery_id: &str,
    ) -> Result<Command, NoResponse> {
        let rx = {
            let mut g = self.lock();
            if let Some((_, cmd)) = g.early.remove(&seq) {
                return Ok(cmd);
            }
            if g.closed {
                return Err(NoResponse::Closed);
            }
            let (tx, rx) = oneshot::channel();
            g.waiting.insert(seq, tx);
            rx
        };
        let mut guard = ForgetOnDrop {
            pending: self,
            seq,
            armed: true,
        };
        let out = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(cmd)) => Ok(cmd),
            Ok(Err(_)) => Err(NoResponse::Closed),
            Err(_) => {
                let mut g = self.lock();
                g.waiting.remove(&seq);
                let now = Instant::now();
                g.expired
                    .retain(|_, (at, _)| now.duration_since(*at) < EXPIRED_KEEP);
                g.expired.insert(seq, (now, delivery_id.to_owned()));
                Err(NoResponse::Timeout)
            }
        };
        guard.armed = false;
        out
    }

    /// Hand a response to its sender (or keep it until the sender looks).
    fn deliver(&self, cmd: Command) {
        let seq = cmd.sequence_number();
        let mut g = self.lock();
        if let Some(tx) = g.waiting.remove(&seq) {
            drop(g);
            let _ = tx.send(cmd);
            return;
        }
        if let Some((_, delivery_id)) = g.expired.remove(&seq) {
            drop(g);
            let st = u32::from(cmd.status());
            let message_id = match cmd.pdu() {
                Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_owned(),
                _ => String::new(),
            };
            warn!(
                delivery_id = %delivery_id,
                sequence_number = seq,
                status = %status::code(st),
                message_id = %message_id,
                "submit_sm_resp arrived after the response timeout; the send was reported in doubt"
            );
            return;
        }
        if g.closed {
            return;
        }
        let now = Instant::now();
        g.early
            .retain(|_, (at, _)| now.duration_since(*at) < EARLY_KEEP);
        g.early.insert(seq, (now, cmd));
    }

    /// The session is over: every waiting sender learns at once.
    fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.waiting.clear();
        g.early.clear();
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

/// Removes a waiter whose send was abandoned (its future dropped).
struct ForgetOnDrop<'a> {
    pending: &'a Pending,
    seq: u32,
    armed: bool,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pending.lock().waiting.remove(&self.seq);
        }
    }
}

/// Reconnect delays: doubling from `min` to `max`, each drawn from `[d/2, d]`.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = base / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A rusmppc error in words that never carry PDU contents.
pub(crate) fn describe(e: &ClientError) -> String {
    match e {
        ClientError::Connect(io) => format!("connect failed: {io}"),
        ClientError::Io(io) => format!("i/o error: {io}"),
        ClientError::ConnectionClosed => "connection closed".into(),
        ClientError::ConnectionClosedByPeer => "connection closed by the SMSC".into(),
        ClientError::Encode(_) => "a PDU could not be encoded".into(),
        ClientError::Decode(_) => "a PDU from the SMSC could not be decoded".into(),
        ClientError::EnquireLinkTimeout { timeout } => {
            format!("no enquire_link_resp within {timeout:?}")
        }
        ClientError::ResponseTimeout { timeout, .. } => format!("no response within {timeout:?}"),
        ClientError::UnexpectedResponse { response } => {
            let st = u32::from(response.status());
            format!("{} ({})", status::name(st), status::code(st))
        }
        ClientError::UnsupportedInterfaceVersion { .. } => "unsupported interface version".into(),
        _ => "client error".into(),
    }
}

/// How a bound session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// The actor: runs until `shared.stop` is cancelled.
pub(crate) async fn run(shared: Arc<Shared>, connector: Result<Connector, String>, sink: Sink) {
    let _finished = shared.finished.clone().drop_guard();
    let span = tracing::info_span!("smpp_link", channel = %shared.cfg.id);
    async move {
        let prepared =
            connector.and_then(|c| super::pdu::bind_transceiver(&shared.cfg).map(|b| (c, b)));
        let (connector, bind) = match prepared {
            Ok(p) => p,
            Err(reason) => {
                warn!(%reason, "smpp channel not started: invalid configuration");
                shared.set_down(format!("invalid configuration: {reason}"));
                shared.stop.cancelled().await;
                shared.set_closed();
                return;
            }
        };
        let cfg = &shared.cfg;
        let mut backoff = Backoff::new(cfg.reconnect_min, cfg.reconnect_max);
        loop {
            if shared.stop.is_cancelled() {
                break;
            }
            let stream = tokio::select! {
                _ = shared.stop.cancelled() => break,
                r = connector() => r,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    let reason = format!("connect failed: {e}");
                    warn!(%reason, "smpp connect failed");
                    shared.set_down(reason);
                    if !pause(&shared, backoff.next_delay()).await {
                        break;
                    }
                    continue;
                }
            };
            let (stream, wake) = super::transport::Wakeable::new(stream);
            let (client, events) = ConnectionBuilder::new()
                .max_command_length(MAX_COMMAND_LENGTH)
                .enquire_link_interval(cfg.enquire_link_interval)
                .enquire_link_response_timeout(cfg.response_timeout)
                .response_timeout(cfg.response_timeout)
                .with_interface_version_check(matches!(
                    cfg.interface_version,
                    super::InterfaceVersion::V50
                ))
                .connected(stream);
            let _kicker = Kicker::start(wake);

            let bound = tokio::select! {
                _ = shared.stop.cancelled() => {
                    let _ = client.close().await;
                    break;
                }
                r = client.bind_transceiver(bind.clone()) => r,
            };
            if let Err(e) = bound {
                let reason = format!("bind_transceiver failed: {}", describe(&e));
                warn!(%reason, "smpp bind failed");
                shared.set_down(reason);
                let _ = client.close().await;
                if !pause(&shared, backoff.next_delay()).await {
                    break;
                }
                continue;
            }
            backoff.reset();
            let link = Arc::new(Link {
                client: client.clone(),
                pending: Pending::default(),
            });
            shared.set_up(link.clone());
            info!("smpp bound");

            let end = session(&shared, &link, events, &sink).await;
            // Down first, so no new sender picks this link, then fail the ones in flight.
            shared.set_down(match &end {
                End::Shutdown => "shutting down".into(),
                End::Lost(reason) => reason.clone(),
            });
            link.pending.close();
            match end {
                End::Shutdown => {
                    match tokio::time::timeout(UNBIND_WAIT, client.unbind()).await {
                        Ok(Ok(())) => info!("smpp unbound"),
                        Ok(Err(e)) => debug!(error = %describe(&e), "unbind failed"),
                        Err(_) => debug!("no unbind_resp in time"),
                    }
                    let _ = client.close().await;
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.closed()).await;
                    break;
                }
                End::Lost(reason) => {
                    warn!(%reason, "smpp connection lost");
                    let _ = client.close().await;
                    if !pause(&shared, backoff.next_delay()).await {
                        break;
                    }
                }
            }
        }
        shared.set_closed();
    }
    .instrument(span)
    .await
}

/// Sleep before reconnecting; false when shutdown came first.
async fn pause(shared: &Shared, delay: Duration) -> bool {
    tokio::select! {
        _ = shared.stop.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

struct DeliverJob {
    sequence_number: u32,
    sm: DeliverSm,
}

/// Read the SMSC's PDUs until the connection ends or shutdown is asked for.
async fn session(
    shared: &Arc<Shared>,
    link: &Arc<Link>,
    mut events: impl Stream<Item = Event> + Unpin,
    sink: &Sink,
) -> End {
    let (jobs, job_rx) = mpsc::channel::<DeliverJob>(RECEIPT_QUEUE);
    tokio::spawn(
        receipt_worker(
            shared.cfg.id.clone(),
            shared.ussd_channel.clone(),
            link.client.clone(),
            sink.clone(),
            job_rx,
        )
        .in_current_span(),
    );
    loop {
        let event = tokio::select! {
            _ = shared.stop.cancelled() => return End::Shutdown,
            ev = events.next() => ev,
        };
        let cmd = match event {
            None => return End::Lost("connection closed".into()),
            Some(Event::Error(e)) => {
                warn!(error = %describe(&e), "smpp connection error");
                continue;
            }
            Some(Event::Incoming(cmd)) => cmd,
        };
        let seq = cmd.sequence_number();
        match cmd.id() {
            CommandId::SubmitSmResp | CommandId::GenericNack => link.pending.deliver(cmd),
            CommandId::DeliverSm => {
                let Some(Pdu::DeliverSm(sm)) = cmd.pdu() else {
                    continue;
                };
                let job = DeliverJob {
                    sequence_number: seq,
                    sm: sm.clone(),
                };
                if jobs.try_send(job).is_err() {
                    warn!("receipt backlog full; deliver_sm answered ESME_RX_T_APPN");
                    // Never await the connection from this loop: the connection task may be
                    // waiting for this loop to take its next event.
                    let client = link.client.clone();
                    tokio::spawn(async move {
                        let _ = client
                            .status(CommandStatus::EsmeRxTAppn)
                            .deliver_sm_resp(seq, DeliverSmResp::default())
                            .await;
                    });
                }
            }
            CommandId::Unbind => {
                let _ = link.client.unbind_resp(seq).await;
                return End::Lost("unbound by the SMSC".into());
            }
            CommandId::AlertNotification => {}
            id if id.is_response() => {
                debug!(command = ?id, sequence_number = seq, "unsolicited response ignored");
            }
            id => {
                debug!(command = ?id, "unsupported operation refused");
                let client = link.client.clone();
                tokio::spawn(async move {
                    let _ = client
                        .status(CommandStatus::EsmeRinvcmdid)
                        .generic_nack(seq)
                        .await;
                });
            }
        }
    }
}

/// How often [`Kicker`] wakes the connection task.
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// rusmppc 0.4.0's connection task handles at most five queued actions and five queued
/// requests per wake-up and does not arrange to be woken for the rest; only its socket read
/// registers a waker. With a burst queued (a full window of submit_sm, a commit's worth of
/// deliver_sm_resp) and the SMSC quiet because nothing reached it, the task would sleep with
/// PDUs unwritten for good. Waking its reader every millisecond while the connection lasts
/// keeps it draining its queues.
struct Kicker(tokio::task::JoinHandle<()>);

impl Kicker {
    fn start(wake: super::transport::WakeHandle) -> Kicker {
        Kicker(tokio::spawn(async move {
            let mut tick = tokio::time::interval(KICK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                wake.wake();
            }
        }))
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Post receipts to the sink, then answer their deliver_sm: a receipt is acknowledged to the
/// SMSC only once the daemon has it (with a durable sink: once it is stored). Answers wait
/// in a FIFO so that storing one receipt does not hold up posting the next.
async fn receipt_worker(
    channel: ChannelId,
    ussd_channel: Arc<std::sync::Mutex<Option<ChannelId>>>,
    client: Client,
    sink: Sink,
    mut jobs: mpsc::Receiver<DeliverJob>,
) {
    let (answers, mut answer_rx) = mpsc::channel::<(
        u32,
        Option<tokio::sync::oneshot::Receiver<()>>,
        CommandStatus,
    )>(RECEIPT_QUEUE);
    let answer_client = client.clone();
    let answerer = tokio::spawn(
        async move {
            while let Some((seq, stored, mut status)) = answer_rx.recv().await {
                if let Some(rx) = stored
                    && rx.await.is_err()
                {
                    warn!("receipt not stored; deliver_sm answered ESME_RX_T_APPN");
                    status = CommandStatus::EsmeRxTAppn;
                }
                let _ = answer_client
                    .status(status)
                    .deliver_sm_resp(seq, DeliverSmResp::default())
                    .await;
            }
        }
        .in_current_span(),
    );
    while let Some(job) = jobs.recv().await {
        let mut status = CommandStatus::EsmeRok;
        let mut stored = None;
        // A USSD confirmation on a bind shared with SMS belongs to the USSD channel.
        let shared_ussd = if receipt::is_ussd(&job.sm) {
            ussd_channel
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        };
        let this = shared_ussd.as_ref().unwrap_or(&channel);
        match receipt::inbound(this, &job.sm, OffsetDateTime::now_utc()) {
            Inbound::Receipt(r) => {
                debug!(provider_ref = %r.provider_ref, status = ?r.status, "receipt");
                let posted = match &sink {
                    Sink::Plain(s) => s.send(r).await.is_ok(),
                    Sink::Durable(s) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        stored = Some(rx);
                        s.send(DurableReceipt {
                            receipt: r,
                            stored: tx,
                        })
                        .await
                        .is_ok()
                    }
                };
                if !posted {
                    warn!("receipt sink closed; deliver_sm answered ESME_RX_T_APPN");
                    status = CommandStatus::EsmeRxTAppn;
                    stored = None;
                }
            }
            Inbound::ReceiptWithoutId => {
                warn!("a receipt without a message id was dropped");
            }
            Inbound::MobileOriginated => {
                debug!("mobile-originated message answered and dropped");
            }
        }
        if answers
            .send((job.sequence_number, stored, status))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(answers);
    let _ = answerer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusmpp::pdus::SubmitSmResp;
    use rusmpp::types::COctetString;

    fn resp(seq: u32, id: &str) -> Command {
        Command::new(
            CommandStatus::EsmeRok,
            seq,
            SubmitSmResp::builder()
                .message_id(COctetString::from_string(id.to_owned()).unwrap())
                .build(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_that_arrives_first_is_kept_for_its_sender() {
        let p = Pending::default();
        p.deliver(resp(7, "a"));
        let got = p.wait(7, Duration::from_secs(1), "d").await.unwrap();
        assert_eq!(got.sequence_number(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_sender_gets_its_response() {
        let p = Arc::new(Pending::default());
        let p2 = p.clone();
        let t = tokio::spawn(async move { p2.wait(9, Duration::from_secs(5), "d").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(p.waiting(), 1);
        p.deliver(resp(9, "b"));
        assert_eq!(t.await.unwrap().unwrap().sequence_number(), 9);
        assert_eq!(p.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_and_closes_are_told_apart() {
        let p = Arc::new(Pending::default());
        let start = Instant::now();
        assert_eq!(
            p.wait(1, Duration::from_secs(3), "d").await.unwrap_err(),
            NoResponse::Timeout
        );
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(p.waiting(), 0);
        // A late answer is dropped, not kept for someone else.
        p.deliver(resp(1, "late"));
        assert!(p.lock().early.is_empty());

        let p2 = p.clone();
        let t = tokio::spawn(async move { p2.wait(3, Duration::from_secs(60), "d").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        p.close();
        assert_eq!(t.await.unwrap().unwrap_err(), NoResponse::Closed);
        assert_eq!(
            p.wait(5, Duration::from_secs(60), "d").await.unwrap_err(),
            NoResponse::Closed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_leaves_nothing_behind() {
        let p = Pending::default();
        {
            let fut = p.wait(4, Duration::from_secs(60), "d");
            let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
        }
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let bounds = [
            (500, 1000),
            (1000, 2000),
            (2000, 4000),
            (4000, 8000),
            (4000, 8000),
        ];
        for (lo, hi) in bounds {
            let d = b.next_delay().as_millis() as u64;
            assert!((lo..=hi).contains(&d), "{d} not in {lo}..={hi}");
        }
        b.reset();
        let d = b.next_delay().as_millis() as u64;
        assert!((500..=1000).contains(&d), "{d}");
    }
}
