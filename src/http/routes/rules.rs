//! The active and shadow rule sets (CONTRACT §10): read, their history and backtests behind
//! `read`; replaced, cleared or promoted behind `rules:write`. Every write can be made
//! conditional with `If-Match: <version>` and refuses what would hurt (an empty set unless
//! `allow_empty=true`, a version name taken by another set): see [`crate::changes`].

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use tokio::sync::Semaphore;

use super::super::api::{
    ApiError, BacktestBody, BacktestResult, BacktestSample, ErrorBody, InForce, PromotedBody,
    ReadDenied, RuleSetSchema, RulesDenied, RulesHistoryBody, RulesPublishedBody, RulesValidBody,
    RulesView, RulesWriteParams, ShadowClearedBody, VersionView,
};
use super::super::auth::{Principal, Scope};
use super::request::{actor, json_body, query_params};
use super::{scoped, AppState, Shared};
use crate::backtest::{Outcome, Range};
use crate::changes::{Configured, Expected, Promotion, RulesRequest};
use crate::kafka::rules::{validate_for_publishing, Current, Format, Latest, RulesKey, Shadow};
use crate::rule_set::{InvalidRuleSet, RuleSet};

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let read = Router::new()
        .route("/api/v1/rules", get(get_rules))
        .route("/api/v1/rules/shadow", get(get_shadow_rules))
        .route("/api/v1/rules/history", get(rules_history))
        .route("/api/v1/rules/backtest", post(backtest_rules))
        .route("/api/v1/rules/validate", post(validate_rules));
    let write = Router::new()
        .route("/api/v1/rules", put(put_rules))
        .route(
            "/api/v1/rules/shadow",
            put(put_shadow_rules).delete(delete_shadow_rules),
        )
        .route("/api/v1/rules/shadow/promote", post(promote_shadow_rules));
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

/// The query of an endpoint that takes no parameter: any is a 400 naming it.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// `?allow_empty=true|false` (absent: false).
fn allow_empty(params: Result<Query<RulesWriteParams>, QueryRejection>) -> Result<bool, ApiError> {
    match query_params(params)?.allow_empty.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::Invalid(format!(
            "invalid allow_empty: {other:?} (expected true or false)"
        ))),
    }
}

/// `If-Match`: the version the write expects in force (`*`: any set), if the request names one.
fn if_match(headers: &HeaderMap) -> Result<Option<Expected>, ApiError> {
    let mut values = headers.get_all(header::IF_MATCH).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::Invalid(
            "invalid If-Match: given more than once (name one rule set version)".to_owned(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::Invalid("invalid If-Match: not visible ASCII".to_owned()))?;
    Expected::parse(text).map(Some).map_err(ApiError::Invalid)
}

/// The sets the configuration puts in force while the topic holds none.
fn configured(state: &Shared) -> Configured {
    Configured {
        active: Some(state.rules.active.clone()),
        shadow: state.rules.shadow.clone(),
    }
}

/// `ETag: "<version>"` for a version a header can carry: what `If-Match` takes back.
fn etag(version: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if !version.contains('"') {
        if let Ok(value) = HeaderValue::from_str(&format!("\"{version}\"")) {
            headers.insert(header::ETAG, value);
        }
    }
    headers
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
    params: Result<Query<RulesWriteParams>, QueryRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    let allow_empty = allow_empty(params)?;
    let expected = if_match(headers)?;
    let set = rule_set_body(state, headers, body)?;
    let version = set.version.clone();
    let request = RulesRequest {
        key,
        set: Some(set),
        allow_empty,
        expected,
    };
    let changed = state
        .backend
        .change_rules(actor(principal), request, configured(state))
        .await?;
    Ok(Json(RulesPublishedBody {
        version,
        offset: changed.published.offset,
        timestamp: changed.published.timestamp,
        unchanged: changed.entry.is_none(),
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
        (status = 200, description = "the active rule set", body = RulesView,
            headers(("ETag" = String, description = "the version in double quotes: what If-Match takes"))),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_rules(
    State(state): State<AppState>,
) -> Result<(HeaderMap, Json<RulesView>), ApiError> {
    let current = state.backend.rules().await?;
    let (set, view) = match &current.active {
        Some(latest) => (&latest.set, topic_view(latest)),
        None => (&state.rules.active, config_view(&state.rules.active)),
    };
    Ok((etag(&set.version), Json(view)))
}

/// Replace the active rule set: validated whole (every problem named), then published to
/// topics.rules; applies to every event produced after the 200. Refused: a set without rules
/// unless `allow_empty=true` (400), a version name already published with other rules (409), a
/// set in force other than `If-Match` names (412). The set in force again: 200, `unchanged`.
#[utoipa::path(
    put,
    path = "/api/v1/rules",
    tag = "rules",
    params(
        RulesWriteParams,
        ("If-Match" = Option<String>, Header, description = "only if the active set in force is this version (bare or in double quotes; * for any)")
    ),
    request_body(content = RuleSetSchema, content_type = "application/json"),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the set (or it was in force already: `unchanged`)", body = RulesPublishedBody),
        (status = 400, description = "invalid rule set (every problem in `problems`), or a set without rules and no allow_empty=true", body = ErrorBody),
        (status = 409, description = "the version name was already published with other rules", body = ErrorBody),
        (status = 412, description = "If-Match names another version than the one in force", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn put_rules(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    params: Result<Query<RulesWriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    publish_rules(&state, principal, RulesKey::Active, params, &headers, body).await
}

/// The shadow rule set and where it comes from: the latest `shadow` record of topics.rules,
/// else the configured `rules.shadow`; 404 when there is none (or it was cleared).
#[utoipa::path(
    get,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the shadow rule set", body = RulesView,
            headers(("ETag" = String, description = "the version in double quotes: what If-Match takes"))),
        (status = 404, description = "no shadow rule set", body = ErrorBody),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_shadow_rules(
    State(state): State<AppState>,
) -> Result<(HeaderMap, Json<RulesView>), ApiError> {
    let current = state.backend.rules().await?;
    match (&current.shadow, &state.rules.shadow) {
        (Shadow::Set(latest), _) => Ok((etag(&latest.set.version), Json(topic_view(latest)))),
        (Shadow::Unpublished, Some(configured)) => {
            Ok((etag(&configured.version), Json(config_view(configured))))
        }
        (Shadow::Unpublished, None) => Err(ApiError::NotFound("no shadow rule set".to_owned())),
        (Shadow::Cleared { offset, .. }, _) => Err(ApiError::NotFound(format!(
            "no shadow rule set: cleared at offset {offset} of the rules topic"
        ))),
    }
}

/// Replace the shadow rule set (evaluated beside the active one, never changing a response):
/// validated whole, then published to topics.rules. Refused as `PUT /api/v1/rules` is
/// (`If-Match` names the shadow set's version).
#[utoipa::path(
    put,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    params(
        RulesWriteParams,
        ("If-Match" = Option<String>, Header, description = "only if the shadow set in force is this version (* for any shadow set)")
    ),
    request_body(content = RuleSetSchema, content_type = "application/json"),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the set (or it was in force already: `unchanged`)", body = RulesPublishedBody),
        (status = 400, description = "invalid rule set (every problem in `problems`), or a set without rules and no allow_empty=true", body = ErrorBody),
        (status = 409, description = "the version name was already published with other rules", body = ErrorBody),
        (status = 412, description = "If-Match names another version than the shadow set in force", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn put_shadow_rules(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    params: Result<Query<RulesWriteParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesPublishedBody>, ApiError> {
    publish_rules(&state, principal, RulesKey::Shadow, params, &headers, body).await
}

/// Clear the shadow rule set: a tombstone under `shadow` in topics.rules (the configured
/// `rules.shadow` no longer applies either). Idempotent: clearing when there is no shadow set
/// writes the tombstone again and answers `cleared: "none"` (with `If-Match`, 412 instead).
#[utoipa::path(
    delete,
    path = "/api/v1/rules/shadow",
    tag = "rules",
    params(
        ("If-Match" = Option<String>, Header, description = "only if the shadow set in force is this version (* for any shadow set)")
    ),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the tombstone", body = ShadowClearedBody),
        (status = 412, description = "If-Match names another version than the shadow set in force", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn delete_shadow_rules(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Result<Json<ShadowClearedBody>, ApiError> {
    let request = RulesRequest {
        key: RulesKey::Shadow,
        set: None,
        allow_empty: false,
        expected: if_match(&headers)?,
    };
    let changed = state
        .backend
        .change_rules(actor(principal), request, configured(&state))
        .await?;
    Ok(Json(ShadowClearedBody {
        cleared: changed
            .before
            .unwrap_or_else(|| crate::audit::NO_RULE_SET.to_owned()),
        offset: changed.published.offset,
        timestamp: changed.published.timestamp,
    }))
}

/// Promote the shadow set: it is published as the active set (it judges every event produced
/// after the 200), then the shadow set is cleared (a tombstone: the trial is over); both are
/// audited (`rules.active.promote`, `rules.shadow.clear`). `If-Match` names the shadow set's
/// version: the one reviewed is the one promoted.
#[utoipa::path(
    post,
    path = "/api/v1/rules/shadow/promote",
    tag = "rules",
    params(
        RulesWriteParams,
        ("If-Match" = Option<String>, Header, description = "only if the shadow set in force is this version")
    ),
    security(("bearer" = ["rules:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the active record and the shadow tombstone", body = PromotedBody),
        (status = 400, description = "the shadow set has no rules and no allow_empty=true", body = ErrorBody),
        (status = 409, description = "no shadow set to promote, or its version name is another set's", body = ErrorBody),
        (status = 412, description = "If-Match names another version than the shadow set in force", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge (the error says what stands)", body = ErrorBody),
        RulesDenied,
    )
)]
pub async fn promote_shadow_rules(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    params: Result<Query<RulesWriteParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<PromotedBody>, ApiError> {
    let request = Promotion {
        allow_empty: allow_empty(params)?,
        expected: if_match(&headers)?,
    };
    let promoted = state
        .backend
        .promote_shadow(actor(principal), request, configured(&state))
        .await?;
    Ok(Json(PromotedBody {
        version: promoted.version,
        before: promoted.before,
        offset: promoted.active.offset,
        timestamp: promoted.active.timestamp,
        shadow_cleared_offset: promoted.cleared.offset,
    }))
}

/// RFC 3339 UTC of a record timestamp (ms since the epoch).
fn rfc3339(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// Every version ever published to topics.rules (newest first), when and by whom, and the
/// active and shadow sets now. Read from the per-version records, which compaction keeps.
#[utoipa::path(
    get,
    path = "/api/v1/rules/history",
    tag = "rules",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "every version published and the sets in force", body = RulesHistoryBody),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn rules_history(
    State(state): State<AppState>,
    params: Result<Query<NoParams>, QueryRejection>,
) -> Result<Json<RulesHistoryBody>, ApiError> {
    query_params(params)?;
    let current = state.backend.rules().await?;
    let in_force = |set: &RuleSet, source: &str| InForce {
        version: set.version.clone(),
        source: source.to_owned(),
    };
    let active = match &current.active {
        Some(latest) => in_force(&latest.set, "topic"),
        None => in_force(&state.rules.active, "config"),
    };
    let shadow = match (&current.shadow, &state.rules.shadow) {
        (Shadow::Set(latest), _) => Some(in_force(&latest.set, "topic")),
        (Shadow::Unpublished, Some(configured)) => Some(in_force(configured, "config")),
        _ => None,
    };
    let mut versions: Vec<VersionView> = current
        .versions
        .values()
        .map(|v| VersionView {
            version: v.set.version.clone(),
            published_at: v.timestamp.and_then(rfc3339),
            timestamp: v.timestamp,
            offset: v.offset,
            published_by: v.by.as_ref().map(|by| by.actor.clone()),
            via: v.by.as_ref().map(|by| by.source.clone()),
            active: v.set.version == active.version,
            shadow: shadow.as_ref().is_some_and(|s| s.version == v.set.version),
            set: v.set.to_value(),
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.offset));
    Ok(Json(RulesHistoryBody {
        active,
        shadow,
        versions,
    }))
}

/// How many differences a backtest answers with their evidence.
const SAMPLES: usize = 100;

/// One backtest at a time per shim: each reads the whole range from the database and keeps a
/// core busy; others wait their turn.
static BACKTESTS: Semaphore = Semaphore::const_new(1);

/// A set named in a backtest request: inline (validated as a `PUT` body is), or by version
/// name (published to topics.rules, or configured).
fn named_set(
    state: &Shared,
    current: &Current,
    what: &str,
    value: &serde_json::Value,
) -> Result<RuleSet, ApiError> {
    match value {
        serde_json::Value::String(name) => current
            .versions
            .get(name)
            .map(|v| v.set.clone())
            .or_else(|| {
                [Some(&state.rules.active), state.rules.shadow.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|s| s.version == *name)
                    .cloned()
            })
            .ok_or_else(|| {
                ApiError::Invalid(format!(
                    "{what}: no version {name:?} was published (GET /api/v1/rules/history lists them) or is configured"
                ))
            }),
        serde_json::Value::Object(_) => validate_for_publishing(
            &value.to_string(),
            Format::Json,
            &state.rules.bounds,
            state.rules.time_unit,
        )
        .map_err(|invalid| {
            ApiError::InvalidRuleSet(InvalidRuleSet {
                problems: invalid
                    .problems
                    .into_iter()
                    .map(|p| format!("{what}: {p}"))
                    .collect(),
            })
        }),
        _ => Err(ApiError::Invalid(format!(
            "{what}: expected a rule set (an object) or the name of a version (a string)"
        ))),
    }
}

/// The range of a backtest request: `from_time`/`to_time`, or the latest `last` events.
async fn requested_range(
    state: &Shared,
    request: &BacktestBody,
) -> Result<(Option<u64>, Option<u64>), ApiError> {
    match (request.last, request.from_time, request.to_time) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::Invalid(
            "last excludes from_time and to_time: give a range of event time, or a count"
                .to_owned(),
        )),
        (Some(0), _, _) => Err(ApiError::Invalid("last: must be at least 1".to_owned())),
        (Some(n), None, None) => {
            let start = state
                .store
                .latest_events_start(n)
                .await
                .map_err(super::reads::store_error)?;
            Ok((start.and_then(|t| u64::try_from(t).ok()), None))
        }
        (None, Some(from), Some(to)) if from > to => Err(ApiError::Invalid(format!(
            "from_time {from} is after to_time {to}"
        ))),
        (None, from, to) => Ok((from, to)),
    }
}

/// Replays the stored records of `range` (and its warm-up) under both sets, one backtest of
/// this shim at a time.
async fn replay_stored(
    state: &Shared,
    baseline: RuleSet,
    candidate: RuleSet,
    range: Range,
) -> Result<Outcome, ApiError> {
    let _turn = BACKTESTS
        .acquire()
        .await
        .map_err(|_| ApiError::StoreUnavailable("shutting down".to_owned()))?;
    state
        .store
        .backtest(baseline, candidate, state.rules.bounds, range, SAMPLES)
        .await
        .map_err(super::reads::store_error)
}

/// Backtest a candidate set against the active set (or any two sets) over the events stored in
/// the read model: the numbers `user-monitor backtest --input-format records` gives on the same
/// records. Events are replayed in the processor's order (partition, then offset), each at the
/// risk level it was judged at; the state.max_window before `from_time` is replayed as history
/// only, so that windows see what they saw live.
#[utoipa::path(
    post,
    path = "/api/v1/rules/backtest",
    tag = "rules",
    request_body(content = BacktestBody, content_type = "application/json"),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "per-code counts under each set, and up to 100 differences with evidence", body = BacktestResult),
        (status = 400, description = "invalid body, an invalid inline set (every problem in `problems`), or an unknown version", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka (reading the rule sets) or the read model unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn backtest_rules(
    State(state): State<AppState>,
    params: Result<Query<NoParams>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BacktestResult>, ApiError> {
    query_params(params)?;
    let body = json_body(&headers, body, state.body_limit)?;
    let request: BacktestBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid(format!("invalid body: {e}")))?;
    let (from, to) = requested_range(&state, &request).await?;
    let current = state.backend.rules().await?;
    let candidate = named_set(&state, &current, "candidate", &request.candidate)?;
    let baseline = match &request.baseline {
        Some(value) => named_set(&state, &current, "baseline", value)?,
        None => current
            .active
            .as_ref()
            .map_or_else(|| state.rules.active.clone(), |l| l.set.clone()),
    };
    let range = Range::new(from, to, None, &baseline, &candidate, &state.rules.bounds);
    let outcome = replay_stored(&state, baseline, candidate, range).await?;
    let report = outcome.report;
    let samples = outcome
        .samples
        .into_iter()
        .map(|s| BacktestSample {
            event_id: s.difference.event_id,
            user_id: s.difference.user_id,
            time: s.time,
            risk: s.risk,
            baseline: s.difference.baseline,
            candidate: s.difference.candidate,
            baseline_evidence: evidence(&s.baseline_evidence),
            candidate_evidence: evidence(&s.candidate_evidence),
        })
        .collect();
    Ok(Json(BacktestResult {
        baseline_version: report.baseline_version,
        candidate_version: report.candidate_version,
        from_time: range.from,
        to_time: range.to,
        replayed_from: range.replay_from(),
        read: report.lines,
        events: report.events,
        warm_up: report.warm_up,
        skipped: report.skipped,
        invalid: report.invalid,
        out_of_order: report.out_of_order,
        events_changed: report.events_changed,
        users_affected: report.users_affected,
        codes: report.codes,
        samples,
    }))
}

fn evidence(entries: &[crate::state::Evidence]) -> Vec<serde_json::Value> {
    entries
        .iter()
        .map(|e| serde_json::to_value(e).expect("evidence serializes"))
        .collect()
}

/// Checks a rule set as `PUT /api/v1/rules` would, publishing nothing: 200 with what it holds,
/// or the 400 a publish would get, naming every problem (an editor checks as one types).
#[utoipa::path(
    post,
    path = "/api/v1/rules/validate",
    tag = "rules",
    request_body(content = RuleSetSchema, content_type = "application/json"),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "a valid rule set (nothing published)", body = RulesValidBody),
        (status = 400, description = "invalid rule set: every problem in `problems`", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn validate_rules(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RulesValidBody>, ApiError> {
    let set = rule_set_body(&state, &headers, body)?;
    Ok(Json(RulesValidBody {
        version: set.version.clone(),
        time_unit: set.time_unit,
        rules: set.rules.len(),
        empty: set.rules.is_empty(),
    }))
}
