//! Topics: created at start-up when missing, validated when present.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use super::{admin_config, KafkaLayerError};
use crate::config::Settings;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A created rules topic keeps superseded versions at least this long (7 days).
const RULES_MIN_COMPACTION_LAG_MS: &str = "604800000";

/// How long a superseded risk level stays in the profiles topic: a replay within it judges its
/// events by the level in force when they were appended (later, by the newest kept).
const PROFILES_MIN_COMPACTION_LAG_MS: &str = RULES_MIN_COMPACTION_LAG_MS;

const COMPACT: (&str, &str) = ("cleanup.policy", "compact");
const LOG_APPEND_TIME: (&str, &str) = ("message.timestamp.type", "LogAppendTime");

/// A topic of the service: how it is created when missing, and what is checked of it when it
/// exists.
struct TopicSpec<'a> {
    /// Its key in the settings, by which messages name it.
    key: &'static str,
    name: &'a str,
    /// How many partitions it is created with, and may have.
    partitions: Partitions,
    /// The configs it is created with, in this order.
    configs: &'static [(&'static str, &'static str)],
    /// What is checked of its configs when it exists (a topic without any is not described).
    checks: &'static [Check],
}

/// A topic's partition count: when created, and what it must be.
#[derive(Debug, Clone, Copy)]
enum Partitions {
    /// Created with `topics.partitions`; any count will do.
    Configured,
    /// Created with one, and must have exactly one, so that `so` holds.
    One { so: &'static str },
    /// Created with as many as the events topic, and must have exactly as many, `because`.
    SameAsEvents { because: &'static str },
    /// Created with as many as the events topic, and must have at least as many, `because`.
    AtLeastEvents { because: &'static str },
}

/// What is checked of an existing topic's configs.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// Its `cleanup.policy` includes `compact`, else an error.
    Compacted,
    /// Its `cleanup.policy` does not include `compact`, else an error (`because` says why).
    NeverCompacted { because: &'static str },
    /// Its `message.timestamp.type` is `LogAppendTime`, else a warning.
    LogAppendTime,
    /// Not a condition: its `max.message.bytes` is what [`Topics::dlq_max_message_bytes`]
    /// reports.
    MaxMessageBytes,
}

/// The topics of the service, in the order of their settings.
fn specs(settings: &Settings) -> [TopicSpec<'_>; 9] {
    let t = &settings.topics;
    [
        TopicSpec {
            key: "topics.events",
            name: &t.events,
            partitions: Partitions::Configured,
            // Broker time orders the events against rule set swaps and risk changes.
            configs: &[LOG_APPEND_TIME],
            checks: &[Check::LogAppendTime],
        },
        TopicSpec {
            key: "topics.alerts",
            name: &t.alerts,
            partitions: Partitions::AtLeastEvents {
                because: "the response to input partition p goes to alerts partition p, so the alerts topic needs at least as many",
            },
            configs: &[],
            checks: &[],
        },
        TopicSpec {
            key: "topics.dlq",
            name: &t.dlq,
            partitions: Partitions::Configured,
            configs: &[],
            // For its record size limit.
            checks: &[Check::MaxMessageBytes],
        },
        TopicSpec {
            key: "topics.profiles",
            name: &t.profiles,
            partitions: Partitions::Configured,
            // Broker time orders a risk change against the events, as for rule sets.
            configs: &[
                COMPACT,
                LOG_APPEND_TIME,
                ("min.compaction.lag.ms", PROFILES_MIN_COMPACTION_LAG_MS),
            ],
            checks: &[Check::LogAppendTime, Check::Compacted],
        },
        TopicSpec {
            key: "topics.state",
            name: &t.state,
            partitions: Partitions::SameAsEvents {
                because: "the state topic must be co-partitioned with the events topic",
            },
            configs: &[COMPACT],
            checks: &[Check::Compacted],
        },
        TopicSpec {
            key: "topics.audit",
            name: &t.audit,
            partitions: Partitions::One {
                so: "the trail has one order",
            },
            configs: &[("cleanup.policy", "delete")],
            checks: &[Check::NeverCompacted {
                because: "it would keep only the last change per user",
            }],
        },
        TopicSpec {
            key: "topics.rules",
            name: &t.rules,
            partitions: Partitions::One {
                so: "rule set versions have one order",
            },
            // Broker time orders a swap against the events (also LogAppendTime), and
            // superseded versions stay a week for replays that need them.
            configs: &[
                COMPACT,
                LOG_APPEND_TIME,
                ("min.compaction.lag.ms", RULES_MIN_COMPACTION_LAG_MS),
            ],
            checks: &[Check::Compacted],
        },
        TopicSpec {
            key: "topics.shadow",
            name: &t.shadow,
            partitions: Partitions::Configured,
            configs: &[],
            checks: &[],
        },
        TopicSpec {
            key: "topics.triage",
            name: &t.triage,
            partitions: Partitions::Configured,
            // An alert's latest triage is its state: older ones are in the audit trail.
            configs: &[COMPACT],
            checks: &[Check::Compacted],
        },
    ]
}

impl TopicSpec<'_> {
    /// The topic to create, given the events topic's partition count (what it has, or will
    /// be created with).
    fn new_topic(&self, settings: &Settings, events_partitions: i32) -> NewTopic<'_> {
        let partitions = match self.partitions {
            Partitions::Configured => settings.topics.partitions,
            Partitions::One { .. } => 1,
            Partitions::SameAsEvents { .. } | Partitions::AtLeastEvents { .. } => events_partitions,
        };
        self.configs.iter().fold(
            NewTopic::new(
                self.name,
                partitions,
                TopicReplication::Fixed(settings.topics.replication_factor),
            ),
            |topic, (key, value)| topic.set(key, value),
        )
    }

    /// Applies [`TopicSpec::checks`] to the existing topic's configs (`value` of a name);
    /// returns its `max.message.bytes` when asked for it.
    fn check_configs(
        &self,
        value: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<usize>, KafkaLayerError> {
        let mut max_message_bytes = None;
        for check in self.checks {
            match *check {
                Check::Compacted => {
                    let policy = value("cleanup.policy").unwrap_or_default();
                    if !is_compacted(&policy) {
                        return Err(self.error(format!("{} must be compacted (cleanup.policy=compact), but its cleanup.policy is {policy:?}", self.key)));
                    }
                }
                Check::NeverCompacted { because } => {
                    let policy = value("cleanup.policy").unwrap_or_default();
                    if is_compacted(&policy) {
                        return Err(self.error(format!("{} must never be compacted ({because}), but its cleanup.policy is {policy:?}", self.key)));
                    }
                }
                Check::LogAppendTime => {
                    // Broker time orders rule set swaps and risk changes against the events.
                    let kind = value("message.timestamp.type").unwrap_or_default();
                    if kind != "LogAppendTime" {
                        tracing::warn!(topic = self.name, timestamp_type = %kind, "{} does not use LogAppendTime: rule set swaps and risk changes are ordered against events by their producers' clocks (set message.timestamp.type=LogAppendTime to order them by the broker's)", self.key);
                    }
                }
                Check::MaxMessageBytes => {
                    max_message_bytes =
                        value("max.message.bytes").and_then(|v| v.parse::<usize>().ok());
                }
            }
        }
        Ok(max_message_bytes)
    }

    /// Checks the existing topic's partition count against [`TopicSpec::partitions`], given the
    /// events topic's name and count.
    fn check_partitions(
        &self,
        partitions: i32,
        events_topic: &str,
        events: i32,
    ) -> Result<(), KafkaLayerError> {
        let reason = match self.partitions {
            Partitions::One { so } if partitions != 1 => {
                format!(
                    "has {partitions} partitions: {} needs exactly 1, so {so}",
                    self.key
                )
            }
            Partitions::SameAsEvents { because } if partitions != events => {
                format!("has {partitions} partitions but {events_topic} has {events}: {because}")
            }
            Partitions::AtLeastEvents { because } if partitions < events => {
                format!("has {partitions} partitions but {events_topic} has {events}: {because}")
            }
            _ => return Ok(()),
        };
        Err(self.error(reason))
    }

    fn error(&self, reason: String) -> KafkaLayerError {
        KafkaLayerError::Topic {
            topic: self.name.to_owned(),
            reason,
        }
    }
}

/// Whether a `cleanup.policy` value includes `compact`.
fn is_compacted(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

/// Creates the missing topics (when `topics.create`) and validates all nine, as [`specs`]
/// describes them: each exists; the profiles, state, rules and triage topics are compacted and the
/// audit topic never is; the state topic has as many partitions as the events topic (it is
/// co-partitioned with it), the alerts topic at least as many (the response to input partition
/// p goes to alerts partition p), the audit and rules topics exactly one; an events or
/// profiles topic not on `LogAppendTime` is warned about. Returns what the processor needs to
/// know of them.
pub fn ensure_topics(settings: &Settings) -> Result<Topics, KafkaLayerError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(settings)?.create()?;
    let partitions = |admin: &AdminClient<DefaultClientContext>| -> Result<HashMap<String, i32>, KafkaLayerError> {
        let metadata = admin.inner().fetch_metadata(None, TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    };
    let specs = specs(settings);
    let mut existing = partitions(&admin)?;
    let missing: Vec<_> = specs
        .iter()
        .filter(|s| !existing.contains_key(s.name))
        .collect();
    if !missing.is_empty() {
        if !settings.topics.create {
            let names: Vec<_> = missing
                .iter()
                .map(|s| format!("{} ({})", s.name, s.key))
                .collect();
            return Err(KafkaLayerError::Topic {
                topic: names.join(", "),
                reason: "missing, and topics.create is false".to_owned(),
            });
        }
        let events_partitions = existing
            .get(&settings.topics.events)
            .copied()
            .unwrap_or(settings.topics.partitions);
        let new_topics: Vec<NewTopic> = missing
            .iter()
            .map(|s| s.new_topic(settings, events_partitions))
            .collect();
        let results = futures::executor::block_on(admin.create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))?;
        for result in results {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaLayerError::Topic {
                        topic: name,
                        reason: format!("cannot create: {code}"),
                    })
                }
            }
        }
        // Metadata propagates asynchronously; wait until every topic is visible.
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            existing = partitions(&admin)?;
            if specs.iter().all(|s| existing.contains_key(s.name)) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(KafkaLayerError::Timeout(TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let described: Vec<_> = specs.iter().filter(|s| !s.checks.is_empty()).collect();
    let resources: Vec<_> = described
        .iter()
        .map(|s| ResourceSpecifier::Topic(s.name))
        .collect();
    // A topic just created may be described by a broker that has not learned of it yet: it
    // answers with no configs at all (not even the defaults), which would read as a wrong
    // cleanup.policy. Every topic has one, so ask again until each topic's is there.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let configs = loop {
        let configs = futures::executor::block_on(admin.describe_configs(
            &resources,
            &AdminOptions::new().request_timeout(Some(TIMEOUT)),
        ))?;
        let propagated = configs.iter().all(|config| match config {
            Ok(config) => config
                .get("cleanup.policy")
                .is_some_and(|entry| entry.value.is_some()),
            Err(_) => true,
        });
        if propagated || std::time::Instant::now() > deadline {
            break configs;
        }
        tracing::debug!("topic configs not propagated yet; describing again");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut dlq_max_message_bytes = None;
    for (spec, config) in described.iter().zip(configs) {
        let config = config.map_err(|e| spec.error(format!("cannot describe: {e}")))?;
        if let Some(bytes) =
            spec.check_configs(|name| config.get(name).and_then(|e| e.value.clone()))?
        {
            dlq_max_message_bytes = Some(bytes);
        }
    }
    let events = existing[&settings.topics.events];
    for spec in &specs {
        spec.check_partitions(existing[spec.name], &settings.topics.events, events)?;
    }
    Ok(Topics {
        partitions: events,
        dlq_max_message_bytes,
    })
}

/// Every topic of the service with the partitions it is created with on an empty cluster: for
/// the embedded broker, which has no admin API.
pub fn created_on_an_empty_cluster(settings: &Settings) -> Vec<(&str, i32)> {
    specs(settings)
        .iter()
        .map(|s| {
            let topic = s.new_topic(settings, settings.topics.partitions);
            (s.name, topic.num_partitions)
        })
        .collect()
}

/// What the processor learns of its topics at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Topics {
    /// Partitions of the events topic (a user's records belong to one of them).
    pub partitions: i32,
    /// The dead-letter topic's `max.message.bytes`, when the broker reports it.
    pub dlq_max_message_bytes: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let mut settings = Settings::defaults();
        settings.topics.partitions = 6;
        settings
    }

    fn spec<'a>(specs: &'a [TopicSpec<'a>], key: &str) -> &'a TopicSpec<'a> {
        specs.iter().find(|s| s.key == key).unwrap()
    }

    fn reason(result: Result<impl std::fmt::Debug, KafkaLayerError>) -> String {
        match result {
            Err(KafkaLayerError::Topic { reason, .. }) => reason,
            other => panic!("not a topic error: {other:?}"),
        }
    }

    #[test]
    fn missing_topics_are_created_with_their_partitions_and_configs() {
        let settings = settings();
        let (compact, log_append_time, lag) = (
            ("cleanup.policy", "compact"),
            ("message.timestamp.type", "LogAppendTime"),
            ("min.compaction.lag.ms", "604800000"),
        );
        let expected = [
            ("topics.events", 6, vec![log_append_time]),
            ("topics.alerts", 4, vec![]),
            ("topics.dlq", 6, vec![]),
            ("topics.profiles", 6, vec![compact, log_append_time, lag]),
            ("topics.state", 4, vec![compact]),
            ("topics.audit", 1, vec![("cleanup.policy", "delete")]),
            ("topics.rules", 1, vec![compact, log_append_time, lag]),
            ("topics.shadow", 6, vec![]),
            ("topics.triage", 6, vec![compact]),
        ];
        let specs = specs(&settings);
        for (spec, (key, partitions, configs)) in specs.iter().zip(expected) {
            assert_eq!(spec.key, key);
            let topic = spec.new_topic(&settings, 4);
            assert_eq!(topic.name, spec.name);
            assert_eq!(topic.num_partitions, partitions, "{key}");
            assert_eq!(topic.config, configs, "{key}");
        }
    }

    #[test]
    fn partition_counts_are_checked_against_the_events_topic() {
        let settings = settings();
        let specs = specs(&settings);
        let check = |key, partitions| spec(&specs, key).check_partitions(partitions, "ev", 4);
        assert_eq!(
            reason(check("topics.state", 5)),
            "has 5 partitions but ev has 4: the state topic must be co-partitioned with the events topic"
        );
        assert!(check("topics.state", 4).is_ok());
        assert_eq!(
            reason(check("topics.alerts", 3)),
            "has 3 partitions but ev has 4: the response to input partition p goes to alerts partition p, so the alerts topic needs at least as many"
        );
        assert!(check("topics.alerts", 5).is_ok());
        assert_eq!(
            reason(check("topics.audit", 2)),
            "has 2 partitions: topics.audit needs exactly 1, so the trail has one order"
        );
        assert_eq!(
            reason(check("topics.rules", 3)),
            "has 3 partitions: topics.rules needs exactly 1, so rule set versions have one order"
        );
        for key in [
            "topics.events",
            "topics.dlq",
            "topics.profiles",
            "topics.shadow",
            "topics.triage",
        ] {
            assert!(check(key, 7).is_ok(), "{key}");
        }
    }

    #[test]
    fn configs_are_checked_as_each_topic_needs() {
        let settings = settings();
        let specs = specs(&settings);
        let check = |key, configs: &[(&str, &str)]| {
            let configs: HashMap<String, String> = configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            spec(&specs, key).check_configs(|name| configs.get(name).cloned())
        };
        let delete = [("cleanup.policy", "delete")];
        let compact = [("cleanup.policy", "compact, delete")];
        for key in [
            "topics.profiles",
            "topics.state",
            "topics.rules",
            "topics.triage",
        ] {
            assert_eq!(
                reason(check(key, &delete)),
                format!("{key} must be compacted (cleanup.policy=compact), but its cleanup.policy is \"delete\"")
            );
            assert!(matches!(check(key, &compact), Ok(None)), "{key}");
        }
        assert_eq!(
            reason(check("topics.audit", &compact)),
            "topics.audit must never be compacted (it would keep only the last change per user), but its cleanup.policy is \"compact, delete\""
        );
        assert!(matches!(check("topics.audit", &delete), Ok(None)));
        // Only a warning.
        assert!(matches!(
            check("topics.events", &[("message.timestamp.type", "CreateTime")]),
            Ok(None)
        ));
        assert!(matches!(
            check("topics.dlq", &[("max.message.bytes", "1048588")]),
            Ok(Some(1048588))
        ));
        assert!(matches!(check("topics.dlq", &[]), Ok(None)));
        let described: Vec<_> = specs
            .iter()
            .filter(|s| !s.checks.is_empty())
            .map(|s| s.key)
            .collect();
        assert_eq!(
            described,
            [
                "topics.events",
                "topics.dlq",
                "topics.profiles",
                "topics.state",
                "topics.audit",
                "topics.rules",
                "topics.triage"
            ]
        );
    }
}
