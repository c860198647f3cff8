//! The contract between the pinpost daemon and its channel drivers.
//!
//! Layout:
//! - this file: [`Channel`], the message handed to a driver ([`OutboundMessage`]), what a
//!   driver answers ([`Accepted`], [`SendError`]), what it reports later ([`Receipt`]).
//! - [`testkit`] — checks every driver must pass against a peer (fake or real).
//!
//! A driver never sees the queue, the database or the HTTP API. It gets a rendered message
//! whose body is a [`SecretString`] (it carries the PIN), submits it to its peer and says
//! how that went, classified so the queue can decide without parsing text. Receipts that
//! arrive later go to the [`ReceiptSink`] the driver was built with; the daemon correlates
//! them through the database by `(channel, provider reference)`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub mod testkit;

/// The configured name of one channel instance (`[[channel]] id`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(Arc<str>);

impl ChannelId {
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", &self.0)
    }
}

/// What sort of device a channel reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    Sms,
    Ussd,
    Pager,
    Fax,
    Email,
    Carnav,
}

/// What the address of an [`OutboundMessage`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    /// E.164 with a leading `+`.
    Msisdn,
    Email,
    PagerId,
    /// A dialable number (E.164 or a local dial string).
    FaxNumber,
    VehicleId,
}

/// Static facts about a channel that the dispatcher plans with.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub kind: ChannelKind,
    pub address: AddressKind,
    /// Whether a receipt (DLR, device acknowledgement) follows an accepted send.
    pub receipts: bool,
    /// The longest body, in characters, the channel will carry (after splitting).
    pub max_body_chars: usize,
    /// How many sends may be outstanding at once; the dispatcher never exceeds it.
    pub window: usize,
}

/// One message to deliver. The body is secret because it carries the PIN.
pub struct OutboundMessage {
    /// The delivery this message belongs to; for logs and correlation data, never secret.
    pub delivery_id: String,
    /// The device address, of the channel's [`AddressKind`].
    pub address: String,
    /// The rendered text, PIN included.
    pub body: SecretString,
    /// No attempt may be made after this instant; drivers that can tell the peer (SMPP
    /// validity period, MQTT message expiry) pass it on.
    pub expires_at: Option<OffsetDateTime>,
}

impl fmt::Debug for OutboundMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMessage")
            .field("delivery_id", &self.delivery_id)
            .field("address", &self.address)
            .field("body", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A peer took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The peer's reference for each part it accepted (SMPP message_id per segment, SMTP
    /// queue id, MQTT correlation id). Never empty.
    pub provider_refs: Vec<String>,
    /// Whether a [`Receipt`] for these references will follow.
    pub receipt_expected: bool,
}

/// Why a send did not go through, classified for the queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Retry with backoff; counts as an attempt.
    #[error("transient failure: {reason}")]
    Transient { reason: String },
    /// The peer asked us to slow down; retry after the pause, not counted as an attempt.
    #[error("throttled by peer, retry after {retry_after:?}")]
    Throttled { retry_after: Duration },
    /// Never retry this device: the peer refused the message for good.
    #[error("permanent failure {code}: {reason}")]
    Permanent { code: String, reason: String },
    /// The request reached the peer but no answer came: it may have been accepted.
    #[error("outcome unknown: {reason}")]
    InDoubt { reason: String },
    /// Not connected (not bound, broker down): nothing was written to the peer.
    #[error("channel unavailable: {reason}")]
    Unavailable { reason: String },
}

impl SendError {
    /// A short, stable name of the class, for the database and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            SendError::Transient { .. } => "transient",
            SendError::Throttled { .. } => "throttled",
            SendError::Permanent { .. } => "permanent",
            SendError::InDoubt { .. } => "in_doubt",
            SendError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Whether a channel can take work now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Connecting, binding, or waiting to reconnect.
    Down {
        reason: String,
    },
}

impl Health {
    pub fn is_up(&self) -> bool {
        matches!(self, Health::Up)
    }
}

/// The final (or intermediate) word of the network on one accepted part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// Reached the device (SMPP DELIVRD, head-unit ack, USSN confirm).
    Delivered,
    /// Will not reach it (UNDELIV, REJECTD, DELETED).
    Undeliverable,
    /// The network gave up (EXPIRED).
    Expired,
    /// Not final (ENROUTE, ACCEPTD); ignored by the queue except for logging.
    Pending,
    /// The peer said something it could not classify (UNKNOWN).
    Unknown,
}

impl ReceiptStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, ReceiptStatus::Pending)
    }
}

/// A receipt for one provider reference.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub channel: ChannelId,
    /// The reference as the peer wrote it in the receipt (case, base and leading zeros may
    /// differ from the one in [`Accepted`]; the daemon normalises).
    pub provider_ref: String,
    pub status: ReceiptStatus,
    /// The peer's own error code, when it gave one (SMPP `err:` field, network error TLV).
    pub error_code: Option<String>,
    pub received_at: OffsetDateTime,
}

/// Where a driver posts receipts. Cheap to clone.
pub type ReceiptSink = mpsc::Sender<Receipt>;

/// A receipt and the means to say it is stored. The daemon fires `stored` once the receipt
/// is durable; a driver that can delay its answer to the peer (SMPP deliver_sm_resp) answers
/// only then, so a crash between the two never loses a receipt the peer considers handed
/// over. Dropping `stored` unfired means "not stored": the peer should send it again.
#[derive(Debug)]
pub struct DurableReceipt {
    pub receipt: Receipt,
    pub stored: tokio::sync::oneshot::Sender<()>,
}

/// Where a driver posts receipts it acknowledges only once they are stored.
pub type DurableReceiptSink = mpsc::Sender<DurableReceipt>;

/// A channel driver. Implementations are cheap handles over a connection actor.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    fn id(&self) -> &ChannelId;
    fn capabilities(&self) -> &Capabilities;
    /// Submit one message. Must not log the body.
    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError>;
    /// Bound? Broker connected? Modem answers AT?
    async fn health(&self) -> Health;
    /// How many times since start the peer answered "slow down" (SMPP ESME_RTHROTTLED or
    /// ESME_RMSGQFUL), counting each retried part, whether or not the send finally went
    /// through. Drivers whose peers have no such answer report 0.
    fn throttled_total(&self) -> u64 {
        0
    }
    /// Unbind / QUIT / DISCONNECT, within a bound. Idempotent.
    async fn shutdown(&self) {}
    /// Change the submit rate of the connection behind this handle while it runs
    /// (`None`: no limit). Returns false when the driver has no rate limit to change.
    fn set_tps(&self, max_tps: Option<u32>) -> bool {
        let _ = max_tps;
        false
    }
}
