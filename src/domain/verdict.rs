//! What became of one input: the alert codes of an accepted event, an out-of-order rejection,
//! and the coordinates (partition, offset) every answer is named by.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::event::UserId;
use super::response::Rejection;
use super::risk::Risk;

/// The codes raised by one event, ascending (any number: a rule set has any number of rules;
/// no allocation without an alert).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertCodes {
    codes: Vec<u32>,
}

impl AlertCodes {
    /// Codes already in ascending order.
    pub fn from_sorted(codes: &[u32]) -> Self {
        debug_assert!(codes.windows(2).all(|w| w[0] < w[1]));
        AlertCodes {
            codes: codes.to_vec(),
        }
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.codes
    }

    pub fn is_alert(&self) -> bool {
        !self.codes.is_empty()
    }
}

/// An event older than the user's last accepted event: rejected, state unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("out of order: time {time} is before user's last accepted time {last_time}")]
pub struct OutOfOrder {
    pub time: u64,
    pub last_time: u64,
}

/// Where an input record sits: its partition and offset. Every answer is named after it: the
/// event id `"<partition>-<offset>"` and the alert id `"alert-<partition>-<offset>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Coord {
    pub partition: i32,
    pub offset: i64,
}

impl Coord {
    pub fn new(partition: i32, offset: i64) -> Coord {
        Coord { partition, offset }
    }

    /// `"<partition>-<offset>"`.
    pub fn event_id(self) -> String {
        self.to_string()
    }

    /// `"alert-<partition>-<offset>"`: deterministic, so a replay names an alert as before.
    pub fn alert_id(self) -> String {
        format!("alert-{self}")
    }

    /// Parses an event id, exactly as [`Coord::event_id`] writes it (no sign, no leading zeros).
    pub fn parse_event_id(text: &str) -> Option<Coord> {
        let (partition, offset) = text.split_once('-')?;
        let coord = Coord::new(partition.parse().ok()?, offset.parse().ok()?);
        (coord.partition >= 0 && coord.offset >= 0 && coord.event_id() == text).then_some(coord)
    }

    /// Parses an alert id, exactly as [`Coord::alert_id`] writes it.
    pub fn parse_alert_id(text: &str) -> Option<Coord> {
        Coord::parse_event_id(text.strip_prefix("alert-")?)
    }
}

impl fmt::Display for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.partition, self.offset)
    }
}

/// The alert codes and risk an event was answered with (remembered for a retry's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub codes: Vec<u32>,
    pub risk: Risk,
    /// The version of the rule set that answered (absent in state written before rule sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_version: Option<String>,
}

/// What became of one input record: the engine's decision, which every entry point (the
/// processor, a restore's replay, `evaluate`, the shim's test backend, the test oracles) turns
/// into its own output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Evaluated: the user's state took the event.
    Accepted {
        user_id: UserId,
        codes: AlertCodes,
        risk: Risk,
        /// Why each code fired (CONTRACT §10, the text of a JSON array), when asked for and
        /// alerting.
        evidence: Option<Box<str>>,
        /// The shadow set's codes for the same event, when a shadow set is evaluated.
        shadow: Option<AlertCodes>,
    },
    /// A retry: the user already had this event under its idempotency key. Not applied again;
    /// answered with the original's coordinates and answer (`None`: no longer known).
    Duplicate {
        user_id: UserId,
        of: Coord,
        answer: Option<Answer>,
    },
    /// Not evaluated; the state is unchanged.
    Rejected {
        user_id: Option<UserId>,
        rejection: Rejection,
        error: String,
    },
    /// Already part of the user's restored state (its snapshot record covers this offset), so
    /// not applied again. Only under at-least-once, and its response was already produced.
    AlreadyApplied { user_id: UserId },
}

impl Verdict {
    /// The user the record names, when it could be decoded.
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Verdict::Accepted { user_id, .. }
            | Verdict::Duplicate { user_id, .. }
            | Verdict::AlreadyApplied { user_id } => Some(*user_id),
            Verdict::Rejected { user_id, .. } => *user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_only_canonical_text_parses() {
        let coord = Coord::new(3, 41);
        assert_eq!(coord.event_id(), "3-41");
        assert_eq!(coord.alert_id(), "alert-3-41");
        assert_eq!(Coord::parse_event_id("3-41"), Some(coord));
        assert_eq!(Coord::parse_alert_id("alert-3-41"), Some(coord));
        for bad in [
            "",
            "3",
            "-3-41",
            "03-41",
            "3-041",
            "3-+41",
            "a-1",
            "3-41-",
            "alert-3-41",
        ] {
            assert_eq!(Coord::parse_event_id(bad), None, "{bad}");
        }
        assert_eq!(Coord::parse_alert_id("3-41"), None);
    }
}
