//! The shim's read model and its pending waiters, fed by one consumer of the alerts topic.
//!
//! [`Hub::ingest`] is called for every record of the alerts topic, in each partition's order. It
//! stores the record in a bounded [`ReadModel`] and completes the waiters of `POST` requests for
//! that `event_id`. Handlers read through short critical sections; no lock is ever held across
//! an `.await`.
//!
//! What is kept (the bounds are `http.read_model_max_records` and
//! `http.read_model_events_per_user`):
//! - the newest `read_model_max_records` response records, ordered by [`OrderKey`] (the alerts
//!   record's timestamp, then the input partition and offset). Past the bound the oldest record is
//!   dropped from every index; `GET /api/v1/events/{id}` then falls back to Kafka, while
//!   `GET /api/v1/alerts` and `GET /api/v1/users/{id}/events` no longer list it;
//! - per user, the newest `read_model_events_per_user` of those records;
//! - an index of the records that raised an alert, for `GET /api/v1/alerts`.
//!
//! A repeated response for the same `event_id` (at-least-once redelivery: byte-identical) keeps
//! the first copy.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::domain::response::{AlertRecord, Outcome};
use crate::domain::Coord;

/// The order of the read model: the alerts record's timestamp (ms), then the input coordinates.
/// Stable across shim instances and restarts, so cursors are too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub timestamp: i64,
    pub partition: i32,
    pub offset: i64,
}

impl OrderKey {
    /// The opaque cursor text of this position.
    pub fn cursor(&self) -> String {
        format!(
            "{:x}.{:x}.{:x}",
            self.timestamp, self.partition, self.offset
        )
    }

    /// Parses [`OrderKey::cursor`] text.
    pub fn from_cursor(text: &str) -> Option<OrderKey> {
        let mut parts = text.split('.');
        let timestamp = i64::from_str_radix(parts.next()?, 16).ok()?;
        let partition = i32::from_str_radix(parts.next()?, 16).ok()?;
        let offset = i64::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() || partition < 0 || offset < 0 {
            return None;
        }
        Some(OrderKey {
            timestamp,
            partition,
            offset,
        })
    }
}

/// One response record as the read model keeps it.
#[derive(Debug)]
pub struct Stored {
    pub order: OrderKey,
    pub record: AlertRecord,
}

impl Stored {
    pub fn coord(&self) -> Coord {
        Coord::new(self.order.partition, self.order.offset)
    }

    pub fn alert_codes(&self) -> &[u32] {
        match &self.record.outcome {
            Outcome::Accepted { alert_codes, .. } => alert_codes,
            Outcome::Rejected { .. } => &[],
        }
    }
}

/// The filters of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertQuery {
    pub user_id: Option<u64>,
    pub code: Option<u32>,
    /// Only alerts strictly older than this position.
    pub before: Option<OrderKey>,
    pub limit: usize,
}

/// A page of results, newest first; `next` is set when there may be more.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Stored>>,
    pub next: Option<OrderKey>,
}

/// The bounded indexes behind the GET endpoints. Pure data: no locks, no I/O.
#[derive(Debug)]
pub struct ReadModel {
    max_records: usize,
    events_per_user: usize,
    records: BTreeMap<OrderKey, Arc<Stored>>,
    by_event: HashMap<Coord, OrderKey>,
    alerts: BTreeSet<OrderKey>,
    by_user: HashMap<u64, VecDeque<OrderKey>>,
}

impl ReadModel {
    pub fn new(max_records: usize, events_per_user: usize) -> Self {
        ReadModel {
            max_records: max_records.max(1),
            events_per_user,
            records: BTreeMap::new(),
            by_event: HashMap::new(),
            alerts: BTreeSet::new(),
            by_user: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Stores a record; returns false when it was not kept (a duplicate, or older than everything
    /// kept while full).
    pub fn insert(&mut self, stored: Arc<Stored>) -> bool {
        let order = stored.order;
        let key = stored.coord();
        if self.by_event.contains_key(&key) {
            return false;
        }
        if self.records.len() >= self.max_records {
            match self.records.keys().next() {
                Some(oldest) if order < *oldest => return false,
                _ => {}
            }
        }
        if stored.record.alert_id().is_some() {
            self.alerts.insert(order);
        }
        if let Some(user_id) = stored.record.user_id {
            if self.events_per_user > 0 {
                let list = self.by_user.entry(user_id).or_default();
                let at = list.partition_point(|k| *k < order);
                list.insert(at, order);
                while list.len() > self.events_per_user {
                    list.pop_front();
                }
            }
        }
        self.by_event.insert(key, order);
        self.records.insert(order, stored);
        while self.records.len() > self.max_records {
            self.evict_oldest();
        }
        true
    }

    fn evict_oldest(&mut self) {
        let Some((order, stored)) = self.records.pop_first() else {
            return;
        };
        self.by_event.remove(&stored.coord());
        self.alerts.remove(&order);
        if let Some(user_id) = stored.record.user_id {
            if let Some(list) = self.by_user.get_mut(&user_id) {
                list.retain(|k| *k != order);
                if list.is_empty() {
                    self.by_user.remove(&user_id);
                }
            }
        }
    }

    /// The response to the event at these input coordinates.
    pub fn event(&self, key: Coord) -> Option<Arc<Stored>> {
        let order = self.by_event.get(&key)?;
        self.records.get(order).cloned()
    }

    /// Alerts newest first, filtered.
    pub fn alerts(&self, query: &AlertQuery) -> Page {
        let range = match query.before {
            Some(before) => self.alerts.range(..before),
            None => self.alerts.range(..),
        };
        let mut items = Vec::with_capacity(query.limit.min(256));
        let mut more = false;
        for order in range.rev() {
            let stored = &self.records[order];
            if query
                .user_id
                .is_some_and(|u| stored.record.user_id != Some(u))
            {
                continue;
            }
            if query
                .code
                .is_some_and(|c| !stored.alert_codes().contains(&c))
            {
                continue;
            }
            if items.len() == query.limit {
                more = true;
                break;
            }
            items.push(Arc::clone(stored));
        }
        let next = if more {
            items.last().map(|s| s.order)
        } else {
            None
        };
        Page { items, next }
    }

    /// A user's recent events, newest first.
    pub fn user_events(&self, user_id: u64, before: Option<OrderKey>, limit: usize) -> Page {
        let Some(list) = self.by_user.get(&user_id) else {
            return Page {
                items: Vec::new(),
                next: None,
            };
        };
        let mut items = Vec::new();
        let mut more = false;
        for order in list.iter().rev() {
            if before.is_some_and(|b| *order >= b) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            if let Some(stored) = self.records.get(order) {
                items.push(Arc::clone(stored));
            }
        }
        let next = if more {
            items.last().map(|s| s.order)
        } else {
            None
        };
        Page { items, next }
    }
}

/// The read model, the pending waiters and the follower's progress, shared by the alerts
/// consumer (writer) and the handlers (readers).
#[derive(Debug)]
pub struct Hub {
    inner: Mutex<HubInner>,
    caught_up: AtomicBool,
    connected: AtomicBool,
    ingested: AtomicU64,
}

#[derive(Debug)]
struct HubInner {
    model: ReadModel,
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
    pub fn new(max_records: usize, events_per_user: usize) -> Self {
        Hub {
            inner: Mutex::new(HubInner {
                model: ReadModel::new(max_records, events_per_user),
                waiters: HashMap::new(),
            }),
            caught_up: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            ingested: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one record of the alerts topic (`timestamp` is that record's, in ms). Returns false
    /// when the record's `event_id` is not an input coordinate (it is then ignored).
    pub fn ingest(&self, record: AlertRecord, timestamp: i64) -> bool {
        let Some(Coord { partition, offset }) = Coord::parse_event_id(&record.event_id) else {
            return false;
        };
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
            inner.model.insert(Arc::clone(&stored));
            inner.waiters.remove(&Coord::new(partition, offset))
        };
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(Arc::clone(&stored));
        }
        self.ingested.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Registers interest in the response to `key`, or returns it when already known. Checking and
    /// registering happen under one lock, so a response that arrives meanwhile is never missed.
    pub fn wait_for(&self, key: Coord) -> Wait {
        let mut inner = self.lock();
        if let Some(stored) = inner.model.event(key) {
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

    pub fn event(&self, key: Coord) -> Option<Arc<Stored>> {
        self.lock().model.event(key)
    }

    pub fn alerts(&self, query: &AlertQuery) -> Page {
        self.lock().model.alerts(query)
    }

    pub fn user_events(&self, user_id: u64, before: Option<OrderKey>, limit: usize) -> Page {
        self.lock().model.user_events(user_id, before, limit)
    }

    pub fn records(&self) -> usize {
        self.lock().model.len()
    }

    /// Records taken since start (duplicates and dropped ones included).
    pub fn ingested(&self) -> u64 {
        self.ingested.load(Ordering::Relaxed)
    }

    pub fn set_caught_up(&self) {
        self.caught_up.store(true, Ordering::Relaxed);
    }

    /// The follower has read every alerts partition to its end once since start.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Relaxed)
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
    use crate::domain::response::Rejection;
    use crate::domain::Risk;

    fn record(partition: i32, offset: i64, user_id: u64, codes: &[u32]) -> AlertRecord {
        AlertRecord {
            event_id: format!("{partition}-{offset}"),
            duplicate_of: None,
            user_id: Some(user_id),
            outcome: Outcome::Accepted {
                alert_codes: codes.to_vec(),
                alert_id: (!codes.is_empty()).then(|| format!("alert-{partition}-{offset}")),
                risk: Risk::Medium,
            },
            event: None,
            event_text: None,
        }
    }

    fn stored(ts: i64, partition: i32, offset: i64, user_id: u64, codes: &[u32]) -> Arc<Stored> {
        Arc::new(Stored {
            order: OrderKey {
                timestamp: ts,
                partition,
                offset,
            },
            record: record(partition, offset, user_id, codes),
        })
    }

    #[test]
    fn keeps_the_newest_records_and_drops_the_oldest_from_every_index() {
        let mut model = ReadModel::new(3, 10);
        for i in 0..5 {
            assert!(model.insert(stored(i, 0, i, 7, &[30])));
        }
        assert_eq!(model.len(), 3);
        assert!(model.event(Coord::new(0, 1)).is_none());
        assert!(model.event(Coord::new(0, 4)).is_some());
        let page = model.alerts(&AlertQuery {
            limit: 10,
            ..Default::default()
        });
        let offsets: Vec<i64> = page.items.iter().map(|s| s.order.offset).collect();
        assert_eq!(offsets, vec![4, 3, 2]);
        assert_eq!(model.user_events(7, None, 10).items.len(), 3);
        // Older than everything kept while full: not kept.
        assert!(!model.insert(stored(-1, 1, 0, 7, &[])));
    }

    #[test]
    fn keeps_a_bounded_number_of_events_per_user() {
        let mut model = ReadModel::new(100, 2);
        for i in 0..5 {
            model.insert(stored(i, 0, i, 1, &[]));
        }
        let page = model.user_events(1, None, 10);
        let offsets: Vec<i64> = page.items.iter().map(|s| s.order.offset).collect();
        assert_eq!(offsets, vec![4, 3]);
        assert_eq!(model.len(), 5, "the global model still has them");
    }

    #[test]
    fn pages_alerts_by_cursor_with_filters() {
        let mut model = ReadModel::new(100, 100);
        for i in 0..10 {
            let codes: &[u32] = if i % 2 == 0 { &[123] } else { &[30, 1100] };
            model.insert(stored(100 + i, 0, i, (i % 3) as u64, codes));
        }
        model.insert(stored(200, 1, 0, 0, &[]));
        let mut query = AlertQuery {
            limit: 3,
            ..Default::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = model.alerts(&query);
            seen.extend(page.items.iter().map(|s| s.order.offset));
            match page.next {
                Some(next) => {
                    let cursor = next.cursor();
                    query.before = Some(OrderKey::from_cursor(&cursor).unwrap());
                }
                None => break,
            }
        }
        assert_eq!(seen, (0..10).rev().collect::<Vec<_>>());
        let page = model.alerts(&AlertQuery {
            code: Some(1100),
            user_id: Some(1),
            limit: 10,
            ..Default::default()
        });
        let offsets: Vec<i64> = page.items.iter().map(|s| s.order.offset).collect();
        assert_eq!(offsets, vec![7, 1]);
    }

    #[test]
    fn a_waiter_registered_before_or_after_the_response_gets_it() {
        let hub = Hub::new(10, 10);
        let Wait::Pending(mut rx) = hub.wait_for(Coord::new(0, 1)) else {
            panic!("nothing arrived yet");
        };
        assert!(rx.try_recv().is_err());
        assert!(hub.ingest(record(0, 1, 5, &[]), 1));
        assert_eq!(rx.try_recv().unwrap().record.event_id, "0-1");
        assert!(matches!(hub.wait_for(Coord::new(0, 1)), Wait::Ready(_)));
        assert_eq!(hub.pending(), 0);
    }

    #[test]
    fn abandoned_waiters_are_forgotten() {
        let hub = Hub::new(10, 10);
        let Wait::Pending(rx) = hub.wait_for(Coord::new(2, 9)) else {
            panic!("nothing arrived yet");
        };
        drop(rx);
        hub.forget_closed(Coord::new(2, 9));
        assert_eq!(hub.pending(), 0);
    }

    #[test]
    fn rejected_events_are_kept_but_never_listed_as_alerts() {
        let hub = Hub::new(10, 10);
        let rejected = AlertRecord {
            event_id: "0-3".into(),
            duplicate_of: None,
            user_id: Some(4),
            outcome: Outcome::Rejected {
                rejection: Rejection::OutOfOrder,
                error: "out of order".into(),
            },
            event: None,
            event_text: None,
        };
        hub.ingest(rejected, 5);
        assert!(hub.event(Coord::new(0, 3)).is_some());
        assert!(hub
            .alerts(&AlertQuery {
                limit: 10,
                ..Default::default()
            })
            .items
            .is_empty());
        assert_eq!(hub.user_events(4, None, 10).items.len(), 1);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = OrderKey {
            timestamp: 1_700_000_000_000,
            partition: 3,
            offset: 42,
        };
        assert_eq!(OrderKey::from_cursor(&key.cursor()), Some(key));
        for bad in ["", "x", "1.2", "1.2.3.4", "1.-2.3", "g.1.1"] {
            assert_eq!(OrderKey::from_cursor(bad), None, "{bad}");
        }
    }
}
