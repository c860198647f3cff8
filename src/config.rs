//! Typed configuration: TOML file, `PINPOST__SECTION__KEY` environment overrides, embedded
//! defaults, and a pure validation step (`pinpost check-config`).
//!
//! Every struct denies unknown keys; nothing is silently defaulted that changes behaviour
//! without a documented default. Secrets come from `*_file` paths or hashes, never the
//! config text itself (tokens are stored as SHA-256 hashes).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub pin: PinConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub vouchers: VouchersConfig,
    /// Fraud and cost caps (SMS pumping): off unless configured.
    #[serde(default)]
    pub caps: crate::caps::CapsConfig,
    #[serde(default)]
    pub callbacks: CallbacksConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default, rename = "channel")]
    pub channels: Vec<ChannelConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default = "default_body_limit")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8025))
}
fn default_body_limit() -> usize {
    16 * 1024
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_body_limit(),
            tokens: vec![],
        }
    }
}

/// An API client. Exactly one of `token_sha256` and `token_file` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the bearer token (`printf %s "$TOKEN" | sha256sum`).
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// A file holding the bearer token itself (for example a systemd credential).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The merchant a `merchant` token redeems for (required for that role, refused for
    /// the others).
    #[serde(default)]
    pub merchant_id: Option<String>,
    /// Where state changes of this client's deliveries and vouchers are reported, unless a
    /// request names its own `callback_url`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// A file holding the secret that signs this client's callbacks (HMAC-SHA256).
    /// Required when callbacks are used, by `callback_url` here or in a request.
    #[serde(default)]
    pub callback_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Enqueue deliveries, issue vouchers, and read their state.
    Billing,
    /// Redeem and reverse PINs for the merchant the token is bound to.
    Merchant,
    /// Everything.
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://PATH` (relative paths are relative to the working directory) or
    /// `postgres://USER@HOST:PORT/DB` for several nodes sharing one queue.
    #[serde(default = "default_storage_url")]
    pub url: String,
    #[serde(default)]
    pub durability: Durability,
    /// PostgreSQL: how long a claimed delivery stays leased to its node without a
    /// heartbeat before another node's rescuer takes it back.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// PostgreSQL: connections in this node's pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL: this node's name in leases (default: host name and process id).
    #[serde(default)]
    pub node: Option<String>,
    /// PostgreSQL: each SMPP channel's `max_tps` is the budget of all live nodes together
    /// (as the SMSC counts it for the account); each node sends at its share.
    #[serde(default)]
    pub share_tps: bool,
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_size() -> usize {
    8
}

/// Where deliveries are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    Sqlite(PathBuf),
    Postgres(String),
}

fn default_storage_url() -> String {
    "sqlite://state/pinpost.db".into()
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: default_storage_url(),
            durability: Durability::Full,
            lease: default_lease(),
            pool_size: default_pool_size(),
            node: None,
            share_tps: false,
        }
    }
}

/// When `202 Accepted` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the write-ahead log is fsync'd: survives power loss.
    #[default]
    Full,
    /// After the write reached the OS: survives a crash of pinpost, not of the machine.
    Normal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// 32 random bytes as 64 hex characters: the AEAD key for PINs at rest and the key of
    /// the keyed hashes. Create one with `pinpost keygen --out FILE`.
    pub pin_key_file: PathBuf,
    /// Create the key file when it is missing (the embedded default does; a production
    /// config should not, so that a lost key is noticed instead of replaced).
    #[serde(default)]
    pub generate_missing: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Attempts (sends that reached a peer or failed there) before a delivery fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    pub retry_backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// What to do with a send whose outcome is unknown, once `in_doubt_after` has passed
    /// without a receipt: `resend` (the subscriber may get the PIN twice) or `fail`.
    #[serde(default)]
    pub in_doubt_action: InDoubtAction,
    #[serde(default = "default_in_doubt_after", with = "humantime_serde")]
    pub in_doubt_after: Duration,
    /// How long to wait for a receipt after submission; then the outcome is recorded as
    /// unknown and the delivery stops waiting.
    #[serde(default = "default_receipt_timeout", with = "humantime_serde")]
    pub receipt_timeout: Duration,
    /// How long a step of a delivery plan waits for its receipt before the next registered
    /// device is tried, for devices registered without their own `step_timeout`.
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub step_timeout: Duration,
    /// How long in-flight sends may take to finish on shutdown.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// UTC offset used to show expiry times in message texts, e.g. "+09:00".
    #[serde(default = "default_utc_offset")]
    pub utc_offset: String,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(2)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
fn default_in_doubt_after() -> Duration {
    Duration::from_secs(120)
}
fn default_receipt_timeout() -> Duration {
    Duration::from_secs(48 * 3600)
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_utc_offset() -> String {
    "+00:00".into()
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            retry_backoff_min: default_backoff_min(),
            retry_backoff_max: default_backoff_max(),
            in_doubt_action: InDoubtAction::default(),
            in_doubt_after: default_in_doubt_after(),
            receipt_timeout: default_receipt_timeout(),
            step_timeout: default_step_timeout(),
            drain_timeout: default_drain_timeout(),
            utc_offset: default_utc_offset(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InDoubtAction {
    #[default]
    Resend,
    Fail,
}

/// Signed status callbacks to billing systems (the `callbacks` outbox table).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    /// POSTs of one callback (answers other than 2xx, connection errors, timeouts) before
    /// it is abandoned.
    #[serde(default = "default_callback_attempts")]
    pub max_attempts: u32,
    /// Retry backoff: doubles from min up to max, with +-20 % jitter.
    #[serde(default = "default_callback_backoff_min", with = "humantime_serde")]
    pub backoff_min: Duration,
    #[serde(default = "default_callback_backoff_max", with = "humantime_serde")]
    pub backoff_max: Duration,
    /// The whole of one POST: connect, send, and the answer's status line and headers.
    #[serde(default = "default_callback_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// POSTs in flight at once.
    #[serde(default = "default_callback_in_flight")]
    pub max_in_flight: usize,
    /// How often the outbox is looked at for callbacks that are due.
    #[serde(default = "default_callback_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_callback_attempts() -> u32 {
    12
}
fn default_callback_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_callback_backoff_max() -> Duration {
    Duration::from_secs(600)
}
fn default_callback_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_callback_in_flight() -> usize {
    8
}
fn default_callback_poll() -> Duration {
    Duration::from_millis(250)
}

impl Default for CallbacksConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_callback_attempts(),
            backoff_min: default_callback_backoff_min(),
            backoff_max: default_callback_backoff_max(),
            timeout: default_callback_timeout(),
            max_in_flight: default_callback_in_flight(),
            poll_interval: default_callback_poll(),
        }
    }
}

/// The subscriber registry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// ISO 3166 region (e.g. "JP") for numbers given in national format; absent: only
    /// international formats (+81...) are accepted.
    #[serde(default)]
    pub default_region: Option<String>,
}

/// What the API accepts as a PIN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinConfig {
    #[serde(default = "default_pin_min")]
    pub min_length: usize,
    #[serde(default = "default_pin_max")]
    pub max_length: usize,
}

fn default_pin_min() -> usize {
    6
}
fn default_pin_max() -> usize {
    24
}

impl Default for PinConfig {
    fn default() -> Self {
        Self {
            min_length: default_pin_min(),
            max_length: default_pin_max(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. "info" or "info,pinpost::dispatch=debug". The SMPP codec's
    /// PDU dump is always off: it would show message texts.
    #[serde(default = "default_log_filter")]
    pub filter: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_filter() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: default_log_filter(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// One `[[channel]]`, tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChannelConfig {
    /// SMS over SMPP.
    Smpp(SmppChannelConfig),
    /// Alphanumeric pagers through an SNPP gateway (RFC 1861).
    Snpp(SnppChannelConfig),
    /// Alphanumeric pagers through a TAP/IXO 1.8 paging terminal on a serial line.
    Tap(TapChannelConfig),
    /// USSD push (network-initiated USSN) over SMPP.
    Ussd(SmppChannelConfig),
    /// E-mail to a PC, encrypted to the device's OpenPGP key.
    Smtp(SmtpChannelConfig),
    /// Car-navigation push over MQTT 5.
    Mqtt(MqttChannelConfig),
    /// Fax pages through Class 2.0 modems.
    Fax(FaxChannelConfig),
}

impl ChannelConfig {
    pub fn id(&self) -> &str {
        match self {
            ChannelConfig::Smpp(c) => &c.id,
            ChannelConfig::Snpp(c) => &c.id,
            ChannelConfig::Tap(c) => &c.id,
            ChannelConfig::Ussd(c) => &c.id,
            ChannelConfig::Smtp(c) => &c.id,
            ChannelConfig::Mqtt(c) => &c.id,
            ChannelConfig::Fax(c) => &c.id,
        }
    }

    /// The device kind this channel serves.
    pub fn device_kind(&self) -> &'static str {
        match self {
            ChannelConfig::Smpp(_) => "sms",
            ChannelConfig::Snpp(_) | ChannelConfig::Tap(_) => "pager",
            ChannelConfig::Ussd(_) => "ussd",
            ChannelConfig::Smtp(_) => "email",
            ChannelConfig::Mqtt(_) => "carnav",
            ChannelConfig::Fax(_) => "fax",
        }
    }

    pub fn template(&self) -> &str {
        match self {
            ChannelConfig::Smpp(c) => &c.template,
            ChannelConfig::Snpp(c) => &c.template,
            ChannelConfig::Tap(c) => &c.template,
            ChannelConfig::Ussd(c) => &c.template,
            ChannelConfig::Smtp(c) => &c.template,
            ChannelConfig::Mqtt(c) => &c.template,
            ChannelConfig::Fax(c) => &c.template,
        }
    }
}

/// The fax page: the first line (the PIN) is set large, the others below it.
pub fn default_fax_template() -> String {
    "PIN {pin}\n[Amount: {amount}\n][Payee: {payee}\n][Valid until: {expires}\n]Issued by pinpost"
        .into()
}
fn default_fax_baud() -> u32 {
    115_200
}
fn default_national_prefix() -> String {
    "0".into()
}
fn default_international_prefix() -> String {
    "00".into()
}
fn default_max_dials() -> u32 {
    3
}
fn default_redial_delays() -> Vec<String> {
    vec!["30s".into(), "90s".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControlConfig {
    /// RTS/CTS (+FLO=2).
    #[default]
    Hardware,
    /// XON/XOFF (+FLO=1).
    Software,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaxResolution {
    /// 196 lines per inch.
    #[default]
    Fine,
    /// 98 lines per inch.
    Standard,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaxChannelConfig {
    pub id: String,
    /// Serial devices of the Class 2.0 modems; one call per modem at a time.
    pub devices: Vec<String>,
    #[serde(default = "default_fax_baud")]
    pub baud_rate: u32,
    #[serde(default)]
    pub flow_control: FlowControlConfig,
    /// Our station id (TSI), at most 20 characters, e.g. "+81 3 0000 0000".
    #[serde(default)]
    pub local_id: String,
    /// Dial plan: dialled before every number (e.g. "0," for an outside line).
    #[serde(default)]
    pub dial_prefix: String,
    /// The country the modems dial from; E.164 numbers of it are dialled nationally.
    #[serde(default)]
    pub country_code: Option<String>,
    #[serde(default = "default_national_prefix")]
    pub national_prefix: String,
    #[serde(default = "default_international_prefix")]
    pub international_prefix: String,
    #[serde(default)]
    pub resolution: FaxResolution,
    /// Dials per number (busy, no answer, no carrier are redialled).
    #[serde(default = "default_max_dials")]
    pub max_dials: u32,
    /// Pauses between dials, e.g. ["30s", "90s"] (the last repeats).
    #[serde(default = "default_redial_delays")]
    pub redial_delays: Vec<String>,
    /// The page text; its first line (with the PIN) is set large.
    #[serde(default = "default_fax_template")]
    pub template: String,
}

fn default_email_template() -> String {
    "Your payment PIN: {pin}\n[Amount: {amount}\n][Payee: {payee}\n][Valid until: {expires}\n]"
        .into()
}
fn default_subject() -> String {
    "Your payment PIN".into()
}
fn default_carnav_template() -> String {
    "PIN {pin}[ {amount}][ {payee}][ until {expires}]".into()
}
fn default_topic_template() -> String {
    "vehicles/{vehicle_id}/pin".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS, required (no plaintext fallback); port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte; port 465 by default.
    Implicit,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpChannelConfig {
    pub id: String,
    /// The submission server.
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    /// Extra trust anchor (PEM) for a server with a private CA.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// SMTP AUTH user; the password from `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    pub from: String,
    /// Sent in clear: keep it generic.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The text inside the encrypted part.
    #[serde(default = "default_email_template")]
    pub template: String,
    /// Optional DKIM signing: selector, signing domain and key file (RSA PKCS#1 PEM, or an
    /// Ed25519 seed in base64 with `dkim_algorithm = "ed25519"`).
    #[serde(default)]
    pub dkim_selector: Option<String>,
    #[serde(default)]
    pub dkim_domain: Option<String>,
    #[serde(default)]
    pub dkim_key_file: Option<PathBuf>,
    #[serde(default)]
    pub dkim_algorithm: DkimAlgorithmConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithmConfig {
    #[default]
    Rsa,
    Ed25519,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttChannelConfig {
    pub id: String,
    /// `mqtts://host:port` (or `mqtt://` with `allow_plaintext = true`, for tests).
    pub broker_url: String,
    #[serde(default)]
    pub allow_plaintext: bool,
    pub client_id: String,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate authentication.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Per-vehicle topic; `{vehicle_id}` is the device address.
    #[serde(default = "default_topic_template")]
    pub topic_template: String,
    /// Where head units answer; default `pinpost/{client_id}/acks`.
    #[serde(default)]
    pub response_topic: Option<String>,
    #[serde(default = "default_carnav_template")]
    pub template: String,
}

pub fn default_pager_template() -> String {
    "PIN {pin}[ {amount}][ {payee}][ exp {expires}]".into()
}
fn default_pager_chars() -> usize {
    128
}
fn default_baud() -> u32 {
    1200
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnppMessageCommand {
    /// One line with MESS (RFC 1861 level 1).
    #[default]
    Mess,
    /// DATA with dot-stuffing (level 2).
    Data,
    /// MESS when the text is one line, DATA otherwise.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnppChannelConfig {
    pub id: String,
    /// `snpp://host:port` (port 444 by default) or `snpps://host:port` (TLS).
    pub url: String,
    /// Extra trust anchor (PEM) for a gateway with a private CA.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// LOGI user, when the gateway wants one; its password from `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub message_command: SnppMessageCommand,
    /// The pagers' display limit; the text is trimmed with the PIN line kept whole.
    #[serde(default = "default_pager_chars")]
    pub max_message_chars: usize,
    #[serde(default = "default_pager_template")]
    pub template: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapChannelConfig {
    pub id: String,
    /// Serial device of the paging terminal line, e.g. /dev/ttyS0 (7E1, XON/XOFF).
    pub device: PathBuf,
    /// 300 or 1200 bit/s, as TAP 1.8 specifies (others are accepted for direct lines).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Terminal login password, when it wants one.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_pager_chars")]
    pub max_message_chars: usize,
    #[serde(default = "default_pager_template")]
    pub template: String,
    /// When `device` is a modem: the paging terminal's number, dialled for each session.
    /// Absent: a direct line to the terminal.
    #[serde(default)]
    pub dial: Option<String>,
    /// Modem commands sent before dialling (each must answer OK); default ATZ, ATE0V1.
    #[serde(default)]
    pub modem_init: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmppChannelConfig {
    pub id: String,
    /// `smpp://host:port`, `smpps://host:port`, or `loopback` (the built-in SMSC, started
    /// in-process on a free loopback port). For `kind = "ussd"` also `channel:<id>`: share
    /// the bind of that SMS channel (listed earlier) instead of opening another.
    pub url: String,
    #[serde(default)]
    pub system_id: String,
    /// Inline password; prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub system_type: String,
    #[serde(default)]
    pub interface_version: InterfaceVersion,
    /// Outstanding submit_sm at once on this bind.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Submits per second on this bind; absent = unlimited.
    #[serde(default)]
    pub max_tps: Option<u32>,
    #[serde(default = "default_source_addr")]
    pub source_addr: String,
    /// Message text. Placeholders: {pin} (grouped in fours), {pin_raw}, {amount},
    /// {payee}, {expires}. A `[...]` section is dropped when a placeholder in it is empty.
    #[serde(default = "default_template")]
    pub template: String,
    /// Ask the SMSC for delivery receipts.
    #[serde(default = "default_true")]
    pub receipts: bool,
    /// For `kind = "ussd"`: 3 sends a notification (USSN request, confirmed with op 19), 2
    /// a request that expects the subscriber's answer (USSR, confirmed with op 18).
    #[serde(default = "default_ussd_op")]
    pub ussd_op: u8,
    #[serde(default = "default_response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    #[serde(default = "default_enquire_link", with = "humantime_serde")]
    pub enquire_link_interval: Duration,
}

fn default_ussd_op() -> u8 {
    3
}
fn default_window() -> usize {
    10
}
fn default_source_addr() -> String {
    "PINPOST".into()
}
pub fn default_template() -> String {
    "PIN {pin}[ for {amount}][ at {payee}][, valid until {expires}]".into()
}
fn default_true() -> bool {
    true
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_enquire_link() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterfaceVersion {
    V34,
    #[default]
    V50,
}

impl Serialize for InterfaceVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            InterfaceVersion::V34 => "3.4",
            InterfaceVersion::V50 => "5.0",
        })
    }
}

impl<'de> Deserialize<'de> for InterfaceVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "3.4" => Ok(InterfaceVersion::V34),
            "5.0" => Ok(InterfaceVersion::V50),
            other => Err(serde::de::Error::custom(format!(
                "interface_version must be \"3.4\" or \"5.0\", not {other:?}"
            ))),
        }
    }
}

/// Human durations ("30s", "10m", "48h", "250ms").
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// Parse "250ms", "30s", "10m", "48h", "7d" (one number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected e.g. \"30s\", \"10m\", \"250ms\"")
    })?;
    let ms = match unit {
        "ms" => n,
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unit must be one of ms, s, m, h, d"
            ));
        }
    };
    Ok(Duration::from_millis(ms))
}

pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(source: &str, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: source.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Vouchers: the PIN records pinpost mints, and their redemption.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VouchersConfig {
    /// Digits of a minted PIN, the last of them a Damm check digit.
    #[serde(default = "default_voucher_pin_length")]
    pub pin_length: usize,
    /// Lifetime of a voucher issued without `expires_at` or `ttl`.
    #[serde(default = "default_voucher_ttl", with = "humantime_serde")]
    pub default_ttl: Duration,
    /// The longest lifetime a voucher may be issued with.
    #[serde(default = "default_voucher_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// How long after its capture a merchant may reverse a redemption (until it is settled).
    #[serde(default = "default_reversal_window", with = "humantime_serde")]
    pub reversal_window: Duration,
    /// Failed redemptions (unknown PIN or bad check digit) one merchant token may make
    /// within `failure_window` before it is locked out for `lockout`.
    #[serde(default = "default_token_failures")]
    pub token_failures: u32,
    /// Failed redemptions across all merchants within `failure_window` before every
    /// redemption is locked out for `lockout`.
    #[serde(default = "default_global_failures")]
    pub global_failures: u32,
    #[serde(default = "default_failure_window", with = "humantime_serde")]
    pub failure_window: Duration,
    #[serde(default = "default_lockout", with = "humantime_serde")]
    pub lockout: Duration,
}

fn default_voucher_pin_length() -> usize {
    16
}
fn default_voucher_ttl() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_voucher_max_ttl() -> Duration {
    Duration::from_secs(366 * 86_400)
}
fn default_reversal_window() -> Duration {
    Duration::from_secs(86_400)
}
fn default_token_failures() -> u32 {
    20
}
fn default_global_failures() -> u32 {
    1000
}
fn default_failure_window() -> Duration {
    Duration::from_secs(900)
}
fn default_lockout() -> Duration {
    Duration::from_secs(900)
}

impl Default for VouchersConfig {
    fn default() -> Self {
        Self {
            pin_length: default_voucher_pin_length(),
            default_ttl: default_voucher_ttl(),
            max_ttl: default_voucher_max_ttl(),
            reversal_window: default_reversal_window(),
            token_failures: default_token_failures(),
            global_failures: default_global_failures(),
            failure_window: default_failure_window(),
            lockout: default_lockout(),
        }
    }
}

/// Merchant and institution ids: short, printable, safe in CSV and URLs.
pub fn valid_party_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// An absolute http(s) URL without whitespace or control characters.
pub fn valid_callback_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
        && s.len() <= 2048
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Config {
    /// The embedded defaults: SQLite and a generated key in `state_dir`, the API on
    /// 127.0.0.1:8025 with one admin token generated into `state_dir/api.token`, and one
    /// SMS channel bound to the built-in loopback SMSC.
    pub fn embedded(state_dir: &Path) -> Config {
        Config {
            api: ApiConfig {
                tokens: vec![TokenConfig {
                    name: "local".into(),
                    role: Role::Admin,
                    token_sha256: None,
                    token_file: Some(state_dir.join("api.token")),
                    merchant_id: None,
                    callback_url: None,
                    callback_secret_file: None,
                }],
                ..ApiConfig::default()
            },
            storage: StorageConfig {
                url: format!("sqlite://{}", state_dir.join("pinpost.db").display()),
                ..StorageConfig::default()
            },
            secrets: SecretsConfig {
                pin_key_file: state_dir.join("pin.key"),
                generate_missing: true,
            },
            delivery: DeliveryConfig::default(),
            pin: PinConfig::default(),
            registry: RegistryConfig::default(),
            vouchers: VouchersConfig::default(),
            caps: crate::caps::CapsConfig::default(),
            callbacks: CallbacksConfig::default(),
            log: LogConfig::default(),
            channels: vec![ChannelConfig::Smpp(SmppChannelConfig {
                id: "sms".into(),
                url: "loopback".into(),
                system_id: "pinpost".into(),
                password: Some("loopback".into()),
                password_file: None,
                system_type: String::new(),
                interface_version: InterfaceVersion::V50,
                window: 64,
                max_tps: None,
                source_addr: default_source_addr(),
                template: default_template(),
                receipts: true,
                ussd_op: default_ussd_op(),
                response_timeout: default_response_timeout(),
                enquire_link_interval: default_enquire_link(),
            })],
        }
    }

    /// Load a TOML file with `PINPOST__SECTION__KEY` overrides from `env` (pass
    /// `std::env::vars()` in `main`; tests pass their own).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        if !path.exists() {
            return Err(ConfigError::invalid(
                &path.display().to_string(),
                "no such file",
            ));
        }
        let figment = Figment::from(Toml::file_exact(path));
        Self::extract(figment, env)
    }

    /// The embedded defaults with `PINPOST__SECTION__KEY` overrides.
    pub fn load_embedded(
        state_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let figment = Figment::from(Serialized::defaults(Config::embedded(state_dir)));
        Self::extract(figment, env)
    }

    fn extract(
        figment: Figment,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PINPOST__"))
            .collect();
        let figment = figment.merge(env_provider(&vars));
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks that serde cannot express. Pure: touches no file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.api.max_body_bytes < 256 || self.api.max_body_bytes > 1 << 20 {
            return Err(ConfigError::invalid(
                "api.max_body_bytes",
                "must be between 256 and 1048576",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.api.tokens.iter().enumerate() {
            let src = format!("api.tokens[{i}]");
            if t.name.is_empty() {
                return Err(ConfigError::invalid(&src, "name must not be empty"));
            }
            if !names.insert(t.name.clone()) {
                return Err(ConfigError::invalid(
                    &src,
                    format!("duplicate token name {:?}", t.name),
                ));
            }
            match (&t.token_sha256, &t.token_file) {
                (Some(h), None) => {
                    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(ConfigError::invalid(
                            &format!("{src}.token_sha256"),
                            "must be 64 hex characters (the SHA-256 of the token)",
                        ));
                    }
                }
                (None, Some(_)) => {}
                _ => {
                    return Err(ConfigError::invalid(
                        &src,
                        "set exactly one of token_sha256 and token_file",
                    ));
                }
            }
            match (t.role, &t.merchant_id) {
                (Role::Merchant, None) => {
                    return Err(ConfigError::invalid(
                        &format!("{src}.merchant_id"),
                        "a merchant token must name its merchant_id",
                    ));
                }
                (Role::Merchant, Some(m)) if !valid_party_id(m) || m == "*" => {
                    return Err(ConfigError::invalid(
                        &format!("{src}.merchant_id"),
                        "must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
                    ));
                }
                (Role::Merchant, Some(_)) | (_, None) => {}
                (_, Some(_)) => {
                    return Err(ConfigError::invalid(
                        &format!("{src}.merchant_id"),
                        "only merchant tokens are bound to a merchant",
                    ));
                }
            }
            if let Some(u) = &t.callback_url
                && !valid_callback_url(u)
            {
                return Err(ConfigError::invalid(
                    &format!("{src}.callback_url"),
                    "must be an http:// or https:// URL",
                ));
            }
            if t.callback_url.is_some() && t.callback_secret_file.is_none() {
                return Err(ConfigError::invalid(
                    &format!("{src}.callback_secret_file"),
                    "a token with a callback_url needs a callback_secret_file to sign with",
                ));
            }
        }
        if matches!(self.storage_backend()?, StorageBackend::Sqlite(_)) && self.storage.share_tps {
            return Err(ConfigError::invalid(
                "storage.share_tps",
                "shares max_tps among the nodes of a PostgreSQL queue; the embedded database has one node",
            ));
        }
        if self.storage.pool_size == 0 || self.storage.pool_size > 256 {
            return Err(ConfigError::invalid(
                "storage.pool_size",
                "must be between 1 and 256",
            ));
        }
        if self.storage.lease < Duration::from_secs(3) {
            return Err(ConfigError::invalid(
                "storage.lease",
                "must be at least 3s (heartbeats renew it every third of it)",
            ));
        }
        if self.pin.min_length < 4
            || self.pin.min_length > self.pin.max_length
            || self.pin.max_length > 64
        {
            return Err(ConfigError::invalid(
                "pin",
                "need 4 <= min_length <= max_length <= 64",
            ));
        }
        self.caps
            .validate()
            .map_err(|(key, message)| ConfigError::invalid(&key, message))?;
        let v = &self.vouchers;
        if !(8..=32).contains(&v.pin_length) {
            return Err(ConfigError::invalid(
                "vouchers.pin_length",
                "must be between 8 and 32 digits",
            ));
        }
        if v.default_ttl.is_zero() || v.default_ttl > v.max_ttl {
            return Err(ConfigError::invalid(
                "vouchers.default_ttl",
                "must be positive and at most vouchers.max_ttl",
            ));
        }
        if v.token_failures == 0 || v.global_failures == 0 {
            return Err(ConfigError::invalid(
                "vouchers",
                "token_failures and global_failures must be at least 1",
            ));
        }
        if v.failure_window.is_zero() || v.lockout.is_zero() {
            return Err(ConfigError::invalid(
                "vouchers",
                "failure_window and lockout must be positive",
            ));
        }
        if self.delivery.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "delivery.max_attempts",
                "must be at least 1",
            ));
        }
        if self.delivery.retry_backoff_min > self.delivery.retry_backoff_max {
            return Err(ConfigError::invalid(
                "delivery.retry_backoff_min",
                "must not exceed retry_backoff_max",
            ));
        }
        self.utc_offset()?;
        let cb = &self.callbacks;
        if cb.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "callbacks.max_attempts",
                "must be at least 1",
            ));
        }
        if cb.backoff_min > cb.backoff_max {
            return Err(ConfigError::invalid(
                "callbacks.backoff_min",
                "must not exceed backoff_max",
            ));
        }
        if cb.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "callbacks.timeout",
                "must be longer than 0",
            ));
        }
        if cb.max_in_flight == 0 || cb.max_in_flight > 256 {
            return Err(ConfigError::invalid(
                "callbacks.max_in_flight",
                "must be 1..=256",
            ));
        }
        if cb.poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "callbacks.poll_interval",
                "must be longer than 0",
            ));
        }
        if let Some(r) = &self.registry.default_region
            && r.parse::<phonenumber::country::Id>().is_err()
        {
            return Err(ConfigError::invalid(
                "registry.default_region",
                format!("{r:?} is not an ISO 3166 region code such as \"JP\""),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|e| ConfigError::invalid("log.filter", e))?;
        if self.channels.is_empty() {
            return Err(ConfigError::invalid(
                "channel",
                "at least one [[channel]] is required",
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let src = format!("channel[{i}]");
            let id = ch.id();
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::invalid(
                    &format!("{src}.id"),
                    "must be non-empty and use only letters, digits, '-' and '_'",
                ));
            }
            if !ids.insert(id.to_owned()) {
                return Err(ConfigError::invalid(
                    &format!("{src}.id"),
                    format!("duplicate channel id {id:?}"),
                ));
            }
            match ch {
                ChannelConfig::Ussd(c) if c.url.starts_with("channel:") => {
                    let target = &c.url["channel:".len()..];
                    let earlier = self.channels[..i]
                        .iter()
                        .any(|o| matches!(o, ChannelConfig::Smpp(s) if s.id == target));
                    if !earlier {
                        return Err(ConfigError::invalid(
                            &format!("{src}.url"),
                            format!(
                                "channel:{target} must name a kind = \"smpp\" channel listed before this one"
                            ),
                        ));
                    }
                    crate::template::Template::parse(&c.template)
                        .map_err(|e| ConfigError::invalid(&format!("{src}.template"), e))?;
                }
                ChannelConfig::Smpp(c) | ChannelConfig::Ussd(c) => validate_smpp(&src, c)?,
                ChannelConfig::Snpp(_)
                | ChannelConfig::Tap(_)
                | ChannelConfig::Smtp(_)
                | ChannelConfig::Mqtt(_)
                | ChannelConfig::Fax(_) => {
                    crate::template::Template::parse(ch.template())
                        .map_err(|e| ConfigError::invalid(&format!("{src}.template"), e))?;
                }
            }
        }
        Ok(())
    }

    /// The storage backend named by `storage.url`.
    pub fn storage_backend(&self) -> Result<StorageBackend, ConfigError> {
        let url = self.storage.url.as_str();
        if let Some(p) = url.strip_prefix("sqlite://") {
            if !p.is_empty() {
                return Ok(StorageBackend::Sqlite(PathBuf::from(p)));
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            if url.parse::<tokio_postgres::Config>().is_ok() {
                return Ok(StorageBackend::Postgres(url.to_owned()));
            }
            return Err(ConfigError::invalid(
                "storage.url",
                "not a valid PostgreSQL connection URL",
            ));
        }
        // The URL may carry a password: name only its scheme.
        let scheme = url.split("://").next().unwrap_or("");
        Err(ConfigError::invalid(
            "storage.url",
            format!(
                "unsupported storage url scheme {scheme:?}: expected sqlite://PATH or postgres://..."
            ),
        ))
    }

    /// The SQLite database path, for the commands that work on the embedded database only.
    pub fn storage_path(&self) -> Result<PathBuf, ConfigError> {
        match self.storage_backend()? {
            StorageBackend::Sqlite(p) => Ok(p),
            StorageBackend::Postgres(_) => Err(ConfigError::invalid(
                "storage.url",
                "this command works on the SQLite backend only",
            )),
        }
    }

    pub fn utc_offset(&self) -> Result<time::UtcOffset, ConfigError> {
        parse_utc_offset(&self.delivery.utc_offset)
            .ok_or_else(|| ConfigError::invalid("delivery.utc_offset", "expected e.g. \"+09:00\""))
    }
}

fn validate_smpp(src: &str, c: &SmppChannelConfig) -> Result<(), ConfigError> {
    if c.url != "loopback" {
        let rest = c
            .url
            .strip_prefix("smpp://")
            .or_else(|| c.url.strip_prefix("smpps://"))
            .ok_or_else(|| {
                ConfigError::invalid(
                    &format!("{src}.url"),
                    "must be smpp://host:port, smpps://host:port or loopback",
                )
            })?;
        let port_ok = rest
            .rsplit_once(':')
            .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            .unwrap_or(false);
        if !port_ok {
            return Err(ConfigError::invalid(
                &format!("{src}.url"),
                "needs host:port",
            ));
        }
    }
    if c.system_id.len() > 15 {
        return Err(ConfigError::invalid(
            &format!("{src}.system_id"),
            "at most 15 characters",
        ));
    }
    if c.password.is_some() && c.password_file.is_some() {
        return Err(ConfigError::invalid(
            &format!("{src}.password"),
            "set password or password_file, not both",
        ));
    }
    if c.ussd_op != 2 && c.ussd_op != 3 {
        return Err(ConfigError::invalid(
            &format!("{src}.ussd_op"),
            "must be 3 (USSN notification) or 2 (USSR request)",
        ));
    }
    if c.window == 0 || c.window > 10_000 {
        return Err(ConfigError::invalid(
            &format!("{src}.window"),
            "must be 1..=10000",
        ));
    }
    if c.max_tps == Some(0) {
        return Err(ConfigError::invalid(
            &format!("{src}.max_tps"),
            "must be at least 1 (omit it for no limit)",
        ));
    }
    if c.source_addr.is_empty() || c.source_addr.len() > 20 {
        return Err(ConfigError::invalid(
            &format!("{src}.source_addr"),
            "1 to 20 characters",
        ));
    }
    crate::template::Template::parse(&c.template)
        .map_err(|e| ConfigError::invalid(&format!("{src}.template"), e))?;
    Ok(())
}

fn parse_utc_offset(s: &str) -> Option<time::UtcOffset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1i8, &s[1..]),
        b'-' => (-1i8, &s[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()
}

/// `PINPOST__A__B=value` becomes `a.b = value`, the value read as TOML when it parses as
/// a TOML value (numbers, booleans, quoted strings, arrays) and as a plain string otherwise.
fn env_provider(vars: &[(String, String)]) -> Serialized<figment::value::Dict> {
    use figment::value::{Dict, Value};
    let mut root = Dict::new();
    for (k, v) in vars {
        let path: Vec<String> = k["PINPOST__".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value: Value = toml_value(v);
        insert_path(&mut root, &path, value);
    }
    fn insert_path(dict: &mut Dict, path: &[String], value: Value) {
        match path {
            [] => {}
            [last] => {
                dict.insert(last.clone(), value);
            }
            [first, rest @ ..] => {
                let entry = dict
                    .entry(first.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                if let Value::Dict(_, inner) = entry {
                    insert_path(inner, rest, value);
                }
            }
        }
    }
    Serialized::defaults(root)
}

fn toml_value(raw: &str) -> figment::value::Value {
    #[derive(Deserialize)]
    struct Wrap {
        v: figment::value::Value,
    }
    let doc = format!("v = {raw}");
    match Figment::from(Toml::string(&doc)).extract::<Wrap>() {
        Ok(w) => w.v,
        Err(_) => figment::value::Value::from(raw.to_owned()),
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            _ => Err(format!(
                "durability must be \"full\" or \"normal\", not {s:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    }

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    const MINIMAL: &str = r#"
[secrets]
pin_key_file = "k"
[[channel]]
id = "sms"
kind = "smpp"
url = "loopback"
"#;

    #[test]
    fn reference_config_parses() {
        let c = Config::load(&repo("config/pinpost.toml"), Vec::new()).unwrap();
        assert_eq!(c.channels.len(), 1);
        assert_eq!(c.delivery.utc_offset, "+09:00");
        assert_eq!(c.api.tokens.len(), 3);
        assert_eq!(c.api.tokens[1].merchant_id.as_deref(), Some("shop-1"));
        assert_eq!(c.vouchers.pin_length, 16);
        assert_eq!(c.caps.per_msisdn_hour, Some(5));
        assert_eq!(c.caps.destinations.len(), 2);
        let ChannelConfig::Smpp(s) = &c.channels[0] else {
            panic!("first channel is SMS")
        };
        assert_eq!(s.interface_version, InterfaceVersion::V34);
        assert_eq!(s.max_tps, Some(50));
        assert_eq!(c.callbacks.max_attempts, 12);
        assert_eq!(c.callbacks.backoff_max, Duration::from_secs(600));
        assert_eq!(c.callbacks.poll_interval, Duration::from_millis(250));
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let c = Config::load_embedded(Path::new("state"), Vec::new()).unwrap();
        assert_eq!(c.api.listen, default_listen());
        assert_eq!(c.storage.durability, Durability::Full);
        assert!(c.secrets.generate_missing);
        let ChannelConfig::Smpp(s) = &c.channels[0] else {
            panic!("first channel is SMS")
        };
        assert_eq!(s.url, "loopback");
    }

    #[test]
    fn unknown_keys_are_rejected_with_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!("{MINIMAL}\n[api]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n"),
        );
        let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
        assert!(e.contains("c.toml"), "{e}");
        let p = write(
            dir.path(),
            &MINIMAL.replace("url = \"loopback\"", "url = \"loopback\"\nwindw = 3"),
        );
        let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("windw"), "{e}");
        let p = write(
            dir.path(),
            &MINIMAL.replace("kind = \"smpp\"", "kind = \"pigeon\""),
        );
        let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
        assert!(e.contains("pigeon"), "{e}");
    }

    #[test]
    fn storage_urls_pick_the_backend_and_never_echo_a_password() {
        let mut c = Config::embedded(Path::new("/tmp/x"));
        c.storage.url = "postgres://pinpost:s3cret@db:5432/pinpost".into();
        assert_eq!(
            c.storage_backend().unwrap(),
            StorageBackend::Postgres(c.storage.url.clone())
        );
        assert!(c.storage_path().is_err(), "SQLite-only commands refuse it");
        c.storage.url = "mongodb://pinpost:s3cret@db/pinpost".into();
        let e = c.storage_backend().unwrap_err().to_string();
        assert!(e.contains("mongodb") && !e.contains("s3cret"), "{e}");
        c.storage.url = "sqlite://state/p.db".into();
        assert_eq!(
            c.storage_backend().unwrap(),
            StorageBackend::Sqlite("state/p.db".into())
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        for (edit, key) in [
            (
                "[delivery]\nretry_backoff_min = \"2 parsecs\"",
                "retry_backoff_min",
            ),
            ("[storage]\nurl = \"mysql://x\"", "storage.url"),
            ("[storage]\nurl = \"sqlite://\"", "storage.url"),
            ("[storage]\nlease = \"1s\"", "storage.lease"),
            ("[storage]\npool_size = 0", "storage.pool_size"),
            ("[storage]\nshare_tps = true", "storage.share_tps"),
            ("[storage]\ndurability = \"maybe\"", "durability"),
            ("[delivery]\nutc_offset = \"JST\"", "utc_offset"),
            ("[pin]\nmin_length = 2", "pin"),
            ("[callbacks]\nmax_attempts = 0", "callbacks.max_attempts"),
            (
                "[callbacks]\nbackoff_min = \"2m\"\nbackoff_max = \"1m\"",
                "callbacks.backoff_min",
            ),
            ("[callbacks]\nmax_in_flight = 0", "callbacks.max_in_flight"),
            (
                "[callbacks]\nmax_in_flight = 257",
                "callbacks.max_in_flight",
            ),
            ("[callbacks]\ntimeout = \"0s\"", "callbacks.timeout"),
            ("[callbacks]\nretries = 3", "retries"),
            (
                "[[api.tokens]]\nname = \"a\"\nrole = \"billing\"",
                "api.tokens[0]",
            ),
            (
                "[[api.tokens]]\nname = \"a\"\nrole = \"root\"\ntoken_file = \"x\"",
                "root",
            ),
        ] {
            let p = write(dir.path(), &format!("{MINIMAL}\n{edit}\n"));
            let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        for (edit, key) in [
            ("url = \"http://x:1\"", "channel[0].url"),
            (
                "url = \"loopback\"\ntemplate = \"no pin\"",
                "channel[0].template",
            ),
            ("url = \"loopback\"\nwindow = 0", "channel[0].window"),
            (
                "url = \"loopback\"\ninterface_version = \"4.0\"",
                "interface_version",
            ),
        ] {
            let p = write(dir.path(), &MINIMAL.replace("url = \"loopback\"", edit));
            let e = Config::load(&p, Vec::new()).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = Config::load(Path::new("/nonexistent/p.toml"), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/p.toml"), "{e}");
    }

    #[test]
    fn ussd_bind_sharing_and_operation_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ok = format!(
            "{MINIMAL}\n[[channel]]\nid = \"ussd\"\nkind = \"ussd\"\nurl = \"channel:sms\"\nussd_op = 2\n"
        );
        Config::load(&write(dir.path(), &ok), Vec::new()).unwrap();
        let bad = ok.replace("channel:sms", "channel:nope");
        let e = Config::load(&write(dir.path(), &bad), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel[1].url"), "{e}");
        let bad = format!(
            "{MINIMAL}\n[[channel]]\nid = \"ussd\"\nkind = \"ussd\"\nurl = \"loopback\"\nussd_op = 19\n"
        );
        let e = Config::load(&write(dir.path(), &bad), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ussd_op"), "{e}");
    }

    #[test]
    fn environment_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), MINIMAL);
        let env = vec![
            (
                "PINPOST__API__LISTEN".to_owned(),
                "127.0.0.1:9999".to_owned(),
            ),
            (
                "PINPOST__STORAGE__DURABILITY".to_owned(),
                "normal".to_owned(),
            ),
            ("PINPOST__DELIVERY__MAX_ATTEMPTS".to_owned(), "9".to_owned()),
            ("PINPOST_IGNORED".to_owned(), "x".to_owned()),
        ];
        let c = Config::load(&p, env).unwrap();
        assert_eq!(c.api.listen.port(), 9999);
        assert_eq!(c.storage.durability, Durability::Normal);
        assert_eq!(c.delivery.max_attempts, 9);
        let bad = vec![("PINPOST__API__LISTN".to_owned(), "x".to_owned())];
        let e = Config::load(&p, bad).unwrap_err().to_string();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(
            parse_duration("48h").unwrap(),
            Duration::from_secs(48 * 3600)
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }
}
