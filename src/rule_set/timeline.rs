//! Which rule set judges which event (CONTRACT §10, "Versioned, hot-swapped,
//! read-your-writes"): every published version with the time Kafka appended it, so an event is
//! judged by the set that was active when the event itself was appended. Pure: the processor
//! feeds it the rules topic's records and asks it per event, by the event record's timestamp.
//!
//! Deterministic on a replay (the same records, the same timestamps, the same answers), and
//! exact at a swap: an event produced after the publish was acknowledged was appended after the
//! set, so it gets the new set; one appended before it, the old set, however late it is judged.

use std::sync::Arc;

use super::RuleSet;

/// The versions of one key of the rules topic (the active set, or the shadow set), by time.
#[derive(Debug, Clone)]
pub struct Versions<T> {
    /// Before the first published version (the configured set).
    base: T,
    /// Published versions, ordered by timestamp (ms), then by offset.
    published: Vec<(i64, T)>,
}

impl<T> Versions<T> {
    pub fn new(base: T) -> Self {
        Versions {
            base,
            published: Vec::new(),
        }
    }

    /// A version appended at `timestamp` (records come in offset order; a timestamp older than
    /// the latest, from a broker clock stepping back, still sorts by time).
    pub fn publish(&mut self, timestamp: i64, version: T) {
        let at = self.published.partition_point(|(t, _)| *t <= timestamp);
        self.published.insert(at, (timestamp, version));
    }

    /// The version for an event appended at `timestamp`: the latest published at or before it.
    pub fn at(&self, timestamp: i64) -> &T {
        let after = self.published.partition_point(|(t, _)| *t <= timestamp);
        match after {
            0 => &self.base,
            n => &self.published[n - 1].1,
        }
    }

    /// The newest version.
    pub fn latest(&self) -> &T {
        self.published.last().map_or(&self.base, |(_, v)| v)
    }

    pub fn published(&self) -> usize {
        self.published.len()
    }
}

/// The active set's and the shadow set's versions.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub active: Versions<Arc<RuleSet>>,
    pub shadow: Versions<Option<Arc<RuleSet>>>,
}

impl Timeline {
    pub fn new(active: RuleSet, shadow: Option<RuleSet>) -> Self {
        Timeline {
            active: Versions::new(Arc::new(active)),
            shadow: Versions::new(shadow.map(Arc::new)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_gets_the_version_appended_at_or_before_it() {
        let mut v = Versions::new("base");
        v.publish(100, "one");
        v.publish(200, "two");
        assert_eq!(*v.at(99), "base");
        assert_eq!(*v.at(100), "one");
        assert_eq!(*v.at(199), "one");
        assert_eq!(*v.at(200), "two");
        assert_eq!(*v.at(i64::MAX), "two");
        assert_eq!(*v.latest(), "two");
        // Same millisecond: the later record (offset) wins.
        v.publish(200, "three");
        assert_eq!(*v.at(200), "three");
        // A clock stepping back still sorts by time.
        v.publish(150, "late");
        assert_eq!(*v.at(160), "late");
        assert_eq!(*v.at(250), "three");
        assert_eq!(v.published(), 4);
    }
}
