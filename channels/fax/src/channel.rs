//! [`FaxChannel`]: the pinpost `Channel` over a pool of Class 2.0 modems.
//!
//! One actor task per modem owns its serial port (opened with tokio-serial, reopened with
//! backoff when it fails, probed with `AT` when idle) and makes one call at a time. The
//! public handle is a cheap `Clone`; `send` renders the page, picks an idle modem, hands it
//! the call and waits for the outcome. Redials (busy, no answer, no carrier) happen in
//! `send`, between calls, without holding a modem.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pinpost_channel_core::{
    Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, Health, OutboundMessage,
    Receipt, ReceiptSink, ReceiptStatus, SendError,
};
use pinpost_modem::{DialMode, FlowControl, Modem, ModemOptions, SerialSettings};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::class2::{self, CallFailure, CallReport, CallSettings, CallTimeouts, Notice, Stage};
use crate::dialplan::{DialPlan, DialPlanError};
use crate::page::{RenderError, Resolution};

/// A byte stream to a modem.
pub trait ModemPort: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ModemPort for T {}

/// A boxed [`ModemPort`].
pub type BoxedPort = Box<dyn ModemPort>;

/// Opens the port for a device path. [`FaxChannel::start`] uses tokio-serial; tests may
/// hand in anything.
pub type Connector = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<BoxedPort>> + Send>> + Send + Sync,
>;

/// When and how often a busy or unanswered number is dialled again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedialPolicy {
    /// Dials per `send`, the first included. 1 turns redialling off: the first busy / no
    /// answer / no carrier is reported as `Transient` and the queue's backoff takes over.
    pub max_dials: u32,
    /// Pause before dial 2, 3, ...; the last entry repeats.
    pub delays: Vec<Duration>,
}

impl Default for RedialPolicy {
    fn default() -> Self {
        Self {
            max_dials: 3,
            delays: vec![Duration::from_secs(30), Duration::from_secs(90)],
        }
    }
}

/// Configuration of a fax channel.
#[derive(Debug, Clone)]
pub struct FaxConfig {
    pub id: ChannelId,
    /// Serial devices, one per modem (`/dev/ttyS0`, `/dev/ttyUSB0`, a pty).
    pub devices: Vec<String>,
    pub baud_rate: u32,
    /// RTS/CTS (`AT+FLO=2`, the default), XON/XOFF (`+FLO=1`) or none; the port and the
    /// modem are set alike.
    pub flow_control: FlowControl,
    /// Our station id (TSI, `AT+FLI`), at most 20 printable ASCII characters, no `"`.
    pub local_id: String,
    pub dial_plan: DialPlan,
    pub resolution: Resolution,
    pub redial: RedialPolicy,
    /// Treat a page the remote confirmed (MCF) as delivered: `send` returns
    /// `receipt_expected: true` and a `Delivered` receipt follows at once.
    pub confirmed_page_receipts: bool,
    /// Send RTC after the page (Class 2.0 modems append it themselves).
    pub send_rtc: bool,
    /// Extra commands after `ATZ`, each must be answered `OK`.
    pub init_commands: Vec<String>,
    pub timeouts: CallTimeouts,
    /// How long `send` waits for a free modem before `Unavailable`.
    pub queue_timeout: Duration,
    /// An idle modem is probed with `AT` this often.
    pub health_interval: Duration,
    /// Reopening a failed port: first and longest pause (doubling in between).
    pub reopen_min: Duration,
    pub reopen_max: Duration,
    /// How long `shutdown` waits for calls in progress.
    pub drain_timeout: Duration,
}

impl FaxConfig {
    /// Defaults for everything but the id and the devices.
    pub fn new(id: impl AsRef<str>, devices: Vec<String>) -> Self {
        Self {
            id: ChannelId::new(id),
            devices,
            baud_rate: 115_200,
            flow_control: FlowControl::Hardware,
            local_id: String::new(),
            dial_plan: DialPlan::default(),
            resolution: Resolution::Fine,
            redial: RedialPolicy::default(),
            confirmed_page_receipts: true,
            send_rtc: false,
            init_commands: Vec::new(),
            timeouts: CallTimeouts::default(),
            queue_timeout: Duration::from_secs(120),
            health_interval: Duration::from_secs(60),
            reopen_min: Duration::from_secs(1),
            reopen_max: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(300),
        }
    }

    /// Check everything `start` relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_owned()));
        if self.devices.is_empty() {
            return bad("devices: at least one modem");
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.trim().is_empty() || self.devices[..i].contains(d) {
                return bad("devices: empty or repeated device path");
            }
        }
        if !matches!(
            self.baud_rate,
            2400 | 4800 | 9600 | 19200 | 38400 | 57600 | 115_200 | 230_400
        ) {
            return bad("baud_rate: one of 2400 … 230400");
        }
        if self.local_id.len() > 20
            || !self
                .local_id
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"')
        {
            return bad("local_id: at most 20 printable ASCII characters, no '\"'");
        }
        self.dial_plan
            .validate()
            .map_err(|e| ConfigError(e.to_string()))?;
        if self.redial.max_dials == 0 || self.redial.max_dials > 10 {
            return bad("redial.max_dials: 1 to 10");
        }
        if self.redial.max_dials > 1 && self.redial.delays.is_empty() {
            return bad("redial.delays: needed when max_dials > 1");
        }
        for cmd in &self.init_commands {
            let upper = cmd.to_ascii_uppercase();
            let dials = upper.starts_with("ATD") || upper.contains(";D");
            if !upper.starts_with("AT") || dials || !cmd.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return bad("init_commands: printable AT commands that do not dial");
            }
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("timeouts.command", t.command),
            ("timeouts.reset", t.reset),
            ("timeouts.dial", t.dial),
            ("timeouts.page_start", t.page_start),
            ("timeouts.page_done", t.page_done),
            ("timeouts.hangup", t.hangup),
            ("queue_timeout", self.queue_timeout),
            ("health_interval", self.health_interval),
            ("reopen_min", self.reopen_min),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name}: must be more than zero")));
            }
        }
        if self.reopen_max < self.reopen_min {
            return bad("reopen_max: at least reopen_min");
        }
        Ok(())
    }

    fn call_settings(&self) -> CallSettings {
        CallSettings {
            local_id: self.local_id.clone(),
            flow_control: self.flow_control,
            dial_mode: if self.dial_plan.tone {
                DialMode::Tone
            } else {
                DialMode::Pulse
            },
            resolution: self.resolution,
            send_rtc: self.send_rtc,
            init_commands: self.init_commands.clone(),
            timeouts: self.timeouts.clone(),
        }
    }
}

/// An invalid [`FaxConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fax channel configuration: {0}")]
pub struct ConfigError(pub String);

const DOWN: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;

struct Slot {
    device: String,
    state: AtomicU8,
    reason: Mutex<String>,
    jobs: mpsc::Sender<Job>,
}

impl Slot {
    fn set_down(&self, reason: String) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = reason;
        self.state.store(DOWN, Ordering::SeqCst);
    }
}

struct Job {
    dial: String,
    notice: Arc<Notice>,
    delivery_id: String,
    reply: oneshot::Sender<Result<CallReport, CallFailure>>,
}

struct Inner {
    id: ChannelId,
    caps: Capabilities,
    cfg: FaxConfig,
    slots: Vec<Arc<Slot>>,
    freed: Notify,
    next_slot: AtomicU64,
    seq: AtomicU64,
    closed: AtomicBool,
    cancel: CancellationToken,
    tracker: TaskTracker,
    receipts: ReceiptSink,
    invalid: Option<String>,
}

/// The fax channel. Cheap to clone.
#[derive(Clone)]
pub struct FaxChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaxChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaxChannel")
            .field("id", &self.inner.id)
            .field("modems", &self.inner.slots.len())
            .finish_non_exhaustive()
    }
}

fn serial_connector(baud_rate: u32, flow_control: FlowControl) -> Connector {
    Arc::new(move |path: String| {
        Box::pin(async move {
            let settings = SerialSettings {
                baud_rate,
                flow_control,
            };
            let modem = Modem::open_serial(&path, &settings).map_err(io::Error::other)?;
            Ok(Box::new(modem.into_inner()) as BoxedPort)
        })
    })
}

impl FaxChannel {
    /// Start one actor per configured device, opening them with tokio-serial. Must be called
    /// inside a tokio runtime. An invalid configuration gives a channel that stays Down
    /// with the reason and refuses sends as `Unavailable`.
    pub fn start(cfg: FaxConfig, receipts: ReceiptSink) -> FaxChannel {
        let connector = serial_connector(cfg.baud_rate, cfg.flow_control);
        Self::start_with_connector(cfg, receipts, connector)
    }

    /// [`start`](Self::start) with another way of opening each device path (tests use pty
    /// simulators or `tokio::io::duplex`).
    pub fn start_with_connector(
        cfg: FaxConfig,
        receipts: ReceiptSink,
        connector: Connector,
    ) -> FaxChannel {
        let invalid = cfg.validate().err().map(|e| e.to_string());
        let caps = Capabilities {
            kind: ChannelKind::Fax,
            address: AddressKind::FaxNumber,
            receipts: cfg.confirmed_page_receipts,
            max_body_chars: 4000,
            window: cfg.devices.len().max(1),
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut slots = Vec::new();
        let mut receivers = Vec::new();
        if invalid.is_none() {
            for device in &cfg.devices {
                let (tx, rx) = mpsc::channel(1);
                slots.push(Arc::new(Slot {
                    device: device.clone(),
                    state: AtomicU8::new(DOWN),
                    reason: Mutex::new("opening".into()),
                    jobs: tx,
                }));
                receivers.push(rx);
            }
        }
        let inner = Arc::new(Inner {
            id: cfg.id.clone(),
            caps,
            cfg,
            slots,
            freed: Notify::new(),
            next_slot: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            cancel,
            tracker,
            receipts,
            invalid,
        });
        if let Some(reason) = &inner.invalid {
            tracing::error!(channel = %inner.id, %reason, "fax channel not started");
        }
        for (index, rx) in receivers.into_iter().enumerate() {
            let actor = Actor {
                index,
                slot: inner.slots[index].clone(),
                inner: Arc::downgrade(&inner),
                cancel: inner.cancel.clone(),
                connector: connector.clone(),
                settings: inner.cfg.call_settings(),
                cfg: inner.cfg.clone(),
            };
            let span = tracing::info_span!("fax_modem", channel = %inner.id, modem = index);
            inner.tracker.spawn(actor.run(rx).instrument(span));
        }
        FaxChannel { inner }
    }

    fn provider_ref(&self, modem: usize) -> String {
        let ms = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        format!("fax-{ms:x}-{modem}-{seq}")
    }

    /// Wait for an idle modem and claim it.
    async fn acquire(&self) -> Result<usize, SendError> {
        let inner = &self.inner;
        let deadline = tokio::time::Instant::now() + inner.cfg.queue_timeout;
        loop {
            let notified = inner.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = inner.slots.len();
            let start = inner.next_slot.fetch_add(1, Ordering::Relaxed) as usize;
            let mut any_up = false;
            for k in 0..n {
                let i = (start + k) % n;
                let state = &inner.slots[i].state;
                if state
                    .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return Ok(i);
                }
                any_up |= state.load(Ordering::SeqCst) == BUSY;
            }
            if !any_up {
                return Err(SendError::Unavailable {
                    reason: format!("no modem ready ({})", self.down_reason()),
                });
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(SendError::Unavailable { reason: "every modem busy".into() });
                }
                _ = inner.cancel.cancelled() => {
                    return Err(SendError::Unavailable { reason: "channel shut down".into() });
                }
            }
        }
    }

    fn down_reason(&self) -> String {
        if let Some(r) = &self.inner.invalid {
            return r.clone();
        }
        self.inner
            .slots
            .iter()
            .map(|s| {
                let r = s.reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
                format!("{}: {r}", s.device)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn call_once(
        &self,
        dial: &str,
        notice: &Arc<Notice>,
        delivery_id: &str,
    ) -> Result<(usize, CallReport), CallError> {
        let index = self.acquire().await.map_err(CallError::Error)?;
        let slot = &self.inner.slots[index];
        let (reply, answer) = oneshot::channel();
        let job = Job {
            dial: dial.to_owned(),
            notice: notice.clone(),
            delivery_id: delivery_id.to_owned(),
            reply,
        };
        if slot.jobs.send(job).await.is_err() {
            return Err(CallError::Error(SendError::Unavailable {
                reason: "modem stopped".into(),
            }));
        }
        match answer.await {
            Ok(Ok(report)) => Ok((index, report)),
            Ok(Err(failure)) => Err(CallError::Failed(failure)),
            Err(_) => Err(CallError::Error(SendError::InDoubt {
                reason: "the modem task ended during the call".into(),
            })),
        }
    }
}

enum CallError {
    Failed(CallFailure),
    Error(SendError),
}

/// How a failed call is reported to the queue (see the crate README).
pub fn classify(failure: &CallFailure, dials: u32) -> SendError {
    let transient = |what: &str| SendError::Transient {
        reason: format!("{what} ({dials} dial{})", if dials == 1 { "" } else { "s" }),
    };
    match failure {
        CallFailure::Busy => transient("busy"),
        CallFailure::NoAnswer => transient("no answer"),
        CallFailure::NoCarrier => transient("no carrier"),
        CallFailure::Hangup {
            code,
            stage: Stage::Dial,
        } if failure.is_redialable() => transient(&format!("no answer (+FHS:{code:02X})")),
        CallFailure::NoDialtone => SendError::Unavailable {
            reason: "no dial tone on the modem's line".into(),
        },
        CallFailure::DialRefused(pinpost_modem::FinalResult::Delayed) => {
            transient("dialling delayed by the modem")
        }
        CallFailure::DialRefused(pinpost_modem::FinalResult::Blacklisted) => SendError::Permanent {
            code: "blacklisted".into(),
            reason: "the modem refuses to dial this number".into(),
        },
        CallFailure::DialRefused(r) => SendError::Unavailable {
            reason: format!("the modem refused to dial: {r}"),
        },
        CallFailure::Hangup { code, stage }
            if (0x50..=0x58).contains(code) && *stage >= Stage::PageData =>
        {
            SendError::InDoubt {
                reason: format!(
                    "page sent, then hang-up +FHS:{code:02X} ({})",
                    class2::describe_hangup(*code)
                ),
            }
        }
        CallFailure::Hangup { code, .. } => SendError::Permanent {
            code: format!("FHS:{code:02X}"),
            reason: class2::describe_hangup(*code).into(),
        },
        CallFailure::CarrierLost { stage } if *stage >= Stage::PageData => SendError::Permanent {
            code: "NO_CARRIER".into(),
            reason: "carrier lost during the page".into(),
        },
        CallFailure::CarrierLost { .. } => transient("carrier lost before the page"),
        CallFailure::NotConfirmed { .. } => transient("page not confirmed by the remote (RTN)"),
        CallFailure::Incompatible(why) => SendError::Permanent {
            code: "incompatible".into(),
            reason: why.clone(),
        },
        CallFailure::Unexpected { stage, result } if *stage >= Stage::PostPage => {
            SendError::InDoubt {
                reason: format!("unexpected {result} after the page"),
            }
        }
        CallFailure::Unexpected { stage, result } => {
            transient(&format!("unexpected {result} during {stage:?}"))
        }
        CallFailure::Modem {
            stage: Stage::Setup,
            error,
        } => SendError::Unavailable {
            reason: format!("modem not ready: {error}"),
        },
        CallFailure::Modem {
            stage: Stage::PostPage,
            error,
        } => SendError::InDoubt {
            reason: format!("page sent, no verdict: {error}"),
        },
        CallFailure::Modem { stage, error } => {
            transient(&format!("modem failure during {stage:?}: {error}"))
        }
        CallFailure::Render(e) => render_error(e),
    }
}

fn render_error(e: &RenderError) -> SendError {
    match e {
        RenderError::Empty => SendError::Permanent {
            code: "empty_message".into(),
            reason: e.to_string(),
        },
        RenderError::TooLong { .. } => SendError::Permanent {
            code: "message_too_long".into(),
            reason: e.to_string(),
        },
        RenderError::Font(_) | RenderError::Encode(_) => SendError::Permanent {
            code: "render_failed".into(),
            reason: e.to_string(),
        },
    }
}

fn expired(msg: &OutboundMessage, at: OffsetDateTime) -> bool {
    msg.expires_at.is_some_and(|e| e <= at)
}

#[async_trait]
impl Channel for FaxChannel {
    fn id(&self) -> &ChannelId {
        &self.inner.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let span = tracing::info_span!("fax_send", channel = %self.inner.id, delivery_id = %msg.delivery_id);
        self.send_inner(msg).instrument(span).await
    }

    async fn health(&self) -> Health {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Health::Down {
                reason: "shut down".into(),
            };
        }
        if self
            .inner
            .slots
            .iter()
            .any(|s| matches!(s.state.load(Ordering::SeqCst), IDLE | BUSY))
        {
            Health::Up
        } else {
            Health::Down {
                reason: self.down_reason(),
            }
        }
    }

    async fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(self.inner.cfg.drain_timeout, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(channel = %self.inner.id, "fax calls still running after the drain timeout");
        }
    }
}

impl FaxChannel {
    async fn send_inner(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::SeqCst) {
            return Err(SendError::Unavailable {
                reason: "channel shut down".into(),
            });
        }
        if let Some(reason) = &inner.invalid {
            return Err(SendError::Unavailable {
                reason: reason.clone(),
            });
        }
        if expired(msg, OffsetDateTime::now_utc()) {
            return Err(SendError::Permanent {
                code: "expired".into(),
                reason: "the PIN expired before the call".into(),
            });
        }
        let dial = inner
            .cfg
            .dial_plan
            .dial_string(&msg.address)
            .map_err(|e| match e {
                DialPlanError::InvalidAddress => SendError::Permanent {
                    code: "invalid_address".into(),
                    reason: "not a dialable fax number".into(),
                },
                DialPlanError::InvalidPlan(_) => SendError::Unavailable {
                    reason: e.to_string(),
                },
            })?;
        let notice = Arc::new(
            Notice::new(msg.body.clone(), inner.cfg.resolution).map_err(|e| render_error(&e))?,
        );

        let policy = &inner.cfg.redial;
        let mut dials = 0;
        loop {
            dials += 1;
            match self.call_once(&dial, &notice, &msg.delivery_id).await {
                Ok((modem, report)) => {
                    let provider_ref = self.provider_ref(modem);
                    tracing::info!(
                        provider_ref = %provider_ref,
                        dials,
                        remote = report.remote_id.as_deref().unwrap_or(""),
                        session = %report.session,
                        "fax page confirmed"
                    );
                    if inner.cfg.confirmed_page_receipts {
                        self.post_delivered(provider_ref.clone());
                    }
                    return Ok(Accepted {
                        provider_refs: vec![provider_ref],
                        receipt_expected: inner.cfg.confirmed_page_receipts,
                    });
                }
                Err(CallError::Error(e)) => return Err(e),
                Err(CallError::Failed(failure)) => {
                    tracing::info!(dials, failure = %failure, "fax call failed");
                    if !failure.is_redialable() || dials >= policy.max_dials {
                        return Err(classify(&failure, dials));
                    }
                    let idx = (dials as usize - 1).min(policy.delays.len().saturating_sub(1));
                    let delay = policy.delays.get(idx).copied().unwrap_or_default();
                    let next = OffsetDateTime::now_utc() + delay;
                    if expired(msg, next) {
                        return Err(classify(&failure, dials));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = inner.cancel.cancelled() => return Err(classify(&failure, dials)),
                    }
                }
            }
        }
    }

    fn post_delivered(&self, provider_ref: String) {
        let receipt = Receipt {
            channel: self.inner.id.clone(),
            provider_ref,
            status: ReceiptStatus::Delivered,
            error_code: None,
            received_at: OffsetDateTime::now_utc(),
        };
        let sink = self.inner.receipts.clone();
        match sink.try_send(receipt) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(receipt)) => {
                // Do not hold up the send; deliver it in the background.
                tokio::spawn(async move {
                    if tokio::time::timeout(Duration::from_secs(60), sink.send(receipt))
                        .await
                        .is_err()
                    {
                        tracing::warn!("fax receipt dropped: the receipt sink stayed full");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("fax receipt dropped: the receipt sink is closed");
            }
        }
    }
}

/// One modem's task.
struct Actor {
    index: usize,
    slot: Arc<Slot>,
    inner: std::sync::Weak<Inner>,
    cancel: CancellationToken,
    connector: Connector,
    settings: CallSettings,
    cfg: FaxConfig,
}

impl Actor {
    fn notify_freed(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.freed.notify_waiters();
        }
    }

    async fn open(&self) -> Option<Modem<BoxedPort>> {
        let mut backoff = self.cfg.reopen_min;
        loop {
            let attempt = async {
                let port = (self.connector)(self.slot.device.clone()).await?;
                let opts = ModemOptions {
                    command_timeout: self.cfg.timeouts.command,
                    ..ModemOptions::default()
                };
                let mut modem = Modem::with_options(port, opts);
                probe(&mut modem).await?;
                Ok::<_, io::Error>(modem)
            };
            match attempt.await {
                Ok(modem) => return Some(modem),
                Err(e) => {
                    tracing::warn!(device = %self.slot.device, error = %e, retry_in = ?backoff, "modem not ready");
                    self.slot.set_down(e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.cancel.cancelled() => return None,
            }
            backoff = (backoff * 2).min(self.cfg.reopen_max);
        }
    }

    async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let mut modem: Option<Modem<BoxedPort>> = None;
        loop {
            if modem.is_none() {
                modem = self.open().await;
                let Some(_) = &modem else { break };
                tracing::info!(device = %self.slot.device, "modem ready");
                self.slot.state.store(IDLE, Ordering::SeqCst);
                self.notify_freed();
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                job = jobs.recv() => {
                    let Some(job) = job else { break };
                    let Some(m) = modem.as_mut() else { continue };
                    let span = tracing::info_span!("fax_call", delivery_id = %job.delivery_id, modem = self.index);
                    let result = class2::send_page(m, &job.dial, &job.notice, &self.settings).instrument(span).await;
                    let suspect = matches!(&result, Err(f) if f.modem_suspect());
                    let _ = job.reply.send(result);
                    if suspect {
                        self.slot.set_down("modem failed during a call; reopening".into());
                        modem = None;
                    } else {
                        self.slot.state.store(IDLE, Ordering::SeqCst);
                    }
                    self.notify_freed();
                }
                _ = tokio::time::sleep(self.cfg.health_interval) => {
                    if self.slot.state.compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                        continue;
                    }
                    let Some(m) = modem.as_mut() else { continue };
                    match probe(m).await {
                        Ok(()) => self.slot.state.store(IDLE, Ordering::SeqCst),
                        Err(e) => {
                            tracing::warn!(device = %self.slot.device, error = %e, "modem stopped answering");
                            self.slot.set_down(e.to_string());
                            modem = None;
                        }
                    }
                    self.notify_freed();
                }
            }
        }
        // Leave the line on hook.
        if let Some(m) = modem.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), m.hang_up()).await;
        }
        self.slot.set_down("shut down".into());
        self.notify_freed();
    }
}

async fn probe<S: AsyncRead + AsyncWrite + Unpin>(modem: &mut Modem<S>) -> io::Result<()> {
    modem
        .drain(Duration::from_millis(20), Duration::from_millis(500))
        .await
        .map_err(io::Error::other)?;
    modem
        .expect_ok("AT")
        .await
        .map(|_| ())
        .map_err(io::Error::other)
}
