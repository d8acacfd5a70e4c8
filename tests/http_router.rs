//! Every endpoint and status code of the shim through the real router (`tower::ServiceExt::oneshot`),
//! with an in-memory backend that evaluates events with the real engine and feeds the real hub the
//! way the alerts follower does, and a real SQLite store (in a temporary directory) the way the
//! projection does. The same endpoints against a real broker and the real processor:
//! `tests/http_kafka.rs`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::events::scenarios_dir;
use common::http::read_to_close;
use common::oracle::{Oracle, ALONE};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use user_monitor::audit::{AuditEntry, AuditPage};
use user_monitor::changes::{
    change_rule_set, promote_shadow, Author, ChangeLog, Configured, Promotion, RulesRequest,
};
use user_monitor::config::Settings;
use user_monitor::domain::response::{AlertRecord, Outcome};
use user_monitor::domain::Coord;
use user_monitor::domain::Risk;
use user_monitor::domain::UserId;
use user_monitor::domain::Verdict;
use user_monitor::domain::{Triage, TriageChange, TriageRecord};
use user_monitor::engine::Input;
use user_monitor::health::Readiness;
use user_monitor::http::api::ApiDoc;
use user_monitor::http::auth::{sha256_hex, Scope, TokenConfig, Tokens};
use user_monitor::http::backend::{
    Found, JudgedBy, LookupError, ProduceError, Promoted, RulesChanged, RulesError, TriageChanged,
};
use user_monitor::http::stream::{now_ms, StreamConfig, Streams};
use user_monitor::http::{router, server, Backend, ConfiguredRuleSets, Hub, Shared};
use user_monitor::kafka::dead_letters::DeadLetterView;
use user_monitor::kafka::rules::{Current, MemoryTopic, Published, Publisher, RulesKey};
use user_monitor::kafka::KafkaLayerError;
use user_monitor::metrics::Metrics;
use user_monitor::profiles::{ProfileLine, ProfileRecord, Profiles, RiskSource};
use user_monitor::rule_set::{Bounds, RuleSet};
use user_monitor::store::projection::Status as ProjectionStatus;
use user_monitor::store::{Batch, OrderKey, SnapshotBatch, Store, TriageBatch};
use utoipa::OpenApi;

/// How the fake Kafka behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Acknowledges and answers at once, like a healthy processor.
    Answer,
    /// Acknowledges, but no processor answers.
    Silent,
    /// Never acknowledges.
    Down,
}

/// One partition; the engine runs at produce time and its response goes through the hub and
/// (for the first `project` of them: the projection's lag) into the store.
struct MemoryBackend {
    hub: Arc<Hub>,
    store: Store,
    project: usize,
    mode: Mutex<Mode>,
    inner: Mutex<Engine>,
    /// The rules topic.
    rules: MemoryTopic,
    /// The triage topic (one partition), projected into the store at once.
    triage: Mutex<Vec<TriageRecord>>,
}

#[derive(Default)]
struct Engine {
    oracle: Oracle,
    profiles: Profiles,
    /// Every input and its response, as Kafka would retain them.
    log: Vec<(Vec<u8>, Option<AlertRecord>)>,
    /// The audit trail, oldest first.
    audit: Vec<AuditEntry>,
    /// The profiles topic: each user's latest record, and the records published.
    profile_records: HashMap<UserId, ProfileRecord>,
    profiles_published: i64,
}

impl Engine {
    /// A profile published to the (one-partition) profiles topic.
    fn publish_profile(&mut self, user_id: UserId, risk: Risk) {
        self.profiles.set(user_id, risk);
        let record = ProfileRecord {
            partition: 0,
            offset: self.profiles_published,
            timestamp: 1_000 + self.profiles_published,
            cleared: false,
        };
        self.profiles_published += 1;
        self.profile_records.insert(user_id, record);
    }
}

impl MemoryBackend {
    fn new(hub: Arc<Hub>, store: Store, project: usize) -> Arc<Self> {
        Arc::new(MemoryBackend {
            hub,
            store,
            project,
            mode: Mutex::new(Mode::Answer),
            inner: Mutex::new(Engine::default()),
            rules: MemoryTopic::default(),
            triage: Mutex::default(),
        })
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Backend for MemoryBackend {
    fn produce_event(
        &self,
        key: String,
        payload: Vec<u8>,
        idempotency_key: Option<String>,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        let mode = *self.mode.lock().unwrap();
        if mode == Mode::Down {
            return Box::pin(async {
                Err(ProduceError::NotAcknowledged(
                    "Local: Message timed out".into(),
                ))
            });
        }
        let (offset, record) = {
            let mut engine = self.inner.lock().unwrap();
            let offset = engine.log.len() as i64;
            // The processor's own verdict, as in one partition of one.
            let profiles = engine.profiles.clone();
            let verdict = engine.oracle.judge(
                Input {
                    offset,
                    payload: &payload,
                    key: idempotency_key.as_deref().map(str::as_bytes),
                },
                ALONE,
                |user| profiles.risk(user),
            );
            let user_id = match &verdict {
                Verdict::Accepted { user_id, .. } | Verdict::Duplicate { user_id, .. } => {
                    Some(*user_id)
                }
                Verdict::Rejected { user_id, .. } => *user_id,
                Verdict::AlreadyApplied { .. } => None,
            };
            if let Some(user_id) = user_id {
                assert_eq!(key, user_id.to_string(), "keyed by user id");
            }
            let record = AlertRecord::answer(Coord::new(0, offset), &verdict, &payload)
                .expect("nothing is restored here");
            let answered = (mode == Mode::Answer).then(|| record.clone());
            engine.log.push((payload, answered));
            (offset, record)
        };
        let mut batch = Batch::default();
        if mode == Mode::Answer {
            if (offset as usize) < self.project {
                batch.push(0, offset, 1_000 + offset, Some(&record.to_json()));
            }
            self.hub.ingest(record, 1_000 + offset);
        }
        let store = self.store.clone();
        Box::pin(async move {
            if !batch.is_empty() {
                store.write(ALERTS, &batch).await.expect("stores");
            }
            Ok(Coord::new(0, offset))
        })
    }

    fn produce_profile(
        &self,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<Coord, ProduceError>> {
        if *self.mode.lock().unwrap() == Mode::Down {
            return Box::pin(async { Err(ProduceError::NotAcknowledged("timed out".into())) });
        }
        self.inner.lock().unwrap().publish_profile(user_id, risk);
        Box::pin(async { Ok(Coord::new(0, 0)) })
    }

    fn lookup(&self, at: Coord) -> BoxFuture<'static, Result<Option<Found>, LookupError>> {
        let engine = self.inner.lock().unwrap();
        let found = (at.partition == 0 && at.offset >= 0)
            .then(|| engine.log.get(at.offset as usize))
            .flatten()
            .map(|(payload, response)| Found {
                at,
                key: None,
                payload: payload.clone(),
                response: response.clone(),
            });
        Box::pin(async move { Ok(found) })
    }

    fn ready(&self) -> bool {
        *self.mode.lock().unwrap() != Mode::Down
    }

    fn change_risk(
        &self,
        actor: String,
        user_id: UserId,
        risk: Risk,
    ) -> BoxFuture<'static, Result<AuditEntry, ProduceError>> {
        if *self.mode.lock().unwrap() == Mode::Down {
            return Box::pin(async { Err(ProduceError::NotAcknowledged("timed out".into())) });
        }
        let mut engine = self.inner.lock().unwrap();
        let before = engine.profiles.risk(user_id);
        engine.publish_profile(user_id, risk);
        let entry = AuditEntry::risk_set(&actor, "http", user_id, before.as_str(), risk.as_str());
        engine.audit.push(entry.clone());
        Box::pin(async move { Ok(entry) })
    }

    fn audit(
        &self,
        limit: usize,
        before: Option<i64>,
    ) -> BoxFuture<'static, Result<AuditPage, LookupError>> {
        let engine = self.inner.lock().unwrap();
        let end = before.map_or(engine.audit.len(), |b| (b as usize).min(engine.audit.len()));
        let start = end.saturating_sub(limit);
        let entries = engine.audit[start..end]
            .iter()
            .enumerate()
            .rev()
            .map(|(i, e)| AuditEntry {
                offset: Some((start + i) as i64),
                ..e.clone()
            })
            .collect();
        let page = AuditPage {
            entries,
            next_cursor: (start > 0).then(|| start.to_string()),
        };
        Box::pin(async move { Ok(page) })
    }

    fn rules(&self) -> BoxFuture<'static, Result<Current, LookupError>> {
        let current = self.rules.current();
        Box::pin(async move { Ok(current) })
    }

    fn change_rules(
        &self,
        actor: String,
        request: RulesRequest,
        configured: Configured,
    ) -> BoxFuture<'static, Result<RulesChanged, RulesError>> {
        // The use case the real backend runs, on this backend's topics.
        let author = Author {
            actor: &actor,
            source: "http",
        };
        let changed = futures::executor::block_on(change_rule_set(
            &MemoryChanges(self),
            author,
            &request,
            &configured,
        ));
        Box::pin(async move { changed.map_err(RulesError::from) })
    }

    fn promote_shadow(
        &self,
        actor: String,
        request: Promotion,
        configured: Configured,
    ) -> BoxFuture<'static, Result<Promoted, RulesError>> {
        let author = Author {
            actor: &actor,
            source: "http",
        };
        let promoted = futures::executor::block_on(promote_shadow(
            &MemoryChanges(self),
            author,
            &request,
            &configured,
        ));
        Box::pin(async move { promoted.map_err(RulesError::from) })
    }

    /// The rejected invalid inputs of the log, newest first, as the processor dead-letters them.
    fn dead_letters(
        &self,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<DeadLetterView>, LookupError>> {
        let engine = self.inner.lock().unwrap();
        let letters = engine
            .log
            .iter()
            .enumerate()
            .rev()
            .filter_map(|(offset, (payload, record))| {
                let json = record.as_ref()?.to_json();
                let value: Value = serde_json::from_slice(&json).ok()?;
                (value["rejection"] == "invalid").then(|| DeadLetterView {
                    partition: 0,
                    offset: offset as i64,
                    timestamp: Some(1_000 + offset as i64),
                    event_id: Some(format!("0-{offset}")),
                    rejection: Some("invalid".to_owned()),
                    error: value["error"].as_str().map(str::to_owned),
                    value: String::from_utf8_lossy(payload).into_owned(),
                    cut: false,
                })
            })
            .take(limit)
            .collect();
        Box::pin(async move { Ok(letters) })
    }

    fn change_triage(
        &self,
        actor: String,
        alert: Coord,
        user_id: Option<UserId>,
        change: TriageChange,
    ) -> BoxFuture<'static, Result<TriageChanged, ProduceError>> {
        self.triage_now(actor, alert, user_id, change)
    }

    fn judged_by(&self, user_id: UserId) -> BoxFuture<'static, Result<JudgedBy, LookupError>> {
        if *self.mode.lock().unwrap() == Mode::Down {
            return Box::pin(async { Err(LookupError("timed out".into())) });
        }
        let engine = self.inner.lock().unwrap();
        let judged = JudgedBy {
            risk: RiskSource {
                risk: engine.profiles.risk(user_id),
                record: engine.profile_records.get(&user_id).copied(),
            },
            rules: self.rules.current(),
            partitions: 1,
        };
        Box::pin(async move { Ok(judged) })
    }
}

/// The rule set changes' view of the memory backend: its rules topic and audit trail, down
/// with it.
struct MemoryChanges<'a>(&'a MemoryBackend);

impl MemoryChanges<'_> {
    fn up(&self) -> Result<(), KafkaLayerError> {
        match *self.0.mode.lock().unwrap() {
            Mode::Down => Err(KafkaLayerError::Timeout(Duration::from_secs(1))),
            _ => Ok(()),
        }
    }
}

impl ChangeLog for MemoryChanges<'_> {
    async fn rule_sets(&self) -> Result<Current, KafkaLayerError> {
        self.up()?;
        Ok(self.0.rules.current())
    }

    async fn publish_rule_set(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
    ) -> Result<Published, KafkaLayerError> {
        self.up()?;
        self.0
            .rules
            .publish(key, set, &Settings::defaults().rule_bounds())
    }

    async fn publish_version(
        &self,
        set: &RuleSet,
        by: &Publisher,
    ) -> Result<Published, KafkaLayerError> {
        self.up()?;
        self.0
            .rules
            .publish_version(set, by, &Settings::defaults().rule_bounds())
    }

    async fn risk_levels(&self, users: &[UserId]) -> Result<Vec<Risk>, KafkaLayerError> {
        let engine = self.0.inner.lock().unwrap();
        Ok(users.iter().map(|&u| engine.profiles.risk(u)).collect())
    }

    async fn publish_risks(&self, lines: &[ProfileLine]) -> Result<(), KafkaLayerError> {
        self.up()?;
        let mut engine = self.0.inner.lock().unwrap();
        for line in lines {
            engine.profiles.set(line.user_id, line.risk);
        }
        Ok(())
    }

    async fn record(&self, entries: &[AuditEntry]) -> Result<(), KafkaLayerError> {
        self.up()?;
        self.0
            .inner
            .lock()
            .unwrap()
            .audit
            .extend_from_slice(entries);
        Ok(())
    }
}

impl MemoryBackend {
    /// As `KafkaBackend`: the triage in force (the topic's latest record of the alert), the new
    /// record published and projected, the change audited.
    fn triage_now(
        &self,
        actor: String,
        alert: Coord,
        user_id: Option<UserId>,
        change: TriageChange,
    ) -> BoxFuture<'static, Result<TriageChanged, ProduceError>> {
        if *self.mode.lock().unwrap() == Mode::Down {
            return Box::pin(async { Err(ProduceError::NotAcknowledged("timed out".into())) });
        }
        let mut topic = self.triage.lock().unwrap();
        let before = topic
            .iter()
            .rev()
            .find(|r| r.alert_id == alert.alert_id())
            .map_or_else(Triage::open, |r| r.triage.clone());
        let triage = change.made_by(&actor, user_monitor::audit::now_rfc3339());
        let record = TriageRecord::new(alert, triage.clone());
        let at = Coord::new(0, topic.len() as i64);
        let mut batch = TriageBatch::default();
        batch.push(
            at.partition,
            at.offset,
            Some(record.alert_id.as_bytes()),
            Some(&record.to_json()),
        );
        topic.push(record);
        let entry = AuditEntry::triage_set(&actor, "http", alert, user_id, &before, &triage);
        self.inner.lock().unwrap().audit.push(entry.clone());
        let store = self.store.clone();
        Box::pin(async move {
            store.write_triage(TRIAGE, &batch).await.expect("stores");
            Ok(TriageChanged { triage, at, entry })
        })
    }
}

struct Fixture {
    app: Router,
    backend: Arc<MemoryBackend>,
    hub: Arc<Hub>,
    store: Store,
    processor: Arc<Readiness>,
    _dir: tempfile::TempDir,
}

const ALERTS: &str = "alerts";
const TRIAGE: &str = "triage";

/// A fresh SQLite store in its own directory.
async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Settings::defaults().store;
    config.data_dir = dir.path().to_owned();
    (Store::open(&config).await.expect("opens"), dir)
}

/// `projected` responses reach the store (and the hub keeps that many recent ones); the rest
/// only the hub's waiters, as when the projection lags.
async fn fixture_with(projected: usize, response_timeout: Duration) -> Fixture {
    fixture_with_auth(projected, response_timeout, None).await
}

async fn fixture_with_auth(
    projected: usize,
    response_timeout: Duration,
    auth: Option<Arc<Tokens>>,
) -> Fixture {
    fixture_with_rules(projected, response_timeout, auth, default_rules()).await
}

/// The rule sets of the default configuration: the five rules, no shadow set.
fn default_rules() -> ConfiguredRuleSets {
    ConfiguredRuleSets::from_settings(&Settings::defaults()).unwrap()
}

/// The live alert feeds as configured by default.
fn default_streams() -> Arc<Streams> {
    Streams::new(StreamConfig::from_settings(&Settings::defaults().http))
}

async fn fixture_with_rules(
    projected: usize,
    response_timeout: Duration,
    auth: Option<Arc<Tokens>>,
    rules: ConfiguredRuleSets,
) -> Fixture {
    let hub = Arc::new(Hub::new(projected));
    hub.set_connected(true);
    let (store, dir) = sqlite_store().await;
    let projection = Arc::new(ProjectionStatus::default());
    projection.set_assigned();
    let backend = MemoryBackend::new(Arc::clone(&hub), store.clone(), projected);
    let processor = Arc::new(Readiness::default());
    processor.set_connected(true);
    processor.set_joined();
    let shared = Shared {
        backend: Arc::clone(&backend) as Arc<dyn Backend>,
        hub: Arc::clone(&hub),
        store: store.clone(),
        projection,
        metrics: Metrics::new(),
        processor: Some(Arc::clone(&processor)),
        response_timeout,
        body_limit: 1024,
        auth,
        rules,
        streams: default_streams(),
    };
    Fixture {
        app: router(Arc::new(shared)),
        backend,
        hub,
        store,
        processor,
        _dir: dir,
    }
}

async fn fixture() -> Fixture {
    fixture_with(1000, Duration::from_millis(200)).await
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn call(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    if headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "text/event-stream")
    {
        // A live feed never ends by itself: its events are read with `SseReader`.
        return Reply {
            status,
            headers,
            text: String::new(),
        };
    }
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn put(path: &str, body: &str) -> Request<Body> {
    Request::put(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

const EXAMPLE: &str = r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#;

#[tokio::test]
async fn legacy_post_answers_the_original_response_byte_for_byte() {
    let f = fixture().await;
    let reply = call(&f.app, post("/event", EXAMPLE)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text,
        r#"{"alert": false, "alert_codes": [], "user_id": 1}"#
    );
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
}

#[tokio::test]
async fn seeds_scenario_gives_the_expected_bodies_400_for_invalid_and_409_for_out_of_order() {
    let f = fixture().await;
    let dir = scenarios_dir();
    let inputs = std::fs::read_to_string(dir.join("seeds.jsonl")).unwrap();
    let expected = std::fs::read_to_string(dir.join("seeds.expected.jsonl")).unwrap();
    for (line, want) in inputs.lines().zip(expected.lines()) {
        let want: Value = serde_json::from_str(want).unwrap();
        let reply = call(&f.app, post("/event", line)).await;
        if want.get("error").is_some() {
            let status = if line.contains("transfer") {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::CONFLICT
            };
            assert_eq!(reply.status, status, "{line}: {}", reply.text);
            assert!(reply.json()["error"].is_string());
        } else {
            assert_eq!(reply.status, StatusCode::OK, "{line}");
            assert_eq!(reply.json(), want, "{line}");
        }
    }
}

#[tokio::test]
async fn invalid_event_is_400_naming_every_bad_field_and_never_produced() {
    let f = fixture().await;
    let reply = call(
        &f.app,
        post(
            "/event",
            r#"{"type": "transfer", "amount": 42, "user_id": 1, "time": -5}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(error.starts_with("invalid type, amount, time"), "{error}");
    let reply = call(&f.app, post("/api/v1/events", "[1, 2]")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(f.backend.inner.lock().unwrap().log.is_empty());
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let f = fixture().await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = Request::post("/event");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let reply = call(&f.app, request.body(Body::from(EXAMPLE)).unwrap()).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(reply.json()["error"].is_string());
    }
    let reply = call(
        &f.app,
        Request::put("/api/v1/users/1/risk")
            .body(Body::from(r#"{"risk":"high"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let f = fixture().await;
    let big = format!(
        r#"{{"type": "deposit", "amount": "1", "user_id": 1, "time": 1, "pad": "{}"}}"#,
        "x".repeat(2000)
    );
    for path in ["/event", "/api/v1/events"] {
        let reply = call(&f.app, post(path, &big)).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(reply.json()["error"].as_str().unwrap().contains("1024"));
    }
}

#[tokio::test]
async fn out_of_order_is_409_on_both_forms() {
    let f = fixture().await;
    let at = |t: u64| format!(r#"{{"type": "deposit", "amount": "1", "user_id": 9, "time": {t}}}"#);
    assert_eq!(
        call(&f.app, post("/event", &at(10))).await.status,
        StatusCode::OK
    );
    let reply = call(&f.app, post("/event", &at(5))).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("out of order"));
    let reply = call(&f.app, post("/api/v1/events", &at(4))).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn unacknowledged_event_is_503_never_200() {
    let f = fixture().await;
    f.backend.set_mode(Mode::Down);
    for path in ["/event", "/api/v1/events"] {
        let reply = call(&f.app, post(path, EXAMPLE)).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("did not acknowledge"));
    }
    let reply = call(&f.app, put("/api/v1/users/1/risk", r#"{"risk":"high"}"#)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn acknowledged_event_without_a_response_in_time_is_202_pending() {
    let f = fixture().await;
    f.backend.set_mode(Mode::Silent);
    let reply = call(&f.app, post("/event", EXAMPLE)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(
        reply.json(),
        json!({"event_id": "0-0", "status": "pending"})
    );
    let reply = call(&f.app, post("/api/v1/events", EXAMPLE)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    assert_eq!(reply.headers[header::LOCATION], "/api/v1/events/0-1");
    assert_eq!(f.hub.pending(), 0, "timed-out waiters are forgotten");
    // The event is retained in Kafka: GET shows it, pending.
    let reply = call(&f.app, get("/api/v1/events/0-1")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "pending");
    assert_eq!(reply.json()["event"]["user_id"], 1);
}

#[tokio::test]
async fn a_response_arriving_while_waiting_completes_the_request() {
    let f = fixture_with(1000, Duration::from_secs(5)).await;
    f.backend.set_mode(Mode::Silent);
    let hub = Arc::clone(&f.hub);
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let example = Input {
            offset: 0,
            payload: EXAMPLE.as_bytes(),
            key: None,
        };
        let Verdict::Accepted { codes, .. } =
            Oracle::default().judge(example, ALONE, |_| Risk::Medium)
        else {
            panic!("the example is accepted")
        };
        hub.ingest(
            AlertRecord::accepted(
                Coord::new(0, 0),
                UserId::new(1).unwrap(),
                &codes,
                Risk::Medium,
                EXAMPLE.as_bytes(),
            ),
            5,
        );
    });
    let reply = call(&f.app, post("/event", EXAMPLE)).await;
    late.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["user_id"], 1);
}

#[tokio::test]
async fn restful_create_is_201_with_location_and_ids() {
    let f = fixture().await;
    let reply = call(
        &f.app,
        post(
            "/api/v1/events",
            r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.headers[header::LOCATION], "/api/v1/events/0-0");
    assert_eq!(
        reply.json(),
        json!({"event_id": "0-0", "alert_id": "alert-0-0", "alert": true, "alert_codes": [1100], "user_id": 3})
    );
    let reply = call(&f.app, post("/api/v1/events", EXAMPLE)).await;
    assert_eq!(reply.json()["alert_id"], Value::Null);
}

#[tokio::test]
async fn get_event_is_200_for_known_404_for_unknown_or_malformed() {
    let f = fixture().await;
    call(&f.app, post("/event", EXAMPLE)).await;
    let reply = call(&f.app, get("/api/v1/events/0-0")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["status"], "processed");
    assert_eq!(body["event_id"], "0-0");
    assert_eq!(body["alert"], false);
    assert_eq!(body["risk"], "medium");
    assert_eq!(
        body["event"],
        serde_json::from_str::<Value>(EXAMPLE).unwrap()
    );
    assert_eq!(
        call(&f.app, get("/api/v1/events/0-7")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&f.app, get("/api/v1/events/3-0")).await.status,
        StatusCode::NOT_FOUND
    );
    for bad in ["x", "0", "0-01", "-1-2", "0-0-0"] {
        let reply = call(&f.app, get(&format!("/api/v1/events/{bad}"))).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{bad}");
        assert!(reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("<partition>-<offset>"));
    }
}

#[tokio::test]
async fn get_event_not_yet_projected_falls_back_to_kafka() {
    let f = fixture_with(2, Duration::from_millis(200)).await;
    for t in 0..5 {
        let body = format!(r#"{{"type": "withdraw", "amount": "500", "user_id": 2, "time": {t}}}"#);
        call(&f.app, post("/event", &body)).await;
    }
    assert!(
        f.store.event(Coord::new(0, 2)).await.unwrap().is_none(),
        "not projected"
    );
    assert!(f.hub.recent(Coord::new(0, 2)).is_none(), "not recent");
    let reply = call(&f.app, get("/api/v1/events/0-2")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["status"], "processed");
    assert_eq!(reply.json()["alert_codes"], json!([30, 1100]));
    let reply = call(&f.app, get("/api/v1/alerts/alert-0-2")).await;
    assert_eq!(reply.status, StatusCode::OK);
    // Only what is projected is listed.
    let reply = call(&f.app, get("/api/v1/alerts")).await;
    assert_eq!(reply.json()["alerts"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn alerts_are_listed_newest_first_with_filters_and_cursor() {
    let f = fixture().await;
    // user 3: 1100, then 30+1100; user 4: no alert; user 5: 123.
    for body in [
        r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#,
        r#"{"type": "deposit", "amount": "1", "user_id": 4, "time": 0}"#,
        r#"{"type": "withdraw", "amount": "101", "user_id": 3, "time": 1}"#,
        r#"{"type": "withdraw", "amount": "101", "user_id": 3, "time": 2}"#,
        r#"{"type": "deposit", "amount": "300", "user_id": 5, "time": 0}"#,
    ] {
        call(&f.app, post("/event", body)).await;
    }
    let reply = call(&f.app, get("/api/v1/alerts")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let ids: Vec<Value> = reply.json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].clone())
        .collect();
    assert_eq!(
        ids,
        vec![
            json!("alert-0-4"),
            json!("alert-0-3"),
            json!("alert-0-2"),
            json!("alert-0-0")
        ]
    );
    assert_eq!(reply.json()["next_cursor"], Value::Null);

    let reply = call(&f.app, get("/api/v1/alerts?user_id=3&code=30")).await;
    let ids: Vec<String> = reply.json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["alert-0-3"]);

    let mut seen = Vec::new();
    let mut path = "/api/v1/alerts?limit=3".to_owned();
    loop {
        let page = call(&f.app, get(&path)).await.json();
        for alert in page["alerts"].as_array().unwrap() {
            seen.push(alert["alert_id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/alerts?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec!["alert-0-4", "alert-0-3", "alert-0-2", "alert-0-0"]
    );

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "user_id=-1",
        "user_id=9223372036854775808",
        "code=abc",
        "cursor=nope",
    ] {
        let reply = call(&f.app, get(&format!("/api/v1/alerts?{bad}"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.json()["error"].is_string());
    }
}

#[tokio::test]
async fn get_alert_is_200_for_an_alert_404_otherwise() {
    let f = fixture().await;
    call(
        &f.app,
        post(
            "/event",
            r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#,
        ),
    )
    .await;
    call(&f.app, post("/event", EXAMPLE)).await;
    let reply = call(&f.app, get("/api/v1/alerts/alert-0-0")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["alert_codes"], json!([1100]));
    assert_eq!(reply.json()["user_id"], 3);
    // An event without an alert, and an unknown coordinate.
    for missing in ["alert-0-1", "alert-0-99"] {
        let reply = call(&f.app, get(&format!("/api/v1/alerts/{missing}"))).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}");
    }
    for bad in ["0-0", "alert-x", "alert-0-0-0"] {
        let reply = call(&f.app, get(&format!("/api/v1/alerts/{bad}"))).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn user_events_lists_recent_events_with_results_newest_first() {
    let f = fixture().await;
    for t in 0..4 {
        let body = format!(r#"{{"type": "withdraw", "amount": "1", "user_id": 7, "time": {t}}}"#);
        call(&f.app, post("/event", &body)).await;
    }
    call(&f.app, post("/event", EXAMPLE)).await;
    // Out of order: rejected, and listed with its error.
    call(
        &f.app,
        post(
            "/event",
            r#"{"type": "withdraw", "amount": "1", "user_id": 7, "time": 0}"#,
        ),
    )
    .await;
    let reply = call(&f.app, get("/api/v1/users/7/events")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["user_id"], 7);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(events[0]["rejection"], "out_of_order");
    assert_eq!(events[1]["alert_codes"], json!([30]));
    assert_eq!(events[4]["alert"], false);
    let page = call(&f.app, get("/api/v1/users/7/events?limit=2"))
        .await
        .json();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = call(
        &f.app,
        get(&format!("/api/v1/users/7/events?limit=10&cursor={cursor}")),
    )
    .await
    .json();
    assert_eq!(next["events"].as_array().unwrap().len(), 3);
    let empty = call(&f.app, get("/api/v1/users/12345/events")).await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json()["events"], json!([]));
    for bad in ["x", "-1", "9223372036854775808", "1.5"] {
        let reply = call(&f.app, get(&format!("/api/v1/users/{bad}/events"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn put_risk_publishes_and_applies_to_later_events() {
    let f = fixture().await;
    let reply = call(&f.app, put("/api/v1/users/8/risk", r#"{"risk": "high"}"#)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"user_id": 8, "risk": "high"}));
    // High risk: a withdrawal above 50 raises 1100.
    let reply = call(
        &f.app,
        post(
            "/event",
            r#"{"type": "withdraw", "amount": "60", "user_id": 8, "time": 0}"#,
        ),
    )
    .await;
    assert_eq!(reply.json()["alert_codes"], json!([1100]));
    for bad in [
        r#"{"risk": "extreme"}"#,
        r#"{"risk": 1}"#,
        r#"{}"#,
        "nope",
        r#"["high"]"#,
    ] {
        let reply = call(&f.app, put("/api/v1/users/8/risk", bad)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.json()["error"].is_string(), "{bad}");
    }
    let reply = call(&f.app, put("/api/v1/users/abc/risk", r#"{"risk": "low"}"#)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_users_risk_reads_back_with_the_profiles_record_that_set_it_or_the_default() {
    let f = fixture().await;
    let reply = call(&f.app, get("/api/v1/users/5/risk")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reply.json(),
        json!({"user_id": 5, "risk": "medium", "source": {"kind": "default"}})
    );
    for (risk, offset) in [("high", 0), ("low", 1)] {
        let body = format!(r#"{{"risk": "{risk}"}}"#);
        assert_eq!(
            call(&f.app, put("/api/v1/users/5/risk", &body))
                .await
                .status,
            StatusCode::OK
        );
        let reply = call(&f.app, get("/api/v1/users/5/risk")).await;
        assert_eq!(
            reply.json(),
            json!({"user_id": 5, "risk": risk, "source": {"kind": "profile",
                "partition": 0, "offset": offset, "timestamp": 1000 + offset}})
        );
    }
    for bad in ["x", "-1", "9223372036854775808", "%FF"] {
        let reply = call(&f.app, get(&format!("/api/v1/users/{bad}/risk"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.json()["error"].is_string());
    }
    f.backend.set_mode(Mode::Down);
    let reply = call(&f.app, get("/api/v1/users/5/risk")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// `GET /api/v1/users/{id}`: the user's state rebuilt from the read model equals the engine's
/// after the same inputs (a rejected input and a retry left out), as of the next input offset;
/// a snapshot in the store gives the same view with a shorter replay; the risk level and a
/// shadow set in force apply; unknown users are 404.
#[tokio::test]
async fn a_users_view_is_the_engines_state_as_of_the_next_input_offset() {
    let f = fixture().await;
    let deposit = |amount: &str, time: u64| {
        format!(r#"{{"type": "deposit", "amount": "{amount}", "user_id": 7, "time": {time}}}"#)
    };
    let inputs = [
        (deposit("120", 10), None),
        (
            r#"{"type": "withdraw", "amount": "5", "user_id": 8, "time": 11}"#.to_owned(),
            None,
        ),
        (deposit("87", 30), Some("k1")),
        // A retry: answered as the original, not applied again.
        (deposit("87", 30), Some("k1")),
        // Out of order: rejected, changes nothing.
        (deposit("500", 3), None),
    ];
    // The engine fed the same records, uninterrupted.
    let mut oracle = Oracle::default();
    let mut head = Oracle::default();
    for (offset, (line, key)) in inputs.iter().enumerate() {
        let mut request =
            Request::post("/api/v1/events").header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", *key);
        }
        call(&f.app, request.body(Body::from(line.clone())).unwrap()).await;
        let input = Input {
            offset: offset as i64,
            payload: line.as_bytes(),
            key: key.map(str::as_bytes),
        };
        oracle.judge(input, ALONE, |_| Risk::Medium);
        if offset == 0 {
            head.judge(input, ALONE, |_| Risk::Medium);
        }
    }
    let (set, bounds) = (RuleSet::default_set(), Bounds::default());
    let engine_standing = |risk| {
        serde_json::to_value(
            oracle
                .engine()
                .users
                .standing(7, risk, &set, &bounds)
                .unwrap(),
        )
        .unwrap()
    };
    let view = |f: &Fixture| {
        let app = f.app.clone();
        async move {
            let reply = call(&app, get("/api/v1/users/7")).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
            reply.json()
        }
    };
    let first = view(&f).await;
    assert_eq!(first["user_id"], 7);
    assert_eq!(
        first["as_of"],
        json!({"partition": 0, "next_offset": 5, "next_event_id": "0-5"})
    );
    assert_eq!(
        (first["events"].clone(), first["alerts"].clone()),
        (json!(4), json!(1))
    );
    assert_eq!(first["last_event"]["event_id"], "0-4");
    assert_eq!(first["risk"], "medium");
    assert_eq!(first["risk_source"], json!({"kind": "default"}));
    let state = &first["state"];
    assert_eq!(state["snapshot"], Value::Null);
    assert_eq!(
        (state["replayed"].clone(), state["exact"].clone()),
        (json!(2), json!(true))
    );
    assert_eq!(state["last_time"], 30);
    assert_eq!(
        state["trailing_run"],
        json!({"type": "deposit", "length": 2})
    );
    assert_eq!(first["active"]["version"], "default");
    assert_eq!(first["active"]["rules"], engine_standing(Risk::Medium));
    let window = first["active"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == 123)
        .unwrap()
        .clone();
    assert_eq!(
        (
            window["observed"].clone(),
            window["threshold"].clone(),
            window["firing"].clone()
        ),
        (json!("207"), json!("200"), json!(true))
    );
    assert_eq!(first["shadow"], Value::Null);

    // Snapshots in the store (state topic records): after the first record, then after all.
    let snapshot = |covers: i64, state_offset: i64, engine: &Oracle| {
        let state = engine.engine().users.export(7).unwrap();
        let mut batch = SnapshotBatch::default();
        batch.push(
            0,
            state_offset,
            Some(b"7"),
            Some(&user_monitor::snapshot::encode(covers, &state, None)),
        );
        batch
    };
    f.store
        .write_snapshots("state", &snapshot(1, 0, &head))
        .await
        .unwrap();
    let from_snapshot = view(&f).await;
    assert_eq!(
        from_snapshot["state"]["snapshot"],
        json!({"covers": 1, "state_offset": 0})
    );
    assert_eq!(from_snapshot["state"]["replayed"], 1);
    assert_eq!(from_snapshot["active"], first["active"]);
    assert_eq!(from_snapshot["as_of"], first["as_of"]);
    f.store
        .write_snapshots("state", &snapshot(5, 1, &oracle))
        .await
        .unwrap();
    let covered = view(&f).await;
    assert_eq!(covered["state"]["replayed"], 0);
    assert_eq!(covered["active"], first["active"]);
    // An older record of the state topic never replaces a later one.
    f.store
        .write_snapshots("state", &snapshot(1, 0, &head))
        .await
        .unwrap();
    assert_eq!(view(&f).await["state"]["snapshot"]["covers"], 5);

    // The risk level and a shadow set in force.
    call(&f.app, put("/api/v1/users/7/risk", r#"{"risk": "high"}"#)).await;
    let shadow = r#"{"version": "s1", "time_unit": "seconds", "rule": [
        {"code": 777, "kind": "window_sum", "on": "deposit", "window": "10m", "amount": "300"}]}"#;
    assert_eq!(
        call(&f.app, put("/api/v1/rules/shadow", shadow))
            .await
            .status,
        StatusCode::OK
    );
    let high = view(&f).await;
    assert_eq!(high["risk"], "high");
    assert_eq!(high["risk_source"]["kind"], "profile");
    assert_eq!(high["active"]["rules"], engine_standing(Risk::High));
    assert_eq!(high["shadow"]["version"], "s1");
    assert_eq!(
        (
            high["shadow"]["rules"][0]["observed"].clone(),
            high["shadow"]["rules"][0]["threshold"].clone()
        ),
        (json!("207"), json!("150"))
    );

    let unknown = call(&f.app, get("/api/v1/users/12345")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.json()["error"].as_str().unwrap().contains("12345"));
    for bad in ["x", "-1", "9223372036854775808", "1.5"] {
        let reply = call(&f.app, get(&format!("/api/v1/users/{bad}"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    f.backend.set_mode(Mode::Down);
    let reply = call(&f.app, get("/api/v1/users/7")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn healthz_is_always_200_and_readyz_follows_shim_and_processor() {
    let f = fixture().await;
    let reply = call(&f.app, get("/healthz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"status": "ok"}));

    let reply = call(&f.app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["ready"], true);
    assert_eq!(reply.json()["processor"]["assigned_partitions"], 0);

    f.processor.set_partitions(6, 2);
    let reply = call(&f.app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["processor"]["restoring_partitions"], 2);
    f.processor.set_partitions(6, 0);

    f.backend.set_mode(Mode::Down);
    let reply = call(&f.app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["shim"]["kafka_connected"], false);
}

#[tokio::test]
async fn readyz_waits_for_the_projection_to_be_assigned() {
    let hub = Arc::new(Hub::new(10));
    let (store, _dir) = sqlite_store().await;
    let projection = Arc::new(ProjectionStatus::default());
    let backend = MemoryBackend::new(Arc::clone(&hub), store.clone(), usize::MAX);
    let app = router(Arc::new(Shared {
        backend: backend as Arc<dyn Backend>,
        hub: Arc::clone(&hub),
        store,
        projection: Arc::clone(&projection),
        metrics: Metrics::new(),
        processor: None,
        response_timeout: Duration::from_millis(100),
        body_limit: 1024,
        auth: None,
        rules: default_rules(),
        streams: default_streams(),
    }));
    assert_eq!(
        call(&app, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    hub.set_connected(true);
    assert_eq!(
        call(&app, get("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    projection.set_assigned();
    let reply = call(&app, get("/readyz")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["processor"], Value::Null);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_with_latency() {
    let f = fixture().await;
    call(&f.app, post("/event", EXAMPLE)).await;
    call(&f.app, get("/api/v1/events/0-0")).await;
    call(&f.app, get("/api/v1/events/9-9")).await;
    let reply = call(&f.app, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text;
    assert!(
        text.contains(
            r#"user_monitor_http_requests_total{route="/event",method="POST",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(
        r#"user_monitor_http_requests_total{route="/api/v1/events/{event_id}",method="GET",status="404"} 1"#
    ));
    assert!(text.contains(r#"user_monitor_http_response_seconds_count{route="/event"} 1"#));
}

#[tokio::test]
async fn openapi_document_describes_every_endpoint() {
    let f = fixture().await;
    let reply = call(&f.app, get("/openapi.json")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let expected: HashMap<&str, &[&str]> = HashMap::from([
        ("/event", &["post"][..]),
        ("/api/v1/events", &["post"][..]),
        ("/api/v1/events/{event_id}", &["get"][..]),
        ("/api/v1/alerts", &["get"][..]),
        ("/api/v1/alerts/stream", &["get"][..]),
        ("/api/v1/alerts/{alert_id}", &["get"][..]),
        ("/api/v1/users/{user_id}/events", &["get"][..]),
        ("/api/v1/users/{user_id}/risk", &["put", "get"][..]),
        ("/api/v1/users/{user_id}", &["get"][..]),
        ("/api/v1/rules", &["get", "put"][..]),
        ("/api/v1/rules/shadow", &["get", "put", "delete"][..]),
        ("/api/v1/rules/shadow/promote", &["post"][..]),
        ("/api/v1/rules/history", &["get"][..]),
        ("/api/v1/rules/backtest", &["post"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
        ("/metrics", &["get"][..]),
        ("/openapi.json", &["get"][..]),
    ]);
    for (path, methods) in expected {
        for method in methods {
            assert!(paths[path][method].is_object(), "{method} {path}");
        }
    }
    let statuses = paths["/event"]["post"]["responses"].as_object().unwrap();
    for status in ["200", "202", "400", "409", "413", "415", "503"] {
        assert!(statuses.contains_key(status), "POST /event {status}");
    }
    // The 201 body always carries `alert_id` (null without an alert).
    let created = &doc["components"]["schemas"]["CreatedBody"];
    assert!(
        created["required"]
            .as_array()
            .unwrap()
            .contains(&json!("alert_id")),
        "{created}"
    );
    for (path, method) in [("/api/v1/rules", "put"), ("/api/v1/rules/shadow", "put")] {
        let statuses = paths[path][method]["responses"].as_object().unwrap();
        for status in ["200", "400", "401", "403", "413", "415", "503"] {
            assert!(statuses.contains_key(status), "{method} {path} {status}");
        }
        assert_eq!(
            paths[path][method]["security"][0]["bearer"][0],
            "rules:write"
        );
    }
    let statuses = paths["/api/v1/rules/shadow"]["get"]["responses"]
        .as_object()
        .unwrap();
    for status in ["200", "401", "403", "404"] {
        assert!(statuses.contains_key(status), "GET shadow {status}");
    }
    // A refused rule set lists every problem; the body documents the set's structure.
    let error = &doc["components"]["schemas"]["ErrorBody"]["properties"];
    assert!(error["problems"].is_object(), "{error}");
    let rule_set = &doc["components"]["schemas"]["RuleSetSchema"]["properties"];
    for field in ["version", "time_unit", "rule"] {
        assert!(rule_set[field].is_object(), "{field}: {rule_set}");
    }
    let params = paths["/api/v1/alerts"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["schema"]["type"], "integer", "{limit}");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_405_both_json() {
    let f = fixture().await;
    let reply = call(&f.app, get("/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"].as_str().unwrap().contains("/nope"));
    let reply = call(&f.app, get("/event")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.json()["error"].is_string());
}

#[tokio::test]
async fn malformed_paths_and_queries_are_400_json_naming_the_problem() {
    let f = fixture().await;
    for path in [
        "/api/v1/alerts?code=30&code=123",
        "/api/v1/users/1/events?limit=1&limit=2",
        "/api/v1/events/%FF",
        "/api/v1/alerts/%FF",
        "/api/v1/users/%FF/events",
    ] {
        let reply = call(&f.app, get(path)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/json",
            "{path}"
        );
        assert!(reply.json()["error"].is_string(), "{path}: {}", reply.text);
    }
    let reply = call(&f.app, put("/api/v1/users/%FF/risk", r#"{"risk": "low"}"#)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"].as_str().unwrap().contains("path"));
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_400_even_in_an_ignored_field() {
    let f = fixture().await;
    let mut body =
        br#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1, "x": ""#.to_vec();
    body.extend_from_slice(b"\xff\xfe\"}");
    for path in ["/event", "/api/v1/events"] {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        let reply = call(&f.app, request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            reply.json()["error"].as_str().unwrap().contains("UTF-8"),
            "{}",
            reply.text
        );
    }
}

/// Every route of the API through a real socket, in `tokens` mode: without a token 401 (with a
/// `WWW-Authenticate` challenge), with an unknown token 401, with a token lacking the route's
/// scope 403 naming it, with the right scope the route's own answer; the operational endpoints
/// stay open. Then the audit trail after risk changes by two tokens.
#[tokio::test]
async fn every_route_checks_its_scope_and_the_audit_trail_names_who_changed_what() {
    let token = |name: &str, scopes: &[Scope]| TokenConfig {
        name: name.into(),
        sha256: sha256_hex(&format!("secret-{name}")),
        scopes: scopes.to_vec(),
    };
    let tokens = Tokens::new(
        &[
            token("ingest", &[Scope::EventsWrite]),
            token("ops", &[Scope::ProfilesWrite, Scope::Read]),
            token("risk-desk", &[Scope::ProfilesWrite]),
            token("reader", &[Scope::Read]),
            token("rules-desk", &[Scope::RulesWrite]),
        ],
        None,
    )
    .unwrap();
    let fixture = fixture_with_auth(100, Duration::from_secs(1), Some(Arc::new(tokens))).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = fixture.app.clone();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");

    /// (method, path, body, scope, a token with it, one without it, the status with it)
    type Route<'a> = (
        &'a str,
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a str,
        &'a str,
        u16,
    );
    let event = r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#;
    let rule_set =
        r#"{"version": "r1", "rule": [{"code": 7, "kind": "amount", "on": "any", "amount": "5"}]}"#;
    let routes: [Route; 16] = [
        (
            "POST",
            "/event",
            Some(event),
            "events:write",
            "ingest",
            "reader",
            200,
        ),
        (
            "POST",
            "/api/v1/events",
            Some(r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 11}"#),
            "events:write",
            "ingest",
            "ops",
            201,
        ),
        (
            "GET",
            "/api/v1/events/0-0",
            None,
            "read",
            "reader",
            "ingest",
            200,
        ),
        (
            "GET",
            "/api/v1/alerts",
            None,
            "read",
            "reader",
            "risk-desk",
            200,
        ),
        (
            "GET",
            "/api/v1/alerts/alert-0-0",
            None,
            "read",
            "ops",
            "ingest",
            404,
        ),
        (
            "GET",
            "/api/v1/users/1/events",
            None,
            "read",
            "reader",
            "ingest",
            200,
        ),
        (
            "PUT",
            "/api/v1/rules",
            Some(rule_set),
            "rules:write",
            "rules-desk",
            "ops",
            200,
        ),
        (
            "GET",
            "/api/v1/rules",
            None,
            "read",
            "reader",
            "rules-desk",
            200,
        ),
        (
            "PUT",
            "/api/v1/rules/shadow",
            Some(rule_set),
            "rules:write",
            "rules-desk",
            "risk-desk",
            200,
        ),
        (
            "GET",
            "/api/v1/rules/shadow",
            None,
            "read",
            "ops",
            "rules-desk",
            200,
        ),
        (
            "DELETE",
            "/api/v1/rules/shadow",
            None,
            "rules:write",
            "rules-desk",
            "reader",
            200,
        ),
        (
            "PUT",
            "/api/v1/users/2/risk",
            Some(r#"{"risk": "high"}"#),
            "profiles:write",
            "ops",
            "reader",
            200,
        ),
        (
            "GET",
            "/api/v1/audit",
            None,
            "read",
            "reader",
            "risk-desk",
            200,
        ),
        (
            "GET",
            "/api/v1/users/1/risk",
            None,
            "read",
            "reader",
            "risk-desk",
            200,
        ),
        ("GET", "/api/v1/users/1", None, "read", "ops", "ingest", 200),
        ("GET", "/api/v1/nope", None, "read", "reader", "ingest", 404),
    ];
    for (method, path, body, scope, good, lacking, status) in routes {
        let request = |secret: Option<String>| {
            let mut r = client.request(method.parse().unwrap(), url(path));
            if let Some(body) = body {
                r = r.header("content-type", "application/json").body(body);
            }
            if let Some(secret) = secret {
                r = r.bearer_auth(secret);
            }
            r
        };
        let none = request(None).send().await.unwrap();
        assert_eq!(none.status(), 401, "{method} {path} without a token");
        assert!(none.headers().contains_key("www-authenticate"));
        let body: Value = none.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");

        let wrong = request(Some("not-a-token".into())).send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
        assert_eq!(
            wrong.json::<Value>().await.unwrap()["error"],
            "invalid token"
        );

        let missing = request(Some(format!("secret-{lacking}")))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 403, "{method} {path} with {lacking}");
        let error = missing.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            error.contains(scope) && error.contains(lacking),
            "{method} {path}: {error}"
        );

        let right = request(Some(format!("secret-{good}")))
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), status, "{method} {path} with {good}");
    }
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let open = client.get(url(path)).send().await.unwrap();
        assert_ne!(open.status(), 401, "{path} stays open");
        assert_ne!(open.status(), 403, "{path} stays open");
    }

    // Two tokens change user 7's risk level; the trail says who, from what to what, newest first.
    for (who, risk) in [("ops", "high"), ("risk-desk", "low")] {
        let put = client
            .put(url("/api/v1/users/7/risk"))
            .bearer_auth(format!("secret-{who}"))
            .json(&json!({ "risk": risk }))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
    }
    let trail: Value = client
        .get(url("/api/v1/audit?limit=2"))
        .bearer_auth("secret-reader")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = trail["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(
        (
            entries[0]["actor"].as_str(),
            entries[0]["before"].as_str(),
            entries[0]["after"].as_str()
        ),
        (Some("risk-desk"), Some("high"), Some("low"))
    );
    assert_eq!(
        (
            entries[1]["actor"].as_str(),
            entries[1]["before"].as_str(),
            entries[1]["after"].as_str()
        ),
        (Some("ops"), Some("medium"), Some("high"))
    );
    assert_eq!(entries[1]["user_id"], 7);
    // The older page holds the first change (user 2, by ops).
    let cursor = trail["next_cursor"].as_str().unwrap();
    let older: Value = client
        .get(url(&format!("/api/v1/audit?cursor={cursor}")))
        .bearer_auth("secret-reader")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(older["entries"][0]["user_id"], 2);
    assert!(older["next_cursor"].is_null());
    // Before it, the rule set changes of rules-desk, newest first, with their versions.
    let rules: Vec<_> = older["entries"].as_array().unwrap()[1..]
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["before"].as_str().unwrap(),
                e["after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("rules-desk", "rules.shadow.clear", "r1", "none"),
            ("rules-desk", "rules.shadow.set", "none", "r1"),
            ("rules-desk", "rules.active.set", "default", "r1"),
        ]
    );

    // The OpenAPI document declares the scheme and each route's scope.
    let doc: Value = client
        .get(url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/event"]["post"]["security"][0]["bearer"][0],
        "events:write"
    );
    assert_eq!(
        doc["paths"]["/api/v1/users/{user_id}/risk"]["put"]["security"][0]["bearer"][0],
        "profiles:write"
    );
    assert_eq!(
        doc["paths"]["/api/v1/audit"]["get"]["security"][0]["bearer"][0],
        "read"
    );
    assert_eq!(
        doc["paths"]["/api/v1/rules"]["put"]["security"][0]["bearer"][0],
        "rules:write"
    );
    assert_eq!(
        doc["paths"]["/api/v1/rules/shadow"]["delete"]["security"][0]["bearer"][0],
        "rules:write"
    );
}

/// The OpenAPI document and the router agree on every operation: one that declares
/// `security: bearer [scope]` answers 401 without a token, 403 to a token holding every other
/// scope and neither to a token holding only that scope; one that declares none is open.
#[tokio::test]
async fn every_openapi_operation_is_enforced_with_the_scope_it_declares() {
    let all = [
        Scope::EventsWrite,
        Scope::ProfilesWrite,
        Scope::Read,
        Scope::RulesWrite,
        Scope::AlertsWrite,
    ];
    let token = |name: String, scopes: Vec<Scope>| TokenConfig {
        sha256: sha256_hex(&name),
        name,
        scopes,
    };
    let mut configs = Vec::new();
    for scope in all {
        configs.push(token(format!("only-{scope}"), vec![scope]));
        let others = all.into_iter().filter(|s| *s != scope).collect();
        configs.push(token(format!("all-but-{scope}"), others));
    }
    let tokens = Tokens::new(&configs, None).unwrap();
    let f = fixture_with_auth(100, Duration::from_millis(50), Some(Arc::new(tokens))).await;
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let mut checked = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{event_id}", "0-0")
            .replace("{alert_id}", "alert-0-0")
            .replace("{user_id}", "3");
        for (method, operation) in operations.as_object().unwrap() {
            let request = |secret: Option<String>| {
                let mut request = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&concrete)
                    .header(header::CONTENT_TYPE, "application/json");
                if let Some(secret) = secret {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {secret}"));
                }
                request.body(Body::from("{}")).unwrap()
            };
            let declared = &operation["security"][0]["bearer"];
            let status = |reply: Reply| reply.status.as_u16();
            match declared.as_array().map(Vec::as_slice) {
                None => {
                    let open = status(call(&f.app, request(None)).await);
                    assert!(![401, 403].contains(&open), "{method} {path}: {open}");
                }
                Some([scope]) => {
                    let scope: Scope = scope.as_str().unwrap().parse().unwrap();
                    let none = status(call(&f.app, request(None)).await);
                    assert_eq!(none, 401, "{method} {path} without a token");
                    let others = request(Some(format!("all-but-{scope}")));
                    let others = status(call(&f.app, others).await);
                    assert_eq!(others, 403, "{method} {path} without {scope}");
                    let only = status(call(&f.app, request(Some(format!("only-{scope}")))).await);
                    assert!(
                        ![401, 403].contains(&only),
                        "{method} {path} with {scope}: {only}"
                    );
                }
                Some(other) => panic!("{method} {path} declares {other:?}"),
            }
            checked.push(format!("{method} {path}"));
        }
    }
    // Every route of the router is in the document.
    assert_eq!(checked.len(), 27, "{checked:?}");
}

// ---------------------------------------------------------------------------------------------
// Rule sets (CONTRACT §10)

fn delete(path: &str) -> Request<Body> {
    Request::delete(path).body(Body::empty()).unwrap()
}

/// A valid set in seconds: two rules.
const RULES_V1: &str = r#"{"version": "2026-12-01.1", "time_unit": "seconds", "rule": [
    {"code": 1100, "name": "large withdrawal", "kind": "amount", "on": "withdraw", "amount": "250"},
    {"code": 500, "kind": "window_count", "on": "any", "window": "2m", "count": 8}
]}"#;

/// Four bad rules, each with its own problem, and a version that is too long.
const RULES_BAD: &str = r#"{"version": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "rule": [
    {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "-5"},
    {"code": 30, "kind": "consecutive", "on": "any", "count": 3},
    {"code": 123, "kind": "window_sum", "on": "deposit", "window": "5h", "amount": "200"},
    {"code": 500, "kind": "window_count", "on": "any", "window": "60s", "count": 0},
    {"code": 501, "kind": "amount", "on": "withdraw", "amount": "1"}
]}"#;

fn problems(reply: &Reply) -> Vec<String> {
    reply.json()["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problems: {}", reply.text))
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_invalid_rule_set_is_400_naming_every_bad_rule_and_field_and_publishes_nothing() {
    let f = fixture().await;
    for path in ["/api/v1/rules", "/api/v1/rules/shadow"] {
        let reply = call(&f.app, put(path, RULES_BAD)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.text
        );
        let problems = problems(&reply);
        let named = |prefix: &str, field: &str| {
            problems
                .iter()
                .any(|p| p.starts_with(prefix) && p.contains(&format!(": {field}: ")))
        };
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("version: at most 64")),
            "{problems:?}"
        );
        assert!(named("rule[1] (code 1100)", "amount"), "{problems:?}");
        assert!(named("rule[2] (code 30)", "on"), "{problems:?}");
        assert!(named("rule[3] (code 123)", "window"), "{problems:?}");
        assert!(named("rule[4] (code 500)", "count"), "{problems:?}");
        assert!(
            !problems.iter().any(|p| p.starts_with("rule[5]")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 5, "{problems:?}");
        // The error text names them too, in the shim's usual error body.
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.starts_with("invalid rule set: "), "{error}");
        for problem in &problems {
            assert!(error.contains(problem.as_str()), "{error}");
        }
    }
    // Not JSON at all, or not an object: 400 with the problem; not declared JSON: 415.
    let reply = call(&f.app, put("/api/v1/rules", "{\"version\": ")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        problems(&reply)[0].starts_with("not JSON"),
        "{}",
        reply.text
    );
    let reply = call(&f.app, put("/api/v1/rules", "[1, 2]")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let plain = Request::put("/api/v1/rules")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(RULES_V1))
        .unwrap();
    assert_eq!(
        call(&f.app, plain).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Nothing was published and nothing audited.
    let active = call(&f.app, get("/api/v1/rules")).await.json();
    assert_eq!(active["source"], "config", "{active}");
    assert_eq!(active["set"]["version"], "default");
    assert_eq!(
        call(&f.app, get("/api/v1/rules/shadow")).await.status,
        StatusCode::NOT_FOUND
    );
    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    assert_eq!(trail["entries"], json!([]), "{trail}");
}

#[tokio::test]
async fn a_rule_set_in_another_time_unit_than_the_service_is_400() {
    let f = fixture().await;
    let millis = RULES_V1.replace("\"seconds\"", "\"milliseconds\"");
    let reply = call(&f.app, put("/api/v1/rules", &millis)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let problems = problems(&reply);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("time_unit: "), "{problems:?}");
    assert!(problems[0].contains("milliseconds") && problems[0].contains("seconds"));
    // Named together with the set's other problems.
    let both = RULES_BAD.replace(
        "\"rule\": [",
        "\"time_unit\": \"milliseconds\", \"rule\": [",
    );
    let reply = call(&f.app, put("/api/v1/rules/shadow", &both)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let problems = self::problems(&reply);
    assert_eq!(problems.len(), 6, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("time_unit: ")),
        "{problems:?}"
    );
    // A service whose events are in milliseconds takes that set and refuses the seconds one.
    let mut settings = Settings::defaults();
    settings.rules.time_unit = "milliseconds".parse().unwrap();
    let f = fixture_with_rules(
        10,
        Duration::from_millis(200),
        None,
        ConfiguredRuleSets::from_settings(&settings).unwrap(),
    )
    .await;
    assert_eq!(
        call(&f.app, put("/api/v1/rules", &millis)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&f.app, put("/api/v1/rules", RULES_V1)).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rule_set_writes_need_the_rules_write_scope() {
    let tokens = Tokens::new(
        &[TokenConfig {
            name: "ops".into(),
            sha256: sha256_hex("ops-secret"),
            scopes: vec![Scope::Read, Scope::ProfilesWrite, Scope::EventsWrite],
        }],
        None,
    )
    .unwrap();
    let f = fixture_with_auth(10, Duration::from_millis(200), Some(Arc::new(tokens))).await;
    let authorized = |mut request: Request<Body>| {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer ops-secret".parse().unwrap());
        request
    };
    for request in [
        put("/api/v1/rules", RULES_V1),
        put("/api/v1/rules/shadow", RULES_V1),
        delete("/api/v1/rules/shadow"),
    ] {
        let what = format!("{} {}", request.method(), request.uri());
        let reply = call(&f.app, authorized(request)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            reply.text
        );
        assert!(reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("rules:write"));
    }
    let reply = call(&f.app, put("/api/v1/rules", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // Reading needs `read` only, and nothing was published.
    let reply = call(&f.app, authorized(get("/api/v1/rules"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["source"], "config");
}

#[tokio::test]
async fn a_published_rule_set_is_what_get_shows_with_its_offset_and_the_audit_trail_records_it() {
    let f = fixture().await;
    let before = call(&f.app, get("/api/v1/rules")).await;
    assert_eq!(before.status, StatusCode::OK);
    let before = before.json();
    assert_eq!(before["source"], "config");
    assert_eq!(before["set"], RuleSet::default_set().to_value());
    assert!(before.get("offset").is_none(), "{before}");

    let reply = call(&f.app, put("/api/v1/rules", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let published = reply.json();
    assert_eq!(published["version"], "2026-12-01.1");
    // After the version's own record (offset 0).
    assert_eq!(published["offset"], 1);
    assert!(published["timestamp"].as_i64().unwrap() > 0, "{published}");
    assert_eq!(published["unchanged"], false);
    assert_eq!(published.as_object().unwrap().len(), 4, "{published}");

    let shown = call(&f.app, get("/api/v1/rules")).await.json();
    assert_eq!(shown["source"], "topic");
    assert_eq!(shown["offset"], 1);
    assert_eq!(shown["timestamp"], published["timestamp"]);
    let sent: Value = serde_json::from_str(RULES_V1).unwrap();
    assert_eq!(shown["set"]["version"], sent["version"]);
    assert_eq!(shown["set"]["time_unit"], "seconds");
    assert_eq!(shown["set"]["rule"][0], sent["rule"][0], "{shown}");
    assert_eq!(shown["set"]["rule"][1]["window"], "2m");
    assert_eq!(shown["set"]["rule"][1]["count"], 8);

    // A second version replaces it; the trail has both changes, newest first.
    let v2 = RULES_V1.replace("2026-12-01.1", "2026-12-02.1");
    let reply = call(&f.app, put("/api/v1/rules", &v2)).await;
    assert_eq!(reply.json()["offset"], 3);
    assert_eq!(
        call(&f.app, get("/api/v1/rules")).await.json()["set"]["version"],
        "2026-12-02.1"
    );
    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    let changes: Vec<_> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["before"].as_str().unwrap().to_owned(),
                e["after"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let change = |before: &str, after: &str| {
        (
            "rules.active.set".to_owned(),
            before.to_owned(),
            after.to_owned(),
            "anonymous".to_owned(),
        )
    };
    assert_eq!(
        changes,
        [
            change("2026-12-01.1", "2026-12-02.1"),
            change("default", "2026-12-01.1")
        ]
    );
    // Kafka down: 503, and the set in force stays.
    f.backend.set_mode(Mode::Down);
    let v3 = RULES_V1.replace("2026-12-01.1", "v3");
    let reply = call(&f.app, put("/api/v1/rules", &v3)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    f.backend.set_mode(Mode::Answer);
    assert_eq!(
        call(&f.app, get("/api/v1/rules")).await.json()["set"]["version"],
        "2026-12-02.1"
    );
}

#[tokio::test]
async fn the_shadow_set_is_published_shown_and_cleared() {
    let f = fixture().await;
    let reply = call(&f.app, get("/api/v1/rules/shadow")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"], "no shadow rule set");

    let reply = call(&f.app, put("/api/v1/rules/shadow", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["version"], "2026-12-01.1");
    let shadow = call(&f.app, get("/api/v1/rules/shadow")).await;
    assert_eq!(shadow.status, StatusCode::OK);
    let shadow = shadow.json();
    assert_eq!(shadow["source"], "topic");
    assert_eq!(shadow["set"]["version"], "2026-12-01.1");
    // The active set is not touched by it.
    assert_eq!(
        call(&f.app, get("/api/v1/rules")).await.json()["source"],
        "config"
    );

    let reply = call(&f.app, delete("/api/v1/rules/shadow")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let cleared = reply.json();
    assert_eq!(cleared["cleared"], "2026-12-01.1");
    assert_eq!(cleared["offset"], 2);
    let reply = call(&f.app, get("/api/v1/rules/shadow")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("cleared at offset 2"));
    // Clearing again is harmless: nothing was in force.
    let again = call(&f.app, delete("/api/v1/rules/shadow")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["cleared"], "none");

    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    let actions: Vec<_> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        [
            "rules.shadow.clear",
            "rules.shadow.clear",
            "rules.shadow.set"
        ]
    );
    // The wrong method on the shadow route is a JSON 405.
    let post = call(&f.app, post("/api/v1/rules/shadow", RULES_V1)).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// A request with `If-Match: <if_match>`.
fn if_match(mut request: Request<Body>, version: &str) -> Request<Body> {
    request
        .headers_mut()
        .insert(header::IF_MATCH, version.parse().unwrap());
    request
}

/// The trail's rule set changes, newest first: (action, before, after).
async fn rule_changes(f: &Fixture) -> Vec<(String, String, String)> {
    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("action"), text("before"), text("after"))
        })
        .collect()
}

fn error_of(reply: &Reply) -> String {
    reply.json()["error"].as_str().unwrap().to_owned()
}

/// The error of a reply that must be a 400 (`what` names the request in a failure).
fn refused_with_400(reply: &Reply, what: &str) -> String {
    assert_eq!(
        reply.status,
        StatusCode::BAD_REQUEST,
        "{what}: {}",
        reply.text
    );
    error_of(reply)
}

fn row(action: &str, before: &str, after: &str) -> (String, String, String) {
    (action.to_owned(), before.to_owned(), after.to_owned())
}

#[tokio::test]
async fn an_empty_rule_set_is_refused_unless_allowed() {
    let f = fixture().await;
    let empty = r#"{"version": "off", "time_unit": "seconds", "rule": []}"#;
    for path in ["/api/v1/rules", "/api/v1/rules/shadow"] {
        let reply = call(&f.app, put(path, empty)).await;
        let error = refused_with_400(&reply, path);
        assert!(error.contains("\"off\" has no rules"), "{error}");
        assert!(error.contains("allow_empty=true"), "{error}");
        let reply = call(&f.app, put(&format!("{path}?allow_empty=maybe"), empty)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            reply.json()["error"],
            "invalid allow_empty: \"maybe\" (expected true or false)"
        );
        let reply = call(&f.app, put(&format!("{path}?allow_emtpy=true"), empty)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.text.contains("allow_emtpy"), "{}", reply.text);
    }
    // Nothing was published.
    assert_eq!(
        call(&f.app, get("/api/v1/rules")).await.json()["source"],
        "config"
    );
    assert!(rule_changes(&f).await.is_empty());
    let reply = call(&f.app, put("/api/v1/rules?allow_empty=true", empty)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let shown = call(&f.app, get("/api/v1/rules")).await.json();
    assert_eq!(shown["set"]["version"], "off");
    assert_eq!(shown["set"]["rule"], json!([]));
    assert_eq!(
        rule_changes(&f).await,
        [row("rules.active.set", "default", "off")]
    );
}

#[tokio::test]
async fn a_version_name_published_with_other_rules_is_409_and_the_same_set_again_changes_nothing() {
    let f = fixture().await;
    let reply = call(&f.app, put("/api/v1/rules", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let first = reply.json();
    // The same name, other rules: refused as the active or the shadow set.
    let other = RULES_V1.replace("\"250\"", "\"240\"");
    for path in ["/api/v1/rules", "/api/v1/rules/shadow"] {
        let reply = call(&f.app, put(path, &other)).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{path}: {}", reply.text);
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains("version \"2026-12-01.1\" was already published at 20"),
            "{error}"
        );
        assert!(
            error.contains("(offset 0 of the rules topic, by anonymous via http)"),
            "{error}"
        );
    }
    // The configured set's name too.
    let reply = call(
        &f.app,
        put(
            "/api/v1/rules",
            &RULES_V1.replace("2026-12-01.1", "default"),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert!(
        reply.text.contains("as the configured active set"),
        "{}",
        reply.text
    );
    // The same set again: 200, nothing published, nothing recorded.
    let reply = call(&f.app, put("/api/v1/rules", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let again = reply.json();
    assert_eq!(again["unchanged"], true);
    assert_eq!(
        (&again["offset"], &again["timestamp"]),
        (&first["offset"], &first["timestamp"])
    );
    assert_eq!(
        rule_changes(&f).await,
        [row("rules.active.set", "default", "2026-12-01.1")]
    );
    // As the shadow set it is a change (the same version, the same rules): no 409.
    let reply = call(&f.app, put("/api/v1/rules/shadow", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["unchanged"], false);
}

#[tokio::test]
async fn if_match_makes_every_rules_write_conditional_and_412_names_the_version_in_force() {
    let f = fixture().await;
    let shown = call(&f.app, get("/api/v1/rules")).await;
    assert_eq!(shown.headers[header::ETAG], "\"default\"");
    // Read, then write expecting what was read: 200; a second writer that read the same: 412.
    let reply = call(
        &f.app,
        if_match(put("/api/v1/rules", RULES_V1), "\"default\""),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let v2 = RULES_V1.replace("2026-12-01.1", "2026-12-02.1");
    let reply = call(&f.app, if_match(put("/api/v1/rules", &v2), "\"default\"")).await;
    assert_eq!(
        reply.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        reply.text
    );
    assert_eq!(
        reply.json()["error"],
        "the active rule set in force is \"2026-12-01.1\", not \"default\": it changed since it was read; nothing was published. Read it again, then retry naming the version now in force"
    );
    let shown = call(&f.app, get("/api/v1/rules")).await;
    assert_eq!(shown.headers[header::ETAG], "\"2026-12-01.1\"");
    assert_eq!(shown.json()["set"]["version"], "2026-12-01.1");
    // A bare version and * match too; a weak tag is a 400.
    let reply = call(&f.app, if_match(put("/api/v1/rules", &v2), "2026-12-01.1")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = call(&f.app, if_match(put("/api/v1/rules", RULES_V1), "*")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = call(&f.app, if_match(put("/api/v1/rules", &v2), "W/\"x\"")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    // The shadow writes check the shadow set: there is none.
    let shadow = RULES_V1.replace("2026-12-01.1", "s1");
    for request in [
        if_match(put("/api/v1/rules/shadow", &shadow), "*"),
        if_match(delete("/api/v1/rules/shadow"), "s0"),
        if_match(post("/api/v1/rules/shadow/promote", ""), "s0"),
    ] {
        let reply = call(&f.app, request).await;
        assert_eq!(
            reply.status,
            StatusCode::PRECONDITION_FAILED,
            "{}",
            reply.text
        );
        assert!(
            reply
                .text
                .contains("in force is none (there is no shadow set)"),
            "{}",
            reply.text
        );
    }
    let reply = call(&f.app, put("/api/v1/rules/shadow", &shadow)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let shown = call(&f.app, get("/api/v1/rules/shadow")).await;
    assert_eq!(shown.headers[header::ETAG], "\"s1\"");
    let reply = call(&f.app, if_match(delete("/api/v1/rules/shadow"), "s0")).await;
    assert_eq!(reply.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        error_of(&reply).contains("is \"s1\", not \"s0\""),
        "{}",
        reply.text
    );
    let reply = call(&f.app, if_match(delete("/api/v1/rules/shadow"), "\"s1\"")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["cleared"], "s1");
    // Without If-Match a write proceeds whatever is in force.
    let reply = call(&f.app, put("/api/v1/rules", &v2)).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn promote_makes_the_shadow_set_active_clears_it_and_is_audited() {
    let f = fixture().await;
    let reply = call(&f.app, post("/api/v1/rules/shadow/promote", "")).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert!(
        reply
            .text
            .contains("there is no shadow rule set to promote"),
        "{}",
        reply.text
    );
    let candidate = RULES_V1.replace("2026-12-01.1", "candidate-1");
    assert_eq!(
        call(&f.app, put("/api/v1/rules/shadow", &candidate))
            .await
            .status,
        StatusCode::OK
    );
    let reply = call(
        &f.app,
        if_match(post("/api/v1/rules/shadow/promote", ""), "candidate-1"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let promoted = reply.json();
    assert_eq!(promoted["version"], "candidate-1");
    assert_eq!(promoted["before"], "default");
    // version/candidate-1 (0), shadow (1), active (2), the shadow tombstone (3).
    assert_eq!(
        (&promoted["offset"], &promoted["shadow_cleared_offset"]),
        (&json!(2), &json!(3))
    );
    let active = call(&f.app, get("/api/v1/rules")).await.json();
    assert_eq!(active["set"]["version"], "candidate-1");
    assert_eq!(active["offset"], 2);
    let shadow = call(&f.app, get("/api/v1/rules/shadow")).await;
    assert_eq!(shadow.status, StatusCode::NOT_FOUND);
    assert_eq!(
        rule_changes(&f).await,
        [
            row("rules.shadow.clear", "candidate-1", "none"),
            row("rules.active.promote", "default", "candidate-1"),
            row("rules.shadow.set", "none", "candidate-1"),
        ]
    );
    // Nothing left to promote.
    let reply = call(&f.app, post("/api/v1/rules/shadow/promote", "")).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.text.contains("cleared at offset 3"), "{}", reply.text);
    // An empty shadow set is promoted only when allowed.
    let empty = r#"{"version": "off", "rule": []}"#;
    let reply = call(&f.app, put("/api/v1/rules/shadow?allow_empty=true", empty)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = call(&f.app, post("/api/v1/rules/shadow/promote", "")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text);
    let reply = call(
        &f.app,
        post("/api/v1/rules/shadow/promote?allow_empty=true", ""),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        call(&f.app, get("/api/v1/rules")).await.json()["set"]["version"],
        "off"
    );
}

#[tokio::test]
async fn history_lists_every_version_newest_first_with_who_and_the_sets_in_force() {
    let f = fixture().await;
    let history = call(&f.app, get("/api/v1/rules/history")).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(
        history.json(),
        json!({"active": {"version": "default", "source": "config"}, "shadow": null, "versions": []})
    );
    let v2 = RULES_V1.replace("2026-12-01.1", "v2");
    let s1 = RULES_V1.replace("2026-12-01.1", "s1");
    for (path, body) in [
        ("/api/v1/rules", RULES_V1),
        ("/api/v1/rules/shadow", s1.as_str()),
        ("/api/v1/rules", v2.as_str()),
        // Back to the first: a change, not a new version.
        ("/api/v1/rules", RULES_V1),
    ] {
        let reply = call(&f.app, put(path, body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let reply = call(&f.app, get("/api/v1/rules/history?limit=3")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&reply)
            .contains("unknown query parameter \"limit\"; this endpoint takes no query parameters"),
        "{}",
        reply.text
    );
    let history = call(&f.app, get("/api/v1/rules/history")).await.json();
    assert_eq!(
        history["active"],
        json!({"version": "2026-12-01.1", "source": "topic"})
    );
    assert_eq!(
        history["shadow"],
        json!({"version": "s1", "source": "topic"})
    );
    let versions = history["versions"].as_array().unwrap();
    let listed: Vec<(&str, i64, bool, bool)> = versions
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["offset"].as_i64().unwrap(),
                v["active"].as_bool().unwrap(),
                v["shadow"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("v2", 4, false, false),
            ("s1", 2, false, true),
            ("2026-12-01.1", 0, true, false)
        ]
    );
    for v in versions {
        assert_eq!(
            (&v["published_by"], &v["via"]),
            (&json!("anonymous"), &json!("http"))
        );
        assert!(v["published_at"].as_str().unwrap().ends_with('Z'), "{v}");
        assert_eq!(v["set"]["version"], v["version"]);
    }
}

/// The records the memory backend's "alerts topic" holds, one JSON line each, in offset order.
fn alerts_topic(f: &Fixture) -> String {
    let engine = f.backend.inner.lock().unwrap();
    engine
        .log
        .iter()
        .filter_map(|(_, record)| record.as_ref())
        .map(|r| String::from_utf8(r.to_json()).unwrap() + "\n")
        .collect()
}

#[tokio::test]
async fn a_backtest_over_the_stored_events_is_the_cli_replay_of_the_same_records() {
    use user_monitor::backtest::{run, InputFormat, Range, Replay};
    let f = fixture_with(10_000, Duration::from_millis(200)).await;
    // Deposits and withdrawals of 20 users over 2,000 seconds; some out of order, some not events.
    let mut x = 88_172_645_463_325_252u64;
    let mut time = [0u64; 20];
    let mut produced = 0;
    for i in 0..1_500u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = x % 20;
        let kind = if x % 3 == 0 { "withdraw" } else { "deposit" };
        let late = x % 41 == 0;
        let t = if late {
            time[user as usize].saturating_sub(5)
        } else {
            i + x % 3
        };
        time[user as usize] = time[user as usize].max(t);
        let body = if x % 97 == 0 {
            "{\"type\": \"deposit\"}".to_owned()
        } else {
            format!(
                r#"{{"type": "{kind}", "amount": "{}.50", "user_id": {user}, "time": {t}}}"#,
                10 + x % 140
            )
        };
        let reply = call(&f.app, post("/api/v1/events", &body)).await;
        // Not an event: refused by the shim, never produced.
        produced += u64::from(reply.status != StatusCode::BAD_REQUEST);
    }
    assert!(produced < 1_500);
    assert_eq!(f.store.count().await.unwrap(), produced);
    let candidate = r#"{"version": "lower", "time_unit": "seconds", "rule": [
        {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "90"},
        {"code": 123, "kind": "window_sum", "on": "deposit", "window": "2m", "amount": "300"},
        {"code": 30, "kind": "consecutive", "on": "withdraw", "count": 2}
    ]}"#;
    let body = format!(r#"{{"candidate": {candidate}, "from_time": 700, "to_time": 1200}}"#);
    let reply = call(&f.app, post("/api/v1/rules/backtest", &body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let got = reply.json();

    // The command line's replay of the same records, from the alerts topic.
    let bounds = Settings::defaults().rule_bounds();
    let baseline = RuleSet::default_set();
    let candidate = user_monitor::rule_set::RuleSet::from_json(candidate, &bounds).unwrap();
    let range = Range::new(Some(700), Some(1200), None, &baseline, &candidate, &bounds);
    let mut diff = Vec::new();
    let profiles = Profiles::default();
    let replay = Replay::new(
        &baseline,
        &candidate,
        &bounds,
        &profiles,
        range,
        0,
        Some(&mut diff),
    );
    let want = run(alerts_topic(&f).as_bytes(), InputFormat::Records, replay)
        .unwrap()
        .report;
    assert!(want.events > 300 && want.warm_up > 600, "{want:?}");
    assert!(want.events_changed > 100, "the sets disagree: {want:?}");
    assert_eq!(
        (
            got["baseline_version"].as_str(),
            got["candidate_version"].as_str()
        ),
        (Some("default"), Some("lower"))
    );
    assert_eq!(
        (got["from_time"].as_u64(), got["to_time"].as_u64()),
        (Some(700), Some(1200))
    );
    assert_eq!(
        got["replayed_from"], 0,
        "700 s less state.max_window (1 h), from 0"
    );
    for (field, value) in [
        ("events", want.events),
        ("warm_up", want.warm_up),
        ("invalid", want.invalid),
        ("out_of_order", want.out_of_order),
        ("events_changed", want.events_changed),
        ("users_affected", want.users_affected as u64),
    ] {
        assert_eq!(got[field], value, "{field}");
    }
    assert_eq!(got["codes"], serde_json::to_value(&want.codes).unwrap());
    // The samples are the first 100 lines of the diff, with the evidence of each set's codes.
    let diff: Vec<Value> = String::from_utf8(diff)
        .unwrap()
        .lines()
        .take(100)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples = got["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 100);
    for (sample, line) in samples.iter().zip(&diff) {
        for field in ["event_id", "user_id", "baseline", "candidate"] {
            assert_eq!(sample[field], line[field], "{field}: {sample} vs {line}");
        }
        for set in ["baseline", "candidate"] {
            let explained: Vec<&Value> = sample[format!("{set}_evidence")]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| &e["code"])
                .collect();
            let codes: Vec<&Value> = sample[set].as_array().unwrap().iter().collect();
            assert_eq!(explained, codes, "{sample}");
        }
    }

    // By version name, and the latest N events instead of a range.
    let reply = call(&f.app, put("/api/v1/rules", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = r#"{"candidate": "2026-12-01.1", "baseline": "default", "last": 200}"#;
    let reply = call(&f.app, post("/api/v1/rules/backtest", body)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let latest = reply.json();
    assert_eq!(latest["candidate_version"], "2026-12-01.1");
    assert!(latest["events"].as_u64().unwrap() >= 190, "{latest}");
    assert!(latest["to_time"].is_null(), "{latest}");
    // Refusals name the problem.
    for (body, named) in [
        (r#"{"candidate": "nope"}"#, "candidate: no version \"nope\""),
        (r#"{"candidate": 3}"#, "candidate: expected a rule set"),
        (
            r#"{"candidate": "default", "last": 5, "from_time": 1}"#,
            "last excludes",
        ),
        (
            r#"{"candidate": "default", "from_time": 9, "to_time": 1}"#,
            "from_time 9 is after to_time 1",
        ),
        (
            r#"{"candidate": "default", "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"candidate": {"version": "x", "rule": [{"code": 0}]}}"#,
            "candidate: rule[1]",
        ),
    ] {
        let reply = call(&f.app, post("/api/v1/rules/backtest", body)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{body}: {}",
            reply.text
        );
        assert!(
            error_of(&reply).contains(named),
            "{named} in {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn a_configured_shadow_set_is_shown_until_one_is_published_or_it_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shadow.toml");
    std::fs::write(
        &file,
        "version = \"file-shadow\"\n[[rule]]\ncode = 9\nkind = \"amount\"\non = \"any\"\namount = \"1\"\n",
    )
    .unwrap();
    let mut settings = Settings::defaults();
    settings.rules.shadow = file.display().to_string();
    let rules = ConfiguredRuleSets::from_settings(&settings).unwrap();
    let f = fixture_with_rules(10, Duration::from_millis(200), None, rules).await;
    let shown = call(&f.app, get("/api/v1/rules/shadow")).await.json();
    assert_eq!(shown["source"], "config", "{shown}");
    assert_eq!(shown["set"]["version"], "file-shadow");

    let reply = call(&f.app, put("/api/v1/rules/shadow", RULES_V1)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        call(&f.app, get("/api/v1/rules/shadow")).await.json()["source"],
        "topic"
    );
    let reply = call(&f.app, delete("/api/v1/rules/shadow")).await;
    assert_eq!(reply.json()["cleared"], "2026-12-01.1");
    // Cleared: the configured file does not come back.
    assert_eq!(
        call(&f.app, get("/api/v1/rules/shadow")).await.status,
        StatusCode::NOT_FOUND
    );
    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    assert_eq!(trail["entries"][1]["before"], "file-shadow", "{trail}");
}

/// Serves a fixture's router through the real server loop on a loopback port.
async fn serve_with(
    fixture: &Fixture,
    limits: server::HttpLimits,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        fixture.app.clone(),
        limits,
        shutdown.clone(),
    ));
    (addr, shutdown, task)
}

fn limits() -> server::HttpLimits {
    server::HttpLimits {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(800),
        body_read_timeout: Duration::from_millis(800),
        body_limit: 1024,
        max_drain_bytes: 8 * 1024 * 1024,
        shutdown_timeout: Duration::from_secs(10),
    }
}

/// Slow and idle clients are cut off: a head trickling in, a kept-alive connection left idle, a
/// body trickling in (408), all within the configured bounds; the server keeps answering others.
#[tokio::test]
async fn slow_and_idle_connections_are_timed_out() {
    use tokio::io::AsyncWriteExt;
    let fixture = fixture().await;
    let (addr, _shutdown, _task) = serve_with(&fixture, limits()).await;

    // A head that never completes.
    let mut slow_head = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(
        read_to_close(&mut slow_head, Duration::from_secs(5))
            .await
            .is_some(),
        "a slow head is cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // An idle kept-alive connection, after one answered request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops halfway: 408 JSON.
    let mut slow_body = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n12345")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow_body, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"#), "{answer}");

    // Meanwhile and afterwards, others are served.
    let ok = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// Past `http.max_connections` a new connection's request gets a JSON 503 with
/// `Connection: close` — but a health probe is still answered, and a connection that sends
/// nothing is closed at once; once connections close there is room again.
#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_service_stays_up() {
    let fixture = fixture().await;
    let (addr, _shutdown, _task) = serve_with(
        &fixture,
        server::HttpLimits {
            max_connections: 8,
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        over.write_all(b"GET /api/v1/alerts HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
    }
    let answer = read_to_close(&mut over, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"too many open connections"#),
        "{answer}"
    );
    let probe = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(probe.status(), 200, "a probe is answered over the cap");
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = std::time::Instant::now();
    assert!(read_to_close(&mut silent, Duration::from_secs(5))
        .await
        .is_some());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a silent extra connection is closed"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

/// A client that writes a 4 MiB body before reading anything still receives its 413 (the body
/// is read and discarded first), as Python's urllib and `requests` do.
#[tokio::test]
async fn an_oversized_body_sent_in_full_before_reading_gets_its_413() {
    use tokio::io::AsyncWriteExt;
    let fixture = fixture().await;
    let (addr, _shutdown, _task) = serve_with(
        &fixture,
        server::HttpLimits {
            body_read_timeout: Duration::from_secs(10),
            ..limits()
        },
    )
    .await;
    let body = vec![b'x'; 4 * 1024 * 1024];
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body)
        .await
        .expect("the whole body is accepted");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::AsyncReadExt;
        stream.read(&mut answer).await
    })
    .await
    .unwrap()
    .expect("an answer, not a reset");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body is larger than 1024 bytes"}"#),
        "{answer}"
    );
}

/// At shutdown, requests in flight are answered, and a request arriving while draining gets a
/// JSON 503 with `Connection: close`, never a dropped connection; then the server stops.
#[tokio::test]
async fn shutdown_answers_requests_in_flight_and_503s_new_ones() {
    use tokio::io::AsyncWriteExt;
    let fixture = fixture_with(100, Duration::from_secs(3)).await;
    fixture.backend.set_mode(Mode::Silent); // in-flight POSTs wait for a response
    let (addr, shutdown, task) = serve_with(&fixture, limits()).await;
    let client = reqwest::Client::new();
    let in_flight: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .post(format!("http://{addr}/event"))
                    .header("content-type", "application/json")
                    .body(format!(
                        r#"{{"type": "deposit", "amount": "1", "user_id": {i}, "time": 1}}"#
                    ))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    // A kept-alive connection that sends its request only once draining started.
    let mut late = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut late, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(answer.contains("shutting down"), "{answer}");
    for request in in_flight {
        // Accepted by Kafka, no response within the timeout: 202, answered all the same.
        assert_eq!(request.await.unwrap().unwrap(), 202);
    }
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
}

/// Requests the HTTP parser itself refuses are answered with a JSON error too: an invalid
/// `Content-Length` (400) and a query string of a megabyte (431).
#[tokio::test]
async fn requests_the_http_parser_refuses_get_json_errors_too() {
    use tokio::io::AsyncWriteExt;
    let fixture = fixture().await;
    let (addr, _shutdown, _task) = serve_with(&fixture, limits()).await;
    let mut bad_length = tokio::net::TcpStream::connect(addr).await.unwrap();
    bad_length
        .write_all(b"POST /event HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}")
        .await
        .unwrap();
    let answer = read_to_close(&mut bad_length, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("malformed"),
        "{body}"
    );

    let mut long_query = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /api/v1/alerts?user_id={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "1".repeat(1024 * 1024)
    );
    let _ = long_query.write_all(head.as_bytes()).await;
    let answer = read_to_close(&mut long_query, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("too large"),
        "{body}"
    );
}

#[tokio::test]
async fn dead_letters_list_the_latest_rejected_inputs_with_their_errors() {
    let f = fixture().await;
    call(&f.app, post("/event", EXAMPLE)).await;
    // The shim refuses an invalid event itself (400, never produced): this one comes from
    // another producer of the events topic.
    let bad = r#"{"type": "transfer", "amount": "1", "user_id": 1, "time": 11}"#;
    f.backend
        .produce_event("1".to_owned(), bad.as_bytes().to_vec(), None)
        .await
        .unwrap();
    let reply = call(&f.app, get("/api/v1/dead-letters?limit=5")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let letters = reply.json()["dead_letters"].clone();
    assert_eq!(letters.as_array().unwrap().len(), 1, "{letters}");
    assert_eq!(letters[0]["event_id"], "0-1");
    assert_eq!(letters[0]["rejection"], "invalid");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("type"),
        "{letters}"
    );
    assert_eq!(letters[0]["value"], bad);
    for query in ["limit=0", "limit=101", "limit=x", "lmit=5"] {
        let reply = call(&f.app, get(&format!("/api/v1/dead-letters?{query}"))).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            reply.text
        );
    }
}

#[tokio::test]
async fn the_console_is_served_at_the_root_with_its_own_files_and_policy() {
    let f = fixture().await;
    let page = call(&f.app, get("/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text.contains("/console/console.js"), "{}", page.text);
    let policy = page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let script = call(&f.app, get("/console/console.js")).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.text.contains("/api/v1/alerts/stream"));
    assert_eq!(
        call(&f.app, get("/console/nope.js")).await.status,
        StatusCode::NOT_FOUND
    );
    // Open mode: the session says so, with every scope.
    let session = call(&f.app, get("/api/v1/session")).await.json();
    assert_eq!(session["auth"], "open");
    assert_eq!(session["name"], "anonymous");
    assert!(
        session["scopes"].as_array().unwrap().len() >= 4,
        "{session}"
    );
}

// ---------------------------------------------------------------------------------------------
// Triage of alerts (CONTRACT §7)

fn patch(path: &str, body: &str) -> Request<Body> {
    Request::patch(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// Alerts alert-0-0 and alert-0-2 (user 3, code 1100) and alert-0-3 (user 5, code 123); event
/// 0-1 raised none.
async fn post_alerts(app: &Router) {
    for body in [
        r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#,
        r#"{"type": "deposit", "amount": "1", "user_id": 4, "time": 0}"#,
        r#"{"type": "withdraw", "amount": "101", "user_id": 3, "time": 1}"#,
        r#"{"type": "deposit", "amount": "300", "user_id": 5, "time": 0}"#,
    ] {
        let reply = call(app, post("/api/v1/events", body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    }
}

/// The ids of a list of alerts, and each one's triage status.
async fn listed(app: &Router, query: &str) -> Vec<(String, String)> {
    let reply = call(app, get(&format!("/api/v1/alerts?{query}"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.text);
    reply.json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["alert_id"].as_str().unwrap().to_owned(),
                a["triage"]["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn ids(list: &[(String, String)]) -> Vec<&str> {
    list.iter().map(|(id, _)| id.as_str()).collect()
}

#[tokio::test]
async fn an_alert_is_acknowledged_resolved_and_reopened_and_every_view_shows_its_triage() {
    let f = fixture().await;
    post_alerts(&f.app).await;
    // Never triaged: open, by id and in the list.
    let alert = call(&f.app, get("/api/v1/alerts/alert-0-2")).await.json();
    assert_eq!(alert["triage"], json!({"status": "open"}));
    assert_eq!(
        listed(&f.app, "").await,
        [
            ("alert-0-3".to_owned(), "open".to_owned()),
            ("alert-0-2".to_owned(), "open".to_owned()),
            ("alert-0-0".to_owned(), "open".to_owned()),
        ]
    );

    let reply = call(
        &f.app,
        patch(
            "/api/v1/alerts/alert-0-2",
            r#"{"status": "acknowledged", "note": "calling the customer"}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let answer = reply.json();
    assert_eq!(answer["alert_id"], "alert-0-2");
    assert_eq!(answer["alert_codes"], json!([1100]));
    let triage = &answer["triage"];
    assert_eq!(triage["status"], "acknowledged");
    assert_eq!(triage["note"], "calling the customer");
    assert_eq!(triage["triaged_by"], "anonymous");
    assert!(triage["triaged_at"].as_str().unwrap().ends_with('Z'));
    assert!(triage.get("resolution").is_none(), "{triage}");
    // The view by id shows what the answer said.
    let alert = call(&f.app, get("/api/v1/alerts/alert-0-2")).await.json();
    assert_eq!(&alert["triage"], triage);

    let reply = call(
        &f.app,
        patch(
            "/api/v1/alerts/alert-0-2",
            r#"{"status": "resolved", "resolution": "fraud", "note": "card stolen"}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["triage"]["resolution"], "fraud");
    // It leaves the open alerts; the filters combine.
    assert_eq!(ids(&listed(&f.app, "status=resolved").await), ["alert-0-2"]);
    assert_eq!(
        ids(&listed(&f.app, "status=open").await),
        ["alert-0-3", "alert-0-0"]
    );
    assert!(listed(&f.app, "status=acknowledged").await.is_empty());
    assert_eq!(
        ids(&listed(&f.app, "status=open&user_id=3").await),
        ["alert-0-0"]
    );
    assert_eq!(
        ids(&listed(&f.app, "status=open&code=1100&limit=1").await),
        ["alert-0-0"]
    );
    assert_eq!(
        ids(&listed(&f.app, "status=resolved&code=1100&user_id=3").await),
        ["alert-0-2"]
    );
    let all = listed(&f.app, "").await;
    assert_eq!(all[1], ("alert-0-2".to_owned(), "resolved".to_owned()));

    // Reopened: open again, and still says who and why.
    let reply = call(
        &f.app,
        patch(
            "/api/v1/alerts/alert-0-2",
            r#"{"status": "open", "note": "wrong customer"}"#,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let open = call(&f.app, get("/api/v1/alerts?status=open&user_id=3"))
        .await
        .json();
    assert_eq!(open["alerts"][0]["alert_id"], "alert-0-2");
    assert_eq!(open["alerts"][0]["triage"]["note"], "wrong customer");
    assert_eq!(open["alerts"][0]["triage"]["triaged_by"], "anonymous");

    // Every change is in the audit trail, newest first, before -> after.
    let trail = call(&f.app, get("/api/v1/audit")).await.json();
    let changes: Vec<(&str, &str, &str, &str, u64)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["alert_id"].as_str().unwrap(),
                e["before"].as_str().unwrap(),
                e["after"].as_str().unwrap(),
                e["user_id"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "alert.triage",
                "alert-0-2",
                "resolved (fraud): card stolen",
                "open: wrong customer",
                3
            ),
            (
                "alert.triage",
                "alert-0-2",
                "acknowledged: calling the customer",
                "resolved (fraud): card stolen",
                3
            ),
            (
                "alert.triage",
                "alert-0-2",
                "open",
                "acknowledged: calling the customer",
                3
            ),
        ]
    );

    let reply = call(&f.app, get("/api/v1/alerts?status=closed")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("status \"closed\" is unknown"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn nonsense_triage_is_refused_naming_the_problem_and_changes_nothing() {
    let f = fixture().await;
    post_alerts(&f.app).await;
    for (body, says) in [
        (
            r#"{"status": "acknowledged", "resolution": "fraud"}"#,
            "resolution \"fraud\" is only for status resolved, and status is acknowledged",
        ),
        (
            r#"{"status": "resolved"}"#,
            "status resolved needs a resolution: fraud, legitimate or duplicate",
        ),
        (
            r#"{"status": "resolved", "resolution": "fraud", "owner": "ana"}"#,
            "unknown field \"owner\"",
        ),
        (r#"{"status": "closed"}"#, "status \"closed\" is unknown"),
        (
            r#"{"status": "resolved", "resolution": "maybe"}"#,
            "resolution \"maybe\" is unknown",
        ),
        (r#"{"resolution": "fraud"}"#, "status is required"),
        (r#"{"status": 1}"#, "status must be a string"),
        (r#"["resolved"]"#, "expected a JSON object"),
        ("{", "invalid triage: body: "),
    ] {
        let reply = call(&f.app, patch("/api/v1/alerts/alert-0-0", body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(says), "{body}: {error}");
    }
    // Every problem of one body at once.
    let reply = call(
        &f.app,
        patch(
            "/api/v1/alerts/alert-0-0",
            r#"{"status": "shelved", "note": 3, "by": "x"}"#,
        ),
    )
    .await;
    let error = reply.json()["error"].as_str().unwrap().to_owned();
    for says in [
        "status \"shelved\" is unknown",
        "note must be a string",
        "unknown field \"by\"",
    ] {
        assert!(error.contains(says), "{error}");
    }
    // Not JSON, too large.
    let request = Request::patch("/api/v1/alerts/alert-0-0")
        .body(Body::from(r#"{"status": "acknowledged"}"#))
        .unwrap();
    assert_eq!(
        call(&f.app, request).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let long = format!(
        r#"{{"status": "acknowledged", "note": "{}"}}"#,
        "x".repeat(2000)
    );
    assert_eq!(
        call(&f.app, patch("/api/v1/alerts/alert-0-0", &long))
            .await
            .status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // No such alert: an event without one, unknown coordinates, ids that are not alert ids.
    for missing in ["alert-0-1", "alert-0-99", "alert-7-0", "0-0", "alert-x"] {
        let reply = call(
            &f.app,
            patch(
                &format!("/api/v1/alerts/{missing}"),
                r#"{"status": "acknowledged"}"#,
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}");
        assert!(
            reply.json()["error"].as_str().unwrap().contains("no alert"),
            "{}",
            reply.text
        );
    }
    // Kafka down: 503, nothing published.
    f.backend.set_mode(Mode::Down);
    let reply = call(
        &f.app,
        patch("/api/v1/alerts/alert-0-0", r#"{"status": "acknowledged"}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    f.backend.set_mode(Mode::Answer);

    assert!(f.backend.triage.lock().unwrap().is_empty());
    assert_eq!(
        call(&f.app, get("/api/v1/audit")).await.json()["entries"],
        json!([])
    );
    assert_eq!(
        call(&f.app, get("/api/v1/alerts/alert-0-0")).await.json()["triage"],
        json!({"status": "open"})
    );
}

/// `PATCH` needs `alerts:write` (401 without a token, 403 naming the scope with any other), and
/// the audit trail names the token that triaged.
#[tokio::test]
async fn triage_needs_alerts_write_and_the_audit_trail_names_the_token() {
    let token = |name: &str, scopes: &[Scope]| TokenConfig {
        name: name.into(),
        sha256: sha256_hex(&format!("secret-{name}")),
        scopes: scopes.to_vec(),
    };
    let tokens = Tokens::new(
        &[
            token("fraud-desk", &[Scope::AlertsWrite, Scope::Read]),
            token("triage-bot", &[Scope::AlertsWrite]),
            token(
                "everything-else",
                &[
                    Scope::EventsWrite,
                    Scope::ProfilesWrite,
                    Scope::RulesWrite,
                    Scope::Read,
                ],
            ),
        ],
        None,
    )
    .unwrap();
    let f = fixture_with_auth(100, Duration::from_secs(1), Some(Arc::new(tokens))).await;
    let with = |mut request: Request<Body>, who: Option<&str>| {
        if let Some(who) = who {
            let value = format!("Bearer secret-{who}").parse().unwrap();
            request.headers_mut().insert(header::AUTHORIZATION, value);
        }
        request
    };
    let event = r#"{"type": "withdraw", "amount": "500", "user_id": 3, "time": 0}"#;
    let reply = call(
        &f.app,
        with(post("/api/v1/events", event), Some("everything-else")),
    )
    .await;
    assert_eq!(reply.json()["alert_id"], "alert-0-0");
    let resolve = || {
        patch(
            "/api/v1/alerts/alert-0-0",
            r#"{"status": "resolved", "resolution": "legitimate"}"#,
        )
    };

    let none = call(&f.app, with(resolve(), None)).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.headers.contains_key(header::WWW_AUTHENTICATE));
    let wrong = call(&f.app, with(resolve(), Some("nobody"))).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let lacking = call(&f.app, with(resolve(), Some("everything-else"))).await;
    assert_eq!(lacking.status, StatusCode::FORBIDDEN);
    let error = lacking.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("alerts:write") && error.contains("everything-else"),
        "{error}"
    );
    // Triaging is not reading: the bot may triage but not list.
    let bot = call(&f.app, with(resolve(), Some("triage-bot"))).await;
    assert_eq!(bot.status, StatusCode::OK, "{}", bot.text);
    assert_eq!(bot.json()["triage"]["triaged_by"], "triage-bot");
    let list = call(&f.app, with(get("/api/v1/alerts"), Some("triage-bot"))).await;
    assert_eq!(list.status, StatusCode::FORBIDDEN);

    let desk = call(
        &f.app,
        with(
            patch(
                "/api/v1/alerts/alert-0-0",
                r#"{"status": "resolved", "resolution": "fraud", "note": "confirmed by the bank"}"#,
            ),
            Some("fraud-desk"),
        ),
    )
    .await;
    assert_eq!(desk.status, StatusCode::OK, "{}", desk.text);
    let trail = call(&f.app, with(get("/api/v1/audit"), Some("fraud-desk")))
        .await
        .json();
    let who: Vec<(&str, &str, &str)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["before"].as_str().unwrap(),
                e["after"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            (
                "fraud-desk",
                "resolved (legitimate)",
                "resolved (fraud): confirmed by the bank"
            ),
            ("triage-bot", "open", "resolved (legitimate)"),
        ]
    );
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
    let operation = &doc["paths"]["/api/v1/alerts/{alert_id}"]["patch"];
    assert_eq!(operation["security"][0]["bearer"][0], "alerts:write");
    for status in ["200", "400", "401", "403", "404", "413", "415", "503"] {
        assert!(
            operation["responses"].get(status).is_some(),
            "PATCH {status}"
        );
    }
    assert_eq!(
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TriageBody"
    );
    let view = &doc["components"]["schemas"]["EventView"]["properties"];
    assert!(view.get("triage").is_some(), "{view}");
    let params = doc["paths"]["/api/v1/alerts"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().any(|p| p["name"] == "status"));
}

// ---------------------------------------------------------------------------------------------
// Strict queries, reads that say how fresh they are, and the live alert feed (CONTRACT §7)

/// A misspelt filter never widens an answer: every read route refuses a query parameter it does
/// not document, naming it and the ones it accepts.
#[tokio::test]
async fn an_unknown_query_parameter_is_400_naming_it_and_the_accepted_ones() {
    let f = fixture().await;
    call(
        &f.app,
        post(
            "/event",
            r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#,
        ),
    )
    .await;
    for (path, name, accepted) in [
        (
            "/api/v1/alerts?userId=99999",
            "userId",
            "accepted: user_id, code, status, since, until, limit, cursor",
        ),
        (
            "/api/v1/alerts/stream?user_id=3&userid=3",
            "userid",
            "accepted: user_id, code, status, since, until, cursor, after",
        ),
        (
            "/api/v1/users/3/events?user_id=3",
            "user_id",
            "accepted: limit, cursor",
        ),
        ("/api/v1/audit?actor=x", "actor", "accepted: limit, cursor"),
        (
            "/api/v1/events/0-0?verbose=1",
            "verbose",
            "takes no query parameters",
        ),
        (
            "/api/v1/alerts/alert-0-0?verbose",
            "verbose",
            "takes no query parameters",
        ),
    ] {
        let reply = call(&f.app, get(path)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(&format!("unknown query parameter \"{name}\"")),
            "{path}: {error}"
        );
        assert!(error.contains(accepted), "{path}: {error}");
    }
    // What each route documents, it accepts.
    for path in [
        "/api/v1/alerts?user_id=3&code=1100&since=0&until=5000&limit=5",
        "/api/v1/users/3/events?limit=5",
        "/api/v1/audit?limit=5",
        "/api/v1/events/0-0",
        "/api/v1/alerts/alert-0-0",
    ] {
        assert_eq!(
            call(&f.app, get(path)).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let reply = call(&f.app, get("/api/v1/alerts?user_id=3&code=1100")).await;
    assert_eq!(reply.json()["alerts"].as_array().unwrap().len(), 1);
}

/// Not only the lists: every route, reads, writes and operations alike, refuses what it does
/// not document (a misspelt `allow_empty` must not quietly publish nothing either), and the
/// refusal comes before any effect.
#[tokio::test]
async fn every_route_refuses_a_query_parameter_it_does_not_document() {
    let f = fixture().await;
    let set = r#"{"version": "v9", "time_unit": "seconds", "rule": []}"#;
    for (request, name, accepted) in [
        (
            get("/healthz?verbose=1"),
            "verbose",
            "takes no query parameters",
        ),
        (get("/readyz?x"), "x", "takes no query parameters"),
        (get("/metrics?name=x"), "name", "takes no query parameters"),
        (
            get("/api/v1/rules?version=2"),
            "version",
            "takes no query parameters",
        ),
        (
            get("/api/v1/rules/history?limit=1"),
            "limit",
            "takes no query parameters",
        ),
        (
            get("/api/v1/users/3?as_of=1"),
            "as_of",
            "takes no query parameters",
        ),
        (get("/api/v1/session?x=1"), "x", "takes no query parameters"),
        (
            get("/api/v1/dead-letters?limt=1"),
            "limt",
            "accepted: limit",
        ),
        (
            put("/api/v1/rules?allowEmpty=true", set),
            "allowEmpty",
            "accepted: allow_empty",
        ),
        (post("/api/v1/event?x=1", r#"{}"#), "", ""),
        (
            post(
                "/event?dry_run=1",
                r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 0}"#,
            ),
            "dry_run",
            "takes no query parameters",
        ),
    ] {
        let path = request.uri().to_string();
        let reply = call(&f.app, request).await;
        if name.is_empty() {
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
            continue;
        }
        let error = refused_with_400(&reply, &path);
        assert!(
            error.contains(&format!("unknown query parameter \"{name}\""))
                && error.contains(accepted),
            "{path}: {error}"
        );
    }
    // Nothing was published by the refused PUT, nothing accepted by the refused POST.
    let rules = call(&f.app, get("/api/v1/rules")).await;
    assert_eq!(rules.json()["set"]["version"], "default", "{}", rules.text);
    assert_eq!(
        call(&f.app, get("/api/v1/events/0-0")).await.status,
        StatusCode::NOT_FOUND
    );
    // What a route documents, it accepts.
    let reply = call(&f.app, put("/api/v1/rules?allow_empty=true", set)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn since_is_inclusive_until_exclusive_and_an_empty_range_is_400() {
    let f = fixture().await;
    // Three alerts, stamped 1000, 1001 and 1002 by the memory backend.
    for time in 0..3 {
        let body =
            format!(r#"{{"type": "withdraw", "amount": "200", "user_id": 3, "time": {time}}}"#);
        call(&f.app, post("/event", &body)).await;
    }
    let reply = call(&f.app, get("/api/v1/alerts?since=1001&until=1002")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let alerts = reply.json()["alerts"].clone();
    let ids: Vec<&str> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alert_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alert-0-1"]);
    for range in ["since=1002&until=1002", "since=1003&until=1001"] {
        for route in ["/api/v1/alerts", "/api/v1/alerts/stream"] {
            let reply = call(&f.app, get(&format!("{route}?{range}"))).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{route}?{range}");
            assert!(
                reply.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("must be before until"),
                "{}",
                reply.text
            );
        }
    }
}

/// A read model and a hub of their own, fed by hand (as the projection and the follower do), with
/// the feeds configured as given: the live feed's fixture.
struct FeedFixture {
    app: Router,
    hub: Arc<Hub>,
    store: Store,
    projection: Arc<ProjectionStatus>,
    streams: Arc<Streams>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

/// Feeds with the given settle (ms), buffer, heartbeat (ms) and cap.
fn feeds(settle_ms: u64, buffer: usize, heartbeat_ms: u64, max_streams: usize) -> StreamConfig {
    StreamConfig {
        max_streams,
        heartbeat: Duration::from_millis(heartbeat_ms),
        buffer,
        settle: Duration::from_millis(settle_ms),
    }
}

/// `partitions`: the alerts partitions the follower would read (none: only the time bound
/// releases alerts). The projection starts caught up with an empty topic.
async fn feed_fixture(config: StreamConfig, partitions: &[i32]) -> FeedFixture {
    let hub = Arc::new(Hub::new(10_000));
    hub.set_connected(true);
    hub.set_partitions(partitions);
    let (store, dir) = sqlite_store().await;
    let metrics = Metrics::new();
    let projection = Arc::new(ProjectionStatus::with_metrics(&metrics));
    projection.set_assigned();
    let empty: BTreeMap<i32, Option<(i64, i64)>> =
        partitions.iter().map(|&p| (p, Some((0, 0)))).collect();
    projection.start(&empty, &BTreeMap::new());
    let streams = Streams::new(config);
    let backend = MemoryBackend::new(Arc::clone(&hub), store.clone(), 0);
    let app = router(Arc::new(Shared {
        backend: backend as Arc<dyn Backend>,
        hub: Arc::clone(&hub),
        store: store.clone(),
        projection: Arc::clone(&projection),
        metrics: Arc::clone(&metrics),
        processor: None,
        response_timeout: Duration::from_millis(100),
        body_limit: 1024,
        auth: None,
        rules: default_rules(),
        streams: Arc::clone(&streams),
    }));
    FeedFixture {
        app,
        hub,
        store,
        projection,
        streams,
        metrics,
        _dir: dir,
    }
}

fn alert_record(partition: i32, offset: i64, user_id: u64, codes: &[u32]) -> AlertRecord {
    AlertRecord {
        event_id: Coord::new(partition, offset),
        duplicate_of: None,
        user_id: UserId::new(user_id),
        outcome: Outcome::Accepted {
            alert_codes: codes.to_vec(),
            alert_id: (!codes.is_empty()).then(|| format!("alert-{partition}-{offset}")),
            risk: Risk::Medium,
        },
        rules_version: None,
        evidence: None,
        event: None,
        event_text: None,
    }
}

/// An alerts record reaching the shim, stamped `timestamp`: stored when `projected` (else only
/// the hub's recent responses have it, as while the projection lags), then to the hub.
async fn arrive(f: &FeedFixture, record: AlertRecord, timestamp: i64, projected: bool) {
    let Coord { partition, offset } = record.event_id;
    if projected {
        let mut batch = Batch::default();
        batch.push(partition, offset, timestamp, Some(&record.to_json()));
        f.store.write(ALERTS, &batch).await.expect("stores");
    }
    f.hub.ingest(record, timestamp);
}

fn cursor(timestamp: i64, partition: i32, offset: i64) -> String {
    OrderKey {
        timestamp,
        partition,
        offset,
    }
    .cursor()
}

/// One block of a Server-Sent Events stream.
#[derive(Debug, Clone, Default, PartialEq)]
struct SseBlock {
    event: Option<String>,
    id: Option<String>,
    data: String,
    comment: Option<String>,
}

impl SseBlock {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Reads a live feed's body block by block.
struct SseReader {
    body: Body,
    buffer: String,
}

impl SseReader {
    async fn open(app: &Router, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = Request::get(path);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        SseReader {
            body: response.into_body(),
            buffer: String::new(),
        }
    }

    /// The next block, or `None` when the stream ended or nothing came `within`.
    async fn next(&mut self, within: Duration) -> Option<SseBlock> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut parsed = SseBlock::default();
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("", comment)) => parsed.comment = Some(comment.trim().to_owned()),
                        Some(("event", v)) => parsed.event = Some(v.trim().to_owned()),
                        Some(("id", v)) => parsed.id = Some(v.trim().to_owned()),
                        Some(("data", v)) => parsed.data.push_str(v.strip_prefix(' ').unwrap_or(v)),
                        _ => {}
                    }
                }
                return Some(parsed);
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
                _ => return None,
            }
        }
    }

    /// The next `n` alert events (heartbeats skipped); fails the test if they do not come.
    async fn alerts(&mut self, n: usize) -> Vec<SseBlock> {
        let mut alerts = Vec::new();
        while alerts.len() < n {
            let block = self
                .next(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{} of {n} alerts came: {alerts:?}", alerts.len()));
            if block.comment.is_none() {
                assert_eq!(block.event.as_deref(), Some("alert"), "{block:?}");
                alerts.push(block);
            }
        }
        alerts
    }

    /// Nothing but heartbeats for `within`.
    async fn quiet_for(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while let Some(block) = self.next(deadline - tokio::time::Instant::now()).await {
            assert!(block.comment.is_some(), "expected nothing, got {block:?}");
        }
    }
}

/// `(id, alert_id)` of each event.
fn sse_ids(alerts: &[SseBlock]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a.id.clone().expect("an alert in order has an id"),
                a.json()["alert_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The records of two partitions interleave: the feed holds each alert until both partitions
/// have passed it, and delivers in cursor order, with the list's filters.
#[tokio::test]
async fn the_feed_delivers_filtered_alerts_in_cursor_order_whatever_order_they_arrive_in() {
    // An hour of settle: only the partitions' progress releases alerts here.
    let f = feed_fixture(feeds(3_600_000, 64, 60_000, 8), &[0, 1]).await;
    let mut all = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    let mut user3 = SseReader::open(&f.app, "/api/v1/alerts/stream?user_id=3", None).await;
    let mut code30 = SseReader::open(&f.app, "/api/v1/alerts/stream?code=30", None).await;
    let t = now_ms();
    // Partition 1's alert stamped t+20 arrives before partition 0's stamped t+10.
    arrive(&f, alert_record(1, 0, 3, &[1100]), t + 20, true).await;
    arrive(&f, alert_record(0, 0, 3, &[30]), t + 10, true).await;
    arrive(&f, alert_record(0, 1, 4, &[30]), t + 15, true).await;
    arrive(&f, alert_record(0, 2, 4, &[]), t + 16, true).await;
    arrive(&f, alert_record(1, 1, 3, &[30, 1100]), t + 40, true).await;
    arrive(&f, alert_record(0, 3, 4, &[1100]), t + 30, true).await;
    // Partition 0 is at t+30, partition 1 at t+40: up to t+30 is out, t+40 held.
    assert_eq!(
        sse_ids(&all.alerts(4).await),
        [
            (cursor(t + 10, 0, 0), "alert-0-0".to_owned()),
            (cursor(t + 15, 0, 1), "alert-0-1".to_owned()),
            (cursor(t + 20, 1, 0), "alert-1-0".to_owned()),
            (cursor(t + 30, 0, 3), "alert-0-3".to_owned()),
        ]
    );
    assert_eq!(
        sse_ids(&user3.alerts(2).await),
        [
            (cursor(t + 10, 0, 0), "alert-0-0".to_owned()),
            (cursor(t + 20, 1, 0), "alert-1-0".to_owned()),
        ]
    );
    assert_eq!(
        sse_ids(&code30.alerts(2).await),
        [
            (cursor(t + 10, 0, 0), "alert-0-0".to_owned()),
            (cursor(t + 15, 0, 1), "alert-0-1".to_owned()),
        ]
    );
    all.quiet_for(Duration::from_millis(200)).await;
    // Partition 0 moves past t+40: partition 1's alert is out; this one (t+50) waits.
    arrive(&f, alert_record(0, 4, 3, &[30]), t + 50, true).await;
    let released = all.alerts(1).await;
    assert_eq!(
        sse_ids(&released),
        [(cursor(t + 40, 1, 1), "alert-1-1".to_owned())]
    );
    // The data is the list's item (newest first: t+50, t+40, t+10).
    let listed = call(&f.app, get("/api/v1/alerts?user_id=3&code=30")).await;
    assert_eq!(released[0].json(), listed.json()["alerts"][1]);
    assert_eq!(sse_ids(&user3.alerts(1).await)[0].1, "alert-1-1");
    assert_eq!(sse_ids(&code30.alerts(1).await)[0].1, "alert-1-1");
    all.quiet_for(Duration::from_millis(200)).await;
}

/// A feed resumed after any of its ids (header, `cursor` or `after`) goes on exactly as the
/// uninterrupted feed did: the stored alerts, the ones not yet projected, and the live ones,
/// none missing and none twice.
#[tokio::test]
async fn resuming_after_an_id_gives_exactly_what_the_uninterrupted_feed_gave() {
    let f = feed_fixture(feeds(3_600_000, 256, 60_000, 16), &[0, 1, 2]).await;
    let mut whole = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    let t = now_ms();
    // Partition p's k-th record is stamped t + 3k + p; the partitions take turns irregularly
    // (each in its own order), and the last eight are not projected yet.
    let schedule = [2, 0, 1, 1, 0, 2, 2, 2, 0, 1, 0, 0];
    let mut next = [0i64; 3];
    let mut arrived = 0;
    while next.iter().any(|&k| k < 20) {
        for &p in &schedule {
            let k = next[p as usize];
            if k < 20 {
                let record = alert_record(p, k, 1 + (k as u64 % 3), &[1100]);
                arrive(&f, record, t + 3 * k + i64::from(p), arrived < 52).await;
                next[p as usize] += 1;
                arrived += 1;
            }
        }
    }
    // Partition 0 last delivered t+57: everything up to it is out, in order.
    let first = whole.alerts(58).await;
    let first_ids = sse_ids(&first);
    let mut sorted = first_ids.clone();
    sorted.sort_by_key(|(id, _)| OrderKey::from_cursor(id).unwrap());
    assert_eq!(first_ids, sorted, "in cursor order");
    assert_eq!(
        first_ids.iter().collect::<HashSet<_>>().len(),
        58,
        "none twice"
    );
    whole.quiet_for(Duration::from_millis(100)).await;

    let mut resumed = Vec::new();
    for (k, how) in [(0, "header"), (20, "cursor"), (41, "after"), (57, "header")] {
        let id = &first_ids[k].0;
        let reader = match how {
            "header" => SseReader::open(&f.app, "/api/v1/alerts/stream", Some(id)).await,
            param => {
                let path = format!("/api/v1/alerts/stream?{param}={id}");
                SseReader::open(&f.app, &path, None).await
            }
        };
        resumed.push((k, reader));
    }
    for (k, reader) in &mut resumed {
        let rest = sse_ids(&reader.alerts(57 - *k).await);
        assert_eq!(rest, first_ids[*k + 1..], "resumed after #{k}");
    }
    // Then live, the same for all.
    for p in 0..3 {
        arrive(
            &f,
            alert_record(p, 20, 9, &[1100]),
            t + 60 + i64::from(p),
            true,
        )
        .await;
    }
    let live = sse_ids(&whole.alerts(3).await);
    assert_eq!(
        live.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>(),
        ["alert-1-19", "alert-2-19", "alert-0-20"]
    );
    for (k, reader) in &mut resumed {
        assert_eq!(sse_ids(&reader.alerts(3).await), live, "resumed after #{k}");
        reader.quiet_for(Duration::from_millis(50)).await;
    }
    // A malformed id is a 400.
    let request = Request::get("/api/v1/alerts/stream")
        .header("last-event-id", "nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&f.app, request).await.status, StatusCode::BAD_REQUEST);
    let both = call(
        &f.app,
        get("/api/v1/alerts/stream?cursor=1.0.0&after=1.0.0"),
    )
    .await;
    assert_eq!(both.status, StatusCode::BAD_REQUEST);
}

/// With `since` and `until`, a feed replays the stored range in order and ends with `event: end`.
#[tokio::test]
async fn a_feed_with_until_delivers_the_range_then_ends() {
    let f = feed_fixture(feeds(0, 16, 60_000, 4), &[]).await;
    for (offset, ts) in [(0, 1_000), (1, 1_001), (2, 1_002), (3, 999)] {
        arrive(&f, alert_record(0, offset, 1, &[1100]), ts, true).await;
    }
    let mut feed =
        SseReader::open(&f.app, "/api/v1/alerts/stream?since=1000&until=1002", None).await;
    assert_eq!(
        sse_ids(&feed.alerts(2).await),
        [
            (cursor(1_000, 0, 0), "alert-0-0".to_owned()),
            (cursor(1_001, 0, 1), "alert-0-1".to_owned()),
        ]
    );
    let end = feed.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(end.event.as_deref(), Some("end"), "{end:?}");
    assert_eq!(end.json(), json!({"reason": "until"}));
    assert_eq!(feed.next(Duration::from_secs(5)).await, None);
}

/// A feed whose `until` passes while nothing arrives still ends (it used to wait for an alert or
/// a heartbeat that never came).
#[tokio::test]
async fn an_idle_feed_ends_once_its_until_has_passed() {
    let f = feed_fixture(feeds(200, 16, 60_000, 4), &[]).await;
    let until = now_ms() + 300;
    let mut feed = SseReader::open(
        &f.app,
        &format!("/api/v1/alerts/stream?until={until}"),
        None,
    )
    .await;
    let end = feed.next(Duration::from_secs(5)).await.expect("the end");
    assert_eq!(end.event.as_deref(), Some("end"), "{end:?}");
    assert_eq!(end.json(), json!({"reason": "until"}));
    assert!(now_ms() >= until + 200, "ended before until had settled");
    assert_eq!(feed.next(Duration::from_secs(5)).await, None);
}

/// An alert that reaches the shim after the frontier passed it cannot be placed in order: it is
/// still delivered, without an id, so that a client's last id never moves back.
#[tokio::test]
async fn a_late_alert_is_delivered_without_an_id_and_counted() {
    let f = feed_fixture(feeds(0, 16, 60_000, 4), &[]).await;
    let mut feed = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    let t = now_ms();
    arrive(&f, alert_record(0, 0, 1, &[1100]), t + 5, true).await;
    assert_eq!(feed.alerts(1).await[0].id, Some(cursor(t + 5, 0, 0)));
    arrive(&f, alert_record(1, 0, 1, &[1100]), t - 60_000, true).await;
    let late = feed.alerts(1).await;
    assert_eq!(late[0].id, None);
    assert_eq!(late[0].json()["alert_id"], "alert-1-0");
    assert_eq!(f.metrics.alert_stream_late.get(), 1);
}

#[tokio::test]
async fn an_idle_feed_sends_heartbeats() {
    let f = feed_fixture(feeds(0, 16, 200, 4), &[]).await;
    let mut feed = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    for _ in 0..2 {
        let block = feed
            .next(Duration::from_secs(3))
            .await
            .expect("a heartbeat");
        assert_eq!(block.comment.as_deref(), Some("heartbeat"), "{block:?}");
    }
}

#[tokio::test]
async fn feeds_past_http_max_streams_get_503_and_a_closed_feed_frees_its_place() {
    let f = feed_fixture(feeds(0, 16, 60_000, 1), &[]).await;
    let first = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    let reply = call(&f.app, get("/api/v1/alerts/stream")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .contains("http.max_streams"),
        "{}",
        reply.text
    );
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = call(&f.app, get("/api/v1/alerts/stream")).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that does not read gets, once it reads again, what fitted in its buffer, then
/// `event: overflow` naming the id to resume after, then the end; nothing accumulates for it.
#[tokio::test]
async fn a_client_that_does_not_read_gets_an_overflow_notice_and_its_feed_ends() {
    // One partition: each alert is released as it arrives.
    let f = feed_fixture(feeds(3_600_000, 4, 60_000, 2), &[0]).await;
    let mut stuck = SseReader::open(&f.app, "/api/v1/alerts/stream", None).await;
    let t = now_ms();
    for offset in 0..40 {
        arrive(&f, alert_record(0, offset, 1, &[1100]), t + offset, false).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while f.metrics.alert_stream_overflows.get() == 0 {
        assert!(Instant::now() < deadline, "never overflowed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Thousands more: the ended feed takes none of them.
    for offset in 40..5_000 {
        arrive(&f, alert_record(0, offset, 1, &[1100]), t + offset, false).await;
    }
    let delivered = stuck.alerts(4).await;
    assert_eq!(
        sse_ids(&delivered).last().unwrap().0,
        cursor(t + 3, 0, 3),
        "the buffer's four"
    );
    let notice = stuck.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(notice.event.as_deref(), Some("overflow"), "{notice:?}");
    assert_eq!(notice.json()["last_event_id"], cursor(t + 3, 0, 3));
    assert!(notice.json()["error"]
        .as_str()
        .unwrap()
        .contains("Last-Event-ID"));
    assert_eq!(stuck.next(Duration::from_secs(5)).await, None, "the end");
    // Both places are free again.
    let _a = open_when_free(&f.app).await;
    let _b = open_when_free(&f.app).await;
}

/// Opens a feed, retrying while every place is taken (a feed that ended frees its place a
/// moment later).
async fn open_when_free(app: &Router) -> SseReader {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = app
            .clone()
            .oneshot(get("/api/v1/alerts/stream"))
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            return SseReader {
                body: response.into_body(),
                buffer: String::new(),
            };
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(Instant::now() < deadline, "no place was freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stream_limits() -> server::HttpLimits {
    server::HttpLimits {
        shutdown_timeout: Duration::from_secs(30),
        ..limits()
    }
}

/// Over a real socket, a client that stopped reading altogether (its socket buffers full) is
/// cut off a heartbeat after its feed overflowed, and its place is freed.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_frees_its_place() {
    use tokio::io::AsyncWriteExt;
    let f = feed_fixture(feeds(3_600_000, 8, 300, 1), &[0]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server::serve(
        listener,
        f.app.clone(),
        stream_limits(),
        shutdown.clone(),
    ));
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /api/v1/alerts/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 60 MB of alerts: far more than the socket buffers hold.
    let t = now_ms();
    let padding = "x".repeat(30_000);
    for offset in 0..2_000 {
        let mut record = alert_record(0, offset, 1, &[1100]);
        record.event_text = Some(padding.clone());
        arrive(&f, record, t + offset, false).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = call(&f.app, get("/api/v1/alerts/stream")).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the stuck client kept its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.metrics.alert_stream_overflows.get(), 1);
    let seen = read_to_close(&mut socket, Duration::from_secs(20))
        .await
        .expect("the connection was closed");
    assert!(
        seen.starts_with("HTTP/1.1 200"),
        "{}",
        &seen[..seen.len().min(200)]
    );
    shutdown.cancel();
}

/// At shutdown every feed ends at once and cleanly: the drain does not wait for them.
#[tokio::test]
async fn open_feeds_end_at_shutdown_without_holding_the_drain() {
    let f = feed_fixture(feeds(0, 16, 60_000, 4), &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        f.app.clone(),
        stream_limits(),
        shutdown.clone(),
    ));
    let client = reqwest::Client::new();
    let mut feeds = Vec::new();
    for _ in 0..3 {
        let response = client
            .get(format!("http://{addr}/api/v1/alerts/stream"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        feeds.push(response);
    }
    let started = Instant::now();
    // What `http::start` does on SIGTERM.
    shutdown.cancel();
    f.streams.close();
    for mut feed in feeds {
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while feed.chunk().await.expect("a clean end").is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "a feed held on");
    }
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server stopped")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let refused = call(&f.app, get("/api/v1/alerts/stream")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// Every answer read from the store says how far the read model is behind the alerts topic, from
/// what the projection last learnt (no Kafka request); the same number is a metric.
#[tokio::test]
async fn every_read_from_the_store_says_how_far_behind_the_read_model_is() {
    let unknown = fixture().await;
    let reply = call(&unknown.app, get("/api/v1/alerts")).await;
    assert_eq!(
        reply.json()["read_model"],
        json!({"behind": null, "catching_up": true}),
        "before the projection knows the topic's ends"
    );

    let f = feed_fixture(feeds(0, 16, 60_000, 4), &[0, 1]).await;
    arrive(&f, alert_record(0, 0, 3, &[1100]), 1_000, true).await;
    // Started with partition 0 at 4 of 10, partition 1 at 0 of 8 but starting at 5: 6 + 3.
    f.projection.start(
        &BTreeMap::from([(0, Some((0, 10))), (1, Some((5, 8)))]),
        &BTreeMap::from([(0, 4)]),
    );
    let reads = [
        "/api/v1/alerts",
        "/api/v1/users/3/events",
        "/api/v1/events/0-0",
        "/api/v1/alerts/alert-0-0",
    ];
    let read_models = |want: Value| {
        let app = f.app.clone();
        async move {
            for path in reads {
                let reply = call(&app, get(path)).await;
                assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text);
                assert_eq!(reply.json()["read_model"], want, "{path}");
            }
        }
    };
    read_models(json!({"behind": 9, "catching_up": true})).await;
    f.projection.stored_to(&BTreeMap::from([(0, 10), (1, 8)]));
    read_models(json!({"behind": 0, "catching_up": false})).await;
    // More published since: behind again, but no longer catching up after the start.
    f.projection.observe_end(0, 0, 15);
    read_models(json!({"behind": 5, "catching_up": false})).await;
    let metrics = call(&f.app, get("/metrics")).await.text;
    assert!(
        metrics.contains("user_monitor_read_model_lag_records 5"),
        "{metrics}"
    );
}
