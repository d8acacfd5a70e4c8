//! Layered configuration, validated once at start.
//!
//! Layers, later wins:
//! 1. `config/default.toml` as compiled into the binary (every key, with its default);
//! 2. `<config dir>/default.toml` and `<config dir>/<env>.toml` when present, where the directory is
//!    `--config-dir` / `USER_MONITOR_CONFIG_DIR` (default `config`) and `<env>` is `--env` /
//!    `USER_MONITOR_ENV`;
//! 3. environment variables `USER_MONITOR__SECTION__KEY` (e.g. `USER_MONITOR__TOPICS__EVENTS`).
//!
//! Unknown keys are errors. [`Settings::validate`] checks cross-field rules and names the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::rules::{FixedRules, FixedRulesConfig, InvalidRule};

/// The defaults, shipped inside the binary so it runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override keys.
pub const ENV_PREFIX: &str = "USER_MONITOR";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a `#[source]`: its text is already in this message, and error reports print the
    /// chain of sources (it used to appear twice).
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

impl From<InvalidRule> for ConfigError {
    fn from(e: InvalidRule) -> Self {
        ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub rules: FixedRulesConfig,
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub processing: ProcessingConfig,
    pub snapshot: SnapshotConfig,
    pub state: StateConfig,
    pub profiles: ProfilesConfig,
    pub http: HttpConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Empty: `run` starts the embedded broker; `process` and `shim` refuse to start.
    pub bootstrap_servers: String,
    pub group_id: String,
    pub client_id: String,
    /// How long `process` waits at start-up for a broker to answer before it stops, saying
    /// which brokers could not be reached (rejected credentials stop it at once).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Raw librdkafka properties, applied last to every client.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub events: String,
    pub alerts: String,
    pub dlq: String,
    pub profiles: String,
    pub state: String,
    /// Audit trail of risk and rule changes (never compacted).
    pub audit: String,
    /// The active and shadow rule sets (compacted; keys `active` and `shadow`).
    pub rules: String,
    /// Where a shadow set's disagreements with the active set go.
    pub shadow: String,
    /// The triage of alerts (compacted; key the alert id, the latest record in force).
    pub triage: String,
    /// Create missing topics at start-up.
    pub create: bool,
    pub partitions: i32,
    pub replication_factor: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    pub guarantee: Guarantee,
    /// Empty: `<group_id>-<hostname>`. Must be unique per running instance and stable across
    /// its restarts, so a restarted instance fences its own zombie at once.
    pub transactional_id: String,
    /// Upper bound of events in one transaction.
    pub max_batch_events: usize,
    /// How long a batch may wait for more events once it has one.
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// Deadline for a graceful shutdown.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Join the group as a static member (`group.instance.id` = the transactional id), so a
    /// restarted instance gets its partitions back at once instead of after the session timeout.
    pub static_membership: bool,
    /// Upper bound of a dead-letter record's value; a larger rejected input goes to the DLQ
    /// truncated (0: derived from the DLQ topic's `max.message.bytes` and the producer's
    /// `message.max.bytes`).
    pub dlq_max_record_bytes: usize,
    /// Idempotency keys are remembered for events within this much event time of the user's
    /// latest event.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// And at most this many a user.
    pub idempotency_keys_per_user: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// How often a partition's changed users are snapshotted.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// How far back a rule of a rule set may look (CONTRACT §10): a window of at most
/// `max_window`, a count of at most `max_count`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(with = "humantime_serde")]
    pub max_window: Duration,
    pub max_count: u32,
    /// Events of one user kept within `max_window`, at most.
    pub max_events: u32,
}

/// Longest `state.max_window`: one year.
const MAX_STATE_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// Largest `state.max_count`.
const MAX_STATE_COUNT: u32 = 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    /// JSONL `{"user_id": 1, "risk": "high"}` seeded into the profiles topic at start (empty: none).
    pub seed_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    /// Open connections at most; past it new ones get 503 and are closed.
    pub max_connections: usize,
    /// A request's head must arrive within this; also how long a kept-alive connection may sit
    /// idle between requests.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request's body must arrive within this (408 otherwise).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// A body declared larger than `body_limit_bytes` is read and discarded up to this many
    /// bytes before its 413, so the client receives the answer; beyond, 413 and close.
    pub max_drain_bytes: usize,
    /// How long `POST /event` waits for the response record before answering 202.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How long the shim waits for Kafka to acknowledge a produced record before answering 503
    /// (the shim producer's `message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// `GET /api/v1/alerts/stream`: open streams at most (503 past it).
    pub max_streams: usize,
    /// An idle stream sends an SSE comment this often.
    #[serde(with = "humantime_serde")]
    pub stream_heartbeat: Duration,
    /// Alerts buffered per stream client, at most (past it: `event: overflow`, closed).
    pub stream_buffer: usize,
    /// How long after its timestamp an alerts record is surely visible to the shim: a stream
    /// holds an alert at most this long to deliver in cursor order.
    #[serde(with = "humantime_serde")]
    pub stream_settle: Duration,
    /// Removed (the read model is the database of `[store]`): accepted and ignored, with a
    /// warning, so that older configuration files still load.
    #[serde(default)]
    pub read_model_max_records: Option<usize>,
    /// Removed, as `read_model_max_records`.
    #[serde(default)]
    pub read_model_events_per_user: Option<usize>,
    pub auth: AuthConfig,
}

/// `[store]`: the database behind the GET endpoints (a projection of the alerts topic).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `""`: SQLite in `data_dir`; `postgres://…`: PostgreSQL; `sqlite://PATH`: that SQLite file.
    pub url: String,
    /// Where the default SQLite file (`read-model.sqlite`) lives.
    pub data_dir: PathBuf,
    /// Rows older than this in event time (than the newest event stored) are deleted; 0 keeps
    /// everything.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
    /// Connections of the pool (handlers read through it; one writer).
    pub max_connections: u32,
    /// Alerts records per projection transaction, at most.
    pub batch_records: usize,
    /// How long the projection gathers a batch before writing what it has.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
}

/// `[http.auth]`: who may do what.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `tokens`, `open`, or empty (unset: open only for the embedded all-in-one).
    pub mode: AuthMode,
    /// A TOML file of `[[tokens]]` entries shaped like `[[http.auth.tokens]]` (empty: none).
    pub tokens_file: String,
    #[serde(default)]
    pub tokens: Vec<crate::access::TokenConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMode {
    /// Not chosen: the embedded all-in-one runs open; against real Kafka the shim refuses to start.
    #[serde(rename = "")]
    Unset,
    /// No checks at all, chosen explicitly.
    #[serde(rename = "open")]
    Open,
    /// Bearer tokens with scopes.
    #[serde(rename = "tokens")]
    Tokens,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `user_monitor=debug,rdkafka=warn`; `RUST_LOG` wins.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

/// Where to read configuration from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_dir: Option<PathBuf>,
    pub env: Option<String>,
    /// Environment variables to read overrides from (the process environment by default).
    pub vars: Option<BTreeMap<String, String>>,
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let dir = sources
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(dir.join("default.toml")).required(false));
        if let Some(env) = sources.env.as_deref().filter(|e| !e.is_empty()) {
            let path = dir.join(format!("{env}.toml"));
            if !path.exists() {
                return Err(invalid(
                    "env",
                    format!(
                        "no configuration file {} for environment {env:?}",
                        path.display()
                    ),
                ));
            }
            builder = builder.add_source(config::File::from(path));
        }
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__");
        if let Some(vars) = &sources.vars {
            environment = environment.source(Some(vars.clone().into_iter().collect()));
        }
        let settings: Settings = builder.add_source(environment).build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads the compiled-in defaults only.
    pub fn defaults() -> Settings {
        Settings::load(&Sources {
            config_dir: Some(PathBuf::from("/nonexistent")),
            env: None,
            vars: Some(BTreeMap::new()),
        })
        .expect("the compiled-in defaults are valid")
    }

    /// Cross-field checks; every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        FixedRules::new(&self.rules)?;
        self.rule_sets()?;
        let topics = [
            ("topics.events", &self.topics.events),
            ("topics.alerts", &self.topics.alerts),
            ("topics.dlq", &self.topics.dlq),
            ("topics.profiles", &self.topics.profiles),
            ("topics.state", &self.topics.state),
            ("topics.audit", &self.topics.audit),
            ("topics.rules", &self.topics.rules),
            ("topics.shadow", &self.topics.shadow),
            ("topics.triage", &self.topics.triage),
        ];
        for (key, name) in topics {
            validate_topic_name(key, name)?;
        }
        for (i, (key, name)) in topics.iter().enumerate() {
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                return Err(invalid(
                    key,
                    format!("topic {name:?} is already used by {other}"),
                ));
            }
        }
        if self.topics.partitions < 1 {
            return Err(invalid("topics.partitions", "must be at least 1"));
        }
        if self.topics.replication_factor < 1 {
            return Err(invalid("topics.replication_factor", "must be at least 1"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if self.processing.max_batch_events == 0 {
            return Err(invalid("processing.max_batch_events", "must be at least 1"));
        }
        if self.processing.transaction_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "processing.transaction_timeout",
                "must be at least 1s",
            ));
        }
        if self.http.auth.mode == AuthMode::Tokens {
            let tokens = self.auth_tokens()?;
            if tokens.is_empty() {
                return Err(invalid(
                    "http.auth.tokens",
                    "mode is \"tokens\" but no token is configured: add one with `user-monitor token new NAME --scopes events:write,read` (inline [[http.auth.tokens]] or http.auth.tokens_file)",
                ));
            }
        }
        if self.snapshot.interval.is_zero() {
            return Err(invalid("snapshot.interval", "must be greater than 0"));
        }
        if self.state.max_window.is_zero() || self.state.max_window > MAX_STATE_WINDOW {
            return Err(invalid(
                "state.max_window",
                "must be greater than 0 and at most 366 days",
            ));
        }
        if !(1..=MAX_STATE_COUNT).contains(&self.state.max_count) {
            return Err(invalid(
                "state.max_count",
                format!("must be in 1..={MAX_STATE_COUNT}"),
            ));
        }
        if !(16..=1_000_000).contains(&self.state.max_events) {
            return Err(invalid("state.max_events", "must be in 16..=1000000"));
        }
        if self.http.body_limit_bytes == 0 {
            return Err(invalid("http.body_limit_bytes", "must be at least 1"));
        }
        if self.http.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        for (key, value) in [
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("http.body_read_timeout", self.http.body_read_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.http.produce_timeout < Duration::from_millis(100) {
            return Err(invalid("http.produce_timeout", "must be at least 100ms"));
        }
        if self.http.max_streams == 0 {
            return Err(invalid("http.max_streams", "must be at least 1"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(3600))
            .contains(&self.http.stream_heartbeat)
        {
            return Err(invalid(
                "http.stream_heartbeat",
                "must be between 100ms and 1h",
            ));
        }
        if !(1..=65_536).contains(&self.http.stream_buffer) {
            return Err(invalid("http.stream_buffer", "must be in 1..=65536"));
        }
        if self.http.stream_settle > Duration::from_secs(600) {
            return Err(invalid("http.stream_settle", "must be at most 10m"));
        }
        let url = self.store.url.as_str();
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "store.url",
                "must be empty (SQLite in store.data_dir), sqlite:PATH or postgres://...",
            ));
        }
        if url.is_empty() && self.store.data_dir.as_os_str().is_empty() {
            return Err(invalid("store.data_dir", "must not be empty"));
        }
        if self.store.max_connections < 2 {
            return Err(invalid("store.max_connections", "must be at least 2"));
        }
        if !(1..=100_000).contains(&self.store.batch_records) {
            return Err(invalid("store.batch_records", "must be in 1..=100000"));
        }
        if self.store.retention_interval.is_zero() {
            return Err(invalid(
                "store.retention_interval",
                "must be greater than 0",
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid("log.format", "must be \"text\" or \"json\""));
        }
        if !self.profiles.seed_file.is_empty() && !Path::new(&self.profiles.seed_file).exists() {
            return Err(invalid(
                "profiles.seed_file",
                format!("no such file {:?}", self.profiles.seed_file),
            ));
        }
        Ok(())
    }

    /// The validated rules.
    pub fn limits(&self) -> FixedRules {
        FixedRules::new(&self.rules).expect("validated at load")
    }

    /// The bounds a rule set is validated and evaluated against (`[state]`).
    pub fn rule_bounds(&self) -> crate::rule_set::Bounds {
        crate::rule_set::Bounds {
            max_window: self.state.max_window,
            max_count: self.state.max_count,
            max_events: self.state.max_events,
        }
    }

    /// The rule set active until one is published (`rules.file`, else the five rules of
    /// `[rules]`) and the shadow set of `rules.shadow`, if any. A file's problems are named with
    /// its key; its `time_unit` must be `rules.time_unit` (the unit of the events' `time`, which
    /// the state is kept in).
    pub fn rule_sets(
        &self,
    ) -> Result<(crate::rule_set::RuleSet, Option<crate::rule_set::RuleSet>), ConfigError> {
        let bounds = self.rule_bounds();
        let read = |key: &str, path: &str| -> Result<crate::rule_set::RuleSet, ConfigError> {
            let set = crate::rule_set::RuleSet::read_file(Path::new(path), &bounds)
                .map_err(|e| invalid(key, e.to_string()))?;
            set.check_time_unit(self.rules.time_unit)
                .map_err(|e| invalid(key, format!("{path}: {e}")))?;
            Ok(set)
        };
        let active = if self.rules.file.is_empty() {
            crate::rule_set::RuleSet::from_limits(&FixedRules::new(&self.rules)?, &bounds)
                .map_err(|e| invalid("rules", e.to_string()))?
        } else {
            read("rules.file", &self.rules.file)?
        };
        let shadow = if self.rules.shadow.is_empty() {
            None
        } else {
            Some(read("rules.shadow", &self.rules.shadow)?)
        };
        Ok((active, shadow))
    }

    /// The transactional id of this instance.
    /// The validated token table of `[http.auth]` (inline tokens plus `tokens_file`).
    pub fn auth_tokens(&self) -> Result<crate::access::Tokens, ConfigError> {
        let file = &self.http.auth.tokens_file;
        let text = if file.is_empty() {
            None
        } else {
            Some(std::fs::read_to_string(file).map_err(|e| {
                invalid(
                    "http.auth.tokens_file",
                    format!("cannot read {file:?}: {e}"),
                )
            })?)
        };
        crate::access::Tokens::new(&self.http.auth.tokens, text.as_deref())
            .map_err(|e| invalid("http.auth.tokens", e))
    }

    /// How much the processor remembers of idempotency keys, in the events' time unit.
    pub fn dedup_limits(&self) -> crate::idempotency::DedupLimits {
        crate::idempotency::DedupLimits::new(
            self.processing.idempotency_window,
            self.processing.idempotency_keys_per_user,
            self.rules.time_unit,
        )
    }

    pub fn transactional_id(&self) -> String {
        if self.processing.transactional_id.is_empty() {
            let host = hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".to_owned());
            format!("{}-{host}", self.kafka.group_id)
        } else {
            self.processing.transactional_id.clone()
        }
    }
}

/// Kafka's own rule: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn validate_topic_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let legal = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if legal {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{name:?} is not a legal Kafka topic name (1-249 of [a-zA-Z0-9._-])"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_set_bounds_are_validated_and_reach_the_rule_sets() {
        let err = load_with(&[("USER_MONITOR__STATE__MAX_COUNT", "0")], &[], None).unwrap_err();
        assert!(err.to_string().contains("state.max_count"), "{err}");
        let s = load_with(&[("USER_MONITOR__STATE__MAX_WINDOW", "2h")], &[], None).unwrap();
        assert_eq!(s.rule_bounds().max_window, Duration::from_secs(7200));
        assert_eq!(s.rule_bounds().max_count, 16);
    }

    #[test]
    fn the_live_feed_keys_have_defaults_and_out_of_range_values_name_their_key() {
        let s = Settings::defaults();
        assert_eq!(s.http.max_streams, 1024);
        assert_eq!(s.http.stream_heartbeat, Duration::from_secs(15));
        assert_eq!(s.http.stream_buffer, 512);
        assert_eq!(s.http.stream_settle, Duration::from_secs(1));
        for (var, value, key) in [
            ("USER_MONITOR__HTTP__MAX_STREAMS", "0", "http.max_streams"),
            (
                "USER_MONITOR__HTTP__STREAM_HEARTBEAT",
                "10ms",
                "http.stream_heartbeat",
            ),
            (
                "USER_MONITOR__HTTP__STREAM_BUFFER",
                "0",
                "http.stream_buffer",
            ),
            (
                "USER_MONITOR__HTTP__STREAM_SETTLE",
                "1h",
                "http.stream_settle",
            ),
        ] {
            let err = load_with(&[(var, value)], &[], None).unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
        let s = load_with(&[("USER_MONITOR__HTTP__STREAM_SETTLE", "0s")], &[], None).unwrap();
        assert_eq!(s.http.stream_settle, Duration::ZERO);
    }

    #[test]
    fn a_configuration_error_reads_once_in_a_report() {
        let err = load_with(
            &[("USER_MONITOR__PROCESSING__GUARANTEE", "maybe")],
            &[],
            None,
        )
        .unwrap_err();
        let report = format!("{:#}", anyhow::Error::from(err));
        assert_eq!(report.matches("maybe").count(), 1, "{report}");
        assert!(report.contains("processing.guarantee"), "{report}");
    }

    fn load_with(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
        env: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Settings::load(&Sources {
            config_dir: Some(dir.path().to_owned()),
            env: env.map(str::to_owned),
            vars: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::defaults();
        assert_eq!(s.topics.events, "user-events");
        assert_eq!(s.topics.alerts, "user-alerts");
        assert_eq!(s.topics.dlq, "user-events.dlq");
        assert_eq!(s.topics.profiles, "user-profiles");
        assert_eq!(s.topics.state, "user-monitor.state");
        assert_eq!(s.kafka.group_id, "user-monitor");
        assert_eq!(s.processing.guarantee, Guarantee::ExactlyOnce);
        assert_eq!(s.limits(), FixedRules::default());
        assert_eq!(s.http.listen.port(), 5000);
    }

    #[test]
    fn environment_overrides_files_which_override_defaults() {
        let s = load_with(
            &[
                ("USER_MONITOR__TOPICS__EVENTS", "payments-events"),
                ("USER_MONITOR__RULES__LARGE_WITHDRAWAL__AMOUNT", "150"),
            ],
            &[
                ("default.toml", "[topics]\nalerts = \"a1\"\n"),
                ("prod.toml", "[topics]\nalerts = \"a2\"\ndlq = \"d2\"\n"),
            ],
            Some("prod"),
        )
        .unwrap();
        assert_eq!(s.topics.events, "payments-events");
        assert_eq!(s.topics.alerts, "a2");
        assert_eq!(s.topics.dlq, "d2");
        assert_eq!(s.rules.large_withdrawal.amount, "150");
    }

    #[test]
    fn time_unit_and_durations_parse_from_strings() {
        let s = load_with(
            &[
                ("USER_MONITOR__RULES__TIME_UNIT", "milliseconds"),
                ("USER_MONITOR__SNAPSHOT__INTERVAL", "250ms"),
            ],
            &[],
            None,
        )
        .unwrap();
        assert_eq!(s.limits().deposit_window_ticks, 30_000);
        assert_eq!(s.snapshot.interval, Duration::from_millis(250));
    }

    #[test]
    fn invalid_configuration_names_the_key() {
        let unknown =
            load_with(&[], &[("default.toml", "[topics]\nevnts = \"x\"\n")], None).unwrap_err();
        assert!(unknown.to_string().contains("evnts"), "{unknown}");
        let bad_amount = load_with(
            &[("USER_MONITOR__RULES__DEPOSIT_WINDOW__AMOUNT", "lots")],
            &[],
            None,
        )
        .unwrap_err();
        assert!(
            bad_amount
                .to_string()
                .contains("rules.deposit_window.amount"),
            "{bad_amount}"
        );
        let bad_topic =
            load_with(&[("USER_MONITOR__TOPICS__DLQ", "bad topic")], &[], None).unwrap_err();
        assert!(bad_topic.to_string().contains("topics.dlq"), "{bad_topic}");
        let same =
            load_with(&[("USER_MONITOR__TOPICS__DLQ", "user-events")], &[], None).unwrap_err();
        assert!(
            same.to_string().contains("already used by topics.events"),
            "{same}"
        );
        let bad_unit =
            load_with(&[("USER_MONITOR__RULES__TIME_UNIT", "hours")], &[], None).unwrap_err();
        assert!(bad_unit.to_string().contains("hours"), "{bad_unit}");
        let missing_env = load_with(&[], &[], Some("staging")).unwrap_err();
        assert!(
            missing_env.to_string().contains("staging.toml"),
            "{missing_env}"
        );
    }
}
