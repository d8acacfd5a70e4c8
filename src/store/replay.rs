//! The read model as a backtest's input (`POST /api/v1/rules/backtest`): the stored records of
//! a range of event time, streamed in the order the processor read their events (partition,
//! then offset) into a [`Replay`] on a blocking thread, and where the latest N events start.

use futures::TryStreamExt;
use sqlx::Row as _;
use tokio::sync::mpsc;

use super::{Store, StoreError};
use crate::backtest::{Outcome, Range, Replay};
use crate::profiles::Profiles;
use crate::rule_set::{Bounds, RuleSet};

/// Which stored records a replay reads: those whose event's `time` is within `from..=to` (each
/// bound optional; with neither, every record, those of inputs that were not valid events
/// included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTimes {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Records sent per message from the database's reader to the replay.
pub const REPLAY_BATCH: usize = 1024;

impl Store {
    /// `candidate` against `baseline` over the stored records of `range` and its warm-up, in
    /// the processor's order, each event at the risk it was judged at (see
    /// [`crate::backtest::Replay::push_record`]), with the first `samples` differences
    /// explained: the database streams the rows while a blocking thread replays them.
    pub async fn backtest(
        &self,
        baseline: RuleSet,
        candidate: RuleSet,
        bounds: Bounds,
        range: Range,
        samples: usize,
    ) -> Result<Outcome, StoreError> {
        let times = EventTimes {
            from: range
                .replay_from()
                .map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
            to: range.to.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
        };
        let (tx, mut rx) = mpsc::channel::<Vec<String>>(4);
        let replay = tokio::task::spawn_blocking(move || {
            // Each record carries the level its event was judged at: no profiles needed.
            let profiles = Profiles::default();
            let mut replay = Replay::new(
                &baseline, &candidate, &bounds, &profiles, range, samples, None,
            );
            while let Some(batch) = rx.blocking_recv() {
                for record in &batch {
                    replay.push_record(record.as_bytes())?;
                }
            }
            replay.finish()
        });
        let streamed = self.stream_records(times, tx).await;
        let outcome = replay
            .await
            .map_err(|e| StoreError::Backtest(format!("the replay stopped: {e}")))?
            .map_err(|e| StoreError::Backtest(e.to_string()))?;
        streamed?;
        Ok(outcome)
    }

    /// Streams the bodies (alerts records, as projected) of the records of `times` to `out`, in
    /// partition then offset order, [`REPLAY_BATCH`] at a time: memory stays flat whatever the
    /// store's size, and the reader works while the rows are read. Stops early, without an
    /// error, when `out` is closed. Returns how many records were sent.
    async fn stream_records(
        &self,
        times: EventTimes,
        out: mpsc::Sender<Vec<String>>,
    ) -> Result<u64, StoreError> {
        let mut sql = String::from("SELECT body FROM records");
        let mut values = Vec::new();
        for (condition, bound) in [("etime >=", times.from), ("etime <=", times.to)] {
            if let Some(value) = bound {
                values.push(value);
                let glue = if values.len() == 1 { " WHERE" } else { " AND" };
                sql.push_str(&format!("{glue} {condition} ${}", values.len()));
            }
        }
        sql.push_str(" ORDER BY part, off");
        let mut query = sqlx::query(&sql);
        for value in values {
            query = query.bind(value);
        }
        let mut rows = query.fetch(&self.pool);
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        let mut sent = 0u64;
        while let Some(row) = rows.try_next().await? {
            batch.push(row.try_get::<String, _>(0)?);
            if batch.len() == REPLAY_BATCH {
                sent += batch.len() as u64;
                let full = std::mem::replace(&mut batch, Vec::with_capacity(REPLAY_BATCH));
                if out.send(full).await.is_err() {
                    return Ok(sent);
                }
            }
        }
        sent += batch.len() as u64;
        if !batch.is_empty() {
            let _ = out.send(batch).await;
        }
        Ok(sent)
    }

    /// The event time from which the latest `n` stored events (by event time) start: the `n`-th
    /// latest; `None` when fewer than `n` are stored (then every one is among them).
    pub async fn latest_events_start(&self, n: u64) -> Result<Option<i64>, StoreError> {
        let offset = i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX);
        let row = sqlx::query(
            "SELECT etime FROM records WHERE etime IS NOT NULL ORDER BY etime DESC LIMIT 1 OFFSET $1",
        )
        .bind(offset)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }
}
