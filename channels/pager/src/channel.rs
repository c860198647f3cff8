//! [`PagerChannel`]: the cheap handle, and the actor task that owns the session.
//!
//! One task owns the connection (TCP/TLS for SNPP, the serial line for TAP). It opens a
//! session when the channel starts (so health means something), keeps it for
//! `idle_timeout` after each page, then closes it (`QUIT`, `<EOT>`) and opens a new one on
//! the next page. A kept session is checked before it is used: if the peer closed it in the
//! meantime (SNPP `421`, TAP `<ESC><EOT>`, end of stream), a fresh one is opened. If a reused
//! session breaks before anything was submitted, the page is tried once more on a fresh
//! session. While the peer cannot be reached the channel is down and the task retries with
//! backoff; a send meanwhile tries once at once and answers `Unavailable` when that fails.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pinpost_channel_core::{
    Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, ExposeSecret, Health,
    OutboundMessage, ReceiptSink, SecretString, SendError,
};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{PagerConfig, SnppConfig, SnppMessageCommand, TapConfig};
use crate::snpp::Snpp;
use crate::tap::Tap;
use crate::text::{FitError, Shape, clean_for_snpp, clean_for_tap, fit_pin_first};

/// One page for the actor: the address checked, the text cleaned and fitted.
pub(crate) struct Page {
    pub delivery_id: String,
    pub pager_id: String,
    pub text: SecretString,
    pub expires_at: Option<OffsetDateTime>,
}

/// How one delivery attempt on a session went.
pub(crate) struct Outcome {
    pub result: Result<(), SendError>,
    /// The session can carry the next page.
    pub keep: bool,
    /// The session broke before anything was submitted: a fresh session may try again.
    pub retry_fresh: bool,
}

/// What the actor needs from a protocol.
pub(crate) trait Protocol: Send + 'static {
    type Session: Send + 'static;
    /// For provider references and logs.
    const NAME: &'static str;
    /// Connect and get the session ready for pages (greeting and login, or probe, login and
    /// go-ahead). The error is a reason for `Unavailable` and health.
    fn open(&mut self) -> impl Future<Output = Result<Self::Session, String>> + Send;
    /// Whether a kept session is still there (nothing unasked from the peer, no end of stream).
    fn is_alive(&mut self, s: &mut Self::Session) -> impl Future<Output = bool> + Send;
    fn deliver(
        &mut self,
        s: &mut Self::Session,
        page: &Page,
    ) -> impl Future<Output = Outcome> + Send;
    /// End the session politely (`QUIT`, `<EOT>`).
    fn close(&mut self, s: Self::Session) -> impl Future<Output = ()> + Send;
    /// Drop a broken session.
    fn discard(&mut self, s: Self::Session);
}

#[derive(Clone, Copy)]
struct Timing {
    idle: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

/// How long `shutdown` waits for the actor (an in-flight page, then the polite close).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);
/// How long the polite close may take at shutdown.
const CLOSE_BOUND: Duration = Duration::from_secs(5);

enum Cmd {
    Send(Page, oneshot::Sender<Result<Accepted, SendError>>),
    Shutdown(oneshot::Sender<()>),
}

/// How the handle shapes a text before the actor gets it.
#[derive(Clone, Copy)]
enum Shaping {
    /// One line, SNPP character rules.
    SnppLine,
    /// Several lines, SNPP character rules.
    SnppLines,
    /// One line, 7-bit ASCII.
    Tap,
}

/// A pager channel (SNPP or TAP). A cheap `Clone` handle over the actor task.
#[derive(Clone)]
pub struct PagerChannel {
    inner: Arc<Inner>,
}

struct Inner {
    id: ChannelId,
    caps: Capabilities,
    max_chars: usize,
    shaping: Shaping,
    /// None when the config was refused: the channel stays down.
    tx: Option<mpsc::Sender<Cmd>>,
    health: watch::Receiver<Health>,
    closed: AtomicBool,
}

impl PagerChannel {
    /// Start the channel: SNPP connects over TCP (or TLS for `snpps://`), TAP opens
    /// `device` (7E1, XON/XOFF) for each session. Must be called inside a tokio runtime.
    ///
    /// Pagers send no receipts: `receipts` is not used. A config that does not validate
    /// gives a channel that stays down with the reason and answers every send with
    /// `Unavailable`.
    pub fn start(cfg: PagerConfig, receipts: ReceiptSink) -> PagerChannel {
        drop(receipts);
        if let Err(e) = cfg.validate() {
            return Self::refused(&cfg, e.to_string());
        }
        match cfg {
            PagerConfig::Snpp(c) => match crate::snpp::connector(&c) {
                Ok(connect) => Self::spawn_snpp(c, connect),
                Err(e) => Self::refused(&PagerConfig::Snpp(c), e),
            },
            PagerConfig::Tap(c) => {
                let device = c.device.clone();
                let baud = c.baud;
                match c.dial.clone() {
                    None => {
                        let connect = move || {
                            let device = device.clone();
                            async move { crate::serial::open_serial(&device, baud) }
                        };
                        Self::spawn_tap(c, connect, false)
                    }
                    Some(number) => {
                        let init = c.modem_init.clone();
                        let timeout = c.connect_timeout;
                        let connect = move || {
                            let (device, number, init) =
                                (device.clone(), number.clone(), init.clone());
                            async move {
                                crate::serial::dial_up(&device, baud, &init, &number, timeout).await
                            }
                        };
                        Self::spawn_tap(c, connect, false)
                    }
                }
            }
        }
    }

    /// SNPP over streams from `connect` (called for each session; the tests hand it
    /// `tokio::io::duplex` halves). Nothing else opens a socket.
    pub fn start_snpp_with_connector<F, Fut, S>(
        cfg: SnppConfig,
        receipts: ReceiptSink,
        connect: F,
    ) -> PagerChannel
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        drop(receipts);
        if let Err(e) = cfg.validate() {
            return Self::refused(&PagerConfig::Snpp(cfg), e.to_string());
        }
        Self::spawn_snpp(cfg, connect)
    }

    /// TAP over streams from `connect`, one per session (a dialler that returns a connected
    /// modem data stream, or a function that opens a port). The stream is dropped after each
    /// session's logout.
    pub fn start_tap_with_connector<F, Fut, S>(
        cfg: TapConfig,
        receipts: ReceiptSink,
        connect: F,
    ) -> PagerChannel
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        drop(receipts);
        if let Err(e) = cfg.validate() {
            return Self::refused(&PagerConfig::Tap(cfg), e.to_string());
        }
        Self::spawn_tap(cfg, connect, false)
    }

    /// TAP over one already-connected stream (a direct line, a call a modem has already
    /// set up). The stream is kept across sessions: after a logout the next session probes
    /// on it again. When it fails (end of stream, I/O error) the channel is down for good.
    /// `cfg.device` and `cfg.baud` are not used.
    pub fn start_tap_with_stream<S>(
        cfg: TapConfig,
        receipts: ReceiptSink,
        stream: S,
    ) -> PagerChannel
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        drop(receipts);
        if let Err(e) = cfg.validate() {
            return Self::refused(&PagerConfig::Tap(cfg), e.to_string());
        }
        let mut stream = Some(stream);
        let connect = move || {
            let s = stream.take();
            async move {
                s.ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the line has failed"))
            }
        };
        Self::spawn_tap(cfg, connect, true)
    }

    fn spawn_snpp<F, Fut, S>(cfg: SnppConfig, connect: F) -> PagerChannel
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timing = Timing {
            idle: cfg.idle_timeout,
            reconnect_min: cfg.reconnect_min,
            reconnect_max: cfg.reconnect_max,
        };
        let shaping = match cfg.message_command {
            SnppMessageCommand::Mess => Shaping::SnppLine,
            SnppMessageCommand::Data | SnppMessageCommand::Auto => Shaping::SnppLines,
        };
        let (id, max) = (cfg.id.clone(), cfg.max_message_chars);
        let proto = Snpp::new(Arc::new(cfg), connect);
        Self::spawn(id, max, shaping, proto, timing)
    }

    fn spawn_tap<F, Fut, S>(cfg: TapConfig, connect: F, keep_line: bool) -> PagerChannel
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timing = Timing {
            idle: cfg.idle_timeout,
            reconnect_min: cfg.reconnect_min,
            reconnect_max: cfg.reconnect_max,
        };
        let (id, max) = (cfg.id.clone(), cfg.max_message_chars);
        let proto = Tap::new(Arc::new(cfg), connect, keep_line);
        Self::spawn(id, max, Shaping::Tap, proto, timing)
    }

    fn spawn<P: Protocol>(
        id: ChannelId,
        max_chars: usize,
        shaping: Shaping,
        proto: P,
        timing: Timing,
    ) -> PagerChannel {
        let (tx, rx) = mpsc::channel(16);
        let (health_tx, health) = watch::channel(Health::Down {
            reason: "connecting".into(),
        });
        tokio::spawn(run(id.clone(), proto, rx, health_tx, timing));
        PagerChannel {
            inner: Arc::new(Inner {
                caps: caps(max_chars),
                id,
                max_chars,
                shaping,
                tx: Some(tx),
                health,
                closed: AtomicBool::new(false),
            }),
        }
    }

    fn refused(cfg: &PagerConfig, reason: String) -> PagerChannel {
        warn!(channel = %cfg.id(), %reason, "pager channel not started");
        let (_, health) = watch::channel(Health::Down { reason });
        PagerChannel {
            inner: Arc::new(Inner {
                id: cfg.id().clone(),
                caps: caps(cfg.max_message_chars()),
                max_chars: cfg.max_message_chars(),
                shaping: Shaping::Tap,
                tx: None,
                health,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The text the pager will get: cleaned for the protocol and fitted with the PIN-first
    /// convention.
    fn shape(&self, body: &str) -> Result<String, FitError> {
        let max = self.inner.max_chars;
        match self.inner.shaping {
            Shaping::SnppLine => fit_pin_first(&clean_for_snpp(body), max, " "),
            Shaping::SnppLines => fit_pin_first(&clean_for_snpp(body), max, "\n"),
            Shaping::Tap => fit_pin_first(&clean_for_tap(body), max, " "),
        }
    }
}

fn caps(max_chars: usize) -> Capabilities {
    Capabilities {
        kind: ChannelKind::Pager,
        address: AddressKind::PagerId,
        receipts: false,
        max_body_chars: max_chars,
        window: 1,
    }
}

/// A pager ID as the protocols carry it: 1 to 32 printable ASCII characters, no spaces.
fn valid_pager_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_graphic())
}

fn expired(at: Option<OffsetDateTime>) -> bool {
    at.is_some_and(|t| t <= OffsetDateTime::now_utc())
}

/// A reference for an accepted page. SNPP levels 1 and 2 and TAP return none, so it is
/// made here: `<protocol>-<unix ms, hex>-<32 random bits, hex>`.
fn provider_ref(protocol: &str) -> String {
    let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    format!("{protocol}-{ms:x}-{:08x}", rand::random::<u32>())
}

#[async_trait]
impl Channel for PagerChannel {
    fn id(&self) -> &ChannelId {
        &self.inner.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SendError::Unavailable {
                reason: "channel shut down".into(),
            });
        }
        let Some(tx) = &self.inner.tx else {
            return Err(SendError::Unavailable {
                reason: match &*self.inner.health.borrow() {
                    Health::Down { reason } => reason.clone(),
                    Health::Up => "not started".into(),
                },
            });
        };
        if !valid_pager_id(&msg.address) {
            return Err(SendError::Permanent {
                code: "invalid_address".into(),
                reason: "a pager ID is 1 to 32 printable ASCII characters without spaces".into(),
            });
        }
        if expired(msg.expires_at) {
            return Err(SendError::Permanent {
                code: "expired".into(),
                reason: "the message expired before it was sent".into(),
            });
        }
        let text = self.shape(msg.body.expose_secret()).map_err(|e| match e {
            FitError::Empty => SendError::Permanent {
                code: "empty_message".into(),
                reason: e.to_string(),
            },
            FitError::FirstLineTooLong { .. } => SendError::Permanent {
                code: "message_too_long".into(),
                reason: e.to_string(),
            },
        })?;
        let page = Page {
            delivery_id: msg.delivery_id.clone(),
            pager_id: msg.address.clone(),
            text: SecretString::from(text),
            expires_at: msg.expires_at,
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        let stopped = || SendError::Unavailable {
            reason: "channel stopped".into(),
        };
        tx.send(Cmd::Send(page, reply_tx))
            .await
            .map_err(|_| stopped())?;
        reply_rx.await.map_err(|_| stopped())?
    }

    async fn health(&self) -> Health {
        if self.inner.closed.load(Ordering::Acquire) {
            return Health::Down {
                reason: "shut down".into(),
            };
        }
        self.inner.health.borrow().clone()
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let Some(tx) = &self.inner.tx else { return };
        let (done_tx, done_rx) = oneshot::channel();
        let ask = async {
            if tx.send(Cmd::Shutdown(done_tx)).await.is_ok() {
                let _ = done_rx.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, ask).await.is_err() {
            warn!(channel = %self.inner.id, "pager channel did not stop in time");
        }
    }
}

/// The actor: owns the session, serves sends one at a time.
async fn run<P: Protocol>(
    id: ChannelId,
    mut proto: P,
    mut rx: mpsc::Receiver<Cmd>,
    health: watch::Sender<Health>,
    timing: Timing,
) {
    let mut session: Option<P::Session> = None;
    let mut idle_at: Option<Instant> = None;
    let mut retry_at: Option<Instant> = Some(Instant::now());
    let mut backoff = timing.reconnect_min;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::Shutdown(done)) => {
                    rx.close();
                    if let Some(s) = session.take() {
                        let _ = tokio::time::timeout(CLOSE_BOUND, proto.close(s)).await;
                    }
                    health.send_replace(Health::Down { reason: "shut down".into() });
                    info!(channel = %id, protocol = P::NAME, "pager channel stopped");
                    let _ = done.send(());
                    return;
                }
                Some(Cmd::Send(page, reply)) => {
                    let result = deliver(&id, &mut proto, &mut session, &page, &health).await;
                    match &result {
                        Ok(_) => {
                            backoff = timing.reconnect_min;
                            retry_at = None;
                        }
                        Err(SendError::Unavailable { .. }) if session.is_none() && retry_at.is_none() => {
                            retry_at = Some(Instant::now() + backoff);
                        }
                        Err(_) => {}
                    }
                    idle_at = session.as_ref().map(|_| Instant::now() + timing.idle);
                    let _ = reply.send(result);
                }
            },
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(far)), if idle_at.is_some() && session.is_some() => {
                idle_at = None;
                if let Some(s) = session.take() {
                    debug!(channel = %id, protocol = P::NAME, "closing the idle session");
                    proto.close(s).await;
                }
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far)), if retry_at.is_some() && session.is_none() => {
                match proto.open().await {
                    Ok(s) => {
                        info!(channel = %id, protocol = P::NAME, "pager session open");
                        health.send_replace(Health::Up);
                        session = Some(s);
                        idle_at = Some(Instant::now() + timing.idle);
                        retry_at = None;
                        backoff = timing.reconnect_min;
                    }
                    Err(reason) => {
                        warn!(channel = %id, protocol = P::NAME, %reason, retry_in = ?backoff, "pager session failed to open");
                        health.send_replace(Health::Down { reason });
                        retry_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(timing.reconnect_max);
                    }
                }
            }
        }
    }
    // Every handle is gone.
    if let Some(s) = session.take() {
        let _ = tokio::time::timeout(CLOSE_BOUND, proto.close(s)).await;
    }
}

/// One page: a session (kept or new), the protocol's transaction, one retry on a fresh
/// session when a kept one turns out dead before anything was submitted.
async fn deliver<P: Protocol>(
    id: &ChannelId,
    proto: &mut P,
    session: &mut Option<P::Session>,
    page: &Page,
    health: &watch::Sender<Health>,
) -> Result<Accepted, SendError> {
    let mut retried = false;
    loop {
        if expired(page.expires_at) {
            return Err(SendError::Permanent {
                code: "expired".into(),
                reason: "the message expired before it was sent".into(),
            });
        }
        let kept = match session.take() {
            Some(mut s) => {
                if proto.is_alive(&mut s).await {
                    Some(s)
                } else {
                    debug!(channel = %id, protocol = P::NAME, "the kept session was closed by the peer");
                    proto.discard(s);
                    None
                }
            }
            None => None,
        };
        let (mut s, reused) = match kept {
            Some(s) => (s, true),
            None => match proto.open().await {
                Ok(s) => {
                    health.send_replace(Health::Up);
                    (s, false)
                }
                Err(reason) => {
                    warn!(channel = %id, protocol = P::NAME, %reason, "pager session failed to open");
                    health.send_replace(Health::Down {
                        reason: reason.clone(),
                    });
                    return Err(SendError::Unavailable { reason });
                }
            },
        };
        let out = proto.deliver(&mut s, page).await;
        if out.keep {
            *session = Some(s);
        } else {
            proto.discard(s);
        }
        match out.result {
            Ok(()) => {
                let reference = provider_ref(P::NAME);
                debug!(
                    channel = %id,
                    protocol = P::NAME,
                    delivery_id = %page.delivery_id,
                    provider_ref = %reference,
                    text = %Shape(page.text.expose_secret()),
                    "page accepted"
                );
                return Ok(Accepted {
                    provider_refs: vec![reference],
                    receipt_expected: false,
                });
            }
            Err(e) if out.retry_fresh && reused && !retried => {
                retried = true;
                debug!(channel = %id, protocol = P::NAME, delivery_id = %page.delivery_id, error = %e, "kept session failed before submission; trying a fresh one");
                continue;
            }
            Err(e) => {
                debug!(channel = %id, protocol = P::NAME, delivery_id = %page.delivery_id, class = e.class(), error = %e, "page not accepted");
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pager_ids() {
        assert!(valid_pager_id("5551000"));
        assert!(valid_pager_id("ab-12:x"));
        assert!(!valid_pager_id(""));
        assert!(!valid_pager_id("555 1000"));
        assert!(!valid_pager_id("555\r1000"));
        assert!(!valid_pager_id("ü"));
        assert!(!valid_pager_id(&"1".repeat(33)));
    }

    #[test]
    fn references_differ() {
        let a = provider_ref("snpp");
        let b = provider_ref("snpp");
        assert!(a.starts_with("snpp-"));
        assert_ne!(a, b);
    }
}
