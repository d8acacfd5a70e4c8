//! The changes people make to what the engine judges by — a rule set, risk levels — and to the
//! triage of an alert, each one use case written once for every edge (the CLI's `rules publish`,
//! `rules clear-shadow` and `profiles load`, and the HTTP API): read what is in force, publish
//! the change and wait for Kafka's acknowledgement, then record who changed what in the audit
//! trail. The edges differ only in their [`ChangeLog`]: short-lived clients for the CLI
//! ([`crate::app`]), the shim's producer and profiles follower for HTTP
//! ([`crate::http::backend`]), which is also the [`TriageLog`] (triage is an HTTP change only).

use std::collections::HashMap;
use std::future::Future;

use crate::audit::{now_rfc3339, AuditEntry};
use crate::domain::Risk;
use crate::domain::UserId;
use crate::domain::{Coord, Triage, TriageChange, TriageRecord};
use crate::kafka::rules::{Current, Published, Publisher, RulesKey, Shadow, Version};
use crate::kafka::KafkaLayerError;
use crate::profiles::ProfileLine;
use crate::rule_set::RuleSet;

/// Where the changes are read, published and recorded.
pub trait ChangeLog {
    /// The rules topic read to its end: the latest active and shadow sets published, and every
    /// version.
    fn rule_sets(&self) -> impl Future<Output = Result<Current, KafkaLayerError>> + Send;

    /// Publishes the set of `key` (`None`: the shadow tombstone), acknowledged.
    fn publish_rule_set(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
    ) -> impl Future<Output = Result<Published, KafkaLayerError>> + Send;

    /// Publishes the record that keeps `set` under its version's own key (`version/<name>`),
    /// naming who published it, acknowledged.
    fn publish_version(
        &self,
        set: &RuleSet,
        by: &Publisher,
    ) -> impl Future<Output = Result<Published, KafkaLayerError>> + Send;

    /// Each user's level now (the profiles topic read to its end), in the order given.
    fn risk_levels(
        &self,
        users: &[UserId],
    ) -> impl Future<Output = Result<Vec<Risk>, KafkaLayerError>> + Send;

    /// Publishes the levels to the profiles topic, each acknowledged.
    fn publish_risks(
        &self,
        lines: &[ProfileLine],
    ) -> impl Future<Output = Result<(), KafkaLayerError>> + Send;

    /// Writes the entries to the audit topic, acknowledged.
    fn record(
        &self,
        entries: &[AuditEntry],
    ) -> impl Future<Output = Result<(), KafkaLayerError>> + Send;
}

/// Where triage changes are read and published (the audit trail is the [`ChangeLog`]'s).
pub trait TriageLog: ChangeLog {
    /// The alert's triage in force, as of every triage record Kafka acknowledged so far
    /// (`None`: never triaged).
    fn triage_of(
        &self,
        alert: Coord,
    ) -> impl Future<Output = Result<Option<Triage>, KafkaLayerError>> + Send;

    /// Publishes the record to the triage topic (keyed by its alert id), acknowledged; returns
    /// where Kafka stored it.
    fn publish_triage(
        &self,
        record: &TriageRecord,
    ) -> impl Future<Output = Result<Coord, KafkaLayerError>> + Send;
}

/// Who makes a change, and through which edge (`cli`, `http`).
#[derive(Debug, Clone, Copy)]
pub struct Author<'a> {
    pub actor: &'a str,
    pub source: &'a str,
}

impl Author<'_> {
    fn publisher(&self) -> Publisher {
        Publisher {
            actor: self.actor.to_owned(),
            source: self.source.to_owned(),
        }
    }
}

/// The sets in force while the rules topic holds none, as the edge making the change is
/// configured: `rules.file` (or the five rules of `[rules]`) and `rules.shadow`.
#[derive(Debug, Clone, Default)]
pub struct Configured {
    pub active: Option<RuleSet>,
    pub shadow: Option<RuleSet>,
}

impl Configured {
    fn of(&self, key: RulesKey) -> Option<&RuleSet> {
        match key {
            RulesKey::Active => self.active.as_ref(),
            RulesKey::Shadow => self.shadow.as_ref(),
        }
    }

    fn version(&self, key: RulesKey) -> Option<&str> {
        self.of(key).map(|s| s.version.as_str())
    }
}

/// The version a rules write expects in force (`If-Match`, `--if-match`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// `*`: any set (for the shadow set: that there is one).
    Any,
    Version(String),
}

impl Expected {
    /// An `If-Match` value: `*`, a version, or a version in double quotes (an entity tag, as
    /// the rules GETs answer in `ETag`). A weak tag (`W/"..."`) cannot match: a version names a
    /// set exactly.
    pub fn parse(text: &str) -> Result<Expected, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(Expected::Any);
        }
        if text.starts_with("W/") {
            return Err(format!(
                "invalid If-Match {text:?}: a weak entity tag never matches a rule set version"
            ));
        }
        let version = match text.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').ok_or_else(|| {
                format!("invalid If-Match {text:?}: an opening quote without its closing one")
            })?,
            None => text,
        };
        if version.is_empty() {
            return Err("invalid If-Match: empty (name a rule set version, or *)".to_owned());
        }
        Ok(Expected::Version(version.to_owned()))
    }

    fn matches(&self, in_force: Option<&str>) -> bool {
        match (self, in_force) {
            (Expected::Any, in_force) => in_force.is_some(),
            (Expected::Version(wanted), Some(version)) => wanted == version,
            (Expected::Version(_), None) => false,
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Any => f.write_str("any set (*)"),
            Expected::Version(version) => write!(f, "{version:?}"),
        }
    }
}

/// A change of the active or shadow set, as asked for.
#[derive(Debug, Clone)]
pub struct RulesRequest {
    pub key: RulesKey,
    /// `None`: clear the shadow set.
    pub set: Option<RuleSet>,
    /// Publish a set without rules anyway (refused otherwise: it would turn alerting off).
    pub allow_empty: bool,
    /// Refused unless the set of `key` in force is this version.
    pub expected: Option<Expected>,
}

/// A promotion of the shadow set to active, as asked for.
#[derive(Debug, Clone, Default)]
pub struct Promotion {
    /// Promote a shadow set without rules anyway.
    pub allow_empty: bool,
    /// Refused unless the shadow set in force is this version (the one reviewed).
    pub expected: Option<Expected>,
}

/// Why a rule set change was refused; nothing was published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A set without rules (400).
    #[error("the rule set {version:?} has no rules: as the {key} set it would raise no alert at all; nothing was published. To publish it anyway, allow it explicitly (HTTP: ?allow_empty=true; CLI: --allow-empty)")]
    Empty { key: RulesKey, version: String },
    /// The version name already names another set (409).
    #[error("version {version:?} was already published {when} with other rules; nothing was published. A version names one set for good: publish these rules under a new version name")]
    VersionTaken { version: String, when: String },
    /// The set in force is not the version the request expected (412).
    #[error("the {key} rule set in force is {in_force}, not {expected}: it changed since it was read; nothing was published. Read it again, then retry naming the version now in force")]
    Stale {
        key: RulesKey,
        expected: String,
        in_force: String,
    },
    /// Promote without a shadow set (409).
    #[error("there is no shadow rule set to promote ({why}); nothing was published")]
    NoShadow { why: String },
}

/// Why a change did not complete; every message says what stands in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("reading {what}: {source}; nothing was published")]
    Read {
        what: &'static str,
        source: KafkaLayerError,
    },
    #[error("publishing {what}: {source}")]
    Publish {
        what: &'static str,
        source: KafkaLayerError,
    },
    #[error("{what} was published but its audit record was not acknowledged: {source}")]
    Unrecorded {
        what: &'static str,
        source: KafkaLayerError,
    },
}

/// A rule set change Kafka acknowledged, with its audit entry.
#[derive(Debug, Clone)]
pub struct RulesChanged {
    /// The record of the key now: the one just published, or, when the same set was in force
    /// already, that record (nothing was published).
    pub published: Published,
    /// The version in force before (`None`: no shadow set).
    pub before: Option<String>,
    /// `None` when nothing changed: the same set was in force already (not recorded either).
    pub entry: Option<AuditEntry>,
}

/// The shadow set made active, and the shadow set cleared.
#[derive(Debug, Clone)]
pub struct Promoted {
    pub version: String,
    /// The active version it replaced.
    pub before: Option<String>,
    /// The `active` record in force now (not republished when the set was active already).
    pub active: Published,
    /// The `shadow` tombstone.
    pub cleared: Published,
    /// What the audit trail recorded: the promotion (unless the set was active already), then
    /// the clearing of the shadow set.
    pub entries: Vec<AuditEntry>,
}

const WHAT: &str = "the rule set";

async fn read_rule_sets(log: &impl ChangeLog) -> Result<Current, ChangeError> {
    log.rule_sets()
        .await
        .map_err(|source| ChangeError::Read { what: WHAT, source })
}

/// `If-Match`: the set of `key` in force (the topic's, else the configured one) must be the
/// expected version.
fn check_expected(
    current: &Current,
    key: RulesKey,
    expected: Option<&Expected>,
    configured: &Configured,
) -> Result<(), Refusal> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let in_force = current.version_in_force(key, configured.version(key));
    if expected.matches(in_force.as_deref()) {
        return Ok(());
    }
    Err(Refusal::Stale {
        key,
        expected: expected.to_string(),
        in_force: match (in_force, key) {
            (Some(version), _) => format!("{version:?}"),
            (None, RulesKey::Shadow) => "none (there is no shadow set)".to_owned(),
            (None, RulesKey::Active) => "unknown".to_owned(),
        },
    })
}

/// When and by whom a version was first published, for a refusal.
fn published_when(version: &Version) -> String {
    let at = version
        .timestamp
        .and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|| "at an unknown time".to_owned());
    let by = match &version.by {
        Some(by) => format!(", by {} via {}", by.actor, by.source),
        None => String::new(),
    };
    format!("at {at} (offset {} of the rules topic{by})", version.offset)
}

/// A version name names one set: refused when the topic (or the configuration) already has
/// another set under `set`'s version.
fn check_version_free(
    current: &Current,
    set: &RuleSet,
    configured: &Configured,
) -> Result<(), Refusal> {
    let taken = |when: String| Refusal::VersionTaken {
        version: set.version.clone(),
        when,
    };
    if let Some(known) = current.versions.get(&set.version) {
        return if known.set == *set {
            Ok(())
        } else {
            Err(taken(published_when(known)))
        };
    }
    for key in [RulesKey::Active, RulesKey::Shadow] {
        if let Some(other) = configured.of(key) {
            if other.version == set.version && other != set {
                return Err(taken(format!("as the configured {key} set")));
            }
        }
    }
    Ok(())
}

/// Puts `set` in force under `key`: its version record first, the first time the version is
/// published (so the topic keeps every version whatever compaction does to `active` and
/// `shadow`), then the record of `key`. Nothing is published when the latest record of `key`
/// holds this very set already: `false` with that record.
async fn put_in_force(
    log: &impl ChangeLog,
    author: Author<'_>,
    current: &Current,
    key: RulesKey,
    set: &RuleSet,
    configured: &Configured,
) -> Result<(Published, bool), ChangeError> {
    check_version_free(current, set, configured)?;
    if let Some(latest) = current.get(key).filter(|l| l.set == *set) {
        let record = Published {
            partition: 0,
            offset: latest.offset,
            timestamp: latest.timestamp,
        };
        return Ok((record, false));
    }
    let publish = |source| ChangeError::Publish { what: WHAT, source };
    if !current.versions.contains_key(&set.version) {
        log.publish_version(set, &author.publisher())
            .await
            .map_err(publish)?;
    }
    let published = log
        .publish_rule_set(key, Some(set))
        .await
        .map_err(publish)?;
    Ok((published, true))
}

/// A triage change Kafka acknowledged: the alert's new triage, where its record is in the triage
/// topic, and its audit entry.
#[derive(Debug, Clone)]
pub struct TriageChanged {
    pub triage: Triage,
    /// The record's partition and offset in the triage topic.
    pub at: Coord,
    pub entry: AuditEntry,
}

/// Sets an alert's triage (made by the author now) and records the change, its "before" the
/// triage in force when the change was asked for (open for an alert never triaged). `user_id`
/// is the alert's user, for the audit trail.
pub async fn change_triage(
    log: &impl TriageLog,
    author: Author<'_>,
    alert: Coord,
    user_id: Option<UserId>,
    change: TriageChange,
) -> Result<TriageChanged, ChangeError> {
    let what = "the alert's triage";
    let before = log
        .triage_of(alert)
        .await
        .map_err(|source| ChangeError::Read { what, source })?
        .unwrap_or_else(Triage::open);
    let triage = change.made_by(author.actor, now_rfc3339());
    let record = TriageRecord::new(alert, triage.clone());
    let at = log
        .publish_triage(&record)
        .await
        .map_err(|source| ChangeError::Publish { what, source })?;
    let entry = AuditEntry::triage_set(
        author.actor,
        author.source,
        alert,
        user_id,
        &before,
        &triage,
    );
    log.record(std::slice::from_ref(&entry))
        .await
        .map_err(|source| ChangeError::Unrecorded { what, source })?;
    Ok(TriageChanged { triage, at, entry })
}

/// Publishes the set of `key` (`None`: clears the shadow set) and records the change. Its
/// "before" is the version in force as the rules topic says, else the configured set's.
///
/// Refused, with nothing published: a set without rules unless allowed; a version name the
/// topic (or the configuration) already has for another set; a request whose expected version
/// is not the one in force. The same set again under the same name is idempotent: published
/// again when another set is in force under `key` (going back to it), else nothing at all.
///
/// These checks read the topic, then publish: within one shim they are serialised, but two
/// writers (two shims, a shim and the CLI) that read the same state at the same time may both
/// pass them, and the later record wins.
pub async fn change_rule_set(
    log: &impl ChangeLog,
    author: Author<'_>,
    request: &RulesRequest,
    configured: &Configured,
) -> Result<RulesChanged, ChangeError> {
    let key = request.key;
    if let Some(set) = request.set.as_ref() {
        if set.rules.is_empty() && !request.allow_empty {
            return Err(Refusal::Empty {
                key,
                version: set.version.clone(),
            }
            .into());
        }
    }
    let current = read_rule_sets(log).await?;
    check_expected(&current, key, request.expected.as_ref(), configured)?;
    let before = current.version_in_force(key, configured.version(key));
    let (published, changed) = match request.set.as_ref() {
        Some(set) => put_in_force(log, author, &current, key, set, configured).await?,
        None => {
            let cleared = log
                .publish_rule_set(key, None)
                .await
                .map_err(|source| ChangeError::Publish { what: WHAT, source })?;
            (cleared, true)
        }
    };
    let entry = changed.then(|| {
        let after = request.set.as_ref().map(|s| s.version.as_str());
        AuditEntry::rules_changed(author.actor, author.source, key, before.as_deref(), after)
    });
    if let Some(entry) = &entry {
        log.record(std::slice::from_ref(entry))
            .await
            .map_err(|source| ChangeError::Unrecorded { what: WHAT, source })?;
    }
    Ok(RulesChanged {
        published,
        before,
        entry,
    })
}

/// Makes the shadow set in force (the topic's, else `rules.shadow`) the active set, then clears
/// the shadow set (the trial is over; the shadow set would only agree with the active one), and
/// records both. Refused, with nothing published, when there is no shadow set, when it has no
/// rules unless allowed, when the expected version is not the shadow set's, or when its
/// version names another set in the topic.
///
/// Two records, not one transaction: when the tombstone fails after the active record was
/// acknowledged, the set is active and the shadow set still holds it (it agrees with the active
/// set on everything); promoting again completes the promotion.
pub async fn promote_shadow(
    log: &impl ChangeLog,
    author: Author<'_>,
    request: &Promotion,
    configured: &Configured,
) -> Result<Promoted, ChangeError> {
    let current = read_rule_sets(log).await?;
    check_expected(
        &current,
        RulesKey::Shadow,
        request.expected.as_ref(),
        configured,
    )?;
    let shadow = match (&current.shadow, configured.shadow.as_ref()) {
        (Shadow::Set(latest), _) => latest.set.clone(),
        (Shadow::Unpublished, Some(set)) => set.clone(),
        (Shadow::Unpublished, None) => {
            return Err(Refusal::NoShadow {
                why: "none was published, and rules.shadow names none".to_owned(),
            }
            .into())
        }
        (Shadow::Cleared { offset, .. }, _) => {
            return Err(Refusal::NoShadow {
                why: format!("cleared at offset {offset} of the rules topic"),
            }
            .into())
        }
    };
    if shadow.rules.is_empty() && !request.allow_empty {
        return Err(Refusal::Empty {
            key: RulesKey::Active,
            version: shadow.version.clone(),
        }
        .into());
    }
    let before = current.version_in_force(RulesKey::Active, configured.version(RulesKey::Active));
    let (active, changed) =
        put_in_force(log, author, &current, RulesKey::Active, &shadow, configured).await?;
    let cleared = log
        .publish_rule_set(RulesKey::Shadow, None)
        .await
        .map_err(|source| ChangeError::Publish {
            what: "the shadow tombstone of the promotion (the set is active; the shadow set still holds it: promote again)",
            source,
        })?;
    let mut entries = Vec::with_capacity(2);
    if changed {
        entries.push(AuditEntry::rules_promoted(
            author.actor,
            author.source,
            before.as_deref(),
            &shadow.version,
        ));
    }
    entries.push(AuditEntry::rules_changed(
        author.actor,
        author.source,
        RulesKey::Shadow,
        Some(&shadow.version),
        None,
    ));
    log.record(&entries)
        .await
        .map_err(|source| ChangeError::Unrecorded {
            what: "the promotion",
            source,
        })?;
    Ok(Promoted {
        version: shadow.version,
        before,
        active,
        cleared,
        entries,
    })
}

/// Publishes risk levels (a later line for a user wins) and records each change, its "before"
/// the level in force when the change was asked for (or the previous line's, for a user named
/// twice).
pub async fn change_risks(
    log: &impl ChangeLog,
    author: Author<'_>,
    lines: &[ProfileLine],
) -> Result<Vec<AuditEntry>, ChangeError> {
    let what = "the risk level";
    let users: Vec<UserId> = lines.iter().map(|l| l.user_id).collect();
    let now = log
        .risk_levels(&users)
        .await
        .map_err(|source| ChangeError::Read { what, source })?;
    let mut seen: HashMap<UserId, Risk> = HashMap::new();
    let entries: Vec<AuditEntry> = lines
        .iter()
        .zip(now)
        .map(|(line, current)| {
            let before = seen.insert(line.user_id, line.risk).unwrap_or(current);
            AuditEntry::risk_set(
                author.actor,
                author.source,
                line.user_id,
                before.as_str(),
                line.risk.as_str(),
            )
        })
        .collect();
    log.publish_risks(lines)
        .await
        .map_err(|source| ChangeError::Publish { what, source })?;
    log.record(&entries)
        .await
        .map_err(|source| ChangeError::Unrecorded { what, source })?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::rules::MemoryTopic;
    use crate::rule_set::Bounds;
    use std::sync::Mutex;

    /// A change log in memory, that can refuse the audit write.
    #[derive(Default)]
    struct Memory {
        rules: MemoryTopic,
        risks: Mutex<HashMap<UserId, Risk>>,
        /// The triage topic: every record, oldest first.
        triage: Mutex<Vec<TriageRecord>>,
        audit: Mutex<Vec<AuditEntry>>,
        refuse_audit: bool,
    }

    impl TriageLog for Memory {
        async fn triage_of(&self, alert: Coord) -> Result<Option<Triage>, KafkaLayerError> {
            let records = self.triage.lock().unwrap();
            Ok(records
                .iter()
                .rev()
                .find(|r| r.alert_id == alert.alert_id())
                .map(|r| r.triage.clone()))
        }
        async fn publish_triage(&self, record: &TriageRecord) -> Result<Coord, KafkaLayerError> {
            let mut records = self.triage.lock().unwrap();
            records.push(record.clone());
            Ok(Coord::new(0, records.len() as i64 - 1))
        }
    }

    impl ChangeLog for Memory {
        async fn rule_sets(&self) -> Result<Current, KafkaLayerError> {
            Ok(self.rules.current())
        }
        async fn publish_rule_set(
            &self,
            key: RulesKey,
            set: Option<&RuleSet>,
        ) -> Result<Published, KafkaLayerError> {
            self.rules.publish(key, set, &Bounds::default())
        }
        async fn publish_version(
            &self,
            set: &RuleSet,
            by: &Publisher,
        ) -> Result<Published, KafkaLayerError> {
            self.rules.publish_version(set, by, &Bounds::default())
        }
        async fn risk_levels(&self, users: &[UserId]) -> Result<Vec<Risk>, KafkaLayerError> {
            let risks = self.risks.lock().unwrap();
            Ok(users
                .iter()
                .map(|u| risks.get(u).copied().unwrap_or_default())
                .collect())
        }
        async fn publish_risks(&self, lines: &[ProfileLine]) -> Result<(), KafkaLayerError> {
            let mut risks = self.risks.lock().unwrap();
            for line in lines {
                risks.insert(line.user_id, line.risk);
            }
            Ok(())
        }
        async fn record(&self, entries: &[AuditEntry]) -> Result<(), KafkaLayerError> {
            if self.refuse_audit {
                return Err(KafkaLayerError::Timeout(std::time::Duration::from_secs(1)));
            }
            self.audit.lock().unwrap().extend_from_slice(entries);
            Ok(())
        }
    }

    const CLI: Author<'static> = Author {
        actor: "cli:ana",
        source: "cli",
    };

    /// The default set under another version name, with 1100 at `amount`.
    fn set(version: &str, amount: &str) -> RuleSet {
        let text = format!(
            r#"{{"version": "{version}", "rule": [
                {{"code": 1100, "kind": "amount", "on": "withdraw", "amount": "{amount}"}}
            ]}}"#
        );
        RuleSet::from_json(&text, &Bounds::default()).unwrap()
    }

    fn configured() -> Configured {
        Configured {
            active: Some(RuleSet::default_set()),
            shadow: None,
        }
    }

    fn put(key: RulesKey, set: RuleSet) -> RulesRequest {
        RulesRequest {
            key,
            set: Some(set),
            allow_empty: false,
            expected: None,
        }
    }

    fn change(log: &Memory, request: RulesRequest) -> Result<RulesChanged, ChangeError> {
        futures::executor::block_on(change_rule_set(log, CLI, &request, &configured()))
    }

    fn refusal(result: Result<impl std::fmt::Debug, ChangeError>) -> Refusal {
        match result {
            Err(ChangeError::Refused(refusal)) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_rule_set_change_records_the_version_it_replaced() {
        let log = Memory::default();
        let first = change(&log, put(RulesKey::Active, set("next", "90")))
            .unwrap()
            .entry
            .unwrap();
        assert_eq!(
            (first.before.as_str(), first.after.as_str()),
            ("default", "next")
        );
        let second = change(&log, put(RulesKey::Active, set("after-next", "80"))).unwrap();
        assert_eq!(second.before.as_deref(), Some("next"));
        assert_eq!(log.audit.lock().unwrap().len(), 2);
    }

    #[test]
    fn an_empty_rule_set_is_refused_unless_allowed() {
        let log = Memory::default();
        let empty =
            RuleSet::from_json(r#"{"version": "off", "rule": []}"#, &Bounds::default()).unwrap();
        for key in [RulesKey::Active, RulesKey::Shadow] {
            let refused = refusal(change(&log, put(key, empty.clone())));
            assert_eq!(
                refused,
                Refusal::Empty {
                    key,
                    version: "off".to_owned()
                }
            );
            assert!(
                refused.to_string().contains("allow_empty=true"),
                "{refused}"
            );
        }
        assert_eq!(log.rules.current(), Current::default(), "nothing published");
        let allowed = RulesRequest {
            allow_empty: true,
            ..put(RulesKey::Active, empty)
        };
        let changed = change(&log, allowed).unwrap();
        assert_eq!(changed.entry.unwrap().after, "off");
        assert!(log.rules.current().active.unwrap().set.rules.is_empty());
    }

    #[test]
    fn a_version_name_names_one_set_and_publishing_it_again_is_idempotent() {
        let log = Memory::default();
        let v1 = change(&log, put(RulesKey::Active, set("v1", "90"))).unwrap();
        // Its version record, then the active record.
        assert_eq!(v1.published.offset, 1);
        assert_eq!(log.rules.current().versions["v1"].offset, 0);
        let refused = refusal(change(&log, put(RulesKey::Shadow, set("v1", "70"))));
        let Refusal::VersionTaken { version, when } = &refused else {
            panic!("{refused:?}")
        };
        assert_eq!(version, "v1");
        assert!(
            when.contains("offset 0 of the rules topic, by cli:ana via cli"),
            "{refused}"
        );
        // The configured set's name is taken too.
        let refused = refusal(change(&log, put(RulesKey::Active, set("default", "1"))));
        assert!(
            refused.to_string().contains("as the configured active set"),
            "{refused}"
        );
        // The same set again: nothing published, nothing recorded.
        let again = change(&log, put(RulesKey::Active, set("v1", "90"))).unwrap();
        assert!(again.entry.is_none());
        assert_eq!(again.published, v1.published);
        assert_eq!(log.audit.lock().unwrap().len(), 1);
        // Back to v1 after v2: the active record again, but no second version record.
        change(&log, put(RulesKey::Active, set("v2", "80"))).unwrap();
        let back = change(&log, put(RulesKey::Active, set("v1", "90"))).unwrap();
        assert_eq!(back.entry.unwrap().before, "v2");
        let current = log.rules.current();
        assert_eq!(
            current.get(RulesKey::Active).unwrap().offset,
            back.published.offset
        );
        assert_eq!(back.published.offset, 4, "v1, active, v2, active, active");
        assert_eq!(current.versions["v1"].offset, 0);
    }

    #[test]
    fn a_write_expecting_another_version_is_refused_naming_the_one_in_force() {
        let log = Memory::default();
        let expecting = |key, version: &str, set: Option<RuleSet>| RulesRequest {
            key,
            set,
            allow_empty: false,
            expected: Some(Expected::Version(version.to_owned())),
        };
        // Nothing published: the configured set is in force.
        change(
            &log,
            expecting(RulesKey::Active, "default", Some(set("v1", "90"))),
        )
        .unwrap();
        let refused = refusal(change(
            &log,
            expecting(RulesKey::Active, "default", Some(set("v2", "80"))),
        ));
        assert_eq!(
            refused,
            Refusal::Stale {
                key: RulesKey::Active,
                expected: "\"default\"".to_owned(),
                in_force: "\"v1\"".to_owned()
            }
        );
        assert_eq!(log.rules.current().active.unwrap().set.version, "v1");
        // No shadow set: clearing or replacing it expecting one is refused.
        let refused = refusal(change(&log, expecting(RulesKey::Shadow, "s1", None)));
        assert!(
            refused
                .to_string()
                .contains("none (there is no shadow set)"),
            "{refused}"
        );
        let any = RulesRequest {
            expected: Some(Expected::Any),
            ..put(RulesKey::Shadow, set("s1", "50"))
        };
        refusal(change(&log, any.clone()));
        change(&log, put(RulesKey::Shadow, set("s1", "50"))).unwrap();
        change(&log, any).unwrap();
        change(&log, expecting(RulesKey::Shadow, "s1", None)).unwrap();
    }

    #[test]
    fn promoting_makes_the_shadow_set_active_clears_it_and_records_both() {
        let log = Memory::default();
        let promote = |expected: Option<&str>| {
            let request = Promotion {
                allow_empty: false,
                expected: expected.map(|v| Expected::Version(v.to_owned())),
            };
            futures::executor::block_on(promote_shadow(&log, CLI, &request, &configured()))
        };
        let refused = refusal(promote(None));
        assert!(matches!(refused, Refusal::NoShadow { .. }), "{refused}");
        change(&log, put(RulesKey::Shadow, set("s1", "50"))).unwrap();
        let refused = refusal(promote(Some("s0")));
        assert!(
            refused.to_string().contains("is \"s1\", not \"s0\""),
            "{refused}"
        );
        let promoted = promote(Some("s1")).unwrap();
        assert_eq!(
            (promoted.version.as_str(), promoted.before.as_deref()),
            ("s1", Some("default"))
        );
        let current = log.rules.current();
        assert_eq!(current.active.unwrap().set, set("s1", "50"));
        assert!(
            matches!(current.shadow, Shadow::Cleared { offset, .. } if offset == promoted.cleared.offset)
        );
        let actions: Vec<(String, String, String)> = promoted
            .entries
            .iter()
            .map(|e| (e.action.clone(), e.before.clone(), e.after.clone()))
            .collect();
        let row = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(
            actions,
            [
                row("rules.active.promote", "default", "s1"),
                row("rules.shadow.clear", "s1", "none")
            ]
        );
        assert_eq!(log.audit.lock().unwrap().len(), 3);
        let refused = refusal(promote(None));
        assert!(
            refused.to_string().contains("cleared at offset"),
            "{refused}"
        );
    }

    #[test]
    fn if_match_takes_a_version_a_quoted_version_or_a_star() {
        let version = |v: &str| Ok(Expected::Version(v.to_owned()));
        assert_eq!(Expected::parse("v1"), version("v1"));
        assert_eq!(
            Expected::parse(" \"2026-12-01.1\" "),
            version("2026-12-01.1")
        );
        assert_eq!(Expected::parse("*"), Ok(Expected::Any));
        for bad in ["", "\"\"", "\"v1", "W/\"v1\""] {
            assert!(Expected::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_named_twice_is_recorded_from_the_level_before_each_line() {
        let log = Memory::default();
        log.risks
            .lock()
            .unwrap()
            .insert(UserId::new(7).unwrap(), Risk::High);
        let lines = [
            ProfileLine {
                user_id: UserId::new(7).unwrap(),
                risk: Risk::Low,
            },
            ProfileLine {
                user_id: UserId::new(7).unwrap(),
                risk: Risk::Medium,
            },
        ];
        let entries = futures::executor::block_on(change_risks(&log, CLI, &lines)).unwrap();
        let changes: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.before.as_str(), e.after.as_str()))
            .collect();
        assert_eq!(changes, [("high", "low"), ("low", "medium")]);
        assert_eq!(
            log.risks.lock().unwrap()[&UserId::new(7).unwrap()],
            Risk::Medium
        );
    }

    #[test]
    fn a_change_published_without_its_audit_record_says_so() {
        let log = Memory {
            refuse_audit: true,
            ..Memory::default()
        };
        let line = ProfileLine {
            user_id: UserId::new(3).unwrap(),
            risk: Risk::High,
        };
        let error = futures::executor::block_on(change_risks(&log, CLI, &[line])).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("the risk level was published but its audit record"),
            "{error}"
        );
        assert_eq!(
            log.risks.lock().unwrap()[&UserId::new(3).unwrap()],
            Risk::High
        );
    }

    #[test]
    fn a_triage_change_records_the_triage_it_replaced_and_who_made_it() {
        use crate::domain::{Resolution, TriageStatus};
        let log = Memory::default();
        let alert = Coord::new(1, 7);
        let user = UserId::new(4);
        let ops = Author {
            actor: "ops",
            source: "http",
        };
        let acknowledged = TriageChange::new(TriageStatus::Acknowledged, None, None).unwrap();
        let first =
            futures::executor::block_on(change_triage(&log, ops, alert, user, acknowledged))
                .unwrap();
        assert_eq!(first.triage.triaged_by.as_deref(), Some("ops"));
        assert_eq!(first.at, Coord::new(0, 0));
        let resolved = TriageChange::new(
            TriageStatus::Resolved,
            Some(Resolution::Legitimate),
            Some("salary".into()),
        )
        .unwrap();
        let second =
            futures::executor::block_on(change_triage(&log, ops, alert, user, resolved)).unwrap();
        let changes: Vec<(String, String, Option<String>)> = log
            .audit
            .lock()
            .unwrap()
            .iter()
            .map(|e| (e.before.clone(), e.after.clone(), e.alert_id.clone()))
            .collect();
        assert_eq!(
            changes,
            [
                (
                    "open".into(),
                    "acknowledged".into(),
                    Some("alert-1-7".into())
                ),
                (
                    "acknowledged".into(),
                    "resolved (legitimate): salary".into(),
                    Some("alert-1-7".into())
                ),
            ]
        );
        assert_eq!(second.entry.user_id, Some(4));
        assert_eq!(
            futures::executor::block_on(log.triage_of(alert)).unwrap(),
            Some(second.triage)
        );
    }
}
