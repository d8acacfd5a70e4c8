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
use crate::kafka::rules::{Current, Published, RulesKey};
use crate::kafka::KafkaLayerError;
use crate::profiles::ProfileLine;
use crate::rule_set::RuleSet;

/// Where the changes are read, published and recorded.
pub trait ChangeLog {
    /// The rules topic read to its end: the latest active and shadow sets published.
    fn rule_sets(&self) -> impl Future<Output = Result<Current, KafkaLayerError>> + Send;

    /// Publishes the set of `key` (`None`: the shadow tombstone), acknowledged.
    fn publish_rule_set(
        &self,
        key: RulesKey,
        set: Option<&RuleSet>,
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

/// Why a change did not complete; every message says what stands in Kafka.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
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
    pub published: Published,
    pub entry: AuditEntry,
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
/// "before" is the version in force as the rules topic says, else `configured` (the configured
/// set's version).
pub async fn change_rule_set(
    log: &impl ChangeLog,
    author: Author<'_>,
    key: RulesKey,
    set: Option<&RuleSet>,
    configured: Option<&str>,
) -> Result<RulesChanged, ChangeError> {
    let what = "the rule set";
    let current = log
        .rule_sets()
        .await
        .map_err(|source| ChangeError::Read { what, source })?;
    let before = current.version_in_force(key, configured);
    let published = log
        .publish_rule_set(key, set)
        .await
        .map_err(|source| ChangeError::Publish { what, source })?;
    let after = set.map(|s| s.version.as_str());
    let entry =
        AuditEntry::rules_changed(author.actor, author.source, key, before.as_deref(), after);
    log.record(std::slice::from_ref(&entry))
        .await
        .map_err(|source| ChangeError::Unrecorded { what, source })?;
    Ok(RulesChanged { published, entry })
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

    #[test]
    fn a_rule_set_change_records_the_version_it_replaced() {
        let log = Memory::default();
        let publish = |version: &str| {
            let mut set = RuleSet::default_set();
            set.version = version.to_owned();
            let changed = change_rule_set(&log, CLI, RulesKey::Active, Some(&set), Some("default"));
            futures::executor::block_on(changed).unwrap().entry
        };
        let first = publish("next");
        assert_eq!(
            (first.before.as_str(), first.after.as_str()),
            ("default", "next")
        );
        assert_eq!(publish("after-next").before, "next");
        assert_eq!(log.audit.lock().unwrap().len(), 2);
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
