//! The settings of one push channel (one MQTT 5 session) and their validation.

use std::path::PathBuf;
use std::time::Duration;

use pinpost_channel_core::{ChannelId, SecretString};

/// The placeholder of [`PushConfig::topic_template`] replaced by the vehicle id.
pub const VEHICLE_ID_PLACEHOLDER: &str = "{vehicle_id}";
/// The placeholder of [`PushConfig::response_topic`] replaced by the client id.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// The longest vehicle id (the message address) accepted, in bytes.
pub const MAX_VEHICLE_ID_LEN: usize = 128;

/// Why a [`PushConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("push channel {channel}: {field}: {reason}")]
pub struct ConfigError {
    pub channel: String,
    pub field: &'static str,
    pub reason: String,
}

/// The settings of one car-navigation push channel.
///
/// `Debug` redacts the password ([`SecretString`]).
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub id: ChannelId,
    /// `mqtts://host:port` (TLS, rustls with ring; port defaults to 8883) or `mqtt://host:port`
    /// (plain TCP, port 1883), the latter only with [`allow_plaintext`](Self::allow_plaintext).
    pub broker_url: String,
    /// Must be true for an `mqtt://` URL; the PIN then crosses the network in the clear.
    pub allow_plaintext: bool,
    /// The MQTT client identifier; also names the persistent session on the broker.
    pub client_id: String,
    /// PEM trust anchors for the broker's certificate (the carmaker's private CA). When unset,
    /// the webpki (Mozilla) roots are used. Read at every connect.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate chain for client-certificate authentication; needs
    /// [`client_key_file`](Self::client_key_file). Read at every connect, so a rotated
    /// certificate is picked up by the next reconnect.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of [`client_cert_file`](Self::client_cert_file).
    pub client_key_file: Option<PathBuf>,
    /// MQTT user name, when the broker wants one (besides or instead of a client certificate).
    pub username: Option<String>,
    /// MQTT password; only with a user name.
    pub password: Option<SecretString>,
    /// The topic of a vehicle's head unit; [`VEHICLE_ID_PLACEHOLDER`] is replaced by the
    /// message address, e.g. `vehicles/{vehicle_id}/pin`.
    pub topic_template: String,
    /// Where head units answer (the Response Topic of every PIN); [`CLIENT_ID_PLACEHOLDER`] is
    /// replaced by the client id, e.g. `pinpost/{client_id}/acks`. The channel subscribes to it.
    pub response_topic: String,
    /// MQTT keep alive; at least 5 s.
    pub keep_alive: Duration,
    /// Session Expiry Interval: the broker keeps the session (the response-topic subscription
    /// and acknowledgements that arrive meanwhile) this long after a disconnect. Connects use
    /// Clean Start = 0, so the session survives reconnects and restarts.
    pub session_expiry: Duration,
    /// Reconnect backoff: doubles from `reconnect_min` up to `reconnect_max`, each delay drawn
    /// from [d/2, d].
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// TCP connect + TLS handshake + CONNECT/CONNACK, as a whole (whole seconds, rounded up).
    pub connect_timeout: Duration,
    /// How long a written PUBLISH waits for its PUBACK before the send is `InDoubt`; also how
    /// long a send waits for a free in-flight slot.
    pub puback_timeout: Duration,
    /// The most PUBLISH packets awaiting their PUBACK at once; the broker's Receive Maximum
    /// lowers it further.
    pub window: u16,
}

impl PushConfig {
    /// A config with the defaults: TLS with the webpki roots, no client certificate, no user
    /// name, topic `vehicles/{vehicle_id}/pin`, response topic `pinpost/{client_id}/acks`,
    /// keep alive 30 s, session expiry 1 day, reconnect 1 s..60 s, connect timeout 10 s,
    /// PUBACK timeout 10 s, window 16.
    pub fn new(id: ChannelId, broker_url: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            id,
            broker_url: broker_url.into(),
            allow_plaintext: false,
            client_id: client_id.into(),
            tls_ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            username: None,
            password: None,
            topic_template: "vehicles/{vehicle_id}/pin".into(),
            response_topic: "pinpost/{client_id}/acks".into(),
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(24 * 3600),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            puback_timeout: Duration::from_secs(10),
            window: 16,
        }
    }

    /// Check everything that can be checked without a broker (the certificate files are read
    /// at connect time). [`crate::PushChannel::start`] runs it too and keeps the channel Down
    /// with the reason when it fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, reason: String| ConfigError {
            channel: self.id.to_string(),
            field,
            reason,
        };
        let endpoint = Endpoint::parse(&self.broker_url).map_err(|r| err("broker_url", r))?;
        if !endpoint.tls && !self.allow_plaintext {
            return Err(err(
                "broker_url",
                "mqtt:// is plaintext; use mqtts:// or set allow_plaintext".into(),
            ));
        }
        if !endpoint.tls
            && (self.tls_ca_file.is_some()
                || self.client_cert_file.is_some()
                || self.client_key_file.is_some())
        {
            return Err(err(
                "broker_url",
                "TLS files are set but the URL is mqtt:// (plaintext)".into(),
            ));
        }
        check_client_id(&self.client_id).map_err(|r| err("client_id", r))?;
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => {
                return Err(err(
                    "client_key_file",
                    "client_cert_file needs client_key_file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(err(
                    "client_cert_file",
                    "client_key_file needs client_cert_file".into(),
                ));
            }
            _ => {}
        }
        if let Some(user) = &self.username
            && user.is_empty()
        {
            return Err(err("username", "must not be empty when set".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(err("password", "a password needs a username".into()));
        }
        check_topic_template(&self.topic_template).map_err(|r| err("topic_template", r))?;
        check_response_topic(&self.response_topic).map_err(|r| err("response_topic", r))?;
        if self.keep_alive < Duration::from_secs(5) {
            return Err(err("keep_alive", "must be at least 5s".into()));
        }
        if self.keep_alive > Duration::from_secs(u16::MAX.into()) {
            return Err(err("keep_alive", "must be at most 65535s".into()));
        }
        if self.session_expiry < Duration::from_secs(1) {
            return Err(err(
                "session_expiry",
                "must be at least 1s (the session must outlive a reconnect)".into(),
            ));
        }
        if self.session_expiry >= Duration::from_secs(u32::MAX.into()) {
            return Err(err("session_expiry", "must be below 4294967295s".into()));
        }
        for (field, d) in [
            ("reconnect_min", self.reconnect_min),
            ("reconnect_max", self.reconnect_max),
            ("connect_timeout", self.connect_timeout),
            ("puback_timeout", self.puback_timeout),
        ] {
            if d.is_zero() {
                return Err(err(field, "must be positive".into()));
            }
        }
        if self.reconnect_min > self.reconnect_max {
            return Err(err("reconnect_min", "must not exceed reconnect_max".into()));
        }
        if self.window == 0 {
            return Err(err("window", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The response topic with the client id filled in.
    pub fn resolved_response_topic(&self) -> String {
        self.response_topic
            .replace(CLIENT_ID_PLACEHOLDER, &self.client_id)
    }

    /// The topic of one vehicle, or why the vehicle id cannot be used in a topic.
    pub fn vehicle_topic(&self, vehicle_id: &str) -> Result<String, String> {
        check_vehicle_id(vehicle_id)?;
        Ok(self
            .topic_template
            .replace(VEHICLE_ID_PLACEHOLDER, vehicle_id))
    }

    /// `connect_timeout` in whole seconds (rounded up), as rumqttc takes it.
    pub(crate) fn connect_timeout_secs(&self) -> u64 {
        let secs = self.connect_timeout.as_secs();
        if self.connect_timeout.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        }
    }
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err("must start with mqtts:// or mqtt://".into());
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("only host and port may follow the scheme".into());
        }
        if rest.starts_with('[') {
            return Err("IPv6 literals are not supported; use a host name".into());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => {
                let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
                if port == 0 {
                    return Err("port 0".into());
                }
                (host, port)
            }
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err("missing host".into());
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(format!("invalid host {host:?}"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

fn is_topic_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')
}

/// A vehicle id becomes one topic level: ASCII letters, digits and `- _ . : @` only, so it can
/// never add levels, wildcards or placeholders.
pub(crate) fn check_vehicle_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty vehicle id".into());
    }
    if id.len() > MAX_VEHICLE_ID_LEN {
        return Err(format!(
            "vehicle id longer than {MAX_VEHICLE_ID_LEN} characters"
        ));
    }
    if !id.bytes().all(is_topic_safe) {
        return Err("vehicle id may only hold ASCII letters, digits and - _ . : @".into());
    }
    Ok(())
}

fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 128 {
        return Err("must have at most 128 characters".into());
    }
    if !id.bytes().all(is_topic_safe) {
        return Err("may only hold ASCII letters, digits and - _ . : @".into());
    }
    Ok(())
}

/// A topic name to publish to: no wildcards, no NUL, no empty string, at most 65535 bytes.
fn check_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".into());
    }
    if topic.len() > 60_000 {
        return Err("too long".into());
    }
    if topic.contains(['+', '#', '\0']) {
        return Err("must not contain + # or NUL (it is a topic name, not a filter)".into());
    }
    if topic.starts_with('$') {
        return Err("must not start with $ (reserved for the broker)".into());
    }
    Ok(())
}

fn check_topic_template(template: &str) -> Result<(), String> {
    if !template.contains(VEHICLE_ID_PLACEHOLDER) {
        return Err(format!("must contain {VEHICLE_ID_PLACEHOLDER}"));
    }
    let rest = template.replace(VEHICLE_ID_PLACEHOLDER, "");
    if rest.contains(['{', '}']) {
        return Err(format!(
            "unknown placeholder; only {VEHICLE_ID_PLACEHOLDER} is replaced"
        ));
    }
    check_topic_name(&template.replace(VEHICLE_ID_PLACEHOLDER, "v"))
}

fn check_response_topic(template: &str) -> Result<(), String> {
    let rest = template.replace(CLIENT_ID_PLACEHOLDER, "");
    if rest.contains(['{', '}']) {
        return Err(format!(
            "unknown placeholder; only {CLIENT_ID_PLACEHOLDER} is replaced"
        ));
    }
    check_topic_name(&template.replace(CLIENT_ID_PLACEHOLDER, "c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PushConfig {
        PushConfig::new(
            ChannelId::new("carnav-1"),
            "mqtts://broker.example.net:8883",
            "pinpost-node-1",
        )
    }

    #[test]
    fn defaults_validate() {
        let c = cfg();
        c.validate().expect("defaults are valid");
        assert_eq!(c.resolved_response_topic(), "pinpost/pinpost-node-1/acks");
        assert_eq!(
            c.vehicle_topic("JT123456789012345").unwrap(),
            "vehicles/JT123456789012345/pin"
        );
        assert_eq!(c.window, 16);
        assert_eq!(c.connect_timeout_secs(), 10);
    }

    #[test]
    fn urls() {
        let e = Endpoint::parse("mqtts://broker.example.net").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.example.net", 8883, true)
        );
        let e = Endpoint::parse("mqtt://127.0.0.1:1884/").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1884, false));
        for bad in [
            "http://x",
            "mqtts://",
            "mqtts://h:0",
            "mqtts://h:x",
            "mqtts://user@h",
            "mqtts://h/path",
            "mqtts://[::1]:8883",
            "mqtts://h o",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plaintext_needs_the_explicit_switch() {
        let mut c = cfg();
        c.broker_url = "mqtt://127.0.0.1:1883".into();
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "broker_url");
        assert!(e.reason.contains("allow_plaintext"), "{e}");
        c.allow_plaintext = true;
        c.validate().expect("plaintext when asked for");
        c.client_cert_file = Some("c.pem".into());
        c.client_key_file = Some("k.pem".into());
        assert_eq!(c.validate().unwrap_err().field, "broker_url");
    }

    #[test]
    fn vehicle_ids_cannot_escape_their_topic_level() {
        let c = cfg();
        for bad in ["", "a/b", "+", "#", "a b", "x\0", "{vehicle_id}", "ü"] {
            assert!(c.vehicle_topic(bad).is_err(), "{bad:?}");
        }
        assert!(c.vehicle_topic(&"x".repeat(129)).is_err());
        assert!(c.vehicle_topic("vin:WDB-123_4.5@oem").is_ok());
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        type Change = Box<dyn Fn(&mut PushConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("client_id", Box::new(|c| c.client_id = String::new())),
            ("client_id", Box::new(|c| c.client_id = "a/b".into())),
            (
                "client_key_file",
                Box::new(|c| c.client_cert_file = Some("c.pem".into())),
            ),
            (
                "client_cert_file",
                Box::new(|c| c.client_key_file = Some("k.pem".into())),
            ),
            (
                "password",
                Box::new(|c| c.password = Some(SecretString::from("pw".to_owned()))),
            ),
            ("username", Box::new(|c| c.username = Some(String::new()))),
            (
                "topic_template",
                Box::new(|c| c.topic_template = "vehicles/pin".into()),
            ),
            (
                "topic_template",
                Box::new(|c| c.topic_template = "vehicles/{vehicle_id}/+".into()),
            ),
            (
                "topic_template",
                Box::new(|c| c.topic_template = "vehicles/{vehicle_id}/{kind}".into()),
            ),
            (
                "response_topic",
                Box::new(|c| c.response_topic = "acks/#".into()),
            ),
            (
                "response_topic",
                Box::new(|c| c.response_topic = String::new()),
            ),
            (
                "keep_alive",
                Box::new(|c| c.keep_alive = Duration::from_secs(2)),
            ),
            (
                "session_expiry",
                Box::new(|c| c.session_expiry = Duration::ZERO),
            ),
            (
                "reconnect_min",
                Box::new(|c| c.reconnect_min = Duration::from_secs(600)),
            ),
            (
                "puback_timeout",
                Box::new(|c| c.puback_timeout = Duration::ZERO),
            ),
            ("window", Box::new(|c| c.window = 0)),
        ];
        for (field, change) in cases {
            let mut c = cfg();
            change(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn debug_redacts_the_password() {
        let mut c = cfg();
        c.username = Some("gw".into());
        c.password = Some(SecretString::from("hunter2-secret".to_owned()));
        c.validate().unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2-secret"), "{dbg}");
    }
}
