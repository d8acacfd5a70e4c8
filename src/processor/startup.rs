//! What the processor needs before its first turn, prepared by its host before
//! [`super::run`]: the brokers reached, the topics created and checked, the profiles seed
//! published and the configured rule sets read.

use super::output::dlq_limit;
use super::ProcessorError;
use crate::config::Settings;
use crate::kafka::KafkaLayerError;
use crate::rule_set::timeline::Timeline;

/// The outcome of [`prepare`] (kept: a processor re-initialised in place starts from it again).
#[derive(Clone)]
pub struct Startup {
    /// Partitions of the events topic: where each user's records belong.
    pub(super) partition_count: i32,
    /// Largest dead-letter value; larger rejected inputs are truncated.
    pub(super) dlq_limit: usize,
    /// The configured rule sets, which versions published to the rules topic join.
    pub(super) timeline: Timeline,
}

/// Reaches the brokers (waiting for them, see `kafka.connect_timeout`), creates and validates
/// the topics, publishes `profiles.seed_file` and reads the configured rule sets. `embedded`:
/// the embedded broker's topics are pre-created and cannot be described, so the admin step is
/// skipped.
pub fn prepare(settings: &Settings, embedded: bool) -> Result<Startup, ProcessorError> {
    let topics = if embedded {
        None
    } else {
        crate::kafka::connect::check(settings, crate::kafka::connect::Patience::UntilConnected)?;
        // A broker that fails between the connectivity check and the admin requests (a
        // restart) is waited out; a misconfigured topic or refused access stops at once.
        let topics = crate::kafka::retry_transient(
            "topics not ready yet (the broker is restarting?)",
            settings.kafka.connect_timeout,
            || crate::kafka::admin::ensure_topics(settings),
        )?;
        tracing::info!(partitions = topics.partitions, topic = %settings.topics.events, "topics ready");
        Some(topics)
    };
    seed_profiles(settings)?;
    // Validated with the configuration; read again here, where a file changed since says so.
    let (active, shadow) = settings.rule_sets().map_err(ProcessorError::Rules)?;
    tracing::info!(
        active = %active.version,
        shadow = shadow.as_ref().map(|s| s.version.as_str()),
        "configured rule sets (until one is published to the rules topic)"
    );
    Ok(Startup {
        partition_count: topics.map_or(settings.topics.partitions, |t| t.partitions),
        dlq_limit: dlq_limit(settings, topics.and_then(|t| t.dlq_max_message_bytes)),
        timeline: Timeline::new(active, shadow),
    })
}

/// Publishes `profiles.seed_file`, when set, to the profiles topic before the first batch.
fn seed_profiles(settings: &Settings) -> Result<(), ProcessorError> {
    let path = &settings.profiles.seed_file;
    if path.is_empty() {
        return Ok(());
    }
    let lines = crate::profiles::Profiles::read_file(path).map_err(|e| KafkaLayerError::Topic {
        topic: settings.topics.profiles.clone(),
        reason: format!("profiles.seed_file: {e}"),
    })?;
    let published = crate::kafka::profiles::publish(settings, &lines)?;
    tracing::info!(published, file = %path, "seeded profiles");
    Ok(())
}
