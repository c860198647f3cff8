//! Car-navigation push channel for pinpost: PINs to vehicle head units over MQTT 5, through
//! the carmaker's telematics broker (rumqttc's v5 client, TLS by rustls with the ring provider).
//!
//! Layout:
//! - this file: [`PushChannel`], the cheap `Clone` handle, and its [`Channel`] impl (the send
//!   path: address, length and expiry checks, building the PUBLISH, waiting for its outcome).
//! - `config`: [`PushConfig`] and its validation; topic templates and vehicle ids.
//! - `session`: the connection actor that owns rumqttc's event loop (connect with a persistent
//!   session, subscribe to the response topic, packet ids and PUBACK matching, head-unit
//!   acknowledgements to receipts, reconnect with backoff, DISCONNECT).
//! - `message`: the JSON payload, the PUBLISH properties (message expiry, correlation data,
//!   response topic, content type) and the classification of PUBACK reason codes.
//! - `receipt`: head-unit acknowledgements to [`Receipt`](pinpost_channel_core::Receipt)s.
//! - `tls`: the rustls client config (CA file or webpki roots, client certificate).
//! - `tests/`: `mosquitto.rs` (a real Mosquitto 2 broker per test, simulated head units),
//!   `fake_broker.rs` (scripted PUBACK failures), `log_canary.rs`, `support/` (the broker
//!   runner and the head-unit simulator), `tls/` (the test-only PKI).
//!
//! "Accepted" means the broker answered the QoS 1 PUBLISH with a PUBACK whose reason code is
//! Success (0x00) or No Matching Subscribers (0x10); the provider reference is the
//! correlation id sent as Correlation Data. "Delivered" is the head unit's own answer on the
//! response topic, carrying that Correlation Data, and arrives as a receipt.

mod config;
mod message;
mod receipt;
mod session;
mod tls;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pinpost_channel_core::{
    Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, ExposeSecret, Health,
    OutboundMessage, ReceiptSink, SendError,
};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

pub use config::{
    CLIENT_ID_PLACEHOLDER, ConfigError, MAX_VEHICLE_ID_LEN, PushConfig, VEHICLE_ID_PLACEHOLDER,
};
pub use message::{CONTENT_TYPE, QUOTA_RETRY_AFTER};
pub use receipt::ack_status;

use session::{Actor, Command};

/// The longest PIN text, in characters, one push carries.
pub const MAX_BODY_CHARS: usize = 1024;

/// A handle on one push channel. Clones share the same broker session; when the last clone is
/// dropped without [`Channel::shutdown`], the actor disconnects and stops on its own.
#[derive(Clone)]
pub struct PushChannel {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Stops the actor when the last handle goes away.
struct Owner {
    closing: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

impl std::fmt::Debug for PushChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushChannel")
            .field("id", &self.shared.cfg.id)
            .finish_non_exhaustive()
    }
}

/// State shared by the handle and the connection actor.
pub(crate) struct Shared {
    pub(crate) cfg: PushConfig,
    pub(crate) response_topic: String,
    caps: Capabilities,
    link: Mutex<Link>,
    commands: Option<mpsc::Sender<Command>>,
    /// Cancelled when shutdown starts (or the last handle is dropped): no new sends.
    pub(crate) closing: CancellationToken,
    /// Cancelled by the actor as it exits.
    pub(crate) finished: CancellationToken,
}

enum Link {
    Down(String),
    Up,
    Closed,
}

impl Shared {
    fn lock_link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_down(&self, reason: String) {
        let mut l = self.lock_link();
        if !matches!(*l, Link::Closed) {
            *l = Link::Down(reason);
        }
    }

    pub(crate) fn set_up(&self) {
        let mut l = self.lock_link();
        if !matches!(*l, Link::Closed) {
            *l = Link::Up;
        }
    }

    pub(crate) fn set_closed(&self) {
        *self.lock_link() = Link::Closed;
    }

    pub(crate) fn down_reason(&self) -> String {
        match &*self.lock_link() {
            Link::Down(reason) => reason.clone(),
            Link::Up => "reconnecting".into(),
            Link::Closed => "channel shut down".into(),
        }
    }

    fn health(&self) -> Health {
        if self.closing.is_cancelled() {
            return Health::Down {
                reason: "channel shut down".into(),
            };
        }
        match &*self.lock_link() {
            Link::Up => Health::Up,
            Link::Down(reason) => Health::Down {
                reason: reason.clone(),
            },
            Link::Closed => Health::Down {
                reason: "channel shut down".into(),
            },
        }
    }
}

fn unavailable(reason: impl Into<String>) -> SendError {
    SendError::Unavailable {
        reason: reason.into(),
    }
}

impl PushChannel {
    /// Start the channel: spawns the connection actor, which connects to `cfg.broker_url`,
    /// subscribes to the response topic and reconnects with backoff until
    /// [`Channel::shutdown`]. Returns at once; `health()` turns Up once the broker answered
    /// CONNACK and confirmed the subscription. An invalid config keeps the channel Down with
    /// the reason. Must be called inside a tokio runtime.
    pub fn start(cfg: PushConfig, receipts: ReceiptSink) -> PushChannel {
        let caps = Capabilities {
            kind: ChannelKind::Carnav,
            address: AddressKind::VehicleId,
            receipts: true,
            max_body_chars: MAX_BODY_CHARS,
            window: usize::from(cfg.window.max(1)),
        };
        let response_topic = cfg.resolved_response_topic();
        let closing = CancellationToken::new();
        let finished = CancellationToken::new();
        let owner = Arc::new(Owner {
            closing: closing.clone(),
        });
        match cfg.validate() {
            Err(e) => {
                let shared = Arc::new(Shared {
                    cfg,
                    response_topic,
                    caps,
                    link: Mutex::new(Link::Down(e.to_string())),
                    commands: None,
                    closing,
                    finished: finished.clone(),
                });
                tracing::error!(channel = %shared.cfg.id, error = %e, "invalid push channel config");
                finished.cancel();
                PushChannel {
                    shared,
                    _owner: owner,
                }
            }
            Ok(()) => {
                let (tx, rx) = mpsc::channel(usize::from(cfg.window).max(16));
                let shared = Arc::new(Shared {
                    cfg,
                    response_topic,
                    caps,
                    link: Mutex::new(Link::Down("connecting".into())),
                    commands: Some(tx),
                    closing,
                    finished,
                });
                let actor = Actor::new(shared.clone(), rx, receipts);
                tokio::spawn(actor.run());
                PushChannel {
                    shared,
                    _owner: owner,
                }
            }
        }
    }

    /// The config the channel runs with.
    pub fn config(&self) -> &PushConfig {
        &self.shared.cfg
    }

    async fn submit(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        if self.shared.closing.is_cancelled() {
            return Err(unavailable("channel shut down"));
        }
        let cfg = &self.shared.cfg;
        let topic = cfg
            .vehicle_topic(&msg.address)
            .map_err(|reason| SendError::Permanent {
                code: "invalid_address".into(),
                reason,
            })?;
        if msg.body.expose_secret().chars().count() > MAX_BODY_CHARS {
            return Err(SendError::Permanent {
                code: "message_too_long".into(),
                reason: format!("body longer than {MAX_BODY_CHARS} characters"),
            });
        }
        // Refuse an expired PIN before anything else; the interval itself is set when the
        // packet is handed to the connection.
        message::expiry_interval(msg.expires_at, OffsetDateTime::now_utc())?;
        let Some(commands) = &self.shared.commands else {
            return Err(unavailable(self.shared.down_reason()));
        };
        if let Health::Down { reason } = self.shared.health() {
            return Err(unavailable(format!("not connected: {reason}")));
        }
        let correlation = message::correlation_id(&msg.delivery_id);
        let publish = message::publish(
            topic,
            message::payload(msg),
            &correlation,
            &self.shared.response_topic,
        );
        let (reply, outcome) = oneshot::channel();
        let cmd = Command {
            publish,
            expires_at: msg.expires_at,
            correlation: correlation.clone(),
            delivery_id: msg.delivery_id.clone(),
            reply,
        };
        if commands.send(cmd).await.is_err() {
            return Err(unavailable("channel shut down"));
        }
        let result = outcome.await.unwrap_or_else(|_| {
            Err(SendError::InDoubt {
                reason: format!("connection actor stopped (correlation id {correlation})"),
            })
        });
        match &result {
            Ok(_) => debug!(correlation_id = %correlation, "accepted by the broker"),
            Err(e) => {
                debug!(correlation_id = %correlation, class = e.class(), error = %e, "not accepted")
            }
        }
        result
    }
}

#[async_trait]
impl Channel for PushChannel {
    fn id(&self) -> &ChannelId {
        &self.shared.cfg.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.shared.caps
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let span = tracing::debug_span!(
            "push_send",
            channel = %self.shared.cfg.id,
            delivery_id = %msg.delivery_id
        );
        self.submit(msg).instrument(span).await
    }

    async fn health(&self) -> Health {
        self.shared.health()
    }

    /// Refuses new sends at once, waits for the PUBACKs of sends in flight (at most
    /// `puback_timeout`), sends DISCONNECT (at most 5 s) and closes the connection. The
    /// broker keeps the session for `session_expiry`. Idempotent.
    async fn shutdown(&self) {
        self.shared.closing.cancel();
        let bound = self.shared.cfg.puback_timeout + std::time::Duration::from_secs(6);
        if tokio::time::timeout(bound, self.shared.finished.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(channel = %self.shared.cfg.id, "shutdown did not finish in time");
        }
        self.shared.set_closed();
    }
}
