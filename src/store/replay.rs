//! The read model as a backtest's input (`POST /api/v1/rules/backtest`): the stored records of
//! a range of event time, read in the order the processor read their events (partition, then
//! offset), page by page, into a [`Replay`] on a blocking thread; and where the latest N events
//! start.

use sqlx::Row as _;
use tokio::sync::mpsc;

use super::{Dialect, Store, StoreError};
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

/// Records per page read from the database: one query, one string, one message to the replay.
pub const REPLAY_BATCH: usize = 4096;

/// What separates the records of a page: the ASCII record separator, which JSON text never
/// holds unescaped (so no record contains it).
const SEPARATOR: u8 = 0x1e;

impl Store {
    /// `candidate` against `baseline` over the stored records of `range` and its warm-up, in
    /// the processor's order, each event at the risk it was judged at (see
    /// [`crate::backtest::Replay::push_record`]), with the first `samples` differences
    /// explained: the database reads the pages while a blocking thread replays them.
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
        let (tx, mut rx) = mpsc::channel::<String>(4);
        let replay = tokio::task::spawn_blocking(move || {
            // Each record carries the level its event was judged at: no profiles needed.
            let profiles = Profiles::default();
            let mut replay = Replay::new(
                &baseline, &candidate, &bounds, &profiles, range, samples, None,
            );
            while let Some(page) = rx.blocking_recv() {
                let page = page.as_bytes();
                let mut start = 0;
                for end in memchr::memchr_iter(SEPARATOR, page).chain([page.len()]) {
                    replay.push_record(&page[start..end])?;
                    start = end + 1;
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

    /// Sends the bodies (alerts records, as projected) of the records of `times` to `out`, in
    /// partition then offset order, a page of up to [`REPLAY_BATCH`] at a time joined by
    /// [`SEPARATOR`] in the database (one row, one string per page: the cost of a row crossing
    /// from the database's thread is paid per page, not per record). Pages are keyset by
    /// partition and offset, so each is a seek on the primary key; memory stays flat whatever
    /// the store's size, and the replay works while the next page is read. Stops early, without
    /// an error, when `out` is closed. Returns how many records were sent.
    async fn stream_records(
        &self,
        times: EventTimes,
        out: mpsc::Sender<String>,
    ) -> Result<u64, StoreError> {
        // SQLite joins the page's rows in the order its subquery delivers them (by offset): an
        // `ORDER BY` in the aggregate would sort them again, through a temporary b-tree. The
        // replay refuses records out of offset order, so a page joined otherwise would be an
        // error, never a wrong answer.
        let joined = match self.dialect {
            Dialect::Sqlite => "group_concat(body, char(30))",
            Dialect::Postgres => "string_agg(body, chr(30) ORDER BY off)",
        };
        let mut sql = format!(
            "SELECT {joined}, max(off), count(*) FROM \
             (SELECT off, body FROM records WHERE part = $1 AND off > $2"
        );
        let mut bounds = Vec::new();
        for (condition, bound) in [("etime >=", times.from), ("etime <=", times.to)] {
            if let Some(value) = bound {
                bounds.push(value);
                sql.push_str(&format!(" AND {condition} ${}", bounds.len() + 2));
            }
        }
        sql.push_str(&format!(" ORDER BY off LIMIT ${}) page", bounds.len() + 3));
        let mut sent = 0u64;
        let mut partition = -1i64;
        while let Some(row) =
            sqlx::query("SELECT part FROM records WHERE part > $1 ORDER BY part LIMIT 1")
                .bind(partition)
                .fetch_optional(&self.pool)
                .await?
        {
            partition = row.try_get(0)?;
            let mut after = -1i64;
            loop {
                let mut page = sqlx::query(&sql).bind(partition).bind(after);
                for &bound in &bounds {
                    page = page.bind(bound);
                }
                let row = page.bind(REPLAY_BATCH as i64).fetch_one(&self.pool).await?;
                let count: i64 = row.try_get(2)?;
                if count == 0 {
                    break;
                }
                after = row.try_get(1)?;
                sent += count as u64;
                if out.send(row.try_get::<String, _>(0)?).await.is_err() {
                    return Ok(sent);
                }
                if count < REPLAY_BATCH as i64 {
                    break;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backtest::{run, InputFormat, Report};
    use crate::domain::{AlertCodes, AlertRecord, Coord, Risk, UserId};
    use crate::store::Batch;

    /// Two partitions of several pages each, written out of order: the store's replay reads
    /// every record of the range (and its warm-up) once, in partition then offset order, and
    /// answers as the command line's replay of the same records in that order.
    #[tokio::test]
    async fn pages_replay_every_record_once_in_partition_then_offset_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Settings::defaults().store;
        config.data_dir = dir.path().to_owned();
        let store = Store::open(&config).await.unwrap();
        let per_partition = REPLAY_BATCH as i64 * 2 + 17;
        let record = |partition: i64, offset: i64| {
            let user = (offset % 50) * 2 + partition;
            let kind = if offset % 3 == 0 {
                "withdraw"
            } else {
                "deposit"
            };
            let event = format!(
                r#"{{"type": "{kind}", "amount": "{}.5", "user_id": {user}, "time": {offset}}}"#,
                20 + offset % 90
            );
            let at = Coord::new(partition as i32, offset);
            let user = UserId::new(user as u64).unwrap();
            let risk = if user.get() % 7 == 0 {
                Risk::High
            } else {
                Risk::Medium
            };
            AlertRecord::accepted(at, user, &AlertCodes::default(), risk, event.as_bytes())
                .to_json()
        };
        let mut ordered = Vec::new();
        for partition in [1i64, 0] {
            let mut batch = Batch::default();
            for offset in 0..per_partition {
                batch.push(
                    partition as i32,
                    offset,
                    1_000 + offset,
                    Some(&record(partition, offset)),
                );
            }
            store.write("alerts", &batch).await.unwrap();
        }
        for partition in [0i64, 1] {
            for offset in 0..per_partition {
                ordered.extend(record(partition, offset));
                ordered.push(b'\n');
            }
        }
        let bounds = crate::config::Settings::defaults().rule_bounds();
        let baseline = RuleSet::default_set();
        let candidate = RuleSet::from_json(
            r#"{"version": "c", "rule": [
                {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "60"},
                {"code": 123, "kind": "window_sum", "on": "deposit", "window": "20s", "amount": "150"}
            ]}"#,
            &bounds,
        )
        .unwrap();
        let profiles = Profiles::default();
        let replayed = |range: Range| {
            let replay = Replay::new(&baseline, &candidate, &bounds, &profiles, range, 0, None);
            run(ordered.as_slice(), InputFormat::Records, replay)
                .unwrap()
                .report
        };
        let comparable = |report: Report| Report {
            lines: 0,
            skipped: 0,
            ..report
        };
        for (from, to) in [(None, None), (Some(5_000), Some(8_000))] {
            let range = Range {
                from,
                to,
                warm_up: 1_000,
            };
            let got = store
                .backtest(baseline.clone(), candidate.clone(), bounds, range, 0)
                .await
                .unwrap()
                .report;
            let want = replayed(range);
            assert!(want.events_changed > 100, "{want:?}");
            assert_eq!(comparable(got.clone()), comparable(want), "{range:?}");
            let read = match from {
                None => 2 * per_partition as u64,
                // Offsets are times here: 4,000..=8,000 in each partition.
                Some(_) => 2 * 4_001,
            };
            assert_eq!(got.lines, read, "{range:?}");
        }
    }
}
