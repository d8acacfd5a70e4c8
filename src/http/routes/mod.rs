//! The endpoints of CONTRACT §7, one file per resource, each declaring the scope its routes
//! require where they are declared ([`scoped`]):
//!
//! - [`events`]: submitting events (`events:write`);
//! - [`reads`]: events, alerts and a user's events from the read model (`read`);
//! - [`users`]: a user's risk level (set: `profiles:write`; read: `read`) and the user as the
//!   engine sees them (`read`);
//! - [`rules`]: the active and shadow rule sets, their history and backtests (`read`), their
//!   changes and promotion (`rules:write`);
//! - [`triage`]: the triage of an alert (`alerts:write`);
//! - [`stream`]: the live alert feed, registered with the reads (`read`);
//! - [`audit`]: the trail of changes (`read`);
//! - [`dead_letters`]: the latest dead letters and their reasons (`read`);
//! - [`session`]: who the caller is and what their token may do (`read`);
//! - [`operations`]: health, readiness, metrics and the OpenAPI document (open);
//! - [`request`]: what every handler parses (bodies, ids, pages, times).
//!
//! The wire types and the OpenAPI document are in [`super::api`].

pub mod audit;
pub mod dead_letters;
pub mod events;
pub mod operations;
pub mod reads;
mod request;
pub mod rules;
pub mod session;
pub mod stream;
pub mod triage;
pub mod users;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa::openapi::path::ParameterIn;
use utoipa::OpenApi;

use super::api::{ApiError, ReadModel};
use super::auth::{Denied, Principal, Scope, Tokens};
use super::backend::Backend;
use super::stream::Streams;
use super::waiters::Hub;
use crate::config::{ConfigError, Settings};
use crate::health::Readiness;
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::rule_set::{Bounds, RuleSet};
use crate::rules::TimeUnit;
use crate::store::projection::Status as ProjectionStatus;
use crate::store::Store;

pub use operations::readiness;

/// Everything the handlers share.
pub struct Shared {
    pub backend: Arc<dyn Backend>,
    pub hub: Arc<Hub>,
    /// The read model behind the GET endpoints.
    pub store: Store,
    /// The projection feeding `store` (readiness).
    pub projection: Arc<ProjectionStatus>,
    pub metrics: Arc<Metrics>,
    /// The processor's readiness when it runs in the same process (`user-monitor run`).
    pub processor: Option<Arc<Readiness>>,
    pub response_timeout: Duration,
    pub body_limit: usize,
    /// `None`: open (no authentication).
    pub auth: Option<Arc<Tokens>>,
    /// What rule sets are checked against, and the configured sets.
    pub rules: ConfiguredRuleSets,
    /// The live alert feeds: their settings, cap and shutdown.
    pub streams: Arc<Streams>,
}

impl Shared {
    /// How far the read model is behind the alerts topic: what every answer read from the store
    /// states (CONTRACT §7, "Reads"). Take it before the query, so that the answer is at least
    /// as fresh as it says. No Kafka request (the projection keeps it up to date).
    pub fn read_model(&self) -> ReadModel {
        self.projection.freshness().into()
    }
}

/// What the rules routes check a set against, and the sets in force while none is published.
#[derive(Debug, Clone)]
pub struct ConfiguredRuleSets {
    /// `state.max_window`, `state.max_count`.
    pub bounds: Bounds,
    /// `rules.time_unit`: a set in another unit is refused.
    pub time_unit: TimeUnit,
    /// Active until a set is published: `rules.file`, else the five rules of `[rules]`.
    pub active: RuleSet,
    /// The shadow set of `rules.shadow`, until one is published or cleared.
    pub shadow: Option<RuleSet>,
}

impl ConfiguredRuleSets {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let (active, shadow) = settings.rule_sets()?;
        Ok(ConfiguredRuleSets {
            bounds: settings.rule_bounds(),
            time_unit: settings.rules.time_unit,
            active,
            shadow,
        })
    }
}

pub type AppState = Arc<Shared>;

/// The router with every resource's routes, the JSON fallbacks and the metrics middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(events::routes(&state))
        .merge(reads::routes(&state))
        .merge(users::routes(&state))
        .merge(rules::routes(&state))
        .merge(triage::routes(&state))
        .merge(audit::routes(&state))
        .merge(session::routes(&state))
        .merge(dead_letters::routes(&state))
        .merge(operations::routes().route_layer(axum::middleware::from_fn(strict_queries)))
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The extractor limit: larger bodies get 413 (mapped to JSON in `request::json_body`).
        .layer(axum::extract::DefaultBodyLimit::max(state.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            track,
        ))
        .with_state(state)
}

/// `routes` behind `scope`: the bearer token is checked against it (CONTRACT §7) and the
/// caller's [`Principal`] handed to the handlers; open mode lets everyone through as
/// `anonymous`. The one place a route's scope is enforced.
fn scoped(routes: Router<AppState>, scope: Scope, state: &AppState) -> Router<AppState> {
    // The strict check runs inside the scope check: a caller without a valid token learns
    // nothing about a route's parameters.
    routes
        .route_layer(axum::middleware::from_fn(strict_queries))
        .route_layer(axum::middleware::from_fn_with_state(
            (Arc::clone(state), scope),
            require,
        ))
}

/// The query parameters each documented operation takes, by (method, route): read from the
/// OpenAPI document, so a parameter is accepted exactly when it is documented.
fn documented_queries() -> &'static HashMap<(Method, String), Vec<String>> {
    static QUERIES: OnceLock<HashMap<(Method, String), Vec<String>>> = OnceLock::new();
    QUERIES.get_or_init(|| {
        let mut queries = HashMap::new();
        for (path, item) in super::api::ApiDoc::openapi().paths.paths {
            let operations = [
                (Method::GET, item.get),
                (Method::PUT, item.put),
                (Method::POST, item.post),
                (Method::DELETE, item.delete),
                (Method::PATCH, item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let names = operation
                    .parameters
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name)
                    .collect();
                queries.insert((method, path.clone()), names);
            }
        }
        queries
    })
}

/// Refuses a query parameter the route does not document (CONTRACT §7): a misspelt filter such
/// as `userId` must never quietly widen an answer, on any route. The one place it is checked.
async fn strict_queries(request: Request<Body>, next: Next) -> Response {
    let accepted = request.extensions().get::<MatchedPath>().and_then(|route| {
        documented_queries().get(&(request.method().clone(), route.as_str().to_owned()))
    });
    if let Some(accepted) = accepted {
        if let Err(error) = request::strict_query(request.uri().query(), accepted) {
            return error.into_response();
        }
    }
    next.run(request).await
}

async fn require(
    State((state, scope)): State<(AppState, Scope)>,
    mut request: Request<Body>,
    next: Next,
) -> Response {
    match authorize(&state, request.headers(), scope) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// Who the caller is, if it may use `scope`: 401 without a valid token, 403 without the scope.
fn authorize(state: &Shared, headers: &HeaderMap, scope: Scope) -> Result<Principal, ApiError> {
    let Some(tokens) = &state.auth else {
        return Ok(Principal::anonymous());
    };
    tokens
        .authorize(headers, scope)
        .map_err(|denied| match denied {
            Denied::Scope { .. } => ApiError::Forbidden(denied),
            denied => ApiError::Unauthorized(denied),
        })
}

/// An unknown route: 404, told only to a caller who may read (routes are not probed without a
/// token).
async fn not_found(
    State(state): State<AppState>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> ApiError {
    match authorize(&state, &headers, Scope::Read) {
        Ok(_) => ApiError::NotFound(format!("no route for {method} {}", uri.path())),
        Err(error) => error,
    }
}

/// A known route with another method: 405, told only to a caller who may read.
async fn method_not_allowed(State(state): State<AppState>, headers: HeaderMap) -> ApiError {
    match authorize(&state, &headers, Scope::Read) {
        Ok(_) => ApiError::MethodNotAllowed,
        Err(error) => error,
    }
}

/// Counts requests by route, method and status, and times them by route.
async fn track(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    state
        .metrics
        .http_latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status,
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use crate::http::api::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn openapi_names_every_route() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for path in [
            "/event",
            "/api/v1/events",
            "/api/v1/events/{event_id}",
            "/api/v1/alerts",
            "/api/v1/alerts/stream",
            "/api/v1/alerts/{alert_id}",
            "/api/v1/users/{user_id}/events",
            "/api/v1/users/{user_id}/risk",
            "/api/v1/users/{user_id}",
            "/api/v1/rules",
            "/api/v1/rules/shadow",
            "/api/v1/rules/shadow/promote",
            "/api/v1/rules/history",
            "/api/v1/rules/backtest",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.iter().any(|p| *p == path), "{path} missing");
        }
    }

    #[test]
    fn openapi_documents_the_feed_and_the_freshness_of_reads() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let stream = &doc["paths"]["/api/v1/alerts/stream"]["get"];
        assert!(
            stream["responses"]["200"]["content"]["text/event-stream"].is_object(),
            "{stream}"
        );
        assert!(stream["responses"]["503"].is_object(), "{stream}");
        let names: Vec<&str> = stream["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for name in [
            "user_id",
            "code",
            "since",
            "until",
            "cursor",
            "after",
            "Last-Event-ID",
        ] {
            assert!(names.contains(&name), "{name} missing in {names:?}");
        }
        let schemas = &doc["components"]["schemas"];
        for page in ["AlertsPage", "UserEventsPage"] {
            assert_eq!(
                schemas[page]["properties"]["read_model"]["$ref"], "#/components/schemas/ReadModel",
                "{page}"
            );
        }
        assert!(schemas["ReadModel"]["properties"]["behind"].is_object());
        // One event or alert: the view, plus the freshness.
        let read = &schemas["EventRead"]["allOf"];
        assert_eq!(read[0]["$ref"], "#/components/schemas/EventView", "{read}");
        assert_eq!(
            read[1]["properties"]["read_model"]["$ref"], "#/components/schemas/ReadModel",
            "{read}"
        );
        assert!(schemas["StreamOverflow"].is_object());
    }

    #[test]
    fn openapi_documents_evidence_and_rules_version_on_every_event_view() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let view = &schemas["EventView"]["properties"];
        assert!(view.get("rules_version").is_some(), "{view}");
        assert_eq!(
            view["evidence"]["items"]["$ref"], "#/components/schemas/Evidence",
            "{view}"
        );
        let evidence = &schemas["Evidence"]["properties"];
        for field in [
            "code",
            "kind",
            "on",
            "observed",
            "threshold",
            "risk",
            "from_time",
            "to_time",
            "warming_up",
        ] {
            assert!(
                evidence.get(field).is_some(),
                "{field} missing in {evidence}"
            );
        }
    }
}
