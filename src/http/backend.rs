//! What the handlers need from Kafka, behind a trait so the router can be tested without a
//! broker: produce an event, produce a profile, change a rule set or an alert's triage, and look
//! an event up at its coordinates.
//!
//! [`KafkaBackend`] is the real one. Producing waits for the delivery report: an `Ok` means Kafka
//! acknowledged the record (`acks=all`, idempotent producer, murmur2 partitioner); an `Err`
//! after `http.produce_timeout` means it did not, as far as this client knows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Semaphore;

use crate::audit::{AuditEntry, AuditPage};
use crate::changes::{
    change_risks, change_rule_set, change_triage, promote_shadow, Author, ChangeError, ChangeLog,
    Configured, Promotion, Refusal, RulesRequest, TriageLog,
};
use crate::config::Settings;
use crate::domain::response::AlertRecord;
use crate::domain::Coord;
use crate::domain::Risk;
use crate::domain::UserId;
use crate::domain::{Triage, TriageChange, TriageRecord};
use crate::kafka::dead_letters::DeadLetterView;
use crate::kafka::profiles::ProfilesFollower;
use crate::kafka::read::{partitions, read_range, RangeError};
use crate::kafka::rules::{Current, Published, Publisher, RulesKey};
use crate::kafka::{producer_config, KafkaLayerError};
use crate::kafka::{reader, Reader};
use crate::profiles::{ProfileLine, ProfileValue, RiskSource};
use crate::rule_set::RuleSet;
use crate::store::Store;

/// Kafka did not acknowledge a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka did not acknowledge the record: {0}")]
    NotAcknowledged(String),
    #[error("not ready: {0}")]
    NotReady(&'static str),
}

/// A lookup in Kafka failed (as opposed to finding nothing).
#[derive(Debug, Clone, thiserror::Error)]
#[error("kafka lookup failed: {0}")]
pub struct LookupError(pub String);

/// An input record found at its coordinates, with its response when one was found.
#[derive(Debug, Clone)]
pub struct Found {
    pub at: Coord,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub response: Option<AlertRecord>,
}

/// What a user's next event is judged by, as of now (see [`Backend::judged_by`]).
#[derive(Debug, Clone)]
pub struct JudgedBy {
    /// The user's risk level and the profiles record it comes from.
    pub risk: RiskSource,
    /// The rules topic's latest sets (the configured ones where it has none).
    pub rules: Current,
    /// The events topic's partition count: the user's partition is murmur2 of its id over it.
    pub partitions: i32,
}

/// Kafka as the handlers see it.
pub trait Backend: Send + Sync + 'static {
    /// Produces an event (`key` = user id) to the events topic, with its idempotency key as the
    /// `idempotency-key` header, and waits for the acknowledgement.
    fn produce_event(
        &self,
        key: String,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>>;

    /// Produces `{"risk": ...}` for a user to the profiles topic and waits for the acknowledgement.
    fn produce_profile(
        &self,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>>;

    /// Reads the input record at `(partition, offset)` of the events topic and searches the alerts
    /// topic for its response. `Ok(None)` when no such record is retained.
    fn lookup(&self, at: Coord) -> BoxFuture<'static, Result<Option<Found>, LookupError>>;

    /// Whether the backend's own clients are connected and the topics exist.
    fn ready(&self) -> bool;

    /// Changes a user's risk level on behalf of `actor`: reads the level it replaces, publishes
    /// the new one to the profiles topic, then records the change in the audit topic, each
    /// waited for. Returns the audit entry.
    fn change_risk(
        &self,
        actor: String,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<AuditEntry, ProduceError>>;

    /// A page of the audit trail, newest first.
    fn audit(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> BoxFuture<'static, Result<AuditPage, LookupError>>;

    /// The rules topic read to its end: the latest active and shadow sets published.
    fn rules(&self) -> BoxFuture<'static, Result<Current, LookupError>>;

    /// The rule set change of `request` on behalf of `actor` (see
    /// [`crate::changes::change_rule_set`]): refused, or published then recorded in the audit
    /// topic, each waited for. `configured`: the sets in force while the topic holds none.
    fn change_rules(
        &self,
        actor: String,
        request: RulesRequest,
        configured: Configured,
    ) -> BoxFuture<'static, Result<RulesChanged, RulesError>>;

    /// The shadow set made active on behalf of `actor` (see
    /// [`crate::changes::promote_shadow`]).
    fn promote_shadow(
        &self,
        actor: String,
        request: Promotion,
        configured: Configured,
    ) -> BoxFuture<'static, Result<Promoted, RulesError>>;

    /// The `limit` latest records of the dead-letter topic, newest first.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DeadLetterView>, LookupError>>;

    /// Sets the triage of the alert at `alert` (of the user `user_id`) on behalf of `actor`:
    /// reads the triage it replaces, publishes the new one to the triage topic, then records the
    /// change in the audit topic, each waited for.
    fn change_triage(
        &self,
        actor: String,
        alert: Coord,
        user_id: Option<UserId>,
        change: TriageChange,
    ) -> BoxFuture<'static, Result<TriageChanged, ProduceError>>;

    /// What `user_id`'s next event would be judged by: the user's risk level with the profiles
    /// record it comes from, and the rules topic's latest sets, both topics read to their end
    /// offsets as of the call (a change Kafka acknowledged before it is seen).
    fn judged_by(&self, user_id: UserId) -> BoxFuture<'static, Result<JudgedBy, LookupError>>;
}

pub use crate::changes::{Promoted, RulesChanged, TriageChanged};

/// Why a rule set change did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Refused before anything was published (400, 409, 412).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Kafka did not answer or acknowledge (503).
    #[error(transparent)]
    Unavailable(#[from] ProduceError),
}

impl From<ChangeError> for RulesError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::Refused(refusal) => RulesError::Refused(refusal),
            other => RulesError::Unavailable(not_acknowledged(other)),
        }
    }
}

/// How long a fallback lookup may take at most.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many alerts records a fallback lookup reads at most while searching for a response.
const LOOKUP_MAX_SCAN: usize = 200_000;
/// Fallback lookups run at most this many at a time (each is a short-lived consumer).
const LOOKUP_CONCURRENCY: usize = 4;

/// The real backend: one idempotent producer, short-lived readers for lookups.
pub struct KafkaBackend {
    producer: FutureProducer,
    settings: Arc<Settings>,
    lookups: Arc<Semaphore>,
    ready: std::sync::atomic::AtomicBool,
    /// The profiles topic as read so far, for the "before" of a risk change (made on first use).
    profiles: Arc<std::sync::Mutex<Option<ProfilesFollower>>>,
    /// Rule set changes of this shim one at a time, so that each audit entry's "before" is the
    /// version the change replaced.
    rules_writes: Arc<tokio::sync::Mutex<()>>,
    /// The read model, where a triage change reads the triage it replaces.
    store: Store,
    /// Triage changes of this shim one at a time, for the same reason as `rules_writes`.
    triage_writes: Arc<tokio::sync::Mutex<()>>,
    /// The profiles and rules topics as read so far, for users' views (made on first use).
    views: Arc<std::sync::Mutex<Option<ProfilesFollower>>>,
    /// The events topic's partition count, as last found (0: not yet).
    events_partitions: std::sync::atomic::AtomicI32,
}

impl KafkaBackend {
    /// The backend of a shim whose read model is `store`.
    pub fn new(settings: Arc<Settings>, store: Store) -> Result<Self, KafkaLayerError> {
        let mut config = producer_config(&settings, "shim")?;
        if !settings.kafka.properties.contains_key("message.timeout.ms") {
            // Bound the wait for an acknowledgement: past it the client gets 503, not a hang.
            config.set(
                "message.timeout.ms",
                settings.http.produce_timeout.as_millis().to_string(),
            );
        }
        let producer: FutureProducer = config.create()?;
        Ok(KafkaBackend {
            producer,
            settings,
            lookups: Arc::new(Semaphore::new(LOOKUP_CONCURRENCY)),
            ready: std::sync::atomic::AtomicBool::new(false),
            profiles: Arc::default(),
            rules_writes: Arc::default(),
            store,
            triage_writes: Arc::default(),
            views: Arc::default(),
            events_partitions: std::sync::atomic::AtomicI32::new(0),
        })
    }

    /// Asks a broker whether the events and profiles topics exist (within `timeout`): the
    /// backend is ready while they do and a broker answers. Producing before would let a broker
    /// auto-create a topic with the wrong partition count; producing while no broker answers
    /// would only wait for `http.produce_timeout`.
    pub fn check_topics(&self, timeout: Duration) -> Result<(), KafkaLayerError> {
        let checked = self.find_topics(timeout);
        self.ready
            .store(checked.is_ok(), std::sync::atomic::Ordering::Relaxed);
        checked
    }

    fn find_topics(&self, timeout: Duration) -> Result<(), KafkaLayerError> {
        for topic in [&self.settings.topics.events, &self.settings.topics.profiles] {
            let metadata = self
                .producer
                .client()
                .fetch_metadata(Some(topic), timeout)?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len());
            if let (Some(n), true) = (found, topic == &self.settings.topics.events) {
                self.events_partitions
                    .store(n as i32, std::sync::atomic::Ordering::Relaxed);
            }
            if found.is_none() {
                return Err(KafkaLayerError::Topic {
                    topic: topic.clone(),
                    reason: "does not exist (yet)".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Flushes what is in flight (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "shim producer did not flush");
        }
    }

    fn produce(
        &self,
        topic: String,
        key: String,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        self.produce_with(topic, key, payload, None)
    }

    fn produce_with(
        &self,
        topic: String,
        key: String,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        let producer = self.producer.clone();
        let timeout = self.settings.http.produce_timeout;
        Box::pin(async move {
            let mut record = FutureRecord::to(&topic).key(&key).payload(&payload);

            if let Some(value) = &idempotency_key {
                record = record.headers(rdkafka::message::OwnedHeaders::new().insert(
                    rdkafka::message::Header {
                        key: crate::idempotency::HEADER,
                        value: Some(value.as_str()),
                    },
                ));
            }
            // The whole wait, queueing included, is bounded by `http.produce_timeout`.
            let sent = tokio::time::timeout(timeout, producer.send(record, timeout)).await;
            match sent {
                Ok(Ok(delivery)) => Ok(Coord::new(delivery.partition, delivery.offset)),
                Ok(Err((e, _))) => Err(ProduceError::NotAcknowledged(e.to_string())),
                Err(_) => Err(ProduceError::NotAcknowledged(format!(
                    "no acknowledgement within http.produce_timeout ({timeout:?})"
                ))),
            }
        })
    }
}

impl Backend for KafkaBackend {
    fn produce_event(
        &self,
        key: String,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        if !self.ready() {
            return Box::pin(async { Err(ProduceError::NotReady("topics not found yet")) });
        }
        self.produce_with(
            self.settings.topics.events.clone(),
            key,
            payload,
            idempotency_key,
        )
    }

    fn produce_profile(
        &self,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        if !self.ready() {
            return Box::pin(async { Err(ProduceError::NotReady("topics not found yet")) });
        }
        let payload = serde_json::to_vec(&ProfileValue { risk }).expect("a profile serializes");
        self.produce(
            self.settings.topics.profiles.clone(),
            user_id.to_string(),
            payload,
        )
    }

    fn lookup(&self, at: Coord) -> BoxFuture<'static, Result<Option<Found>, LookupError>> {
        self.read_blocking(move |settings| lookup_blocking(settings, at))
    }

    fn ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn change_risk(
        &self,
        actor: String,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<AuditEntry, ProduceError>> {
        // The profile, once published, may still apply: the client sees 503 and may retry.
        self.changing(None, move |log| async move {
            let author = Author {
                actor: &actor,
                source: "http",
            };
            let line = ProfileLine { user_id, risk };
            let entry = change_risks(&log, author, &[line])
                .await
                .map_err(not_acknowledged)?
                .pop()
                .expect("one change, one audit entry");
            tracing::info!(user_id = user_id.get(), actor = %entry.actor, before = %entry.before, after = %entry.after, "risk changed");
            Ok(entry)
        })
    }

    fn audit(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> BoxFuture<'static, Result<AuditPage, LookupError>> {
        self.read_blocking(move |settings| {
            crate::audit::read_page(settings, limit, before, LOOKUP_TIMEOUT)
        })
    }

    fn rules(&self) -> BoxFuture<'static, Result<Current, LookupError>> {
        self.read_blocking(|settings| {
            crate::kafka::rules::read_current_within(settings, LOOKUP_TIMEOUT)
        })
    }

    fn change_rules(
        &self,
        actor: String,
        request: RulesRequest,
        configured: Configured,
    ) -> BoxFuture<'static, Result<RulesChanged, RulesError>> {
        // A set already published still applies; a retry is harmless.
        self.changing(Some(&self.rules_writes), move |log| async move {
            let author = Author {
                actor: &actor,
                source: "http",
            };
            let changed = change_rule_set(&log, author, &request, &configured).await?;
            let key = request.key;
            match &changed.entry {
                Some(entry) => {
                    tracing::info!(key = %key, actor = %entry.actor, before = %entry.before, after = %entry.after, offset = changed.published.offset, "rule set changed")
                }
                None => {
                    tracing::info!(key = %key, %actor, offset = changed.published.offset, "rule set already in force; nothing published")
                }
            }
            Ok(changed)
        })
    }

    fn promote_shadow(
        &self,
        actor: String,
        request: Promotion,
        configured: Configured,
    ) -> BoxFuture<'static, Result<Promoted, RulesError>> {
        self.changing(Some(&self.rules_writes), move |log| async move {
            let author = Author {
                actor: &actor,
                source: "http",
            };
            let promoted = promote_shadow(&log, author, &request, &configured).await?;
            tracing::info!(%actor, version = %promoted.version, before = ?promoted.before, offset = promoted.active.offset, "shadow rule set promoted");
            Ok(promoted)
        })
    }

    fn dead_letters(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DeadLetterView>, LookupError>> {
        self.read_blocking(move |settings| {
            crate::kafka::dead_letters::latest(settings, limit, LOOKUP_TIMEOUT)
        })
    }

    fn change_triage(
        &self,
        actor: String,
        alert: Coord,
        user_id: Option<UserId>,
        change: TriageChange,
    ) -> BoxFuture<'static, Result<TriageChanged, ProduceError>> {
        let changed = self.changing(Some(&self.triage_writes), move |log| async move {
            let author = Author {
                actor: &actor,
                source: "http",
            };
            let changed = change_triage(&log, author, alert, user_id, change)
                .await
                .map_err(not_acknowledged)?;
            let entry = &changed.entry;
            tracing::info!(alert_id = %alert.alert_id(), actor = %entry.actor, before = %entry.before, after = %entry.after, "alert triaged");
            Ok(changed)
        });
        let store = self.store.clone();
        let topic = self.settings.topics.triage.clone();
        let wait = self.settings.http.response_timeout;
        Box::pin(async move {
            let changed = changed.await?;
            // Read-your-writes on this shim: the views show the change once its record is
            // projected; a slow projection only delays them (Kafka has the change).
            let at = changed.at;
            let projected = BTreeMap::from([(at.partition, at.offset + 1)]);
            if let Err(e) = wait_projected(&store, &topic, &projected, wait).await {
                tracing::info!(alert_id = %alert.alert_id(), error = %e, "triage answered before its projection");
            }
            Ok(changed)
        })
    }

    fn judged_by(&self, user_id: UserId) -> BoxFuture<'static, Result<JudgedBy, LookupError>> {
        let partitions = self
            .events_partitions
            .load(std::sync::atomic::Ordering::Relaxed);
        if !self.ready() || partitions == 0 {
            return Box::pin(async { Err(LookupError("topics not found yet".to_owned())) });
        }
        let settings = Arc::clone(&self.settings);
        let follower = Arc::clone(&self.views);
        Box::pin(async move {
            // Not behind the fallback lookups' permits: those may take seconds each.
            let read = tokio::task::spawn_blocking(move || {
                let mut guard = follower.lock().expect("views follower poisoned");
                if guard.is_none() {
                    *guard = Some(ProfilesFollower::for_views(&settings, "shim-users")?);
                }
                let follower = guard.as_mut().expect("just made");
                follower.catch_up(LOOKUP_TIMEOUT)?;
                Ok::<_, KafkaLayerError>(JudgedBy {
                    risk: follower.risk_source(user_id),
                    rules: follower.rule_sets().cloned().unwrap_or_default(),
                    partitions,
                })
            });
            match tokio::time::timeout(LOOKUP_TIMEOUT, read).await {
                Ok(Ok(judged)) => judged.map_err(|e| LookupError(e.to_string())),
                Ok(Err(e)) => Err(LookupError(e.to_string())),
                Err(_) => Err(LookupError(format!(
                    "the profiles and rules topics were not read within {LOOKUP_TIMEOUT:?}"
                ))),
            }
        })
    }
}

/// A change that did not complete, as the client hears it (503).
fn not_acknowledged(e: ChangeError) -> ProduceError {
    if let ChangeError::Unrecorded { source, .. } = &e {
        tracing::error!(error = %source, "a change was published but its audit record was not acknowledged");
    }
    ProduceError::NotAcknowledged(e.to_string())
}

/// The shim's [`ChangeLog`] and [`TriageLog`]: its producer, profiles follower and read model,
/// every wait bounded by `http.produce_timeout`.
struct ShimChanges {
    settings: Arc<Settings>,
    producer: FutureProducer,
    profiles: Arc<std::sync::Mutex<Option<ProfilesFollower>>>,
    store: Store,
}

impl ShimChanges {
    /// Sends one record and waits for Kafka's acknowledgement.
    async fn send(&self, topic: &str, key: &str, value: &[u8]) -> Result<(), KafkaLayerError> {
        let timeout = self.settings.http.produce_timeout;
        let record = FutureRecord::to(topic).key(key).payload(value);
        self.producer
            .send(record, timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| KafkaLayerError::Client(e))
    }

    /// Runs a blocking read of Kafka off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Settings) -> Result<T, KafkaLayerError> + Send + 'static,
    ) -> Result<T, KafkaLayerError> {
        let settings = Arc::clone(&self.settings);
        tokio::task::spawn_blocking(move || read(&settings))
            .await
            .map_err(|e| KafkaLayerError::Topic {
                topic: String::new(),
                reason: format!("the read stopped: {e}"),
            })?
    }
}

impl ChangeLog for ShimChanges {
    async fn rule_sets(&self) -> Result<Current, KafkaLayerError> {
        let timeout = self.settings.http.produce_timeout;
        self.blocking(move |settings| crate::kafka::rules::read_current_within(settings, timeout))
            .await
    }

    async fn publish_rule_set(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
    ) -> Result<Published, KafkaLayerError> {
        let timeout = self.settings.http.produce_timeout;
        crate::kafka::rules::send(
            &self.producer,
            &self.settings.topics.rules,
            key,
            set,
            timeout,
        )
        .await
    }

    async fn publish_version(
        &self,
        set: &RuleSet,
        by: &Publisher,
    ) -> Result<Published, KafkaLayerError> {
        let timeout = self.settings.http.produce_timeout;
        crate::kafka::rules::send_version(
            &self.producer,
            &self.settings.topics.rules,
            set,
            by,
            timeout,
        )
        .await
    }

    async fn risk_levels(&self, users: &[UserId]) -> Result<Vec<Risk>, KafkaLayerError> {
        let follower = Arc::clone(&self.profiles);
        let users = users.to_vec();
        let timeout = self.settings.http.produce_timeout;
        self.blocking(move |settings| current_risks(settings, &follower, &users, timeout))
            .await
    }

    async fn publish_risks(&self, lines: &[ProfileLine]) -> Result<(), KafkaLayerError> {
        for line in lines {
            let value = serde_json::to_vec(&ProfileValue { risk: line.risk })
                .expect("a profile serializes");
            self.send(
                &self.settings.topics.profiles,
                &line.user_id.to_string(),
                &value,
            )
            .await?;
        }
        Ok(())
    }

    async fn record(&self, entries: &[AuditEntry]) -> Result<(), KafkaLayerError> {
        for entry in entries {
            let value = serde_json::to_vec(entry).expect("an audit entry serializes");
            self.send(&self.settings.topics.audit, &entry.key(), &value)
                .await?;
        }
        Ok(())
    }
}

impl TriageLog for ShimChanges {
    /// The read model's triage of the alert, once it has projected the triage topic up to the
    /// end offsets Kafka reports now (at most half of `http.produce_timeout`): every change
    /// acknowledged before, through any shim, is in it.
    async fn triage_of(&self, alert: Coord) -> Result<Option<Triage>, KafkaLayerError> {
        let topic = self.settings.topics.triage.clone();
        let timeout = self.settings.http.produce_timeout / 2;
        let producer = self.producer.clone();
        let ends = {
            let topic = topic.clone();
            self.blocking(move |_| end_offsets(&producer, &topic, timeout))
                .await?
        };
        let read_model = |reason: String| KafkaLayerError::Topic {
            topic: topic.clone(),
            reason,
        };
        wait_projected(&self.store, &topic, &ends, timeout)
            .await
            .map_err(read_model)?;
        let mut found = self
            .store
            .triage_of(&[alert])
            .await
            .map_err(|e| read_model(format!("the read model: {e}")))?;
        Ok(found.remove(&alert))
    }

    async fn publish_triage(&self, record: &TriageRecord) -> Result<Coord, KafkaLayerError> {
        let value = record.to_json();
        let record = FutureRecord::to(&self.settings.topics.triage)
            .key(&record.alert_id)
            .payload(&value);
        self.producer
            .send(record, self.settings.http.produce_timeout)
            .await
            .map(|delivery| Coord::new(delivery.partition, delivery.offset))
            .map_err(|(e, _)| KafkaLayerError::Client(e))
    }
}

/// Each partition's end offset of `topic`, as the brokers report it now.
fn end_offsets(
    producer: &FutureProducer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, KafkaLayerError> {
    let client = producer.client();
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaLayerError::Topic {
            topic: topic.to_owned(),
            reason: "does not exist (yet)".to_owned(),
        });
    }
    partitions
        .into_iter()
        .map(|p| Ok((p, client.fetch_watermarks(topic, p, timeout)?.1)))
        .collect()
}

/// Waits (at most `timeout`) until the read model has projected `topic` up to `ends` (per
/// partition, the next offset to read), or says how far behind it stayed.
async fn wait_projected(
    store: &Store,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let stored = store
            .offsets(topic)
            .await
            .map_err(|e| format!("the read model: {e}"))?;
        let behind: Vec<String> = ends
            .iter()
            .filter(|(p, end)| **end > 0 && stored.get(p).copied().unwrap_or(0) < **end)
            .map(|(p, end)| {
                format!(
                    "partition {p} at {} of {end}",
                    stored.get(p).copied().unwrap_or(0)
                )
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the read model did not catch up within {timeout:?} ({})",
                behind.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bounds every Kafka wait of one change request together by `http.produce_timeout` (`bound`).
fn within_produce_timeout<T: Send + 'static, E: From<ProduceError> + Send + 'static>(
    bound: Duration,
    change: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
) -> BoxFuture<'static, Result<T, E>> {
    Box::pin(async move {
        tokio::time::timeout(bound, change)
            .await
            .unwrap_or_else(|_| {
                Err(ProduceError::NotAcknowledged(format!(
                    "kafka did not answer within http.produce_timeout ({bound:?})"
                ))
                .into())
            })
    })
}

impl KafkaBackend {
    /// How every write route makes its change: refused at once while the topics are not found,
    /// one at a time per `turn` when given (so that the change's checks and its audit "before"
    /// see every change this shim made before it), within `http.produce_timeout`.
    fn changing<T, E, F, Fut>(
        &self,
        turn: Option<&Arc<tokio::sync::Mutex<()>>>,
        change: F,
    ) -> BoxFuture<'static, Result<T, E>>
    where
        T: Send + 'static,
        E: From<ProduceError> + Send + 'static,
        F: FnOnce(ShimChanges) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, E>> + Send + 'static,
    {
        if !self.ready() {
            return Box::pin(async { Err(ProduceError::NotReady("topics not found yet").into()) });
        }
        let log = self.changes();
        let turn = turn.map(Arc::clone);
        within_produce_timeout(self.settings.http.produce_timeout, async move {
            let _turn = match &turn {
                Some(turn) => Some(turn.lock().await),
                None => None,
            };
            change(log).await
        })
    }

    /// The change use cases' view of this backend (see [`crate::changes`]).
    fn changes(&self) -> ShimChanges {
        ShimChanges {
            settings: Arc::clone(&self.settings),
            producer: self.producer.clone(),
            profiles: Arc::clone(&self.profiles),
            store: self.store.clone(),
        }
    }

    /// Runs a blocking read of Kafka (a short-lived reader) off the async runtime, at most
    /// [`LOOKUP_CONCURRENCY`] at a time.
    fn read_blocking<T, E>(
        &self,
        read: impl FnOnce(&Settings) -> Result<T, E> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, LookupError>>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let settings = Arc::clone(&self.settings);
        let lookups = Arc::clone(&self.lookups);
        Box::pin(async move {
            let _permit = lookups
                .acquire_owned()
                .await
                .map_err(|_| LookupError("shutting down".to_owned()))?;
            tokio::task::spawn_blocking(move || read(&settings))
                .await
                .map_err(|e| LookupError(e.to_string()))?
                .map_err(|e| LookupError(e.to_string()))
        })
    }
}

/// Reads the input record at its coordinates, then searches every alerts partition from the
/// input's timestamp on for the record whose `event_id` names it (the processor writes the
/// response after reading the input, so never before that timestamp).
fn lookup_blocking(settings: &Settings, at: Coord) -> Result<Option<Found>, KafkaLayerError> {
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let consumer = reader(settings, "shim-lookup")?;
    let events = &settings.topics.events;
    if !partitions(&consumer, events, LOOKUP_TIMEOUT)?.contains(&at.partition) {
        return Ok(None);
    }
    let (low, high) = consumer.fetch_watermarks(events, at.partition, LOOKUP_TIMEOUT)?;
    if at.offset < low || at.offset >= high {
        return Ok(None);
    }
    let mut input = None;
    read_range(
        &consumer,
        events,
        at.partition,
        Offset::Offset(at.offset),
        at.offset + 1,
        LOOKUP_TIMEOUT,
        |m| {
            input = Some((
                m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                m.payload().unwrap_or_default().to_vec(),
                m.timestamp().to_millis().unwrap_or(0),
            ));
            Ok::<(), KafkaError>(())
        },
    )
    .map_err(|e| match e {
        RangeError::Kafka(e) | RangeError::Stopped(e) => KafkaLayerError::Client(e),
        RangeError::TimedOut { .. } => KafkaLayerError::Timeout(LOOKUP_TIMEOUT),
    })?;
    // Nothing there: out of range, or a transaction marker or an aborted record at that offset.
    let Some((key, payload, timestamp)) = input else {
        return Ok(None);
    };
    let response = find_response(settings, &consumer, at, timestamp, deadline)?;
    Ok(Some(Found {
        at,
        key,
        payload,
        response,
    }))
}

fn find_response(
    settings: &Settings,
    consumer: &Reader,
    at: Coord,
    timestamp: i64,
    deadline: Instant,
) -> Result<Option<AlertRecord>, KafkaLayerError> {
    let alerts = &settings.topics.alerts;
    let wanted = at.event_id();
    let partitions = partitions(consumer, alerts, LOOKUP_TIMEOUT)?;
    let mut by_time = TopicPartitionList::new();
    for &p in &partitions {
        by_time.add_partition_offset(alerts, p, Offset::Offset(timestamp.max(0)))?;
    }
    let start = consumer.offsets_for_times(by_time, LOOKUP_TIMEOUT)?;
    let mut tpl = TopicPartitionList::new();
    let mut open = 0usize;
    for element in start.elements() {
        // No record at or after the timestamp: the response is not there (yet).
        if let Offset::Offset(o) = element.offset() {
            tpl.add_partition_offset(alerts, element.partition(), Offset::Offset(o))?;
            open += 1;
        }
    }
    if open == 0 {
        return Ok(None);
    }
    consumer.assign(&tpl)?;
    let mut scanned = 0usize;
    while open > 0 && scanned < LOOKUP_MAX_SCAN && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                scanned += 1;
                if m.topic() != alerts.as_str() {
                    continue;
                }
                let Some(payload) = m.payload() else { continue };
                // Cheap pre-check before parsing the whole record.
                if !contains(payload, wanted.as_bytes()) {
                    continue;
                }
                if let Ok(record) = AlertRecord::from_json(payload) {
                    if record.event_id == at {
                        return Ok(Some(record));
                    }
                }
            }
        }
    }
    Ok(None)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The risk levels users have now: the profiles topic read to its end offsets.
fn current_risks(
    settings: &Settings,
    follower: &std::sync::Mutex<Option<ProfilesFollower>>,
    users: &[UserId],
    timeout: Duration,
) -> Result<Vec<Risk>, KafkaLayerError> {
    let mut guard = follower.lock().expect("profiles follower poisoned");
    if guard.is_none() {
        *guard = Some(ProfilesFollower::new(settings, "shim-profiles")?);
    }
    let follower = guard.as_mut().expect("just made");
    follower.catch_up(timeout)?;
    Ok(users.iter().map(|&u| follower.profiles().risk(u)).collect())
}
