//! What the handlers parse: JSON bodies (415 / 413 / 408), path and query parameters (strictly:
//! an unknown one is a 400 naming it and the accepted ones), ids, pages, the alert filters, time
//! bounds and cursors, each refused with an error naming the problem.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Extension;

use super::super::api::{AlertsParams, ApiError, DEFAULT_LIMIT, MAX_LIMIT};
use super::super::auth::Principal;
use crate::domain::{Coord, UserId};
use crate::store::{AlertQuery, OrderKey};

/// Refuses a query parameter the route does not know (CONTRACT §7): a misspelt filter such as
/// `userId` must not quietly widen the answer to everyone's alerts. The 400 names the
/// parameter and the accepted ones.
pub(super) fn strict_query(query: Option<&str>, accepted: &[String]) -> Result<(), ApiError> {
    let Some(query) = query else {
        return Ok(());
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let name = percent_decode(pair.split('=').next().unwrap_or(""));
        if !accepted.contains(&name) {
            let accepted = if accepted.is_empty() {
                "this endpoint takes no query parameters".to_owned()
            } else {
                format!("accepted: {}", accepted.join(", "))
            };
            return Err(ApiError::Invalid(format!(
                "unknown query parameter {name:?}; {accepted}"
            )));
        }
    }
    Ok(())
}

/// `application/x-www-form-urlencoded` decoding of one name (`+` is a space, `%XX` a byte).
fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match (bytes[i], escaped) {
            (_, Some((high, low))) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (byte, None) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
    parse_limit_within(limit, DEFAULT_LIMIT, MAX_LIMIT)
}

/// A `limit` in `1..=max`, `default` when absent.
pub(super) fn parse_limit_within(
    limit: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match limit {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(format!(
                "invalid limit: {text:?} is not an integer in 1..={max}"
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

/// The filters of the alerts list and of the live feed: one parse for both. `since` is
/// inclusive and `until` exclusive, so `since >= until` could only ever be empty: a 400.
pub(super) fn alert_filters(params: &AlertsParams) -> Result<AlertQuery, ApiError> {
    let query = AlertQuery {
        user_id: params.user_id.as_deref().map(parse_user_id).transpose()?,
        code: params
            .code
            .as_deref()
            .map(|c| {
                c.parse::<u32>()
                    .map_err(|_| ApiError::Invalid(format!("invalid code: {c:?}")))
            })
            .transpose()?,
        status: params
            .status
            .as_deref()
            .map(|s| {
                s.parse::<crate::domain::TriageStatus>()
                    .map_err(ApiError::Invalid)
            })
            .transpose()?,
        since: parse_time("since", params.since.as_deref())?,
        until: parse_time("until", params.until.as_deref())?,
        ..AlertQuery::default()
    };
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since >= until {
            return Err(ApiError::Invalid(format!(
                "since ({since} ms) must be before until ({until} ms): since is inclusive and \
                 until exclusive, so this range is empty"
            )));
        }
    }
    Ok(query)
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
    fn an_unknown_query_parameter_is_named_with_the_accepted_ones() {
        let accepted = ["user_id".to_owned(), "code".to_owned()];
        assert!(strict_query(None, &accepted).is_ok());
        assert!(strict_query(Some("user_id=3&code=30&"), &accepted).is_ok());
        // Encoded names are decoded as the parameters themselves are.
        assert!(strict_query(Some("user%5Fid=3"), &accepted).is_ok());
        let error = strict_query(Some("code=30&userId=99999"), &accepted)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "unknown query parameter \"userId\"; accepted: user_id, code"
        );
        let error = strict_query(Some("x"), &[]).unwrap_err().to_string();
        assert!(error.contains("takes no query parameters"), "{error}");
        assert_eq!(percent_decode("a+b%41%zz%4"), "a bA%zz%4");
    }

    #[test]
    fn since_must_be_before_until() {
        let params = |since: &str, until: &str| -> AlertsParams {
            serde_json::from_value(serde_json::json!({"since": since, "until": until})).unwrap()
        };
        assert!(alert_filters(&params("1000", "1001")).is_ok());
        for (since, until) in [("1000", "1000"), ("2000", "1000")] {
            let error = alert_filters(&params(since, until))
                .unwrap_err()
                .to_string();
            assert!(error.contains("must be before until"), "{error}");
        }
    }

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
