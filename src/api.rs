//! HTTP API v1 (JSON, bearer tokens).
//!
//! - `POST /v1/deliveries` (Idempotency-Key required) answers `202` once the delivery is
//!   committed to disk;
//! - `GET /v1/deliveries/{id}`, `DELETE /v1/deliveries/{id}`;
//! - `GET /healthz` (process up), `GET /readyz` (migrated, every channel bound).
//!
//! Errors are `{"error": {"code", "message"}}`. No response, error or log line carries a
//! PIN: request bodies are never echoed, and parse errors are described by position only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::Role;
use crate::crypto::Keys;
use crate::store::{CancelOutcome, DeliveryView, EnqueueOutcome, NewDelivery, Store};
use crate::{Channels, now_ms};

/// A configured API client: the SHA-256 of its token, its name and role.
#[derive(Clone)]
pub struct Client {
    pub name: String,
    pub role: Role,
    pub token_sha256: [u8; 32],
    /// The merchant a merchant token redeems for.
    pub merchant_id: Option<String>,
    /// Default callback target of this client's deliveries and vouchers.
    pub callback_url: Option<String>,
    /// Whether a callback secret is configured (the secret itself lives with the sender).
    pub can_callback: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish()
    }
}

pub struct ApiState {
    pub store: Store,
    pub keys: Keys,
    /// The API clients; replaced as a whole when the configuration is reloaded.
    pub clients: arc_swap::ArcSwap<Vec<Client>>,
    pub channels: Arc<Channels>,
    pub default_channel: String,
    pub max_body_bytes: usize,
    pub pin_min: usize,
    pub pin_max: usize,
    /// Region for national-format numbers in the subscriber registry (e.g. "JP").
    pub default_region: Option<String>,
    pub vouchers: crate::config::VouchersConfig,
    pub lockout: crate::voucher_api::Lockout,
    pub caps: Arc<crate::caps::Caps>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/deliveries", axum::routing::post(create_delivery))
        .route(
            "/v1/deliveries/{id}",
            get(get_delivery).delete(cancel_delivery),
        )
        .route(
            "/v1/subscribers/{msisdn}",
            get(get_subscriber)
                .put(put_subscriber)
                .delete(delete_subscriber),
        )
        .route(
            "/v1/subscribers/{msisdn}/devices",
            axum::routing::post(add_device),
        )
        .route(
            "/v1/subscribers/{msisdn}/devices/{id}",
            axum::routing::delete(remove_device),
        )
        .merge(crate::voucher_api::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// An API error. The message is written by pinpost, never copied from input.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "storage unavailable");
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "storage is unavailable; retry with the same Idempotency-Key",
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

pub(crate) fn authenticate(state: &ApiState, headers: &HeaderMap) -> Result<Client, ApiError> {
    let unauthorized = || {
        let mut e = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        );
        e.retry_after = None;
        e
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(unauthorized)?;
    let value = value.to_str().map_err(|_| unauthorized())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(unauthorized)?
        .trim();
    if token.is_empty() {
        return Err(unauthorized());
    }
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut found = None;
    for c in state.clients.load().iter() {
        // Compare every byte of every candidate: no early exit on the first difference.
        let diff = c
            .token_sha256
            .iter()
            .zip(digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(c.clone());
        }
    }
    found.ok_or_else(unauthorized)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDelivery {
    msisdn: String,
    pin: SecretString,
    #[serde(default)]
    amount: Option<Amount>,
    #[serde(default)]
    payee: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    callback_url: Option<String>,
}

#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct Amount {
    value: String,
    currency: String,
}

const DELIVERY_FIELDS: &str =
    "msisdn, pin, amount {value, currency}, payee, expires_at, callback_url";

/// Describe a JSON error without quoting any of the input.
fn describe_json_error(e: &serde_json::Error) -> ApiError {
    describe_json_error_for(e, DELIVERY_FIELDS)
}

/// Describe a JSON error without quoting any of the input; `fields` lists what is allowed.
pub(crate) fn describe_json_error_for(e: &serde_json::Error, fields: &str) -> ApiError {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON ({at})"),
        ),
        Category::Data => {
            let text = e.to_string();
            if let Some(rest) = text.strip_prefix("missing field `") {
                let name: String = rest.chars().take_while(|c| *c != '`').collect();
                if fields.contains(name.as_str()) {
                    return ApiError::invalid(format!("missing field `{name}`"));
                }
            }
            if text.starts_with("unknown field") {
                return ApiError::invalid(format!("unknown field ({at}); allowed: {fields}"));
            }
            ApiError::invalid(format!(
                "a field has the wrong type or value ({at}); fields: {fields}"
            ))
        }
    }
}

/// E.164: '+', a non-zero digit, then 7 to 14 more digits.
pub fn valid_msisdn(s: &str) -> bool {
    let Some(d) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
}

fn valid_amount_value(s: &str) -> bool {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty()
        && int.len() <= 15
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= 4
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (!s.contains('.') || !frac.is_empty())
}

pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub(crate) async fn read_body(
    state: &ApiState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
    }
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body exceeds {} bytes", state.max_body_bytes),
            )
        })
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let v = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "the Idempotency-Key header is required",
        )
    })?;
    let s = v.to_str().unwrap_or("");
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(s.to_owned())
}

async fn create_delivery(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let client = authenticate(&state, &headers)?;
    let key = idempotency_key(&headers)?;
    let bytes = read_body(&state, &headers, body).await?;
    let req: CreateDelivery =
        serde_json::from_slice(&bytes).map_err(|e| describe_json_error(&e))?;
    drop(bytes);

    if !valid_msisdn(&req.msisdn) {
        return Err(ApiError::invalid(
            "msisdn must be E.164: '+', then 8 to 15 digits, not starting with 0",
        ));
    }
    let pin = req.pin.expose_secret();
    if pin.len() < state.pin_min
        || pin.len() > state.pin_max
        || !pin.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ApiError::invalid(format!(
            "pin must be {} to {} digits",
            state.pin_min, state.pin_max
        )));
    }
    if let Some(a) = &req.amount {
        if !valid_amount_value(&a.value) {
            return Err(ApiError::invalid(
                "amount.value must be a decimal string such as \"3000\" or \"12.50\"",
            ));
        }
        if a.currency.len() != 3 || !a.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ApiError::invalid(
                "amount.currency must be an ISO 4217 code such as \"JPY\"",
            ));
        }
    }
    if let Some(p) = &req.payee
        && (p.is_empty() || p.chars().count() > 64 || p.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "payee must be 1 to 64 characters without control characters",
        ));
    }
    let now = now_ms();
    let expires_at = match &req.expires_at {
        None => None,
        Some(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
                ApiError::invalid(
                    "expires_at must be an RFC 3339 time such as 2026-12-01T00:00:00Z",
                )
            })?;
            let ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
            if ms <= now {
                return Err(ApiError::invalid("expires_at is in the past"));
            }
            Some(ms)
        }
    };
    let callback_url = crate::voucher_api::callback_target(&client, req.callback_url)?;
    let amount_value = req.amount.as_ref().map(|a| a.value.clone());
    let amount_currency = req.amount.as_ref().map(|a| a.currency.clone());
    let expires_bytes = expires_at.map(|e| e.to_be_bytes()).unwrap_or_default();
    let fingerprint = state.keys.fingerprint(&[
        b"delivery/v1",
        req.msisdn.as_bytes(),
        pin.as_bytes(),
        amount_value.as_deref().unwrap_or("").as_bytes(),
        amount_currency.as_deref().unwrap_or("").as_bytes(),
        req.payee.as_deref().unwrap_or("").as_bytes(),
        &expires_bytes,
        callback_url.as_deref().unwrap_or("").as_bytes(),
    ]);
    let reservation = match state.caps.check(&req.msisdn, now) {
        Ok(r) => r,
        Err(denied) => {
            // A retry of a request that was accepted before is answered as before.
            return match state
                .store
                .idempotent_delivery(&client.name, &key)
                .await
                .map_err(ApiError::unavailable)?
            {
                Some((fp, id)) if fp.as_slice() == fingerprint.as_slice() => Ok((
                    StatusCode::ACCEPTED,
                    axum::Json(json!({"id": id, "state": "queued"})),
                )
                    .into_response()),
                Some(_) => Err(ApiError::invalid(
                    "this Idempotency-Key was used with a different request",
                )
                .with_code("idempotency_conflict")),
                None => Err(caps_denied(&state, denied)),
            };
        }
    };
    let id = uuid::Uuid::now_v7().to_string();
    let pin_ct = state.keys.seal(&req.pin, id.as_bytes());
    let outcome = state
        .store
        .enqueue(NewDelivery {
            id,
            msisdn: req.msisdn,
            channel: state.default_channel.clone(),
            pin_ct,
            amount_value,
            amount_currency,
            payee: req.payee,
            expires_at,
            now,
            client: client.name,
            idempotency_key: key,
            fingerprint,
            callback_url,
        })
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            reservation.release();
            return Err(ApiError::unavailable(e));
        }
    };
    if !matches!(outcome, EnqueueOutcome::Created { .. }) {
        reservation.release();
    }
    match outcome {
        EnqueueOutcome::Created { id } | EnqueueOutcome::Replay { id } => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"id": id, "state": "queued"})),
        )
            .into_response()),
        EnqueueOutcome::Conflict => Err(ApiError::invalid(
            "this Idempotency-Key was used with a different request",
        )
        .with_code("idempotency_conflict")),
    }
}

impl ApiError {
    pub(crate) fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
}

fn visible(client: &Client, d: &DeliveryView) -> bool {
    client.role == Role::Admin || d.client == client.name
}

fn delivery_json(d: &DeliveryView) -> serde_json::Value {
    let attempts: Vec<_> = d
        .attempts
        .iter()
        .map(|a| {
            json!({
                "seq": a.seq,
                "step": a.step,
                "channel": a.channel,
                "started_at": rfc3339(a.started_at),
                "finished_at": a.finished_at.map(rfc3339),
                "outcome": a.outcome,
                "provider_ref": a.provider_ref,
                "error": a.error,
            })
        })
        .collect();
    let amount = match (&d.amount_value, &d.amount_currency) {
        (Some(v), Some(c)) => json!({"value": v, "currency": c}),
        _ => serde_json::Value::Null,
    };
    json!({
        "id": d.id,
        "msisdn": d.msisdn,
        "state": d.state,
        "final": d.is_final || d.state.is_terminal(),
        "channel": d.channel,
        "amount": amount,
        "payee": d.payee,
        "expires_at": d.expires_at.map(rfc3339),
        "last_error": d.last_error,
        "steps": d.steps.iter().map(|st| json!({
            "step": st.step,
            "kind": st.kind,
            "address": st.address,
            "channel": st.channel,
            "outcome": st.outcome,
            "reason": st.reason,
            "started_at": st.started_at.map(rfc3339),
            "ended_at": st.ended_at.map(rfc3339),
        })).collect::<Vec<_>>(),
        "attempts": attempts,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    })
}

pub(crate) fn valid_id(id: &str) -> bool {
    id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

async fn get_delivery(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let client = authenticate(&state, &headers)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such delivery");
    if !valid_id(&id) {
        return Err(not_found());
    }
    let d = state.store.get(&id).await.map_err(ApiError::unavailable)?;
    match d {
        Some(d) if visible(&client, &d) => Ok(axum::Json(delivery_json(&d)).into_response()),
        _ => Err(not_found()),
    }
}

async fn cancel_delivery(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let client = authenticate(&state, &headers)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such delivery");
    if !valid_id(&id) {
        return Err(not_found());
    }
    match state.store.get(&id).await.map_err(ApiError::unavailable)? {
        Some(d) if visible(&client, &d) => {}
        _ => return Err(not_found()),
    }
    match state
        .store
        .cancel(&id, now_ms())
        .await
        .map_err(ApiError::unavailable)?
    {
        CancelOutcome::Cancelled => {
            Ok(axum::Json(json!({"id": id, "state": "cancelled"})).into_response())
        }
        CancelOutcome::NotFound => Err(not_found()),
        CancelOutcome::Conflict(s) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!(
                "the delivery is {} and can no longer be cancelled",
                s.as_str()
            ),
        )),
    }
}

pub(crate) fn require_admin(client: &Client) -> Result<(), ApiError> {
    if client.role == Role::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this needs an admin token",
        ))
    }
}

pub(crate) fn subscriber_msisdn(state: &ApiState, raw: &str) -> Result<String, ApiError> {
    crate::registry::normalize_msisdn(raw, state.default_region.as_deref())
        .map_err(|e| ApiError::invalid(format!("msisdn: {e}")))
}

fn subscriber_json(s: &crate::registry::Subscriber) -> serde_json::Value {
    json!({
        "msisdn": s.msisdn,
        "name": s.name,
        "devices": s.devices.iter().map(device_json).collect::<Vec<_>>(),
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
    })
}

fn device_json(d: &crate::registry::Device) -> serde_json::Value {
    json!({
        "id": d.id,
        "kind": d.kind,
        "address": d.address,
        "priority": d.priority,
        "step_timeout": d.step_timeout_ms.map(|ms| crate::config::format_duration(std::time::Duration::from_millis(ms as u64))),
        "options": d.options,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PutSubscriber {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddDevice {
    kind: String,
    address: String,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    step_timeout: Option<String>,
    #[serde(default)]
    options: Option<serde_json::Map<String, serde_json::Value>>,
}

async fn put_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    let bytes = read_body(&state, &headers, body).await?;
    let req: PutSubscriber = if bytes.iter().all(u8::is_ascii_whitespace) {
        PutSubscriber::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| describe_json_error(&e))?
    };
    if let Some(n) = &req.name
        && (n.chars().count() > 128 || n.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "name must be at most 128 characters without control characters",
        ));
    }
    let now = now_ms();
    let m = msisdn.clone();
    let created = state
        .store
        .write(move |c| crate::registry::put_subscriber(c, &m, req.name.as_deref(), now))
        .await
        .map_err(ApiError::unavailable)?;
    let s = state
        .store
        .read(move |c| crate::registry::read_subscriber(c, &msisdn))
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such subscriber"))?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(subscriber_json(&s))).into_response())
}

async fn get_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    match state
        .store
        .read(move |c| crate::registry::read_subscriber(c, &msisdn))
        .await
        .map_err(ApiError::unavailable)?
    {
        Some(s) => Ok(axum::Json(subscriber_json(&s)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such subscriber",
        )),
    }
}

async fn delete_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    let gone = state
        .store
        .write(move |c| crate::registry::delete_subscriber(c, &msisdn))
        .await
        .map_err(ApiError::unavailable)?;
    if gone {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such subscriber",
        ))
    }
}

async fn add_device(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    let bytes = read_body(&state, &headers, body).await?;
    let req: AddDevice = serde_json::from_slice(&bytes).map_err(|e| describe_json_error(&e))?;
    let address = crate::registry::normalize_address(
        &req.kind,
        &req.address,
        state.default_region.as_deref(),
    )
    .map_err(|e| {
        ApiError::invalid(format!(
            "{}: {e}",
            if crate::registry::KINDS.contains(&req.kind.as_str()) {
                "address"
            } else {
                "kind"
            }
        ))
    })?;
    if req.priority.is_some_and(|p| !(0..=1_000_000).contains(&p)) {
        return Err(ApiError::invalid("priority must be between 0 and 1000000"));
    }
    let step_timeout_ms = match &req.step_timeout {
        None => None,
        Some(t) => {
            let d = crate::config::parse_duration(t)
                .map_err(|e| ApiError::invalid(format!("step_timeout: {e}")))?;
            if d.is_zero() {
                return Err(ApiError::invalid("step_timeout must be positive"));
            }
            Some(d.as_millis() as i64)
        }
    };
    let dev = crate::registry::NewDevice {
        kind: req.kind,
        address,
        priority: req.priority,
        step_timeout_ms,
        options: req.options.map(serde_json::Value::Object),
    };
    let now = now_ms();
    let added = state
        .store
        .write(move |c| crate::registry::add_device(c, &msisdn, &dev, now))
        .await
        .map_err(ApiError::unavailable)?;
    match added {
        Some(d) => Ok((StatusCode::CREATED, axum::Json(device_json(&d))).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such subscriber",
        )),
    }
}

async fn remove_device(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    Path((raw, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    let gone = state
        .store
        .write(move |c| crate::registry::remove_device(c, &msisdn, &id))
        .await
        .map_err(ApiError::unavailable)?;
    if gone {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such device",
        ))
    }
}

async fn metrics(AxState(state): AxState<Arc<ApiState>>) -> Response {
    if let Ok(counts) = state.store.counts().await {
        for s in crate::store::State::ALL {
            let n = counts
                .iter()
                .find(|(st, _)| *st == s)
                .map_or(0, |(_, n)| *n);
            state
                .metrics
                .deliveries
                .get_or_create(&crate::metrics::StateLabel { state: s.as_str() })
                .set(n);
        }
    }
    for (id, ch) in state.channels.iter() {
        let up = !matches!(ch.health().await, pinpost_channel_core::Health::Down { .. });
        state
            .metrics
            .channel_up
            .get_or_create(&crate::metrics::ChannelLabel {
                channel: id.clone(),
            })
            .set(up as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The answer to a send the fraud and cost caps refuse: nothing was stored or sent.
pub(crate) fn caps_denied(state: &ApiState, d: crate::caps::Denied) -> ApiError {
    match d {
        crate::caps::Denied::Blocked { rule } => {
            state
                .metrics
                .caps_denied
                .get_or_create(&crate::metrics::CodeLabel {
                    code: "destination_blocked",
                })
                .inc();
            ApiError::new(StatusCode::FORBIDDEN, "destination_blocked", rule)
        }
        crate::caps::Denied::Over {
            retry_after_secs,
            cap,
        } => {
            state
                .metrics
                .caps_denied
                .get_or_create(&crate::metrics::CodeLabel {
                    code: "cap_exceeded",
                })
                .inc();
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "cap_exceeded",
                format!("the {cap} cap is reached; nothing was sent"),
            )
            .with_retry_after(retry_after_secs)
        }
    }
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(AxState(state): AxState<Arc<ApiState>>) -> Response {
    let mut down = HashMap::new();
    for (id, ch) in state.channels.iter() {
        if let pinpost_channel_core::Health::Down { reason } = ch.health().await {
            down.insert(id.clone(), reason);
        }
    }
    if down.is_empty() {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not_ready", "channels_down": down})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msisdn_rules() {
        assert!(valid_msisdn("+819012345678"));
        assert!(valid_msisdn("+12025550123"));
        assert!(!valid_msisdn("819012345678"));
        assert!(!valid_msisdn("+0190123456"));
        assert!(!valid_msisdn("+8190-1234-5678"));
        assert!(!valid_msisdn("+1234567"));
        assert!(!valid_msisdn("+1234567890123456"));
    }

    #[test]
    fn amount_rules() {
        assert!(valid_amount_value("3000"));
        assert!(valid_amount_value("12.50"));
        assert!(!valid_amount_value("12."));
        assert!(!valid_amount_value("-1"));
        assert!(!valid_amount_value("1e3"));
        assert!(!valid_amount_value(""));
    }

    #[test]
    fn json_errors_do_not_quote_input() {
        let canary = "7305917735186203";
        let bodies = [
            format!(r#"{{"msisdn": "+819012345678", "pin": {canary}}}"#),
            format!(r#"{{"msisdn": "+819012345678", "pin": "1", "{canary}": 1}}"#),
            format!(r#"{{"msisdn": {canary}, "pin": "1"}}"#),
            format!(r#"{{"msisdn": "+81", "pin": "{canary}""#),
            format!(r#"{{"msisdn": "+81", "pin": "{canary}", "amount": {{"value": {canary}}}}}"#),
        ];
        for b in bodies {
            let e = serde_json::from_slice::<CreateDelivery>(b.as_bytes())
                .err()
                .expect("must fail");
            let api = describe_json_error(&e);
            assert!(!api.message.contains(canary), "{}", api.message);
        }
    }
}
