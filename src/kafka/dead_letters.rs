//! The latest records of the dead-letter topic, with the reasons their headers give (for
//! `GET /api/v1/dead-letters` and the console's operations page): a bounded read of each
//! partition's tail, never a scan of the topic.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::Offset;
use serde::Serialize;
use utoipa::ToSchema;

use super::read::{partitions, read_range};
use super::{reader, KafkaLayerError};
use crate::config::Settings;

/// A dead letter's value is shown up to this many bytes (as lossy text).
pub const SHOWN_VALUE_BYTES: usize = 512;

/// One dead-letter record as a person reads it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Where it sits in the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, ms since the Unix epoch.
    pub timestamp: Option<i64>,
    /// The `event_id` of the input it copies (`"<partition>-<offset>"`).
    pub event_id: Option<String>,
    /// Why it was rejected (`invalid`, ...), and the error naming every problem.
    pub rejection: Option<String>,
    pub error: Option<String>,
    /// The input as sent (lossy UTF-8), cut to [`SHOWN_VALUE_BYTES`].
    pub value: String,
    /// Whether `value` was cut.
    pub cut: bool,
}

/// The `limit` latest dead letters over every partition, newest first (by timestamp).
pub fn latest(
    settings: &Settings,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<DeadLetterView>, KafkaLayerError> {
    let topic = &settings.topics.dlq;
    let consumer = reader(settings, "dead-letters")?;
    let mut found = Vec::new();
    for partition in partitions(&consumer, topic, timeout)? {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        let start = high.saturating_sub(limit as i64).max(low);
        if start >= high {
            continue;
        }
        read_range(
            &consumer,
            topic,
            partition,
            Offset::Offset(start),
            high,
            timeout,
            |m| {
                found.push(view(m));
                Ok::<(), KafkaLayerError>(())
            },
        )
        .map_err(|e| e.into_layer(timeout))?;
    }
    found.sort_by(|a, b| {
        (b.timestamp, b.partition, b.offset).cmp(&(a.timestamp, a.partition, a.offset))
    });
    found.truncate(limit);
    Ok(found)
}

fn view(m: &impl Message) -> DeadLetterView {
    let header = |name: &str| {
        m.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    let payload = m.payload().unwrap_or_default();
    let cut = payload.len() > SHOWN_VALUE_BYTES;
    let shown = &payload[..payload.len().min(SHOWN_VALUE_BYTES)];
    DeadLetterView {
        partition: m.partition(),
        offset: m.offset(),
        timestamp: m.timestamp().to_millis(),
        event_id: header("event_id"),
        rejection: header("rejection"),
        error: header("error"),
        value: String::from_utf8_lossy(shown).into_owned(),
        cut,
    }
}
