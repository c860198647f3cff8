//! Shared pieces of the loopback SMSC tests: starting the SMSC on a free loopback port, and a
//! raw rusmpp codec client that sends exactly the PDUs a test asks for.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pinpost_smpp::sim::{SimConfig, SimStats, Smsc};
use rusmpp::{
    Command, CommandId, CommandStatus, Pdu,
    pdus::{BindReceiver, BindTransceiver, BindTransmitter, DeliverSm, SubmitSm},
    tlvs::{MessageSubmissionRequestTlvValue, TlvValue},
    tokio_codec::CommandCodec,
    types::{COctetString, OctetString},
    values::{
        DataCoding, EsmClass, InterfaceVersion, MessageState, Npi, RegisteredDelivery, ServiceType,
        Ton,
    },
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// How long any single expected PDU may take.
pub const STEP: Duration = Duration::from_secs(5);

pub struct Running {
    pub addr: SocketAddr,
    pub stats: SimStats,
    pub token: CancellationToken,
    pub handle: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Cancels the SMSC and waits (bounded) for `run` to return.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("smsc did not stop within 10 s")
            .expect("smsc task panicked")
            .expect("smsc run returned an error");
    }
}

/// Starts an SMSC on 127.0.0.1 with a free port.
pub async fn start(cfg: SimConfig) -> Running {
    let cfg = SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..cfg
    };
    let smsc = Smsc::bind(cfg).await.expect("bind smsc");
    let addr = smsc.local_addr().unwrap();
    let stats = smsc.stats();
    let token = CancellationToken::new();
    let handle = tokio::spawn(smsc.run(token.clone()));
    Running {
        addr,
        stats,
        token,
        handle,
    }
}

/// A unique path for a record file in the temp directory.
pub fn temp_record(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "pinpost-sim-{name}-{}-{}.jsonl",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// Polls the record file until it holds `n` lines (or panics after 5 s).
pub async fn wait_for_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("record line is JSON"))
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "record has {} lines, expected {n}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn c<const MIN: usize, const MAX: usize>(s: &str) -> COctetString<MIN, MAX> {
    COctetString::from_str(s).expect("c-octet string")
}

pub struct Client {
    framed: Framed<TcpStream, CommandCodec>,
    seq: u32,
}

#[derive(Clone, Copy, Debug)]
pub enum Bind {
    Transmitter,
    Receiver,
    Transceiver,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Client {
            framed: Framed::new(stream, CommandCodec::new()),
            seq: 0,
        }
    }

    pub async fn send(&mut self, pdu: impl Into<Pdu>) -> u32 {
        self.seq += 1;
        let command = Command::new(CommandStatus::EsmeRok, self.seq, pdu);
        self.framed.send(command).await.expect("send");
        self.seq
    }

    /// The TCP stream, for tests that write on their own.
    pub fn into_inner(self) -> TcpStream {
        self.framed.into_inner()
    }

    pub async fn send_command(&mut self, command: Command) {
        self.framed.send(command).await.expect("send");
    }

    /// Writes raw bytes (for malformed PDUs).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write raw");
    }

    /// The next PDU; panics on timeout or close.
    pub async fn recv(&mut self) -> Command {
        match self.recv_within(STEP).await {
            Some(c) => c,
            None => panic!("no PDU within {STEP:?}"),
        }
    }

    /// The next PDU within `d`, or `None` if nothing arrived (panics if the connection closed).
    pub async fn recv_within(&mut self, d: Duration) -> Option<Command> {
        match tokio::time::timeout(d, self.framed.next()).await {
            Err(_) => None,
            Ok(Some(Ok(c))) => Some(c),
            Ok(Some(Err(e))) => panic!("decode error: {e}"),
            Ok(None) => panic!("connection closed"),
        }
    }

    /// True if the server closes the connection within `d` (PDUs before the close are skipped).
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Binds and returns the response.
    pub async fn bind_as(
        &mut self,
        kind: Bind,
        system_id: &str,
        password: &str,
        version: InterfaceVersion,
    ) -> Command {
        let seq = match kind {
            Bind::Transmitter => {
                self.send(
                    BindTransmitter::builder()
                        .system_id(c(system_id))
                        .password(c(password))
                        .interface_version(version)
                        .build(),
                )
                .await
            }
            Bind::Receiver => {
                self.send(
                    BindReceiver::builder()
                        .system_id(c(system_id))
                        .password(c(password))
                        .interface_version(version)
                        .build(),
                )
                .await
            }
            Bind::Transceiver => {
                self.send(
                    BindTransceiver::builder()
                        .system_id(c(system_id))
                        .password(c(password))
                        .interface_version(version)
                        .build(),
                )
                .await
            }
        };
        let resp = self.recv().await;
        assert_eq!(resp.sequence_number(), seq);
        resp
    }

    /// Binds as transceiver with SMPP 3.4 and asserts success.
    pub async fn bind_ok(addr: SocketAddr, kind: Bind, system_id: &str) -> Client {
        let mut client = Client::connect(addr).await;
        let resp = client
            .bind_as(kind, system_id, "secret", InterfaceVersion::Smpp3_4)
            .await;
        assert_eq!(
            resp.status(),
            CommandStatus::EsmeRok,
            "bind failed: {resp:?}"
        );
        client
    }

    /// Waits for the submit_sm_resp with `seq`, answering any deliver_sm on the way (which are
    /// returned too).
    pub async fn submit_resp(&mut self, seq: u32) -> (Command, Vec<DeliverSm>) {
        let mut delivered = Vec::new();
        loop {
            let c = self.recv().await;
            match c.pdu() {
                Some(Pdu::DeliverSm(d)) => {
                    delivered.push(d.clone());
                    self.ack(c.sequence_number()).await;
                }
                _ if c.id() == CommandId::SubmitSmResp && c.sequence_number() == seq => {
                    return (c, delivered);
                }
                _ => panic!("unexpected PDU {:?}", c.id()),
            }
        }
    }

    /// Waits for the next deliver_sm and acknowledges it.
    pub async fn next_deliver(&mut self) -> DeliverSm {
        loop {
            let c = self.recv().await;
            if let Some(Pdu::DeliverSm(d)) = c.pdu() {
                let d = d.clone();
                self.ack(c.sequence_number()).await;
                return d;
            }
            assert!(
                c.id().is_response() || c.id() == CommandId::EnquireLink,
                "unexpected PDU {:?}",
                c.id()
            );
        }
    }

    pub async fn ack(&mut self, seq: u32) {
        self.send_command(Command::new(
            CommandStatus::EsmeRok,
            seq,
            rusmpp::pdus::DeliverSmResp::default(),
        ))
        .await;
    }
}

/// A submit_sm with explicit esm_class (rusmpp's default encodes as 0x08).
pub fn submit(dest: &str, short_message: &[u8], data_coding: u8, esm_class: u8) -> SubmitSm {
    SubmitSm::builder()
        .service_type(ServiceType::default())
        .source_addr_ton(Ton::Alphanumeric)
        .source_addr_npi(Npi::Unknown)
        .source_addr(c("PINPOST"))
        .dest_addr_ton(Ton::International)
        .dest_addr_npi(Npi::Isdn)
        .destination_addr(c(dest))
        .esm_class(EsmClass::from(esm_class))
        .registered_delivery(RegisteredDelivery::from(0x01))
        .data_coding(DataCoding::from(data_coding))
        .short_message(OctetString::from_vec(short_message.to_vec()).expect("short message"))
        .build()
}

/// A submit_sm carrying its text in the message_payload TLV.
pub fn submit_payload(dest: &str, payload: &[u8], data_coding: u8) -> SubmitSm {
    let mut sm = submit(dest, b"", data_coding, 0x00);
    sm.push_tlv(MessageSubmissionRequestTlvValue::MessagePayload(
        rusmpp::values::MessagePayload::new(rusmpp::types::AnyOctetString::from_vec(
            payload.to_vec(),
        )),
    ));
    sm
}

/// The submit_sm_resp message_id.
pub fn message_id(resp: &Command) -> String {
    match resp.pdu() {
        Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_owned(),
        other => panic!("not a submit_sm_resp with body: {other:?}"),
    }
}

/// The short_message as text (receipts are ASCII).
pub fn text_of(d: &DeliverSm) -> String {
    String::from_utf8(d.short_message().to_vec()).expect("ascii receipt")
}

pub fn receipted_id(d: &DeliverSm) -> Option<String> {
    d.tlvs().iter().find_map(|t| match t.value() {
        Some(TlvValue::ReceiptedMessageId(id)) => Some(id.as_str().to_owned()),
        _ => None,
    })
}

pub fn message_state(d: &DeliverSm) -> Option<MessageState> {
    d.tlvs().iter().find_map(|t| match t.value() {
        Some(TlvValue::MessageState(s)) => Some(*s),
        _ => None,
    })
}

pub fn ussd_op(d: &DeliverSm) -> Option<u8> {
    d.tlvs().iter().find_map(|t| match t.value() {
        Some(TlvValue::UssdServiceOp(op)) => Some(u8::from(*op)),
        _ => None,
    })
}

/// GSM 03.38 unpacked encoding of ASCII letters, digits, space and basic punctuation.
pub fn gsm(text: &str) -> Vec<u8> {
    assert!(
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" .,:!?-".contains(&b)),
        "gsm() only maps simple ASCII"
    );
    text.as_bytes().to_vec()
}

pub fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_be_bytes).collect()
}
