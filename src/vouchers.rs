//! Vouchers: the PIN record (verification code, amount, payee, user restriction, expiry),
//! its redemption by merchants, and the ledger entries each step posts.
//!
//! - A PIN is minted from the OS-seeded CSPRNG, its last digit a Damm check digit, which
//!   catches every single-digit error and every adjacent transposition. A mistyped PIN is
//!   declined before any lookup.
//! - The voucher keeps only a keyed hash of the PIN ([`crate::crypto::Keys::pin_hash`]). The
//!   PIN itself travels encrypted in the voucher's delivery and is wiped when that ends.
//! - Every function here takes a `&Connection` inside the writer's transaction, so a
//!   redemption's check and capture are one atomic step: two concurrent redemptions of one
//!   PIN are serialised by the single writer, and exactly one can win.

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::ledger::{self, Kind};
use crate::store::StoreError;

/// Voucher states, stored with a CHECK constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoucherState {
    Issued,
    Delivered,
    PartiallyRedeemed,
    Redeemed,
    Expired,
    Revoked,
}

impl VoucherState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Delivered => "delivered",
            Self::PartiallyRedeemed => "partially_redeemed",
            Self::Redeemed => "redeemed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "issued" => Self::Issued,
            "delivered" => Self::Delivered,
            "partially_redeemed" => Self::PartiallyRedeemed,
            "redeemed" => Self::Redeemed,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
    /// Whether value can still be redeemed from it.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            Self::Issued | Self::Delivered | Self::PartiallyRedeemed
        )
    }
}

// Damm's quasigroup of order 10 (H. M. Damm, 2004): totally anti-symmetric, so the check
// digit detects all single-digit errors and all adjacent transpositions.
const DAMM: [[u8; 10]; 10] = [
    [0, 3, 1, 7, 5, 9, 8, 6, 4, 2],
    [7, 0, 9, 2, 1, 5, 4, 8, 6, 3],
    [4, 2, 0, 6, 8, 7, 1, 3, 5, 9],
    [1, 7, 5, 0, 9, 8, 3, 4, 2, 6],
    [6, 1, 2, 3, 0, 4, 5, 9, 7, 8],
    [3, 6, 7, 4, 2, 0, 9, 5, 8, 1],
    [5, 8, 6, 9, 7, 2, 0, 1, 3, 4],
    [8, 9, 4, 5, 3, 6, 2, 0, 1, 7],
    [9, 4, 3, 8, 6, 1, 7, 2, 0, 5],
    [2, 5, 8, 1, 4, 3, 6, 7, 9, 0],
];

/// The interim digit after `digits` (ASCII '0'..='9'); the check digit of a payload.
pub fn damm_digit(digits: &[u8]) -> u8 {
    digits
        .iter()
        .fold(0u8, |acc, d| DAMM[acc as usize][(d - b'0') as usize])
}

/// Whether `pin` is all digits, `len` long, with a valid Damm check digit.
pub fn pin_well_formed(pin: &str, len: usize) -> bool {
    pin.len() == len && pin.bytes().all(|b| b.is_ascii_digit()) && damm_digit(pin.as_bytes()) == 0
}

/// Mint a PIN: `len - 1` uniformly random digits and the Damm check digit.
pub fn mint_pin(len: usize) -> SecretString {
    let mut rng = rand::rng();
    let mut s = Zeroizing::new(String::with_capacity(len));
    for _ in 0..len - 1 {
        s.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    let check = damm_digit(s.as_bytes());
    s.push(char::from(b'0' + check));
    SecretString::from(s.as_str().to_owned())
}

/// Amounts are stored in ten-thousandths of the currency unit.
pub const AMOUNT_SCALE: i64 = 10_000;

/// Parse a decimal string ("3000", "12.50") of at most 14 integer and 4 fraction digits.
pub fn parse_amount(s: &str) -> Option<i64> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) if !f.is_empty() => (i, f),
        Some(_) => return None,
        None => (s, ""),
    };
    if int.is_empty()
        || int.len() > 14
        || frac.len() > 4
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let i: i64 = int.parse().ok()?;
    let mut f: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    for _ in frac.len()..4 {
        f *= 10;
    }
    i.checked_mul(AMOUNT_SCALE)?.checked_add(f)
}

/// Format a stored amount with as few fraction digits as it needs ("3000", "12.5").
pub fn format_amount(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let v = v.unsigned_abs();
    let int = v / AMOUNT_SCALE as u64;
    let frac = v % AMOUNT_SCALE as u64;
    if frac == 0 {
        format!("{sign}{int}")
    } else {
        let f = format!("{frac:04}");
        format!("{sign}{int}.{}", f.trim_end_matches('0'))
    }
}

/// Funding sources of the patent: who received the value the voucher stands for.
pub const FUNDING_SOURCES: &[&str] = &["credit_company", "bank", "carrier_bill", "store"];

/// A voucher as the API creates it.
#[derive(Debug, Clone)]
pub struct NewVoucher {
    pub id: String,
    pub client: String,
    pub msisdn: String,
    pub pin_hash: [u8; 32],
    pub currency: String,
    pub amount: i64,
    pub allow_partial: bool,
    pub payee: String,
    pub msisdn_required: bool,
    pub min_age: Option<u32>,
    /// JSON array text.
    pub countries: Option<String>,
    /// JSON object text.
    pub attributes: Option<String>,
    pub funding_source: String,
    pub institution: String,
    pub funding_reference: Option<String>,
    pub expires_at: i64,
    pub delivery_id: String,
    pub callback_url: Option<String>,
    pub now: i64,
    pub idempotency_key: String,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueOutcome {
    Created {
        id: String,
        delivery_id: String,
    },
    Replay {
        id: String,
    },
    Conflict,
    /// The minted PIN's hash is taken: mint another.
    PinCollision,
}

/// The idempotency check of an issuance; `None`: the key is new.
pub fn issue_replay(
    c: &Connection,
    client: &str,
    key: &str,
    fingerprint: &[u8; 32],
) -> Result<Option<IssueOutcome>, StoreError> {
    let existing: Option<(Vec<u8>, String)> = c
        .prepare_cached(
            "SELECT fingerprint, voucher_id FROM voucher_idempotency
             WHERE client = ?1 AND key = ?2",
        )?
        .query_row(params![client, key], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(existing.map(|(fp, id)| {
        if fp.as_slice() == fingerprint.as_slice() {
            IssueOutcome::Replay { id }
        } else {
            IssueOutcome::Conflict
        }
    }))
}

pub fn pin_hash_taken(c: &Connection, pin_hash: &[u8; 32]) -> Result<bool, StoreError> {
    Ok(
        c.prepare_cached("SELECT 1 FROM vouchers WHERE pin_hash = ?1")?
            .query_row(params![pin_hash.as_slice()], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// Insert the voucher row, its idempotency record and the issuance entry. The caller has
/// stored its delivery in the same transaction.
pub fn insert(c: &Connection, v: &NewVoucher) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO vouchers (id, client, msisdn, pin_hash, state, currency, amount, remaining,
            allow_partial, payee, msisdn_required, min_age, countries, attributes,
            funding_source, institution, funding_reference, expires_at, delivery_id,
            callback_url, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'issued', ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
            ?15, ?16, ?17, ?18, ?19, ?19)",
    )?
    .execute(params![
        v.id,
        v.client,
        v.msisdn,
        v.pin_hash.as_slice(),
        v.currency,
        v.amount,
        v.allow_partial,
        v.payee,
        v.msisdn_required,
        v.min_age,
        v.countries,
        v.attributes,
        v.funding_source,
        v.institution,
        v.funding_reference,
        v.expires_at,
        v.delivery_id,
        v.callback_url,
        v.now
    ])?;
    c.prepare_cached(
        "INSERT INTO voucher_idempotency (client, key, fingerprint, voucher_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        v.client,
        v.idempotency_key,
        v.fingerprint.as_slice(),
        v.id,
        v.now
    ])?;
    ledger::post(
        c,
        &ledger::Posting {
            kind: Kind::Issue,
            debit: &ledger::receivable(&v.institution),
            credit: ledger::VOUCHER_LIABILITY,
            currency: &v.currency,
            amount: v.amount,
            voucher_id: Some(&v.id),
            redemption_id: None,
            settlement_date: None,
            now: v.now,
        },
    )
}

/// A voucher as reads show it. Never holds the PIN or its hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VoucherView {
    pub id: String,
    pub client: String,
    pub msisdn: String,
    pub state: String,
    pub currency: String,
    pub amount: i64,
    pub remaining: i64,
    pub allow_partial: bool,
    pub payee: String,
    pub msisdn_required: bool,
    pub min_age: Option<u32>,
    pub countries: Option<String>,
    pub attributes: Option<String>,
    pub funding_source: String,
    pub institution: String,
    pub funding_reference: Option<String>,
    pub expires_at: i64,
    pub delivery_id: String,
    pub delivery_state: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn read(c: &Connection, id: &str) -> Result<Option<VoucherView>, StoreError> {
    Ok(c.prepare_cached(
        "SELECT v.id, v.client, v.msisdn, v.state, v.currency, v.amount, v.remaining,
                v.allow_partial, v.payee, v.msisdn_required, v.min_age, v.countries,
                v.attributes, v.funding_source, v.institution, v.funding_reference,
                v.expires_at, v.delivery_id, d.state, v.created_at, v.updated_at
         FROM vouchers v LEFT JOIN deliveries d ON d.id = v.delivery_id
         WHERE v.id = ?1",
    )?
    .query_row(params![id], |r| {
        Ok(VoucherView {
            id: r.get(0)?,
            client: r.get(1)?,
            msisdn: r.get(2)?,
            state: r.get(3)?,
            currency: r.get(4)?,
            amount: r.get(5)?,
            remaining: r.get(6)?,
            allow_partial: r.get(7)?,
            payee: r.get(8)?,
            msisdn_required: r.get(9)?,
            min_age: r.get(10)?,
            countries: r.get(11)?,
            attributes: r.get(12)?,
            funding_source: r.get(13)?,
            institution: r.get(14)?,
            funding_reference: r.get(15)?,
            expires_at: r.get(16)?,
            delivery_id: r.get(17)?,
            delivery_state: r.get(18)?,
            created_at: r.get(19)?,
            updated_at: r.get(20)?,
        })
    })
    .optional()?)
}

/// Release what is left of a voucher back to its funder and end it.
fn end_voucher(c: &Connection, id: &str, state: VoucherState, now: i64) -> Result<(), StoreError> {
    let (remaining, currency, institution): (i64, String, String) = c
        .prepare_cached("SELECT remaining, currency, institution FROM vouchers WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if remaining > 0 {
        ledger::post(
            c,
            &ledger::Posting {
                kind: Kind::Release,
                debit: ledger::VOUCHER_LIABILITY,
                credit: &ledger::receivable(&institution),
                currency: &currency,
                amount: remaining,
                voucher_id: Some(id),
                redemption_id: None,
                settlement_date: None,
                now,
            },
        )?;
    }
    c.prepare_cached(
        "UPDATE vouchers SET state = ?2, remaining = 0, updated_at = ?3 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), now])?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// Revoked; whether its delivery was stopped before it was sent.
    Revoked {
        delivery_cancelled: bool,
    },
    NotFound,
    Conflict(String),
}

/// Revoke a live voucher: its remaining value is released and a delivery that has not been
/// handed to a peer yet is cancelled (which wipes the encrypted PIN).
pub fn revoke(
    c: &Connection,
    id: &str,
    client: Option<&str>,
    now: i64,
) -> Result<RevokeOutcome, StoreError> {
    let row: Option<(String, String, String)> = c
        .prepare_cached("SELECT state, client, delivery_id FROM vouchers WHERE id = ?1")?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((state, owner, delivery_id)) = row else {
        return Ok(RevokeOutcome::NotFound);
    };
    if client.is_some_and(|cl| cl != owner) {
        return Ok(RevokeOutcome::NotFound);
    }
    if !VoucherState::parse(&state).is_some_and(VoucherState::is_live) {
        return Ok(RevokeOutcome::Conflict(state));
    }
    end_voucher(c, id, VoucherState::Revoked, now)?;
    let cancelled = c
        .prepare_cached(
            "UPDATE deliveries SET state = 'cancelled', final = 1, pin_ct = NULL, updated_at = ?2,
                last_error = 'the voucher was revoked'
             WHERE id = ?1 AND state IN ('queued', 'retry_wait')",
        )?
        .execute(params![delivery_id, now])?;
    Ok(RevokeOutcome::Revoked {
        delivery_cancelled: cancelled > 0,
    })
}

/// Expire live vouchers whose time has come (at most `limit` per call).
pub fn expire_due(c: &Connection, now: i64, limit: usize) -> Result<usize, StoreError> {
    let ids: Vec<String> = {
        let mut st = c.prepare_cached(
            "SELECT id FROM vouchers
             WHERE state IN ('issued', 'delivered', 'partially_redeemed') AND expires_at <= ?1
             LIMIT ?2",
        )?;
        let rows = st.query_map(params![now, limit as i64], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for id in &ids {
        end_voucher(c, id, VoucherState::Expired, now)?;
    }
    Ok(ids.len())
}

/// What a merchant asks to capture.
#[derive(Debug, Clone)]
pub struct RedeemRequest {
    pub redemption_id: String,
    pub pin_hash: [u8; 32],
    pub merchant_id: String,
    pub order_ref: String,
    pub currency: String,
    pub amount: i64,
    /// E.164, normalised by the caller.
    pub customer_msisdn: Option<String>,
    pub customer_age: Option<u32>,
    pub customer_country: Option<String>,
    pub now: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Captured {
    pub redemption_id: String,
    pub voucher_id: String,
    pub currency: String,
    pub captured: i64,
    pub remaining: i64,
}

/// Why a redemption was declined. `PinNotValid` covers both an unknown PIN and one issued
/// for another merchant, so a decline never tells whether a PIN exists elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decline {
    PinNotValid,
    Expired,
    Revoked,
    AlreadyRedeemed,
    CurrencyMismatch,
    InsufficientBalance,
    AmountMustEqualValue,
    CustomerMsisdnMismatch,
    CustomerAgeRestricted,
    CustomerCountryRestricted,
    /// This merchant already used the order reference for another PIN or amount.
    OrderRefReused,
}

impl Decline {
    pub fn code(self) -> &'static str {
        match self {
            Self::PinNotValid => "pin_not_valid",
            Self::Expired => "voucher_expired",
            Self::Revoked => "voucher_revoked",
            Self::AlreadyRedeemed => "voucher_redeemed",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::InsufficientBalance => "insufficient_balance",
            Self::AmountMustEqualValue => "amount_must_equal_value",
            Self::CustomerMsisdnMismatch => "customer_msisdn_mismatch",
            Self::CustomerAgeRestricted => "customer_age_restricted",
            Self::CustomerCountryRestricted => "customer_country_restricted",
            Self::OrderRefReused => "order_ref_reused",
        }
    }
    pub fn message(self) -> &'static str {
        match self {
            Self::PinNotValid => "the PIN is not valid for this merchant",
            Self::Expired => "the voucher has expired",
            Self::Revoked => "the voucher was revoked",
            Self::AlreadyRedeemed => "the voucher has been redeemed in full",
            Self::CurrencyMismatch => "the amount's currency is not the voucher's",
            Self::InsufficientBalance => "the amount exceeds the voucher's remaining value",
            Self::AmountMustEqualValue => {
                "the voucher is single-use: the amount must equal its value"
            }
            Self::CustomerMsisdnMismatch => "the voucher is restricted to its subscriber",
            Self::CustomerAgeRestricted => "the customer does not meet the voucher's age limit",
            Self::CustomerCountryRestricted => "the voucher is not valid in the customer's country",
            Self::OrderRefReused => "this order_ref was used for a different redemption",
        }
    }
    /// Whether the decline counts towards brute-force lockout: only guesses do.
    pub fn is_guess(self) -> bool {
        self == Self::PinNotValid
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedeemOutcome {
    Captured(Captured),
    /// The same merchant, order_ref, PIN and amount again: the first answer.
    Replay(Captured),
    Declined(Decline),
}

struct VoucherRow {
    id: String,
    state: VoucherState,
    msisdn: String,
    currency: String,
    amount: i64,
    remaining: i64,
    allow_partial: bool,
    payee: String,
    msisdn_required: bool,
    min_age: Option<u32>,
    countries: Option<String>,
    expires_at: i64,
}

/// Check and capture in one step (the caller runs it inside the writer's transaction).
pub fn redeem(c: &Connection, q: &RedeemRequest) -> Result<RedeemOutcome, StoreError> {
    let voucher: Option<VoucherRow> = c
        .prepare_cached(
            "SELECT id, state, msisdn, currency, amount, remaining, allow_partial, payee,
                    msisdn_required, min_age, countries, expires_at
             FROM vouchers WHERE pin_hash = ?1",
        )?
        .query_row(params![q.pin_hash.as_slice()], |r| {
            Ok(VoucherRow {
                id: r.get(0)?,
                state: VoucherState::parse(&r.get::<_, String>(1)?)
                    .unwrap_or(VoucherState::Revoked),
                msisdn: r.get(2)?,
                currency: r.get(3)?,
                amount: r.get(4)?,
                remaining: r.get(5)?,
                allow_partial: r.get(6)?,
                payee: r.get(7)?,
                msisdn_required: r.get(8)?,
                min_age: r.get(9)?,
                countries: r.get(10)?,
                expires_at: r.get(11)?,
            })
        })
        .optional()?;
    let v = match voucher {
        Some(v) if v.payee == "*" || v.payee == q.merchant_id => v,
        _ => return Ok(RedeemOutcome::Declined(Decline::PinNotValid)),
    };
    // A retried request: same merchant and order_ref.
    let earlier: Option<(String, String, i64)> = c
        .prepare_cached(
            "SELECT id, voucher_id, amount FROM redemptions
             WHERE merchant_id = ?1 AND order_ref = ?2",
        )?
        .query_row(params![q.merchant_id, q.order_ref], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    if let Some((rid, vid, amount)) = earlier {
        if vid == v.id && amount == q.amount && v.currency == q.currency {
            return Ok(RedeemOutcome::Replay(Captured {
                redemption_id: rid,
                voucher_id: vid,
                currency: v.currency,
                captured: amount,
                remaining: v.remaining,
            }));
        }
        return Ok(RedeemOutcome::Declined(Decline::OrderRefReused));
    }
    let decline = match v.state {
        VoucherState::Revoked => Some(Decline::Revoked),
        VoucherState::Expired => Some(Decline::Expired),
        VoucherState::Redeemed => Some(Decline::AlreadyRedeemed),
        _ if v.expires_at <= q.now => Some(Decline::Expired),
        _ if v.currency != q.currency => Some(Decline::CurrencyMismatch),
        _ if q.amount > v.remaining => Some(Decline::InsufficientBalance),
        _ if !v.allow_partial && q.amount != v.amount => Some(Decline::AmountMustEqualValue),
        _ if v.msisdn_required && q.customer_msisdn.as_deref() != Some(v.msisdn.as_str()) => {
            Some(Decline::CustomerMsisdnMismatch)
        }
        _ if v
            .min_age
            .is_some_and(|min| q.customer_age.is_none_or(|a| a < min)) =>
        {
            Some(Decline::CustomerAgeRestricted)
        }
        _ => match &v.countries {
            Some(list) => {
                let allowed: Vec<String> = serde_json::from_str(list).unwrap_or_default();
                match &q.customer_country {
                    Some(cc) if allowed.iter().any(|a| a == cc) => None,
                    _ => Some(Decline::CustomerCountryRestricted),
                }
            }
            None => None,
        },
    };
    if let Some(d) = decline {
        return Ok(RedeemOutcome::Declined(d));
    }
    let remaining = v.remaining - q.amount;
    let state = if remaining == 0 {
        VoucherState::Redeemed
    } else {
        VoucherState::PartiallyRedeemed
    };
    c.prepare_cached(
        "INSERT INTO redemptions (id, voucher_id, merchant_id, order_ref, currency, amount, state,
            captured_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'captured', ?7)",
    )?
    .execute(params![
        q.redemption_id,
        v.id,
        q.merchant_id,
        q.order_ref,
        q.currency,
        q.amount,
        q.now
    ])?;
    c.prepare_cached(
        "UPDATE vouchers SET remaining = ?2, state = ?3, updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![v.id, remaining, state.as_str(), q.now])?;
    ledger::post(
        c,
        &ledger::Posting {
            kind: Kind::Redeem,
            debit: ledger::VOUCHER_LIABILITY,
            credit: &ledger::payable(&q.merchant_id),
            currency: &q.currency,
            amount: q.amount,
            voucher_id: Some(&v.id),
            redemption_id: Some(&q.redemption_id),
            settlement_date: None,
            now: q.now,
        },
    )?;
    Ok(RedeemOutcome::Captured(Captured {
        redemption_id: q.redemption_id.clone(),
        voucher_id: v.id,
        currency: v.currency,
        captured: q.amount,
        remaining,
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReverseOutcome {
    Reversed {
        voucher_id: String,
        currency: String,
        restored: i64,
        remaining: i64,
        voucher_state: String,
    },
    NotFound,
    AlreadyReversed,
    Settled,
    WindowClosed,
}

/// Reverse a captured redemption of `merchant_id` within `window_ms` of its capture and
/// before it is settled. The value returns to the voucher; if the voucher has ended
/// meanwhile (expired, revoked), it is released to the funder instead.
pub fn reverse(
    c: &Connection,
    redemption_id: &str,
    merchant_id: &str,
    window_ms: i64,
    now: i64,
) -> Result<ReverseOutcome, StoreError> {
    type Row = (String, String, String, i64, String, i64, Option<String>);
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT voucher_id, merchant_id, currency, amount, state, captured_at, settlement_date
             FROM redemptions WHERE id = ?1",
        )?
        .query_row(params![redemption_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .optional()?;
    let Some((voucher_id, owner, currency, amount, state, captured_at, settled)) = row else {
        return Ok(ReverseOutcome::NotFound);
    };
    if owner != merchant_id {
        return Ok(ReverseOutcome::NotFound);
    }
    if state == "reversed" {
        return Ok(ReverseOutcome::AlreadyReversed);
    }
    if settled.is_some() {
        return Ok(ReverseOutcome::Settled);
    }
    if now > captured_at + window_ms {
        return Ok(ReverseOutcome::WindowClosed);
    }
    c.prepare_cached("UPDATE redemptions SET state = 'reversed', reversed_at = ?2 WHERE id = ?1")?
        .execute(params![redemption_id, now])?;
    ledger::post(
        c,
        &ledger::Posting {
            kind: Kind::Reverse,
            debit: &ledger::payable(merchant_id),
            credit: ledger::VOUCHER_LIABILITY,
            currency: &currency,
            amount,
            voucher_id: Some(&voucher_id),
            redemption_id: Some(redemption_id),
            settlement_date: None,
            now,
        },
    )?;
    let (vstate, vamount, remaining, institution, delivery_state): (
        String,
        i64,
        i64,
        String,
        Option<String>,
    ) = c
        .prepare_cached(
            "SELECT v.state, v.amount, v.remaining, v.institution, d.state
             FROM vouchers v LEFT JOIN deliveries d ON d.id = v.delivery_id WHERE v.id = ?1",
        )?
        .query_row(params![voucher_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
    let ended = matches!(
        VoucherState::parse(&vstate),
        Some(VoucherState::Expired | VoucherState::Revoked)
    );
    let (new_remaining, new_state) = if ended {
        ledger::post(
            c,
            &ledger::Posting {
                kind: Kind::Release,
                debit: ledger::VOUCHER_LIABILITY,
                credit: &ledger::receivable(&institution),
                currency: &currency,
                amount,
                voucher_id: Some(&voucher_id),
                redemption_id: Some(redemption_id),
                settlement_date: None,
                now,
            },
        )?;
        (remaining, vstate)
    } else {
        let r = remaining + amount;
        let s = if r < vamount {
            VoucherState::PartiallyRedeemed
        } else if delivery_state.as_deref() == Some("delivered") {
            VoucherState::Delivered
        } else {
            VoucherState::Issued
        };
        (r, s.as_str().to_owned())
    };
    c.prepare_cached(
        "UPDATE vouchers SET remaining = ?2, state = ?3, updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![voucher_id, new_remaining, new_state, now])?;
    Ok(ReverseOutcome::Reversed {
        voucher_id,
        currency,
        restored: if ended { 0 } else { amount },
        remaining: new_remaining,
        voucher_state: new_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn damm_catches_single_errors_and_adjacent_transpositions() {
        // The worked example of the Damm algorithm: 572 has check digit 4.
        assert_eq!(damm_digit(b"572"), 4);
        assert_eq!(damm_digit(b"5724"), 0);
        for _ in 0..200 {
            let pin = mint_pin(16);
            let p = pin.expose_secret().as_bytes().to_vec();
            assert!(pin_well_formed(pin.expose_secret(), 16));
            for i in 0..p.len() {
                for d in b'0'..=b'9' {
                    if d != p[i] {
                        let mut q = p.clone();
                        q[i] = d;
                        assert_ne!(damm_digit(&q), 0, "single error at {i}");
                    }
                }
                if i + 1 < p.len() && p[i] != p[i + 1] {
                    let mut q = p.clone();
                    q.swap(i, i + 1);
                    assert_ne!(damm_digit(&q), 0, "transposition at {i}");
                }
            }
        }
    }

    #[test]
    fn minted_pins_are_digits_and_differ() {
        let a = mint_pin(16);
        let b = mint_pin(16);
        assert_eq!(a.expose_secret().len(), 16);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(!format!("{a:?}").contains(a.expose_secret()));
        // Every digit value turns up in every position over enough draws.
        let mut seen = [[false; 10]; 15];
        for _ in 0..2000 {
            let p = mint_pin(16);
            for (i, d) in p.expose_secret().bytes().take(15).enumerate() {
                seen[i][(d - b'0') as usize] = true;
            }
        }
        assert!(seen.iter().all(|pos| pos.iter().all(|s| *s)));
    }

    #[test]
    fn amounts_round_trip() {
        assert_eq!(parse_amount("3000"), Some(30_000_000));
        assert_eq!(parse_amount("12.5"), Some(125_000));
        assert_eq!(parse_amount("0.0001"), Some(1));
        assert_eq!(parse_amount("12."), None);
        assert_eq!(parse_amount("-1"), None);
        assert_eq!(parse_amount("1e3"), None);
        assert_eq!(parse_amount("123456789012345"), None);
        assert_eq!(format_amount(30_000_000), "3000");
        assert_eq!(format_amount(125_000), "12.5");
        assert_eq!(format_amount(1), "0.0001");
        assert_eq!(format_amount(-125_000), "-12.5");
    }
}
