//! The connection actor: the one task that owns rumqttc's `EventLoop`.
//!
//! It connects (Clean Start = 0, Session Expiry Interval set), subscribes to the response
//! topic, hands PUBLISH packets to the event loop with packet ids it picks itself (so each
//! PUBACK is matched to its sender), turns head-unit acknowledgements into receipts, and
//! reconnects with backoff. Senders talk to it through an mpsc queue of [`Command`]s and get
//! their outcome on a oneshot.
//!
//! Packets go into the event loop's `pending` queue, which rumqttc writes before anything
//! else; rumqttc's own retransmission of unacknowledged packets after a reconnect is
//! discarded: a PUBLISH whose PUBACK was lost is reported `InDoubt` and never sent again by
//! the driver (the daemon reconciles; a later head-unit acknowledgement still produces a
//! receipt for the correlation id).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::{Accepted, ExposeSecret, Receipt, ReceiptSink, SendError};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Filter, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use rumqttc::{NetworkOptions, Outgoing};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::config::Endpoint;
use crate::message::{self, classify_puback, puback_reason_code};
use crate::receipt::parse_ack;
use crate::tls;

/// How many receipts wait in the actor when the sink is full before further acknowledgements
/// are left unanswered (the broker redelivers them after the next reconnect).
const MAX_WAITING_RECEIPTS: usize = 1024;
/// How long shutdown waits for the DISCONNECT to be written.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) type Reply = oneshot::Sender<Result<Accepted, SendError>>;

/// One send, from the handle to the actor.
pub(crate) struct Command {
    /// Packet id and expiry interval still unset.
    pub(crate) publish: Publish,
    pub(crate) expires_at: Option<OffsetDateTime>,
    pub(crate) correlation: String,
    pub(crate) delivery_id: String,
    pub(crate) reply: Reply,
}

/// A send waiting for a free packet id (window or the broker's Receive Maximum).
struct Waiting {
    cmd: Command,
    deadline: Instant,
}

/// A PUBLISH handed to the event loop under a packet id.
struct Inflight {
    correlation: String,
    delivery_id: String,
    /// Seen written (rumqttc's outgoing event for the packet id).
    written: bool,
    /// Until the PUBACK, or until it is written.
    deadline: Instant,
    /// `None` once answered InDoubt: the packet id stays reserved until a late PUBACK or the
    /// next connection.
    reply: Option<Reply>,
}

/// A receipt waiting for room in the sink, and the acknowledgement it owes the broker.
struct PendingReceipt {
    receipt: Receipt,
    ack: Option<u16>,
    generation: u64,
}

enum SessionEnd {
    Lost(String),
    Shutdown,
}

pub(crate) struct Actor {
    shared: Arc<Shared>,
    eventloop: EventLoop,
    /// Kept so the event loop's request channel stays open; requests go through `pending`.
    _client: AsyncClient,
    commands: mpsc::Receiver<Command>,
    receipts: ReceiptSink,
    waiting: VecDeque<Waiting>,
    inflight: HashMap<u16, Inflight>,
    /// Packet ids 1..=limit are used: min(window, broker's Receive Maximum).
    limit: u16,
    next_pkid: u16,
    subscribed: bool,
    generation: u64,
    pending_receipts: VecDeque<PendingReceipt>,
    backoff: Backoff,
    /// Why the last connection attempt or session ended; cleared once Up.
    last_error: Option<String>,
}

fn mqtt_options(shared: &Shared) -> MqttOptions {
    let cfg = &shared.cfg;
    // Validated before the actor starts.
    let endpoint = Endpoint::parse(&cfg.broker_url).unwrap_or(Endpoint {
        host: "invalid".into(),
        port: 1,
        tls: true,
    });
    let mut options = MqttOptions::new(cfg.client_id.clone(), endpoint.host, endpoint.port);
    options
        .set_keep_alive(cfg.keep_alive)
        .set_clean_start(false)
        .set_session_expiry_interval(Some(
            u32::try_from(cfg.session_expiry.as_secs()).unwrap_or(u32::MAX - 1),
        ))
        .set_manual_acks(true)
        .set_connection_timeout(cfg.connect_timeout_secs())
        .set_outgoing_inflight_upper_limit(cfg.window);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(cfg.connect_timeout_secs());
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if let Some(user) = &cfg.username {
        let password = cfg
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        options.set_credentials(user.clone(), password);
    }
    options
}

impl Actor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<Command>,
        receipts: ReceiptSink,
    ) -> Actor {
        let (client, eventloop) = AsyncClient::new(mqtt_options(&shared), 1);
        let backoff = Backoff::new(shared.cfg.reconnect_min, shared.cfg.reconnect_max);
        Actor {
            limit: shared.cfg.window,
            shared,
            eventloop,
            _client: client,
            commands,
            receipts,
            waiting: VecDeque::new(),
            inflight: HashMap::new(),
            next_pkid: 1,
            subscribed: false,
            generation: 0,
            pending_receipts: VecDeque::new(),
            backoff,
            last_error: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let closing = self.shared.closing.clone();
        loop {
            if closing.is_cancelled() {
                break;
            }
            match tls::transport(&self.shared.cfg) {
                Ok(transport) => {
                    self.eventloop.options.set_transport(transport);
                }
                Err(reason) => {
                    warn!(channel = %self.shared.cfg.id, %reason, "cannot prepare TLS");
                    self.connection_lost(&reason);
                    self.last_error = Some(reason);
                    if !self.backoff_wait().await {
                        break;
                    }
                    continue;
                }
            }
            self.shared.set_down(match &self.last_error {
                Some(e) => format!("connecting (last attempt: {e})"),
                None => "connecting".into(),
            });
            let connack = tokio::select! {
                _ = closing.cancelled() => break,
                r = self.connect() => r,
            };
            let end = match connack {
                Ok(connack) => self.session(connack).await,
                Err(reason) => SessionEnd::Lost(reason),
            };
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    warn!(channel = %self.shared.cfg.id, %reason, "broker connection down");
                    self.connection_lost(&reason);
                    self.last_error = Some(reason);
                    if !self.backoff_wait().await {
                        break;
                    }
                }
            }
        }
        self.connection_lost("channel shut down");
        self.shared.set_closed();
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = cmd.reply.send(Err(unavailable("channel shut down")));
        }
        self.shared.finished.cancel();
        debug!(channel = %self.shared.cfg.id, "connection actor stopped");
    }

    /// Polls the event loop until the CONNACK (rumqttc connects on the first poll).
    async fn connect(&mut self) -> Result<ConnAck, String> {
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => return Ok(connack),
                Ok(_) => continue,
                Err(e) => return Err(describe(&e)),
            }
        }
    }

    async fn session(&mut self, connack: ConnAck) -> SessionEnd {
        self.generation += 1;
        let receive_max = connack
            .properties
            .as_ref()
            .and_then(|p| p.receive_max)
            .unwrap_or(u16::MAX);
        self.limit = self.shared.cfg.window.min(receive_max).max(1);
        self.next_pkid = 1;
        self.subscribed = false;
        info!(
            channel = %self.shared.cfg.id,
            session_present = connack.session_present,
            window = self.limit,
            "connected to broker; subscribing to the response topic"
        );
        let mut filter = Filter::new(self.shared.response_topic.clone(), QoS::AtLeastOnce);
        filter.nolocal = true;
        self.eventloop
            .pending
            .push_back(Request::Subscribe(Subscribe::new(filter, None)));

        let closing = self.shared.closing.clone();
        let receipts = self.receipts.clone();
        let mut draining = false;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                // Shutdown first, then the event loop, so a stream of sends never keeps
                // the connection from making progress.
                biased;
                _ = closing.cancelled(), if !draining => {
                    draining = true;
                    self.commands.close();
                    while let Ok(cmd) = self.commands.try_recv() {
                        let _ = cmd.reply.send(Err(unavailable("channel shut down")));
                    }
                    for w in self.waiting.drain(..) {
                        let _ = w.cmd.reply.send(Err(unavailable("channel shut down")));
                    }
                }
                event = self.eventloop.poll() => match event {
                    Ok(event) => {
                        if let Err(reason) = self.on_event(event) {
                            return SessionEnd::Lost(reason);
                        }
                    }
                    Err(e) => return SessionEnd::Lost(describe(&e)),
                },
                Some(cmd) = self.commands.recv(), if !draining => {
                    let deadline = Instant::now() + self.shared.cfg.puback_timeout;
                    self.waiting.push_back(Waiting { cmd, deadline });
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    if let Err(reason) = self.expire(Instant::now()) {
                        return SessionEnd::Lost(reason);
                    }
                }
                permit = receipts.reserve(), if !self.pending_receipts.is_empty() => {
                    if let Some(p) = self.pending_receipts.pop_front() {
                        match permit {
                            Ok(permit) => {
                                permit.send(p.receipt);
                                if p.generation == self.generation {
                                    self.ack(p.ack);
                                }
                            }
                            Err(_) => {
                                warn!(channel = %self.shared.cfg.id, "receipt sink closed; receipts dropped");
                                self.pending_receipts.clear();
                            }
                        }
                    }
                }
            }
            if self.subscribed {
                self.fill_window();
            }
            if draining && self.waiting.is_empty() && self.answered_all() {
                self.disconnect().await;
                return SessionEnd::Shutdown;
            }
        }
    }

    /// True when every handed-over PUBLISH has its answer (late PUBACKs are not waited for).
    fn answered_all(&self) -> bool {
        self.inflight.values().all(|e| e.reply.is_none())
    }

    fn on_event(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(entry) = self.inflight.get_mut(&pkid)
                    && !entry.written
                {
                    entry.written = true;
                    entry.deadline = Instant::now() + self.shared.cfg.puback_timeout;
                }
            }
            Event::Incoming(Packet::PubAck(puback)) => self.on_puback(&puback),
            Event::Incoming(Packet::SubAck(suback)) => self.on_suback(&suback)?,
            Event::Incoming(Packet::Publish(publish)) => self.on_publish(&publish),
            Event::Incoming(Packet::ConnAck(_)) => {
                return Err("unexpected CONNACK".into());
            }
            _ => {}
        }
        Ok(())
    }

    fn on_suback(&mut self, suback: &SubAck) -> Result<(), String> {
        if self.subscribed {
            return Ok(());
        }
        match suback.return_codes.first() {
            Some(SubscribeReasonCode::Success(_)) => {
                self.subscribed = true;
                self.backoff.reset();
                self.last_error = None;
                self.shared.set_up();
                info!(channel = %self.shared.cfg.id, "push channel up");
                Ok(())
            }
            other => Err(format!(
                "broker refused the subscription to the response topic: {other:?}"
            )),
        }
    }

    fn on_puback(&mut self, puback: &PubAck) {
        let Some(entry) = self.inflight.remove(&puback.pkid) else {
            return;
        };
        let code = puback_reason_code(puback.reason);
        let Some(reply) = entry.reply else {
            warn!(
                channel = %self.shared.cfg.id,
                delivery_id = %entry.delivery_id,
                correlation_id = %entry.correlation,
                reason_code = code,
                "late PUBACK for a send reported in doubt"
            );
            return;
        };
        let outcome = classify_puback(puback).map(|()| Accepted {
            provider_refs: vec![entry.correlation.clone()],
            receipt_expected: true,
        });
        debug!(
            channel = %self.shared.cfg.id,
            delivery_id = %entry.delivery_id,
            correlation_id = %entry.correlation,
            reason_code = code,
            "PUBACK"
        );
        let _ = reply.send(outcome);
    }

    fn on_publish(&mut self, publish: &Publish) {
        let ack = (publish.qos != QoS::AtMostOnce).then_some(publish.pkid);
        let Some(receipt) = parse_ack(&self.shared.cfg.id, publish) else {
            warn!(
                channel = %self.shared.cfg.id,
                "message on the response topic without usable correlation data; dropped"
            );
            self.ack(ack);
            return;
        };
        debug!(
            channel = %self.shared.cfg.id,
            correlation_id = %receipt.provider_ref,
            status = ?receipt.status,
            "head-unit acknowledgement"
        );
        if self.pending_receipts.is_empty() {
            match self.receipts.try_send(receipt) {
                Ok(()) => self.ack(ack),
                Err(mpsc::error::TrySendError::Full(receipt)) => {
                    self.pending_receipts.push_back(PendingReceipt {
                        receipt,
                        ack,
                        generation: self.generation,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    warn!(channel = %self.shared.cfg.id, "receipt sink closed; acknowledgement left for redelivery");
                }
            }
        } else if self.pending_receipts.len() < MAX_WAITING_RECEIPTS {
            self.pending_receipts.push_back(PendingReceipt {
                receipt,
                ack,
                generation: self.generation,
            });
        } else {
            warn!(channel = %self.shared.cfg.id, "receipt sink full; acknowledgement left for redelivery");
        }
    }

    /// Queues the PUBACK for an incoming QoS 1 message (manual acknowledgement: only once its
    /// receipt is in the sink).
    fn ack(&mut self, pkid: Option<u16>) {
        if let Some(pkid) = pkid {
            self.eventloop
                .pending
                .push_back(Request::PubAck(PubAck::new(pkid, None)));
        }
    }

    /// Hands waiting sends to the event loop while packet ids are free.
    fn fill_window(&mut self) {
        while (self.inflight.len() as u64) < u64::from(self.limit) {
            let Some(Waiting { cmd, .. }) = self.waiting.pop_front() else {
                return;
            };
            if cmd.reply.is_closed() {
                // The caller gave up before anything was written.
                continue;
            }
            let mut publish = cmd.publish;
            match message::expiry_interval(cmd.expires_at, OffsetDateTime::now_utc()) {
                Ok(interval) => {
                    if let Some(props) = publish.properties.as_mut() {
                        props.message_expiry_interval = interval;
                    }
                }
                Err(e) => {
                    let _ = cmd.reply.send(Err(e));
                    continue;
                }
            }
            let pkid = self.free_pkid();
            publish.pkid = pkid;
            self.eventloop.pending.push_back(Request::Publish(publish));
            self.inflight.insert(
                pkid,
                Inflight {
                    correlation: cmd.correlation,
                    delivery_id: cmd.delivery_id,
                    written: false,
                    deadline: Instant::now() + self.shared.cfg.puback_timeout,
                    reply: Some(cmd.reply),
                },
            );
        }
    }

    /// A packet id in 1..=limit not in flight; only called when one is free.
    fn free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = if pkid >= self.limit { 1 } else { pkid + 1 };
            if !self.inflight.contains_key(&pkid) {
                return pkid;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let waiting = self.waiting.iter().map(|w| w.deadline);
        let inflight = self
            .inflight
            .values()
            .filter(|e| e.reply.is_some())
            .map(|e| e.deadline);
        waiting.chain(inflight).min()
    }

    /// Answers sends whose time ran out. Fails the connection when every packet id is held by
    /// a PUBLISH the broker never acknowledged.
    fn expire(&mut self, now: Instant) -> Result<(), String> {
        while let Some(w) = self.waiting.front() {
            if w.deadline > now {
                break;
            }
            if let Some(w) = self.waiting.pop_front() {
                let reason = if self.subscribed {
                    "no free in-flight slot (window or broker Receive Maximum) in time"
                } else {
                    "the response-topic subscription was not confirmed in time"
                };
                let _ = w.cmd.reply.send(Err(SendError::Transient {
                    reason: reason.into(),
                }));
            }
        }
        let due: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, e)| e.reply.is_some() && e.deadline <= now)
            .map(|(pkid, _)| *pkid)
            .collect();
        for pkid in due {
            let queued = self
                .eventloop
                .pending
                .iter()
                .position(|r| matches!(r, Request::Publish(p) if p.pkid == pkid));
            if let Some(index) = queued {
                // Never taken from the queue: nothing was written.
                self.eventloop.pending.remove(index);
                if let Some(entry) = self.inflight.remove(&pkid)
                    && let Some(reply) = entry.reply
                {
                    let _ = reply.send(Err(SendError::Transient {
                        reason: "the PUBLISH could not be written in time".into(),
                    }));
                }
                continue;
            }
            if let Some(entry) = self.inflight.get_mut(&pkid)
                && let Some(reply) = entry.reply.take()
            {
                warn!(
                    channel = %self.shared.cfg.id,
                    delivery_id = %entry.delivery_id,
                    correlation_id = %entry.correlation,
                    "no PUBACK in time"
                );
                let _ = reply.send(Err(SendError::InDoubt {
                    reason: format!(
                        "PUBLISH written, no PUBACK within {:?} (correlation id {})",
                        self.shared.cfg.puback_timeout, entry.correlation
                    ),
                }));
            }
        }
        if !self.inflight.is_empty()
            && self.inflight.len() >= usize::from(self.limit)
            && self.inflight.values().all(|e| e.reply.is_none())
        {
            return Err(format!(
                "the broker acknowledged none of the last {} PUBLISH packets",
                self.inflight.len()
            ));
        }
        Ok(())
    }

    /// Forgets the connection: answers every open send (InDoubt when its PUBLISH may have
    /// been written, Unavailable otherwise) and drops rumqttc's queued retransmissions.
    fn connection_lost(&mut self, reason: &str) {
        self.subscribed = false;
        self.shared.set_down(reason.to_owned());
        // Drops the socket (if still open) and moves unacknowledged packets to `pending`.
        self.eventloop.clean();
        let attempted: HashSet<u16> = self
            .eventloop
            .state
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Outgoing(Outgoing::Publish(pkid)) => Some(*pkid),
                _ => None,
            })
            .collect();
        self.eventloop.state.events.clear();
        self.eventloop.pending.clear();
        for (pkid, entry) in self.inflight.drain() {
            let Some(reply) = entry.reply else {
                continue;
            };
            let outcome = if entry.written || attempted.contains(&pkid) {
                warn!(
                    channel = %self.shared.cfg.id,
                    delivery_id = %entry.delivery_id,
                    correlation_id = %entry.correlation,
                    "connection lost before the PUBACK"
                );
                SendError::InDoubt {
                    reason: format!(
                        "connection lost before the PUBACK (correlation id {}): {reason}",
                        entry.correlation
                    ),
                }
            } else {
                unavailable(format!(
                    "connection lost before the PUBLISH was written: {reason}"
                ))
            };
            let _ = reply.send(Err(outcome));
        }
        for w in self.waiting.drain(..) {
            let _ = w
                .cmd
                .reply
                .send(Err(unavailable(format!("not connected: {reason}"))));
        }
        while let Ok(cmd) = self.commands.try_recv() {
            let _ = cmd
                .reply
                .send(Err(unavailable(format!("not connected: {reason}"))));
        }
    }

    /// Waits out the next backoff delay, refusing sends meanwhile. False when shutting down.
    async fn backoff_wait(&mut self) -> bool {
        let delay = self.backoff.next_delay();
        debug!(channel = %self.shared.cfg.id, ?delay, "reconnecting after");
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.shared.closing.cancelled() => return false,
                _ = sleep_until(until) => return true,
                Some(cmd) = self.commands.recv() => {
                    let reason = self.shared.down_reason();
                    let _ = cmd.reply.send(Err(unavailable(format!("not connected: {reason}"))));
                }
            }
        }
    }

    /// Sends DISCONNECT (normal disconnection: the session and its subscription stay on the
    /// broker for `session_expiry`) and waits for it to be written.
    async fn disconnect(&mut self) {
        self.eventloop.pending.push_back(Request::Disconnect);
        let written = timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return true,
                    Ok(event) => {
                        let _ = self.on_event(event);
                    }
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false);
        if written {
            info!(channel = %self.shared.cfg.id, "disconnected from broker");
        } else {
            warn!(channel = %self.shared.cfg.id, "DISCONNECT could not be written");
        }
        // Give the broker a moment to read it before the socket closes.
        sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for Actor {
    /// Also runs if the actor panics: the channel must not stay Up without it.
    fn drop(&mut self) {
        self.shared.set_down("connection actor stopped".into());
        self.shared.finished.cancel();
    }
}

fn unavailable(reason: impl Into<String>) -> SendError {
    SendError::Unavailable {
        reason: reason.into(),
    }
}

/// A connection error as a reason for health and logs. rumqttc's messages carry no payloads.
fn describe(e: &ConnectionError) -> String {
    let text = match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        ConnectionError::Timeout(_) => "connect timed out".into(),
        ConnectionError::NotConnAck(_) => "broker answered CONNECT with something else".into(),
        ConnectionError::MqttState(StateError::Deserialization(inner)) => {
            format!("connection failed: {inner}")
        }
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            "connection closed by the broker".into()
        }
        ConnectionError::MqttState(StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => format!(
            "broker sent DISCONNECT: {reason_code:?}{}",
            reason_string
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        other => other.to_string(),
    };
    message::sanitize(&text)
}

/// Reconnect delays: doubling from `min` to `max`, each drawn from [d/2, d].
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        let spread = (d - half).as_millis() as u64;
        half + Duration::from_millis(if spread == 0 {
            0
        } else {
            rand::random_range(0..=spread)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let mut caps = Vec::new();
        for _ in 0..5 {
            caps.push(b.next);
            let d = b.next_delay();
            let cap = *caps.last().unwrap();
            assert!(d >= cap / 2 && d <= cap, "{d:?} vs {cap:?}");
        }
        assert_eq!(
            caps,
            [100, 200, 400, 700, 700]
                .map(Duration::from_millis)
                .to_vec()
        );
        b.reset();
        assert_eq!(b.next, Duration::from_millis(100));
    }
}
