//! Reads for operators: queue depth per channel (metrics and the console), delivery lookup
//! by id or number, recent failures.
//!
//! None of these reads selects `pin_ct`: the rows they return cannot carry a PIN, not even
//! sealed. Lookups by number and the failure list scan the id range of a recent window
//! (ids are UUIDv7, so their text order is their creation order), which bounds their cost
//! on a large table.

use std::collections::BTreeMap;
use std::sync::Arc;

use rusqlite::{OptionalExtension, Row, params};

use super::writer::Op;
use super::{Inner, State, Store, StoreError, uuid_v7_floor};

/// The deliveries of one channel, by state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChannelQueue {
    pub by_state: BTreeMap<&'static str, i64>,
    /// `queued` and `retry_wait`.
    pub waiting: i64,
    /// Of those, the ones whose next attempt time has passed.
    pub due: i64,
}

/// One delivery as the console lists it. No PIN, sealed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: String,
    pub msisdn: String,
    pub channel: String,
    pub state: State,
    pub is_final: bool,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub(super) const ROW_COLUMNS: &str =
    "id, msisdn, channel, state, final, attempts, last_error, created_at, updated_at";

fn delivery_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        msisdn: r.get(1)?,
        channel: r.get(2)?,
        state: State::parse(&r.get::<_, String>(3)?).unwrap_or(State::Failed),
        is_final: r.get::<_, i64>(4)? != 0,
        attempts: r.get(5)?,
        last_error: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

impl Store {
    /// Let the writer observe receipt latencies (`pinpost_submit_to_receipt_seconds`).
    pub async fn attach_metrics(
        &self,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<(), StoreError> {
        match &*self.inner {
            Inner::Sqlite(s) => {
                s.tx.send(Op::UseMetrics(metrics))
                    .await
                    .map_err(|_| StoreError::Closed)
            }
            Inner::Postgres(q) => {
                q.use_metrics(metrics);
                Ok(())
            }
        }
    }

    /// Deliveries per channel and state, with the waiting and due counts, at `now`.
    pub async fn queue_overview(
        &self,
        now: i64,
    ) -> Result<BTreeMap<String, ChannelQueue>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.queue_overview(now).await;
        }
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT channel, state, count(*),
                        sum(state IN ('queued', 'retry_wait') AND next_attempt_at <= ?1)
                 FROM deliveries GROUP BY channel, state",
            )?;
            let rows = st.query_map(params![now], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                ))
            })?;
            let mut out: BTreeMap<String, ChannelQueue> = BTreeMap::new();
            for row in rows {
                let (channel, state, n, due) = row?;
                let Some(state) = State::parse(&state) else {
                    continue;
                };
                let q = out.entry(channel).or_default();
                q.by_state.insert(state.as_str(), n);
                if matches!(state, State::Queued | State::RetryWait) {
                    q.waiting += n;
                    q.due += due;
                }
            }
            Ok(out)
        })
        .await
    }

    /// One delivery by id.
    pub async fn delivery_row(&self, id: &str) -> Result<Option<DeliveryRow>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.delivery_row(id).await;
        }
        let id = id.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM deliveries WHERE id = ?1"
            ))?
            .query_row(params![id], delivery_row)
            .optional()?)
        })
        .await
    }

    /// The latest `limit` deliveries to `msisdn` created at or after `since` (newest first).
    pub async fn deliveries_to(
        &self,
        msisdn: &str,
        since: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.deliveries_to(msisdn, since, limit).await;
        }
        let msisdn = msisdn.to_owned();
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM deliveries
                 WHERE id >= ?1 AND msisdn = ?2 ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = st.query_map(
                params![uuid_v7_floor(since), msisdn, limit as i64],
                delivery_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The latest `limit` deliveries created at or after `since` that ended `failed` or
    /// `expired`, the most recently changed first.
    pub async fn recent_failures(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.recent_failures(since, limit).await;
        }
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM deliveries
                 WHERE id >= ?1 AND state IN ('failed', 'expired')
                 ORDER BY updated_at DESC, id DESC LIMIT ?2"
            ))?;
            let rows = st.query_map(params![uuid_v7_floor(since), limit as i64], delivery_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FinishResult, NewDelivery, PlanSettings};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("t.db"),
            crate::config::Durability::Normal,
            PlanSettings::default(),
        )
        .unwrap();
        (dir, store)
    }

    fn new(id: &str, msisdn: &str, channel: &str, now: i64) -> NewDelivery {
        NewDelivery {
            id: id.into(),
            msisdn: msisdn.into(),
            channel: channel.into(),
            pin_ct: vec![1, 2, 3],
            amount_value: None,
            amount_currency: None,
            payee: None,
            expires_at: None,
            now,
            client: "c".into(),
            idempotency_key: id.into(),
            fingerprint: [0; 32],
            callback_url: None,
        }
    }

    #[tokio::test]
    async fn overview_lookup_and_failures() {
        let (_dir, store) = open();
        let now = 1_800_000_000_000;
        let ids: Vec<String> = (0..4)
            .map(|i| {
                let floor = uuid_v7_floor(now + i);
                format!("{}{}", &floor[..floor.len() - 1], i + 1)
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            let channel = if i == 3 { "mail" } else { "sms" };
            store
                .enqueue(new(id, "+819012345678", channel, now + i as i64))
                .await
                .unwrap();
        }
        // One sms delivery claimed and failed for good.
        let claimed = store.claim("sms", 1, now + 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].created_at, now);
        store
            .finish(crate::store::Finish {
                id: claimed[0].id.clone(),
                channel: "sms".into(),
                started_at: now + 10,
                finished_at: now + 11,
                result: FinishResult::Attempted {
                    outcome: crate::store::AttemptOutcome::Permanent,
                    error: "rejected".into(),
                    next: State::Failed,
                    next_attempt_at: now + 11,
                },
            })
            .await
            .unwrap();
        store.flush().await.unwrap();

        let q = store.queue_overview(now + 2).await.unwrap();
        let sms = &q["sms"];
        assert_eq!(sms.by_state.get("failed"), Some(&1));
        assert_eq!(sms.by_state.get("queued"), Some(&2));
        assert_eq!(sms.waiting, 2);
        // The queued ones were created at now+1 and now+2: both due at now+2.
        assert_eq!(sms.due, 2);
        assert_eq!(store.queue_overview(now + 1).await.unwrap()["sms"].due, 1);
        assert_eq!(q["mail"].waiting, 1);

        let rows = store
            .deliveries_to("+819012345678", now - 1000, 3)
            .await
            .unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(got, [ids[3].as_str(), ids[2].as_str(), ids[1].as_str()]);
        assert!(
            store
                .deliveries_to("+819012345678", now + 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .deliveries_to("+819099999999", now - 1000, 10)
                .await
                .unwrap()
                .is_empty()
        );

        let failures = store.recent_failures(now - 1000, 10).await.unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].id, ids[0]);
        assert_eq!(failures[0].state, State::Failed);
        assert_eq!(failures[0].last_error.as_deref(), Some("rejected"));
        assert!(failures[0].is_final);

        let one = store.delivery_row(&ids[3]).await.unwrap().unwrap();
        assert_eq!(one.channel, "mail");
        assert_eq!(one.state, State::Queued);
        assert!(store.delivery_row("nope").await.unwrap().is_none());
    }
}
