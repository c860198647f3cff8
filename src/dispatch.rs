//! Dispatch: claim due deliveries, hand them to their channel, record the outcome.
//!
//! One dispatcher task per channel keeps at most `window` sends in flight. It claims
//! through the store (so the state is `sending` on disk before anything reaches the peer),
//! wakes on a commit that made work due, and otherwise polls for retries. Each outcome is
//! classified here, logged here and nowhere else, and written back through the store.
//!
//! A maintenance task runs the time-driven transitions (expiry, in-doubt reconciliation,
//! receipt timeouts), and a receipts task feeds driver receipts into the store.

use std::sync::Arc;
use std::time::Duration;

use pinpost_channel_core::{Channel, DurableReceipt, OutboundMessage, SendError};
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{DeliveryConfig, InDoubtAction};
use crate::crypto::Keys;
use crate::now_ms;
use crate::store::{
    AttemptOutcome, Claimed, Finish, FinishResult, ReceiptIn, State, Store, SweepParams,
};
use crate::template::{Template, Values};

/// Most deliveries claimed in one go.
const MAX_CLAIM: usize = 512;
/// Longest sleep between looks for due retries.
const POLL: Duration = Duration::from_millis(500);
/// How long an unavailable channel waits before the delivery is tried again.
const UNAVAILABLE_RETRY_MS: i64 = 1000;

/// What a dispatcher needs to know about its channel.
pub struct Route {
    pub channel: Arc<dyn Channel>,
    /// The message text; replaced when the configuration is reloaded.
    pub template: arc_swap::ArcSwap<Template>,
}

#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub keys: Keys,
    pub delivery: DeliveryConfig,
    pub utc_offset: time::UtcOffset,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Run the dispatcher of one channel until `shutdown`; in-flight sends are tracked on
/// `sends` so the caller can drain them.
pub async fn run_channel(
    ctx: Ctx,
    route: Arc<Route>,
    shutdown: CancellationToken,
    sends: TaskTracker,
) {
    let id = route.channel.id().as_str().to_owned();
    let window = route.channel.capabilities().window.max(1);
    let permits = Arc::new(Semaphore::new(window));
    let wake = ctx.store.wakers().get(&id);
    tracing::info!(channel = %id, window, "dispatcher started");
    loop {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore open"),
            _ = shutdown.cancelled() => break,
        };
        if !route.channel.health().await.is_up() {
            drop(first);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let mut held = vec![first];
        while held.len() < MAX_CLAIM {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let claimed = match ctx.store.claim(&id, held.len(), now_ms()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(channel = %id, error = %e, "claim failed");
                drop(held);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if claimed.is_empty() {
            drop(held);
            let sleep = match ctx.store.next_due(&id).await {
                Ok(Some(at)) => {
                    Duration::from_millis((at - now_ms()).clamp(1, POLL.as_millis() as i64) as u64)
                }
                _ => POLL,
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        held.truncate(claimed.len());
        for (c, permit) in claimed.into_iter().zip(held) {
            let ctx = ctx.clone();
            let route = route.clone();
            // Everything logged while sending (driver events included) names the delivery
            // and the channel.
            let span = tracing::info_span!("send", delivery_id = %c.id, channel = %id);
            sends.spawn(
                async move {
                    send_one(&ctx, &route, c).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
    tracing::info!(channel = %id, "dispatcher stopped claiming");
}

fn backoff(cfg: &DeliveryConfig, attempts_before: u32) -> i64 {
    let base = cfg.retry_backoff_min.as_millis() as f64 * 2f64.powi(attempts_before.min(30) as i32);
    let capped = base.min(cfg.retry_backoff_max.as_millis() as f64);
    let jitter = rand::rng().random_range(0.8..1.2);
    (capped * jitter) as i64
}

fn format_expiry(ms: i64, offset: time::UtcOffset) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .to_offset(offset);
    let (h, m, _) = offset.as_hms();
    let zone = if h == 0 && m == 0 {
        "UTC".to_owned()
    } else {
        format!("{:+03}:{:02}", h, m.abs())
    };
    format!("{} {}", t.format(&fmt).unwrap_or_default(), zone)
}

async fn send_one(ctx: &Ctx, route: &Route, c: Claimed) {
    let channel = route.channel.id().as_str().to_owned();
    let started_at = now_ms();
    let finish = |result: FinishResult| Finish {
        id: c.id.clone(),
        channel: channel.clone(),
        started_at,
        finished_at: now_ms(),
        result,
    };
    if c.expires_at.is_some_and(|e| e <= started_at) {
        record(ctx, finish(FinishResult::Expired), c.attempts).await;
        return;
    }
    let Some(pin) = c
        .pin_ct
        .as_deref()
        .and_then(|ct| ctx.keys.open(ct, c.id.as_bytes()))
    else {
        let f = finish(FinishResult::Attempted {
            outcome: AttemptOutcome::Permanent,
            error: "the stored PIN cannot be decrypted with the configured key".into(),
            next: State::Failed,
            next_attempt_at: started_at,
        });
        record(ctx, f, c.attempts).await;
        return;
    };
    let amount = match (&c.amount_value, &c.amount_currency) {
        (Some(v), Some(cur)) => Some(format!("{v} {cur}")),
        _ => None,
    };
    let expires = c.expires_at.map(|e| format_expiry(e, ctx.utc_offset));
    let body = route.template.load().render(&Values {
        pin: &pin,
        amount: amount.as_deref(),
        payee: c.payee.as_deref(),
        expires: expires.as_deref(),
    });
    drop(pin);
    let msg = OutboundMessage {
        delivery_id: c.id.clone(),
        address: c.address.clone(),
        body,
        expires_at: c.expires_at.and_then(|e| {
            time::OffsetDateTime::from_unix_timestamp_nanos(e as i128 * 1_000_000).ok()
        }),
    };
    let result = route.channel.send(&msg).await;
    drop(msg);
    let now = now_ms();
    match &result {
        Ok(acc) => {
            ctx.metrics
                .note_sent(&channel, acc.provider_refs.len().max(1) as u64, now);
            crate::metrics::Metrics::observe_ms(
                &ctx.metrics.enqueue_to_submit,
                &channel,
                now - c.created_at,
            );
        }
        // Nothing was handed to the peer.
        Err(SendError::Throttled { .. } | SendError::Unavailable { .. }) => {}
        Err(_) => ctx.metrics.note_sent(&channel, 1, now),
    }
    let cfg = &ctx.delivery;
    let result = match result {
        Ok(acc) => FinishResult::Submitted {
            refs: acc.provider_refs,
            receipt_timeout_ms: acc
                .receipt_expected
                .then_some(cfg.receipt_timeout.as_millis() as i64),
        },
        Err(SendError::Throttled { retry_after }) => FinishResult::NotAttempted {
            error: "throttled by the peer".into(),
            next_attempt_at: now + retry_after.as_millis() as i64,
        },
        Err(SendError::Unavailable { reason }) => FinishResult::NotAttempted {
            error: format!("channel unavailable: {reason}"),
            next_attempt_at: now + UNAVAILABLE_RETRY_MS,
        },
        Err(SendError::Transient { reason }) => {
            let exhausted = c.attempts + 1 >= cfg.max_attempts;
            FinishResult::Attempted {
                outcome: AttemptOutcome::Transient,
                error: reason,
                next: if exhausted {
                    State::Failed
                } else {
                    State::RetryWait
                },
                next_attempt_at: now + backoff(cfg, c.attempts),
            }
        }
        Err(SendError::Permanent { code, reason }) => FinishResult::Attempted {
            outcome: AttemptOutcome::Permanent,
            error: format!("{code}: {reason}"),
            next: State::Failed,
            next_attempt_at: now,
        },
        Err(SendError::InDoubt { reason }) => FinishResult::Attempted {
            outcome: AttemptOutcome::InDoubt,
            error: reason,
            next: State::InDoubt,
            next_attempt_at: now + cfg.in_doubt_after.as_millis() as i64,
        },
    };
    record(ctx, finish(result), c.attempts).await;
}

/// The class of a send outcome, one of [`crate::metrics::ATTEMPT_OUTCOMES`].
fn outcome_class(result: &FinishResult) -> &'static str {
    match result {
        FinishResult::Submitted { .. } => "submitted",
        FinishResult::Attempted { outcome, .. } => outcome.as_str(),
        FinishResult::NotAttempted { error, .. } if error.starts_with("throttled") => "throttled",
        FinishResult::NotAttempted { .. } => "unavailable",
        FinishResult::Expired => "expired",
    }
}

/// The one place a send outcome is logged.
async fn record(ctx: &Ctx, f: Finish, attempts_before: u32) {
    let attempt = attempts_before + 1;
    let class = outcome_class(&f.result);
    ctx.metrics
        .attempts
        .get_or_create(&crate::metrics::AttemptLabel {
            channel: f.channel.clone(),
            outcome: class,
        })
        .inc();
    match &f.result {
        FinishResult::Submitted { refs, .. } => {
            tracing::debug!(delivery_id = %f.id, channel = %f.channel, attempt, parts = refs.len(), "submitted")
        }
        FinishResult::Attempted {
            outcome,
            error,
            next,
            ..
        } => tracing::warn!(
            delivery_id = %f.id, channel = %f.channel, attempt, outcome = outcome.as_str(),
            next = next.as_str(), error = %error, "send failed"
        ),
        FinishResult::NotAttempted { error, .. } => {
            tracing::info!(delivery_id = %f.id, channel = %f.channel, error = %error, "send deferred")
        }
        FinishResult::Expired => {
            tracing::info!(delivery_id = %f.id, channel = %f.channel, "expired before sending")
        }
    }
    if let Err(e) = ctx.store.finish(f).await {
        tracing::error!(error = %e, "cannot record a send outcome");
    }
}

/// Feed receipts from every driver into the store; each is acknowledged to its driver once
/// committed.
pub async fn run_receipts(store: Store, mut rx: mpsc::Receiver<DurableReceipt>) {
    while let Some(DurableReceipt { receipt: r, stored }) = rx.recv().await {
        tracing::debug!(channel = %r.channel, status = ?r.status, "receipt");
        let at = (r.received_at.unix_timestamp_nanos() / 1_000_000) as i64;
        let receipt = ReceiptIn {
            channel: r.channel.as_str().to_owned(),
            provider_ref: r.provider_ref,
            status: r.status,
            error_code: r.error_code,
            at,
        };
        if store.receipt_acked(receipt, Some(stored)).await.is_err() {
            break;
        }
    }
}

/// Time-driven transitions, every `every`.
pub async fn run_maintenance(
    store: Store,
    cfg: DeliveryConfig,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
        let params = SweepParams {
            now: now_ms(),
            in_doubt_resend: cfg.in_doubt_action == InDoubtAction::Resend,
            max_attempts: cfg.max_attempts,
        };
        match store.sweep(params).await {
            Ok(r) if r != Default::default() => tracing::info!(
                expired = r.expired,
                in_doubt_resent = r.in_doubt_resent,
                in_doubt_failed = r.in_doubt_failed,
                receipts_timed_out = r.receipts_timed_out,
                "maintenance"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "maintenance failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let cfg = DeliveryConfig::default();
        let b0 = backoff(&cfg, 0);
        let b3 = backoff(&cfg, 3);
        let b30 = backoff(&cfg, 30);
        assert!((1600..=2400).contains(&b0), "{b0}");
        assert!((12_800..=19_200).contains(&b3), "{b3}");
        assert!(b30 <= 360_000, "{b30}");
    }

    #[test]
    fn outcome_classes_are_a_closed_set() {
        use crate::metrics::ATTEMPT_OUTCOMES;
        use crate::store::AttemptOutcome;
        let mut results = vec![
            FinishResult::Submitted {
                refs: vec!["1".into()],
                receipt_timeout_ms: None,
            },
            FinishResult::NotAttempted {
                error: "throttled by the peer".into(),
                next_attempt_at: 0,
            },
            FinishResult::NotAttempted {
                error: "channel unavailable: not bound".into(),
                next_attempt_at: 0,
            },
            FinishResult::Expired,
        ];
        for outcome in [
            AttemptOutcome::Transient,
            AttemptOutcome::Permanent,
            AttemptOutcome::InDoubt,
        ] {
            results.push(FinishResult::Attempted {
                outcome,
                error: "free text from the peer 4921773055614410".into(),
                next: State::Failed,
                next_attempt_at: 0,
            });
        }
        let classes: std::collections::BTreeSet<_> = results.iter().map(outcome_class).collect();
        let all: std::collections::BTreeSet<_> = ATTEMPT_OUTCOMES.into_iter().collect();
        assert_eq!(classes, all);
    }

    #[test]
    fn expiry_text() {
        let ms = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(
            format_expiry(ms, time::UtcOffset::UTC),
            "2026-12-01 00:00 UTC"
        );
        let jst = time::UtcOffset::from_hms(9, 0, 0).unwrap();
        assert_eq!(format_expiry(ms, jst), "2026-12-01 09:00 +09:00");
    }
}
