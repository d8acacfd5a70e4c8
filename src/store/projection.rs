//! The projection of the alerts topic into the [`Store`], and the retention task.
//!
//! One thread reads every partition of the alerts topic (assign mode, no group,
//! `read_committed`) from the offsets stored in the database (the beginning when none), gathers
//! batches of up to `store.batch_records` records or `store.batch_wait`, and hands them to one
//! writer task, which stores each batch's rows and offsets in one transaction. Reading the next
//! batch overlaps writing the previous one. A failed write is retried (never skipped): offsets
//! only advance with the rows, so nothing is lost and nothing is stored twice, whatever kills the
//! process. Unreadable records are logged, counted and skipped.
//!
//! **How fresh the read model is** ([`Status::freshness`], CONTRACT §7 "Reads"): per alerts
//! partition, the readable end (the last stable offset, since the projection reads
//! `read_committed`) against the next offset stored with the rows. The ends come from
//! librdkafka's statistics of this consumer (`statistics.interval.ms` = 1 s): every fetch
//! response carries them, so they cost no request of their own, and a GET never waits for
//! Kafka. The stored offsets follow the consumer's position, which moves past transaction
//! markers (records the consumer never hands out), so a caught-up projection is 0 behind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Batch, SnapshotBatch, Store, StoreError, TriageBatch};
use crate::config::Settings;
use crate::kafka::read::LastError;
use crate::kafka::{reader_config, KafkaLayerError, ReaderContext};
use crate::metrics::Metrics;

/// How the projection is doing, for readiness, metrics and the freshness of every read.
#[derive(Debug, Default)]
pub struct Status {
    assigned: AtomicBool,
    projected: AtomicU64,
    skipped: AtomicU64,
    failing: AtomicBool,
    progress: Mutex<Progress>,
    /// The Prometheus counters these numbers also go to.
    counters: Option<Counters>,
}

#[derive(Debug)]
struct Counters {
    projected: Counter,
    skipped: Counter,
    write_errors: Counter,
    /// The read model's lag: the alerts projection's only.
    lag: Option<Gauge>,
}

/// How far the read model is behind the alerts topic, as every read states it (CONTRACT §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Records of the alerts topic the database does not have yet: the sum over partitions of
    /// the readable end minus the projection's next offset. `None` until the projection knows
    /// where every partition ends (before it is assigned).
    pub behind: Option<u64>,
    /// The projection has not yet reached the ends it saw when it started: a list may be
    /// missing anything published while the shim was down.
    pub catching_up: bool,
}

/// What the projection has stored against where the topic ends, per alerts partition.
#[derive(Debug, Default)]
struct Progress {
    partitions: BTreeMap<i32, PartitionProgress>,
    /// [`Status::start`] ran: the partitions and their ends at start are known.
    started: bool,
    /// Every partition reached its end at start once (it stays so).
    caught_up: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionProgress {
    /// The next offset stored with the rows (exclusive).
    stored: i64,
    /// The first offset the topic still has: nothing below it can be stored.
    low: i64,
    /// The readable end as last seen (the last stable offset under `read_committed`).
    end: Option<i64>,
    /// The readable end when the projection started.
    start_end: Option<i64>,
}

impl PartitionProgress {
    fn next(&self) -> i64 {
        self.stored.max(self.low)
    }

    fn behind(&self) -> Option<u64> {
        self.end
            .map(|end| u64::try_from(end - self.next()).unwrap_or(0))
    }
}

impl Progress {
    fn freshness(&mut self) -> Freshness {
        if self.started && !self.caught_up {
            self.caught_up = self
                .partitions
                .values()
                .all(|p| p.start_end.is_some_and(|end| p.next() >= end));
        }
        let behind = if self.started {
            self.partitions
                .values()
                .map(PartitionProgress::behind)
                .sum()
        } else {
            None
        };
        Freshness {
            behind,
            catching_up: !self.caught_up,
        }
    }
}

impl Status {
    /// A status whose numbers also go to the process's metrics.
    pub fn with_metrics(metrics: &Metrics) -> Status {
        Status {
            counters: Some(Counters {
                projected: metrics.store_projected.clone(),
                skipped: metrics.store_skipped.clone(),
                write_errors: metrics.store_write_errors.clone(),
                lag: Some(metrics.read_model_lag.clone()),
            }),
            ..Status::default()
        }
    }

    /// A status whose rows, skips and write errors go to the process's metrics, but not the
    /// read model's lag (a projection of another topic than the alerts).
    pub fn counting_rows(metrics: &Metrics) -> Status {
        let status = Status::with_metrics(metrics);
        Status {
            counters: status.counters.map(|c| Counters { lag: None, ..c }),
            ..Status::default()
        }
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far the read model is behind the alerts topic. Cheap (one uncontended lock, no
    /// Kafka request): every read calls it.
    pub fn freshness(&self) -> Freshness {
        self.progress().freshness()
    }

    /// The projection starts: its partitions with `(low, end)` as the brokers gave them (`None`
    /// when they did not answer: the first statistics then stand for the end at start), and
    /// the next offsets the database holds.
    pub fn start(&self, ends: &BTreeMap<i32, Option<(i64, i64)>>, stored: &BTreeMap<i32, i64>) {
        let mut progress = self.progress();
        progress.partitions = ends
            .iter()
            .map(|(&partition, ends)| {
                let (low, end) = ends.map_or((0, None), |(low, end)| (low, Some(end)));
                let part = PartitionProgress {
                    stored: stored.get(&partition).copied().unwrap_or(0),
                    low,
                    end,
                    start_end: end,
                };
                (partition, part)
            })
            .collect();
        progress.started = true;
        progress.caught_up = false;
        self.publish(&mut progress);
    }

    /// A partition's `low` offset and readable `end` as the consumer last saw them.
    pub fn observe_end(&self, partition: i32, low: i64, end: i64) {
        let mut progress = self.progress();
        let Some(part) = progress.partitions.get_mut(&partition) else {
            return;
        };
        part.low = low.max(0);
        part.end = Some(end);
        part.start_end.get_or_insert(end);
        self.publish(&mut progress);
    }

    /// The database now holds everything below these next offsets.
    pub fn stored_to(&self, next_offsets: &BTreeMap<i32, i64>) {
        let mut progress = self.progress();
        for (partition, &next) in next_offsets {
            if let Some(part) = progress.partitions.get_mut(partition) {
                part.stored = part.stored.max(next);
            }
        }
        self.publish(&mut progress);
    }

    /// Sets the lag metric once it is known.
    fn publish(&self, progress: &mut Progress) {
        let freshness = progress.freshness();
        if let (Some(lag), Some(behind)) = (
            self.counters.as_ref().and_then(|c| c.lag.as_ref()),
            freshness.behind,
        ) {
            lag.set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
    }

    /// The consumer has its partitions, seeked to the stored offsets.
    pub fn assigned(&self) -> bool {
        self.assigned.load(Ordering::Relaxed)
    }

    pub fn set_assigned(&self) {
        self.assigned.store(true, Ordering::Relaxed);
    }

    /// Rows written since start (replayed duplicates included).
    pub fn projected(&self) -> u64 {
        self.projected.load(Ordering::Relaxed)
    }

    /// Unreadable alerts records skipped since start.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// The last write failed (the database is unreachable or full).
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }
}

/// A started projection.
/// What one projection gathers from its topic and stores, with the offsets it covers, in one
/// transaction.
pub trait Feed: Default + Send + 'static {
    /// Adds a record of the topic; an unreadable one is counted and skipped.
    fn push_message(&mut self, message: &BorrowedMessage<'_>);
    /// Records taken (stored or skipped).
    fn len(&self) -> usize;
    /// Nothing taken yet.
    fn is_empty(&self) -> bool;
    /// Rows this batch stores, and records it skipped.
    fn counts(&self) -> (u64, u64);
    /// Per partition, the next offset to read once this batch is stored.
    fn next_offsets(&mut self) -> &mut BTreeMap<i32, i64>;
    /// Stores the batch and the offsets it brings `topic` to, in one transaction.
    fn write(
        &self,
        store: &Store,
        topic: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl Feed for TriageBatch {
    fn push_message(&mut self, message: &BorrowedMessage<'_>) {
        self.push(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
        );
    }
    fn len(&self) -> usize {
        TriageBatch::len(self)
    }
    fn is_empty(&self) -> bool {
        TriageBatch::is_empty(self)
    }
    fn counts(&self) -> (u64, u64) {
        (self.triage.len() as u64, self.skipped)
    }
    fn next_offsets(&mut self) -> &mut BTreeMap<i32, i64> {
        &mut self.next_offsets
    }
    async fn write(&self, store: &Store, topic: &str) -> Result<(), StoreError> {
        store.write_triage(topic, self).await
    }
}

impl Feed for Batch {
    fn push_message(&mut self, message: &BorrowedMessage<'_>) {
        self.push(
            message.partition(),
            message.offset(),
            message.timestamp().to_millis().unwrap_or(0),
            message.payload(),
        );
    }
    fn len(&self) -> usize {
        Batch::len(self)
    }
    fn is_empty(&self) -> bool {
        Batch::is_empty(self)
    }
    fn counts(&self) -> (u64, u64) {
        (self.rows.len() as u64, self.skipped)
    }
    fn next_offsets(&mut self) -> &mut BTreeMap<i32, i64> {
        &mut self.next_offsets
    }
    async fn write(&self, store: &Store, topic: &str) -> Result<(), StoreError> {
        store.write(topic, self).await
    }
}

impl Feed for SnapshotBatch {
    fn push_message(&mut self, message: &BorrowedMessage<'_>) {
        self.push(
            message.partition(),
            message.offset(),
            message.key(),
            message.payload(),
        );
    }
    fn len(&self) -> usize {
        SnapshotBatch::len(self)
    }
    fn is_empty(&self) -> bool {
        SnapshotBatch::is_empty(self)
    }
    fn counts(&self) -> (u64, u64) {
        (self.rows() as u64, self.skipped)
    }
    fn next_offsets(&mut self) -> &mut BTreeMap<i32, i64> {
        self.offsets_mut()
    }
    async fn write(&self, store: &Store, topic: &str) -> Result<(), StoreError> {
        store.write_snapshots(topic, self).await
    }
}

/// A running projection of one topic into the read model: a thread polling its consumer.
pub struct Projection {
    thread: JoinHandle<()>,
}

impl Projection {
    /// Starts the projection of `settings.topics.alerts` into `store`; it stops when `stop` is
    /// cancelled, after writing what it has read. Must be called inside a tokio runtime.
    pub fn spawn(
        settings: Arc<Settings>,
        store: Store,
        status: Arc<Status>,
        stop: CancellationToken,
    ) -> Result<Projection, StoreError> {
        let consumer: ProjectionConsumer = reader_config(&settings, "store")?
            // The readable ends of the partitions, from the fetches the consumer makes anyway.
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
            .create_with_context(ProjectionContext {
                status: Arc::clone(&status),
                topic: settings.topics.alerts.clone(),
            })
            .map_err(KafkaLayerError::from)?;
        let topic = settings.topics.alerts.clone();
        Projection::spawn_on::<Batch, _>(settings, topic, consumer, store, status, stop)
    }

    /// Starts the projection of `settings.topics.triage` into `store` (see [`Projection::spawn`]):
    /// a consumer of its own, so that triage never waits behind a catch-up of the alerts.
    pub fn spawn_triage(
        settings: Arc<Settings>,
        store: Store,
        status: Arc<Status>,
        stop: CancellationToken,
    ) -> Result<Projection, StoreError> {
        let topic = settings.topics.triage.clone();
        let consumer = reader_config(&settings, "store-triage")?
            .create_with_context(ReaderContext)
            .map_err(KafkaLayerError::from)?;
        Projection::spawn_on::<TriageBatch, _>(settings, topic, consumer, store, status, stop)
    }

    /// Starts the projection of `settings.topics.state` (the users' snapshots, which a user's
    /// view replays from) into `store` (see [`Projection::spawn`]).
    pub fn spawn_states(
        settings: Arc<Settings>,
        store: Store,
        status: Arc<Status>,
        stop: CancellationToken,
    ) -> Result<Projection, StoreError> {
        let topic = settings.topics.state.clone();
        let consumer = reader_config(&settings, "store-states")?
            .create_with_context(ReaderContext)
            .map_err(KafkaLayerError::from)?;
        Projection::spawn_on::<SnapshotBatch, _>(settings, topic, consumer, store, status, stop)
    }

    fn spawn_on<B: Feed, C: ConsumerContext + 'static>(
        settings: Arc<Settings>,
        topic: String,
        consumer: BaseConsumer<C>,
        store: Store,
        status: Arc<Status>,
        stop: CancellationToken,
    ) -> Result<Projection, StoreError> {
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("projection-{topic}"))
            .spawn(move || {
                project::<B, C>(
                    &settings, &topic, &consumer, &store, &status, &stop, &runtime,
                )
            })
            .map_err(StoreError::Thread)?;
        Ok(Projection { thread })
    }

    /// Waits for the thread (call after cancelling its token; blocking).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// How often librdkafka reports the partitions' ends to the projection ([`ProjectionContext`]).
const STATISTICS_INTERVAL_MS: &str = "1000";

type ProjectionConsumer = BaseConsumer<ProjectionContext>;

/// The projection consumer's context: a reader's (errors), plus librdkafka's statistics, from
/// which [`Status`] learns each alerts partition's readable end without a request of its own.
struct ProjectionContext {
    status: Arc<Status>,
    topic: String,
}

/// The part of librdkafka's statistics the projection reads.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: BTreeMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: BTreeMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    lo_offset: i64,
    /// The end a consumer can read: the last stable offset under `read_committed` (the high
    /// watermark otherwise).
    ls_offset: i64,
}

impl ClientContext for ProjectionContext {
    fn error(&self, error: KafkaError, reason: &str) {
        ReaderContext.error(error, reason);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(statistics) = serde_json::from_slice::<Statistics>(statistics) else {
            return;
        };
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for p in topic.partitions.values() {
            // -1 is librdkafka's unassigned pseudo-partition; negative offsets are not known yet.
            if p.partition >= 0 && p.ls_offset >= 0 {
                self.status
                    .observe_end(p.partition, p.lo_offset, p.ls_offset);
            }
        }
    }
}

impl ConsumerContext for ProjectionContext {}

/// Projects `topic` into the read model with `B`'s batches: from the stored offsets, each batch
/// written with the offsets it brings the topic to, in one transaction (by a writer task, while
/// the next batch is read). The one loop of every projection (alerts, triage, the users'
/// snapshots).
fn project<B: Feed, C: ConsumerContext>(
    settings: &Settings,
    topic: &str,
    consumer: &BaseConsumer<C>,
    store: &Store,
    status: &Arc<Status>,
    stop: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) {
    let stored = loop {
        if stop.is_cancelled() {
            return;
        }
        match runtime.block_on(store.offsets(topic)) {
            Ok(offsets) => break offsets,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read the projection offsets, retrying");
                crate::shutdown::sleep_unless_cancelled(stop, Duration::from_secs(1));
            }
        }
    };
    let ends = loop {
        if stop.is_cancelled() {
            return;
        }
        match assign(consumer, topic, &stored) {
            Ok(ends) => break ends,
            Err(e) => {
                tracing::info!(topic, error = %e, "projection waiting for its topic");
                crate::shutdown::sleep_unless_cancelled(stop, Duration::from_secs(1));
            }
        }
    };
    let partitions: Vec<i32> = ends.keys().copied().collect();
    status.start(&ends, &stored);
    status.set_assigned();
    tracing::info!(topic, partitions = partitions.len(), resume = ?stored, "projecting the topic into the read model");

    let (batches, receiver) = mpsc::channel::<B>(2);
    let writer = runtime.spawn(write_batches(
        store.clone(),
        topic.to_owned(),
        receiver,
        Arc::clone(status),
        stop.clone(),
    ));
    let max_records = settings.store.batch_records;
    let batch_wait = settings.store.batch_wait;
    let mut batch = B::default();
    let mut first: Option<Instant> = None;
    let mut last_error = LastError::default();
    // The next offsets handed to the writer so far.
    let mut recorded = stored;
    while !stop.is_cancelled() {
        let wait = match first {
            None => Duration::from_millis(100),
            Some(at) => batch_wait.saturating_sub(at.elapsed()),
        };
        match consumer.poll(wait.max(Duration::from_millis(1))) {
            None => {}
            Some(Ok(message)) => {
                last_error = LastError::default();
                batch.push_message(&message);
                first.get_or_insert_with(Instant::now);
            }
            // Caught up: the position is past the last transaction marker, which no message
            // carries; store it so that the read model reads 0 behind.
            Some(Err(KafkaError::PartitionEOF(_)))
                if advance_to_positions(consumer, topic, &mut batch, &recorded) =>
            {
                first.get_or_insert_with(Instant::now);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                if let Some(text) = last_error.changed(&e) {
                    tracing::warn!(topic, error = %text, "projection consumer error");
                }
            }
        }
        let due = first.is_some_and(|at| at.elapsed() >= batch_wait);
        if !batch.is_empty() && (batch.len() >= max_records || due) {
            advance_to_positions(consumer, topic, &mut batch, &recorded);
            recorded.extend(batch.next_offsets().iter().map(|(&p, &o)| (p, o)));
            if batches.blocking_send(std::mem::take(&mut batch)).is_err() {
                break;
            }
            first = None;
        }
    }
    // What was read is written before stopping.
    if !batch.is_empty() {
        let _ = batches.blocking_send(batch);
    }
    drop(batches);
    let _ = runtime.block_on(writer);
    tracing::debug!(topic, "projection stopped");
}

async fn write_batches<B: Feed>(
    store: Store,
    topic: String,
    mut batches: mpsc::Receiver<B>,
    status: Arc<Status>,
    stop: CancellationToken,
) {
    while let Some(mut batch) = batches.recv().await {
        let mut attempt = 0u32;
        loop {
            match batch.write(&store, &topic).await {
                Ok(()) => {
                    if status.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(topic, "projection writes again");
                    }
                    status.stored_to(batch.next_offsets());
                    let (rows, skipped) = batch.counts();
                    status.projected.fetch_add(rows, Ordering::Relaxed);
                    status.skipped.fetch_add(skipped, Ordering::Relaxed);
                    if let Some(counters) = &status.counters {
                        counters.projected.inc_by(rows);
                        counters.skipped.inc_by(skipped);
                    }
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    if let Some(counters) = &status.counters {
                        counters.write_errors.inc();
                    }
                    if !status.failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(topic, error = %e, "projection write failed, retrying");
                    }
                    // On shutdown, give up after a few tries: the offsets were not stored, so a
                    // restart reads these records again.
                    if stop.is_cancelled() && attempt >= 3 {
                        tracing::warn!(topic, "projection stopping with a batch unwritten");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10))))
                        .await;
                }
            }
        }
    }
}

/// Moves the batch's next offsets up to the consumer's positions where these are further: past
/// transaction markers, which the consumer steps over without handing them out (every message
/// it handed out is in this batch or an earlier one, so the position never runs ahead of what is
/// stored with it). Whether anything moved.
fn advance_to_positions<B: Feed, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    batch: &mut B,
    recorded: &BTreeMap<i32, i64>,
) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    let mut moved = false;
    for element in positions.elements_for_topic(topic) {
        let Offset::Offset(position) = element.offset() else {
            continue;
        };
        let partition = element.partition();
        let known = batch
            .next_offsets()
            .get(&partition)
            .or_else(|| recorded.get(&partition))
            .copied()
            .unwrap_or(i64::MIN);
        if position > known {
            batch.next_offsets().insert(partition, position);
            moved = true;
        }
    }
    moved
}

/// Assigns every partition of `topic` at its stored offset; returns each partition's
/// `(low, readable end)` as the brokers give them now (`None` where they did not answer).
fn assign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    stored: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, Option<(i64, i64)>>, KafkaLayerError> {
    let partitions = crate::kafka::read::partitions(consumer, topic, Duration::from_secs(5))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        // Under read_committed the "high" watermark is the last stable offset.
        let watermarks = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .ok();
        ends.insert(p, watermarks);
        if let (Some(&next), Some((_, high))) = (stored.get(&p), watermarks) {
            if next > high {
                // The topic is not the one the store was built from (recreated, or another
                // cluster): the consumer starts over from the beginning (auto.offset.reset), and
                // rows at coordinates already stored keep their old content.
                tracing::error!(
                    topic,
                    partition = p,
                    stored = next,
                    end = high,
                    "the read model is ahead of the topic's partition: was the topic recreated? \
                     point store.data_dir or store.url at a fresh database"
                );
            }
        }
        let offset = stored
            .get(&p)
            .map_or(Offset::Beginning, |&next| Offset::Offset(next));
        tpl.add_partition_offset(topic, p, offset)?;
    }
    consumer.assign(&tpl)?;
    Ok(ends)
}

/// Runs retention every `store.retention_interval` until `stop` (nothing when `store.retention`
/// is 0).
pub async fn retain(settings: Arc<Settings>, store: Store, stop: CancellationToken) {
    let retention = settings.store.retention;
    if retention.is_zero() {
        return;
    }
    let ticks = settings.rules.time_unit.ticks_per_second();
    let keep_event_time =
        i64::try_from((retention.as_millis() * u128::from(ticks) / 1000).min(i64::MAX as u128))
            .unwrap_or(i64::MAX);
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        match store.expire(keep_event_time, keep_ms, now_ms).await {
            Ok(expired) if expired.rows > 0 => tracing::info!(
                rows = expired.rows,
                event_time_cutoff = ?expired.event_time_cutoff,
                "retention deleted expired rows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed, retrying next interval"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(settings.store.retention_interval) => {}
        }
    }
}
