//! The start-up connectivity check: before a command builds its real clients, one short-lived
//! client with the same configuration (`[kafka.properties]` included) asks the cluster for
//! metadata, which librdkafka only sends over a connection that is up, TLS and SASL included.
//!
//! What librdkafka reports meanwhile through the client's error callback decides how it ends:
//!
//! - rejected credentials, an unsupported SASL mechanism (`Local: Authentication failure`) or a
//!   failed TLS handshake (`Local: SSL error`, e.g. an unknown CA) are configuration errors that
//!   no retry fixes: [`KafkaLayerError::Authentication`] / [`KafkaLayerError::Tls`] at once,
//!   naming `security.protocol`, the SASL mechanism and the user (never the password) and the
//!   broker's reason. Without the check they surfaced only as a metadata timeout 30 s later.
//! - brokers that cannot be reached: [`KafkaLayerError::Unreachable`] naming
//!   `kafka.bootstrap_servers` and the last connection error, after `kafka.connect_timeout`
//!   ([`Patience::UntilConnected`]) or once connections have been failing for a second
//!   ([`Patience::FirstAnswer`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

use super::{admin_config, KafkaLayerError};
use crate::config::Settings;

/// How long to wait for unreachable brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// Until a broker answers, at most `kafka.connect_timeout` (a command that cannot work
    /// without Kafka: `process`, `topics create`).
    UntilConnected,
    /// Until the first answer: connected, refused, or connections failing for a second (the
    /// shim, which serves not-ready while Kafka is unreachable). At most `kafka.connect_timeout`.
    FirstAnswer,
}

/// Checks that a broker of `kafka.bootstrap_servers` answers with this configuration. Blocks.
pub fn check(settings: &Settings, patience: Patience) -> Result<(), KafkaLayerError> {
    let started = Instant::now();
    let mut config = admin_config(settings)?;
    if !settings.kafka.properties.contains_key("client.id") {
        config.set(
            "client.id",
            format!("{}-connect-check", settings.kafka.client_id),
        );
    }
    let probe: BaseProducer<Probe> = config.create_with_context(Probe::default())?;
    let timeout = settings.kafka.connect_timeout;
    let security = Security::of(settings);
    let mut last_reason = None;
    let mut failed = false;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let attempt = left.clamp(Duration::from_millis(50), Duration::from_millis(250));
        let answered = probe.client().fetch_metadata(None, attempt);
        // Serves the error events librdkafka queued meanwhile (they reach `Probe::error`).
        probe.poll(Duration::from_millis(10));
        let seen = std::mem::take(&mut *probe.context().seen.lock().unwrap());
        if let Some((_, reason)) = seen.iter().find(|(code, _)| *code == Some(AUTHENTICATION)) {
            return Err(KafkaLayerError::Authentication {
                security: security.describe(),
                bootstrap: settings.kafka.bootstrap_servers.clone(),
                reason: security.redact(reason),
            });
        }
        if let Some((_, reason)) = seen.iter().find(|(code, _)| *code == Some(TLS)) {
            return Err(KafkaLayerError::Tls {
                security: security.describe(),
                bootstrap: settings.kafka.bootstrap_servers.clone(),
                reason: security.redact(reason),
            });
        }
        if answered.is_ok() {
            tracing::debug!(elapsed = ?started.elapsed(), "kafka answered the connectivity check");
            return Ok(());
        }
        failed |= !seen.is_empty();
        // The most telling reason: a connection error of a broker, else the metadata call's own.
        if let Some((_, reason)) = seen
            .iter()
            .rev()
            .find(|(code, _)| *code != Some(RDKafkaErrorCode::AllBrokersDown))
        {
            last_reason = Some(reason.clone());
        } else if last_reason.is_none() {
            last_reason = answered.err().map(|e| e.to_string());
        }
        let elapsed = started.elapsed();
        let gave_up = if failed && patience == Patience::FirstAnswer && elapsed >= FIRST_ANSWER {
            Some(format!("connections failing for {}", seconds(elapsed)))
        } else if elapsed >= timeout {
            Some(format!(
                "within kafka.connect_timeout = {}",
                humantime::format_duration(timeout)
            ))
        } else {
            None
        };
        if let Some(waited) = gave_up {
            return Err(KafkaLayerError::Unreachable {
                bootstrap: settings.kafka.bootstrap_servers.clone(),
                waited,
                protocol: security.protocol.clone(),
                reason: security.redact(last_reason.as_deref().unwrap_or("no answer")),
            });
        }
    }
}

/// [`check`] on a blocking thread.
pub async fn check_async(settings: &Settings, patience: Patience) -> Result<(), KafkaLayerError> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || check(&settings, patience))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The shim's start: rejected credentials or TLS stop it; unreachable brokers do not (it starts
/// not ready and answers 503 until they are back), they are logged naming the brokers.
pub async fn before_serving(settings: &Settings) -> Result<(), KafkaLayerError> {
    match check_async(settings, Patience::FirstAnswer).await {
        Err(e @ KafkaLayerError::Unreachable { .. }) => {
            tracing::warn!(error = %e, "starting not ready; waiting for the brokers");
            Ok(())
        }
        other => other,
    }
}

/// Under [`Patience::FirstAnswer`], how long connections must have been failing (librdkafka
/// retries them meanwhile; another bootstrap server may still answer).
const FIRST_ANSWER: Duration = Duration::from_secs(1);

const AUTHENTICATION: RDKafkaErrorCode = RDKafkaErrorCode::Authentication;
const TLS: RDKafkaErrorCode = RDKafkaErrorCode::SSL;

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Collects what librdkafka reports while the check runs.
#[derive(Default)]
struct Probe {
    seen: Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for Probe {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka connectivity check");
        self.seen
            .lock()
            .unwrap()
            .push((error.rdkafka_error_code(), reason.to_owned()));
    }
}

impl ProducerContext for Probe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

/// The security settings of `[kafka.properties]`, for messages.
struct Security {
    protocol: String,
    mechanism: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Security {
    fn of(settings: &Settings) -> Security {
        let property = |key: &str| {
            settings
                .kafka
                .properties
                .get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let protocol = property("security.protocol")
            .unwrap_or_else(|| "plaintext".to_owned())
            .to_uppercase();
        let sasl = protocol.starts_with("SASL");
        Security {
            // librdkafka's default mechanism is GSSAPI.
            mechanism: sasl.then(|| {
                property("sasl.mechanism")
                    .or_else(|| property("sasl.mechanisms"))
                    .map_or_else(|| "GSSAPI".to_owned(), |m| m.to_uppercase())
            }),
            username: sasl.then(|| property("sasl.username")).flatten(),
            password: settings.kafka.properties.get("sasl.password").cloned(),
            protocol,
        }
    }

    /// `SASL PLAIN as user "app", security.protocol SASL_SSL`.
    fn describe(&self) -> String {
        match (&self.mechanism, &self.username) {
            (Some(mechanism), Some(user)) => format!(
                "SASL {mechanism} as user {user:?}, security.protocol {}",
                self.protocol
            ),
            (Some(mechanism), None) => {
                format!("SASL {mechanism}, security.protocol {}", self.protocol)
            }
            _ => format!("security.protocol {}", self.protocol),
        }
    }

    /// The broker's reason, without the password should it ever be echoed.
    fn redact(&self, reason: &str) -> String {
        match &self.password {
            Some(password) if !password.is_empty() => reason.replace(password.as_str(), "***"),
            _ => reason.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(properties: &[(&str, &str)]) -> Settings {
        let mut s = Settings::defaults();
        for (k, v) in properties {
            s.kafka.properties.insert((*k).into(), (*v).into());
        }
        s
    }

    #[test]
    fn messages_name_protocol_mechanism_and_user_but_never_the_password() {
        let s = settings(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "scram-sha-256"),
            ("sasl.username", "app"),
            ("sasl.password", "hunter2"),
        ]);
        let security = Security::of(&s);
        assert_eq!(
            security.describe(),
            "SASL SCRAM-SHA-256 as user \"app\", security.protocol SASL_SSL"
        );
        assert_eq!(security.redact("bad hunter2 here"), "bad *** here");
        let plain = Security::of(&settings(&[]));
        assert_eq!(plain.describe(), "security.protocol PLAINTEXT");
        let gssapi = Security::of(&settings(&[("security.protocol", "SASL_PLAINTEXT")]));
        assert_eq!(
            gssapi.describe(),
            "SASL GSSAPI, security.protocol SASL_PLAINTEXT"
        );
    }

    #[test]
    fn unreachable_brokers_are_named_at_the_first_answer() {
        let mut s = settings(&[]);
        s.kafka.bootstrap_servers = "127.0.0.1:1".into();
        s.kafka.connect_timeout = Duration::from_secs(10);
        let started = Instant::now();
        let error = check(&s, Patience::FirstAnswer).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "{error}");
        let message = error.to_string();
        assert!(
            message.starts_with("kafka brokers 127.0.0.1:1 could not be reached"),
            "{message}"
        );
        assert!(message.contains("security.protocol PLAINTEXT"), "{message}");
    }

    #[test]
    fn unreachable_brokers_are_named_after_the_connect_timeout() {
        let mut s = settings(&[]);
        s.kafka.bootstrap_servers = "127.0.0.1:1".into();
        s.kafka.connect_timeout = Duration::from_millis(700);
        let started = Instant::now();
        let error = check(&s, Patience::UntilConnected).unwrap_err();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(700), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        let message = error.to_string();
        assert!(
            message.contains("within kafka.connect_timeout = 700ms"),
            "{message}"
        );
        assert!(message.contains("Connection refused"), "{message}");
    }
}
