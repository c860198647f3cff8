//! The double-entry ledger and settlement runs.
//!
//! Every ledger row debits one account and credits another by the same positive amount,
//! so the books balance by construction: the sum of all balances is zero in every
//! currency. What each business event posts:
//!
//! | event            | debit                     | credit                    |
//! |------------------|---------------------------|---------------------------|
//! | issue            | receivable:<institution>  | voucher_liability         |
//! | redeem           | voucher_liability         | payable:<merchant>        |
//! | reverse          | payable:<merchant>        | voucher_liability         |
//! | release (expiry, revocation) | voucher_liability | receivable:<institution> |
//! | settle_claim     | settlement_cash           | receivable:<institution>  |
//! | settle_payout    | payable:<merchant>        | settlement_cash           |
//!
//! A settlement run covers the redemptions captured on one UTC day that are not settled
//! yet: per institution the claim for what its vouchers paid for, per merchant the payout.
//! Each redemption records the date that settled it, so a redemption is settled once, and
//! running the same date again settles only what was captured since (usually nothing:
//! a run after the day has ended is final). The report of a date adds up all its runs.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

pub const VOUCHER_LIABILITY: &str = "voucher_liability";
pub const SETTLEMENT_CASH: &str = "settlement_cash";

pub fn receivable(institution: &str) -> String {
    format!("receivable:{institution}")
}

pub fn payable(merchant: &str) -> String {
    format!("payable:{merchant}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Issue,
    Redeem,
    Reverse,
    Release,
    SettleClaim,
    SettlePayout,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Redeem => "redeem",
            Self::Reverse => "reverse",
            Self::Release => "release",
            Self::SettleClaim => "settle_claim",
            Self::SettlePayout => "settle_payout",
        }
    }
}

/// One double entry.
pub struct Posting<'a> {
    pub kind: Kind,
    pub debit: &'a str,
    pub credit: &'a str,
    pub currency: &'a str,
    pub amount: i64,
    pub voucher_id: Option<&'a str>,
    pub redemption_id: Option<&'a str>,
    pub settlement_date: Option<&'a str>,
    pub now: i64,
}

pub fn post(c: &Connection, p: &Posting<'_>) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO ledger (kind, debit, credit, currency, amount, voucher_id, redemption_id,
            settlement_date, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        p.kind.as_str(),
        p.debit,
        p.credit,
        p.currency,
        p.amount,
        p.voucher_id,
        p.redemption_id,
        p.settlement_date,
        p.now
    ])?;
    Ok(())
}

/// Balance (debits minus credits) of every account, by (account, currency).
pub fn balances(c: &Connection) -> Result<BTreeMap<(String, String), i64>, StoreError> {
    let mut out = BTreeMap::new();
    let mut st = c.prepare(
        "SELECT account, currency, sum(v) FROM (
             SELECT debit AS account, currency, amount AS v FROM ledger
             UNION ALL
             SELECT credit AS account, currency, -amount AS v FROM ledger)
         GROUP BY account, currency",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (k, v) = row?;
        out.insert(k, v);
    }
    Ok(out)
}

/// One line of a settlement report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SettlementLine {
    /// "merchant" (a payout) or "institution" (a claim).
    pub party_kind: String,
    pub party: String,
    pub currency: String,
    pub amount: i64,
    /// Redemptions the line covers.
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub date: String,
    pub redemptions: i64,
    pub created_at: i64,
    pub lines: Vec<SettlementLine>,
}

impl Settlement {
    /// `party_kind,party,currency,amount,count`, one line per party and currency.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("date,party_kind,party,currency,amount,count\n");
        for l in &self.lines {
            out.push_str(&format!(
                "{},{},{},{},{},{}\n",
                self.date,
                l.party_kind,
                l.party,
                l.currency,
                crate::vouchers::format_amount(l.amount),
                l.count
            ));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    /// Redemptions were settled by this run (or the date was run for the first time).
    Created(Settlement),
    /// Nothing left to settle on that date; its report, unchanged.
    Existing(Settlement),
    /// The day has not begun yet (UTC).
    Future,
}

/// The settlement of `date`, if it was run.
pub fn read_settlement(c: &Connection, date: time::Date) -> Result<Option<Settlement>, StoreError> {
    let d = date.to_string();
    let head: Option<(i64, i64)> = c
        .prepare_cached("SELECT redemptions, created_at FROM settlements WHERE date = ?1")?
        .query_row(params![d], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((redemptions, created_at)) = head else {
        return Ok(None);
    };
    let mut st = c.prepare_cached(
        "SELECT party_kind, party, currency, amount, count FROM settlement_lines
         WHERE date = ?1 ORDER BY party_kind DESC, party, currency",
    )?;
    let lines = st
        .query_map(params![d], |r| {
            Ok(SettlementLine {
                party_kind: r.get(0)?,
                party: r.get(1)?,
                currency: r.get(2)?,
                amount: r.get(3)?,
                count: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Settlement {
        date: d,
        redemptions,
        created_at,
        lines,
    }))
}

fn day_bounds_ms(date: time::Date) -> (i64, i64) {
    let start = date.midnight().assume_utc().unix_timestamp() * 1000;
    (start, start + 86_400_000)
}

/// Totals per (party, currency): amount and redemption count.
type Totals = BTreeMap<(String, String), (i64, i64)>;
/// A settlement line group: party kind, ledger kind, totals, (debit, credit) of a party.
type Group<'a> = (
    &'a str,
    Kind,
    &'a Totals,
    &'a dyn Fn(&str) -> (String, String),
);

/// Settle the redemptions captured on `date` (UTC) that are still captured and unsettled.
pub fn settle(c: &Connection, date: time::Date, now: i64) -> Result<SettleOutcome, StoreError> {
    let (start, end) = day_bounds_ms(date);
    if start > now {
        return Ok(SettleOutcome::Future);
    }
    let existing = read_settlement(c, date)?;
    let d = date.to_string();
    let rows: Vec<(String, String, String, i64, String)> = {
        let mut st = c.prepare_cached(
            "SELECT r.id, r.merchant_id, r.currency, r.amount, v.institution
             FROM redemptions r JOIN vouchers v ON v.id = r.voucher_id
             WHERE r.state = 'captured' AND r.settlement_date IS NULL
               AND r.captured_at >= ?1 AND r.captured_at < ?2",
        )?;
        st.query_map(params![start, end], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?
    };
    if let Some(s) = existing.filter(|_| rows.is_empty()) {
        return Ok(SettleOutcome::Existing(s));
    }
    let mut merchants = Totals::new();
    let mut institutions = Totals::new();
    for (_, merchant, currency, amount, institution) in &rows {
        let m = merchants
            .entry((merchant.clone(), currency.clone()))
            .or_default();
        m.0 += amount;
        m.1 += 1;
        let i = institutions
            .entry((institution.clone(), currency.clone()))
            .or_default();
        i.0 += amount;
        i.1 += 1;
    }
    c.prepare_cached(
        "INSERT INTO settlements (date, redemptions, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (date) DO UPDATE SET redemptions = redemptions + excluded.redemptions",
    )?
    .execute(params![d, rows.len() as i64, now])?;
    let mut line = c.prepare_cached(
        "INSERT INTO settlement_lines (date, party_kind, party, currency, amount, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (date, party_kind, party, currency) DO UPDATE
            SET amount = amount + excluded.amount, count = count + excluded.count",
    )?;
    let payout_accounts = |m: &str| (payable(m), SETTLEMENT_CASH.to_owned());
    let claim_accounts = |i: &str| (SETTLEMENT_CASH.to_owned(), receivable(i));
    let groups: [Group<'_>; 2] = [
        (
            "institution",
            Kind::SettleClaim,
            &institutions,
            &claim_accounts,
        ),
        ("merchant", Kind::SettlePayout, &merchants, &payout_accounts),
    ];
    for (party_kind, kind, totals, accounts) in groups {
        for ((party, cur), (amount, count)) in totals {
            line.execute(params![d, party_kind, party, cur, amount, count])?;
            let (debit, credit) = accounts(party);
            post(
                c,
                &Posting {
                    kind,
                    debit: &debit,
                    credit: &credit,
                    currency: cur,
                    amount: *amount,
                    voucher_id: None,
                    redemption_id: None,
                    settlement_date: Some(&d),
                    now,
                },
            )?;
        }
    }
    let mut mark = c.prepare_cached("UPDATE redemptions SET settlement_date = ?2 WHERE id = ?1")?;
    for (id, ..) in &rows {
        mark.execute(params![id, d])?;
    }
    Ok(SettleOutcome::Created(
        read_settlement(c, date)?.expect("the settlement was just written"),
    ))
}

#[cfg(test)]
mod tests;
