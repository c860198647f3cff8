//! pinpost: a carrier-side daemon that delivers payment PINs to the devices subscribers
//! registered, keyed by phone number.
//!
//! Layout:
//! - [`config`] — typed TOML config, env overrides, validation (`pinpost check-config`).
//! - [`api`] — the HTTP API (axum).
//! - [`console`] — the operator console page and the admin JSON it polls.
//! - [`store`] — SQLite storage with a group-committing writer thread.
//! - [`dispatch`] — per-channel dispatchers, receipts, time-driven transitions.
//! - [`callbacks`] — the sender of signed status callbacks to billing systems.
//! - [`vouchers`], [`voucher_api`] — the PIN record: minting, redemption, reversal.
//! - [`ledger`] — the double-entry ledger and settlement runs.
//! - [`caps`] — fraud and cost caps against SMS pumping.
//! - [`metrics`] — Prometheus counters.
//! - [`openapi`] — the OpenAPI document, derived from the handlers.
//! - [`crypto`] — the PIN key, AEAD at rest, keyed fingerprints.
//! - [`template`] — message texts.
//! - [`telemetry`] — logging.
//! - [`reload`] — SIGHUP: tokens, templates and TPS swapped in, the rest listed.
//! - [`run`] — the daemon, wired from a [`config::Config`] and a shutdown token.

pub mod api;
pub mod callbacks;
pub mod caps;
pub mod config;
pub mod console;
pub mod crypto;
pub mod dispatch;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod reload;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod template;
pub mod tps_share;
pub mod voucher_api;
pub mod vouchers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::{Channel, ChannelId, DurableReceiptSink, SecretString};
use pinpost_smpp::client::{SmppChannel, SmppConfig};
use pinpost_smpp::sim::{SimConfig, Smsc};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ChannelConfig, Config, InterfaceVersion};
use crate::crypto::Keys;
use crate::store::Store;

/// The channels of a running daemon by id.
pub type Channels = BTreeMap<String, Arc<dyn Channel>>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Key(#[from] crypto::KeyError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("token {name}: {message}")]
    Token { name: String, message: String },
    #[error("channel {id}: {message}")]
    Channel { id: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Load the API clients, creating missing token files when the config allows it.
pub fn load_clients(config: &Config) -> Result<Vec<api::Client>, RunError> {
    let mut out = Vec::new();
    for t in &config.api.tokens {
        let err = |message: String| RunError::Token {
            name: t.name.clone(),
            message,
        };
        let digest: [u8; 32] = match (&t.token_sha256, &t.token_file) {
            (Some(h), _) => {
                let mut d = [0u8; 32];
                hex::decode_to_slice(h, &mut d)
                    .map_err(|_| err("token_sha256 is not 64 hex characters".into()))?;
                d
            }
            (None, Some(path)) => {
                if !path.exists() && config.secrets.generate_missing {
                    write_new_token(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                    tracing::info!(token = %t.name, file = %path.display(), "generated an API token");
                }
                let text = zeroize::Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| err(format!("{}: {e}", path.display())))?,
                );
                let token = text.trim();
                if token.len() < 16 {
                    return Err(err(format!(
                        "{}: a token needs at least 16 characters",
                        path.display()
                    )));
                }
                Sha256::digest(token.as_bytes()).into()
            }
            (None, None) => return Err(err("no token_sha256 or token_file".into())),
        };
        out.push(api::Client {
            name: t.name.clone(),
            role: t.role,
            token_sha256: digest,
            merchant_id: t.merchant_id.clone(),
            callback_url: t.callback_url.clone(),
            can_callback: t.callback_secret_file.is_some(),
        });
    }
    Ok(out)
}

fn write_new_token(path: &Path) -> std::io::Result<()> {
    use rand::RngCore;
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    writeln!(f, "{}", hex::encode(raw))?;
    f.sync_all()
}

fn read_secret_file(path: &Path) -> std::io::Result<SecretString> {
    let text = std::fs::read_to_string(path)?;
    Ok(SecretString::from(
        text.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// The bind password of an SMPP channel (inline or from its file).
pub fn smpp_password(c: &config::SmppChannelConfig) -> Result<SecretString, RunError> {
    let err = |message: String| RunError::Channel {
        id: c.id.clone(),
        message,
    };
    match (&c.password, &c.password_file) {
        (Some(p), None) => Ok(SecretString::from(p.clone())),
        (None, Some(f)) => {
            read_secret_file(f).map_err(|e| err(format!("password_file {}: {e}", f.display())))
        }
        (None, None) => Ok(SecretString::from(String::new())),
        (Some(_), Some(_)) => Err(err("set password or password_file, not both".into())),
    }
}

/// Build and validate the driver configuration of an SMPP channel (starts nothing, reads
/// no file).
pub fn smpp_config(
    c: &config::SmppChannelConfig,
    url: String,
    password: SecretString,
) -> Result<SmppConfig, RunError> {
    let err = |message: String| RunError::Channel {
        id: c.id.clone(),
        message,
    };
    let mut sc = SmppConfig::new(
        ChannelId::new(&c.id),
        url,
        &c.system_id,
        password,
        &c.source_addr,
    );
    sc.system_type = c.system_type.clone();
    sc.interface_version = match c.interface_version {
        InterfaceVersion::V34 => pinpost_smpp::client::InterfaceVersion::V34,
        InterfaceVersion::V50 => pinpost_smpp::client::InterfaceVersion::V50,
    };
    sc.window = c.window;
    sc.max_tps = c.max_tps;
    sc.request_receipts = c.receipts;
    sc.response_timeout = c.response_timeout;
    sc.enquire_link_interval = c.enquire_link_interval;
    sc.validate().map_err(|e| err(e.to_string()))?;
    Ok(sc)
}

/// Which channel serves each device kind: the first configured channel of that kind.
pub fn plan_settings(config: &Config) -> store::PlanSettings {
    let mut routes = std::collections::HashMap::new();
    for c in &config.channels {
        let kind = c.device_kind();
        routes
            .entry(kind.to_owned())
            .or_insert_with(|| c.id().to_owned());
    }
    store::PlanSettings {
        routes,
        default_step_timeout_ms: config.delivery.step_timeout.as_millis() as i64,
    }
}

/// Build every configured channel: one exhaustive match per kind.
async fn build_channel(
    cfg: &ChannelConfig,
    receipts: DurableReceiptSink,
    smpp_binds: &mut std::collections::HashMap<String, SmppChannel>,
    store: &Store,
    background: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(Arc<dyn Channel>, template::Template), RunError> {
    match cfg {
        ChannelConfig::Ussd(c) if c.url.starts_with("channel:") => {
            let err = |message: String| RunError::Channel {
                id: c.id.clone(),
                message,
            };
            let template = template::Template::parse(&c.template).map_err(err)?;
            let target = &c.url["channel:".len()..];
            let bind = smpp_binds
                .get(target)
                .ok_or_else(|| err(format!("no SMS channel {target:?} to share a bind with")))?;
            let ch = bind.ussd_on_this_bind(ChannelId::new(&c.id), c.ussd_op);
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
        ChannelConfig::Smpp(c) | ChannelConfig::Ussd(c) => {
            let err = |message: String| RunError::Channel {
                id: c.id.clone(),
                message,
            };
            let template = template::Template::parse(&c.template).map_err(err)?;
            let url = if c.url == "loopback" {
                let sim = SimConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    system_id: Some(c.system_id.clone()),
                    password: c.password.clone(),
                    ..SimConfig::default()
                };
                let smsc = Smsc::bind(sim)
                    .await
                    .map_err(|e| err(format!("loopback SMSC: {e}")))?;
                let addr = smsc
                    .local_addr()
                    .map_err(|e| err(format!("loopback SMSC: {e}")))?;
                tracing::info!(channel = %c.id, %addr, "built-in loopback SMSC listening");
                let token = shutdown.clone();
                background.spawn(async move {
                    if let Err(e) = smsc.run(token).await {
                        tracing::error!(error = %e, "loopback SMSC stopped");
                    }
                });
                format!("smpp://{addr}")
            } else {
                c.url.clone()
            };
            let mut sc = smpp_config(c, url, smpp_password(c)?)?;
            if matches!(cfg, ChannelConfig::Ussd(_)) {
                // A notification (USSN request); the handset's confirmation is the receipt.
                sc.service = pinpost_smpp::client::SmppService::Ussd { op: c.ussd_op };
            }
            let ch = SmppChannel::start_durable(sc, receipts);
            if matches!(cfg, ChannelConfig::Smpp(_)) {
                smpp_binds.insert(c.id.clone(), ch.clone());
            }
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
        ChannelConfig::Smtp(c) => {
            let err = |message: String| RunError::Channel {
                id: c.id.clone(),
                message,
            };
            let template = template::Template::parse(&c.template).map_err(err)?;
            let ec = email_config(c, true)?;
            let keys = Arc::new(registry::RegistryKeys::new(store.clone()));
            let ch = pinpost_email::EmailChannel::start(ec, keys, plain_sink(receipts, background));
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
        ChannelConfig::Fax(c) => {
            let err = |message: String| RunError::Channel {
                id: c.id.clone(),
                message,
            };
            let template = template::Template::parse(&c.template).map_err(err)?;
            let fc = fax_config(c)?;
            let ch = pinpost_fax::FaxChannel::start(fc, plain_sink(receipts, background));
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
        ChannelConfig::Mqtt(c) => {
            let err = |message: String| RunError::Channel {
                id: c.id.clone(),
                message,
            };
            let template = template::Template::parse(&c.template).map_err(err)?;
            let pc = push_config(c, true)?;
            let ch = pinpost_push::PushChannel::start(pc, plain_sink(receipts, background));
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
        ChannelConfig::Snpp(_) | ChannelConfig::Tap(_) => {
            let err = |message: String| RunError::Channel {
                id: cfg.id().to_owned(),
                message,
            };
            let template = template::Template::parse(cfg.template()).map_err(err)?;
            let pc = pager_config(cfg, true)?.expect("a pager channel");
            let ch = pinpost_pager::PagerChannel::start(pc, plain_sink(receipts, background));
            Ok((Arc::new(ch) as Arc<dyn Channel>, template))
        }
    }
}

fn optional_secret(
    id: &str,
    path: &Option<std::path::PathBuf>,
    read: bool,
) -> Result<Option<SecretString>, RunError> {
    match path {
        Some(p) if read => read_secret_file(p)
            .map(Some)
            .map_err(|e| RunError::Channel {
                id: id.to_owned(),
                message: format!("password_file {}: {e}", p.display()),
            }),
        Some(_) => Ok(Some(SecretString::from("checked".to_owned()))),
        None => Ok(None),
    }
}

/// The driver configuration of an e-mail channel. `read_secrets` false leaves password
/// files unread, for `check-config`.
pub fn email_config(
    c: &config::SmtpChannelConfig,
    read_secrets: bool,
) -> Result<pinpost_email::EmailConfig, RunError> {
    let mut e = pinpost_email::EmailConfig::new(ChannelId::new(&c.id), &c.host, &c.from);
    e.port = c.port;
    e.tls = match c.tls {
        config::SmtpTls::Starttls => pinpost_email::Tls::StartTls,
        config::SmtpTls::Implicit => pinpost_email::Tls::Implicit,
    };
    e.tls_ca_file = c.tls_ca_file.clone();
    e.username = c.username.clone().map(SecretString::from);
    e.password = optional_secret(&c.id, &c.password_file, read_secrets)?;
    e.subject = c.subject.clone();
    e.dkim = match (&c.dkim_selector, &c.dkim_domain, &c.dkim_key_file) {
        (None, None, None) => None,
        (Some(selector), Some(domain), Some(key)) => Some(pinpost_email::DkimConfig {
            selector: selector.clone(),
            domain: domain.clone(),
            private_key_file: key.clone(),
            algorithm: match c.dkim_algorithm {
                config::DkimAlgorithmConfig::Rsa => pinpost_email::DkimAlgorithm::Rsa,
                config::DkimAlgorithmConfig::Ed25519 => pinpost_email::DkimAlgorithm::Ed25519,
            },
        }),
        _ => {
            return Err(RunError::Channel {
                id: c.id.clone(),
                message: "set all of dkim_selector, dkim_domain and dkim_key_file, or none".into(),
            });
        }
    };
    e.validate().map_err(|err| RunError::Channel {
        id: c.id.clone(),
        message: err.to_string(),
    })?;
    Ok(e)
}

/// The driver configuration of a fax channel.
pub fn fax_config(c: &config::FaxChannelConfig) -> Result<pinpost_fax::FaxConfig, RunError> {
    let err = |message: String| RunError::Channel {
        id: c.id.clone(),
        message,
    };
    let mut f = pinpost_fax::FaxConfig::new(&c.id, c.devices.clone());
    f.baud_rate = c.baud_rate;
    f.flow_control = match c.flow_control {
        config::FlowControlConfig::Hardware => pinpost_modem::FlowControl::Hardware,
        config::FlowControlConfig::Software => pinpost_modem::FlowControl::Software,
        config::FlowControlConfig::None => pinpost_modem::FlowControl::None,
    };
    f.local_id = c.local_id.clone();
    f.dial_plan = pinpost_fax::DialPlan {
        prefix: c.dial_prefix.clone(),
        country_code: c.country_code.clone(),
        national_prefix: c.national_prefix.clone(),
        international_prefix: c.international_prefix.clone(),
        tone: true,
    };
    f.resolution = match c.resolution {
        config::FaxResolution::Fine => pinpost_fax::Resolution::Fine,
        config::FaxResolution::Standard => pinpost_fax::Resolution::Standard,
    };
    let delays = c
        .redial_delays
        .iter()
        .map(|d| config::parse_duration(d).map_err(|e| err(format!("redial_delays: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    f.redial = pinpost_fax::RedialPolicy {
        max_dials: c.max_dials,
        delays,
    };
    f.validate().map_err(|e| err(e.to_string()))?;
    Ok(f)
}

/// The driver configuration of a car-navigation push channel.
pub fn push_config(
    c: &config::MqttChannelConfig,
    read_secrets: bool,
) -> Result<pinpost_push::PushConfig, RunError> {
    let mut p = pinpost_push::PushConfig::new(ChannelId::new(&c.id), &c.broker_url, &c.client_id);
    p.allow_plaintext = c.allow_plaintext;
    p.tls_ca_file = c.tls_ca_file.clone();
    p.client_cert_file = c.client_cert_file.clone();
    p.client_key_file = c.client_key_file.clone();
    p.username = c.username.clone();
    p.password = optional_secret(&c.id, &c.password_file, read_secrets)?;
    p.topic_template = c.topic_template.clone();
    if let Some(t) = &c.response_topic {
        p.response_topic = t.clone();
    }
    p.validate().map_err(|err| RunError::Channel {
        id: c.id.clone(),
        message: err.to_string(),
    })?;
    Ok(p)
}

/// A receipt sink for drivers that answer their peer at once: receipts are forwarded to
/// the daemon's durable sink without waiting for the commit.
fn plain_sink(
    durable: DurableReceiptSink,
    background: &TaskTracker,
) -> pinpost_channel_core::ReceiptSink {
    let (tx, mut rx) = mpsc::channel(1024);
    background.spawn(async move {
        while let Some(receipt) = rx.recv().await {
            let (stored, _) = oneshot::channel();
            if durable
                .send(pinpost_channel_core::DurableReceipt { receipt, stored })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tx
}

/// The driver configuration of a pager channel (None for other kinds). `read_secrets`
/// false leaves password files unread, for `check-config`.
pub fn pager_config(
    cfg: &ChannelConfig,
    read_secrets: bool,
) -> Result<Option<pinpost_pager::PagerConfig>, RunError> {
    let err = |message: String| RunError::Channel {
        id: cfg.id().to_owned(),
        message,
    };
    let secret = |f: &Option<std::path::PathBuf>| -> Result<Option<SecretString>, RunError> {
        match f {
            Some(path) if read_secrets => read_secret_file(path)
                .map(Some)
                .map_err(|e| err(format!("password_file {}: {e}", path.display()))),
            Some(_) => Ok(Some(SecretString::from("checked".to_owned()))),
            None => Ok(None),
        }
    };
    let pc = match cfg {
        ChannelConfig::Smpp(_)
        | ChannelConfig::Ussd(_)
        | ChannelConfig::Smtp(_)
        | ChannelConfig::Mqtt(_)
        | ChannelConfig::Fax(_) => return Ok(None),
        ChannelConfig::Snpp(c) => {
            let mut s = pinpost_pager::SnppConfig::new(ChannelId::new(&c.id), &c.url);
            s.tls_ca_file = c.tls_ca_file.clone();
            s.max_message_chars = c.max_message_chars;
            s.message_command = match c.message_command {
                config::SnppMessageCommand::Mess => pinpost_pager::SnppMessageCommand::Mess,
                config::SnppMessageCommand::Data => pinpost_pager::SnppMessageCommand::Data,
                config::SnppMessageCommand::Auto => pinpost_pager::SnppMessageCommand::Auto,
            };
            if let Some(user) = &c.user {
                s.login = Some(pinpost_pager::SnppLogin {
                    user: user.clone(),
                    password: secret(&c.password_file)?,
                });
            }
            pinpost_pager::PagerConfig::Snpp(s)
        }
        ChannelConfig::Tap(c) => {
            let mut t = pinpost_pager::TapConfig::new(ChannelId::new(&c.id), &c.device);
            t.baud = c.baud;
            t.max_message_chars = c.max_message_chars;
            t.password = secret(&c.password_file)?;
            t.dial = c.dial.clone();
            if let Some(init) = &c.modem_init {
                t.modem_init = init.clone();
            }
            pinpost_pager::PagerConfig::Tap(t)
        }
    };
    pc.validate().map_err(|e| err(e.to_string()))?;
    Ok(Some(pc))
}

/// This process's name in PostgreSQL leases: host name and process id.
fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pinpost".into());
    format!("{host}-{}", std::process::id())
}

/// Run the daemon until `shutdown` is cancelled, then drain. `bound` receives the API
/// address once it listens and every channel was started.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    bound: Option<oneshot::Sender<SocketAddr>>,
) -> Result<(), RunError> {
    run_reloadable(config, shutdown, bound, None).await
}

/// [`run`], reloading the configuration from `reload` on each of its requests (see
/// [`reload`]).
pub async fn run_reloadable(
    config: Config,
    shutdown: CancellationToken,
    bound: Option<oneshot::Sender<SocketAddr>>,
    reload: Option<reload::ReloadSource>,
) -> Result<(), RunError> {
    config.validate()?;
    let keys = Keys::load(
        &config.secrets.pin_key_file,
        config.secrets.generate_missing,
    )?;
    let clients = load_clients(&config)?;
    let callback_secrets: callbacks::SharedSecrets = Arc::new(arc_swap::ArcSwap::from_pointee(
        callbacks::Secrets::load(&config)?,
    ));
    let store = match config.storage_backend()? {
        config::StorageBackend::Sqlite(path) => {
            Store::open(&path, config.storage.durability, plan_settings(&config))?
        }
        config::StorageBackend::Postgres(url) => {
            let settings = store::PgSettings {
                url,
                pool_size: config.storage.pool_size,
                lease_ms: config.storage.lease.as_millis() as i64,
                node: config
                    .storage
                    .node
                    .clone()
                    .unwrap_or_else(default_node_name),
            };
            let store = Store::open_postgres(&settings, shutdown.child_token()).await?;
            tracing::info!(node = %settings.node, "storage: PostgreSQL queue shared with other nodes");
            store
        }
    };
    let in_doubt = store
        .recover(now_ms(), config.delivery.in_doubt_after.as_millis() as i64)
        .await?;
    if in_doubt > 0 {
        tracing::warn!(
            count = in_doubt,
            "deliveries were in flight when pinpost last stopped; now in doubt"
        );
    }

    let (receipt_tx, receipt_rx) = mpsc::channel(64 * 1024);
    let background = TaskTracker::new();
    let sim_stop = CancellationToken::new();
    let mut channels: Channels = BTreeMap::new();
    let mut smpp_binds = std::collections::HashMap::new();
    let mut routes = Vec::new();
    let mut route_by_id = BTreeMap::new();
    for c in &config.channels {
        let (ch, template) = build_channel(
            c,
            receipt_tx.clone(),
            &mut smpp_binds,
            &store,
            &background,
            &sim_stop,
        )
        .await?;
        channels.insert(c.id().to_owned(), ch.clone());
        let route = Arc::new(dispatch::Route {
            channel: ch,
            template: arc_swap::ArcSwap::from_pointee(template),
        });
        route_by_id.insert(c.id().to_owned(), route.clone());
        routes.push(route);
    }
    drop(receipt_tx);
    let channels = Arc::new(channels);
    let default_channel = config.channels[0].id().to_owned();

    let metrics = Arc::new(metrics::Metrics::default());
    store.attach_metrics(metrics.clone()).await?;
    let budgets = config
        .channels
        .iter()
        .filter_map(|c| reload::own_bind(c).map(|s| (c.id().to_owned(), s.max_tps)))
        .collect();
    let tps = Arc::new(tps_share::TpsShare::new(
        channels.clone(),
        metrics.clone(),
        budgets,
    ));
    let tps_sharing = if config.storage.share_tps {
        let lease = config.storage.lease;
        tracing::info!("SMPP max_tps is a budget shared by the live nodes");
        Some(
            tps.clone()
                .spawn(store.clone(), lease, lease / 3, shutdown.clone()),
        )
    } else {
        None
    };
    let caps = Arc::new(caps::Caps::new(&config.caps));
    if caps.enabled() {
        let since = now_ms() - 86_400_000;
        let recent = store.created_since(since).await?;
        tracing::info!(
            sends = recent.len(),
            "fraud and cost caps counted the last day's sends"
        );
        caps.seed(recent);
        let (caps, stop) = (caps.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => caps.prune(now_ms()),
                }
            }
        });
    }
    let state = Arc::new(api::ApiState {
        store: store.clone(),
        keys: keys.clone(),
        clients: arc_swap::ArcSwap::from_pointee(clients),
        channels: channels.clone(),
        default_channel,
        max_body_bytes: config.api.max_body_bytes,
        pin_min: config.pin.min_length,
        pin_max: config.pin.max_length,
        default_region: config.registry.default_region.clone(),
        vouchers: config.vouchers.clone(),
        lockout: voucher_api::Lockout::new(&config.vouchers),
        caps: caps.clone(),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: config.api.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: config.api.listen,
        source,
    })?;
    tracing::info!("listening on http://{addr}");

    let api_state = state.clone();
    let http_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let app = api::router(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    });

    let ctx = dispatch::Ctx {
        store: store.clone(),
        keys,
        delivery: config.delivery.clone(),
        utc_offset: config.utc_offset()?,
        metrics: metrics.clone(),
    };
    let sends = TaskTracker::new();
    let mut dispatchers = Vec::new();
    for route in routes {
        dispatchers.push(tokio::spawn(dispatch::run_channel(
            ctx.clone(),
            route,
            shutdown.clone(),
            sends.clone(),
        )));
    }
    let dispatchers = Arc::new(std::sync::Mutex::new(dispatchers));
    systemd::spawn_watchdog(dispatchers.clone(), store.clone(), shutdown.clone());
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(systemd::ready_when_bound(
        channels.clone(),
        ready.clone(),
        shutdown.clone(),
    ));
    let receipts_task = tokio::spawn(dispatch::run_receipts(store.clone(), receipt_rx));
    let maintenance = tokio::spawn(dispatch::run_maintenance(
        store.clone(),
        config.delivery.clone(),
        Duration::from_millis(500),
        shutdown.clone(),
    ));
    // Callbacks, vouchers and the registry live in the embedded database only.
    let callback_sender = if store.backend() == "sqlite" {
        tokio::spawn(callbacks::run(
            store.clone(),
            config.callbacks.clone(),
            callback_secrets.clone(),
            shutdown.clone(),
        ))
    } else {
        tokio::spawn(async {})
    };
    if let Some(source) = reload {
        let live = reload::Live {
            api: api_state,
            callback_secrets,
            routes: route_by_id,
            running: config.clone(),
            ready,
            tps,
        };
        tokio::spawn(reload::run(live, source, shutdown.clone()));
    }
    if let Some(tx) = bound {
        let _ = tx.send(addr);
    }

    shutdown.cancelled().await;
    systemd::stopping();
    tracing::info!("shutting down: no new deliveries are claimed; draining in-flight sends");
    let dispatchers = std::mem::take(&mut *dispatchers.lock().expect("dispatcher list"));
    for d in dispatchers {
        let _ = d.await;
    }
    // Nothing more is claimed here: the other nodes may take this node's share now.
    if let Some(t) = tps_sharing {
        let _ = t.await;
    }
    if let Err(e) = store.leave().await {
        tracing::warn!(error = %e, "cannot mark this node stopped; the others notice within a lease time");
    }
    sends.close();
    if tokio::time::timeout(config.delivery.drain_timeout, sends.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout: sends still in flight are left in doubt for the next start");
    }
    let _ = maintenance.await;
    // Callbacks in flight finish (each within callbacks.timeout) and their outcomes are
    // recorded; callbacks queued by the last state changes wait for the next start.
    let _ = callback_sender.await;
    // Give receipts already on the way a moment to land before unbinding.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for ch in channels.values() {
        ch.shutdown().await;
    }
    sim_stop.cancel();
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), background.wait()).await;
    receipts_task.abort();
    let _ = store.flush().await;
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "HTTP server error"),
        Err(e) => tracing::error!(error = %e, "HTTP server task failed"),
    }
    tracing::info!("stopped");
    Ok(())
}
