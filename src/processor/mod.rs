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
//! 2. **Catch up** on the profiles and rules topics to their end offsets (read-your-writes for
//!    risk changes and rule sets). Each record is judged by the rule set whose version was
//!    appended at or before the record itself ([`crate::rule_set::timeline`]), at the risk level
//!    in force then, and the shadow set's disagreements go to the shadow topic in the same
//!    transaction. A batch is never judged short of those end offsets ([`sources`]): when the
//!    catch-up fails (a broker restarting), the batch is held back and read again.
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
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{Guarantee, Settings};
use crate::health::Readiness;
use crate::kafka::{
    classify, group_member_config, processor_producer_config, ErrorClass, KafkaLayerError,
};
use crate::metrics::{Metrics, PartitionLabels};
use crate::rule_set::timeline::Timeline;
use crate::rule_set::Bounds;
use crate::snapshot::SnapshotError;

mod output;
mod partitions;
mod sources;

use output::{dlq_limit, produce_marker, produce_round, DeliveryContext, Output};
use partitions::{GroupContext, Owner, Partition, RestoreDone};
use sources::{CaughtUp, Sources};

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
    #[error("rule sets: {0}")]
    Rules(crate::config::ConfigError),
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
    /// What a rule set may ask of the state (`[state]`).
    bounds: Bounds,
    consumer: BaseConsumer<GroupContext>,
    /// The partitions and the producer, shared with the rebalance callbacks.
    owner: Arc<Owner>,
    /// The profiles and the rule sets' versions, which a batch is judged by once caught up.
    sources: Sources,
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
            let topics = ensure_topics_patiently(&settings)?;
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
        // Validated with the configuration; read again here, where a file changed since says so.
        let (active, shadow) = settings.rule_sets().map_err(ProcessorError::Rules)?;
        tracing::info!(
            active = %active.version,
            shadow = shadow.as_ref().map(|s| s.version.as_str()),
            "configured rule sets (until one is published to the rules topic)"
        );
        let sources = Sources::new(&settings, Timeline::new(active, shadow))?;
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
            bounds: settings.rule_bounds(),
            settings,
            deps,
            consumer,
            owner,
            sources,
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

    /// Processes a batch and commits it with the due snapshots; rewinds on abortable errors.
    /// A batch whose sources cannot be caught up on is held back instead (see [`sources`]).
    fn commit_batch(&mut self, batch: &[OwnedMessage], due: &[i32]) -> Result<(), ProcessorError> {
        let started = Instant::now();
        let judgeable = if batch.is_empty() {
            None
        } else {
            match self.sources.catch_up(&self.deps.metrics) {
                Ok(proof) => Some(Judgeable {
                    records: batch,
                    proof,
                }),
                Err(KafkaLayerError::Client(e)) if classify(&e) == ErrorClass::Fatal => {
                    return Err(ProcessorError::Kafka(KafkaLayerError::Client(e)));
                }
                Err(e) => return self.hold_back(batch, &e),
            }
        };
        let mut touched: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
        touched.extend_from_slice(due);
        touched.sort_unstable();
        touched.dedup();
        let attempt = self.try_commit(judgeable, due, &touched, started);
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
                self.rewind_by_restore(&touched)
            }
        }
    }

    /// Pauses `partitions` and rebuilds their state from Kafka (snapshot + replay to the
    /// committed offset): the rewind after a failed transaction.
    fn rewind_by_restore(&mut self, partitions: &[i32]) -> Result<(), ProcessorError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.settings.topics.events, p);
        }
        self.consumer.pause(&tpl)?;
        for &p in partitions {
            let owned = self.owner.partitions().contains_key(&p);
            if owned {
                self.start_restore(p);
            }
        }
        Ok(())
    }

    /// A batch whose sources could not be read to their end is not judged: nothing of it
    /// touched any state, so its partitions are sought back to their next unanswered offset and
    /// it is read again, and judged once the sources are caught up. Where the seek fails, the
    /// partition is rewound by a restore instead.
    fn hold_back(
        &mut self,
        batch: &[OwnedMessage],
        error: &KafkaLayerError,
    ) -> Result<(), ProcessorError> {
        self.deps.metrics.batches_held_back.inc();
        let mut partitions: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        tracing::warn!(
            %error,
            records = batch.len(),
            ?partitions,
            "profiles and rules not read to their end: holding the batch back (read again, and judged once they are)"
        );
        let topic = &self.settings.topics.events;
        let mut tpl = TopicPartitionList::new();
        for (&p, state) in self.owner.partitions().iter() {
            if let (true, Partition::Ready(ready)) = (partitions.contains(&p), state) {
                tpl.add_partition_offset(topic, p, Offset::Offset(ready.state.next_offset()))?;
            }
        }
        let sought: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let failed: Vec<i32> = match self.consumer.seek_partitions(tpl, Duration::from_secs(10)) {
            Ok(result) => result
                .elements()
                .iter()
                .filter(|e| e.error().is_err())
                .map(|e| e.partition())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot seek back a held-back batch; restoring its partitions");
                sought
            }
        };
        if !failed.is_empty() {
            self.rewind_by_restore(&failed)?;
        }
        // The next attempt comes after the next poll; not in a tight loop.
        std::thread::sleep(Duration::from_millis(100));
        Ok(())
    }

    fn try_commit(
        &mut self,
        judgeable: Option<Judgeable<'_>>,
        due: &[i32],
        touched: &[i32],
        started: Instant,
    ) -> Result<(), KafkaError> {
        let timeout = self.settings.processing.transaction_timeout;
        let caught_up = started.elapsed();
        let records = judgeable.as_ref().map_or(0, |j| j.records.len());
        let owner = Arc::clone(&self.owner);
        let out = &owner.out;
        out.producer.context().failures.store(0, Ordering::Relaxed);
        if out.exactly_once {
            out.producer.begin_transaction()?;
        }
        if let Some(Judgeable { records, proof }) = judgeable {
            let judging = self.sources.judging(proof);
            let mut partitions = owner.partitions();
            for message in records {
                self.process(&mut partitions, &judging, message)?;
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
        // Per-batch timings (`debug`): what `make bench-latency` breaks an answer's time into.
        let produced = started.elapsed();
        if out.exactly_once {
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::ConsumerCommit(RDKafkaErrorCode::State))?;
            out.retrying("send offsets to the transaction", |producer| {
                producer.send_offsets_to_transaction(&offsets, &metadata, timeout)
            })?;
        } else {
            out.flush_delivered(timeout)?;
        }
        let settled = started.elapsed();
        if out.exactly_once {
            out.commit_transaction()?;
        } else if offsets.count() > 0 {
            self.consumer.commit(&offsets, CommitMode::Sync)?;
        }
        tracing::debug!(
            records,
            snapshots = due.len(),
            profiles_ms = caught_up.as_secs_f64() * 1e3,
            produce_ms = (produced - caught_up).as_secs_f64() * 1e3,
            // Exactly-once: offsets sent to the transaction; at-least-once: the flush.
            offsets_ms = (settled - produced).as_secs_f64() * 1e3,
            // The transaction's commit, or the offsets' commit.
            commit_ms = (started.elapsed() - settled).as_secs_f64() * 1e3,
            "batch committed"
        );
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

/// The records of a batch with the proof that they may be judged.
struct Judgeable<'a> {
    records: &'a [OwnedMessage],
    proof: CaughtUp,
}

/// Creates and validates the topics, riding out a broker that fails between the connectivity
/// check and the admin requests (a restart): transient errors are retried for up to
/// `kafka.connect_timeout`; anything else (a misconfigured topic, refused access) stops at once.
fn ensure_topics_patiently(
    settings: &Settings,
) -> Result<crate::kafka::admin::Topics, KafkaLayerError> {
    let started = Instant::now();
    loop {
        match crate::kafka::admin::ensure_topics(settings) {
            Err(KafkaLayerError::Client(e))
                if classify(&e) == ErrorClass::Retryable
                    && started.elapsed() < settings.kafka.connect_timeout =>
            {
                tracing::warn!(error = %e, "topics not ready yet (the broker is restarting?); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(KafkaLayerError::Timeout(_))
                if started.elapsed() < settings.kafka.connect_timeout =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Publishes `profiles.seed_file`, when set, to the profiles topic before the first batch.
fn seed_profiles(settings: &Settings) -> Result<(), ProcessorError> {
    let path = &settings.profiles.seed_file;
    if path.is_empty() {
        return Ok(());
    }
    let lines = crate::profiles::Profiles::read_file(path).map_err(|e| KafkaLayerError::Topic {
        topic: settings.topics.profiles.clone(),
        reason: format!("profiles.seed_file: {e}"),
    })?;
    let published = crate::kafka::profiles::publish(settings, &lines)?;
    tracing::info!(published, file = %path, "seeded profiles");
    Ok(())
}
