//! Wire types and the validated domain types they decode into.

pub mod event;
pub mod partitioner;
pub mod response;

pub use event::{decode, Amount, DecodeError, Event, Kind, UserId};
pub use response::{AlertRecord, LegacyResponse, Outcome, Rejection};
