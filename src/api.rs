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
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

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
    routes().with_state(state)
}

/// Every route, before the state is attached (the OpenAPI document's test reads this table).
pub(crate) fn routes() -> Router<Arc<ApiState>> {
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
        .merge(crate::console::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::extract::DefaultBodyLimit::disable())
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
    pub(crate) fn unavailable(e: impl std::fmt::Display + 'static) -> Self {
        if let Some(crate::store::StoreError::Unsupported(what)) =
            (&e as &dyn std::any::Any).downcast_ref::<crate::store::StoreError>()
        {
            return Self::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_supported",
                format!("{what} needs the SQLite storage backend"),
            );
        }
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

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to branch on and a message for people. The message never
/// quotes the request.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// For example `invalid_request`, `unauthorized`, `not_found`, or a redemption decline.
    #[schema(example = "invalid_request")]
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        resp
    }
}

/// Axum's `Path`, with a segment that is not valid percent-encoded UTF-8 answered as
/// `400 invalid_path` in the API's error format.
pub(crate) struct PathParam<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for PathParam<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        use axum::extract::rejection::PathRejection;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(PathParam(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "a path segment is not valid percent-encoded UTF-8",
            )
            .into_response()),
            Err(e) => Err(e.into_response()),
        }
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

/// A PIN to deliver.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateDelivery {
    /// E.164: '+', then 8 to 15 digits, not starting with 0.
    #[schema(pattern = r"^\+[1-9][0-9]{7,14}$", example = "+819012345678")]
    msisdn: String,
    /// Digits only, of the configured length (`[pin] min_length` to `max_length`, within 4
    /// to 64).
    #[schema(value_type = String, pattern = "^[0-9]{4,64}$", example = "4921773055614410")]
    pin: SecretString,
    #[serde(default)]
    amount: Option<Amount>,
    /// 1 to 64 characters without control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    payee: Option<String>,
    /// RFC 3339, in the future.
    #[serde(default)]
    #[schema(format = DateTime, example = "2030-12-01T00:00:00Z")]
    expires_at: Option<String>,
    /// Where state changes are posted (http or https); the token needs a callback secret.
    #[serde(default)]
    #[schema(format = "uri", max_length = 2048)]
    callback_url: Option<String>,
}

/// A decimal amount and its ISO 4217 currency.
#[derive(Deserialize, Serialize, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Amount {
    /// A decimal string: up to 15 integer digits, up to 4 decimals.
    #[schema(pattern = r"^[0-9]{1,15}(\.[0-9]{1,4})?$", example = "3000")]
    pub(crate) value: String,
    #[schema(pattern = "^[A-Z]{3}$", example = "JPY")]
    pub(crate) currency: String,
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

/// A delivery accepted (`state` is `queued`) or cancelled (`cancelled`).
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryRef {
    id: String,
    state: crate::store::State,
}

/// Enqueue a PIN delivery.
///
/// `202` once the delivery is on disk. The same `Idempotency-Key` with the same body answers
/// the same; with another body, `422 idempotency_conflict`.
#[utoipa::path(
    post,
    path = "/v1/deliveries",
    tag = "deliveries",
    params(
        ("Idempotency-Key" = String, Header, description = "1 to 255 visible ASCII characters; a retry with the same key and body is answered as before", pattern = "^[!-~]{1,255}$"),
    ),
    request_body(content = CreateDelivery, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored and queued (or the replay of an earlier request)", body = DeliveryRef),
        (status = 400, description = "`invalid_json`, `idempotency_key_required` or `invalid_idempotency_key`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`destination_blocked` by the fraud and cost caps", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request` or `idempotency_conflict`", body = ErrorBody),
        (status = 429, description = "`cap_exceeded`: a send cap is reached; nothing was sent", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
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
                    axum::Json(DeliveryRef {
                        id,
                        state: crate::store::State::Queued,
                    }),
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
            axum::Json(DeliveryRef {
                id,
                state: crate::store::State::Queued,
            }),
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

/// A delivery as `GET /v1/deliveries/{id}` shows it. Never the PIN.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryOut {
    id: String,
    msisdn: String,
    state: crate::store::State,
    /// pinpost will do nothing more with the delivery.
    #[serde(rename = "final")]
    is_final: bool,
    channel: String,
    amount: Option<Amount>,
    payee: Option<String>,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    last_error: Option<String>,
    /// The plan: one step per registered device tried, in order.
    steps: Vec<StepOut>,
    attempts: Vec<AttemptOut>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct StepOut {
    step: i64,
    kind: String,
    address: String,
    channel: Option<String>,
    outcome: Option<String>,
    reason: Option<String>,
    #[schema(format = DateTime)]
    started_at: Option<String>,
    #[schema(format = DateTime)]
    ended_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct AttemptOut {
    seq: i64,
    step: i64,
    channel: String,
    #[schema(format = DateTime)]
    started_at: String,
    #[schema(format = DateTime)]
    finished_at: Option<String>,
    outcome: String,
    provider_ref: Option<String>,
    error: Option<String>,
}

fn delivery_json(d: &DeliveryView) -> DeliveryOut {
    let amount = match (&d.amount_value, &d.amount_currency) {
        (Some(v), Some(c)) => Some(Amount {
            value: v.clone(),
            currency: c.clone(),
        }),
        _ => None,
    };
    DeliveryOut {
        id: d.id.clone(),
        msisdn: d.msisdn.clone(),
        state: d.state,
        is_final: d.is_final || d.state.is_terminal(),
        channel: d.channel.clone(),
        amount,
        payee: d.payee.clone(),
        expires_at: d.expires_at.map(rfc3339),
        last_error: d.last_error.clone(),
        steps: d
            .steps
            .iter()
            .map(|st| StepOut {
                step: st.step,
                kind: st.kind.clone(),
                address: st.address.clone(),
                channel: st.channel.clone(),
                outcome: st.outcome.clone(),
                reason: st.reason.clone(),
                started_at: st.started_at.map(rfc3339),
                ended_at: st.ended_at.map(rfc3339),
            })
            .collect(),
        attempts: d
            .attempts
            .iter()
            .map(|a| AttemptOut {
                seq: a.seq,
                step: a.step,
                channel: a.channel.clone(),
                started_at: rfc3339(a.started_at),
                finished_at: a.finished_at.map(rfc3339),
                outcome: a.outcome.clone(),
                provider_ref: a.provider_ref.clone(),
                error: a.error.clone(),
            })
            .collect(),
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A delivery's state, plan and attempts.
///
/// Billing tokens see their own deliveries; admin tokens see all.
#[utoipa::path(
    get,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryOut),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such delivery (or another client's)", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn get_delivery(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
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

/// Cancel a delivery not yet handed to a channel.
#[utoipa::path(
    delete,
    path = "/v1/deliveries/{id}",
    tag = "deliveries",
    params(("id" = String, Path, description = "The delivery id")),
    responses(
        (status = 200, description = "Cancelled", body = DeliveryRef),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such delivery (or another client's)", body = ErrorBody),
        (status = 409, description = "`not_cancellable`: the delivery was already handed to a channel or is final", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn cancel_delivery(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
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
        CancelOutcome::Cancelled => Ok(axum::Json(DeliveryRef {
            id,
            state: crate::store::State::Cancelled,
        })
        .into_response()),
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

/// A subscriber and the devices a PIN to its number tries, in order.
#[derive(Serialize, ToSchema)]
pub(crate) struct SubscriberOut {
    /// E.164.
    msisdn: String,
    name: Option<String>,
    devices: Vec<DeviceOut>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeviceOut {
    id: String,
    /// `sms`, `ussd`, `pager`, `fax`, `email` or `carnav`.
    kind: String,
    /// Normalised for the kind (E.164 for numbers).
    address: String,
    /// Lower goes first.
    priority: i64,
    /// A duration such as `2m`; null: the configured default.
    step_timeout: Option<String>,
    #[schema(value_type = Option<Object>)]
    options: Option<serde_json::Value>,
}

fn subscriber_json(s: &crate::registry::Subscriber) -> SubscriberOut {
    SubscriberOut {
        msisdn: s.msisdn.clone(),
        name: s.name.clone(),
        devices: s.devices.iter().map(device_json).collect(),
        created_at: rfc3339(s.created_at),
        updated_at: rfc3339(s.updated_at),
    }
}

fn device_json(d: &crate::registry::Device) -> DeviceOut {
    DeviceOut {
        id: d.id.clone(),
        kind: d.kind.clone(),
        address: d.address.clone(),
        priority: d.priority,
        step_timeout: d
            .step_timeout_ms
            .map(|ms| crate::config::format_duration(std::time::Duration::from_millis(ms as u64))),
        options: d.options.clone(),
    }
}

/// The subscriber's details, which a PUT replaces; an empty or `null` body is the same as `{}`.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutSubscriber {
    /// At most 128 characters without control characters.
    #[serde(default)]
    #[schema(max_length = 128)]
    name: Option<String>,
}

/// A device to register.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddDevice {
    #[schema(example = "sms")]
    kind: String,
    /// A phone number for `sms`, `ussd`, `fax` and `pager` (national formats with
    /// `[registry] default_region`), an e-mail address for `email`, a unit id for `carnav`.
    #[schema(example = "+819012345678")]
    address: String,
    /// Lower goes first; 0 to 1000000.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000)]
    priority: Option<i64>,
    /// How long this device gets before the next is tried, such as `2m`.
    #[serde(default)]
    #[schema(example = "2m")]
    step_timeout: Option<String>,
    /// Kind-specific options, e.g. `openpgp_key` for `email`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    options: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Create or rename a subscriber (admin).
#[utoipa::path(
    put,
    path = "/v1/subscribers/{msisdn}",
    tag = "subscribers",
    params(("msisdn" = String, Path, description = "The subscriber's number: E.164, or national with `[registry] default_region`", example = "+819012345678")),
    request_body(content = Option<PutSubscriber>, content_type = "application/json"),
    responses(
        (status = 200, description = "Renamed", body = SubscriberOut),
        (status = 201, description = "Created", body = SubscriberOut),
        (status = 400, description = "`invalid_json`, or `invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: the subscriber was removed meanwhile", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a bad number or name", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn put_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(raw): PathParam<String>,
    body: Body,
) -> Result<Response, ApiError> {
    require_admin(&authenticate(&state, &headers)?)?;
    let msisdn = subscriber_msisdn(&state, &raw)?;
    let bytes = read_body(&state, &headers, body).await?;
    // The body is optional: empty or `null` is the same as `{}`.
    let req: PutSubscriber = if bytes.iter().all(u8::is_ascii_whitespace) {
        PutSubscriber::default()
    } else {
        serde_json::from_slice::<Option<PutSubscriber>>(&bytes)
            .map_err(|e| describe_json_error(&e))?
            .unwrap_or_default()
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

/// A subscriber with its devices (admin).
#[utoipa::path(
    get,
    path = "/v1/subscribers/{msisdn}",
    tag = "subscribers",
    params(("msisdn" = String, Path, description = "The subscriber's number: E.164, or national with `[registry] default_region`", example = "+819012345678")),
    responses(
        (status = 200, description = "The subscriber", body = SubscriberOut),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such subscriber", body = ErrorBody),
        (status = 422, description = "`invalid_request`: not a phone number", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn get_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(raw): PathParam<String>,
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

/// Remove a subscriber and its devices (admin).
#[utoipa::path(
    delete,
    path = "/v1/subscribers/{msisdn}",
    tag = "subscribers",
    params(("msisdn" = String, Path, description = "The subscriber's number: E.164, or national with `[registry] default_region`", example = "+819012345678")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such subscriber", body = ErrorBody),
        (status = 422, description = "`invalid_request`: not a phone number", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn delete_subscriber(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(raw): PathParam<String>,
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

/// Register a device for a subscriber (admin).
#[utoipa::path(
    post,
    path = "/v1/subscribers/{msisdn}/devices",
    tag = "subscribers",
    params(("msisdn" = String, Path, description = "The subscriber's number: E.164, or national with `[registry] default_region`", example = "+819012345678")),
    request_body(content = AddDevice, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = DeviceOut),
        (status = 400, description = "`invalid_json`, or `invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such subscriber", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not application/json", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a bad number, kind, address, priority or step_timeout", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn add_device(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam(raw): PathParam<String>,
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

/// Remove one of a subscriber's devices (admin).
#[utoipa::path(
    delete,
    path = "/v1/subscribers/{msisdn}/devices/{id}",
    tag = "subscribers",
    params(("msisdn" = String, Path, description = "The subscriber's number: E.164, or national with `[registry] default_region`", example = "+819012345678"), ("id" = String, Path, description = "The device id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_path`: a path segment is not valid percent-encoded UTF-8", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 404, description = "`not_found`: no such device", body = ErrorBody),
        (status = 422, description = "`invalid_request`: not a phone number", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
async fn remove_device(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    PathParam((raw, id)): PathParam<(String, String)>,
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

/// Prometheus metrics in the OpenMetrics text format. No token needed.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The exposition", body = String, content_type = "application/openmetrics-text"),
    ),
    security(())
)]
async fn metrics(AxState(state): AxState<Arc<ApiState>>) -> Response {
    use crate::metrics::{ChannelLabel, StateLabel};
    let m = &state.metrics;
    let now = now_ms();
    if let Ok(mut queues) = state.store.queue_overview(now).await {
        // Every configured channel gets every series, zero when it has nothing.
        for id in state.channels.keys() {
            queues.entry(id.clone()).or_default();
        }
        for (channel, q) in &queues {
            for s in crate::store::State::ALL {
                let n = q.by_state.get(s.as_str()).copied().unwrap_or(0);
                m.deliveries
                    .get_or_create(&StateLabel {
                        state: s.as_str(),
                        channel: channel.clone(),
                    })
                    .set(n);
            }
            let label = ChannelLabel {
                channel: channel.clone(),
            };
            m.queue_depth.get_or_create(&label).set(q.waiting);
            m.queue_due.get_or_create(&label).set(q.due);
        }
    }
    for (id, ch) in state.channels.iter() {
        let up = !matches!(ch.health().await, pinpost_channel_core::Health::Down { .. });
        m.channel_up
            .get_or_create(&ChannelLabel {
                channel: id.clone(),
            })
            .set(up as i64);
        m.sync_throttles(id, ch.throttled_total());
    }
    m.refresh_tps(state.channels.keys().map(String::as_str), now);
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

/// The answer of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    /// `ok` (healthz), `ready` or `not_ready` (readyz).
    status: &'static str,
    /// Channel id to why it is down (readyz, when not ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    channels_down: Option<HashMap<String, String>>,
}

/// The process is up. No token needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Up: `{\"status\": \"ok\"}`", body = Health)),
    security(())
)]
async fn healthz() -> Response {
    axum::Json(Health {
        status: "ok",
        channels_down: None,
    })
    .into_response()
}

/// Migrated and every channel bound. No token needed.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready: `channels_down` names the channels that are down and why", body = Health),
    ),
    security(())
)]
async fn readyz(AxState(state): AxState<Arc<ApiState>>) -> Response {
    let mut down = HashMap::new();
    for (id, ch) in state.channels.iter() {
        if let pinpost_channel_core::Health::Down { reason } = ch.health().await {
            down.insert(id.clone(), reason);
        }
    }
    if down.is_empty() {
        axum::Json(Health {
            status: "ready",
            channels_down: None,
        })
        .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Health {
                status: "not_ready",
                channels_down: Some(down),
            }),
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
