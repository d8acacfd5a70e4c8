//! Rule sets and risk changes a test publishes while a processor runs, with the append time of
//! each record: which set and which risk level must judge an input appended at a given time.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use rdkafka::producer::{FutureProducer, FutureRecord};
use user_monitor::domain::Risk;
use user_monitor::rule_set::RuleSet;

use super::kafka::{client_at, World};
use super::oracle::{expected_in_partition_order_timed, Expected};

/// What one world's rules and profiles topics received.
pub struct Publications {
    /// Names the world in logs ("exactly_once").
    label: String,
    /// Prefixes panics (e.g. "FAULT_SEED=...").
    context: String,
    rules_topic: String,
    profiles_topic: String,
    /// Idempotent, retrying through a broker outage.
    producer: FutureProducer,
    /// The active rule sets published: (append time ms, index into the test's sets), in
    /// publish order.
    pub rules: Vec<(i64, usize)>,
    /// Each user's risk changes: (the record's timestamp ms, level), in publish order.
    pub risks: HashMap<u64, Vec<(i64, Risk)>>,
    /// The profiles topic's record timestamps seen: (LogAppendTime, CreateTime).
    pub profile_timestamps: (usize, usize),
}

impl Publications {
    pub fn new(world: &World, label: &str, context: &str) -> Publications {
        let producer = client_at(
            &world.bootstrap(),
            &[
                ("enable.idempotence", "true"),
                ("message.timeout.ms", "120000"),
                ("linger.ms", "0"),
            ],
        )
        .create()
        .unwrap();
        Publications {
            label: label.to_owned(),
            context: context.to_owned(),
            rules_topic: world.rules(),
            profiles_topic: world.profiles(),
            producer,
            rules: Vec::new(),
            risks: HashMap::new(),
            profile_timestamps: (0, 0),
        }
    }

    /// Publishes `set` (an index into the test's sets), when given, to the rules topic and
    /// `changes` to the profiles topic, waits until every record is acknowledged and records
    /// their timestamps.
    pub fn publish(&mut self, set: Option<(usize, &RuleSet)>, changes: &[(u64, Risk)]) {
        let context = &self.context;
        let rules_value = set.map(|(_, set)| serde_json::to_vec(&set.to_value()).unwrap());
        let rules = rules_value.as_ref().map(|value| {
            let record = FutureRecord::to(&self.rules_topic)
                .key("active")
                .payload(value);
            self.producer
                .send_result(record)
                .unwrap_or_else(|(e, _)| panic!("{context}: publishing a rule set: {e}"))
        });
        let values: Vec<(String, Vec<u8>)> = changes
            .iter()
            .map(|(user, risk)| {
                (
                    user.to_string(),
                    format!(r#"{{"risk":"{risk}"}}"#).into_bytes(),
                )
            })
            .collect();
        let profiles: Vec<_> = values
            .iter()
            .map(|(key, value)| {
                let record = FutureRecord::to(&self.profiles_topic)
                    .key(key)
                    .payload(value);
                self.producer
                    .send_result(record)
                    .unwrap_or_else(|(e, _)| panic!("{context}: publishing a risk change: {e}"))
            })
            .collect();
        let acknowledged = |delivery: rdkafka::producer::DeliveryFuture, what: &str| {
            futures::executor::block_on(delivery)
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("{context}: {what} not acknowledged: {e}"))
                .timestamp
        };
        if let (Some(delivery), Some((index, set))) = (rules, set) {
            match acknowledged(delivery, "the rule set") {
                rdkafka::Timestamp::LogAppendTime(t) => {
                    eprintln!(
                        "{} {}: rule set {:?} appended at {} ({t})",
                        wall_clock(),
                        self.label,
                        set.version,
                        clock_of(t)
                    );
                    self.rules.push((t, index));
                }
                other => panic!("{context}: the rules topic is not LogAppendTime: {other:?}"),
            }
        }
        let mut times = Vec::new();
        for (delivery, &(user, risk)) in profiles.into_iter().zip(changes) {
            let t = match acknowledged(delivery, "a risk change") {
                rdkafka::Timestamp::LogAppendTime(t) => {
                    self.profile_timestamps.0 += 1;
                    t
                }
                rdkafka::Timestamp::CreateTime(t) => {
                    self.profile_timestamps.1 += 1;
                    t
                }
                rdkafka::Timestamp::NotAvailable => {
                    panic!("{context}: a risk change without timestamp")
                }
            };
            self.risks.entry(user).or_default().push((t, risk));
            times.push(t);
        }
        if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
            eprintln!(
                "{} {}: {} risk changes, timestamps {} to {}",
                wall_clock(),
                self.label,
                times.len(),
                clock_of(*first),
                clock_of(*last)
            );
        }
    }

    /// Publishes the rule set in `file` (`set`, index `index` of the test's sets) with
    /// `user-monitor rules publish`, as an operator would: it must succeed, riding out a broker
    /// that just restarted. Records its append time from what the command prints.
    pub fn publish_with_cli(
        &mut self,
        world: &World,
        (index, set): (usize, &RuleSet),
        file: &Path,
    ) {
        let context = &self.context;
        let out = super::process::user_monitor_command()
            .args(["rules", "publish"])
            .arg(file)
            .arg("--config-dir")
            .arg(world.dir.path())
            .arg("--env")
            .arg("test")
            .envs(world.env(98))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{context}: `user-monitor rules publish` exited {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let printed: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{context}: rules publish printed no JSON ({e})"));
        assert_eq!(printed["version"], set.version.as_str(), "{printed}");
        let t = printed["timestamp"].as_i64().expect("timestamp");
        eprintln!(
            "{} {}: rule set {:?} published with the CLI, appended at {} ({t})",
            wall_clock(),
            self.label,
            set.version,
            clock_of(t)
        );
        self.rules.push((t, index));
    }

    /// The engine's answers under each of `sets` (by index) for inputs `(coordinate, value,
    /// append time)` in `partitions` partitions, each input at its user's risk when it was
    /// appended.
    pub fn expected(
        &self,
        inputs: &[((i32, i64), &[u8], i64)],
        partitions: i32,
        sets: &[RuleSet],
    ) -> Vec<HashMap<(i32, i64), Expected>> {
        sets.iter()
            .map(|set| {
                expected_in_partition_order_timed(inputs, partitions, set, |user, t| {
                    self.risk_at(user.get(), t)
                })
            })
            .collect()
    }

    /// The index of the set that judges an input appended at `t`: the latest published at or
    /// before it (0, the configured default, before any).
    pub fn set_at(&self, t: i64) -> usize {
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, (at, _))| *at <= t)
            .max_by_key(|(order, (at, _))| (*at, *order))
            .map_or(0, |(_, (_, set))| *set)
    }

    /// The user's risk for an input appended at `t`: the latest change at or before it.
    pub fn risk_at(&self, user: u64, t: i64) -> Risk {
        self.risks
            .get(&user)
            .and_then(|changes| {
                changes
                    .iter()
                    .enumerate()
                    .filter(|(_, (at, _))| *at <= t)
                    .max_by_key(|(order, (at, _))| (*at, *order))
                    .map(|(_, (_, risk))| *risk)
            })
            .unwrap_or(Risk::Medium)
    }
}

/// `count` distinct users of `1..=users`, each to a random level.
pub fn risk_changes(rng: &mut impl rand::Rng, users: u64, count: usize) -> Vec<(u64, Risk)> {
    rand::seq::index::sample(rng, users as usize, count)
        .into_iter()
        .map(|i| (i as u64 + 1, Risk::ALL[rng.gen_range(0..3)]))
        .collect()
}

/// UTC time of day of `ms` since the epoch, as the processors log it.
pub fn clock_of(ms: i64) -> String {
    let secs = ms.div_euclid(1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ms.rem_euclid(1000)
    )
}

/// The time of day now, as [`clock_of`] writes it.
pub fn wall_clock() -> String {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    clock_of(now.as_millis() as i64)
}
