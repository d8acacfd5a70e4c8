//! The readers' side of the store (the GET endpoints): the order of every list ([`OrderKey`])
//! and its opaque cursor, one event by its input coordinates, and the keyset-paged lists of
//! alerts (filtered by user, code and time) and of a user's events.

use std::fmt::Write as _;
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::Row as _;

use super::triage::status_code;
use super::{Dialect, Store, StoreError};
use crate::domain::response::{AlertRecord, Outcome};
use crate::domain::{Coord, TriageStatus, UserId};

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

    /// Whether the alerts list shows this record ([`is_listed_alert`]).
    pub fn is_listed_alert(&self) -> bool {
        is_listed_alert(&self.record)
    }
}

/// Whether a record is listed as an alert: it raised one and is not a retry's record, which
/// repeats its original's alert (listed once, as the original).
pub fn is_listed_alert(record: &AlertRecord) -> bool {
    record.alert_id().is_some() && record.duplicate_of.is_none()
}

/// The filters of `GET /api/v1/alerts` (and of the live feed): each is a field here, a clause
/// of [`AlertQuery::filter_sql`] for the stored alerts and a line of [`AlertQuery::matches`]
/// for the live ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertQuery {
    pub user_id: Option<UserId>,
    pub code: Option<u32>,
    /// Only alerts of this triage status (open: never triaged, or reopened).
    pub status: Option<TriageStatus>,
    /// Only alerts whose timestamp (ms) is at least this.
    pub since: Option<i64>,
    /// Only alerts whose timestamp (ms) is before this.
    pub until: Option<i64>,
    /// Only alerts strictly older than this position (the cursor).
    pub before: Option<OrderKey>,
    pub limit: usize,
}

impl AlertQuery {
    /// Whether a listed alert passes the filters (the live side of [`AlertQuery::filter_sql`]).
    pub fn matches(&self, stored: &Stored) -> bool {
        let ts = stored.order.timestamp;
        self.user_id
            .is_none_or(|user| stored.record.user_id == Some(user))
            && self
                .code
                .is_none_or(|code| stored.alert_codes().contains(&code))
            && self.since.is_none_or(|since| ts >= since)
            && self.until.is_none_or(|until| ts < until)
            // A record alone carries no triage: an alert as it arrives is open.
            && self
                .status
                .is_none_or(|status| status == crate::domain::TriageStatus::Open)
    }
}

/// A page of results, newest first; `next` is set when there are more.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Arc<Stored>>,
    pub next: Option<OrderKey>,
}

impl Store {
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
        let (sql, args, prefix) = self.filter_sql(query);
        self.page(sql, args, prefix, query.before, query.limit)
            .await
    }

    /// Alerts oldest first, filtered, strictly after `after` (from the first when `None`) and at
    /// most `upto`, `limit` of them: the catch-up of the live feed. `next` is the last item's
    /// position when there may be more.
    pub async fn alerts_ascending(
        &self,
        query: &AlertQuery,
        after: Option<OrderKey>,
        upto: OrderKey,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let (mut sql, mut args, prefix) = self.filter_sql(query);
        if let Some(after) = after {
            let _ = write!(sql, " AND ({prefix}ts, {prefix}part, {prefix}off) > (");
            push_key(&mut sql, &mut args, after);
        }
        let _ = write!(sql, " AND ({prefix}ts, {prefix}part, {prefix}off) <= (");
        push_key(&mut sql, &mut args, upto);
        let _ = write!(
            sql,
            " ORDER BY {prefix}ts ASC, {prefix}part ASC, {prefix}off ASC LIMIT "
        );
        args.push(&mut sql, limit as i64);
        let items = self.fetch(sql, args).await?;
        let next = (items.len() >= limit)
            .then(|| items.last().map(|s| s.order))
            .flatten();
        Ok(Page { items, next })
    }

    /// The `SELECT … WHERE …` of the alerts matching `query`'s filters, its arguments, and the
    /// prefix of the table the order columns are read from.
    fn filter_sql(&self, query: &AlertQuery) -> (String, Args, &'static str) {
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
                args.push(&mut sql, user.get() as i64);
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
            args.push(&mut sql, user.get() as i64);
            sql.push_str(" AND is_alert = 1");
            ""
        } else if query.status.is_some() {
            // The status's rows in order: one range of its index, whatever the others' share.
            sql.push_str(match self.dialect {
                Dialect::Sqlite => {
                    "SELECT part, off, ts, body FROM records INDEXED BY records_triage"
                }
                Dialect::Postgres => "SELECT part, off, ts, body FROM records",
            });
            sql.push_str(" WHERE is_alert = 1");
            ""
        } else {
            sql.push_str("SELECT part, off, ts, body FROM records WHERE is_alert = 1");
            ""
        };
        if let Some(status) = query.status {
            // A constant of the code: the planner sees which index range it is.
            let column = if prefix.is_empty() { "" } else { "r." };
            let _ = write!(sql, " AND {column}triage_status = {}", status_code(status));
        }
        if let Some(since) = query.since {
            let _ = write!(sql, " AND {prefix}ts >= ");
            args.push(&mut sql, since);
        }
        if let Some(until) = query.until {
            let _ = write!(sql, " AND {prefix}ts < ");
            args.push(&mut sql, until);
        }
        (sql, args, prefix)
    }

    /// A user's events newest first, paged.
    pub async fn user_events(
        &self,
        user_id: UserId,
        before: Option<OrderKey>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let mut sql = String::from("SELECT part, off, ts, body FROM records WHERE user_id = ");
        let mut args = Args::default();
        args.push(&mut sql, user_id.get() as i64);
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
            push_key(&mut sql, &mut args, before);
        }
        let _ = write!(
            sql,
            " ORDER BY {prefix}ts DESC, {prefix}part DESC, {prefix}off DESC LIMIT "
        );
        args.push(&mut sql, limit as i64 + 1);
        let mut items = self.fetch(sql, args).await?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|s| s.order)
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn fetch(&self, sql: String, args: Args) -> Result<Vec<Arc<Stored>>, StoreError> {
        let mut query = sqlx::query(&sql);
        for value in args.values {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.into_iter().map(stored).collect()
    }

    /// Rows stored (a count: linear in the size of the store, for tests and benchmarks).
    pub async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM records")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n as u64)
    }
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

/// `ts, part, off)`: the three values of a position, closing the tuple opened by the caller.
fn push_key(sql: &mut String, args: &mut Args, key: OrderKey) {
    args.push(sql, key.timestamp);
    sql.push_str(", ");
    args.push(sql, i64::from(key.partition));
    sql.push_str(", ");
    args.push(sql, key.offset);
    sql.push(')');
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
}
