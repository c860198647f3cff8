//! [`EmailChannel`]: the `Channel` handle, its send path, the background health check and
//! shutdown.

use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lettre::Address;
use lettre::message::Mailbox;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use pinpost_channel_core::{
    Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, ExposeSecret, Health,
    OutboundMessage, ReceiptSink, SendError,
};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zeroize::Zeroizing;

use crate::config::{DkimAlgorithm, EmailConfig};
use crate::keys::KeyLookup;
use crate::mime::{self, Content, Outgoing};
use crate::openpgp;
use crate::pool::{self, Dialer, IdleStack, TxFailure};
use crate::reply::{classify_reply, parse_queue_id, sanitize};

/// The e-mail channel: a cheap `Clone` handle over a pool of SMTP connections.
///
/// Every message is encrypted to the recipient's OpenPGP key, found through the
/// [`KeyLookup`] given at start, and submitted as PGP/MIME. See the crate README for what
/// "accepted" means and how failures are classified.
#[derive(Clone)]
pub struct EmailChannel {
    inner: Arc<Inner>,
}

/// What `start` resolved from the config (files read, names parsed).
struct Setup {
    from: Mailbox,
    dialer: Dialer,
    dkim: Option<lettre::message::dkim::DkimConfig>,
}

struct Inner {
    id: ChannelId,
    caps: Capabilities,
    cfg: EmailConfig,
    keys: Arc<dyn KeyLookup>,
    setup: Result<Setup, String>,
    permits: Arc<Semaphore>,
    idle: IdleStack,
    health: Mutex<Health>,
    closed: CancellationToken,
    /// Kept for the daemon's symmetry with other channels: SMTP submission gives no receipts.
    _receipts: ReceiptSink,
}

/// How long QUIT may take when a connection is closed.
const QUIT_LIMIT: Duration = Duration::from_secs(2);
/// The health check interval while the channel is down, at most.
const DOWN_RECHECK: Duration = Duration::from_secs(5);

impl EmailChannel {
    /// Start the channel: validate `cfg`, load the CA file and the DKIM key, and start the
    /// background health check (it connects at once). Never fails: an unusable config keeps
    /// the channel `Down` with the reason, and every send `Unavailable`.
    ///
    /// Must be called within a Tokio runtime.
    pub fn start(cfg: EmailConfig, keys: Arc<dyn KeyLookup>, receipts: ReceiptSink) -> Self {
        let setup = resolve(&cfg);
        if let Err(reason) = &setup {
            tracing::error!(channel = %cfg.id, %reason, "email channel misconfigured");
        }
        let initial = match &setup {
            Ok(_) => Health::Down {
                reason: "connecting".into(),
            },
            Err(reason) => Health::Down {
                reason: reason.clone(),
            },
        };
        let inner = Arc::new(Inner {
            id: cfg.id.clone(),
            caps: Capabilities {
                kind: ChannelKind::Email,
                address: AddressKind::Email,
                receipts: false,
                max_body_chars: cfg.max_body_chars,
                window: cfg.pool_size,
            },
            permits: Arc::new(Semaphore::new(cfg.pool_size)),
            idle: IdleStack::new(cfg.idle_timeout),
            health: Mutex::new(initial),
            closed: CancellationToken::new(),
            keys,
            setup,
            cfg,
            _receipts: receipts,
        });
        if inner.setup.is_ok() {
            tokio::spawn(health_loop(Arc::downgrade(&inner), inner.closed.clone()));
        }
        EmailChannel { inner }
    }

    /// How many connections sit idle in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.inner.idle.len()
    }
}

fn resolve(cfg: &EmailConfig) -> Result<Setup, String> {
    cfg.validate().map_err(|e| e.to_string())?;
    let from = Mailbox::from_str(&cfg.from).map_err(|e| format!("from: {e}"))?;
    let mut tls = TlsParameters::builder(cfg.host.clone());
    if let Some(path) = &cfg.tls_ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        tls = tls.add_root_certificate(cert);
    }
    let tls = tls.build_rustls().map_err(|e| format!("tls: {e}"))?;
    let credentials = match (&cfg.username, &cfg.password) {
        (Some(u), Some(p)) => Some(Credentials::new(
            u.expose_secret().to_owned(),
            p.expose_secret().to_owned(),
        )),
        _ => None,
    };
    let ehlo = cfg.effective_ehlo_name(&from);
    let hello = match ehlo.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ClientId::Ipv4(ip),
        Ok(std::net::IpAddr::V6(ip)) => ClientId::Ipv6(ip),
        Err(_) => ClientId::Domain(ehlo),
    };
    let dkim = match &cfg.dkim {
        None => None,
        Some(d) => {
            let pem =
                Zeroizing::new(std::fs::read_to_string(&d.private_key_file).map_err(|e| {
                    format!(
                        "dkim.private_key_file {}: {e}",
                        d.private_key_file.display()
                    )
                })?);
            let algorithm = match d.algorithm {
                DkimAlgorithm::Rsa => DkimSigningAlgorithm::Rsa,
                DkimAlgorithm::Ed25519 => DkimSigningAlgorithm::Ed25519,
            };
            let key = DkimSigningKey::new(pem.trim(), algorithm).map_err(|e| {
                format!(
                    "dkim.private_key_file {}: {e}",
                    d.private_key_file.display()
                )
            })?;
            Some(lettre::message::dkim::DkimConfig::new(
                d.selector.clone(),
                d.domain.clone(),
                key,
                mime::dkim_signed_headers(),
                DkimCanonicalization {
                    header: DkimCanonicalizationType::Relaxed,
                    body: DkimCanonicalizationType::Relaxed,
                },
            ))
        }
    };
    Ok(Setup {
        dialer: Dialer {
            host: cfg.host.clone(),
            port: cfg.effective_port(),
            mode: cfg.tls,
            tls,
            hello,
            credentials,
        },
        from,
        dkim,
    })
}

fn permanent(code: &str, reason: impl Into<String>) -> SendError {
    SendError::Permanent {
        code: code.to_owned(),
        reason: reason.into(),
    }
}

fn unavailable(reason: impl Into<String>) -> SendError {
    SendError::Unavailable {
        reason: reason.into(),
    }
}

/// No attempt is ever made after the PIN's expiry.
fn check_expiry(msg: &OutboundMessage) -> Result<(), SendError> {
    match msg.expires_at {
        Some(expires_at) if expires_at <= OffsetDateTime::now_utc() => {
            Err(permanent("expired", "the PIN has expired"))
        }
        _ => Ok(()),
    }
}

impl Inner {
    fn set_health(&self, h: Health) {
        if self.closed.is_cancelled() {
            return;
        }
        let mut cur = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if *cur != h {
            match &h {
                Health::Up => tracing::info!(channel = %self.id, "email channel up"),
                Health::Down { reason } => {
                    tracing::warn!(channel = %self.id, %reason, "email channel down")
                }
            }
            *cur = h;
        }
    }

    fn down(&self, reason: &str) {
        self.set_health(Health::Down {
            reason: reason.to_owned(),
        });
    }

    /// Return a connection to the pool, or close it when the channel is shutting down.
    async fn checkin(&self, conn: AsyncSmtpConnection) {
        if self.closed.is_cancelled() {
            pool::quit(conn, QUIT_LIMIT).await;
        } else {
            self.idle.put(conn);
        }
    }

    async fn close_all(&self, conns: Vec<AsyncSmtpConnection>) {
        if conns.is_empty() {
            return;
        }
        futures::future::join_all(conns.into_iter().map(|c| pool::quit(c, QUIT_LIMIT))).await;
    }

    /// Everything up to the SMTP session: checks, key lookup, encryption, MIME.
    async fn prepare(&self, setup: &Setup, msg: &OutboundMessage) -> Result<Outgoing, SendError> {
        check_expiry(msg)?;
        let body = msg.body.expose_secret();
        if body.chars().count() > self.caps.max_body_chars {
            return Err(permanent(
                "message_too_long",
                format!("the body exceeds {} characters", self.caps.max_body_chars),
            ));
        }
        let to = Address::from_str(&msg.address)
            .map_err(|e| permanent("invalid_address", format!("not an e-mail address: {e}")))?;

        let lookup =
            tokio::time::timeout(self.cfg.command_timeout, self.keys.key_for(&msg.address))
                .await
                .map_err(|_| SendError::Transient {
                    reason: "the OpenPGP key lookup did not answer in time".into(),
                })?;
        let content = match lookup {
            Some((key, _)) if !key.trim().is_empty() => {
                let entity = mime::inner_entity(body);
                let (armored, cert, subkey) = tokio::task::spawn_blocking(move || {
                    let recipient = openpgp::recipient_key(&key, SystemTime::now())?;
                    let armored = openpgp::encrypt(&recipient, &entity)?;
                    Ok::<_, openpgp::KeyError>((
                        armored,
                        recipient.fingerprint().to_owned(),
                        recipient.encryption_fingerprint(),
                    ))
                })
                .await
                .map_err(|_| SendError::Transient {
                    reason: "encryption task failed".into(),
                })?
                .map_err(|e| permanent("bad_openpgp_key", e.to_string()))?;
                tracing::debug!(%cert, %subkey, "encrypted to OpenPGP key");
                Content::Encrypted { armored }
            }
            Some((_, true)) => {
                tracing::debug!("no OpenPGP key; the device allows plaintext");
                Content::Plain {
                    body: Zeroizing::new(body.to_owned()),
                }
            }
            _ => {
                return Err(permanent(
                    "no_openpgp_key",
                    "no OpenPGP key is registered for the address",
                ));
            }
        };
        let message_id = mime::new_message_id(setup.from.email.domain());
        mime::build(
            &setup.from,
            &to,
            &self.cfg.subject,
            &message_id,
            content,
            setup.dkim.as_ref(),
        )
        .map_err(|e| permanent("invalid_message", e))
    }

    /// Run the transaction on a pooled connection, or a fresh one. A pooled connection that
    /// turns out dead (link failure or 421 before any content) is replaced once.
    async fn submit(&self, setup: &Setup, out: &Outgoing) -> Result<String, SendError> {
        let cfg = &self.cfg;
        let mut retried = false;
        loop {
            let (taken, stale) = self.idle.take();
            if !stale.is_empty() {
                // Not on the send's time: QUIT them on the side (bounded by QUIT_LIMIT).
                tokio::spawn(async move {
                    futures::future::join_all(stale.into_iter().map(|c| pool::quit(c, QUIT_LIMIT)))
                        .await;
                });
            }
            let (mut conn, reused) = match taken {
                Some(conn) => (conn, true),
                None => match setup.dialer.connect(cfg.connect_timeout).await {
                    Ok(conn) => {
                        self.set_health(Health::Up);
                        (conn, false)
                    }
                    Err(reason) => {
                        self.down(&reason);
                        return Err(unavailable(reason));
                    }
                },
            };
            match pool::transaction(&mut conn, out, cfg.command_timeout, cfg.data_timeout).await {
                Ok(reply) => {
                    self.checkin(conn).await;
                    let text = reply.message().collect::<Vec<_>>().join("\n");
                    return Ok(parse_queue_id(&text).unwrap_or_else(|| out.message_id.clone()));
                }
                Err(TxFailure::Link(reason)) => {
                    drop(conn);
                    if reused && !retried {
                        tracing::debug!(%reason, "pooled connection is dead; opening a new one");
                        retried = true;
                        continue;
                    }
                    return Err(SendError::Transient { reason });
                }
                Err(TxFailure::Refused { stage, code, text }) => {
                    if code == 421 {
                        // The server is closing the connection.
                        drop(conn);
                        if reused && !retried && stage != crate::reply::Stage::EndOfData {
                            retried = true;
                            continue;
                        }
                    } else if stage == crate::reply::Stage::EndOfData
                        || pool::reset(&mut conn, cfg.command_timeout).await
                    {
                        self.checkin(conn).await;
                    }
                    return Err(classify_reply(stage, code, &text));
                }
                Err(TxFailure::InDoubt(reason)) => return Err(SendError::InDoubt { reason }),
                Err(TxFailure::Local(e)) => {
                    self.checkin(conn).await;
                    return Err(e);
                }
            }
        }
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        if self.closed.is_cancelled() {
            return Err(unavailable("the channel is shut down"));
        }
        let setup = self
            .setup
            .as_ref()
            .map_err(|reason| unavailable(format!("misconfigured: {reason}")))?;
        let out = self.prepare(setup, msg).await?;
        let _permit = tokio::select! {
            biased;
            _ = self.closed.cancelled() => return Err(unavailable("the channel is shut down")),
            permit = self.permits.clone().acquire_owned() => {
                permit.map_err(|_| unavailable("the channel is shut down"))?
            }
        };
        // The wait for a connection may have outlived the PIN.
        check_expiry(msg)?;
        let queue_id = self.submit(setup, &out).await?;
        tracing::info!(message_id = %out.message_id, %queue_id, "accepted by the SMTP server");
        Ok(Accepted {
            provider_refs: vec![queue_id],
            receipt_expected: false,
        })
    }

    /// One health check: NOOP on an idle connection, else open one (kept in the pool).
    /// Skipped while every connection is busy sending; the sends report instead.
    async fn check(&self) {
        let Ok(setup) = &self.setup else { return };
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            return;
        };
        let limit = self.cfg.health_timeout;
        let (taken, stale) = self.idle.take();
        self.close_all(stale).await;
        if let Some(mut conn) = taken
            && pool::noop(&mut conn, limit).await
        {
            self.checkin(conn).await;
            self.set_health(Health::Up);
            return;
        }
        match setup.dialer.connect(limit).await {
            Ok(conn) => {
                self.checkin(conn).await;
                self.set_health(Health::Up);
            }
            Err(reason) => self.down(&reason),
        }
    }

    fn next_check(&self) -> Duration {
        let up = self
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_up();
        if up {
            self.cfg.health_interval
        } else {
            self.cfg.health_interval.min(DOWN_RECHECK)
        }
    }
}

async fn health_loop(inner: Weak<Inner>, closed: CancellationToken) {
    let mut delay = Duration::ZERO;
    loop {
        tokio::select! {
            biased;
            _ = closed.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        tokio::select! {
            biased;
            _ = closed.cancelled() => return,
            _ = strong.check() => {}
        }
        delay = strong.next_check();
    }
}

#[async_trait]
impl Channel for EmailChannel {
    fn id(&self) -> &ChannelId {
        &self.inner.id
    }

    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn send(&self, msg: &OutboundMessage) -> Result<Accepted, SendError> {
        let span = tracing::info_span!(
            "email_send",
            channel = %self.inner.id,
            delivery_id = %msg.delivery_id
        );
        let result = self.inner.send(msg).instrument(span.clone()).await;
        if let Err(e) = &result {
            span.in_scope(|| {
                tracing::warn!(class = e.class(), error = %sanitize(&e.to_string()), "send failed")
            });
        }
        result
    }

    async fn health(&self) -> Health {
        if self.inner.closed.is_cancelled() {
            return Health::Down {
                reason: "shut down".into(),
            };
        }
        self.inner
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuse new sends, wait (up to `command_timeout`) for sends in flight to finish, then
    /// QUIT every idle connection. Idempotent.
    async fn shutdown(&self) {
        let inner = &self.inner;
        inner.closed.cancel();
        {
            let mut h = inner.health.lock().unwrap_or_else(|e| e.into_inner());
            *h = Health::Down {
                reason: "shut down".into(),
            };
        }
        let all = u32::try_from(inner.cfg.pool_size).unwrap_or(u32::MAX);
        if let Ok(Ok(permits)) = tokio::time::timeout(
            inner.cfg.command_timeout,
            inner.permits.clone().acquire_many_owned(all),
        )
        .await
        {
            permits.forget();
        }
        inner.permits.close();
        let idle = inner.idle.drain();
        inner.close_all(idle).await;
    }
}
