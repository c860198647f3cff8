//! The `pinpost` command: the daemon, its tools and the loopback SMSC.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pinpost::config::{Config, parse_duration};
use pinpost_smpp::sim::{IdBase, SimConfig, Smsc};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "pinpost",
    version,
    about = "Carrier-grade payment-PIN delivery gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ConfigArg {
    /// TOML config file; without it the embedded defaults are used (SQLite, key and API
    /// token in --state-dir, the built-in loopback SMSC).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where the embedded defaults keep their files.
    #[arg(long, default_value = "state", env = "STATE_DIRECTORY")]
    state_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve(ConfigArg),
    /// Parse and validate a config, then exit (0 = valid).
    CheckConfig(ConfigArg),
    /// Apply database migrations, then exit.
    Migrate(ConfigArg),
    /// Write a new PIN key file (32 random bytes, hex, mode 0600).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the loopback SMSC: a real SMPP server for tests, with fault injection.
    SmscSim(SimArgs),
    /// Enqueue a delivery through the HTTP API. The PIN is read from a file or stdin,
    /// never from the command line.
    Enqueue(EnqueueArgs),
    /// Manage subscribers (on the database named by the config).
    #[command(subcommand)]
    Subscriber(SubscriberCmd),
    /// Manage a subscriber's devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Bulk loads.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Render the fax page of a sample PIN notice to PNG or TIFF (Class F), to look at.
    FaxPreview {
        /// page.png or page.tiff.
        #[arg(long)]
        out: PathBuf,
        /// 98 lpi instead of 196.
        #[arg(long)]
        standard: bool,
        /// Take the page template of the first fax channel of this config.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Settle one UTC day: per-merchant payouts and per-institution claims for the
    /// redemptions captured that day. No redemption is settled twice; running it again
    /// prints the same report.
    Settle {
        /// The day, YYYY-MM-DD (UTC). Settle a day once it has ended; a run during the day
        /// settles what was captured so far, and the next run the rest.
        #[arg(long)]
        date: String,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show a delivery.
    Status {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum SubscriberCmd {
    /// Create a subscriber (or rename one).
    Add {
        msisdn: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a subscriber and its devices as JSON.
    Show {
        msisdn: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a subscriber and its devices.
    Remove {
        msisdn: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Register a device for a subscriber.
    Add {
        msisdn: String,
        /// sms, ussd, pager, fax, email or carnav.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        address: String,
        /// Lower goes first; default: after the existing devices.
        #[arg(long)]
        priority: Option<i64>,
        /// How long to wait for this device's receipt before the next one, e.g. 2m.
        #[arg(long, value_parser = parse_duration)]
        step_timeout: Option<Duration>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a device by id.
    Remove {
        msisdn: String,
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// Load subscribers and devices from CSV: header msisdn,name,kind,address,priority,step_timeout.
    /// Every row is checked first; with any bad row nothing is imported unless --partial.
    Subscribers {
        file: PathBuf,
        /// Import the good rows even when some are rejected.
        #[arg(long)]
        partial: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
struct ApiArgs {
    /// Base URL of the API.
    #[arg(long, default_value = "http://127.0.0.1:8025", env = "PINPOST_URL")]
    url: String,
    /// File holding the bearer token.
    #[arg(long, default_value = "state/api.token", env = "PINPOST_TOKEN_FILE")]
    token_file: PathBuf,
}

#[derive(Args)]
struct EnqueueArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// E.164 number, e.g. +819012345678.
    #[arg(long)]
    msisdn: String,
    /// Read the PIN from this file ("-" for stdin).
    #[arg(long, default_value = "-")]
    pin_file: String,
    /// Amount, e.g. 3000 (needs --currency).
    #[arg(long, requires = "currency")]
    amount: Option<String>,
    #[arg(long, requires = "amount")]
    currency: Option<String>,
    #[arg(long)]
    payee: Option<String>,
    /// RFC 3339 expiry, e.g. 2026-12-01T00:00:00Z.
    #[arg(long)]
    expires_at: Option<String>,
    /// Idempotency key; a random one by default.
    #[arg(long)]
    idempotency_key: Option<String>,
}

#[derive(Args)]
struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:2775")]
    listen: SocketAddr,
    /// Accept only this system_id (any when absent).
    #[arg(long)]
    system_id: Option<String>,
    /// Accept only this password (any when absent).
    #[arg(long)]
    password: Option<String>,
    /// Delay before each delivery receipt, e.g. 0s, 250ms, 5s.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    receipt_delay: Duration,
    /// Never send delivery receipts.
    #[arg(long)]
    no_receipts: bool,
    /// Append every message as a JSON line to this file (message texts included).
    #[arg(long)]
    record: Option<PathBuf>,
    /// message_id format in submit_sm_resp.
    #[arg(long, default_value = "hex", value_parser = parse_base)]
    message_id_base: IdBase,
    /// Format of the id in receipts (defaults to --message-id-base).
    #[arg(long, value_parser = parse_base)]
    receipt_id_base: Option<IdBase>,
    /// Fraction (0..1) of submit_sm answered ESME_RTHROTTLED.
    #[arg(long, default_value_t = 0.0)]
    throttle: f64,
    /// Delay every submit_sm_resp.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    response_delay: Duration,
    /// Never answer every Nth submit_sm.
    #[arg(long)]
    no_answer_every: Option<u64>,
    /// Close each connection after it received N PDUs.
    #[arg(long)]
    drop_after: Option<u64>,
    /// Refuse every bind.
    #[arg(long)]
    refuse_binds: bool,
    /// Destination prefixes answered ESME_RINVDSTADR (repeatable).
    #[arg(long)]
    reject_prefix: Vec<String>,
    /// Destination prefixes accepted but receipted UNDELIV (repeatable).
    #[arg(long)]
    undeliverable_prefix: Vec<String>,
    /// Seed for the fault injection's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_base(s: &str) -> Result<IdBase, String> {
    match s {
        "hex" => Ok(IdBase::Hex),
        "dec" | "decimal" => Ok(IdBase::Decimal),
        _ => Err("expected hex or dec".into()),
    }
}

fn load_config(arg: &ConfigArg) -> anyhow::Result<Config> {
    let env = std::env::vars();
    let cfg = match &arg.config {
        Some(p) => Config::load(p, env)?,
        None => Config::load_embedded(&arg.state_dir, env)?,
    };
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pinpost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(arg) => {
            let cfg = load_config(&arg)?;
            pinpost::telemetry::init(&cfg.log);
            runtime()?.block_on(async move {
                let shutdown = CancellationToken::new();
                let (reload_tx, requests) = tokio::sync::mpsc::channel(1);
                tokio::spawn(signals(shutdown.clone(), Some(reload_tx)));
                // SIGHUP reads the same file (or the embedded defaults) and environment again.
                let load: pinpost::reload::LoadConfig = Arc::new(move || {
                    let env = std::env::vars();
                    match &arg.config {
                        Some(p) => Config::load(p, env),
                        None => Config::load_embedded(&arg.state_dir, env),
                    }
                });
                let source = pinpost::reload::ReloadSource { requests, load };
                pinpost::run_reloadable(cfg, shutdown, None, Some(source)).await
            })?;
            Ok(())
        }
        Command::CheckConfig(arg) => {
            let cfg = load_config(&arg)?;
            for c in &cfg.channels {
                pinpost::pager_config(c, false)?;
                match c {
                    pinpost::config::ChannelConfig::Snpp(_)
                    | pinpost::config::ChannelConfig::Tap(_) => {}
                    pinpost::config::ChannelConfig::Smtp(e) => {
                        pinpost::email_config(e, false)?;
                    }
                    pinpost::config::ChannelConfig::Mqtt(m) => {
                        pinpost::push_config(m, false)?;
                    }
                    pinpost::config::ChannelConfig::Fax(f) => {
                        pinpost::fax_config(f)?;
                    }
                    pinpost::config::ChannelConfig::Ussd(s) if s.url.starts_with("channel:") => {}
                    pinpost::config::ChannelConfig::Smpp(s)
                    | pinpost::config::ChannelConfig::Ussd(s) => {
                        let url = if s.url == "loopback" {
                            "smpp://127.0.0.1:2775".to_owned()
                        } else {
                            s.url.clone()
                        };
                        pinpost::smpp_config(s, url, "checked".to_owned().into())?;
                    }
                }
            }
            let what = arg
                .config
                .as_deref()
                .map(Path::display)
                .map(|d| d.to_string());
            println!("{}: ok", what.unwrap_or_else(|| "embedded defaults".into()));
            Ok(())
        }
        Command::Migrate(arg) => {
            let cfg = load_config(&arg)?;
            pinpost::telemetry::init(&cfg.log);
            match cfg.storage_backend()? {
                pinpost::config::StorageBackend::Sqlite(path) => {
                    let v = pinpost::store::migrate(&path)?;
                    println!("schema at version {v}");
                }
                pinpost::config::StorageBackend::Postgres(url) => {
                    let settings = pinpost::store::PgSettings {
                        url,
                        pool_size: 1,
                        lease_ms: cfg.storage.lease.as_millis() as i64,
                        node: "migrate".into(),
                    };
                    let stop = tokio_util::sync::CancellationToken::new();
                    runtime()?.block_on(async {
                        let r = pinpost::store::Store::open_postgres(&settings, stop.clone()).await;
                        stop.cancel();
                        r
                    })?;
                    println!("PostgreSQL schema up to date");
                }
            }
            Ok(())
        }
        Command::Keygen { out } => {
            pinpost::crypto::generate_key_file(&out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::SmscSim(a) => {
            pinpost::telemetry::init(&pinpost::config::LogConfig::default());
            if !(0.0..=1.0).contains(&a.throttle) {
                bail!("--throttle must be between 0 and 1");
            }
            let cfg = SimConfig {
                listen: a.listen,
                system_id: a.system_id,
                password: a.password,
                receipt_delay: a.receipt_delay,
                receipts: !a.no_receipts,
                record: a.record,
                message_id_base: a.message_id_base,
                receipt_id_base: a.receipt_id_base.unwrap_or(a.message_id_base),
                throttle_fraction: a.throttle,
                response_delay: a.response_delay,
                no_answer_every: a.no_answer_every,
                drop_after_pdus: a.drop_after,
                refuse_binds: a.refuse_binds,
                reject_prefix: a.reject_prefix,
                undeliverable_prefix: a.undeliverable_prefix,
                seed: a.seed,
            };
            runtime()?.block_on(async move {
                let smsc = Smsc::bind(cfg)
                    .await
                    .context("cannot start the loopback SMSC")?;
                tracing::info!("loopback SMSC listening on {}", smsc.local_addr()?);
                let shutdown = CancellationToken::new();
                tokio::spawn(signals(shutdown.clone(), None));
                smsc.run(shutdown).await?;
                anyhow::Ok(())
            })
        }
        Command::Enqueue(a) => enqueue(a),
        Command::FaxPreview {
            out,
            standard,
            config,
        } => fax_preview(out, standard, config),
        Command::Subscriber(c) => runtime()?.block_on(subscriber_cmd(c)),
        Command::Device(c) => runtime()?.block_on(device_cmd(c)),
        Command::Import(ImportCmd::Subscribers {
            file,
            partial,
            config,
        }) => runtime()?.block_on(import_subscribers(file, partial, config)),
        Command::Settle { date, csv, config } => runtime()?.block_on(settle_cmd(date, csv, config)),
        Command::Status { id, api } => {
            let token = read_token(&api.token_file)?;
            let url = format!("{}/v1/deliveries/{}", api.url.trim_end_matches('/'), id);
            let resp = ureq::get(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .config()
                .http_status_as_error(false)
                .build()
                .call()
                .with_context(|| format!("GET {url}"))?;
            print_response(resp)
        }
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let t =
        std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
    Ok(t.trim().to_owned())
}

fn print_response(mut resp: ureq::http::Response<ureq::Body>) -> anyhow::Result<()> {
    let status = resp.status();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    println!("{body}");
    if !status.is_success() {
        bail!("HTTP {status}");
    }
    Ok(())
}

fn enqueue(a: EnqueueArgs) -> anyhow::Result<()> {
    let token = read_token(&a.api.token_file)?;
    let mut pin = zeroize::Zeroizing::new(String::new());
    if a.pin_file == "-" {
        std::io::stdin()
            .read_to_string(&mut pin)
            .context("reading the PIN from stdin")?;
    } else {
        *pin = std::fs::read_to_string(&a.pin_file)
            .with_context(|| format!("PIN file {}", a.pin_file))?;
    }
    let pin = pin.trim();
    let mut body = serde_json::json!({"msisdn": a.msisdn, "pin": pin});
    if let (Some(v), Some(c)) = (&a.amount, &a.currency) {
        body["amount"] = serde_json::json!({"value": v, "currency": c});
    }
    if let Some(p) = &a.payee {
        body["payee"] = p.clone().into();
    }
    if let Some(e) = &a.expires_at {
        body["expires_at"] = e.clone().into();
    }
    let key = a
        .idempotency_key
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let url = format!("{}/v1/deliveries", a.api.url.trim_end_matches('/'));
    let text = zeroize::Zeroizing::new(body.to_string());
    let resp = ureq::post(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Idempotency-Key", &key)
        .header("Content-Type", "application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(text.as_bytes())
        .with_context(|| format!("POST {url}"))?;
    print_response(resp)
}

/// SIGTERM and SIGINT cancel `shutdown`; SIGHUP asks for a reload on `reload` (a request
/// already waiting absorbs the next ones).
async fn signals(shutdown: CancellationToken, reload: Option<tokio::sync::mpsc::Sender<()>>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut hup = reload
            .as_ref()
            .map(|_| signal(SignalKind::hangup()).expect("SIGHUP handler"));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(tx) = &reload {
                        let _ = tx.try_send(());
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}

/// Open the configured database for an administrative command.
fn admin_store(arg: &ConfigArg) -> anyhow::Result<(Config, pinpost::store::Store)> {
    let cfg = load_config(arg)?;
    let store = pinpost::store::Store::open(
        &cfg.storage_path()?,
        cfg.storage.durability,
        pinpost::plan_settings(&cfg),
    )?;
    Ok((cfg, store))
}

fn region(cfg: &Config) -> Option<&str> {
    cfg.registry.default_region.as_deref()
}

async fn show_subscriber(store: &pinpost::store::Store, msisdn: String) -> anyhow::Result<()> {
    let s = store
        .read(move |c| pinpost::registry::read_subscriber(c, &msisdn))
        .await?
        .context("no such subscriber")?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    Ok(())
}

async fn settle_cmd(date: String, csv: bool, config: ConfigArg) -> anyhow::Result<()> {
    use pinpost::ledger::SettleOutcome;
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(&date, &fmt)
        .map_err(|_| anyhow::anyhow!("--date must be YYYY-MM-DD (UTC), not {date:?}"))?;
    let (_, store) = admin_store(&config)?;
    let now = pinpost::now_ms();
    let (s, fresh) = match store
        .write(move |c| pinpost::ledger::settle(c, day, now))
        .await?
    {
        SettleOutcome::Created(s) => (s, true),
        SettleOutcome::Existing(s) => (s, false),
        SettleOutcome::Future => bail!("{date} has not begun yet (UTC)"),
    };
    if csv {
        print!("{}", s.to_csv());
        return Ok(());
    }
    println!(
        "settlement {} ({}): {} redemptions",
        s.date,
        if fresh {
            "settled now"
        } else {
            "nothing new to settle"
        },
        s.redemptions
    );
    for l in &s.lines {
        println!(
            "  {:<11} {:<24} {:>18} {} ({} redemptions)",
            if l.party_kind == "merchant" {
                "pay"
            } else {
                "claim from"
            },
            l.party,
            pinpost::vouchers::format_amount(l.amount),
            l.currency,
            l.count
        );
    }
    Ok(())
}

async fn subscriber_cmd(c: SubscriberCmd) -> anyhow::Result<()> {
    match c {
        SubscriberCmd::Add {
            msisdn,
            name,
            config,
        } => {
            let (cfg, store) = admin_store(&config)?;
            let m = pinpost::registry::normalize_msisdn(&msisdn, region(&cfg))
                .map_err(anyhow::Error::msg)?;
            let now = pinpost::now_ms();
            let m2 = m.clone();
            store
                .write(move |c| pinpost::registry::put_subscriber(c, &m2, name.as_deref(), now))
                .await?;
            show_subscriber(&store, m).await
        }
        SubscriberCmd::Show { msisdn, config } => {
            let (cfg, store) = admin_store(&config)?;
            let m = pinpost::registry::normalize_msisdn(&msisdn, region(&cfg))
                .map_err(anyhow::Error::msg)?;
            show_subscriber(&store, m).await
        }
        SubscriberCmd::Remove { msisdn, config } => {
            let (cfg, store) = admin_store(&config)?;
            let m = pinpost::registry::normalize_msisdn(&msisdn, region(&cfg))
                .map_err(anyhow::Error::msg)?;
            let gone = store
                .write(move |c| pinpost::registry::delete_subscriber(c, &m))
                .await?;
            if !gone {
                bail!("no such subscriber");
            }
            println!("removed");
            Ok(())
        }
    }
}

async fn device_cmd(c: DeviceCmd) -> anyhow::Result<()> {
    match c {
        DeviceCmd::Add {
            msisdn,
            kind,
            address,
            priority,
            step_timeout,
            config,
        } => {
            let (cfg, store) = admin_store(&config)?;
            let m = pinpost::registry::normalize_msisdn(&msisdn, region(&cfg))
                .map_err(anyhow::Error::msg)?;
            let address = pinpost::registry::normalize_address(&kind, &address, region(&cfg))
                .map_err(|e| anyhow::anyhow!("--address: {e}"))?;
            let dev = pinpost::registry::NewDevice {
                kind,
                address,
                priority,
                step_timeout_ms: step_timeout.map(|d| d.as_millis() as i64),
                options: None,
            };
            let now = pinpost::now_ms();
            let m2 = m.clone();
            let added = store
                .write(move |c| pinpost::registry::add_device(c, &m2, &dev, now))
                .await?;
            let d = added.context("no such subscriber (add it first)")?;
            println!("{}", serde_json::to_string_pretty(&d)?);
            Ok(())
        }
        DeviceCmd::Remove { msisdn, id, config } => {
            let (cfg, store) = admin_store(&config)?;
            let m = pinpost::registry::normalize_msisdn(&msisdn, region(&cfg))
                .map_err(anyhow::Error::msg)?;
            let gone = store
                .write(move |c| pinpost::registry::remove_device(c, &m, &id))
                .await?;
            if !gone {
                bail!("no such device");
            }
            println!("removed");
            Ok(())
        }
    }
}

async fn import_subscribers(file: PathBuf, partial: bool, config: ConfigArg) -> anyhow::Result<()> {
    let (cfg, store) = admin_store(&config)?;
    let f = std::fs::File::open(&file).with_context(|| format!("{}", file.display()))?;
    let (rows, bad) = pinpost::registry::parse_import(std::io::BufReader::new(f), region(&cfg));
    for (line, reason) in &bad {
        eprintln!("{}:{line}: rejected: {reason}", file.display());
    }
    if !bad.is_empty() && !partial {
        bail!(
            "{} of {} rows rejected; nothing imported (fix them, or pass --partial to import the {} good rows)",
            bad.len(),
            bad.len() + rows.len(),
            rows.len()
        );
    }
    let total = rows.len();
    let mut done = 0;
    let (mut subs, mut devs) = (0, 0);
    let now = pinpost::now_ms();
    let mut rest = rows;
    // Chunks keep each transaction short while the daemon runs; with --partial unset the
    // file was fully validated above, so a chunk can only fail on a database error.
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(1000));
        let chunk = std::mem::replace(&mut rest, tail);
        done += chunk.len();
        let (s, d) = pinpost::registry::import(&store, chunk, now).await?;
        subs += s;
        devs += d;
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\r[{}{}] {done}/{total} rows",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
    }
    eprintln!();
    println!(
        "imported {total} rows: {subs} new subscribers, {devs} devices; {} rows rejected",
        bad.len()
    );
    Ok(())
}

fn fax_preview(out: PathBuf, standard: bool, config: Option<PathBuf>) -> anyhow::Result<()> {
    let template_src = match &config {
        Some(p) => {
            let cfg = Config::load(p, std::env::vars())?;
            cfg.channels
                .iter()
                .find_map(|c| match c {
                    pinpost::config::ChannelConfig::Fax(f) => Some(f.template.clone()),
                    _ => None,
                })
                .context("the config has no fax channel")?
        }
        None => pinpost::config::default_fax_template(),
    };
    let template = pinpost::template::Template::parse(&template_src).map_err(anyhow::Error::msg)?;
    let pin = pinpost_channel_core::SecretString::from("4921773055614410".to_owned());
    let text = template.render(&pinpost::template::Values {
        pin: &pin,
        amount: Some("3000 JPY"),
        payee: Some("Example Shop"),
        expires: Some("2026-12-01 09:00 +09:00"),
    });
    let format = pinpost_fax::PreviewFormat::from_path(&out)
        .context("--out must end in .png, .tif or .tiff")?;
    let resolution = if standard {
        pinpost_fax::Resolution::Standard
    } else {
        pinpost_fax::Resolution::Fine
    };
    use pinpost_channel_core::ExposeSecret;
    let bytes = pinpost_fax::render_preview(text.expose_secret(), resolution, format)?;
    std::fs::write(&out, bytes).with_context(|| format!("{}", out.display()))?;
    println!("wrote {} (sample PIN 4921 7730 5561 4410)", out.display());
    Ok(())
}
