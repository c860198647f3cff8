//! A TAP 1.8 paging-terminal simulator, for tests and for trying the driver without a
//! paging company: it answers the probe with `ID=`, takes the login, gives the go-ahead,
//! verifies every block's checksum (`<NAK>` on a mismatch), reassembles fields split with
//! `<US>`/`<ETB>`, refuses unknown pager IDs with `<RS>`, records each page and logs out on
//! `<EOT>`.
//!
//! Faults are injected through [`TerminalConfig`]: NAK the first logins, corrupt the first
//! blocks as line noise would (the checksum check then fails for real), hang up on or ignore
//! a block. Protocol breaches by the client (a block longer than allowed, a message longer
//! than the pager takes, fields that do not pair up) are recorded in
//! [`TerminalStats::violations`].
//!
//! The simulator keeps the texts it receives: it is a test peer and holds test data only.

use std::io;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tap::{ACK, CR, EOT, ESC, ETB, ETX, NAK, RS, STX, US, checksum};

/// How the simulated terminal behaves.
#[derive(Debug, Clone)]
pub struct TerminalConfig {
    /// The login password the terminal expects; `None` takes any.
    pub password: Option<String>,
    /// Pager IDs refused with `511 Invalid Pager ID` and `<RS>`.
    pub invalid_ids: Vec<String>,
    /// Answer this many login attempts with `<NAK>` before taking one.
    pub login_naks: usize,
    /// Corrupt this many blocks (the first ones) as they arrive, so their checksum fails.
    pub corrupt_blocks: usize,
    /// Ignore this many probe `<CR>`s before answering `ID=`.
    pub probes_before_id: usize,
    /// The most characters between `<STX>` and the block end.
    pub max_block_chars: usize,
    /// The longest message a pager takes.
    pub max_message_chars: usize,
    /// Hang up (`<ESC><EOT>`) instead of answering this block (counted from 1 over the
    /// simulator's life).
    pub hang_up_on_block: Option<usize>,
    /// Never answer this block (counted from 1 over the simulator's life).
    pub ignore_block: Option<usize>,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            password: None,
            invalid_ids: Vec::new(),
            login_naks: 0,
            corrupt_blocks: 0,
            probes_before_id: 0,
            max_block_chars: crate::tap::MAX_BLOCK_CHARS,
            max_message_chars: 240,
            hang_up_on_block: None,
            ignore_block: None,
        }
    }
}

/// One page the terminal took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedPage {
    pub pager_id: String,
    pub message: String,
    /// How many blocks carried it.
    pub blocks: usize,
}

/// What happened on the terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalStats {
    /// Logins taken (sessions given the go-ahead).
    pub logins: usize,
    /// Logins answered with `<NAK>`.
    pub login_naks: usize,
    /// Logins refused (wrong password).
    pub login_refusals: usize,
    /// Blocks received, good or bad.
    pub blocks: usize,
    /// Blocks whose checksum did not match (answered `<NAK>`).
    pub checksum_errors: usize,
    /// Transactions abandoned with `<RS>`.
    pub rejected: usize,
    /// `<EOT>` logouts.
    pub logouts: usize,
    /// Breaches of the protocol by the client.
    pub violations: Vec<String>,
}

#[derive(Default)]
struct State {
    pages: Vec<ReceivedPage>,
    stats: TerminalStats,
    login_naks_left: usize,
    corrupt_left: usize,
}

/// A simulated paging terminal. Cheap to clone; clones share what was received.
#[derive(Clone)]
pub struct Terminal {
    cfg: Arc<TerminalConfig>,
    state: Arc<Mutex<State>>,
}

/// A byte reader over the client's stream.
struct Line<S> {
    io: S,
    buf: Vec<u8>,
    pos: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Line<S> {
    /// The next byte, 7 bits; `None` at the end of the stream.
    async fn byte(&mut self) -> io::Result<Option<u8>> {
        if self.pos == self.buf.len() {
            self.buf.resize(512, 0);
            let n = self.io.read(&mut self.buf).await?;
            self.buf.truncate(n);
            self.pos = 0;
            if n == 0 {
                return Ok(None);
            }
        }
        let b = self.buf[self.pos] & 0x7f;
        self.pos += 1;
        Ok(Some(b))
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }
}

/// End of stream inside `serve`.
macro_rules! next {
    ($line:expr) => {
        next!($line, ())
    };
    ($line:expr, $at_end:expr) => {
        match $line.byte().await? {
            Some(b) => b,
            None => return Ok($at_end),
        }
    };
}

impl Terminal {
    pub fn new(cfg: TerminalConfig) -> Terminal {
        let state = State {
            login_naks_left: cfg.login_naks,
            corrupt_left: cfg.corrupt_blocks,
            ..State::default()
        };
        Terminal {
            cfg: Arc::new(cfg),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The pages taken so far, in order.
    pub fn pages(&self) -> Vec<ReceivedPage> {
        self.lock().pages.clone()
    }

    pub fn stats(&self) -> TerminalStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn violation(&self, what: String) {
        self.lock().stats.violations.push(what);
    }

    /// Serve one line until the client closes it. Sessions follow one another on it: after
    /// a logout the terminal waits for the next probe.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> io::Result<()> {
        let mut line = Line {
            io: stream,
            buf: Vec::new(),
            pos: 0,
        };
        loop {
            // Wait for probes.
            let mut probes = 0;
            loop {
                if next!(line) == CR {
                    probes += 1;
                    if probes > self.cfg.probes_before_id {
                        break;
                    }
                }
            }
            line.send(b"ID=").await?;
            if !self.login(&mut line).await? {
                continue;
            }
            line.send(&[ESC, b'[', b'p', CR]).await?;
            self.transactions(&mut line).await?;
        }
    }

    /// Take a login; false when it was refused and the terminal hung up.
    async fn login<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        line: &mut Line<S>,
    ) -> io::Result<bool> {
        loop {
            // Skip further probe CRs up to the ESC.
            while next!(line, false) != ESC {}
            let mut text = Vec::new();
            loop {
                let b = next!(line, false);
                if b == CR {
                    break;
                }
                text.push(b);
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            let Some(password) = text.strip_prefix("PG1") else {
                self.violation(format!("login {text:?} is not PG1"));
                line.send(&[NAK, CR]).await?;
                continue;
            };
            if let Some(want) = &self.cfg.password
                && password != want
            {
                self.lock().stats.login_refusals += 1;
                line.send(b"\rInvalid password\r").await?;
                line.send(&[ESC, EOT, CR]).await?;
                return Ok(false);
            }
            let nak = {
                let mut st = self.lock();
                if st.login_naks_left > 0 {
                    st.login_naks_left -= 1;
                    st.stats.login_naks += 1;
                    true
                } else {
                    st.stats.logins += 1;
                    false
                }
            };
            if nak {
                line.send(&[NAK, CR]).await?;
                continue;
            }
            line.send(b"110 1.8\r").await?;
            line.send(&[ACK, CR]).await?;
            return Ok(true);
        }
    }

    /// Blocks until `<EOT>`; returns when the session is over.
    async fn transactions<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        line: &mut Line<S>,
    ) -> io::Result<()> {
        let mut fields: Vec<String> = Vec::new();
        let mut current: Vec<u8> = Vec::new();
        let mut checked_ids = 0usize;
        let mut txn_blocks = 0usize;
        loop {
            match next!(line) {
                STX => {}
                EOT => {
                    // <EOT><CR>: the CR belongs to the logout, it is not a probe.
                    if next!(line) != CR {
                        self.violation("<EOT> not followed by CR".into());
                    }
                    self.lock().stats.logouts += 1;
                    line.send(&[ESC, EOT, CR]).await?;
                    return Ok(());
                }
                CR | b'\n' => continue,
                other => {
                    self.violation(format!("stray byte 0x{other:02x} between blocks"));
                    continue;
                }
            }
            // One block: content up to the block end, three checksum characters, CR.
            let mut frame = vec![STX];
            let end = loop {
                let b = next!(line);
                frame.push(b);
                if matches!(b, ETX | ETB | US) {
                    break b;
                }
                if frame.len() > 1024 {
                    self.violation("a block without an end".into());
                    break ETX;
                }
            };
            let mut sum = [0u8; 3];
            for s in &mut sum {
                *s = next!(line);
            }
            let cr = next!(line);
            let block_no = {
                let mut st = self.lock();
                st.stats.blocks += 1;
                st.stats.blocks
            };
            if cr != CR {
                self.violation(format!("block {block_no} not ended by CR"));
            }
            if self.cfg.ignore_block == Some(block_no) {
                continue;
            }
            if self.cfg.hang_up_on_block == Some(block_no) {
                line.send(&[ESC, EOT, CR]).await?;
                return Ok(());
            }
            let corrupt = {
                let mut st = self.lock();
                let c = st.corrupt_left > 0;
                if c {
                    st.corrupt_left -= 1;
                }
                c
            };
            if corrupt && frame.len() > 2 {
                frame[1] ^= 0x01;
            }
            if checksum(&frame) != sum {
                self.lock().stats.checksum_errors += 1;
                line.send(b"514 Checksum Error\r").await?;
                line.send(&[NAK, CR]).await?;
                continue;
            }
            let content = &frame[1..frame.len() - 1];
            if content.len() > self.cfg.max_block_chars {
                self.violation(format!(
                    "block {block_no} holds {} characters, the limit is {}",
                    content.len(),
                    self.cfg.max_block_chars
                ));
            }
            txn_blocks += 1;
            for &b in content {
                if b == CR {
                    fields.push(String::from_utf8_lossy(&current).into_owned());
                    current.clear();
                } else {
                    current.push(b);
                }
            }
            // Pager IDs are fields 0, 2, 4...: refuse an unknown one as soon as it is complete.
            let mut refused = false;
            while checked_ids < fields.len() {
                if checked_ids.is_multiple_of(2)
                    && self.cfg.invalid_ids.contains(&fields[checked_ids])
                {
                    refused = true;
                }
                checked_ids += 1;
            }
            if refused {
                self.lock().stats.rejected += 1;
                line.send(b"511 Invalid Pager ID\r").await?;
                line.send(&[RS, CR]).await?;
                fields.clear();
                current.clear();
                checked_ids = 0;
                txn_blocks = 0;
                continue;
            }
            match end {
                // <ETB> with a field still open is taken like <US>, as some terminals do.
                US | ETB => {
                    line.send(&[ACK, CR]).await?;
                }
                _ => {
                    if !current.is_empty() {
                        self.violation("the last field is not ended by CR".into());
                        fields.push(String::from_utf8_lossy(&current).into_owned());
                        current.clear();
                    }
                    if !fields.len().is_multiple_of(2) {
                        self.violation(format!("{} fields do not pair up", fields.len()));
                    }
                    {
                        let mut st = self.lock();
                        for pair in fields.chunks(2) {
                            let [id, message] = pair else { continue };
                            let n = message.chars().count();
                            if n > self.cfg.max_message_chars {
                                st.stats.violations.push(format!(
                                    "a message of {n} characters, the pager takes {}",
                                    self.cfg.max_message_chars
                                ));
                            }
                            st.pages.push(ReceivedPage {
                                pager_id: id.clone(),
                                message: message.clone(),
                                blocks: txn_blocks,
                            });
                        }
                    }
                    fields.clear();
                    checked_ids = 0;
                    txn_blocks = 0;
                    line.send(b"211 Page(s) Sent Successfully\r").await?;
                    line.send(&[ACK, CR]).await?;
                }
            }
        }
    }
}
