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
    pub user_id: u64,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profiles {
    risks: FxHashMap<u64, Risk>,
}

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

    pub fn risk(&self, user_id: u64) -> Risk {
        self.risks.get(&user_id).copied().unwrap_or_default()
    }

    pub fn set(&mut self, user_id: u64, risk: Risk) {
        self.risks.insert(user_id, risk);
    }

    /// Forgets a user's profile (a tombstone on the profiles topic): back to medium.
    pub fn remove(&mut self, user_id: u64) {
        self.risks.remove(&user_id);
    }

    pub fn len(&self) -> usize {
        self.risks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.risks.is_empty()
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
            if UserId::new(parsed.user_id).is_none() {
                return Err(ProfilesError::Line {
                    line: i + 1,
                    reason: "user_id above 2^63-1".to_owned(),
                });
            }
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

    #[test]
    fn reads_profiles_and_defaults_to_medium() {
        let text = "{\"user_id\": 1, \"risk\": \"high\"}\n\n{\"user_id\": 2, \"risk\": \"low\"}\n{\"user_id\": 1, \"risk\": \"low\"}\n";
        let profiles = Profiles::from_lines(&Profiles::read_jsonl(text.as_bytes()).unwrap());
        assert_eq!(profiles.risk(1), Risk::Low);
        assert_eq!(profiles.risk(2), Risk::Low);
        assert_eq!(profiles.risk(3), Risk::Medium);
    }

    #[test]
    fn unknown_fields_in_a_profile_line_are_ignored() {
        let text = "{\"user_id\": 7, \"risk\": \"high\", \"note\": \"vip\"}\n";
        let profiles = Profiles::from_lines(&Profiles::read_jsonl(text.as_bytes()).unwrap());
        assert_eq!(profiles.risk(7), Risk::High);
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
