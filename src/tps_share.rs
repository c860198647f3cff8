//! The submit rate of every SMPP bind, and a budget shared by the nodes of one queue.
//!
//! Each channel with its own bind has a budget, its `max_tps`. On one node the bind sends
//! at that rate. With `[storage] share_tps = true` on PostgreSQL the budget is the one the
//! SMSC enforces for the account, shared by all nodes: every node counts the live nodes
//! (those whose heartbeat ran within one lease time, itself included) and sets its binds to
//! its share, rounded up. When a node stops cleanly the others take its share at their next
//! count; when one dies, within a lease time. Until then the nodes together send below the
//! budget (a node joined: at most one share over it, for one count interval).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::Channels;
use crate::metrics::{ChannelLabel, Metrics};
use crate::store::Store;

/// Budgets by channel id (`None`: unlimited), as configured or last reloaded, and the
/// rates applied to the binds.
pub struct TpsShare {
    budgets: Mutex<BTreeMap<String, Option<u32>>>,
    live: AtomicUsize,
    channels: Arc<Channels>,
    metrics: Arc<Metrics>,
}

/// A node's share of `budget` when `live` nodes share it (at least 1 submit/s).
pub fn share(budget: u32, live: usize) -> u32 {
    let live = u32::try_from(live.max(1)).unwrap_or(u32::MAX);
    budget.div_ceil(live).max(1)
}

impl TpsShare {
    /// Set every channel in `budgets` to its whole budget (one live node) and note the
    /// rates in the metrics. Channels whose driver has no rate limit are left out.
    pub fn new(
        channels: Arc<Channels>,
        metrics: Arc<Metrics>,
        budgets: BTreeMap<String, Option<u32>>,
    ) -> TpsShare {
        let t = TpsShare {
            budgets: Mutex::new(budgets),
            live: AtomicUsize::new(1),
            channels,
            metrics,
        };
        t.metrics.live_nodes.set(1);
        t.apply_all();
        t
    }

    /// The live nodes last counted.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// A reload changed a channel's budget: apply this node's share of it now. False when
    /// the channel has no rate limit to set.
    pub fn set_budget(&self, channel: &str, budget: Option<u32>) -> bool {
        let known = {
            let mut b = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
            match b.get_mut(channel) {
                Some(old) => {
                    *old = budget;
                    true
                }
                None => false,
            }
        };
        known && self.apply_one(channel, budget, self.live())
    }

    /// `live` nodes share the budgets now; the rates applied if that changed the count.
    pub fn set_live(&self, live: usize) -> Option<Vec<(String, Option<u32>)>> {
        let live = live.max(1);
        self.metrics.live_nodes.set(live as i64);
        if self.live.swap(live, Ordering::Relaxed) == live {
            return None;
        }
        Some(self.apply_all())
    }

    fn apply_all(&self) -> Vec<(String, Option<u32>)> {
        let budgets = self
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let live = self.live();
        budgets
            .into_iter()
            .filter(|(id, budget)| self.apply_one(id, *budget, live))
            .map(|(id, budget)| (id, budget.map(|b| share(b, live))))
            .collect()
    }

    fn apply_one(&self, channel: &str, budget: Option<u32>, live: usize) -> bool {
        let rate = budget.map(|b| share(b, live));
        let Some(ch) = self.channels.get(channel) else {
            return false;
        };
        if !ch.set_tps(rate) {
            return false;
        }
        self.metrics
            .tps_limit
            .get_or_create(&ChannelLabel {
                channel: channel.to_owned(),
            })
            .set(rate.map_or(0, i64::from));
        true
    }

    /// Count the live nodes every `every` and apply the shares, until `stop`.
    pub fn spawn(
        self: Arc<Self>,
        store: Store,
        lease: Duration,
        every: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let window = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            loop {
                match store.live_nodes(crate::now_ms(), window).await {
                    Ok(live) => {
                        if let Some(applied) = self.set_live(live) {
                            let rates: Vec<String> = applied
                                .iter()
                                .map(|(id, r)| match r {
                                    Some(r) => format!("{id}={r}/s"),
                                    None => format!("{id}=unlimited"),
                                })
                                .collect();
                            tracing::info!(
                                live_nodes = live,
                                "shared TPS budget: this node's share {}",
                                rates.join(", ")
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot count live nodes; TPS shares unchanged")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinpost_channel_core::{
        Accepted, AddressKind, Capabilities, Channel, ChannelId, ChannelKind, Health,
        OutboundMessage, SendError,
    };

    /// A driver that only records the rate it was given.
    struct Rated {
        id: ChannelId,
        caps: Capabilities,
        limited: bool,
        rate: Mutex<Option<Option<u32>>>,
    }

    #[async_trait::async_trait]
    impl Channel for Rated {
        fn id(&self) -> &ChannelId {
            &self.id
        }
        fn capabilities(&self) -> &Capabilities {
            &self.caps
        }
        async fn send(&self, _: &OutboundMessage) -> Result<Accepted, SendError> {
            unreachable!("never sent")
        }
        async fn health(&self) -> Health {
            Health::Up
        }
        fn set_tps(&self, max_tps: Option<u32>) -> bool {
            if self.limited {
                *self.rate.lock().unwrap() = Some(max_tps);
            }
            self.limited
        }
    }

    fn rated(id: &str, limited: bool) -> Arc<Rated> {
        Arc::new(Rated {
            id: ChannelId::new(id),
            caps: Capabilities {
                kind: ChannelKind::Sms,
                address: AddressKind::Msisdn,
                receipts: false,
                max_body_chars: 160,
                window: 1,
            },
            limited,
            rate: Mutex::new(None),
        })
    }

    #[test]
    fn live_nodes_split_budgets_and_reloads_keep_the_split() {
        let (sms, ussd, mail) = (
            rated("sms", true),
            rated("ussd", true),
            rated("mail", false),
        );
        let mut channels: Channels = BTreeMap::new();
        channels.insert("sms".into(), sms.clone());
        channels.insert("ussd".into(), ussd.clone());
        channels.insert("mail".into(), mail.clone());
        let metrics = Arc::new(Metrics::default());
        let budgets = BTreeMap::from([
            ("sms".to_owned(), Some(100)),
            ("ussd".to_owned(), None),
            ("mail".to_owned(), Some(5)),
        ]);
        let t = TpsShare::new(Arc::new(channels), metrics.clone(), budgets);
        let rate = |c: &Rated| *c.rate.lock().unwrap();
        assert_eq!(rate(&sms), Some(Some(100)), "one node: the whole budget");
        assert_eq!(rate(&ussd), Some(None));
        assert_eq!(rate(&mail), None, "a driver without a limit is left alone");

        let applied = t.set_live(3).expect("the count changed");
        assert_eq!(
            applied,
            vec![("sms".to_owned(), Some(34)), ("ussd".to_owned(), None)]
        );
        assert_eq!(rate(&sms), Some(Some(34)));
        assert_eq!(t.set_live(3), None, "same count: nothing to apply");
        assert!(t.set_budget("sms", Some(60)), "a reload within the split");
        assert_eq!(rate(&sms), Some(Some(20)));
        assert!(!t.set_budget("mail", Some(9)));
        assert!(!t.set_budget("unknown", Some(9)));
        t.set_live(0);
        assert_eq!(rate(&sms), Some(Some(60)), "at least this node is live");

        let text = metrics.render();
        assert!(
            text.contains("pinpost_channel_tps_limit{channel=\"sms\"} 60"),
            "{text}"
        );
        assert!(
            text.contains("pinpost_channel_tps_limit{channel=\"ussd\"} 0"),
            "{text}"
        );
        assert!(
            !text.contains("pinpost_channel_tps_limit{channel=\"mail\"}"),
            "{text}"
        );
        assert!(text.contains("pinpost_live_nodes 1"), "{text}");
    }

    #[test]
    fn shares_round_up_and_never_reach_zero() {
        assert_eq!(share(100, 1), 100);
        assert_eq!(
            share(100, 3),
            34,
            "three nodes may send 102/s: one share rounds up"
        );
        assert_eq!(share(2, 3), 1);
        assert_eq!(share(1, 0), 1, "no live count yet: the whole budget");
        for live in 1..10 {
            for b in 1..200 {
                let s = share(b, live) as usize;
                assert!(
                    s * live >= b as usize,
                    "the nodes together reach the budget"
                );
                assert!(
                    (s - 1) * live < b as usize,
                    "and overshoot by less than one submit/s per node"
                );
            }
        }
    }
}
