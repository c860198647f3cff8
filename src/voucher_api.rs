//! HTTP API for vouchers, redemptions and settlements.
//!
//! - `POST /v1/vouchers` (billing, `Idempotency-Key`) mints a PIN and enqueues its delivery;
//!   `GET /v1/vouchers/{id}`; `POST /v1/vouchers/{id}/revoke`.
//! - `POST /v1/redemptions` (merchant) checks and captures in one step;
//!   `POST /v1/redemptions/{id}/reverse`.
//! - `GET /v1/settlements/{date}` (admin; JSON, or CSV with `?format=csv` or
//!   `Accept: text/csv`), `POST /v1/settlements/{date}` runs the settlement.
//!
//! Neither responses nor errors ever carry a PIN. A declined redemption is `402` with a
//! decline code; an unknown PIN and a PIN issued for another merchant get the same one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::api::{
    Amount, ApiError, ApiState, Client, ErrorBody, PathParam, authenticate,
    describe_json_error_for, idempotency_key, read_body, require_admin, rfc3339, valid_id,
};
use crate::config::{Role, VouchersConfig, valid_callback_url, valid_party_id};
use crate::ledger::{self, SettleOutcome};
use crate::metrics::{CodeLabel, ScopeLabel};
use crate::now_ms;
use crate::store::NewDelivery;
use crate::vouchers::{
    self, Decline, FUNDING_SOURCES, IssueOutcome, NewVoucher, RedeemOutcome, RedeemRequest,
    ReverseOutcome, RevokeOutcome, format_amount, parse_amount,
};

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/v1/vouchers", post(issue))
        .route("/v1/vouchers/{id}", get(get_voucher))
        .route("/v1/vouchers/{id}/revoke", post(revoke))
        .route("/v1/redemptions", post(redeem))
        .route("/v1/redemptions/{id}/reverse", post(reverse))
        .route(
            "/v1/settlements/{date}",
            get(get_settlement).post(run_settlement),
        )
}

/// Failed-guess counting and lockout, per merchant token and across all of them.
pub struct Lockout {
    token_limit: usize,
    global_limit: usize,
    window_ms: i64,
    lockout_ms: i64,
    inner: Mutex<LockState>,
}

#[derive(Default)]
struct LockState {
    tokens: HashMap<String, Window>,
    global: Window,
}

#[derive(Default)]
struct Window {
    failures: VecDeque<i64>,
    locked_until: i64,
}

impl Window {
    /// Count a failure; true when it starts a lockout.
    fn fail(&mut self, now: i64, limit: usize, window_ms: i64, lockout_ms: i64) -> bool {
        while self.failures.front().is_some_and(|t| *t <= now - window_ms) {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= limit {
            self.failures.clear();
            self.locked_until = now + lockout_ms;
            return true;
        }
        false
    }
}

/// Which lockout is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Token { retry_after_ms: i64 },
    Global { retry_after_ms: i64 },
}

impl Lockout {
    pub fn new(c: &VouchersConfig) -> Lockout {
        Lockout {
            token_limit: c.token_failures as usize,
            global_limit: c.global_failures as usize,
            window_ms: c.failure_window.as_millis() as i64,
            lockout_ms: c.lockout.as_millis() as i64,
            inner: Mutex::new(LockState::default()),
        }
    }

    pub fn check(&self, token: &str, now: i64) -> Result<(), Locked> {
        let s = self.inner.lock().expect("lockout lock");
        if s.global.locked_until > now {
            return Err(Locked::Global {
                retry_after_ms: s.global.locked_until - now,
            });
        }
        match s.tokens.get(token) {
            Some(w) if w.locked_until > now => Err(Locked::Token {
                retry_after_ms: w.locked_until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Record a failed guess; returns the lockouts it started.
    pub fn fail(&self, token: &str, now: i64) -> (bool, bool) {
        let mut s = self.inner.lock().expect("lockout lock");
        let (limit, window, lock) = (self.token_limit, self.window_ms, self.lockout_ms);
        if s.tokens.len() > 100_000 {
            s.tokens
                .retain(|_, w| w.locked_until > now || !w.failures.is_empty());
        }
        let token_locked = s
            .tokens
            .entry(token.to_owned())
            .or_default()
            .fail(now, limit, window, lock);
        let global_locked = s.global.fail(now, self.global_limit, window, lock);
        (token_locked, global_locked)
    }
}

fn ms_to_secs_ceil(ms: i64) -> u64 {
    ((ms.max(1) + 999) / 1000) as u64
}

fn amount_json(v: i64, currency: &str) -> Amount {
    Amount {
        value: format_amount(v),
        currency: currency.to_owned(),
    }
}

/// A positive decimal amount and its ISO 4217 currency.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AmountIn {
    /// A positive decimal string: up to 14 integer digits, up to 4 decimals.
    #[schema(pattern = r"^[0-9]{1,14}(\.[0-9]{1,4})?$", example = "3000")]
    value: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "JPY")]
    currency: String,
}

fn parse_money(a: &AmountIn, what: &str) -> Result<(i64, String), ApiError> {
    let v = parse_amount(&a.value).filter(|v| *v > 0).ok_or_else(|| {
        ApiError::invalid(format!(
            "{what}.value must be a positive decimal string such as \"3000\" or \"12.50\""
        ))
    })?;
    if a.currency.len() != 3 || !a.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::invalid(format!(
            "{what}.currency must be an ISO 4217 code such as \"JPY\""
        )));
    }
    Ok((v, a.currency.clone()))
}

/// Who may redeem the voucher.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserRestriction {
    /// The merchant must give the customer's number, and it must be the voucher's.
    #[serde(default)]
    msisdn_required: bool,
    /// At most 150.
    #[serde(default)]
    #[schema(maximum = 150)]
    min_age: Option<u32>,
    /// ISO 3166 alpha-2 codes; 1 to 250 of them.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 250)]
    countries: Option<Vec<String>>,
}

/// Where the voucher's value comes from.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Funding {
    /// `credit_company`, `bank`, `carrier_bill` or `store`.
    #[schema(example = "credit_company")]
    source: String,
    /// 1 to 64 letters, digits, '-', '_', '.' or ':'.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,64}$", example = "card-co")]
    institution: String,
    /// 1 to 128 characters without control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    reference: Option<String>,
}

/// A voucher to issue; pinpost mints its PIN.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    /// The subscriber's number: E.164, or national with `[registry] default_region`.
    #[schema(example = "+819012345678")]
    msisdn: String,
    amount: AmountIn,
    /// A merchant id (1 to 64 letters, digits, '-', '_', '.', ':') or `*` for any.
    #[schema(example = "shop-1")]
    payee: String,
    #[serde(default)]
    user_restriction: Option<UserRestriction>,
    /// Free-form attributes, at most 4096 bytes as JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Map<String, serde_json::Value>>,
    funding: Funding,
    /// RFC 3339; give this or `ttl`, not both.
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// A duration such as `24h`; give this or `expires_at`, not both.
    #[serde(default)]
    #[schema(example = "24h")]
    ttl: Option<String>,
    /// Whether the voucher may be redeemed in parts.
    #[serde(default)]
    allow_partial: bool,
    /// Where state changes are posted (http or https); the token needs a callback secret.
    #[serde(default)]
    #[schema(format = "uri", max_length = 2048)]
    callback_url: Option<String>,
}

/// A voucher issued (or the replay of an earlier issuance).
#[derive(Serialize, ToSchema)]
struct VoucherIssued {
    id: String,
    /// `issued` when created; the voucher's current state on a replay.
    state: String,
    delivery_id: String,
    #[schema(format = DateTime)]
    expires_at: String,
}

const ISSUE_FIELDS: &str = "msisdn, amount {value, currency}, payee, user_restriction \
    {msisdn_required, min_age, countries}, attributes, funding {source, institution, reference}, \
    expires_at, ttl, allow_partial, callback_url";

fn valid_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// Where a client's callbacks go: the request's URL, else the token's default.
pub(crate) fn callback_target(
    client: &Client,
    requested: Option<String>,
) -> Result<Option<String>, ApiError> {
    match requested {
        Some(u) => {
            if !valid_callback_url(&u) {
                return Err(ApiError::invalid(
                    "callback_url must be an http:// or https:// URL",
                ));
            }
            if !client.can_callback {
                return Err(ApiError::invalid(
                    "this token has no callback_secret_file to sign callbacks with",
                ));
            }
            Ok(Some(u))
        }
        None => Ok(client.callback_url.clone()),
    }
}

/// Issue a voucher (billing): mint its PIN and deliver it to the subscriber's devices.
///
/// The answer never carries the PIN.
#[utoipa::path(
    post,
    path = "/v1/vouchers",
    tag = "vouchers",
    params(
        ("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; a retry with the same key and body is answered as before", pattern = "^[!-~]{1,255}$"),
    ),
    request_body(content = IssueRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The replay of an earlier issuance with the same key and body", body = VoucherIssued),
        (status = 201, description = "Issued; its delivery is queued", body = VoucherIssued),
        (status = 400, description = "`invalid_json`, `idempotency_key_required` or `invalid_idempotency_key`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden` (a merchant token) or `destination_blocked` by the fraud and cost caps", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request` or `idempotency_conflict`", body = ErrorBody),
        (status = 429, description = "`cap_exceeded`: a send cap is reached; nothing was sent", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "`unavailable` (storage) or `pin_space_exhausted`", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn issue(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&state, &headers)?;
    if !matches!(client.role, Role::Billing | Role::Admin) {
        return Err(forbidden("issuing vouchers needs a billing token"));
    }
    let key = idempotency_key(&headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let req: IssueRequest =
        serde_json::from_slice(&bytes).map_err(|e| describe_json_error_for(&e, ISSUE_FIELDS))?;
    drop(bytes);

    let msisdn = crate::registry::normalize_msisdn(&req.msisdn, state.default_region.as_deref())
        .map_err(|e| ApiError::invalid(format!("msisdn: {e}")))?;
    let (amount, currency) = parse_money(&req.amount, "amount")?;
    if req.payee != "*" && !valid_party_id(&req.payee) {
        return Err(ApiError::invalid(
            "payee must be a merchant id (1 to 64 letters, digits, '-', '_', '.', ':') or \"*\"",
        ));
    }
    let r = req.user_restriction.unwrap_or_default();
    if r.min_age.is_some_and(|a| a > 150) {
        return Err(ApiError::invalid(
            "user_restriction.min_age must be at most 150",
        ));
    }
    let countries = match r.countries {
        None => None,
        Some(list) => {
            if list.is_empty()
                || list.len() > 250
                || !list
                    .iter()
                    .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(ApiError::invalid(
                    "user_restriction.countries must be ISO 3166 alpha-2 codes such as \"JP\"",
                ));
            }
            Some(serde_json::to_string(&list).expect("strings serialise"))
        }
    };
    let attributes = match req.attributes {
        None => None,
        Some(m) => {
            let text = serde_json::Value::Object(m).to_string();
            if text.len() > 4096 {
                return Err(ApiError::invalid("attributes must be at most 4096 bytes"));
            }
            Some(text)
        }
    };
    if !FUNDING_SOURCES.contains(&req.funding.source.as_str()) {
        return Err(ApiError::invalid(format!(
            "funding.source must be one of {}",
            FUNDING_SOURCES.join(", ")
        )));
    }
    if !valid_party_id(&req.funding.institution) {
        return Err(ApiError::invalid(
            "funding.institution must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
        ));
    }
    if req
        .funding
        .reference
        .as_deref()
        .is_some_and(|s| !valid_text(s, 128))
    {
        return Err(ApiError::invalid(
            "funding.reference must be 1 to 128 characters without control characters",
        ));
    }
    let now = now_ms();
    let cfg = &state.vouchers;
    let max_ttl = cfg.max_ttl.as_millis() as i64;
    let expires_at = match (&req.expires_at, &req.ttl) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give expires_at or ttl, not both"));
        }
        (Some(s), None) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                ApiError::invalid(
                    "expires_at must be an RFC 3339 time such as 2026-12-01T00:00:00Z",
                )
            })?;
            (t.unix_timestamp_nanos() / 1_000_000) as i64
        }
        (None, Some(t)) => {
            let d = crate::config::parse_duration(t)
                .map_err(|e| ApiError::invalid(format!("ttl: {e}")))?;
            now + d.as_millis() as i64
        }
        (None, None) => now + cfg.default_ttl.as_millis() as i64,
    };
    if expires_at <= now {
        return Err(ApiError::invalid(
            "the voucher would expire before it is issued",
        ));
    }
    if expires_at - now > max_ttl {
        return Err(ApiError::invalid(format!(
            "the voucher may live at most {}",
            crate::config::format_duration(cfg.max_ttl)
        )));
    }
    let callback_url = callback_target(&client, req.callback_url)?;

    let fingerprint = state.keys.fingerprint(&[
        b"voucher/v1",
        msisdn.as_bytes(),
        &amount.to_be_bytes(),
        currency.as_bytes(),
        req.payee.as_bytes(),
        &[r.msisdn_required as u8],
        &r.min_age.unwrap_or(u32::MAX).to_be_bytes(),
        countries.as_deref().unwrap_or("").as_bytes(),
        attributes.as_deref().unwrap_or("").as_bytes(),
        req.funding.source.as_bytes(),
        req.funding.institution.as_bytes(),
        req.funding.reference.as_deref().unwrap_or("").as_bytes(),
        req.expires_at.as_deref().unwrap_or("").as_bytes(),
        req.ttl.as_deref().unwrap_or("").as_bytes(),
        &[req.allow_partial as u8],
        callback_url.as_deref().unwrap_or("").as_bytes(),
    ]);

    let mut reservation = match state.caps.check(&msisdn, now) {
        Ok(r) => Some(r),
        // A retry of an issuance accepted before goes on to be answered as a replay; it
        // mints nothing and sends nothing.
        Err(d) => {
            let (client_name, k) = (client.name.clone(), key.clone());
            let known = state
                .store
                .read(move |c| vouchers::issue_replay(c, &client_name, &k, &fingerprint))
                .await
                .map_err(ApiError::unavailable)?;
            if known.is_none() {
                return Err(crate::api::caps_denied(&state, d));
            }
            None
        }
    };
    // A fresh PIN per attempt; a hash collision with a live voucher mints again.
    for _ in 0..4 {
        let pin = vouchers::mint_pin(cfg.pin_length);
        let pin_hash = state.keys.pin_hash(&pin);
        let id = uuid::Uuid::now_v7().to_string();
        let delivery_id = uuid::Uuid::now_v7().to_string();
        let delivery = NewDelivery {
            id: delivery_id.clone(),
            msisdn: msisdn.clone(),
            channel: state.default_channel.clone(),
            pin_ct: state.keys.seal(&pin, delivery_id.as_bytes()),
            amount_value: Some(format_amount(amount)),
            amount_currency: Some(currency.clone()),
            payee: (req.payee != "*").then(|| req.payee.clone()),
            expires_at: Some(expires_at),
            now,
            client: client.name.clone(),
            idempotency_key: format!("voucher/{id}"),
            fingerprint,
            callback_url: callback_url.clone(),
        };
        drop(pin);
        let voucher = NewVoucher {
            id: id.clone(),
            client: client.name.clone(),
            msisdn: msisdn.clone(),
            pin_hash,
            currency: currency.clone(),
            amount,
            allow_partial: req.allow_partial,
            payee: req.payee.clone(),
            msisdn_required: r.msisdn_required,
            min_age: r.min_age,
            countries: countries.clone(),
            attributes: attributes.clone(),
            funding_source: req.funding.source.clone(),
            institution: req.funding.institution.clone(),
            funding_reference: req.funding.reference.clone(),
            expires_at,
            delivery_id: delivery_id.clone(),
            callback_url: callback_url.clone(),
            now,
            idempotency_key: key.clone(),
            fingerprint,
        };
        let outcome = state
            .store
            .issue_voucher(voucher, delivery)
            .await
            .map_err(|e| {
                if let Some(r) = reservation.take() {
                    r.release();
                }
                ApiError::unavailable(e)
            })?;
        match outcome {
            IssueOutcome::Created { id, delivery_id } => {
                state.metrics.vouchers_issued.inc();
                return Ok((
                    StatusCode::CREATED,
                    axum::Json(VoucherIssued {
                        id,
                        state: "issued".to_owned(),
                        delivery_id,
                        expires_at: rfc3339(expires_at),
                    }),
                )
                    .into_response());
            }
            IssueOutcome::Replay { id } => {
                if let Some(r) = reservation.take() {
                    r.release();
                }
                let v = read_voucher(&state, &id).await?;
                return Ok(axum::Json(VoucherIssued {
                    id: v.id,
                    state: v.state,
                    delivery_id: v.delivery_id,
                    expires_at: rfc3339(v.expires_at),
                })
                .into_response());
            }
            IssueOutcome::Conflict => {
                if let Some(r) = reservation.take() {
                    r.release();
                }
                return Err(ApiError::invalid(
                    "this Idempotency-Key was used with a different request",
                )
                .with_code("idempotency_conflict"));
            }
            IssueOutcome::PinCollision => {
                tracing::warn!("a minted PIN collided with an existing voucher; minting again");
            }
        }
    }
    if let Some(r) = reservation.take() {
        r.release();
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "pin_space_exhausted",
        "no unused PIN could be minted; raise vouchers.pin_length",
    ))
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message.to_owned())
}

async fn read_voucher(state: &ApiState, id: &str) -> Result<vouchers::VoucherView, ApiError> {
    let id = id.to_owned();
    state
        .store
        .read(move |c| vouchers::read(c, &id))
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such voucher"))
}

/// A voucher as `GET /v1/vouchers/{id}` shows it. Never the PIN.
#[derive(Serialize, ToSchema)]
struct VoucherOut {
    id: String,
    /// `issued`, `delivered`, `partially_redeemed`, `redeemed`, `expired` or `revoked`.
    state: String,
    msisdn: String,
    amount: Amount,
    remaining: Amount,
    allow_partial: bool,
    payee: String,
    user_restriction: UserRestrictionOut,
    #[schema(value_type = Option<Object>)]
    attributes: Option<serde_json::Value>,
    funding: FundingOut,
    #[schema(format = DateTime)]
    expires_at: String,
    delivery_id: String,
    /// The state of the PIN's delivery.
    delivery_state: Option<crate::store::State>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
struct UserRestrictionOut {
    msisdn_required: bool,
    min_age: Option<u32>,
    countries: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
struct FundingOut {
    source: String,
    institution: String,
    reference: Option<String>,
}

fn voucher_json(v: &vouchers::VoucherView) -> VoucherOut {
    let countries: Option<Vec<String>> = v
        .countries
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    let attributes: Option<serde_json::Value> = v
        .attributes
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    VoucherOut {
        id: v.id.clone(),
        state: v.state.clone(),
        msisdn: v.msisdn.clone(),
        amount: amount_json(v.amount, &v.currency),
        remaining: amount_json(v.remaining, &v.currency),
        allow_partial: v.allow_partial,
        payee: v.payee.clone(),
        user_restriction: UserRestrictionOut {
            msisdn_required: v.msisdn_required,
            min_age: v.min_age,
            countries,
        },
        attributes,
        funding: FundingOut {
            source: v.funding_source.clone(),
            institution: v.institution.clone(),
            reference: v.funding_reference.clone(),
        },
        expires_at: rfc3339(v.expires_at),
        delivery_id: v.delivery_id.clone(),
        delivery_state: v
            .delivery_state
            .as_deref()
            .and_then(crate::store::State::parse),
        created_at: rfc3339(v.created_at),
        updated_at: rfc3339(v.updated_at),
    }
}

/// A voucher (billing: its own; admin: any). Never the PIN.
#[utoipa::path(
    get,
    path = "/v1/vouchers/{id}",
    tag = "vouchers",
    params(("id" = String, Path, description = "The voucher id")),
    responses(
        (status = 200, description = "The voucher", body = VoucherOut),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such voucher (or another client's; merchants see none)", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn get_voucher(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let client = voucher_client(&state, &headers, &id)?;
    let v = read_voucher(&state, &id).await?;
    if client.role != Role::Admin && v.client != client.name {
        return Err(voucher_not_found());
    }
    Ok(axum::Json(voucher_json(&v)).into_response())
}

fn voucher_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such voucher")
}

/// The caller of a voucher endpoint: billing or admin (merchants see no vouchers).
fn voucher_client(state: &ApiState, headers: &HeaderMap, id: &str) -> Result<Client, ApiError> {
    let client = authenticate(state, headers)?;
    if !valid_id(id) || client.role == Role::Merchant {
        return Err(voucher_not_found());
    }
    Ok(client)
}

/// Revoke a live voucher; a delivery not yet sent is cancelled.
#[utoipa::path(
    post,
    path = "/v1/vouchers/{id}/revoke",
    tag = "vouchers",
    params(("id" = String, Path, description = "The voucher id")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such voucher (or another client's; merchants see none)", body = ErrorBody),
        (status = 409, description = "`not_revocable`: the voucher has ended", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn revoke(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let client = voucher_client(&state, &headers, &id)?;
    let not_found = voucher_not_found;
    let owner = (client.role != Role::Admin).then(|| client.name.clone());
    let vid = id.clone();
    let now = now_ms();
    let out = state
        .store
        .write(move |c| vouchers::revoke(c, &vid, owner.as_deref(), now))
        .await
        .map_err(ApiError::unavailable)?;
    match out {
        RevokeOutcome::Revoked { delivery_cancelled } => Ok(axum::Json(Revoked {
            id,
            state: "revoked",
            delivery_cancelled,
        })
        .into_response()),
        RevokeOutcome::NotFound => Err(not_found()),
        RevokeOutcome::Conflict(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_revocable",
            format!("the voucher is {s} and can no longer be revoked"),
        )),
    }
}

/// A voucher revoked.
#[derive(Serialize, ToSchema)]
struct Revoked {
    id: String,
    /// Always `revoked`.
    state: &'static str,
    /// Whether the PIN's delivery was cancelled before it was sent.
    delivery_cancelled: bool,
}

/// What the merchant knows of its customer, checked against the voucher's restriction.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct Customer {
    #[serde(default)]
    age: Option<u32>,
    /// ISO 3166 alpha-2.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{2}$", example = "JP")]
    country: Option<String>,
}

/// A redemption: the PIN the customer gave and the amount to capture.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeemIn {
    /// The PIN's digits (8 to 32).
    #[schema(value_type = String, pattern = "^[0-9]{8,32}$", example = "4921773055614410")]
    pin: SecretString,
    amount: AmountIn,
    /// The merchant's order reference: 1 to 128 characters without control characters.
    /// The same reference again answers the first capture.
    #[schema(min_length = 1, max_length = 128, example = "A-1")]
    order_ref: String,
    /// The customer's number, when the voucher requires it.
    #[serde(default)]
    customer_msisdn: Option<String>,
    #[serde(default)]
    customer: Option<Customer>,
}

/// A capture.
#[derive(Serialize, ToSchema)]
struct Redemption {
    redemption_id: String,
    voucher_id: String,
    captured: Amount,
    /// What is left on the voucher.
    remaining: Amount,
}

const REDEEM_FIELDS: &str =
    "pin, amount {value, currency}, order_ref, customer_msisdn, customer {age, country}";

/// A merchant token's client and the merchant it acts for.
fn merchant(state: &ApiState, headers: &HeaderMap) -> Result<(Client, String), ApiError> {
    let client = authenticate(state, headers)?;
    match client.merchant_id.clone() {
        Some(m) if client.role == Role::Merchant => Ok((client, m)),
        _ => Err(forbidden("redemptions need a merchant token")),
    }
}

fn decline(d: Decline) -> ApiError {
    ApiError::new(StatusCode::PAYMENT_REQUIRED, d.code(), d.message())
}

fn locked(state: &ApiState, l: Locked) -> ApiError {
    let (scope, ms) = match l {
        Locked::Token { retry_after_ms } => ("token", retry_after_ms),
        Locked::Global { retry_after_ms } => ("global", retry_after_ms),
    };
    state
        .metrics
        .redemption_declines
        .get_or_create(&CodeLabel { code: "locked_out" })
        .inc();
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "locked_out",
        format!("too many failed redemptions ({scope}); try again after the lockout"),
    )
    .with_retry_after(ms_to_secs_ceil(ms))
}

fn count_guess(state: &ApiState, client: &Client, now: i64) {
    let (token, global) = state.lockout.fail(&client.name, now);
    if token {
        tracing::warn!(token = %client.name, "merchant token locked out after failed redemptions");
        state
            .metrics
            .redemption_lockouts
            .get_or_create(&ScopeLabel { scope: "token" })
            .inc();
    }
    if global {
        tracing::warn!("all redemptions locked out after failed redemptions");
        state
            .metrics
            .redemption_lockouts
            .get_or_create(&ScopeLabel { scope: "global" })
            .inc();
    }
}

/// Redeem a PIN (merchant): check it and capture in one step.
#[utoipa::path(
    post,
    path = "/v1/redemptions",
    tag = "redemptions",
    request_body(content = RedeemIn, content_type = "application/json"),
    responses(
        (status = 200, description = "The same `order_ref` again: the first capture", body = Redemption),
        (status = 201, description = "Captured", body = Redemption),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 402, description = "Declined, with the reason as `code`: `pin_not_valid` (unknown, mistyped, or another merchant's), `voucher_expired`, `voucher_revoked`, `voucher_redeemed`, `currency_mismatch`, `insufficient_balance`, `amount_must_equal_value`, `customer_msisdn_mismatch`, `customer_age_restricted`, `customer_country_restricted`, `order_ref_reused`", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs a merchant token", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`", body = ErrorBody),
        (status = 429, description = "`locked_out`: too many failed redemptions", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn redeem(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (client, merchant_id) = merchant(&state, &headers)?;
    let now = now_ms();
    state
        .lockout
        .check(&client.name, now)
        .map_err(|l| locked(&state, l))?;
    let bytes = read_body(&state, &headers, body).await?;
    let req: RedeemIn =
        serde_json::from_slice(&bytes).map_err(|e| describe_json_error_for(&e, REDEEM_FIELDS))?;
    drop(bytes);
    let (amount, currency) = parse_money(&req.amount, "amount")?;
    if !valid_text(&req.order_ref, 128) {
        return Err(ApiError::invalid(
            "order_ref must be 1 to 128 characters without control characters",
        ));
    }
    let customer = req.customer.unwrap_or_default();
    if customer
        .country
        .as_deref()
        .is_some_and(|c| c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()))
    {
        return Err(ApiError::invalid(
            "customer.country must be an ISO 3166 alpha-2 code such as \"JP\"",
        ));
    }
    let customer_msisdn = match &req.customer_msisdn {
        None => None,
        Some(m) => Some(
            crate::registry::normalize_msisdn(m, state.default_region.as_deref())
                .map_err(|e| ApiError::invalid(format!("customer_msisdn: {e}")))?,
        ),
    };
    // The check digit first: a typo is answered without touching the database.
    let pin = req.pin.expose_secret();
    if pin.len() < 8 || pin.len() > 32 || !vouchers::pin_well_formed(pin, pin.len()) {
        count_guess(&state, &client, now);
        state
            .metrics
            .redemption_declines
            .get_or_create(&CodeLabel {
                code: Decline::PinNotValid.code(),
            })
            .inc();
        return Err(decline(Decline::PinNotValid));
    }
    let q = RedeemRequest {
        redemption_id: uuid::Uuid::now_v7().to_string(),
        pin_hash: state.keys.pin_hash(&req.pin),
        merchant_id,
        order_ref: req.order_ref,
        currency,
        amount,
        customer_msisdn,
        customer_age: customer.age,
        customer_country: customer.country,
        now,
    };
    drop(req.pin);
    let out = state
        .store
        .write(move |c| vouchers::redeem(c, &q))
        .await
        .map_err(ApiError::unavailable)?;
    let (status, cap) = match out {
        RedeemOutcome::Captured(c) => {
            state.metrics.redemptions_captured.inc();
            (StatusCode::CREATED, c)
        }
        RedeemOutcome::Replay(c) => (StatusCode::OK, c),
        RedeemOutcome::Declined(d) => {
            if d.is_guess() {
                count_guess(&state, &client, now);
            }
            state
                .metrics
                .redemption_declines
                .get_or_create(&CodeLabel { code: d.code() })
                .inc();
            return Err(decline(d));
        }
    };
    Ok((
        status,
        axum::Json(Redemption {
            redemption_id: cap.redemption_id,
            voucher_id: cap.voucher_id,
            captured: amount_json(cap.captured, &cap.currency),
            remaining: amount_json(cap.remaining, &cap.currency),
        }),
    )
        .into_response())
}

/// A redemption reversed: its value is back on the voucher.
#[derive(Serialize, ToSchema)]
struct Reversal {
    redemption_id: String,
    /// Always `reversed`.
    state: &'static str,
    voucher_id: String,
    voucher_state: String,
    restored: Amount,
    remaining: Amount,
}

/// Reverse a redemption (merchant), within the reversal window and before settlement.
#[utoipa::path(
    post,
    path = "/v1/redemptions/{id}/reverse",
    tag = "redemptions",
    params(("id" = String, Path, description = "The redemption id")),
    responses(
        (status = 200, description = "Reversed", body = Reversal),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs a merchant token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such redemption (or another merchant's)", body = ErrorBody),
        (status = 409, description = "`already_reversed`, `already_settled` or `reversal_window_closed`", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn reverse(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
) -> Result<Response, ApiError> {
    let (_, merchant_id) = merchant(&state, &headers)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such redemption");
    if !valid_id(&id) {
        return Err(not_found());
    }
    let window = state.vouchers.reversal_window.as_millis() as i64;
    let rid = id.clone();
    let now = now_ms();
    let out = state
        .store
        .write(move |c| vouchers::reverse(c, &rid, &merchant_id, window, now))
        .await
        .map_err(ApiError::unavailable)?;
    let conflict = |code, msg: &str| ApiError::new(StatusCode::CONFLICT, code, msg.to_owned());
    match out {
        ReverseOutcome::Reversed {
            voucher_id,
            currency,
            restored,
            remaining,
            voucher_state,
        } => {
            state.metrics.redemptions_reversed.inc();
            Ok(axum::Json(Reversal {
                redemption_id: id,
                state: "reversed",
                voucher_id,
                voucher_state,
                restored: amount_json(restored, &currency),
                remaining: amount_json(remaining, &currency),
            })
            .into_response())
        }
        ReverseOutcome::NotFound => Err(not_found()),
        ReverseOutcome::AlreadyReversed => Err(conflict(
            "already_reversed",
            "the redemption was reversed before",
        )),
        ReverseOutcome::Settled => Err(conflict(
            "already_settled",
            "the redemption was settled and can no longer be reversed",
        )),
        ReverseOutcome::WindowClosed => Err(conflict(
            "reversal_window_closed",
            "the reversal window of this redemption has passed",
        )),
    }
}

fn parse_date(s: &str) -> Result<time::Date, ApiError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &fmt).map_err(|_| ApiError::invalid("the date must be YYYY-MM-DD (UTC)"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SettlementQuery {
    /// `json` or `csv`; without it, `Accept: text/csv` asks for CSV.
    #[serde(default)]
    #[param(pattern = "^(json|csv)$")]
    format: Option<String>,
}

/// The settlement of a UTC day.
#[derive(Serialize, ToSchema)]
struct SettlementOut {
    /// YYYY-MM-DD (UTC).
    date: String,
    /// Redemptions settled.
    redemptions: i64,
    #[schema(format = DateTime)]
    created_at: String,
    /// What each merchant is paid.
    payouts: Vec<Payout>,
    /// What each funding institution is claimed.
    claims: Vec<Claim>,
}

#[derive(Serialize, ToSchema)]
struct Payout {
    merchant: String,
    amount: Amount,
    redemptions: i64,
}

#[derive(Serialize, ToSchema)]
struct Claim {
    institution: String,
    amount: Amount,
    redemptions: i64,
}

fn settlement_response(s: &ledger::Settlement, status: StatusCode, csv: bool) -> Response {
    if csv {
        return (
            status,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            s.to_csv(),
        )
            .into_response();
    }
    let lines = |kind: &'static str| s.lines.iter().filter(move |l| l.party_kind == kind);
    (
        status,
        axum::Json(SettlementOut {
            date: s.date.clone(),
            redemptions: s.redemptions,
            created_at: rfc3339(s.created_at),
            payouts: lines("merchant")
                .map(|l| Payout {
                    merchant: l.party.clone(),
                    amount: amount_json(l.amount, &l.currency),
                    redemptions: l.count,
                })
                .collect(),
            claims: lines("institution")
                .map(|l| Claim {
                    institution: l.party.clone(),
                    amount: amount_json(l.amount, &l.currency),
                    redemptions: l.count,
                })
                .collect(),
        }),
    )
        .into_response()
}

fn wants_csv(
    headers: &HeaderMap,
    q: Result<Query<SettlementQuery>, QueryRejection>,
) -> Result<bool, ApiError> {
    // A query string serde cannot read (a repeated `format`) is a bad format too.
    let Query(q) = q.map_err(|_| ApiError::invalid("format must be json or csv, given once"))?;
    match q.format.as_deref() {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(_) => Err(ApiError::invalid("format must be json or csv")),
        None => Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

/// The settlement report of a UTC day (admin): payouts per merchant, claims per institution.
#[utoipa::path(
    get,
    path = "/v1/settlements/{date}",
    tag = "settlements",
    params(("date" = String, Path, description = "A UTC day, YYYY-MM-DD", example = "2026-11-24"), SettlementQuery),
    responses(
        (status = 200, description = "The report, as JSON or CSV", content((SettlementOut = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_settled`: the day has not been settled", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a bad date or format", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn get_settlement(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(date): PathParam<String>,
    q: Result<Query<SettlementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let date = parse_date(&date)?;
    let csv = wants_csv(&headers, q)?;
    let s = state
        .store
        .read(move |c| ledger::read_settlement(c, date))
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_settled",
                "this date has not been settled; run pinpost settle --date or POST here",
            )
        })?;
    Ok(settlement_response(&s, StatusCode::OK, csv))
}

/// Settle a UTC day (admin), as `pinpost settle --date` does.
///
/// A redemption is settled once; a second run settles only what was captured since.
#[utoipa::path(
    post,
    path = "/v1/settlements/{date}",
    tag = "settlements",
    params(("date" = String, Path, description = "A UTC day, YYYY-MM-DD", example = "2026-11-24"), SettlementQuery),
    responses(
        (status = 200, description = "The day was settled before: that report", content((SettlementOut = "application/json"), (String = "text/csv"))),
        (status = 201, description = "Settled now: the report", content((SettlementOut = "application/json"), (String = "text/csv"))),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no date in the path", body = ErrorBody),
        (status = 409, description = "`day_not_begun`: the day has not begun yet (UTC)", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a bad date or format", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn run_settlement(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(date): PathParam<String>,
    q: Result<Query<SettlementQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let date = parse_date(&date)?;
    let csv = wants_csv(&headers, q)?;
    let now = now_ms();
    match state
        .store
        .write(move |c| ledger::settle(c, date, now))
        .await
        .map_err(ApiError::unavailable)?
    {
        SettleOutcome::Created(s) => Ok(settlement_response(&s, StatusCode::CREATED, csv)),
        SettleOutcome::Existing(s) => Ok(settlement_response(&s, StatusCode::OK, csv)),
        SettleOutcome::Future => Err(ApiError::new(
            StatusCode::CONFLICT,
            "day_not_begun",
            "that day has not begun yet (UTC)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_per_token_and_global() {
        let cfg = VouchersConfig {
            token_failures: 3,
            global_failures: 5,
            failure_window: std::time::Duration::from_secs(60),
            lockout: std::time::Duration::from_secs(120),
            ..VouchersConfig::default()
        };
        let l = Lockout::new(&cfg);
        assert_eq!(l.fail("a", 0), (false, false));
        assert_eq!(l.fail("a", 1), (false, false));
        assert!(l.check("a", 2).is_ok());
        assert_eq!(l.fail("a", 2), (true, false));
        assert_eq!(
            l.check("a", 3),
            Err(Locked::Token {
                retry_after_ms: 119_999
            })
        );
        assert!(l.check("b", 3).is_ok(), "other tokens go on");
        assert!(l.check("a", 122_002).is_ok(), "the lockout ends");
        assert_eq!(l.fail("c", 3), (false, false));
        assert_eq!(l.fail("d", 4), (false, true), "fifth failure overall");
        assert!(matches!(l.check("b", 5), Err(Locked::Global { .. })));
        // Failures older than the window are forgotten.
        let l = Lockout::new(&cfg);
        assert_eq!(l.fail("x", 0), (false, false));
        assert_eq!(l.fail("x", 1), (false, false));
        assert_eq!(l.fail("x", 61_002), (false, false));
        assert!(l.check("x", 61_003).is_ok());
    }

    #[test]
    fn redeem_json_errors_do_not_quote_the_pin() {
        let canary = "4921773055614410";
        let bodies = [
            format!(
                r#"{{"pin": {canary}, "amount": {{"value": "1", "currency": "JPY"}}, "order_ref": "o"}}"#
            ),
            format!(r#"{{"pin": "{canary}", "{canary}": 1}}"#),
            format!(r#"{{"pin": "{canary}""#),
        ];
        for b in bodies {
            let e = serde_json::from_slice::<RedeemIn>(b.as_bytes())
                .err()
                .expect("must fail");
            let msg = format!("{:?}", describe_json_error_for(&e, REDEEM_FIELDS));
            assert!(!msg.contains(canary), "{msg}");
        }
    }
}
