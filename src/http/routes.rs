//! The endpoints of CONTRACT §7, their wire types and the OpenAPI document generated from them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::OpenApi;

use super::api::{
    AlertsPage, AlertsParams, ApiDoc, ApiError, AuditParams, CreatedBody, ErrorBody, EventBody,
    EventView, HealthBody, LegacyBody, PageParams, PendingBody, ProfilesDenied, ReadDenied,
    ReadyBody, RiskBody, RuleSetSchema, RulesDenied, RulesPublishedBody, RulesView,
    ShadowClearedBody, ShimReadiness, SubmitDenied, UserEventsPage, UserRiskBody, DEFAULT_LIMIT,
    MAX_LIMIT,
};
use super::auth::{required_scope, Denied, Principal, Tokens};
use super::backend::Backend;
use super::model::{Hub, Wait};
use crate::audit::AuditPage;
use crate::config::{ConfigError, Settings};
use crate::domain::response::{write_legacy, Outcome, Rejection};
use crate::domain::{decode, Coord, DecodeError, Risk, UserId};
use crate::health::Readiness;
use crate::kafka::rules::{validate_for_publishing, Format, Latest, RulesKey, Shadow};
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::rule_set::{Bounds, RuleSet};
use crate::rules::TimeUnit;
use crate::store::projection::Status as ProjectionStatus;
use crate::store::{AlertQuery, OrderKey, Page, Store, StoreError, Stored};

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
    pub rules: RulesConfig,
}

/// What the rules routes check a set against, and the sets in force while none is published.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// `state.max_window`, `state.max_count`.
    pub bounds: Bounds,
    /// `rules.time_unit`: a set in another unit is refused.
    pub time_unit: TimeUnit,
    /// Active until a set is published: `rules.file`, else the five rules of `[rules]`.
    pub active: RuleSet,
    /// The shadow set of `rules.shadow`, until one is published or cleared.
    pub shadow: Option<RuleSet>,
}

impl RulesConfig {
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let (active, shadow) = settings.rule_sets()?;
        Ok(RulesConfig {
            bounds: settings.rule_bounds(),
            time_unit: settings.rules.time_unit,
            active,
            shadow,
        })
    }

    /// The configured set of `key`.
    fn configured(&self, key: RulesKey) -> Option<&RuleSet> {
        match key {
            RulesKey::Active => Some(&self.active),
            RulesKey::Shadow => self.shadow.as_ref(),
        }
    }
}

pub type AppState = Arc<Shared>;

/// The router with every endpoint, the JSON fallbacks and the metrics middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/event", post(post_event))
        .route("/api/v1/events", post(create_event))
        .route("/api/v1/events/{event_id}", get(get_event))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/{alert_id}", get(get_alert))
        .route("/api/v1/users/{user_id}/events", get(user_events))
        .route("/api/v1/users/{user_id}/risk", put(put_risk))
        .route("/api/v1/rules", get(get_rules).put(put_rules))
        .route(
            "/api/v1/rules/shadow",
            get(get_shadow_rules)
                .put(put_shadow_rules)
                .delete(delete_shadow_rules),
        )
        .route("/api/v1/audit", get(list_audit))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The extractor limit: larger bodies get 413 (mapped to JSON in `body_bytes`).
        .layer(axum::extract::DefaultBodyLimit::max(state.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            track,
        ))
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Request parsing

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > "application/+json".len()
            && mime[..12].eq_ignore_ascii_case("application/")
            && mime.to_ascii_lowercase().ends_with("+json"))
}

/// 415 unless JSON, then 413 when over the limit.
fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::NotJson);
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else if body_timed_out(&rejection) {
            ApiError::BodyTimeout
        } else {
            ApiError::Invalid(rejection.body_text())
        }
    })
}

/// Whether reading the body failed because the client sent it too slowly
/// (`http.body_read_timeout`).
fn body_timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn parse_user_id(text: &str) -> Result<u64, ApiError> {
    UserId::parse(text).map(|user| user.0).ok_or_else(|| {
        ApiError::Invalid(format!(
            "invalid user_id: {text:?} is not an integer in 0..=2^63-1"
        ))
    })
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(format!(
                "invalid limit: {text:?} is not an integer in 1..={MAX_LIMIT}"
            ))),
        },
    }
}

/// A time bound: RFC 3339 or milliseconds since the Unix epoch.
fn parse_time(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "invalid {name}: {text:?} is neither RFC 3339 nor milliseconds since the epoch"
            ))
        })
}

fn parse_cursor(cursor: Option<&str>) -> Result<Option<OrderKey>, ApiError> {
    cursor
        .map(|text| {
            OrderKey::from_cursor(text)
                .ok_or_else(|| ApiError::Invalid(format!("invalid cursor: {text:?}")))
        })
        .transpose()
}

/// An id that cannot name any event is an unknown id: 404, saying what ids look like.
fn parse_event_key(text: &str) -> Result<Coord, ApiError> {
    Coord::parse_event_id(text).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no event {text:?}: event ids are \"<partition>-<offset>\""
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Submitting events

enum Submitted {
    Done(Arc<Stored>),
    Pending(String),
}

/// Forgets a waiter when its request ends, however it ends (timeout, client gone).
struct WaiterGuard<'a> {
    hub: &'a Hub,
    key: Coord,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.hub.forget_closed(self.key);
    }
}

/// Validates, produces, waits for the response record.
async fn submit(
    state: &Shared,
    body: Bytes,
    idempotency_key: Option<String>,
) -> Result<Submitted, ApiError> {
    let event = decode(&body).map_err(|e: DecodeError| ApiError::Invalid(e.to_string()))?;
    let delivered = state
        .backend
        .produce_event(event.user_id.to_string(), body.to_vec(), idempotency_key)
        .await?;
    let key = Coord::new(delivered.partition, delivered.offset);
    let _guard = WaiterGuard {
        hub: &state.hub,
        key,
    };
    let rx = match state.hub.wait_for(key) {
        Wait::Ready(stored) => return Ok(Submitted::Done(stored)),
        Wait::Pending(rx) => rx,
    };
    match tokio::time::timeout(state.response_timeout, rx).await {
        Ok(Ok(stored)) => Ok(Submitted::Done(stored)),
        _ => {
            tracing::info!(
                partition = key.partition,
                offset = key.offset,
                "no response in time, answering pending"
            );
            Ok(Submitted::Pending(key.event_id()))
        }
    }
}

fn rejection_error(stored: &Stored) -> Option<ApiError> {
    match &stored.record.outcome {
        Outcome::Accepted { .. } => None,
        Outcome::Rejected {
            rejection: Rejection::OutOfOrder,
            error,
        } => Some(ApiError::OutOfOrder(error.clone())),
        // A wrong partition cannot come from the shim's own producer (murmur2 by user id)
        // unless the topic's partition count changed under the processor: the event was not
        // evaluated, which the client must learn.
        Outcome::Rejected {
            rejection: Rejection::Invalid | Rejection::WrongPartition,
            error,
        } => Some(ApiError::Invalid(error.clone())),
        Outcome::Rejected {
            rejection: Rejection::IdempotencyConflict,
            error,
        } => Some(ApiError::IdempotencyConflict(error.clone())),
    }
}

/// The `Idempotency-Key` header: absent, or 1 to 128 visible ASCII characters (400 otherwise).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::Invalid(
            "invalid Idempotency-Key: send it once".to_owned(),
        ));
    }
    crate::idempotency::validate_key(value.as_bytes())
        .map(|key| Some(key.to_owned()))
        .map_err(|e| ApiError::Invalid(format!("invalid Idempotency-Key: {e}")))
}

/// Where `GET` finds an event: the `Location` of a created or pending event.
fn event_location(event_id: &str) -> String {
    format!("/api/v1/events/{event_id}")
}

fn pending_response(event_id: String, location: bool) -> Response {
    let location_header = event_location(&event_id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(PendingBody {
            event_id,
            status: "pending".to_owned(),
        }),
    )
        .into_response();
    if location {
        if let Ok(value) = HeaderValue::from_str(&location_header) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

/// The legacy body in the original service's spacing: `{"alert": false, "alert_codes": [], "user_id": 1}`.
fn legacy_json(user_id: u64, codes: &[u32]) -> String {
    let mut out = Vec::with_capacity(64);
    write_legacy(&mut out, user_id, codes).expect("writing to memory");
    String::from_utf8(out).expect("ASCII")
}

/// What both submit routes share: check the body, submit it, wait for its response, and turn a
/// rejection by the processor (out of order) into its error.
async fn accept(
    state: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Submitted, ApiError> {
    let body = json_body(headers, body, state.body_limit)?;
    let key = idempotency_key(headers)?;
    let submitted = submit(state, body, key).await?;
    if let Submitted::Done(stored) = &submitted {
        if let Some(error) = rejection_error(stored) {
            return Err(error);
        }
    }
    Ok(submitted)
}

/// Submit an event, the original contract: answers with the legacy response.
#[utoipa::path(
    post,
    path = "/event",
    tag = "events",
    request_body(content = EventBody, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a retry with the same key and event is answered with the original's response (same event_id) and never counted twice")),
    security(("bearer" = ["events:write"])),
    responses(
        (status = 200, description = "the event's response", body = LegacyBody),
        (status = 202, description = "accepted by Kafka, no response in time", body = PendingBody),
        (status = 400, description = "invalid event: every bad field named", body = ErrorBody),
        (status = 409, description = "out of order for this user", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge: the event was not accepted", body = ErrorBody),
        SubmitDenied,
    )
)]
pub async fn post_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    match accept(&state, &headers, body).await? {
        Submitted::Pending(event_id) => Ok(pending_response(event_id, false)),
        Submitted::Done(stored) => {
            let user_id = stored.record.user_id.unwrap_or_default();
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                legacy_json(user_id, stored.alert_codes()),
            )
                .into_response())
        }
    }
}

/// Submit an event, RESTful form: 201 with the event's id and result.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(content = EventBody, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a retry with the same key and event is answered with the original's response (same event_id) and never counted twice")),
    security(("bearer" = ["events:write"])),
    responses(
        (status = 201, description = "the event and its result; Location names it", body = CreatedBody),
        (status = 200, description = "a retry under an Idempotency-Key: the original's id and result", body = CreatedBody),
        (status = 202, description = "accepted by Kafka, no response in time", body = PendingBody),
        (status = 400, description = "invalid event: every bad field named", body = ErrorBody),
        (status = 409, description = "out of order for this user", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge: the event was not accepted", body = ErrorBody),
        SubmitDenied,
    )
)]
pub async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    match accept(&state, &headers, body).await? {
        Submitted::Pending(event_id) => Ok(pending_response(event_id, true)),
        Submitted::Done(stored) => {
            let record = &stored.record;
            // A retry is answered as the original was, with the original's id; nothing new was
            // created, so 200 (CONTRACT §7).
            let (event_id, status) = match &record.duplicate_of {
                Some(original) => (original.clone(), StatusCode::OK),
                None => (record.event_id.clone(), StatusCode::CREATED),
            };
            let location = event_location(&event_id);
            let body = CreatedBody {
                event_id,
                alert_id: record.alert_id().map(str::to_owned),
                alert: !stored.alert_codes().is_empty(),
                alert_codes: stored.alert_codes().to_vec(),
                user_id: record.user_id.unwrap_or_default(),
            };
            Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

fn store_error(error: StoreError) -> ApiError {
    tracing::warn!(error = %error, "read model query failed");
    ApiError::StoreUnavailable("the read model's database is unavailable".to_owned())
}

/// The record at these coordinates: the database first, then the recent responses, then Kafka
/// (records not yet projected).
async fn find_event(state: &Shared, key: Coord) -> Result<Option<EventView>, ApiError> {
    if let Some(stored) = state.store.event(key).await.map_err(store_error)? {
        return Ok(Some(EventView::processed(&stored.record)));
    }
    if let Some(stored) = state.hub.recent(key) {
        return Ok(Some(EventView::processed(&stored.record)));
    }
    let found = state.backend.lookup(key).await?;
    Ok(found.map(|found| match &found.response {
        Some(record) => EventView::processed(record),
        None => EventView::pending(&found),
    }))
}

/// An event and its result: any event still retained in Kafka.
#[utoipa::path(
    get,
    path = "/api/v1/events/{event_id}",
    tag = "events",
    params(("event_id" = String, Path, description = "\"<partition>-<offset>\"")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the event and its result", body = EventView),
        (status = 404, description = "no such event retained, or not an event id", body = ErrorBody),
        (status = 503, description = "Kafka unavailable for the lookup", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_event(
    State(state): State<AppState>,
    event_id: Result<Path<String>, PathRejection>,
) -> Result<Json<EventView>, ApiError> {
    let event_id = path_param(event_id)?;
    let key = parse_event_key(&event_id)?;
    find_event(&state, key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no event {event_id}")))
}

fn views(page: &Page) -> Vec<EventView> {
    page.items
        .iter()
        .map(|s| EventView::processed(&s.record))
        .collect()
}

/// Alerts, newest first (by the alerts record's timestamp), from the database; filters by user,
/// code and a time range (`since` inclusive, `until` exclusive).
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertsParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "a page of alerts", body = AlertsPage),
        (status = 400, description = "malformed parameter", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn list_alerts(
    State(state): State<AppState>,
    params: Result<Query<AlertsParams>, QueryRejection>,
) -> Result<Json<AlertsPage>, ApiError> {
    let params = query_params(params)?;
    let query = AlertQuery {
        user_id: params.user_id.as_deref().map(parse_user_id).transpose()?,
        code: params
            .code
            .as_deref()
            .map(|c| {
                c.parse::<u32>()
                    .map_err(|_| ApiError::Invalid(format!("invalid code: {c:?}")))
            })
            .transpose()?,
        since: parse_time("since", params.since.as_deref())?,
        until: parse_time("until", params.until.as_deref())?,
        before: parse_cursor(params.cursor.as_deref())?,
        limit: parse_limit(params.limit.as_deref())?,
    };
    let page = state.store.alerts(&query).await.map_err(store_error)?;
    Ok(Json(AlertsPage {
        alerts: views(&page),
        next_cursor: page.next.map(|k| k.cursor()),
    }))
}

/// One alert.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{alert_id}",
    tag = "alerts",
    params(("alert_id" = String, Path, description = "\"alert-<partition>-<offset>\"")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the alert: its event and result", body = EventView),
        (status = 404, description = "no such alert, or not an alert id", body = ErrorBody),
        (status = 503, description = "Kafka unavailable for the lookup", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_alert(
    State(state): State<AppState>,
    alert_id: Result<Path<String>, PathRejection>,
) -> Result<Json<EventView>, ApiError> {
    let alert_id = path_param(alert_id)?;
    let key = Coord::parse_alert_id(&alert_id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no alert {alert_id:?}: alert ids are \"alert-<partition>-<offset>\""
        ))
    })?;
    match find_event(&state, key).await? {
        Some(view) if view.alert_id() == Some(alert_id.as_str()) => Ok(Json(view)),
        _ => Err(ApiError::NotFound(format!("no alert {alert_id}"))),
    }
}

/// A user's events with their results, newest first, from the database (paged by cursor).
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/events",
    tag = "users",
    params(("user_id" = u64, Path, description = "0..=2^63-1"), PageParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "recent events, newest first (empty for an unknown user)", body = UserEventsPage),
        (status = 400, description = "malformed user_id or parameter", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn user_events(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
    params: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<UserEventsPage>, ApiError> {
    let user_id = parse_user_id(&path_param(user_id)?)?;
    let params = query_params(params)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let before = parse_cursor(params.cursor.as_deref())?;
    let page = state
        .store
        .user_events(user_id, before, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(UserEventsPage {
        user_id,
        events: views(&page),
        next_cursor: page.next.map(|k| k.cursor()),
    }))
}

/// Set a user's risk level: published to the profiles topic; applies to every event produced
/// after the 200.
#[utoipa::path(
    put,
    path = "/api/v1/users/{user_id}/risk",
    tag = "users",
    params(("user_id" = u64, Path, description = "0..=2^63-1")),
    request_body(content = RiskBody, content_type = "application/json"),
    security(("bearer" = ["profiles:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the profile", body = UserRiskBody),
        (status = 400, description = "unknown risk or malformed body", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        ProfilesDenied,
    )
)]
pub async fn put_risk(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    user_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<UserRiskBody>, ApiError> {
    let user_id = parse_user_id(&path_param(user_id)?)?;
    let body = json_body(&headers, body, state.body_limit)?;
    // An object, never the positional form serde also accepts for a struct (`["high"]`).
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid(format!("invalid body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::Invalid(
            "invalid body: expected a JSON object {\"risk\": \"low\" | \"medium\" | \"high\"}"
                .to_owned(),
        ));
    }
    let parsed: RiskBody = serde_json::from_value(value)
        .map_err(|e| ApiError::Invalid(format!("invalid body: {e}")))?;
    let risk: Risk = parsed
        .risk
        .parse()
        .map_err(|e: crate::domain::UnknownRisk| ApiError::Invalid(e.to_string()))?;
    let actor = principal.map_or_else(Principal::anonymous, |p| p.0).name;
    state.backend.change_risk(actor, user_id, risk).await?;
    Ok(Json(UserRiskBody { user_id, risk }))
}

// ---------------------------------------------------------------------------------------------
// Rule sets (CONTRACT §10)

/// The set of `key` in a PUT body: validated whole against the configured bounds and
/// `rules.time_unit`, or a 400 naming every problem.
fn rule_set_body(
    state: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<RuleSet, ApiError> {
    let body = json_body(headers, body, state.body_limit)?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::Invalid(format!("invalid body: not UTF-8: {e}")))?;
    Ok(validate_for_publishing(
        text,
        Format::Json,
        &state.rules.bounds,
        state.rules.time_unit,
    )?)
}

fn topic_view(latest: &Latest) -> RulesView {
    RulesView {
        source: "topic".to_owned(),
        set: latest.set.to_value(),
        offset: Some(latest.offset),
        timestamp: latest.timestamp,
    }
}

fn config_view(set: &RuleSet) -> RulesView {
    RulesView {
        source: "config".to_owned(),
        set: set.to_value(),
        offset: None,
        timestamp: None,
    }
}

/// Validates and publishes the set of `key`, then records the change in the audit trail.
async fn publish_rules(
    state: &Shared,
    principal: Option<axum::Extension<Principal>>,
    key: RulesKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    let set = rule_set_body(state, headers, body)?;
    let actor = principal.map_or_else(Principal::anonymous, |p| p.0).name;
    let configured = state.rules.configured(key).map(|s| s.version.clone());
    let version = set.version.clone();
    let changed = state
        .backend
        .change_rules(actor, key, Some(set), configured)
        .await?;
    Ok(Json(RulesPublishedBody {
        version,
        offset: changed.published.offset,
        timestamp: changed.published.timestamp,
    }))
}

/// The active rule set and where it comes from: the latest `active` record of topics.rules,
/// else the configured set.
#[utoipa::path(
    get,
    path = "/api/v1/rules",
    tag = "rules",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the active rule set", body = RulesView),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_rules(State(state): State<AppState>) -> Result<Json<RulesView>, ApiError> {
    let current = state.backend.rules().await?;
    Ok(Json(match &current.active {
        Some(latest) => topic_view(latest),
        None => config_view(&state.rules.active),
    }))
}

/// Replace the active rule set: validated whole (every problem named), then published to
/// topics.rules; applies to every event produced after the 200.
#[utoipa::path(
    put,
    path = "/api/v1/rules",
    tag = "rules",
    request_body(content = RuleSetSchema, content_type = "application/json"),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the set", body = RulesPublishedBody),
        (status = 400, description = "invalid rule set: every problem in `problems`", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn put_rules(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    publish_rules(&state, principal, RulesKey::Active, &headers, body).await
}

/// The shadow rule set and where it comes from: the latest `shadow` record of topics.rules,
/// else the configured `rules.shadow`; 404 when there is none (or it was cleared).
#[utoipa::path(
    get,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the shadow rule set", body = RulesView),
        (status = 404, description = "no shadow rule set", body = ErrorBody),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_shadow_rules(State(state): State<AppState>) -> Result<Json<RulesView>, ApiError> {
    let current = state.backend.rules().await?;
    match (&current.shadow, &state.rules.shadow) {
        (Shadow::Set(latest), _) => Ok(Json(topic_view(latest))),
        (Shadow::Unpublished, Some(configured)) => Ok(Json(config_view(configured))),
        (Shadow::Unpublished, None) => Err(ApiError::NotFound("no shadow rule set".to_owned())),
        (Shadow::Cleared { offset, .. }, _) => Err(ApiError::NotFound(format!(
            "no shadow rule set: cleared at offset {offset} of the rules topic"
        ))),
    }
}

/// Replace the shadow rule set (evaluated beside the active one, never changing a response):
/// validated whole, then published to topics.rules.
#[utoipa::path(
    put,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    request_body(content = RuleSetSchema, content_type = "application/json"),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the set", body = RulesPublishedBody),
        (status = 400, description = "invalid rule set: every problem in `problems`", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn put_shadow_rules(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    publish_rules(&state, principal, RulesKey::Shadow, &headers, body).await
}

/// Clear the shadow rule set: a tombstone under `shadow` in topics.rules (the configured
/// `rules.shadow` no longer applies either). Idempotent: clearing when there is no shadow set
/// writes the tombstone again and answers `cleared: "none"`.
#[utoipa::path(
    delete,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the tombstone", body = ShadowClearedBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn delete_shadow_rules(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
) -> Result<Json<ShadowClearedBody>, ApiError> {
    let actor = principal.map_or_else(Principal::anonymous, |p| p.0).name;
    let configured = state
        .rules
        .configured(RulesKey::Shadow)
        .map(|s| s.version.clone());
    let changed = state
        .backend
        .change_rules(actor, RulesKey::Shadow, None, configured)
        .await?;
    Ok(Json(ShadowClearedBody {
        cleared: changed.entry.before,
        offset: changed.published.offset,
        timestamp: changed.published.timestamp,
    }))
}

/// The audit trail: every accepted change of a risk level or a rule set, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "a page of the trail", body = AuditPage),
        (status = 400, description = "malformed parameter", body = ErrorBody),
        ReadDenied,
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
    )
)]
pub async fn list_audit(
    State(state): State<AppState>,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let params = query_params(params)?;
    let limit = parse_limit(params.limit.as_deref())?;
    let before = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|o| *o >= 0)
                .ok_or_else(|| ApiError::Invalid(format!("invalid cursor: {c:?}")))
        })
        .transpose()?;
    Ok(Json(state.backend.audit(limit, before).await?))
}

// ---------------------------------------------------------------------------------------------
// Operations

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

/// The readiness report of this process.
pub fn readiness(state: &Shared) -> ReadyBody {
    let shim = ShimReadiness {
        kafka_connected: state.backend.ready(),
        alerts_following: state.hub.connected(),
        store_projecting: state.projection.assigned(),
        store_projected: state.projection.projected(),
        store_skipped: state.projection.skipped(),
        store_failing: state.projection.failing(),
        pending_requests: state.hub.pending(),
    };
    let processor = state.processor.as_ref().map(|r| r.report());
    let ready = shim.kafka_connected
        && shim.alerts_following
        && shim.store_projecting
        && processor.is_none_or(|p| p.ready);
    ReadyBody {
        ready,
        shim,
        processor: processor.map(Into::into),
    }
}

/// Readiness: the shim's Kafka clients are connected, its database open and its projection
/// assigned (not caught up: a restart is ready at once whatever the topic's size), and (in
/// `user-monitor run`) the processor is connected with every assigned partition restored.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = ReadyBody),
        (status = 503, description = "not ready", body = ReadyBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let body = readiness(&state);
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text exposition, which Prometheus scrapes natively).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes"),
    )
        .into_response()
}

/// A path segment, or a JSON 400 naming the problem (e.g. invalid percent-encoded UTF-8).
fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::Invalid(format!("invalid path: {}", e.body_text())))
}

/// Query parameters, or a JSON 400 naming the problem (e.g. a repeated parameter).
fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(params)| params)
        .map_err(|e| ApiError::Invalid(format!("invalid query: {}", e.body_text())))
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts requests by route, method and status, and times them by route.
/// Checks the bearer token against the route's scope (CONTRACT §7) and hands the caller's
/// name to the handlers; open mode lets everyone through as `anonymous`.
async fn authenticate(
    State(state): State<AppState>,
    mut request: Request<Body>,
    next: Next,
) -> Response {
    let principal = match (
        &state.auth,
        required_scope(request.method(), request.uri().path()),
    ) {
        (None, _) => Principal::anonymous(),
        (Some(_), None) => return next.run(request).await,
        (Some(tokens), Some(scope)) => match tokens.authorize(request.headers(), scope) {
            Ok(principal) => principal,
            Err(denied @ Denied::Scope { .. }) => {
                return ApiError::Forbidden(denied).into_response()
            }
            Err(denied) => return ApiError::Unauthorized(denied).into_response(),
        },
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

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
    use super::*;
    use crate::http::api::ApiDoc;
    use utoipa::OpenApi;

    #[test]
    fn recognises_json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/+json", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }

    #[test]
    fn legacy_json_keeps_the_original_spacing() {
        assert_eq!(
            legacy_json(1, &[]),
            r#"{"alert": false, "alert_codes": [], "user_id": 1}"#
        );
        assert_eq!(
            legacy_json(3, &[30, 1100]),
            r#"{"alert": true, "alert_codes": [30, 1100], "user_id": 3}"#
        );
    }

    #[test]
    fn openapi_names_every_route() {
        let doc = ApiDoc::openapi();
        let paths: Vec<&String> = doc.paths.paths.keys().collect();
        for path in [
            "/event",
            "/api/v1/events",
            "/api/v1/events/{event_id}",
            "/api/v1/alerts",
            "/api/v1/alerts/{alert_id}",
            "/api/v1/users/{user_id}/events",
            "/api/v1/users/{user_id}/risk",
            "/api/v1/rules",
            "/api/v1/rules/shadow",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(paths.iter().any(|p| *p == path), "{path} missing");
        }
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
