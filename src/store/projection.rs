//! The projections of the alerts topic and of the triage topic into the [`Store`], and the
//! retention task.
//!
//! For each topic, one thread reads every partition (assign mode, no group, `read_committed`)
//! from the offsets stored in the database (the beginning when none), gathers batches of up to
//! `store.batch_records` records or `store.batch_wait` (a [`Feed`]: [`Batch`] of alerts,
//! [`TriageBatch`]), and hands them to one writer task, which stores each batch's rows and
//! offsets in one transaction. Reading the next
//! batch overlaps writing the previous one. A failed write is retried (never skipped): offsets
//! only advance with the rows, so nothing is lost and nothing is stored twice, whatever kills the
//! process. Unreadable records are logged, counted and skipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Batch, Store, StoreError, TriageBatch};
use crate::config::Settings;
use crate::kafka::read::LastError;
use crate::kafka::{reader_config, KafkaLayerError, Reader, ReaderContext};
use crate::metrics::Metrics;

/// How the projection is doing, for readiness and metrics.
#[derive(Debug, Default)]
pub struct Status {
    assigned: AtomicBool,
    projected: AtomicU64,
    skipped: AtomicU64,
    failing: AtomicBool,
    /// The Prometheus counters these numbers also go to.
    counters: Option<Counters>,
}

#[derive(Debug)]
struct Counters {
    projected: Counter,
    skipped: Counter,
    write_errors: Counter,
}

impl Status {
    /// A status whose numbers also go to the process's metrics.
    pub fn with_metrics(metrics: &Metrics) -> Status {
        Status {
            counters: Some(Counters {
                projected: metrics.store_projected.clone(),
                skipped: metrics.store_skipped.clone(),
                write_errors: metrics.store_write_errors.clone(),
            }),
            ..Status::default()
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
    /// Stores the batch and the offsets it brings `topic` to, in one transaction.
    fn write(
        &self,
        store: &Store,
        topic: &str,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;
}

impl Feed for Batch {
    fn push_message(&mut self, message: &BorrowedMessage<'_>) {
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        self.push(
            message.partition(),
            message.offset(),
            timestamp,
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
    async fn write(&self, store: &Store, topic: &str) -> Result<(), StoreError> {
        store.write(topic, self).await
    }
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
    async fn write(&self, store: &Store, topic: &str) -> Result<(), StoreError> {
        store.write_triage(topic, self).await
    }
}

/// A started projection.
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
        let topic = settings.topics.alerts.clone();
        Projection::spawn_feed::<Batch>(settings, topic, "store", store, status, stop)
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
        Projection::spawn_feed::<TriageBatch>(settings, topic, "store-triage", store, status, stop)
    }

    fn spawn_feed<B: Feed>(
        settings: Arc<Settings>,
        topic: String,
        role: &'static str,
        store: Store,
        status: Arc<Status>,
        stop: CancellationToken,
    ) -> Result<Projection, StoreError> {
        let consumer: Reader = reader_config(&settings, role)?
            .create_with_context(ReaderContext)
            .map_err(KafkaLayerError::from)?;
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name(format!("{role}-projection"))
            .spawn(move || {
                project::<B>(
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

fn project<B: Feed>(
    settings: &Settings,
    topic: &str,
    consumer: &Reader,
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
    let partitions = loop {
        if stop.is_cancelled() {
            return;
        }
        match assign(consumer, topic, &stored) {
            Ok(partitions) => break partitions,
            Err(e) => {
                tracing::info!(topic, error = %e, "projection waiting for its topic");
                crate::shutdown::sleep_unless_cancelled(stop, Duration::from_secs(1));
            }
        }
    };
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
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                if let Some(text) = last_error.changed(&e) {
                    tracing::warn!(topic, error = %text, "projection consumer error");
                }
            }
        }
        let due = first.is_some_and(|at| at.elapsed() >= batch_wait);
        if !batch.is_empty() && (batch.len() >= max_records || due) {
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
    while let Some(batch) = batches.recv().await {
        let mut attempt = 0u32;
        loop {
            match batch.write(&store, &topic).await {
                Ok(()) => {
                    if status.failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(topic, "projection writes again");
                    }
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

pub(super) fn assign(
    consumer: &Reader,
    topic: &str,
    stored: &BTreeMap<i32, i64>,
) -> Result<Vec<i32>, KafkaLayerError> {
    let partitions = crate::kafka::read::partitions(consumer, topic, Duration::from_secs(5))?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        if let (Some(&next), Ok((_, high))) = (
            stored.get(&p),
            consumer.fetch_watermarks(topic, p, Duration::from_secs(5)),
        ) {
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
    Ok(partitions)
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
