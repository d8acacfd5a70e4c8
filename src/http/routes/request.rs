//! What the handlers parse: JSON bodies (415 / 413 / 408), path and query parameters, ids,
//! pages, time bounds and cursors, each refused with an error naming the problem.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Extension;

use super::super::api::{ApiError, DEFAULT_LIMIT, MAX_LIMIT};
use super::super::auth::Principal;
use crate::domain::{Coord, UserId};
use crate::store::OrderKey;

pub(super) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > "application/+json".len()
            && mime[..12].eq_ignore_ascii_case("application/")
            && mime.to_ascii_lowercase().ends_with("+json"))
}

/// 415 unless JSON, then 413 when over the limit.
pub(super) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::NotJson);
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(limit)
        } else if body_timed_out(&rejection) {
            ApiError::BodyTimeout
        } else {
            ApiError::Invalid(rejection.body_text())
        }
    })
}

/// Whether reading the body failed because the client sent it too slowly
/// (`http.body_read_timeout`).
pub(super) fn body_timed_out(rejection: &BytesRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

pub(super) fn parse_user_id(text: &str) -> Result<UserId, ApiError> {
    UserId::parse(text).ok_or_else(|| {
        ApiError::Invalid(format!(
            "invalid user_id: {text:?} is not an integer in 0..=2^63-1"
        ))
    })
}

pub(super) fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(format!(
                "invalid limit: {text:?} is not an integer in 1..={MAX_LIMIT}"
            ))),
        },
    }
}

/// A time bound: RFC 3339 or milliseconds since the Unix epoch.
pub(super) fn parse_time(name: &str, text: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(text) = text else {
        return Ok(None);
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "invalid {name}: {text:?} is neither RFC 3339 nor milliseconds since the epoch"
            ))
        })
}

pub(super) fn parse_cursor(cursor: Option<&str>) -> Result<Option<OrderKey>, ApiError> {
    cursor
        .map(|text| {
            OrderKey::from_cursor(text)
                .ok_or_else(|| ApiError::Invalid(format!("invalid cursor: {text:?}")))
        })
        .transpose()
}

/// An id that cannot name any event is an unknown id: 404, saying what ids look like.
pub(super) fn parse_event_key(text: &str) -> Result<Coord, ApiError> {
    Coord::parse_event_id(text).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no event {text:?}: event ids are \"<partition>-<offset>\""
        ))
    })
}

/// An id that cannot name any alert is an unknown alert: 404, saying what alert ids look like.
pub(super) fn parse_alert_key(text: &str) -> Result<Coord, ApiError> {
    Coord::parse_alert_id(text).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no alert {text:?}: alert ids are \"alert-<partition>-<offset>\""
        ))
    })
}

/// A path segment, or a JSON 400 naming the problem (e.g. invalid percent-encoded UTF-8).
pub(super) fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| ApiError::Invalid(format!("invalid path: {}", e.body_text())))
}

/// Query parameters, or a JSON 400 naming the problem (e.g. a repeated parameter).
pub(super) fn query_params<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(params)| params)
        .map_err(|e| ApiError::Invalid(format!("invalid query: {}", e.body_text())))
}

/// The name of whoever makes the request (the scope layer puts it in; `anonymous` when open).
pub(super) fn actor(principal: Option<Extension<Principal>>) -> String {
    principal.map_or_else(Principal::anonymous, |p| p.0).name
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn recognises_json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("application/+json", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }
}
