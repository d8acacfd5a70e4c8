//! Group-less reading: the [`Reader`] client, a topic's partitions, and bounded reads of one
//! partition's offset range (restores, the alerts tail, the audit trail, lookups by coordinate).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::{reader_config, KafkaLayerError};
use crate::config::Settings;

/// Context of group-less readers. rust-rdkafka reports every error event to the context as well
/// as through `poll`; reaching a partition's end is how a reader learns it caught up, not an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::error!(error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A group-less reader consumer (see [`reader_config`]).
pub type Reader = BaseConsumer<ReaderContext>;

/// Creates a [`Reader`].
pub fn reader(settings: &Settings, role: &str) -> Result<Reader, KafkaLayerError> {
    Ok(reader_config(settings, role)?.create_with_context(ReaderContext)?)
}

/// The partitions of `topic`, or an error naming it when it has none (it does not exist).
pub fn partitions<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaLayerError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaLayerError::Topic {
            topic: topic.to_owned(),
            reason: "has no partitions (does it exist?)".to_owned(),
        });
    }
    Ok(partitions)
}

/// Why a [`read_range`] stopped before `until`.
#[derive(Debug)]
pub enum RangeError<E> {
    Kafka(KafkaError),
    /// `timeout` passed; `next` is the first offset not read.
    TimedOut {
        next: i64,
    },
    /// The callback's own error.
    Stopped(E),
}

impl RangeError<KafkaLayerError> {
    /// The error of a read whose callback fails only with the layer's own errors; a read that
    /// ran out of `timeout` is [`KafkaLayerError::Timeout`].
    pub fn into_layer(self, timeout: Duration) -> KafkaLayerError {
        match self {
            RangeError::Kafka(e) => e.into(),
            RangeError::TimedOut { .. } => KafkaLayerError::Timeout(timeout),
            RangeError::Stopped(e) => e,
        }
    }
}

impl<E> From<KafkaError> for RangeError<E> {
    fn from(e: KafkaError) -> Self {
        RangeError::Kafka(e)
    }
}

/// Reads `topic`/`partition` from `from` up to offset `until` (exclusive) or the partition's
/// end, whichever comes first, calling `each` in offset order, within `timeout`. Transaction
/// markers and aborted records (under `read_committed`) are skipped by the client.
pub fn read_range<E>(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    from: Offset,
    until: i64,
    timeout: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
) -> Result<(), RangeError<E>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, from)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut next = match from {
        Offset::Offset(o) => o,
        _ => 0,
    };
    while next < until {
        match consumer.poll(Duration::from_millis(100)) {
            // A reused reader may still hold a record of what it read before: not ours.
            Some(Ok(message)) if message.topic() != topic || message.partition() != partition => {}
            Some(Ok(message)) if message.offset() >= until => break,
            Some(Ok(message)) => {
                next = message.offset() + 1;
                each(&message).map_err(RangeError::Stopped)?;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(RangeError::TimedOut { next });
        }
    }
    Ok(())
}

/// A consumer error to log once until a different one comes (a broker outage repeats the same
/// error at every poll).
#[derive(Debug, Default)]
pub struct LastError(Option<String>);

impl LastError {
    /// The error's text when it differs from the previous one, else `None`.
    pub fn changed(&mut self, error: &KafkaError) -> Option<String> {
        let text = error.to_string();
        if self.0.as_deref() == Some(text.as_str()) {
            return None;
        }
        self.0 = Some(text.clone());
        Some(text)
    }
}
