//! The rules topic (`topics.rules`, CONTRACT §10): its record format, publishing a set, and
//! reading the topic back.
//!
//! Record format:
//! - key `"active"` or `"shadow"` ([`RulesKey`]): the set in force;
//! - key `"version/<name>"` ([`version_key`]): the set first published under that version name,
//!   with its publisher in the headers `actor` and `source` ([`Publisher`]). Written once per
//!   version, before the version is first put in force: compaction keeps one record per key, so
//!   the topic keeps every version ever published (what `409` on a reused name and
//!   `GET /api/v1/rules/history` read) while `active`/`shadow` keep only the latest. These
//!   records judge nothing: the processor skips them unread, and a release from before them
//!   skips them as an unknown key, with a warning;
//! - value: the set as JSON in the file's structure ([`RuleSet::to_value`]), read back with
//!   [`decode`] (validated against `state.max_window`/`state.max_count`, like any set);
//! - a tombstone (no value) under `"shadow"` clears the shadow set; under `"active"` or a
//!   version key it is never written and is skipped when read.
//!
//! The topic is compacted with one partition, so the versions of each key have one order and the
//! latest record of a key is the set in force. What a reader makes of the topic is one fold,
//! [`Current::apply`], shared by [`read_current`] and in-memory stand-ins of the topic:
//! - no `active` record: the configured set (`rules.file`, or the five rules of `[rules]`);
//! - no `shadow` record: the configured `rules.shadow` file, if any ([`Shadow::Unpublished`]);
//! - a `shadow` tombstone: no shadow set, whatever the configuration says ([`Shadow::Cleared`]).
//!   Compaction removes a tombstone after the topic's `delete.retention.ms`; from then on the
//!   topic holds no `shadow` record, so remove `rules.shadow` from the configuration as well;
//! - every version: the first record that held it ([`Current::versions`]), a `version/<name>`
//!   record or (for a set published before these records existed) an `active`/`shadow` one.
//!
//! Unreadable records (an unknown key, a value that is not a valid set under this instance's
//! bounds) are skipped with a warning: the previous readable record of that key stays in force.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Offset;

use super::read::{partitions, read_range};
use super::{producer_config, reader, KafkaLayerError};
use crate::config::Settings;
use crate::rule_set::{Bounds, InvalidRuleSet, RuleSet};
use crate::rules::TimeUnit;

/// How long [`publish`] and [`read_current`] wait for Kafka.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which set a record of the rules topic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RulesKey {
    /// The set every response is evaluated under.
    Active,
    /// The set evaluated beside it, whose disagreements go to `topics.shadow`.
    Shadow,
}

impl RulesKey {
    /// The record key.
    pub fn as_str(self) -> &'static str {
        match self {
            RulesKey::Active => "active",
            RulesKey::Shadow => "shadow",
        }
    }
}

impl fmt::Display for RulesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RulesKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(RulesKey::Active),
            "shadow" => Ok(RulesKey::Shadow),
            other => Err(format!(
                "unknown rules key {other:?} (expected \"active\" or \"shadow\")"
            )),
        }
    }
}

/// Where Kafka stored a published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch) as Kafka returned it: the broker's append
    /// time on a topic with `message.timestamp.type=LogAppendTime` (as created), else the
    /// producer's create time. `None` when Kafka returned none.
    pub timestamp: Option<i64>,
}

/// A set as the topic holds it: the latest readable record of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    pub set: RuleSet,
    pub offset: i64,
    /// The record's timestamp (ms since the Unix epoch), when it has one.
    pub timestamp: Option<i64>,
}

/// What the topic says about the shadow set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Shadow {
    /// No `shadow` record: the configured `rules.shadow` file, if any, is the shadow set.
    #[default]
    Unpublished,
    /// The latest `shadow` record is a tombstone: no shadow set.
    Cleared { offset: i64, timestamp: Option<i64> },
    /// The latest readable `shadow` record.
    Set(Latest),
}

/// Who published a version: the headers of its `version/<name>` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// The token's name (`anonymous` when authentication is off), or `cli:<os user>`.
    pub actor: String,
    /// `http` or `cli`.
    pub source: String,
}

/// The header names of a version record.
const ACTOR_HEADER: &str = "actor";
const SOURCE_HEADER: &str = "source";

/// A version as first published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub set: RuleSet,
    /// The offset and timestamp (ms since the Unix epoch) of the first record that held it.
    pub offset: i64,
    pub timestamp: Option<i64>,
    /// `None` for a version known only from an `active`/`shadow` record (published before
    /// version records existed).
    pub by: Option<Publisher>,
}

/// The rules topic read up to some offset: the latest active and shadow sets, and every
/// version ever published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Current {
    /// `None`: no readable `active` record, the configured set is active.
    pub active: Option<Latest>,
    pub shadow: Shadow,
    /// By version name: the first record that held each version.
    pub versions: BTreeMap<String, Version>,
}

/// The key of the record that keeps `version` for good: `version/<name>`.
pub fn version_key(version: &str) -> String {
    format!("{VERSION_PREFIX}{version}")
}

/// What every per-version key starts with.
pub const VERSION_PREFIX: &str = "version/";

/// Whether a record key is a per-version key (a record that judges nothing).
pub fn is_version_key(key: Option<&[u8]>) -> bool {
    key.is_some_and(|k| k.starts_with(VERSION_PREFIX.as_bytes()))
}

/// Why a record of the rules topic was skipped by [`Current::apply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkippedRecord {
    #[error("record without a key (expected \"active\" or \"shadow\")")]
    NoKey,
    #[error("{0}")]
    UnknownKey(String),
    #[error("tombstone under \"active\" (the active set is never cleared)")]
    ActiveTombstone,
    #[error("tombstone under {0:?} (a version record is never cleared)")]
    VersionTombstone(String),
    #[error("the record under {key:?} holds version {found:?}")]
    VersionMismatch { key: String, found: String },
    #[error(transparent)]
    Invalid(#[from] InvalidRuleSet),
}

/// What one record of the rules topic says.
#[derive(Debug)]
pub enum RulesRecord {
    /// A set published under its key.
    Set(RulesKey, RuleSet),
    /// A tombstone under `shadow`: no shadow set.
    ShadowCleared,
    /// A version as first published (key `version/<name>`); judges nothing.
    Version(RuleSet),
}

/// Reads one record of the rules topic (its key and value), validating a set against `bounds`.
/// What every reader of the topic applies: [`Current`] and the processor's follower.
pub fn read_record(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    bounds: &Bounds,
) -> Result<RulesRecord, SkippedRecord> {
    let key = key.ok_or(SkippedRecord::NoKey)?;
    let key = std::str::from_utf8(key)
        .map_err(|_| SkippedRecord::UnknownKey("key is not UTF-8".to_owned()))?;
    if let Some(name) = key.strip_prefix(VERSION_PREFIX) {
        let value = value.ok_or_else(|| SkippedRecord::VersionTombstone(key.to_owned()))?;
        let set = decode(value, bounds)?;
        if set.version != name {
            return Err(SkippedRecord::VersionMismatch {
                key: key.to_owned(),
                found: set.version,
            });
        }
        return Ok(RulesRecord::Version(set));
    }
    let key = key.parse::<RulesKey>().map_err(SkippedRecord::UnknownKey)?;
    match (key, value) {
        (RulesKey::Active, None) => Err(SkippedRecord::ActiveTombstone),
        (RulesKey::Shadow, None) => Ok(RulesRecord::ShadowCleared),
        (key, Some(value)) => Ok(RulesRecord::Set(key, decode(value, bounds)?)),
    }
}

impl Current {
    /// Takes the next record of the rules topic (in offset order). A record that cannot be used
    /// changes nothing and says why.
    pub fn apply(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        offset: i64,
        timestamp: Option<i64>,
        bounds: &Bounds,
    ) -> Result<(), SkippedRecord> {
        self.apply_by(key, value, offset, timestamp, None, bounds)
    }

    /// [`Current::apply`] for a record whose headers name its publisher (a version record).
    pub fn apply_by(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        offset: i64,
        timestamp: Option<i64>,
        by: Option<Publisher>,
        bounds: &Bounds,
    ) -> Result<(), SkippedRecord> {
        match read_record(key, value, bounds)? {
            RulesRecord::ShadowCleared => self.shadow = Shadow::Cleared { offset, timestamp },
            RulesRecord::Version(set) => self.remember(set, offset, timestamp, by),
            RulesRecord::Set(key, set) => {
                self.remember(set.clone(), offset, timestamp, None);
                let latest = Latest {
                    set,
                    offset,
                    timestamp,
                };
                match key {
                    RulesKey::Active => self.active = Some(latest),
                    RulesKey::Shadow => self.shadow = Shadow::Set(latest),
                }
            }
        }
        Ok(())
    }

    /// Keeps the first record of each version (a later one under the same name is either the
    /// same set put in force again, or a conflict that the use cases refuse to publish).
    fn remember(
        &mut self,
        set: RuleSet,
        offset: i64,
        timestamp: Option<i64>,
        by: Option<Publisher>,
    ) {
        self.versions.entry(set.version.clone()).or_insert(Version {
            set,
            offset,
            timestamp,
            by,
        });
    }

    /// The version of the set of `key` in force: the topic's, else `configured` (the version of
    /// the configured set, if any); `None` when there is no such set (a cleared shadow set).
    pub fn version_in_force(&self, key: RulesKey, configured: Option<&str>) -> Option<String> {
        match (key, &self.shadow) {
            (RulesKey::Active, _) => self
                .active
                .as_ref()
                .map(|l| l.set.version.clone())
                .or_else(|| configured.map(str::to_owned)),
            (RulesKey::Shadow, Shadow::Set(latest)) => Some(latest.set.version.clone()),
            (RulesKey::Shadow, Shadow::Cleared { .. }) => None,
            (RulesKey::Shadow, Shadow::Unpublished) => configured.map(str::to_owned),
        }
    }

    /// The latest record of `key` when it holds a set.
    pub fn get(&self, key: RulesKey) -> Option<&Latest> {
        match (key, &self.shadow) {
            (RulesKey::Active, _) => self.active.as_ref(),
            (RulesKey::Shadow, Shadow::Set(latest)) => Some(latest),
            (RulesKey::Shadow, _) => None,
        }
    }
}

/// The text formats of a rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

impl Format {
    /// JSON when the file name ends in `.json`, TOML otherwise (as [`RuleSet::read_file`]).
    pub fn of_path(path: &std::path::Path) -> Format {
        if path.extension().is_some_and(|e| e == "json") {
            Format::Json
        } else {
            Format::Toml
        }
    }
}

/// A set fit to be published: valid under `bounds` and in `unit`, the service's
/// `rules.time_unit` (the unit of the events' `time`). Refused whole with every problem named, a
/// foreign `time_unit` among them (not only once the rest is fixed).
pub fn validate_for_publishing(
    text: &str,
    format: Format,
    bounds: &Bounds,
    unit: TimeUnit,
) -> Result<RuleSet, InvalidRuleSet> {
    let value = match format {
        Format::Json => {
            serde_json::from_str::<serde_json::Value>(text).map_err(|e| InvalidRuleSet {
                problems: vec![format!("not JSON: {e}")],
            })?
        }
        // Through the same JSON value as `RuleSet::from_toml`.
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| InvalidRuleSet {
                problems: vec![format!("not TOML: {}", e.message())],
            })?;
            serde_json::to_value(table).map_err(|e| InvalidRuleSet {
                problems: vec![format!("not representable as JSON: {e}")],
            })?
        }
    };
    match RuleSet::from_value(&value, bounds) {
        Ok(set) => set.check_time_unit(unit).map(|()| set),
        Err(mut invalid) => {
            let declared = match value.get("time_unit") {
                None if value.is_object() => Some(TimeUnit::Seconds),
                Some(serde_json::Value::String(u)) => u.parse::<TimeUnit>().ok(),
                _ => None,
            };
            if let Some(declared) = declared {
                if let Err(e) =
                    RuleSet::new(String::new(), declared, Vec::new()).check_time_unit(unit)
                {
                    invalid.problems.extend(e.problems);
                }
            }
            Err(invalid)
        }
    }
}

/// A rule set from a record value of the rules topic: the JSON of [`RuleSet::to_value`],
/// validated against `bounds` like any set (every problem named).
pub fn decode(value: &[u8], bounds: &Bounds) -> Result<RuleSet, InvalidRuleSet> {
    let text = std::str::from_utf8(value).map_err(|e| InvalidRuleSet {
        problems: vec![format!("not UTF-8: {e}")],
    })?;
    RuleSet::from_json(text, bounds)
}

/// The record value of a set: what [`decode`] reads back.
pub fn encode(set: &RuleSet) -> Vec<u8> {
    serde_json::to_vec(&set.to_value()).expect("a rule set's JSON value serializes")
}

/// The record for `key`: its value, or `None` for the shadow tombstone. A tombstone under
/// `active` is refused.
fn record_value(
    topic: &str,
    key: RulesKey,
    set: Option<&RuleSet>,
) -> Result<Option<Vec<u8>>, KafkaLayerError> {
    match (key, set) {
        (_, Some(set)) => Ok(Some(encode(set))),
        (RulesKey::Shadow, None) => Ok(None),
        (RulesKey::Active, None) => Err(KafkaLayerError::Topic {
            topic: topic.to_owned(),
            reason: "the active rule set cannot be cleared (no tombstone under \"active\")"
                .to_owned(),
        }),
    }
}

/// One record for the rules topic: its key, its value (`None`: a tombstone) and, for a version
/// record, its publisher in the headers.
struct Outgoing {
    key: String,
    value: Option<Vec<u8>>,
    by: Option<Publisher>,
}

impl Outgoing {
    /// The record of `key`: the set, or the shadow tombstone (refused under `active`).
    fn of_key(topic: &str, key: RulesKey, set: Option<&RuleSet>) -> Result<Self, KafkaLayerError> {
        Ok(Outgoing {
            key: key.as_str().to_owned(),
            value: record_value(topic, key, set)?,
            by: None,
        })
    }

    /// The record that keeps `set` under its version's own key.
    fn version(set: &RuleSet, by: &Publisher) -> Self {
        Outgoing {
            key: version_key(&set.version),
            value: Some(encode(set)),
            by: Some(by.clone()),
        }
    }

    fn record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, str, [u8]> {
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(self.key.as_str());
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        if let Some(by) = &self.by {
            record = record.headers(
                OwnedHeaders::new()
                    .insert(Header {
                        key: ACTOR_HEADER,
                        value: Some(by.actor.as_str()),
                    })
                    .insert(Header {
                        key: SOURCE_HEADER,
                        value: Some(by.source.as_str()),
                    }),
            );
        }
        record
    }
}

/// The publisher named by a record's headers, if it names one.
fn publisher(message: &impl Message) -> Option<Publisher> {
    let headers = message.headers()?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Some(Publisher {
        actor: text(ACTOR_HEADER)?,
        source: text(SOURCE_HEADER).unwrap_or_default(),
    })
}

/// Produces the record of `key` (a set, or the shadow tombstone for `None`) with `producer`
/// and waits for Kafka's acknowledgement, at most `timeout` in all. For async callers (the shim)
/// that hold a producer; `producer` should be [`producer_config`]'s (idempotent, `acks=all`).
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: RulesKey,
    set: Option<&RuleSet>,
    timeout: Duration,
) -> Result<Published, KafkaLayerError> {
    send_record(
        producer,
        topic,
        &Outgoing::of_key(topic, key, set)?,
        timeout,
    )
    .await
}

/// [`send`] for the record that keeps `set` under `version/<name>`, published by `by`.
pub async fn send_version(
    producer: &FutureProducer,
    topic: &str,
    set: &RuleSet,
    by: &Publisher,
    timeout: Duration,
) -> Result<Published, KafkaLayerError> {
    send_record(producer, topic, &Outgoing::version(set, by), timeout).await
}

async fn send_record(
    producer: &FutureProducer,
    topic: &str,
    outgoing: &Outgoing,
    timeout: Duration,
) -> Result<Published, KafkaLayerError> {
    let delivery = tokio::time::timeout(timeout, producer.send(outgoing.record(topic), timeout))
        .await
        .map_err(|_| KafkaLayerError::Timeout(timeout))?
        .map_err(|(e, _)| KafkaLayerError::Client(e))?;
    Ok(published(&delivery))
}

/// Publishes the record of `key` to `topics.rules` (a set, or for `None` the shadow tombstone)
/// and waits for Kafka's acknowledgement (`acks=all`, idempotent producer). Blocking: for
/// command-line tools; the shim uses [`send`] with its own producer.
pub fn publish(
    settings: &Settings,
    key: RulesKey,
    set: Option<&RuleSet>,
) -> Result<Published, KafkaLayerError> {
    let outgoing = Outgoing::of_key(&settings.topics.rules, key, set)?;
    publish_record(settings, &outgoing)
}

/// [`publish`] for the record that keeps `set` under `version/<name>`, published by `by`.
pub fn publish_version(
    settings: &Settings,
    set: &RuleSet,
    by: &Publisher,
) -> Result<Published, KafkaLayerError> {
    publish_record(settings, &Outgoing::version(set, by))
}

fn publish_record(settings: &Settings, outgoing: &Outgoing) -> Result<Published, KafkaLayerError> {
    let topic = &settings.topics.rules;
    let mut config = producer_config(settings, "rules")?;
    if !settings.kafka.properties.contains_key("message.timeout.ms") {
        // Give up within the wait below rather than keep retrying in the background.
        config.set(
            "message.timeout.ms",
            DEFAULT_TIMEOUT.as_millis().to_string(),
        );
    }
    let producer: FutureProducer = config.create()?;
    // A broker just restarted may refuse it (`NotLeaderForPartition`): published again, the
    // same value is the same version.
    super::retry_transient("publishing the rule set", DEFAULT_TIMEOUT, || {
        // Enqueued at once; the delivery report comes within `message.timeout.ms` at the latest.
        let delivery = producer
            .send_result(outgoing.record(topic))
            .map_err(|(e, _)| KafkaLayerError::Client(e))?;
        match futures::executor::block_on(delivery) {
            Ok(Ok(delivery)) => Ok(published(&delivery)),
            Ok(Err((e, _))) => Err(e.into()),
            Err(_) => Err(KafkaLayerError::Timeout(DEFAULT_TIMEOUT)),
        }
    })
}

fn published(delivery: &rdkafka::producer::future_producer::Delivery) -> Published {
    Published {
        partition: delivery.partition,
        offset: delivery.offset,
        timestamp: delivery.timestamp.to_millis(),
    }
}

/// Reads the whole rules topic (`read_committed`) to its end as of now and returns the latest
/// active and shadow sets, skipping unreadable records with a warning. Blocking; waits at most
/// [`DEFAULT_TIMEOUT`].
pub fn read_current(settings: &Settings) -> Result<Current, KafkaLayerError> {
    read_current_within(settings, DEFAULT_TIMEOUT)
}

/// [`read_current`] within `timeout`.
pub fn read_current_within(
    settings: &Settings,
    timeout: Duration,
) -> Result<Current, KafkaLayerError> {
    super::retry_transient("reading the rules topic", timeout, || {
        read_current_once(settings, timeout)
    })
}

fn read_current_once(settings: &Settings, timeout: Duration) -> Result<Current, KafkaLayerError> {
    let topic = &settings.topics.rules;
    let bounds = settings.rule_bounds();
    let consumer = reader(settings, "rules")?;
    let mut current = Current::default();
    for partition in partitions(&consumer, topic, timeout)? {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        if low >= high {
            continue;
        }
        read_range(
            &consumer,
            topic,
            partition,
            Offset::Offset(low),
            high,
            timeout,
            |m| {
                let applied = current.apply_by(
                    m.key(),
                    m.payload(),
                    m.offset(),
                    m.timestamp().to_millis(),
                    publisher(m),
                    &bounds,
                );
                if let Err(e) = applied {
                    tracing::warn!(topic = %topic, partition, offset = m.offset(), error = %e, "skipping unreadable rules record");
                }
                Ok::<(), KafkaLayerError>(())
            },
        )
        .map_err(|e| e.into_layer(timeout))?;
    }
    Ok(current)
}

/// The rules topic in memory: [`Current`] fed by the same records a publish would write. For
/// tests and stand-ins of the shim's backend that run without Kafka.
#[derive(Debug, Default)]
pub struct MemoryTopic {
    inner: std::sync::Mutex<(Current, i64)>,
}

impl MemoryTopic {
    /// Publishes like [`publish`]: the next offset, the current time as the timestamp.
    pub fn publish(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
        bounds: &Bounds,
    ) -> Result<Published, KafkaLayerError> {
        self.append(Outgoing::of_key("memory", key, set)?, bounds)
    }

    /// Publishes like [`publish_version`].
    pub fn publish_version(
        &self,
        set: &RuleSet,
        by: &Publisher,
        bounds: &Bounds,
    ) -> Result<Published, KafkaLayerError> {
        self.append(Outgoing::version(set, by), bounds)
    }

    fn append(&self, outgoing: Outgoing, bounds: &Bounds) -> Result<Published, KafkaLayerError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let offset = inner.1;
        inner.1 += 1;
        inner
            .0
            .apply_by(
                Some(outgoing.key.as_bytes()),
                outgoing.value.as_deref(),
                offset,
                Some(timestamp),
                outgoing.by,
                bounds,
            )
            .map_err(|e| KafkaLayerError::Topic {
                topic: "memory".to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Published {
            partition: 0,
            offset,
            timestamp: Some(timestamp),
        })
    }

    /// The topic read to its end.
    pub fn current(&self) -> Current {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(version: &str, amount: &str) -> RuleSet {
        RuleSet::from_json(
            &format!(
                r#"{{"version": "{version}", "time_unit": "seconds", "rule": [
                    {{"code": 1100, "kind": "amount", "on": "withdraw", "amount": "{amount}"}}
                ]}}"#
            ),
            &Bounds::default(),
        )
        .unwrap()
    }

    #[test]
    fn a_published_value_decodes_to_the_same_set() {
        let original = RuleSet::default_set();
        let decoded = decode(&encode(&original), &Bounds::default()).unwrap();
        assert_eq!(decoded, original);
        assert_eq!(decoded.version, "default");
    }

    #[test]
    fn decode_names_every_problem_of_an_invalid_value() {
        let value = br#"{"version": "", "rule": [{"code": 0, "kind": "amount", "on": "withdraw", "amount": "-1"}]}"#;
        let invalid = decode(value, &Bounds::default()).unwrap_err();
        let text = invalid.problems.join("\n");
        assert!(text.contains("version"), "{text}");
        assert!(text.contains("rule[1] (code 0): code: "), "{text}");
        assert!(text.contains("rule[1] (code 0): amount: "), "{text}");
        assert!(invalid.problems.len() >= 3, "{text}");
        let not_utf8 = decode(&[0xff, 0xfe], &Bounds::default()).unwrap_err();
        assert!(not_utf8.problems[0].starts_with("not UTF-8"));
    }

    #[test]
    fn the_latest_record_of_each_key_wins_and_unreadable_ones_are_skipped() {
        let bounds = Bounds::default();
        let mut current = Current::default();
        assert_eq!(current.active, None);
        assert_eq!(current.shadow, Shadow::Unpublished);
        let v1 = encode(&set("v1", "100"));
        let v2 = encode(&set("v2", "50"));
        current
            .apply(Some(b"active"), Some(&v1), 0, Some(10), &bounds)
            .unwrap();
        current
            .apply(Some(b"shadow"), Some(&v2), 1, Some(11), &bounds)
            .unwrap();
        assert_eq!(current.get(RulesKey::Active).unwrap().set.version, "v1");
        assert_eq!(current.get(RulesKey::Shadow).unwrap().offset, 1);
        // Unreadable records change nothing.
        assert_eq!(
            current.apply(Some(b"active"), None, 2, None, &bounds),
            Err(SkippedRecord::ActiveTombstone)
        );
        assert!(matches!(
            current.apply(Some(b"active"), Some(b"{}"), 3, None, &bounds),
            Err(SkippedRecord::Invalid(_))
        ));
        assert!(matches!(
            current.apply(Some(b"other"), Some(&v2), 4, None, &bounds),
            Err(SkippedRecord::UnknownKey(_))
        ));
        assert_eq!(
            current.apply(None, Some(&v2), 5, None, &bounds),
            Err(SkippedRecord::NoKey)
        );
        assert_eq!(current.get(RulesKey::Active).unwrap().offset, 0);
        current
            .apply(Some(b"active"), Some(&v2), 6, Some(16), &bounds)
            .unwrap();
        assert_eq!(current.get(RulesKey::Active).unwrap().set.version, "v2");
        assert_eq!(current.get(RulesKey::Active).unwrap().timestamp, Some(16));
        // A shadow tombstone clears the shadow set.
        current
            .apply(Some(b"shadow"), None, 7, Some(17), &bounds)
            .unwrap();
        assert_eq!(
            current.shadow,
            Shadow::Cleared {
                offset: 7,
                timestamp: Some(17)
            }
        );
        assert_eq!(current.get(RulesKey::Shadow), None);
        assert_eq!(
            current.version_in_force(RulesKey::Shadow, Some("file")),
            None
        );
        assert_eq!(
            current
                .version_in_force(RulesKey::Active, Some("file"))
                .as_deref(),
            Some("v2")
        );
    }

    #[test]
    fn without_records_the_configured_sets_are_in_force() {
        let current = Current::default();
        for key in [RulesKey::Active, RulesKey::Shadow] {
            assert_eq!(
                current.version_in_force(key, Some("cfg")).as_deref(),
                Some("cfg")
            );
            assert_eq!(current.version_in_force(key, None), None);
        }
    }

    #[test]
    fn the_active_set_is_never_cleared() {
        let topic = MemoryTopic::default();
        assert!(topic
            .publish(RulesKey::Active, None, &Bounds::default())
            .is_err());
        let published = topic
            .publish(RulesKey::Shadow, Some(&set("s1", "10")), &Bounds::default())
            .unwrap();
        assert_eq!(published.offset, 0);
        let cleared = topic
            .publish(RulesKey::Shadow, None, &Bounds::default())
            .unwrap();
        assert_eq!(cleared.offset, 1);
        assert!(matches!(
            topic.current().shadow,
            Shadow::Cleared { offset: 1, .. }
        ));
    }

    #[test]
    fn a_set_to_publish_must_be_in_the_services_time_unit_named_with_its_other_problems() {
        let bounds = Bounds::default();
        let toml = "version = \"t\"\n[[rule]]\ncode = 1\nkind = \"amount\"\non = \"any\"\namount = \"1\"\n";
        let set = validate_for_publishing(toml, Format::Toml, &bounds, TimeUnit::Seconds).unwrap();
        assert_eq!(set.version, "t");
        let refused = validate_for_publishing(toml, Format::Toml, &bounds, TimeUnit::Milliseconds)
            .unwrap_err();
        assert_eq!(refused.problems.len(), 1);
        assert!(refused.problems[0].starts_with("time_unit: "), "{refused}");
        let both = r#"{"version": "", "time_unit": "milliseconds", "rule": []}"#;
        let refused =
            validate_for_publishing(both, Format::Json, &bounds, TimeUnit::Seconds).unwrap_err();
        assert_eq!(refused.problems.len(), 2, "{refused}");
        assert!(refused.problems[0].starts_with("version: "), "{refused}");
        assert!(refused.problems[1].starts_with("time_unit: "), "{refused}");
        let not_json =
            validate_for_publishing("{", Format::Json, &bounds, TimeUnit::Seconds).unwrap_err();
        assert!(not_json.problems[0].starts_with("not JSON"));
        assert_eq!(
            Format::of_path(std::path::Path::new("a.json")),
            Format::Json
        );
        assert_eq!(
            Format::of_path(std::path::Path::new("a.toml")),
            Format::Toml
        );
    }

    #[test]
    fn every_version_is_kept_from_its_first_record_and_version_records_put_nothing_in_force() {
        let bounds = Bounds::default();
        let topic = MemoryTopic::default();
        let by = Publisher {
            actor: "ana".to_owned(),
            source: "http".to_owned(),
        };
        topic
            .publish_version(&set("v1", "100"), &by, &bounds)
            .unwrap();
        assert_eq!(
            topic.current().active,
            None,
            "a version record is history only"
        );
        topic
            .publish(RulesKey::Active, Some(&set("v1", "100")), &bounds)
            .unwrap();
        // As a release from before version records published: under `active` only.
        topic
            .publish(RulesKey::Active, Some(&set("v2", "50")), &bounds)
            .unwrap();
        topic
            .publish(RulesKey::Active, Some(&set("v1", "100")), &bounds)
            .unwrap();
        let current = topic.current();
        assert_eq!(current.get(RulesKey::Active).unwrap().offset, 3);
        let v1 = &current.versions["v1"];
        assert_eq!((v1.offset, v1.by.as_ref()), (0, Some(&by)));
        let v2 = &current.versions["v2"];
        assert_eq!((v2.offset, v2.by.as_ref()), (2, None));
        assert_eq!(v2.set, set("v2", "50"));
        assert_eq!(current.versions.len(), 2);

        let mut current = Current::default();
        let other = encode(&set("other", "1"));
        assert_eq!(
            current.apply(Some(b"version/v9"), Some(&other), 0, None, &bounds),
            Err(SkippedRecord::VersionMismatch {
                key: "version/v9".to_owned(),
                found: "other".to_owned()
            })
        );
        assert_eq!(
            current.apply(Some(b"version/v9"), None, 1, None, &bounds),
            Err(SkippedRecord::VersionTombstone("version/v9".to_owned()))
        );
        assert!(current.versions.is_empty());
        assert!(is_version_key(Some(version_key("a/b").as_bytes())));
        assert!(!is_version_key(Some(b"active")));
        assert!(!is_version_key(None));
    }

    #[test]
    fn keys_are_active_and_shadow() {
        assert_eq!("active".parse::<RulesKey>(), Ok(RulesKey::Active));
        assert_eq!("shadow".parse::<RulesKey>(), Ok(RulesKey::Shadow));
        assert!("Active".parse::<RulesKey>().is_err());
        assert_eq!(RulesKey::Shadow.to_string(), "shadow");
    }
}
