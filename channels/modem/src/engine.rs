//! The AT-command engine: one [`Modem`] over one byte stream.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use crate::dle::{XOFF, XON};
use crate::response::{FinalResult, Response};

/// Why a modem exchange failed. Never carries page data or message text.
#[derive(Debug, thiserror::Error)]
pub enum ModemError {
    /// The serial port could not be opened or set up.
    #[error("cannot open {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("modem i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream reached end of file (the port or peer went away).
    #[error("modem connection closed")]
    Closed,
    /// No final result code (or no line) arrived in time. `lines` holds the information
    /// lines that did arrive.
    #[error("no answer to {waiting_for} within {after:?}")]
    Timeout {
        waiting_for: String,
        after: Duration,
        lines: Vec<String>,
    },
    /// The modem answered something other than `OK` where `OK` was required.
    #[error("{command} answered {}", response.result)]
    Rejected { command: String, response: Response },
    /// A dial string with characters a modem would take as commands.
    #[error("invalid dial string")]
    InvalidDialString,
    /// A command with control characters or non-ASCII text.
    #[error("invalid AT command")]
    InvalidCommand,
}

/// Tuning for a [`Modem`].
#[derive(Debug, Clone)]
pub struct ModemOptions {
    /// How long [`Modem::command`] waits for the final result code.
    pub command_timeout: Duration,
    /// A line longer than this without a terminator is dropped as noise.
    pub max_line_len: usize,
    /// After a line interrupts [`Modem::send_data`], how long to wait for the rest of the
    /// modem's answer (up to its final result code).
    pub interrupt_grace: Duration,
}

impl Default for ModemOptions {
    fn default() -> Self {
        Self {
            command_timeout: Duration::from_secs(5),
            max_line_len: 512,
            interrupt_grace: Duration::from_secs(2),
        }
    }
}

/// Whether `ATD` dials with tones or pulses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialMode {
    Tone,
    Pulse,
}

/// How a [`Modem::send_data`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSent {
    /// Every byte was written and nothing came back meanwhile.
    Complete,
    /// The modem said something while the data was going out (a hang-up report, `ERROR`,
    /// `NO CARRIER`): writing stopped after `written` bytes. `lines` are its information
    /// lines and `result` the final result code, if one arrived within the grace period.
    Interrupted {
        written: usize,
        lines: Vec<String>,
        result: Option<FinalResult>,
    },
}

/// An AT-command engine over any byte stream: a serial port ([`Modem::open_serial`]), a pty,
/// or [`tokio::io::duplex`] in tests.
///
/// Command mode: [`command`](Self::command) writes `AT...<CR>` and collects the answer as a
/// [`Response`]. Lines end with CR, LF or both, may arrive split across reads or several in
/// one read; empty lines, the echo of the command (`ATE1`), unsolicited `RING`s and noise
/// (lines with control or non-ASCII bytes, over-long lines) are dropped; XON/XOFF/NUL bytes
/// are stripped. Data mode (after `CONNECT`): [`write_raw`](Self::write_raw),
/// [`read_raw`](Self::read_raw) and [`send_data`](Self::send_data), which watches for the
/// modem interrupting the transfer.
pub struct Modem<S> {
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rx: Vec<u8>,
    skip_lf: bool,
    opts: ModemOptions,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Modem<S> {
    pub fn new(io: S) -> Self {
        Self::with_options(io, ModemOptions::default())
    }

    pub fn with_options(io: S, opts: ModemOptions) -> Self {
        let (reader, writer) = tokio::io::split(io);
        Self {
            reader,
            writer,
            rx: Vec::with_capacity(256),
            skip_lf: false,
            opts,
        }
    }

    pub fn options(&self) -> &ModemOptions {
        &self.opts
    }

    /// The stream back. Bytes read but not yet consumed are lost.
    pub fn into_inner(self) -> S {
        self.reader.unsplit(self.writer)
    }

    /// Send `cmd` (with or without the `AT` prefix it is sent as given, plus `<CR>`) and
    /// read the answer up to its final result code within the default command timeout.
    pub async fn command(&mut self, cmd: &str) -> Result<Response, ModemError> {
        let t = self.opts.command_timeout;
        self.command_with_timeout(cmd, t).await
    }

    /// [`command`](Self::command) with its own timeout (dialling takes a minute or more).
    ///
    /// Anything the modem sent before the command (a late line of an earlier exchange) is
    /// discarded first, so it cannot be taken for this command's answer.
    pub async fn command_with_timeout(
        &mut self,
        cmd: &str,
        timeout: Duration,
    ) -> Result<Response, ModemError> {
        self.send_command(cmd).await?;
        let deadline = Instant::now() + timeout;
        self.read_until_final(deadline, Some(cmd), cmd).await
    }

    /// [`command`](Self::command), requiring `OK`.
    pub async fn expect_ok(&mut self, cmd: &str) -> Result<Response, ModemError> {
        let response = self.command(cmd).await?;
        if response.is_ok() {
            Ok(response)
        } else {
            Err(ModemError::Rejected {
                command: cmd.to_owned(),
                response,
            })
        }
    }

    /// Write `cmd<CR>` without reading an answer (the caller reads with
    /// [`read_response`](Self::read_response)). Pending input is discarded first.
    pub async fn send_command(&mut self, cmd: &str) -> Result<(), ModemError> {
        if cmd.is_empty() || !cmd.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(ModemError::InvalidCommand);
        }
        if !self.rx.is_empty() {
            tracing::debug!(bytes = self.rx.len(), "discarding stale modem input");
            self.rx.clear();
        }
        self.skip_lf = false;
        tracing::trace!(command = cmd, "modem command");
        let deadline = Instant::now() + self.opts.command_timeout;
        let mut line = Vec::with_capacity(cmd.len() + 1);
        line.extend_from_slice(cmd.as_bytes());
        line.push(b'\r');
        self.write_all_by(&line, deadline, cmd).await
    }

    /// Read lines up to a final result code (without sending anything), e.g. the answer to
    /// a post-page message, or a late `+FHS` report.
    pub async fn read_response(&mut self, timeout: Duration) -> Result<Response, ModemError> {
        let deadline = Instant::now() + timeout;
        self.read_until_final(deadline, None, "a final result")
            .await
    }

    /// The next line (information line or final result code, as text) within `timeout`.
    pub async fn read_line(&mut self, timeout: Duration) -> Result<String, ModemError> {
        let deadline = Instant::now() + timeout;
        match self.next_line(deadline, "a line").await {
            Err(ModemError::Timeout {
                waiting_for, lines, ..
            }) => Err(ModemError::Timeout {
                waiting_for,
                after: timeout,
                lines,
            }),
            other => other,
        }
    }

    /// Discard input until the modem has been quiet for `quiet` (at most `max` in all).
    /// Returns how many bytes were dropped.
    pub async fn drain(&mut self, quiet: Duration, max: Duration) -> Result<usize, ModemError> {
        let mut dropped = self.rx.len();
        self.rx.clear();
        self.skip_lf = false;
        let end = Instant::now() + max;
        let mut buf = [0u8; 256];
        loop {
            let until = (Instant::now() + quiet).min(end);
            match timeout_at(until, self.reader.read(&mut buf)).await {
                Err(_) => return Ok(dropped),
                Ok(Ok(0)) => return Err(ModemError::Closed),
                Ok(Ok(n)) => dropped += n,
                Ok(Err(e)) => return Err(e.into()),
            }
            if Instant::now() >= end {
                return Ok(dropped);
            }
        }
    }

    /// `ATD<T|P><number>`, waiting `timeout` for the final result. The answer is returned
    /// as is: `CONNECT` for a data call, `OK` after `+FCO` for a Class 2.0 fax call, `BUSY`,
    /// `NO CARRIER`, `NO DIALTONE`, `NO ANSWER`...
    ///
    /// `number` may hold digits, `*`, `#`, `A`–`D`, and the dial modifiers `,` `W` `@` `!`
    /// `P` `T`; anything else (`;`, spaces, control characters) is refused before anything
    /// is written.
    pub async fn dial(
        &mut self,
        number: &str,
        mode: DialMode,
        timeout: Duration,
    ) -> Result<Response, ModemError> {
        if !is_dial_string(number) {
            return Err(ModemError::InvalidDialString);
        }
        let cmd = match mode {
            DialMode::Tone => format!("ATDT{number}"),
            DialMode::Pulse => format!("ATDP{number}"),
        };
        self.command_with_timeout(&cmd, timeout).await
    }

    /// `ATH0` (go on hook).
    pub async fn hang_up(&mut self) -> Result<Response, ModemError> {
        self.command("ATH0").await
    }

    /// From data mode back to command mode: guard time, `+++`, guard time, then the
    /// modem's `OK`.
    pub async fn escape_to_command(&mut self, guard: Duration) -> Result<Response, ModemError> {
        sleep(guard).await;
        let deadline = Instant::now() + self.opts.command_timeout;
        self.write_all_by(b"+++", deadline, "+++").await?;
        sleep(guard).await;
        let deadline = Instant::now() + self.opts.command_timeout + guard;
        self.read_until_final(deadline, None, "+++").await
    }

    /// Write bytes as they are (data mode), within the command timeout.
    pub async fn write_raw(&mut self, data: &[u8]) -> Result<(), ModemError> {
        let deadline = Instant::now() + self.opts.command_timeout;
        self.write_all_by(data, deadline, "data").await
    }

    /// Read raw bytes (data mode): first those already buffered, then from the stream.
    /// Returns 0 only when the stream closed.
    pub async fn read_raw(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, ModemError> {
        if self.skip_lf && self.rx.first() == Some(&b'\n') {
            self.rx.remove(0);
            self.skip_lf = false;
        }
        if !self.rx.is_empty() {
            let n = self.rx.len().min(buf.len());
            buf[..n].copy_from_slice(&self.rx[..n]);
            self.rx.drain(..n);
            return Ok(n);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let n = match timeout_at(deadline, self.reader.read(buf)).await {
                Err(_) => {
                    return Err(ModemError::Timeout {
                        waiting_for: "data".into(),
                        after: timeout,
                        lines: Vec::new(),
                    });
                }
                Ok(r) => r?,
            };
            if self.skip_lf && n > 0 {
                self.skip_lf = false;
                if buf[0] == b'\n' {
                    buf.copy_within(1..n, 0);
                    if n == 1 {
                        continue;
                    }
                    return Ok(n - 1);
                }
            }
            return Ok(n);
        }
    }

    /// Write `data` (already DLE-stuffed, post-page command included) while watching the
    /// modem: if it sends a line meanwhile (a hang-up report, `ERROR`, `NO CARRIER`),
    /// writing stops and its answer is returned. `timeout` bounds the whole transfer.
    pub async fn send_data(
        &mut self,
        data: &[u8],
        timeout: Duration,
    ) -> Result<DataSent, ModemError> {
        const CHUNK: usize = 1024;
        let started = Instant::now();
        let deadline = started + timeout;
        let mut pos = 0;
        let mut buf = [0u8; 256];
        loop {
            if let Some(line) = self.take_line() {
                // An unsolicited RING is no answer to the data (see `read_until_final`).
                if line.eq_ignore_ascii_case("RING") {
                    continue;
                }
                return self.interrupted(pos, line).await;
            }
            if pos == data.len() {
                break;
            }
            let end = (pos + CHUNK).min(data.len());
            tokio::select! {
                biased;
                r = self.reader.read(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Err(ModemError::Closed);
                    }
                    self.rx.extend_from_slice(&buf[..n]);
                }
                r = self.writer.write(&data[pos..end]) => {
                    let n = r?;
                    if n == 0 {
                        return Err(ModemError::Closed);
                    }
                    pos += n;
                }
                _ = sleep_until(deadline) => {
                    return Err(ModemError::Timeout {
                        waiting_for: format!("the modem to take page data ({pos} of {} bytes)", data.len()),
                        after: timeout,
                        lines: Vec::new(),
                    });
                }
            }
        }
        match timeout_at(deadline, self.writer.flush()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ModemError::Timeout {
                    waiting_for: "the modem to take page data".into(),
                    after: timeout,
                    lines: Vec::new(),
                });
            }
        }
        Ok(DataSent::Complete)
    }

    async fn interrupted(&mut self, written: usize, first: String) -> Result<DataSent, ModemError> {
        let mut lines = Vec::new();
        if let Some(result) = FinalResult::parse(&first) {
            return Ok(DataSent::Interrupted {
                written,
                lines,
                result: Some(result),
            });
        }
        lines.push(first);
        let deadline = Instant::now() + self.opts.interrupt_grace;
        match self
            .read_until_final(deadline, None, "the rest of an interruption")
            .await
        {
            Ok(r) => {
                lines.extend(r.lines);
                Ok(DataSent::Interrupted {
                    written,
                    lines,
                    result: Some(r.result),
                })
            }
            Err(ModemError::Timeout { lines: more, .. }) => {
                lines.extend(more);
                Ok(DataSent::Interrupted {
                    written,
                    lines,
                    result: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn write_all_by(
        &mut self,
        data: &[u8],
        deadline: Instant,
        what: &str,
    ) -> Result<(), ModemError> {
        let started = Instant::now();
        let write = async {
            self.writer.write_all(data).await?;
            self.writer.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ModemError::Timeout {
                waiting_for: format!("the modem to take {what}"),
                after: deadline.saturating_duration_since(started),
                lines: Vec::new(),
            }),
        }
    }

    async fn read_until_final(
        &mut self,
        deadline: Instant,
        echo_of: Option<&str>,
        what: &str,
    ) -> Result<Response, ModemError> {
        let started = Instant::now();
        let mut lines = Vec::new();
        let mut echo_pending = echo_of;
        loop {
            let line = match self.next_line(deadline, what).await {
                Ok(l) => l,
                Err(ModemError::Timeout { waiting_for, .. }) => {
                    return Err(ModemError::Timeout {
                        waiting_for,
                        after: deadline.saturating_duration_since(started),
                        lines,
                    });
                }
                Err(e) => return Err(e),
            };
            if let Some(cmd) = echo_pending
                && line.eq_ignore_ascii_case(cmd.trim())
            {
                echo_pending = None;
                continue;
            }
            if let Some(result) = FinalResult::parse(&line) {
                tracing::trace!(%result, lines = lines.len(), "modem final result");
                return Ok(Response { lines, result });
            }
            if line.eq_ignore_ascii_case("RING") {
                continue;
            }
            lines.push(line);
        }
    }

    async fn next_line(&mut self, deadline: Instant, what: &str) -> Result<String, ModemError> {
        let mut buf = [0u8; 256];
        loop {
            if let Some(line) = self.take_line() {
                return Ok(line);
            }
            match timeout_at(deadline, self.reader.read(&mut buf)).await {
                Err(_) => {
                    return Err(ModemError::Timeout {
                        waiting_for: what.to_owned(),
                        after: Duration::ZERO,
                        lines: Vec::new(),
                    });
                }
                Ok(Ok(0)) => return Err(ModemError::Closed),
                Ok(Ok(n)) => self.rx.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// The next complete, meaningful line in the buffer, consuming empty and noise lines.
    fn take_line(&mut self) -> Option<String> {
        loop {
            if self.skip_lf && !self.rx.is_empty() {
                if self.rx[0] == b'\n' {
                    self.rx.remove(0);
                }
                self.skip_lf = false;
            }
            let Some(pos) = self.rx.iter().position(|&b| b == b'\r' || b == b'\n') else {
                if self.rx.len() > self.opts.max_line_len {
                    tracing::debug!(bytes = self.rx.len(), "dropping an over-long modem line");
                    self.rx.clear();
                }
                return None;
            };
            let terminator = self.rx[pos];
            let line = clean_line(&self.rx[..pos]);
            self.rx.drain(..=pos);
            if terminator == b'\r' {
                if self.rx.first() == Some(&b'\n') {
                    self.rx.remove(0);
                } else if self.rx.is_empty() {
                    self.skip_lf = true;
                }
            }
            if let Some(line) = line {
                return Some(line);
            }
        }
    }
}

/// The text of a line, or `None` for an empty or noise line.
fn clean_line(raw: &[u8]) -> Option<String> {
    let mut text = String::with_capacity(raw.len());
    for &b in raw {
        match b {
            0 | XON | XOFF => {}
            0x20..=0x7e => text.push(char::from(b)),
            _ => {
                tracing::trace!(bytes = raw.len(), "dropping a noise line from the modem");
                return None;
            }
        }
    }
    let t = text.trim();
    if t.is_empty() {
        None
    } else if t.len() == text.len() {
        Some(text)
    } else {
        Some(t.to_owned())
    }
}

/// Whether `s` is a dial string a modem takes as such and nothing else.
pub fn is_dial_string(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || matches!(
                    b,
                    b'*' | b'#'
                        | b','
                        | b'W'
                        | b'w'
                        | b'@'
                        | b'!'
                        | b'P'
                        | b'p'
                        | b'T'
                        | b't'
                        | b'A'
                        | b'B'
                        | b'C'
                        | b'D'
                        | b'a'
                        | b'b'
                        | b'c'
                        | b'd'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_lines() {
        assert_eq!(clean_line(b"OK").as_deref(), Some("OK"));
        assert_eq!(clean_line(b"\x11+FCO ").as_deref(), Some("+FCO"));
        assert_eq!(clean_line(b"  "), None);
        assert_eq!(clean_line(b"\xff\xfeOK"), None);
        assert_eq!(clean_line(b"O\x07K"), None);
    }

    #[test]
    fn dial_strings() {
        assert!(is_dial_string("0312345678"));
        assert!(is_dial_string("9,W010*#"));
        assert!(!is_dial_string("123;"));
        assert!(!is_dial_string("123 456"));
        assert!(!is_dial_string("12\r+FKS"));
        assert!(!is_dial_string(""));
    }
}
