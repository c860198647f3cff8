//! The OpenAPI 3 document of the HTTP API, served at `GET /v1/openapi.json`.
//!
//! It is derived from the code: each handler in [`crate::api`], [`crate::voucher_api`] and
//! [`crate::console`] carries a `#[utoipa::path]` with every status it answers, and the request and response
//! types derive their schemas. A test compares the document with the router's own table of
//! paths and methods, so neither can change without the other.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pinpost",
        description = "Payment-PIN delivery gateway: deliveries, the subscriber registry, \
            vouchers, redemptions and settlements. Errors are `{\"error\": {\"code\", \
            \"message\"}}`; no answer ever carries a PIN."
    ),
    paths(
        crate::api::create_delivery,
        crate::api::get_delivery,
        crate::api::cancel_delivery,
        crate::api::put_subscriber,
        crate::api::get_subscriber,
        crate::api::delete_subscriber,
        crate::api::add_device,
        crate::api::remove_device,
        crate::voucher_api::issue,
        crate::voucher_api::get_voucher,
        crate::voucher_api::revoke,
        crate::voucher_api::redeem,
        crate::voucher_api::reverse,
        crate::voucher_api::get_settlement,
        crate::voucher_api::run_settlement,
        crate::console::overview,
        crate::console::deliveries,
        crate::console::failures,
        crate::console::page,
        crate::console::script,
        crate::console::style,
        crate::api::metrics,
        crate::api::healthz,
        crate::api::readyz,
        serve,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "deliveries", description = "PIN deliveries (billing and admin tokens)"),
        (name = "subscribers", description = "The subscriber registry (admin tokens)"),
        (name = "vouchers", description = "Vouchers: pinpost mints and delivers the PIN (billing and admin tokens)"),
        (name = "redemptions", description = "Redeeming and reversing (merchant tokens)"),
        (name = "settlements", description = "Daily settlement (admin tokens)"),
        (name = "console", description = "The operator console: its page and files (no token) and the JSON it reads (admin tokens)"),
        (name = "operations", description = "Health, readiness, metrics and this document (no token)"),
    )
)]
pub struct ApiDoc;

/// The `bearer` security scheme the operations refer to.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `[[api.tokens]]`; its role (billing, merchant, admin) \
                         decides what it may do",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON text, built once.
pub fn json() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serialises")
    })
}

/// This document. No token needed.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of this API", body = Object)),
    security(())
)]
pub(crate) async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;

    /// Every (path, method) the router serves, read from its `Debug` form: the routes
    /// (`RouteId(n): MethodRouter { get: …, post: None, … }`) and the node's table
    /// (`RouteId(n): "/path"`). HEAD (added with GET) is left out.
    fn router_routes<S>(r: &axum::Router<S>) -> BTreeSet<(String, String)> {
        let all = format!("{r:?}");
        // The fallback router numbers its own routes: read the path router only.
        let start = all.find("path_router: ").expect("a path router");
        let end = all.find(", fallback_router: ").expect("a fallback router");
        let text = &all[start..end];
        let id_at = |s: &str| -> Option<(u64, usize)> {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            Some((digits.parse().ok()?, digits.len()))
        };
        let mut paths = BTreeMap::new();
        let mut methods: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (at, _) in text.match_indices("RouteId(") {
            let rest = &text[at + "RouteId(".len()..];
            let Some((id, n)) = id_at(rest) else { continue };
            let rest = &rest[n..];
            if let Some(p) = rest.strip_prefix("): \"") {
                paths.insert(id, p[..p.find('"').unwrap()].to_owned());
            } else if let Some(m) = rest.strip_prefix("): MethodRouter(MethodRouter { ") {
                let body = &m[..m.find(", fallback:").expect("a method router's fallback")];
                for field in body.split(", ") {
                    let (name, value) = field.split_once(": ").expect("name: value");
                    if value != "None" && name != "head" {
                        methods.entry(id).or_default().push(name.to_owned());
                    }
                }
            }
        }
        let mut out = BTreeSet::new();
        for (id, path) in paths {
            match methods.get(&id) {
                Some(ms) => out.extend(ms.iter().map(|m| (path.clone(), m.clone()))),
                // A service mounted whole (route_service, nest_service): any method. It
                // cannot match a documented operation, so it fails the test until handled.
                None => {
                    out.insert((path, "any method".to_owned()));
                }
            }
        }
        out
    }

    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(m).is_some() {
                    out.insert((path.clone(), m.to_owned()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routes = router_routes(&crate::api::routes());
        assert!(
            routes.len() >= 19,
            "the router's routes could not be read: {routes:?}"
        );
        assert!(routes.contains(&("/v1/openapi.json".to_owned(), "get".to_owned())));
        let doc: Value = serde_json::from_str(json()).unwrap();
        let documented = documented(&doc);
        let undocumented: Vec<_> = routes.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&routes).collect();
        assert!(
            undocumented.is_empty(),
            "not in the document: {undocumented:?}"
        );
        assert!(missing.is_empty(), "documented but not routed: {missing:?}");
    }

    #[test]
    fn the_document_is_openapi_3_with_a_bearer_scheme_and_honest_security() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let open = [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/openapi.json",
            "/console",
            "/console/console.js",
            "/console/console.css",
        ];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let security = op["security"].as_array().expect("security is explicit");
                let statuses = op["responses"].as_object().unwrap();
                if open.contains(&path.as_str()) {
                    assert_eq!(security, &vec![serde_json::json!({})], "{method} {path}");
                } else {
                    assert_eq!(
                        security,
                        &vec![serde_json::json!({"bearer": []})],
                        "{method} {path}"
                    );
                    assert!(statuses.contains_key("401"), "{method} {path}: 401");
                }
                // Every path with a parameter can miss, or carry a malformed segment.
                if path.contains('{') {
                    assert!(statuses.contains_key("404"), "{method} {path}: 404");
                    assert!(statuses.contains_key("400"), "{method} {path}: 400");
                }
            }
        }
    }

    /// The console's files declare the media type they are really sent with, and its JSON
    /// declares the refusals of a non-admin token and of bad query parameters.
    #[tokio::test]
    async fn the_console_is_documented_as_served() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        let files = [
            ("/console", crate::console::page().await),
            ("/console/console.js", crate::console::script().await),
            ("/console/console.css", crate::console::style().await),
        ];
        for (path, resp) in files {
            let sent = resp.headers()[header::CONTENT_TYPE].to_str().unwrap();
            let media_type = sent.split(';').next().unwrap().trim();
            let op = &doc["paths"][path]["get"];
            assert_eq!(op["tags"], serde_json::json!(["console"]), "{path}");
            let declared: Vec<_> = op["responses"]["200"]["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{path}: no content"))
                .keys()
                .cloned()
                .collect();
            assert_eq!(declared, vec![media_type.to_owned()], "{path}");
            assert!(
                op["responses"]["200"]["headers"]
                    .get("Content-Security-Policy")
                    .is_some(),
                "{path}"
            );
        }
        for (path, params) in [
            ("/v1/admin/overview", &[][..]),
            (
                "/v1/admin/deliveries",
                &["msisdn", "id", "days", "limit"][..],
            ),
            ("/v1/admin/failures", &["limit"][..]),
        ] {
            let op = &doc["paths"][path]["get"];
            assert_eq!(op["tags"], serde_json::json!(["console"]), "{path}");
            let statuses = op["responses"].as_object().unwrap();
            for s in ["200", "401", "403", "503"] {
                assert!(statuses.contains_key(s), "{path}: {s}");
            }
            assert_eq!(statuses.contains_key("422"), !params.is_empty(), "{path}");
            let declared: Vec<_> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            assert_eq!(p["in"], "query", "{path}");
                            p["name"].as_str().unwrap().to_owned()
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(declared, params, "{path}");
        }
    }

    #[test]
    fn only_the_two_request_bodies_carry_a_pin() {
        let doc: Value = serde_json::from_str(json()).unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (name, schema) in schemas {
            let has_pin = schema["properties"].get("pin").is_some();
            assert_eq!(
                has_pin,
                name == "CreateDelivery" || name == "RedeemIn",
                "{name}: only the two request bodies carry a PIN"
            );
        }
    }
}
