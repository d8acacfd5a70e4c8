//! Per-user state snapshots in the compacted state topic, and the restore of a partition.
//!
//! The state topic is co-partitioned with the events topic: the snapshot of a user of input
//! partition `p` is written to state partition `p`, key = user id, value
//! `{"v": 2, "covers": S, "marked": true, "state": {...}, "keys": [...]}`, the state in
//! [`StoredState`]'s form. Version 1 records (written before rule sets, by the engine of the
//! five fixed rules) are still restored: upgraded as [`v1`] says. `covers` is **exclusive**: the state includes every
//! input record of the partition with offset `< S`, and none from `S` on.
//!
//! A snapshot round writes only the users changed since the previous round (changed by live
//! processing *or by a restore's replay*), all with the same `covers`, then a round marker (key
//! `~round`, value `{"v": 2, "round": true, "covers": S}`) once every user record of the round is
//! durable: under exactly-once in the same transaction as the input offsets (so `S <= committed`),
//! under at-least-once after the round's records were acknowledged. Users left out did not
//! change, so the latest record of every user (what compaction keeps) is the state of the whole
//! partition at the latest marker's `S` (or `max(covers)` for a topic written before markers).
//! A user record newer than the marker (an at-least-once round whose marker never landed) is
//! still exact at its own `covers`: that user's events below it are not applied again (see
//! [`crate::partition`]).
//!
//! Restore of partition `p` with committed offset `C`: read state partition `p` to its end
//! (read_committed), then replay input records `[S, C)` through the engine without emitting
//! anything (their responses are already committed), then process from `max(S, C)`.
//! (`S > C` happens only under at-least-once, where snapshots are flushed before offsets commit,
//! and only after the responses below `S`.)
//!
//! Under at-least-once, responses to offsets from `max(S, C)` on may already be in the alerts
//! topic (produced, then a crash before the offsets were committed). The restore collects those
//! offsets from the tail of alerts partition `p` (the response to input partition `p` always goes
//! there) and the processor does not answer them again: a crash repeats no response, and so no
//! repeat can differ from the first answer (e.g. after a risk change in between).
//! An unreadable snapshot is reported and the partition is rebuilt from the earliest retained
//! input offset instead of silently starting empty.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::config::{Guarantee, Settings};
use crate::domain::{Coord, UserId};
use crate::idempotency::{Answer, DedupLimits, Keys, HEADER};
use crate::kafka::read::{read_range, RangeError};
use crate::kafka::{reader, KafkaLayerError, Reader};
use crate::partition::{Input, PartitionState, Placement, Rebuild, Sets};
use crate::rule_set::{Bounds, RuleSet};
use crate::state::StoredState;

/// Version of the snapshot value format written; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub v: u32,
    /// Exclusive: the next input offset after the last record this state includes.
    pub covers: i64,
    /// Written by a writer that ends each round with a marker (absent in older records, whose
    /// rounds were only ever written whole, in one transaction).
    #[serde(default)]
    pub marked: bool,
    pub state: StoredState,
    /// The user's remembered idempotency keys (absent when none, and in older records).
    #[serde(default, skip_serializing_if = "Keys::is_empty")]
    pub keys: Keys,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("unreadable snapshot at state offset {offset}: {reason}")]
    Unreadable { offset: i64, reason: String },
    #[error(transparent)]
    Kafka(#[from] KafkaLayerError),
    #[error("restore of partition {partition} timed out after {timeout:?} at offset {offset}")]
    Timeout {
        partition: i32,
        timeout: Duration,
        offset: i64,
    },
}

impl From<KafkaError> for SnapshotError {
    fn from(e: KafkaError) -> Self {
        SnapshotError::Kafka(KafkaLayerError::Client(e))
    }
}

pub fn encode(covers: i64, state: &StoredState, keys: Option<&Keys>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        v: u32,
        covers: i64,
        marked: bool,
        state: &'a StoredState,
        #[serde(skip_serializing_if = "Option::is_none")]
        keys: Option<&'a Keys>,
    }
    serde_json::to_vec(&Borrowed {
        v: FORMAT_VERSION,
        covers,
        marked: true,
        state,
        keys: keys.filter(|k| !k.is_empty()),
    })
    .expect("state always serializes")
}

/// Key of a partition's round marker in the state topic (user records are keyed by decimal ids).
pub const MARKER_KEY: &str = "~round";

/// The value of a round marker: every user record of the round is durable, all at `covers`.
pub fn encode_marker(covers: i64) -> Vec<u8> {
    format!("{{\"v\":{FORMAT_VERSION},\"round\":true,\"covers\":{covers}}}").into_bytes()
}

pub fn decode_record(bytes: &[u8]) -> Result<SnapshotRecord, String> {
    match check_version(bytes)? {
        v1::VERSION => v1::decode(bytes),
        _ => serde_json::from_slice(bytes)
            .map_err(|e| format!("version {FORMAT_VERSION} record does not parse: {e}")),
    }
}

/// The record's format version, when this build reads it (1 or 2).
fn check_version(bytes: &[u8]) -> Result<u32, String> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    let version: Version =
        serde_json::from_slice(bytes).map_err(|e| format!("not a snapshot record: {e}"))?;
    if version.v != FORMAT_VERSION && version.v != v1::VERSION {
        return Err(format!(
            "format version {} is not supported (this build reads {} and {FORMAT_VERSION})",
            version.v,
            v1::VERSION
        ));
    }
    Ok(version.v)
}

/// The first format: the state of the engine of the five fixed rules (CONTRACT §3), which
/// kept only what those rules need: the trailing withdrawals, the increasing run of deposits
/// and the last deposit, the deposits of the deposit window summed by time and the events of the
/// burst window counted by time.
///
/// Upgraded to a state that answers the rules it was kept for exactly as before: per time, the
/// deposits' sum becomes one deposit and the rest of that time's count becomes withdrawals of
/// amount 0. What it never kept (the kinds and amounts behind those counts, a run of deposits,
/// withdrawals' amounts) starts from the upgrade, so the state says its history is complete only
/// after the user's last event: a window reaching back before it is `warming_up` in the evidence.
pub mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::SnapshotRecord;
    use crate::idempotency::Keys;
    use crate::state::{StoredKind, StoredPast, StoredState};

    pub const VERSION: u32 = 1;

    #[derive(Deserialize)]
    struct Bucket {
        time: u64,
        total: u128,
    }

    #[derive(Deserialize)]
    struct Window {
        buckets: Vec<Bucket>,
    }

    #[derive(Deserialize)]
    struct UserState {
        last_time: Option<u64>,
        trailing_withdrawals: u64,
        increasing_run: u64,
        last_deposit: Option<u128>,
        deposits: Window,
        events: Window,
    }

    #[derive(Deserialize)]
    struct Record {
        covers: i64,
        #[serde(default)]
        marked: bool,
        state: UserState,
        #[serde(default)]
        keys: Keys,
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<SnapshotRecord, String> {
        let record: Record = serde_json::from_slice(bytes)
            .map_err(|e| format!("version {VERSION} record does not parse: {e}"))?;
        Ok(SnapshotRecord {
            v: VERSION,
            covers: record.covers,
            marked: record.marked,
            state: upgrade(&record.state),
            keys: record.keys,
        })
    }

    fn upgrade(old: &UserState) -> StoredState {
        // Per time: (deposits' sum, events' count).
        let mut times: BTreeMap<u64, (Option<u128>, u128)> = BTreeMap::new();
        for b in &old.deposits.buckets {
            times.entry(b.time).or_default().0 = Some(b.total);
        }
        for b in &old.events.buckets {
            times.entry(b.time).or_default().1 = b.total;
        }
        let mut window = Vec::new();
        for (&time, &(deposits, count)) in &times {
            let mut count = count;
            if let Some(sum) = deposits {
                window.push(StoredPast(time, StoredKind::Deposit, sum));
                count = count.saturating_sub(1);
            }
            for _ in 0..count.min(1 << 20) {
                window.push(StoredPast(time, StoredKind::Withdraw, 0));
            }
        }
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        StoredState {
            last_time: old.last_time,
            window,
            run: old.last_time.map(|_| {
                if old.trailing_withdrawals > 0 {
                    (StoredKind::Withdraw, clamp(old.trailing_withdrawals))
                } else {
                    (StoredKind::Deposit, 1)
                }
            }),
            last: [
                old.last_deposit
                    .map(|amount| (amount, clamp(old.increasing_run.max(1)))),
                None,
            ],
            pruned: old.last_time,
        }
    }
}

/// The `covers` of a round marker's value.
pub fn decode_marker(bytes: &[u8]) -> Result<i64, String> {
    #[derive(Deserialize)]
    struct Marker {
        covers: i64,
    }
    check_version(bytes)?;
    serde_json::from_slice::<Marker>(bytes)
        .map(|m| m.covers)
        .map_err(|e| format!("round marker does not parse: {e}"))
}

/// What a restore produced.
#[derive(Debug)]
pub struct Restored {
    /// The partition's state, resuming at `resume_at` (its offsets a crashed owner already
    /// answered marked as such under at-least-once).
    pub state: PartitionState,
    /// Where processing resumes (an input offset), or `None` for the partition's beginning.
    pub resume_at: Option<i64>,
    pub snapshot_users: usize,
    pub replayed: u64,
    /// Whether the snapshot was unreadable and the partition was rebuilt from the beginning.
    pub rebuilt: bool,
}

/// Restores input partition `placement.partition`: snapshot, then replay to the committed offset.
pub fn restore(
    settings: &Settings,
    placement: Placement,
    (set, bounds): (&RuleSet, &Bounds),
    dedup: DedupLimits,
    timeout: Duration,
) -> Result<Restored, SnapshotError> {
    // The replay's answers are not used: any set rebuilds the same state.
    let sets = Sets {
        active: set,
        shadow: None,
        bounds,
        explain: false,
    };
    let partition = placement.partition;
    // One reader serves every step: each assigns the partition it reads.
    let consumer = reader(settings, "restore")?;
    // Nothing ever committed is committed offset 0. Under exactly-once there is then no
    // snapshot either; under at-least-once a round may be durable before any offset commit (its
    // marker then says where to resume, as for any snapshot ahead of the committed offset).
    let committed_at = committed_offset(settings, partition, timeout)?;
    let committed = committed_at.unwrap_or(0);
    let (mut rebuild, rebuilt) = match load_snapshot(
        &consumer,
        &settings.topics.state,
        placement,
        dedup,
        timeout,
    ) {
        Ok(rebuild) => (rebuild, false),
        Err(SnapshotError::Unreadable { offset, reason }) => {
            tracing::error!(partition, offset, reason = %reason, "unreadable snapshot: rebuilding the partition by replaying from the earliest retained offset");
            (Rebuild::new(placement, dedup), true)
        }
        Err(e) => return Err(e),
    };
    let snapshot_users = rebuild.snapshot_users();
    let covers = rebuild.replay_from();
    let replay_from = covers.unwrap_or(0);
    // Replay input [S, committed) without output: the same verdicts as when first processed.
    if replay_from < committed {
        let from = covers.map_or(Offset::Beginning, Offset::Offset);
        let topic = &settings.topics.events;
        read_partition(
            &consumer,
            topic,
            partition,
            from,
            committed,
            timeout,
            |message| {
                rebuild.replay(
                    Input {
                        offset: message.offset(),
                        payload: message.payload().unwrap_or_default(),
                        key: idempotency_key(message),
                    },
                    sets,
                );
                Ok(())
            },
        )?;
    }
    fill_answers(&consumer, settings, partition, &mut rebuild, timeout)?;
    let replayed = rebuild.replayed();
    let resume_at = committed.max(replay_from);
    let mut state = rebuild.finish(resume_at);
    state.set_answered(answered_offsets(
        &consumer, settings, partition, resume_at, timeout,
    )?);
    Ok(Restored {
        state,
        resume_at: (committed_at.is_some() || covers.is_some()).then_some(resume_at),
        snapshot_users,
        replayed,
        rebuilt,
    })
}

/// The idempotency key header of an events record, if any.
pub fn idempotency_key(message: &impl Message) -> Option<&[u8]> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == HEADER)
        .map(|h| h.value.unwrap_or_default())
}

/// Fills in the answers of keyed events the replay remembered, from their response records
/// (the risk an event was answered with is not in the input): scans alerts partition
/// `partition` back from its end until every one is found or responses to earlier offsets
/// begin. An answer not found (no longer retained) stays unknown; a retry of that event is then
/// still not applied twice, and its response says the original's answer is gone.
fn fill_answers(
    consumer: &Reader,
    settings: &Settings,
    partition: i32,
    rebuild: &mut Rebuild,
    timeout: Duration,
) -> Result<(), SnapshotError> {
    use crate::domain::response::{AlertRecord, Outcome};
    let unknown = rebuild.unknown_answers();
    let Some(&(lowest, _)) = unknown.first() else {
        return Ok(());
    };
    let users: std::collections::HashMap<i64, u64> = unknown.iter().copied().collect();
    let mut found = std::collections::HashSet::new();
    scan_alerts_back(consumer, settings, partition, i64::MAX, timeout, |value| {
        let Ok(record) = AlertRecord::from_json(value) else {
            return ScanStep::Continue;
        };
        if record.event_id.partition != partition {
            return ScanStep::Continue;
        }
        let offset = record.event_id.offset;
        if let (
            Some(&user),
            None,
            Outcome::Accepted {
                alert_codes, risk, ..
            },
        ) = (users.get(&offset), &record.duplicate_of, &record.outcome)
        {
            rebuild.fill_answer(
                user,
                offset,
                &Answer {
                    codes: alert_codes.clone(),
                    risk: *risk,
                    rules_version: record.rules_version.clone(),
                },
            );
            found.insert(offset);
        }
        if found.len() == users.len() || offset < lowest {
            ScanStep::Stop
        } else {
            ScanStep::Continue
        }
    })?;
    if found.len() < users.len() {
        tracing::warn!(
            partition,
            missing = users.len() - found.len(),
            "answers of replayed keyed events not found in the alerts topic; their retries will say so"
        );
    }
    Ok(())
}

/// Whether a backward scan goes on.
enum ScanStep {
    Continue,
    Stop,
}

/// Hands the values of alerts partition `partition` to `each`, newest chunk first (records in
/// offset order within a chunk), until the chunk in which `each` said stop, the partition's
/// start, or `limit` records.
fn scan_alerts_back(
    consumer: &Reader,
    settings: &Settings,
    partition: i32,
    limit: i64,
    timeout: Duration,
    mut each: impl FnMut(&[u8]) -> ScanStep,
) -> Result<(), SnapshotError> {
    let alerts = settings.topics.alerts.as_str();
    let (low, high) = consumer.fetch_watermarks(alerts, partition, timeout)?;
    let floor = low.max(high.saturating_sub(limit));
    let mut end = high;
    while end > floor {
        let start = (end - ANSWERED_SCAN_CHUNK).max(floor);
        let mut stop = false;
        read_partition(
            consumer,
            alerts,
            partition,
            Offset::Offset(start),
            end,
            timeout,
            |message| {
                if let ScanStep::Stop = each(message.payload().unwrap_or_default()) {
                    stop = true;
                }
                Ok(())
            },
        )?;
        if stop {
            break;
        }
        end = start;
    }
    Ok(())
}

/// Records read at a time while scanning the alerts partition backwards.
const ANSWERED_SCAN_CHUNK: i64 = 10_000;

/// Under at-least-once, the input offsets `>= from` of input partition `partition` already
/// answered in alerts partition `partition` (empty under exactly-once, where every answer is
/// committed with its offset). Responses are there in processing order, so the scan walks back
/// from the end a chunk at a time and stops at the first chunk holding a response to an earlier
/// offset, or after `4 × processing.max_batch_events` records (a crash leaves at most one
/// uncommitted batch; the bound keeps a new group on an old alerts topic from reading it all).
fn answered_offsets(
    consumer: &Reader,
    settings: &Settings,
    partition: i32,
    from: i64,
    timeout: Duration,
) -> Result<FxHashSet<i64>, SnapshotError> {
    if settings.processing.guarantee != Guarantee::AtLeastOnce {
        return Ok(FxHashSet::default());
    }
    let mut answered = FxHashSet::default();
    let limit = i64::try_from(settings.processing.max_batch_events)
        .unwrap_or(i64::MAX / 8)
        .saturating_mul(4)
        .max(ANSWERED_SCAN_CHUNK);
    scan_alerts_back(
        consumer,
        settings,
        partition,
        limit,
        timeout,
        |value| match response_offset(value, partition) {
            Some(offset) if offset >= from => {
                answered.insert(offset);
                ScanStep::Continue
            }
            Some(_) => ScanStep::Stop,
            None => ScanStep::Continue,
        },
    )?;
    Ok(answered)
}

/// The input offset a response record answers, when it answers input partition `partition`
/// (only its `event_id` is read).
fn response_offset(value: &[u8], partition: i32) -> Option<i64> {
    #[derive(Deserialize)]
    struct EventId {
        event_id: String,
    }
    let id = serde_json::from_slice::<EventId>(value).ok()?.event_id;
    Coord::parse_event_id(&id)
        .filter(|at| at.partition == partition)
        .map(|at| at.offset)
}

/// The group's committed offset of an input partition (waits for pending transactional commits).
fn committed_offset(
    settings: &Settings,
    partition: i32,
    timeout: Duration,
) -> Result<Option<i64>, SnapshotError> {
    let mut config = crate::kafka::group_consumer_config(settings)?;
    config.set("client.id", format!("{}-restore", settings.kafka.client_id));
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&settings.topics.events, partition);
    let committed = consumer.committed_offsets(tpl, timeout)?;
    Ok(
        match committed
            .find_partition(&settings.topics.events, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) if o >= 0 => Some(o),
            _ => None,
        },
    )
}

/// Reads state partition `placement.partition` to its end: the latest record of every user and
/// the latest round marker.
fn load_snapshot(
    consumer: &Reader,
    topic: &str,
    placement: Placement,
    dedup: DedupLimits,
    timeout: Duration,
) -> Result<Rebuild, SnapshotError> {
    let partition = placement.partition;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let mut rebuild = Rebuild::new(placement, dedup);
    if high <= low {
        return Ok(rebuild);
    }
    read_partition(
        consumer,
        topic,
        partition,
        Offset::Beginning,
        high,
        timeout,
        |message| {
            load_record(&mut rebuild, message.key(), message.payload()).map_err(|reason| {
                SnapshotError::Unreadable {
                    offset: message.offset(),
                    reason,
                }
            })
        },
    )?;
    Ok(rebuild)
}

/// Loads one record of the state topic, in topic order, into `rebuild`: a round marker or a
/// user's state; anything else is unreadable.
pub fn load_record(
    rebuild: &mut Rebuild,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Result<(), String> {
    let Some(payload) = payload else {
        return Err("record without a value".to_owned());
    };
    let key = key.and_then(|k| std::str::from_utf8(k).ok());
    if key == Some(MARKER_KEY) {
        rebuild.load_marker(decode_marker(payload)?);
        return Ok(());
    }
    let Some(user_id) = key.and_then(UserId::parse).map(UserId::get) else {
        return Err("record without a numeric user_id key".to_owned());
    };
    let record = decode_record(payload)?;
    rebuild.load_user(
        user_id,
        record.covers,
        record.marked,
        record.state,
        record.keys,
    );
    Ok(())
}

/// [`read_range`] with a restore's errors.
fn read_partition(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    from: Offset,
    until: i64,
    timeout: Duration,
    each: impl FnMut(&BorrowedMessage<'_>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    read_range(consumer, topic, partition, from, until, timeout, each).map_err(|e| match e {
        RangeError::Kafka(e) => e.into(),
        RangeError::TimedOut { next } => SnapshotError::Timeout {
            partition,
            timeout,
            offset: next - 1,
        },
        RangeError::Stopped(e) => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::decode;
    use crate::domain::Risk;
    use crate::state::Users;

    #[test]
    fn snapshot_records_round_trip_and_reject_other_versions() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        for line in [
            r#"{"type": "deposit", "amount": "150.5", "user_id": 1, "time": 7}"#,
            r#"{"type": "withdraw", "amount": "3", "user_id": 1, "time": 9}"#,
        ] {
            users
                .apply(
                    &decode(line.as_bytes()).unwrap(),
                    Risk::Medium,
                    &set,
                    &bounds,
                )
                .unwrap();
        }
        let state = users.export(1).unwrap();
        let bytes = encode(42, &state, None);
        let record = decode_record(&bytes).unwrap();
        assert_eq!(record.v, FORMAT_VERSION);
        assert_eq!(record.covers, 42);
        assert_eq!(record.state, state);
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":2", "\"v\":3");
        assert!(decode_record(future.as_bytes())
            .unwrap_err()
            .contains("version 3"));
        assert!(decode_record(b"garbage").is_err());
        assert_eq!(decode_marker(&encode_marker(9)).unwrap(), 9);
        assert_eq!(
            decode_marker(br#"{"v":1,"round":true,"covers":5}"#).unwrap(),
            5
        );
    }

    /// State written by the release before rule sets (`tests/fixtures/snapshot-v1`: its
    /// snapshot records after `before.jsonl`, and its own `evaluate` answers to `after.jsonl`
    /// following them), restored by this one: every later answer is unchanged.
    #[test]
    fn a_version_1_snapshot_restores_to_the_same_answers() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        let records = include_str!("../tests/fixtures/snapshot-v1/state-v1.jsonl");
        for line in records.lines() {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            let record = decode_record(line["value"].to_string().as_bytes()).unwrap();
            assert_eq!(record.v, v1::VERSION);
            assert_eq!(record.covers, 2500);
            users.import(line["user_id"].as_u64().unwrap(), record.state);
        }
        let after = include_str!("../tests/fixtures/snapshot-v1/after.jsonl");
        let expected = include_str!("../tests/fixtures/snapshot-v1/expected-after.jsonl");
        let mut alerts = 0;
        for (i, (line, want)) in after.lines().zip(expected.lines()).enumerate() {
            let event = decode(line.as_bytes()).unwrap();
            let fired = users.apply(&event, Risk::Medium, &set, &bounds).unwrap();
            let want: serde_json::Value = serde_json::from_str(want).unwrap();
            let want: Vec<u32> = serde_json::from_value(want["alert_codes"].clone()).unwrap();
            assert_eq!(fired.codes, want, "line {} of after.jsonl", i + 1);
            alerts += usize::from(!want.is_empty());
        }
        assert!(
            alerts > 500,
            "the fixture exercises the rules: {alerts} alerts"
        );
    }
}
