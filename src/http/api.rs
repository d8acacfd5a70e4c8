//! The HTTP API's contract (CONTRACT §7): request and response bodies, query parameters,
//! the error answer, and the OpenAPI document. Behaviour lives in [`super::routes`].

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, IntoResponses, OpenApi, ToSchema};

use super::auth::Denied;
use super::backend::{Found, LookupError, ProduceError, RulesError};
use super::routes;
use crate::backtest::CodeChange;
use crate::changes::Refusal;
use crate::domain::{AlertRecord, Rejection, Risk, Triage, UserId};
use crate::health::ReadinessReport;
use crate::rule_set::InvalidRuleSet;

/// Default and largest `limit` of the list endpoints.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

// ---------------------------------------------------------------------------------------------
// Errors

/// Every error answer: JSON `{"error": "..."}` with the status of its variant.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    OutOfOrder(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("content-type must be application/json")]
    NotJson,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request body did not arrive within http.body_read_timeout")]
    BodyTimeout,
    /// The idempotency key was used for a different event (422).
    #[error("idempotency key reused with a different event")]
    IdempotencyConflict(String),
    /// No valid token (401).
    #[error("{0}")]
    Unauthorized(Denied),
    /// A valid token without the route's scope (403).
    #[error("{0}")]
    Forbidden(Denied),
    #[error(transparent)]
    Unavailable(#[from] ProduceError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The read model's database did not answer (503).
    #[error("{0}")]
    StoreUnavailable(String),
    /// A rule set refused whole (400): every problem is also listed in `problems`.
    #[error(transparent)]
    InvalidRuleSet(#[from] InvalidRuleSet),
    /// A rules write refused before anything was published: an empty set (400), a version
    /// name taken by another set or no shadow set to promote (409), a set in force other than
    /// `If-Match` expected (412).
    #[error(transparent)]
    RulesRefused(#[from] Refusal),
    /// A bounded resource is taken (503 with `Retry-After`), e.g. every live alert stream.
    #[error("{0}")]
    Busy(String),
}

impl From<RulesError> for ApiError {
    fn from(error: RulesError) -> Self {
        match error {
            RulesError::Refused(refusal) => ApiError::RulesRefused(refusal),
            RulesError::Unavailable(e) => ApiError::Unavailable(e),
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::InvalidRuleSet(_) => StatusCode::BAD_REQUEST,
            ApiError::OutOfOrder(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::IdempotencyConflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_)
            | ApiError::Lookup(_)
            | ApiError::StoreUnavailable(_)
            | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RulesRefused(refusal) => match refusal {
                Refusal::Empty { .. } => StatusCode::BAD_REQUEST,
                Refusal::VersionTaken { .. } | Refusal::NoShadow { .. } => StatusCode::CONFLICT,
                Refusal::Stale { .. } => StatusCode::PRECONDITION_FAILED,
            },
        }
    }
}

/// `{"error": "..."}`; a refused rule set also lists every problem in `problems`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    /// Only for an invalid rule set: one entry per problem, each naming its rule and field
    /// (`rule[2] (code 123): window: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let challenge = matches!(self, ApiError::Unauthorized(_));
        let busy = matches!(self, ApiError::Busy(_));
        let problems = match &self {
            ApiError::InvalidRuleSet(invalid) => Some(invalid.problems.clone()),
            _ => None,
        };
        let mut response = (
            self.status(),
            Json(ErrorBody {
                error: self.to_string(),
                problems,
            }),
        )
            .into_response();
        if challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"user-monitor\""),
            );
        }
        if busy {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

// ---------------------------------------------------------------------------------------------
// Wire types

/// An event as sent (CONTRACT §2). Unknown extra fields are ignored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}))]
pub struct EventBody {
    /// `deposit` or `withdraw`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A decimal string `^[0-9]{1,20}(\.[0-9]{1,8})?$`, greater than 0.
    pub amount: String,
    /// 0 ..= 2^63-1.
    pub user_id: u64,
    /// 0 ..= 2^63-1; per user it never decreases.
    pub time: u64,
}

/// The original API's response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"alert": true, "alert_codes": [30, 123], "user_id": 1}))]
pub struct LegacyBody {
    pub alert: bool,
    pub alert_codes: Vec<u32>,
    pub user_id: u64,
}

/// The response of `POST /api/v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedBody {
    /// `"<partition>-<offset>"` of the event in the events topic.
    pub event_id: String,
    /// `"alert-<partition>-<offset>"`, null without an alert.
    #[schema(required = true)]
    pub alert_id: Option<String>,
    pub alert: bool,
    pub alert_codes: Vec<u32>,
    pub user_id: u64,
}

/// Kafka acknowledged the event but its response did not arrive in time.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PendingBody {
    pub event_id: String,
    /// Always `pending`.
    pub status: String,
}

// The documented shape of `EventView` (what its serialization writes).
/// An event and its result: the alerts-topic record, plus `status`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EventViewSchema {
    pub event_id: String,
    /// `processed` (the response is known) or `pending`.
    pub status: String,
    pub user_id: Option<u64>,
    pub alert: Option<bool>,
    pub alert_codes: Option<Vec<u32>>,
    /// Null when the event raised no alert or was not accepted.
    pub alert_id: Option<String>,
    /// The risk level the rules used.
    #[schema(value_type = Option<String>, example = "medium")]
    pub risk: Option<Risk>,
    /// Why the event was rejected.
    pub error: Option<String>,
    /// `invalid`, `out_of_order`, `wrong_partition` or `idempotency_conflict`.
    #[schema(value_type = Option<String>, example = "out_of_order")]
    pub rejection: Option<Rejection>,
    /// A retry under an idempotency key: the event it repeats (whose answer it carries).
    pub duplicate_of: Option<String>,
    /// The version of the rule set the event was judged under.
    #[schema(example = "2026-12-01.1")]
    pub rules_version: Option<String>,
    /// Why each code fired: one entry per code of `alert_codes` (absent without an alert, and
    /// on a duplicate: the original's record has it).
    pub evidence: Option<Vec<EvidenceSchema>>,
    /// The event as sent.
    #[schema(value_type = Option<Object>)]
    pub event: Option<Box<RawValue>>,
    /// The input as text when it was not JSON.
    pub event_text: Option<String>,
    /// Alert views only (`/api/v1/alerts...`): what people decided about the alert.
    pub triage: Option<TriageSchema>,
}

// The documented shape of `Triage` (domain type, serialized as is).
/// An alert's triage (CONTRACT §7): `open` until someone acknowledges or resolves it.
#[derive(ToSchema)]
#[schema(as = Triage, example = json!({"status": "resolved", "resolution": "fraud",
    "note": "card stolen", "triaged_by": "fraud-desk", "triaged_at": "2026-12-01T10:31:02.113Z"}))]
#[allow(dead_code)]
pub struct TriageSchema {
    /// `open`, `acknowledged` or `resolved`.
    #[schema(example = "resolved")]
    pub status: String,
    /// Resolved only: `fraud`, `legitimate` or `duplicate`.
    #[schema(example = "fraud")]
    pub resolution: Option<String>,
    /// At most 1000 characters.
    pub note: Option<String>,
    /// The token's name of whoever set this triage (absent while never triaged).
    pub triaged_by: Option<String>,
    /// When, RFC 3339 UTC with milliseconds (absent while never triaged).
    pub triaged_at: Option<String>,
}

/// The body of `PATCH /api/v1/alerts/{alert_id}`: the alert's whole new triage. Any other field
/// is refused.
#[derive(ToSchema)]
#[schema(example = json!({"status": "resolved", "resolution": "fraud", "note": "card stolen"}))]
#[allow(dead_code)]
pub struct TriageBody {
    /// `open` (reopen), `acknowledged` or `resolved`.
    pub status: String,
    /// Required with `resolved`, refused otherwise: `fraud`, `legitimate` or `duplicate`.
    pub resolution: Option<String>,
    /// At most 1000 characters; replaces the previous note (absent: no note).
    pub note: Option<String>,
}

/// Why one code fired (CONTRACT §10, "Explained alerts").
#[derive(ToSchema)]
#[schema(as = Evidence)]
#[allow(dead_code)]
struct EvidenceSchema {
    #[schema(example = 123)]
    pub code: u32,
    /// `amount`, `consecutive`, `increasing`, `window_sum` or `window_count`.
    #[schema(example = "window_sum")]
    pub kind: String,
    /// `deposit`, `withdraw` or `any`.
    #[schema(example = "deposit")]
    pub on: String,
    /// What the rule saw: a decimal string for amounts and sums, an integer for counts and runs.
    #[schema(value_type = Object, example = "250.5")]
    pub observed: serde_json::Value,
    /// The threshold after risk scaling, in the same form as `observed`.
    #[schema(value_type = Object, example = "200")]
    pub threshold: serde_json::Value,
    /// The risk level the threshold was scaled for.
    #[schema(example = "medium")]
    pub risk: String,
    /// Window rules: the window's first and last event time.
    pub from_time: Option<u64>,
    pub to_time: Option<u64>,
    /// The window reaches back past the history kept (e.g. after `state.max_window` was raised).
    pub warming_up: Option<bool>,
}

/// An event and its result: the alerts-topic record exactly as its own serializer writes it,
/// plus `status` (`processed`); or, before its response exists, the event alone (`pending`).
#[derive(Debug, Serialize)]
pub struct EventView {
    #[serde(flatten)]
    subject: Subject,
    status: &'static str,
    /// A rejected or pending event has no alert: `null`, as for an accepted one that raised none.
    #[serde(skip_serializing_if = "Option::is_none")]
    alert_id: Option<()>,
    /// On alert views: the alert's triage.
    #[serde(skip_serializing_if = "Option::is_none")]
    triage: Option<Triage>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Subject {
    Processed(AlertRecord),
    Pending(PendingEvent),
}

/// An input record whose response is not known yet.
#[derive(Debug, Serialize)]
struct PendingEvent {
    event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_text: Option<String>,
}

impl EventView {
    pub fn processed(record: &AlertRecord) -> Self {
        EventView {
            alert_id: record.is_error().then_some(()),
            subject: Subject::Processed(record.clone()),
            status: "processed",
            triage: None,
        }
    }

    /// The view of an alert: with its triage.
    pub fn with_triage(mut self, triage: Triage) -> Self {
        self.triage = Some(triage);
        self
    }

    pub fn pending(found: &Found) -> Self {
        let text = String::from_utf8_lossy(&found.payload);
        let event = serde_json::from_str::<Box<RawValue>>(text.trim()).ok();
        EventView {
            subject: Subject::Pending(PendingEvent {
                event_id: found.at.event_id(),
                user_id: found
                    .key
                    .as_deref()
                    .and_then(UserId::parse)
                    .map(|u| u.get()),
                event_text: event.is_none().then(|| text.into_owned()),
                event,
            }),
            status: "pending",
            alert_id: Some(()),
            triage: None,
        }
    }

    /// The user of the event, when known.
    pub fn user_id(&self) -> Option<UserId> {
        match &self.subject {
            Subject::Processed(record) => record.user_id,
            Subject::Pending(pending) => pending.user_id.and_then(UserId::new),
        }
    }

    /// The alert id of a processed event that raised an alert.
    pub fn alert_id(&self) -> Option<&str> {
        match &self.subject {
            Subject::Processed(record) => record.alert_id(),
            Subject::Pending(_) => None,
        }
    }
}

/// Documented as `EventViewSchema`: the view is serialized from the record, not derived.
impl utoipa::PartialSchema for EventView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        EventViewSchema::schema()
    }
}

impl ToSchema for EventView {
    fn name() -> std::borrow::Cow<'static, str> {
        "EventView".into()
    }

    /// The schemas the view refers to (its evidence entries).
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <EventViewSchema as ToSchema>::schemas(schemas);
    }
}

/// How far the read model (the database behind the GET endpoints) is behind the alerts topic
/// when the answer was read (CONTRACT §7, "Reads").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"behind": 0, "catching_up": false}))]
pub struct ReadModel {
    /// Alerts-topic records not in the database yet (over every partition, the readable end
    /// minus the projection's next offset); null until the projection knows the topic's ends.
    pub behind: Option<u64>,
    /// Still catching up after the shim started: it has not yet reached the ends the topic had
    /// then, so records published while it was down may be missing.
    pub catching_up: bool,
}

impl From<crate::store::projection::Freshness> for ReadModel {
    fn from(f: crate::store::projection::Freshness) -> Self {
        ReadModel {
            behind: f.behind,
            catching_up: f.catching_up,
        }
    }
}

/// A page of alerts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertsPage {
    pub alerts: Vec<EventView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    pub read_model: ReadModel,
}

/// A user's recent events, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserEventsPage {
    pub user_id: u64,
    pub events: Vec<EventView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    pub read_model: ReadModel,
}

/// One event (or alert) and its result, with the freshness of the read model it was looked up
/// in.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventRead {
    #[serde(flatten)]
    pub event: EventView,
    pub read_model: ReadModel,
}

/// A risk level.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"risk": "high"}))]
pub struct RiskBody {
    /// `low`, `medium` or `high`.
    pub risk: String,
}

/// A user's risk level as published.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserRiskBody {
    pub user_id: u64,
    /// `low`, `medium` or `high`.
    #[schema(value_type = String, example = "high")]
    pub risk: Risk,
}

/// Who the caller is (`GET /api/v1/session`).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionBody {
    /// The token's name (`anonymous` when authentication is off).
    pub name: String,
    /// `open` (no token checked) or `tokens`.
    pub auth: &'static str,
    /// What the token may do, e.g. `["read", "alerts:write"]`.
    pub scopes: Vec<String>,
}

/// Where a user's risk level comes from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RiskSourceBody {
    /// `profile`: the user's latest record in the profiles topic; `default`: there is none, so
    /// the level is `medium`.
    #[schema(example = "profile")]
    pub kind: String,
    /// The profiles record (kind `profile`): its partition, offset and broker timestamp (ms since
    /// the Unix epoch; the level applies to events appended from then on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
    /// The record is a tombstone: the profile was removed, the level is `medium` again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cleared: bool,
}

impl From<&crate::profiles::RiskSource> for RiskSourceBody {
    fn from(source: &crate::profiles::RiskSource) -> Self {
        match source.record {
            None => RiskSourceBody {
                kind: "default".to_owned(),
                partition: None,
                offset: None,
                timestamp: None,
                cleared: false,
            },
            Some(record) => RiskSourceBody {
                kind: "profile".to_owned(),
                partition: Some(record.partition),
                offset: Some(record.offset),
                timestamp: Some(record.timestamp),
                cleared: record.cleared,
            },
        }
    }
}

/// A user's risk level now and where it comes from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"user_id": 3, "risk": "high",
    "source": {"kind": "profile", "partition": 0, "offset": 12, "timestamp": 1_796_079_924_459_i64}}))]
pub struct UserRiskView {
    pub user_id: u64,
    /// `low`, `medium` or `high`.
    #[schema(value_type = String, example = "high")]
    pub risk: Risk,
    pub source: RiskSourceBody,
}

/// A user as the engine sees them (`GET /api/v1/users/{user_id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub user_id: u64,
    /// The level the user's next event would be judged at.
    #[schema(value_type = String, example = "medium")]
    pub risk: Risk,
    pub risk_source: RiskSourceBody,
    /// Records naming the user that the read model holds (accepted or not, within
    /// `store.retention`).
    pub events: u64,
    /// Those that raised an alert (a retry's record is not counted again).
    pub alerts: u64,
    /// The newest of them; null when there is none.
    pub last_event: Option<EventView>,
    /// What the state and every rule's standing are exact as of.
    pub as_of: AsOfBody,
    pub state: UserStateBody,
    /// Each rule of the active set on that state, in the set's order.
    pub active: SetStandingBody,
    /// The same for the shadow set; null when there is none.
    pub shadow: Option<SetStandingBody>,
}

/// The input position a user's view is exact as of: the state includes every record of the
/// user's partition below `next_offset` and none from it on.
#[derive(Debug, Serialize, ToSchema)]
pub struct AsOfBody {
    /// The user's partition of the events topic.
    pub partition: i32,
    /// The next input offset of that partition the state does not include.
    pub next_offset: i64,
    /// The same as an event id: the next event's `"<partition>-<offset>"` at the earliest.
    pub next_event_id: String,
}

/// The user's state, as the engine keeps it (independent of the rule set), and how it was
/// rebuilt.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStateBody {
    /// The snapshot record it starts from; null before the user's first snapshot round.
    pub snapshot: Option<SnapshotBody>,
    /// The user's records replayed onto it (accepted, not retries: those changed the state).
    pub replayed: u64,
    /// Whether every record the replay needed was applied; when not, `unreplayable` names those
    /// that were not (an input too large to be echoed in its response) and the view is not
    /// the processor's.
    pub exact: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreplayable: Vec<String>,
    /// The time of the user's latest accepted event.
    pub last_time: Option<u64>,
    /// The events kept (those within `state.max_window` of the latest, at most
    /// `state.max_events`).
    pub window_events: usize,
    /// The history kept is complete only after this time (older events were dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_after: Option<u64>,
    /// The trailing run: how many events in a row, up to the latest, are of one type.
    pub trailing_run: Option<RunBody>,
    /// Per type: the last amount and the strictly increasing run of that type ending at it.
    pub last_deposit: Option<LastAmountBody>,
    pub last_withdrawal: Option<LastAmountBody>,
}

/// A user's snapshot record in the state topic.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotBody {
    /// The next input offset the snapshot does not include.
    pub covers: i64,
    /// Its offset in the state topic.
    pub state_offset: i64,
}

/// A run of events of one type.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunBody {
    /// `deposit` or `withdraw`.
    #[serde(rename = "type")]
    pub kind: String,
    pub length: u32,
}

/// The last amount of one type and the increasing run ending at it.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastAmountBody {
    /// A decimal string.
    pub amount: String,
    pub increasing: u32,
}

/// Every rule of one set on a user's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct SetStandingBody {
    pub version: String,
    #[schema(value_type = Vec<RuleStandingSchema>)]
    pub rules: Vec<crate::state::Standing>,
}

// The documented shape of `state::Standing` (its serialization).
/// Where one rule stands on a user's state: what it observes now against its threshold at the
/// user's risk, whether it fired on the user's latest event, and what it takes to fire.
#[derive(ToSchema)]
#[schema(as = RuleStanding, example = json!({"code": 123, "name": "deposit window",
    "kind": "window_sum", "on": "deposit", "window": 30, "observed": "207", "threshold": "200",
    "risk": "medium", "from_time": 170, "to_time": 200, "firing": true,
    "to_fire": {"events": 1}}))]
#[allow(dead_code)]
struct RuleStandingSchema {
    pub code: u32,
    pub name: Option<String>,
    /// `amount`, `consecutive`, `increasing`, `window_sum` or `window_count`.
    pub kind: String,
    /// `deposit`, `withdraw` or `any`.
    pub on: String,
    /// Window rules: the window, in `time` units.
    pub window: Option<u64>,
    /// What the rule compares at the user's latest time for an event of its type: the amount
    /// of the latest such event (`amount`; null before any), the run of its type ending at the
    /// latest event (`consecutive`, `increasing`), the sum or count of its type within the
    /// window ending at the latest time; a decimal string for amounts, an integer for counts.
    /// For a rule that fired on the latest event, that event's evidence.
    #[schema(value_type = Object, example = "207")]
    pub observed: serde_json::Value,
    /// After risk scaling, in the form of `observed`.
    #[schema(value_type = Object, example = "200")]
    pub threshold: serde_json::Value,
    pub risk: String,
    /// Window rules: the window's bounds at the latest time.
    pub from_time: Option<u64>,
    pub to_time: Option<u64>,
    /// The window reaches back past the history kept.
    pub warming_up: Option<bool>,
    /// The rule fires on the user's latest event judged now (this set, this risk).
    pub firing: bool,
    pub to_fire: ToFireSchema,
}

/// What it takes for a rule to fire: further events of its type (a deposit for `any`) at the
/// user's latest time, exactly as the engine would judge them.
#[derive(ToSchema)]
#[schema(as = ToFire)]
#[allow(dead_code)]
struct ToFireSchema {
    /// The fewest such events on whose last it fires (1: the next one); null when no number of
    /// them would (a count above `state.max_events`).
    pub events: Option<u64>,
    /// The first of them must have an amount above this decimal (for `increasing`, each further
    /// one above the one before); absent: any amount.
    pub amount_above: Option<String>,
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// Always `ok`.
    pub status: &'static str,
}

/// The shim's own readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShimReadiness {
    /// The producer found the events and profiles topics.
    pub kafka_connected: bool,
    /// The alerts follower assigned the alerts topic.
    pub alerts_following: bool,
    /// The read model's database is open and migrated and its projection consumer has the
    /// alerts partitions, seeked to the stored offsets (not: caught up with the topic).
    pub store_projecting: bool,
    /// Alerts records written to the database since start.
    pub store_projected: u64,
    /// Unreadable alerts records skipped by the projection since start.
    pub store_skipped: u64,
    /// The projection's last database write failed (it retries).
    pub store_failing: bool,
    pub pending_requests: usize,
}

/// The processor's readiness (when it runs in this process).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessorReadiness {
    pub ready: bool,
    pub connected: bool,
    /// The consumer group's first assignment arrived (possibly empty).
    pub joined_group: bool,
    pub assigned_partitions: usize,
    pub restoring_partitions: usize,
    pub stopped: bool,
}

impl From<ReadinessReport> for ProcessorReadiness {
    fn from(r: ReadinessReport) -> Self {
        ProcessorReadiness {
            ready: r.ready,
            connected: r.connected,
            joined_group: r.joined,
            assigned_partitions: r.assigned_partitions,
            restoring_partitions: r.restoring_partitions,
            stopped: r.stopped,
        }
    }
}

/// Readiness: the shim's, and the processor's when it runs in this process.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyBody {
    pub ready: bool,
    pub shim: ShimReadiness,
    pub processor: Option<ProcessorReadiness>,
}

/// The filters of the alerts, shared by the list and the live feed: a filter added here (and
/// parsed in `routes::request::alert_filters`) applies to both.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertsParams {
    /// Only this user's alerts.
    #[param(value_type = Option<u64>)]
    pub user_id: Option<String>,
    /// Only alerts that raised this code.
    #[param(value_type = Option<u32>)]
    pub code: Option<String>,
    /// Only alerts of this triage status: `open` (never triaged, or reopened), `acknowledged`
    /// or `resolved`.
    pub status: Option<String>,
    /// Only alerts at or after this time (the alerts record's timestamp): RFC 3339
    /// (`2026-01-31T12:00:00Z`) or milliseconds since the Unix epoch.
    pub since: Option<String>,
    /// Only alerts before this time (exclusive), same forms as `since`; must be after `since`.
    pub until: Option<String>,
}

/// Where a live alert feed starts (the `Last-Event-ID` header wins over both).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Resume after this cursor (an event's `id`, or a list's cursor), for clients that cannot
    /// set `Last-Event-ID`.
    pub cursor: Option<String>,
    /// The same as `cursor` (one of the two).
    pub after: Option<String>,
}

/// The end of a bounded live feed (`until` reached): every alert before it was delivered.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamEnd {
    /// Always `until`.
    pub reason: String,
}

/// The last event of a feed whose client read too slowly: reconnect with `Last-Event-ID`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamOverflow {
    pub error: String,
    /// The id to resume after (null when no alert was delivered and the feed had no cursor).
    pub last_event_id: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The refusals of a route that submits events (`events:write`), documented once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum SubmitDenied {
    /// no valid token (http.auth.mode = "tokens")
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// the token lacks the scope events:write
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// the Idempotency-Key was already used for a different event
    #[response(status = 422)]
    KeyReused(ErrorBody),
}

/// The refusals of a route that reads (`read`), documented once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ReadDenied {
    /// no valid token (http.auth.mode = "tokens")
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// the token lacks the scope read
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The refusals of a route that changes risk levels (`profiles:write`), documented once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ProfilesDenied {
    /// no valid token (http.auth.mode = "tokens")
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// the token lacks the scope profiles:write
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The refusals of a route that triages alerts (`alerts:write`), documented once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum AlertsDenied {
    /// no valid token (http.auth.mode = "tokens")
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// the token lacks the scope alerts:write
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

/// The refusals of a route that writes rule sets (`rules:write`), documented once.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum RulesDenied {
    /// no valid token (http.auth.mode = "tokens")
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// the token lacks the scope rules:write
    #[response(status = 403)]
    Forbidden(ErrorBody),
}

// The documented shape of a rule set (CONTRACT §10): the handlers validate the JSON
// themselves, naming every problem, so this is for the document only.
/// A rule set: the TOML file's structure as JSON.
#[derive(ToSchema)]
#[schema(example = json!({
    "version": "2026-12-01.1",
    "time_unit": "seconds",
    "rule": [
        {"code": 1100, "name": "large withdrawal", "kind": "amount", "on": "withdraw", "amount": "100"},
        {"code": 123, "kind": "window_sum", "on": "deposit", "window": "30s", "amount": "200"}
    ]
}))]
#[allow(dead_code)]
pub struct RuleSetSchema {
    /// Non-empty, at most 64 characters; stamped on every response record.
    pub version: String,
    /// `seconds` or `milliseconds`: must be the service's `rules.time_unit`.
    pub time_unit: Option<String>,
    pub rule: Vec<RuleSchema>,
}

/// One rule of a rule set.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RuleSchema {
    /// Unique within the set, 1..=2^31-1.
    pub code: u32,
    /// For people.
    pub name: Option<String>,
    /// `amount`, `consecutive`, `increasing`, `window_sum` or `window_count`.
    pub kind: String,
    /// `deposit`, `withdraw` or `any` (not `any` for `consecutive` and `increasing`).
    pub on: String,
    /// Decimal string, up to 8 fraction digits, > 0 (`amount`, `window_sum`).
    pub amount: Option<String>,
    /// 1..=state.max_count (`consecutive`, `increasing`, `window_count`).
    pub count: Option<u32>,
    /// Humantime duration, > 0, at most state.max_window (`window_sum`, `window_count`).
    pub window: Option<String>,
}

/// A rule set in force and where it comes from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesView {
    /// `topic`: the latest record of topics.rules; `config`: nothing published, the configured
    /// set (`rules.file` or `[rules]`; `rules.shadow` for the shadow set).
    pub source: String,
    /// The set, in the structure it is published in.
    #[schema(value_type = RuleSetSchema)]
    pub set: serde_json::Value,
    /// The record's offset in topics.rules (source `topic` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// The record's timestamp, ms since the Unix epoch (source `topic` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<i64>,
}

/// A rule set Kafka acknowledged: applies to every event produced after this answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesPublishedBody {
    pub version: String,
    /// Its offset in topics.rules.
    pub offset: i64,
    /// The record's timestamp as Kafka returned it, ms since the Unix epoch.
    pub timestamp: Option<i64>,
    /// `true`: this very set was in force already under this key; nothing was published or
    /// recorded, and `offset`/`timestamp` are those of the record in force.
    pub unchanged: bool,
}

/// Query parameters of the rules writes that put a set in force.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RulesWriteParams {
    /// `true`: publish a set without rules anyway (it turns alerting off); otherwise such a
    /// set is refused with 400.
    #[param(value_type = Option<bool>)]
    pub allow_empty: Option<String>,
}

/// The shadow set made active (and the shadow set cleared).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromotedBody {
    /// The version now active.
    pub version: String,
    /// The active version it replaced (`null`: unknown).
    pub before: Option<String>,
    /// The offset in topics.rules of the `active` record in force now (not republished when
    /// the set was active already).
    pub offset: i64,
    /// Its timestamp, ms since the Unix epoch.
    pub timestamp: Option<i64>,
    /// The offset of the `shadow` tombstone: there is no shadow set any more.
    pub shadow_cleared_offset: i64,
}

/// A set in force and where it comes from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InForce {
    pub version: String,
    /// `topic` (published) or `config` (nothing published: the configured set).
    pub source: String,
}

/// One version ever published to topics.rules, as first published.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionView {
    pub version: String,
    /// When Kafka appended its first record (RFC 3339 UTC), and the same in ms since the epoch.
    pub published_at: Option<String>,
    pub timestamp: Option<i64>,
    /// The offset of that record in topics.rules.
    pub offset: i64,
    /// Who published it (a token's name, or `cli:<os user>`); null for a version published by
    /// a release from before per-version records.
    pub published_by: Option<String>,
    /// `http` or `cli`, when known.
    pub via: Option<String>,
    /// Whether it is the active / the shadow set now.
    pub active: bool,
    pub shadow: bool,
    /// The set.
    #[schema(value_type = RuleSetSchema)]
    pub set: serde_json::Value,
}

/// Every version published, newest first, and the sets in force.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesHistoryBody {
    pub active: InForce,
    /// `null`: no shadow set.
    pub shadow: Option<InForce>,
    pub versions: Vec<VersionView>,
}

/// What `POST /api/v1/rules/backtest` compares, and over which stored events.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "candidate": {"version": "2026-12-02.1", "time_unit": "seconds", "rule": [
        {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "80"}
    ]},
    "from_time": 1767225600,
    "to_time": 1767312000
}))]
pub struct BacktestBody {
    /// The set to try: a rule set (the body of `PUT /api/v1/rules`), or the name of a version
    /// published to topics.rules (see `GET /api/v1/rules/history`) or configured.
    #[schema(value_type = Object)]
    pub candidate: serde_json::Value,
    /// The set to compare it with, in the same forms; default: the active set in force.
    #[schema(value_type = Option<Object>)]
    pub baseline: Option<serde_json::Value>,
    /// Count the stored events whose `time` (the events' own, in rules.time_unit) is at
    /// least this...
    pub from_time: Option<u64>,
    /// ...and at most this. Without either, every stored event counts.
    pub to_time: Option<u64>,
    /// Instead of a range: the latest `last` stored events by event time (events sharing the
    /// earliest one's time count too).
    pub last: Option<u64>,
}

/// An event whose codes differ between the sets, with the evidence of each set's codes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BacktestSample {
    pub event_id: Option<String>,
    pub user_id: u64,
    pub time: u64,
    /// The risk level it was judged at (live, and here under both sets).
    #[schema(value_type = String, example = "medium")]
    pub risk: Risk,
    pub baseline: Vec<u32>,
    pub candidate: Vec<u32>,
    #[schema(value_type = Vec<EvidenceSchema>)]
    pub baseline_evidence: Vec<serde_json::Value>,
    #[schema(value_type = Vec<EvidenceSchema>)]
    pub candidate_evidence: Vec<serde_json::Value>,
}

/// Two sets over the stored events: the numbers of `user-monitor backtest` on the same events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BacktestResult {
    pub baseline_version: String,
    pub candidate_version: String,
    /// The range counted (event time, inclusive), and the first event time replayed: the
    /// range's start minus state.max_window, so that windows see the history they saw live.
    pub from_time: Option<u64>,
    pub to_time: Option<u64>,
    pub replayed_from: Option<u64>,
    /// Stored records read.
    pub read: u64,
    /// Events counted (evaluated under both sets).
    pub events: u64,
    /// Events replayed as history only (before `from_time`).
    pub warm_up: u64,
    /// Records read but not replayed: rejected inputs and retries (they changed no state
    /// live). Records outside the range and its warm-up are not read at all.
    pub skipped: u64,
    pub invalid: u64,
    pub out_of_order: u64,
    /// Events whose codes differ, and the users they belong to.
    pub events_changed: u64,
    pub users_affected: usize,
    /// Per code: alerts under each set, added, removed, users affected.
    pub codes: std::collections::BTreeMap<u32, CodeChange>,
    /// The first 100 events whose codes differ, in replay order (partition, then offset).
    pub samples: Vec<BacktestSample>,
}

/// A rule set that would be accepted (`POST /api/v1/rules/validate`).
#[derive(Debug, Serialize, ToSchema)]
pub struct RulesValidBody {
    pub version: String,
    #[schema(value_type = String, example = "seconds")]
    pub time_unit: crate::rules::TimeUnit,
    /// How many rules it has.
    pub rules: usize,
    /// It has none: publishing it needs `allow_empty=true` and turns alerting off.
    pub empty: bool,
}

/// The shadow set was cleared (a tombstone Kafka acknowledged).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShadowClearedBody {
    /// The version of the shadow set that was cleared.
    pub cleared: String,
    /// The tombstone's offset in topics.rules.
    pub offset: i64,
    /// The tombstone's timestamp as Kafka returned it, ms since the Unix epoch.
    pub timestamp: Option<i64>,
}

/// Query parameters of `GET /api/v1/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Entries per page, 1..=1000 (default 100).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query parameters of `GET /api/v1/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersParams {
    /// How many, 1..=100 (default 10).
    pub limit: Option<String>,
}

/// The latest dead letters, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLettersBody {
    pub dead_letters: Vec<crate::kafka::dead_letters::DeadLetterView>,
}

/// The OpenAPI 3 document, generated from the handlers' annotations in [`super::routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "user-monitor",
        description = "Alerts on user money movements: submit events, read and triage alerts, set risk levels and rule sets."
    ),
    paths(
        routes::events::post_event,
        routes::events::create_event,
        routes::reads::get_event,
        routes::reads::list_alerts,
        routes::stream::stream_alerts,
        routes::reads::get_alert,
        routes::triage::patch_alert,
        routes::reads::user_events,
        routes::users::put_risk,
        routes::users::get_risk,
        routes::users::get_user,
        routes::rules::get_rules,
        routes::rules::put_rules,
        routes::rules::get_shadow_rules,
        routes::rules::put_shadow_rules,
        routes::rules::delete_shadow_rules,
        routes::rules::promote_shadow_rules,
        routes::rules::rules_history,
        routes::rules::backtest_rules,
        routes::audit::list_audit,
        routes::rules::validate_rules,
        routes::session::session,
        routes::dead_letters::list_dead_letters,
        routes::operations::healthz,
        routes::operations::readyz,
        routes::operations::metrics,
        routes::operations::openapi
    ),
    components(schemas(StreamEnd, StreamOverflow)),
    tags(
        (name = "events", description = "submit events and read their results"),
        (name = "alerts", description = "alerts raised, and their triage"),
        (name = "users", description = "per-user views and risk levels"),
        (name = "rules", description = "the active and shadow rule sets"),
        (name = "audit", description = "who changed what"),
        (name = "operations", description = "health, readiness, metrics")
    ),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// Declares the bearer scheme that `http.auth.mode = "tokens"` checks.
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "With http.auth.mode = \"tokens\": a token's secret; each route names the scope it needs",
                    ))
                    .build(),
            ),
        );
    }
}
