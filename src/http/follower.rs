//! The single consumer of the alerts topic behind each shim instance.
//!
//! It reads every partition of the alerts topic from its end at the shim's start (assign mode, no
//! group, `read_committed`) on its own thread and hands each record to [`Hub::ingest`], which
//! completes pending `POST` requests: their wait never depends on the database projection
//! ([`crate::store::projection`], a consumer of its own). Since every instance reads every
//! partition, several shims side by side each see the responses to their own requests.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::waiters::Hub;
use super::ShimError;
use crate::config::Settings;
use crate::domain::response::AlertRecord;
use crate::kafka::read::LastError;
use crate::kafka::{follower_config, KafkaLayerError, Reader, ReaderContext};

/// Starts the follower thread; it stops when `stop` is cancelled.
pub fn spawn(
    settings: Arc<Settings>,
    hub: Arc<Hub>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, ShimError> {
    let consumer: Reader = follower_config(&settings)
        .map_err(ShimError::Kafka)?
        .create_with_context(ReaderContext)
        .map_err(|e| ShimError::Kafka(e.into()))?;
    std::thread::Builder::new()
        .name("shim-alerts".to_owned())
        .spawn(move || follow(&settings, &consumer, &hub, &stop))
        .map_err(ShimError::Thread)
}

fn follow(settings: &Settings, consumer: &Reader, hub: &Hub, stop: &CancellationToken) {
    let topic = settings.topics.alerts.as_str();
    let partitions = loop {
        if stop.is_cancelled() {
            return;
        }
        match assign_all(consumer, topic) {
            Ok(partitions) => break partitions,
            Err(e) => {
                tracing::info!(topic, error = %e, "waiting for the alerts topic");
                crate::shutdown::sleep_unless_cancelled(stop, Duration::from_secs(1));
            }
        }
    };
    hub.set_partitions(&partitions);
    hub.set_connected(true);
    tracing::info!(
        topic,
        partitions = partitions.len(),
        "following the alerts topic"
    );
    let mut last_error = LastError::default();
    while !stop.is_cancelled() {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                last_error = LastError::default();
                let Some(payload) = message.payload() else {
                    continue;
                };
                let timestamp = message.timestamp().to_millis().unwrap_or(0);
                match AlertRecord::from_json(payload) {
                    Ok(record) => hub.ingest(record, timestamp),
                    Err(e) => tracing::warn!(
                        partition = message.partition(),
                        offset = message.offset(),
                        error = %e,
                        "skipping unreadable alerts record"
                    ),
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                if let Some(text) = last_error.changed(&e) {
                    tracing::warn!(topic, error = %text, "alerts follower error");
                }
            }
        }
    }
    tracing::debug!(topic, "alerts follower stopped");
}

fn assign_all(consumer: &Reader, topic: &str) -> Result<Vec<i32>, KafkaLayerError> {
    let partitions = crate::kafka::read::partitions(consumer, topic, Duration::from_secs(5))?;
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::End)?;
    }
    consumer.assign(&tpl)?;
    Ok(partitions)
}
