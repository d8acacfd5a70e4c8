//! The triage of an alert (CONTRACT §7): what people decided about it. An alert is `open` until
//! someone acknowledges or resolves it (a resolved alert says why: `fraud`, `legitimate` or
//! `duplicate`), possibly with a note; it can also be reopened.
//!
//! Pure: the `PATCH` body validated into a [`TriageChange`] (one error naming every problem),
//! the [`Triage`] state it becomes once someone made it, the [`TriageRecord`] of the triage topic
//! (keyed by alert id; read back with the same checks), and the one-line summary the audit trail
//! shows as before and after.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Coord;

/// The longest note, in characters: a sentence or two for the next person, not a case file.
pub const NOTE_MAX_CHARS: usize = 1000;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriageStatus {
    /// Nobody has decided anything yet (or it was reopened).
    #[default]
    Open,
    /// Someone is on it.
    Acknowledged,
    /// Done, with a [`Resolution`].
    Resolved,
}

impl TriageStatus {
    pub const ALL: [TriageStatus; 3] = [
        TriageStatus::Open,
        TriageStatus::Acknowledged,
        TriageStatus::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriageStatus::Open => "open",
            TriageStatus::Acknowledged => "acknowledged",
            TriageStatus::Resolved => "resolved",
        }
    }
}

impl fmt::Display for TriageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TriageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TriageStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| {
                format!("status {s:?} is unknown: expected open, acknowledged or resolved")
            })
    }
}

/// Why a resolved alert was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// The movement was fraud.
    Fraud,
    /// The movement was legitimate (a false positive).
    Legitimate,
    /// Another alert already covers it.
    Duplicate,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [
        Resolution::Fraud,
        Resolution::Legitimate,
        Resolution::Duplicate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Fraud => "fraud",
            Resolution::Legitimate => "legitimate",
            Resolution::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resolution::ALL
            .into_iter()
            .find(|resolution| resolution.as_str() == s)
            .ok_or_else(|| {
                format!("resolution {s:?} is unknown: expected fraud, legitimate or duplicate")
            })
    }
}

/// A triage refused as a whole: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid triage: {}", problems.join("; "))]
pub struct InvalidTriage {
    pub problems: Vec<String>,
}

/// What someone asks an alert's triage to become: the whole new state (status, the resolution
/// of a resolved alert, an optional note), valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriageChange {
    status: TriageStatus,
    resolution: Option<Resolution>,
    note: Option<String>,
}

impl TriageChange {
    /// Checks the fields together: a resolution exactly when resolved, a note of at most
    /// [`NOTE_MAX_CHARS`] characters (an empty note is no note).
    pub fn new(
        status: TriageStatus,
        resolution: Option<Resolution>,
        note: Option<String>,
    ) -> Result<TriageChange, InvalidTriage> {
        let mut problems = Vec::new();
        check(status, resolution, note.as_deref(), &mut problems);
        if !problems.is_empty() {
            return Err(InvalidTriage { problems });
        }
        Ok(TriageChange {
            status,
            resolution,
            note: note.filter(|n| !n.is_empty()),
        })
    }

    /// A `PATCH /api/v1/alerts/{id}` body: a JSON object `{"status", "resolution"?, "note"?}`
    /// (`null` is the same as absent; any other field is refused), naming every problem.
    pub fn from_json(body: &[u8]) -> Result<TriageChange, InvalidTriage> {
        let refuse = |problem: String| InvalidTriage {
            problems: vec![problem],
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|e| refuse(format!("body: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(refuse(
                "body: expected a JSON object {\"status\": \"open\" | \"acknowledged\" | \"resolved\", \"resolution\"?, \"note\"?}".to_owned(),
            ));
        };
        let mut problems = Vec::new();
        let given = |name: &str| fields.get(name).filter(|v| !v.is_null());
        let text = |name: &str, problems: &mut Vec<String>| match given(name)? {
            Value::String(text) => Some(text.clone()),
            other => {
                problems.push(format!("{name} must be a string, not {other}"));
                None
            }
        };
        let status: Option<TriageStatus> = match text("status", &mut problems) {
            Some(text) => text.parse().map_err(|p| problems.push(p)).ok(),
            None if given("status").is_none() => {
                problems.push("status is required: open, acknowledged or resolved".to_owned());
                None
            }
            None => None,
        };
        let resolution: Option<Resolution> = text("resolution", &mut problems)
            .and_then(|text| text.parse().map_err(|p| problems.push(p)).ok());
        let note = text("note", &mut problems);
        for name in fields.keys() {
            if !["status", "resolution", "note"].contains(&name.as_str()) {
                problems.push(format!(
                    "unknown field {name:?}: the fields are status, resolution and note"
                ));
            }
        }
        // Status and resolution are checked together only when both were readable.
        match status {
            Some(status) if resolution.is_some() || given("resolution").is_none() => {
                check(status, resolution, note.as_deref(), &mut problems)
            }
            _ => check_note(note.as_deref(), &mut problems),
        }
        match status {
            Some(status) if problems.is_empty() => Ok(TriageChange {
                status,
                resolution,
                note: note.filter(|n| !n.is_empty()),
            }),
            _ => Err(InvalidTriage { problems }),
        }
    }

    pub fn status(&self) -> TriageStatus {
        self.status
    }

    pub fn resolution(&self) -> Option<Resolution> {
        self.resolution
    }

    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The triage this change becomes, made by `actor` at `at` (RFC 3339).
    pub fn made_by(self, actor: &str, at: String) -> Triage {
        Triage {
            status: self.status,
            resolution: self.resolution,
            note: self.note,
            triaged_by: Some(actor.to_owned()),
            triaged_at: Some(at),
        }
    }
}

fn check(
    status: TriageStatus,
    resolution: Option<Resolution>,
    note: Option<&str>,
    problems: &mut Vec<String>,
) {
    match (status, resolution) {
        (TriageStatus::Resolved, None) => problems
            .push("status resolved needs a resolution: fraud, legitimate or duplicate".to_owned()),
        (TriageStatus::Open | TriageStatus::Acknowledged, Some(resolution)) => {
            problems.push(format!(
                "resolution {resolution:?} is only for status resolved, and status is {status}",
                resolution = resolution.as_str()
            ))
        }
        _ => {}
    }
    check_note(note, problems);
}

fn check_note(note: Option<&str>, problems: &mut Vec<String>) {
    if let Some(note) = note {
        let chars = note.chars().count();
        if chars > NOTE_MAX_CHARS {
            problems.push(format!(
                "note is {chars} characters long: at most {NOTE_MAX_CHARS}"
            ));
        }
    }
}

/// An alert's triage: its status, and once someone triaged it, the resolution (resolved only),
/// the note, who (`triaged_by`: the token's name) and when (`triaged_at`, RFC 3339 UTC).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Triage {
    pub status: TriageStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triaged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triaged_at: Option<String>,
}

impl Triage {
    /// The triage of an alert nobody has triaged: open.
    pub fn open() -> Triage {
        Triage::default()
    }

    /// One line for the audit trail's before/after: `open`, `acknowledged: <note>`,
    /// `resolved (fraud): <note>`.
    pub fn summary(&self) -> String {
        let mut text = self.status.as_str().to_owned();
        if let Some(resolution) = self.resolution {
            text.push_str(&format!(" ({resolution})"));
        }
        if let Some(note) = &self.note {
            text.push_str(": ");
            text.push_str(note);
        }
        text
    }
}

/// One record of the triage topic: keyed by the alert id, its value the alert's whole triage
/// (the latest record of a key is in force, so the topic is compacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageRecord {
    /// `"alert-<partition>-<offset>"`, also the record's key.
    pub alert_id: String,
    #[serde(flatten)]
    pub triage: Triage,
}

/// Why a triage topic record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriageRecordError {
    #[error("triage record key {0:?} is not an alert id (\"alert-<partition>-<offset>\")")]
    Key(String),
    #[error("triage record: {0}")]
    Json(String),
    #[error("triage record for {alert_id} under the key {key}")]
    Mismatch { key: String, alert_id: String },
    #[error("triage record for {alert_id}: {problem}")]
    Invalid { alert_id: String, problem: String },
}

impl TriageRecord {
    pub fn new(alert: Coord, triage: Triage) -> TriageRecord {
        TriageRecord {
            alert_id: alert.alert_id(),
            triage,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a triage record serializes")
    }

    /// The alert a record's key names.
    pub fn alert_of(key: &[u8]) -> Result<Coord, TriageRecordError> {
        let text = String::from_utf8_lossy(key);
        Coord::parse_alert_id(&text).ok_or_else(|| TriageRecordError::Key(text.into_owned()))
    }

    /// Reads a record of the triage topic: its key names the alert, its value is the triage
    /// (checked as a change would be).
    pub fn from_record(key: &[u8], payload: &[u8]) -> Result<(Coord, Triage), TriageRecordError> {
        let alert = TriageRecord::alert_of(key)?;
        let record: TriageRecord =
            serde_json::from_slice(payload).map_err(|e| TriageRecordError::Json(e.to_string()))?;
        if record.alert_id != alert.alert_id() {
            return Err(TriageRecordError::Mismatch {
                key: alert.alert_id(),
                alert_id: record.alert_id,
            });
        }
        let triage = record.triage;
        TriageChange::new(triage.status, triage.resolution, triage.note.clone()).map_err(|e| {
            TriageRecordError::Invalid {
                alert_id: record.alert_id,
                problem: e.problems.join("; "),
            }
        })?;
        Ok((alert, triage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> Vec<String> {
        TriageChange::from_json(body.as_bytes())
            .expect_err(body)
            .problems
    }

    #[test]
    fn a_resolution_goes_with_resolved_and_only_with_it() {
        let change = TriageChange::from_json(
            br#"{"status": "resolved", "resolution": "fraud", "note": "card stolen"}"#,
        )
        .unwrap();
        assert_eq!(change.status(), TriageStatus::Resolved);
        assert_eq!(change.resolution(), Some(Resolution::Fraud));
        assert_eq!(change.note(), Some("card stolen"));
        assert_eq!(
            refused(r#"{"status": "resolved"}"#),
            ["status resolved needs a resolution: fraud, legitimate or duplicate"]
        );
        assert_eq!(
            refused(r#"{"status": "acknowledged", "resolution": "fraud"}"#),
            ["resolution \"fraud\" is only for status resolved, and status is acknowledged"]
        );
        let acknowledged =
            TriageChange::from_json(br#"{"status": "acknowledged", "resolution": null}"#).unwrap();
        assert_eq!(acknowledged.resolution(), None);
    }

    #[test]
    fn every_problem_of_a_body_is_named() {
        assert_eq!(
            refused(r#"{"owner": "ana", "resolution": "maybe", "status": "closed"}"#),
            [
                "status \"closed\" is unknown: expected open, acknowledged or resolved",
                "resolution \"maybe\" is unknown: expected fraud, legitimate or duplicate",
                "unknown field \"owner\": the fields are status, resolution and note",
            ]
        );
        assert_eq!(
            refused(r#"{"note": 5}"#),
            [
                "status is required: open, acknowledged or resolved",
                "note must be a string, not 5"
            ]
        );
        let long = "x".repeat(NOTE_MAX_CHARS + 1);
        assert_eq!(
            refused(&format!(r#"{{"status": "open", "note": "{long}"}}"#)),
            ["note is 1001 characters long: at most 1000"]
        );
        assert!(refused("[1]")[0].starts_with("body: expected a JSON object"));
        assert!(refused("{")[0].starts_with("body: "));
    }

    #[test]
    fn a_note_is_counted_in_characters_and_an_empty_one_is_none() {
        let accents = "é".repeat(NOTE_MAX_CHARS);
        let body = serde_json::json!({"status": "acknowledged", "note": accents});
        let change = TriageChange::from_json(body.to_string().as_bytes()).unwrap();
        assert_eq!(change.note().map(|n| n.chars().count()), Some(1000));
        let empty = TriageChange::from_json(br#"{"status": "open", "note": ""}"#).unwrap();
        assert_eq!(empty.note(), None);
    }

    #[test]
    fn a_record_round_trips_under_its_alert_key_and_is_checked_when_read() {
        let triage = TriageChange::new(
            TriageStatus::Resolved,
            Some(Resolution::Legitimate),
            Some("salary".into()),
        )
        .unwrap()
        .made_by("ops", "2026-12-01T10:00:00.000Z".into());
        let record = TriageRecord::new(Coord::new(2, 41), triage.clone());
        let json: Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"alert_id": "alert-2-41", "status": "resolved",
                "resolution": "legitimate", "note": "salary", "triaged_by": "ops",
                "triaged_at": "2026-12-01T10:00:00.000Z"})
        );
        assert_eq!(
            TriageRecord::from_record(b"alert-2-41", &record.to_json()),
            Ok((Coord::new(2, 41), triage))
        );
        assert!(matches!(
            TriageRecord::from_record(b"alert-2-42", &record.to_json()),
            Err(TriageRecordError::Mismatch { .. })
        ));
        assert!(matches!(
            TriageRecord::from_record(b"2-41", &record.to_json()),
            Err(TriageRecordError::Key(_))
        ));
        let hand_made = br#"{"alert_id": "alert-2-41", "status": "resolved"}"#;
        assert!(matches!(
            TriageRecord::from_record(b"alert-2-41", hand_made),
            Err(TriageRecordError::Invalid { .. })
        ));
    }

    #[test]
    fn the_audit_summary_shows_status_resolution_and_note() {
        assert_eq!(Triage::open().summary(), "open");
        let resolved = TriageChange::new(
            TriageStatus::Resolved,
            Some(Resolution::Fraud),
            Some("card stolen".into()),
        )
        .unwrap()
        .made_by("ops", "t".into());
        assert_eq!(resolved.summary(), "resolved (fraud): card stolen");
    }
}
