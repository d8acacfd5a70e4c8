//! Follows the compacted profiles topic: every instance keeps the whole table in memory.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{reader_config, KafkaLayerError};
use crate::config::Settings;
use crate::profiles::{ProfileValue, Profiles};

/// A reader of the whole profiles topic, from the beginning, applying every record.
pub struct ProfilesFollower {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
    profiles: Profiles,
}

impl ProfilesFollower {
    pub fn new(settings: &Settings, role: &str) -> Result<Self, KafkaLayerError> {
        let consumer: BaseConsumer = reader_config(settings, role)?.create()?;
        let topic = settings.topics.profiles.clone();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(30))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(KafkaLayerError::Topic { topic, reason: "has no partitions (does it exist?)".to_owned() });
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(ProfilesFollower { consumer, topic, partitions, profiles: Profiles::default() })
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Reads until every partition's end offset as of now: a profile change that Kafka
    /// acknowledged before this call is applied when it returns (read-your-writes).
    pub fn catch_up(&mut self, timeout: Duration) -> Result<(), KafkaLayerError> {
        let deadline = Instant::now() + timeout;
        let mut targets = Vec::with_capacity(self.partitions.len());
        for &p in &self.partitions {
            let (_, high) = self.consumer.fetch_watermarks(&self.topic, p, timeout)?;
            targets.push((p, high));
        }
        loop {
            let position = self.consumer.position()?;
            let behind = targets.iter().any(|&(p, high)| {
                let at = match position.find_partition(&self.topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                at < high
            });
            if !behind {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(KafkaLayerError::Timeout(timeout));
            }
            self.poll_once(Duration::from_millis(50))?;
        }
    }

    /// Applies whatever is available now, without waiting for the end.
    pub fn poll_available(&mut self) -> Result<(), KafkaLayerError> {
        while self.poll_once(Duration::ZERO)? {}
        Ok(())
    }

    fn poll_once(&mut self, timeout: Duration) -> Result<bool, KafkaLayerError> {
        match self.consumer.poll(timeout) {
            None => Ok(false),
            Some(Err(KafkaError::PartitionEOF(_))) => Ok(false),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(message)) => {
                let user_id = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.trim().parse::<u64>().ok());
                let Some(user_id) = user_id else {
                    tracing::warn!(offset = message.offset(), "skipping profile record without a numeric user_id key");
                    return Ok(true);
                };
                match message.payload() {
                    None => self.profiles.remove(user_id),
                    Some(payload) => match serde_json::from_slice::<ProfileValue>(payload) {
                        Ok(value) => self.profiles.set(user_id, value.risk),
                        Err(e) => tracing::warn!(user_id, offset = message.offset(), error = %e, "skipping unreadable profile record"),
                    },
                }
                Ok(true)
            }
        }
    }
}
