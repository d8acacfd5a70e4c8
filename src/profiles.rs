//! Risk profiles: user id -> [`Risk`], from a JSONL file or the compacted profiles topic.

use std::io::BufRead;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::domain::Risk;
use crate::domain::UserId;

/// One line of a profiles file: `{"user_id": 1, "risk": "high"}`. Unknown fields are ignored,
/// as in events (so a profiles export with extra columns loads as is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileLine {
    pub user_id: UserId,
    pub risk: Risk,
}

/// The value of a profiles-topic record (key = user id): `{"risk": "high"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileValue {
    pub risk: Risk,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    #[error("profiles line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("reading profiles: {0}")]
    Io(#[from] std::io::Error),
    #[error("profiles file {path}: {error}")]
    File {
        path: String,
        error: Box<ProfilesError>,
    },
}

/// Known risk levels; users without one are [`Risk::Medium`].
///
/// Each level has the time it took effect: the profiles-topic record's timestamp (broker time,
/// LogAppendTime), or "always" for a level read from a file. [`Profiles::risk_at`] answers the
/// level in force at a moment, which is how the processor judges an event: by the level in force
/// when the event itself was appended (CONTRACT §4, read-your-writes, and the same answer on
/// any replay of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profiles {
    /// Each user's latest change: since when (ms), and the level (`None`: removed).
    latest: FxHashMap<UserId, (i64, Option<Risk>)>,
    /// The earlier changes of users whose level changed more than once, oldest first.
    earlier: FxHashMap<UserId, Vec<(i64, Option<Risk>)>>,
}

/// Where a user's level comes from (`GET /api/v1/users/{id}/risk`): the profiles record that
/// set it, or none (no profile: medium).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiskSource {
    pub risk: Risk,
    /// The user's latest profiles record (by time, as [`Profiles::risk`] takes it).
    pub record: Option<ProfileRecord>,
}

/// A record of the profiles topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileRecord {
    pub partition: i32,
    pub offset: i64,
    /// Broker time (ms), since when the level applies.
    pub timestamp: i64,
    /// A tombstone: the profile was removed (medium again).
    pub cleared: bool,
}

/// The time of a level that was always in force (read from a file, or a record without
/// timestamp).
pub const ALWAYS: i64 = i64::MIN;

impl Profiles {
    /// Reads a JSONL profiles file; an error names the file (and the line).
    pub fn read_file(path: impl AsRef<std::path::Path>) -> Result<Vec<ProfileLine>, ProfilesError> {
        let path = path.as_ref();
        let named = |error| ProfilesError::File {
            path: path.display().to_string(),
            error: Box::new(error),
        };
        let file = std::fs::File::open(path).map_err(|e| named(e.into()))?;
        Profiles::read_jsonl(std::io::BufReader::new(file)).map_err(named)
    }

    /// The user's level now (the latest change).
    pub fn risk(&self, user_id: UserId) -> Risk {
        self.latest
            .get(&user_id)
            .and_then(|(_, risk)| *risk)
            .unwrap_or_default()
    }

    /// The user's level in force at `time` (ms): the latest change at or before it.
    pub fn risk_at(&self, user_id: UserId, time: i64) -> Risk {
        let Some(&(since, risk)) = self.latest.get(&user_id) else {
            return Risk::default();
        };
        if since <= time {
            return risk.unwrap_or_default();
        }
        let Some(earlier) = self.earlier.get(&user_id) else {
            return Risk::default();
        };
        match earlier.partition_point(|(t, _)| *t <= time) {
            0 => Risk::default(),
            n => earlier[n - 1].1.unwrap_or_default(),
        }
    }

    /// Sets a user's level for all times (a profiles file).
    pub fn set(&mut self, user_id: UserId, risk: Risk) {
        self.earlier.remove(&user_id);
        self.latest.insert(user_id, (ALWAYS, Some(risk)));
    }

    /// A change of a user's level that took effect at `time` (ms; a profiles-topic record, whose
    /// tombstone is `None`: back to medium). Records come in offset order; a time older than the
    /// user's latest (a broker clock stepping back) still sorts by time.
    pub fn change_at(&mut self, user_id: UserId, time: i64, risk: Option<Risk>) {
        let Some(latest) = self.latest.get_mut(&user_id) else {
            if risk.is_some() {
                self.latest.insert(user_id, (time, risk));
            }
            return;
        };
        let earlier = self.earlier.entry(user_id).or_default();
        if time >= latest.0 {
            earlier.push(std::mem::replace(latest, (time, risk)));
        } else {
            let at = earlier.partition_point(|(t, _)| *t <= time);
            earlier.insert(at, (time, risk));
        }
    }

    /// How many users have a level now.
    pub fn len(&self) -> usize {
        self.latest
            .values()
            .filter(|(_, risk)| risk.is_some())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a JSONL profiles file; blank lines are skipped, a later line for a user wins.
    pub fn read_jsonl(reader: impl BufRead) -> Result<Vec<ProfileLine>, ProfilesError> {
        let mut lines = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: ProfileLine = serde_json::from_str(&line).map_err(|e| ProfilesError::Line {
                line: i + 1,
                reason: format!("expected {{\"user_id\": <integer>, \"risk\": \"low\"|\"medium\"|\"high\"}}: {e}"),
            })?;
            lines.push(parsed);
        }
        Ok(lines)
    }

    pub fn from_lines(lines: &[ProfileLine]) -> Self {
        let mut profiles = Profiles::default();
        for line in lines {
            profiles.set(line.user_id, line.risk);
        }
        profiles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: u64) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn reads_profiles_and_defaults_to_medium() {
        let text = "{\"user_id\": 1, \"risk\": \"high\"}\n\n{\"user_id\": 2, \"risk\": \"low\"}\n{\"user_id\": 1, \"risk\": \"low\"}\n";
        let profiles = Profiles::from_lines(&Profiles::read_jsonl(text.as_bytes()).unwrap());
        assert_eq!(profiles.risk(user(1)), Risk::Low);
        assert_eq!(profiles.risk(user(2)), Risk::Low);
        assert_eq!(profiles.risk(user(3)), Risk::Medium);
    }

    #[test]
    fn unknown_fields_in_a_profile_line_are_ignored() {
        let text = "{\"user_id\": 7, \"risk\": \"high\", \"note\": \"vip\"}\n";
        let profiles = Profiles::from_lines(&Profiles::read_jsonl(text.as_bytes()).unwrap());
        assert_eq!(profiles.risk(user(7)), Risk::High);
    }

    #[test]
    fn an_event_gets_the_level_in_force_when_it_was_appended() {
        let mut p = Profiles::default();
        p.change_at(user(1), 100, Some(Risk::High));
        p.change_at(user(1), 200, Some(Risk::Low));
        p.change_at(user(1), 300, None);
        assert_eq!(p.risk_at(user(1), 99), Risk::Medium);
        assert_eq!(p.risk_at(user(1), 100), Risk::High);
        assert_eq!(p.risk_at(user(1), 199), Risk::High);
        assert_eq!(p.risk_at(user(1), 200), Risk::Low);
        assert_eq!(p.risk_at(user(1), 300), Risk::Medium);
        assert_eq!(p.risk(user(1)), Risk::Medium);
        assert_eq!(p.len(), 0);
        // A clock stepping back still sorts by time; the latest record by time is "now".
        p.change_at(user(1), 150, Some(Risk::Low));
        assert_eq!(p.risk_at(user(1), 160), Risk::Low);
        assert_eq!(p.risk_at(user(1), 120), Risk::High);
        assert_eq!(p.risk(user(1)), Risk::Medium);
        // A file's level holds at every time.
        p.set(user(2), Risk::High);
        assert_eq!(p.risk_at(user(2), i64::MIN), Risk::High);
        assert_eq!(p.len(), 1);
        p.change_at(user(2), 500, Some(Risk::Low));
        assert_eq!(p.risk_at(user(2), 499), Risk::High);
        assert_eq!(p.risk_at(user(2), 500), Risk::Low);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_bad_profile_line_is_named() {
        let err = Profiles::read_jsonl(
            "{\"user_id\": 1, \"risk\": \"high\"}\n{\"user_id\": 2, \"risk\": \"extreme\"}\n"
                .as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("profiles line 2:"), "{err}");
    }
}
