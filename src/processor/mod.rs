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
//!    committed offset), which rewinds to the last commit. A fence after nothing committed for
//!    `processing.transaction_timeout` (the coordinator aborted a transaction that outlived an
//!    outage) re-initialises everything in place, as a restart would ([`run`]); any other fence
//!    is another instance with the same transactional id: stop.
//!
//! Restores run on their own threads so other partitions keep flowing; the partition is resumed
//! at the restored offset when its restore arrives.
//!
//! Owners: [`Processor`] here keeps only the turn of the loop (collect → process → commit);
//! [`partitions`] owns the assigned partitions (restoring or live, rebalances, rewinds, due
//! rounds, readiness); [`output`] the producer and its transactional contract, and what a
//! verdict becomes; [`sources`] the profiles and rule sets a batch is judged by; [`startup`]
//! what the host prepares before the first turn.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{Producer, ThreadedProducer};
use tokio_util::sync::CancellationToken;

use crate::config::{Guarantee, Settings};
use crate::health::Readiness;
use crate::kafka::{
    classify, group_member_config, processor_producer_config, ErrorClass, KafkaLayerError,
};
use crate::metrics::Metrics;
use crate::partition::{Input, Sets};
use crate::rule_set::Bounds;
use crate::snapshot::{self, SnapshotError};

mod faults;
mod output;
mod partitions;
mod sources;
mod startup;

use faults::Faults;
use output::{produce_marker, produce_round, DeliveryContext, Output};
use partitions::{GroupConsumer, Partition, Partitions};
use sources::{CaughtUp, Judging, Sources};
pub use startup::{prepare, Startup};

/// What the processor needs from its host.
#[derive(Clone)]
pub struct Deps {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Kafka(#[from] KafkaLayerError),
    #[error("fenced: another instance took over transactional id {0:?}; stopping")]
    Fenced(String),
    /// The producer cannot go on, but no other instance took over: the coordinator aborted a
    /// transaction that outlived `processing.transaction_timeout` (the cluster was away), or a
    /// fatal transactional error that names no other instance. Re-initialised in place by
    /// [`run`], never an exit.
    #[error("the producer of {transactional_id:?} cannot go on: {cause}")]
    Reinitialise {
        transactional_id: String,
        cause: String,
    },
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
/// `startup` is [`prepare`]'s.
///
/// A producer that cannot go on without another instance having taken over
/// ([`ProcessorError::Reinitialise`]: a transaction the coordinator aborted after an outage, a
/// fatal transactional error naming nobody) is recovered from as a restart would: the consumer, the producer and the partitions' state are
/// dropped and made again (a new producer epoch, restores to the last commit), in this process.
pub fn run(settings: Settings, startup: Startup, deps: Deps) -> Result<(), ProcessorError> {
    let readiness = Arc::clone(&deps.readiness);
    let result = loop {
        let turned = Processor::new(settings.clone(), startup.clone(), deps.clone())
            .and_then(|mut p| p.run_loop());
        match turned {
            Err(ProcessorError::Reinitialise {
                transactional_id,
                cause,
            }) if !deps.shutdown.is_cancelled() => {
                deps.metrics.producer_reinits.inc();
                readiness.set_connected(false);
                tracing::warn!(
                    %transactional_id,
                    %cause,
                    "re-initialising the producer and restoring the partitions from the last commit, as a restart would"
                );
            }
            // Shutting down, there is nothing to re-initialise for: the aborted transaction
            // committed nothing, and the next owner restores from the last commit.
            Err(ProcessorError::Reinitialise {
                transactional_id,
                cause,
            }) => {
                tracing::warn!(
                    %transactional_id,
                    %cause,
                    "shutting down with the producer unusable (the cluster was away longer than processing.transaction_timeout): nothing uncommitted is kept; the next owner restores from the last commit"
                );
                break Ok(());
            }
            other => break other,
        }
    };
    readiness.set_stopped();
    result
}

struct Processor {
    settings: Arc<Settings>,
    deps: Deps,
    /// What a rule set may ask of the state (`[state]`).
    bounds: Bounds,
    consumer: GroupConsumer,
    partitions: Partitions,
    /// Shared with the rebalance callbacks (which flush revoked partitions).
    out: Arc<Output>,
    /// The profiles and the rule sets' versions, which a batch is judged by once caught up.
    sources: Sources,
    lag: Lag,
    faults: Faults,
}

impl Processor {
    fn new(settings: Settings, startup: Startup, deps: Deps) -> Result<Self, ProcessorError> {
        let exactly_once = settings.processing.guarantee == Guarantee::ExactlyOnce;
        let producer: ThreadedProducer<DeliveryContext> = processor_producer_config(&settings)?
            .create_with_context(DeliveryContext::default())
            .map_err(KafkaLayerError::from)?;
        let settings = Arc::new(settings);
        let out = Arc::new(Output {
            settings: Arc::clone(&settings),
            producer,
            exactly_once,
            shutdown: deps.shutdown.clone(),
            dlq_limit: startup.dlq_limit,
            last_commit: std::sync::Mutex::new(Instant::now()),
            shutdown_seen: std::sync::OnceLock::new(),
        });
        if exactly_once {
            out.init()?;
        }
        let (partitions, context) = Partitions::new(
            Arc::clone(&settings),
            Arc::clone(&out),
            Arc::clone(&deps.readiness),
            Arc::clone(&deps.metrics),
            startup.partition_count,
        );
        let consumer: GroupConsumer = group_member_config(&settings)?
            .create_with_context(context)
            .map_err(KafkaLayerError::from)?;
        let sources = Sources::new(&settings, startup.timeline)?;
        let lag = Lag::new(&settings)?;
        consumer.subscribe(&[&settings.topics.events])?;
        deps.readiness.set_connected(true);
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
            partitions,
            out,
            sources,
            lag,
            faults: Faults::from_env(),
        })
    }

    fn run_loop(&mut self) -> Result<(), ProcessorError> {
        while !self.deps.shutdown.is_cancelled() {
            let batch = self.collect()?;
            self.partitions
                .finish_restores(&self.consumer, &self.sources)?;
            let batch: Vec<OwnedMessage> = batch
                .into_iter()
                .filter(|m| self.partitions.accepts(m))
                .collect();
            let due = self.partitions.snapshots_due(false);
            if !batch.is_empty() || !due.is_empty() {
                self.commit_batch(&batch, &due)?;
            }
            self.lag.update(&self.partitions, &self.deps.metrics);
        }
        tracing::info!("shutting down: final snapshot, then leaving the group");
        let due = self.partitions.snapshots_due(true);
        if !due.is_empty() {
            if let Err(e) = self.commit_batch(&[], &due) {
                tracing::warn!(error = %e, "final snapshot skipped; the next owner replays from the last one");
            }
        }
        // What is still in flight belongs to no committed transaction (exactly-once) or is
        // answered again by the next owner (at-least-once): waited for within the budget, never
        // a reason to fail the shutdown.
        let flush = self.out.call_timeout().max(Duration::from_millis(100));
        if let Err(e) = self.out.producer.flush(flush) {
            tracing::warn!(error = %e, in_flight = self.out.producer.in_flight_count(), "records still in flight at the shutdown deadline skipped (the cluster is away?)");
        }
        self.consumer.unsubscribe();
        tracing::info!("processor stopped its work; leaving the group");
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
            self.partitions.apply_rebalances(&self.sources);
            if let Some(e) = self.partitions.take_fatal() {
                return Err(e);
            }
            match polled {
                Some(Ok(message)) => {
                    batch.push(message);
                    first_at.get_or_insert_with(Instant::now);
                }
                Some(Err(e)) => match classify(&e) {
                    ErrorClass::Fatal => return Err(self.out.fatal_error(e)),
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
        let mut touched = partitions_of(batch);
        touched.extend_from_slice(due);
        touched.sort_unstable();
        touched.dedup();
        let Err(e) = self.try_commit(judgeable, due, &touched, started) else {
            self.deps.metrics.count_transaction("committed");
            observe_event_response(&self.deps.metrics, batch);
            return Ok(());
        };
        let class = classify(&e);
        self.deps.metrics.count_transaction("aborted");
        if class == ErrorClass::Fatal {
            return Err(self.out.fatal_error(e));
        }
        tracing::warn!(error = %e, ?class, partitions = ?touched, "batch failed: aborting and rewinding to the last commit");
        if self.out.exactly_once {
            match self.out.abort() {
                Ok(()) => {}
                // Shutting down while the cluster is away: the coordinator aborts the transaction
                // after its timeout; the rewind below keeps the batch out of every snapshot.
                Err(e) if self.deps.shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, "shutting down: the abort did not finish (the coordinator aborts the transaction after its timeout)");
                }
                Err(e) => return Err(e),
            }
        } else {
            // Nothing of the failed batch may land after the restore below reads the topics (a
            // late snapshot record of this batch could replace a newer one).
            self.out.wait_nothing_in_flight();
        }
        // The batch mutated in-memory state: rebuild those partitions from Kafka.
        self.partitions
            .rewind(&self.consumer, &touched, &self.sources)
    }

    /// A batch whose sources could not be read to their end is not judged: nothing of it
    /// touched any state, so its partitions are read again from their next unanswered offset,
    /// and it is judged once the sources are caught up.
    fn hold_back(
        &mut self,
        batch: &[OwnedMessage],
        error: &KafkaLayerError,
    ) -> Result<(), ProcessorError> {
        self.deps.metrics.batches_held_back.inc();
        let partitions = partitions_of(batch);
        tracing::warn!(
            %error,
            records = batch.len(),
            ?partitions,
            "profiles and rules not read to their end: holding the batch back (read again, and judged once they are)"
        );
        self.partitions
            .read_again(&self.consumer, &partitions, &self.sources)?;
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
        let caught_up = started.elapsed();
        let records = judgeable.as_ref().map_or(0, |j| j.records.len());
        let out = Arc::clone(&self.out);
        out.producer.context().failures.store(0, Ordering::Relaxed);
        if out.exactly_once {
            out.producer.begin_transaction()?;
        }
        if let Some(Judgeable { records, proof }) = judgeable {
            let judging = self.sources.judging(proof);
            let mut partitions = self.partitions.lock();
            for message in records {
                let Some(Partition::Live(ready)) = partitions.get_mut(&message.partition()) else {
                    continue;
                };
                self.process(ready, &judging, message)?;
            }
        }
        if !out.exactly_once && !due.is_empty() {
            // At-least-once: a snapshot covering offset S must never become durable before the
            // responses below S (a restore resumes at S). Different partitions may have different
            // leaders, so flush the responses first; a transaction makes this moot.
            out.flush_delivered(out.call_timeout())?;
        }
        let mut rounds = Vec::with_capacity(due.len());
        {
            let mut partitions = self.partitions.lock();
            for &p in due {
                if let Some(Partition::Live(ready)) = partitions.get_mut(&p) {
                    let covers =
                        produce_round(&out.producer, &self.settings.topics.state, p, ready)?;
                    rounds.push((p, covers));
                }
            }
        }
        if !out.exactly_once && !rounds.is_empty() {
            // A round's marker says all its user records are durable: only after they are.
            out.flush_delivered(out.call_timeout())?;
        }
        for (p, covers) in rounds {
            produce_marker(&out.producer, &self.settings.topics.state, p, covers)?;
        }
        if self.faults.fail_this_transaction() {
            return Err(crate::kafka::injected_failure());
        }
        let offsets = self.partitions.next_offsets(touched)?;
        // Per-batch timings (`debug`): what `make bench-latency` breaks an answer's time into.
        let produced = started.elapsed();
        if out.exactly_once {
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or_else(crate::kafka::no_group_metadata)?;
            out.retrying("send offsets to the transaction", |producer| {
                producer.send_offsets_to_transaction(&offsets, &metadata, out.call_timeout())
            })?;
        } else {
            out.flush_delivered(out.call_timeout())?;
        }
        let settled = started.elapsed();
        if out.exactly_once {
            out.commit_transaction()?;
        } else if offsets.count() > 0 {
            // A synchronous commit waits for the coordinator as long as it takes; shutting down
            // (perhaps during an outage), at-least-once settles for asking: an offset that does
            // not land is answered again by the next owner.
            let mode = if self.deps.shutdown.is_cancelled() {
                CommitMode::Async
            } else {
                CommitMode::Sync
            };
            self.consumer.commit(&offsets, mode)?;
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

    /// Judges one input record of a live partition by the sets and the risk level in force when
    /// it was appended (CONTRACT §4 and §10: exact at a swap or a risk change, and on any replay
    /// of it), and writes what it becomes.
    fn process(
        &self,
        ready: &mut partitions::LivePartition,
        judging: &Judging<'_>,
        message: &OwnedMessage,
    ) -> Result<(), KafkaError> {
        let appended = message.timestamp().to_millis().unwrap_or(i64::MAX);
        let (active, shadow) = judging.sets_at(appended);
        let processed = ready.state.process(
            Input {
                offset: message.offset(),
                payload: message.payload().unwrap_or_default(),
                key: snapshot::idempotency_key(message),
            },
            |user| judging.risk_at(user, appended),
            Sets {
                active,
                shadow,
                bounds: &self.bounds,
                explain: true,
            },
        );
        self.deps.metrics.count_verdict(&processed.verdict);
        self.out
            .answer(message, &processed, (active, shadow), &self.deps.metrics)
    }
}

/// The partitions a batch's records come from, each once, in order.
fn partitions_of(batch: &[OwnedMessage]) -> Vec<i32> {
    let mut partitions: Vec<i32> = batch.iter().map(|m| m.partition()).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// The records of a batch with the proof that they may be judged.
struct Judgeable<'a> {
    records: &'a [OwnedMessage],
    proof: CaughtUp,
}

/// The consumer lag gauge, updated every 5 s from the partitions' positions.
struct Lag {
    /// End offsets, on a client without an open fetch to wait behind.
    offsets: crate::kafka::Reader,
    topic: String,
    last_update: Instant,
}

impl Lag {
    fn new(settings: &Settings) -> Result<Lag, KafkaLayerError> {
        Ok(Lag {
            offsets: crate::kafka::reader(settings, "lag")?,
            topic: settings.topics.events.clone(),
            last_update: Instant::now(),
        })
    }

    fn update(&mut self, partitions: &Partitions, metrics: &Metrics) {
        if self.last_update.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.last_update = Instant::now();
        // Positions first, so no lock is held while asking the broker.
        for (p, next) in partitions.positions() {
            if let Ok((_, high)) =
                self.offsets
                    .fetch_watermarks(&self.topic, p, Duration::from_millis(500))
            {
                metrics.set_lag(p, (high - next).max(0));
            }
        }
    }
}

/// Each answered record's time from its timestamp to now (its batch just committed).
fn observe_event_response(metrics: &crate::metrics::Metrics, batch: &[OwnedMessage]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for message in batch {
        if let Some(at) = message.timestamp().to_millis() {
            metrics
                .event_response
                .observe((now - at).max(0) as f64 / 1000.0);
        }
    }
}
