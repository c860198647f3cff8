//! Durable delivery storage on SQLite (WAL).
//!
//! Layout:
//! - [`model`] — the delivery state enum and the rows the rest of the daemon sees.
//! - [`writer`] — one OS thread owns the write connection and applies operations in
//!   batches, one transaction (one fsync) per batch: group commit. An enqueue is answered
//!   only after the commit that holds it, so `202` means "on disk".
//! - [`refs`] — normalisation of provider references for receipt correlation.
//! - this file: the [`Store`] handle, migrations and the read side (a small pool of
//!   read-only connections; WAL lets them read while the writer commits).

pub mod admin;
pub mod model;
mod pg;
pub mod refs;
mod writer;

pub use pg::PgSettings;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::Durability;
pub use model::*;
use writer::Op;

const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_deliveries",
        include_str!("../../migrations/sqlite/0001_deliveries.sql"),
    ),
    (
        "0002_subscribers_and_plans",
        include_str!("../../migrations/sqlite/0002_subscribers_and_plans.sql"),
    ),
    (
        "0003_vouchers_ledger_callbacks",
        include_str!("../../migrations/sqlite/0003_vouchers_ledger_callbacks.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("storage {path}: {message}")]
    Open { path: String, message: String },
    #[error("the storage writer has stopped")]
    Closed,
    #[error("the storage schema is version {found}, newer than this pinpost ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("database: {0}")]
    Pg(String),
    #[error("{0} needs the SQLite storage backend")]
    Unsupported(&'static str),
}

/// Cheap handle on the database: the embedded SQLite database, or a PostgreSQL queue
/// shared with other nodes.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

enum Inner {
    Sqlite(Sqlite),
    Postgres(Arc<pg::PgQueue>),
}

struct Sqlite {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    wake: Arc<Wakers>,
}

/// One [`Notify`] per channel, poked after a commit that made work due on it.
#[derive(Default)]
pub struct Wakers {
    map: Mutex<std::collections::HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    pub fn get(&self, channel: &str) -> Arc<Notify> {
        let mut m = self.map.lock().expect("wakers lock");
        m.entry(channel.to_owned()).or_default().clone()
    }
    fn poke(&self, channel: &str) {
        let m = self.map.lock().expect("wakers lock");
        if let Some(n) = m.get(channel) {
            n.notify_one();
        }
    }
    fn poke_all(&self) {
        let m = self.map.lock().expect("wakers lock");
        for n in m.values() {
            n.notify_one();
        }
    }
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

/// Apply pending migrations. Returns the schema version.
pub fn migrate(path: &Path) -> Result<i64, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let mut conn = open_conn(path, false)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: format!("migration {name}: {e}"),
        })?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = name, "applied migration");
    }
    Ok(known)
}

impl Store {
    /// Migrate, then start the writer thread.
    pub fn open(
        path: &Path,
        durability: Durability,
        plans: PlanSettings,
    ) -> Result<Store, StoreError> {
        migrate(path)?;
        let conn = open_conn(path, false)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", -8192)?;
        // Keep each cached statement's plan when its bound values change: the claim binds
        // a different LIMIT on nearly every call, and without this SQLite re-prepares it.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )?;
        let wake = Arc::new(Wakers::default());
        let (tx, rx) = mpsc::channel(16 * 1024);
        let w = writer::Writer::new(conn, wake.clone(), Arc::new(plans))?;
        std::thread::Builder::new()
            .name("pinpost-db-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(Store {
            inner: Arc::new(Inner::Sqlite(Sqlite {
                tx,
                path: path.to_owned(),
                readers: Mutex::new(Vec::new()),
                wake,
            })),
        })
    }

    /// Connect to PostgreSQL, migrate, and start this node's lease heartbeat and
    /// notification listener (both stop with `stop`).
    pub async fn open_postgres(
        settings: &PgSettings,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Store, StoreError> {
        Self::open_postgres_with(settings, stop, true).await
    }

    async fn open_postgres_with(
        settings: &PgSettings,
        stop: tokio_util::sync::CancellationToken,
        heartbeat: bool,
    ) -> Result<Store, StoreError> {
        let wake = Arc::new(Wakers::default());
        let q = Arc::new(pg::PgQueue::open(settings, wake).await?);
        q.spawn_listener(stop.clone());
        q.spawn_batcher();
        q.spawn_announcer();
        if heartbeat {
            q.spawn_heartbeat(stop);
        }
        Ok(Store {
            inner: Arc::new(Inner::Postgres(q)),
        })
    }

    /// Which backend this is: "sqlite" or "postgres".
    pub fn backend(&self) -> &'static str {
        match &*self.inner {
            Inner::Sqlite(_) => "sqlite",
            Inner::Postgres(_) => "postgres",
        }
    }

    /// This node's name in leases (PostgreSQL only).
    pub fn node(&self) -> Option<&str> {
        match &*self.inner {
            Inner::Sqlite(_) => None,
            Inner::Postgres(q) => Some(q.node()),
        }
    }

    fn sqlite(&self, what: &'static str) -> Result<&Sqlite, StoreError> {
        match &*self.inner {
            Inner::Sqlite(s) => Ok(s),
            Inner::Postgres(_) => Err(StoreError::Unsupported(what)),
        }
    }

    pub fn wakers(&self) -> Arc<Wakers> {
        match &*self.inner {
            Inner::Sqlite(s) => s.wake.clone(),
            Inner::Postgres(q) => q.wakers(),
        }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, StoreError> {
        let s = self.sqlite("this operation")?;
        let (tx, rx) = oneshot::channel();
        s.tx.send(make(tx)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// Store a new delivery with its idempotency record; answers after the commit.
    pub async fn enqueue(&self, new: NewDelivery) -> Result<EnqueueOutcome, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.enqueue(&new).await;
        }
        self.call(|reply| Op::Enqueue {
            new: Box::new(new),
            reply,
        })
        .await?
    }

    /// Store a voucher together with its delivery; answers after the commit.
    pub async fn issue_voucher(
        &self,
        voucher: crate::vouchers::NewVoucher,
        delivery: NewDelivery,
    ) -> Result<crate::vouchers::IssueOutcome, StoreError> {
        self.sqlite("issuing vouchers")?;
        self.call(|reply| Op::IssueVoucher {
            voucher: Box::new(voucher),
            delivery: Box::new(delivery),
            reply,
        })
        .await?
    }

    /// The delivery an idempotency key already created: (fingerprint, delivery id).
    pub async fn idempotent_delivery(
        &self,
        client: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.idempotent_delivery(client, key).await;
        }
        let (client, key) = (client.to_owned(), key.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT fingerprint, delivery_id FROM idempotency WHERE client = ?1 AND key = ?2",
            )?
            .query_row(params![client, key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
        })
        .await
    }

    /// Mark up to `limit` due deliveries of `channel` as sending and return them.
    pub async fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.claim(channel, limit, now).await;
        }
        self.call(|reply| Op::Claim {
            channel: channel.to_owned(),
            limit,
            now,
            reply,
        })
        .await?
    }

    /// Record how a send ended (fire and forget; ordered with everything else).
    pub async fn finish(&self, f: Finish) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(q) => return q.finish_batched(f).await,
        };
        s.tx.send(Op::Finish(Box::new(f)))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Apply a receipt (fire and forget).
    pub async fn receipt(&self, r: ReceiptIn) -> Result<(), StoreError> {
        self.receipt_acked(r, None).await
    }

    /// Apply a receipt; `stored` is fired once the transaction holding it has committed.
    pub async fn receipt_acked(
        &self,
        r: ReceiptIn,
        stored: Option<oneshot::Sender<()>>,
    ) -> Result<(), StoreError> {
        let s = match &*self.inner {
            Inner::Sqlite(s) => s,
            Inner::Postgres(q) => return q.receipt_acked(r, stored).await,
        };
        s.tx.send(Op::Receipt(Box::new(r), stored))
            .await
            .map_err(|_| StoreError::Closed)
    }

    pub async fn cancel(&self, id: &str, now: i64) -> Result<CancelOutcome, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.cancel(id, now).await;
        }
        self.call(|reply| Op::Cancel {
            id: id.to_owned(),
            now,
            reply,
        })
        .await?
    }

    /// Time-driven transitions: expiry, in-doubt reconciliation, receipt timeouts.
    pub async fn sweep(&self, s: SweepParams) -> Result<SweepReport, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.sweep(s).await;
        }
        self.call(|reply| Op::Sweep { params: s, reply }).await?
    }

    /// After a restart: deliveries left `sending` by a dead process are in doubt. On
    /// PostgreSQL these are the ones this node's name still holds and every lease that ran
    /// out; other live nodes' sends are left alone.
    pub async fn recover(&self, now: i64, in_doubt_after_ms: i64) -> Result<usize, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.recover(now, in_doubt_after_ms).await;
        }
        self.call(|reply| Op::Recover {
            now,
            in_doubt_after_ms,
            reply,
        })
        .await?
    }

    /// Return claimed but unsent deliveries to the queue (on shutdown).
    pub async fn release(&self, ids: Vec<String>, now: i64) -> Result<(), StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.release(&ids, now).await;
        }
        self.call(|reply| Op::Release { ids, now, reply }).await?
    }

    /// Wait until everything sent to the writer before this call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        match &*self.inner {
            Inner::Sqlite(_) => self.call(|reply| Op::Flush { reply }).await,
            Inner::Postgres(q) => q.flush().await,
        }
    }

    /// Run `f` in the writer's next transaction; its answer comes after the commit.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.sqlite("this operation")?;
        let (tx, rx) = oneshot::channel();
        let op = Op::Call(Box::new(move |conn: &Connection| {
            let r = f(conn);
            (r.is_ok(), writer::defer(tx, r))
        }));
        s.tx.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Run `f` on a read-only connection.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.sqlite("this operation")?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let Inner::Sqlite(s) = &*inner else {
                return Err(StoreError::Closed);
            };
            let conn = s.readers.lock().expect("reader pool").pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&s.path, true)?,
            };
            let out = f(&conn);
            let mut pool = s.readers.lock().expect("reader pool");
            if pool.len() < 4 {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    pub async fn get(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.get(id).await;
        }
        let id = id.to_owned();
        self.read(move |c| read_delivery(c, &id)).await
    }

    /// The earliest `next_attempt_at` of work waiting on `channel`.
    pub async fn next_due(&self, channel: &str) -> Result<Option<i64>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.next_due(channel).await;
        }
        let channel = channel.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT min(next_attempt_at) FROM deliveries
                 WHERE channel = ?1 AND state IN ('queued', 'retry_wait')",
                params![channel],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    /// Counts per state (for tests, tools and readiness).
    pub async fn counts(&self) -> Result<Vec<(State, i64)>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.counts().await;
        }
        self.read(|c| {
            let mut st = c.prepare("SELECT state, count(*) FROM deliveries GROUP BY state")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (s, n) = row?;
                if let Some(s) = State::parse(&s) {
                    out.push((s, n));
                }
            }
            Ok(out)
        })
        .await
    }
}

impl Store {
    /// Deliveries in `sending`, by the node holding them ("" on SQLite, which has one).
    pub async fn leases(&self) -> Result<Vec<(String, i64)>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.leases().await;
        }
        let n = self
            .counts()
            .await?
            .into_iter()
            .find(|(s, _)| *s == State::Sending)
            .map_or(0, |(_, n)| n);
        Ok(if n > 0 {
            vec![(String::new(), n)]
        } else {
            Vec::new()
        })
    }

    /// How many nodes share the queue: on PostgreSQL those whose heartbeat ran within
    /// `window_ms` before `now`, this one included; the embedded database has one.
    pub async fn live_nodes(&self, now: i64, window_ms: i64) -> Result<usize, StoreError> {
        match &*self.inner {
            Inner::Postgres(q) => q.live_nodes(now - window_ms).await,
            Inner::Sqlite(_) => Ok(1),
        }
    }

    /// Tell the other nodes this one stopped cleanly (PostgreSQL; nothing on SQLite).
    pub async fn leave(&self) -> Result<(), StoreError> {
        match &*self.inner {
            Inner::Postgres(q) => q.leave().await,
            Inner::Sqlite(_) => Ok(()),
        }
    }

    /// (msisdn, created_at) of every delivery created at or after `since`.
    pub async fn created_since(&self, since: i64) -> Result<Vec<(String, i64)>, StoreError> {
        if let Inner::Postgres(q) = &*self.inner {
            return q.created_since(since).await;
        }
        self.read(move |c| {
            // Delivery ids are UUIDv7: their text order is their creation order.
            let floor = uuid_v7_floor(since);
            let mut st = c.prepare("SELECT msisdn, created_at FROM deliveries WHERE id >= ?1")?;
            let rows = st.query_map([floor], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// The smallest UUIDv7 text created at or after `ms` (for range scans over v7 ids).
pub fn uuid_v7_floor(ms: i64) -> String {
    let h = format!("{:012x}", ms.max(0) as u64 & 0xffff_ffff_ffff);
    format!("{}-{}-0000-0000-000000000000", &h[..8], &h[8..])
}

fn read_delivery(c: &Connection, id: &str) -> Result<Option<DeliveryView>, StoreError> {
    let mut st = c.prepare_cached(
        "SELECT id, msisdn, channel, state, amount_value, amount_currency, payee, expires_at,
                attempts, last_error, final, created_at, updated_at, client
         FROM deliveries WHERE id = ?1",
    )?;
    let d = st
        .query_row(params![id], |r| {
            Ok(DeliveryView {
                id: r.get(0)?,
                msisdn: r.get(1)?,
                channel: r.get(2)?,
                state: State::parse(&r.get::<_, String>(3)?).unwrap_or(State::Failed),
                amount_value: r.get(4)?,
                amount_currency: r.get(5)?,
                payee: r.get(6)?,
                expires_at: r.get(7)?,
                attempt_count: r.get(8)?,
                last_error: r.get(9)?,
                is_final: r.get::<_, i64>(10)? != 0,
                created_at: r.get(11)?,
                updated_at: r.get(12)?,
                client: r.get(13)?,
                attempts: Vec::new(),
                steps: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut d) = d else { return Ok(None) };
    let mut st = c.prepare_cached(
        "SELECT seq, channel, started_at, finished_at, outcome, provider_ref, error, step
         FROM attempts WHERE delivery_id = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map(params![id], |r| {
        Ok(AttemptView {
            seq: r.get(0)?,
            channel: r.get(1)?,
            started_at: r.get(2)?,
            finished_at: r.get(3)?,
            outcome: r.get(4)?,
            provider_ref: r.get(5)?,
            error: r.get(6)?,
            step: r.get(7)?,
        })
    })?;
    for a in rows {
        d.attempts.push(a?);
    }
    let mut st = c.prepare_cached(
        "SELECT step, kind, address, channel, outcome, reason, started_at, ended_at
         FROM delivery_steps WHERE delivery_id = ?1 ORDER BY step",
    )?;
    let rows = st.query_map(params![id], |r| {
        Ok(StepView {
            step: r.get(0)?,
            kind: r.get(1)?,
            address: r.get(2)?,
            channel: r.get(3)?,
            outcome: r.get(4)?,
            reason: r.get(5)?,
            started_at: r.get(6)?,
            ended_at: r.get(7)?,
        })
    })?;
    for s in rows {
        d.steps.push(s?);
    }
    Ok(Some(d))
}

#[cfg(test)]
impl Store {
    /// Renew this node's leases as of `now` (PostgreSQL; the daemon does it on a timer).
    pub(crate) async fn heartbeat(&self, now: i64) -> Result<u64, StoreError> {
        match &*self.inner {
            Inner::Sqlite(_) => Ok(0),
            Inner::Postgres(q) => q.heartbeat(now).await,
        }
    }

    /// The stored PIN ciphertext's length, if any is left.
    pub(crate) async fn pin_ct_len(&self, id: &str) -> Result<Option<usize>, StoreError> {
        match &*self.inner {
            Inner::Sqlite(_) => {
                let id = id.to_owned();
                self.read(move |c| {
                    Ok(c.query_row(
                        "SELECT length(pin_ct) FROM deliveries WHERE id = ?1",
                        [id],
                        |r| r.get::<_, Option<i64>>(0),
                    )?
                    .map(|n| n as usize))
                })
                .await
            }
            Inner::Postgres(q) => q.pin_ct_len(id).await,
        }
    }
}

#[cfg(test)]
mod tests;
