//! The settings of a pager channel and their validation.

use std::path::PathBuf;
use std::time::Duration;

use pinpost_channel_core::{ChannelId, ExposeSecret, SecretString};

/// Why a pager config cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pager channel {channel}: {field}: {reason}")]
pub struct ConfigError {
    pub channel: String,
    pub field: &'static str,
    pub reason: String,
}

/// One pager channel: an SNPP gateway or a TAP paging terminal.
#[derive(Debug, Clone)]
pub enum PagerConfig {
    /// `kind = "snpp"`: RFC 1861 over TCP, optionally TLS.
    Snpp(SnppConfig),
    /// `kind = "tap"`: TAP/IXO 1.8 over a serial line.
    Tap(TapConfig),
}

impl PagerConfig {
    pub fn id(&self) -> &ChannelId {
        match self {
            PagerConfig::Snpp(c) => &c.id,
            PagerConfig::Tap(c) => &c.id,
        }
    }

    /// The longest text that reaches the pager ([`pinpost_channel_core::Capabilities`]
    /// `max_body_chars`).
    pub fn max_message_chars(&self) -> usize {
        match self {
            PagerConfig::Snpp(c) => c.max_message_chars,
            PagerConfig::Tap(c) => c.max_message_chars,
        }
    }

    /// Check everything that can be checked without a peer.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            PagerConfig::Snpp(c) => c.validate(),
            PagerConfig::Tap(c) => c.validate(),
        }
    }
}

/// How the SNPP client hands over the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnppMessageCommand {
    /// Level 1 `MESS <text>`: one line, line breaks become spaces. Every SNPP server takes it.
    #[default]
    Mess,
    /// Level 2 `DATA`: several lines, dot-stuffed, ended by a lone `.`.
    Data,
    /// `MESS` when the fitted text is one line, `DATA` otherwise.
    Auto,
}

/// `LOGI <user> [password]`, sent right after the greeting.
#[derive(Debug, Clone)]
pub struct SnppLogin {
    pub user: String,
    pub password: Option<SecretString>,
}

/// An SNPP (RFC 1861) gateway.
///
/// `Debug` redacts the login password ([`SecretString`]).
#[derive(Debug, Clone)]
pub struct SnppConfig {
    pub id: ChannelId,
    /// `snpp://host[:port]` (plain TCP, port 444 by default) or `snpps://host:port` (TLS,
    /// rustls with the ring provider; the port is required, SNPP over TLS has none assigned).
    pub url: String,
    /// Extra trust anchors (PEM) for `snpps://`, on top of the webpki roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Log in with `LOGI` after the greeting; a refusal keeps the channel down.
    pub login: Option<SnppLogin>,
    pub message_command: SnppMessageCommand,
    /// The longest text a page may carry, in characters; longer texts are trimmed with the
    /// PIN-first convention ([`crate::fit_pin_first`]).
    pub max_message_chars: usize,
    /// TCP connect, TLS handshake and greeting.
    pub connect_timeout: Duration,
    /// The answer to each command but `SEND`.
    pub reply_timeout: Duration,
    /// The answer to `SEND` (the gateway may hand the page on before it answers).
    pub send_timeout: Duration,
    /// How long an unused session stays open before `QUIT`; zero closes it after each page.
    pub idle_timeout: Duration,
    /// Reconnect backoff while the gateway cannot be reached: doubles from `reconnect_min`
    /// up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl SnppConfig {
    /// Defaults: no TLS CA file, no login, `MESS`, 240 characters, connect 10 s, replies 30 s,
    /// `SEND` 60 s, idle 30 s, reconnect 1 s..60 s.
    pub fn new(id: ChannelId, url: impl Into<String>) -> Self {
        Self {
            id,
            url: url.into(),
            tls_ca_file: None,
            login: None,
            message_command: SnppMessageCommand::Mess,
            max_message_chars: 240,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| ConfigError {
            channel: self.id.to_string(),
            field,
            reason,
        };
        crate::snpp::Endpoint::parse(&self.url).map_err(|e| err("url", e))?;
        if let Some(login) = &self.login {
            if !is_token(&login.user) {
                return Err(err(
                    "login.user",
                    "must be 1 to 64 printable characters without spaces".into(),
                ));
            }
            if let Some(pw) = &login.password
                && !is_token(pw.expose_secret())
            {
                return Err(err(
                    "login.password",
                    "must be 1 to 64 printable characters without spaces".into(),
                ));
            }
        }
        check_max_chars(self.max_message_chars, 4096).map_err(|e| err("max_message_chars", e))?;
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("reply_timeout", self.reply_timeout),
            ("send_timeout", self.send_timeout),
            ("reconnect_min", self.reconnect_min),
        ] {
            if d.is_zero() {
                return Err(err(field, "must be more than zero".into()));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(err(
                "reconnect_max",
                "must not be below reconnect_min".into(),
            ));
        }
        Ok(())
    }
}

/// A TAP (IXO 1.8) paging terminal on a serial line.
///
/// `Debug` redacts the password ([`SecretString`]).
#[derive(Debug, Clone)]
pub struct TapConfig {
    pub id: ChannelId,
    /// The serial device (`/dev/ttyS0`, `/dev/ttyUSB0`) that
    /// [`crate::PagerChannel::start`] opens, 7E1 with XON/XOFF.
    pub device: PathBuf,
    /// 300 or 1200 (TAP 1.8); 2400, 4800 and 9600 for direct lines that run faster.
    pub baud: u32,
    /// The login password sent after `<ESC>PG1` (often six characters; none for open
    /// terminals).
    pub password: Option<SecretString>,
    /// The longest text a page may carry, in characters; longer texts are trimmed with the
    /// PIN-first convention ([`crate::fit_pin_first`]).
    pub max_message_chars: usize,
    /// The most characters between `<STX>` and the block end (`<ETX>`, `<ETB>`, `<US>`),
    /// field CRs included: 250 in TAP 1.8.
    pub block_chars: usize,
    /// Getting the line: opening the port, or the dialler's whole call set-up.
    pub connect_timeout: Duration,
    /// `<CR>` is sent every `probe_interval` until the terminal answers `ID=`, for at most
    /// `id_timeout`.
    pub probe_interval: Duration,
    pub id_timeout: Duration,
    /// The answer to the login (`<ACK>`, `<NAK>`, `<ESC><EOT>`).
    pub login_timeout: Duration,
    /// The go-ahead `<ESC>[p` after the login.
    pub go_ahead_timeout: Duration,
    /// The answer to each block.
    pub block_timeout: Duration,
    /// The terminal's `<ESC><EOT>` after our `<EOT>`.
    pub logout_timeout: Duration,
    /// How long an unused session stays logged in; zero logs out after each page.
    pub idle_timeout: Duration,
    /// Backoff while the terminal cannot be reached.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// The paging terminal's number when `device` is a modem: each session initialises it
    /// with `modem_init`, dials, and runs TAP once it answers CONNECT. `None`: a direct
    /// line to the terminal.
    pub dial: Option<String>,
    /// Commands sent (each answered OK) before dialling.
    pub modem_init: Vec<String>,
}

impl TapConfig {
    /// Defaults (HylaFAX's where it has them): 1200 baud, no password, 128 characters,
    /// 250-character blocks, line set-up 60 s, probe every 2 s for 20 s, login 15 s, go-ahead 30 s, block 45 s, logout 30 s, idle 30 s,
    /// reconnect 5 s..5 min.
    pub fn new(id: ChannelId, device: impl Into<PathBuf>) -> Self {
        Self {
            id,
            device: device.into(),
            baud: 1200,
            password: None,
            max_message_chars: 128,
            block_chars: crate::tap::MAX_BLOCK_CHARS,
            connect_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_secs(2),
            id_timeout: Duration::from_secs(20),
            login_timeout: Duration::from_secs(15),
            go_ahead_timeout: Duration::from_secs(30),
            block_timeout: Duration::from_secs(45),
            logout_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(300),
            dial: None,
            modem_init: vec!["ATZ".into(), "ATE0V1".into()],
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, reason: String| ConfigError {
            channel: self.id.to_string(),
            field,
            reason,
        };
        if self.device.as_os_str().is_empty() {
            return Err(err("device", "must name a serial device".into()));
        }
        if let Some(n) = &self.dial
            && !pinpost_modem::is_dial_string(n)
        {
            return Err(err(
                "dial",
                "not a dial string (digits, *, #, ',', W, P)".into(),
            ));
        }
        if self
            .modem_init
            .iter()
            .any(|c| !c.to_ascii_uppercase().starts_with("AT"))
        {
            return Err(err("modem_init", "every command starts with AT".into()));
        }
        if ![300, 1200, 2400, 4800, 9600].contains(&self.baud) {
            return Err(err(
                "baud",
                format!("{} is not one of 300, 1200, 2400, 4800, 9600", self.baud),
            ));
        }
        if let Some(pw) = &self.password {
            let pw = pw.expose_secret();
            if pw.is_empty() || pw.len() > 16 || !pw.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(err("password", "must be 1 to 16 letters or digits".into()));
            }
        }
        check_max_chars(self.max_message_chars, 4096).map_err(|e| err("max_message_chars", e))?;
        if !(crate::tap::MIN_BLOCK_CHARS..=crate::tap::MAX_BLOCK_CHARS).contains(&self.block_chars)
        {
            return Err(err(
                "block_chars",
                format!(
                    "must be {} to {}",
                    crate::tap::MIN_BLOCK_CHARS,
                    crate::tap::MAX_BLOCK_CHARS
                ),
            ));
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("probe_interval", self.probe_interval),
            ("id_timeout", self.id_timeout),
            ("login_timeout", self.login_timeout),
            ("go_ahead_timeout", self.go_ahead_timeout),
            ("block_timeout", self.block_timeout),
            ("logout_timeout", self.logout_timeout),
            ("reconnect_min", self.reconnect_min),
        ] {
            if d.is_zero() {
                return Err(err(field, "must be more than zero".into()));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(err(
                "reconnect_max",
                "must not be below reconnect_min".into(),
            ));
        }
        Ok(())
    }
}

fn check_max_chars(n: usize, limit: usize) -> Result<(), String> {
    // The core test kit's floor: a channel must carry at least a PIN.
    if !(16..=limit).contains(&n) {
        return Err(format!("must be 16 to {limit}"));
    }
    Ok(())
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snpp() -> SnppConfig {
        SnppConfig::new(ChannelId::new("p"), "snpp://127.0.0.1:4444")
    }

    fn tap() -> TapConfig {
        TapConfig::new(ChannelId::new("t"), "/dev/ttyS0")
    }

    #[test]
    fn defaults_validate() {
        snpp().validate().unwrap();
        tap().validate().unwrap();
        PagerConfig::Snpp(snpp()).validate().unwrap();
        assert_eq!(PagerConfig::Tap(tap()).max_message_chars(), 128);
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut c = snpp();
        c.url = "http://x".into();
        assert_eq!(c.validate().unwrap_err().field, "url");
        let mut c = snpp();
        c.login = Some(SnppLogin {
            user: "a b".into(),
            password: None,
        });
        assert_eq!(c.validate().unwrap_err().field, "login.user");
        let mut c = snpp();
        c.max_message_chars = 8;
        assert_eq!(c.validate().unwrap_err().field, "max_message_chars");
        let mut c = snpp();
        c.reply_timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "reply_timeout");

        let mut t = tap();
        t.baud = 600;
        assert_eq!(t.validate().unwrap_err().field, "baud");
        let mut t = tap();
        t.block_chars = 251;
        assert_eq!(t.validate().unwrap_err().field, "block_chars");
        let mut t = tap();
        t.password = Some(SecretString::from("pa ss"));
        let e = t.validate().unwrap_err();
        assert_eq!(e.field, "password");
        assert!(!e.to_string().contains("pa ss"));
    }

    #[test]
    fn debug_redacts_passwords() {
        let mut t = tap();
        t.password = Some(SecretString::from("S3CRET"));
        assert!(!format!("{t:?}").contains("S3CRET"));
        let mut c = snpp();
        c.login = Some(SnppLogin {
            user: "u".into(),
            password: Some(SecretString::from("S3CRET")),
        });
        assert!(!format!("{c:?}").contains("S3CRET"));
    }
}
