//! Retries never double-count (CONTRACT §7): per user, the `Idempotency-Key`s of that user's
//! accepted events, with what each event was and what it was answered.
//!
//! Pure and deterministic: what is remembered and forgotten depends only on the events (their
//! `time`, in event time, never the clock), so a replay after a crash decides exactly as the
//! first run did. The memory is part of the partition's snapshotted state.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::event::{Event, Kind};
pub use crate::domain::Answer;
use crate::rules::TimeUnit;

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// The Kafka header that carries a key on an events record.
pub const HEADER: &str = "idempotency-key";

/// Checks a key: 1 to 128 visible ASCII characters.
pub fn validate_key(key: &[u8]) -> Result<&str, String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "idempotency key must be 1 to {MAX_KEY_BYTES} characters, got {}",
            key.len()
        ));
    }
    if !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err("idempotency key must be visible ASCII characters only".to_owned());
    }
    Ok(std::str::from_utf8(key).expect("ASCII is UTF-8"))
}

/// How much to remember: keys of events within `window_ticks` (event time) of the user's latest
/// event, at most `max_keys` a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupLimits {
    pub window_ticks: u64,
    pub max_keys: usize,
}

impl DedupLimits {
    pub fn new(window: Duration, max_keys: usize, unit: TimeUnit) -> Self {
        let ticks = match unit {
            TimeUnit::Seconds => window.as_secs(),
            TimeUnit::Milliseconds => u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        };
        DedupLimits {
            window_ticks: ticks,
            max_keys,
        }
    }
}

impl Default for DedupLimits {
    fn default() -> Self {
        DedupLimits::new(Duration::from_secs(24 * 3600), 64, TimeUnit::Seconds)
    }
}

/// One remembered key: the event it was first used with, and that event's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub key: String,
    pub time: u64,
    pub kind: Kind,
    /// The amount in 10^-8 units, as a decimal string (exact, JSON-safe).
    pub amount: String,
    pub partition: i32,
    pub offset: i64,
    /// What the original was answered. `None` only briefly: a restore's replay remembers the key
    /// without the answer (the risk it was answered with is not in the input) and fills it in
    /// from the original's response record.
    pub answer: Option<Answer>,
}

impl Remembered {
    fn same_event(&self, event: &Event) -> bool {
        self.time == event.time
            && self.kind == event.kind
            && self.amount == event.amount.units().to_string()
    }
}

/// What a key says about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen<'a> {
    /// Not remembered: evaluate the event.
    New,
    /// The same event again: answer with the original.
    Duplicate(&'a Remembered),
    /// The key was used for a different event.
    Conflict(&'a Remembered),
}

/// A user's remembered keys, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Keys(VecDeque<Remembered>);

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The remembered keys, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Remembered> {
        self.0.iter()
    }

    /// Sets the answer of the key remembered for the event at `offset`.
    pub fn fill_answer(&mut self, offset: i64, answer: &Answer) {
        for r in self.0.iter_mut().filter(|r| r.offset == offset) {
            r.answer = Some(answer.clone());
        }
    }

    /// What `key` says about `event`, for a user whose latest accepted event is at `latest`.
    pub fn check(
        &self,
        key: &str,
        event: &Event,
        latest: Option<u64>,
        limits: &DedupLimits,
    ) -> Seen<'_> {
        let Some(found) = self.0.iter().rev().find(|r| r.key == key) else {
            return Seen::New;
        };
        if !within(found.time, latest, limits) {
            return Seen::New;
        }
        if found.same_event(event) {
            Seen::Duplicate(found)
        } else {
            Seen::Conflict(found)
        }
    }

    /// Remembers the key of an event just accepted (now the user's latest), forgetting keys
    /// that left the window and the oldest beyond the bound.
    pub fn remember(&mut self, entry: Remembered, limits: &DedupLimits) {
        let latest = Some(entry.time);
        self.0.retain(|r| r.key != entry.key);
        self.0.push_back(entry);
        while self
            .0
            .front()
            .is_some_and(|r| !within(r.time, latest, limits))
        {
            self.0.pop_front();
        }
        while self.0.len() > limits.max_keys {
            self.0.pop_front();
        }
    }
}

fn within(time: u64, latest: Option<u64>, limits: &DedupLimits) -> bool {
    latest.is_none_or(|latest| latest.saturating_sub(time) <= limits.window_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::decode;

    fn event(amount: &str, time: u64) -> Event {
        decode(
            format!(r#"{{"type": "deposit", "amount": "{amount}", "user_id": 1, "time": {time}}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn entry(key: &str, e: &Event, offset: i64) -> Remembered {
        Remembered {
            key: key.into(),
            time: e.time,
            kind: e.kind,
            amount: e.amount.units().to_string(),
            partition: 0,
            offset,
            answer: Some(Answer {
                codes: vec![],
                risk: crate::domain::Risk::Medium,
                rules_version: None,
            }),
        }
    }

    #[test]
    fn keys_are_checked_by_the_event_they_were_used_with() {
        let limits = DedupLimits::new(Duration::from_secs(100), 2, TimeUnit::Seconds);
        let mut keys = Keys::default();
        let first = event("10", 5);
        keys.remember(entry("a", &first, 0), &limits);
        assert!(
            matches!(keys.check("a", &first, Some(5), &limits), Seen::Duplicate(r) if r.offset == 0)
        );
        // "10.0" is the same amount.
        assert!(matches!(
            keys.check("a", &event("10.0", 5), Some(5), &limits),
            Seen::Duplicate(_)
        ));
        assert!(matches!(
            keys.check("a", &event("11", 5), Some(5), &limits),
            Seen::Conflict(_)
        ));
        assert_eq!(keys.check("b", &first, Some(5), &limits), Seen::New);
        // Out of the window of the latest event: forgotten.
        assert_eq!(keys.check("a", &first, Some(106), &limits), Seen::New);
        // At most two a user, oldest forgotten first.
        keys.remember(entry("b", &event("1", 6), 1), &limits);
        keys.remember(entry("c", &event("1", 7), 2), &limits);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check("a", &first, Some(7), &limits), Seen::New);
        // An event past the window drops the old keys when it is remembered.
        keys.remember(entry("d", &event("1", 500), 3), &limits);
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn keys_are_one_to_128_visible_ascii_characters() {
        assert!(validate_key(b"order-42").is_ok());
        assert!(validate_key(&[b'x'; 128]).is_ok());
        assert!(validate_key(&[b'x'; 129]).is_err());
        assert!(validate_key(b"").is_err());
        assert!(validate_key(b"has space").is_err());
        assert!(validate_key("é".as_bytes()).is_err());
    }

    #[test]
    fn windows_follow_the_time_unit() {
        let ms = DedupLimits::new(Duration::from_secs(2), 64, TimeUnit::Milliseconds);
        assert_eq!(ms.window_ticks, 2000);
        assert_eq!(DedupLimits::default().window_ticks, 86_400);
    }
}
