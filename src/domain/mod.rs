//! The vocabulary every layer speaks, at the ground: wire bytes and the validated event they
//! decode into, a user's risk, the verdict on one input and its coordinates, the responses, and the
//! triage people give an alert.
//! Imports nothing above it.

pub mod event;
mod json;
pub mod partitioner;
pub mod response;
pub mod risk;
pub mod triage;
pub mod verdict;

pub use event::{decode, Amount, DecodeError, Event, Kind, UserId};
pub use response::{AlertRecord, LegacyResponse, Outcome, Rejection};
pub use risk::{Risk, UnknownRisk};
pub use triage::{
    InvalidTriage, Resolution, Triage, TriageChange, TriageRecord, TriageRecordError, TriageStatus,
};
pub use verdict::{AlertCodes, Answer, Coord, OutOfOrder, Verdict};
