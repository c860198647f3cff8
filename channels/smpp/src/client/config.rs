//! The settings of one SMPP bind and their validation.

use std::path::PathBuf;
use std::time::Duration;

use pinpost_channel_core::{ChannelId, ExposeSecret, SecretString};

use super::transport::Endpoint;

/// The SMPP version announced in `bind_transceiver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterfaceVersion {
    /// SMPP 3.4 (interface_version 0x34).
    V34,
    /// SMPP 5.0 (interface_version 0x50).
    #[default]
    V50,
}

/// What the bind carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmppService {
    /// Plain SMS, concatenated when long.
    #[default]
    Sms,
    /// USSD push: `service_type` "USSD" and the `ussd_service_op` TLV (0x0501) set to `op`
    /// (2 USSR request, 3 USSN request). Never concatenated.
    Ussd { op: u8 },
}

/// Why a [`SmppConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("smpp channel {channel}: {field}: {reason}")]
pub struct ConfigError {
    pub channel: String,
    pub field: &'static str,
    pub reason: String,
}

/// The settings of one SMPP channel (one transceiver bind).
///
/// `Debug` redacts the password ([`SecretString`]).
#[derive(Debug, Clone)]
pub struct SmppConfig {
    pub id: ChannelId,
    /// `smpp://host:port` (plain TCP) or `smpps://host:port` (TLS, rustls with ring). The port
    /// defaults to 2775.
    pub url: String,
    /// At most 15 characters.
    pub system_id: String,
    /// At most 8 characters.
    pub password: SecretString,
    /// At most 12 characters; usually empty.
    pub system_type: String,
    pub interface_version: InterfaceVersion,
    /// The most submit_sm PDUs outstanding (written, no submit_sm_resp yet) at once.
    pub window: usize,
    /// A token bucket over every submit_sm of this bind; `None` for no limit.
    pub max_tps: Option<u32>,
    /// Sender address; an alphanumeric sender uses TON 5 NPI 0.
    pub source_addr: String,
    pub source_ton: u8,
    pub source_npi: u8,
    /// Ask for SMSC delivery receipts (registered_delivery = 1).
    pub request_receipts: bool,
    /// How long to wait for a response once a PDU has been written, and for connect/TLS.
    pub response_timeout: Duration,
    pub enquire_link_interval: Duration,
    /// Reconnect backoff: doubles from `reconnect_min` up to `reconnect_max`, with jitter.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long the whole bind pauses after ESME_RTHROTTLED or ESME_RMSGQFUL.
    pub throttle_pause: Duration,
    /// How long one message is retried after throttling before `SendError::Throttled`.
    pub throttle_retry_budget: Duration,
    pub service: SmppService,
    /// Extra trust anchors (PEM) for `smpps://`, on top of the webpki roots; for SMSCs with a
    /// private CA.
    pub tls_ca_file: Option<PathBuf>,
}

impl SmppConfig {
    /// A config with the defaults: SMPP 5.0, window 10, no TPS limit, receipts requested,
    /// response timeout 10 s, enquire_link every 30 s, reconnect 1 s..60 s, throttle pause 1 s,
    /// throttle budget 30 s, SMS. The sender's TON/NPI follow [`source_ton_npi`].
    pub fn new(
        id: ChannelId,
        url: impl Into<String>,
        system_id: impl Into<String>,
        password: SecretString,
        source_addr: impl Into<String>,
    ) -> Self {
        let source_addr = source_addr.into();
        let (source_ton, source_npi) = source_ton_npi(&source_addr);
        Self {
            id,
            url: url.into(),
            system_id: system_id.into(),
            password,
            system_type: String::new(),
            interface_version: InterfaceVersion::V50,
            window: 10,
            max_tps: None,
            source_addr,
            source_ton,
            source_npi,
            request_receipts: true,
            response_timeout: Duration::from_secs(10),
            enquire_link_interval: Duration::from_secs(30),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            throttle_pause: Duration::from_secs(1),
            throttle_retry_budget: Duration::from_secs(30),
            service: SmppService::Sms,
            tls_ca_file: None,
        }
    }

    /// Check everything that can be checked without a peer. [`super::SmppChannel::start`] runs
    /// it too and keeps the channel down (with the reason) when it fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, reason: String| ConfigError {
            channel: self.id.to_string(),
            field,
            reason,
        };
        Endpoint::parse(&self.url).map_err(|reason| err("url", reason))?;
        check_c_string(&self.system_id, 1, 15).map_err(|r| err("system_id", r))?;
        check_c_string(self.password.expose_secret(), 0, 8).map_err(|r| err("password", r))?;
        check_c_string(&self.system_type, 0, 12).map_err(|r| err("system_type", r))?;
        check_c_string(&self.source_addr, 1, 20).map_err(|r| err("source_addr", r))?;
        if self.source_ton == 5 && self.source_addr.chars().count() > 11 {
            return Err(err(
                "source_addr",
                "an alphanumeric sender has at most 11 characters".into(),
            ));
        }
        if self.window == 0 {
            return Err(err("window", "must be at least 1".into()));
        }
        if self.window > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(err("window", "too large".into()));
        }
        if self.max_tps == Some(0) {
            return Err(err("max_tps", "must be at least 1 (or unset)".into()));
        }
        for (field, d) in [
            ("response_timeout", self.response_timeout),
            ("enquire_link_interval", self.enquire_link_interval),
            ("reconnect_min", self.reconnect_min),
            ("reconnect_max", self.reconnect_max),
            ("throttle_pause", self.throttle_pause),
        ] {
            if d.is_zero() {
                return Err(err(field, "must be positive".into()));
            }
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(err("reconnect_min", "must not exceed reconnect_max".into()));
        }
        if let SmppService::Ussd { op } = self.service
            && op > 3
        {
            return Err(err(
                "service",
                format!("ussd op {op} is not a request (0..=3)"),
            ));
        }
        Ok(())
    }
}

/// TON/NPI for a sender address: alphanumeric → (5, 0); digits (optionally with a leading
/// `+`) → (1, 1).
pub fn source_ton_npi(addr: &str) -> (u8, u8) {
    let digits = addr.strip_prefix('+').unwrap_or(addr);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        (1, 1)
    } else {
        (5, 0)
    }
}

fn check_c_string(value: &str, min: usize, max: usize) -> Result<(), String> {
    if !value.is_ascii() {
        return Err("must be ASCII".into());
    }
    if value.bytes().any(|b| b == 0) {
        return Err("must not contain NUL".into());
    }
    if value.len() < min {
        return Err(format!("must have at least {min} characters"));
    }
    if value.len() > max {
        return Err(format!("must have at most {max} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SmppConfig {
        SmppConfig::new(
            ChannelId::new("sms-1"),
            "smpp://127.0.0.1:2775",
            "pinpost",
            SecretString::from("secret".to_owned()),
            "PINPOST",
        )
    }

    #[test]
    fn defaults_validate_and_alphanumeric_sender_is_ton5_npi0() {
        let c = cfg();
        c.validate().expect("defaults are valid");
        assert_eq!((c.source_ton, c.source_npi), (5, 0));
        assert_eq!(source_ton_npi("+819012345678"), (1, 1));
        assert_eq!(source_ton_npi("819012345678"), (1, 1));
        assert_eq!(source_ton_npi("Bank1"), (5, 0));
        assert_eq!(c.window, 10);
        assert_eq!(c.response_timeout, Duration::from_secs(10));
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = cfg();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret\""), "{dbg}");
        assert!(dbg.contains("system_id"));
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let mut c = cfg();
        c.password = SecretString::from("much-too-long".to_owned());
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "password");
        assert!(!e.to_string().contains("much-too-long"));

        let mut c = cfg();
        c.url = "http://x".into();
        assert_eq!(c.validate().unwrap_err().field, "url");

        let mut c = cfg();
        c.window = 0;
        assert_eq!(c.validate().unwrap_err().field, "window");

        let mut c = cfg();
        c.max_tps = Some(0);
        assert_eq!(c.validate().unwrap_err().field, "max_tps");

        let mut c = cfg();
        c.reconnect_min = Duration::from_secs(120);
        assert_eq!(c.validate().unwrap_err().field, "reconnect_min");

        let mut c = cfg();
        c.source_addr = "ABCDEFGHIJKL".into();
        assert_eq!(c.validate().unwrap_err().field, "source_addr");

        let mut c = cfg();
        c.service = SmppService::Ussd { op: 19 };
        assert_eq!(c.validate().unwrap_err().field, "service");

        let mut c = cfg();
        c.system_id = "a-system-id-that-is-too-long".into();
        assert_eq!(c.validate().unwrap_err().field, "system_id");
    }
}
