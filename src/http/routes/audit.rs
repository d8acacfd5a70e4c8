//! The audit trail (CONTRACT §7): who changed which risk level or rule set, behind `read`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use super::super::api::{ApiError, AuditParams, ErrorBody, ReadDenied};
use super::super::auth::Scope;
use super::request::{parse_limit, query_params};
use super::{scoped, AppState};
use crate::audit::AuditPage;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    scoped(
        Router::new().route("/api/v1/audit", get(list_audit)),
        Scope::Read,
        state,
    )
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
        (status = 400, description = "malformed or unknown parameter", body = ErrorBody),
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
