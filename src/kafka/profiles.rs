//! Follows the compacted profiles topic (every instance keeps the whole table in memory) and,
//! for the processor, the rules topic's versions (a [`Timeline`]).

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{classify, reader, ErrorClass, KafkaLayerError, Reader};
use crate::config::Settings;
use crate::domain::UserId;
use crate::profiles::{ProfileLine, ProfileRecord, ProfileValue, Profiles, RiskSource, ALWAYS};
use crate::rule_set::timeline::Timeline;
use crate::rule_set::Bounds;
use crate::rules::TimeUnit;

/// A reader of the whole profiles topic (and, with [`ProfilesFollower::with_rules`], the rules
/// topic), from the beginning, applying every record.
pub struct ProfilesFollower {
    consumer: Reader,
    /// Asks for end offsets. A separate client: on the fetching one, a ListOffsets request
    /// waits behind the open fetch (up to `fetch.wait.max.ms`), which would add that to every batch.
    offsets: Reader,
    /// Every followed (topic, partition).
    followed: Vec<(String, i32)>,
    profiles_topic: String,
    profiles: Profiles,
    rules: Option<RulesFollowed>,
    /// With [`ProfilesFollower::for_views`].
    views: Option<Views>,
}

/// What a user's view asks besides the levels (see [`ProfilesFollower::for_views`]): each
/// user's latest profiles record, and the rules topic folded as [`Current`].
struct Views {
    records: rustc_hash::FxHashMap<UserId, ProfileRecord>,
    rules: super::rules::Current,
    bounds: Bounds,
}

/// The rules topic as followed: its versions, and what a published set is checked against.
struct RulesFollowed {
    topic: String,
    timeline: Timeline,
    bounds: Bounds,
    unit: TimeUnit,
}

impl ProfilesFollower {
    pub fn new(settings: &Settings, role: &str) -> Result<Self, KafkaLayerError> {
        Self::following(settings, role, None, false)
    }

    /// Also keeps, for the shim's view of a user, where each user's level comes from
    /// ([`ProfilesFollower::risk_source`]) and the rules topic's latest sets
    /// ([`ProfilesFollower::rule_sets`]).
    pub fn for_views(settings: &Settings, role: &str) -> Result<Self, KafkaLayerError> {
        Self::following(settings, role, None, true)
    }

    /// Also follows the rules topic: versions published there join `timeline` (whose base is
    /// the configured set).
    pub fn with_rules(
        settings: &Settings,
        role: &str,
        timeline: Timeline,
    ) -> Result<Self, KafkaLayerError> {
        let rules = RulesFollowed {
            topic: settings.topics.rules.clone(),
            timeline,
            bounds: settings.rule_bounds(),
            unit: settings.rules.time_unit,
        };
        Self::following(settings, role, Some(rules), false)
    }

    fn following(
        settings: &Settings,
        role: &str,
        rules: Option<RulesFollowed>,
        views: bool,
    ) -> Result<Self, KafkaLayerError> {
        let consumer = reader(settings, role)?;
        let mut topics = vec![settings.topics.profiles.clone()];
        let rules_topic = rules.as_ref().map(|r| r.topic.clone());
        topics.extend(rules_topic.or_else(|| views.then(|| settings.topics.rules.clone())));
        let mut followed = Vec::new();
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            let found = super::retry_transient("finding the followed topics", RIDE_OUT, || {
                super::read::partitions(&consumer, &topic, Duration::from_secs(10))
            })?;
            for p in found {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
                followed.push((topic.clone(), p));
            }
        }
        consumer.assign(&tpl)?;
        let offsets = reader(settings, &format!("{role}-offsets"))?;
        Ok(ProfilesFollower {
            consumer,
            offsets,
            followed,
            profiles_topic: settings.topics.profiles.clone(),
            profiles: Profiles::default(),
            rules,
            views: views.then(|| Views {
                records: rustc_hash::FxHashMap::default(),
                rules: super::rules::Current::default(),
                bounds: settings.rule_bounds(),
            }),
        })
    }

    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// The user's level now and the profiles record it comes from (with
    /// [`ProfilesFollower::for_views`]; else the level alone).
    pub fn risk_source(&self, user_id: UserId) -> RiskSource {
        RiskSource {
            risk: self.profiles.risk(user_id),
            record: self
                .views
                .as_ref()
                .and_then(|v| v.records.get(&user_id).copied()),
        }
    }

    /// The rules topic read so far, folded (with [`ProfilesFollower::for_views`]).
    pub fn rule_sets(&self) -> Option<&super::rules::Current> {
        self.views.as_ref().map(|v| &v.rules)
    }

    /// The rule sets' versions read so far (with [`ProfilesFollower::with_rules`]).
    pub fn timeline(&self) -> Option<&Timeline> {
        self.rules.as_ref().map(|r| &r.timeline)
    }

    /// Reads until every partition's end offset as of now: a profile change (or rule set) that
    /// Kafka acknowledged before this call is applied when it returns (read-your-writes).
    ///
    /// Transient failures on the way (a broker restarting: `BrokerTransportFailure`,
    /// `FencedLeaderEpoch`, `NotLeaderForPartition`, a ListOffsets request timing out) are
    /// retried until `timeout`; only then, or on an error no retry can help (refused access),
    /// does it fail. It never returns `Ok` short of the end offsets it asked for.
    pub fn catch_up(&mut self, timeout: Duration) -> Result<(), KafkaLayerError> {
        let deadline = Instant::now() + timeout;
        let targets = self.end_offsets(deadline)?;
        loop {
            let position = self.consumer.position()?;
            let behind = targets.iter().any(|(topic, p, high)| {
                let at = match position.find_partition(topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                at < *high
            });
            if !behind {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(KafkaLayerError::Timeout(timeout));
            }
            match self.poll_once(Duration::from_millis(50)) {
                Ok(_) => {}
                Err(e) if recovers(&e) => {
                    // The client recovers by itself (it refreshes metadata and fetches again).
                    tracing::debug!(error = %e, "profiles follower: transient error; still catching up");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every followed partition's end offset as of now, asked again after any failure short of
    /// a fatal one (`FencedLeaderEpoch` too, which the client recovers from) until `deadline`.
    fn end_offsets(&self, deadline: Instant) -> Result<Vec<(String, i32, i64)>, KafkaLayerError> {
        let within = deadline.saturating_duration_since(Instant::now());
        super::retry_while("profiles follower: end offsets", within, recovers, || {
            let left = deadline.saturating_duration_since(Instant::now());
            self.end_offsets_within(left.max(Duration::from_millis(100)))
        })
    }

    fn end_offsets_within(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(String, i32, i64)>, KafkaLayerError> {
        // One ListOffsets request for every partition (timestamp -1: the latest offset, the last
        // stable one for this read_committed client), not a round trip per partition: this runs
        // before every batch.
        let mut latest = TopicPartitionList::new();
        for (topic, p) in &self.followed {
            latest.add_partition_offset(topic, *p, Offset::End)?;
        }
        let found = self.offsets.offsets_for_times(latest, timeout)?;
        let mut targets = Vec::with_capacity(self.followed.len());
        for (topic, p) in &self.followed {
            let element = found.find_partition(topic, *p);
            if let Some(e) = element.as_ref().map(|e| e.error()).and_then(Result::err) {
                return Err(e.into());
            }
            let high = match element.map(|e| e.offset()) {
                Some(Offset::Offset(high)) => high,
                _ => self.offsets.fetch_watermarks(topic, *p, timeout)?.1,
            };
            targets.push((topic.clone(), *p, high));
        }
        Ok(targets)
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
            Some(Ok(message)) if message.topic() != self.profiles_topic => {
                if let Some(rules) = &mut self.rules {
                    rules.apply(&message);
                }
                if let Some(views) = &mut self.views {
                    let applied = views.rules.apply(
                        message.key(),
                        message.payload(),
                        message.offset(),
                        message.timestamp().to_millis(),
                        &views.bounds,
                    );
                    if let Err(e) = applied {
                        tracing::debug!(offset = message.offset(), error = %e, "rules record skipped");
                    }
                }
                Ok(true)
            }
            Some(Ok(message)) => {
                let user_id = message
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| UserId::parse(k.trim()));
                let Some(user_id) = user_id else {
                    tracing::warn!(
                        offset = message.offset(),
                        "skipping profile record without a numeric user_id key"
                    );
                    return Ok(true);
                };
                // Broker time (the topic is LogAppendTime): the level holds for the events
                // appended from then on.
                let since = message.timestamp().to_millis().unwrap_or(ALWAYS);
                let risk = match message.payload() {
                    None => None,
                    Some(payload) => match serde_json::from_slice::<ProfileValue>(payload) {
                        Ok(value) => Some(value.risk),
                        Err(e) => {
                            tracing::warn!(user_id = user_id.get(), offset = message.offset(), error = %e, "skipping unreadable profile record");
                            return Ok(true);
                        }
                    },
                };
                self.profiles.change_at(user_id, since, risk);
                if let Some(views) = &mut self.views {
                    views.profile(
                        user_id,
                        ProfileRecord {
                            partition: message.partition(),
                            offset: message.offset(),
                            timestamp: since,
                            cleared: risk.is_none(),
                        },
                    );
                }
                Ok(true)
            }
        }
    }
}

impl Views {
    /// A profiles record, in offset order: the source of the user's level when it is the
    /// user's latest by time (the same order as [`Profiles::change_at`]).
    fn profile(&mut self, user_id: UserId, record: ProfileRecord) {
        let latest = self.records.entry(user_id).or_insert(record);
        if record.timestamp >= latest.timestamp {
            *latest = record;
        }
    }
}

impl RulesFollowed {
    /// Applies one record of the rules topic: a version of the active set (key `active`), of the
    /// shadow set (key `shadow`; no value clears it). An unreadable or invalid record is logged
    /// and skipped: the versions before it stay in force. A per-version record
    /// (`version/<name>`, the history of what was published) judges nothing and is not read.
    fn apply(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        use super::rules::{is_version_key, read_record, RulesKey, RulesRecord, SkippedRecord};
        if is_version_key(message.key()) {
            return;
        }
        let offset = message.offset();
        let timestamp = message.timestamp().to_millis().unwrap_or(0);
        let record = read_record(message.key(), message.payload(), &self.bounds).and_then(|r| {
            if let RulesRecord::Set(_, set) = &r {
                set.check_time_unit(self.unit)?;
            }
            Ok::<_, SkippedRecord>(r)
        });
        match record {
            Ok(RulesRecord::Set(key, set)) => {
                tracing::info!(%key, version = %set.version, offset, timestamp, "rule set published");
                let set = std::sync::Arc::new(set);
                match key {
                    RulesKey::Active => self.timeline.active.publish(timestamp, set),
                    RulesKey::Shadow => self.timeline.shadow.publish(timestamp, Some(set)),
                }
            }
            Ok(RulesRecord::ShadowCleared) => {
                tracing::info!(offset, timestamp, "shadow rule set cleared");
                self.timeline.shadow.publish(timestamp, None);
            }
            Ok(RulesRecord::Version(_)) => {}
            Err(e) => {
                tracing::warn!(offset, error = %e, "skipping an unusable rules record");
            }
        }
    }
}

/// Whether the follower's client gets over `error` by itself (a broker restarting:
/// `BrokerTransportFailure`, `FencedLeaderEpoch`, `NotLeaderForPartition`): anything short of a
/// fatal error.
fn recovers(error: &KafkaLayerError) -> bool {
    matches!(error, KafkaLayerError::Client(e) if classify(e) != ErrorClass::Fatal)
}

/// Publishes profiles to the profiles topic (key = user id) and waits until Kafka acknowledged
/// every one. Returns how many were published.
pub fn publish(settings: &Settings, lines: &[ProfileLine]) -> Result<usize, KafkaLayerError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = super::producer_config(settings, "profiles")?.create()?;
    // A broker just restarted may refuse some (`NotLeaderForPartition`): publishing the same
    // levels again changes nothing.
    super::retry_transient("publishing profiles", RIDE_OUT, || {
        let futures: Vec<_> = lines
            .iter()
            .map(|line| {
                let key = line.user_id.to_string();
                let value =
                    serde_json::to_vec(&ProfileValue { risk: line.risk }).expect("serializes");
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
                Err(_) => return Err(KafkaLayerError::Timeout(RIDE_OUT)),
            }
        }
        Ok(lines.len())
    })
}

/// How long a broker restart is waited out when finding the followed topics or publishing
/// profiles.
const RIDE_OUT: Duration = Duration::from_secs(30);
