//! The SMPP channel driver: a [`Channel`] over one rusmppc transceiver bind.
//!
//! Layout:
//! - this file: [`SmppChannel`], the cheap `Clone` handle, and its [`Channel`] impl (the send
//!   path: window, rate, submit, classification, throttle retry).
//! - `config`: [`SmppConfig`] and its validation.
//! - `session`: the connection actor (connect, bind, event loop, deliver_sm answers,
//!   reconnect with backoff, unbind) and the matching of submit_sm_resp to senders.
//! - `transport`: TCP / TLS (rustls, ring) from the URL, or any caller-supplied stream.
//! - `encoding`: GSM 03.38 / UCS-2 choice and concatenation.
//! - `pdu`: submit_sm and bind_transceiver construction, destination and validity period.
//! - `status`: command_status classification.
//! - `receipt`: receipt text parsing and deliver_sm classification.
//! - `limiter`: the bind's token bucket and throttle pause.
//!
//! "Accepted" means the SMSC answered every part's submit_sm with ESME_ROK; the message ids
//! of those answers are the provider references, in part order. A send is never resent by
//! the driver once its PDU was written, except after a throttling answer (which means the
//! SMSC did not take it).

mod config;
mod encoding;
mod limiter;
mod pdu;
pub(crate) mod receipt;
mod session;
mod status;
mod transport;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pinpost_channel_core::{
    Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, DurableReceiptSink,
    ExposeSecret, Health, OutboundMessage, ReceiptSink, SendError,
};
use rusmpp::pdus::SubmitSm;
use rusmpp::{CommandId, Pdu};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

pub use config::{ConfigError, InterfaceVersion, SmppConfig, SmppService, source_ton_npi};
pub use receipt::{ParsedReceipt, message_state_to_status, parse_receipt_text, stat_to_status};

use encoding::EncodeError;
use session::{Link, NoResponse};
use status::StatusClass;
use transport::{BoxIo, Connector};

/// The most characters one SMS send carries: eight concatenated GSM parts.
pub const SMS_MAX_BODY_CHARS: usize = 153 * 8;
/// The most characters one USSD push carries.
pub const USSD_MAX_BODY_CHARS: usize = 182;

/// A handle on one SMPP channel. Clones share the same bind; when the last clone is dropped
/// without [`Channel::shutdown`], the actor unbinds and stops on its own.
#[derive(Clone)]
pub struct SmppChannel {
    shared: Arc<Shared>,
    view: Arc<View>,
    _owner: Arc<Owner>,
}

/// What one handle sends as: its channel id and service (in `cfg`), capabilities and
/// encoding limits. A USSD handle on an SMS bind ([`SmppChannel::ussd_on_this_bind`]) has
/// its own view over the same connection.
struct View {
    cfg: SmppConfig,
    caps: Capabilities,
    limits: encoding::Limits,
    /// Throttling answers to this handle's submits.
    throttled: AtomicU64,
}

/// Stops the actor when the last handle goes away.
struct Owner {
    closing: CancellationToken,
    stop: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.closing.cancel();
        self.stop.cancel();
    }
}

impl std::fmt::Debug for SmppChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmppChannel")
            .field("id", &self.shared.cfg.id)
            .finish_non_exhaustive()
    }
}

/// State shared by the handle, its senders and the connection actor.
pub(crate) struct Shared {
    pub(crate) cfg: SmppConfig,
    caps: Capabilities,
    link: Mutex<LinkState>,
    window: Semaphore,
    limiter: limiter::Limiter,
    concat_ref: AtomicU8,
    /// Cancelled when shutdown starts: no new sends, waiting sends give up.
    closing: CancellationToken,
    /// Cancelled once in-flight sends drained: the actor unbinds and exits.
    pub(crate) stop: CancellationToken,
    /// Cancelled by the actor as it exits.
    pub(crate) finished: CancellationToken,
    /// The id of a USSD handle sharing this bind: USSD confirmations are posted under it.
    pub(crate) ussd_channel: Arc<Mutex<Option<ChannelId>>>,
}

enum LinkState {
    Down(String),
    Up(Arc<Link>),
    Closed,
}

impl Shared {
    fn lock_link(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.link.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_down(&self, reason: String) {
        let mut l = self.lock_link();
        if !matches!(*l, LinkState::Closed) {
            *l = LinkState::Down(reason);
        }
    }

    pub(crate) fn set_up(&self, link: Arc<Link>) {
        let mut l = self.lock_link();
        if !matches!(*l, LinkState::Closed) {
            *l = LinkState::Up(link);
        }
    }

    pub(crate) fn set_closed(&self) {
        *self.lock_link() = LinkState::Closed;
    }

    fn current(&self) -> Result<Arc<Link>, String> {
        if self.closing.is_cancelled() {
            return Err("channel shut down".into());
        }
        match &*self.lock_link() {
            LinkState::Up(link) => Ok(link.clone()),
            LinkState::Down(reason) => Err(format!("not bound: {reason}")),
            LinkState::Closed => Err("channel shut down".into()),
        }
    }
}

fn unavailable(reason: impl Into<String>) -> SendError {
    SendError::Unavailable {
        reason: reason.into(),
    }
}

/// Where receipts go: posted and answered at once, or answered once stored.
#[derive(Clone)]
pub(crate) enum Sink {
    Plain(ReceiptSink),
    Durable(DurableReceiptSink),
}

impl SmppChannel {
    /// Start the channel: spawns the connection actor, which connects to `cfg.url`, binds,
    /// and reconnects with backoff until [`Channel::shutdown`]. Returns at once; `health()`
    /// turns Up once bound. An invalid config keeps the channel Down with the reason. Must be
    /// called inside a tokio runtime.
    pub fn start(cfg: SmppConfig, receipts: ReceiptSink) -> SmppChannel {
        let connector = cfg.validate().map_err(|e| e.to_string()).and_then(|()| {
            transport::url_connector(&cfg.url, cfg.tls_ca_file.as_deref(), cfg.response_timeout)
        });
        Self::spawn(cfg, Sink::Plain(receipts), connector)
    }

    /// Like [`SmppChannel::start`], but each receipt's deliver_sm is answered only once the
    /// daemon fires [`pinpost_channel_core::DurableReceipt::stored`]; if it is dropped unfired the answer is
    /// ESME_RX_T_APPN, so the SMSC sends the receipt again.
    pub fn start_durable(cfg: SmppConfig, receipts: DurableReceiptSink) -> SmppChannel {
        let connector = cfg.validate().map_err(|e| e.to_string()).and_then(|()| {
            transport::url_connector(&cfg.url, cfg.tls_ca_file.as_deref(), cfg.response_timeout)
        });
        Self::spawn(cfg, Sink::Durable(receipts), connector)
    }

    /// Start the channel over streams from `connect` (called for each connect and
    /// reconnect) instead of the URL; `cfg.url` is then only checked for syntax. For tests
    /// and embedding: any `AsyncRead + AsyncWrite`, e.g. one half of `tokio::io::duplex`.
    pub fn start_with_connector<F, Fut, S>(
        cfg: SmppConfig,
        receipts: ReceiptSink,
        connect: F,
    ) -> SmppChannel
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let connect = Arc::new(connect);
        let connector: Connector = Arc::new(move || {
            let connect = connect.clone();
            Box::pin(async move { connect().await.map(|s| Box::new(s) as BoxIo) })
        });
        let connector = cfg
            .validate()
            .map_err(|e| e.to_string())
            .map(|()| connector);
        Self::spawn(cfg, Sink::Plain(receipts), connector)
    }

    fn spawn(cfg: SmppConfig, receipts: Sink, connector: Result<Connector, String>) -> SmppChannel {
        let (kind, limits, max_body_chars) = match cfg.service {
            SmppService::Sms => (ChannelKind::Sms, encoding::SMS, SMS_MAX_BODY_CHARS),
            SmppService::Ussd { .. } => (ChannelKind::Ussd, encoding::USSD, USSD_MAX_BODY_CHARS),
        };
        let window = cfg.window.clamp(1, Semaphore::MAX_PERMITS);
        let caps = Capabilities {
            kind,
            address: AddressKind::Msisdn,
            receipts: cfg.request_receipts,
            max_body_chars,
            window,
        };
        let view = Arc::new(View {
            cfg: cfg.clone(),
            caps: caps.clone(),
            limits,
            throttled: AtomicU64::new(0),
        });
        let shared = Arc::new(Shared {
            ussd_channel: Arc::new(Mutex::new(None)),
            caps,
            link: Mutex::new(LinkState::Down("connecting".into())),
            window: Semaphore::new(window),
            limiter: limiter::Limiter::new(cfg.max_tps),
            concat_ref: AtomicU8::new(rand::random()),
            closing: CancellationToken::new(),
            stop: CancellationToken::new(),
            finished: CancellationToken::new(),
            cfg,
        });
        tokio::spawn(session::run(shared.clone(), connector, receipts));
        let owner = Arc::new(Owner {
            closing: shared.closing.clone(),
            stop: shared.stop.clone(),
        });
        SmppChannel {
            shared,
            view,
            _owner: owner,
        }
    }

    /// A USSD channel (`ussd_service_op` = `op`) on this channel's bind: same connection,
    /// window and TPS budget; USSD confirmations arriving on the bind are posted under `id`.
    pub fn ussd_on_this_bind(&self, id: ChannelId, op: u8) -> SmppChannel {
        let mut cfg = self.shared.cfg.clone();
        cfg.id = id.clone();
        cfg.service = SmppService::Ussd { op };
        let caps = Capabilities {
            kind: ChannelKind::Ussd,
            max_body_chars: USSD_MAX_BODY_CHARS,
            ..self.shared.caps.clone()
        };
        *self
            .shared
            .ussd_channel
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(id);
        SmppChannel {
            shared: self.shared.clone(),
            view: Arc::new(View {
                cfg,
                caps,
                limits: encoding::USSD,
                throttled: AtomicU64::new(0),
            }),
            _owner: self._owner.clone(),
        }
    }

    async fn send_message(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let shared = &*self.shared;
        // Refuse at once when not bound: nothing is written.
        shared.current().map_err(unavailable)?;

        let destination = pdu::destination(&msg.address).ok_or_else(|| SendError::Permanent {
            code: "invalid_address".into(),
            reason: "the address is not E.164 (+ and up to 15 digits)".into(),
        })?;
        let validity = match msg.expires_at {
            None => None,
            Some(at) if at <= OffsetDateTime::now_utc() => {
                return Err(SendError::Permanent {
                    code: "expired".into(),
                    reason: "the message expired before it was submitted".into(),
                });
            }
            Some(at) => Some(pdu::validity_period(at)),
        };
        let text = msg.body.expose_secret();
        let chars = text.chars().count();
        let view = &*self.view;
        if chars > view.caps.max_body_chars {
            return Err(SendError::Permanent {
                code: "message_too_long".into(),
                reason: format!(
                    "{chars} characters; this channel carries at most {}",
                    view.caps.max_body_chars
                ),
            });
        }
        let encoded = encoding::encode(text, &view.limits).map_err(|e| match e {
            EncodeError::TooLong { parts } => SendError::Permanent {
                code: "message_too_long".into(),
                reason: format!("the text needs {parts} parts"),
            },
        })?;
        let concat_ref = if encoded.parts.len() > 1 {
            shared.concat_ref.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let pdus = pdu::submit_sms(
            &view.cfg,
            &destination,
            validity.as_deref(),
            &encoded,
            concat_ref,
        )?;
        drop(encoded);

        let started = Instant::now();
        let total = pdus.len();
        let mut refs = Vec::with_capacity(total);
        for (i, part) in pdus.into_iter().enumerate() {
            match self.submit_part(part, started, &msg.delivery_id).await {
                Ok(id) => refs.push(id),
                Err(e) => {
                    if i > 0 {
                        warn!(
                            part = i + 1,
                            parts = total,
                            class = e.class(),
                            "a later part failed after earlier parts were accepted"
                        );
                    }
                    return Err(e);
                }
            }
        }
        debug!(parts = total, "accepted");
        Ok(Accepted {
            provider_refs: refs,
            receipt_expected: view.caps.receipts,
        })
    }

    /// Submit one part: window slot, rate token, write, wait for submit_sm_resp; retry the
    /// same PDU after throttling while the budget lasts.
    async fn submit_part(
        &self,
        part: SubmitSm,
        started: Instant,
        delivery_id: &str,
    ) -> Result<String, SendError> {
        let shared = &*self.shared;
        let cfg = &shared.cfg;
        loop {
            let permit = tokio::select! {
                _ = shared.closing.cancelled() => return Err(unavailable("channel shut down")),
                p = shared.window.acquire() => p.map_err(|_| unavailable("channel shut down"))?,
            };
            tokio::select! {
                _ = shared.closing.cancelled() => return Err(unavailable("channel shut down")),
                () = shared.limiter.acquire() => {}
            }
            let link = shared.current().map_err(unavailable)?;

            let written = tokio::time::timeout(
                cfg.response_timeout,
                link.client.no_wait().submit_sm(part.clone()),
            )
            .await;
            let seq = match written {
                Ok(Ok(seq)) => seq,
                Ok(Err(e)) => {
                    return Err(unavailable(format!(
                        "submit_sm not written: {}",
                        session::describe(&e)
                    )));
                }
                // Queued in the connection but not confirmed written: it may still go out.
                Err(_) => {
                    return Err(SendError::InDoubt {
                        reason: format!(
                            "submit_sm not confirmed written within {:?}",
                            cfg.response_timeout
                        ),
                    });
                }
            };
            let response = link
                .pending
                .wait(seq, cfg.response_timeout, delivery_id)
                .await;
            drop(permit);
            let response = match response {
                Ok(r) => r,
                Err(NoResponse::Timeout) => {
                    return Err(SendError::InDoubt {
                        reason: format!("no submit_sm_resp within {:?}", cfg.response_timeout),
                    });
                }
                Err(NoResponse::Closed) => {
                    return Err(SendError::InDoubt {
                        reason: "the connection closed with the submit_sm in flight".into(),
                    });
                }
            };
            let st = u32::from(response.status());
            let class = match (response.id(), status::classify(st)) {
                // A generic_nack is never an acceptance, whatever its status says.
                (CommandId::GenericNack, StatusClass::Accepted) => StatusClass::Transient,
                (_, class) => class,
            };
            match class {
                StatusClass::Accepted => {
                    let id = match response.pdu() {
                        Some(Pdu::SubmitSmResp(r)) => r.message_id().as_str().to_owned(),
                        _ => String::new(),
                    };
                    if id.is_empty() {
                        warn!("submit_sm_resp ESME_ROK without a message_id: no receipt can match");
                    }
                    return Ok(id);
                }
                StatusClass::Throttled => {
                    self.view.throttled.fetch_add(1, Ordering::Relaxed);
                    shared.limiter.pause(cfg.throttle_pause);
                    if started.elapsed() + cfg.throttle_pause > cfg.throttle_retry_budget {
                        return Err(SendError::Throttled {
                            retry_after: cfg.throttle_pause,
                        });
                    }
                    debug!(
                        status = status::name(st),
                        "throttled; the bind pauses, then the part is retried"
                    );
                }
                StatusClass::Transient => {
                    return Err(SendError::Transient {
                        reason: format!(
                            "{} {} ({})",
                            if response.id() == CommandId::GenericNack {
                                "generic_nack"
                            } else {
                                "submit_sm_resp"
                            },
                            status::name(st),
                            status::code(st)
                        ),
                    });
                }
                StatusClass::Permanent => {
                    return Err(SendError::Permanent {
                        code: status::code(st),
                        reason: format!("submit_sm_resp {}", status::name(st)),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl Channel for SmppChannel {
    fn id(&self) -> &ChannelId {
        &self.view.cfg.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.view.caps
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let span = tracing::info_span!(
            "smpp_send",
            channel = %self.shared.cfg.id,
            delivery_id = %msg.delivery_id
        );
        let out = self.send_message(msg).instrument(span.clone()).await;
        if let Err(e) = &out {
            span.in_scope(|| debug!(class = e.class(), error = %e, "send failed"));
        }
        out
    }

    fn throttled_total(&self) -> u64 {
        self.view.throttled.load(Ordering::Relaxed)
    }

    /// The bind's rate: a USSD handle on a shared bind changes the SMS channel's rate too.
    fn set_tps(&self, max_tps: Option<u32>) -> bool {
        self.shared.limiter.set_rate(max_tps);
        true
    }

    async fn health(&self) -> Health {
        if self.shared.closing.is_cancelled() {
            return Health::Down {
                reason: "shut down".into(),
            };
        }
        match &*self.shared.lock_link() {
            LinkState::Up(_) => Health::Up,
            LinkState::Down(reason) => Health::Down {
                reason: reason.clone(),
            },
            LinkState::Closed => Health::Down {
                reason: "shut down".into(),
            },
        }
    }

    /// Refuse new sends, let in-flight submits finish (up to the response timeout), unbind
    /// (up to 5 s) and close. Idempotent.
    async fn shutdown(&self) {
        let shared = &*self.shared;
        shared.closing.cancel();
        let window = u32::try_from(shared.caps.window).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            shared.cfg.response_timeout,
            shared.window.acquire_many(window),
        )
        .await;
        shared.stop.cancel();
        drop(drained);
        let bound = session::UNBIND_WAIT + std::time::Duration::from_secs(2);
        if tokio::time::timeout(bound, shared.finished.cancelled())
            .await
            .is_err()
        {
            warn!(channel = %shared.cfg.id, "smpp actor did not stop in time");
        }
        shared.set_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpost_channel_core::SecretString;

    #[tokio::test]
    async fn an_invalid_config_stays_down_with_the_reason_and_refuses_sends() {
        let mut cfg = SmppConfig::new(
            ChannelId::new("bad"),
            "ftp://nowhere",
            "pinpost",
            SecretString::from("pw".to_owned()),
            "PINPOST",
        );
        cfg.window = 3;
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let ch = SmppChannel::start(cfg, tx);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        match ch.health().await {
            Health::Down { reason } => assert!(reason.contains("url"), "{reason}"),
            Health::Up => panic!("an invalid config came up"),
        }
        let msg = pinpost_channel_core::testkit::message("d1", "+819012345678", "x");
        assert!(matches!(
            ch.send(&msg).await,
            Err(SendError::Unavailable { .. })
        ));
        assert_eq!(ch.capabilities().window, 3);
        assert_eq!(ch.capabilities().kind, ChannelKind::Sms);
        assert_eq!(ch.capabilities().max_body_chars, 153 * 8);
        ch.shutdown().await;
        ch.shutdown().await;
        assert!(!ch.health().await.is_up());
    }
}
