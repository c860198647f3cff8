//! Configuration reload (SIGHUP).
//!
//! The config is read again from where it came from and validated as at start. When it is
//! invalid, or a token file or callback secret cannot be read, nothing changes and the error
//! is logged. Otherwise what a running daemon can change in place is swapped:
//!
//! - the API clients (`[[api.tokens]]`, token files read again) and their callback secrets;
//! - the message template of every channel;
//! - the submit rate (`max_tps`) of every SMPP bind (with `storage.share_tps`, the budget
//!   the live nodes share: this node applies its share of the new value).
//!
//! Each swap replaces one `ArcSwap`, so requests and sends never wait for a reload. Every
//! other key that changed is listed in a warning: it takes effect at the next restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiState, Client};
use crate::callbacks::{Secrets, SharedSecrets};
use crate::config::{ChannelConfig, Config, ConfigError, SmppChannelConfig};
use crate::dispatch::Route;
use crate::template::Template;
use crate::tps_share::TpsShare;

/// Reads the configuration again (the same file and environment as at start).
pub type LoadConfig = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Where reload requests come from and how the new configuration is read.
pub struct ReloadSource {
    /// One message per request (SIGHUP); requests that arrive during a reload may be
    /// merged into the next one.
    pub requests: mpsc::Receiver<()>,
    pub load: LoadConfig,
}

/// The parts of a running daemon a reload replaces.
pub(crate) struct Live {
    pub api: Arc<ApiState>,
    pub callback_secrets: SharedSecrets,
    /// The dispatch route of every channel, by channel id.
    pub routes: BTreeMap<String, Arc<Route>>,
    /// What is in force: the start-up config with the reloaded keys of later reloads.
    pub running: Config,
    /// Set once systemd was told `READY=1`.
    pub ready: Arc<AtomicBool>,
    /// The binds' rate budgets (split among the live nodes when they share them).
    pub tps: Arc<TpsShare>,
}

/// A new configuration, checked and with its files read, ready to swap in.
struct Prepared {
    config: Config,
    clients: Vec<Client>,
    secrets: Secrets,
    templates: BTreeMap<String, Template>,
}

/// What one reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub tokens: usize,
    /// Channels whose template changed.
    pub templates: Vec<String>,
    /// Channels whose `max_tps` changed, with the new value.
    pub tps: Vec<(String, Option<u32>)>,
    /// Changed keys that take a restart.
    pub restart: Vec<String>,
}

impl Summary {
    /// One line for the log and the service status.
    pub fn line(&self) -> String {
        let list = |v: &[String]| {
            if v.is_empty() {
                "unchanged".to_owned()
            } else {
                format!("changed for {}", v.join(", "))
            }
        };
        let tps: Vec<String> = self
            .tps
            .iter()
            .map(|(id, t)| match t {
                Some(t) => format!("{id}={t}"),
                None => format!("{id}=unlimited"),
            })
            .collect();
        format!(
            "{} API tokens loaded; templates {}; max_tps {}",
            self.tokens,
            list(&self.templates),
            list(&tps)
        )
    }
}

/// Serve reload requests until `shutdown`.
pub(crate) async fn run(mut live: Live, mut source: ReloadSource, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = source.requests.recv() => if r.is_none() { return },
        }
        // Requests that came in meanwhile are served by this reload.
        while source.requests.try_recv().is_ok() {}
        tracing::info!("reloading the configuration");
        crate::systemd::reloading(&live.ready);
        let load = source.load.clone();
        let running_channels = live.running.channels.clone();
        let prepared =
            tokio::task::spawn_blocking(move || prepare(load.as_ref(), &running_channels))
                .await
                .unwrap_or_else(|e| Err(format!("the reload task failed: {e}")));
        let status = match prepared {
            Ok(p) => {
                let summary = live.apply(p);
                tracing::info!("configuration reloaded: {}", summary.line());
                if !summary.restart.is_empty() {
                    tracing::warn!(
                        "configuration changes not applied until pinpost restarts: {}",
                        summary.restart.join(", ")
                    );
                }
                format!("configuration reloaded: {}", summary.line())
            }
            Err(e) => {
                tracing::error!(
                    "configuration reload failed; the running configuration stays in force: {e}"
                );
                "configuration reload failed; running with the previous configuration".to_owned()
            }
        };
        crate::systemd::reloaded(&live.ready, &status);
    }
}

/// Read and check the new configuration and everything it names that a reload uses.
fn prepare(
    load: &(dyn Fn() -> Result<Config, ConfigError> + Send + Sync),
    running_channels: &[ChannelConfig],
) -> Result<Prepared, String> {
    let config = load().map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    let clients = crate::load_clients(&config).map_err(|e| e.to_string())?;
    let secrets = Secrets::load(&config).map_err(|e| e.to_string())?;
    let mut templates = BTreeMap::new();
    for c in &config.channels {
        if !running_channels
            .iter()
            .any(|r| r.id() == c.id() && same_kind(r, c))
        {
            continue;
        }
        let t = Template::parse(c.template()).map_err(|e| format!("channel {}: {e}", c.id()))?;
        templates.insert(c.id().to_owned(), t);
    }
    Ok(Prepared {
        config,
        clients,
        secrets,
        templates,
    })
}

impl Live {
    /// Swap in what can change at run time; list what cannot.
    fn apply(&mut self, p: Prepared) -> Summary {
        let restart = restart_needed(&self.running, &p.config);
        let mut summary = Summary {
            tokens: p.clients.len(),
            restart,
            ..Summary::default()
        };
        self.api.clients.store(Arc::new(p.clients));
        self.callback_secrets.store(Arc::new(p.secrets));
        self.running.api.tokens = p.config.api.tokens.clone();

        let mut templates = p.templates;
        for running in &mut self.running.channels {
            let id = running.id().to_owned();
            let Some(new) = p
                .config
                .channels
                .iter()
                .find(|c| c.id() == id && same_kind(c, running))
            else {
                continue;
            };
            if new.template() != running.template()
                && let (Some(route), Some(t)) = (self.routes.get(&id), templates.remove(&id))
            {
                route.template.store(Arc::new(t));
                *template_mut(running) = new.template().to_owned();
                summary.templates.push(id.clone());
            }
            let tps = own_bind(new).map(|c| c.max_tps);
            if let (Some(old), Some(tps)) = (own_bind_mut(running), tps)
                && old.max_tps != tps
                && self.tps.set_budget(&id, tps)
            {
                old.max_tps = tps;
                summary.tps.push((id.clone(), tps));
            }
        }
        summary
    }
}

fn same_kind(a: &ChannelConfig, b: &ChannelConfig) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn template_mut(c: &mut ChannelConfig) -> &mut String {
    match c {
        ChannelConfig::Smpp(c) | ChannelConfig::Ussd(c) => &mut c.template,
        ChannelConfig::Snpp(c) => &mut c.template,
        ChannelConfig::Tap(c) => &mut c.template,
        ChannelConfig::Smtp(c) => &mut c.template,
        ChannelConfig::Mqtt(c) => &mut c.template,
        ChannelConfig::Fax(c) => &mut c.template,
    }
}

/// The SMPP settings of a channel with its own bind (a USSD channel on another channel's
/// bind has no rate of its own).
pub(crate) fn own_bind(c: &ChannelConfig) -> Option<&SmppChannelConfig> {
    match c {
        ChannelConfig::Ussd(c) if c.url.starts_with("channel:") => None,
        ChannelConfig::Smpp(c) | ChannelConfig::Ussd(c) => Some(c),
        _ => None,
    }
}

fn own_bind_mut(c: &mut ChannelConfig) -> Option<&mut SmppChannelConfig> {
    match c {
        ChannelConfig::Ussd(c) if c.url.starts_with("channel:") => None,
        ChannelConfig::Smpp(c) | ChannelConfig::Ussd(c) => Some(c),
        _ => None,
    }
}

/// The keys that differ between `old` and `new` and that a reload does not apply, as
/// `section.key` (`api.listen`, `delivery.max_attempts`) or `channel[id].key`, plus
/// `channel[id] added`, `channel[id] removed` and `channel order`.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut a = serde_json::to_value(old).expect("a config serializes");
    let mut b = serde_json::to_value(new).expect("a config serializes");
    let ca = take_channels(&mut a);
    let cb = take_channels(&mut b);
    for v in [&mut a, &mut b] {
        if let Some(api) = v.get_mut("api").and_then(Value::as_object_mut) {
            api.remove("tokens");
        }
    }
    let mut out = Vec::new();
    diff(&a, &b, "", &mut out);

    let ids = |cs: &[(String, Value)]| cs.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let (ia, ib) = (ids(&ca), ids(&cb));
    for (id, va) in &ca {
        match cb.iter().find(|(i, _)| i == id) {
            None => out.push(format!("channel[{id}] removed")),
            Some((_, vb)) => diff(va, vb, &format!("channel[{id}]"), &mut out),
        }
    }
    for id in &ib {
        if !ia.contains(id) {
            out.push(format!("channel[{id}] added"));
        }
    }
    let common_a: Vec<&String> = ia.iter().filter(|i| ib.contains(i)).collect();
    let common_b: Vec<&String> = ib.iter().filter(|i| ia.contains(i)).collect();
    if common_a != common_b {
        out.push("channel order".to_owned());
    }
    out
}

/// The `[[channel]]` tables by id, without the keys a reload applies.
fn take_channels(v: &mut Value) -> Vec<(String, Value)> {
    let Some(Value::Array(list)) = v.as_object_mut().and_then(|o| o.remove("channel")) else {
        return Vec::new();
    };
    list.into_iter()
        .map(|mut c| {
            let id = c["id"].as_str().unwrap_or_default().to_owned();
            if let Some(o) = c.as_object_mut() {
                o.remove("id");
                o.remove("template");
                if matches!(o.get("kind").and_then(Value::as_str), Some("smpp" | "ussd")) {
                    o.remove("max_tps");
                }
            }
            (id, c)
        })
        .collect()
}

/// Append the paths under `prefix` where `a` and `b` differ: objects key by key, anything
/// else as a whole.
fn diff(a: &Value, b: &Value, prefix: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            for k in keys {
                let null = Value::Null;
                diff(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &join(k),
                    out,
                );
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path, std::iter::empty()).unwrap()
    }

    const BASE: &str = r#"
[api]
listen = "127.0.0.1:8025"
[[api.tokens]]
name = "billing"
role = "billing"
token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
[secrets]
pin_key_file = "/k"
[delivery]
max_attempts = 5
[[channel]]
id = "sms"
kind = "smpp"
url = "loopback"
max_tps = 50
template = "PIN {pin}"
[[channel]]
id = "ussd"
kind = "ussd"
url = "channel:sms"
"#;

    #[test]
    fn tokens_templates_and_tps_need_no_restart() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("max_tps = 50", "max_tps = 10")
                .replace("PIN {pin}\"", "Your PIN {pin}\"")
                .replace("name = \"billing\"", "name = \"billing-2\""),
        );
        assert_eq!(restart_needed(&old, &new), Vec::<String>::new());
        assert_eq!(restart_needed(&old, &old), Vec::<String>::new());
    }

    #[test]
    fn other_changes_are_listed_by_key() {
        let old = config(BASE);
        let new = config(
            &(BASE
                .replace("127.0.0.1:8025", "127.0.0.1:9000")
                .replace("max_attempts = 5", "max_attempts = 7")
                .replace("url = \"loopback\"", "url = \"smpp://smsc:2775\"")
                .replace(
                    "[[channel]]\nid = \"ussd\"\nkind = \"ussd\"\nurl = \"channel:sms\"\n",
                    "",
                )
                + "[[channel]]\nid = \"pager\"\nkind = \"snpp\"\nurl = \"snpp://p:444\"\n"
                + "[storage]\nurl = \"sqlite:///elsewhere.db\"\n"),
        );
        assert_eq!(
            restart_needed(&old, &new),
            vec![
                "api.listen",
                "delivery.max_attempts",
                "storage.url",
                "channel[sms].url",
                "channel[ussd] removed",
                "channel[pager] added",
            ]
        );
    }

    #[test]
    fn a_reordered_channel_list_needs_a_restart() {
        let two = "[[channel]]\nid = \"a\"\nkind = \"snpp\"\nurl = \"snpp://p:444\"\n\
                   [[channel]]\nid = \"b\"\nkind = \"snpp\"\nurl = \"snpp://q:444\"\n";
        let swapped = "[[channel]]\nid = \"b\"\nkind = \"snpp\"\nurl = \"snpp://q:444\"\n\
                       [[channel]]\nid = \"a\"\nkind = \"snpp\"\nurl = \"snpp://p:444\"\n";
        let head = "[secrets]\npin_key_file = \"/k\"\n";
        let old = config(&format!("{head}{two}"));
        let new = config(&format!("{head}{swapped}"));
        assert_eq!(restart_needed(&old, &new), vec!["channel order"]);
    }

    #[test]
    fn the_summary_line_names_what_changed() {
        let s = Summary {
            tokens: 3,
            templates: vec!["sms".into()],
            tps: vec![("sms".into(), Some(10)), ("ussd".into(), None)],
            restart: vec![],
        };
        assert_eq!(
            s.line(),
            "3 API tokens loaded; templates changed for sms; max_tps changed for sms=10, ussd=unlimited"
        );
        assert_eq!(
            Summary::default().line(),
            "0 API tokens loaded; templates unchanged; max_tps unchanged"
        );
    }
}
