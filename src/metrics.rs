//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Labels carry only fixed vocabularies (decline codes, lockout scopes): never a PIN, an
//! MSISDN, a merchant id or any other free text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

/// A configured channel id (operator-chosen, never request data) and an outcome class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabel {
    pub channel: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

pub struct Metrics {
    registry: Registry,
    pub vouchers_issued: Counter,
    pub redemptions_captured: Counter,
    pub redemptions_reversed: Counter,
    pub redemption_declines: Family<CodeLabel, Counter>,
    pub redemption_lockouts: Family<ScopeLabel, Counter>,
    pub caps_denied: Family<CodeLabel, Counter>,
    /// Send outcomes by channel and class: submitted, transient, permanent, in_doubt,
    /// throttled, unavailable, expired.
    pub attempts: Family<AttemptLabel, Counter>,
    /// Deliveries per state, read from the database at each scrape.
    pub deliveries: Family<StateLabel, Gauge>,
    /// 1 while a channel is bound / connected, 0 otherwise (at each scrape).
    pub channel_up: Family<ChannelLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("pinpost");
        let m = Metrics {
            vouchers_issued: Counter::default(),
            redemptions_captured: Counter::default(),
            redemptions_reversed: Counter::default(),
            redemption_declines: Family::default(),
            redemption_lockouts: Family::default(),
            caps_denied: Family::default(),
            attempts: Family::default(),
            deliveries: Family::default(),
            channel_up: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "vouchers_issued",
            "Vouchers minted",
            m.vouchers_issued.clone(),
        );
        registry.register(
            "redemptions_captured",
            "Redemptions captured",
            m.redemptions_captured.clone(),
        );
        registry.register(
            "redemptions_reversed",
            "Redemptions reversed",
            m.redemptions_reversed.clone(),
        );
        registry.register(
            "redemption_declines",
            "Redemptions declined, by decline code",
            m.redemption_declines.clone(),
        );
        registry.register(
            "redemption_lockouts",
            "Brute-force lockouts started, by scope (token or global)",
            m.redemption_lockouts.clone(),
        );
        registry.register(
            "caps_denied",
            "Sends refused by fraud and cost caps, by reason",
            m.caps_denied.clone(),
        );
        registry.register(
            "attempts",
            "Send outcomes by channel and class",
            m.attempts.clone(),
        );
        registry.register("deliveries", "Deliveries by state", m.deliveries.clone());
        registry.register(
            "channel_up",
            "Whether a channel is bound (1) or down (0)",
            m.channel_up.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_fixed_labels() {
        let m = Metrics::default();
        m.redemption_declines
            .get_or_create(&CodeLabel {
                code: "pin_not_valid",
            })
            .inc();
        m.redemption_lockouts
            .get_or_create(&ScopeLabel { scope: "token" })
            .inc();
        let text = m.render();
        assert!(
            text.contains("pinpost_redemption_declines_total{code=\"pin_not_valid\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pinpost_redemption_lockouts_total{scope=\"token\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_grafana_dashboard_queries_only_exported_series() {
        let m = Metrics::default();
        let ch = || "sms".to_owned();
        m.attempts
            .get_or_create(&AttemptLabel {
                channel: ch(),
                outcome: "submitted",
            })
            .inc();
        m.deliveries
            .get_or_create(&StateLabel { state: "queued" })
            .set(1);
        m.channel_up
            .get_or_create(&ChannelLabel { channel: ch() })
            .set(1);
        m.redemption_declines
            .get_or_create(&CodeLabel {
                code: "pin_not_valid",
            })
            .inc();
        m.redemption_lockouts
            .get_or_create(&ScopeLabel { scope: "token" })
            .inc();
        m.caps_denied
            .get_or_create(&CodeLabel {
                code: "cap_exceeded",
            })
            .inc();
        let text = m.render();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for name in expr
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("pinpost_"))
                {
                    queried += 1;
                    let family = name.trim_end_matches("_total");
                    assert!(
                        text.contains(&format!("# TYPE {family} ")),
                        "the dashboard queries {name}, which is not exported"
                    );
                }
            }
        }
        assert!(queried >= 10, "{queried}");
    }
}
