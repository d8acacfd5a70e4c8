//! The triage of an alert (CONTRACT §7): acknowledge, resolve (with a resolution), annotate or
//! reopen it, published to the triage topic and audited, behind `alerts:write`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::patch;
use axum::{Extension, Json, Router};

use super::super::api::{AlertsDenied, ApiError, ErrorBody, EventView, TriageBody};
use super::super::auth::{Principal, Scope};
use super::reads::find_alert;
use super::request::{actor, json_body, parse_alert_key, path_param};
use super::{scoped, AppState};
use crate::domain::TriageChange;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new().route("/api/v1/alerts/{alert_id}", patch(patch_alert));
    scoped(routes, Scope::AlertsWrite, state)
}

/// Set an alert's triage: its status (`open`, `acknowledged`, `resolved` with a resolution) and
/// note, as a whole. Published to the triage topic and recorded in the audit trail (who: the
/// token's name; before → after); every view of the alert shows it once projected (on this shim,
/// before the answer, unless the projection lags past `http.response_timeout`).
#[utoipa::path(
    patch,
    path = "/api/v1/alerts/{alert_id}",
    tag = "alerts",
    params(("alert_id" = String, Path, description = "\"alert-<partition>-<offset>\"")),
    request_body(content = TriageBody, content_type = "application/json"),
    security(("bearer" = ["alerts:write"])),
    responses(
        (status = 200, description = "Kafka acknowledged the triage and its audit record: the alert with its new triage", body = EventView),
        (status = 400, description = "malformed body, unknown field or value, a resolution without resolved or resolved without one, a note too long (every problem named)", body = ErrorBody),
        (status = 404, description = "no such alert, or not an alert id", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge, or the read model could not say what the triage was", body = ErrorBody),
        AlertsDenied,
    )
)]
pub async fn patch_alert(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    alert_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<EventView>, ApiError> {
    let alert_id = path_param(alert_id)?;
    let key = parse_alert_key(&alert_id)?;
    let body = json_body(&headers, body, state.body_limit)?;
    let change =
        TriageChange::from_json(&body).map_err(|invalid| ApiError::Invalid(invalid.to_string()))?;
    let view = find_alert(&state, &alert_id, key).await?;
    let user_id = view.user_id();
    let changed = state
        .backend
        .change_triage(actor(principal), key, user_id, change)
        .await?;
    Ok(Json(view.with_triage(changed.triage)))
}
