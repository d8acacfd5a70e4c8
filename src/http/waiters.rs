//! The pending waiters of `POST` requests, fed live by one consumer of the alerts topic.
//!
//! [`Hub::ingest`] is called for every record the alerts follower reads (from the end of the
//! topic at the shim's start: the read model behind the GET endpoints is the database of
//! [`crate::store`]). It completes the waiters of `POST` requests for that `event_id` and keeps the
//! newest [`RECENT`] responses, so that a response that arrives before its request starts waiting
//! is not missed. Memory is bounded whatever the topic's size. No lock is ever held across an
//! `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::domain::response::AlertRecord;
use crate::domain::Coord;
pub use crate::store::{AlertQuery, OrderKey, Page, Stored};

/// Responses kept for requests that start waiting after their response arrived.
pub const RECENT: usize = 16_384;

/// The newest responses by input coordinates, at most `capacity`.
#[derive(Debug)]
struct Recent {
    capacity: usize,
    by_event: HashMap<Coord, Arc<Stored>>,
    order: VecDeque<Coord>,
}

impl Recent {
    fn insert(&mut self, stored: Arc<Stored>) {
        let key = stored.coord();
        if self.by_event.contains_key(&key) {
            return;
        }
        self.by_event.insert(key, stored);
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_event.remove(&old);
            }
        }
    }
}

/// The pending waiters, the recent responses and the follower's progress, shared by the alerts
/// follower (writer) and the handlers (readers).
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<HubInner>,
    connected: AtomicBool,
    ingested: AtomicU64,
}

#[derive(Debug)]
struct HubInner {
    recent: Recent,
    waiters: HashMap<Coord, Vec<oneshot::Sender<Arc<Stored>>>>,
}

/// What [`Hub::wait_for`] found.
#[derive(Debug)]
pub enum Wait {
    /// The response is already known.
    Ready(Arc<Stored>),
    /// Not yet: the receiver completes when it arrives.
    Pending(oneshot::Receiver<Arc<Stored>>),
}

impl Hub {
    /// A hub that keeps the newest `recent` responses (see [`RECENT`]).
    pub fn new(recent: usize) -> Self {
        Hub {
            inner: Mutex::new(HubInner {
                recent: Recent {
                    capacity: recent.max(1),
                    by_event: HashMap::new(),
                    order: VecDeque::new(),
                },
                waiters: HashMap::new(),
            }),
            connected: AtomicBool::new(false),
            ingested: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one record of the alerts topic (`timestamp` is that record's, in ms).
    pub fn ingest(&self, record: AlertRecord, timestamp: i64) {
        let Coord { partition, offset } = record.event_id;
        let stored = Arc::new(Stored {
            order: OrderKey {
                timestamp,
                partition,
                offset,
            },
            record,
        });
        let waiters = {
            let mut inner = self.lock();
            inner.recent.insert(Arc::clone(&stored));
            inner.waiters.remove(&Coord::new(partition, offset))
        };
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(Arc::clone(&stored));
        }
        self.ingested.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers interest in the response to `key`, or returns it when already known. Checking and
    /// registering happen under one lock, so a response that arrives meanwhile is never missed.
    pub fn wait_for(&self, key: Coord) -> Wait {
        let mut inner = self.lock();
        if let Some(stored) = inner.recent.by_event.get(&key).cloned() {
            return Wait::Ready(stored);
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.entry(key).or_default().push(tx);
        Wait::Pending(rx)
    }

    /// Drops the waiters of `key` whose requests gave up.
    pub fn forget_closed(&self, key: Coord) {
        let mut inner = self.lock();
        if let Some(list) = inner.waiters.get_mut(&key) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                inner.waiters.remove(&key);
            }
        }
    }

    pub fn pending(&self) -> usize {
        self.lock().waiters.values().map(Vec::len).sum()
    }

    /// A recent response, when still kept.
    pub fn recent(&self, key: Coord) -> Option<Arc<Stored>> {
        self.lock().recent.by_event.get(&key).cloned()
    }

    /// Records taken since start (duplicates and dropped ones included).
    pub fn ingested(&self) -> u64 {
        self.ingested.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The follower has found and assigned the alerts topic.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::response::Outcome;
    use crate::domain::{Risk, UserId};

    fn record(partition: i32, offset: i64, user_id: u64, codes: &[u32]) -> AlertRecord {
        AlertRecord {
            event_id: Coord::new(partition, offset),
            duplicate_of: None,
            user_id: UserId::new(user_id),
            outcome: Outcome::Accepted {
                alert_codes: codes.to_vec(),
                alert_id: (!codes.is_empty()).then(|| format!("alert-{partition}-{offset}")),
                risk: Risk::Medium,
            },
            rules_version: None,
            evidence: None,
            event: None,
            event_text: None,
        }
    }

    #[test]
    fn a_waiter_registered_before_or_after_the_response_gets_it() {
        let hub = Hub::new(10);
        let Wait::Pending(mut rx) = hub.wait_for(Coord::new(0, 1)) else {
            panic!("nothing arrived yet");
        };
        assert!(rx.try_recv().is_err());
        hub.ingest(record(0, 1, 5, &[]), 1);
        assert_eq!(rx.try_recv().unwrap().record.event_id, Coord::new(0, 1));
        assert!(matches!(hub.wait_for(Coord::new(0, 1)), Wait::Ready(_)));
        assert_eq!(hub.pending(), 0);
    }

    #[test]
    fn abandoned_waiters_are_forgotten() {
        let hub = Hub::new(10);
        let Wait::Pending(rx) = hub.wait_for(Coord::new(2, 9)) else {
            panic!("nothing arrived yet");
        };
        drop(rx);
        hub.forget_closed(Coord::new(2, 9));
        assert_eq!(hub.pending(), 0);
    }

    #[test]
    fn keeps_only_the_newest_responses() {
        let hub = Hub::new(3);
        for i in 0..5 {
            hub.ingest(record(0, i, 7, &[30]), i);
        }
        assert!(hub.recent(Coord::new(0, 1)).is_none());
        assert!(hub.recent(Coord::new(0, 2)).is_some());
        assert!(hub.recent(Coord::new(0, 4)).is_some());
        assert_eq!(hub.ingested(), 5);
    }
}
