//! A scripted fake SMSC for the driver's tests: rusmpp's codec over `tokio::io::duplex`, one
//! task per connection, with a reply script per submit_sm, and a record of what it saw.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pinpost_channel_core::{ChannelId, ReceiptSink, SecretString};
use pinpost_smpp::client::{SmppChannel, SmppConfig};
use rusmpp::pdus::{BindTransceiverResp, DeliverSm, SubmitSm, SubmitSmResp};
use rusmpp::tokio_codec::CommandCodec;
use rusmpp::types::COctetString;
use rusmpp::{Command, CommandId, CommandStatus, Pdu};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// What the fake answers to one submit_sm.
#[derive(Debug, Clone)]
pub enum Reply {
    /// ESME_ROK with this message id.
    Ok(String),
    /// An error status (no body).
    Status(u32),
    /// A generic_nack with this status instead of a submit_sm_resp.
    GenericNack(u32),
    /// Never answer.
    Silent,
    /// Close the connection instead of answering.
    Drop,
    /// Answer after a delay.
    After(Duration, Box<Reply>),
}

/// The context a script sees for each submit_sm.
pub struct SubmitInfo<'a> {
    /// Index of this submit over the fake's lifetime (0-based).
    pub index: usize,
    /// Which connection (0-based) it came on.
    pub conn: usize,
    pub sm: &'a SubmitSm,
}

pub type Script = Arc<dyn Fn(&SubmitInfo<'_>) -> Reply + Send + Sync>;

/// One submit_sm as the fake received it.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub conn: usize,
    pub seq: u32,
    pub at: Instant,
    pub service_type: String,
    pub source_addr: String,
    pub source_ton: u8,
    pub source_npi: u8,
    pub destination_addr: String,
    pub dest_ton: u8,
    pub dest_npi: u8,
    pub esm_class: u8,
    pub data_coding: u8,
    pub registered_delivery: u8,
    pub validity_period: String,
    pub short_message: Vec<u8>,
    pub tlv_count: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Record {
    pub connections: usize,
    pub binds: usize,
    pub bind_versions: Vec<u8>,
    pub submits: Vec<Submitted>,
    /// (time, status) of every error/throttle reply sent.
    pub error_replies: Vec<(Instant, u32)>,
    pub deliver_sm_resps: Vec<(u32, u32)>,
    pub unbinds: usize,
    pub generic_nacks: usize,
    pub outstanding: usize,
    pub max_outstanding: usize,
}

#[derive(Debug)]
enum Control {
    Send(Box<Command>),
    Drop,
}

struct Inner {
    script: Script,
    record: Mutex<Record>,
    controls: Mutex<Vec<mpsc::UnboundedSender<Control>>>,
    refuse_connects: Mutex<bool>,
    bind_status: Mutex<u32>,
    next_seq: Mutex<u32>,
    next_index: Mutex<usize>,
}

#[derive(Clone)]
pub struct FakeSmsc {
    inner: Arc<Inner>,
}

impl FakeSmsc {
    pub fn new(script: impl Fn(&SubmitInfo<'_>) -> Reply + Send + Sync + 'static) -> Self {
        FakeSmsc {
            inner: Arc::new(Inner {
                script: Arc::new(script),
                record: Mutex::new(Record::default()),
                controls: Mutex::new(Vec::new()),
                refuse_connects: Mutex::new(false),
                bind_status: Mutex::new(0),
                next_seq: Mutex::new(1),
                next_index: Mutex::new(0),
            }),
        }
    }

    /// Answers every submit_sm with ESME_ROK and ids `m0`, `m1`, ...
    pub fn accepting() -> Self {
        Self::new(|s| Reply::Ok(format!("m{}", s.index)))
    }

    pub fn record(&self) -> Record {
        self.inner.record.lock().unwrap().clone()
    }

    pub fn refuse_connects(&self, refuse: bool) {
        *self.inner.refuse_connects.lock().unwrap() = refuse;
    }

    pub fn refuse_binds_with(&self, status: u32) {
        *self.inner.bind_status.lock().unwrap() = status;
    }

    /// Start a channel whose connector opens duplex streams to this fake.
    pub fn start(&self, cfg: SmppConfig, sink: ReceiptSink) -> SmppChannel {
        let fake = self.clone();
        SmppChannel::start_with_connector(cfg, sink, move || {
            let fake = fake.clone();
            async move { fake.open() }
        })
    }

    fn open(&self) -> std::io::Result<DuplexStream> {
        if *self.inner.refuse_connects.lock().unwrap() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "fake refuses",
            ));
        }
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = {
            let mut controls = self.inner.controls.lock().unwrap();
            controls.push(tx);
            controls.len() - 1
        };
        self.inner.record.lock().unwrap().connections += 1;
        tokio::spawn(serve(self.inner.clone(), conn, server, rx));
        Ok(client)
    }

    fn next_seq(&self) -> u32 {
        let mut s = self.inner.next_seq.lock().unwrap();
        let v = *s;
        *s += 1;
        v
    }

    /// Send a deliver_sm on the newest connection; returns its sequence number.
    pub fn deliver(&self, sm: DeliverSm) -> u32 {
        let seq = self.next_seq();
        self.control_last(Control::Send(Box::new(Command::new(
            CommandStatus::EsmeRok,
            seq,
            sm,
        ))));
        seq
    }

    /// Send an unbind on the newest connection.
    pub fn unbind(&self) {
        let seq = self.next_seq();
        self.control_last(Control::Send(Box::new(Command::new(
            CommandStatus::EsmeRok,
            seq,
            Pdu::Unbind,
        ))));
    }

    /// Close the newest connection.
    pub fn drop_connection(&self) {
        self.control_last(Control::Drop);
    }

    fn control_last(&self, c: Control) {
        let controls = self.inner.controls.lock().unwrap();
        let tx = controls.last().expect("no connection yet");
        let _ = tx.send(c);
    }
}

fn text<const MIN: usize, const MAX: usize>(s: &COctetString<MIN, MAX>) -> String {
    s.as_str().to_owned()
}

async fn serve(
    inner: Arc<Inner>,
    conn: usize,
    stream: DuplexStream,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let framed = Framed::new(stream, CommandCodec::new());
    let (mut sink, mut stream) = framed.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(Command, bool)>();
    // The writer: `true` marks a submit_sm answer, which ends one outstanding submit.
    let rec = inner.clone();
    let writer = tokio::spawn(async move {
        while let Some((cmd, is_submit_answer)) = out_rx.recv().await {
            if is_submit_answer {
                let mut r = rec.record.lock().unwrap();
                r.outstanding = r.outstanding.saturating_sub(1);
                let st = u32::from(cmd.status());
                if st != 0 {
                    r.error_replies.push((Instant::now(), st));
                }
            }
            if sink.send(cmd).await.is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            c = control.recv() => match c {
                Some(Control::Send(cmd)) => { let _ = out_tx.send((*cmd, false)); }
                Some(Control::Drop) | None => break,
            },
            next = stream.next() => {
                let Some(Ok(cmd)) = next else { break };
                let seq = cmd.sequence_number();
                match cmd.pdu() {
                    Some(Pdu::BindTransceiver(b)) => {
                        let status = *inner.bind_status.lock().unwrap();
                        {
                            let mut r = inner.record.lock().unwrap();
                            r.binds += 1;
                            r.bind_versions.push(u8::from(b.interface_version));
                        }
                        let resp = Command::new(
                            CommandStatus::from(status),
                            seq,
                            BindTransceiverResp::builder()
                                .system_id(COctetString::from_string("fake".into()).unwrap())
                                .build(),
                        );
                        let _ = out_tx.send((resp, false));
                    }
                    Some(Pdu::SubmitSm(sm)) => {
                        let index = {
                            let mut i = inner.next_index.lock().unwrap();
                            let v = *i;
                            *i += 1;
                            v
                        };
                        {
                            let mut r = inner.record.lock().unwrap();
                            r.outstanding += 1;
                            r.max_outstanding = r.max_outstanding.max(r.outstanding);
                            r.submits.push(Submitted {
                                conn,
                                seq,
                                at: Instant::now(),
                                service_type: sm.service_type.value().as_str().to_owned(),
                                source_addr: text(&sm.source_addr),
                                source_ton: u8::from(sm.source_addr_ton),
                                source_npi: u8::from(sm.source_addr_npi),
                                destination_addr: text(&sm.destination_addr),
                                dest_ton: u8::from(sm.dest_addr_ton),
                                dest_npi: u8::from(sm.dest_addr_npi),
                                esm_class: u8::from(sm.esm_class),
                                data_coding: u8::from(sm.data_coding),
                                registered_delivery: u8::from(sm.registered_delivery),
                                validity_period: String::from_utf8_lossy(
                                    sm.validity_period.as_ref(),
                                )
                                .trim_end_matches('\0')
                                .to_owned(),
                                short_message: sm.short_message().to_vec(),
                                tlv_count: sm.tlvs().len(),
                            });
                        }
                        let reply = (inner.script)(&SubmitInfo { index, conn, sm });
                        if !answer(reply, seq, &out_tx) {
                            break;
                        }
                    }
                    Some(Pdu::EnquireLink) => {
                        let _ = out_tx.send((
                            Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp),
                            false,
                        ));
                    }
                    Some(Pdu::Unbind) => {
                        inner.record.lock().unwrap().unbinds += 1;
                        let _ = out_tx.send((
                            Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp),
                            false,
                        ));
                    }
                    Some(Pdu::UnbindResp) => break,
                    _ if cmd.id() == CommandId::DeliverSmResp => {
                        inner
                            .record
                            .lock()
                            .unwrap()
                            .deliver_sm_resps
                            .push((seq, u32::from(cmd.status())));
                    }
                    _ if cmd.id() == CommandId::GenericNack => {
                        inner.record.lock().unwrap().generic_nacks += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    // Give queued answers (an unbind_resp) a moment to go out, then close both directions.
    drop(out_tx);
    let _ = tokio::time::timeout(Duration::from_millis(50), writer).await;
    inner.record.lock().unwrap().outstanding = 0;
}

/// Queue the reply; false when the connection must close.
fn answer(reply: Reply, seq: u32, out: &mpsc::UnboundedSender<(Command, bool)>) -> bool {
    match reply {
        Reply::Ok(id) => {
            let resp = SubmitSmResp::builder()
                .message_id(COctetString::from_string(id).unwrap())
                .build();
            let _ = out.send((Command::new(CommandStatus::EsmeRok, seq, resp), true));
            true
        }
        Reply::Status(st) => {
            let cmd = Command::builder()
                .status(CommandStatus::from(st))
                .sequence_number(seq)
                .pdu(SubmitSmResp::default());
            let _ = out.send((cmd, true));
            true
        }
        Reply::GenericNack(st) => {
            let cmd = Command::builder()
                .status(CommandStatus::from(st))
                .sequence_number(seq)
                .pdu(Pdu::GenericNack);
            let _ = out.send((cmd, true));
            true
        }
        Reply::Silent => true,
        Reply::Drop => false,
        Reply::After(delay, reply) => {
            let out = out.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                answer(*reply, seq, &out);
            });
            true
        }
    }
}

/// A config for tests: short timeouts, window 10.
pub fn config(id: &str) -> SmppConfig {
    let mut c = SmppConfig::new(
        ChannelId::new(id),
        "smpp://fake.invalid:2775",
        "pinpost",
        SecretString::from("secret".to_owned()),
        "PINPOST",
    );
    c.response_timeout = Duration::from_secs(10);
    c.reconnect_min = Duration::from_millis(200);
    c.reconnect_max = Duration::from_secs(2);
    c
}

/// Wait (bounded) until `f` holds.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Decode unpacked GSM septets that are plain ASCII letters, digits and spaces.
pub fn gsm_ascii(septets: &[u8]) -> Option<String> {
    septets
        .iter()
        .map(|&b| (b.is_ascii_alphanumeric() || b == b' ').then_some(b as char))
        .collect()
}
