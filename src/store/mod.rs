//! The read model behind the GET endpoints: a projection of the alerts topic into a database.
//!
//! - SQLite (in-process, one file under `store.data_dir`, WAL) by default, PostgreSQL when
//!   `store.url` is a `postgres://` URL; both through one `sqlx` pool, with the versioned
//!   migrations of `migrations/<dialect>/` applied at [`Store::open`].
//! - One row per alerts record, keyed by the input coordinates of its event (`ON CONFLICT DO
//!   NOTHING`: replays are idempotent), plus one row per (alert code, alert) for the code filter.
//! - One row per triaged alert (the triage topic's latest record of it), its status also on the
//!   alert's row for the status filter.
//! - The projection's Kafka offsets (`projection_offsets`, the next offset to read, exclusive of
//!   what is stored) commit in the same transaction as the rows they cover ([`Store::write`]), so a
//!   restarted shim resumes exactly where the database stopped ([`projection`]).
//! - Every list is newest first by [`OrderKey`] (alerts record timestamp, input partition, input
//!   offset) with keyset cursors: a page never shifts under concurrent ingest.
//! - Retention ([`Store::expire`]) deletes by event time, in chunks, in the background.
//!
//! One owner writes (the projection); handlers read through the pool.
//!
//! - `mod.rs`: the [`Store`] handle: opening the database (its dialect, the migrations, the
//!   reader pool and the one writer connection with their SQLite settings) and closing it;
//! - `write.rs`: the writer's side: alerts records made [`Row`]s, a [`Batch`] of them stored
//!   with its offsets in one transaction, the offsets read back at resume, reset, retention;
//! - `query.rs`: the readers' side: the [`OrderKey`] and its cursor, one event, the keyset-paged
//!   lists of alerts (also by triage status) and of a user's events;
//! - `triage.rs`: the triage topic projected into the `triage` table and onto the alerts' rows
//!   ([`TriageBatch`]), and the triage of a page of alerts ([`Store::triage_of`]);
//! - `replay.rs`: the stored records of a range of event time streamed in the processor's
//!   order, for a backtest;
//! - [`projection`]: the consumers that feed the store (alerts, triage), and the retention task;
//! - [`user_state`]: the state topic projected per user (the latest snapshot record of each),
//!   and the reads of `GET /api/v1/users/{id}` (a user's records from an offset, counts).

pub mod projection;
mod query;
mod replay;
mod triage;
pub mod user_state;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

pub use query::{is_listed_alert, AlertQuery, OrderKey, Page, Stored};
pub use replay::{EventTimes, REPLAY_BATCH};
pub use triage::TriageBatch;
pub use user_state::{SnapshotBatch, UserCounts, UserReads, UserSnapshot};
pub use write::{Batch, Expired, Row};

use crate::config::StoreConfig;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// SQLite's page cache of the writer connection, in KiB: the indexes' pages that inserts touch
/// stay in memory instead of being read again from the WAL (bounded, whatever the store's size).
const SQLITE_WRITER_CACHE_KIB: i64 = 256 * 1024;
/// SQLite's page cache of each reader connection, in KiB.
const SQLITE_READER_CACHE_KIB: i64 = 16 * 1024;

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
    #[error("backtest over the stored events: {0}")]
    Backtest(String),
}

/// Which SQL the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
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
    fn redacts_passwords_only() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
