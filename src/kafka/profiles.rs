//! Follows the compacted profiles topic: every instance keeps the whole table in memory.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{reader, KafkaLayerError, Reader};
use crate::config::Settings;
use crate::domain::UserId;
use crate::profiles::{ProfileLine, ProfileValue, Profiles};

/// A reader of the whole profiles topic, from the beginning, applying every record.
pub struct ProfilesFollower {
    consumer: Reader,
    /// Asks for end offsets. A separate client: on the fetching one, a ListOffsets request
    /// waits behind the open fetch (up to `fetch.wait.max.ms`), which would add that to every batch.
    offsets: Reader,
    topic: String,
    partitions: Vec<i32>,
    profiles: Profiles,
}

impl ProfilesFollower {
    pub fn new(settings: &Settings, role: &str) -> Result<Self, KafkaLayerError> {
        let consumer = reader(settings, role)?;
        let topic = settings.topics.profiles.clone();
        let partitions = super::read::partitions(&consumer, &topic, Duration::from_secs(30))?;
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let offsets = reader(settings, &format!("{role}-offsets"))?;
        Ok(ProfilesFollower {
            consumer,
            offsets,
            topic,
            partitions,
            profiles: Profiles::default(),
        })
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Reads until every partition's end offset as of now: a profile change that Kafka
    /// acknowledged before this call is applied when it returns (read-your-writes).
    pub fn catch_up(&mut self, timeout: Duration) -> Result<(), KafkaLayerError> {
        let deadline = Instant::now() + timeout;
        // One ListOffsets request for every partition (timestamp -1: the latest offset, the last
        // stable one for this read_committed client), not a round trip per partition: this runs
        // before every batch.
        let mut latest = TopicPartitionList::new();
        for &p in &self.partitions {
            latest.add_partition_offset(&self.topic, p, Offset::End)?;
        }
        let found = self.offsets.offsets_for_times(latest, timeout)?;
        let mut targets = Vec::with_capacity(self.partitions.len());
        for &p in &self.partitions {
            let high = match found.find_partition(&self.topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(high)) => high,
                _ => self.offsets.fetch_watermarks(&self.topic, p, timeout)?.1,
            };
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
                    .and_then(|k| UserId::parse(k.trim()))
                    .map(|user| user.0);
                let Some(user_id) = user_id else {
                    tracing::warn!(
                        offset = message.offset(),
                        "skipping profile record without a numeric user_id key"
                    );
                    return Ok(true);
                };
                match message.payload() {
                    None => self.profiles.remove(user_id),
                    Some(payload) => match serde_json::from_slice::<ProfileValue>(payload) {
                        Ok(value) => self.profiles.set(user_id, value.risk),
                        Err(e) => {
                            tracing::warn!(user_id, offset = message.offset(), error = %e, "skipping unreadable profile record")
                        }
                    },
                }
                Ok(true)
            }
        }
    }
}

/// Publishes profiles to the profiles topic (key = user id) and waits until Kafka acknowledged
/// every one. Returns how many were published.
pub fn publish(settings: &Settings, lines: &[ProfileLine]) -> Result<usize, KafkaLayerError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = super::producer_config(settings, "profiles")?.create()?;
    let futures: Vec<_> = lines
        .iter()
        .map(|line| {
            let key = line.user_id.to_string();
            let value = serde_json::to_vec(&ProfileValue { risk: line.risk }).expect("serializes");
            producer
                .send_result(
                    FutureRecord::to(&settings.topics.profiles)
                        .key(&key)
                        .payload(&value),
                )
                .map_err(|(e, _)| KafkaLayerError::Client(e))
        })
        .collect::<Result<_, _>>()?;
    for future in futures {
        match futures::executor::block_on(future) {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.into()),
            Err(_) => return Err(KafkaLayerError::Timeout(Duration::from_secs(0))),
        }
    }
    Ok(lines.len())
}
