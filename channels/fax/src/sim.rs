//! A Service Class 2.0 fax modem simulator, for tests (ours and the daemon's).
//!
//! [`SimModem::start`] opens a pty pair and serves the master side; the driver opens the
//! slave path ([`SimModem::path`]) with tokio-serial like a real `/dev/ttyS*`. [`serve`]
//! runs the same modem over any stream (`tokio::io::duplex` in paused-time tests).
//!
//! What it does:
//! - AT layer: `AT` hunting (garbage before `AT` is skipped), several commands per line
//!   (`AT+FCLASS=2.0;+FLO=2`, `ATE0V1Q0`), echo (`ATE1` is the power-on default), `=?` and
//!   `?` queries, verbose results framed `<CR><LF>…<CR><LF>`. `+F` commands other than
//!   `+FCLASS`/`+FMI`/`+FMM`/`+FMR` answer `ERROR` unless `+FCLASS=2.0` is set; `+FDT`
//!   needs a fax connection.
//! - Calls: `ATD` looks the dialled string up in [`SimConfig::outcomes`] (else
//!   [`SimConfig::default_outcome`]) and answers as scripted: `+FCO`/`+FCI`/`+FIS`/`OK`,
//!   `BUSY`, `NO ANSWER`, `NO CARRIER`, `NO DIALTONE`, `+FHS:hh`/`OK`, or nothing.
//!   `AT+FDT` answers `+FCS:` (the lower of our `+FCC` and the remote's DIS) and `CONNECT`.
//! - Page data: un-stuffs `<DLE><DLE>`, stops at `<DLE>.` / `<DLE>,` / `<DLE>;` /
//!   `<DLE><ETX>` and stores the page (LSB first, as sent). After EOP: `OK` (MCF), then
//!   `+FHS:00` `OK`. Scripted faults: hang-up mid-page (`+FHS:43` after N bytes, then
//!   command mode, the rest of the data being garbage), hang-up after the page (`+FHS:54`),
//!   RTN (`ERROR`).
//! - Faults on every answer: noise lines, answers written a byte at a time, a line rate.
//!
//! Everything it saw is in a [`SimRecord`]: commands, calls, pages.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pinpost_modem::dle::{CAN, ETX, Unstuffer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};

use crate::class2::SessionParams;
use crate::page::Resolution;

/// What happens when a number is dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A fax machine answers and confirms the page.
    Answer,
    Busy,
    NoAnswer,
    NoCarrier,
    NoDialtone,
    /// The call fails in phase A/B: `+FHS:hh` `OK` instead of `+FCO` (0x11 T1 timeout,
    /// 0x23, 0x05 ringback without answer, ...).
    HangupAtDial(u8),
    /// Connected; the line drops after `after_bytes` bytes of page data: `+FHS:hh` `OK`.
    HangupMidPage {
        after_bytes: usize,
        code: u8,
    },
    /// The whole page arrives, then no MCF: `+FHS:hh` `OK` (0x54: no response to EOP).
    HangupAfterPage(u8),
    /// The remote answers RTN: `ERROR`, then `+FHS:00` `OK`.
    Rtn,
    /// The dial gets no answer at all (to test the driver's dial timeout).
    Silent,
}

/// The simulator's script and faults.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Outcome per dial string exactly as dialled (after `ATDT`/`ATDP`).
    pub outcomes: HashMap<String, Outcome>,
    pub default_outcome: Outcome,
    /// The remote's CSI, reported as `+FCI`.
    pub remote_id: String,
    /// The remote's capabilities (DIS), reported as `+FIS`.
    pub remote_dis: SessionParams,
    /// Echo at power-on and after `ATZ` (real modems: on).
    pub echo: bool,
    /// Write a line of binary noise before every answer.
    pub noise: bool,
    /// Write answers one byte at a time.
    pub split_writes: bool,
    /// How long dialling takes.
    pub dial_delay: Duration,
    /// Take page data no faster than this many bit/s (`None`: as fast as it comes).
    pub line_rate: Option<u32>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            outcomes: HashMap::new(),
            default_outcome: Outcome::Answer,
            remote_id: "+81 3 5555 0100".into(),
            remote_dis: SessionParams::ours(Resolution::Fine),
            echo: true,
            noise: false,
            split_writes: false,
            dial_delay: Duration::from_millis(5),
            line_rate: None,
        }
    }
}

impl SimConfig {
    /// Script `outcome` for `number`.
    pub fn with(mut self, number: &str, outcome: Outcome) -> Self {
        self.outcomes.insert(number.to_owned(), outcome);
        self
    }
}

/// A page as the simulator received it.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedPage {
    /// The number dialled.
    pub number: String,
    /// Un-stuffed page data, bytes as sent (LSB first with `+FBO=0`).
    pub data: Vec<u8>,
    /// The post-page command that ended it: `b'.'` EOP, `b','` MPS, `b';'` EOM, `ETX`;
    /// `None` if the line dropped first.
    pub post_page: Option<u8>,
    /// The negotiated session it was sent in.
    pub session: SessionParams,
    /// The `+FBO` setting it was sent with.
    pub bit_order: u8,
}

impl std::fmt::Debug for ReceivedPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedPage")
            .field("number", &self.number)
            .field("bytes", &self.data.len())
            .field("post_page", &self.post_page)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl ReceivedPage {
    /// Whether the page ended with EOP (the whole document arrived).
    pub fn complete(&self) -> bool {
        self.post_page == Some(b'.')
    }

    pub fn resolution(&self) -> Resolution {
        self.session.resolution()
    }
}

/// One `ATD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCall {
    pub number: String,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
struct Log {
    commands: Vec<String>,
    calls: Vec<SimCall>,
    pages: Vec<ReceivedPage>,
}

/// What a simulator saw. Cheap to clone; all clones share the record.
#[derive(Debug, Clone, Default)]
pub struct SimRecord(Arc<Mutex<Log>>);

impl SimRecord {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every AT command line received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    /// Every dial, in order.
    pub fn calls(&self) -> Vec<SimCall> {
        self.lock().calls.clone()
    }

    /// Every page received (complete or not), in order.
    pub fn pages(&self) -> Vec<ReceivedPage> {
        self.lock().pages.clone()
    }

    /// Pages that ended with EOP.
    pub fn complete_pages(&self) -> Vec<ReceivedPage> {
        self.lock()
            .pages
            .iter()
            .filter(|p| p.complete())
            .cloned()
            .collect()
    }
}

/// A simulated modem on a pty. Dropping it stops the simulator and closes the pty.
pub struct SimModem {
    path: String,
    record: SimRecord,
    task: JoinHandle<()>,
    _slave: SerialStream,
}

impl SimModem {
    /// Open a pty pair and serve the master side. Must be called inside a tokio runtime.
    pub fn start(cfg: SimConfig) -> io::Result<SimModem> {
        // tokio-serial's pair: the master registered with the reactor, the slave opened in
        // raw mode. Holding the slave open means the master never sees a hang-up while the
        // driver (re)opens the path, and the line is raw before the driver's first byte.
        let (master, slave) = SerialStream::pair().map_err(io::Error::other)?;
        let path = slave
            .name()
            .ok_or_else(|| io::Error::other("pty without a path"))?;
        let record = SimRecord::default();
        let task = tokio::spawn({
            let record = record.clone();
            async move {
                if let Err(e) = serve(master, cfg, record).await {
                    tracing::debug!(error = %e, "fax simulator stopped");
                }
            }
        });
        Ok(SimModem {
            path,
            record,
            task,
            _slave: slave,
        })
    }

    /// The slave device path to give the driver (`/dev/pts/N`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn record(&self) -> &SimRecord {
        &self.record
    }
}

impl Drop for SimModem {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Modem state.
struct State {
    cfg: SimConfig,
    record: SimRecord,
    echo: bool,
    fclass: String,
    flo: u8,
    fbo: u8,
    fcc: SessionParams,
    fli: String,
    fnr: String,
    /// The call in progress: the number and its outcome.
    call: Option<(String, Outcome)>,
    session: Option<SessionParams>,
    line: Vec<u8>,
}

enum Mode {
    Command,
    Data { unstuffer: Unstuffer, page: Vec<u8> },
}

impl State {
    fn new(cfg: SimConfig, record: SimRecord) -> Self {
        let echo = cfg.echo;
        Self {
            cfg,
            record,
            echo,
            fclass: "0".into(),
            flo: 0,
            fbo: 0,
            fcc: SessionParams::ours(Resolution::Fine),
            fli: String::new(),
            fnr: "0,0,0,0".into(),
            call: None,
            session: None,
            line: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.echo = self.cfg.echo;
        self.fclass = "0".into();
        self.flo = 0;
        self.fbo = 0;
        self.fcc = SessionParams::ours(Resolution::Fine);
        self.fli.clear();
        self.fnr = "0,0,0,0".into();
        self.call = None;
        self.session = None;
    }
}

/// Serve one simulated modem over `io` until the stream ends.
pub async fn serve<S>(io: S, cfg: SimConfig, record: SimRecord) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut st = State::new(cfg, record);
    let mut mode = Mode::Command;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut input = &buf[..n];
        while !input.is_empty() {
            match &mut mode {
                Mode::Command => {
                    let b = input[0];
                    input = &input[1..];
                    if let Some(next) = command_byte(&mut st, &mut wr, b).await? {
                        mode = next;
                    }
                }
                Mode::Data { unstuffer, page } => {
                    if let Some(rate) = st.cfg.line_rate {
                        let secs = input.len() as f64 * 8.0 / f64::from(rate.max(1));
                        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    }
                    let ended = unstuffer.feed(input, page);
                    let consumed = ended.map_or(input.len(), |(_, used)| used);
                    input = &input[consumed..];
                    // A scripted drop in the middle of the page.
                    if let Some((number, Outcome::HangupMidPage { after_bytes, code })) =
                        st.call.clone()
                        && page.len() >= after_bytes
                    {
                        let mut data = std::mem::take(page);
                        data.truncate(after_bytes);
                        store_page(&st, &number, data, None);
                        st.call = None;
                        st.session = None;
                        answer(&st, &mut wr, &[&format!("+FHS:{code:02X}"), "OK"]).await?;
                        // The rest of the data arrives in command mode, as garbage.
                        mode = Mode::Command;
                        continue;
                    }
                    if let Some((cmd, _)) = ended {
                        let data = std::mem::take(page);
                        mode = Mode::Command;
                        end_of_data(&mut st, &mut wr, cmd, data).await?;
                    }
                }
            }
        }
    }
}

/// One byte in command mode; returns the next mode when a command switches it.
async fn command_byte<W: AsyncWrite + Unpin>(
    st: &mut State,
    wr: &mut W,
    b: u8,
) -> io::Result<Option<Mode>> {
    match b {
        b'\r' => {
            let raw = std::mem::take(&mut st.line);
            let text = String::from_utf8_lossy(&raw).into_owned();
            // AT hunting: the command starts at the first "AT".
            let Some(at) = text.to_ascii_uppercase().find("AT") else {
                return Ok(None);
            };
            let line = text[at..].to_owned();
            if st.echo {
                write_out(st, wr, format!("{line}\r").as_bytes()).await?;
            }
            st.record.lock().commands.push(line.clone());
            execute(st, wr, &line[2..]).await
        }
        b'\n' => Ok(None),
        // Garbage (page data after a drop, CAN, DLE pairs) clears the line.
        0x20..=0x7e => {
            if st.line.len() < 256 {
                st.line.push(b);
            }
            Ok(None)
        }
        _ => {
            st.line.clear();
            Ok(None)
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(st: &State, wr: &mut W, bytes: &[u8]) -> io::Result<()> {
    if st.cfg.split_writes {
        for b in bytes {
            wr.write_all(std::slice::from_ref(b)).await?;
            wr.flush().await?;
            tokio::task::yield_now().await;
        }
    } else {
        wr.write_all(bytes).await?;
    }
    wr.flush().await
}

/// Write result lines, `<CR><LF>line<CR><LF>` each, with noise first when asked.
async fn answer<W: AsyncWrite + Unpin>(st: &State, wr: &mut W, lines: &[&str]) -> io::Result<()> {
    let mut out = Vec::new();
    if st.cfg.noise {
        out.extend_from_slice(b"\r\n\x80\xfe\x01~noise~\xff\r\n");
    }
    for l in lines {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    write_out(st, wr, &out).await
}

fn store_page(st: &State, number: &str, data: Vec<u8>, post_page: Option<u8>) {
    let page = ReceivedPage {
        number: number.to_owned(),
        data,
        post_page,
        session: st.session.unwrap_or(st.fcc),
        bit_order: st.fbo,
    };
    st.record.lock().pages.push(page);
}

async fn end_of_data<W: AsyncWrite + Unpin>(
    st: &mut State,
    wr: &mut W,
    cmd: u8,
    data: Vec<u8>,
) -> io::Result<()> {
    let Some((number, outcome)) = st.call.clone() else {
        return answer(st, wr, &["ERROR"]).await;
    };
    match cmd {
        b'.' | b',' | b';' | ETX => {}
        CAN => {
            store_page(st, &number, data, None);
            st.call = None;
            st.session = None;
            return answer(st, wr, &["+FHS:02", "OK"]).await;
        }
        _ => {
            // T.32: an unknown <DLE>x in the data is an error (+FHS:44).
            store_page(st, &number, data, None);
            st.call = None;
            st.session = None;
            return answer(st, wr, &["+FHS:44", "OK"]).await;
        }
    }
    store_page(st, &number, data, Some(cmd));
    match (outcome, cmd) {
        (_, ETX) => answer(st, wr, &["OK"]).await,
        (Outcome::HangupAfterPage(code), _) => {
            st.call = None;
            st.session = None;
            answer(st, wr, &[&format!("+FHS:{code:02X}"), "OK"]).await
        }
        (Outcome::Rtn, _) => {
            st.call = None;
            st.session = None;
            answer(st, wr, &["+FPS:2", "ERROR"]).await?;
            answer(st, wr, &["+FHS:00", "OK"]).await
        }
        (_, b'.') => {
            st.call = None;
            st.session = None;
            answer(st, wr, &["+FPS:1", "OK"]).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            answer(st, wr, &["+FHS:00", "OK"]).await
        }
        // MPS / EOM: confirmed, the call goes on.
        _ => answer(st, wr, &["+FPS:1", "OK"]).await,
    }
}

/// Split the text after `AT` into commands.
fn split_commands(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b' ' || c == b';' {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'+' {
            // Extended: up to ';' or the end.
            while i < b.len() && b[i] != b';' {
                // Quoted strings may hold ';'.
                if b[i] == b'"' {
                    i += 1;
                    while i < b.len() && b[i] != b'"' {
                        i += 1;
                    }
                }
                i += 1;
            }
            out.push(rest[start..i.min(b.len())].to_owned());
        } else if c.eq_ignore_ascii_case(&b'D') {
            out.push(rest[start..].to_owned());
            break;
        } else {
            // Basic: [&]letter, then digits, or S<n>=<v> / S<n>?.
            i += 1;
            if c == b'&' && i < b.len() {
                i += 1;
            }
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'=' || b[i] == b'?') {
                i += 1;
            }
            out.push(rest[start..i].to_owned());
        }
    }
    out
}

async fn execute<W: AsyncWrite + Unpin>(
    st: &mut State,
    wr: &mut W,
    rest: &str,
) -> io::Result<Option<Mode>> {
    let mut info: Vec<String> = Vec::new();
    for cmd in split_commands(rest) {
        let upper = cmd.to_ascii_uppercase();
        if let Some(number) = upper.strip_prefix('D') {
            let number = number.trim_start_matches(['T', 'P']).to_owned();
            return dial(st, wr, number).await.map(|()| None);
        }
        if upper == "+FDT" {
            return page_start(st, wr).await;
        }
        match basic_or_extended(st, &cmd, &upper) {
            Ok(lines) => info.extend(lines),
            Err(()) => {
                answer(st, wr, &["ERROR"]).await?;
                return Ok(None);
            }
        }
    }
    let mut lines: Vec<&str> = info.iter().map(String::as_str).collect();
    lines.push("OK");
    answer(st, wr, &lines).await?;
    Ok(None)
}

fn params_arg(v: &str) -> Option<SessionParams> {
    SessionParams::parse(v)
}

/// A command that answers at once; `Err` for `ERROR`.
fn basic_or_extended(st: &mut State, cmd: &str, upper: &str) -> Result<Vec<String>, ()> {
    if !upper.starts_with('+') {
        let (name, arg) = upper.split_at(if upper.starts_with('&') {
            2.min(upper.len())
        } else {
            1
        });
        match (name, arg) {
            ("Z", _) | ("&F", _) => st.reset(),
            ("E", "0") => st.echo = false,
            ("E", "" | "1") => st.echo = true,
            ("H", "" | "0") => {
                st.call = None;
                st.session = None;
            }
            ("V", _)
            | ("Q", _)
            | ("L", _)
            | ("M", _)
            | ("X", _)
            | ("&K", _)
            | ("&D", _)
            | ("&C", _) => {}
            ("S", _) => {}
            ("I", _) => return Ok(vec!["pinpost Class 2.0 simulator".into()]),
            _ => return Err(()),
        }
        return Ok(Vec::new());
    }
    let (name, op, arg) = if let Some(p) = upper.find("=?") {
        (&upper[..p], "=?", "")
    } else if let Some(p) = upper.find('=') {
        (&upper[..p], "=", &cmd[p + 1..])
    } else if let Some(p) = upper.find('?') {
        (&upper[..p], "?", "")
    } else {
        (upper, "", "")
    };
    let fax_mode = st.fclass == "2.0";
    match (name, op) {
        ("+FCLASS", "=?") => Ok(vec!["(0,1,2,2.0)".into()]),
        ("+FCLASS", "?") => Ok(vec![st.fclass.clone()]),
        ("+FCLASS", "=") => match arg.trim() {
            v @ ("0" | "1" | "2" | "2.0") => {
                st.fclass = v.to_owned();
                Ok(Vec::new())
            }
            _ => Err(()),
        },
        ("+FMI" | "+FMM" | "+FMR", "?" | "") => Ok(vec!["pinpost-sim".into()]),
        _ if !fax_mode => Err(()),
        ("+FLO", "=?") => Ok(vec!["(0-2)".into()]),
        ("+FLO", "?") => Ok(vec![st.flo.to_string()]),
        ("+FLO", "=") => match arg.trim().parse::<u8>() {
            Ok(v @ 0..=2) => {
                st.flo = v;
                Ok(Vec::new())
            }
            _ => Err(()),
        },
        ("+FBO", "=?") => Ok(vec!["(0-3)".into()]),
        ("+FBO", "?") => Ok(vec![st.fbo.to_string()]),
        ("+FBO", "=") => match arg.trim().parse::<u8>() {
            Ok(v @ 0..=3) => {
                st.fbo = v;
                Ok(Vec::new())
            }
            _ => Err(()),
        },
        ("+FCC" | "+FIS", "=?") => Ok(vec!["(0,1),(0-5),(0-2),(0-2),(0-3),(0),(0),(0-7)".into()]),
        ("+FCC" | "+FIS", "?") => Ok(vec![st.fcc.to_string()]),
        ("+FCC" | "+FIS", "=") => match params_arg(arg) {
            Some(p)
                if p.vr <= 1
                    && p.br <= 5
                    && p.wd <= 2
                    && p.ln <= 2
                    && p.df <= 3
                    && p.ec == 0
                    && p.bf == 0
                    && p.st <= 7 =>
            {
                st.fcc = p;
                Ok(Vec::new())
            }
            _ => Err(()),
        },
        ("+FLI", "=?") => Ok(vec!["(20)(32-127)".into()]),
        ("+FLI", "?") => Ok(vec![format!("\"{}\"", st.fli)]),
        ("+FLI", "=") => {
            let v = arg.trim();
            let inner = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or(())?;
            if inner.len() > 20 || inner.contains('"') {
                return Err(());
            }
            st.fli = inner.to_owned();
            Ok(Vec::new())
        }
        ("+FNR", "?") => Ok(vec![st.fnr.clone()]),
        ("+FNR", "=") => {
            st.fnr = arg.trim().to_owned();
            Ok(Vec::new())
        }
        ("+FKS" | "+FK", "") => {
            if st.call.take().is_some() {
                st.session = None;
                Ok(vec!["+FHS:02".into()])
            } else {
                Ok(Vec::new())
            }
        }
        (
            "+FPP" | "+FCT" | "+FIE" | "+FCR" | "+FCQ" | "+FAP" | "+FMS" | "+FPS" | "+FNS" | "+FLP"
            | "+FSP",
            _,
        ) => Ok(Vec::new()),
        _ => Err(()),
    }
}

async fn dial<W: AsyncWrite + Unpin>(st: &mut State, wr: &mut W, number: String) -> io::Result<()> {
    let outcome = st
        .cfg
        .outcomes
        .get(&number)
        .cloned()
        .unwrap_or_else(|| st.cfg.default_outcome.clone());
    st.record.lock().calls.push(SimCall {
        number: number.clone(),
        outcome: outcome.clone(),
    });
    tokio::time::sleep(st.cfg.dial_delay).await;
    if st.fclass != "2.0" {
        // A data call finds no data carrier on a fax line.
        return answer(st, wr, &["NO CARRIER"]).await;
    }
    match outcome {
        Outcome::Busy => answer(st, wr, &["BUSY"]).await,
        Outcome::NoAnswer => answer(st, wr, &["NO ANSWER"]).await,
        Outcome::NoCarrier => answer(st, wr, &["NO CARRIER"]).await,
        Outcome::NoDialtone => answer(st, wr, &["NO DIALTONE"]).await,
        Outcome::HangupAtDial(code) => answer(st, wr, &[&format!("+FHS:{code:02X}"), "OK"]).await,
        Outcome::Silent => Ok(()),
        o @ (Outcome::Answer
        | Outcome::HangupMidPage { .. }
        | Outcome::HangupAfterPage(_)
        | Outcome::Rtn) => {
            st.call = Some((number, o));
            let fci = format!("+FCI:\"{}\"", st.cfg.remote_id);
            let fis = format!("+FIS:{}", st.cfg.remote_dis);
            answer(st, wr, &["+FCO", &fci, &fis, "OK"]).await
        }
    }
}

async fn page_start<W: AsyncWrite + Unpin>(st: &mut State, wr: &mut W) -> io::Result<Option<Mode>> {
    if st.fclass != "2.0" || st.call.is_none() {
        answer(st, wr, &["ERROR"]).await?;
        return Ok(None);
    }
    let (ours, theirs) = (st.fcc, st.cfg.remote_dis);
    let session = SessionParams {
        vr: ours.vr & theirs.vr & 1,
        br: ours.br.min(theirs.br),
        wd: ours.wd.min(theirs.wd),
        ln: ours.ln.min(theirs.ln),
        df: 0,
        ec: 0,
        bf: 0,
        st: ours.st.max(theirs.st),
    };
    st.session = Some(session);
    answer(st, wr, &[&format!("+FCS:{session}"), "CONNECT"]).await?;
    Ok(Some(Mode::Data {
        unstuffer: Unstuffer::new(),
        page: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_command_lines() {
        assert_eq!(
            split_commands("+FCLASS=2.0;+FLO=2"),
            vec!["+FCLASS=2.0", "+FLO=2"]
        );
        assert_eq!(split_commands("E0V1Q0"), vec!["E0", "V1", "Q0"]);
        assert_eq!(split_commands("Z"), vec!["Z"]);
        assert_eq!(split_commands("&FE0S7=60"), vec!["&F", "E0", "S7=60"]);
        assert_eq!(
            split_commands("+FLI=\"a;b\";+FNR=1"),
            vec!["+FLI=\"a;b\"", "+FNR=1"]
        );
        assert_eq!(split_commands("E0DT0312345678"), vec!["E0", "DT0312345678"]);
    }
}
