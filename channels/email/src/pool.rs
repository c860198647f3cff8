//! SMTP connections: opening one (TCP, STARTTLS or implicit TLS, EHLO, AUTH), running one
//! mail transaction on it with each step classified, and the pool of idle connections.
//!
//! The pool is a semaphore of `pool_size` permits and a stack of idle connections. A send
//! holds a permit and owns its connection outright for the whole transaction; the stack's
//! lock is only taken to push or pop, never across an `.await`. The pool is built on lettre's
//! `AsyncSmtpConnection` rather than lettre's pooled transport because the channel must know
//! at which step a failure happened: before the content was sent (nothing accepted) or after
//! (in doubt).

use std::sync::Mutex;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Noop, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::{Response, Severity};
use pinpost_channel_core::SendError;
use tokio::time::{Instant, timeout};

use crate::config::Tls;
use crate::mime::Outgoing;
use crate::reply::{Stage, sanitize};

/// Everything needed to open a connection, resolved once at start.
pub(crate) struct Dialer {
    pub host: String,
    pub port: u16,
    pub mode: Tls,
    pub tls: TlsParameters,
    pub hello: ClientId,
    pub credentials: Option<Credentials>,
}

fn describe(e: &lettre::transport::smtp::Error) -> String {
    sanitize(&e.to_string())
}

impl Dialer {
    /// Open an encrypted, authenticated connection, all within `limit`. There is no path on
    /// which the connection stays in plaintext: no STARTTLS offered, a failed handshake, or a
    /// stream that does not report itself encrypted afterwards all fail.
    pub(crate) async fn connect(&self, limit: Duration) -> Result<AsyncSmtpConnection, String> {
        let open = async {
            let implicit = match self.mode {
                Tls::Implicit => Some(self.tls.clone()),
                Tls::StartTls => None,
            };
            let mut conn = AsyncSmtpConnection::connect_tokio1(
                (self.host.as_str(), self.port),
                Some(limit),
                &self.hello,
                implicit,
                None,
            )
            .await
            .map_err(|e| format!("connect to {}:{}: {}", self.host, self.port, describe(&e)))?;
            if self.mode == Tls::StartTls {
                if !conn.server_info().supports_feature(Extension::StartTls) {
                    conn.abort().await;
                    return Err(format!(
                        "{}:{} does not offer STARTTLS; refusing to continue without TLS",
                        self.host, self.port
                    ));
                }
                conn.starttls(self.tls.clone(), &self.hello)
                    .await
                    .map_err(|e| format!("STARTTLS: {}", describe(&e)))?;
            }
            if !conn.is_encrypted() {
                conn.abort().await;
                return Err("the connection is not encrypted".to_owned());
            }
            if let Some(credentials) = &self.credentials
                && let Err(e) = conn
                    .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                    .await
            {
                conn.abort().await;
                return Err(format!("AUTH: {}", describe(&e)));
            }
            Ok(conn)
        };
        timeout(limit, open)
            .await
            .unwrap_or_else(|_| Err(format!("no session within {limit:?}")))
    }
}

/// How a transaction failed.
#[derive(Debug)]
pub(crate) enum TxFailure {
    /// Before any content was sent: the connection broke, a reply did not come in time, or
    /// could not be parsed. Nothing was accepted; the connection is unusable.
    Link(String),
    /// The server refused with a reply code. Nothing was accepted.
    Refused {
        stage: Stage,
        code: u16,
        text: String,
    },
    /// The content started going out and no final reply came: it may have been accepted.
    InDoubt(String),
    /// The channel refused before writing anything (the server lacks an extension the message
    /// needs).
    Local(SendError),
}

fn reply_code(response: &Response) -> u16 {
    u16::from(response.code())
}

fn reply_text(response: &Response) -> String {
    response.message().collect::<Vec<_>>().join(" ")
}

/// A command of the transaction, before any content: a 2xx (or, for DATA, a 354) reply is
/// expected; anything else is refused or a broken link.
async fn step(
    conn: &mut AsyncSmtpConnection,
    stage: Stage,
    command: impl std::fmt::Display,
    limit: Duration,
) -> Result<Response, TxFailure> {
    let want = if stage == Stage::Data {
        Severity::PositiveIntermediate
    } else {
        Severity::PositiveCompletion
    };
    match timeout(limit, conn.command(command)).await {
        Err(_) => Err(TxFailure::Link(format!(
            "{stage}: no reply within {limit:?}"
        ))),
        Ok(Ok(r)) if r.code().severity == want => Ok(r),
        Ok(Ok(r)) => Err(TxFailure::Refused {
            stage,
            code: reply_code(&r),
            text: reply_text(&r),
        }),
        Ok(Err(e)) => match e.status() {
            Some(code) => Err(TxFailure::Refused {
                stage,
                code: u16::from(code),
                text: std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            }),
            None => Err(TxFailure::Link(format!("{stage}: {}", describe(&e)))),
        },
    }
}

/// One mail transaction: MAIL, RCPT, DATA, content. Returns the 2xx reply to the content.
pub(crate) async fn transaction(
    conn: &mut AsyncSmtpConnection,
    out: &Outgoing,
    command_timeout: Duration,
    data_timeout: Duration,
) -> Result<Response, TxFailure> {
    let mut params = Vec::new();
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    if !(ascii(&out.from) && ascii(&out.to)) {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(TxFailure::Local(SendError::Permanent {
                code: "smtputf8_unsupported".into(),
                reason: "the address is internationalized and the server lacks SMTPUTF8".into(),
            }));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !out.bytes.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(TxFailure::Local(SendError::Permanent {
                code: "8bitmime_unsupported".into(),
                reason: "the message is 8-bit and the server lacks 8BITMIME".into(),
            }));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    step(
        conn,
        Stage::MailFrom,
        Mail::new(Some(out.from.clone()), params),
        command_timeout,
    )
    .await?;
    step(
        conn,
        Stage::RcptTo,
        Rcpt::new(out.to.clone(), Vec::new()),
        command_timeout,
    )
    .await?;
    step(conn, Stage::Data, Data, command_timeout).await?;

    // From here on the server may end up with the message whatever we see.
    match timeout(data_timeout, conn.message(&out.bytes)).await {
        Err(_) => Err(TxFailure::InDoubt(format!(
            "no reply to the end of data within {data_timeout:?}"
        ))),
        Ok(Ok(r)) if r.code().severity == Severity::PositiveCompletion => Ok(r),
        Ok(Ok(r)) => Err(TxFailure::InDoubt(format!(
            "unexpected reply to the end of data: {} {}",
            reply_code(&r),
            sanitize(&reply_text(&r))
        ))),
        Ok(Err(e)) => match e.status() {
            Some(code) => Err(TxFailure::Refused {
                stage: Stage::EndOfData,
                code: u16::from(code),
                text: std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            }),
            None => Err(TxFailure::InDoubt(format!(
                "after the content was sent: {}",
                describe(&e)
            ))),
        },
    }
}

/// Reset a connection after a refused command, so it can take another transaction.
pub(crate) async fn reset(conn: &mut AsyncSmtpConnection, limit: Duration) -> bool {
    matches!(timeout(limit, conn.command(Rset)).await, Ok(Ok(r)) if r.code().severity == Severity::PositiveCompletion)
}

/// NOOP within `limit`.
pub(crate) async fn noop(conn: &mut AsyncSmtpConnection, limit: Duration) -> bool {
    matches!(timeout(limit, conn.command(Noop)).await, Ok(Ok(r)) if r.code().severity == Severity::PositiveCompletion)
}

/// QUIT within `limit`, then close.
pub(crate) async fn quit(mut conn: AsyncSmtpConnection, limit: Duration) {
    let _ = timeout(limit, conn.quit()).await;
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Idle connections, newest last.
pub(crate) struct IdleStack {
    idle: Mutex<Vec<Idle>>,
    idle_timeout: Duration,
}

impl IdleStack {
    pub(crate) fn new(idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that has not been idle too long. Older ones are
    /// returned too, to be closed by the caller.
    pub(crate) fn take(&self) -> (Option<AsyncSmtpConnection>, Vec<AsyncSmtpConnection>) {
        let now = Instant::now();
        let mut idle = self.lock();
        let mut stale = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            if now.duration_since(idle[i].since) >= self.idle_timeout {
                stale.push(idle.remove(i).conn);
            } else {
                i += 1;
            }
        }
        (idle.pop().map(|i| i.conn), stale)
    }

    pub(crate) fn put(&self, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        self.lock().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Every idle connection (at shutdown).
    pub(crate) fn drain(&self) -> Vec<AsyncSmtpConnection> {
        self.lock().drain(..).map(|i| i.conn).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
