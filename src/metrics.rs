//! Prometheus metrics, served at `GET /metrics` in the OpenMetrics text format.
//!
//! Labels carry only fixed vocabularies (decline codes, lockout scopes): never a PIN, an
//! MSISDN, a merchant id or any other free text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every value the `outcome` label of `pinpost_attempts_total` takes: a closed set.
pub const ATTEMPT_OUTCOMES: [&str; 7] = [
    "submitted",
    "transient",
    "permanent",
    "in_doubt",
    "throttled",
    "unavailable",
    "expired",
];

/// Seconds over which `pinpost_channel_tps` averages.
pub const TPS_WINDOW_SECS: i64 = 10;

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
    pub channel: String,
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
    /// Deliveries per state and channel, read from the database at each scrape.
    pub deliveries: Family<StateLabel, Gauge>,
    /// 1 while a channel is bound / connected, 0 otherwise (at each scrape).
    pub channel_up: Family<ChannelLabel, Gauge>,
    /// Deliveries waiting for a channel (`queued` and `retry_wait`), at each scrape.
    pub queue_depth: Family<ChannelLabel, Gauge>,
    /// Of those, the ones due now (their next attempt time has passed).
    pub queue_due: Family<ChannelLabel, Gauge>,
    /// From enqueue to the peer accepting the send, per channel, in seconds.
    pub enqueue_to_submit: Family<ChannelLabel, Histogram, fn() -> Histogram>,
    /// From the accepted send's start to its final receipt, per channel, in seconds.
    pub submit_to_receipt: Family<ChannelLabel, Histogram, fn() -> Histogram>,
    /// Messages (parts) handed to the peer per second over the last [`TPS_WINDOW_SECS`].
    pub channel_tps: Family<ChannelLabel, Gauge<f64, AtomicU64>>,
    /// "Slow down" answers of the peer (each retried part counted), as the driver counts them.
    pub throttles: Family<ChannelLabel, Counter>,
    /// The submit rate this node's bind may use (after sharing a budget), 0 when unlimited;
    /// only channels with a rate limit to set.
    pub tps_limit: Family<ChannelLabel, Gauge>,
    /// Nodes counted as sharing the queue (1 on the embedded database).
    pub live_nodes: Gauge,
    sends: Mutex<HashMap<String, SendWindow>>,
}

fn latency_buckets() -> Histogram {
    // 5 ms .. about 2 min.
    Histogram::new(exponential_buckets(0.005, 2.5, 12))
}

fn receipt_buckets() -> Histogram {
    // 250 ms .. about 1.7 h.
    Histogram::new(exponential_buckets(0.25, 2.5, 12))
}

const SLOTS: usize = TPS_WINDOW_SECS as usize + 1;

/// Sends per second, one slot per second of the window.
#[derive(Default)]
struct SendWindow {
    /// (unix second, count) per slot `second % SLOTS`: the window and the current second.
    slots: [(i64, u64); SLOTS],
}

impl SendWindow {
    fn add(&mut self, second: i64, n: u64) {
        let slot = &mut self.slots[second.rem_euclid(SLOTS as i64) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += n;
    }

    /// The mean rate over the `TPS_WINDOW_SECS` whole seconds before `second`.
    fn rate(&self, second: i64) -> f64 {
        let from = second - TPS_WINDOW_SECS;
        let n: u64 = self
            .slots
            .iter()
            .filter(|(s, _)| *s >= from && *s < second)
            .map(|(_, n)| n)
            .sum();
        n as f64 / TPS_WINDOW_SECS as f64
    }
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
            queue_depth: Family::default(),
            queue_due: Family::default(),
            enqueue_to_submit: Family::new_with_constructor(latency_buckets),
            submit_to_receipt: Family::new_with_constructor(receipt_buckets),
            channel_tps: Family::default(),
            throttles: Family::default(),
            tps_limit: Family::default(),
            live_nodes: Gauge::default(),
            sends: Mutex::default(),
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
        registry.register(
            "deliveries",
            "Deliveries by state and channel",
            m.deliveries.clone(),
        );
        registry.register(
            "channel_up",
            "Whether a channel is bound (1) or down (0)",
            m.channel_up.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries waiting for a channel (queued or retry_wait)",
            m.queue_depth.clone(),
        );
        registry.register(
            "queue_due",
            "Waiting deliveries whose next attempt is due now",
            m.queue_due.clone(),
        );
        registry.register_with_unit(
            "enqueue_to_submit",
            "From enqueue to the peer accepting the send",
            prometheus_client::registry::Unit::Seconds,
            m.enqueue_to_submit.clone(),
        );
        registry.register_with_unit(
            "submit_to_receipt",
            "From the accepted send to its final receipt",
            prometheus_client::registry::Unit::Seconds,
            m.submit_to_receipt.clone(),
        );
        registry.register(
            "channel_tps",
            "Messages handed to the peer per second, over the last 10 seconds",
            m.channel_tps.clone(),
        );
        registry.register(
            "throttles",
            "Times the peer asked a channel to slow down",
            m.throttles.clone(),
        );
        registry.register(
            "channel_tps_limit",
            "Submits per second this node may send on a bind (0: unlimited)",
            m.tps_limit.clone(),
        );
        registry.register(
            "live_nodes",
            "Nodes sharing the queue, as this node last counted them",
            m.live_nodes.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Count `n` messages (parts) handed to the peer of `channel` at `now_ms`.
    pub fn note_sent(&self, channel: &str, n: u64, now_ms: i64) {
        let mut sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        match sends.get_mut(channel) {
            Some(w) => w.add(now_ms.div_euclid(1000), n),
            None => {
                let mut w = SendWindow::default();
                w.add(now_ms.div_euclid(1000), n);
                sends.insert(channel.to_owned(), w);
            }
        }
    }

    /// Set `pinpost_channel_tps` of each channel from the sends noted (at each scrape).
    pub fn refresh_tps<'a>(&self, channels: impl IntoIterator<Item = &'a str>, now_ms: i64) {
        let sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        let second = now_ms.div_euclid(1000);
        for ch in channels {
            let rate = sends.get(ch).map_or(0.0, |w| w.rate(second));
            self.channel_tps
                .get_or_create(&ChannelLabel {
                    channel: ch.to_owned(),
                })
                .set(rate);
        }
    }

    /// Messages per second handed to the peer of `channel` over the window before `now_ms`.
    pub fn tps(&self, channel: &str, now_ms: i64) -> f64 {
        let sends = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        sends
            .get(channel)
            .map_or(0.0, |w| w.rate(now_ms.div_euclid(1000)))
    }

    /// Raise `pinpost_throttles_total` of `channel` to the driver's running count.
    pub fn sync_throttles(&self, channel: &str, driver_total: u64) {
        // Held so that two scrapes at once cannot both add the same difference.
        let _serial = self.sends.lock().unwrap_or_else(|e| e.into_inner());
        let c = self.throttles.get_or_create(&ChannelLabel {
            channel: channel.to_owned(),
        });
        let seen = c.get();
        if driver_total > seen {
            c.inc_by(driver_total - seen);
        }
    }

    /// Observe one latency in milliseconds (negative values, from clock steps, count as 0).
    pub fn observe_ms(
        family: &Family<ChannelLabel, Histogram, fn() -> Histogram>,
        channel: &str,
        ms: i64,
    ) {
        family
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .observe(ms.max(0) as f64 / 1000.0);
    }

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
            .get_or_create(&StateLabel {
                state: "queued",
                channel: ch(),
            })
            .set(1);
        m.channel_up
            .get_or_create(&ChannelLabel { channel: ch() })
            .set(1);
        m.queue_depth
            .get_or_create(&ChannelLabel { channel: ch() })
            .set(1);
        m.queue_due
            .get_or_create(&ChannelLabel { channel: ch() })
            .set(1);
        Metrics::observe_ms(&m.enqueue_to_submit, "sms", 12);
        Metrics::observe_ms(&m.submit_to_receipt, "sms", 900);
        m.note_sent("sms", 1, 1_000);
        m.refresh_tps(["sms"], 2_000);
        m.sync_throttles("sms", 1);
        m.tps_limit
            .get_or_create(&ChannelLabel { channel: ch() })
            .set(50);
        m.live_nodes.set(2);
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
                    let family = ["_total", "_bucket", "_count", "_sum"]
                        .iter()
                        .fold(name, |n, suffix| n.trim_end_matches(suffix));
                    assert!(
                        text.contains(&format!("# TYPE {family} ")),
                        "the dashboard queries {name}, which is not exported"
                    );
                }
            }
        }
        assert!(queried >= 16, "{queried}");
    }

    #[test]
    fn new_series_render_with_channel_labels() {
        let m = Metrics::default();
        Metrics::observe_ms(&m.enqueue_to_submit, "sms", 40);
        Metrics::observe_ms(&m.submit_to_receipt, "sms", -5);
        m.sync_throttles("sms", 3);
        m.sync_throttles("sms", 2);
        m.sync_throttles("sms", 5);
        let text = m.render();
        assert!(
            text.contains(
                "pinpost_enqueue_to_submit_seconds_bucket{le=\"0.078125\",channel=\"sms\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pinpost_enqueue_to_submit_seconds_bucket{le=\"0.03125\",channel=\"sms\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("pinpost_submit_to_receipt_seconds_sum{channel=\"sms\"} 0.0"),
            "{text}"
        );
        assert!(
            text.contains("pinpost_throttles_total{channel=\"sms\"} 5"),
            "{text}"
        );
    }

    #[test]
    fn tps_is_the_mean_over_the_window_before_this_second() {
        let m = Metrics::default();
        for s in 100..110 {
            m.note_sent("sms", 3, s * 1000 + 500);
        }
        // Sends in the current second do not count yet.
        m.note_sent("sms", 50, 110_200);
        m.refresh_tps(["sms", "mail"], 110_900);
        let text = m.render();
        assert!(
            text.contains("pinpost_channel_tps{channel=\"sms\"} 3.0"),
            "{text}"
        );
        assert!(
            text.contains("pinpost_channel_tps{channel=\"mail\"} 0.0"),
            "{text}"
        );
        // Ten seconds later only the burst of second 110 is inside the window.
        m.refresh_tps(["sms"], 120_000);
        assert!(
            m.render()
                .contains("pinpost_channel_tps{channel=\"sms\"} 5.0"),
            "{}",
            m.render()
        );
        // A slot is reused, not added to, when its second comes round again.
        m.note_sent("sms", 1, 120_100);
        m.refresh_tps(["sms"], 121_000);
        assert!(
            m.render()
                .contains("pinpost_channel_tps{channel=\"sms\"} 0.1"),
            "{}",
            m.render()
        );
    }
}
