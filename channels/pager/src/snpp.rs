//! SNPP (RFC 1861) client: level 1 (`PAGE`, `MESS`, `RESE`, `SEND`, `QUIT`) plus the level-2
//! `LOGI` and `DATA`, one command at a time over any `AsyncRead + AsyncWrite`.
//!
//! A page is one transaction: `PAGE <id>`, `MESS <text>` (or `DATA`, the text, `.`), `SEND`.
//! Replies are classified: 2xx goes on, 4xx (421 included) is [`SendError::Transient`], 5xx is
//! [`SendError::Permanent`] with code `snpp:<code>`, anything else is `Transient`. A failed
//! transaction is cleared with `RESE` so the session can carry the next page. Once `SEND` has
//! been written, a lost connection or a missing answer is [`SendError::InDoubt`].
//!
//! Only `connector` opens sockets (TCP, or TLS through tokio-rustls with the ring provider).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::{ExposeSecret, SendError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::channel::{Outcome, Page, Protocol};
use crate::config::{SnppConfig, SnppMessageCommand};
use crate::text::scrub;
use crate::wire::{ReadError, Wire};

/// A boxed byte stream (TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where an SNPP gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// `snpp://host[:port]` (port 444 by default) or `snpps://host:port`.
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let lower = url.to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("snpps://") {
            (true, &url[8..])
        } else if lower.starts_with("snpp://") {
            (false, &url[7..])
        } else {
            return Err("must start with snpp:// or snpps://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err("must be scheme://host[:port] with nothing else".into());
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("unclosed [ in host")?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("junk after ]")?),
            };
            (h.to_owned(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        let port = match port {
            None if tls => return Err("snpps:// needs an explicit port".into()),
            None => 444,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("bad port {p:?}"))?,
        };
        Ok(Endpoint { host, port, tls })
    }
}

/// A function that opens a fresh TCP (or TLS) stream to the gateway named by `cfg.url`.
pub(crate) fn connector(
    cfg: &SnppConfig,
) -> Result<impl FnMut() -> BoxFuture<io::Result<BoxIo>> + Send + 'static, String> {
    let endpoint = Arc::new(Endpoint::parse(&cfg.url)?);
    let tls = if endpoint.tls {
        let config = tls_config(cfg.tls_ca_file.as_deref())?;
        let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
            .map_err(|e| format!("host is not a valid TLS server name: {e}"))?;
        Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
    } else {
        None
    };
    Ok(move || {
        let endpoint = endpoint.clone();
        let tls = tls.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
            tcp.set_nodelay(true)?;
            match tls {
                None => Ok(Box::new(tcp) as BoxIo),
                Some((connector, name)) => {
                    Ok(Box::new(connector.connect(name, tcp).await?) as BoxIo)
                }
            }
        }) as BoxFuture<io::Result<BoxIo>>
    })
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "tls_ca_file {}: no certificate found",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("tls_ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// One reply: `NNN text` (continuation lines `NNN-text` are folded into the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// 0 when the line did not start with a three-digit code.
    pub code: u16,
    pub text: String,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }

    fn parse(line: &str) -> (Reply, bool) {
        let b = line.as_bytes();
        if b.len() >= 3
            && b[..3].iter().all(u8::is_ascii_digit)
            && (b.len() == 3 || b[3] == b' ' || b[3] == b'-')
        {
            let code = line[..3].parse().unwrap_or(0);
            let more = b.len() > 3 && b[3] == b'-';
            let text = line.get(4..).unwrap_or("").trim().to_owned();
            (Reply { code, text }, more)
        } else {
            (
                Reply {
                    code: 0,
                    text: line.trim().to_owned(),
                },
                false,
            )
        }
    }
}

/// What came of one command.
enum Step {
    Reply(Reply),
    WriteFailed(io::Error),
    ReadFailed(ReadError),
}

/// An open SNPP session: greeted and, when configured, logged in.
pub(crate) struct Session<S> {
    wire: Wire<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    async fn read_reply(&mut self, deadline: Instant) -> Result<Reply, ReadError> {
        let mut text = String::new();
        loop {
            let line = self.wire.read_line(deadline).await?;
            let (reply, more) = Reply::parse(&line);
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(&reply.text);
            if !more {
                return Ok(Reply {
                    code: reply.code,
                    text,
                });
            }
        }
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Step {
        let deadline = Instant::now() + timeout;
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        if let Err(e) = self.wire.write_all(&bytes, deadline).await {
            return Step::WriteFailed(e);
        }
        match self.read_reply(deadline).await {
            Ok(r) => Step::Reply(r),
            Err(e) => Step::ReadFailed(e),
        }
    }
}

/// The SNPP side of the channel actor.
pub(crate) struct Snpp<F> {
    cfg: Arc<SnppConfig>,
    connect: F,
}

impl<F, Fut, S> Snpp<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(crate) fn new(cfg: Arc<SnppConfig>, connect: F) -> Self {
        Self { cfg, connect }
    }

    /// Clear a failed transaction; false when the session is no longer usable.
    async fn reset(&mut self, s: &mut Session<S>) -> bool {
        matches!(
            s.command("RESE", self.cfg.reply_timeout).await,
            Step::Reply(Reply { code: 250, .. })
        )
    }

    /// A refused command before `SEND`: classify, and clear the transaction when the session
    /// stays.
    async fn refused(
        &mut self,
        s: &mut Session<S>,
        cmd: &str,
        reply: Reply,
        text: &str,
    ) -> Outcome {
        let said = scrub(&format!("{} {}", reply.code, reply.text), text);
        let error = classify(cmd, &reply, &said);
        if reply.code == 421 {
            // The gateway is closing the session; nothing was submitted.
            return Outcome {
                result: Err(error),
                keep: false,
                retry_fresh: cmd != "SEND",
            };
        }
        let keep = self.reset(s).await;
        Outcome {
            result: Err(error),
            keep,
            retry_fresh: false,
        }
    }

    /// The answer to a command written before `SEND`, or the outcome that ends the page.
    async fn expect(
        &mut self,
        s: &mut Session<S>,
        cmd: &str,
        step: Step,
        want_class: u16,
        text: &str,
    ) -> Result<(), Outcome> {
        match step {
            Step::Reply(r) if r.class() == want_class => Ok(()),
            Step::Reply(r) => Err(self.refused(s, cmd, r, text).await),
            Step::WriteFailed(e) => Err(lost(format!("writing {cmd} failed: {e}"))),
            Step::ReadFailed(ReadError::Timeout) => Err(Outcome {
                result: Err(SendError::Transient {
                    reason: format!("no answer to {cmd} within {:?}", self.cfg.reply_timeout),
                }),
                keep: false,
                retry_fresh: false,
            }),
            Step::ReadFailed(e) => Err(lost(format!("after {cmd}: {}", e.describe()))),
        }
    }

    async fn transaction(&mut self, s: &mut Session<S>, page: &Page) -> Result<(), Outcome> {
        let text = page.text.expose_secret();
        let cfg = self.cfg.clone();
        let step = s
            .command(&format!("PAGE {}", page.pager_id), cfg.reply_timeout)
            .await;
        self.expect(s, "PAGE", step, 2, text).await?;

        let use_data = match cfg.message_command {
            SnppMessageCommand::Mess => false,
            SnppMessageCommand::Data => true,
            SnppMessageCommand::Auto => text.contains('\n'),
        };
        if use_data {
            let step = s.command("DATA", cfg.reply_timeout).await;
            self.expect(s, "DATA", step, 3, text).await?;
            let step = s.data_block(text, cfg.reply_timeout).await;
            self.expect(s, "DATA", step, 2, text).await?;
        } else {
            let one_line = text.replace('\n', " ");
            let step = s
                .command(&format!("MESS {one_line}"), cfg.reply_timeout)
                .await;
            self.expect(s, "MESS", step, 2, text).await?;
        }

        match s.command("SEND", cfg.send_timeout).await {
            Step::Reply(r) if r.class() == 2 => Ok(()),
            Step::Reply(r) if r.code == 0 => Err(Outcome {
                // The session no longer speaks SNPP as we know it.
                result: Err(SendError::Transient {
                    reason: format!("unexpected answer to SEND: {}", scrub(&r.text, text)),
                }),
                keep: false,
                retry_fresh: false,
            }),
            Step::Reply(r) => Err(self.refused(s, "SEND", r, text).await),
            Step::WriteFailed(e) if e.kind() == io::ErrorKind::TimedOut => Err(Outcome {
                result: Err(SendError::InDoubt {
                    reason: format!("writing SEND timed out: {e}"),
                }),
                keep: false,
                retry_fresh: false,
            }),
            Step::WriteFailed(e) => Err(lost(format!("writing SEND failed: {e}"))),
            Step::ReadFailed(e) => Err(Outcome {
                result: Err(SendError::InDoubt {
                    reason: format!("SEND written, {}", e.describe()),
                }),
                keep: false,
                retry_fresh: false,
            }),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// The lines of a `DATA` body, dot-stuffed, then the lone `.`; the answer to it.
    async fn data_block(&mut self, text: &str, timeout: Duration) -> Step {
        let deadline = Instant::now() + timeout;
        let mut bytes = Vec::with_capacity(text.len() + 16);
        for line in text.split('\n') {
            if line.starts_with('.') {
                bytes.push(b'.');
            }
            bytes.extend_from_slice(line.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b".\r\n");
        if let Err(e) = self.wire.write_all(&bytes, deadline).await {
            return Step::WriteFailed(e);
        }
        match self.read_reply(deadline).await {
            Ok(r) => Step::Reply(r),
            Err(e) => Step::ReadFailed(e),
        }
    }
}

/// The connection broke before `SEND` reached the gateway: nothing was submitted.
fn lost(reason: String) -> Outcome {
    Outcome {
        result: Err(SendError::Unavailable {
            reason: format!("connection lost before SEND: {reason}"),
        }),
        keep: false,
        retry_fresh: true,
    }
}

/// The class of a refusal. `said` is the scrubbed reply.
fn classify(cmd: &str, reply: &Reply, said: &str) -> SendError {
    match reply.class() {
        4 => SendError::Transient {
            reason: format!("{cmd} refused: {said}"),
        },
        5 => SendError::Permanent {
            code: format!("snpp:{}", reply.code),
            reason: format!("{cmd} refused: {said}"),
        },
        _ => SendError::Transient {
            reason: format!("unexpected answer to {cmd}: {said}"),
        },
    }
}

impl<F, Fut, S> Protocol for Snpp<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Session = Session<S>;

    const NAME: &'static str = "snpp";

    async fn open(&mut self) -> Result<Session<S>, String> {
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let stream = match tokio::time::timeout_at(deadline, (self.connect)()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Err(_) => {
                return Err(format!(
                    "connect: no connection within {:?}",
                    self.cfg.connect_timeout
                ));
            }
        };
        let mut s = Session {
            wire: Wire::new(stream, false),
        };
        let greeting = s
            .read_reply(deadline)
            .await
            .map_err(|e| format!("greeting: {}", e.describe()))?;
        if greeting.code != 220 {
            s.wire.shutdown().await;
            return Err(format!(
                "greeting: {} {}",
                greeting.code,
                scrub(&greeting.text, "")
            ));
        }
        if let Some(login) = &self.cfg.login {
            let mut line = format!("LOGI {}", login.user);
            if let Some(pw) = &login.password {
                line.push(' ');
                line.push_str(pw.expose_secret());
            }
            match s.command(&line, self.cfg.reply_timeout).await {
                Step::Reply(r) if r.class() == 2 => {}
                Step::Reply(r) => {
                    let _ = s.command("QUIT", Duration::from_secs(2)).await;
                    return Err(format!("login refused: {} {}", r.code, scrub(&r.text, "")));
                }
                Step::WriteFailed(e) => return Err(format!("login: {e}")),
                Step::ReadFailed(e) => return Err(format!("login: {}", e.describe())),
            }
        }
        Ok(s)
    }

    async fn is_alive(&mut self, s: &mut Session<S>) -> bool {
        // The gateway never speaks unasked except to say it is closing (421).
        matches!(s.wire.poll_now().await, Ok(false))
    }

    async fn deliver(&mut self, s: &mut Session<S>, page: &Page) -> Outcome {
        match self.transaction(s, page).await {
            Ok(()) => Outcome {
                result: Ok(()),
                keep: true,
                retry_fresh: false,
            },
            Err(o) => o,
        }
    }

    async fn close(&mut self, mut s: Session<S>) {
        let wait = self.cfg.reply_timeout.min(Duration::from_secs(5));
        let _ = s.command("QUIT", wait).await;
        s.wire.shutdown().await;
    }

    fn discard(&mut self, s: Session<S>) {
        drop(s.wire.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Protocol;
    use pinpost_channel_core::{ChannelId, SecretString};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    #[test]
    fn urls_parse() {
        assert_eq!(
            Endpoint::parse("snpp://127.0.0.1").unwrap(),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 444,
                tls: false
            }
        );
        assert_eq!(
            Endpoint::parse("SNPPS://pager.example.net:7777/").unwrap(),
            Endpoint {
                host: "pager.example.net".into(),
                port: 7777,
                tls: true
            }
        );
        assert_eq!(Endpoint::parse("snpp://[::1]:4444").unwrap().host, "::1");
        for bad in [
            "snpps://host",
            "http://h:1",
            "snpp://:1",
            "snpp://h:0",
            "snpp://h:70000",
            "snpp://u@h:1",
            "snpp://h:1/x",
            "h:444",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies_parse() {
        assert_eq!(
            Reply::parse("250 Message OK"),
            (
                Reply {
                    code: 250,
                    text: "Message OK".into()
                },
                false
            )
        );
        assert!(Reply::parse("214-help").1);
        assert_eq!(Reply::parse("421").0.code, 421);
        assert_eq!(Reply::parse("hello").0.code, 0);
        assert_eq!(Reply::parse("25 x").0.code, 0);
    }

    #[test]
    fn refusals_are_classified() {
        let r = |code| Reply {
            code,
            text: String::new(),
        };
        assert!(matches!(
            classify("PAGE", &r(550), "550"),
            SendError::Permanent { code, .. } if code == "snpp:550"
        ));
        assert!(matches!(
            classify("SEND", &r(554), "554"),
            SendError::Permanent { code, .. } if code == "snpp:554"
        ));
        assert!(matches!(
            classify("SEND", &r(421), ""),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            classify("SEND", &r(450), ""),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            classify("SEND", &r(860), ""),
            SendError::Transient { .. }
        ));
        assert!(matches!(
            classify("SEND", &r(0), ""),
            SendError::Transient { .. }
        ));
    }

    /// A scripted gateway: for each line it reads, the next answer from `script` (None: close).
    async fn gateway(
        stream: DuplexStream,
        greeting: &str,
        script: Vec<(&str, Option<&str>)>,
    ) -> Vec<String> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        w.write_all(format!("{greeting}\r\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut in_data = false;
        for (expect, answer) in script {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            assert!(
                line.starts_with(expect),
                "expected {expect:?}, got {line:?}"
            );
            seen.push(line.clone());
            if line == "DATA" {
                in_data = true;
            } else if in_data && line == "." {
                in_data = false;
            }
            match answer {
                Some(a) if !a.is_empty() => {
                    w.write_all(format!("{a}\r\n").as_bytes()).await.unwrap()
                }
                Some(_) => {}
                None => return seen,
            }
        }
        seen
    }

    fn cfg() -> Arc<SnppConfig> {
        let mut c = SnppConfig::new(ChannelId::new("p"), "snpp://127.0.0.1:1");
        c.reply_timeout = Duration::from_secs(2);
        c.send_timeout = Duration::from_secs(2);
        Arc::new(c)
    }

    fn page(text: &str) -> Page {
        Page {
            delivery_id: "d1".into(),
            pager_id: "5551000".into(),
            text: SecretString::from(text.to_owned()),
            expires_at: None,
        }
    }

    async fn run(
        cfg: Arc<SnppConfig>,
        greeting: &'static str,
        script: Vec<(&'static str, Option<&'static str>)>,
        text: &str,
    ) -> (Outcome, Vec<String>) {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(gateway(b, greeting, script));
        let mut stream = Some(a);
        let mut p = Snpp::new(cfg, move || {
            let s = stream.take();
            async move { s.ok_or_else(|| io::Error::other("used")) }
        });
        let mut s = p.open().await.expect("open");
        let out = p.deliver(&mut s, &page(text)).await;
        drop(s);
        (out, server.await.unwrap())
    }

    #[tokio::test]
    async fn a_page_with_mess() {
        let (out, seen) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE 5551000", Some("250 Pager ID Accepted")),
                ("MESS PIN 4921 Amount 5", Some("250 Message OK")),
                ("SEND", Some("250 Message Sent Successfully")),
            ],
            "PIN 4921\nAmount 5",
        )
        .await;
        assert!(out.result.is_ok() && out.keep, "{:?}", out.result);
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn a_reply_that_echoes_the_pin_with_more_digits_is_scrubbed() {
        // Found by the snpp_reply fuzz target (its crashing reply to SEND).
        let (out, _) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE 5551000", Some("250 Pager ID Accepted")),
                ("MESS PIN", Some("250 Message OK")),
                (
                    "SEND",
                    Some("354 Begin InMessage Sent S49217730556144102 OK, GBoodbye"),
                ),
            ],
            "PIN 4921773055614410 for 3000 JPY",
        )
        .await;
        let error = out
            .result
            .expect_err("354 is no answer to SEND")
            .to_string();
        assert!(error.contains("[redacted]"), "{error}");
        assert!(!error.contains("4921773055614410"), "{error}");
    }

    #[tokio::test]
    async fn data_is_dot_stuffed() {
        let mut c = (*cfg()).clone();
        c.message_command = SnppMessageCommand::Auto;
        let (out, seen) = run(
            Arc::new(c),
            "220 SNPP ready",
            vec![
                ("PAGE 5551000", Some("250 ok")),
                ("DATA", Some("354 Begin Input; End with <CRLF>'.'<CRLF>")),
                ("PIN 4921", Some("")),
                ("..dot", Some("")),
                ("...", Some("")),
                (".", Some("250 Message OK")),
                ("SEND", Some("250 Message Sent Successfully")),
            ],
            "PIN 4921\n.dot\n..",
        )
        .await;
        assert!(out.result.is_ok(), "{:?}", out.result);
        assert_eq!(seen[2..6], ["PIN 4921", "..dot", "...", "."]);
    }

    #[tokio::test]
    async fn lost_after_send_is_in_doubt() {
        let (out, _) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE", Some("250 ok")),
                ("MESS", Some("250 ok")),
                ("SEND", None),
            ],
            "PIN 4921",
        )
        .await;
        assert!(
            matches!(out.result, Err(SendError::InDoubt { .. })),
            "{:?}",
            out.result
        );
        assert!(!out.keep && !out.retry_fresh);
    }

    #[tokio::test]
    async fn silence_after_send_is_in_doubt() {
        let mut c = (*cfg()).clone();
        c.send_timeout = Duration::from_millis(200);
        let (a, b) = tokio::io::duplex(4096);
        let mut stream = Some(a);
        let mut p = Snpp::new(Arc::new(c), move || {
            let s = stream.take();
            async move { s.ok_or_else(|| io::Error::other("used")) }
        });
        let server = tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(b);
            let mut r = BufReader::new(r);
            w.write_all(b"220 hi\r\n").await.unwrap();
            let mut line = String::new();
            for answer in ["250 ok\r\n", "250 ok\r\n"] {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                w.write_all(answer.as_bytes()).await.unwrap();
            }
            line.clear();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "SEND\r\n");
            // Hold the connection open, say nothing.
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop((r, w));
        });
        let mut s = p.open().await.unwrap();
        let out = p.deliver(&mut s, &page("PIN 1")).await;
        assert!(
            matches!(out.result, Err(SendError::InDoubt { .. })),
            "{:?}",
            out.result
        );
        server.abort();
    }

    #[tokio::test]
    async fn lost_before_send_may_retry_on_a_fresh_session() {
        let (out, _) = run(
            cfg(),
            "220 SNPP ready",
            vec![("PAGE", Some("250 ok")), ("MESS", None)],
            "PIN 4921",
        )
        .await;
        assert!(
            matches!(out.result, Err(SendError::Unavailable { .. })),
            "{:?}",
            out.result
        );
        assert!(out.retry_fresh && !out.keep);
    }

    #[tokio::test]
    async fn refusals_reset_the_transaction() {
        let (out, seen) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE 5551000", Some("550 Error, Invalid Pager ID")),
                ("RESE", Some("250 RESET OK")),
            ],
            "PIN 4921",
        )
        .await;
        assert_eq!(
            out.result,
            Err(SendError::Permanent {
                code: "snpp:550".into(),
                reason: "PAGE refused: 550 Error, Invalid Pager ID".into()
            })
        );
        assert!(out.keep);
        assert_eq!(seen, ["PAGE 5551000", "RESE"]);

        let (out, _) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE", Some("250 ok")),
                ("MESS", Some("250 ok")),
                ("SEND", Some("554 Error, failed PIN 4921")),
                ("RESE", Some("250 RESET OK")),
            ],
            "PIN 4921",
        )
        .await;
        match out.result {
            Err(SendError::Permanent { code, reason }) => {
                assert_eq!(code, "snpp:554");
                assert!(!reason.contains("4921"), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        let (out, _) = run(
            cfg(),
            "220 SNPP ready",
            vec![
                ("PAGE", Some("250 ok")),
                ("MESS", Some("250 ok")),
                ("SEND", Some("421 Gateway Service Unavailable")),
            ],
            "PIN 4921",
        )
        .await;
        assert!(
            matches!(out.result, Err(SendError::Transient { .. })),
            "{:?}",
            out.result
        );
        assert!(!out.keep && !out.retry_fresh);
    }

    #[tokio::test]
    async fn a_busy_greeting_or_refused_login_fails_open() {
        let (a, b) = tokio::io::duplex(1024);
        tokio::spawn(gateway(b, "421 Too busy", vec![]));
        let mut stream = Some(a);
        let mut p = Snpp::new(cfg(), move || {
            let s = stream.take();
            async move { s.ok_or_else(|| io::Error::other("used")) }
        });
        let e = p.open().await.err().unwrap();
        assert!(e.contains("421"), "{e}");

        let mut c = (*cfg()).clone();
        c.login = Some(crate::config::SnppLogin {
            user: "gw".into(),
            password: Some(SecretString::from("hunter2")),
        });
        let (a, b) = tokio::io::duplex(1024);
        let server = tokio::spawn(gateway(
            b,
            "220 hi",
            vec![
                ("LOGI gw hunter2", Some("550 Login Failed")),
                ("QUIT", Some("221 bye")),
            ],
        ));
        let mut stream = Some(a);
        let mut p = Snpp::new(Arc::new(c), move || {
            let s = stream.take();
            async move { s.ok_or_else(|| io::Error::other("used")) }
        });
        let e = p.open().await.err().unwrap();
        assert!(e.contains("login refused: 550"), "{e}");
        assert!(!e.contains("hunter2"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_unsolicited_421_marks_the_session_dead() {
        let (a, b) = tokio::io::duplex(1024);
        let mut stream = Some(a);
        let mut p = Snpp::new(cfg(), move || {
            let s = stream.take();
            async move { s.ok_or_else(|| io::Error::other("used")) }
        });
        let (r, mut w) = tokio::io::split(b);
        w.write_all(b"220 hi\r\n").await.unwrap();
        let mut s = p.open().await.unwrap();
        assert!(p.is_alive(&mut s).await);
        w.write_all(b"421 Timeout, Goodbye\r\n").await.unwrap();
        assert!(!p.is_alive(&mut s).await);
        drop(r);
    }
}
