//! The read model's database against real SQLite and a real PostgreSQL (skipped, saying so, only
//! where `USER_MONITOR_TEST_POSTGRES_URL` is not set): idempotent replays, offsets that never go
//! back, filters, cursors that stay stable under concurrent ingest, retention, and the triage of
//! alerts (projected in either order, filtered by status, rebuilt the same).

mod common;

use std::collections::BTreeSet;

use common::store::alert_record;
use user_monitor::domain::{Coord, Resolution, Triage, TriageChange, TriageRecord, TriageStatus};
use user_monitor::state::StoredState;
use user_monitor::store::{
    AlertQuery, Batch, Dialect, OrderKey, SnapshotBatch, Store, TriageBatch,
};

const TOPIC: &str = "alerts";
const TRIAGE: &str = "triage";

/// Runs a test body against SQLite and against PostgreSQL.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (store, _dir) = crate::common::store::sqlite().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(store) = crate::common::store::postgres(stringify!($name)).await else {
                        return;
                    };
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both!(
    replayed_batches_store_each_record_once_and_offsets_never_go_back,
    alerts_filter_by_user_code_and_time_range,
    cursors_are_stable_under_concurrent_ingest,
    retention_deletes_what_it_should_and_nothing_else,
    unreadable_records_are_skipped_and_counted,
    triage_records_are_projected_onto_their_alerts_in_either_order,
    the_status_filter_pages_each_status_newest_first_with_the_other_filters,
    a_store_rebuilt_from_both_topics_in_another_order_agrees,
    retention_takes_the_triage_of_expired_alerts_with_them,
    a_users_reads_start_at_its_latest_snapshot_and_reach_the_partitions_end,
    ascending_pages_cover_a_range_of_positions_in_order_with_the_filters,
);

/// Alerts-topic record `i` of partition `alerts_partition`: answers event (i % 3, i), user
/// i % 7, timestamp 1000 + i, event time i, an alert with code 30 (and 123 when i is even) for
/// every other record.
fn push(batch: &mut Batch, alerts_partition: i32, i: i64) {
    let codes: &[u32] = match i % 4 {
        0 => &[30, 123],
        2 => &[30],
        _ => &[],
    };
    let payload = alert_record((i % 3) as i32, i, (i % 7) as u64, codes, i as u64);
    batch.push(alerts_partition, i, 1000 + i, Some(&payload));
}

fn batch(range: std::ops::Range<i64>) -> Batch {
    let mut batch = Batch::default();
    for i in range {
        push(&mut batch, 0, i);
    }
    batch
}

async fn all_alerts(store: &Store, mut query: AlertQuery) -> Vec<OrderKey> {
    let mut seen = Vec::new();
    loop {
        let page = store.alerts(&query).await.unwrap();
        seen.extend(page.items.iter().map(|s| s.order));
        match page.next {
            Some(next) => query.before = Some(next),
            None => return seen,
        }
    }
}

async fn replayed_batches_store_each_record_once_and_offsets_never_go_back(store: Store) {
    store.write(TOPIC, &batch(0..100)).await.unwrap();
    // A replay of what is stored (a restart before the offsets moved on, another shim).
    store.write(TOPIC, &batch(0..100)).await.unwrap();
    store.write(TOPIC, &batch(50..60)).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 100);
    assert_eq!(store.offsets(TOPIC).await.unwrap()[&0], 100);
    assert!(store.offsets("other").await.unwrap().is_empty());
    let alerts = all_alerts(
        &store,
        AlertQuery {
            limit: 7,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        alerts.len(),
        50,
        "every other record is an alert, listed once"
    );
    let stored = store.event(Coord::new(1, 4)).await.unwrap().unwrap();
    assert_eq!(stored.record.event_id.event_id(), "1-4");
    assert_eq!(stored.order.timestamp, 1004);
    assert!(store.event(Coord::new(0, 4)).await.unwrap().is_none());
}

async fn alerts_filter_by_user_code_and_time_range(store: Store) {
    store.write(TOPIC, &batch(0..200)).await.unwrap();
    let offsets = |keys: Vec<OrderKey>| keys.iter().map(|k| k.offset).collect::<Vec<_>>();
    let by_code = offsets(
        all_alerts(
            &store,
            AlertQuery {
                code: Some(123),
                limit: 10,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        by_code,
        (0..200).rev().filter(|i| i % 4 == 0).collect::<Vec<_>>()
    );
    let by_user_and_code = offsets(
        all_alerts(
            &store,
            AlertQuery {
                code: Some(30),
                user_id: Some(user(3)),
                limit: 3,
                ..Default::default()
            },
        )
        .await,
    );
    let want: Vec<i64> = (0..200)
        .rev()
        .filter(|i| i % 2 == 0 && i % 7 == 3)
        .collect();
    assert_eq!(by_user_and_code, want);
    let by_user = offsets(
        all_alerts(
            &store,
            AlertQuery {
                user_id: Some(user(3)),
                limit: 1000,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(by_user, want);
    let in_range = offsets(
        all_alerts(
            &store,
            AlertQuery {
                since: Some(1010),
                until: Some(1020),
                limit: 2,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(in_range, vec![18, 16, 14, 12, 10]);
    let in_range_by_code = offsets(
        all_alerts(
            &store,
            AlertQuery {
                code: Some(123),
                since: Some(1010),
                until: Some(1020),
                limit: 2,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(in_range_by_code, vec![16, 12]);
    // A user's history: every event, alert or not, newest first, paged.
    let mut before = None;
    let mut history = Vec::new();
    loop {
        let page = store.user_events(user(5), before, 4).await.unwrap();
        history.extend(page.items.iter().map(|s| s.order.offset));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(
        history,
        (0..200).rev().filter(|i| i % 7 == 5).collect::<Vec<_>>()
    );
    assert!(store
        .user_events(user(99), None, 10)
        .await
        .unwrap()
        .items
        .is_empty());
}

async fn cursors_are_stable_under_concurrent_ingest(store: Store) {
    store.write(TOPIC, &batch(0..400)).await.unwrap();
    let before: BTreeSet<i64> = (0..400).filter(|i| i % 2 == 0).collect();
    // Page through while a writer adds newer records.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..20i64 {
                let mut batch = Batch::default();
                for j in 0..20 {
                    let i = 1000 + round * 20 + j;
                    push(&mut batch, 1, i);
                }
                store.write(TOPIC, &batch).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut query = AlertQuery {
        limit: 9,
        ..Default::default()
    };
    let mut seen: Vec<OrderKey> = Vec::new();
    loop {
        let page = store.alerts(&query).await.unwrap();
        seen.extend(page.items.iter().map(|s| s.order));
        match page.next {
            Some(next) => query.before = Some(next),
            None => break,
        }
    }
    writer.await.unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first: no repeats"
    );
    let listed: BTreeSet<i64> = seen
        .iter()
        .filter(|k| k.timestamp < 1400)
        .map(|k| k.offset)
        .collect();
    assert_eq!(listed, before, "nothing that existed was skipped");
}

async fn retention_deletes_what_it_should_and_nothing_else(store: Store) {
    store.write(TOPIC, &batch(0..101)).await.unwrap();
    // Invalid inputs have no event time: they age by their alerts record's time.
    let now_ms = 10_000_000_000;
    let day = 86_400_000;
    let mut invalid = Batch::default();
    for (offset, ts) in [(500, now_ms - 40 * day), (501, now_ms - day)] {
        let payload = format!(
            r#"{{"event_id": "2-{offset}", "error": "invalid JSON", "rejection": "invalid", "event_text": "x"}}"#
        );
        invalid.push(0, offset, ts, Some(payload.as_bytes()));
    }
    store.write(TOPIC, &invalid).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 103);

    // Keep 30 time units behind the newest event time (100): event times 70..=100 stay.
    let expired = store.expire(30, 30 * day, now_ms).await.unwrap();
    assert_eq!(expired.event_time_cutoff, Some(70));
    assert_eq!(expired.rows, 70 + 1);
    assert_eq!(store.count().await.unwrap(), 32);
    for i in 0..101 {
        let kept = store
            .event(Coord::new((i % 3) as i32, i))
            .await
            .unwrap()
            .is_some();
        assert_eq!(kept, i >= 70, "event time {i}");
    }
    assert!(store.event(Coord::new(2, 500)).await.unwrap().is_none());
    assert!(store.event(Coord::new(2, 501)).await.unwrap().is_some());
    // The code index went with the rows.
    let by_code = all_alerts(
        &store,
        AlertQuery {
            code: Some(30),
            limit: 100,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        by_code.iter().map(|k| k.offset).collect::<Vec<_>>(),
        (70..101).rev().filter(|i| i % 2 == 0).collect::<Vec<_>>()
    );
    // Idempotent: nothing more to delete.
    assert_eq!(store.expire(30, 30 * day, now_ms).await.unwrap().rows, 0);
    assert_eq!(store.offsets(TOPIC).await.unwrap()[&0], 502);
}

async fn unreadable_records_are_skipped_and_counted(store: Store) {
    let mut batch = Batch::default();
    batch.push(0, 0, 1, Some(b"not json"));
    batch.push(0, 1, 1, None);
    batch.push(
        0,
        2,
        1,
        Some(br#"{"event_id": "nope", "error": "x", "rejection": "invalid"}"#),
    );
    push(&mut batch, 0, 3);
    assert_eq!(batch.skipped, 3);
    store.write(TOPIC, &batch).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 1);
    assert_eq!(
        store.offsets(TOPIC).await.unwrap()[&0],
        4,
        "past the bad ones"
    );
}

fn user(id: u64) -> user_monitor::domain::UserId {
    user_monitor::domain::UserId::new(id).unwrap()
}

/// The triage topic's records, oldest first: (alert, status, resolution, note, who).
type TriageLine = (
    Coord,
    TriageStatus,
    Option<Resolution>,
    Option<&'static str>,
    &'static str,
);

fn triage(
    status: TriageStatus,
    resolution: Option<Resolution>,
    note: Option<&str>,
    who: &str,
) -> Triage {
    TriageChange::new(status, resolution, note.map(str::to_owned))
        .unwrap()
        .made_by(who, "2026-12-01T10:00:00.000Z".to_owned())
}

/// The triage topic's records as one partition, from `offset` on.
fn triage_batch(lines: &[TriageLine], offset: i64) -> TriageBatch {
    let mut batch = TriageBatch::default();
    for (i, (alert, status, resolution, note, who)) in lines.iter().enumerate() {
        let record = TriageRecord::new(*alert, triage(*status, *resolution, *note, who));
        batch.push(
            0,
            offset + i as i64,
            Some(alert.alert_id().as_bytes()),
            Some(&record.to_json()),
        );
    }
    batch
}

/// The alert of record `i` of [`push`] (an alert for every even `i`).
fn alert(i: i64) -> Coord {
    Coord::new((i % 3) as i32, i)
}

async fn statuses(store: &Store, status: TriageStatus) -> Vec<i64> {
    all_alerts(
        store,
        AlertQuery {
            status: Some(status),
            limit: 3,
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|k| k.offset)
    .collect()
}

use TriageStatus::{Acknowledged, Open, Resolved};

/// Alert 4 acknowledged then resolved, alert 8 acknowledged, alert 12 resolved then reopened,
/// alert 16 acknowledged then cleared by a tombstone.
fn triage_lines() -> Vec<TriageLine> {
    vec![
        (alert(4), Acknowledged, None, None, "ana"),
        (
            alert(8),
            Acknowledged,
            None,
            Some("calling the customer"),
            "ana",
        ),
        (
            alert(4),
            Resolved,
            Some(Resolution::Fraud),
            Some("card stolen"),
            "ops",
        ),
        (
            alert(12),
            Resolved,
            Some(Resolution::Legitimate),
            None,
            "ops",
        ),
        (
            alert(12),
            Open,
            None,
            Some("reopened: wrong customer"),
            "ana",
        ),
        (alert(16), Acknowledged, None, None, "ana"),
    ]
}

/// [`triage_lines`], then the tombstone of alert 16, as the projection reads them.
fn triage_topic() -> TriageBatch {
    let lines = triage_lines();
    let mut batch = triage_batch(&lines, 0);
    batch.push(0, lines.len() as i64, Some(b"alert-1-16"), None);
    batch
}

async fn triage_records_are_projected_onto_their_alerts_in_either_order(store: Store) {
    // Alerts 0..10 first, then the triage topic, then alerts 10..20: alert 12's and 16's triage
    // records are stored before their alerts.
    store.write(TOPIC, &batch(0..10)).await.unwrap();
    store.write_triage(TRIAGE, &triage_topic()).await.unwrap();
    store.write(TOPIC, &batch(10..20)).await.unwrap();
    assert_eq!(store.offsets(TRIAGE).await.unwrap()[&0], 7);

    let found = store
        .triage_of(&[alert(4), alert(8), alert(12), alert(16), alert(18)])
        .await
        .unwrap();
    assert_eq!(
        found.len(),
        3,
        "alert 16 was cleared, alert 18 never triaged"
    );
    assert_eq!(
        found[&alert(4)],
        triage(
            Resolved,
            Some(Resolution::Fraud),
            Some("card stolen"),
            "ops"
        )
    );
    assert_eq!(
        found[&alert(8)].note.as_deref(),
        Some("calling the customer")
    );
    assert_eq!(
        (
            found[&alert(12)].status,
            found[&alert(12)].triaged_by.as_deref()
        ),
        (Open, Some("ana"))
    );
    assert_eq!(statuses(&store, Resolved).await, [4]);
    assert_eq!(statuses(&store, Acknowledged).await, [8]);
    assert_eq!(statuses(&store, Open).await, [18, 16, 14, 12, 10, 6, 2, 0]);

    // A replay of the triage topic (a restart before its offsets moved on) changes nothing.
    store.write_triage(TRIAGE, &triage_topic()).await.unwrap();
    assert_eq!(store.triage_of(&[alert(4)]).await.unwrap().len(), 1);
    assert_eq!(statuses(&store, Resolved).await, [4]);
    assert_eq!(store.offsets(TRIAGE).await.unwrap()[&0], 7);
}

async fn the_status_filter_pages_each_status_newest_first_with_the_other_filters(store: Store) {
    store.write(TOPIC, &batch(0..200)).await.unwrap();
    // Every alert whose offset is a multiple of 6 resolved, of 10 (not 6) acknowledged.
    let lines: Vec<TriageLine> = (0..200)
        .filter(|i| i % 2 == 0)
        .filter_map(|i| match (i % 6, i % 10) {
            (0, _) => Some((alert(i), Resolved, Some(Resolution::Duplicate), None, "ops")),
            (_, 0) => Some((alert(i), Acknowledged, None, None, "ops")),
            _ => None,
        })
        .collect();
    store
        .write_triage(TRIAGE, &triage_batch(&lines, 0))
        .await
        .unwrap();
    let resolved = |i: &i64| i % 6 == 0;
    let acknowledged = |i: &i64| i % 10 == 0 && i % 6 != 0;
    let alerts = || (0..200i64).rev().filter(|i| i % 2 == 0);
    assert_eq!(
        statuses(&store, Resolved).await,
        alerts().filter(resolved).collect::<Vec<_>>()
    );
    assert_eq!(
        statuses(&store, Acknowledged).await,
        alerts().filter(acknowledged).collect::<Vec<_>>()
    );
    assert_eq!(
        statuses(&store, Open).await,
        alerts()
            .filter(|i| !resolved(i) && !acknowledged(i))
            .collect::<Vec<_>>()
    );
    let offsets = |keys: Vec<OrderKey>| keys.iter().map(|k| k.offset).collect::<Vec<_>>();
    let open_of_user_3 = offsets(
        all_alerts(
            &store,
            AlertQuery {
                status: Some(Open),
                user_id: Some(user(3)),
                limit: 2,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        open_of_user_3,
        alerts()
            .filter(|i| i % 7 == 3 && !resolved(i) && !acknowledged(i))
            .collect::<Vec<_>>()
    );
    let resolved_with_123_in_range = offsets(
        all_alerts(
            &store,
            AlertQuery {
                status: Some(Resolved),
                code: Some(123),
                since: Some(1050),
                until: Some(1150),
                limit: 2,
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(
        resolved_with_123_in_range,
        (50..150)
            .rev()
            .filter(|i| i % 4 == 0 && resolved(i))
            .collect::<Vec<_>>()
    );
}

/// Every alert's triage and the lists by status, as a store shows them.
async fn triage_state(store: &Store) -> (Vec<(Coord, Triage)>, [Vec<i64>; 3]) {
    let alerts: Vec<Coord> = (0..40).filter(|i| i % 2 == 0).map(alert).collect();
    let mut triage: Vec<(Coord, Triage)> = store
        .triage_of(&alerts)
        .await
        .unwrap()
        .into_iter()
        .collect();
    triage.sort_by_key(|(alert, _)| *alert);
    (
        triage,
        [
            statuses(store, Open).await,
            statuses(store, Acknowledged).await,
            statuses(store, Resolved).await,
        ],
    )
}

async fn a_store_rebuilt_from_both_topics_in_another_order_agrees(store: Store) {
    // As a shim projects them live: the alerts, and the triage records as people make them.
    store.write(TOPIC, &batch(0..20)).await.unwrap();
    let mut topic = triage_topic();
    store.write_triage(TRIAGE, &topic).await.unwrap();
    store.write(TOPIC, &batch(20..40)).await.unwrap();
    let late = triage_batch(
        &[(alert(30), Resolved, Some(Resolution::Fraud), None, "ops")],
        7,
    );
    store.write_triage(TRIAGE, &late).await.unwrap();
    let live = triage_state(&store).await;
    assert_eq!(live.1[2], [30, 4], "{live:?}");

    // A fresh store fed from the beginning of both topics: the whole triage topic first, then
    // the alerts; also with the topic compacted (only the latest record of each alert).
    let (rebuilt, _dir) = fresh_like(&store, "rebuilt").await;
    let mut whole = triage_topic();
    whole.push(
        0,
        7,
        Some(b"alert-0-30"),
        Some(
            &TriageRecord::new(
                alert(30),
                triage(Resolved, Some(Resolution::Fraud), None, "ops"),
            )
            .to_json(),
        ),
    );
    rebuilt.write_triage(TRIAGE, &whole).await.unwrap();
    rebuilt.write(TOPIC, &batch(0..40)).await.unwrap();
    assert_eq!(triage_state(&rebuilt).await, live);

    let (compacted, _dir) = fresh_like(&store, "compacted").await;
    topic.triage.retain(|_, t| t.is_some());
    topic
        .triage
        .insert(alert(30), late.triage[&alert(30)].clone());
    compacted.write(TOPIC, &batch(0..40)).await.unwrap();
    compacted.write_triage(TRIAGE, &topic).await.unwrap();
    assert_eq!(triage_state(&compacted).await, live);
}

/// A fresh store of the same database as `store`.
async fn fresh_like(store: &Store, name: &str) -> (Store, Option<tempfile::TempDir>) {
    match store.dialect() {
        Dialect::Sqlite => {
            let (store, dir) = common::store::sqlite().await;
            (store, Some(dir))
        }
        Dialect::Postgres => (
            common::store::postgres(name)
                .await
                .expect("the server of the first store"),
            None,
        ),
    }
}

async fn retention_takes_the_triage_of_expired_alerts_with_them(store: Store) {
    store.write(TOPIC, &batch(0..101)).await.unwrap();
    let lines = [
        (alert(40), Resolved, Some(Resolution::Fraud), None, "ops"),
        (alert(90), Acknowledged, None, None, "ops"),
    ];
    store
        .write_triage(TRIAGE, &triage_batch(&lines, 0))
        .await
        .unwrap();
    // Event times 70..=100 stay.
    store.expire(30, 86_400_000, 10_000_000_000).await.unwrap();
    let left = store.triage_of(&[alert(40), alert(90)]).await.unwrap();
    assert_eq!(left.keys().copied().collect::<Vec<_>>(), [alert(90)]);
    assert_eq!(statuses(&store, Acknowledged).await, [90]);
    assert!(statuses(&store, Resolved).await.is_empty());
}

/// What a user's view reads (`GET /api/v1/users/{id}`): the user's latest state-topic record (a
/// later one replaces an earlier one, never the reverse; round markers only move the offsets; a
/// record of another partition is not this partition's state), then the user's records of its
/// partition from the snapshot's `covers` up to the partition's end, by input offset, with the
/// counts and the newest record.
async fn a_users_reads_start_at_its_latest_snapshot_and_reach_the_partitions_end(store: Store) {
    let user = user_monitor::domain::UserId::new(4).unwrap();
    // Input partition 1, offsets 0..20: user 4 at even offsets (an alert at every fourth), 9 at
    // odd ones.
    let mut batch = Batch::default();
    for i in 0..20i64 {
        let (id, codes): (u64, &[u32]) = match i % 4 {
            0 => (4, &[30]),
            2 => (4, &[]),
            _ => (9, &[]),
        };
        let payload = alert_record(1, i, id, codes, i as u64);
        batch.push(0, i, 1000 + i, Some(&payload));
    }
    store.write(TOPIC, &batch).await.unwrap();
    let offsets = |reads: &user_monitor::store::UserReads| {
        reads.records.iter().map(|(o, _)| *o).collect::<Vec<_>>()
    };
    let reads = store.user_reads(user, 1).await.unwrap();
    assert_eq!(reads.snapshot, None);
    assert_eq!(offsets(&reads), (0..20).step_by(2).collect::<Vec<_>>());
    assert_eq!((reads.counts.events, reads.counts.alerts), (10, 5));
    assert_eq!(reads.last.as_ref().unwrap().coord(), Coord::new(1, 18));
    assert_eq!((reads.end, reads.next_offset()), (20, 20));

    let state = |time| StoredState {
        last_time: Some(time),
        ..StoredState::default()
    };
    let record = |covers, time| user_monitor::snapshot::encode(covers, &state(time), None);
    let mut snapshots = SnapshotBatch::default();
    snapshots.push(1, 0, Some(b"4"), Some(&record(7, 6)));
    snapshots.push(
        1,
        1,
        Some(b"~round"),
        Some(br#"{"v":2,"round":true,"covers":7}"#),
    );
    snapshots.push(1, 2, Some(b"4"), Some(&record(11, 10)));
    store.write_snapshots("state", &snapshots).await.unwrap();
    let reads = store.user_reads(user, 1).await.unwrap();
    let snapshot = reads.snapshot.as_ref().unwrap();
    assert_eq!((snapshot.covers, snapshot.state_offset), (11, 2));
    assert_eq!(snapshot.state, state(10));
    assert_eq!(offsets(&reads), vec![12, 14, 16, 18]);
    assert_eq!(reads.next_offset(), 20);

    // An older record read again (a replay of the topic) changes nothing.
    let mut older = SnapshotBatch::default();
    older.push(1, 0, Some(b"4"), Some(&record(7, 6)));
    store.write_snapshots("state", &older).await.unwrap();
    assert_eq!(
        store
            .user_reads(user, 1)
            .await
            .unwrap()
            .snapshot
            .unwrap()
            .covers,
        11
    );
    assert_eq!(
        store
            .offsets("state")
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        vec![(1, 3)]
    );

    // A snapshot ahead of the records stored: nothing to replay, as of its covers.
    let mut ahead = SnapshotBatch::default();
    ahead.push(1, 3, Some(b"4"), Some(&record(25, 30)));
    store.write_snapshots("state", &ahead).await.unwrap();
    let reads = store.user_reads(user, 1).await.unwrap();
    assert!(reads.records.is_empty());
    assert_eq!(reads.next_offset(), 25);

    // A record of another partition replaces the row, and is not partition 1's state.
    let mut moved = SnapshotBatch::default();
    moved.push(3, 0, Some(b"4"), Some(&record(2, 1)));
    store.write_snapshots("state", &moved).await.unwrap();
    let reads = store.user_reads(user, 1).await.unwrap();
    assert_eq!(reads.snapshot, None);
    assert_eq!(offsets(&reads).len(), 10);
}

/// The live feed's catch-up: oldest first, strictly after one position and at most another,
/// filtered as the list, in pages that continue where the last ended.
async fn ascending_pages_cover_a_range_of_positions_in_order_with_the_filters(store: Store) {
    store.write(TOPIC, &batch(0..100)).await.unwrap();
    let descending = all_alerts(
        &store,
        AlertQuery {
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    let mut every: Vec<OrderKey> = descending.into_iter().rev().collect();
    let (after, upto) = (every[3], every[40]);
    every.retain(|k| *k > after && *k <= upto);
    for query in [
        AlertQuery::default(),
        AlertQuery {
            code: Some(123),
            ..Default::default()
        },
        AlertQuery {
            user_id: user_monitor::domain::UserId::new(3),
            since: Some(1010),
            ..Default::default()
        },
    ] {
        let mut seen = Vec::new();
        let mut from = Some(after);
        loop {
            let page = store.alerts_ascending(&query, from, upto, 4).await.unwrap();
            assert!(query_matches_all(&query, &page.items), "{query:?}");
            seen.extend(page.items.iter().map(|s| s.order));
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        let want: Vec<OrderKey> = {
            let mut stored = Vec::new();
            for key in &every {
                let found = store
                    .event(Coord::new(key.partition, key.offset))
                    .await
                    .unwrap()
                    .unwrap();
                if query.matches(&found) {
                    stored.push(*key);
                }
            }
            stored
        };
        assert!(!want.is_empty(), "{query:?}");
        assert_eq!(seen, want, "{query:?}");
    }
}

fn query_matches_all(
    query: &AlertQuery,
    items: &[std::sync::Arc<user_monitor::store::Stored>],
) -> bool {
    items
        .iter()
        .all(|s| s.is_listed_alert() && query.matches(s))
}
