//! Who the caller is and what their token may do (`GET /api/v1/session`), behind `read`: the
//! console offers only the actions the token's scopes allow (the API refuses the others anyway).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::super::api::{ReadDenied, SessionBody};
use super::super::auth::{Principal, Scope};
use super::request::actor;
use super::{scoped, AppState};

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    scoped(
        Router::new().route("/api/v1/session", get(session)),
        Scope::Read,
        state,
    )
}

/// The caller's name and scopes (every scope when `http.auth.mode = "open"`).
#[utoipa::path(
    get,
    path = "/api/v1/session",
    tag = "operations",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "who the token is and what it may do", body = SessionBody),
        ReadDenied,
    )
)]
pub async fn session(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
) -> Json<SessionBody> {
    let scopes = Scope::ALL
        .into_iter()
        .filter(|&scope| {
            state
                .auth
                .as_ref()
                .is_none_or(|tokens| tokens.authorize(&headers, scope).is_ok())
        })
        .map(|scope| scope.as_str().to_owned())
        .collect();
    Json(SessionBody {
        name: actor(principal),
        auth: if state.auth.is_some() {
            "tokens"
        } else {
            "open"
        },
        scopes,
    })
}
