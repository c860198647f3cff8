//! The ledger's invariants, checked after every step of randomized sequences of issue,
//! redeem, reverse, expire, revoke and settle.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rusqlite::Connection;

use super::*;
use crate::vouchers::{self, NewVoucher, RedeemOutcome, RedeemRequest, ReverseOutcome};

const DAY: i64 = 86_400_000;
const START: i64 = 1_790_000_000_000; // 2026-09-21, a day boundary is not needed

#[derive(Debug, Clone)]
enum Op {
    Issue {
        institution: u8,
        currency: u8,
        amount: i64,
        partial: bool,
        payee: Option<u8>,
        ttl_hours: i64,
    },
    Redeem {
        voucher: usize,
        merchant: u8,
        amount: i64,
    },
    Reverse {
        redemption: usize,
    },
    Revoke {
        voucher: usize,
    },
    Expire,
    Settle {
        days_back: i64,
    },
    Advance {
        hours: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..3, 0u8..2, 1i64..5_000_000, any::<bool>(), proptest::option::of(0u8..3), 1i64..96)
            .prop_map(|(institution, currency, amount, partial, payee, ttl_hours)| Op::Issue {
                institution, currency, amount, partial, payee, ttl_hours
            }),
        4 => (0usize..64, 0u8..3, 1i64..5_000_000)
            .prop_map(|(voucher, merchant, amount)| Op::Redeem { voucher, merchant, amount }),
        1 => (0usize..64).prop_map(|redemption| Op::Reverse { redemption }),
        1 => (0usize..64).prop_map(|voucher| Op::Revoke { voucher }),
        1 => Just(Op::Expire),
        1 => (0i64..4).prop_map(|days_back| Op::Settle { days_back }),
        2 => (1i64..20).prop_map(|hours| Op::Advance { hours }),
    ]
}

struct World {
    conn: Connection,
    _dir: tempfile::TempDir,
    now: i64,
    vouchers: Vec<(String, [u8; 32], String)>,
    redemptions: Vec<String>,
    n: u64,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        crate::store::migrate(&path).unwrap();
        let conn = Connection::open(&path).unwrap();
        World {
            conn,
            _dir: dir,
            now: START,
            vouchers: Vec::new(),
            redemptions: Vec::new(),
            n: 0,
        }
    }

    fn next_id(&mut self, p: &str) -> String {
        self.n += 1;
        format!("{p}{}", self.n)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Issue {
                institution,
                currency,
                amount,
                partial,
                payee,
                ttl_hours,
            } => {
                let id = self.next_id("v");
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&self.n.to_be_bytes());
                let cur = ["JPY", "USD"][*currency as usize].to_owned();
                let v = NewVoucher {
                    id: id.clone(),
                    client: "billing".into(),
                    msisdn: "+819012345678".into(),
                    pin_hash: hash,
                    currency: cur.clone(),
                    amount: *amount,
                    allow_partial: *partial,
                    payee: payee.map(|p| format!("m{p}")).unwrap_or_else(|| "*".into()),
                    msisdn_required: false,
                    min_age: None,
                    countries: None,
                    attributes: None,
                    funding_source: "credit_company".into(),
                    institution: format!("i{institution}"),
                    funding_reference: None,
                    expires_at: self.now + ttl_hours * 3_600_000,
                    delivery_id: format!("d-{id}"),
                    callback_url: None,
                    now: self.now,
                    idempotency_key: id.clone(),
                    fingerprint: [0; 32],
                };
                vouchers::insert(&self.conn, &v).unwrap();
                self.vouchers.push((id, hash, cur));
            }
            Op::Redeem {
                voucher,
                merchant,
                amount,
            } => {
                if self.vouchers.is_empty() {
                    return;
                }
                let (_, hash, cur) = self.vouchers[voucher % self.vouchers.len()].clone();
                let rid = self.next_id("r");
                let q = RedeemRequest {
                    redemption_id: rid.clone(),
                    pin_hash: hash,
                    merchant_id: format!("m{merchant}"),
                    order_ref: rid.clone(),
                    currency: cur,
                    amount: *amount,
                    customer_msisdn: None,
                    customer_age: None,
                    customer_country: None,
                    now: self.now,
                };
                if let RedeemOutcome::Captured(_) = vouchers::redeem(&self.conn, &q).unwrap() {
                    self.redemptions.push(rid);
                }
            }
            Op::Reverse { redemption } => {
                if self.redemptions.is_empty() {
                    return;
                }
                let rid = self.redemptions[redemption % self.redemptions.len()].clone();
                let c = &self.conn;
                let merchant: String = c
                    .query_row(
                        "SELECT merchant_id FROM redemptions WHERE id = ?1",
                        [&rid],
                        |r| r.get(0),
                    )
                    .unwrap();
                let out = vouchers::reverse(c, &rid, &merchant, 2 * DAY, self.now).unwrap();
                if let ReverseOutcome::NotFound = out {
                    panic!("a recorded redemption must be found");
                }
            }
            Op::Revoke { voucher } => {
                if self.vouchers.is_empty() {
                    return;
                }
                let id = self.vouchers[voucher % self.vouchers.len()].0.clone();
                vouchers::revoke(&self.conn, &id, None, self.now).unwrap();
            }
            Op::Expire => {
                vouchers::expire_due(&self.conn, self.now, 1000).unwrap();
            }
            Op::Settle { days_back } => {
                let date =
                    time::OffsetDateTime::from_unix_timestamp((self.now - days_back * DAY) / 1000)
                        .unwrap()
                        .date();
                let first = settle(&self.conn, date, self.now).unwrap();
                let again = settle(&self.conn, date, self.now).unwrap();
                match (first, again) {
                    (
                        SettleOutcome::Created(a) | SettleOutcome::Existing(a),
                        SettleOutcome::Existing(b),
                    ) => {
                        assert_eq!(a, b, "a second run changes nothing")
                    }
                    (x, y) => panic!("unexpected settlement outcomes {x:?} then {y:?}"),
                }
            }
            Op::Advance { hours } => self.now += hours * 3_600_000,
        }
    }

    fn check(&self) {
        let c = &self.conn;
        let bal = balances(c).unwrap();
        let mut per_currency: BTreeMap<&str, i64> = BTreeMap::new();
        for ((_, cur), v) in &bal {
            *per_currency.entry(cur).or_default() += v;
        }
        assert!(
            per_currency.values().all(|v| *v == 0),
            "books balance: {per_currency:?}"
        );
        let get = |acct: &str, cur: &str| {
            bal.get(&(acct.to_owned(), cur.to_owned()))
                .copied()
                .unwrap_or(0)
        };
        for cur in ["JPY", "USD"] {
            let remaining: i64 = c
                .query_row(
                    "SELECT coalesce(sum(remaining), 0) FROM vouchers WHERE currency = ?1",
                    [cur],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(
                get(VOUCHER_LIABILITY, cur),
                -remaining,
                "liability is what can be redeemed"
            );
            assert_eq!(get(SETTLEMENT_CASH, cur), 0, "claims pay the payouts");
            for m in ["m0", "m1", "m2"] {
                let open: i64 = c
                    .query_row(
                        "SELECT coalesce(sum(amount), 0) FROM redemptions WHERE merchant_id = ?1
                         AND currency = ?2 AND state = 'captured' AND settlement_date IS NULL",
                        [m, cur],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(
                    get(&payable(m), cur),
                    -open,
                    "payable is the unsettled captures"
                );
            }
            for i in ["i0", "i1", "i2"] {
                let owed: i64 = c
                    .query_row(
                        "SELECT coalesce((SELECT sum(remaining) FROM vouchers
                                          WHERE institution = ?1 AND currency = ?2), 0)
                              + coalesce((SELECT sum(r.amount) FROM redemptions r
                                          JOIN vouchers v ON v.id = r.voucher_id
                                          WHERE v.institution = ?1 AND r.currency = ?2
                                            AND r.state = 'captured'
                                            AND r.settlement_date IS NULL), 0)",
                        [i, cur],
                        |r| r.get(0),
                    )
                    .unwrap();
                assert_eq!(get(&receivable(i), cur), owed, "receivable of {i}");
            }
        }
        let live_over: i64 = c
            .query_row(
                "SELECT count(*) FROM vouchers WHERE remaining > 0
                 AND state NOT IN ('issued', 'delivered', 'partially_redeemed')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(live_over, 0, "ended vouchers hold no value");
        let paid: i64 = c
            .query_row("SELECT coalesce(sum(amount), 0) FROM settlement_lines WHERE party_kind = 'merchant'", [], |r| r.get(0))
            .unwrap();
        let settled: i64 = c
            .query_row("SELECT coalesce(sum(amount), 0) FROM redemptions WHERE settlement_date IS NOT NULL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            paid, settled,
            "each settled redemption is paid exactly once"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn ledger_balances_after_any_sequence(ops in proptest::collection::vec(op(), 1..120)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
            w.check();
        }
    }
}

#[test]
fn settlement_settles_each_redemption_once() {
    let mut w = World::new();
    w.apply(&Op::Issue {
        institution: 0,
        currency: 0,
        amount: 30_000_000,
        partial: true,
        payee: Some(1),
        ttl_hours: 48,
    });
    w.apply(&Op::Redeem {
        voucher: 0,
        merchant: 1,
        amount: 10_000_000,
    });
    w.apply(&Op::Redeem {
        voucher: 0,
        merchant: 2,
        amount: 10_000_000,
    });
    assert_eq!(
        w.redemptions.len(),
        1,
        "another merchant's redemption is declined"
    );
    let today = time::OffsetDateTime::from_unix_timestamp(w.now / 1000)
        .unwrap()
        .date();
    let tomorrow = today.next_day().unwrap();
    assert_eq!(
        settle(&w.conn, tomorrow, w.now).unwrap(),
        SettleOutcome::Future
    );
    let SettleOutcome::Created(s) = settle(&w.conn, today, w.now).unwrap() else {
        panic!("first run creates")
    };
    assert_eq!(s.redemptions, 1);
    assert_eq!(s.lines.len(), 2);
    assert!(
        s.to_csv().contains("merchant,m1,JPY,1000,1"),
        "{}",
        s.to_csv()
    );
    assert!(
        s.to_csv().contains("institution,i0,JPY,1000,1"),
        "{}",
        s.to_csv()
    );
    assert!(matches!(settle(&w.conn, today, w.now).unwrap(), SettleOutcome::Existing(e) if e == s));
    let rid = w.redemptions[0].clone();
    assert_eq!(
        vouchers::reverse(&w.conn, &rid, "m1", 10 * DAY, w.now).unwrap(),
        ReverseOutcome::Settled
    );
    // A later capture the same day is settled by the next run, and only it.
    w.apply(&Op::Redeem {
        voucher: 0,
        merchant: 1,
        amount: 5_000_000,
    });
    let SettleOutcome::Created(s2) = settle(&w.conn, today, w.now).unwrap() else {
        panic!("new capture settles")
    };
    assert_eq!(s2.redemptions, 2);
    assert!(
        s2.to_csv().contains("merchant,m1,JPY,1500,2"),
        "{}",
        s2.to_csv()
    );
    w.check();
}
