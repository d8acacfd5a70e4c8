//! The partitions a processor owns ([`Partitions`]): each one restoring or live, the restores in
//! flight and their generations, the rebalance callbacks that hand partitions over, rewinds, due
//! snapshot rounds and readiness. Rebalance events go to it and it answers.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::output::Output;
use super::sources::Sources;
use super::ProcessorError;
use crate::config::Settings;
use crate::health::Readiness;
use crate::kafka::{classify, ErrorClass, KafkaLayerError};
use crate::metrics::Metrics;
use crate::partition::{PartitionState, Placement};
use crate::rule_set::Bounds;
use crate::snapshot::{self, Restored, SnapshotError};

/// The group member's consumer, whose rebalance callbacks reach the partitions.
pub(super) type GroupConsumer = BaseConsumer<GroupContext>;

enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The consumer's context: the rebalance callbacks.
pub(super) struct GroupContext {
    topic: String,
    shared: Arc<Shared>,
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
            self.shared.revoke(&partitions);
            self.shared.log(RebalanceEvent::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Nothing is fetched for a partition before its state is restored.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::error!(error = %e, "cannot pause newly assigned partitions");
                }
                self.shared
                    .log(RebalanceEvent::Assigned(self.partitions(tpl)));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// What the processor loop shares with the rebalance callbacks (which run inside `poll`, on the
/// same thread, when no transaction is open): the partitions' states and the means to write
/// their snapshots.
struct Shared {
    map: Mutex<HashMap<i32, Partition>>,
    out: Arc<Output>,
    log: Mutex<Vec<RebalanceEvent>>,
    /// A fatal error met in a callback; stops the loop after `poll`.
    fatal: Mutex<Option<ProcessorError>>,
}

impl Shared {
    fn map(&self) -> MutexGuard<'_, HashMap<i32, Partition>> {
        self.map.lock().expect("partitions poisoned")
    }

    fn log(&self, event: RebalanceEvent) {
        self.log.lock().expect("rebalance log poisoned").push(event);
    }

    /// Drops revoked partitions' states after snapshotting their changed users (see
    /// [`GroupContext::pre_rebalance`]).
    fn revoke(&self, partitions: &[i32]) {
        let revoked: Vec<(i32, Box<LivePartition>)> = {
            let mut map = self.map();
            partitions
                .iter()
                .filter_map(|p| match map.remove(p) {
                    Some(Partition::Live(ready)) => Some((*p, ready)),
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

/// A partition whose state is restored: its events are processed.
pub(super) struct LivePartition {
    /// The partition's users, next offset, changed users and already-answered offsets.
    pub(super) state: PartitionState,
    pub(super) last_snapshot: Instant,
}

pub(super) enum Partition {
    Restoring { generation: u64 },
    Live(Box<LivePartition>),
}

struct RestoreDone {
    partition: i32,
    generation: u64,
    result: Result<Restored, SnapshotError>,
}

/// Only an authorization or fencing problem stops the processor; anything else is retried.
fn restore_error_is_fatal(error: &SnapshotError) -> bool {
    match error {
        SnapshotError::Kafka(KafkaLayerError::Client(e)) => classify(e) == ErrorClass::Fatal,
        SnapshotError::Kafka(KafkaLayerError::NoBootstrapServers) => true,
        _ => false,
    }
}

/// The partitions assigned to this instance and everything that changes them.
pub(super) struct Partitions {
    shared: Arc<Shared>,
    settings: Arc<Settings>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    /// Partitions of the events topic: where each user's records belong.
    partition_count: i32,
    /// What a rule set may ask of the state (`[state]`).
    bounds: Bounds,
    next_generation: u64,
    restores_tx: mpsc::Sender<RestoreDone>,
    restores_rx: mpsc::Receiver<RestoreDone>,
}

impl Partitions {
    /// No partition yet, and the consumer's context whose callbacks reach them.
    pub(super) fn new(
        settings: Arc<Settings>,
        out: Arc<Output>,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        partition_count: i32,
    ) -> (Partitions, GroupContext) {
        let shared = Arc::new(Shared {
            map: Mutex::new(HashMap::new()),
            out,
            log: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
        });
        let context = GroupContext {
            topic: settings.topics.events.clone(),
            shared: Arc::clone(&shared),
        };
        let (restores_tx, restores_rx) = mpsc::channel();
        let partitions = Partitions {
            shared,
            bounds: settings.rule_bounds(),
            settings,
            readiness,
            metrics,
            partition_count,
            next_generation: 0,
            restores_tx,
            restores_rx,
        };
        (partitions, context)
    }

    /// The partitions' states, for a batch (no callback runs meanwhile: they run inside `poll`).
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<i32, Partition>> {
        self.shared.map()
    }

    /// A fatal error a rebalance callback met, once.
    pub(super) fn take_fatal(&self) -> Option<ProcessorError> {
        self.shared.fatal.lock().expect("fatal poisoned").take()
    }

    /// Applies what the rebalance callbacks logged: new partitions are restored, revoked ones
    /// (already flushed and dropped by the callback) leave the lag gauge.
    pub(super) fn apply_rebalances(&mut self, sources: &Sources) {
        let events = std::mem::take(&mut *self.shared.log.lock().expect("rebalance log poisoned"));
        for event in events {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    tracing::info!(?partitions, "partitions assigned; restoring");
                    self.readiness.set_joined();
                    for partition in partitions {
                        self.restore_after(partition, Duration::ZERO, sources);
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    for partition in partitions {
                        self.metrics.forget_partition(partition);
                    }
                }
            }
        }
        self.publish_readiness();
    }

    /// Rebuilds a partition's state from Kafka (snapshot + replay to the committed offset) on a
    /// thread of its own, after `delay`; its records are not processed meanwhile.
    fn restore_after(&mut self, partition: i32, delay: Duration, sources: &Sources) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.lock()
            .insert(partition, Partition::Restoring { generation });
        let settings = Arc::clone(&self.settings);
        let set = sources.latest_active();
        let bounds = self.bounds;
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
                let result =
                    snapshot::restore(&settings, placement, (&set, &bounds), dedup, timeout);
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
    pub(super) fn finish_restores(
        &mut self,
        consumer: &GroupConsumer,
        sources: &Sources,
    ) -> Result<(), ProcessorError> {
        while let Ok(done) = self.restores_rx.try_recv() {
            let current = matches!(self.lock().get(&done.partition), Some(Partition::Restoring { generation }) if *generation == done.generation);
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
                    self.restore_after(done.partition, Duration::from_secs(1), sources);
                    continue;
                }
            };
            let topic = &self.settings.topics.events;
            let offset = restored.resume_at.map_or(Offset::Beginning, Offset::Offset);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, done.partition, offset)?;
            consumer.seek_partitions(tpl.clone(), Duration::from_secs(10))?;
            consumer.resume(&tpl)?;
            self.lock().insert(
                done.partition,
                Partition::Live(Box::new(LivePartition {
                    state: restored.state,
                    last_snapshot: Instant::now(),
                })),
            );
            self.publish_readiness();
        }
        Ok(())
    }

    /// Rewinds `partitions` to their last commit by pausing them and rebuilding their state
    /// from Kafka: after a failed transaction, whose batch mutated their state.
    pub(super) fn rewind(
        &mut self,
        consumer: &GroupConsumer,
        partitions: &[i32],
        sources: &Sources,
    ) -> Result<(), ProcessorError> {
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.settings.topics.events, p);
        }
        consumer.pause(&tpl)?;
        for &p in partitions {
            if self.lock().contains_key(&p) {
                self.restore_after(p, Duration::ZERO, sources);
            }
        }
        Ok(())
    }

    /// Reads `partitions` again from their next unanswered offset: a held-back batch touched no
    /// state, so seeking back is enough. A partition whose seek fails is rewound by a restore.
    pub(super) fn read_again(
        &mut self,
        consumer: &GroupConsumer,
        partitions: &[i32],
        sources: &Sources,
    ) -> Result<(), ProcessorError> {
        let topic = &self.settings.topics.events;
        let mut tpl = TopicPartitionList::new();
        for (&p, state) in self.lock().iter() {
            if let (true, Partition::Live(ready)) = (partitions.contains(&p), state) {
                tpl.add_partition_offset(topic, p, Offset::Offset(ready.state.next_offset()))?;
            }
        }
        let sought: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let failed: Vec<i32> = match consumer.seek_partitions(tpl, Duration::from_secs(10)) {
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
        if failed.is_empty() {
            return Ok(());
        }
        self.rewind(consumer, &failed, sources)
    }

    /// Only records of restored partitions, at or after the restored position, are processed.
    pub(super) fn accepts(&self, message: &OwnedMessage) -> bool {
        match self.lock().get(&message.partition()) {
            Some(Partition::Live(ready)) => message.offset() >= ready.state.next_offset(),
            _ => false,
        }
    }

    /// Partitions whose changed users should be snapshotted now.
    pub(super) fn snapshots_due(&self, force: bool) -> Vec<i32> {
        let interval = self.settings.snapshot.interval;
        self.lock()
            .iter()
            .filter_map(|(p, state)| match state {
                Partition::Live(r)
                    if r.state.has_changes()
                        && (force || r.last_snapshot.elapsed() >= interval) =>
                {
                    Some(*p)
                }
                _ => None,
            })
            .collect()
    }

    /// The offsets to commit for `touched`: each live partition's next offset.
    pub(super) fn next_offsets(&self, touched: &[i32]) -> Result<TopicPartitionList, KafkaError> {
        let mut offsets = TopicPartitionList::new();
        let map = self.lock();
        for &p in touched {
            if let Some(Partition::Live(r)) = map.get(&p) {
                offsets.add_partition_offset(
                    &self.settings.topics.events,
                    p,
                    Offset::Offset(r.state.next_offset()),
                )?;
            }
        }
        Ok(offsets)
    }

    /// Each live partition's next offset (for the lag gauge).
    pub(super) fn positions(&self) -> Vec<(i32, i64)> {
        self.lock()
            .iter()
            .filter_map(|(p, state)| match state {
                Partition::Live(ready) => Some((*p, ready.state.next_offset())),
                Partition::Restoring { .. } => None,
            })
            .collect()
    }

    fn publish_readiness(&self) {
        let map = self.lock();
        let restoring = map
            .values()
            .filter(|p| matches!(p, Partition::Restoring { .. }))
            .count();
        self.readiness.set_partitions(map.len(), restoring);
    }
}
