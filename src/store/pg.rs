//! The delivery queue on PostgreSQL, shared by several nodes.
//!
//! Same operations and state machine as the SQLite writer, with what several processes on
//! one database need:
//! - **Claims** take due rows with `FOR UPDATE SKIP LOCKED`, so nodes never wait for each
//!   other and never claim the same delivery; each claimed row carries a **lease**
//!   (`lease_owner`, `lease_until`).
//! - A **heartbeat** renews this node's leases every third of the lease time.
//! - The **rescuer** (part of the sweep, one node at a time under an advisory lock) puts
//!   deliveries whose lease ran out in doubt: their node died mid-send, so whether the peer
//!   got them is unknown, exactly as after a crash of a single node.
//! - **Receipts** correlate through the shared tables, so a receipt that arrives on another
//!   node's bind still lands. A receipt and the submit outcome naming the same reference
//!   serialise on a transaction-scoped advisory lock per reference, so an early receipt is
//!   never missed by a concurrent submit outcome.
//! - **Wake-ups**: enqueues and returns to the queue `NOTIFY pinpost_due` with the channel;
//!   every node listens and pokes its dispatcher. Dispatchers still poll for due retries, so
//!   a lost notification (or a lost listener connection) only delays work.
//!
//! Every operation commits before it answers. Deadlocks and serialisation failures are
//! retried. Subscriber plans are not kept on this backend: a delivery goes to the msisdn
//! over its channel (the implicit plan).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use super::model::*;
use super::refs;
use super::writer::IDEMPOTENCY_TTL_MS;
use super::{StoreError, Wakers};

const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_queue",
    include_str!("../../migrations/postgres/0001_queue.sql"),
)];

/// Advisory lock ids (the first key space of `pg_advisory_*`).
const MIGRATE_LOCK: i64 = 0x7069_6e70_6f73_7401;
const SWEEP_LOCK: i64 = 0x7069_6e70_6f73_7402;
const NOTIFY_CHANNEL: &str = "pinpost_due";
const EARLY_RECEIPT_TTL_MS: i64 = 3_600_000;
/// Tries of one operation that hit a deadlock or a serialisation failure.
const TRIES: usize = 5;

/// Settings of a PostgreSQL queue.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub pool_size: usize,
    pub lease_ms: i64,
    /// This node's name in leases.
    pub node: String,
}

pub(super) struct PgQueue {
    pool: Pool,
    config: tokio_postgres::Config,
    node: String,
    lease_ms: i64,
    /// How long a rescued delivery waits in doubt (set by `recover` at start).
    in_doubt_after_ms: AtomicI64,
    wake: Arc<Wakers>,
    /// Send outcomes, receipts and flushes for the batch writer.
    batch: tokio::sync::mpsc::Sender<Batched>,
    batch_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Batched>>>,
    /// Batch writers at work (each holds a permit while it applies a batch).
    writers: Arc<tokio::sync::Semaphore>,
    announce: tokio::sync::mpsc::UnboundedSender<String>,
    announce_rx: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

/// Most operations one batch transaction holds.
const MAX_BATCH: usize = 512;
/// Batch transactions in flight at once: each statement is a round trip, so one writer
/// would spend most of its time waiting on the network.
const WRITERS: usize = 4;

/// What the batch writer applies: many in one transaction, one commit.
enum Batched {
    Finish(
        Box<Finish>,
        tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    ),
    Receipt(Box<ReceiptIn>, Option<tokio::sync::oneshot::Sender<()>>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What one batched operation did.
enum Done {
    /// A send outcome; true when the lease had already gone to another node.
    Finish(bool),
    /// A receipt; when it ended an attempt, when that attempt was sent.
    Receipt(Option<i64>),
    Flush,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Pg(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pg(format!("connection pool: {e}"))
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// Run `$body` (an async block using `$tx`) in a transaction, retrying deadlocks.
macro_rules! in_tx {
    ($self:ident, |$tx:ident| $body:block) => {{
        let mut client = $self.pool.get().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let txn = client.transaction().await?;
            let $tx = &txn;
            let r: Result<_, tokio_postgres::Error> = async { $body }.await;
            let r = match r {
                Ok(v) => txn.commit().await.map(|()| v),
                Err(e) => Err(e),
            };
            match r {
                Err(e) if retryable(&e) && tries < TRIES => continue,
                other => break other.map_err(StoreError::from),
            }
        }
    }};
}

/// A transaction-scoped lock id for a provider reference on a channel.
fn ref_lock(channel: &str, key: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(channel.as_bytes());
    h.update([0x1f]);
    h.update(key.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The lock ids covering every way `raw` can be looked up (see `refs`), sorted.
fn ref_locks<'a>(channel: &str, raws: impl IntoIterator<Item = &'a str>) -> Vec<i64> {
    let mut ids = Vec::new();
    for raw in raws {
        ids.push(ref_lock(channel, &refs::key(raw)));
        if let Some(d) = refs::hex_as_decimal(raw) {
            ids.push(ref_lock(channel, &d));
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl PgQueue {
    /// Connect, migrate and start the notification listener.
    pub(super) async fn open(s: &PgSettings, wake: Arc<Wakers>) -> Result<PgQueue, StoreError> {
        let config: tokio_postgres::Config = s
            .url
            .parse()
            .map_err(|_| StoreError::Pg("not a valid PostgreSQL connection URL".into()))?;
        let mgr = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(s.pool_size)
            .build()
            .map_err(|e| StoreError::Pg(e.to_string()))?;
        let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(16 * 1024);
        let (announce_tx, announce_rx) = tokio::sync::mpsc::unbounded_channel();
        let q = PgQueue {
            pool,
            config,
            node: s.node.clone(),
            lease_ms: s.lease_ms,
            in_doubt_after_ms: AtomicI64::new(60_000),
            wake,
            batch: batch_tx,
            batch_rx: std::sync::Mutex::new(Some(batch_rx)),
            writers: Arc::new(tokio::sync::Semaphore::new(WRITERS)),
            announce: announce_tx,
            announce_rx: std::sync::Mutex::new(Some(announce_rx)),
            metrics: std::sync::OnceLock::new(),
        };
        q.migrate().await?;
        Ok(q)
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn wakers(&self) -> Arc<Wakers> {
        self.wake.clone()
    }

    /// Wait until every send outcome and receipt handed over before this call is committed.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batch
            .send(Batched::Flush(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Record a send outcome; answers after the commit of the batch that holds it.
    pub(super) async fn finish_batched(&self, f: Finish) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.batch
            .send(Batched::Finish(Box::new(f), tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Apply a receipt in the next batch; `stored` fires once it is committed.
    pub(super) async fn receipt_acked(
        &self,
        r: ReceiptIn,
        stored: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        self.batch
            .send(Batched::Receipt(Box::new(r), stored))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Start the batch writer: send outcomes and receipts waiting at the same time share
    /// one transaction and one commit (group commit, as on SQLite).
    pub(super) fn spawn_batcher(self: &Arc<Self>) {
        let Some(rx) = self.batch_rx.lock().expect("batch receiver").take() else {
            return;
        };
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            let (q, rx) = (self.clone(), rx.clone());
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_BATCH);
                loop {
                    let permit = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        batch.push(first);
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(op) => batch.push(op),
                                Err(_) => break,
                            }
                        }
                        // Taken before the next batch can be: a flush waits for this one.
                        let Ok(permit) = q.writers.clone().acquire_owned().await else {
                            return;
                        };
                        permit
                    };
                    let flushes = q.apply_batch(&mut batch).await;
                    drop(permit);
                    if !flushes.is_empty() {
                        // A flush answers once every batch taken before it has committed.
                        let all = q.writers.acquire_many(WRITERS as u32).await;
                        for f in flushes {
                            let _ = f.send(());
                        }
                        drop(all);
                    }
                }
            });
        }
    }

    /// Apply a batch; returns its flush markers, answered by the caller.
    async fn apply_batch(&self, batch: &mut Vec<Batched>) -> Vec<tokio::sync::oneshot::Sender<()>> {
        let mut flushes = Vec::new();
        // Every reference lock the batch needs, taken first and in one order.
        let mut locks: Vec<i64> = batch.iter().flat_map(op_locks).collect();
        locks.sort_unstable();
        locks.dedup();
        let ops: &Vec<Batched> = batch;
        let groups = independent_groups(ops);
        let node = self.node.as_str();
        let applied: Result<Vec<Done>, StoreError> = async {
            in_tx!(self, |tx| {
                lock_all(tx, &locks).await?;
                // Operations on different references run pipelined on the connection; those
                // sharing a reference run in their order.
                let runs = groups.iter().map(|idxs| async move {
                    let mut out = Vec::with_capacity(idxs.len());
                    for &i in idxs {
                        out.push((i, apply_one(tx, &ops[i], node).await?));
                    }
                    Ok::<_, tokio_postgres::Error>(out)
                });
                let mut done: Vec<(usize, Done)> = futures::future::try_join_all(runs)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                done.sort_by_key(|(i, _)| *i);
                Ok(done.into_iter().map(|(_, d)| d).collect::<Vec<_>>())
            })
        }
        .await;
        match applied {
            Ok(done) => {
                for (op, d) in batch.drain(..).zip(done) {
                    match (op, d) {
                        (Batched::Finish(f, reply), Done::Finish(late)) => {
                            if late {
                                warn_late(&f);
                            }
                            let _ = reply.send(Ok(()));
                        }
                        (Batched::Receipt(r, stored), Done::Receipt(sent_at)) => {
                            self.observe_receipt(&r, sent_at);
                            if let Some(tx) = stored {
                                let _ = tx.send(());
                            }
                        }
                        (Batched::Flush(reply), _) => flushes.push(reply),
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // One operation spoiled the batch: apply each in its own transaction.
                tracing::warn!(error = %e, ops = batch.len(), "a batch failed; applying its operations one by one");
                for op in batch.drain(..) {
                    match op {
                        Batched::Finish(f, reply) => {
                            let r = self.finish(&f).await;
                            if let Err(e) = &r {
                                tracing::error!(delivery_id = %f.id, error = %e, "cannot record a send outcome");
                            }
                            let _ = reply.send(r);
                        }
                        Batched::Receipt(r, stored) => match self.receipt(&r).await {
                            Ok(()) => {
                                if let Some(tx) = stored {
                                    let _ = tx.send(());
                                }
                            }
                            // Not acknowledged: the peer sends it again.
                            Err(e) => {
                                tracing::error!(channel = %r.channel, error = %e, "cannot apply a receipt")
                            }
                        },
                        Batched::Flush(reply) => flushes.push(reply),
                    }
                }
            }
        }
        flushes
    }

    fn observe_receipt(&self, r: &ReceiptIn, sent_at: Option<i64>) {
        if let (Some(m), Some(sent_at)) = (self.metrics.get(), sent_at) {
            crate::metrics::Metrics::observe_ms(&m.submit_to_receipt, &r.channel, r.at - sent_at);
        }
    }

    pub(super) async fn idempotent_delivery(
        &self,
        client: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT fingerprint, delivery_id FROM idempotency WHERE client = $1 AND key = $2",
            &[&client, &key],
        )
        .await?
        .map(|r| (r.get(0), r.get(1))))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        in_tx!(self, |tx| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS pinpost_migrations (
                    version    BIGINT PRIMARY KEY,
                    name       TEXT NOT NULL,
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
            let done: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM pinpost_migrations",
                    &[],
                )
                .await?
                .get(0);
            Ok(done)
        })
        .and_then(|done| {
            let known = MIGRATIONS.len() as i64;
            if done > known {
                Err(StoreError::TooNew { found: done, known })
            } else {
                Ok(())
            }
        })?;
        for (i, (name, sql)) in MIGRATIONS.iter().enumerate() {
            let version = (i + 1) as i64;
            let applied = in_tx!(self, |tx| {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
                    .await?;
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM pinpost_migrations WHERE version = $1",
                        &[&version],
                    )
                    .await?
                    .is_some();
                if !exists {
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO pinpost_migrations (version, name) VALUES ($1, $2)",
                        &[&version, name],
                    )
                    .await?;
                }
                Ok(!exists)
            })
            .map_err(|e| StoreError::Open {
                path: "postgres".into(),
                message: format!("migration {name}: {e}"),
            })?;
            if applied {
                tracing::info!(migration = name, "applied PostgreSQL migration");
            }
        }
        Ok(())
    }

    /// Listen for `pinpost_due` and poke the local dispatchers; reconnects until `stop`.
    pub(super) fn spawn_listener(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let q = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = q.listen_once() => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "PostgreSQL notification listener lost; dispatchers poll meanwhile");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        })
    }

    async fn listen_once(&self) -> Result<(), StoreError> {
        use futures::StreamExt;
        let (client, mut conn) = self.config.connect(NoTls).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(StoreError::from(e)),
                }
            }
            Ok(())
        });
        client
            .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .await?;
        // Work that became due while no listener ran.
        self.wake.poke_all();
        while let Some(channel) = rx.recv().await {
            self.wake.poke(&channel);
        }
        drop(client);
        driver
            .await
            .map_err(|_| StoreError::Pg("listener task failed".into()))?
    }

    /// Renew this node's leases; runs every third of the lease until `stop`.
    pub(super) fn spawn_heartbeat(
        self: &Arc<Self>,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let q = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis((q.lease_ms / 3).max(100) as u64);
            loop {
                if let Err(e) = q.heartbeat(crate::now_ms()).await {
                    tracing::warn!(error = %e, "cannot renew delivery leases");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    }

    pub(super) async fn heartbeat(&self, now: i64) -> Result<u64, StoreError> {
        let until = now + self.lease_ms;
        in_tx!(self, |tx| {
            tx.execute(
                "INSERT INTO nodes (name, started_at, seen_at) VALUES ($1, $2, $2)
                 ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                &[&self.node, &now],
            )
            .await?;
            tx.execute(
                "UPDATE deliveries SET lease_until = GREATEST(lease_until, $2)
                 WHERE lease_owner = $1 AND state = 'sending'",
                &[&self.node, &until],
            )
            .await
        })
    }

    pub(super) async fn enqueue(&self, n: &NewDelivery) -> Result<EnqueueOutcome, StoreError> {
        // One statement, so one round trip and its own transaction: the delivery is stored
        // only when its idempotency record was new.
        let c = self.pool.get().await?;
        let st = c
            .prepare_cached(
                "WITH idem AS (
                    INSERT INTO idempotency (client, key, fingerprint, delivery_id, created_at)
                    VALUES ($10, $12, $13, $1, $9) ON CONFLICT (client, key) DO NOTHING
                    RETURNING delivery_id)
                 INSERT INTO deliveries (id, msisdn, channel, state, pin_ct, amount_value,
                    amount_currency, payee, expires_at, attempts, next_attempt_at, created_at,
                    updated_at, client, callback_url)
                 SELECT $1, $2, $3, 'queued', $4, $5, $6, $7, $8, 0, $9, $9, $9, $10, $11
                 FROM idem",
            )
            .await?;
        let inserted = c
            .execute(
                &st,
                &[
                    &n.id,
                    &n.msisdn,
                    &n.channel,
                    &n.pin_ct,
                    &n.amount_value,
                    &n.amount_currency,
                    &n.payee,
                    &n.expires_at,
                    &n.now,
                    &n.client,
                    &n.callback_url,
                    &n.idempotency_key,
                    &n.fingerprint.as_slice(),
                ],
            )
            .await?;
        if inserted == 0 {
            let row = c
                .query_one(
                    "SELECT fingerprint, delivery_id FROM idempotency
                     WHERE client = $1 AND key = $2",
                    &[&n.client, &n.idempotency_key],
                )
                .await?;
            let fp: Vec<u8> = row.get(0);
            let id: String = row.get(1);
            return Ok(if fp.as_slice() == n.fingerprint.as_slice() {
                EnqueueOutcome::Replay { id }
            } else {
                EnqueueOutcome::Conflict
            });
        }
        self.wake.poke(&n.channel);
        self.announce(&n.channel);
        Ok(EnqueueOutcome::Created { id: n.id.clone() })
    }

    /// Tell the other nodes that work is due on `channel`. Notifications are coalesced and
    /// sent outside the enqueue's transaction: a NOTIFY in every commit would serialise
    /// the commits of all nodes on the notification queue's lock.
    fn announce(&self, channel: &str) {
        let _ = self.announce.send(channel.to_owned());
    }

    pub(super) fn spawn_announcer(self: &Arc<Self>) {
        let Some(mut rx) = self.announce_rx.lock().expect("announce receiver").take() else {
            return;
        };
        let q = self.clone();
        tokio::spawn(async move {
            let mut pending = std::collections::BTreeSet::new();
            while let Some(ch) = rx.recv().await {
                pending.insert(ch);
                while let Ok(ch) = rx.try_recv() {
                    pending.insert(ch);
                }
                let Ok(c) = q.pool.get().await else {
                    pending.clear();
                    continue;
                };
                for ch in std::mem::take(&mut pending) {
                    if let Err(e) = c
                        .execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, &ch])
                        .await
                    {
                        tracing::debug!(error = %e, "cannot notify other nodes; they poll");
                    }
                }
                drop(c);
                // At most one round of notifications per 5 ms.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    pub(super) async fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let limit = limit as i64;
        let until = now + self.lease_ms;
        let c = self.pool.get().await?;
        let tx = &c;
        {
            let st = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 'sending', updated_at = $3, lease_owner = $4,
                        lease_until = $5
                     WHERE id IN (SELECT id FROM deliveries
                                  WHERE channel = $1 AND state IN ('queued', 'retry_wait')
                                    AND next_attempt_at <= $3
                                  ORDER BY next_attempt_at LIMIT $2
                                  FOR UPDATE SKIP LOCKED)
                     RETURNING id, coalesce(address, msisdn), pin_ct, amount_value,
                               amount_currency, payee, expires_at, step_attempts, created_at",
                )
                .await?;
            let rows = tx
                .query(&st, &[&channel, &limit, &now, &self.node, &until])
                .await?;
            Ok::<_, StoreError>(
                rows.iter()
                    .map(|r| Claimed {
                        id: r.get(0),
                        address: r.get(1),
                        pin_ct: r.get(2),
                        amount_value: r.get(3),
                        amount_currency: r.get(4),
                        payee: r.get(5),
                        expires_at: r.get(6),
                        attempts: r.get::<_, i64>(7) as u32,
                        created_at: r.get(8),
                    })
                    .collect::<Vec<_>>(),
            )
        }
    }

    pub(super) async fn finish(&self, f: &Finish) -> Result<(), StoreError> {
        let late = in_tx!(self, |tx| { finish_in(tx, f, &self.node).await })?;
        if late {
            warn_late(f);
        }
        Ok(())
    }

    pub(super) async fn receipt(&self, r: &ReceiptIn) -> Result<(), StoreError> {
        if !r.status.is_final() {
            return Ok(());
        }
        let sent_at = in_tx!(self, |tx| {
            lock_all(tx, &ref_locks(&r.channel, [r.provider_ref.as_str()])).await?;
            apply_receipt(tx, r).await
        })?;
        self.observe_receipt(r, sent_at);
        Ok(())
    }

    pub(super) fn use_metrics(&self, m: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(m);
    }

    pub(super) async fn queue_overview(
        &self,
        now: i64,
    ) -> Result<std::collections::BTreeMap<String, super::admin::ChannelQueue>, StoreError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT channel, state, count(*),
                        count(*) FILTER (WHERE state IN ('queued', 'retry_wait')
                                           AND next_attempt_at <= $1)
                 FROM deliveries GROUP BY channel, state",
                &[&now],
            )
            .await?;
        let mut out: std::collections::BTreeMap<String, super::admin::ChannelQueue> =
            Default::default();
        for r in rows {
            let Some(state) = State::parse(r.get::<_, &str>(1)) else {
                continue;
            };
            let (n, due): (i64, i64) = (r.get(2), r.get(3));
            let q = out.entry(r.get(0)).or_default();
            q.by_state.insert(state.as_str(), n);
            if matches!(state, State::Queued | State::RetryWait) {
                q.waiting += n;
                q.due += due;
            }
        }
        Ok(out)
    }

    pub(super) async fn delivery_row(
        &self,
        id: &str,
    ) -> Result<Option<super::admin::DeliveryRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {} FROM deliveries WHERE id = $1",
            super::admin::ROW_COLUMNS
        );
        Ok(c.query_opt(&sql, &[&id]).await?.map(|r| delivery_row(&r)))
    }

    pub(super) async fn deliveries_to(
        &self,
        msisdn: &str,
        since: i64,
        limit: usize,
    ) -> Result<Vec<super::admin::DeliveryRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {} FROM deliveries WHERE msisdn = $1 AND created_at >= $2
             ORDER BY created_at DESC, id DESC LIMIT $3",
            super::admin::ROW_COLUMNS
        );
        Ok(c.query(&sql, &[&msisdn, &since, &(limit as i64)])
            .await?
            .iter()
            .map(delivery_row)
            .collect())
    }

    pub(super) async fn recent_failures(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<super::admin::DeliveryRow>, StoreError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "SELECT {} FROM deliveries WHERE id >= $1 AND state IN ('failed', 'expired')
             ORDER BY updated_at DESC, id DESC LIMIT $2",
            super::admin::ROW_COLUMNS
        );
        Ok(
            c.query(&sql, &[&super::uuid_v7_floor(since), &(limit as i64)])
                .await?
                .iter()
                .map(delivery_row)
                .collect(),
        )
    }

    pub(super) async fn cancel(&self, id: &str, now: i64) -> Result<CancelOutcome, StoreError> {
        in_tx!(self, |tx| {
            let n = tx
                .execute(
                    "UPDATE deliveries SET state = 'cancelled', final = TRUE, pin_ct = NULL,
                        updated_at = $2
                     WHERE id = $1 AND state IN ('queued', 'retry_wait')",
                    &[&id, &now],
                )
                .await?;
            if n > 0 {
                return Ok(CancelOutcome::Cancelled);
            }
            let row = tx
                .query_opt("SELECT state FROM deliveries WHERE id = $1", &[&id])
                .await?;
            Ok(match row.and_then(|r| State::parse(r.get::<_, &str>(0))) {
                None => CancelOutcome::NotFound,
                Some(s) => CancelOutcome::Conflict(s),
            })
        })
    }

    pub(super) async fn sweep(&self, p: SweepParams) -> Result<SweepReport, StoreError> {
        let in_doubt_after = self.in_doubt_after_ms.load(Ordering::Relaxed);
        let (rep, pokes) = in_tx!(self, |tx| { sweep_in(tx, p, in_doubt_after).await })?;
        for ch in pokes {
            self.wake.poke(&ch);
        }
        Ok(rep)
    }

    /// At start: remember the in-doubt delay, and put in doubt what this node's name still
    /// holds (it died before) and every lease that ran out.
    pub(super) async fn recover(
        &self,
        now: i64,
        in_doubt_after_ms: i64,
    ) -> Result<usize, StoreError> {
        self.in_doubt_after_ms
            .store(in_doubt_after_ms, Ordering::Relaxed);
        in_tx!(self, |tx| {
            rescue(tx, now, in_doubt_after_ms, Some(&self.node)).await
        })
    }

    pub(super) async fn release(&self, ids: &[String], now: i64) -> Result<(), StoreError> {
        let chans = in_tx!(self, |tx| {
            let rows = tx
                .query(
                    "UPDATE deliveries SET state = 'queued', updated_at = $2, lease_owner = NULL,
                        lease_until = NULL
                     WHERE id = ANY($1) AND state = 'sending' AND lease_owner = $3
                     RETURNING channel",
                    &[&ids, &now, &self.node],
                )
                .await?;
            let mut chans: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            chans.sort();
            chans.dedup();
            for ch in &chans {
                tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, ch])
                    .await?;
            }
            Ok(chans)
        })?;
        for ch in chans {
            self.wake.poke(&ch);
        }
        Ok(())
    }

    pub(super) async fn get(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT id, msisdn, channel, state, amount_value, amount_currency, payee,
                    expires_at, attempts, last_error, final, created_at, updated_at, client
                 FROM deliveries WHERE id = $1",
                &[&id],
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        let mut d = DeliveryView {
            id: r.get(0),
            msisdn: r.get(1),
            channel: r.get(2),
            state: State::parse(r.get::<_, &str>(3)).unwrap_or(State::Failed),
            amount_value: r.get(4),
            amount_currency: r.get(5),
            payee: r.get(6),
            expires_at: r.get(7),
            attempt_count: r.get(8),
            last_error: r.get(9),
            is_final: r.get(10),
            created_at: r.get(11),
            updated_at: r.get(12),
            client: r.get(13),
            attempts: Vec::new(),
            steps: Vec::new(),
        };
        for a in c
            .query(
                "SELECT seq, channel, started_at, finished_at, outcome, provider_ref, error, step
                 FROM attempts WHERE delivery_id = $1 ORDER BY seq",
                &[&id],
            )
            .await?
        {
            d.attempts.push(AttemptView {
                seq: a.get(0),
                channel: a.get(1),
                started_at: a.get(2),
                finished_at: a.get(3),
                outcome: a.get(4),
                provider_ref: a.get(5),
                error: a.get(6),
                step: a.get(7),
            });
        }
        Ok(Some(d))
    }

    pub(super) async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query_one(
            "SELECT min(next_attempt_at) FROM deliveries
             WHERE channel = $1 AND state IN ('queued', 'retry_wait')",
            &[&channel],
        )
        .await?
        .get(0))
    }

    pub(super) async fn counts(&self) -> Result<Vec<(State, i64)>, StoreError> {
        let c = self.pool.get().await?;
        Ok(
            c.query("SELECT state, count(*) FROM deliveries GROUP BY state", &[])
                .await?
                .iter()
                .filter_map(|r| State::parse(r.get::<_, &str>(0)).map(|s| (s, r.get(1))))
                .collect(),
        )
    }

    /// Deliveries some node holds in `sending`, by node (for tools and tests).
    pub(super) async fn leases(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT coalesce(lease_owner, ''), count(*) FROM deliveries
                 WHERE state = 'sending' GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }

    /// Nodes whose heartbeat ran at or after `since`, this node always included.
    pub(super) async fn live_nodes(&self, since: i64) -> Result<usize, StoreError> {
        let c = self.pool.get().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM nodes WHERE seen_at >= $1 OR name = $2",
                &[&since, &self.node],
            )
            .await?
            .get(0);
        Ok((n as usize).max(1))
    }

    /// A clean stop: this node no longer counts as live, so the others take its share of
    /// any shared budget at once rather than after a lease time.
    pub(super) async fn leave(&self) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE nodes SET seen_at = 0 WHERE name = $1",
            &[&self.node],
        )
        .await?;
        Ok(())
    }

    /// Recent deliveries to `msisdn`, newest first (for caps seeding and lookups).
    pub(super) async fn created_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.pool.get().await?;
        Ok(c.query(
            "SELECT msisdn, created_at FROM deliveries WHERE created_at >= $1",
            &[&since],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
    }
}

#[cfg(test)]
impl PgQueue {
    pub(super) async fn pin_ct_len(&self, id: &str) -> Result<Option<usize>, StoreError> {
        let c = self.pool.get().await?;
        let row = c
            .query_one(
                "SELECT length(pin_ct) FROM deliveries WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.get::<_, Option<i32>>(0).map(|n| n as usize))
    }
}

/// Take transaction-scoped advisory locks on `ids` (sorted), in one round trip.
async fn lock_all(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        "SELECT count(pg_advisory_xact_lock(id))
         FROM (SELECT id FROM unnest($1::BIGINT[]) AS id ORDER BY id) AS ids",
        &[&ids],
    )
    .await?;
    Ok(())
}

async fn apply_one(
    tx: &deadpool_postgres::Transaction<'_>,
    op: &Batched,
    node: &str,
) -> Result<Done, tokio_postgres::Error> {
    Ok(match op {
        Batched::Finish(f, _) => Done::Finish(finish_in(tx, f, node).await?),
        Batched::Receipt(r, _) if r.status.is_final() => Done::Receipt(apply_receipt(tx, r).await?),
        Batched::Receipt(..) => Done::Receipt(None),
        Batched::Flush(_) => Done::Flush,
    })
}

/// The reference locks one batched operation needs.
fn op_locks(op: &Batched) -> Vec<i64> {
    match op {
        Batched::Finish(f, _) => match &f.result {
            FinishResult::Submitted {
                refs,
                receipt_timeout_ms: Some(_),
            } => ref_locks(&f.channel, refs.iter().map(String::as_str)),
            _ => Vec::new(),
        },
        Batched::Receipt(r, _) if r.status.is_final() => {
            ref_locks(&r.channel, [r.provider_ref.as_str()])
        }
        _ => Vec::new(),
    }
}

/// Indices of `ops` in groups: operations sharing a reference lock share a group (in batch
/// order); different groups touch different references.
fn independent_groups(ops: &[Batched]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = (0..ops.len()).collect();
    fn root(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    let mut owner: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        for id in op_locks(op) {
            match owner.get(&id) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
                None => {
                    owner.insert(id, i);
                }
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for i in 0..ops.len() {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}

fn warn_late(f: &Finish) {
    tracing::warn!(
        delivery_id = %f.id,
        channel = %f.channel,
        "a send finished after this node's lease on it ran out; the outcome is not recorded"
    );
}

fn delivery_row(r: &tokio_postgres::Row) -> super::admin::DeliveryRow {
    super::admin::DeliveryRow {
        id: r.get(0),
        msisdn: r.get(1),
        channel: r.get(2),
        state: State::parse(r.get::<_, &str>(3)).unwrap_or(State::Failed),
        is_final: r.get(4),
        attempts: r.get(5),
        last_error: r.get(6),
        created_at: r.get(7),
        updated_at: r.get(8),
    }
}

/// Put in doubt the sends whose lease ran out, and those held by `own` (this node's name,
/// left over from before a restart). Returns how many.
async fn rescue(
    tx: &deadpool_postgres::Transaction<'_>,
    now: i64,
    in_doubt_after_ms: i64,
    own: Option<&str>,
) -> Result<usize, tokio_postgres::Error> {
    let rows = tx
        .query(
            "UPDATE deliveries SET state = 'in_doubt', attempts = attempts + 1,
                step_attempts = step_attempts + 1, next_attempt_at = $1 + $2, updated_at = $1,
                last_error = 'the node sending it stopped while the send was in flight',
                lease_owner = NULL, lease_until = NULL
             WHERE state = 'sending' AND (lease_until < $1 OR lease_owner = $3)
             RETURNING id, channel, attempts, step",
            &[&now, &in_doubt_after_ms, &own],
        )
        .await?;
    for r in &rows {
        let (id, channel, seq, step): (&str, &str, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        insert_attempt(
            tx,
            id,
            seq,
            channel,
            now,
            Some(now),
            "in_doubt",
            None,
            Some("the node sending it stopped while the send was in flight"),
            step,
        )
        .await?;
    }
    if !rows.is_empty() {
        tracing::warn!(
            count = rows.len(),
            "deliveries of a stopped node are now in doubt"
        );
    }
    Ok(rows.len())
}

#[allow(clippy::too_many_arguments)]
async fn insert_attempt(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &str,
    seq: i64,
    channel: &str,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: &str,
    provider_ref: Option<&str>,
    error: Option<&str>,
    step: i64,
) -> Result<(), tokio_postgres::Error> {
    let st = tx
        .prepare_cached(
            "INSERT INTO attempts
                (delivery_id, seq, channel, started_at, finished_at, outcome, provider_ref, error, step)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (delivery_id, seq) DO UPDATE SET channel = excluded.channel,
                started_at = excluded.started_at, finished_at = excluded.finished_at,
                outcome = excluded.outcome, provider_ref = excluded.provider_ref,
                error = excluded.error, step = excluded.step",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &id,
            &seq,
            &channel,
            &started_at,
            &finished_at,
            &outcome,
            &provider_ref,
            &error,
            &step,
        ],
    )
    .await?;
    Ok(())
}

/// Record a send outcome. Returns true when the delivery was no longer leased to `node`.
async fn finish_in(
    tx: &deadpool_postgres::Transaction<'_>,
    f: &Finish,
    node: &str,
) -> Result<bool, tokio_postgres::Error> {
    match &f.result {
        FinishResult::Submitted {
            refs: provider_refs,
            receipt_timeout_ms,
        } => {
            // Take the reference locks before the row lock, in the order receipts take them.
            if receipt_timeout_ms.is_some() {
                let ids = ref_locks(&f.channel, provider_refs.iter().map(String::as_str));
                lock_all(tx, &ids).await?;
            }
            let is_final = receipt_timeout_ms.is_none();
            let st = tx
                .prepare_cached(
                    "UPDATE deliveries SET state = 'submitted', attempts = attempts + 1,
                        step_attempts = step_attempts + 1,
                        receipt_due = CASE WHEN $2::BIGINT IS NULL THEN NULL
                            ELSE $4 + LEAST($2::BIGINT, coalesce(step_timeout_ms, $2::BIGINT)) END,
                        final = $3,
                        pin_ct = CASE WHEN $3 THEN NULL ELSE pin_ct END,
                        last_error = NULL, updated_at = $4, lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND state = 'sending' AND lease_owner = $5
                     RETURNING attempts, step",
                )
                .await?;
            let Some(row) = tx
                .query_opt(
                    &st,
                    &[&f.id, receipt_timeout_ms, &is_final, &f.finished_at, &node],
                )
                .await?
            else {
                return Ok(true);
            };
            let (seq, step): (i64, i64) = (row.get(0), row.get(1));
            let joined = provider_refs.join(",");
            insert_attempt(
                tx,
                &f.id,
                seq,
                &f.channel,
                f.started_at,
                None,
                "submitted",
                Some(&joined),
                None,
                step,
            )
            .await?;
            if is_final {
                return Ok(false);
            }
            let st = tx
                .prepare_cached(
                    "INSERT INTO message_parts (channel, ref_key, alt_key, delivery_id, attempt_seq)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await?;
            for r in provider_refs {
                tx.execute(
                    &st,
                    &[
                        &f.channel,
                        &refs::key(r),
                        &refs::hex_as_decimal(r),
                        &f.id,
                        &seq,
                    ],
                )
                .await?;
            }
            for r in provider_refs {
                take_early_receipt(tx, &f.channel, r).await?;
            }
            Ok(false)
        }
        FinishResult::Attempted {
            outcome,
            error,
            next,
            next_attempt_at,
        } => {
            let terminal = next.is_terminal();
            let st = tx
                .prepare_cached(
                    "UPDATE deliveries SET attempts = attempts + 1,
                        step_attempts = step_attempts + 1, last_error = $2, updated_at = $3,
                        state = $4, next_attempt_at = $5, final = $6,
                        pin_ct = CASE WHEN $6 THEN NULL ELSE pin_ct END,
                        lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND state = 'sending' AND lease_owner = $7
                     RETURNING attempts, step",
                )
                .await?;
            let Some(row) = tx
                .query_opt(
                    &st,
                    &[
                        &f.id,
                        error,
                        &f.finished_at,
                        &next.as_str(),
                        next_attempt_at,
                        &terminal,
                        &node,
                    ],
                )
                .await?
            else {
                return Ok(true);
            };
            insert_attempt(
                tx,
                &f.id,
                row.get(0),
                &f.channel,
                f.started_at,
                Some(f.finished_at),
                outcome.as_str(),
                None,
                Some(error),
                row.get(1),
            )
            .await?;
            Ok(false)
        }
        FinishResult::NotAttempted {
            error,
            next_attempt_at,
        } => {
            let n = tx
                .execute(
                    "UPDATE deliveries SET state = 'queued', next_attempt_at = $2, last_error = $3,
                        updated_at = $4, lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND state = 'sending' AND lease_owner = $5",
                    &[&f.id, next_attempt_at, error, &f.finished_at, &node],
                )
                .await?;
            Ok(n == 0)
        }
        FinishResult::Expired => {
            let n = tx
                .execute(
                    "UPDATE deliveries SET state = 'expired', final = TRUE, pin_ct = NULL,
                        last_error = 'the PIN expired before it could be sent', updated_at = $2,
                        lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND state = 'sending' AND lease_owner = $3",
                    &[&f.id, &f.finished_at, &node],
                )
                .await?;
            Ok(n == 0)
        }
    }
}

/// The part a receipt speaks of: exact key, then hex read as decimal either way.
async fn find_part(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    raw: &str,
) -> Result<Option<(i64, String, i64)>, tokio_postgres::Error> {
    let k = refs::key(raw);
    let by = |col: &'static str| {
        format!(
            "SELECT part_id, delivery_id, attempt_seq FROM message_parts
             WHERE channel = $1 AND {col} = $2 AND status IS NULL
             ORDER BY part_id DESC LIMIT 1"
        )
    };
    let mut keys = vec![("ref_key", k.clone()), ("alt_key", k)];
    if let Some(dec) = refs::hex_as_decimal(raw) {
        keys.push(("ref_key", dec));
    }
    for (col, key) in keys {
        let st = tx.prepare_cached(&by(col)).await?;
        if let Some(r) = tx.query_opt(&st, &[&channel, &key]).await? {
            return Ok(Some((r.get(0), r.get(1), r.get(2))));
        }
    }
    Ok(None)
}

/// Apply a final receipt; the caller holds its reference locks.
/// Returns when the finished attempt was sent, when this receipt ended it.
async fn apply_receipt(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &ReceiptIn,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let Some((part_id, delivery_id, seq)) = find_part(tx, &r.channel, &r.provider_ref).await?
    else {
        tx.execute(
            "INSERT INTO early_receipts (channel, ref_key, alt_key, status, error_code, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &r.channel,
                &refs::key(&r.provider_ref),
                &refs::hex_as_decimal(&r.provider_ref),
                &part_status(r.status),
                &r.error_code,
                &r.at,
            ],
        )
        .await?;
        return Ok(None);
    };
    // One receipt at a time per delivery: the parts of one message may land on two nodes.
    let open = tx
        .query_opt(
            "SELECT 1 FROM deliveries WHERE id = $1 AND state = 'submitted' AND NOT final
             FOR UPDATE",
            &[&delivery_id],
        )
        .await?
        .is_some();
    tx.execute(
        "UPDATE message_parts SET status = $2 WHERE part_id = $1",
        &[&part_id, &part_status(r.status)],
    )
    .await?;
    if !open {
        return Ok(None);
    }
    let counts = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE status IS NULL),
                    count(*) FILTER (WHERE status = 'delivered'),
                    count(*) FILTER (WHERE status = 'unknown')
             FROM message_parts WHERE delivery_id = $1 AND attempt_seq = $2",
            &[&delivery_id, &seq],
        )
        .await?;
    let (pending, delivered, unknown): (i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2));
    let Some((state, outcome, error)) = receipt_verdict(r, pending, delivered, unknown) else {
        return Ok(None);
    };
    let sent_at: Option<i64> = tx
        .query_opt(
            "UPDATE attempts SET outcome = $3, finished_at = $4, error = $5
             WHERE delivery_id = $1 AND seq = $2 RETURNING started_at",
            &[&delivery_id, &seq, &outcome, &r.at, &error],
        )
        .await?
        .map(|row| row.get(0));
    tx.execute(
        "DELETE FROM message_parts WHERE delivery_id = $1",
        &[&delivery_id],
    )
    .await?;
    tx.execute(
        "UPDATE deliveries SET state = $2, final = TRUE, pin_ct = NULL, receipt_due = NULL,
            last_error = $3, updated_at = $4
         WHERE id = $1",
        &[&delivery_id, &state.as_str(), &error, &r.at],
    )
    .await?;
    Ok(sent_at)
}

async fn take_early_receipt(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    raw: &str,
) -> Result<(), tokio_postgres::Error> {
    let k = refs::key(raw);
    let alt = refs::hex_as_decimal(raw);
    let Some(row) = tx
        .query_opt(
            "DELETE FROM early_receipts WHERE receipt_id = (
                SELECT receipt_id FROM early_receipts
                WHERE channel = $1 AND (ref_key = $2 OR alt_key = $2 OR ref_key = $3)
                ORDER BY receipt_id LIMIT 1)
             RETURNING status, error_code, received_at",
            &[&channel, &k, &alt],
        )
        .await?
    else {
        return Ok(());
    };
    let receipt = ReceiptIn {
        channel: channel.to_owned(),
        provider_ref: raw.to_owned(),
        status: status_from_part(row.get(0)),
        error_code: row.get(1),
        at: row.get(2),
    };
    Box::pin(apply_receipt(tx, &receipt)).await.map(|_| ())
}

/// The time-driven transitions; only one node sweeps at a time. Returns the channels with
/// work made due.
async fn sweep_in(
    tx: &deadpool_postgres::Transaction<'_>,
    p: SweepParams,
    in_doubt_after_ms: i64,
) -> Result<(SweepReport, Vec<String>), tokio_postgres::Error> {
    let mut pokes = Vec::new();
    let got: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&SWEEP_LOCK])
        .await?
        .get(0);
    if !got {
        return Ok((SweepReport::default(), pokes));
    }
    let now = p.now;
    rescue(tx, now, in_doubt_after_ms, None).await?;
    let mut rep = SweepReport {
        expired: tx
            .execute(
                "UPDATE deliveries SET state = 'expired', final = TRUE, pin_ct = NULL,
                    updated_at = $1, last_error = 'the PIN expired before delivery'
                 WHERE state IN ('queued', 'retry_wait', 'in_doubt') AND expires_at <= $1",
                &[&now],
            )
            .await? as usize,
        ..SweepReport::default()
    };
    if p.in_doubt_resend {
        let max = i64::from(p.max_attempts);
        let rows = tx
            .query(
                "UPDATE deliveries SET state = 'queued', updated_at = $1
                 WHERE state = 'in_doubt' AND next_attempt_at <= $1 AND step_attempts < $2
                 RETURNING channel",
                &[&now, &max],
            )
            .await?;
        rep.in_doubt_resent = rows.len();
        pokes.extend(rows.iter().map(|r| r.get::<_, String>(0)));
        pokes.sort();
        pokes.dedup();
        for ch in &pokes {
            tx.execute("SELECT pg_notify($1, $2)", &[&NOTIFY_CHANNEL, ch])
                .await?;
        }
    }
    rep.in_doubt_failed = tx
        .execute(
            "UPDATE deliveries SET state = 'failed', final = TRUE, pin_ct = NULL, updated_at = $1,
                last_error = 'outcome of the last send unknown; not resent'
             WHERE state = 'in_doubt' AND next_attempt_at <= $1",
            &[&now],
        )
        .await? as usize;
    let timed_out = tx
        .query(
            "UPDATE deliveries SET receipt_due = NULL, updated_at = $1, final = TRUE,
                pin_ct = NULL,
                last_error = 'no receipt within the receipt timeout; outcome unknown'
             WHERE receipt_due IS NOT NULL AND receipt_due <= $1
             RETURNING id, attempts",
            &[&now],
        )
        .await?;
    for r in &timed_out {
        let (id, seq): (&str, i64) = (r.get(0), r.get(1));
        tx.execute(
            "UPDATE attempts SET outcome = 'unknown', finished_at = $3,
                error = 'no receipt within the step or receipt timeout'
             WHERE delivery_id = $1 AND seq = $2 AND outcome = 'submitted'",
            &[&id, &seq, &now],
        )
        .await?;
        tx.execute("DELETE FROM message_parts WHERE delivery_id = $1", &[&id])
            .await?;
    }
    rep.receipts_timed_out = timed_out.len();
    tx.execute(
        "DELETE FROM early_receipts WHERE received_at < $1",
        &[&(now - EARLY_RECEIPT_TTL_MS)],
    )
    .await?;
    rep.idempotency_purged = tx
        .execute(
            "DELETE FROM idempotency WHERE (client, key) IN
                (SELECT client, key FROM idempotency WHERE created_at < $1 LIMIT 10000)",
            &[&(now - IDEMPOTENCY_TTL_MS)],
        )
        .await? as usize;
    Ok((rep, pokes))
}

/// Throwaway PostgreSQL schemas for tests: `PINPOST_TEST_POSTGRES` (default the local
/// server's `test` database) must be reachable, or the test fails.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) fn base_url() -> String {
        std::env::var("PINPOST_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// Drops its schema when dropped.
    pub(crate) struct Schema {
        pub name: String,
    }

    impl Schema {
        pub(crate) async fn create() -> Schema {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let (client, conn) = base_url()
                .parse::<tokio_postgres::Config>()
                .unwrap()
                .connect(NoTls)
                .await
                .expect("PostgreSQL for the tests (PINPOST_TEST_POSTGRES)");
            let driver = tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA {name}"))
                .await
                .unwrap();
            drop(client);
            let _ = driver.await;
            Schema { name }
        }

        pub(crate) fn url(&self) -> String {
            let sep = if base_url().contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-csearch_path%3D{}", base_url(), self.name)
        }

        pub(crate) async fn store(&self, node: &str) -> super::super::Store {
            let settings = PgSettings {
                url: self.url(),
                pool_size: 4,
                lease_ms: 30_000,
                node: node.into(),
            };
            // Tests renew leases themselves, at the times they choose.
            super::super::Store::open_postgres_with(
                &settings,
                tokio_util::sync::CancellationToken::new(),
                false,
            )
            .await
            .unwrap()
        }
    }

    impl Drop for Schema {
        fn drop(&mut self) {
            let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name);
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok((client, conn)) = base_url()
                        .parse::<tokio_postgres::Config>()
                        .unwrap()
                        .connect(NoTls)
                        .await
                    {
                        let driver = tokio::spawn(conn);
                        let _ = client.batch_execute(&sql).await;
                        drop(client);
                        let _ = driver.await;
                    }
                });
            })
            .join();
        }
    }

    pub(crate) async fn open() -> (Schema, super::super::Store) {
        let schema = Schema::create().await;
        let store = schema.store("node-a").await;
        (schema, store)
    }
}
