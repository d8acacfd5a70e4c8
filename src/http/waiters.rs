//! The pending waiters of `POST` requests, fed live by one consumer of the alerts topic.
//!
//! [`Hub::ingest`] is called for every record the alerts follower reads (from the end of the
//! topic at the shim's start: the read model behind the GET endpoints is the database of
//! [`crate::store`]). It completes the waiters of `POST` requests for that `event_id` and keeps the
//! newest [`RECENT`] responses, so that a response that arrives before its request starts waiting
//! is not missed. Memory is bounded whatever the topic's size. No lock is ever held across an
//! `.await`.
//!
//! It also feeds the live alert feed ([`super::stream`]) while any feed is open: every new
//! listed alert goes out on a broadcast channel of [`LIVE`] places ([`Hub::subscribe`]),
//! serialized once for every feed, with what the hub knows of how far every alerts partition has
//! come ([`Live::merged`]; also on its own, at most every [`FRONTIER_TICK`], when responses
//! without an alert move it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot};

use crate::domain::response::AlertRecord;
use crate::domain::Coord;
pub use crate::store::{AlertQuery, OrderKey, Page, Stored};

/// Responses kept for requests that start waiting after their response arrived.
pub const RECENT: usize = 16_384;

/// Places of the live alerts broadcast: how far a stream's own task may fall behind the
/// follower before it is told it overflowed (it takes them at once into its own bounded buffer,
/// so this is only reached when the process is starved).
pub const LIVE: usize = 8_192;

/// At most one frontier-only message per this long on the live broadcast (responses without an
/// alert move the frontier too, but are not worth waking every stream for each).
const FRONTIER_TICK: Duration = Duration::from_millis(10);

/// One message of the live broadcast: a new alert, or only news of the frontier.
#[derive(Debug, Clone)]
pub struct Live {
    /// A new listed alert, with its JSON as the list shows it (serialized once, for every feed).
    pub alert: Option<(Arc<Stored>, Arc<str>)>,
    /// When every alerts partition has delivered something: the least of their latest
    /// positions. As the records of one partition arrive in increasing position (see
    /// [`super::stream`]), every record at or before it has already arrived.
    pub merged: Option<OrderKey>,
    /// When the hub took it (ms since the epoch): a feed that is behind on the channel knows
    /// what had arrived by then, not by its own now.
    pub at_ms: i64,
}

/// What [`Hub::subscribe`] hands a new stream, taken under one lock with the subscription, so
/// that every alert is either in `recent` or comes through `live`, never neither.
pub struct Subscription {
    pub live: broadcast::Receiver<Live>,
    /// The kept recent alerts after the given position that pass the filter, in order.
    pub recent: Vec<Arc<Stored>>,
    /// [`Live::merged`] at the time of subscribing.
    pub merged: Option<OrderKey>,
}

/// The newest responses by input coordinates, at most `capacity`.
#[derive(Debug)]
struct Recent {
    capacity: usize,
    by_event: HashMap<Coord, Arc<Stored>>,
    order: VecDeque<Coord>,
}

impl Recent {
    /// Keeps `stored`; false when a record for its coordinates is already kept.
    fn insert(&mut self, stored: Arc<Stored>) -> bool {
        let key = stored.coord();
        if self.by_event.contains_key(&key) {
            return false;
        }
        self.by_event.insert(key, stored);
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.by_event.remove(&old);
            }
        }
        true
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
    live: broadcast::Sender<Live>,
    /// The alerts partitions the follower reads (empty until it is assigned).
    partitions: Vec<i32>,
    /// The latest position seen in each partition.
    latest: BTreeMap<i32, OrderKey>,
    /// The last [`Live::merged`] sent, and when.
    sent: (Option<OrderKey>, Instant),
}

impl HubInner {
    /// The least latest position over every partition, once each has delivered something.
    fn merged(&self) -> Option<OrderKey> {
        if self.partitions.is_empty() {
            return None;
        }
        self.partitions
            .iter()
            .map(|p| self.latest.get(p).copied())
            .min()
            .flatten()
    }
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
                live: broadcast::channel(LIVE).0,
                partitions: Vec::new(),
                latest: BTreeMap::new(),
                sent: (None, Instant::now()),
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
            let new = inner.recent.insert(Arc::clone(&stored));
            let latest = inner.latest.entry(partition).or_insert(stored.order);
            *latest = (*latest).max(stored.order);
            // Sent under the lock, so that a subscription sees each alert exactly once: in its
            // snapshot of the recent ones, or on the channel. (No receiver: nothing to do.)
            if inner.live.receiver_count() > 0 {
                let merged = inner.merged();
                let alert = (new && stored.is_listed_alert()).then(|| {
                    // An alert arrives open: the list shows its triage now, the feed as it came.
                    let view = super::api::EventView::processed(&stored.record)
                        .with_triage(crate::domain::Triage::open());
                    let json = serde_json::to_string(&view).unwrap_or_default();
                    (Arc::clone(&stored), Arc::from(json))
                });
                let news = merged > inner.sent.0 && inner.sent.1.elapsed() >= FRONTIER_TICK;
                if alert.is_some() || news {
                    let at_ms = super::stream::now_ms();
                    let _ = inner.live.send(Live {
                        alert,
                        merged,
                        at_ms,
                    });
                    inner.sent = (merged, Instant::now());
                }
            }
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

    /// The alerts partitions the follower reads: [`Live::merged`] waits for each of them.
    pub fn set_partitions(&self, partitions: &[i32]) {
        self.lock().partitions = partitions.to_vec();
    }

    /// Subscribes to the live alerts and, under the same lock, takes the kept recent alerts
    /// positioned after `after` (all when `None`) that `keep` accepts.
    pub fn subscribe(
        &self,
        after: Option<OrderKey>,
        keep: impl Fn(&Stored) -> bool,
    ) -> Subscription {
        let inner = self.lock();
        let live = inner.live.subscribe();
        let mut recent: Vec<Arc<Stored>> = inner
            .recent
            .by_event
            .values()
            .filter(|s| after.is_none_or(|after| s.order > after))
            .filter(|s| s.is_listed_alert() && keep(s))
            .cloned()
            .collect();
        let merged = inner.merged();
        drop(inner);
        recent.sort_by_key(|s| s.order);
        Subscription {
            live,
            recent,
            merged,
        }
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
