//! What operators and their tools use (CONTRACT §7): liveness, readiness, metrics and the
//! OpenAPI document, open to everyone (probes and scrapers carry no token).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::OpenApi;

use super::super::api::{ApiDoc, HealthBody, ReadyBody, ShimReadiness};
use super::{AppState, Shared};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "alive", body = HealthBody)))]
pub async fn healthz() -> Json<HealthBody> {
    Json(HealthBody { status: "ok" })
}

/// The readiness report of this process.
pub fn readiness(state: &Shared) -> ReadyBody {
    let shim = ShimReadiness {
        kafka_connected: state.backend.ready(),
        alerts_following: state.hub.connected(),
        store_projecting: state.projection.assigned(),
        store_projected: state.projection.projected(),
        store_skipped: state.projection.skipped(),
        store_failing: state.projection.failing(),
        pending_requests: state.hub.pending(),
    };
    let processor = state.processor.as_ref().map(|r| r.report());
    let ready = shim.kafka_connected
        && shim.alerts_following
        && shim.store_projecting
        && processor.is_none_or(|p| p.ready);
    ReadyBody {
        ready,
        shim,
        processor: processor.map(Into::into),
    }
}

/// Readiness: the shim's Kafka clients are connected, its database open and its projection
/// assigned (not caught up: a restart is ready at once whatever the topic's size), and (in
/// `user-monitor run`) the processor is connected with every assigned partition restored.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "ready", body = ReadyBody),
        (status = 503, description = "not ready", body = ReadyBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let body = readiness(&state);
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text exposition, which Prometheus scrapes natively).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes"),
    )
        .into_response()
}
