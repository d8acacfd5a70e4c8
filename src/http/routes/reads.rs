//! Reading what the processor answered (CONTRACT §7): an event, the alerts (with their triage), a
//! user's events, from the read model (then the recent responses, then Kafka), behind `read`.
//! Every answer states how fresh the read model is (`read_model`), and a query parameter a route
//! does not know is a 400.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};

use super::super::api::{
    AlertsPage, AlertsParams, ApiError, ErrorBody, EventRead, EventView, PageParams, ReadDenied,
    UserEventsPage,
};
use super::super::auth::Scope;
use super::request::{
    alert_filters, parse_alert_key, parse_cursor, parse_event_key, parse_limit, parse_user_id,
    path_param, query_params,
};
use super::{scoped, AppState, Shared};
use crate::domain::Coord;
use crate::store::{AlertQuery, Page, StoreError};

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route("/api/v1/events/{event_id}", get(get_event))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/alerts/stream", get(super::stream::stream_alerts))
        .route("/api/v1/alerts/{alert_id}", get(get_alert))
        .route("/api/v1/users/{user_id}/events", get(user_events));
    scoped(routes, Scope::Read, state)
}

pub(super) fn store_error(error: StoreError) -> ApiError {
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
        (status = 200, description = "the event and its result", body = EventRead),
        (status = 400, description = "a query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 404, description = "no such event retained, or not an event id", body = ErrorBody),
        (status = 503, description = "Kafka unavailable for the lookup", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_event(
    State(state): State<AppState>,
    event_id: Result<Path<String>, PathRejection>,
) -> Result<Json<EventRead>, ApiError> {
    let event_id = path_param(event_id)?;
    let key = parse_event_key(&event_id)?;
    let read_model = state.read_model();
    find_event(&state, key)
        .await?
        .map(|event| Json(EventRead { event, read_model }))
        .ok_or_else(|| ApiError::NotFound(format!("no event {event_id}")))
}

fn views(page: &Page) -> Vec<EventView> {
    page.items
        .iter()
        .map(|s| EventView::processed(&s.record))
        .collect()
}

/// The views of a page of alerts, each with its triage (one query for the page).
async fn alert_views(state: &Shared, page: &Page) -> Result<Vec<EventView>, ApiError> {
    let alerts: Vec<Coord> = page.items.iter().map(|s| s.coord()).collect();
    let mut triage = state.store.triage_of(&alerts).await.map_err(store_error)?;
    Ok(page
        .items
        .iter()
        .map(|s| {
            let view = EventView::processed(&s.record);
            view.with_triage(triage.remove(&s.coord()).unwrap_or_default())
        })
        .collect())
}

/// The alert `alert_id` (at `key`): the event there, if its record raised exactly this alert
/// (a retry's record repeats its original's alert id), else 404. Without its triage.
pub(super) async fn find_alert(
    state: &Shared,
    alert_id: &str,
    key: Coord,
) -> Result<EventView, ApiError> {
    match find_event(state, key).await? {
        Some(view) if view.alert_id() == Some(alert_id) => Ok(view),
        _ => Err(ApiError::NotFound(format!("no alert {alert_id}"))),
    }
}

/// Alerts, newest first (by the alerts record's timestamp), from the database; filters by user,
/// code, triage status and a time range (`since` inclusive, `until` exclusive).
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    params(AlertsParams, PageParams),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "a page of alerts", body = AlertsPage),
        (status = 400, description = "malformed or unknown parameter, or since not before until", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn list_alerts(
    State(state): State<AppState>,
    filters: Result<Query<AlertsParams>, QueryRejection>,
    page: Result<Query<PageParams>, QueryRejection>,
) -> Result<Json<AlertsPage>, ApiError> {
    let page = query_params(page)?;
    let query = AlertQuery {
        before: parse_cursor(page.cursor.as_deref())?,
        limit: parse_limit(page.limit.as_deref())?,
        ..alert_filters(&query_params(filters)?)?
    };
    let read_model = state.read_model();
    let page = state.store.alerts(&query).await.map_err(store_error)?;
    Ok(Json(AlertsPage {
        alerts: alert_views(&state, &page).await?,
        next_cursor: page.next.map(|k| k.cursor()),
        read_model,
    }))
}

/// One alert, with its triage.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/{alert_id}",
    tag = "alerts",
    params(("alert_id" = String, Path, description = "\"alert-<partition>-<offset>\"")),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "the alert: its event, result and triage", body = EventRead),
        (status = 400, description = "a query parameter (this endpoint takes none)", body = ErrorBody),
        (status = 404, description = "no such alert, or not an alert id", body = ErrorBody),
        (status = 503, description = "Kafka unavailable for the lookup", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn get_alert(
    State(state): State<AppState>,
    alert_id: Result<Path<String>, PathRejection>,
) -> Result<Json<EventRead>, ApiError> {
    let alert_id = path_param(alert_id)?;
    let key = parse_alert_key(&alert_id)?;
    let read_model = state.read_model();
    let view = find_alert(&state, &alert_id, key).await?;
    let mut triage = state.store.triage_of(&[key]).await.map_err(store_error)?;
    Ok(Json(EventRead {
        event: view.with_triage(triage.remove(&key).unwrap_or_default()),
        read_model,
    }))
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
        (status = 400, description = "malformed user_id, malformed or unknown parameter", body = ErrorBody),
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
    let read_model = state.read_model();
    let page = state
        .store
        .user_events(user_id, before, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(UserEventsPage {
        user_id: user_id.get(),
        events: views(&page),
        next_cursor: page.next.map(|k| k.cursor()),
        read_model,
    }))
}
