//! The audit trail: every accepted change of a risk level, a rule set or an alert's triage — who,
//! when, what,
//! before → after — as one record of the audit topic (`topics.audit`, one partition so the trail
//! has one order, never compacted), listed newest first by `GET /api/v1/audit`.

use crate::domain::{Coord, Triage, UserId};
use std::time::{Duration, SystemTime};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::Offset;
use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::kafka::read::read_range;
use crate::kafka::rules::RulesKey;
use crate::kafka::{producer_config, reader, KafkaLayerError};

/// One accepted change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When the change was accepted, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// Who: the token's name (`anonymous` when authentication is off), or `cli:<os user>`.
    pub actor: String,
    /// What: `risk.set`, `rules.active.set`, `rules.active.promote` (the shadow set made
    /// active), `rules.shadow.set`, `rules.shadow.clear` or `alert.triage`.
    pub action: String,
    /// The user whose risk level changed, or whose alert was triaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    /// The alert whose triage changed (`alert-<partition>-<offset>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// The value before the change: a risk level (`medium` for a user without a profile), a
    /// rule set's version (`none` for no shadow set), or a triage (`open`,
    /// `resolved (fraud): <note>`).
    pub before: String,
    /// The value after it (a version, or `none` when the shadow set was cleared).
    pub after: String,
    /// Where the change came from: `http` or `cli`.
    pub source: String,
    /// Set by `GET /api/v1/audit`: the entry's offset in the audit topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

impl AuditEntry {
    /// A risk change accepted now.
    pub fn risk_set(actor: &str, source: &str, user_id: UserId, before: &str, after: &str) -> Self {
        AuditEntry {
            at: now_rfc3339(),
            actor: actor.to_owned(),
            action: "risk.set".to_owned(),
            user_id: Some(user_id.get()),
            alert_id: None,
            before: before.to_owned(),
            after: after.to_owned(),
            source: source.to_owned(),
            offset: None,
        }
    }

    /// A change of the active or shadow rule set accepted now: `before`/`after` are versions,
    /// `None` for no set (a shadow set published where there was none, or cleared).
    pub fn rules_changed(
        actor: &str,
        source: &str,
        key: RulesKey,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Self {
        let verb = if after.is_some() { "set" } else { "clear" };
        AuditEntry {
            at: now_rfc3339(),
            actor: actor.to_owned(),
            action: format!("rules.{key}.{verb}"),
            user_id: None,
            alert_id: None,
            before: before.unwrap_or(NO_RULE_SET).to_owned(),
            after: after.unwrap_or(NO_RULE_SET).to_owned(),
            source: source.to_owned(),
            offset: None,
        }
    }

    /// A change of an alert's triage accepted now: `before`/`after` are their summaries
    /// ([`Triage::summary`]); `user_id` is the alert's user.
    pub fn triage_set(
        actor: &str,
        source: &str,
        alert: Coord,
        user_id: Option<UserId>,
        before: &Triage,
        after: &Triage,
    ) -> Self {
        AuditEntry {
            at: now_rfc3339(),
            actor: actor.to_owned(),
            action: "alert.triage".to_owned(),
            user_id: user_id.map(UserId::get),
            alert_id: Some(alert.alert_id()),
            before: before.summary(),
            after: after.summary(),
            source: source.to_owned(),
            offset: None,
        }
    }

    /// The shadow set `version` made active in place of `before` (accepted now).
    pub fn rules_promoted(actor: &str, source: &str, before: Option<&str>, version: &str) -> Self {
        AuditEntry {
            action: "rules.active.promote".to_owned(),
            ..AuditEntry::rules_changed(actor, source, RulesKey::Active, before, Some(version))
        }
    }

    /// The record key: what the change is about (`user:<id>`, `rules:active`/`rules:shadow`, or
    /// `alert-<partition>-<offset>`).
    pub fn key(&self) -> String {
        if let Some(alert_id) = &self.alert_id {
            return alert_id.clone();
        }
        match self.user_id {
            Some(user) => format!("user:{user}"),
            None => match self.action.strip_prefix("rules.") {
                Some(rest) => format!("rules:{}", rest.split('.').next().unwrap_or(rest)),
                None => self.action.clone(),
            },
        }
    }
}

/// `before`/`after` of a rule set change where there was, or is, no set.
pub const NO_RULE_SET: &str = "none";

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The actor name of a command-line change: `cli:<os user>`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// A page of the trail, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Publishes entries from a command-line tool and waits for their acknowledgement.
pub fn publish(settings: &Settings, entries: &[AuditEntry]) -> Result<(), KafkaLayerError> {
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config(settings, "audit")?.create()?;
    for entry in entries {
        let value = serde_json::to_vec(entry).expect("an audit entry serializes");
        let key = entry.key();
        producer
            .send(
                BaseRecord::to(&settings.topics.audit)
                    .key(&key)
                    .payload(&value),
            )
            .map_err(|(e, _)| KafkaLayerError::Client(e))?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Reads a page of the trail, newest first: `limit` entries before offset `before` (exclusive;
/// `None`: from the newest). Blocking.
pub fn read_page(
    settings: &Settings,
    limit: usize,
    before: Option<i64>,
    timeout: Duration,
) -> Result<AuditPage, KafkaLayerError> {
    let topic = &settings.topics.audit;
    let consumer = reader(settings, "audit")?;
    let (low, high) = consumer.fetch_watermarks(topic, 0, timeout)?;
    let end = before.map_or(high, |b| b.clamp(low, high));
    let start = end.saturating_sub(limit as i64).max(low);
    let mut entries = Vec::new();
    if start < end {
        read_range(
            &consumer,
            topic,
            0,
            Offset::Offset(start),
            end,
            timeout,
            |m| {
                let parsed = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<AuditEntry>(p).ok());
                if let Some(mut entry) = parsed {
                    entry.offset = Some(m.offset());
                    entries.push(entry);
                }
                Ok::<(), KafkaLayerError>(())
            },
        )
        .map_err(|e| e.into_layer(timeout))?;
    }
    entries.reverse();
    Ok(AuditPage {
        entries,
        next_cursor: (start > low).then(|| start.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_says_who_when_what_and_before_after() {
        let entry = AuditEntry::risk_set("ops", "http", UserId::new(3).unwrap(), "medium", "high");
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["actor"], "ops");
        assert_eq!(json["action"], "risk.set");
        assert_eq!(json["user_id"], 3);
        assert_eq!(json["before"], "medium");
        assert_eq!(json["after"], "high");
        assert!(json["at"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("offset").is_none());
        assert_eq!(entry.key(), "user:3");
        assert!(cli_actor().starts_with("cli:"));
    }

    #[test]
    fn a_rule_set_change_names_the_set_and_the_versions() {
        let entry =
            AuditEntry::rules_changed("ops", "http", RulesKey::Active, Some("v1"), Some("v2"));
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["action"], "rules.active.set");
        assert_eq!(json["before"], "v1");
        assert_eq!(json["after"], "v2");
        assert!(json.get("user_id").is_none());
        assert_eq!(entry.key(), "rules:active");
        let cleared = AuditEntry::rules_changed("ops", "cli", RulesKey::Shadow, Some("s1"), None);
        assert_eq!(cleared.action, "rules.shadow.clear");
        assert_eq!(cleared.after, "none");
        assert_eq!(cleared.key(), "rules:shadow");
        let promoted = AuditEntry::rules_promoted("ops", "http", Some("v1"), "s1");
        assert_eq!(
            (promoted.action.as_str(), promoted.before.as_str()),
            ("rules.active.promote", "v1")
        );
        assert_eq!(
            (promoted.after.as_str(), promoted.key()),
            ("s1", "rules:active".to_owned())
        );
        let first = AuditEntry::rules_changed("ops", "http", RulesKey::Shadow, None, Some("s1"));
        assert_eq!(
            (first.action.as_str(), first.before.as_str()),
            ("rules.shadow.set", "none")
        );
    }

    #[test]
    fn a_triage_change_names_the_alert_its_user_and_both_states() {
        use crate::domain::{Resolution, TriageChange, TriageStatus};
        let after = TriageChange::new(
            TriageStatus::Resolved,
            Some(Resolution::Duplicate),
            Some("see alert-0-3".into()),
        )
        .unwrap()
        .made_by("ops", now_rfc3339());
        let entry = AuditEntry::triage_set(
            "ops",
            "http",
            Coord::new(0, 4),
            Some(UserId::new(9).unwrap()),
            &Triage::open(),
            &after,
        );
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json["action"], "alert.triage");
        assert_eq!(json["alert_id"], "alert-0-4");
        assert_eq!(json["user_id"], 9);
        assert_eq!(json["before"], "open");
        assert_eq!(json["after"], "resolved (duplicate): see alert-0-3");
        assert_eq!(entry.key(), "alert-0-4");
    }
}
