//! Kafka plumbing shared by the processor and the shim: client configuration, topic admin, the
//! profiles follower, the rules topic, and the classification of Kafka errors.

pub mod admin;
pub mod connect;
pub mod dead_letters;
pub mod profiles;
pub mod read;
pub mod rules;

pub use read::{reader, Reader, ReaderContext};

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{Guarantee, Settings};

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLayerError {
    #[error("kafka.bootstrap_servers is empty: set it (e.g. USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:9092) or use `user-monitor run` for the embedded broker")]
    NoBootstrapServers,
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("topic {topic}: {reason}")]
    Topic { topic: String, reason: String },
    #[error("kafka did not answer within {0:?}")]
    Timeout(Duration),
    /// The brokers refused the credentials (or the SASL mechanism): no retry will help.
    #[error("kafka authentication failed ({security}, brokers {bootstrap}): {reason}")]
    Authentication {
        /// e.g. `SASL PLAIN as user "app", security.protocol SASL_SSL` (never the password).
        security: String,
        bootstrap: String,
        reason: String,
    },
    /// The TLS handshake failed (e.g. the broker's certificate is not signed by a trusted CA).
    #[error("kafka TLS handshake failed ({security}, brokers {bootstrap}): {reason}; check the ssl.* properties (e.g. ssl.ca.location)")]
    Tls {
        security: String,
        bootstrap: String,
        reason: String,
    },
    /// No broker of `kafka.bootstrap_servers` answered.
    #[error("kafka brokers {bootstrap} could not be reached ({waited}, security.protocol {protocol}): {reason}; check kafka.bootstrap_servers and that the brokers are up")]
    Unreachable {
        bootstrap: String,
        /// How long it waited, and why it stopped.
        waited: String,
        protocol: String,
        reason: String,
    },
}

/// Whether an error may go away by itself (retry) or means this instance must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: broker unavailable, timeouts, leadership changes. Retry.
    Retryable,
    /// The open transaction is doomed: abort it and rewind to the last commit.
    Abortable,
    /// Fenced by a newer instance with the same transactional id, or otherwise unusable. Stop.
    Fatal,
}

/// Explicit classification (rather than guessing from messages).
pub fn classify(error: &KafkaError) -> ErrorClass {
    if let KafkaError::Transaction(e) = error {
        return if e.is_fatal() {
            ErrorClass::Fatal
        } else if e.txn_requires_abort() {
            ErrorClass::Abortable
        } else {
            ErrorClass::Retryable
        };
    }
    // The client says so itself (e.g. a static member fenced by a newer one with its id).
    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
        return ErrorClass::Fatal;
    }
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::FencedInstanceId
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::Fatal,
        ) => ErrorClass::Fatal,
        Some(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::QueueFull
            | RDKafkaErrorCode::ConcurrentTransactions,
        ) => ErrorClass::Retryable,
        _ => ErrorClass::Abortable,
    }
}

impl KafkaLayerError {
    /// Whether waiting may cure it: a broker restarting or moving leadership (transport
    /// failures, `NotLeaderForPartition`, leader elections, a request timing out).
    pub fn is_transient(&self) -> bool {
        match self {
            KafkaLayerError::Client(e) => classify(e) == ErrorClass::Retryable,
            KafkaLayerError::Timeout(_) => true,
            _ => false,
        }
    }
}

/// Runs `op` until it succeeds, fails with an error waiting cannot cure, or `within` has
/// passed (the last error is returned then): for start-up, the one-shot commands and the shim's
/// changes, which a broker restart should delay, not fail. `op` must be safe to repeat (a record
/// published twice with the same value is).
pub fn retry_transient<T>(
    what: &str,
    within: Duration,
    op: impl FnMut() -> Result<T, KafkaLayerError>,
) -> Result<T, KafkaLayerError> {
    retry_while(what, within, KafkaLayerError::is_transient, op)
}

/// [`retry_transient`] with the caller's own test of which errors waiting may cure. Pauses
/// grow from 100 ms to 2 s between attempts; `op` may read how long is left from its own
/// deadline.
pub fn retry_while<T>(
    what: &str,
    within: Duration,
    curable: impl Fn(&KafkaLayerError) -> bool,
    mut op: impl FnMut() -> Result<T, KafkaLayerError>,
) -> Result<T, KafkaLayerError> {
    let deadline = std::time::Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        match op() {
            Ok(value) => return Ok(value),
            Err(e) if curable(&e) && std::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, "{what}: transient failure; retrying");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a fatal error says this producer's epoch is no longer current: a newer producer with
/// its transactional id, or the coordinator's abort of a timed-out transaction (told apart by
/// the processor, see `Output::fatal_error`).
pub fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// Whether a fatal error leaves the transactional producer unusable without naming another
/// instance or a missing permission (e.g. the broker's `INVALID_TXN_STATE` on ending a
/// transaction): a new producer, initialised again, can go on, as after a restart.
pub fn is_lost_producer(error: &KafkaError) -> bool {
    let authorization = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::TransactionalIdAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
        )
    );
    let fatal = matches!(error, KafkaError::Transaction(t) if t.is_fatal())
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal);
    fatal && !authorization && !is_fenced(error)
}

/// Whether a transactional call (init, send offsets, commit, abort) is to be retried with the
/// same call: retriable by the client's word, or a broker still recovering (seen from
/// `init_transactions` right after a broker restart).
pub fn transactional_call_retriable(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(t) if t.is_retriable()
    || (!t.is_fatal() && !t.txn_requires_abort() && matches!(
        t.code(),
        RDKafkaErrorCode::ConcurrentTransactions
            | RDKafkaErrorCode::CoordinatorLoadInProgress
            | RDKafkaErrorCode::CoordinatorNotAvailable
            | RDKafkaErrorCode::NotCoordinator
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
    )))
}

/// Whether a send failed only because the producer's queue is full (waiting makes room).
pub fn is_queue_full(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

/// What librdkafka's `rd_kafka_flush` returned: done, or the code it failed with.
pub fn flush_result(code: rdkafka::types::RDKafkaRespErr) -> Result<(), KafkaError> {
    match RDKafkaErrorCode::from(code) {
        RDKafkaErrorCode::NoError => Ok(()),
        code => Err(KafkaError::Flush(code)),
    }
}

/// The error of an at-least-once batch some record of which was not delivered: retryable (the
/// batch is rewound and produced again).
pub fn undelivered() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
}

/// The error of a transaction failed on purpose (fault injection): abortable.
pub fn injected_failure() -> KafkaError {
    KafkaError::MessageProduction(RDKafkaErrorCode::Application)
}

/// The error when the consumer has no group metadata to send a transaction's offsets with:
/// abortable.
pub fn no_group_metadata() -> KafkaError {
    KafkaError::ConsumerCommit(RDKafkaErrorCode::State)
}

/// Settings every client shares; the raw `[kafka.properties]` table is applied last.
pub fn base_config(settings: &Settings, role: &str) -> Result<ClientConfig, KafkaLayerError> {
    if settings.kafka.bootstrap_servers.trim().is_empty() {
        return Err(KafkaLayerError::NoBootstrapServers);
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("client.id", format!("{}-{role}", settings.kafka.client_id));
    Ok(config)
}

fn apply_overrides(config: &mut ClientConfig, settings: &Settings) {
    for (key, value) in &settings.kafka.properties {
        config.set(key, value);
    }
}

/// The processor's member of the consumer group: [`group_consumer_config`] plus, with
/// `processing.static_membership`, `group.instance.id` = the transactional id (stable across
/// restarts and unique per instance, exactly what a static member id must be).
pub fn group_member_config(settings: &Settings) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = group_consumer_config(settings)?;
    if settings.processing.static_membership
        && !settings.kafka.properties.contains_key("group.instance.id")
    {
        config.set("group.instance.id", settings.transactional_id());
    }
    Ok(config)
}

/// A consumer of the events topic in the consumer group (also the restore's reader of the
/// group's committed offsets, which must not claim the member's static identity).
pub fn group_consumer_config(settings: &Settings) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = base_config(settings, "processor")?;
    config
        .set("group.id", &settings.kafka.group_id)
        // Offsets are committed with the output, never automatically.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the beginning: nothing acknowledged is skipped.
        .set("auto.offset.reset", "earliest")
        // Only partitions that move are revoked; the rest keep flowing during a rebalance.
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Never process input of aborted upstream transactions.
        .set("isolation.level", "read_committed")
        // Kafka's default minimum (group.min.session.timeout.ms): a kill -9'd instance's
        // partitions move within about 6 s. Heartbeats come from the client's own thread,
        // whatever the processor does, so a live instance does not miss them.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500");
    apply_overrides(&mut config, settings);
    Ok(config)
}

/// A group-less reader (assign mode): restore, replay, profiles, the shim's read model.
pub fn reader_config(settings: &Settings, role: &str) -> Result<ClientConfig, KafkaLayerError> {
    reader_config_waiting(settings, role, 20)
}

/// The shim's follower of the alerts topic: a [`reader_config`] whose fetches park for at most
/// 5 ms, since every `POST /event` waits for its response to arrive through it (a commit marker
/// does not end a parked fetch, so this is added to each answer under exactly-once).
pub fn follower_config(settings: &Settings) -> Result<ClientConfig, KafkaLayerError> {
    reader_config_waiting(settings, "shim", 5)
}

fn reader_config_waiting(
    settings: &Settings,
    role: &str,
    fetch_wait_ms: u32,
) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = base_config(settings, role)?;
    config
        // librdkafka wants a group id even for assign-only consumers; it never joins it.
        .set(
            "group.id",
            format!("{}-{role}-reader", settings.kafka.group_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // Tells a reader when it has caught up with a partition.
        .set("enable.partition.eof", "true")
        // A transaction's commit marker (which makes its records visible to read_committed) does
        // not complete a parked fetch, so a reader would see each commit up to this late (500 ms
        // by default): keep it short, these readers are few.
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string());
    apply_overrides(&mut config, settings);
    Ok(config)
}

/// The processor's producer: transactional under exactly-once, idempotent always.
pub fn processor_producer_config(settings: &Settings) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = base_config(settings, "processor")?;
    config
        // No duplicates or reordering from producer retries.
        .set("enable.idempotence", "true")
        // Batch records for throughput: fewer, larger requests in bulk. A batch's wait for its
        // delivery reports (before a commit, or an at-least-once flush) sends lingering records
        // at once, so light-load answers do not wait for it (see `Output::wait_delivered`).
        .set("linger.ms", "5")
        // Back-to-back transactions meet the coordinator still finishing the previous one
        // (CONCURRENT_TRANSACTIONS); the default 100 ms backoff before the retry would be added
        // to the answers of a whole batch.
        .set("retry.backoff.ms", "5")
        .set("retry.backoff.max.ms", "100")
        // Java's default partitioner, so keys land where Java clients put them.
        .set("partitioner", "murmur2_random")
        // A record not delivered within the transaction timeout fails (and its batch is
        // rewound) under both guarantees, so a failed attempt's records stop being in flight
        // by then: at-least-once waits for that before it restores.
        .set(
            "message.timeout.ms",
            settings
                .processing
                .transaction_timeout
                .as_millis()
                .to_string(),
        );
    if settings.processing.guarantee == Guarantee::ExactlyOnce {
        config
            .set("transactional.id", settings.transactional_id())
            .set(
                "transaction.timeout.ms",
                settings
                    .processing
                    .transaction_timeout
                    .as_millis()
                    .to_string(),
            );
    }
    apply_overrides(&mut config, settings);
    Ok(config)
}

/// A producer for the shim and tools: idempotent, murmur2, acks from every in-sync replica.
pub fn producer_config(settings: &Settings, role: &str) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = base_config(settings, role)?;
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random");
    apply_overrides(&mut config, settings);
    Ok(config)
}

/// An admin client.
pub fn admin_config(settings: &Settings) -> Result<ClientConfig, KafkaLayerError> {
    let mut config = base_config(settings, "admin")?;
    apply_overrides(&mut config, settings);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader() -> KafkaLayerError {
        KafkaLayerError::Client(KafkaError::MetadataFetch(
            RDKafkaErrorCode::NotLeaderForPartition,
        ))
    }

    #[test]
    fn the_processors_own_errors_have_the_class_it_expects() {
        assert_eq!(classify(&undelivered()), ErrorClass::Retryable);
        assert_eq!(classify(&injected_failure()), ErrorClass::Abortable);
        assert_eq!(classify(&no_group_metadata()), ErrorClass::Abortable);
        assert!(is_queue_full(&KafkaError::MessageProduction(
            RDKafkaErrorCode::QueueFull
        )));
        assert!(!is_queue_full(&undelivered()));
    }

    #[test]
    fn a_leader_election_is_waited_out_then_the_call_succeeds() {
        let mut calls = 0;
        let result = retry_transient("test", Duration::from_secs(5), || {
            calls += 1;
            if calls < 3 {
                Err(not_leader())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 3);
    }

    #[test]
    fn an_error_waiting_cannot_cure_is_returned_at_once() {
        let mut calls = 0;
        let result: Result<(), _> = retry_transient("test", Duration::from_secs(5), || {
            calls += 1;
            Err(KafkaLayerError::Topic {
                topic: "t".into(),
                reason: "missing".into(),
            })
        });
        assert!(matches!(result, Err(KafkaLayerError::Topic { .. })));
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_transient_error_past_the_deadline_is_returned() {
        let started = std::time::Instant::now();
        let result: Result<(), _> =
            retry_transient("test", Duration::from_millis(300), || Err(not_leader()));
        assert!(result.unwrap_err().is_transient());
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
