//! The writer's side of the store (the projection's one connection): an alerts record made a
//! [`Row`], a [`Batch`] of rows stored with the offsets it brings the projection to in one
//! transaction, the offsets read back when the projection resumes, the reset of a store on the
//! embedded broker, and retention by event time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use sqlx::{Executor, Row as _};

use super::{Dialect, OrderKey, Store, StoreError};
use crate::domain::response::{AlertRecord, Outcome};
use crate::domain::Coord;

/// Rows of one multi-row `INSERT` (8 parameters each: far below either database's limit). Its
/// parameters are anonymous (`?`) in SQLite: looking a numbered one up is linear in their number,
/// which made binding quadratic.
const ROWS_PER_STATEMENT: usize = 250;
/// Rows deleted per retention transaction, so that the writer is never held up for long.
const EXPIRE_CHUNK: i64 = 5_000;

/// One alerts record ready to store.
#[derive(Debug, Clone)]
pub struct Row {
    pub order: OrderKey,
    pub user_id: Option<i64>,
    pub is_alert: bool,
    pub codes: Vec<u32>,
    pub event_time: Option<i64>,
    pub body: String,
}

impl Row {
    /// The row of one alerts-topic record (`timestamp` is that record's, in ms), or why not.
    pub fn from_record(payload: &[u8], timestamp: i64) -> Result<Row, String> {
        let record = AlertRecord::from_json(payload).map_err(|e| e.to_string())?;
        let Coord { partition, offset } = record.event_id;
        let body = std::str::from_utf8(payload)
            .map_err(|e| e.to_string())?
            .to_owned();
        Ok(Row::new(
            &record,
            OrderKey {
                timestamp,
                partition,
                offset,
            },
            body,
        ))
    }

    /// The row of a parsed record whose JSON is `body`.
    pub fn new(record: &AlertRecord, order: OrderKey, body: String) -> Row {
        #[derive(Deserialize)]
        struct Time {
            time: Option<u64>,
        }
        let codes = match &record.outcome {
            Outcome::Accepted { alert_codes, .. } => alert_codes.clone(),
            Outcome::Rejected { .. } => Vec::new(),
        };
        let event_time = record
            .event
            .as_deref()
            .and_then(|raw| serde_json::from_str::<Time>(raw.get()).ok())
            .and_then(|t| t.time)
            .and_then(|t| i64::try_from(t).ok());
        Row {
            order,
            user_id: record.user_id.and_then(|u| i64::try_from(u.get()).ok()),
            is_alert: super::query::is_listed_alert(record),
            codes,
            event_time,
            body,
        }
    }
}

/// Rows and the offsets they bring the projection to, written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub rows: Vec<Row>,
    /// Per alerts partition, the next offset to read once this batch is stored.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Records skipped as unreadable (their offsets still advance).
    pub skipped: u64,
}

impl Batch {
    /// Adds the alerts record at (`partition`, `offset`); an unreadable one is logged, counted and
    /// skipped, never fatal.
    pub fn push(&mut self, partition: i32, offset: i64, timestamp: i64, payload: Option<&[u8]>) {
        self.next_offsets.insert(partition, offset + 1);
        let Some(payload) = payload else {
            self.skipped += 1;
            tracing::warn!(
                partition,
                offset,
                "skipping alerts record without a payload"
            );
            return;
        };
        match Row::from_record(payload, timestamp) {
            Ok(row) => self.rows.push(row),
            Err(reason) => {
                self.skipped += 1;
                tracing::warn!(partition, offset, error = %reason, "skipping unreadable alerts record");
            }
        }
    }

    /// Records taken (stored or skipped).
    pub fn len(&self) -> usize {
        self.rows.len() + self.skipped as usize
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// What one retention pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub rows: u64,
    /// The event time below which rows went (`None` when nothing has an event time).
    pub event_time_cutoff: Option<i64>,
}

impl Store {
    /// The stored next offset of each partition of `topic`.
    pub async fn offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, StoreError> {
        let rows = sqlx::query("SELECT part, next_offset FROM projection_offsets WHERE topic = $1")
            .bind(topic.to_owned())
            .fetch_all(&self.pool)
            .await?;
        let mut offsets = BTreeMap::new();
        for row in rows {
            let part: i64 = row.try_get(0)?;
            offsets.insert(part as i32, row.try_get::<i64, _>(1)?);
        }
        Ok(offsets)
    }

    /// Stores a batch of rows and the offsets it brings `topic` to, in one transaction. Rows
    /// already stored are left as they are; offsets never move backwards.
    pub async fn write(&self, topic: &str, batch: &Batch) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for chunk in batch.rows.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql(
                self.dialect,
                "INSERT INTO records (part, off, ts, user_id, is_alert, codes, etime, body) VALUES ",
                8,
                chunk.len(),
            );
            let mut query = sqlx::query(&sql);
            for row in chunk {
                query = query
                    .bind(i64::from(row.order.partition))
                    .bind(row.order.offset)
                    .bind(row.order.timestamp)
                    .bind(row.user_id)
                    .bind(i64::from(row.is_alert))
                    .bind(codes_text(&row.codes))
                    .bind(row.event_time)
                    .bind(row.body.clone());
            }
            tx.execute(query).await?;
        }
        let codes: Vec<(u32, &Row)> = batch
            .rows
            .iter()
            .filter(|r| r.is_alert)
            .flat_map(|r| r.codes.iter().map(move |c| (*c, r)))
            .collect();
        for chunk in codes.chunks(ROWS_PER_STATEMENT) {
            let sql = insert_sql(
                self.dialect,
                "INSERT INTO alert_codes (code, ts, part, off) VALUES ",
                4,
                chunk.len(),
            );
            let mut query = sqlx::query(&sql);
            for (code, row) in chunk {
                query = query
                    .bind(i64::from(*code))
                    .bind(row.order.timestamp)
                    .bind(i64::from(row.order.partition))
                    .bind(row.order.offset);
            }
            tx.execute(query).await?;
        }
        take_triage(&mut tx, &batch.rows).await?;
        store_offsets(&mut tx, topic, &batch.next_offsets).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every row and offset (the embedded broker, whose topics start empty each time).
    pub async fn reset(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for table in [
            "records",
            "alert_codes",
            "triage",
            "projection_offsets",
            "user_states",
        ] {
            tx.execute(format!("DELETE FROM {table}").as_str()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes the rows whose event time is more than `keep_event_time` (in event-time units)
    /// older than the newest event time stored, and the rows without an event time whose alerts
    /// record is more than `keep_ms` older than `now_ms`. In chunks, each its own transaction.
    pub async fn expire(
        &self,
        keep_event_time: i64,
        keep_ms: i64,
        now_ms: i64,
    ) -> Result<Expired, StoreError> {
        let newest: Option<i64> = sqlx::query("SELECT MAX(etime) FROM records")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        let mut expired = Expired::default();
        if let Some(newest) = newest {
            let cutoff = newest.saturating_sub(keep_event_time);
            expired.event_time_cutoff = Some(cutoff);
            expired.rows += self.expire_where("etime < $1", cutoff).await?;
        }
        expired.rows += self
            .expire_where("etime IS NULL AND ts < $1", now_ms.saturating_sub(keep_ms))
            .await?;
        Ok(expired)
    }

    async fn expire_where(&self, condition: &str, bound: i64) -> Result<u64, StoreError> {
        let select = format!(
            "SELECT part, off, ts, codes FROM records WHERE {condition} LIMIT {EXPIRE_CHUNK}"
        );
        let mut deleted = 0;
        loop {
            let rows = sqlx::query(&select)
                .bind(bound)
                .fetch_all(&self.pool)
                .await?;
            if rows.is_empty() {
                return Ok(deleted);
            }
            let mut tx = self.writer.begin().await?;
            for row in &rows {
                let part: i64 = row.try_get(0)?;
                let off: i64 = row.try_get(1)?;
                let ts: i64 = row.try_get(2)?;
                let codes: String = row.try_get(3)?;
                for code in codes.split(',').filter(|c| !c.is_empty()) {
                    let code: i64 = code.parse().unwrap_or(-1);
                    sqlx::query(
                        "DELETE FROM alert_codes WHERE code = $1 AND ts = $2 AND part = $3 AND off = $4",
                    )
                    .bind(code)
                    .bind(ts)
                    .bind(part)
                    .bind(off)
                    .execute(&mut *tx)
                    .await?;
                }
                for table in ["records", "triage"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE part = $1 AND off = $2"))
                        .bind(part)
                        .bind(off)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            deleted += rows.len() as u64;
        }
    }
}

/// Moves each partition's stored next offset of `topic` forward to `next_offsets` (never back),
/// inside the transaction that stores what they cover.
pub(super) async fn store_offsets(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
) -> Result<(), StoreError> {
    for (&part, &next) in next_offsets {
        sqlx::query(
            "INSERT INTO projection_offsets (topic, part, next_offset) VALUES ($1, $2, $3) \
             ON CONFLICT (topic, part) DO UPDATE SET next_offset = CASE \
             WHEN excluded.next_offset > projection_offsets.next_offset \
             THEN excluded.next_offset ELSE projection_offsets.next_offset END",
        )
        .bind(topic.to_owned())
        .bind(i64::from(part))
        .bind(next)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Gives the alerts just inserted the status of a triage stored before them (the triage topic
/// has a consumer of its own, so its record may come first). One statement per input partition
/// of the batch, driven by that partition's range of offsets in the (small) `triage` table.
async fn take_triage(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[Row],
) -> Result<(), StoreError> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.is_alert) {
        let OrderKey {
            partition, offset, ..
        } = row.order;
        let range = ranges.entry(partition).or_insert((offset, offset));
        *range = (range.0.min(offset), range.1.max(offset));
    }
    for (part, (first, last)) in ranges {
        sqlx::query(
            "UPDATE records SET triage_status = (SELECT t.status FROM triage t \
             WHERE t.part = records.part AND t.off = records.off) \
             WHERE (part, off) IN (SELECT part, off FROM triage WHERE part = $1 AND off BETWEEN $2 AND $3)",
        )
        .bind(i64::from(part))
        .bind(first)
        .bind(last)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

fn insert_sql(dialect: Dialect, head: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(head.len() + rows * columns * 6 + 32);
    sql.push_str(head);
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..columns {
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
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

fn codes_text(codes: &[u32]) -> String {
    let mut text = String::new();
    for (i, code) in codes.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let _ = write!(text, "{code}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_insert_parameters_across_rows() {
        assert_eq!(
            insert_sql(Dialect::Postgres, "INSERT INTO t (a, b) VALUES ", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4) ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            insert_sql(Dialect::Sqlite, "INSERT INTO t (a, b) VALUES ", 2, 2),
            "INSERT INTO t (a, b) VALUES (?,?),(?,?) ON CONFLICT DO NOTHING"
        );
    }
}
