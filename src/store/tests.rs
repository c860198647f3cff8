use pinpost_channel_core::ReceiptStatus;

use super::*;

fn new(id: &str, key: &str, fp: u8, now: i64) -> NewDelivery {
    NewDelivery {
        id: id.into(),
        msisdn: "+819012345678".into(),
        channel: "sms".into(),
        pin_ct: vec![1, 2, 3],
        amount_value: Some("3000".into()),
        amount_currency: Some("JPY".into()),
        payee: None,
        expires_at: None,
        now,
        client: "billing".into(),
        idempotency_key: key.into(),
        fingerprint: [fp; 32],
        callback_url: None,
    }
}

fn plans() -> PlanSettings {
    PlanSettings {
        routes: [
            ("sms".to_owned(), "sms".to_owned()),
            ("email".to_owned(), "mail".to_owned()),
        ]
        .into(),
        default_step_timeout_ms: 1000,
    }
}

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), Durability::Full, plans()).unwrap();
    (dir, store)
}

fn submitted(id: &str, refs: &[&str], now: i64) -> Finish {
    Finish {
        id: id.into(),
        channel: "sms".into(),
        started_at: now,
        finished_at: now,
        result: FinishResult::Submitted {
            refs: refs.iter().map(|s| s.to_string()).collect(),
            receipt_timeout_ms: Some(60_000),
        },
    }
}

fn receipt(r: &str, status: ReceiptStatus, at: i64) -> ReceiptIn {
    ReceiptIn {
        channel: "sms".into(),
        provider_ref: r.into(),
        status,
        error_code: None,
        at,
    }
}

async fn state(s: &Store, id: &str) -> State {
    s.get(id).await.unwrap().unwrap().state
}

/// The queue's contract, run against every backend.
macro_rules! queue_conformance {
    ($open:path) => {
        #[tokio::test]
        async fn idempotent_enqueue() {
            let (_d, s) = $open().await;
            assert_eq!(
                s.enqueue(new("a", "k1", 1, 10)).await.unwrap(),
                EnqueueOutcome::Created { id: "a".into() }
            );
            assert_eq!(
                s.enqueue(new("b", "k1", 1, 11)).await.unwrap(),
                EnqueueOutcome::Replay { id: "a".into() }
            );
            assert_eq!(
                s.enqueue(new("c", "k1", 2, 12)).await.unwrap(),
                EnqueueOutcome::Conflict
            );
            let mut other_client = new("d", "k1", 2, 13);
            other_client.client = "other".into();
            assert_eq!(
                s.enqueue(other_client).await.unwrap(),
                EnqueueOutcome::Created { id: "d".into() }
            );
            assert!(
                s.get("b").await.unwrap().is_none(),
                "a replay stores nothing"
            );
        }

        #[tokio::test]
        async fn claim_submit_and_receipt_in_another_base() {
            let (_d, s) = $open().await;
            s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
            s.enqueue(new("b", "k2", 1, 10)).await.unwrap();
            let c = s.claim("sms", 10, 20).await.unwrap();
            assert_eq!(c.len(), 2);
            assert!(
                s.claim("sms", 10, 20).await.unwrap().is_empty(),
                "claimed once"
            );
            assert_eq!(state(&s, "a").await, State::Sending);
            // hex in the response, decimal in the receipt
            s.finish(submitted("a", &["1A2B"], 30)).await.unwrap();
            // decimal in the response, hex with leading zeros in the receipt
            s.finish(submitted("b", &["6700"], 30)).await.unwrap();
            s.receipt(receipt("6699", ReceiptStatus::Delivered, 40))
                .await
                .unwrap();
            s.receipt(receipt("00001A2C", ReceiptStatus::Undeliverable, 40))
                .await
                .unwrap();
            s.flush().await.unwrap();
            let a = s.get("a").await.unwrap().unwrap();
            assert_eq!(a.state, State::Delivered);
            assert_eq!(a.attempts[0].outcome, "delivered");
            assert_eq!(a.attempts[0].provider_ref.as_deref(), Some("1A2B"));
            let b = s.get("b").await.unwrap().unwrap();
            assert_eq!(b.state, State::Failed);
            assert_eq!(b.attempts[0].outcome, "undeliverable");
        }

        #[tokio::test]
        async fn multipart_needs_every_part() {
            let (_d, s) = $open().await;
            s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
            s.claim("sms", 10, 20).await.unwrap();
            s.finish(submitted("a", &["p1", "p2"], 30)).await.unwrap();
            s.receipt(receipt("p1", ReceiptStatus::Delivered, 40))
                .await
                .unwrap();
            s.flush().await.unwrap();
            assert_eq!(state(&s, "a").await, State::Submitted);
            s.receipt(receipt("P2", ReceiptStatus::Delivered, 41))
                .await
                .unwrap();
            s.flush().await.unwrap();
            assert_eq!(state(&s, "a").await, State::Delivered);
        }

        #[tokio::test]
        async fn receipt_before_submit_response_is_kept() {
            let (_d, s) = $open().await;
            s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
            s.claim("sms", 10, 20).await.unwrap();
            s.receipt(receipt("ff", ReceiptStatus::Delivered, 25))
                .await
                .unwrap();
            s.flush().await.unwrap();
            assert_eq!(state(&s, "a").await, State::Sending);
            s.finish(submitted("a", &["255"], 30)).await.unwrap();
            s.flush().await.unwrap();
            assert_eq!(state(&s, "a").await, State::Delivered);
        }

        #[tokio::test]
        async fn cancel_only_before_submission() {
            let (_d, s) = $open().await;
            s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
            s.enqueue(new("b", "k2", 1, 10)).await.unwrap();
            assert_eq!(s.cancel("a", 11).await.unwrap(), CancelOutcome::Cancelled);
            assert_eq!(
                s.cancel("a", 12).await.unwrap(),
                CancelOutcome::Conflict(State::Cancelled)
            );
            assert_eq!(s.cancel("zz", 12).await.unwrap(), CancelOutcome::NotFound);
            let c = s.claim("sms", 10, 20).await.unwrap();
            assert_eq!(c.len(), 1, "a cancelled delivery is never claimed");
            assert_eq!(
                s.cancel("b", 21).await.unwrap(),
                CancelOutcome::Conflict(State::Sending)
            );
        }

        #[tokio::test]
        async fn sweep_expires_reconciles_and_times_out() {
            let (_d, s) = $open().await;
            let mut e = new("exp", "k1", 1, 10);
            e.expires_at = Some(100);
            s.enqueue(e).await.unwrap();
            s.enqueue(new("doubt", "k2", 1, 10)).await.unwrap();
            s.enqueue(new("quiet", "k3", 1, 10)).await.unwrap();
            // Claim at 50: "exp" is not due for expiry yet, but only claim two.
            let claimed = s.claim("sms", 3, 50).await.unwrap();
            assert_eq!(claimed.len(), 3);
            s.release(vec!["exp".into()], 50).await.unwrap();
            s.finish(Finish {
                id: "doubt".into(),
                channel: "sms".into(),
                started_at: 50,
                finished_at: 60,
                result: FinishResult::Attempted {
                    outcome: AttemptOutcome::InDoubt,
                    error: "no response".into(),
                    next: State::InDoubt,
                    next_attempt_at: 500,
                },
            })
            .await
            .unwrap();
            let mut quiet = submitted("quiet", &["q1"], 60);
            quiet.result = FinishResult::Submitted {
                refs: vec!["q1".into()],
                receipt_timeout_ms: Some(340),
            };
            s.finish(quiet).await.unwrap();
            let p = SweepParams {
                now: 450,
                in_doubt_resend: true,
                max_attempts: 5,
            };
            let r = s.sweep(p).await.unwrap();
            assert_eq!(
                (r.expired, r.in_doubt_resent, r.receipts_timed_out),
                (1, 0, 1)
            );
            assert_eq!(state(&s, "exp").await, State::Expired);
            let q = s.get("quiet").await.unwrap().unwrap();
            assert_eq!(q.state, State::Submitted);
            assert!(q.is_final);
            assert_eq!(q.attempts[0].outcome, "unknown");
            let r = s.sweep(SweepParams { now: 600, ..p }).await.unwrap();
            assert_eq!(r.in_doubt_resent, 1);
            assert_eq!(state(&s, "doubt").await, State::Queued);
            let again = s.claim("sms", 10, 700).await.unwrap();
            assert_eq!(again.len(), 1);
            assert_eq!(
                again[0].attempts, 1,
                "the in-doubt send counted as an attempt"
            );
        }
    };
}

mod sqlite {
    use super::*;
    queue_conformance!(super::open);
}

mod postgres {
    use super::*;
    queue_conformance!(crate::store::pg::testing::open);
}

#[tokio::test]
async fn restart_puts_sending_in_doubt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let s = Store::open(&path, Durability::Full, plans()).unwrap();
        s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
        s.claim("sms", 10, 20).await.unwrap();
    }
    let s = Store::open(&path, Durability::Full, plans()).unwrap();
    assert_eq!(s.recover(30, 1000).await.unwrap(), 1);
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::InDoubt);
    assert_eq!(d.attempts[0].outcome, "in_doubt");
}

#[tokio::test]
async fn pin_ciphertext_is_wiped_when_final() {
    let (dir, s) = open().await;
    s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
    s.claim("sms", 10, 20).await.unwrap();
    s.finish(submitted("a", &["r1"], 30)).await.unwrap();
    s.receipt(receipt("r1", ReceiptStatus::Delivered, 40))
        .await
        .unwrap();
    s.flush().await.unwrap();
    let conn = Connection::open(dir.path().join("t.db")).unwrap();
    let ct: Option<Vec<u8>> = conn
        .query_row("SELECT pin_ct FROM deliveries WHERE id = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(ct.is_none());
}

#[test]
fn state_check_constraint_rejects_free_strings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    migrate(&path).unwrap();
    let conn = Connection::open(&path).unwrap();
    let r = conn.execute(
        "INSERT INTO deliveries (id, client, msisdn, channel, state, next_attempt_at, created_at, updated_at)
         VALUES ('x', 'c', '+1', 'sms', 'lost', 0, 0, 0)",
        [],
    );
    assert!(r.is_err());
    for s in State::ALL {
        assert_eq!(State::parse(s.as_str()), Some(s));
    }
}

async fn register(s: &Store, msisdn: &str, devices: &[(&str, &str, i64, Option<i64>)]) {
    let msisdn = msisdn.to_owned();
    let devices: Vec<(String, String, i64, Option<i64>)> = devices
        .iter()
        .map(|(k, a, p, t)| (k.to_string(), a.to_string(), *p, *t))
        .collect();
    s.write(move |c| {
        crate::registry::put_subscriber(c, &msisdn, None, 1)?;
        for (kind, address, priority, timeout) in &devices {
            let d = crate::registry::NewDevice {
                kind: kind.clone(),
                address: address.clone(),
                priority: Some(*priority),
                step_timeout_ms: *timeout,
                options: None,
            };
            crate::registry::add_device(c, &msisdn, &d, 1)?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

fn failed(id: &str, at: i64) -> Finish {
    Finish {
        id: id.into(),
        channel: "sms".into(),
        started_at: at,
        finished_at: at,
        result: FinishResult::Attempted {
            outcome: AttemptOutcome::Permanent,
            error: "0x0000000b: invalid destination".into(),
            next: State::Failed,
            next_attempt_at: at,
        },
    }
}

#[tokio::test]
async fn plan_falls_through_on_permanent_failure_and_skips_unrouted_kinds() {
    let (_d, s) = open().await;
    register(
        &s,
        "+819012345678",
        &[
            ("carnav", "VIN-1", 5, None),
            ("sms", "+819012345678", 10, None),
            ("email", "taro@example.jp", 20, None),
        ],
    )
    .await;
    s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.steps.len(), 3);
    assert_eq!(
        d.steps[0].outcome.as_deref(),
        Some("skipped"),
        "no channel serves carnav"
    );
    assert_eq!(d.channel, "sms");
    let c = s.claim("sms", 10, 20).await.unwrap();
    assert_eq!(c[0].address, "+819012345678");
    s.finish(failed("a", 30)).await.unwrap();
    s.flush().await.unwrap();
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::Queued, "fell through to the e-mail device");
    assert_eq!(d.channel, "mail");
    assert_eq!(d.steps[1].outcome.as_deref(), Some("failed"));
    let c = s.claim("mail", 10, 40).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].address, "taro@example.jp");
    assert_eq!(c[0].attempts, 0, "attempts count per step");
    assert!(c[0].pin_ct.is_some(), "the PIN is kept for the next step");
    let mut sub = submitted("a", &["m1"], 50);
    sub.channel = "mail".into();
    s.finish(sub).await.unwrap();
    let mut r = receipt("m1", ReceiptStatus::Undeliverable, 60);
    r.channel = "mail".into();
    s.receipt(r).await.unwrap();
    s.flush().await.unwrap();
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::Failed, "no device left");
    assert!(d.is_final);
    assert_eq!(d.attempts.len(), 2);
    assert_eq!(d.attempts[1].step, 2);
}

#[tokio::test]
async fn step_timeout_moves_to_the_next_device() {
    let (_d, s) = open().await;
    register(
        &s,
        "+819012345678",
        &[
            ("sms", "+819012345678", 10, Some(100)),
            ("sms", "+818011112222", 20, None),
        ],
    )
    .await;
    s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
    s.claim("sms", 10, 20).await.unwrap();
    s.finish(submitted("a", &["r1"], 30)).await.unwrap();
    let p = SweepParams {
        now: 200,
        in_doubt_resend: true,
        max_attempts: 5,
    };
    let rep = s.sweep(p).await.unwrap();
    assert_eq!(rep.steps_advanced, 1);
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::Queued);
    assert_eq!(d.steps[0].outcome.as_deref(), Some("timed_out"));
    let c = s.claim("sms", 10, 210).await.unwrap();
    assert_eq!(c[0].address, "+818011112222");
    // The late receipt of the first device no longer counts.
    s.receipt(receipt("r1", ReceiptStatus::Delivered, 220))
        .await
        .unwrap();
    s.finish(submitted("a", &["r2"], 230)).await.unwrap();
    s.receipt(receipt("r2", ReceiptStatus::Delivered, 240))
        .await
        .unwrap();
    s.flush().await.unwrap();
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::Delivered);
    assert_eq!(d.steps[1].outcome.as_deref(), Some("delivered"));
}

#[tokio::test]
async fn no_routable_device_fails_at_once() {
    let (_d, s) = open().await;
    register(&s, "+819012345678", &[("fax", "+81312345678", 10, None)]).await;
    s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
    let d = s.get("a").await.unwrap().unwrap();
    assert_eq!(d.state, State::Failed);
    assert!(d.last_error.unwrap().contains("no registered device"));
}

/// What several nodes on one PostgreSQL database rely on.
mod postgres_nodes {
    use super::*;
    use crate::store::pg::testing::Schema;

    #[tokio::test]
    async fn concurrent_claims_never_share_a_delivery() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        let b = schema.store("node-b").await;
        for i in 0..200 {
            a.enqueue(new(&format!("d{i:03}"), &format!("k{i}"), 1, 10))
                .await
                .unwrap();
        }
        let claim_all = |s: Store| async move {
            let mut got = Vec::new();
            loop {
                let c = s.claim("sms", 7, 20).await.unwrap();
                if c.is_empty() {
                    break got;
                }
                got.extend(c.into_iter().map(|c| c.id));
            }
        };
        let (ga, gb) = tokio::join!(claim_all(a.clone()), claim_all(b.clone()));
        let mut all: Vec<String> = ga.iter().chain(gb.iter()).cloned().collect();
        assert_eq!(all.len(), 200, "every delivery claimed exactly once");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 200, "no delivery claimed by both nodes");
        let leases = a.leases().await.unwrap();
        let held: i64 = leases.iter().map(|(_, n)| n).sum();
        assert_eq!(held, 200);
        assert!(leases.iter().all(|(n, _)| n == "node-a" || n == "node-b"));
    }

    #[tokio::test]
    async fn a_receipt_on_another_node_lands() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        let b = schema.store("node-b").await;
        a.enqueue(new("x", "k1", 1, 10)).await.unwrap();
        assert_eq!(a.claim("sms", 10, 20).await.unwrap().len(), 1);
        a.finish(submitted("x", &["1A2B"], 30)).await.unwrap();
        // The SMSC writes the receipt in decimal on node b's bind.
        b.receipt(receipt("6699", ReceiptStatus::Delivered, 40))
            .await
            .unwrap();
        b.flush().await.unwrap();
        assert_eq!(state(&a, "x").await, State::Delivered);
    }

    #[tokio::test]
    async fn a_dead_nodes_sends_are_rescued_and_its_late_outcome_ignored() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        let b = schema.store("node-b").await;
        a.enqueue(new("x", "k1", 1, 10)).await.unwrap();
        a.enqueue(new("y", "k2", 1, 10)).await.unwrap();
        assert_eq!(a.claim("sms", 10, 20).await.unwrap().len(), 2);
        // Node a goes silent: no heartbeat renews its leases (30 s from 20).
        let p = SweepParams {
            now: 20_000,
            in_doubt_resend: true,
            max_attempts: 5,
        };
        b.recover(20_000, 1_000).await.unwrap();
        b.sweep(p).await.unwrap();
        assert_eq!(
            state(&b, "x").await,
            State::Sending,
            "the lease still holds"
        );
        let r = b.sweep(SweepParams { now: 30_021, ..p }).await.unwrap();
        assert_eq!(r.in_doubt_resent, 0, "in doubt first, for in_doubt_after");
        let x = b.get("x").await.unwrap().unwrap();
        assert_eq!(x.state, State::InDoubt);
        assert_eq!(x.attempts[0].outcome, "in_doubt");
        assert!(
            b.leases().await.unwrap().is_empty(),
            "nothing stays claimed"
        );
        let r = b.sweep(SweepParams { now: 31_100, ..p }).await.unwrap();
        assert_eq!(r.in_doubt_resent, 2);
        let again = b.claim("sms", 10, 31_200).await.unwrap();
        assert_eq!(again.len(), 2, "node b resends them");
        // Node a wakes up and reports its old send: it no longer holds the lease.
        a.finish(submitted("x", &["old"], 31_300)).await.unwrap();
        let x = b.get("x").await.unwrap().unwrap();
        assert_eq!(x.state, State::Sending, "node b's send is not overwritten");
        b.finish(submitted("x", &["new"], 31_400)).await.unwrap();
        assert_eq!(state(&b, "x").await, State::Submitted);
    }

    #[tokio::test]
    async fn live_nodes_count_recent_heartbeats_and_a_clean_stop_leaves() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        let b = schema.store("node-b").await;
        let c = schema.store("node-c").await;
        assert_eq!(
            a.live_nodes(1_000, 500).await.unwrap(),
            1,
            "before any heartbeat a node counts itself"
        );
        a.heartbeat(10_000).await.unwrap();
        b.heartbeat(10_000).await.unwrap();
        c.heartbeat(7_000).await.unwrap();
        assert_eq!(a.live_nodes(10_100, 3_000).await.unwrap(), 2, "c is stale");
        assert_eq!(
            c.live_nodes(10_100, 3_000).await.unwrap(),
            3,
            "c counts itself"
        );
        assert_eq!(a.live_nodes(10_100, 3_100).await.unwrap(), 3);
        b.leave().await.unwrap();
        assert_eq!(
            a.live_nodes(10_100, 3_000).await.unwrap(),
            1,
            "b stopped cleanly"
        );
        assert_eq!(b.live_nodes(10_100, 3_000).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn heartbeats_keep_a_live_nodes_leases() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        let b = schema.store("node-b").await;
        a.enqueue(new("x", "k1", 1, 10)).await.unwrap();
        let now = crate::now_ms();
        assert_eq!(a.claim("sms", 10, now).await.unwrap().len(), 1);
        a.heartbeat(now + 25_000).await.unwrap();
        let p = SweepParams {
            now: now + 40_000,
            in_doubt_resend: true,
            max_attempts: 5,
        };
        b.sweep(p).await.unwrap();
        assert_eq!(state(&b, "x").await, State::Sending, "renewed to +55 s");
        b.sweep(SweepParams {
            now: now + 56_000,
            ..p
        })
        .await
        .unwrap();
        assert_eq!(state(&b, "x").await, State::InDoubt);
    }

    #[tokio::test]
    async fn restart_under_the_same_name_rescues_at_once() {
        let schema = Schema::create().await;
        let a = schema.store("node-a").await;
        a.enqueue(new("x", "k1", 1, 10)).await.unwrap();
        a.claim("sms", 10, 20).await.unwrap();
        let other = schema.store("node-b").await;
        assert_eq!(other.recover(30, 1000).await.unwrap(), 0, "not b's");
        let again = schema.store("node-a").await;
        assert_eq!(again.recover(30, 1000).await.unwrap(), 1);
        assert_eq!(state(&again, "x").await, State::InDoubt);
    }

    #[tokio::test]
    async fn the_pin_ciphertext_is_wiped_when_final() {
        let schema = Schema::create().await;
        let s = schema.store("node-a").await;
        s.enqueue(new("a", "k1", 1, 10)).await.unwrap();
        s.claim("sms", 10, 20).await.unwrap();
        s.finish(submitted("a", &["r1"], 30)).await.unwrap();
        s.receipt(receipt("r1", ReceiptStatus::Delivered, 40))
            .await
            .unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.pin_ct_len("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn sqlite_only_features_say_so() {
        let schema = Schema::create().await;
        let s = schema.store("node-a").await;
        let e = s.read(|_| Ok(())).await.unwrap_err();
        assert!(matches!(e, StoreError::Unsupported(_)), "{e}");
    }
}
