//! Sending one page through a Service Class 2.0 (ITU-T T.32 / TIA-592) fax modem.
//!
//! ```text
//! DTE → DCE                               DCE → DTE
//! ATZ, ATE0V1Q0, [vendor init]            OK
//! AT+FCLASS=2.0, AT+FLO=2, AT+FBO=0       OK
//! AT+FCC=1,5,0,2,0,0,0,0                  OK          (fine, 14.4k, A4, any length, MH)
//! AT+FLI="<our id>", AT+FNR=1,1,1,0       OK
//! ATDT<number>                            +FCO, +FCI:"<remote id>", +FIS:<DIS>, OK
//!                                         | BUSY | NO ANSWER | NO CARRIER | NO DIALTONE
//!                                         | +FHS:hh OK
//! AT+FDT                                  +FCS:<negotiated DCS>, CONNECT
//! <MH page data, LSB first, DLE doubled><DLE>.
//!                                         OK (MCF: page confirmed) | ERROR (RTN/PIN)
//!                                         +FHS:00, OK
//! ```
//!
//! The page goes out at the resolution the modem negotiated (`+FCS` VR): a remote that only
//! takes standard resolution gets the page rendered again at 98 lpi. [`send_page`] never
//! retries; the caller (the channel's redial policy) decides, from [`CallFailure`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use pinpost_modem::dle::{self, DLE, ETX};
use pinpost_modem::{DataSent, DialMode, FinalResult, FlowControl, Modem, ModemError, Response};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite};
use zeroize::Zeroize;

use crate::mh::{self, MhOptions};
use crate::page::{Bitmap, RenderError, Resolution, render_page};

/// T.30 session parameters as Class 2.0 reports and sets them (`+FCC`, `+FIS`, `+FCS`):
/// `VR,BR,WD,LN,DF,EC,BF,ST`, hexadecimal in 2.0 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionParams {
    /// Vertical resolution: 0 normal (98 lpi), 1 fine (196 lpi); a bitmap in `+FCC`/`+FIS`.
    pub vr: u8,
    /// Bit rate: 0 2400 … 5 14400 (V.17), up to 0xD 33600 (V.34).
    pub br: u8,
    /// Page width: 0 1728 pels.
    pub wd: u8,
    /// Page length: 0 A4, 1 B4, 2 unlimited.
    pub ln: u8,
    /// Data format: 0 MH, 1 MR, 2 uncompressed, 3 MMR.
    pub df: u8,
    /// Error correction: 0 off.
    pub ec: u8,
    /// Binary file transfer: 0 off.
    pub bf: u8,
    /// Minimum scan line time code.
    pub st: u8,
}

impl SessionParams {
    /// What this driver offers: `+FCC=<vr>,5,0,2,0,0,0,0`.
    pub fn ours(resolution: Resolution) -> Self {
        Self {
            vr: resolution.vr(),
            br: 5,
            wd: 0,
            ln: 2,
            df: 0,
            ec: 0,
            bf: 0,
            st: 0,
        }
    }

    /// Parse `1,5,0,2,0,0,0,0` (values hexadecimal; missing trailing values are 0).
    pub fn parse(s: &str) -> Option<Self> {
        let mut v = [0u8; 8];
        let mut n = 0;
        for (i, part) in s.split(',').enumerate() {
            if i >= 8 {
                return None;
            }
            v[i] = u8::from_str_radix(part.trim(), 16).ok()?;
            n += 1;
        }
        (n > 0).then_some(Self {
            vr: v[0],
            br: v[1],
            wd: v[2],
            ln: v[3],
            df: v[4],
            ec: v[5],
            bf: v[6],
            st: v[7],
        })
    }

    /// The line rate in bit/s.
    pub fn bit_rate(&self) -> u32 {
        (u32::from(self.br) + 1) * 2400
    }

    /// The page resolution these parameters mean.
    pub fn resolution(&self) -> Resolution {
        if self.vr & 1 != 0 {
            Resolution::Fine
        } else {
            Resolution::Standard
        }
    }
}

impl fmt::Display for SessionParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:X},{:X},{:X},{:X},{:X},{:X},{:X},{:X}",
            self.vr, self.br, self.wd, self.ln, self.df, self.ec, self.bf, self.st
        )
    }
}

/// What a Class 2.0 hang-up code (`+FHS:hh`, hexadecimal) means (T.32; HylaFAX's table).
pub fn describe_hangup(code: u8) -> &'static str {
    match code {
        0x00 => "normal end of call",
        0x01 => "ring detected without successful handshake",
        0x02 => "call aborted by +FK/+FKS or CAN",
        0x03 => "no loop current",
        0x04 => "ringback detected, no answer (timeout)",
        0x05 => "ringback detected, no answer without CED",
        0x10 => "unspecified phase A error",
        0x11 => "no answer (T.30 T1 timeout)",
        0x20 => "unspecified transmit phase B error",
        0x21 => "remote cannot receive or send",
        0x22 => "COMREC error in transmit phase B",
        0x23 => "COMREC invalid command received",
        0x24 => "RSPREC error",
        0x25 => "DCS sent three times without response",
        0x26 => "DIS/DTC received three times; DCS not recognized",
        0x27 => "failure to train at 2400 bps or +FMS value",
        0x28 => "RSPREC invalid response received",
        0x40 => "unspecified transmit phase C error",
        0x41 => "unspecified image format error",
        0x42 => "image conversion error",
        0x43 => "DTE to DCE data underflow",
        0x44 => "unrecognized transparent data command",
        0x45 => "image error, line length wrong",
        0x46 => "image error, page length wrong",
        0x47 => "image error, wrong compression code",
        0x50 => "unspecified transmit phase D error",
        0x51 => "RSPREC error",
        0x52 => "no response to MPS repeated three times",
        0x53 => "invalid response to MPS",
        0x54 => "no response to EOP repeated three times",
        0x55 => "invalid response to EOP",
        0x56 => "no response to EOM repeated three times",
        0x57 => "invalid response to EOM",
        0x58 => "unable to continue after PIN or PIP",
        0x70..=0x7f => "receive phase B error",
        0x90..=0x9f => "receive phase C error",
        0xa0..=0xaf => "receive phase D error",
        _ => "unknown hang-up code",
    }
}

/// Where in the call something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Reset and init, before anything was dialled.
    Setup,
    /// `ATD` written; no fax connection yet.
    Dial,
    /// `AT+FDT`: connected, page not started.
    PageStart,
    /// Page data going out.
    PageData,
    /// The whole page and `<DLE>.` written, waiting for the remote's verdict.
    PostPage,
}

/// Why a call did not deliver a confirmed page.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// The modem did not behave (no answer, refused an init command, port gone).
    #[error("modem failure during {stage:?}: {error}")]
    Modem { stage: Stage, error: ModemError },
    #[error("busy")]
    Busy,
    #[error("no answer")]
    NoAnswer,
    #[error("no carrier")]
    NoCarrier,
    #[error("no dial tone")]
    NoDialtone,
    /// The modem refused to dial (`ERROR`, `DELAYED`, `BLACKLISTED`).
    #[error("dialling refused: {0}")]
    DialRefused(FinalResult),
    /// The modem reported a hang-up (`+FHS:hh`).
    #[error("hang-up +FHS:{code:02X} during {stage:?} ({})", describe_hangup(*code))]
    Hangup { code: u8, stage: Stage },
    /// The carrier dropped with no hang-up code.
    #[error("carrier lost during {stage:?}")]
    CarrierLost { stage: Stage },
    /// The remote did not confirm the page (`ERROR` after `<DLE>.`: RTN or PIN).
    #[error("page not confirmed by the remote (RTN/PIN)")]
    NotConfirmed { hangup: Option<u8> },
    /// The negotiated session cannot carry our page.
    #[error("remote cannot take the page: {0}")]
    Incompatible(String),
    /// An answer that does not fit the dialogue.
    #[error("unexpected {result} during {stage:?}")]
    Unexpected { stage: Stage, result: FinalResult },
    #[error("page rendering failed: {0}")]
    Render(RenderError),
}

impl CallFailure {
    /// Whether dialling again later may help (busy line, nobody answering).
    pub fn is_redialable(&self) -> bool {
        matches!(
            self,
            CallFailure::Busy
                | CallFailure::NoAnswer
                | CallFailure::NoCarrier
                | CallFailure::Hangup {
                    code: 0x04 | 0x05,
                    stage: Stage::Dial
                }
        )
    }

    /// The furthest stage the call reached.
    pub fn stage(&self) -> Stage {
        match self {
            CallFailure::Modem { stage, .. }
            | CallFailure::Hangup { stage, .. }
            | CallFailure::CarrierLost { stage }
            | CallFailure::Unexpected { stage, .. } => *stage,
            CallFailure::Busy
            | CallFailure::NoAnswer
            | CallFailure::NoCarrier
            | CallFailure::NoDialtone
            | CallFailure::DialRefused(_) => Stage::Dial,
            CallFailure::Incompatible(_) => Stage::PageStart,
            CallFailure::NotConfirmed { .. } => Stage::PostPage,
            CallFailure::Render(_) => Stage::PageStart,
        }
    }

    /// Whether the modem itself looks broken (reopen the port before the next call).
    pub fn modem_suspect(&self) -> bool {
        matches!(
            self,
            CallFailure::Modem {
                error: ModemError::Io(_) | ModemError::Closed | ModemError::Rejected { .. },
                ..
            } | CallFailure::Modem {
                stage: Stage::Setup,
                ..
            }
        )
    }
}

/// Timeouts of one call.
#[derive(Debug, Clone)]
pub struct CallTimeouts {
    /// Ordinary commands.
    pub command: Duration,
    /// `ATZ`.
    pub reset: Duration,
    /// `ATD` to `+FCO` (or a failure).
    pub dial: Duration,
    /// `AT+FDT` to `CONNECT`.
    pub page_start: Duration,
    /// `<DLE>.` to `OK`/`ERROR`.
    pub page_done: Duration,
    /// After `OK`, waiting for `+FHS`.
    pub hangup: Duration,
}

impl Default for CallTimeouts {
    fn default() -> Self {
        Self {
            command: Duration::from_secs(5),
            reset: Duration::from_secs(10),
            dial: Duration::from_secs(120),
            page_start: Duration::from_secs(180),
            page_done: Duration::from_secs(180),
            hangup: Duration::from_secs(30),
        }
    }
}

/// How calls are made.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Our station id (`+FLI`, the TSI the remote prints): at most 20 printable characters.
    pub local_id: String,
    /// `+FLO`: 2 for RTS/CTS, 1 for XON/XOFF, 0 none.
    pub flow_control: FlowControl,
    pub dial_mode: DialMode,
    /// The resolution offered (`+FCC` VR) and rendered first.
    pub resolution: Resolution,
    /// Send RTC after the page. Class 2.0 modems add it themselves (T.32); some old ones do
    /// not.
    pub send_rtc: bool,
    /// Extra commands after the reset (`AT&K3`, ...), each answered `OK`.
    pub init_commands: Vec<String>,
    pub timeouts: CallTimeouts,
}

impl Default for CallSettings {
    fn default() -> Self {
        Self {
            local_id: String::new(),
            flow_control: FlowControl::Hardware,
            dial_mode: DialMode::Tone,
            resolution: Resolution::Fine,
            send_rtc: false,
            init_commands: Vec::new(),
            timeouts: CallTimeouts::default(),
        }
    }
}

/// The page to send: its text (to render again at another resolution) and its rendering at
/// the preferred resolution.
pub struct Notice {
    text: SecretString,
    page: Bitmap,
    resolution: Resolution,
}

impl fmt::Debug for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notice")
            .field("resolution", &self.resolution)
            .finish_non_exhaustive()
    }
}

impl Notice {
    /// Render `text` at `resolution` (fails before any call is made if it cannot be).
    pub fn new(text: SecretString, resolution: Resolution) -> Result<Self, RenderError> {
        let page = render_page(text.expose_secret(), resolution)?;
        Ok(Self {
            text,
            page,
            resolution,
        })
    }

    pub fn resolution(&self) -> Resolution {
        self.resolution
    }

    /// The page at `resolution`.
    pub fn page(&self, resolution: Resolution) -> Result<Cow<'_, Bitmap>, RenderError> {
        if resolution == self.resolution {
            Ok(Cow::Borrowed(&self.page))
        } else {
            render_page(self.text.expose_secret(), resolution).map(Cow::Owned)
        }
    }
}

/// What a successful call reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallReport {
    /// The remote's CSI (`+FCI`), if it sent one.
    pub remote_id: Option<String>,
    /// The session (`+FCS`).
    pub session: SessionParams,
    /// The hang-up code after the page (`+FHS`), if the modem reported one in time.
    pub hangup: Option<u8>,
    /// Page data bytes sent (before DLE stuffing).
    pub page_bytes: usize,
}

fn hangup_code(lines: &[String]) -> Option<u8> {
    lines.iter().rev().find_map(|l| {
        pinpost_modem::response::strip_prefix_ignore_case(l, "+FHS:")
            .and_then(|v| u8::from_str_radix(v.trim(), 16).ok())
    })
}

fn quoted_value(v: &str) -> String {
    v.trim().trim_matches('"').to_owned()
}

/// Time allowed for the page data: line time at the negotiated rate, times 1.5, plus a
/// minute (mgetty's rule).
pub fn data_timeout(bytes: usize, session: &SessionParams) -> Duration {
    let secs = bytes as f64 * 8.0 / f64::from(session.bit_rate()) * 1.5 + 60.0;
    Duration::from_secs_f64(secs)
}

/// Make one call and send `notice` as a one-page document.
///
/// On failure after dialling, the modem is put back on hook (`ATH0`, best effort).
pub async fn send_page<S>(
    modem: &mut Modem<S>,
    dial: &str,
    notice: &Notice,
    settings: &CallSettings,
) -> Result<CallReport, CallFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let result = call(modem, dial, notice, settings).await;
    if let Err(f) = &result
        && f.stage() >= Stage::Dial
        && !matches!(
            f,
            CallFailure::Modem {
                error: ModemError::Closed | ModemError::Io(_),
                ..
            }
        )
    {
        abort(modem, f.stage(), &settings.timeouts).await;
    }
    result
}

async fn abort<S: AsyncRead + AsyncWrite + Unpin>(
    modem: &mut Modem<S>,
    stage: Stage,
    t: &CallTimeouts,
) {
    if stage == Stage::PageData {
        // Still in data mode, perhaps: end the data, then ask for the session to end.
        let _ = modem.write_raw(&dle::command(ETX)).await;
        let _ = tokio::time::timeout(t.command, modem.command("AT+FKS")).await;
    }
    match modem.command_with_timeout("ATH0", t.command).await {
        Ok(r) if r.is_ok() => {}
        Ok(r) => tracing::warn!(result = %r.result, "ATH0 after a failed call"),
        Err(e) => tracing::warn!(error = %e, "ATH0 after a failed call"),
    }
}

fn setup_err(error: ModemError) -> CallFailure {
    CallFailure::Modem {
        stage: Stage::Setup,
        error,
    }
}

async fn call<S>(
    modem: &mut Modem<S>,
    dial: &str,
    notice: &Notice,
    settings: &CallSettings,
) -> Result<CallReport, CallFailure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let t = &settings.timeouts;

    // Setup: reset, our dialect, the session we offer.
    modem
        .drain(Duration::from_millis(50), Duration::from_secs(1))
        .await
        .map_err(setup_err)?;
    ok(modem, "ATZ", t.reset).await?;
    ok(modem, "ATE0V1Q0", t.command).await?;
    for cmd in &settings.init_commands {
        ok(modem, cmd, t.command).await?;
    }
    let flo = match settings.flow_control {
        FlowControl::None => 0,
        FlowControl::Software => 1,
        FlowControl::Hardware => 2,
    };
    ok(modem, "AT+FCLASS=2.0", t.command).await?;
    ok(modem, &format!("AT+FLO={flo}"), t.command).await?;
    ok(modem, "AT+FBO=0", t.command).await?;
    let offered = SessionParams::ours(notice.resolution());
    ok(modem, &format!("AT+FCC={offered}"), t.command).await?;
    ok(
        modem,
        &format!("AT+FLI=\"{}\"", settings.local_id),
        t.command,
    )
    .await?;
    ok(modem, "AT+FNR=1,1,1,0", t.command).await?;

    // Dial.
    let r = modem
        .dial(dial, settings.dial_mode, t.dial)
        .await
        .map_err(|error| CallFailure::Modem {
            stage: if matches!(error, ModemError::InvalidDialString) {
                Stage::Setup
            } else {
                Stage::Dial
            },
            error,
        })?;
    if let Some(code) = hangup_code(&r.lines) {
        return Err(CallFailure::Hangup {
            code,
            stage: Stage::Dial,
        });
    }
    match &r.result {
        FinalResult::Ok if r.has_line("+FCO") => {}
        FinalResult::Ok | FinalResult::Connect(_) | FinalResult::CmeError(_) => {
            return Err(CallFailure::Unexpected {
                stage: Stage::Dial,
                result: r.result,
            });
        }
        FinalResult::Busy => return Err(CallFailure::Busy),
        FinalResult::NoAnswer => return Err(CallFailure::NoAnswer),
        FinalResult::NoCarrier => return Err(CallFailure::NoCarrier),
        FinalResult::NoDialtone => return Err(CallFailure::NoDialtone),
        FinalResult::Error | FinalResult::Delayed | FinalResult::Blacklisted => {
            return Err(CallFailure::DialRefused(r.result));
        }
    }
    let remote_id = r.value("+FCI:").map(quoted_value);
    tracing::debug!(
        remote = remote_id.as_deref().unwrap_or(""),
        dis = r.value("+FIS:").unwrap_or(""),
        "fax connection"
    );

    // Page start: the modem negotiates and says CONNECT.
    modem
        .send_command("AT+FDT")
        .await
        .map_err(|error| CallFailure::Modem {
            stage: Stage::PageStart,
            error,
        })?;
    let r = modem
        .read_response(t.page_start)
        .await
        .map_err(|error| CallFailure::Modem {
            stage: Stage::PageStart,
            error,
        })?;
    let session = start_page(&r, offered)?;
    let resolution = session.resolution();

    let page = notice.page(resolution).map_err(CallFailure::Render)?;
    let opts = MhOptions {
        rtc: settings.send_rtc,
        ..MhOptions::MODEM
    };
    let mut data = mh::encode(&page, &opts);
    let mut wire = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    dle::stuff_into(&data, &mut wire);
    wire.extend_from_slice(&[DLE, b'.']);
    let page_bytes = data.len();
    data.zeroize();
    drop(page);
    let sent = modem
        .send_data(&wire, data_timeout(wire.len(), &session))
        .await;
    // The encoded page shows the PIN too.
    wire.zeroize();
    let sent = sent.map_err(|error| CallFailure::Modem {
        stage: Stage::PageData,
        error,
    })?;
    if let DataSent::Interrupted {
        lines,
        result,
        written,
    } = sent
    {
        tracing::warn!(
            written,
            total = wire.len(),
            "page data interrupted by the modem"
        );
        return Err(interrupted(&lines, result));
    }

    // The remote's verdict on the page.
    let r = modem
        .read_response(t.page_done)
        .await
        .map_err(|error| CallFailure::Modem {
            stage: Stage::PostPage,
            error,
        })?;
    let mut hangup = hangup_code(&r.lines);
    match (&r.result, hangup) {
        (FinalResult::Ok, None | Some(0)) => {}
        (FinalResult::Ok, Some(code)) => {
            return Err(CallFailure::Hangup {
                code,
                stage: Stage::PostPage,
            });
        }
        (FinalResult::Error, _) => {
            if hangup.is_none() {
                hangup = await_hangup(modem, t.hangup).await;
            }
            return Err(CallFailure::NotConfirmed { hangup });
        }
        (FinalResult::NoCarrier, _) => {
            return Err(CallFailure::CarrierLost {
                stage: Stage::PostPage,
            });
        }
        (other, _) => {
            return Err(CallFailure::Unexpected {
                stage: Stage::PostPage,
                result: other.clone(),
            });
        }
    }
    // MCF. The modem ends the call (DCN) and reports +FHS:00.
    if hangup.is_none() {
        hangup = await_hangup(modem, t.hangup).await;
        if hangup.is_none() {
            let _ = modem.command_with_timeout("ATH0", t.command).await;
        }
    }
    match hangup {
        Some(0) => {}
        Some(code) => tracing::warn!(code, "page confirmed, then hang-up code {code:02X}"),
        None => tracing::warn!("page confirmed, no hang-up report"),
    }
    Ok(CallReport {
        remote_id,
        session,
        hangup,
        page_bytes,
    })
}

/// `+FHS:hh` after the page, within `timeout` (with or without a final `OK`).
async fn await_hangup<S: AsyncRead + AsyncWrite + Unpin>(
    modem: &mut Modem<S>,
    timeout: Duration,
) -> Option<u8> {
    match modem.read_response(timeout).await {
        Ok(r) => hangup_code(&r.lines),
        Err(ModemError::Timeout { lines, .. }) => hangup_code(&lines),
        Err(_) => None,
    }
}

fn start_page(r: &Response, offered: SessionParams) -> Result<SessionParams, CallFailure> {
    match &r.result {
        FinalResult::Connect(_) => {}
        FinalResult::NoCarrier => {
            return Err(match hangup_code(&r.lines) {
                Some(code) => CallFailure::Hangup {
                    code,
                    stage: Stage::PageStart,
                },
                None => CallFailure::CarrierLost {
                    stage: Stage::PageStart,
                },
            });
        }
        other => {
            return Err(match hangup_code(&r.lines) {
                Some(code) => CallFailure::Hangup {
                    code,
                    stage: Stage::PageStart,
                },
                None => CallFailure::Unexpected {
                    stage: Stage::PageStart,
                    result: other.clone(),
                },
            });
        }
    }
    let session = match r.value("+FCS:") {
        Some(v) => SessionParams::parse(v).ok_or_else(|| {
            CallFailure::Incompatible(format!("unreadable session parameters {v:?}"))
        })?,
        None => offered,
    };
    if session.wd != 0 {
        return Err(CallFailure::Incompatible(format!(
            "page width code {} (only 1728 pels is rendered)",
            session.wd
        )));
    }
    if session.df != 0 {
        return Err(CallFailure::Incompatible(format!(
            "data format {} (only MH is encoded)",
            session.df
        )));
    }
    Ok(session)
}

fn interrupted(lines: &[String], result: Option<FinalResult>) -> CallFailure {
    if let Some(code) = hangup_code(lines) {
        return CallFailure::Hangup {
            code,
            stage: Stage::PageData,
        };
    }
    match result {
        Some(FinalResult::NoCarrier) => CallFailure::CarrierLost {
            stage: Stage::PageData,
        },
        Some(result) => CallFailure::Unexpected {
            stage: Stage::PageData,
            result,
        },
        None => CallFailure::CarrierLost {
            stage: Stage::PageData,
        },
    }
}

async fn ok<S: AsyncRead + AsyncWrite + Unpin>(
    modem: &mut Modem<S>,
    cmd: &str,
    timeout: Duration,
) -> Result<Response, CallFailure> {
    let r = modem
        .command_with_timeout(cmd, timeout)
        .await
        .map_err(setup_err)?;
    if r.is_ok() {
        Ok(r)
    } else {
        Err(setup_err(ModemError::Rejected {
            command: cmd.to_owned(),
            response: r,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_params() {
        let p = SessionParams::parse("1,5,0,2,0,0,0,0").unwrap();
        assert_eq!(p, SessionParams::ours(Resolution::Fine));
        assert_eq!(p.bit_rate(), 14400);
        assert_eq!(p.to_string(), "1,5,0,2,0,0,0,0");
        let v34 = SessionParams::parse("0,D,0,2,0,0,0,0").unwrap();
        assert_eq!(v34.bit_rate(), 33600);
        assert_eq!(v34.resolution(), Resolution::Standard);
        assert_eq!(SessionParams::parse("1,5").unwrap().ln, 0);
        assert!(SessionParams::parse("x").is_none());
        assert!(SessionParams::parse("1,2,3,4,5,6,7,8,9").is_none());
    }

    #[test]
    fn hangup_codes_are_hex() {
        assert_eq!(hangup_code(&["+FHS:43".into()]), Some(0x43));
        assert_eq!(hangup_code(&["+FCO".into(), "+fhs:A0".into()]), Some(0xa0));
        assert_eq!(hangup_code(&["+FCO".into()]), None);
        assert_eq!(describe_hangup(0x43), "DTE to DCE data underflow");
    }

    #[test]
    fn data_timeout_follows_line_rate() {
        let s = SessionParams::ours(Resolution::Fine);
        // 18 kB at 14400 bit/s is 10 s of line time.
        let t = data_timeout(18_000, &s);
        assert!(
            t > Duration::from_secs(74) && t < Duration::from_secs(76),
            "{t:?}"
        );
    }

    #[test]
    fn redialable_failures() {
        assert!(CallFailure::Busy.is_redialable());
        assert!(CallFailure::NoAnswer.is_redialable());
        assert!(CallFailure::NoCarrier.is_redialable());
        assert!(
            CallFailure::Hangup {
                code: 0x05,
                stage: Stage::Dial
            }
            .is_redialable()
        );
        assert!(
            !CallFailure::Hangup {
                code: 0x11,
                stage: Stage::Dial
            }
            .is_redialable()
        );
        assert!(
            !CallFailure::Hangup {
                code: 0x43,
                stage: Stage::PageData
            }
            .is_redialable()
        );
        assert!(!CallFailure::NoDialtone.is_redialable());
    }
}
