//! A user (CONTRACT §4, §7): the risk level, published to the profiles topic behind
//! `profiles:write`; read behind `read`, with where it comes from; and the user as the engine
//! sees them, exact as of a stated input offset (see [`crate::user_view`]).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};

use super::super::api::{
    ApiError, AsOfBody, ErrorBody, EventView, LastAmountBody, ProfilesDenied, ReadDenied, RiskBody,
    RiskSourceBody, RunBody, SetStandingBody, SnapshotBody, UserRiskBody, UserRiskView,
    UserStateBody, UserView,
};
use super::super::auth::{Principal, Scope};
use super::reads::store_error;
use super::request::{actor, json_body, parse_user_id, path_param};
use super::{scoped, AppState, ConfiguredRuleSets};
use crate::domain::partitioner::partition_for_user;
use crate::domain::{Coord, Risk};
use crate::kafka::rules::{Current, Shadow};
use crate::rule_set::RuleSet;
use crate::rules::format_units;
use crate::state::StoredKind;
use crate::user_view;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let write = Router::new().route("/api/v1/users/{user_id}/risk", put(put_risk));
    let read = Router::new()
        .route("/api/v1/users/{user_id}/risk", get(get_risk))
        .route("/api/v1/users/{user_id}", get(get_user));
    scoped(write, Scope::ProfilesWrite, state).merge(scoped(read, Scope::Read, state))
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
    principal: Option<Extension<Principal>>,
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
    let actor = actor(principal);
    state.backend.change_risk(actor, user_id, risk).await?;
    Ok(Json(UserRiskBody {
        user_id: user_id.get(),
        risk,
    }))
}

/// A user's risk level now and where it comes from: the user's latest profiles record (read to
/// the topic's end: a change acknowledged before this request is seen), or the default.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/risk",
    tag = "users",
    params(("user_id" = u64, Path, description = "0..=2^63-1")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the level (medium, source default, for a user without a profile)", body = UserRiskView),
        (status = 400, description = "malformed user_id", body = ErrorBody),
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_risk(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserRiskView>, ApiError> {
    let user_id = parse_user_id(&path_param(user_id)?)?;
    let judged = state.backend.judged_by(user_id).await?;
    Ok(Json(UserRiskView {
        user_id: user_id.get(),
        risk: judged.risk.risk,
        source: RiskSourceBody::from(&judged.risk),
    }))
}

/// A user as the engine sees them: the risk level and where it comes from, the counts and the
/// latest event in the read model, the state the processor judges the user's next event by
/// (the user's latest snapshot plus its accepted records since, replayed through the engine),
/// and where each rule of the active (and shadow) set stands on it, exact as of `as_of`.
#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}",
    tag = "users",
    params(("user_id" = u64, Path, description = "0..=2^63-1")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the user as the engine sees them", body = UserView),
        (status = 400, description = "malformed user_id", body = ErrorBody),
        (status = 404, description = "the read model holds no record and no snapshot of the user", body = ErrorBody),
        (status = 503, description = "Kafka or the read model's database unavailable", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserView>, ApiError> {
    let user_id = parse_user_id(&path_param(user_id)?)?;
    let judged = state.backend.judged_by(user_id).await?;
    let partition = partition_for_user(user_id, judged.partitions);
    let reads = state
        .store
        .user_reads(user_id, partition)
        .await
        .map_err(store_error)?;
    if reads.snapshot.is_none() && reads.counts.events == 0 {
        return Err(ApiError::NotFound(format!(
            "no user {user_id}: the read model holds no record and no snapshot of it"
        )));
    }
    let (active, shadow) = in_force(&state.rules, &judged.rules);
    let bounds = &state.rules.bounds;
    let rebuilt = user_view::rebuild(
        user_id,
        reads.snapshot.as_ref().map(|s| s.state.clone()),
        &reads.records,
        active,
        bounds,
    );
    let risk = judged.risk.risk;
    let standing = |set: &RuleSet| SetStandingBody {
        version: set.version.clone(),
        rules: rebuilt.standing(risk, set, bounds).unwrap_or_default(),
    };
    let next_offset = reads.next_offset();
    Ok(Json(UserView {
        user_id: user_id.get(),
        risk,
        risk_source: RiskSourceBody::from(&judged.risk),
        events: reads.counts.events,
        alerts: reads.counts.alerts,
        last_event: reads.last.as_ref().map(|s| EventView::processed(&s.record)),
        as_of: AsOfBody {
            partition,
            next_offset,
            next_event_id: Coord::new(partition, next_offset).event_id(),
        },
        state: state_body(
            &rebuilt,
            reads.snapshot.as_ref().map(|s| SnapshotBody {
                covers: s.covers,
                state_offset: s.state_offset,
            }),
            partition,
        ),
        active: standing(active),
        shadow: shadow.map(standing),
    }))
}

/// The sets in force: the rules topic's latest, else the configured ones (as `GET
/// /api/v1/rules` shows them).
fn in_force<'a>(
    configured: &'a ConfiguredRuleSets,
    current: &'a Current,
) -> (&'a RuleSet, Option<&'a RuleSet>) {
    let active = current
        .active
        .as_ref()
        .map_or(&configured.active, |latest| &latest.set);
    let shadow = match &current.shadow {
        Shadow::Set(latest) => Some(&latest.set),
        Shadow::Cleared { .. } => None,
        Shadow::Unpublished => configured.shadow.as_ref(),
    };
    (active, shadow)
}

fn state_body(
    rebuilt: &user_view::Rebuilt,
    snapshot: Option<SnapshotBody>,
    partition: i32,
) -> UserStateBody {
    let state = rebuilt.state().unwrap_or_default();
    let kind = |k: StoredKind| match k {
        StoredKind::Deposit => "deposit",
        StoredKind::Withdraw => "withdraw",
    };
    let last = |i: usize| {
        state.last[i].map(|(amount, increasing)| LastAmountBody {
            amount: format_units(amount),
            increasing,
        })
    };
    UserStateBody {
        snapshot,
        replayed: rebuilt.replayed,
        exact: rebuilt.unreplayable.is_empty(),
        unreplayable: rebuilt
            .unreplayable
            .iter()
            .map(|&offset| Coord::new(partition, offset).event_id())
            .collect(),
        last_time: state.last_time,
        window_events: state.window.len(),
        history_after: state.pruned,
        trailing_run: state.run.map(|(k, length)| RunBody {
            kind: kind(k).to_owned(),
            length,
        }),
        last_deposit: last(0),
        last_withdrawal: last(1),
    }
}
