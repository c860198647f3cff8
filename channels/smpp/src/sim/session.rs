//! One SMPP connection of the loopback SMSC.
//!
//! A single task owns the socket. Each turn of its loop decodes every complete PDU already
//! read, appends all answers to one write buffer, and writes that buffer with one call, so a
//! pipelining client gets its responses in batches. Delayed responses and receipts wait in
//! FIFO queues (each with one constant delay, hence sorted) behind a single timer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use rusmpp::{
    Command, CommandId, CommandStatus, Pdu,
    command::CommandParts,
    pdus::{BindReceiverResp, BindTransceiverResp, BindTransmitterResp, SubmitSm, SubmitSmResp},
    tlvs::TlvValue,
    types::COctetString,
    values::InterfaceVersion,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::{self, FrameError, Inbound, SmppCodec};
use super::receipt::{self, Addr, DateCache, IdText, Receipt, ReceiptKind, Snippet};
use super::record::Part;
use super::text::{self, Concat};
use super::{Shared, SimStats};

/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Stop reading while this much output waits for the peer.
const HIGH_WATER: usize = 1 << 20;
/// How long a bound session gets to answer the unbind sent at shutdown.
const UNBIND_GRACE: Duration = Duration::from_secs(1);
/// Delay before a receipt answered with an error status is sent again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// Deliveries of one receipt before it is given up.
const MAX_ATTEMPTS: u8 = 5;
/// The SMSC's own system_id in bind responses.
const SMSC_SYSTEM_ID: &[u8] = b"pinpost-sim\0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindKind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl BindKind {
    fn can_submit(self) -> bool {
        self != BindKind::Receiver
    }

    fn can_receive(self) -> bool {
        self != BindKind::Transmitter
    }

    fn name(self) -> &'static str {
        match self {
            BindKind::Transmitter => "transmitter",
            BindKind::Receiver => "receiver",
            BindKind::Transceiver => "transceiver",
        }
    }

    fn resp_id(self) -> CommandId {
        match self {
            BindKind::Transmitter => CommandId::BindTransmitterResp,
            BindKind::Receiver => CommandId::BindReceiverResp,
            BindKind::Transceiver => CommandId::BindTransceiverResp,
        }
    }
}

/// A submit_sm_resp waiting for `response_delay`.
struct PendingResp {
    seq: u32,
    status: CommandStatus,
    id: u64,
    answer: bool,
    receipt: Option<Receipt>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Serving.
    Open,
    /// Shutdown: unbind sent, waiting for unbind_resp until the deadline.
    Unbinding(Instant),
    /// Write what is buffered, then close.
    Closing,
    /// `drop_after_pdus` reached: write what is buffered, then close.
    Dropping,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Unbind, broken framing or shutdown.
    Closed,
    /// `drop_after_pdus`.
    Dropped,
    /// The peer closed or reset the connection.
    PeerClosed,
    /// Writing to the peer failed.
    WriteFailed,
}

struct Session {
    shared: Arc<Shared>,
    conn: u64,
    peer: SocketAddr,
    bound: Option<BindKind>,
    /// system_id of the current or last bind; receipts are routed by it.
    system_id: Option<String>,
    wbuf: BytesMut,
    pdus_in: u64,
    submits: u64,
    next_seq: u32,
    unacked: HashMap<u32, Receipt>,
    resp_queue: VecDeque<(Instant, PendingResp)>,
    receipt_queue: VecDeque<(Instant, Receipt)>,
    retry_queue: VecDeque<(Instant, Receipt)>,
    inbox_tx: mpsc::UnboundedSender<Receipt>,
    dates: DateCache,
    scratch: String,
    phase: Phase,
    /// Set once the session stops serving: the latest moment to give up writing.
    linger_until: Option<Instant>,
    shutting_down: bool,
}

/// Serves one accepted connection until it closes or the SMSC shuts down.
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    shutdown: CancellationToken,
) {
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel();
    let mut s = Session::new(shared, conn, peer, inbox_tx);
    let (mut rd, mut wr) = stream.split();
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut codec = SmppCodec;
    let end = loop {
        s.take_input(&mut codec, &mut rbuf);
        // A peer that does not take the last bytes within the linger time is given up.
        let lingered = s.linger_until.is_some_and(|t| t <= Instant::now());
        if matches!(s.phase, Phase::Closing | Phase::Dropping) && (s.wbuf.is_empty() || lingered) {
            break if s.phase == Phase::Dropping {
                End::Dropped
            } else {
                End::Closed
            };
        }
        let reading =
            matches!(s.phase, Phase::Open | Phase::Unbinding(_)) && s.wbuf.len() < HIGH_WATER;
        if reading && rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        let deadline = s.next_deadline();
        tokio::select! {
            biased;
            written = wr.write_buf(&mut s.wbuf), if !s.wbuf.is_empty() => {
                if !matches!(written, Ok(n) if n > 0) {
                    break End::WriteFailed;
                }
            }
            _ = shutdown.cancelled(), if !s.shutting_down => s.start_shutdown(),
            read = rd.read_buf(&mut rbuf), if reading => {
                if !matches!(read, Ok(n) if n > 0) {
                    break End::PeerClosed;
                }
            }
            Some(receipt) = inbox.recv(), if s.phase == Phase::Open => s.deliver(receipt),
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                s.fire_due(Instant::now());
            }
        }
    };
    s.finish(end, &mut inbox);
}

/// Runs one session over `input` as if a client had sent it and then closed the connection,
/// without a socket: every PDU is handled, every delayed response and receipt falls due, and
/// everything the session wrote is returned. The fuzz targets drive the SMSC through it.
pub(super) fn replay(shared: Arc<Shared>, input: &[u8]) -> Vec<u8> {
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel();
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut s = Session::new(shared, 1, peer, inbox_tx);
    let mut rbuf = BytesMut::from(input);
    s.take_input(&mut SmppCodec, &mut rbuf);
    while let Ok(receipt) = inbox.try_recv() {
        s.deliver(receipt);
    }
    s.fire_due(Instant::now() + Duration::from_secs(24 * 3600));
    let written = s.wbuf.to_vec();
    s.finish(End::PeerClosed, &mut inbox);
    written
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        conn: u64,
        peer: SocketAddr,
        inbox_tx: mpsc::UnboundedSender<Receipt>,
    ) -> Session {
        Session {
            shared,
            conn,
            peer,
            bound: None,
            system_id: None,
            wbuf: BytesMut::with_capacity(READ_CHUNK),
            pdus_in: 0,
            submits: 0,
            next_seq: 0,
            unacked: HashMap::new(),
            resp_queue: VecDeque::new(),
            receipt_queue: VecDeque::new(),
            retry_queue: VecDeque::new(),
            inbox_tx,
            dates: DateCache::default(),
            scratch: String::with_capacity(64),
            phase: Phase::Open,
            linger_until: None,
            shutting_down: false,
        }
    }

    /// Handles every complete PDU in `rbuf` while the session still serves.
    fn take_input(&mut self, codec: &mut SmppCodec, rbuf: &mut BytesMut) {
        let drop_after = self.shared.cfg.drop_after_pdus;
        while matches!(self.phase, Phase::Open | Phase::Unbinding(_)) {
            match codec.decode(rbuf) {
                Ok(Some(inbound)) => {
                    self.pdus_in += 1;
                    if drop_after.is_some_and(|n| self.pdus_in >= n) {
                        SimStats::bump(&self.shared.stats.inner.dropped_connections);
                        self.end_with(Phase::Dropping);
                        break;
                    }
                    self.handle(inbound);
                }
                Ok(None) => break,
                Err(FrameError::Length {
                    length,
                    sequence_number,
                }) => {
                    tracing::warn!(peer = %self.peer, length, "smsc-sim: broken PDU framing, closing");
                    self.generic_nack(sequence_number, CommandStatus::EsmeRinvcmdlen);
                    self.end_with(Phase::Closing);
                }
                Err(FrameError::Io(_)) => self.end_with(Phase::Closing),
            }
        }
    }

    fn handle(&mut self, inbound: Inbound) {
        let command = match inbound {
            Inbound::Command(c) => c,
            Inbound::Malformed {
                command_id,
                sequence_number,
            } => {
                let status = match CommandId::from(command_id) {
                    CommandId::Other(_) => CommandStatus::EsmeRinvcmdid,
                    _ => CommandStatus::EsmeRinvcmdlen,
                };
                self.generic_nack(sequence_number, status);
                return;
            }
        };
        let CommandParts {
            id,
            status,
            sequence_number: seq,
            pdu,
        } = command.into_parts();
        match pdu {
            Some(Pdu::BindTransmitter(b)) => self.on_bind(
                seq,
                BindKind::Transmitter,
                b.system_id.as_str(),
                b.password.as_str(),
                b.interface_version,
            ),
            Some(Pdu::BindReceiver(b)) => self.on_bind(
                seq,
                BindKind::Receiver,
                b.system_id.as_str(),
                b.password.as_str(),
                b.interface_version,
            ),
            Some(Pdu::BindTransceiver(b)) => self.on_bind(
                seq,
                BindKind::Transceiver,
                b.system_id.as_str(),
                b.password.as_str(),
                b.interface_version,
            ),
            Some(Pdu::SubmitSm(sm)) => self.on_submit(seq, &sm),
            _ => match id {
                CommandId::DeliverSmResp => {
                    self.on_deliver_resp(seq, status == CommandStatus::EsmeRok)
                }
                CommandId::GenericNack => self.on_deliver_resp(seq, false),
                CommandId::EnquireLink => self.write(&Command::new(
                    CommandStatus::EsmeRok,
                    seq,
                    Pdu::EnquireLinkResp,
                )),
                CommandId::Unbind => self.on_unbind(seq),
                CommandId::UnbindResp => {
                    if matches!(self.phase, Phase::Unbinding(_)) {
                        self.end_with(Phase::Closing);
                    }
                }
                other if other.is_response() => {}
                CommandId::Other(_) => self.generic_nack(seq, CommandStatus::EsmeRinvcmdid),
                // A known request without the body it needs (bind or submit_sm), or one the
                // SMSC does not offer (query_sm, data_sm, ...).
                CommandId::BindTransmitter
                | CommandId::BindReceiver
                | CommandId::BindTransceiver
                | CommandId::SubmitSm => self.generic_nack(seq, CommandStatus::EsmeRinvcmdlen),
                _ => self.generic_nack(seq, CommandStatus::EsmeRinvcmdid),
            },
        }
    }

    fn on_bind(
        &mut self,
        seq: u32,
        kind: BindKind,
        system_id: &str,
        password: &str,
        version: InterfaceVersion,
    ) {
        let cfg = &self.shared.cfg;
        let status = if self.bound.is_some() {
            CommandStatus::EsmeRalybnd
        } else if cfg.refuse_binds {
            CommandStatus::EsmeRbindfail
        } else if cfg.system_id.as_deref().is_some_and(|s| s != system_id) {
            CommandStatus::EsmeRinvsysid
        } else if cfg.password.as_deref().is_some_and(|p| p != password) {
            CommandStatus::EsmeRinvpaswd
        } else {
            CommandStatus::EsmeRok
        };
        if status != CommandStatus::EsmeRok {
            SimStats::bump(&self.shared.stats.inner.bind_failures);
            tracing::info!(
                peer = %self.peer,
                system_id,
                bind = kind.name(),
                status = u32::from(status),
                "smsc-sim: bind refused"
            );
            self.header_only(kind.resp_id(), status, seq);
            return;
        }
        let version = u8::from(version);
        let sc_version = if version >= 0x50 {
            Some(InterfaceVersion::Smpp5_0)
        } else if version >= 0x34 {
            Some(InterfaceVersion::Smpp3_4)
        } else {
            None
        };
        let smsc_id = COctetString::from_static_slice(SMSC_SYSTEM_ID).unwrap_or_default();
        let pdu = match kind {
            BindKind::Transmitter => Pdu::from(BindTransmitterResp::new(smsc_id, sc_version)),
            BindKind::Receiver => Pdu::from(BindReceiverResp::new(smsc_id, sc_version)),
            BindKind::Transceiver => Pdu::from(BindTransceiverResp::new(smsc_id, sc_version)),
        };
        self.write(&Command::new(CommandStatus::EsmeRok, seq, pdu));
        SimStats::bump(&self.shared.stats.inner.binds);
        tracing::info!(
            peer = %self.peer,
            system_id,
            bind = kind.name(),
            interface_version = version,
            "smsc-sim: bound"
        );
        self.bound = Some(kind);
        self.system_id = Some(system_id.to_owned());
        if kind.can_receive() {
            let held = self
                .shared
                .router
                .register(system_id, self.conn, self.inbox_tx.clone());
            for receipt in held {
                self.write_deliver(receipt);
            }
        }
    }

    fn on_unbind(&mut self, seq: u32) {
        self.write(&Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp));
        if let (Some(kind), Some(system_id)) = (self.bound.take(), self.system_id.as_deref()) {
            if kind.can_receive() {
                self.shared.router.unregister(system_id, self.conn);
            }
            tracing::info!(peer = %self.peer, system_id, submits = self.submits, "smsc-sim: unbound");
        }
        self.end_with(Phase::Closing);
    }

    fn on_submit(&mut self, seq: u32, sm: &SubmitSm) {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.cfg;
        let counters = &shared.stats.inner;
        SimStats::bump(&counters.submits);
        self.submits += 1;
        if !self.bound.is_some_and(BindKind::can_submit) {
            SimStats::bump(&counters.rejected);
            self.header_only(CommandId::SubmitSmResp, CommandStatus::EsmeRinvbndsts, seq);
            return;
        }
        let n = shared.submit_count.fetch_add(1, Ordering::Relaxed) + 1;
        let answer = cfg
            .no_answer_every
            .is_none_or(|every| !n.is_multiple_of(every));
        if !answer {
            SimStats::bump(&counters.unanswered);
        }
        let dest = sm.destination_addr.as_str();
        let throttled = cfg.throttle_fraction > 0.0
            && shared
                .rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .random_bool(cfg.throttle_fraction);
        let status = if throttled {
            SimStats::bump(&counters.throttled);
            CommandStatus::EsmeRthrottled
        } else if cfg
            .reject_prefix
            .iter()
            .any(|p| dest.starts_with(p.as_str()))
        {
            SimStats::bump(&counters.rejected);
            CommandStatus::EsmeRinvdstadr
        } else {
            CommandStatus::EsmeRok
        };
        if status != CommandStatus::EsmeRok {
            self.respond(PendingResp {
                seq,
                status,
                id: 0,
                answer,
                receipt: None,
            });
            return;
        }

        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let esm_class = u8::from(sm.esm_class);
        let data_coding = u8::from(sm.data_coding);
        let mut payload: &[u8] = sm.short_message();
        let mut ussd_op = None;
        let (mut sar_ref, mut sar_total, mut sar_seq) = (None, None, None);
        for tlv in sm.tlvs() {
            match tlv.value() {
                Some(TlvValue::MessagePayload(p)) => payload = &p.value,
                Some(TlvValue::UssdServiceOp(op)) => ussd_op = Some(u8::from(*op)),
                Some(TlvValue::SarMsgRefNum(r)) => sar_ref = Some(*r),
                Some(TlvValue::SarTotalSegments(t)) => sar_total = Some(*t),
                Some(TlvValue::SarSegmentSeqnum(s)) => sar_seq = Some(*s),
                _ => {}
            }
        }
        let (udh_concat, user_data) = if esm_class & 0x40 != 0 {
            text::split_udh(payload)
        } else {
            (None, payload)
        };
        let concat = udh_concat.or(match (sar_ref, sar_total, sar_seq) {
            (Some(reference), Some(total), Some(seq)) if seq >= 1 && seq <= total => Some(Concat {
                reference,
                total,
                seq,
            }),
            _ => None,
        });

        let undeliverable = cfg
            .undeliverable_prefix
            .iter()
            .any(|p| dest.starts_with(p.as_str()));
        let kind = match ussd_op {
            Some(3) if !undeliverable => Some(ReceiptKind::UssnConfirm),
            Some(2) if !undeliverable => Some(ReceiptKind::UssrConfirm),
            Some(_) => None,
            None => {
                let wanted = match u8::from(sm.registered_delivery) & 0x03 {
                    1 => true,
                    2 => undeliverable,
                    3 => !undeliverable,
                    _ => false,
                };
                wanted.then_some(if undeliverable {
                    ReceiptKind::Undeliverable
                } else {
                    ReceiptKind::Delivered
                })
            }
        };
        let receipt = kind.filter(|_| cfg.receipts).map(|kind| {
            let snippet = if ussd_op.is_none() {
                self.scratch.clear();
                text::decode_into(&mut self.scratch, data_coding, user_data, 20);
                Snippet::from_text(&self.scratch)
            } else {
                Snippet::default()
            };
            Receipt {
                id,
                kind,
                source: Addr::new(
                    u8::from(sm.source_addr_ton),
                    u8::from(sm.source_addr_npi),
                    sm.source_addr.as_str(),
                ),
                dest: Addr::new(u8::from(sm.dest_addr_ton), u8::from(sm.dest_addr_npi), dest),
                submit_secs: receipt::now_secs(),
                snippet,
                attempts: 0,
            }
        });

        let complete = shared.messages.accept(Part {
            system_id: self.system_id.as_deref().unwrap_or(""),
            id,
            source: sm.source_addr.as_str(),
            dest,
            service_type: sm.service_type.value().as_str(),
            esm_class,
            data_coding,
            ussd_op,
            concat,
            payload: user_data,
        });
        if complete {
            SimStats::bump(&counters.messages);
        }
        self.respond(PendingResp {
            seq,
            status,
            id,
            answer,
            receipt,
        });
    }

    fn respond(&mut self, resp: PendingResp) {
        let delay = self.shared.cfg.response_delay;
        if delay.is_zero() {
            self.emit_resp(resp);
        } else {
            self.resp_queue.push_back((Instant::now() + delay, resp));
        }
    }

    fn emit_resp(&mut self, resp: PendingResp) {
        if resp.answer {
            if resp.status == CommandStatus::EsmeRok {
                let id = IdText::new(resp.id, self.shared.cfg.message_id_base);
                let pdu = SubmitSmResp::new(id.to_c_octet(), Vec::new());
                self.write(&Command::new(CommandStatus::EsmeRok, resp.seq, pdu));
            } else {
                self.header_only(CommandId::SubmitSmResp, resp.status, resp.seq);
            }
        }
        if let Some(receipt) = resp.receipt {
            let delay = self.shared.cfg.receipt_delay;
            if delay.is_zero() {
                self.deliver(receipt);
            } else {
                self.receipt_queue
                    .push_back((Instant::now() + delay, receipt));
            }
        }
    }

    /// Sends a receipt on this connection if it can receive, or routes it to one that can.
    fn deliver(&mut self, receipt: Receipt) {
        if self.phase != Phase::Open {
            if !self.shutting_down {
                self.reroute(receipt);
            }
            return;
        }
        if self.bound.is_some_and(BindKind::can_receive) {
            self.write_deliver(receipt);
        } else {
            self.reroute(receipt);
        }
    }

    fn reroute(&self, receipt: Receipt) {
        if let Some(system_id) = self.system_id.as_deref() {
            self.shared.router.route(system_id, receipt);
        }
    }

    fn write_deliver(&mut self, receipt: Receipt) {
        let seq = self.next_seq();
        let now = receipt::now_secs();
        let submit_date = self.dates.get(receipt.submit_secs);
        let done_date = self.dates.get(now);
        let command = receipt::deliver_sm(
            &receipt,
            seq,
            self.shared.cfg.receipt_id_base,
            submit_date,
            done_date,
        );
        self.write(&command);
        self.unacked.insert(seq, receipt);
        SimStats::bump(&self.shared.stats.inner.receipts_sent);
    }

    fn on_deliver_resp(&mut self, seq: u32, ok: bool) {
        let Some(mut receipt) = self.unacked.remove(&seq) else {
            return;
        };
        if ok {
            SimStats::bump(&self.shared.stats.inner.receipts_acked);
        } else {
            receipt.attempts += 1;
            if receipt.attempts < MAX_ATTEMPTS {
                self.retry_queue
                    .push_back((Instant::now() + RETRY_DELAY, receipt));
            }
        }
    }

    fn start_shutdown(&mut self) {
        self.shutting_down = true;
        if self.bound.is_some() && self.phase == Phase::Open {
            let seq = self.next_seq();
            self.write(&Command::new(CommandStatus::EsmeRok, seq, Pdu::Unbind));
            let deadline = Instant::now() + UNBIND_GRACE;
            self.phase = Phase::Unbinding(deadline);
            self.linger_until = Some(deadline);
        } else if self.phase == Phase::Open {
            self.end_with(Phase::Closing);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let fronts = [
            self.resp_queue.front().map(|(t, _)| *t),
            self.receipt_queue.front().map(|(t, _)| *t),
            self.retry_queue.front().map(|(t, _)| *t),
            match self.phase {
                Phase::Unbinding(t) => Some(t),
                _ => None,
            },
            self.linger_until,
        ];
        fronts.into_iter().flatten().min()
    }

    fn fire_due(&mut self, now: Instant) {
        while self.resp_queue.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, resp)) = self.resp_queue.pop_front() {
                self.emit_resp(resp);
            }
        }
        while self.receipt_queue.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, receipt)) = self.receipt_queue.pop_front() {
                self.deliver(receipt);
            }
        }
        while self.retry_queue.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, receipt)) = self.retry_queue.pop_front() {
                self.deliver(receipt);
            }
        }
        if matches!(self.phase, Phase::Unbinding(t) if t <= now) {
            self.end_with(Phase::Closing);
        }
    }

    /// Stops serving: what is buffered is written, for at most [`UNBIND_GRACE`].
    fn end_with(&mut self, phase: Phase) {
        self.phase = phase;
        self.linger_until
            .get_or_insert_with(|| Instant::now() + UNBIND_GRACE);
    }

    fn next_seq(&mut self) -> u32 {
        self.next_seq = if self.next_seq >= 0x7fff_ffff {
            1
        } else {
            self.next_seq + 1
        };
        self.next_seq
    }

    fn write(&mut self, command: &Command) {
        codec::encode(command, &mut self.wbuf);
    }

    /// A response without a body (error responses, as SMPP 3.4 requires).
    fn header_only(&mut self, id: CommandId, status: CommandStatus, seq: u32) {
        let command = Command::from_parts(CommandParts::new(id, status, seq, None));
        self.write(&command);
    }

    fn generic_nack(&mut self, seq: u32, status: CommandStatus) {
        SimStats::bump(&self.shared.stats.inner.generic_nacks);
        self.header_only(CommandId::GenericNack, status, seq);
    }

    /// Hands receipts this connection can no longer deliver to another session.
    fn finish(mut self, end: End, inbox: &mut mpsc::UnboundedReceiver<Receipt>) {
        if let (Some(kind), Some(system_id)) = (self.bound, self.system_id.as_deref())
            && kind.can_receive()
        {
            self.shared.router.unregister(system_id, self.conn);
        }
        if end == End::Dropped {
            tracing::info!(
                peer = %self.peer,
                system_id = self.system_id.as_deref().unwrap_or(""),
                pdus = self.pdus_in,
                "smsc-sim: dropped the connection (drop_after_pdus)"
            );
        } else {
            tracing::debug!(peer = %self.peer, end = ?end, "smsc-sim: connection closed");
        }
        if self.shutting_down {
            return;
        }
        let mut leftover: Vec<Receipt> = self.unacked.drain().map(|(_, r)| r).collect();
        leftover.extend(self.resp_queue.drain(..).filter_map(|(_, p)| p.receipt));
        leftover.extend(self.receipt_queue.drain(..).map(|(_, r)| r));
        leftover.extend(self.retry_queue.drain(..).map(|(_, r)| r));
        while let Ok(r) = inbox.try_recv() {
            leftover.push(r);
        }
        leftover.sort_by_key(|r| r.id);
        for receipt in leftover {
            self.reroute(receipt);
        }
    }
}
