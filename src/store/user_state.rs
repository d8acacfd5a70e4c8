//! A user as the engine sees them, from the read model (`GET /api/v1/users/{user_id}`): the
//! state topic projected per user (`user_states`: the latest snapshot record of each user, see
//! [`crate::snapshot`]), and the reads that view makes: the user's snapshot, the user's records
//! in input-offset order from its `covers` on (each echoes its input event), how far the
//! records of a partition reach, and the user's counts.
//!
//! The state topic is projected by the one projection loop of the read model
//! ([`super::projection::Projection::spawn_states`], with [`SnapshotBatch`]): one thread, assign mode, `read_committed` (a round's records only once its transaction
//! committed), resumed from the offsets stored in `projection_offsets` (keyed by the state
//! topic's name) in the same transaction as the rows. A user's later record replaces an earlier
//! one, so the table is what compaction keeps. Round markers only move the offsets; an
//! unreadable record is logged and skipped (the user keeps its previous row).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::Row as _;

use super::{Dialect, Store, StoreError, Stored};
use crate::domain::response::AlertRecord;
use crate::domain::UserId;
use crate::snapshot::{decode_record, MARKER_KEY};
use crate::state::StoredState;

/// Rows of one multi-row upsert (5 parameters each).
const ROWS_PER_STATEMENT: usize = 250;

/// A user's latest snapshot record, as projected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSnapshot {
    /// The input partition (= state partition) of the user.
    pub partition: i32,
    /// The record's offset in the state topic.
    pub state_offset: i64,
    /// Exclusive: the state includes every input record of `partition` below it, none from it.
    pub covers: i64,
    pub state: StoredState,
}

/// One snapshot record ready to store.
#[derive(Debug, Clone)]
struct SnapshotRow {
    partition: i32,
    state_offset: i64,
    covers: i64,
    /// The state as JSON (its snapshot form, a version 1 record upgraded).
    state: String,
}

/// State-topic records read and the offsets they bring the projection to, stored in one
/// transaction.
#[derive(Debug, Default)]
pub struct SnapshotBatch {
    /// The latest record of each user in the batch.
    rows: BTreeMap<u64, SnapshotRow>,
    next_offsets: BTreeMap<i32, i64>,
    /// Records skipped as unreadable (their offsets still advance).
    pub skipped: u64,
}

impl SnapshotBatch {
    /// Adds the state-topic record at (`partition`, `offset`): a user's snapshot, or a round
    /// marker (which only moves the offset); anything else is logged, counted and skipped.
    pub fn push(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        self.next_offsets.insert(partition, offset + 1);
        let key = key.and_then(|k| std::str::from_utf8(k).ok());
        if key == Some(MARKER_KEY) {
            return;
        }
        let row = match (key.and_then(UserId::parse), payload) {
            (Some(user_id), Some(payload)) => decode_record(payload).map(|record| {
                let state = serde_json::to_string(&record.state).expect("a state serializes");
                (
                    user_id,
                    SnapshotRow {
                        partition,
                        state_offset: offset,
                        covers: record.covers,
                        state,
                    },
                )
            }),
            (None, _) => Err("no numeric user_id key".to_owned()),
            (_, None) => Err("no value".to_owned()),
        };
        match row {
            Ok((user_id, row)) => {
                self.rows.insert(user_id.get(), row);
            }
            Err(reason) => {
                self.skipped += 1;
                tracing::warn!(partition, offset, error = %reason, "skipping unreadable state record");
            }
        }
    }

    /// Records taken (users in the batch, markers not counted).
    pub fn len(&self) -> usize {
        self.rows.len() + self.skipped as usize
    }

    /// Users whose latest record this batch stores.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn offsets_mut(&mut self) -> &mut BTreeMap<i32, i64> {
        &mut self.next_offsets
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// Everything a user's view reads from the store (see [`Store::user_reads`]).
#[derive(Debug)]
pub struct UserReads {
    /// The user's latest snapshot record, when it is of the user's partition.
    pub snapshot: Option<UserSnapshot>,
    pub counts: UserCounts,
    /// The user's newest record.
    pub last: Option<Arc<Stored>>,
    /// The next input offset of the partition after the records stored (0: none): every record
    /// of the partition below it is stored.
    pub end: i64,
    /// The user's records of the partition from the snapshot's `covers` (else 0) up to `end`,
    /// in input-offset order.
    pub records: Vec<(i64, AlertRecord)>,
}

impl UserReads {
    /// The input offset the view is exact as of: the state includes every record of the
    /// partition below it (the snapshot's `covers` when the records stored end before it).
    pub fn next_offset(&self) -> i64 {
        self.end.max(self.snapshot.as_ref().map_or(0, |s| s.covers))
    }
}

/// What the read model holds of a user's records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCounts {
    /// Records that name the user (accepted or not).
    pub events: u64,
    /// Those that raised an alert (a retry's record not counted twice).
    pub alerts: u64,
}

impl Store {
    /// What a view of `user_id` (of input partition `partition`) reads: the snapshot, the
    /// counts and the newest record at once, then the records to replay onto the snapshot, up to
    /// the partition's end read before them (so that every record below it is among them).
    pub async fn user_reads(
        &self,
        user_id: UserId,
        partition: i32,
    ) -> Result<UserReads, StoreError> {
        let (snapshot, counts, last, end) = tokio::try_join!(
            self.user_snapshot(user_id),
            self.user_counts(user_id),
            self.user_events(user_id, None, 1),
            self.partition_end(partition),
        )?;
        // A snapshot of another partition was written before the events topic had its
        // partitions: it is not the state of this one.
        let snapshot = snapshot.filter(|s| s.partition == partition);
        let covers = snapshot.as_ref().map_or(0, |s| s.covers);
        let end = end.unwrap_or(0);
        let records = if end > covers {
            self.user_records(user_id, partition, covers, end).await?
        } else {
            Vec::new()
        };
        Ok(UserReads {
            snapshot,
            counts,
            last: last.items.into_iter().next(),
            end,
            records,
        })
    }

    /// Stores a batch of state-topic records and the offsets it brings `topic` to, in one
    /// transaction. A user's row is replaced only by a later record of the state topic.
    pub async fn write_snapshots(
        &self,
        topic: &str,
        batch: &SnapshotBatch,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        let rows: Vec<(&u64, &SnapshotRow)> = batch.rows.iter().collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = upsert_sql(self.dialect, chunk.len());
            let mut query = sqlx::query(&sql);
            for (&user_id, row) in chunk {
                query = query
                    .bind(user_id as i64)
                    .bind(i64::from(row.partition))
                    .bind(row.state_offset)
                    .bind(row.covers)
                    .bind(row.state.clone());
            }
            sqlx::Executor::execute(&mut *tx, query).await?;
        }
        for (&part, &next) in &batch.next_offsets {
            sqlx::query(
                "INSERT INTO projection_offsets (topic, part, next_offset) VALUES ($1, $2, $3) \
                 ON CONFLICT (topic, part) DO UPDATE SET next_offset = CASE \
                 WHEN excluded.next_offset > projection_offsets.next_offset \
                 THEN excluded.next_offset ELSE projection_offsets.next_offset END",
            )
            .bind(topic.to_owned())
            .bind(i64::from(part))
            .bind(next)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The user's latest snapshot record, if the state topic has one.
    pub async fn user_snapshot(&self, user_id: UserId) -> Result<Option<UserSnapshot>, StoreError> {
        let Some(row) = sqlx::query(
            "SELECT part, state_off, covers, state FROM user_states WHERE user_id = $1",
        )
        .bind(user_id.get() as i64)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let partition = row.try_get::<i64, _>(0)? as i32;
        let state_offset: i64 = row.try_get(1)?;
        let text: String = row.try_get(3)?;
        let state = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            partition,
            offset: state_offset,
            reason: format!("user {user_id}'s stored state: {e}"),
        })?;
        Ok(Some(UserSnapshot {
            partition,
            state_offset,
            covers: row.try_get(2)?,
            state,
        }))
    }

    /// The user's records of input partition `partition` with input offsets in `[from, until)`,
    /// in input-offset order (their responses: each echoes its input).
    pub async fn user_records(
        &self,
        user_id: UserId,
        partition: i32,
        from: i64,
        until: i64,
    ) -> Result<Vec<(i64, AlertRecord)>, StoreError> {
        // Through the user's index: the partition's offset range may hold everyone's records.
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT off, body FROM records INDEXED BY records_user WHERE user_id = $1 \
                 AND part = $2 AND off >= $3 AND off < $4 ORDER BY off"
            }
            Dialect::Postgres => {
                "SELECT off, body FROM records WHERE user_id = $1 \
                 AND part = $2 AND off >= $3 AND off < $4 ORDER BY off"
            }
        };
        let rows = sqlx::query(sql)
            .bind(user_id.get() as i64)
            .bind(i64::from(partition))
            .bind(from)
            .bind(until)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                let offset: i64 = row.try_get(0)?;
                let body: String = row.try_get(1)?;
                let record =
                    AlertRecord::from_json(body.as_bytes()).map_err(|e| StoreError::Corrupt {
                        partition,
                        offset,
                        reason: e.to_string(),
                    })?;
                Ok((offset, record))
            })
            .collect()
    }

    /// The next input offset of `partition` after the last record stored: every record of that
    /// partition below it is stored (responses come in input-offset order per partition), or
    /// `None` when none is.
    pub async fn partition_end(&self, partition: i32) -> Result<Option<i64>, StoreError> {
        let last: Option<i64> = sqlx::query("SELECT MAX(off) FROM records WHERE part = $1")
            .bind(i64::from(partition))
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(last.map(|off| off + 1))
    }

    /// How many of the user's records the read model holds, and how many raised an alert.
    pub async fn user_counts(&self, user_id: UserId) -> Result<UserCounts, StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT COUNT(*), CAST(COALESCE(SUM(is_alert), 0) AS BIGINT) FROM records \
                 INDEXED BY records_user WHERE user_id = $1"
            }
            Dialect::Postgres => {
                "SELECT COUNT(*), CAST(COALESCE(SUM(is_alert), 0) AS BIGINT) FROM records WHERE user_id = $1"
            }
        };
        let row = sqlx::query(sql)
            .bind(user_id.get() as i64)
            .fetch_one(&self.pool)
            .await?;
        let events: i64 = row.try_get(0)?;
        let alerts: i64 = row.try_get(1)?;
        Ok(UserCounts {
            events: events as u64,
            alerts: alerts as u64,
        })
    }
}

/// `INSERT INTO user_states ... ON CONFLICT (user_id) DO UPDATE ... WHERE later` for `rows`
/// rows (anonymous `?` parameters in SQLite, numbered in PostgreSQL, as in `write.rs`).
fn upsert_sql(dialect: Dialect, rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO user_states (user_id, part, state_off, covers, state) VALUES ");
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..5 {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            match dialect {
                Dialect::Sqlite => sql.push('?'),
                Dialect::Postgres => {
                    let _ = write!(sql, "${n}");
                }
            }
        }
        sql.push(')');
    }
    // A later record of the user replaces it; a record from another partition (the events
    // topic's partitions changed) too.
    sql.push_str(
        " ON CONFLICT (user_id) DO UPDATE SET part = excluded.part, \
         state_off = excluded.state_off, covers = excluded.covers, state = excluded.state \
         WHERE excluded.state_off > user_states.state_off OR excluded.part <> user_states.part",
    );
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upsert_numbers_its_parameters_and_keeps_the_later_record() {
        let sql = upsert_sql(Dialect::Postgres, 2);
        assert!(
            sql.contains("VALUES ($1,$2,$3,$4,$5),($6,$7,$8,$9,$10) ON CONFLICT"),
            "{sql}"
        );
        assert!(upsert_sql(Dialect::Sqlite, 1).contains("VALUES (?,?,?,?,?) ON CONFLICT"));
    }

    #[test]
    fn a_batch_keeps_each_users_latest_record_and_steps_over_markers() {
        let state = StoredState {
            last_time: Some(7),
            ..StoredState::default()
        };
        let record = |covers| crate::snapshot::encode(covers, &state, None);
        let mut batch = SnapshotBatch::default();
        batch.push(1, 10, Some(b"42"), Some(&record(5)));
        batch.push(1, 11, Some(b"42"), Some(&record(9)));
        batch.push(1, 12, Some(MARKER_KEY.as_bytes()), Some(b"{}"));
        batch.push(1, 13, Some(b"nope"), Some(&record(9)));
        batch.push(1, 14, Some(b"43"), Some(b"garbage"));
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[&42].covers, 9);
        assert_eq!(batch.rows[&42].state_offset, 11);
        assert_eq!(batch.skipped, 2);
        assert_eq!(batch.next_offsets[&1], 15);
    }
}
