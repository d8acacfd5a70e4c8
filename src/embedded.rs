//! The embedded broker of `user-monitor run` without `kafka.bootstrap_servers`: librdkafka's
//! in-process mock cluster ([`rdkafka::mocking::MockCluster`]), which speaks the Kafka protocol on
//! a loopback port. For trying the service out only:
//!
//! - it keeps nothing: every record lives in memory and is gone when the process exits;
//! - it does not filter aborted transactions (`read_committed` readers see aborted records and
//!   records of open transactions), so exactly-once cannot hold and `run` forces
//!   `processing.guarantee = at_least_once` on it;
//! - it has no admin API (no CreateTopics, no DescribeConfigs): the five topics are created here,
//!   through the mock API, and the processor skips topic validation;
//! - there is no compaction;
//! - a fetch with no data waits its full `fetch.wait.max.ms`, so `run` lowers it to 2 ms (about
//!   12% of a core while idle, for `POST /event` answers in about 7 ms instead of 12).

use std::net::SocketAddr;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::{AuthMode, Guarantee, Settings};

/// Errors of the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot start the embedded broker: {0}")]
    Start(KafkaError),
    #[error("cannot create topic {topic} on the embedded broker: {source}")]
    Topic { topic: String, source: KafkaError },
}

/// `fetch.wait.max.ms` on the embedded broker (librdkafka's default is 500).
pub const EMBEDDED_FETCH_WAIT_MS: &str = "2";

/// A running mock cluster with the service's topics. Dropping it stops it (and loses everything),
/// so it must outlive every client of it. Not `Send`: keep it on the thread that started it.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster and creates the service's topics (the state topic with as many
    /// partitions as the events topic).
    pub fn start(settings: &Settings) -> Result<Self, EmbeddedError> {
        let cluster = MockCluster::new(1).map_err(EmbeddedError::Start)?;
        // With the partitions a real broker's topics get (one for the rule sets and the audit
        // trail, whose partition 0 is read), but not their configs: the mock has no compaction.
        for (topic, partitions) in crate::kafka::admin::created_on_an_empty_cluster(settings) {
            cluster
                .create_topic(topic, partitions, 1)
                .map_err(|source| EmbeddedError::Topic {
                    topic: topic.to_owned(),
                    source,
                })?;
        }
        Ok(EmbeddedBroker { cluster })
    }

    /// The `bootstrap.servers` of the mock cluster (a loopback address).
    /// The mock cluster itself, e.g. to inject request errors in tests.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Points `settings` at this broker and adjusts what the mock cluster cannot do. Returns the
    /// notes to show in the banner.
    pub fn configure(&self, settings: &mut Settings) -> Vec<String> {
        settings.kafka.bootstrap_servers = self.bootstrap_servers();
        let mut notes = Vec::new();
        // The mock broker answers a fetch with no data only after its full wait (a real broker
        // answers as soon as a record arrives), and every response crosses several fetches
        // (processor input, profiles catch-up, shim alerts follower): keep that wait short.
        // librdkafka warns once per producer that this consumer property does not apply to it.
        settings
            .kafka
            .properties
            .entry("fetch.wait.max.ms".to_owned())
            .or_insert_with(|| EMBEDDED_FETCH_WAIT_MS.to_owned());
        if settings.http.auth.mode != AuthMode::Tokens {
            settings.http.auth.mode = AuthMode::Open;
            notes.push(
                "the HTTP API is OPEN: no authentication (http.auth.mode = \"tokens\" requires \
                 tokens; see `user-monitor token new`)"
                    .to_owned(),
            );
        }
        if settings.processing.guarantee == Guarantee::ExactlyOnce {
            settings.processing.guarantee = Guarantee::AtLeastOnce;
            notes.push(
                "processing.guarantee forced to at_least_once: the embedded broker does not filter \
                 aborted transactions"
                    .to_owned(),
            );
        }
        notes
    }
}

/// The loud note printed when the embedded broker starts.
pub fn banner(bootstrap: &str, http: SocketAddr, notes: &[String]) -> String {
    let rule = "=".repeat(78);
    let mut text = format!(
        "\n{rule}\n\
         user-monitor is running with an EMBEDDED KAFKA BROKER at {bootstrap}\n\
         (librdkafka's in-process mock cluster). It is for trying the service out:\n\
         \x20 - it KEEPS NOTHING: events, alerts, profiles and state vanish when this process exits;\n\
         \x20 - it does NOT filter aborted transactions (read_committed is not honoured).\n"
    );
    for note in notes {
        text.push_str(&format!("  - {note}.\n"));
    }
    text.push_str(&format!(
        "\nSend an event:\n\
         \x20 curl -s -XPOST {http}/event -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"type\": \"deposit\", \"amount\": \"42.00\", \"user_id\": 1, \"time\": 10}}'\n\
         API: http://{http}/openapi.json   readiness: http://{http}/readyz\n\
         \nFor real Kafka set kafka.bootstrap_servers (USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS).\n\
         {rule}\n"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forces_at_least_once_and_points_settings_at_the_mock_cluster() {
        let mut settings = Settings::defaults();
        let broker = EmbeddedBroker::start(&settings).unwrap();
        let notes = broker.configure(&mut settings);
        assert_eq!(settings.processing.guarantee, Guarantee::AtLeastOnce);
        assert!(settings.kafka.bootstrap_servers.starts_with("127.0.0.1:"));
        assert_eq!(
            settings.kafka.properties["fetch.wait.max.ms"],
            EMBEDDED_FETCH_WAIT_MS
        );
        let text = banner(
            &settings.kafka.bootstrap_servers,
            "127.0.0.1:5000".parse().unwrap(),
            &notes,
        );
        assert!(text.contains("KEEPS NOTHING"));
        assert!(text.contains("curl -s -XPOST 127.0.0.1:5000/event"));
        assert!(text.contains("at_least_once"));
    }
}
