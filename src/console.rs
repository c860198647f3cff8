//! The operator console: one static page (`GET /console`, its script and style sheet
//! alongside) and the admin-only JSON it polls.
//!
//! - `GET /v1/admin/overview` — per channel: up or down (with the reason), deliveries by
//!   state, waiting and due-now queue depth, sends per second, throttles;
//! - `GET /v1/admin/deliveries?msisdn=…` or `?id=…` — the latest deliveries to a number
//!   (or one delivery): id, state, channel, times, attempts, last error;
//! - `GET /v1/admin/failures` — deliveries of the last day that ended `failed` or `expired`.
//!
//! The page is served without a token (it holds no data) under a Content-Security-Policy
//! that allows only its own script, style sheet and requests; it asks for the admin token,
//! keeps it in `sessionStorage` and sends it as a bearer token. The JSON endpoints answer
//! `401` without a valid token and `403` to any role but admin. No answer carries a PIN:
//! the reads behind them never select the sealed PIN column.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::{ApiError, ApiState, ErrorBody, authenticate, require_admin, rfc3339, valid_id};
use crate::now_ms;
use crate::store::admin::DeliveryRow;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only the page's own script, style sheet and API calls; no inline code, no frames, no
/// form posts, no other origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// How far back a lookup by number looks by default, and at most (days).
const LOOKUP_DAYS: i64 = 30;
const LOOKUP_DAYS_MAX: i64 = 366;
/// How far back the failure list looks (hours).
const FAILURE_HOURS: i64 = 24;
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/console", get(page))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
        .route("/v1/admin/overview", get(overview))
        .route("/v1/admin/deliveries", get(deliveries))
        .route("/v1/admin/failures", get(failures))
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The console page. No token needed: it holds no data and asks for the admin token.
#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console_page",
    tag = "console",
    responses(
        (status = 200, description = "The console page", content_type = "text/html", body = String,
            headers(("Content-Security-Policy" = String, description = "Only the page's own script, style sheet and requests"))),
    ),
    security(())
)]
pub(crate) async fn page() -> Response {
    static_file("text/html; charset=utf-8", PAGE)
}

/// The console's script. No token needed.
#[utoipa::path(
    get,
    path = "/console/console.js",
    operation_id = "console_script",
    tag = "console",
    responses(
        (status = 200, description = "The console's script", content_type = "text/javascript", body = String,
            headers(("Content-Security-Policy" = String, description = "Only the page's own script, style sheet and requests"))),
    ),
    security(())
)]
pub(crate) async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet. No token needed.
#[utoipa::path(
    get,
    path = "/console/console.css",
    operation_id = "console_style",
    tag = "console",
    responses(
        (status = 200, description = "The console's style sheet", content_type = "text/css", body = String,
            headers(("Content-Security-Policy" = String, description = "Only the page's own script, style sheet and requests"))),
    ),
    security(())
)]
pub(crate) async fn style() -> Response {
    static_file("text/css; charset=utf-8", STYLE)
}

/// JSON that no cache keeps.
fn answer<T: Serialize>(body: T) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin(&authenticate(state, headers)?)
}

/// One delivery as the console lists it. Never the PIN.
#[derive(Serialize, ToSchema)]
pub(crate) struct ConsoleDelivery {
    id: String,
    /// E.164.
    msisdn: String,
    channel: String,
    state: crate::store::State,
    /// pinpost will do nothing more with the delivery.
    #[serde(rename = "final")]
    is_final: bool,
    /// Sends tried so far.
    attempts: i64,
    last_error: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

fn row_json(d: &DeliveryRow) -> ConsoleDelivery {
    ConsoleDelivery {
        id: d.id.clone(),
        msisdn: d.msisdn.clone(),
        channel: d.channel.clone(),
        state: d.state,
        is_final: d.is_final || d.state.is_terminal(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        created_at: rfc3339(d.created_at),
        updated_at: rfc3339(d.updated_at),
    }
}

/// The queue and the channels, as the console's overview shows them.
#[derive(Serialize, ToSchema)]
pub(crate) struct Overview {
    #[schema(format = DateTime)]
    generated_at: String,
    /// Every configured channel, and any other channel deliveries name.
    channels: Vec<ChannelOverview>,
    /// Deliveries by state (`queued`, `sending`, …) over all channels; every state appears.
    #[schema(value_type = BTreeMap<String, i64>)]
    totals: BTreeMap<&'static str, i64>,
}

/// One channel: up or down, its deliveries by state and its pace.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChannelOverview {
    id: String,
    /// Whether the configuration has this channel (deliveries may name a removed one).
    configured: bool,
    /// `sms`, `ussd`, `pager`, `fax`, `email` or `carnav`; null when not configured.
    #[schema(value_type = Option<String>, example = "sms")]
    kind: Option<pinpost_channel_core::ChannelKind>,
    up: bool,
    /// Why the channel is down; null when up.
    reason: Option<String>,
    /// Deliveries `queued` or in `retry_wait`.
    waiting: i64,
    /// Of those, the ones whose next attempt time has passed.
    due: i64,
    /// Deliveries by state; states without any are left out.
    #[schema(value_type = BTreeMap<String, i64>)]
    states: BTreeMap<&'static str, i64>,
    /// Messages per second handed to the peer, over the last few seconds.
    tps: f64,
    /// Times the peer asked pinpost to slow down, since start.
    throttles: u64,
}

/// The queue depth, deliveries by state, pace and health of every channel (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/overview",
    operation_id = "admin_overview",
    tag = "console",
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let now = now_ms();
    let mut queues = state
        .store
        .queue_overview(now)
        .await
        .map_err(ApiError::unavailable)?;
    for id in state.channels.keys() {
        queues.entry(id.clone()).or_default();
    }
    let mut totals = BTreeMap::new();
    for s in crate::store::State::ALL {
        let n: i64 = queues
            .values()
            .map(|q| q.by_state.get(s.as_str()).copied().unwrap_or(0))
            .sum();
        totals.insert(s.as_str(), n);
    }
    let mut channels = Vec::with_capacity(queues.len());
    for (id, q) in queues {
        let (configured, kind, health, throttles) = match state.channels.get(&id) {
            Some(ch) => (
                true,
                Some(ch.capabilities().kind),
                Some(ch.health().await),
                ch.throttled_total(),
            ),
            None => (false, None, None, 0),
        };
        let (up, reason) = match health {
            Some(pinpost_channel_core::Health::Up) => (true, None),
            Some(pinpost_channel_core::Health::Down { reason }) => (false, Some(reason)),
            None => (false, Some("not configured".to_owned())),
        };
        channels.push(ChannelOverview {
            tps: state.metrics.tps(&id, now),
            id,
            configured,
            kind,
            up,
            reason,
            waiting: q.waiting,
            due: q.due,
            states: q.by_state,
            throttles,
        });
    }
    Ok(answer(Overview {
        generated_at: rfc3339(now),
        channels,
        totals,
    }))
}

/// Either `msisdn` (with `days` and `limit`) or `id`, not both.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LookupQuery {
    /// The number: E.164, or national with `[registry] default_region`.
    #[serde(default)]
    #[param(example = "+819012345678")]
    msisdn: Option<String>,
    /// One delivery by its id.
    #[serde(default)]
    #[param(max_length = 64, pattern = "^[A-Za-z0-9-]*$")]
    id: Option<String>,
    /// With `msisdn`: how many days back to look (1 to 366; 30 by default).
    #[serde(default)]
    #[param(minimum = 1, maximum = 366)]
    days: Option<i64>,
    /// With `msisdn`: at most this many deliveries, newest first (20 by default; 0 counts as
    /// 1, above 200 as 200).
    #[serde(default)]
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// The deliveries a lookup found, newest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryLookup {
    deliveries: Vec<ConsoleDelivery>,
}

fn limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

fn bad_query() -> ApiError {
    ApiError::invalid("query parameters: msisdn or id, days (1 to 366), limit (1 to 200)")
}

/// The latest deliveries to a number, or one delivery by id (admin).
///
/// An id or number with no delivery is an empty list, not a `404`.
#[utoipa::path(
    get,
    path = "/v1/admin/deliveries",
    operation_id = "admin_deliveries",
    tag = "console",
    params(LookupQuery),
    responses(
        (status = 200, description = "The deliveries found (possibly none)", body = DeliveryLookup),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 422, description = "`invalid_request`: neither or both of msisdn and id, a bad number or id, days out of range, a limit that is not a whole number, or an unknown or repeated parameter", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn deliveries(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<LookupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let Query(q) = query.map_err(|_| bad_query())?;
    let rows = match (q.id.as_deref(), q.msisdn.as_deref()) {
        (Some(id), None) => {
            if !valid_id(id) {
                return Err(ApiError::invalid("id is not a delivery id"));
            }
            state
                .store
                .delivery_row(id)
                .await
                .map_err(ApiError::unavailable)?
                .into_iter()
                .collect::<Vec<_>>()
        }
        (None, Some(raw)) => {
            let msisdn = if crate::api::valid_msisdn(raw.trim()) {
                raw.trim().to_owned()
            } else {
                crate::registry::normalize_msisdn(raw, state.default_region.as_deref())
                    .map_err(|e| ApiError::invalid(format!("msisdn: {e}")))?
            };
            let days = q.days.unwrap_or(LOOKUP_DAYS);
            if !(1..=LOOKUP_DAYS_MAX).contains(&days) {
                return Err(bad_query());
            }
            let since = now_ms() - days * 86_400_000;
            state
                .store
                .deliveries_to(&msisdn, since, limit(q.limit))
                .await
                .map_err(ApiError::unavailable)?
        }
        _ => return Err(ApiError::invalid("give either msisdn or id")),
    };
    Ok(answer(DeliveryLookup {
        deliveries: rows.iter().map(row_json).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FailuresQuery {
    /// At most this many deliveries, the most recently changed first (20 by default; 0
    /// counts as 1, above 200 as 200).
    #[serde(default)]
    #[param(minimum = 0)]
    limit: Option<usize>,
}

/// Deliveries of the last day that ended `failed` or `expired`.
#[derive(Serialize, ToSchema)]
pub(crate) struct FailureList {
    /// The start of the window (a day ago).
    #[schema(format = DateTime)]
    since: String,
    /// The most recently changed first.
    failures: Vec<ConsoleDelivery>,
}

/// Deliveries of the last 24 hours that ended `failed` or `expired` (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/failures",
    operation_id = "admin_failures",
    tag = "console",
    params(FailuresQuery),
    responses(
        (status = 200, description = "The failures (possibly none)", body = FailureList),
        (status = 401, description = "`unauthorized`: no valid bearer token", body = ErrorBody),
        (status = 403, description = "`forbidden`: this needs an admin token", body = ErrorBody),
        (status = 422, description = "`invalid_request`: a limit that is not a whole number, or an unknown or repeated parameter", body = ErrorBody),
        (status = 503, description = "`unavailable`: storage is unavailable", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]

pub(crate) async fn failures(
    AxState(state): AxState<Arc<ApiState>>,
    headers: HeaderMap,
    query: Result<Query<FailuresQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    admin(&state, &headers)?;
    let Query(q) = query.map_err(|_| bad_query())?;
    let since = now_ms() - FAILURE_HOURS * 3_600_000;
    let rows = state
        .store
        .recent_failures(since, limit(q.limit))
        .await
        .map_err(ApiError::unavailable)?;
    Ok(answer(FailureList {
        since: rfc3339(since),
        failures: rows.iter().map(row_json).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        // No inline script or style, nothing from another origin: the CSP would block it.
        for (name, text) in [("page", PAGE), ("script", SCRIPT), ("style", STYLE)] {
            assert!(!text.contains("http://"), "{name}");
            assert!(!text.contains("https://"), "{name}");
            assert!(!text.contains("innerHTML"), "{name}");
            assert!(!text.contains("eval("), "{name}");
        }
        assert!(PAGE.contains(r#"<script src="/console/console.js" defer></script>"#));
        assert!(PAGE.contains(r#"<link rel="stylesheet" href="/console/console.css">"#));
        assert!(!PAGE.contains("<script>"));
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        // No inline event handlers (onclick=, onsubmit=, ...).
        let lower = PAGE.to_ascii_lowercase();
        for (at, _) in lower.match_indices(" on") {
            let rest = &lower[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            assert!(
                !(name_len > 0 && rest[name_len..].trim_start().starts_with('=')),
                "inline handler at {at}"
            );
        }
        assert!(SCRIPT.contains("sessionStorage"));
        assert!(!SCRIPT.contains("localStorage"));
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(limit(None), DEFAULT_LIMIT);
        assert_eq!(limit(Some(0)), 1);
        assert_eq!(limit(Some(10_000)), MAX_LIMIT);
    }
}
