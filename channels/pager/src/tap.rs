//! TAP / IXO 1.8 client over any `AsyncRead + AsyncWrite` (a serial line, a modem data
//! connection, a pty, `tokio::io::duplex`).
//!
//! A session: `<CR>` every `probe_interval` until the terminal says `ID=`; the login
//! `<ESC>PG1[password]<CR>` answered by `<ACK>` (in), `<NAK>` (sent again, at most three
//! more times) or `<ESC><EOT>` (refused); the go-ahead `<ESC>[p<CR>`. Then one transaction
//! per page, `<STX>pager ID<CR>message<CR><ETX>checksum<CR>`, split into blocks of at most
//! `block_chars` characters between `<STX>` and the block end: `<US>` ends a block inside a
//! field, `<ETB>` at a field boundary, `<ETX>` ends the last. Each block is answered: `<ACK>`
//! taken, `<NAK>` sent again (at most three more times), `<RS>` abandoned (the page is refused
//! for good), `<ESC><EOT>` the terminal hangs up. `<EOT><CR>` logs out.
//!
//! 7E1 framing and XON/XOFF are the serial port's job ([`crate::serial`]); this code masks
//! what it reads to 7 bits and writes 7-bit text only.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::{ExposeSecret, SendError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::channel::{Outcome, Page, Protocol};
use crate::config::TapConfig;
use crate::text::scrub;
use crate::wire::{ReadError, Wire};

pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const EOT: u8 = 0x04;
pub const ACK: u8 = 0x06;
pub const CR: u8 = 0x0d;
pub const NAK: u8 = 0x15;
pub const ETB: u8 = 0x17;
pub const ESC: u8 = 0x1b;
pub const RS: u8 = 0x1e;
pub const US: u8 = 0x1f;

/// The most characters between `<STX>` and the block end in TAP 1.8.
pub const MAX_BLOCK_CHARS: usize = 250;
/// The least a configured block may hold: a pager ID of up to 32 characters, its CR and some
/// text.
pub const MIN_BLOCK_CHARS: usize = 40;
/// How many times a refused (`<NAK>`) login or block is sent again.
pub const MAX_RESENDS: usize = 3;
/// How many answers that make no sense where they come are tolerated while waiting.
const MAX_UNKNOWN: usize = 3;

/// The TAP checksum of `bytes` (everything from `<STX>` through `<ETX>`/`<ETB>`/`<US>`): the
/// sum of the 7-bit values, low 12 bits, as three characters `0x30 + nibble`, most
/// significant first.
pub fn checksum(bytes: &[u8]) -> [u8; 3] {
    let sum: u32 = bytes.iter().map(|&b| u32::from(b & 0x7f)).sum();
    let sum = sum & 0x0fff;
    [
        0x30 + ((sum >> 8) & 0xf) as u8,
        0x30 + ((sum >> 4) & 0xf) as u8,
        0x30 + (sum & 0xf) as u8,
    ]
}

/// The blocks of one page, each complete: `<STX>`, up to `block_chars` characters of fields,
/// the block end, the checksum and `<CR>`. `pager_id` and `message` must be printable 7-bit
/// ASCII, and `block_chars` must hold the pager ID and its CR.
pub fn blocks(pager_id: &str, message: &str, block_chars: usize) -> Vec<Vec<u8>> {
    let mut content = Vec::with_capacity(pager_id.len() + message.len() + 2);
    content.extend_from_slice(pager_id.as_bytes());
    content.push(CR);
    content.extend_from_slice(message.as_bytes());
    content.push(CR);
    let chunks: Vec<&[u8]> = content.chunks(block_chars.max(1)).collect();
    let last = chunks.len() - 1;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let end = if i == last {
                ETX
            } else if chunk.last() == Some(&CR) {
                ETB
            } else {
                US
            };
            let mut block = Vec::with_capacity(chunk.len() + 6);
            block.push(STX);
            block.extend_from_slice(chunk);
            block.push(end);
            let sum = checksum(&block);
            block.extend_from_slice(&sum);
            block.push(CR);
            block
        })
        .collect()
}

/// Something the terminal said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    Ack,
    Nak,
    Rs,
    /// `<ESC><EOT>`: the terminal ends the session.
    Disconnect,
    /// `<ESC>[p`: ready for blocks.
    GoAhead,
    /// `ID=`: ready for the login.
    IdPrompt,
}

/// An open TAP session, logged in and given the go-ahead.
pub(crate) struct Session<S> {
    wire: Wire<S>,
    /// Text the terminal sent since the last event (`211 Page Sent`, `511 Invalid ID`).
    lines: Vec<String>,
    partial: String,
    /// The stream failed (I/O error or closed): the line itself is gone.
    broken: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    fn new(wire: Wire<S>) -> Self {
        Self {
            wire,
            lines: Vec::new(),
            partial: String::new(),
            broken: false,
        }
    }

    fn end_line(&mut self) {
        if !self.partial.is_empty() {
            if self.lines.len() == 8 {
                self.lines.remove(0);
            }
            self.lines.push(std::mem::take(&mut self.partial));
        }
    }

    /// The next event from what is buffered, if a whole one is there.
    fn parse_buffered(&mut self) -> Option<Event> {
        loop {
            let buf = self.wire.buffered();
            let &b = buf.first()?;
            let (event, used) = match b {
                ACK => (Some(Event::Ack), 1),
                NAK => (Some(Event::Nak), 1),
                RS => (Some(Event::Rs), 1),
                ESC => match buf.get(1) {
                    None => return None,
                    Some(&EOT) => (Some(Event::Disconnect), 2),
                    Some(b'[') => match buf.get(2) {
                        None => return None,
                        Some(b'p') => (Some(Event::GoAhead), 3),
                        Some(_) => (None, 1),
                    },
                    Some(_) => (None, 1),
                },
                CR | b'\n' => {
                    self.end_line();
                    (None, 1)
                }
                0x20..=0x7e => {
                    if self.partial.len() < 200 {
                        self.partial.push(char::from(b));
                    }
                    let id = self.partial.ends_with("ID=");
                    if id {
                        self.partial.clear();
                    }
                    (id.then_some(Event::IdPrompt), 1)
                }
                _ => (None, 1),
            };
            self.wire.consume(used);
            if let Some(e) = event {
                self.end_line();
                return Some(e);
            }
        }
    }

    async fn next_event(&mut self, deadline: Instant) -> Result<Event, ReadError> {
        loop {
            if let Some(e) = self.parse_buffered() {
                return Ok(e);
            }
            if let Err(e) = self.wire.fill(deadline).await {
                if !matches!(e, ReadError::Timeout) {
                    self.broken = true;
                }
                return Err(e);
            }
        }
    }

    async fn write(&mut self, bytes: &[u8], timeout: Duration) -> io::Result<()> {
        let r = self.wire.write_all(bytes, Instant::now() + timeout).await;
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// The terminal's response code, from the last text line that starts with three digits.
    fn last_code(&self) -> Option<String> {
        self.lines.iter().rev().find_map(|l| {
            let b = l.as_bytes();
            (b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit)).then(|| l[..3].to_owned())
        })
    }

    fn said(&self, message: &str) -> String {
        scrub(&self.lines.join(" / "), message)
    }
}

/// The TAP side of the channel actor.
pub(crate) struct Tap<F, S> {
    cfg: Arc<TapConfig>,
    connect: F,
    /// A line kept between sessions (a direct line handed over as a stream), with whatever
    /// the terminal sent after the last session.
    line: Option<Wire<S>>,
    /// Keep the stream after a session for the next one instead of asking `connect` again.
    keep_line: bool,
    /// The kept line ended without a clean logout: log out whatever is left first.
    line_dirty: bool,
}

impl<F, Fut, S> Tap<F, S>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(crate) fn new(cfg: Arc<TapConfig>, connect: F, keep_line: bool) -> Self {
        Self {
            cfg,
            connect,
            line: None,
            keep_line,
            line_dirty: false,
        }
    }

    fn give_back(&mut self, s: Session<S>, clean: bool) {
        if self.keep_line && !s.broken {
            self.line = Some(s.wire);
            self.line_dirty = !clean;
        }
    }

    async fn login(&mut self, s: &mut Session<S>) -> Result<(), String> {
        let cfg = self.cfg.clone();
        if self.line_dirty {
            // A kept line whose last session did not end cleanly: log that one out first.
            let _ = s.write(&[EOT, CR], cfg.login_timeout).await;
            self.line_dirty = false;
        }
        // 1. Probe until ID=.
        let until = Instant::now() + cfg.id_timeout;
        'probe: loop {
            if Instant::now() >= until {
                return Err(format!(
                    "no ID= from the terminal within {:?}",
                    cfg.id_timeout
                ));
            }
            s.write(&[CR], cfg.probe_interval)
                .await
                .map_err(|e| format!("probe: {e}"))?;
            let next = (Instant::now() + cfg.probe_interval).min(until);
            loop {
                match s.next_event(next).await {
                    Ok(Event::IdPrompt) => break 'probe,
                    Ok(_) => {}
                    Err(ReadError::Timeout) => continue 'probe,
                    Err(e) => return Err(format!("probe: {}", e.describe())),
                }
            }
        }
        // Whatever followed the prompt belongs to the probing.
        let _ = s.wire.poll_now().await;
        while s.parse_buffered().is_some() {}
        s.lines.clear();

        // 2. Log in.
        let mut login = vec![ESC, b'P', b'G', b'1'];
        if let Some(pw) = &cfg.password {
            login.extend_from_slice(pw.expose_secret().as_bytes());
        }
        login.push(CR);
        let mut naks = 0;
        'login: loop {
            s.write(&login, cfg.login_timeout)
                .await
                .map_err(|e| format!("login: {e}"))?;
            let deadline = Instant::now() + cfg.login_timeout;
            let mut unknown = 0;
            loop {
                match s.next_event(deadline).await {
                    Ok(Event::Ack) => break 'login,
                    Ok(Event::Nak) => {
                        naks += 1;
                        if naks > MAX_RESENDS {
                            return Err(format!("login refused {naks} times ({})", s.said("")));
                        }
                        continue 'login;
                    }
                    Ok(Event::Disconnect) => {
                        return Err(format!(
                            "the terminal refused the login and hung up ({})",
                            s.said("")
                        ));
                    }
                    Ok(Event::IdPrompt) => {}
                    Ok(_) => {
                        unknown += 1;
                        if unknown > MAX_UNKNOWN {
                            return Err("login: too many unexpected answers".into());
                        }
                    }
                    Err(e) => return Err(format!("login: {}", e.describe())),
                }
            }
        }

        // 3. Wait for the go-ahead.
        let deadline = Instant::now() + cfg.go_ahead_timeout;
        loop {
            match s.next_event(deadline).await {
                Ok(Event::GoAhead) => break,
                Ok(Event::Disconnect) => {
                    return Err(format!(
                        "the terminal hung up before the go-ahead ({})",
                        s.said("")
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(format!("go-ahead: {}", e.describe())),
            }
        }
        s.lines.clear();
        Ok(())
    }

    async fn transaction(&mut self, s: &mut Session<S>, page: &Page) -> Outcome {
        let cfg = self.cfg.clone();
        let text = page.text.expose_secret();
        let blocks = blocks(&page.pager_id, text, cfg.block_chars);
        let last = blocks.len() - 1;
        let fail = |result: SendError, keep: bool| Outcome {
            result: Err(result),
            keep,
            retry_fresh: false,
        };
        for (i, block) in blocks.iter().enumerate() {
            let mut naks = 0;
            'send: loop {
                s.lines.clear();
                if let Err(e) = s.write(block, cfg.block_timeout).await {
                    return if i == 0 && naks == 0 && e.kind() != io::ErrorKind::TimedOut {
                        Outcome {
                            result: Err(SendError::Unavailable {
                                reason: format!("writing the first block failed: {e}"),
                            }),
                            keep: false,
                            retry_fresh: true,
                        }
                    } else if i == last {
                        fail(
                            SendError::InDoubt {
                                reason: format!("writing the last block failed: {e}"),
                            },
                            false,
                        )
                    } else {
                        fail(
                            SendError::Transient {
                                reason: format!("writing block {} failed: {e}", i + 1),
                            },
                            false,
                        )
                    };
                }
                let deadline = Instant::now() + cfg.block_timeout;
                let mut unknown = 0;
                loop {
                    match s.next_event(deadline).await {
                        Ok(Event::Ack) => break 'send,
                        Ok(Event::Nak) => {
                            naks += 1;
                            if naks > MAX_RESENDS {
                                return fail(
                                    SendError::Transient {
                                        reason: format!(
                                            "block {} refused {naks} times ({})",
                                            i + 1,
                                            s.said(text)
                                        ),
                                    },
                                    false,
                                );
                            }
                            continue 'send;
                        }
                        Ok(Event::Rs) => {
                            let code = s.last_code().unwrap_or_else(|| "rs".into());
                            return fail(
                                SendError::Permanent {
                                    code: format!("tap:{code}"),
                                    reason: format!(
                                        "the terminal abandoned the page ({})",
                                        s.said(text)
                                    ),
                                },
                                true,
                            );
                        }
                        Ok(Event::Disconnect) => {
                            return fail(
                                SendError::Transient {
                                    reason: format!(
                                        "the terminal hung up instead of taking block {} ({})",
                                        i + 1,
                                        s.said(text)
                                    ),
                                },
                                false,
                            );
                        }
                        Ok(_) => {
                            unknown += 1;
                            if unknown <= MAX_UNKNOWN {
                                continue;
                            }
                            let why = "too many unexpected answers".to_owned();
                            return self.no_answer(i, last, why);
                        }
                        Err(e) => return self.no_answer(i, last, e.describe()),
                    }
                }
            }
        }
        Outcome {
            result: Ok(()),
            keep: true,
            retry_fresh: false,
        }
    }

    /// No usable answer to block `i`: the last block may have been taken, an earlier one
    /// cannot complete the page.
    fn no_answer(&self, i: usize, last: usize, why: String) -> Outcome {
        let result = if i == last {
            SendError::InDoubt {
                reason: format!("last block written, {why}"),
            }
        } else {
            SendError::Transient {
                reason: format!("block {} of {} unanswered: {why}", i + 1, last + 1),
            }
        };
        Outcome {
            result: Err(result),
            keep: false,
            retry_fresh: false,
        }
    }
}

impl<F, Fut, S> Protocol for Tap<F, S>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Session = Session<S>;

    const NAME: &'static str = "tap";

    async fn open(&mut self) -> Result<Session<S>, String> {
        let wire = match self.line.take() {
            Some(line) => line,
            None => match tokio::time::timeout(self.cfg.connect_timeout, (self.connect)()).await {
                Ok(Ok(s)) => Wire::new(s, true),
                Ok(Err(e)) => return Err(format!("line: {e}")),
                Err(_) => {
                    return Err(format!(
                        "line: not ready within {:?}",
                        self.cfg.connect_timeout
                    ));
                }
            },
        };
        let mut s = Session::new(wire);
        match self.login(&mut s).await {
            Ok(()) => Ok(s),
            Err(e) => {
                self.give_back(s, false);
                Err(e)
            }
        }
    }

    async fn is_alive(&mut self, s: &mut Session<S>) -> bool {
        match s.wire.poll_now().await {
            Err(_) => {
                s.broken = true;
                false
            }
            Ok(_) => {
                let mut alive = true;
                while let Some(e) = s.parse_buffered() {
                    if e == Event::Disconnect {
                        alive = false;
                    }
                }
                s.lines.clear();
                alive
            }
        }
    }

    async fn deliver(&mut self, s: &mut Session<S>, page: &Page) -> Outcome {
        self.transaction(s, page).await
    }

    async fn close(&mut self, mut s: Session<S>) {
        let timeout = self.cfg.logout_timeout;
        let mut clean = false;
        if s.write(&[EOT, CR], timeout).await.is_ok() {
            let deadline = Instant::now() + timeout;
            loop {
                match s.next_event(deadline).await {
                    Ok(Event::Disconnect) => {
                        clean = true;
                        break;
                    }
                    Ok(Event::Rs) => {
                        tracing::warn!(
                            channel = %self.cfg.id,
                            code = s.last_code().as_deref().unwrap_or(""),
                            "the terminal answered the logout with <RS>"
                        );
                        clean = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        if self.keep_line {
            self.give_back(s, clean);
        } else {
            s.wire.shutdown().await;
        }
    }

    fn discard(&mut self, s: Session<S>) {
        self.give_back(s, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_the_spec_examples() {
        let mut b = vec![STX];
        b.extend_from_slice(b"123\rABC\r");
        b.push(ETX);
        assert_eq!(&checksum(&b), b"17;");

        let mut b = vec![STX];
        b.extend_from_slice(b"5551000\rPIN 4921 7730 5561\r");
        b.push(ETX);
        assert_eq!(&checksum(&b), b"538");

        // Only 7 bits count, only 12 bits are kept.
        assert_eq!(checksum(&[0x80 | b'A']), checksum(b"A"));
        assert_eq!(&checksum(&[0x7f; 40]), b"3=8"); // 40 * 127 = 5080 = 0x13D8
    }

    #[test]
    fn one_block_for_a_short_page() {
        let b = blocks("123", "ABC", 250);
        assert_eq!(b, vec![b"\x02123\rABC\r\x0317;\r".to_vec()]);
    }

    #[test]
    fn long_pages_split_with_us_and_etb() {
        let msg: String = (0..300)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let b = blocks("5551000", &msg, 250);
        assert_eq!(b.len(), 2);
        // 250 characters of fields, then <US>: the message field goes on.
        assert_eq!(b[0].len(), 1 + 250 + 1 + 3 + 1);
        assert_eq!(b[0][251], US);
        assert_eq!(b[1][b[1].len() - 5], ETX);
        for block in &b {
            let n = block.len();
            assert_eq!(&checksum(&block[..n - 4]), &block[n - 4..n - 1]);
            assert_eq!(block[n - 1], CR);
        }
        // Reassembled, the fields are intact.
        let joined: Vec<u8> = b
            .iter()
            .flat_map(|blk| blk[1..blk.len() - 5].to_vec())
            .collect();
        assert_eq!(
            joined,
            [b"5551000\r".as_slice(), msg.as_bytes(), b"\r"].concat()
        );

        // A block that ends right after the pager ID's CR ends with <ETB>.
        let b = blocks("1234567", &"x".repeat(60), 40);
        assert_eq!(b.len(), 2);
        let b = blocks("123456789012345678901234567890123456789", "x", 40);
        assert_eq!(b[0][41], ETB);
    }

    #[tokio::test]
    async fn events_parse_across_reads() {
        use tokio::io::AsyncWriteExt;
        let (a, mut b) = tokio::io::duplex(256);
        let mut s = Session::new(Wire::new(a, true));
        let far = Instant::now() + Duration::from_secs(1);
        b.write_all(b"\rID=").await.unwrap();
        assert_eq!(s.next_event(far).await.unwrap(), Event::IdPrompt);
        b.write_all(b"110 1.8\r\x06\r\x1b").await.unwrap();
        assert_eq!(s.next_event(far).await.unwrap(), Event::Ack);
        assert_eq!(s.lines, ["110 1.8"]);
        b.write_all(b"[p\r511 Invalid pager ID\r\x1e\r\x1b\x04\r")
            .await
            .unwrap();
        assert_eq!(s.next_event(far).await.unwrap(), Event::GoAhead);
        assert_eq!(s.next_event(far).await.unwrap(), Event::Rs);
        assert_eq!(s.last_code().as_deref(), Some("511"));
        assert_eq!(s.next_event(far).await.unwrap(), Event::Disconnect);
        b.write_all(&[NAK | 0x80]).await.unwrap();
        assert_eq!(s.next_event(far).await.unwrap(), Event::Nak);
        drop(b);
        assert!(matches!(s.next_event(far).await, Err(ReadError::Closed)));
        assert!(s.broken);
    }
}
