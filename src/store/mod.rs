//! The read model behind the GET endpoints: a projection of the alerts topic into a database.
//!
//! - SQLite (embedded, one file under `store.data_dir`, WAL) by default, PostgreSQL when
//!   `store.url` is a `postgres://` URL; both through one `sqlx` pool, with the versioned
//!   migrations of `migrations/<dialect>/` applied at [`Store::open`].
//! - One row per alerts record, keyed by the input coordinates of its event (`ON CONFLICT DO
//!   NOTHING`: replays are idempotent), plus one row per (alert code, alert) for the code filter.
//! - The projection's Kafka offsets (`projection_offsets`, the next offset to read, exclusive of
//!   what is stored) commit in the same transaction as the rows they cover ([`Store::write`]), so a
//!   restarted shim resumes exactly where the database stopped ([`projection`]).
//! - Every list is newest first by [`OrderKey`] (alerts record timestamp, input partition, input
//!   offset) with keyset cursors: a page never shifts under concurrent ingest.
//! - Retention ([`Store::expire`]) deletes by event time, in chunks, in the background.
//!
//! One owner writes (the projection); handlers read through the pool.

pub mod projection;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor, Row as _};

use crate::config::StoreConfig;
use crate::domain::response::{AlertRecord, Outcome};
use crate::domain::Coord;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Rows of one multi-row `INSERT` (8 parameters each: far below either database's limit). Its
/// parameters are anonymous (`?`) in SQLite: looking a numbered one up is linear in their number,
/// which made binding quadratic.
const ROWS_PER_STATEMENT: usize = 250;
/// SQLite's page cache of the writer connection, in KiB: the indexes' pages that inserts touch
/// stay in memory instead of being read again from the WAL (bounded, whatever the store's size).
const SQLITE_WRITER_CACHE_KIB: i64 = 256 * 1024;
/// SQLite's page cache of each reader connection, in KiB.
const SQLITE_READER_CACHE_KIB: i64 = 16 * 1024;
/// Rows deleted per retention transaction, so that the writer is never held up for long.
const EXPIRE_CHUNK: i64 = 5_000;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaLayerError),
    #[error("cannot start the projection thread: {0}")]
    Thread(std::io::Error),
    #[error("stored record at {partition}-{offset} is unreadable: {reason}")]
    Corrupt {
        partition: i32,
        offset: i64,
        reason: String,
    },
}

/// Which SQL the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The order of every list: the alerts record's timestamp (ms), then the input coordinates.
/// Stable across shim instances and restarts, so cursors are too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    pub timestamp: i64,
    pub partition: i32,
    pub offset: i64,
}

impl OrderKey {
    /// The opaque cursor text of this position.
    pub fn cursor(&self) -> String {
        format!(
            "{:x}.{:x}.{:x}",
            self.timestamp, self.partition, self.offset
        )
    }

    /// Parses [`OrderKey::cursor`] text.
    pub fn from_cursor(text: &str) -> Option<OrderKey> {
        let mut parts = text.split('.');
        let timestamp = i64::from_str_radix(parts.next()?, 16).ok()?;
        let partition = i32::from_str_radix(parts.next()?, 16).ok()?;
        let offset = i64::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() || partition < 0 || offset < 0 {
            return None;
        }
        Some(OrderKey {
            timestamp,
            partition,
            offset,
        })
    }
}

/// One response record with its place in the order.
#[derive(Debug)]
pub struct Stored {
    pub order: OrderKey,
    pub record: AlertRecord,
}

impl Stored {
    pub fn coord(&self) -> Coord {
        Coord::new(self.order.partition, self.order.offset)
    }

    pub fn alert_codes(&self) -> &[u32] {
        match &self.record.outcome {
            Outcome::Accepted { alert_codes, .. } => alert_codes,
            Outcome::Rejected { .. } => &[],
        }
    }
}

/// The filters of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertQuery {
    pub user_id: Option<u64>,
    pub code: Option<u32>,
    /// Only alerts whose timestamp (ms) is at least this.
    pub since: Option<i64>,
    /// Only alerts whose timestamp (ms) is before this.
    pub until: Option<i64>,
    /// Only alerts strictly older than this position (the cursor).
    pub before: Option<OrderKey>,
    pub limit: usize,
}

/// A page of results, newest first; `next` is set when there are more.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Stored>>,
    pub next: Option<OrderKey>,
}

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
        let Some(Coord { partition, offset }) = Coord::parse_event_id(&record.event_id) else {
            return Err(format!(
                "event_id {:?} is not an input coordinate",
                record.event_id
            ));
        };
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
            user_id: record.user_id.and_then(|u| i64::try_from(u).ok()),
            // A retry's record repeats its original's alert: listed once, as the original.
            is_alert: record.alert_id().is_some() && record.duplicate_of.is_none(),
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

/// The database behind the read model.
#[derive(Debug, Clone)]
pub struct Store {
    /// Readers (the handlers).
    pool: AnyPool,
    /// The one writer (projection, retention), with a page cache of its own.
    writer: AnyPool,
    dialect: Dialect,
    /// Where it is, without credentials, for logs.
    location: String,
}

impl Store {
    /// Opens (creating when needed) the configured database and applies its migrations.
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let (url, location) = if config.url.is_empty() {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| StoreError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
            let path = config.data_dir.join("read-model.sqlite");
            (
                format!("sqlite://{}?mode=rwc", path.display()),
                path.display().to_string(),
            )
        } else {
            (config.url.clone(), redact(&config.url))
        };
        Store::connect(&url, location, config.max_connections).await
    }

    /// Opens the database at `url` (`sqlite://PATH?mode=rwc` or `postgres://…`).
    pub async fn connect(
        url: &str,
        location: String,
        max_connections: u32,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        let options = AnyConnectOptions::from_str(url)?;
        let writer = pool_options(dialect, 1, SQLITE_WRITER_CACHE_KIB)
            .connect_with(options.clone())
            .await?;
        match dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&writer).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&writer).await?,
        }
        let pool = pool_options(
            dialect,
            max_connections.saturating_sub(1).max(1),
            SQLITE_READER_CACHE_KIB,
        )
        .connect_with(options)
        .await?;
        tracing::info!(store = %location, ?dialect, "read model store open");
        Ok(Store {
            pool,
            writer,
            dialect,
            location,
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Closes the pool (waits for connections in use).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

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

    /// The record of the event at these input coordinates.
    pub async fn event(&self, key: Coord) -> Result<Option<Arc<Stored>>, StoreError> {
        let row =
            sqlx::query("SELECT part, off, ts, body FROM records WHERE part = $1 AND off = $2")
                .bind(i64::from(key.partition))
                .bind(key.offset)
                .fetch_optional(&self.pool)
                .await?;
        row.map(stored).transpose()
    }

    /// Alerts newest first, filtered and paged.
    pub async fn alerts(&self, query: &AlertQuery) -> Result<Page, StoreError> {
        let mut sql = String::new();
        let mut args = Args::default();
        let prefix = if let Some(code) = query.code {
            sql.push_str(
                "SELECT r.part, r.off, r.ts, r.body FROM alert_codes c \
                 JOIN records r ON r.part = c.part AND r.off = c.off WHERE c.code = ",
            );
            args.push(&mut sql, i64::from(code));
            if let Some(user) = query.user_id {
                sql.push_str(" AND r.user_id = ");
                args.push(&mut sql, user as i64);
            }
            "c."
        } else if let Some(user) = query.user_id {
            // The user's rows, newest first, filtered: never a scan of everyone's alerts.
            sql.push_str(match self.dialect {
                Dialect::Sqlite => {
                    "SELECT part, off, ts, body FROM records INDEXED BY records_user"
                }
                Dialect::Postgres => "SELECT part, off, ts, body FROM records",
            });
            sql.push_str(" WHERE user_id = ");
            args.push(&mut sql, user as i64);
            sql.push_str(" AND is_alert = 1");
            ""
        } else {
            sql.push_str("SELECT part, off, ts, body FROM records WHERE is_alert = 1");
            ""
        };
        if let Some(since) = query.since {
            let _ = write!(sql, " AND {prefix}ts >= ");
            args.push(&mut sql, since);
        }
        if let Some(until) = query.until {
            let _ = write!(sql, " AND {prefix}ts < ");
            args.push(&mut sql, until);
        }
        self.page(sql, args, prefix, query.before, query.limit)
            .await
    }

    /// A user's events newest first, paged.
    pub async fn user_events(
        &self,
        user_id: u64,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut sql = String::from("SELECT part, off, ts, body FROM records WHERE user_id = ");
        let mut args = Args::default();
        args.push(&mut sql, user_id as i64);
        self.page(sql, args, "", before, limit).await
    }

    async fn page(
        &self,
        mut sql: String,
        mut args: Args,
        prefix: &str,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if let Some(before) = before {
            let _ = write!(sql, " AND ({prefix}ts, {prefix}part, {prefix}off) < (");
            args.push(&mut sql, before.timestamp);
            sql.push_str(", ");
            args.push(&mut sql, i64::from(before.partition));
            sql.push_str(", ");
            args.push(&mut sql, before.offset);
            sql.push(')');
        }
        let _ = write!(
            sql,
            " ORDER BY {prefix}ts DESC, {prefix}part DESC, {prefix}off DESC LIMIT "
        );
        args.push(&mut sql, limit as i64 + 1);
        let mut query = sqlx::query(&sql);
        for value in args.values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut items = rows
            .into_iter()
            .map(stored)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|s| s.order)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Deletes every row and offset (the embedded broker, whose topics start empty each time).
    pub async fn reset(&self) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for table in ["records", "alert_codes", "projection_offsets"] {
            tx.execute(format!("DELETE FROM {table}").as_str()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rows stored (a count: linear in the size of the store, for tests and benchmarks).
    pub async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM records")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n as u64)
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
                sqlx::query("DELETE FROM records WHERE part = $1 AND off = $2")
                    .bind(part)
                    .bind(off)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            deleted += rows.len() as u64;
        }
    }
}

fn pool_options(dialect: Dialect, connections: u32, cache_kib: i64) -> AnyPoolOptions {
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10));
    if dialect != Dialect::Sqlite {
        return pool;
    }
    pool.after_connect(move |conn, _| {
        Box::pin(async move {
            // WAL: readers never block the writer nor it them. NORMAL: a commit survives a crash
            // of the process (not always of the machine) without an fsync each.
            for pragma in [
                "PRAGMA journal_mode = WAL".to_owned(),
                "PRAGMA synchronous = NORMAL".to_owned(),
                "PRAGMA busy_timeout = 10000".to_owned(),
                format!("PRAGMA cache_size = -{cache_kib}"),
                "PRAGMA temp_store = MEMORY".to_owned(),
                // Pages read through the OS page cache without a copy per read.
                "PRAGMA mmap_size = 1073741824".to_owned(),
            ] {
                conn.execute(pragma.as_str()).await?;
            }
            Ok(())
        })
    })
}

/// Numbered parameters (`$1`, `$2`, …: both dialects read them) and their values.
#[derive(Default)]
struct Args {
    values: Vec<i64>,
}

impl Args {
    fn push(&mut self, sql: &mut String, value: i64) {
        self.values.push(value);
        let _ = write!(sql, "${}", self.values.len());
    }
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

fn stored(row: AnyRow) -> Result<Arc<Stored>, StoreError> {
    let partition = row.try_get::<i64, _>(0)? as i32;
    let offset: i64 = row.try_get(1)?;
    let timestamp: i64 = row.try_get(2)?;
    let body: String = row.try_get(3)?;
    let record = AlertRecord::from_json(body.as_bytes()).map_err(|e| StoreError::Corrupt {
        partition,
        offset,
        reason: e.to_string(),
    })?;
    Ok(Arc::new(Stored {
        order: OrderKey {
            timestamp,
            partition,
            offset,
        },
        record,
    }))
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let key = OrderKey {
            timestamp: 1_700_000_000_000,
            partition: 3,
            offset: 42,
        };
        assert_eq!(OrderKey::from_cursor(&key.cursor()), Some(key));
        for bad in ["", "x", "1.2", "1.2.3.4", "1.-2.3", "g.1.1"] {
            assert_eq!(OrderKey::from_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }

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
