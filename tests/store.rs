//! The read model's database against real SQLite and a real PostgreSQL (skipped, saying so, only
//! where `USER_MONITOR_TEST_POSTGRES_URL` is not set): idempotent replays, offsets that never go
//! back, filters, cursors that stay stable under concurrent ingest, and retention.

mod common;

use std::collections::BTreeSet;

use common::store::alert_record;
use user_monitor::domain::Coord;
use user_monitor::store::{AlertQuery, Batch, OrderKey, Store};

const TOPIC: &str = "alerts";

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
