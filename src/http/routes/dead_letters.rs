//! The latest dead letters and why each was rejected (`GET /api/v1/dead-letters`), behind
//! `read`: what an operator looks at first when the dead-letter rate rises.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use super::super::api::{ApiError, DeadLettersBody, DeadLettersParams, ErrorBody, ReadDenied};
use super::super::auth::Scope;
use super::request::{parse_limit_within, query_params};
use super::{scoped, AppState};

/// At most this many dead letters per request (each partition's tail is read).
pub const MAX_DEAD_LETTERS: usize = 100;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    scoped(
        Router::new().route("/api/v1/dead-letters", get(list_dead_letters)),
        Scope::Read,
        state,
    )
}

/// The latest records of the dead-letter topic, newest first, with the error and rejection
/// their headers carry and the input as sent (cut to 512 bytes).
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    tag = "operations",
    params(DeadLettersParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the latest dead letters", body = DeadLettersBody),
        (status = 400, description = "malformed parameter", body = ErrorBody),
        ReadDenied,
        (status = 503, description = "Kafka unavailable", body = ErrorBody),
    )
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    params: Result<Query<DeadLettersParams>, QueryRejection>,
) -> Result<Json<DeadLettersBody>, ApiError> {
    let params = query_params(params)?;
    let limit = parse_limit_within(params.limit.as_deref(), 10, MAX_DEAD_LETTERS)?;
    let dead_letters = state.backend.dead_letters(limit).await?;
    Ok(Json(DeadLettersBody { dead_letters }))
}
