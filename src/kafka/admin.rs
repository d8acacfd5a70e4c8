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

/// What a topic of the service is and how it must be configured.
struct TopicSpec<'a> {
    key: &'static str,
    name: &'a str,
    compacted: bool,
}

fn specs(settings: &Settings) -> [TopicSpec<'_>; 8] {
    let t = &settings.topics;
    [
        TopicSpec {
            key: "topics.events",
            name: &t.events,
            compacted: false,
        },
        TopicSpec {
            key: "topics.alerts",
            name: &t.alerts,
            compacted: false,
        },
        TopicSpec {
            key: "topics.dlq",
            name: &t.dlq,
            compacted: false,
        },
        TopicSpec {
            key: "topics.profiles",
            name: &t.profiles,
            compacted: true,
        },
        TopicSpec {
            key: "topics.state",
            name: &t.state,
            compacted: true,
        },
        TopicSpec {
            key: "topics.audit",
            name: &t.audit,
            compacted: false,
        },
        TopicSpec {
            key: "topics.rules",
            name: &t.rules,
            compacted: true,
        },
        TopicSpec {
            key: "topics.shadow",
            name: &t.shadow,
            compacted: false,
        },
    ]
}

/// Creates the missing topics (when `topics.create`) and validates all five: each exists, the
/// profiles and state topics are compacted, the state topic has as many partitions as the
/// events topic (it is co-partitioned with it), and the alerts topic at least as many (the
/// response to input partition p goes to alerts partition p). Returns what the processor needs
/// to know of them.
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
    let mut existing = partitions(&admin)?;
    let missing: Vec<_> = specs(settings)
        .into_iter()
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
            .map(|s| {
                let partitions = if s.key == "topics.state" || s.key == "topics.alerts" {
                    events_partitions
                } else if s.key == "topics.audit" || s.key == "topics.rules" {
                    1 // one order for the whole trail, one for the rule sets' versions
                } else {
                    settings.topics.partitions
                };
                let topic = NewTopic::new(
                    s.name,
                    partitions,
                    TopicReplication::Fixed(settings.topics.replication_factor),
                );
                if s.key == "topics.rules" {
                    // Broker time orders a swap against the events (also LogAppendTime), and
                    // superseded versions stay a week for replays that need them.
                    topic
                        .set("cleanup.policy", "compact")
                        .set("message.timestamp.type", "LogAppendTime")
                        .set("min.compaction.lag.ms", RULES_MIN_COMPACTION_LAG_MS)
                } else if s.key == "topics.profiles" {
                    // Broker time orders a risk change against the events, as for rule sets.
                    topic
                        .set("cleanup.policy", "compact")
                        .set("message.timestamp.type", "LogAppendTime")
                        .set("min.compaction.lag.ms", PROFILES_MIN_COMPACTION_LAG_MS)
                } else if s.key == "topics.events" {
                    topic.set("message.timestamp.type", "LogAppendTime")
                } else if s.compacted {
                    topic.set("cleanup.policy", "compact")
                } else if s.key == "topics.audit" {
                    topic.set("cleanup.policy", "delete")
                } else {
                    topic
                }
            })
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
            if specs(settings)
                .iter()
                .all(|s| existing.contains_key(s.name))
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(KafkaLayerError::Timeout(TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // The compacted topics, and the dead-letter topic for its record size limit.
    let described: Vec<_> = specs(settings)
        .into_iter()
        .filter(|s| s.compacted || matches!(s.key, "topics.dlq" | "topics.audit" | "topics.events"))
        .collect();
    let resources: Vec<_> = described
        .iter()
        .map(|s| ResourceSpecifier::Topic(s.name))
        .collect();
    let configs = futures::executor::block_on(admin.describe_configs(
        &resources,
        &AdminOptions::new().request_timeout(Some(TIMEOUT)),
    ))?;
    let mut dlq_max_message_bytes = None;
    for (spec, config) in described.iter().zip(configs) {
        let config = config.map_err(|e| KafkaLayerError::Topic {
            topic: spec.name.to_owned(),
            reason: format!("cannot describe: {e}"),
        })?;
        if spec.key == "topics.audit" {
            let policy = config
                .get("cleanup.policy")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            if policy.split(',').any(|p| p.trim() == "compact") {
                return Err(KafkaLayerError::Topic {
                    topic: spec.name.to_owned(),
                    reason: format!("topics.audit must never be compacted (it would keep only the last change per user), but its cleanup.policy is {policy:?}"),
                });
            }
            continue;
        }
        if spec.key == "topics.events" || spec.key == "topics.profiles" {
            // Broker time orders rule set swaps and risk changes against the events.
            let kind = config
                .get("message.timestamp.type")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            if kind != "LogAppendTime" {
                tracing::warn!(topic = spec.name, timestamp_type = %kind, "{} does not use LogAppendTime: rule set swaps and risk changes are ordered against events by their producers' clocks (set message.timestamp.type=LogAppendTime to order them by the broker's)", spec.key);
            }
            if spec.key == "topics.events" {
                continue;
            }
        }
        if !spec.compacted {
            dlq_max_message_bytes = config
                .get("max.message.bytes")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<usize>().ok());
            continue;
        }
        let policy = config
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(KafkaLayerError::Topic {
                topic: spec.name.to_owned(),
                reason: format!("{} must be compacted (cleanup.policy=compact), but its cleanup.policy is {policy:?}", spec.key),
            });
        }
    }
    let events = existing[&settings.topics.events];
    let state = existing[&settings.topics.state];
    if state != events {
        return Err(KafkaLayerError::Topic {
            topic: settings.topics.state.clone(),
            reason: format!("has {state} partitions but {} has {events}: the state topic must be co-partitioned with the events topic", settings.topics.events),
        });
    }
    let audit = existing[&settings.topics.audit];
    if audit != 1 {
        return Err(KafkaLayerError::Topic {
            topic: settings.topics.audit.clone(),
            reason: format!(
                "has {audit} partitions: topics.audit needs exactly 1, so the trail has one order"
            ),
        });
    }
    let rules = existing[&settings.topics.rules];
    if rules != 1 {
        return Err(KafkaLayerError::Topic {
            topic: settings.topics.rules.clone(),
            reason: format!(
                "has {rules} partitions: topics.rules needs exactly 1, so rule set versions have one order"
            ),
        });
    }
    let alerts = existing[&settings.topics.alerts];
    if alerts < events {
        return Err(KafkaLayerError::Topic {
            topic: settings.topics.alerts.clone(),
            reason: format!("has {alerts} partitions but {} has {events}: the response to input partition p goes to alerts partition p, so the alerts topic needs at least as many", settings.topics.events),
        });
    }
    Ok(Topics {
        partitions: events,
        dlq_max_message_bytes,
    })
}

/// What the processor learns of its topics at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Topics {
    /// Partitions of the events topic (a user's records belong to one of them).
    pub partitions: i32,
    /// The dead-letter topic's `max.message.bytes`, when the broker reports it.
    pub dlq_max_message_bytes: Option<usize>,
}
