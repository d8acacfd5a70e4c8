//! `user-monitor process`: the Kafka stream processor.
//!
//! One thread owns the consumer, the producer and every assigned partition's state. Each turn:
//!
//! 1. **Collect** a batch: poll until no record is immediately available, the batch is full
//!    (`processing.max_batch_events`) or `processing.max_batch_wait` passed since its first record.
//!    Light load gives small, quick batches; heavy load grows them. Rebalance callbacks run inside
//!    `poll`, when no transaction is open: they only log what changed, and the loop applies it
//!    after `poll` returns (new partitions are paused until restored; revoked ones are dropped, and
//!    so are their records in the batch).
//! 2. **Catch up** on the profiles topic to its end offset (read-your-writes for risk changes).
//! 3. **Process** in one transaction (exactly-once): a response record per input record, a
//!    dead-letter record per rejected one (truncated, and saying so, when it would not fit the
//!    broker's record size limit), the snapshot rounds that are due (the changed users, then the
//!    round's marker), then the input offsets with the consumer's group metadata, then commit.
//!    Under at-least-once: produce the responses, flush, produce the rounds' user records, flush,
//!    their markers, flush, commit offsets; offsets a crashed owner had already answered (found
//!    by the restore) are evaluated for the state but not answered again. What each record
//!    becomes (invalid / wrong partition / out of order / accepted) and which users a round
//!    writes is decided by [`crate::partition`], the same code the restore replays with.
//! 4. Transactional calls follow the client's contract: a retriable error (a broker restart, a
//!    call that timed out "retry call to resume") is retried with the same call; an abortable
//!    one aborts, drops the batch's partitions' state and restores them (snapshot + replay to the
//!    committed offset), which rewinds to the last commit. Fatal (fenced): stop.
//!
//! Restores run on their own threads so other partitions keep flowing; the partition is resumed
//! at the restored offset when its restore arrives.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{Guarantee, Settings};
use crate::domain::response::{truncate_text, AlertRecord, MAX_ERROR_BYTES};
use crate::domain::{Coord, Verdict};
use crate::health::Readiness;
use crate::kafka::profiles::ProfilesFollower;
use crate::kafka::{
    classify, group_member_config, processor_producer_config, ErrorClass, KafkaLayerError,
};
use crate::metrics::{CodeLabels, Metrics, PartitionLabels};
use crate::partition::{Input, PartitionState, Placement};
use crate::rules::Limits;
use crate::snapshot::{self, Restored, SnapshotError};

/// Room kept in a dead-letter record for its key, headers and record overhead.
const DLQ_HEADROOM_BYTES: usize = 16 * 1024;

/// Keys longer than this are not copied to the response and dead-letter records (a user id is
/// at most 19 digits; an abusive key must not make those records too large for the broker).
const MAX_KEY_BYTES: usize = 4 * 1024;

/// librdkafka's default `message.max.bytes`, and the broker's default `max.message.bytes`.
const PRODUCER_DEFAULT_MAX_BYTES: usize = 1_000_000;
const BROKER_DEFAULT_MAX_BYTES: usize = 1_048_588;

/// Test-only fault injection: with `USER_MONITOR_FAULT_ABORT_EVERY=N`, every Nth transaction
/// fails with an abortable error after producing and before committing, as a real abortable
/// error would (the fault suites use it to cross the abort-and-rewind path under load).
const FAULT_ABORT_EVERY_ENV: &str = "USER_MONITOR_FAULT_ABORT_EVERY";

/// What the processor needs from its host.
#[derive(Clone)]
pub struct Deps {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub shutdown: CancellationToken,
    /// The embedded broker's topics are pre-created and cannot be described: skip the admin step.
    pub embedded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Kafka(#[from] KafkaLayerError),
    #[error("fenced: another instance took over transactional id {0:?}; stopping")]
    Fenced(String),
    #[error("fatal kafka error: {0}")]
    Fatal(KafkaError),
    #[error("restore of partition {partition}: {source}")]
    Restore {
        partition: i32,
        source: SnapshotError,
    },
}

impl From<KafkaError> for ProcessorError {
    fn from(e: KafkaError) -> Self {
        ProcessorError::Kafka(KafkaLayerError::Client(e))
    }
}

enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct GroupContext {
    topic: String,
    owner: Arc<Owner>,
}

impl GroupContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// A revoked partition's changed users are made durable here, before the partition is
    /// handed over: its next owner's restore then sees them, and nothing of this owner can land
    /// in the state topic after that restore read it (a late record of an older round would
    /// replace a newer one).
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            self.owner.revoke(&partitions);
            self.owner
                .log
                .lock()
                .expect("rebalance log poisoned")
                .push(RebalanceEvent::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Nothing is fetched for a partition before its state is restored.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::error!(error = %e, "cannot pause newly assigned partitions");
                }
                self.owner
                    .log
                    .lock()
                    .expect("rebalance log poisoned")
                    .push(RebalanceEvent::Assigned(self.partitions(tpl)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// What the processor loop shares with the rebalance callbacks (which run inside `poll`, on the
/// same thread, when no transaction is open): the partitions' states and the means to write
/// their snapshots.
struct Owner {
    partitions: Mutex<HashMap<i32, Partition>>,
    out: Output,
    log: Mutex<Vec<RebalanceEvent>>,
    /// A fatal error met in a callback; stops the loop after `poll`.
    fatal: Mutex<Option<ProcessorError>>,
}

impl Owner {
    fn partitions(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Partition>> {
        self.partitions.lock().expect("partitions poisoned")
    }

    /// Drops revoked partitions' states after snapshotting their changed users (see
    /// [`GroupContext::pre_rebalance`]).
    fn revoke(&self, partitions: &[i32]) {
        let revoked: Vec<(i32, Box<Ready>)> = {
            let mut map = self.partitions();
            partitions
                .iter()
                .filter_map(|p| match map.remove(p) {
                    Some(Partition::Ready(ready)) => Some((*p, ready)),
                    _ => None,
                })
                .collect()
        };
        tracing::info!(
            ?partitions,
            "partitions revoked; flushing and dropping their state"
        );
        if let Err(e) = self.out.flush_revoked(revoked) {
            self.fatal.lock().expect("fatal poisoned").get_or_insert(e);
        }
    }
}

/// The producer side: transactions (or at-least-once flushes) as the client's contract says.
struct Output {
    settings: Arc<Settings>,
    /// Threaded: delivery reports are served in the background, which `abort_transaction`
    /// needs while it waits for outstanding records.
    producer: ThreadedProducer<DeliveryContext>,
    exactly_once: bool,
    shutdown: CancellationToken,
}

/// Counts delivery failures (only at-least-once needs them; transactions report them at commit).
#[derive(Default)]
struct DeliveryContext {
    failures: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "delivery failed");
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Ready {
    /// The partition's users, next offset, changed users and already-answered offsets.
    state: PartitionState,
    last_snapshot: Instant,
}

enum Partition {
    Restoring { generation: u64 },
    Ready(Box<Ready>),
}

struct RestoreDone {
    partition: i32,
    generation: u64,
    result: Result<Restored, SnapshotError>,
}

/// Runs the processor until `deps.shutdown` is cancelled or a fatal error. Blocking.
pub fn run(settings: Settings, deps: Deps) -> Result<(), ProcessorError> {
    let mut processor = Processor::new(settings, deps)?;
    let result = processor.run_loop();
    processor.deps.readiness.set_stopped();
    result
}

struct Processor {
    settings: Arc<Settings>,
    deps: Deps,
    limits: Limits,
    consumer: BaseConsumer<GroupContext>,
    /// The partitions and the producer, shared with the rebalance callbacks.
    owner: Arc<Owner>,
    profiles: ProfilesFollower,
    /// End offsets for the lag gauge, on a client without an open fetch to wait behind.
    offsets: crate::kafka::Reader,
    next_generation: u64,
    restores_tx: mpsc::Sender<RestoreDone>,
    restores_rx: mpsc::Receiver<RestoreDone>,
    last_lag_update: Instant,
    /// Partitions of the events topic: where each user's records belong.
    partition_count: i32,
    /// Largest dead-letter value; larger rejected inputs are truncated.
    dlq_limit: usize,
    /// See [`FAULT_ABORT_EVERY_ENV`].
    fault_abort_every: Option<u64>,
    transactions: u64,
}

impl Processor {
    fn new(settings: Settings, deps: Deps) -> Result<Self, ProcessorError> {
        let topics = if deps.embedded {
            None
        } else {
            crate::kafka::connect::check(
                &settings,
                crate::kafka::connect::Patience::UntilConnected,
            )?;
            let topics = crate::kafka::admin::ensure_topics(&settings)?;
            tracing::info!(partitions = topics.partitions, topic = %settings.topics.events, "topics ready");
            Some(topics)
        };
        let partition_count = topics.map_or(settings.topics.partitions, |t| t.partitions);
        let dlq_limit = dlq_limit(&settings, topics.and_then(|t| t.dlq_max_message_bytes));
        let fault_abort_every = std::env::var(FAULT_ABORT_EVERY_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0);
        if let Some(every) = fault_abort_every {
            tracing::warn!(
                every,
                "fault injection: every Nth transaction fails with an abortable error"
            );
        }
        let exactly_once = settings.processing.guarantee == Guarantee::ExactlyOnce;
        let producer: ThreadedProducer<DeliveryContext> = processor_producer_config(&settings)?
            .create_with_context(DeliveryContext::default())
            .map_err(KafkaLayerError::from)?;
        let settings = Arc::new(settings);
        let out = Output {
            settings: Arc::clone(&settings),
            producer,
            exactly_once,
            shutdown: deps.shutdown.clone(),
        };
        if exactly_once {
            // Fences any zombie with the same transactional id and aborts its open transaction.
            // A restarted broker may still be loading the coordinator, or finishing the
            // predecessor's transaction: retried as any transactional call.
            let timeout = settings.processing.transaction_timeout;
            out.retrying("init", |producer| producer.init_transactions(timeout))
                .map_err(|e| match classify(&e) {
                    ErrorClass::Fatal => ProcessorError::Fenced(settings.transactional_id()),
                    _ => ProcessorError::from(e),
                })?;
        }
        let owner = Arc::new(Owner {
            partitions: Mutex::new(HashMap::new()),
            out,
            log: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
        });
        let context = GroupContext {
            topic: settings.topics.events.clone(),
            owner: Arc::clone(&owner),
        };
        let consumer: BaseConsumer<GroupContext> = group_member_config(&settings)?
            .create_with_context(context)
            .map_err(KafkaLayerError::from)?;
        seed_profiles(&settings)?;
        let profiles = ProfilesFollower::new(&settings, "profiles")?;
        let offsets = crate::kafka::reader(&settings, "lag")?;
        consumer.subscribe(&[&settings.topics.events])?;
        deps.readiness.set_connected(true);
        let (restores_tx, restores_rx) = mpsc::channel();
        tracing::info!(
            group = %settings.kafka.group_id,
            topic = %settings.topics.events,
            guarantee = ?settings.processing.guarantee,
            transactional_id = %settings.transactional_id(),
            "processor started"
        );
        Ok(Processor {
            limits: settings.limits(),
            settings,
            deps,
            consumer,
            owner,
            profiles,
            offsets,
            next_generation: 0,
            restores_tx,
            restores_rx,
            last_lag_update: Instant::now(),
            partition_count,
            dlq_limit,
            fault_abort_every,
            transactions: 0,
        })
    }

    fn run_loop(&mut self) -> Result<(), ProcessorError> {
        while !self.deps.shutdown.is_cancelled() {
            let batch = self.collect()?;
            self.finish_restores()?;
            let batch: Vec<OwnedMessage> = batch.into_iter().filter(|m| self.accepts(m)).collect();
            let due = self.snapshots_due(false);
            if batch.is_empty() && due.is_empty() {
                self.update_lag();
                continue;
            }
            self.commit_batch(&batch, &due)?;
            self.update_lag();
        }
        tracing::info!("shutting down: final snapshot, then leaving the group");
        let due = self.snapshots_due(true);
        if !due.is_empty() {
            if let Err(e) = self.commit_batch(&[], &due) {
                tracing::warn!(error = %e, "final snapshot failed; the next owner replays from the last one");
            }
        }
        self.owner
            .out
            .producer
            .flush(self.settings.processing.shutdown_timeout)?;
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Polls a batch (see the module docs), applying rebalances as they come. Waits up to 100 ms
    /// for a first record; after it, takes only what is already buffered (so a light-load batch
    /// closes at once), up to `max_batch_events` records or `max_batch_wait`.
    fn collect(&mut self) -> Result<Vec<OwnedMessage>, ProcessorError> {
        let max = self.settings.processing.max_batch_events;
        let max_wait = self.settings.processing.max_batch_wait;
        let mut batch = Vec::new();
        let mut first_at: Option<Instant> = None;
        loop {
            let timeout = if first_at.is_none() {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            let polled = self.consumer.poll(timeout).map(|r| r.map(|m| m.detach()));
            self.apply_rebalances();
            if let Some(e) = self.owner.fatal.lock().expect("fatal poisoned").take() {
                return Err(e);
            }
            match polled {
                Some(Ok(message)) => {
                    batch.push(message);
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Fatal => return Err(self.owner.out.fatal_error(e)),
                    _ => tracing::warn!(error = %e, "consumer error"),
                },
                None => return Ok(batch),
            }
            let waited = first_at.is_some_and(|at| at.elapsed() >= max_wait);
            if batch.len() >= max || waited || self.deps.shutdown.is_cancelled() {
                return Ok(batch);
            }
        }
    }

    fn apply_rebalances(&mut self) {
        let events = std::mem::take(&mut *self.owner.log.lock().expect("rebalance log poisoned"));
        for event in events {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned; restoring");
                    self.deps.readiness.set_joined();
                    for partition in partitions {
                        self.start_restore(partition);
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    // Already flushed and dropped by the callback (see `Owner::revoke`).
                    for partition in partitions {
                        self.deps.metrics.consumer_lag.remove(&PartitionLabels {
                            partition: partition.to_string(),
                        });
                    }
                }
            }
        }
        self.publish_readiness();
    }

    fn start_restore(&mut self, partition: i32) {
        self.start_restore_after(partition, Duration::ZERO);
    }

    fn start_restore_after(&mut self, partition: i32, delay: Duration) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.owner
            .partitions()
            .insert(partition, Partition::Restoring { generation });
        let settings = Arc::clone(&self.settings);
        let limits = self.limits;
        let tx = self.restores_tx.clone();
        let placement = Placement {
            partition,
            partitions: self.partition_count,
        };
        let timeout = settings.processing.transaction_timeout * 2 + Duration::from_secs(30);
        std::thread::Builder::new()
            .name(format!("restore-{partition}"))
            .spawn(move || {
                std::thread::sleep(delay);
                let started = Instant::now();
                let dedup = settings.dedup_limits();
                let result = snapshot::restore(&settings, placement, &limits, dedup, timeout);
                if let Ok(r) = &result {
                    tracing::info!(
                        partition,
                        users = r.state.users().len(),
                        snapshot_users = r.snapshot_users,
                        replayed = r.replayed,
                        resume_at = ?r.resume_at,
                        already_answered = r.state.answered_len(),
                        rebuilt = r.rebuilt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "partition restored"
                    );
                }
                let _ = tx.send(RestoreDone {
                    partition,
                    generation,
                    result,
                });
            })
            .expect("spawning a restore thread");
        self.publish_readiness();
    }

    /// Installs finished restores: seek to the restored offset and resume fetching.
    fn finish_restores(&mut self) -> Result<(), ProcessorError> {
        while let Ok(done) = self.restores_rx.try_recv() {
            let current = matches!(self.owner.partitions().get(&done.partition), Some(Partition::Restoring { generation }) if *generation == done.generation);
            if !current {
                continue; // revoked (or restarted) meanwhile
            }
            let restored = match done.result {
                Ok(restored) => restored,
                Err(e) if restore_error_is_fatal(&e) => {
                    return Err(ProcessorError::Restore {
                        partition: done.partition,
                        source: e,
                    })
                }
                Err(e) => {
                    // E.g. a dead instance's transaction still pending on this partition.
                    tracing::warn!(partition = done.partition, error = %e, "restore failed; retrying in 1s");
                    self.start_restore_after(done.partition, Duration::from_secs(1));
                    continue;
                }
            };
            let topic = &self.settings.topics.events;
            let offset = restored.resume_at.map_or(Offset::Beginning, Offset::Offset);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, done.partition, offset)?;
            self.consumer
                .seek_partitions(tpl.clone(), Duration::from_secs(10))?;
            self.consumer.resume(&tpl)?;
            self.owner.partitions().insert(
                done.partition,
                Partition::Ready(Box::new(Ready {
                    state: restored.state,
                    last_snapshot: Instant::now(),
                })),
            );
            self.publish_readiness();
        }
        Ok(())
    }

    /// Only records of restored partitions, at or after the restored position, are processed.
    fn accepts(&self, message: &OwnedMessage) -> bool {
        match self.owner.partitions().get(&message.partition()) {
            Some(Partition::Ready(ready)) => message.offset() >= ready.state.next_offset(),
            _ => false,
        }
    }

    fn publish_readiness(&self) {
        let partitions = self.owner.partitions();
        let restoring = partitions
            .values()
            .filter(|p| matches!(p, Partition::Restoring { .. }))
            .count();
        self.deps
            .readiness
            .set_partitions(partitions.len(), restoring);
    }

    /// Partitions whose changed users should be snapshotted now.
    fn snapshots_due(&self, force: bool) -> Vec<i32> {
        let interval = self.settings.snapshot.interval;
        self.owner
            .partitions()
            .iter()
            .filter_map(|(p, state)| match state {
                Partition::Ready(r)
                    if r.state.has_changes()
                        && (force || r.last_snapshot.elapsed() >= interval) =>
                {
                    Some(*p)
                }
                _ => None,
            })
            .collect()
    }

    /// Processes a batch and commits it with the due snapshots; rewinds on abortable errors.
    fn commit_batch(&mut self, batch: &[OwnedMessage], due: &[i32]) -> Result<(), ProcessorError> {
        let mut touched: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
        touched.extend_from_slice(due);
        touched.sort_unstable();
        touched.dedup();
        let attempt = self.try_commit(batch, due, &touched);
        match attempt {
            Ok(()) => {
                self.deps.metrics.count_transaction("committed");
                Ok(())
            }
            Err(e) => {
                let class = classify(&e);
                self.deps.metrics.count_transaction("aborted");
                if class == ErrorClass::Fatal {
                    return Err(self.owner.out.fatal_error(e));
                }
                tracing::warn!(error = %e, ?class, partitions = ?touched, "batch failed: aborting and rewinding to the last commit");
                if self.owner.out.exactly_once {
                    self.owner.out.abort()?;
                } else {
                    // Nothing of the failed batch may land after the restore below reads the
                    // topics (a late snapshot record of this batch could replace a newer one).
                    self.owner.out.wait_nothing_in_flight();
                }
                // The batch mutated in-memory state: rebuild those partitions from Kafka.
                let mut tpl = TopicPartitionList::new();
                for &p in &touched {
                    tpl.add_partition(&self.settings.topics.events, p);
                }
                self.consumer.pause(&tpl)?;
                for p in touched {
                    let owned = self.owner.partitions().contains_key(&p);
                    if owned {
                        self.start_restore(p);
                    }
                }
                Ok(())
            }
        }
    }

    fn try_commit(
        &mut self,
        batch: &[OwnedMessage],
        due: &[i32],
        touched: &[i32],
    ) -> Result<(), KafkaError> {
        let timeout = self.settings.processing.transaction_timeout;
        let started = Instant::now();
        if let Err(e) = self.profiles.catch_up(timeout) {
            tracing::warn!(error = %e, "profiles not caught up; using the profiles read so far");
        }
        let caught_up = started.elapsed();
        let owner = Arc::clone(&self.owner);
        let out = &owner.out;
        out.producer.context().failures.store(0, Ordering::Relaxed);
        if out.exactly_once {
            out.producer.begin_transaction()?;
        }
        {
            let mut partitions = owner.partitions();
            for message in batch {
                self.process(&mut partitions, message)?;
            }
        }
        if !out.exactly_once && !due.is_empty() {
            // At-least-once: a snapshot covering offset S must never become durable before the
            // responses below S (a restore resumes at S). Different partitions may have different
            // leaders, so flush the responses first; a transaction makes this moot.
            out.flush_delivered(timeout)?;
        }
        let mut rounds = Vec::with_capacity(due.len());
        {
            let mut partitions = owner.partitions();
            for &p in due {
                if let Some(Partition::Ready(ready)) = partitions.get_mut(&p) {
                    let covers =
                        produce_round(&out.producer, &self.settings.topics.state, p, ready)?;
                    rounds.push((p, covers));
                }
            }
        }
        if !out.exactly_once && !rounds.is_empty() {
            // A round's marker says all its user records are durable: only after they are.
            out.flush_delivered(timeout)?;
        }
        for (p, covers) in rounds {
            produce_marker(&out.producer, &self.settings.topics.state, p, covers)?;
        }
        self.transactions += 1;
        if self
            .fault_abort_every
            .is_some_and(|every| self.transactions % every == 0)
        {
            tracing::warn!(
                transaction = self.transactions,
                "fault injection: failing this transaction with an abortable error"
            );
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::Application));
        }
        let mut offsets = TopicPartitionList::new();
        for &p in touched {
            if let Some(Partition::Ready(r)) = owner.partitions().get(&p) {
                offsets.add_partition_offset(
                    &self.settings.topics.events,
                    p,
                    Offset::Offset(r.state.next_offset()),
                )?;
            }
        }
        if out.exactly_once {
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
            let produced = started.elapsed();
            out.retrying("send offsets to the transaction", |producer| {
                producer.send_offsets_to_transaction(&offsets, &metadata, timeout)
            })?;
            let offsets_sent = started.elapsed();
            out.commit_transaction()?;
            tracing::debug!(
                records = batch.len(),
                snapshots = due.len(),
                profiles_ms = caught_up.as_secs_f64() * 1e3,
                produce_ms = (produced - caught_up).as_secs_f64() * 1e3,
                offsets_ms = (offsets_sent - produced).as_secs_f64() * 1e3,
                commit_ms = (started.elapsed() - offsets_sent).as_secs_f64() * 1e3,
                "batch committed"
            );
        } else {
            out.flush_delivered(timeout)?;
            if offsets.count() > 0 {
                self.consumer.commit(&offsets, CommitMode::Sync)?;
            }
        }
        Ok(())
    }

    /// Evaluates one input record and produces its response (and dead-letter record).
    fn process(
        &self,
        partitions: &mut HashMap<i32, Partition>,
        message: &OwnedMessage,
    ) -> Result<(), KafkaError> {
        let partition = message.partition();
        let offset = message.offset();
        let input = message.payload().unwrap_or_default();
        let profiles = &self.profiles;
        let Some(Partition::Ready(ready)) = partitions.get_mut(&partition) else {
            return Ok(());
        };
        let processed = ready.state.process(
            Input {
                offset,
                payload: input,
                key: snapshot::idempotency_key(message),
            },
            |user| profiles.profiles().risk(user.0),
            &self.limits,
        );
        let verdict = processed.verdict;
        let metrics = &self.deps.metrics;
        match &verdict {
            Verdict::Accepted { codes, .. } => {
                metrics.count_event(if codes.is_alert() { "alert" } else { "ok" });
                for code in codes.as_slice() {
                    metrics
                        .alerts
                        .get_or_create(&CodeLabels {
                            code: code.to_string(),
                        })
                        .inc();
                }
            }
            Verdict::Rejected { rejection, .. } => metrics.count_event(rejection.as_str()),
            Verdict::Duplicate { .. } => metrics.count_event("duplicate"),
            Verdict::AlreadyApplied { .. } => {}
        }
        // An offset a crashed owner already answered is not answered again.
        if processed.answer {
            if let Some(record) =
                AlertRecord::answer(Coord::new(partition, offset), &verdict, input)
            {
                let value = record.to_json();
                // Co-partitioned: the response to input partition p goes to alerts partition p
                // (what the key's murmur2 partition is anyway), so a restore finds it there.
                let mut alert = BaseRecord::to(&self.settings.topics.alerts)
                    .partition(partition)
                    .payload(value.as_slice());
                if let Some(key) = message.key().filter(|k| k.len() <= MAX_KEY_BYTES) {
                    alert = alert.key(key);
                }
                send(&self.owner.out.producer, alert)?;
            } else {
                tracing::error!(partition, offset, "an offset already in its user's restored state has no response yet; it cannot be answered again");
            }
        }
        if let Verdict::Rejected {
            rejection, error, ..
        } = &verdict
        {
            let error = truncate_text(error, MAX_ERROR_BYTES);
            let partition_text = partition.to_string();
            let offset_text = offset.to_string();
            let event_id = Coord::new(partition, offset).event_id();
            let mut headers = OwnedHeaders::new()
                .insert(Header {
                    key: "error",
                    value: Some(error),
                })
                .insert(Header {
                    key: "rejection",
                    value: Some(rejection.as_str()),
                })
                .insert(Header {
                    key: "source.topic",
                    value: Some(message.topic()),
                })
                .insert(Header {
                    key: "source.partition",
                    value: Some(&partition_text),
                })
                .insert(Header {
                    key: "source.offset",
                    value: Some(&offset_text),
                })
                .insert(Header {
                    key: "event_id",
                    value: Some(&event_id),
                });
            // A poison record never stalls its partition: a copy too large for the DLQ goes
            // there truncated, saying so.
            let mut payload = input;
            let original_size = input.len().to_string();
            if input.len() > self.dlq_limit {
                payload = &input[..self.dlq_limit];
                headers = headers
                    .insert(Header {
                        key: "truncated",
                        value: Some("true"),
                    })
                    .insert(Header {
                        key: "original.size",
                        value: Some(&original_size),
                    });
            }
            let mut dead = BaseRecord::to(&self.settings.topics.dlq)
                .payload(payload)
                .headers(headers);
            if let Some(key) = message.key().filter(|k| k.len() <= MAX_KEY_BYTES) {
                dead = dead.key(key);
            }
            send(&self.owner.out.producer, dead)?;
        }
        Ok(())
    }

    fn update_lag(&mut self) {
        if self.last_lag_update.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_lag_update = Instant::now();
        // Positions first, so no lock is held while asking the broker.
        let positions: Vec<(i32, i64)> = self
            .owner
            .partitions()
            .iter()
            .filter_map(|(p, state)| match state {
                Partition::Ready(ready) => Some((*p, ready.state.next_offset())),
                Partition::Restoring { .. } => None,
            })
            .collect();
        for (p, next) in positions {
            if let Ok((_, high)) = self.offsets.fetch_watermarks(
                &self.settings.topics.events,
                p,
                Duration::from_millis(500),
            ) {
                self.deps
                    .metrics
                    .consumer_lag
                    .get_or_create(&PartitionLabels {
                        partition: p.to_string(),
                    })
                    .set((high - next).max(0));
            }
        }
    }
}

impl Output {
    /// Snapshots the changed users of revoked partitions in a transaction of their own (no
    /// transaction is open while polling), before the partitions are handed over, so their next
    /// owner replays less and nothing of this owner lands after that owner's restore. A failure
    /// only costs replay time: the next owner restores from the previous round (under
    /// at-least-once, once nothing of this attempt is still in flight).
    fn flush_revoked(&self, mut revoked: Vec<(i32, Box<Ready>)>) -> Result<(), ProcessorError> {
        revoked.retain(|(_, ready)| ready.state.has_changes());
        if revoked.is_empty() {
            return Ok(());
        }
        let timeout = self.settings.processing.transaction_timeout;
        let topic = &self.settings.topics.state;
        let result = (|| {
            self.producer.context().failures.store(0, Ordering::Relaxed);
            if self.exactly_once {
                self.producer.begin_transaction()?;
            }
            let mut rounds = Vec::with_capacity(revoked.len());
            for (partition, ready) in &mut revoked {
                rounds.push((
                    *partition,
                    produce_round(&self.producer, topic, *partition, ready)?,
                ));
            }
            if !self.exactly_once {
                self.flush_delivered(timeout)?;
            }
            for (partition, covers) in rounds {
                produce_marker(&self.producer, topic, partition, covers)?;
            }
            if self.exactly_once {
                self.commit_transaction()
            } else {
                self.flush_delivered(timeout)
            }
        })();
        let partitions: Vec<i32> = revoked.iter().map(|(p, _)| *p).collect();
        let e = match result {
            Ok(()) => {
                tracing::info!(?partitions, "revoked partitions flushed: snapshots written");
                return Ok(());
            }
            Err(e) => e,
        };
        tracing::warn!(?partitions, error = %e, "could not flush revoked partitions; their next owner replays from the previous snapshot");
        if classify(&e) == ErrorClass::Fatal {
            // Fenced (or otherwise unusable): stop at the next step of the loop.
            return Err(self.fatal_error(e));
        }
        if self.exactly_once {
            self.abort().inspect_err(|e| {
                tracing::error!(error = %e, "abort after a failed flush of revoked partitions failed");
            })
        } else {
            self.wait_nothing_in_flight();
            Ok(())
        }
    }

    /// At-least-once: waits until everything produced so far is acknowledged, and fails if any
    /// record was not (the batch is then rewound and produced again).
    fn flush_delivered(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)?;
        if self.producer.context().failures.load(Ordering::Relaxed) > 0 {
            return Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        Ok(())
    }

    /// At-least-once, after a failure: waits until no record is in flight any more (each was
    /// delivered or failed for good, at the latest after the producer's `message.timeout.ms`),
    /// so none can land after the restore that follows. Stops waiting at shutdown.
    fn wait_nothing_in_flight(&self) {
        let started = Instant::now();
        while self.producer.in_flight_count() > 0 {
            if self.shutdown.is_cancelled()
                && started.elapsed() > self.settings.processing.shutdown_timeout
            {
                tracing::warn!(
                    in_flight = self.producer.in_flight_count(),
                    "shutting down with records still in flight"
                );
                return;
            }
            let _ = self.producer.flush(Duration::from_secs(1));
        }
    }

    /// The error a fatal producer error stops the instance with: fencing is named as such.
    fn fatal_error(&self, e: KafkaError) -> ProcessorError {
        let fenced = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
                    | RDKafkaErrorCode::FencedInstanceId
            )
        ) || matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
        if fenced {
            ProcessorError::Fenced(self.settings.transactional_id())
        } else {
            ProcessorError::Fatal(e)
        }
    }

    /// Commits the open transaction, following the client's contract: a retriable error (e.g.
    /// the call timed out while the broker restarts: "retry call to resume") is retried with the
    /// same call, never answered with an abort (which the client refuses while the commit is in
    /// progress); an abortable error is returned for the caller to abort and rewind.
    fn commit_transaction(&self) -> Result<(), KafkaError> {
        let timeout = self.settings.processing.transaction_timeout;
        self.retrying("commit", |producer| producer.commit_transaction(timeout))
    }

    /// Runs a transactional call until it succeeds or fails with an error that is not
    /// retriable. Retries go on while the brokers are away (an outage shorter than the
    /// transaction timeout is ridden out; a longer one ends in an abortable error from the
    /// broker), and stop `shutdown_timeout` after a shutdown was requested.
    fn retrying(
        &self,
        what: &str,
        mut call: impl FnMut(&ThreadedProducer<DeliveryContext>) -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        let mut attempt = 0u32;
        let mut shutdown_seen: Option<Instant> = None;
        loop {
            let e = match call(&self.producer) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Retriable by the client's word, or a broker still recovering (seen from
            // `init_transactions` right after a broker restart).
            let retriable = matches!(&e, KafkaError::Transaction(t) if t.is_retriable()
            || (!t.is_fatal() && !t.txn_requires_abort() && matches!(
                t.code(),
                RDKafkaErrorCode::ConcurrentTransactions
                    | RDKafkaErrorCode::CoordinatorLoadInProgress
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown
            )));
            if self.shutdown.is_cancelled() {
                let since = *shutdown_seen.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.settings.processing.shutdown_timeout {
                    return Err(e);
                }
            }
            if !retriable {
                return Err(e);
            }
            attempt += 1;
            tracing::warn!(attempt, error = %e, "transaction {what} did not finish; retrying the same call");
            std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))));
        }
    }

    /// Aborts the open transaction, retrying it as the client's contract says (see
    /// [`Output::retrying`]): a transaction left open would block every later one. A fatal
    /// error stops the instance (its restart, with the same transactional id, fences and aborts
    /// whatever is left).
    fn abort(&self) -> Result<(), ProcessorError> {
        let timeout = self.settings.processing.transaction_timeout;
        self.retrying("abort", |producer| producer.abort_transaction(timeout))
            .map_err(|e| match classify(&e) {
                ErrorClass::Fatal => self.fatal_error(e),
                _ => ProcessorError::Fatal(e),
            })
    }
}

/// Writes the snapshot records of a partition's changed users, all covering its next offset,
/// and returns that offset: the round's marker (see [`produce_marker`]) follows once they are
/// durable.
fn produce_round<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    ready: &mut Ready,
) -> Result<i64, KafkaError> {
    let round = ready.state.take_round();
    let mut key = itoa::Buffer::new();
    for user in round.users {
        let value = snapshot::encode(round.covers, user.state, user.keys);
        let user_id = user.user_id;
        let record = BaseRecord::to(topic)
            .partition(partition)
            .key(key.format(user_id).as_bytes())
            .payload(value.as_slice());
        send(producer, record)?;
    }
    ready.last_snapshot = Instant::now();
    Ok(round.covers)
}

/// Writes the marker of a complete snapshot round: the partition's state is its users' latest
/// records at `covers` (see [`crate::snapshot`]).
fn produce_marker<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    covers: i64,
) -> Result<(), KafkaError> {
    let value = snapshot::encode_marker(covers);
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(snapshot::MARKER_KEY)
        .payload(value.as_slice());
    send(producer, record)
}

/// Publishes `profiles.seed_file`, when set, to the profiles topic before the first batch.
fn seed_profiles(settings: &Settings) -> Result<(), ProcessorError> {
    let path = &settings.profiles.seed_file;
    if path.is_empty() {
        return Ok(());
    }
    let file = std::fs::File::open(path).map_err(|e| KafkaLayerError::Topic {
        topic: settings.topics.profiles.clone(),
        reason: format!("cannot open profiles.seed_file {path:?}: {e}"),
    })?;
    let lines =
        crate::profiles::Profiles::read_jsonl(std::io::BufReader::new(file)).map_err(|e| {
            KafkaLayerError::Topic {
                topic: settings.topics.profiles.clone(),
                reason: format!("profiles.seed_file {path:?}: {e}"),
            }
        })?;
    let published = crate::kafka::profiles::publish(settings, &lines)?;
    tracing::info!(published, file = %path, "seeded profiles");
    Ok(())
}

/// Only an authorization or fencing problem stops the processor; anything else is retried.
fn restore_error_is_fatal(error: &SnapshotError) -> bool {
    match error {
        SnapshotError::Client(e) | SnapshotError::Kafka(KafkaLayerError::Client(e)) => {
            classify(e) == ErrorClass::Fatal
        }
        SnapshotError::Kafka(KafkaLayerError::NoBootstrapServers) => true,
        _ => false,
    }
}

/// Sends a record, waiting for room in the producer queue when it is full.
fn send<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The largest dead-letter value: `processing.dlq_max_record_bytes`, or what both the DLQ topic
/// and the producer accept, less room for the key and headers.
fn dlq_limit(settings: &Settings, topic_max: Option<usize>) -> usize {
    if settings.processing.dlq_max_record_bytes > 0 {
        return settings.processing.dlq_max_record_bytes;
    }
    let producer_max = settings
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(PRODUCER_DEFAULT_MAX_BYTES);
    let max = producer_max.min(topic_max.unwrap_or(BROKER_DEFAULT_MAX_BYTES));
    max.saturating_sub(DLQ_HEADROOM_BYTES).max(1024)
}
