//! What the service answers: the legacy response object and the output-topic record.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::event::UserId;
use super::risk::Risk;
use super::verdict::{AlertCodes, Coord, Verdict};

/// Inputs larger than this are not echoed in their response record (the DLQ keeps them, whole
/// up to the dead-letter size limit).
pub const MAX_ECHOED_EVENT_BYTES: usize = 16 * 1024;

/// An error message is cut to this many bytes in a response record and a DLQ header.
pub const MAX_ERROR_BYTES: usize = 1024;

/// The original API's response, exactly: `{"alert": true, "alert_codes": [30, 123], "user_id": 1}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyResponse {
    pub alert: bool,
    pub alert_codes: Vec<u32>,
    pub user_id: u64,
}

impl LegacyResponse {
    pub fn new(user_id: u64, codes: &AlertCodes) -> Self {
        LegacyResponse {
            alert: codes.is_alert(),
            alert_codes: codes.as_slice().to_vec(),
            user_id,
        }
    }
}

/// Writes the legacy response without allocating, in the spacing the original Python service
/// used (`{"alert": false, "alert_codes": [], "user_id": 1}`).
pub fn write_legacy(out: &mut impl Write, user_id: u64, codes: &[u32]) -> io::Result<()> {
    write_legacy_then(out, user_id, codes, b"}")
}

/// [`write_legacy`] as one JSON line.
pub fn write_legacy_line(out: &mut impl Write, user_id: u64, codes: &AlertCodes) -> io::Result<()> {
    write_legacy_codes_line(out, user_id, codes.as_slice())
}

/// [`write_legacy_line`] for any number of codes (a rule set may have more than five rules).
pub fn write_legacy_codes_line(
    out: &mut impl Write,
    user_id: u64,
    codes: &[u32],
) -> io::Result<()> {
    write_legacy_then(out, user_id, codes, b"}\n")
}

#[inline]
fn write_legacy_then(
    out: &mut impl Write,
    user_id: u64,
    codes: &[u32],
    end: &[u8],
) -> io::Result<()> {
    let mut buf = itoa::Buffer::new();
    out.write_all(if codes.is_empty() {
        b"{\"alert\": false, \"alert_codes\": ["
    } else {
        b"{\"alert\": true, \"alert_codes\": ["
    })?;
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            out.write_all(b", ")?;
        }
        out.write_all(buf.format(*code).as_bytes())?;
    }
    out.write_all(b"], \"user_id\": ")?;
    out.write_all(buf.format(user_id).as_bytes())?;
    out.write_all(end)
}

/// Why an input record got an error response instead of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Not a valid event (bad JSON, not an object, bad or missing fields).
    Invalid,
    /// Older than the user's last accepted event.
    OutOfOrder,
    /// A valid event in another partition than its user's (murmur2 of the decimal user id):
    /// evaluating it there would split the user's state in two.
    WrongPartition,
    /// Its idempotency key was already used by that user for a different event.
    IdempotencyConflict,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Invalid => "invalid",
            Rejection::OutOfOrder => "out_of_order",
            Rejection::WrongPartition => "wrong_partition",
            Rejection::IdempotencyConflict => "idempotency_conflict",
        }
    }
}

/// One record of the alerts topic: the response to exactly one input record.
///
/// On the wire it is one flat JSON object: `event_id`, `user_id`, then either `alert`,
/// `alert_codes`, `alert_id` (`null` without an alert) and `risk`, or `error` and `rejection`;
/// then `event`, the input as sent when it is JSON, else `event_text`, the input as lossy text.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    /// The input record's coordinates, written `"<partition>-<offset>"`.
    pub event_id: Coord,
    /// A retry under an idempotency key already used: the `event_id` of the original, whose
    /// answer this record repeats (alert fields, `alert_id` and `risk` are the original's).
    pub duplicate_of: Option<Coord>,
    pub user_id: Option<UserId>,
    pub outcome: Outcome,
    /// The version of the rule set the event was judged under (CONTRACT §10).
    pub rules_version: Option<String>,
    /// Why each code fired, one entry per code (a JSON array; CONTRACT §10).
    pub evidence: Option<Box<RawValue>>,
    pub event: Option<Box<RawValue>>,
    pub event_text: Option<String>,
}

/// What became of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        alert_codes: Vec<u32>,
        /// Deterministic: `"alert-<partition>-<offset>"`, `None` when no alert.
        alert_id: Option<String>,
        risk: Risk,
    },
    Rejected {
        rejection: Rejection,
        error: String,
    },
}

#[derive(Serialize, Deserialize)]
struct WireRecord<'a> {
    event_id: std::borrow::Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duplicate_of: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alert: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alert_codes: Option<std::borrow::Cow<'a, [u32]>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_null"
    )]
    alert_id: Option<Option<std::borrow::Cow<'a, str>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    risk: Option<Risk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rejection: Option<Rejection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules_version: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    evidence: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    event: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_text: Option<std::borrow::Cow<'a, str>>,
}

/// `Some(None)` is a present `null`, `None` an absent key.
mod present_or_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, T: Serialize>(
        value: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        value.as_ref().expect("skipped when absent").serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// Why bytes are not an alert record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid alert record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid alert record: neither alert fields nor error")]
    Incomplete,
    #[error("invalid alert record: {0:?} is not an event id (\"<partition>-<offset>\")")]
    EventId(String),
    #[error("invalid alert record: user_id {0} above 2^63-1")]
    UserId(u64),
}

impl Serialize for AlertRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut wire = WireRecord {
            event_id: self.event_id.event_id().into(),
            duplicate_of: self.duplicate_of.map(|of| of.event_id().into()),
            user_id: self.user_id.map(UserId::get),
            alert: None,
            alert_codes: None,
            alert_id: None,
            risk: None,
            error: None,
            rejection: None,
            rules_version: self.rules_version.as_deref().map(Into::into),
            evidence: self.evidence.as_deref(),
            event: self.event.as_deref(),
            event_text: self.event_text.as_deref().map(Into::into),
        };
        match &self.outcome {
            Outcome::Accepted {
                alert_codes,
                alert_id,
                risk,
            } => {
                wire.alert = Some(!alert_codes.is_empty());
                wire.alert_codes = Some(alert_codes.as_slice().into());
                wire.alert_id = Some(alert_id.as_deref().map(Into::into));
                wire.risk = Some(*risk);
            }
            Outcome::Rejected { rejection, error } => {
                wire.error = Some(error.as_str().into());
                wire.rejection = Some(*rejection);
            }
        }
        wire.serialize(s)
    }
}

fn raw_event(input: &[u8]) -> (Option<Box<RawValue>>, Option<String>) {
    match std::str::from_utf8(input)
        .ok()
        .and_then(|s| serde_json::from_str::<Box<RawValue>>(s.trim()).ok())
    {
        Some(raw) => (Some(raw), None),
        None => (None, Some(String::from_utf8_lossy(input).into_owned())),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn truncate_text(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl AlertRecord {
    /// The response to an accepted event.
    pub fn accepted(
        at: Coord,
        user_id: UserId,
        codes: &AlertCodes,
        risk: Risk,
        input: &[u8],
    ) -> Self {
        let (event, event_text) = raw_event(input);
        AlertRecord {
            event_id: at,
            duplicate_of: None,
            user_id: Some(user_id),
            outcome: Outcome::Accepted {
                alert_codes: codes.as_slice().to_vec(),
                alert_id: codes.is_alert().then(|| at.alert_id()),
                risk,
            },
            rules_version: None,
            evidence: None,
            event,
            event_text,
        }
    }

    /// The response to a retry of the event `of` under the same idempotency key: the
    /// original's answer, marked as such.
    pub fn duplicate(
        at: Coord,
        user_id: UserId,
        of: Coord,
        codes: &[u32],
        risk: Risk,
        input: &[u8],
    ) -> Self {
        let (event, event_text) = raw_event(input);
        AlertRecord {
            event_id: at,
            duplicate_of: Some(of),
            user_id: Some(user_id),
            outcome: Outcome::Accepted {
                alert_codes: codes.to_vec(),
                alert_id: (!codes.is_empty()).then(|| of.alert_id()),
                risk,
            },
            rules_version: None,
            evidence: None,
            event,
            event_text,
        }
    }

    /// The response to a rejected input.
    pub fn rejected(
        at: Coord,
        user_id: Option<UserId>,
        rejection: Rejection,
        error: String,
        input: &[u8],
    ) -> Self {
        let (event, event_text) = raw_event(input);
        AlertRecord {
            event_id: at,
            duplicate_of: None,
            user_id,
            outcome: Outcome::Rejected { rejection, error },
            rules_version: None,
            evidence: None,
            event,
            event_text,
        }
    }

    /// The response to the record at `at` with `input` as its value, as the engine judged it;
    /// `None` for an offset already in its user's restored state (whose response a previous
    /// owner produced). An input over [`MAX_ECHOED_EVENT_BYTES`] is not echoed (the
    /// dead-letter copy carries it) and an error message is cut to [`MAX_ERROR_BYTES`].
    pub fn answer(at: Coord, verdict: &Verdict, input: &[u8]) -> Option<AlertRecord> {
        let echoed = if input.len() <= MAX_ECHOED_EVENT_BYTES {
            input
        } else {
            b""
        };
        let mut record = match verdict {
            Verdict::Accepted {
                user_id,
                codes,
                risk,
                evidence,
                ..
            } => {
                let mut record = AlertRecord::accepted(at, *user_id, codes, *risk, echoed);
                record.evidence = evidence
                    .as_deref()
                    .and_then(|e| RawValue::from_string(e.to_owned()).ok());
                record
            }
            Verdict::Rejected {
                user_id,
                rejection,
                error,
            } => AlertRecord::rejected(
                at,
                *user_id,
                *rejection,
                truncate_text(error, MAX_ERROR_BYTES).to_owned(),
                echoed,
            ),
            Verdict::Duplicate {
                user_id,
                of,
                answer: Some(answer),
            } => AlertRecord::duplicate(at, *user_id, *of, &answer.codes, answer.risk, echoed),
            Verdict::Duplicate {
                user_id,
                of,
                answer: None,
            } => {
                let mut record = AlertRecord::rejected(
                    at,
                    Some(*user_id),
                    Rejection::IdempotencyConflict,
                    format!(
                        "a retry of event {of} whose answer is no longer retained; it was not applied again"
                    ),
                    echoed,
                );
                record.duplicate_of = Some(*of);
                record
            }
            Verdict::AlreadyApplied { .. } => return None,
        };
        if input.len() > MAX_ECHOED_EVENT_BYTES {
            record.event = None;
            // This text is part of the output contract: its wording stays.
            record.event_text = Some(format!(
                "<{} bytes, not embedded; see the dead-letter topic>",
                input.len()
            ));
        }
        Some(record)
    }

    /// Stamps the version of the rule set the record's event was judged under.
    pub fn versioned(mut self, rules_version: &str) -> Self {
        self.rules_version = Some(rules_version.to_owned());
        self
    }

    /// Reads a record of the alerts topic.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: WireRecord = serde_json::from_slice(bytes)?;
        let outcome = match (wire.alert_codes, wire.risk, wire.error, wire.rejection) {
            (Some(codes), Some(risk), None, None) => Outcome::Accepted {
                alert_codes: codes.into_owned(),
                alert_id: wire.alert_id.flatten().map(|id| id.into_owned()),
                risk,
            },
            (None, None, Some(error), Some(rejection)) => Outcome::Rejected {
                rejection,
                error: error.into_owned(),
            },
            _ => return Err(RecordError::Incomplete),
        };
        let coord =
            |id: &str| Coord::parse_event_id(id).ok_or_else(|| RecordError::EventId(id.to_owned()));
        Ok(AlertRecord {
            event_id: coord(&wire.event_id)?,
            duplicate_of: wire.duplicate_of.as_deref().map(coord).transpose()?,
            user_id: wire
                .user_id
                .map(|id| UserId::new(id).ok_or(RecordError::UserId(id)))
                .transpose()?,
            outcome,
            rules_version: wire.rules_version.map(|v| v.into_owned()),
            evidence: wire.evidence.map(|raw| raw.to_owned()),
            event: wire.event.map(|raw| raw.to_owned()),
            event_text: wire.event_text.map(|t| t.into_owned()),
        })
    }

    pub fn is_error(&self) -> bool {
        matches!(self.outcome, Outcome::Rejected { .. })
    }

    pub fn alert_id(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Accepted { alert_id, .. } => alert_id.as_deref(),
            Outcome::Rejected { .. } => None,
        }
    }

    /// The legacy response, for accepted events.
    pub fn legacy(&self) -> Option<LegacyResponse> {
        match &self.outcome {
            Outcome::Accepted { alert_codes, .. } => Some(LegacyResponse {
                alert: !alert_codes.is_empty(),
                alert_codes: alert_codes.clone(),
                user_id: self.user_id?.get(),
            }),
            Outcome::Rejected { .. } => None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an alert record always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes an event raised (what the engine would give; the domain does not evaluate).
    fn codes(list: &[u32]) -> AlertCodes {
        AlertCodes::from_sorted(list)
    }

    #[test]
    fn legacy_line_matches_the_original_api() {
        let mut out = Vec::new();
        write_legacy_line(&mut out, 3, &codes(&[1100])).unwrap();
        assert_eq!(
            out,
            b"{\"alert\": true, \"alert_codes\": [1100], \"user_id\": 3}\n"
        );
        let parsed: LegacyResponse = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            LegacyResponse {
                alert: true,
                alert_codes: vec![1100],
                user_id: 3
            }
        );
    }

    #[test]
    fn accepted_record_carries_ids_risk_and_the_original_event() {
        let input = br#"{"type":"withdraw","amount":"200","user_id":3,"time":0,"extra":1}"#;
        let record = AlertRecord::accepted(
            Coord::new(2, 41),
            UserId::new(3).unwrap(),
            &codes(&[1100]),
            Risk::High,
            input,
        );
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(json["event_id"], "2-41");
        assert_eq!(json["alert_id"], "alert-2-41");
        assert_eq!(json["risk"], "high");
        assert_eq!(json["event"]["extra"], 1);
        assert_eq!(json["alert_codes"], serde_json::json!([1100]));
        let back = AlertRecord::from_json(&record.to_json()).unwrap();
        assert_eq!(back.to_json(), record.to_json());
    }

    #[test]
    fn no_alert_has_a_null_alert_id_and_errors_have_none() {
        let input = br#"{"type":"deposit","amount":"1","user_id":3,"time":0}"#;
        let record = AlertRecord::accepted(
            Coord::new(0, 0),
            UserId::new(3).unwrap(),
            &codes(&[]),
            Risk::Medium,
            input,
        );
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert!(json.get("alert_id").unwrap().is_null());
        let error = AlertRecord::rejected(
            Coord::new(0, 1),
            None,
            Rejection::Invalid,
            "invalid JSON".into(),
            b"\xff not json",
        );
        let json: serde_json::Value = serde_json::from_slice(&error.to_json()).unwrap();
        assert!(json.get("alert_id").is_none());
        assert_eq!(json["rejection"], "invalid");
        assert!(json["event_text"].as_str().unwrap().ends_with("not json"));
        let back = AlertRecord::from_json(&error.to_json()).unwrap();
        assert_eq!(back.alert_id(), None);
        assert_eq!(back.to_json(), error.to_json());
    }

    #[test]
    fn event_ids_round_trip_and_reject_lookalikes() {
        let coord = Coord::new(3, 12);
        assert_eq!(Coord::parse_event_id(&coord.event_id()), Some(coord));
        assert_eq!(
            Coord::parse_alert_id(&Coord::new(0, 7).alert_id()),
            Some(Coord::new(0, 7))
        );
        for bad in ["", "3", "-1-2", "1--2", "01-2", "1-2-3", "a-b", "1-+2"] {
            assert_eq!(Coord::parse_event_id(bad), None, "{bad}");
        }
    }
}
