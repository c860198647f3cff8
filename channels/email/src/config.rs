//! The settings of one e-mail channel (one SMTP submission server) and their validation.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use lettre::message::Mailbox;
use pinpost_channel_core::{ChannelId, ExposeSecret, SecretString};

/// How the connection to the submission server is protected. There is no plaintext mode:
/// the PIN notice and the SMTP credentials only ever travel over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tls {
    /// Plain TCP, then `STARTTLS` (RFC 3207), required: a server that does not offer it, or
    /// a failed handshake, fails the connection. Never a fallback to plaintext. Port 587.
    #[default]
    StartTls,
    /// TLS from the first byte ("submissions", RFC 8314). Port 465.
    Implicit,
}

impl Tls {
    /// The port used when [`EmailConfig::port`] is `None`.
    pub fn default_port(self) -> u16 {
        match self {
            Tls::StartTls => 587,
            Tls::Implicit => 465,
        }
    }
}

/// The DKIM signature algorithm of [`DkimConfig::private_key_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DkimAlgorithm {
    /// `rsa-sha256`; the key file is a PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`).
    #[default]
    Rsa,
    /// `ed25519-sha256` (RFC 8463); the key file holds the 32-byte seed in base64.
    Ed25519,
}

/// DKIM signing of the outgoing message (`relaxed/relaxed`; signs From, To, Subject, Date,
/// Message-ID, MIME-Version and Auto-Submitted, and the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    /// `s=`: the selector published in DNS under `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// `d=`: the signing domain.
    pub domain: String,
    pub private_key_file: PathBuf,
    pub algorithm: DkimAlgorithm,
}

/// Why an [`EmailConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("email channel {channel}: {field}: {reason}")]
pub struct ConfigError {
    pub channel: String,
    pub field: &'static str,
    pub reason: String,
}

/// The settings of one e-mail channel.
///
/// `Debug` redacts the credentials ([`SecretString`]).
#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub id: ChannelId,
    /// The submission server's host name (also the name its certificate must carry) or IP.
    pub host: String,
    /// `None`: 587 for [`Tls::StartTls`], 465 for [`Tls::Implicit`].
    pub port: Option<u16>,
    pub tls: Tls,
    /// Extra trust anchors (PEM, one or more certificates) on top of the webpki roots, for a
    /// server with a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// SMTP AUTH (PLAIN or LOGIN, whichever the server offers; only ever over TLS). Both or
    /// neither.
    pub username: Option<SecretString>,
    pub password: Option<SecretString>,
    /// The `From:` header and the envelope sender: `pins@example.net` or
    /// `PIN Service <pins@example.net>`. Its domain also names the Message-IDs.
    pub from: String,
    /// The `Subject:` header. It travels **unencrypted**: it must never carry the PIN.
    pub subject: String,
    /// The EHLO name; `None` uses the domain of `from`.
    pub ehlo_name: Option<String>,
    /// How many SMTP connections (and so concurrent sends) at most; also the channel's window.
    pub pool_size: usize,
    /// TCP connect, TLS handshake, greeting, EHLO, STARTTLS and AUTH together.
    pub connect_timeout: Duration,
    /// Each SMTP command (MAIL, RCPT, DATA, RSET, NOOP, QUIT) until its reply.
    pub command_timeout: Duration,
    /// From the first byte of the message content to the server's reply after the final dot.
    /// Expiry makes the send [`pinpost_channel_core::SendError::InDoubt`].
    pub data_timeout: Duration,
    /// A pooled connection unused this long is closed (QUIT) instead of reused.
    pub idle_timeout: Duration,
    /// How often the background check runs (NOOP on an idle connection, else a fresh
    /// connection); while the channel is down it runs every `min(health_interval, 5 s)`.
    pub health_interval: Duration,
    /// The bound on one background check.
    pub health_timeout: Duration,
    /// The longest body, in characters, the channel takes.
    pub max_body_chars: usize,
    pub dkim: Option<DkimConfig>,
}

impl EmailConfig {
    /// A config with the defaults: STARTTLS on port 587, no extra CA, no AUTH, subject
    /// "Your payment PIN", EHLO name from `from`, pool of 4 connections, connect timeout 15 s,
    /// command timeout 30 s, data timeout 120 s, idle timeout 30 s, health check every 30 s
    /// bounded by 5 s, bodies up to 10 000 characters, no DKIM.
    pub fn new(id: ChannelId, host: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            id,
            host: host.into(),
            port: None,
            tls: Tls::StartTls,
            tls_ca_file: None,
            username: None,
            password: None,
            from: from.into(),
            subject: "Your payment PIN".to_owned(),
            ehlo_name: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(30),
            data_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
            health_interval: Duration::from_secs(30),
            health_timeout: Duration::from_secs(5),
            max_body_chars: 10_000,
            dkim: None,
        }
    }

    /// The port in use.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }

    /// Check everything that can be checked without reading files or a peer.
    /// [`crate::EmailChannel::start`] runs it too, then loads `tls_ca_file` and the DKIM key,
    /// and keeps the channel down (with the reason) when anything fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, reason: String| ConfigError {
            channel: self.id.to_string(),
            field,
            reason,
        };
        if self.host.trim().is_empty() || self.host.chars().any(|c| c.is_whitespace()) {
            return Err(err("host", "must be a host name or IP address".into()));
        }
        if self.port == Some(0) {
            return Err(err("port", "must not be 0".into()));
        }
        let from = Mailbox::from_str(&self.from).map_err(|e| err("from", e.to_string()))?;
        if from.email.domain().is_empty() {
            return Err(err("from", "needs a domain".into()));
        }
        if self.subject.contains(['\r', '\n']) {
            return Err(err("subject", "must be one line".into()));
        }
        if let Some(name) = &self.ehlo_name
            && (name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(err("ehlo_name", "must be a non-empty ASCII name".into()));
        }
        match (&self.username, &self.password) {
            (Some(u), Some(_)) if u.expose_secret().is_empty() => {
                return Err(err("username", "must not be empty".into()));
            }
            (Some(_), None) => return Err(err("password", "username without password".into())),
            (None, Some(_)) => return Err(err("username", "password without username".into())),
            _ => {}
        }
        if self.pool_size == 0 {
            return Err(err("pool_size", "must be at least 1".into()));
        }
        if self.pool_size > 1024 {
            return Err(err("pool_size", "at most 1024".into()));
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("data_timeout", self.data_timeout),
            ("idle_timeout", self.idle_timeout),
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
        ] {
            if d.is_zero() {
                return Err(err(field, "must be positive".into()));
            }
            if d > Duration::from_secs(24 * 3600) {
                return Err(err(field, "at most 24 h".into()));
            }
        }
        if self.max_body_chars < 16 {
            return Err(err(
                "max_body_chars",
                "must hold at least a PIN (16)".into(),
            ));
        }
        if let Some(dkim) = &self.dkim {
            let label_ok = |s: &str| {
                !s.is_empty()
                    && s.split('.').all(|l| {
                        !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    })
            };
            if !label_ok(&dkim.selector) {
                return Err(err("dkim.selector", "must be DNS labels".into()));
            }
            if !label_ok(&dkim.domain) {
                return Err(err("dkim.domain", "must be a DNS name".into()));
            }
        }
        Ok(())
    }

    /// The EHLO name in use.
    pub(crate) fn effective_ehlo_name(&self, from: &Mailbox) -> String {
        self.ehlo_name
            .clone()
            .unwrap_or_else(|| from.email.domain().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EmailConfig {
        EmailConfig::new(
            ChannelId::new("mail"),
            "smtp.example.net",
            "pins@example.net",
        )
    }

    #[test]
    fn defaults_are_valid_and_use_starttls_on_587() {
        let c = cfg();
        c.validate().unwrap();
        assert_eq!(c.tls, Tls::StartTls);
        assert_eq!(c.effective_port(), 587);
        let c = EmailConfig {
            tls: Tls::Implicit,
            ..cfg()
        };
        assert_eq!(c.effective_port(), 465);
    }

    #[test]
    fn rejects_bad_fields() {
        let bad = [
            EmailConfig {
                host: " ".into(),
                ..cfg()
            },
            EmailConfig {
                from: "not an address".into(),
                ..cfg()
            },
            EmailConfig {
                subject: "a\r\nBcc: x@example.net".into(),
                ..cfg()
            },
            EmailConfig {
                username: Some(SecretString::from("u")),
                ..cfg()
            },
            EmailConfig {
                pool_size: 0,
                ..cfg()
            },
            EmailConfig {
                data_timeout: Duration::ZERO,
                ..cfg()
            },
            EmailConfig {
                port: Some(0),
                ..cfg()
            },
            EmailConfig {
                dkim: Some(DkimConfig {
                    selector: "bad selector".into(),
                    domain: "example.net".into(),
                    private_key_file: "/nonexistent".into(),
                    algorithm: DkimAlgorithm::Rsa,
                }),
                ..cfg()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?} should be refused");
        }
    }

    #[test]
    fn debug_redacts_credentials() {
        let c = EmailConfig {
            username: Some(SecretString::from("user-name-1")),
            password: Some(SecretString::from("pass-word-2")),
            ..cfg()
        };
        c.validate().unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("user-name-1") && !debug.contains("pass-word-2"));
    }

    #[test]
    fn ehlo_name_defaults_to_from_domain() {
        let c = EmailConfig {
            from: "PIN Service <pins@mail.example.net>".into(),
            ..cfg()
        };
        let from = Mailbox::from_str(&c.from).unwrap();
        assert_eq!(c.effective_ehlo_name(&from), "mail.example.net");
    }
}
