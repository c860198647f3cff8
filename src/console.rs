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
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, ApiState, authenticate, require_admin, rfc3339, valid_id};
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

async fn page() -> Response {
    static_file("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    static_file("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    static_file("text/css; charset=utf-8", STYLE)
}

/// JSON that no cache keeps.
fn answer(body: serde_json::Value) -> Response {
    let mut resp = axum::Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn admin(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    require_admin(&authenticate(state, headers)?)
}

fn row_json(d: &DeliveryRow) -> serde_json::Value {
    json!({
        "id": d.id,
        "msisdn": d.msisdn,
        "channel": d.channel,
        "state": d.state,
        "final": d.is_final || d.state.is_terminal(),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "created_at": rfc3339(d.created_at),
        "updated_at": rfc3339(d.updated_at),
    })
}

async fn overview(
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
    let mut totals = serde_json::Map::new();
    for s in crate::store::State::ALL {
        let n: i64 = queues
            .values()
            .map(|q| q.by_state.get(s.as_str()).copied().unwrap_or(0))
            .sum();
        totals.insert(s.as_str().to_owned(), n.into());
    }
    let mut channels = Vec::with_capacity(queues.len());
    for (id, q) in &queues {
        let (configured, kind, health, throttles) = match state.channels.get(id) {
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
        channels.push(json!({
            "id": id,
            "configured": configured,
            "kind": kind,
            "up": up,
            "reason": reason,
            "waiting": q.waiting,
            "due": q.due,
            "states": q.by_state,
            "tps": state.metrics.tps(id, now),
            "throttles": throttles,
        }));
    }
    Ok(answer(json!({
        "generated_at": rfc3339(now),
        "channels": channels,
        "totals": totals,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupQuery {
    #[serde(default)]
    msisdn: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    days: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

fn limit(requested: Option<usize>) -> usize {
    requested.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

fn bad_query() -> ApiError {
    ApiError::invalid("query parameters: msisdn or id, days (1 to 366), limit (1 to 200)")
}

async fn deliveries(
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
    Ok(answer(json!({
        "deliveries": rows.iter().map(row_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailuresQuery {
    #[serde(default)]
    limit: Option<usize>,
}

async fn failures(
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
    Ok(answer(json!({
        "since": rfc3339(since),
        "failures": rows.iter().map(row_json).collect::<Vec<_>>(),
    })))
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
