//! Submitting events (CONTRACT §7): `POST /event` (the original contract) and
//! `POST /api/v1/events`, both behind `events:write`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::super::api::{
    ApiError, CreatedBody, ErrorBody, EventBody, LegacyBody, PendingBody, SubmitDenied,
};
use super::super::auth::Scope;
use super::super::waiters::{Hub, Wait};
use super::request::json_body;
use super::{scoped, AppState, Shared};
use crate::domain::response::{write_legacy, Outcome, Rejection};
use crate::domain::{decode, Coord, DecodeError, UserId};
use crate::store::Stored;

pub(super) fn routes(state: &AppState) -> Router<AppState> {
    let routes = Router::new()
        .route("/event", post(post_event))
        .route("/api/v1/events", post(create_event));
    scoped(routes, Scope::EventsWrite, state)
}

enum Submitted {
    Done(Arc<Stored>),
    Pending(String),
}

/// Forgets a waiter when its request ends, however it ends (timeout, client gone).
struct WaiterGuard<'a> {
    hub: &'a Hub,
    key: Coord,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.hub.forget_closed(self.key);
    }
}

/// Validates, produces, waits for the response record.
async fn submit(
    state: &Shared,
    body: Bytes,
    idempotency_key: Option<String>,
) -> Result<Submitted, ApiError> {
    let event = decode(&body).map_err(|e: DecodeError| ApiError::Invalid(e.to_string()))?;
    let delivered = state
        .backend
        .produce_event(event.user_id.to_string(), body.to_vec(), idempotency_key)
        .await?;
    let key = delivered;
    let _guard = WaiterGuard {
        hub: &state.hub,
        key,
    };
    let rx = match state.hub.wait_for(key) {
        Wait::Ready(stored) => return Ok(Submitted::Done(stored)),
        Wait::Pending(rx) => rx,
    };
    match tokio::time::timeout(state.response_timeout, rx).await {
        Ok(Ok(stored)) => Ok(Submitted::Done(stored)),
        _ => {
            tracing::info!(
                partition = key.partition,
                offset = key.offset,
                "no response in time, answering pending"
            );
            Ok(Submitted::Pending(key.event_id()))
        }
    }
}

fn rejection_error(stored: &Stored) -> Option<ApiError> {
    match &stored.record.outcome {
        Outcome::Accepted { .. } => None,
        Outcome::Rejected {
            rejection: Rejection::OutOfOrder,
            error,
        } => Some(ApiError::OutOfOrder(error.clone())),
        // A wrong partition cannot come from the shim's own producer (murmur2 by user id)
        // unless the topic's partition count changed under the processor: the event was not
        // evaluated, which the client must learn.
        Outcome::Rejected {
            rejection: Rejection::Invalid | Rejection::WrongPartition,
            error,
        } => Some(ApiError::Invalid(error.clone())),
        Outcome::Rejected {
            rejection: Rejection::IdempotencyConflict,
            error,
        } => Some(ApiError::IdempotencyConflict(error.clone())),
    }
}

/// The `Idempotency-Key` header: absent, or 1 to 128 visible ASCII characters (400 otherwise).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::Invalid(
            "invalid Idempotency-Key: send it once".to_owned(),
        ));
    }
    crate::idempotency::validate_key(value.as_bytes())
        .map(|key| Some(key.to_owned()))
        .map_err(|e| ApiError::Invalid(format!("invalid Idempotency-Key: {e}")))
}

/// Where `GET` finds an event: the `Location` of a created or pending event.
fn event_location(event_id: &str) -> String {
    format!("/api/v1/events/{event_id}")
}

fn pending_response(event_id: String, location: bool) -> Response {
    let location_header = event_location(&event_id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(PendingBody {
            event_id,
            status: "pending".to_owned(),
        }),
    )
        .into_response();
    if location {
        if let Ok(value) = HeaderValue::from_str(&location_header) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    response
}

/// The legacy body in the original service's spacing: `{"alert": false, "alert_codes": [], "user_id": 1}`.
fn legacy_json(user_id: u64, codes: &[u32]) -> String {
    let mut out = Vec::with_capacity(64);
    write_legacy(&mut out, user_id, codes).expect("writing to memory");
    String::from_utf8(out).expect("ASCII")
}

/// What both submit routes share: check the body, submit it, wait for its response, and turn a
/// rejection by the processor (out of order) into its error.
async fn accept(
    state: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Submitted, ApiError> {
    let body = json_body(headers, body, state.body_limit)?;
    let key = idempotency_key(headers)?;
    let submitted = submit(state, body, key).await?;
    if let Submitted::Done(stored) = &submitted {
        if let Some(error) = rejection_error(stored) {
            return Err(error);
        }
    }
    Ok(submitted)
}

/// Submit an event, the original contract: answers with the legacy response.
#[utoipa::path(
    post,
    path = "/event",
    tag = "events",
    request_body(content = EventBody, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a retry with the same key and event is answered with the original's response (same event_id) and never counted twice")),
    security(("bearer" = ["events:write"])),
    responses(
        (status = 200, description = "the event's response", body = LegacyBody),
        (status = 202, description = "accepted by Kafka, no response in time", body = PendingBody),
        (status = 400, description = "invalid event: every bad field named", body = ErrorBody),
        (status = 409, description = "out of order for this user", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge: the event was not accepted", body = ErrorBody),
        SubmitDenied,
    )
)]
pub async fn post_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    match accept(&state, &headers, body).await? {
        Submitted::Pending(event_id) => Ok(pending_response(event_id, false)),
        Submitted::Done(stored) => {
            let user_id = stored.record.user_id.map_or(0, UserId::get);
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                legacy_json(user_id, stored.alert_codes()),
            )
                .into_response())
        }
    }
}

/// Submit an event, RESTful form: 201 with the event's id and result.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body(content = EventBody, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 128 visible ASCII characters: a retry with the same key and event is answered with the original's response (same event_id) and never counted twice")),
    security(("bearer" = ["events:write"])),
    responses(
        (status = 201, description = "the event and its result; Location names it", body = CreatedBody),
        (status = 200, description = "a retry under an Idempotency-Key: the original's id and result", body = CreatedBody),
        (status = 202, description = "accepted by Kafka, no response in time", body = PendingBody),
        (status = 400, description = "invalid event: every bad field named", body = ErrorBody),
        (status = 409, description = "out of order for this user", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "Kafka did not acknowledge: the event was not accepted", body = ErrorBody),
        SubmitDenied,
    )
)]
pub async fn create_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    match accept(&state, &headers, body).await? {
        Submitted::Pending(event_id) => Ok(pending_response(event_id, true)),
        Submitted::Done(stored) => {
            let record = &stored.record;
            // A retry is answered as the original was, with the original's id; nothing new was
            // created, so 200 (CONTRACT §7).
            let (event_id, status) = match record.duplicate_of {
                Some(original) => (original.event_id(), StatusCode::OK),
                None => (record.event_id.event_id(), StatusCode::CREATED),
            };
            let location = event_location(&event_id);
            let body = CreatedBody {
                event_id,
                alert_id: record.alert_id().map(str::to_owned),
                alert: !stored.alert_codes().is_empty(),
                alert_codes: stored.alert_codes().to_vec(),
                user_id: record.user_id.map_or(0, UserId::get),
            };
            Ok((status, [(header::LOCATION, location)], Json(body)).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_json_keeps_the_original_spacing() {
        assert_eq!(
            legacy_json(1, &[]),
            r#"{"alert": false, "alert_codes": [], "user_id": 1}"#
        );
        assert_eq!(
            legacy_json(3, &[30, 1100]),
            r#"{"alert": true, "alert_codes": [30, 1100], "user_id": 3}"#
        );
    }
}
