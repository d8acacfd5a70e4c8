//! The active and shadow rule sets (CONTRACT §10): read behind `read`, replaced or cleared
//! behind `rules:write`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};

use super::super::api::{
    ApiError, ErrorBody, ReadDenied, RuleSetSchema, RulesDenied, RulesPublishedBody, RulesView,
    ShadowClearedBody,
};
use super::super::auth::{Principal, Scope};
use super::request::{actor, json_body};
use super::{scoped, AppState, Shared};
use crate::kafka::rules::{validate_for_publishing, Format, Latest, RulesKey, Shadow};
use crate::rule_set::RuleSet;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let read = Router::new()
        .route("/api/v1/rules", get(get_rules))
        .route("/api/v1/rules/shadow", get(get_shadow_rules));
    let write = Router::new().route("/api/v1/rules", put(put_rules)).route(
        "/api/v1/rules/shadow",
        put(put_shadow_rules).delete(delete_shadow_rules),
    );
    scoped(read, Scope::Read, state).merge(scoped(write, Scope::RulesWrite, state))
}

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
    principal: Option<Extension<Principal>>,
    key: RulesKey,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    let set = rule_set_body(state, headers, body)?;
    let actor = actor(principal);
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
    principal: Option<Extension<Principal>>,
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
    principal: Option<Extension<Principal>>,
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
    principal: Option<Extension<Principal>>,
) -> Result<Json<ShadowClearedBody>, ApiError> {
    let actor = actor(principal);
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
