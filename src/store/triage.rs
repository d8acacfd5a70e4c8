//! The triage of alerts in the read model (CONTRACT §7): the triage topic projected into the
//! `triage` table (the latest record of each alert) and onto the alert's own row
//! (`records.triage_status`, for the status filter), with the topic's offsets in the same
//! transaction, as for the alerts; and the triage of a set of alerts, read in one query.
//!
//! The two topics have a consumer each, so a triage record may be stored before its alert's row:
//! an alerts batch then takes the status from the `triage` table ([`Store::write`]), and a store
//! rebuilt from both topics ends with the same states whatever the order.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::write::store_offsets;
use super::{Dialect, Store, StoreError};
use crate::domain::{Coord, Resolution, Triage, TriageRecord, TriageStatus};

/// Alerts per `triage_of` statement (2 parameters each).
const COORDS_PER_STATEMENT: usize = 500;

/// How a status is stored: 0 open (also the default of an alert's row), 1 acknowledged,
/// 2 resolved.
pub(crate) fn status_code(status: TriageStatus) -> i64 {
    match status {
        TriageStatus::Open => 0,
        TriageStatus::Acknowledged => 1,
        TriageStatus::Resolved => 2,
    }
}

fn status_of(code: i64) -> Option<TriageStatus> {
    TriageStatus::ALL
        .into_iter()
        .find(|s| status_code(*s) == code)
}

/// Records of the triage topic and the offsets they bring the projection to, written in one
/// transaction. Within a batch the latest record of an alert wins, as in the topic.
#[derive(Debug, Default)]
pub struct TriageBatch {
    /// Per alert, its triage (`None`: a tombstone, back to open without a record).
    pub triage: BTreeMap<Coord, Option<Triage>>,
    /// Per triage partition, the next offset to read once this batch is stored.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Records taken (stored or skipped).
    pub records: usize,
    /// Records skipped as unreadable (their offsets still advance).
    pub skipped: u64,
}

impl TriageBatch {
    /// Adds the triage record at (`partition`, `offset`); an unreadable one is logged, counted
    /// and skipped, never fatal.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        self.next_offsets.insert(partition, offset + 1);
        self.records += 1;
        let read = match (key, payload) {
            (Some(key), Some(payload)) => {
                TriageRecord::from_record(key, payload).map(|(alert, triage)| (alert, Some(triage)))
            }
            (Some(key), None) => TriageRecord::alert_of(key).map(|alert| (alert, None)),
            (None, _) => {
                self.skipped += 1;
                tracing::warn!(partition, offset, "skipping triage record without a key");
                return;
            }
        };
        match read {
            Ok((alert, triage)) => {
                self.triage.insert(alert, triage);
            }
            Err(e) => {
                self.skipped += 1;
                tracing::warn!(partition, offset, error = %e, "skipping unreadable triage record");
            }
        }
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

impl Store {
    /// Stores a batch of triage records and the offsets it brings `topic` (the triage topic) to,
    /// in one transaction: each alert's row of `triage` is replaced (a tombstone deletes it), and
    /// the alert's own row, when stored, takes the status.
    pub async fn write_triage(&self, topic: &str, batch: &TriageBatch) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for (alert, triage) in &batch.triage {
            let part = i64::from(alert.partition);
            let status = match triage {
                Some(triage) => {
                    sqlx::query(
                        "INSERT INTO triage (part, off, status, resolution, note, triaged_by, triaged_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (part, off) DO UPDATE SET \
                         status = excluded.status, resolution = excluded.resolution, \
                         note = excluded.note, triaged_by = excluded.triaged_by, \
                         triaged_at = excluded.triaged_at",
                    )
                    .bind(part)
                    .bind(alert.offset)
                    .bind(status_code(triage.status))
                    .bind(triage.resolution.map(|r| r.as_str().to_owned()))
                    .bind(triage.note.clone())
                    .bind(triage.triaged_by.clone())
                    .bind(triage.triaged_at.clone())
                    .execute(&mut *tx)
                    .await?;
                    triage.status
                }
                None => {
                    sqlx::query("DELETE FROM triage WHERE part = $1 AND off = $2")
                        .bind(part)
                        .bind(alert.offset)
                        .execute(&mut *tx)
                        .await?;
                    TriageStatus::Open
                }
            };
            sqlx::query("UPDATE records SET triage_status = $1 WHERE part = $2 AND off = $3")
                .bind(status_code(status))
                .bind(part)
                .bind(alert.offset)
                .execute(&mut *tx)
                .await?;
        }
        store_offsets(&mut tx, topic, &batch.next_offsets).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The triage of each of these alerts that has one (an alert without is open). One query
    /// per 500 alerts, by primary key: for the alerts of a page, or of a live feed.
    pub async fn triage_of(&self, alerts: &[Coord]) -> Result<HashMap<Coord, Triage>, StoreError> {
        let mut found = HashMap::new();
        for chunk in alerts.chunks(COORDS_PER_STATEMENT) {
            // Driven by the list of alerts, each looked up by primary key (a row-value `IN`
            // would scan the table in SQLite).
            let mut sql = String::from(
                "SELECT t.part, t.off, t.status, t.resolution, t.note, t.triaged_by, t.triaged_at \
                 FROM (VALUES ",
            );
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                match self.dialect {
                    Dialect::Sqlite => sql.push_str("(?, ?)"),
                    Dialect::Postgres => {
                        let _ = write!(sql, "(${}, ${})", 2 * i + 1, 2 * i + 2);
                    }
                }
            }
            sql.push_str(") AS v JOIN triage t ON t.part = v.column1 AND t.off = v.column2");
            let mut query = sqlx::query(&sql);
            for alert in chunk {
                query = query.bind(i64::from(alert.partition)).bind(alert.offset);
            }
            for row in query.fetch_all(&self.pool).await? {
                let (alert, triage) = triage_row(&row)?;
                found.insert(alert, triage);
            }
        }
        Ok(found)
    }
}

fn triage_row(row: &AnyRow) -> Result<(Coord, Triage), StoreError> {
    let partition = row.try_get::<i64, _>(0)? as i32;
    let offset: i64 = row.try_get(1)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        partition,
        offset,
        reason,
    };
    let code: i64 = row.try_get(2)?;
    let status = status_of(code).ok_or_else(|| corrupt(format!("triage status {code}")))?;
    let resolution = row
        .try_get::<Option<String>, _>(3)?
        .map(|text| text.parse::<Resolution>().map_err(corrupt))
        .transpose()?;
    Ok((
        Coord::new(partition, offset),
        Triage {
            status,
            resolution,
            note: row.try_get(4)?,
            triaged_by: row.try_get(5)?,
            triaged_at: row.try_get(6)?,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_own_code_and_open_is_the_rows_default() {
        for status in TriageStatus::ALL {
            assert_eq!(status_of(status_code(status)), Some(status));
        }
        assert_eq!(status_code(TriageStatus::Open), 0);
        assert_eq!(status_of(7), None);
    }

    #[test]
    fn within_a_batch_the_latest_record_of_an_alert_wins_and_bad_ones_are_skipped() {
        let record = |status: &str| {
            format!(r#"{{"alert_id": "alert-1-5", "status": "{status}", "triaged_by": "ops"}}"#)
        };
        let mut batch = TriageBatch::default();
        batch.push(
            0,
            10,
            Some(b"alert-1-5"),
            Some(record("acknowledged").as_bytes()),
        );
        batch.push(0, 11, Some(b"alert-1-5"), Some(record("open").as_bytes()));
        batch.push(2, 3, Some(b"alert-1-6"), None);
        batch.push(2, 4, Some(b"nope"), Some(record("open").as_bytes()));
        batch.push(2, 5, None, Some(record("open").as_bytes()));
        assert_eq!(batch.len(), 5);
        assert_eq!(batch.skipped, 2);
        assert_eq!(
            batch.triage[&Coord::new(1, 5)].as_ref().map(|t| t.status),
            Some(TriageStatus::Open)
        );
        assert_eq!(batch.triage[&Coord::new(1, 6)], None);
        assert_eq!(batch.next_offsets, BTreeMap::from([(0, 12), (2, 6)]));
    }
}
