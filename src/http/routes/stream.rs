//! The live alert feed (CONTRACT §7): `GET /api/v1/alerts/stream`, behind `read` (registered
//! with the other reads in [`super::reads`]). The ordering and resumption are
//! [`crate::http::stream`]'s.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::super::api::{AlertsParams, ApiError, ErrorBody, ReadDenied, StreamParams};
use super::super::server::ConnectionClose;
use super::super::stream::{self, FeedStart};
use super::request::{alert_filters, parse_cursor, query_params};
use super::AppState;

/// The header an `EventSource` sends when it reconnects.
const LAST_EVENT_ID: &str = "last-event-id";

/// A live feed of alerts as Server-Sent Events, in cursor order: `event: alert`, `id:` the
/// alert's cursor, `data:` the alert as the list shows it. Reconnect with `Last-Event-ID` (or
/// `cursor`/`after`) to resume without gaps or repeats; an SSE comment every
/// `http.stream_heartbeat` while idle; `event: overflow` (then the end) for a client that reads
/// too slowly; `event: end` once `until` is reached.
#[utoipa::path(
    get,
    path = "/api/v1/alerts/stream",
    tag = "alerts",
    params(
        AlertsParams,
        StreamParams,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this id (wins over cursor and after)"),
    ),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "text/event-stream: `event: alert` (id: the cursor, data: an EventView), `event: overflow` (data: StreamOverflow), `event: end` (data: StreamEnd), `event: error`", content_type = "text/event-stream", body = String),
        (status = 400, description = "malformed or unknown parameter, or since not before until", body = ErrorBody),
        (status = 503, description = "http.max_streams feeds are open, or the shim is shutting down", body = ErrorBody),
        ReadDenied,
    )
)]
pub async fn stream_alerts(
    State(state): State<AppState>,
    headers: HeaderMap,
    close: Option<Extension<ConnectionClose>>,
    filters: Result<Query<AlertsParams>, QueryRejection>,
    position: Result<Query<StreamParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let filters = alert_filters(&query_params(filters)?)?;
    let position = query_params(position)?;
    let from_header = headers
        .get(LAST_EVENT_ID)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::Invalid("invalid Last-Event-ID: not text".to_owned()))
        })
        .transpose()?
        .filter(|v| !v.trim().is_empty());
    let cursor = match (from_header, position.cursor, position.after) {
        (Some(id), _, _) => parse_cursor(Some(id.trim()))?,
        (None, Some(_), Some(_)) => {
            return Err(ApiError::Invalid(
                "cursor and after are the same parameter: give one".to_owned(),
            ))
        }
        (None, cursor, after) => parse_cursor(cursor.or(after).as_deref())?,
    };
    let Some(permit) = state.streams.try_open() else {
        return Err(ApiError::Busy(format!(
            "{} alert streams are open (http.max_streams), or the shim is shutting down; retry later",
            state.streams.config.max_streams
        )));
    };
    let heartbeat = state.streams.config.heartbeat;
    let feed = stream::open(
        state.clone(),
        FeedStart { filters, cursor },
        permit,
        close.map(|Extension(c)| c.0),
    );
    let mut response = Sse::new(stream::body(feed))
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Proxies (nginx) must pass events on as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
