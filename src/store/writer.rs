//! The writer thread: every change to the database goes through here.
//!
//! It takes whatever operations are waiting (up to [`MAX_BATCH`]), applies each inside its
//! own savepoint (a failing operation does not take the others down), commits once, and
//! only then answers. Under load one fsync covers hundreds of enqueues, claims, outcomes
//! and receipts; when idle a single enqueue commits alone.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::model::*;
use super::refs;
use super::{StoreError, Wakers};

const MAX_BATCH: usize = 4096;
/// Receipts nobody claimed within this time are dropped.
const EARLY_RECEIPT_TTL_MS: i64 = 3_600_000;
/// Idempotency records are kept this long.
pub(super) const IDEMPOTENCY_TTL_MS: i64 = 7 * 86_400_000;

pub(super) enum Op {
    Enqueue {
        new: Box<NewDelivery>,
        reply: oneshot::Sender<Result<EnqueueOutcome, StoreError>>,
    },
    /// A voucher and its delivery, in one savepoint.
    IssueVoucher {
        voucher: Box<crate::vouchers::NewVoucher>,
        delivery: Box<NewDelivery>,
        reply: oneshot::Sender<Result<crate::vouchers::IssueOutcome, StoreError>>,
    },
    Claim {
        channel: String,
        limit: usize,
        now: i64,
        reply: oneshot::Sender<Result<Vec<Claimed>, StoreError>>,
    },
    Finish(Box<Finish>),
    /// A receipt; the sender, if any, is fired once it is committed.
    Receipt(Box<ReceiptIn>, Option<oneshot::Sender<()>>),
    Cancel {
        id: String,
        now: i64,
        reply: oneshot::Sender<Result<CancelOutcome, StoreError>>,
    },
    Sweep {
        params: SweepParams,
        reply: oneshot::Sender<Result<SweepReport, StoreError>>,
    },
    Recover {
        now: i64,
        in_doubt_after_ms: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Release {
        ids: Vec<String>,
        now: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// Any other change (registry writes): runs in the batch's transaction, answers after
    /// the commit. The bool says whether it succeeded (its savepoint is kept).
    Call(Box<CallFn>),
    /// Observe receipt latencies into these metrics from now on.
    UseMetrics(Arc<crate::metrics::Metrics>),
}

/// A write run by [`Op::Call`]: whether it succeeded, and its answer.
pub(super) type CallFn = dyn FnOnce(&Connection) -> (bool, Deferred) + Send;

/// An answer held back until the batch commits.
pub(super) type Deferred = Box<dyn FnOnce(Option<&str>) + Send>;

pub(super) fn defer<T: Send + 'static>(
    reply: oneshot::Sender<Result<T, StoreError>>,
    value: Result<T, StoreError>,
) -> Deferred {
    Box::new(move |commit_error: Option<&str>| {
        let v = match commit_error {
            None => value,
            Some(e) => Err(StoreError::Open {
                path: "commit".into(),
                message: e.to_owned(),
            }),
        };
        let _ = reply.send(v);
    })
}

/// One row of `attempts`.
struct Attempt<'a> {
    id: &'a str,
    seq: i64,
    channel: &'a str,
    started_at: i64,
    finished_at: Option<i64>,
    outcome: &'a str,
    provider_ref: Option<&'a str>,
    error: Option<&'a str>,
    step: i64,
}

pub(super) struct Writer {
    conn: Connection,
    wake: Arc<Wakers>,
    early_receipts: i64,
    plans: Arc<PlanSettings>,
    /// Channels whose dispatcher is poked after the current batch commits.
    pokes: Vec<String>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        wake: Arc<Wakers>,
        plans: Arc<PlanSettings>,
    ) -> Result<Writer, StoreError> {
        let early_receipts =
            conn.query_row("SELECT count(*) FROM early_receipts", [], |r| r.get(0))?;
        Ok(Writer {
            conn,
            wake,
            early_receipts,
            plans,
            pokes: Vec::new(),
            metrics: None,
        })
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.apply_batch(&mut batch);
        }
        tracing::debug!("storage writer stopped");
    }

    fn apply_batch(&mut self, batch: &mut Vec<Op>) {
        let mut deferred: Vec<Deferred> = Vec::with_capacity(batch.len());
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "cannot begin a transaction");
            let msg = e.to_string();
            for op in batch.drain(..) {
                fail_op(op, &msg);
            }
            return;
        }
        for op in batch.drain(..) {
            self.apply(op, &mut deferred);
        }
        let commit = self.conn.execute_batch("COMMIT");
        let err = match &commit {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch is lost and its callers are told");
                let _ = self.conn.execute_batch("ROLLBACK");
                Some(e.to_string())
            }
        };
        for d in deferred {
            d(err.as_deref());
        }
        if err.is_some() {
            self.pokes.clear();
        } else {
            let mut pokes = std::mem::take(&mut self.pokes);
            pokes.sort();
            pokes.dedup();
            for ch in pokes {
                self.wake.poke(&ch);
            }
        }
    }

    /// Run `f` inside a savepoint; on error roll just it back.
    fn savepoint<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.prepare_cached("SAVEPOINT op")?.execute([])?;
        match f(self) {
            Ok(v) => {
                self.conn.prepare_cached("RELEASE op")?.execute([])?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                Err(e)
            }
        }
    }

    fn apply(&mut self, op: Op, deferred: &mut Vec<Deferred>) {
        match op {
            Op::Enqueue { new, reply } => {
                let r = self.savepoint(|w| w.enqueue(&new));
                if matches!(r, Ok(EnqueueOutcome::Created { .. })) {
                    self.pokes.push(new.channel.clone());
                }
                deferred.push(defer(reply, r));
            }
            Op::IssueVoucher {
                voucher,
                delivery,
                reply,
            } => {
                let r = self.savepoint(|w| w.issue_voucher(&voucher, &delivery));
                if matches!(r, Ok(crate::vouchers::IssueOutcome::Created { .. })) {
                    self.pokes.push(delivery.channel.clone());
                }
                deferred.push(defer(reply, r));
            }
            Op::Claim {
                channel,
                limit,
                now,
                reply,
            } => {
                let r = self.savepoint(|w| w.claim(&channel, limit, now));
                deferred.push(defer(reply, r));
            }
            Op::Finish(f) => {
                if let Err(e) = self.savepoint(|w| w.finish(&f)) {
                    tracing::error!(delivery_id = %f.id, error = %e, "cannot record a send outcome");
                }
            }
            Op::Receipt(r, stored) => {
                let applied = self.savepoint(|w| w.receipt(&r));
                if let Err(e) = &applied {
                    // Not acknowledged: the peer sends it again.
                    tracing::error!(channel = %r.channel, error = %e, "cannot apply a receipt");
                }
                if let Some(tx) = stored.filter(|_| applied.is_ok()) {
                    deferred.push(Box::new(move |commit_error: Option<&str>| {
                        if commit_error.is_none() {
                            let _ = tx.send(());
                        }
                    }));
                }
            }
            Op::Cancel { id, now, reply } => {
                let r = self.savepoint(|w| w.cancel(&id, now));
                deferred.push(defer(reply, r));
            }
            Op::Sweep { params, reply } => {
                let r = self.savepoint(|w| w.sweep(params));
                deferred.push(defer(reply, r));
            }
            Op::Recover {
                now,
                in_doubt_after_ms,
                reply,
            } => {
                let r = self.savepoint(|w| w.recover(now, in_doubt_after_ms));
                deferred.push(defer(reply, r));
            }
            Op::Release { ids, now, reply } => {
                let r = self.savepoint(|w| w.release(&ids, now));
                deferred.push(defer(reply, r));
            }
            Op::Call(f) => {
                let mut answer = None;
                let r = self.savepoint(|w| {
                    let (ok, d) = f(&w.conn);
                    answer = Some(d);
                    if ok { Ok(()) } else { Err(StoreError::Closed) }
                });
                let _ = r;
                deferred.extend(answer);
            }
            Op::Flush { reply } => deferred.push(Box::new(move |_| {
                let _ = reply.send(());
            })),
            Op::UseMetrics(m) => self.metrics = Some(m),
        }
    }

    fn issue_voucher(
        &mut self,
        v: &crate::vouchers::NewVoucher,
        d: &NewDelivery,
    ) -> Result<crate::vouchers::IssueOutcome, StoreError> {
        use crate::vouchers::{self, IssueOutcome};
        if let Some(o) =
            vouchers::issue_replay(&self.conn, &v.client, &v.idempotency_key, &v.fingerprint)?
        {
            return Ok(o);
        }
        if vouchers::pin_hash_taken(&self.conn, &v.pin_hash)? {
            return Ok(IssueOutcome::PinCollision);
        }
        match self.enqueue(d)? {
            EnqueueOutcome::Created { .. } => {}
            other => {
                return Err(StoreError::Open {
                    path: "vouchers".into(),
                    message: format!("the voucher's delivery was not created: {other:?}"),
                });
            }
        }
        vouchers::insert(&self.conn, v)?;
        Ok(IssueOutcome::Created {
            id: v.id.clone(),
            delivery_id: d.id.clone(),
        })
    }

    fn enqueue(&mut self, n: &NewDelivery) -> Result<EnqueueOutcome, StoreError> {
        let existing: Option<(Vec<u8>, String)> = self
            .conn
            .prepare_cached(
                "SELECT fingerprint, delivery_id FROM idempotency WHERE client = ?1 AND key = ?2",
            )?
            .query_row(params![n.client, n.idempotency_key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((fp, id)) = existing {
            return Ok(if fp.as_slice() == n.fingerprint.as_slice() {
                EnqueueOutcome::Replay { id }
            } else {
                EnqueueOutcome::Conflict
            });
        }
        self.conn
            .prepare_cached(
                "INSERT INTO deliveries (id, msisdn, channel, state, pin_ct, amount_value,
                    amount_currency, payee, expires_at, attempts, next_attempt_at, created_at,
                    updated_at, client, callback_url)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, 0, ?9, ?9, ?9, ?10, ?11)",
            )?
            .execute(params![
                n.id,
                n.msisdn,
                n.channel,
                n.pin_ct,
                n.amount_value,
                n.amount_currency,
                n.payee,
                n.expires_at,
                n.now,
                n.client,
                n.callback_url
            ])?;
        self.conn
            .prepare_cached(
                "INSERT INTO idempotency (client, key, fingerprint, delivery_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                n.client,
                n.idempotency_key,
                n.fingerprint.as_slice(),
                n.id,
                n.now
            ])?;
        self.snapshot_plan(n)?;
        Ok(EnqueueOutcome::Created { id: n.id.clone() })
    }

    /// Copy the subscriber's devices into the delivery's plan and activate its first step.
    /// A subscriber with no devices keeps the implicit plan: SMS to the msisdn.
    fn snapshot_plan(&mut self, n: &NewDelivery) -> Result<(), StoreError> {
        let devices: Vec<(String, String, String, Option<i64>)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT id, kind, address, step_timeout_ms FROM devices
                 WHERE msisdn = ?1 ORDER BY priority, created_at",
            )?;
            let rows = st.query_map(params![n.msisdn], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        if devices.is_empty() {
            return Ok(());
        }
        for (i, (device_id, kind, address, timeout)) in devices.iter().enumerate() {
            let channel = self.plans.routes.get(kind.as_str()).cloned();
            let (outcome, reason) = match &channel {
                Some(_) => (None, None),
                None => (
                    Some("skipped"),
                    Some(format!("no channel for device kind {kind} is configured")),
                ),
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO delivery_steps (delivery_id, step, kind, address, device_id,
                        step_timeout_ms, channel, outcome, reason, ended_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, CASE WHEN ?8 IS NULL THEN NULL ELSE ?10 END)",
                )?
                .execute(params![
                    n.id,
                    i as i64,
                    kind,
                    address,
                    device_id,
                    timeout.unwrap_or(self.plans.default_step_timeout_ms),
                    channel,
                    outcome,
                    reason,
                    n.now
                ])?;
        }
        if !self.activate_next_step(&n.id, -1, n.now)? {
            self.conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 'failed', final = 1, pin_ct = NULL,
                        last_error = 'no registered device has a configured channel'
                     WHERE id = ?1",
                )?
                .execute(params![n.id])?;
        }
        Ok(())
    }

    /// Make the first usable step after `after` current (state queued). False when none is
    /// left. A delivery without stored steps has none after its implicit step 0.
    fn activate_next_step(&mut self, id: &str, after: i64, now: i64) -> Result<bool, StoreError> {
        let usable: Vec<(i64, String, String, i64)> = {
            let mut st = self.conn.prepare_cached(
                "SELECT step, channel, address, step_timeout_ms FROM delivery_steps
                 WHERE delivery_id = ?1 AND step > ?2 AND channel IS NOT NULL AND outcome IS NULL
                 ORDER BY step LIMIT 2",
            )?;
            let rows = st.query_map(params![id, after], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let Some((step, channel, address, timeout)) = usable.first().cloned() else {
            return Ok(false);
        };
        // The receipt wait is bounded by the step timeout only when another step follows.
        let step_timeout = (usable.len() > 1).then_some(timeout);
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'queued', channel = ?2, address = ?3, step = ?4,
                    step_attempts = 0, step_timeout_ms = ?5, next_attempt_at = ?6,
                    receipt_due = NULL, final = 0, updated_at = ?6
                 WHERE id = ?1",
            )?
            .execute(params![id, channel, address, step, step_timeout, now])?;
        self.conn
            .prepare_cached(
                "UPDATE delivery_steps SET started_at = ?3 WHERE delivery_id = ?1 AND step = ?2",
            )?
            .execute(params![id, step, now])?;
        self.pokes.push(channel);
        Ok(true)
    }

    /// Close the current step with `outcome`, then fall through to the next device. Returns
    /// false when there is no next device (the caller finishes the delivery).
    fn end_step(
        &mut self,
        id: &str,
        step: i64,
        outcome: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE delivery_steps SET outcome = ?3, reason = ?4, ended_at = ?5
                 WHERE delivery_id = ?1 AND step = ?2",
            )?
            .execute(params![id, step, outcome, reason, now])?;
        if outcome == "delivered" || outcome == "expired" || outcome == "cancelled" {
            return Ok(false);
        }
        self.activate_next_step(id, step, now)
    }

    fn claim(&mut self, channel: &str, limit: usize, now: i64) -> Result<Vec<Claimed>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "UPDATE deliveries SET state = 'sending', updated_at = ?3
             WHERE id IN (SELECT id FROM deliveries
                          WHERE channel = ?1 AND state IN ('queued', 'retry_wait')
                            AND next_attempt_at <= ?3
                          ORDER BY next_attempt_at LIMIT ?2)
             RETURNING id, coalesce(address, msisdn), pin_ct, amount_value, amount_currency, payee,
                       expires_at, step_attempts, created_at",
        )?;
        let rows = st.query_map(params![channel, limit as i64, now], |r| {
            Ok(Claimed {
                id: r.get(0)?,
                address: r.get(1)?,
                pin_ct: r.get(2)?,
                amount_value: r.get(3)?,
                amount_currency: r.get(4)?,
                payee: r.get(5)?,
                expires_at: r.get(6)?,
                attempts: r.get::<_, i64>(7)? as u32,
                created_at: r.get(8)?,
            })
        })?;
        let mut out = Vec::with_capacity(limit);
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn insert_attempt(&mut self, a: Attempt<'_>) -> Result<(), StoreError> {
        let Attempt {
            id,
            seq,
            channel,
            started_at,
            finished_at,
            outcome,
            provider_ref,
            error,
            step,
        } = a;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO attempts
                    (delivery_id, seq, channel, started_at, finished_at, outcome, provider_ref, error, step)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![id, seq, channel, started_at, finished_at, outcome, provider_ref, error, step])?;
        Ok(())
    }

    fn finish(&mut self, f: &Finish) -> Result<(), StoreError> {
        match &f.result {
            FinishResult::Submitted {
                refs: provider_refs,
                receipt_timeout_ms,
            } => {
                let is_final = receipt_timeout_ms.is_none();
                let row: Option<(i64, i64)> = self
                    .conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = 'submitted', attempts = attempts + 1,
                            step_attempts = step_attempts + 1,
                            receipt_due = CASE WHEN ?2 IS NULL THEN NULL
                                ELSE ?4 + min(?2, coalesce(step_timeout_ms, ?2)) END,
                            final = ?3,
                            pin_ct = CASE WHEN ?3 THEN NULL ELSE pin_ct END,
                            last_error = NULL, updated_at = ?4
                         WHERE id = ?1 AND state = 'sending' RETURNING attempts, step",
                    )?
                    .query_row(
                        params![f.id, receipt_timeout_ms, is_final, f.finished_at],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((seq, step)) = row else {
                    return Ok(());
                };
                let joined = provider_refs.join(",");
                self.insert_attempt(Attempt {
                    id: &f.id,
                    seq,
                    channel: &f.channel,
                    started_at: f.started_at,
                    finished_at: None,
                    outcome: "submitted",
                    provider_ref: Some(&joined),
                    error: None,
                    step,
                })?;
                if is_final {
                    // The peer took it and will say no more: the plan ends here.
                    self.conn
                        .prepare_cached(
                            "UPDATE delivery_steps SET outcome = 'unknown', ended_at = ?3,
                                reason = 'accepted; this channel reports no delivery'
                             WHERE delivery_id = ?1 AND step = ?2",
                        )?
                        .execute(params![f.id, step, f.finished_at])?;
                    return Ok(());
                }
                for r in provider_refs {
                    self.conn
                        .prepare_cached(
                            "INSERT INTO message_parts (channel, ref_key, alt_key, delivery_id, attempt_seq)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![f.channel, refs::key(r), refs::hex_as_decimal(r), f.id, seq])?;
                }
                if self.early_receipts > 0 {
                    for r in provider_refs {
                        self.take_early_receipt(&f.channel, r)?;
                    }
                }
            }
            FinishResult::Attempted {
                outcome,
                error,
                next,
                next_attempt_at,
            } => {
                let row: Option<(i64, i64)> = self
                    .conn
                    .prepare_cached(
                        "UPDATE deliveries SET attempts = attempts + 1,
                            step_attempts = step_attempts + 1, last_error = ?2, updated_at = ?3
                         WHERE id = ?1 AND state = 'sending' RETURNING attempts, step",
                    )?
                    .query_row(params![f.id, error, f.finished_at], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let Some((seq, step)) = row else {
                    return Ok(());
                };
                self.insert_attempt(Attempt {
                    id: &f.id,
                    seq,
                    channel: &f.channel,
                    started_at: f.started_at,
                    finished_at: Some(f.finished_at),
                    outcome: outcome.as_str(),
                    provider_ref: None,
                    error: Some(error),
                    step,
                })?;
                if *next == State::Failed
                    && self.end_step(&f.id, step, "failed", Some(error), f.finished_at)?
                {
                    return Ok(());
                }
                let terminal = next.is_terminal();
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = ?2, next_attempt_at = ?3, final = ?4,
                            pin_ct = CASE WHEN ?4 THEN NULL ELSE pin_ct END
                         WHERE id = ?1",
                    )?
                    .execute(params![f.id, next.as_str(), next_attempt_at, terminal])?;
            }
            FinishResult::NotAttempted {
                error,
                next_attempt_at,
            } => {
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = 'queued', next_attempt_at = ?2, last_error = ?3,
                            updated_at = ?4
                         WHERE id = ?1 AND state = 'sending'",
                    )?
                    .execute(params![f.id, next_attempt_at, error, f.finished_at])?;
            }
            FinishResult::Expired => {
                self.conn
                    .prepare_cached(
                        "UPDATE deliveries SET state = 'expired', final = 1, pin_ct = NULL,
                            last_error = 'the PIN expired before it could be sent', updated_at = ?2
                         WHERE id = ?1 AND state = 'sending'",
                    )?
                    .execute(params![f.id, f.finished_at])?;
            }
        }
        Ok(())
    }

    /// The part a receipt speaks of: exact key, then hex read as decimal either way.
    fn find_part(
        &mut self,
        channel: &str,
        raw: &str,
    ) -> Result<Option<(i64, String, i64)>, StoreError> {
        let k = refs::key(raw);
        let exact = self
            .conn
            .prepare_cached(
                "SELECT rowid, delivery_id, attempt_seq FROM message_parts
                 WHERE channel = ?1 AND ref_key = ?2 AND status IS NULL ORDER BY rowid DESC LIMIT 1",
            )?
            .query_row(params![channel, k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if exact.is_some() {
            return Ok(exact);
        }
        let by_alt = self
            .conn
            .prepare_cached(
                "SELECT rowid, delivery_id, attempt_seq FROM message_parts
                 WHERE channel = ?1 AND alt_key = ?2 AND status IS NULL ORDER BY rowid DESC LIMIT 1",
            )?
            .query_row(params![channel, k], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if by_alt.is_some() {
            return Ok(by_alt);
        }
        let Some(dec) = refs::hex_as_decimal(raw) else {
            return Ok(None);
        };
        Ok(self
            .conn
            .prepare_cached(
                "SELECT rowid, delivery_id, attempt_seq FROM message_parts
                 WHERE channel = ?1 AND ref_key = ?2 AND status IS NULL ORDER BY rowid DESC LIMIT 1",
            )?
            .query_row(params![channel, dec], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    fn receipt(&mut self, r: &ReceiptIn) -> Result<(), StoreError> {
        if !r.status.is_final() {
            return Ok(());
        }
        let Some((rowid, delivery_id, seq)) = self.find_part(&r.channel, &r.provider_ref)? else {
            self.conn
                .prepare_cached(
                    "INSERT INTO early_receipts (channel, ref_key, alt_key, status, error_code, received_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    r.channel,
                    refs::key(&r.provider_ref),
                    refs::hex_as_decimal(&r.provider_ref),
                    part_status(r.status),
                    r.error_code,
                    r.at
                ])?;
            self.early_receipts += 1;
            return Ok(());
        };
        self.conn
            .prepare_cached("UPDATE message_parts SET status = ?2 WHERE rowid = ?1")?
            .execute(params![rowid, part_status(r.status)])?;
        let (pending, delivered, unknown): (i64, i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT sum(status IS NULL), sum(status = 'delivered'), sum(status = 'unknown')
                 FROM message_parts WHERE delivery_id = ?1 AND attempt_seq = ?2",
            )?
            .query_row(params![delivery_id, seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let Some((state, outcome, error)) = receipt_verdict(r, pending, delivered, unknown) else {
            return Ok(());
        };
        // address is NULL only for the implicit plan (SMS to the msisdn): no steps to close.
        let step: Option<(i64, bool)> = self
            .conn
            .prepare_cached(
                "SELECT step, address IS NOT NULL FROM deliveries
                 WHERE id = ?1 AND state = 'submitted' AND final = 0",
            )?
            .query_row(params![delivery_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((step, planned)) = step else {
            return Ok(());
        };
        let sent_at: Option<i64> = self
            .conn
            .prepare_cached(
                "UPDATE attempts SET outcome = ?3, finished_at = ?4, error = ?5
                 WHERE delivery_id = ?1 AND seq = ?2 RETURNING started_at",
            )?
            .query_row(params![delivery_id, seq, outcome, r.at, error], |r| {
                r.get(0)
            })
            .optional()?;
        if let (Some(m), Some(sent_at)) = (&self.metrics, sent_at) {
            crate::metrics::Metrics::observe_ms(&m.submit_to_receipt, &r.channel, r.at - sent_at);
        }
        self.conn
            .prepare_cached("DELETE FROM message_parts WHERE delivery_id = ?1")?
            .execute(params![delivery_id])?;
        let step_outcome = match state {
            State::Delivered => "delivered",
            State::Failed => "failed",
            _ => "unknown",
        };
        if planned && self.end_step(&delivery_id, step, step_outcome, error.as_deref(), r.at)? {
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = ?2, final = 1, pin_ct = NULL, receipt_due = NULL,
                    last_error = ?3, updated_at = ?4
                 WHERE id = ?1",
            )?
            .execute(params![delivery_id, state.as_str(), error, r.at])?;
        Ok(())
    }

    fn take_early_receipt(&mut self, channel: &str, raw: &str) -> Result<(), StoreError> {
        let k = refs::key(raw);
        let alt = refs::hex_as_decimal(raw);
        let found: Option<(i64, String, Option<String>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT rowid, status, error_code, received_at FROM early_receipts
                 WHERE channel = ?1 AND (ref_key = ?2 OR alt_key = ?2 OR ref_key = ?3)
                 ORDER BY rowid LIMIT 1",
            )?
            .query_row(params![channel, k, alt], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((rowid, status, error_code, at)) = found else {
            return Ok(());
        };
        self.conn
            .prepare_cached("DELETE FROM early_receipts WHERE rowid = ?1")?
            .execute(params![rowid])?;
        self.early_receipts -= 1;
        let receipt = ReceiptIn {
            channel: channel.to_owned(),
            provider_ref: raw.to_owned(),
            status: status_from_part(&status),
            error_code,
            at,
        };
        self.receipt(&receipt)
    }

    fn cancel(&mut self, id: &str, now: i64) -> Result<CancelOutcome, StoreError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'cancelled', final = 1, pin_ct = NULL, updated_at = ?2
                 WHERE id = ?1 AND state IN ('queued', 'retry_wait')",
            )?
            .execute(params![id, now])?;
        if n > 0 {
            return Ok(CancelOutcome::Cancelled);
        }
        let state: Option<String> = self
            .conn
            .prepare_cached("SELECT state FROM deliveries WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(match state.as_deref().and_then(State::parse) {
            None => CancelOutcome::NotFound,
            Some(s) => CancelOutcome::Conflict(s),
        })
    }

    fn sweep(&mut self, p: SweepParams) -> Result<SweepReport, StoreError> {
        let now = p.now;
        let mut rep = SweepReport {
            expired: self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 'expired', final = 1, pin_ct = NULL, updated_at = ?1,
                        last_error = 'the PIN expired before delivery'
                     WHERE state IN ('queued', 'retry_wait', 'in_doubt') AND expires_at <= ?1",
                )?
                .execute(params![now])?,
            ..SweepReport::default()
        };
        if p.in_doubt_resend {
            let mut st = self.conn.prepare_cached(
                "UPDATE deliveries SET state = 'queued', updated_at = ?1
                 WHERE state = 'in_doubt' AND next_attempt_at <= ?1 AND step_attempts < ?2
                 RETURNING channel",
            )?;
            let chans = st.query_map(params![now, p.max_attempts], |r| r.get::<_, String>(0))?;
            for ch in chans {
                self.pokes.push(ch?);
                rep.in_doubt_resent += 1;
            }
        }
        rep.in_doubt_failed = self
            .conn
            .prepare_cached(
                "UPDATE deliveries SET state = 'failed', final = 1, pin_ct = NULL, updated_at = ?1,
                    last_error = 'outcome of the last send unknown; not resent'
                 WHERE state = 'in_doubt' AND next_attempt_at <= ?1",
            )?
            .execute(params![now])?;
        let timed_out: Vec<(String, i64, i64, bool)> = {
            let mut st = self.conn.prepare_cached(
                "UPDATE deliveries SET receipt_due = NULL, updated_at = ?1
                 WHERE receipt_due IS NOT NULL AND receipt_due <= ?1
                 RETURNING id, attempts, step, step_timeout_ms IS NOT NULL",
            )?;
            let rows = st.query_map(params![now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, seq, step, has_next) in &timed_out {
            self.conn
                .prepare_cached(
                    "UPDATE attempts SET outcome = 'unknown', finished_at = ?3,
                        error = 'no receipt within the step or receipt timeout'
                     WHERE delivery_id = ?1 AND seq = ?2 AND outcome = 'submitted'",
                )?
                .execute(params![id, seq, now])?;
            self.conn
                .prepare_cached("DELETE FROM message_parts WHERE delivery_id = ?1")?
                .execute(params![id])?;
            let reason = "no receipt within the step timeout";
            if *has_next && self.end_step(id, *step, "timed_out", Some(reason), now)? {
                rep.steps_advanced += 1;
                continue;
            }
            self.conn
                .prepare_cached(
                    "UPDATE deliveries SET final = 1, pin_ct = NULL,
                        last_error = 'no receipt within the receipt timeout; outcome unknown'
                     WHERE id = ?1",
                )?
                .execute(params![id])?;
        }
        rep.receipts_timed_out = timed_out.len();
        if self.early_receipts > 0 {
            let n = self
                .conn
                .prepare_cached("DELETE FROM early_receipts WHERE received_at < ?1")?
                .execute(params![now - EARLY_RECEIPT_TTL_MS])?;
            self.early_receipts -= n as i64;
        }
        rep.idempotency_purged = self
            .conn
            .prepare_cached(
                "DELETE FROM idempotency WHERE (client, key) IN
                    (SELECT client, key FROM idempotency WHERE created_at < ?1 LIMIT 10000)",
            )?
            .execute(params![now - IDEMPOTENCY_TTL_MS])?;
        rep.idempotency_purged += self
            .conn
            .prepare_cached(
                "DELETE FROM voucher_idempotency WHERE (client, key) IN
                    (SELECT client, key FROM voucher_idempotency WHERE created_at < ?1 LIMIT 10000)",
            )?
            .execute(params![now - IDEMPOTENCY_TTL_MS])?;
        rep.vouchers_expired = crate::vouchers::expire_due(&self.conn, now, 10_000)?;
        Ok(rep)
    }

    fn recover(&mut self, now: i64, in_doubt_after_ms: i64) -> Result<usize, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = {
            let mut st = self.conn.prepare_cached(
                "UPDATE deliveries SET state = 'in_doubt', attempts = attempts + 1,
                    step_attempts = step_attempts + 1, next_attempt_at = ?1 + ?2, updated_at = ?1,
                    last_error = 'pinpost stopped while the send was in flight'
                 WHERE state = 'sending' RETURNING id, channel, attempts, step",
            )?;
            let rows = st.query_map(params![now, in_doubt_after_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, channel, seq, step) in &rows {
            self.insert_attempt(Attempt {
                id,
                seq: *seq,
                channel,
                started_at: now,
                finished_at: Some(now),
                outcome: "in_doubt",
                provider_ref: None,
                error: Some("pinpost stopped while the send was in flight"),
                step: *step,
            })?;
        }
        Ok(rows.len())
    }

    fn release(&mut self, ids: &[String], now: i64) -> Result<(), StoreError> {
        for id in ids {
            let ch: Option<String> = self
                .conn
                .prepare_cached(
                    "UPDATE deliveries SET state = 'queued', updated_at = ?2
                     WHERE id = ?1 AND state = 'sending' RETURNING channel",
                )?
                .query_row(params![id, now], |r| r.get(0))
                .optional()?;
            self.pokes.extend(ch);
        }
        Ok(())
    }
}

fn fail_op(op: Op, msg: &str) {
    let err = || StoreError::Open {
        path: "transaction".into(),
        message: msg.to_owned(),
    };
    match op {
        Op::Enqueue { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Claim { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::IssueVoucher { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Cancel { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Sweep { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Recover { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Release { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        Op::Flush { reply } => {
            let _ = reply.send(());
        }
        Op::Call(f) => {
            // Nothing ran: answer with the failure through a throwaway connection-free path.
            drop(f);
        }
        Op::Finish(_) | Op::Receipt(..) | Op::UseMetrics(_) => {}
    }
}
