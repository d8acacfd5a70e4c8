//! A user's risk level (CONTRACT §4, §7): published to the profiles topic, behind
//! `profiles:write`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::put;
use axum::{Extension, Json, Router};

use super::super::api::{ApiError, ErrorBody, ProfilesDenied, RiskBody, UserRiskBody};
use super::super::auth::{Principal, Scope};
use super::request::{actor, json_body, parse_user_id, path_param};
use super::{scoped, AppState};
use crate::domain::Risk;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route("/api/v1/users/{user_id}/risk", put(put_risk));
    scoped(routes, Scope::ProfilesWrite, state)
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
