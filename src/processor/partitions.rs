//! The partitions a processor owns: each one restoring or live, the restores in flight, the
//! rebalance callbacks that hand partitions over, due snapshot rounds and readiness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::output::Output;
use super::{Processor, ProcessorError};
use crate::kafka::{classify, ErrorClass, KafkaLayerError};
use crate::metrics::PartitionLabels;
use crate::partition::{PartitionState, Placement};
use crate::snapshot::{self, Restored, SnapshotError};

pub(super) enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

pub(super) struct GroupContext {
    pub(super) topic: String,
    pub(super) owner: Arc<Owner>,
}

impl GroupContext {
    pub(super) fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
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
pub(super) struct Owner {
    pub(super) partitions: Mutex<HashMap<i32, Partition>>,
    pub(super) out: Output,
    pub(super) log: Mutex<Vec<RebalanceEvent>>,
    /// A fatal error met in a callback; stops the loop after `poll`.
    pub(super) fatal: Mutex<Option<ProcessorError>>,
}

impl Owner {
    pub(super) fn partitions(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Partition>> {
        self.partitions.lock().expect("partitions poisoned")
    }

    /// Drops revoked partitions' states after snapshotting their changed users (see
    /// [`GroupContext::pre_rebalance`]).
    pub(super) fn revoke(&self, partitions: &[i32]) {
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

pub(super) struct Ready {
    /// The partition's users, next offset, changed users and already-answered offsets.
    pub(super) state: PartitionState,
    pub(super) last_snapshot: Instant,
}

pub(super) enum Partition {
    Restoring { generation: u64 },
    Ready(Box<Ready>),
}

pub(super) struct RestoreDone {
    pub(super) partition: i32,
    pub(super) generation: u64,
    pub(super) result: Result<Restored, SnapshotError>,
}

/// Only an authorization or fencing problem stops the processor; anything else is retried.
pub(super) fn restore_error_is_fatal(error: &SnapshotError) -> bool {
    match error {
        SnapshotError::Client(e) | SnapshotError::Kafka(KafkaLayerError::Client(e)) => {
            classify(e) == ErrorClass::Fatal
        }
        SnapshotError::Kafka(KafkaLayerError::NoBootstrapServers) => true,
        _ => false,
    }
}

impl Processor {
    pub(super) fn apply_rebalances(&mut self) {
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

    pub(super) fn start_restore(&mut self, partition: i32) {
        self.start_restore_after(partition, Duration::ZERO);
    }

    pub(super) fn start_restore_after(&mut self, partition: i32, delay: Duration) {
        self.next_generation += 1;
        let generation = self.next_generation;
        self.owner
            .partitions()
            .insert(partition, Partition::Restoring { generation });
        let settings = Arc::clone(&self.settings);
        // Any set rebuilds the same state; the latest is at hand.
        let set = self.sources.latest_active();
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
    pub(super) fn finish_restores(&mut self) -> Result<(), ProcessorError> {
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
    pub(super) fn accepts(&self, message: &OwnedMessage) -> bool {
        match self.owner.partitions().get(&message.partition()) {
            Some(Partition::Ready(ready)) => message.offset() >= ready.state.next_offset(),
            _ => false,
        }
    }

    pub(super) fn publish_readiness(&self) {
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
    pub(super) fn snapshots_due(&self, force: bool) -> Vec<i32> {
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
}
