//! The live alert feed (`GET /api/v1/alerts/stream`, CONTRACT §7): alerts as Server-Sent Events,
//! in cursor order, resumable with `Last-Event-ID` without gaps and without duplicates.
//!
//! # Order, and why a resumed feed misses nothing and repeats nothing
//!
//! The `id` of every event is the alert's cursor, its [`OrderKey`]: (alerts record timestamp,
//! partition, offset), the order of `GET /api/v1/alerts`. A client that reconnects sends the
//! last id it saw, and the feed goes on with the alerts positioned after it. That is exact only
//! if, whenever the feed delivers an alert at position `k`, every alert positioned before `k`
//! that will ever exist has already been delivered: then "what the client has not seen" is
//! exactly "what is positioned after its last id", which the store, the hub and the live
//! channel can all answer. Arrival order does not give this by itself: the records of
//! different alerts partitions interleave (one partition's transaction may commit, and reach
//! the shim, after a later-stamped one of another partition), so the feed holds each alert back
//! until a **frontier** has passed it and delivers in position order. The frontier rests on two
//! facts:
//!
//! - **(A) within one partition, positions increase.** The response to input partition `p` goes
//!   to alerts partition `p`, written by `p`'s one owner in input order with its clock's
//!   timestamp, and a reader sees a partition in offset order. So once partition `p` delivered
//!   position `l`, everything of `p` at or before `l` has arrived.
//! - **(B) a record arrives within `http.stream_settle` of its timestamp**: the processor's
//!   transaction, the follower's fetch and the clock skew between the processor's and the shim's
//!   hosts. So at time `t`, everything stamped before `t - settle` has arrived. A feed applies
//!   this to what it has taken from the live channel: at its clock's `t` once the channel is
//!   drained, else at the ingest time of the last message it took (so that a feed which is
//!   itself behind never takes its own delay for lateness).
//!
//! Hence the frontier at `t` is the larger of `(t - settle - 1 ms, max, max)` (B) and, once
//! every partition has delivered something, the least of the partitions' latest positions (A)
//! ([`frontier`]). Every alert at or before it has arrived: it is delivered, in order, and never
//! anything at or before it again. With every partition busy the feed is as live as the slowest
//! partition; when some partition is idle, an alert waits up to `settle` past its timestamp.
//!
//! # Where the alerts come from: store, recent, live
//!
//! A feed first subscribes to the hub's live channel and, under the same lock, takes the hub's
//! recent alerts ([`super::waiters::Hub::subscribe`]): every alert that ever reaches the hub is
//! either in that snapshot or comes on the channel. The frontier `f0` at that moment is fixed.
//! Every alert at or before `f0` had already arrived, so it is in the database or (not yet
//! projected) among the recent ones: the feed pages the database in position order over
//! `(cursor, f0]`, merged with the recent ones of that range, skipping coordinates seen twice.
//! The database is complete up to `f0` only when the projection is not catching up after a start
//! and is less than half the recent responses behind; a feed that has to read it waits for that
//! ([`Freshness`](crate::store::projection::Freshness)). Then alerts after `f0` (recent ones,
//! then live ones) are held, de-duplicated by coordinates, and released in position order as
//! the frontier passes them. A feed without a cursor starts at `f0` (with `since` and no
//! cursor: at `since`).
//!
//! # When a fact does not hold
//!
//! An alert that arrives at or before the feed's frontier (a record that reached the shim more
//! than `settle` after its timestamp: a stalled processor, a broker outage, a clock stepped back
//! on a processor host) cannot be placed in order any more. It is delivered at once **without an
//! `id`** (so a client's last id does not move back, and a resume repeats nothing) and counted
//! (`user_monitor_alert_stream_late_total`). Such an alert arriving while the client is
//! disconnected is not replayed by the resume (the alerts list has it). What is at or before
//! the client's own cursor is the client's already, whichever feed released it: a feed resumed
//! on another shim (whose frontier may lag the one that issued the cursor) drops it rather than
//! deliver it again. A replay under
//! at-least-once (the same event's record published again, with a later timestamp) is
//! recognised by its coordinates for as long as the feed remembers them
//! ([`DELIVERED_MEMORY`]).
//!
//! # Bounded, and never in the way of a shutdown
//!
//! Each feed is one task holding at most [`LIVE`] alerts for ordering (pointers to records the
//! hub shares) and `http.stream_buffer` events written for its client but not yet read. A
//! client that falls further behind (or a task that falls [`LIVE`] behind the live channel)
//! gets `event: overflow` with the id to resume after, and the stream ends; a client that does
//! not even read that is disconnected one heartbeat later. Open feeds are capped (`http.max_streams`, then 503). On shutdown every feed
//! ends at once, so no stream holds the server's drain.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::response::sse::Event;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::api::{EventView, StreamEnd, StreamOverflow};
use super::routes::Shared;
use super::waiters::{Live, Subscription, LIVE, RECENT};
use crate::config::HttpConfig;
use crate::domain::Coord;
use crate::store::{AlertQuery, OrderKey, Stored};

/// Coordinates of delivered alerts a feed remembers, to recognise one that comes again.
pub const DELIVERED_MEMORY: usize = 16_384;

/// Alerts read from the database per query of a catch-up.
const CATCH_UP_PAGE: usize = 500;

/// How long a feed gathers a burst of live alerts before releasing them: a busy feed then costs
/// a write (and its client a read) per batch instead of per alert, for at most this much latency.
const BATCH: Duration = Duration::from_millis(5);

/// How often a feed that must read the database checks whether it is complete enough.
const STORE_WAIT: Duration = Duration::from_millis(100);

/// The feeds' settings (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// Open feeds at most (`http.max_streams`).
    pub max_streams: usize,
    /// An SSE comment after this long without an event (`http.stream_heartbeat`).
    pub heartbeat: Duration,
    /// Alerts buffered per feed (`http.stream_buffer`).
    pub buffer: usize,
    /// How long after its timestamp a record has surely arrived (`http.stream_settle`).
    pub settle: Duration,
}

impl StreamConfig {
    pub fn from_settings(http: &HttpConfig) -> Self {
        StreamConfig {
            max_streams: http.max_streams,
            heartbeat: http.stream_heartbeat,
            buffer: http.stream_buffer,
            settle: http.stream_settle,
        }
    }
}

/// The open feeds: their cap and the signal that ends them all.
#[derive(Debug)]
pub struct Streams {
    pub config: StreamConfig,
    permits: Arc<Semaphore>,
    closing: CancellationToken,
}

impl Streams {
    pub fn new(config: StreamConfig) -> Arc<Streams> {
        Arc::new(Streams {
            permits: Arc::new(Semaphore::new(config.max_streams)),
            config,
            closing: CancellationToken::new(),
        })
    }

    /// A place for one more feed, if any is free.
    pub fn try_open(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Ends every feed, and refuses new ones (shutdown).
    pub fn close(&self) {
        self.permits.close();
        self.closing.cancel();
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }
}

/// Milliseconds since the Unix epoch, the unit of alerts record timestamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The position at or before which every alert has arrived (see the module docs): the time
/// bound of fact (B) at `now_ms`, or the partitions' `merged` position of fact (A) when it is
/// further.
pub fn frontier(merged: Option<OrderKey>, now_ms: i64, settle: Duration) -> OrderKey {
    let settle = i64::try_from(settle.as_millis()).unwrap_or(i64::MAX);
    let by_time = OrderKey {
        timestamp: now_ms.saturating_sub(settle).saturating_sub(1),
        partition: i32::MAX,
        offset: i64::MAX,
    };
    merged.map_or(by_time, |merged| merged.max(by_time))
}

/// An alert on its way to a client: the record, and its event's `data` when the hub already
/// serialized it (once, for every feed).
#[derive(Debug, Clone)]
pub struct Pending {
    pub stored: Arc<Stored>,
    pub data: Option<Arc<str>>,
}

impl From<Arc<Stored>> for Pending {
    fn from(stored: Arc<Stored>) -> Self {
        Pending { stored, data: None }
    }
}

/// What became of an alert offered to a [`Reorder`].
#[derive(Debug)]
pub enum Offer {
    /// Held until the frontier passes it.
    Held,
    /// Already held or delivered: dropped.
    Duplicate,
    /// At or before what was already released: to deliver now, out of order (no `id`).
    Late(Pending),
    /// No room left: the client is too slow.
    Overflow,
}

/// A feed's ordering: the alerts held until the frontier passes them, released in position
/// order, each once. Pure: no clock, no I/O.
#[derive(Debug)]
pub struct Reorder {
    /// The client's cursor: it has everything at or before it (from this instance or another).
    cursor: Option<OrderKey>,
    /// Everything at or before this is settled: delivered, or before the feed's start.
    released: Option<OrderKey>,
    held: BTreeMap<OrderKey, Pending>,
    held_coords: HashSet<Coord>,
    delivered: Remembered,
    capacity: usize,
}

impl Reorder {
    /// A feed that starts after `start` (from the first alert when `None`) for a client that
    /// has everything up to `cursor`, holding at most `capacity` alerts.
    pub fn new(start: Option<OrderKey>, cursor: Option<OrderKey>, capacity: usize) -> Self {
        Reorder {
            cursor,
            released: start.max(cursor),
            held: BTreeMap::new(),
            held_coords: HashSet::new(),
            delivered: Remembered::new(DELIVERED_MEMORY),
            capacity: capacity.max(1),
        }
    }

    pub fn offer(&mut self, alert: impl Into<Pending>) -> Offer {
        let alert = alert.into();
        let coord = alert.stored.coord();
        if self.held_coords.contains(&coord)
            || self.delivered.contains(coord)
            || self.cursor.is_some_and(|c| alert.stored.order <= c)
        {
            return Offer::Duplicate;
        }
        if self.released.is_some_and(|r| alert.stored.order <= r) {
            self.delivered.insert(coord);
            return Offer::Late(alert);
        }
        if self.held.len() >= self.capacity {
            return Offer::Overflow;
        }
        self.held_coords.insert(coord);
        self.held.insert(alert.stored.order, alert);
        Offer::Held
    }

    /// The held alerts at or before `frontier`, in order; everything up to it is settled.
    pub fn release(&mut self, frontier: OrderKey) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            let alert = entry.remove();
            let coord = alert.stored.coord();
            self.held_coords.remove(&coord);
            self.delivered.insert(coord);
            out.push(alert);
        }
        self.released = Some(self.released.map_or(frontier, |r| r.max(frontier)));
        out
    }

    /// The first held position, if any (it is released when the frontier reaches it).
    pub fn first_held(&self) -> Option<OrderKey> {
        self.held.keys().next().copied()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// A bounded set of coordinates: the newest `capacity` inserted.
#[derive(Debug)]
struct Remembered {
    capacity: usize,
    set: HashSet<Coord>,
    order: VecDeque<Coord>,
}

impl Remembered {
    fn new(capacity: usize) -> Self {
        Remembered {
            capacity,
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, coord: Coord) -> bool {
        self.set.contains(&coord)
    }

    fn insert(&mut self, coord: Coord) {
        if self.set.insert(coord) {
            self.order.push_back(coord);
            if self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Where a feed starts and what it shows.
#[derive(Debug, Clone, Copy)]
pub struct FeedStart {
    /// The filters (`user_id`, `code`, `since`, `until`).
    pub filters: AlertQuery,
    /// Resume after this position (`Last-Event-ID`, `cursor` or `after`).
    pub cursor: Option<OrderKey>,
}

/// An open feed's ends: the events for the body, and what the body reads last.
pub struct Feed {
    pub events: mpsc::Receiver<Event>,
    pub last: oneshot::Receiver<Event>,
    /// Cancelled when the body is dropped (delivered to its end, or the client went away).
    pub body_gone: CancellationToken,
}

/// How a feed ended.
enum End {
    /// Shutdown, the client went away, or the hub stopped.
    Quiet,
    /// `until` reached: everything before it was delivered.
    Until,
    /// The client is too slow.
    Overflow,
    /// The database failed during the catch-up.
    Failed(String),
}

/// Starts a feed's task (which holds `permit`) and returns the ends its body reads. `close` is
/// the connection's, when served by [`super::server`]: it cuts off a client that does not read
/// its overflow notice.
pub fn open(
    state: Arc<Shared>,
    start: FeedStart,
    permit: OwnedSemaphorePermit,
    close: Option<CancellationToken>,
) -> Feed {
    let buffer = state.streams.config.buffer;
    let (tx, events) = mpsc::channel(buffer);
    let (last_tx, last) = oneshot::channel();
    let body_gone = CancellationToken::new();
    let gone = body_gone.clone();
    // Subscribed now, not when the task first runs: a feed without a cursor starts when its
    // request was answered.
    let filters = start.filters;
    let subscription = state.hub.subscribe(start.cursor, |s| filters.matches(s));
    let subscribed_at = now_ms();
    tokio::spawn(async move {
        let metrics = Arc::clone(&state.metrics);
        metrics.alert_streams.inc();
        let mut sink = Sink {
            tx,
            last_id: start.cursor,
        };
        let end = run(&state, start, subscription, subscribed_at, &mut sink).await;
        let heartbeat = state.streams.config.heartbeat;
        let last_id = sink.last_id.map(|k| k.cursor());
        drop(sink); // the body reads the buffered events, then `last`
        let last_event = match end {
            End::Quiet => None,
            End::Until => Event::default()
                .event("end")
                .json_data(StreamEnd {
                    reason: "until".to_owned(),
                })
                .ok(),
            End::Overflow => {
                metrics.alert_stream_overflows.inc();
                Event::default()
                    .event("overflow")
                    .json_data(StreamOverflow {
                        error: format!(
                            "this feed fell too far behind (its client reads more than http.stream_buffer = {buffer} alerts late, or the shim is overloaded): reconnect with Last-Event-ID: {}",
                            last_id.as_deref().unwrap_or("(none: no alert was delivered)")
                        ),
                        last_event_id: last_id,
                    })
                    .ok()
            }
            End::Failed(error) => Event::default()
                .event("error")
                .json_data(serde_json::json!({ "error": error }))
                .ok(),
        };
        let notice = last_event.is_some();
        if let Some(event) = last_event {
            let _ = last_tx.send(event);
        }
        if notice {
            // A client that does not read even its last event (it stopped reading) is cut
            // off once a heartbeat is due: its connection would otherwise stay open for good.
            tokio::select! {
                () = gone.cancelled() => {}
                () = tokio::time::sleep(heartbeat) => {
                    if let Some(close) = close {
                        close.cancel();
                    }
                }
            }
        }
        metrics.alert_streams.dec();
        drop(permit);
    });
    Feed {
        events,
        last,
        body_gone,
    }
}

/// The feed's side of its body's channel, and the last id it sent.
struct Sink {
    tx: mpsc::Sender<Event>,
    last_id: Option<OrderKey>,
}

impl Sink {
    /// The event of an alert: `event: alert`, `id:` its cursor (none for a late one), `data:`
    /// the alert as the list shows it.
    fn event(alert: &Pending, with_id: bool) -> Option<Event> {
        let mut event = Event::default().event("alert");
        if with_id {
            event = event.id(alert.stored.order.cursor());
        }
        match &alert.data {
            // Compact JSON: one line, as one `data:` field.
            Some(data) => Some(event.data(&**data)),
            None => event
                .json_data(
                    EventView::processed(&alert.stored.record)
                        .with_triage(crate::domain::Triage::open()),
                )
                .ok(),
        }
    }

    /// Sends without waiting: the feed ends when the client is too slow (or gone).
    fn try_send(&mut self, alert: &Pending, with_id: bool) -> Result<(), End> {
        let Some(event) = Sink::event(alert, with_id) else {
            return Ok(());
        };
        match self.tx.try_send(event) {
            Ok(()) => {
                if with_id {
                    self.last_id = Some(alert.stored.order);
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(End::Overflow),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(End::Quiet),
        }
    }

    /// Sends at the client's pace (the catch-up); false when the client went away.
    async fn send(&mut self, alert: &Pending) -> bool {
        let Some(event) = Sink::event(alert, true) else {
            return true;
        };
        if self.tx.send(event).await.is_err() {
            return false;
        }
        self.last_id = Some(alert.stored.order);
        true
    }
}

async fn run(
    state: &Shared,
    start: FeedStart,
    subscription: Subscription,
    subscribed_at: i64,
    sink: &mut Sink,
) -> End {
    let config = state.streams.config;
    let closing = state.streams.closing().clone();
    let filters = start.filters;
    let mut live = subscription.live;
    let mut merged = subscription.merged;
    let f0 = frontier(merged, subscribed_at, config.settle);
    // No cursor and no `since`: from now on (the frontier); else after the cursor (from the
    // first alert the filters allow when there is none).
    let after = match (start.cursor, filters.since) {
        (None, None) => Some(f0),
        (cursor, _) => cursor,
    };
    // Held alerts are shared pointers (the hub keeps the records): their bound is the live
    // channel's, so that a busy `settle` window never overflows a client that keeps up.
    let mut reorder = Reorder::new(after, start.cursor, LIVE.max(config.buffer));
    for stored in subscription.recent {
        if after.is_none_or(|a| stored.order > a) {
            if let Offer::Overflow = reorder.offer(stored) {
                return End::Overflow;
            }
        }
    }
    // The ingest time of the last live message taken: while more wait on the channel, fact (B)
    // holds up to then, not up to now (a feed that is behind must not call them late).
    let mut horizon = subscribed_at;

    // The catch-up: (after, f0] from the database, merged with the recent ones held above.
    if after.is_none_or(|a| a < f0) {
        loop {
            let freshness = state.projection.freshness();
            if !freshness.catching_up && freshness.behind.is_some_and(|b| b < RECENT as u64 / 2) {
                break;
            }
            tokio::select! {
                () = closing.cancelled() => return End::Quiet,
                () = sink.tx.closed() => return End::Quiet,
                () = tokio::time::sleep(STORE_WAIT) => {}
            }
        }
        let mut from = after;
        loop {
            let page = tokio::select! {
                () = closing.cancelled() => return End::Quiet,
                page = state.store.alerts_ascending(&filters, from, f0, CATCH_UP_PAGE) => page,
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "alert stream: read model query failed");
                    return End::Failed(
                        "the read model's database is unavailable; reconnect later".to_owned(),
                    );
                }
            };
            for stored in page.items {
                let at = stored.order;
                match reorder.offer(stored) {
                    Offer::Held | Offer::Duplicate => {}
                    Offer::Late(alert) => {
                        // Not possible for rows after `from`; delivered all the same.
                        if let Err(end) = sink.try_send(&alert, false) {
                            return end;
                        }
                    }
                    Offer::Overflow => return End::Overflow,
                }
                for alert in reorder.release(at) {
                    tokio::select! {
                        () = closing.cancelled() => return End::Quiet,
                        sent = sink.send(&alert) => if !sent { return End::Quiet },
                    }
                }
            }
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        for alert in reorder.release(f0) {
            tokio::select! {
                () = closing.cancelled() => return End::Quiet,
                sent = sink.send(&alert) => if !sent { return End::Quiet },
            }
        }
    }

    // Live: hold, release as the frontier passes, in order.
    let until = filters.until.map(|until| OrderKey {
        timestamp: until.saturating_sub(1),
        partition: i32::MAX,
        offset: i64::MAX,
    });
    let settle = i64::try_from(config.settle.as_millis()).unwrap_or(i64::MAX);
    loop {
        let now = if live.is_empty() { now_ms() } else { horizon };
        let f = frontier(merged, now, config.settle);
        for alert in reorder.release(f) {
            if let Err(end) = sink.try_send(&alert, true) {
                return end;
            }
        }
        if until.is_some_and(|until| f >= until) {
            return End::Until;
        }
        // When the time bound alone passes the first held alert or `until` (the channel is
        // drained then): an idle feed still releases, and still ends.
        let due = |timestamp: i64| {
            let due = timestamp.saturating_add(settle).saturating_add(1);
            Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0) + 1)
        };
        let wake = [reorder.first_held(), until]
            .into_iter()
            .flatten()
            .map(|key| due(key.timestamp))
            .min();
        let received = tokio::select! {
            () = closing.cancelled() => return End::Quiet,
            () = sink.tx.closed() => return End::Quiet,
            received = live.recv() => received,
            () = sleep_for(wake) => continue,
        };
        // A burst: what else comes within BATCH goes to the client with it, in one write.
        tokio::time::sleep(BATCH).await;
        let mut received = received;
        loop {
            let Live {
                alert,
                merged: m,
                at_ms,
            } = match received {
                Ok(live) => live,
                Err(broadcast::error::RecvError::Lagged(_)) => return End::Overflow,
                Err(broadcast::error::RecvError::Closed) => return End::Quiet,
            };
            merged = merged.max(m);
            horizon = horizon.max(at_ms);
            if let Some((stored, data)) = alert.filter(|(s, _)| filters.matches(s)) {
                match reorder.offer(Pending {
                    stored,
                    data: Some(data),
                }) {
                    Offer::Held | Offer::Duplicate => {}
                    Offer::Late(alert) => {
                        state.metrics.alert_stream_late.inc();
                        if let Err(end) = sink.try_send(&alert, false) {
                            return end;
                        }
                    }
                    Offer::Overflow => return End::Overflow,
                }
            }
            received = match live.try_recv() {
                Ok(live) => Ok(live),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
            };
        }
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(wait) => tokio::time::sleep(wait).await,
        None => std::future::pending().await,
    }
}

/// The body of a feed: its events, then the last one (an overflow notice, `end`, an error),
/// then the end of the stream.
pub fn body(feed: Feed) -> impl futures::Stream<Item = Result<Event, Infallible>> + Send {
    struct Body {
        events: mpsc::Receiver<Event>,
        last: Option<oneshot::Receiver<Event>>,
        _gone: tokio_util::sync::DropGuard,
    }
    let state = Body {
        events: feed.events,
        last: Some(feed.last),
        _gone: feed.body_gone.drop_guard(),
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(event) = state.events.recv().await {
            return Some((Ok(event), state));
        }
        let last = state.last.take()?.await.ok()?;
        Some((Ok(last), state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::response::{AlertRecord, Outcome};
    use crate::domain::{Risk, UserId};

    fn alert(timestamp: i64, partition: i32, offset: i64) -> Arc<Stored> {
        Arc::new(Stored {
            order: OrderKey {
                timestamp,
                partition,
                offset,
            },
            record: AlertRecord {
                event_id: Coord::new(partition, offset),
                duplicate_of: None,
                user_id: UserId::new(1),
                outcome: Outcome::Accepted {
                    alert_codes: vec![1100],
                    alert_id: Some(format!("alert-{partition}-{offset}")),
                    risk: Risk::Medium,
                },
                rules_version: None,
                evidence: None,
                event: None,
                event_text: None,
            },
        })
    }

    fn key(timestamp: i64, partition: i32, offset: i64) -> OrderKey {
        OrderKey {
            timestamp,
            partition,
            offset,
        }
    }

    fn positions(released: Vec<Pending>) -> Vec<(i64, i32, i64)> {
        released
            .iter()
            .map(|a| a.stored.order)
            .map(|k| (k.timestamp, k.partition, k.offset))
            .collect()
    }

    #[test]
    fn the_frontier_is_the_time_bound_or_the_slowest_partition_whichever_is_further() {
        let settle = Duration::from_millis(1000);
        assert_eq!(
            frontier(None, 10_000, settle),
            key(8_999, i32::MAX, i64::MAX)
        );
        assert_eq!(
            frontier(Some(key(9_500, 1, 7)), 10_000, settle),
            key(9_500, 1, 7)
        );
        assert_eq!(
            frontier(Some(key(5_000, 1, 7)), 10_000, settle),
            key(8_999, i32::MAX, i64::MAX)
        );
    }

    #[test]
    fn alerts_arriving_out_of_order_are_released_in_order_once_the_frontier_passes() {
        let mut reorder = Reorder::new(None, None, 10);
        // Partition 1 arrives before partition 0's earlier alert.
        assert!(matches!(reorder.offer(alert(105, 1, 0)), Offer::Held));
        assert!(matches!(reorder.offer(alert(100, 0, 0)), Offer::Held));
        assert!(matches!(reorder.offer(alert(110, 0, 1)), Offer::Held));
        assert_eq!(positions(reorder.release(key(99, 9, 9))), vec![]);
        assert_eq!(
            positions(reorder.release(key(105, 1, 0))),
            vec![(100, 0, 0), (105, 1, 0)]
        );
        assert_eq!(reorder.first_held(), Some(key(110, 0, 1)));
        assert_eq!(
            positions(reorder.release(key(200, 0, 0))),
            vec![(110, 0, 1)]
        );
        assert_eq!(reorder.held(), 0);
    }

    #[test]
    fn what_is_at_or_before_the_clients_cursor_is_the_clients_already() {
        // Resumed here after an id another instance gave, ahead of this one's frontier: what
        // arrives late here at or before it, the client has; what is after it is new.
        let mut reorder = Reorder::new(Some(key(90, 9, 9)), Some(key(100, 1, 0)), 10);
        assert!(matches!(reorder.offer(alert(100, 0, 7)), Offer::Duplicate));
        assert!(matches!(reorder.offer(alert(100, 1, 0)), Offer::Duplicate));
        assert!(matches!(reorder.offer(alert(100, 2, 0)), Offer::Held));
        assert_eq!(
            positions(reorder.release(key(95, 0, 0))),
            vec![],
            "the cursor is settled"
        );
        assert_eq!(
            positions(reorder.release(key(100, 2, 0))),
            vec![(100, 2, 0)]
        );
    }

    #[test]
    fn an_alert_at_or_before_the_released_frontier_is_late_and_a_repeat_is_dropped() {
        let mut reorder = Reorder::new(Some(key(100, 0, 5)), None, 10);
        assert!(matches!(reorder.offer(alert(100, 0, 5)), Offer::Late(_)));
        // Its repeat (at-least-once, a later timestamp) is known by its coordinates.
        assert!(matches!(reorder.offer(alert(300, 0, 5)), Offer::Duplicate));
        assert!(matches!(reorder.offer(alert(150, 1, 0)), Offer::Held));
        assert!(matches!(reorder.offer(alert(150, 1, 0)), Offer::Duplicate));
        assert_eq!(
            positions(reorder.release(key(200, 0, 0))),
            vec![(150, 1, 0)]
        );
        assert!(matches!(reorder.offer(alert(160, 1, 0)), Offer::Duplicate));
        assert!(matches!(reorder.offer(alert(199, 2, 0)), Offer::Late(_)));
    }

    #[test]
    fn holding_more_than_the_capacity_overflows() {
        let mut reorder = Reorder::new(None, None, 2);
        assert!(matches!(reorder.offer(alert(1, 0, 0)), Offer::Held));
        assert!(matches!(reorder.offer(alert(2, 0, 1)), Offer::Held));
        assert!(matches!(reorder.offer(alert(3, 0, 2)), Offer::Overflow));
        assert_eq!(reorder.release(key(1, 0, 0)).len(), 1);
        assert!(matches!(reorder.offer(alert(3, 0, 2)), Offer::Held));
    }

    #[test]
    fn release_at_the_largest_position_takes_everything_up_to_it() {
        let mut reorder = Reorder::new(None, None, 10);
        reorder.offer(alert(5, i32::MAX, i64::MAX - 1));
        reorder.offer(alert(6, 0, 0));
        assert_eq!(
            positions(reorder.release(key(5, i32::MAX, i64::MAX))),
            vec![(5, i32::MAX, i64::MAX - 1)]
        );
        assert_eq!(reorder.held(), 1);
    }

    #[test]
    fn remembered_coordinates_are_bounded() {
        let mut remembered = Remembered::new(2);
        for offset in 0..3 {
            remembered.insert(Coord::new(0, offset));
        }
        assert!(!remembered.contains(Coord::new(0, 0)));
        assert!(remembered.contains(Coord::new(0, 2)));
        assert_eq!(remembered.set.len(), 2);
    }
}
