//! Retries never double-count (CONTRACT §7), on a real broker with real processes: an event produced
//! again with the same `idempotency-key` header (as the shim does for `Idempotency-Key`, and as
//! producers writing to Kafka directly do) is answered with the original's answer and
//! `duplicate_of`, and not applied again — across a kill -9 of the processor (the original then
//! replayed), across a snapshot and restore, and under both guarantees; a key reused for another
//! event is an error; the memory is bounded per user.

mod common;

use std::time::Duration;

use common::events::{event, event_id};
use common::kafka::{Tail, World};
use common::process::{kill9, terminate, wait_exit};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Produces one event keyed by its user, with an idempotency key; returns its coordinates.
fn send(world: &World, user: u64, value: &[u8], key: Option<&str>) -> (i32, i64) {
    let producer: FutureProducer = common::kafka::client(&[
        ("partitioner", "murmur2_random"),
        ("enable.idempotence", "true"),
    ])
    .create()
    .unwrap();
    let topic = world.events();
    let user_key = user.to_string();
    let mut record = FutureRecord::to(&topic).key(&user_key).payload(value);
    if let Some(key) = key {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: "idempotency-key",
            value: Some(key),
        }));
    }
    let delivered = futures::executor::block_on(producer.send(record, Duration::from_secs(10)))
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    producer.flush(Duration::from_secs(10)).unwrap();
    (delivered.partition, delivered.offset)
}

fn answer(tail: &mut Tail, at: (i32, i64)) -> serde_json::Value {
    tail.expect_response(at, Duration::from_secs(60), String::new)
}

/// The story of one user across a kill -9 before any snapshot (the original is replayed, its
/// answer read back from its response), then a snapshot and a restart (the key restored from the
/// snapshot): every retry is the original's answer, and the deposits count once.
fn retries_across_crashes_count_once(guarantee: &str) {
    let mut world = World::new(&format!("idem-{}", &guarantee[..3]), 2);
    world.set("USER_MONITOR__PROCESSING__GUARANTEE", guarantee);
    world.set("USER_MONITOR__SNAPSHOT__INTERVAL", "1s");
    world.create_topics();
    let mut processor = world.spawn_processor(0);
    let mut tail = Tail::new(&world.bootstrap(), &world.alerts());
    let user = 7u64;

    // 110 + 60 = 170 stays under the deposit window's 200; counted twice it would not.
    let first = event("deposit", "110", user, 1);
    let original = send(&world, user, &first, Some("pay-1"));
    assert_eq!(
        answer(&mut tail, original)["alert_codes"],
        serde_json::json!([])
    );

    // kill -9 before any snapshot: the restart replays the original (without answering it).
    kill9(&mut processor);
    let mut processor = world.spawn_processor(0);
    let retry = send(&world, user, &first, Some("pay-1"));
    let repeated = answer(&mut tail, retry);
    assert_eq!(repeated["duplicate_of"], event_id(original), "{repeated}");
    assert_eq!(repeated["alert_codes"], serde_json::json!([]), "{repeated}");
    assert!(repeated.get("error").is_none(), "{repeated}");

    // The same key for another event is an error, and changes nothing.
    let other = send(&world, user, &event("deposit", "5", user, 1), Some("pay-1"));
    let conflict = answer(&mut tail, other);
    assert_eq!(conflict["rejection"], "idempotency_conflict", "{conflict}");

    // Let a snapshot round pass, stop gracefully (final snapshot), restart: restored from it.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = send(&world, 8, &event("deposit", "1", 8, 1), None);
    terminate(&processor);
    assert!(wait_exit(&mut processor, Duration::from_secs(30)).is_some());
    let mut processor = world.spawn_processor(0);
    let again = send(&world, user, &first, Some("pay-1"));
    let repeated = answer(&mut tail, again);
    assert_eq!(repeated["duplicate_of"], event_id(original), "{repeated}");

    // Counted once: 110 + 60 = 170, no 123.
    let next = send(&world, user, &event("deposit", "60", user, 2), None);
    assert_eq!(
        answer(&mut tail, next)["alert_codes"],
        serde_json::json!([]),
        "the retries were not counted again"
    );
    // Counted once more it would be: 170 + 40 = 210 > 200.
    let last = send(&world, user, &event("deposit", "40", user, 3), None);
    assert_eq!(
        answer(&mut tail, last)["alert_codes"],
        serde_json::json!([123])
    );
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));
}

#[test]
fn exactly_once_retries_across_kill_minus_nine_and_restore_count_once() {
    retries_across_crashes_count_once("exactly_once");
}

#[test]
fn at_least_once_retries_across_kill_minus_nine_and_restore_count_once() {
    retries_across_crashes_count_once("at_least_once");
}

/// A retry answered after a replay repeats the original's answer, risk included: the original
/// was evaluated at high risk (1100 above 50), the replay knows no risk, the retry still says
/// 1100 and "high".
#[test]
fn a_replayed_original_keeps_its_answer_and_risk_for_its_retry() {
    let world = World::new("idem-risk", 1);
    world.create_topics();
    common::kafka::produce(
        &world.profiles(),
        &[(Some("9".to_owned()), br#"{"risk": "high"}"#.to_vec())],
    );
    let mut processor = world.spawn_processor(0);
    let mut tail = Tail::new(&world.bootstrap(), &world.alerts());
    let withdrawal = event("withdraw", "60", 9, 1);
    let original = send(&world, 9, &withdrawal, Some("w-1"));
    let first = answer(&mut tail, original);
    assert_eq!(first["alert_codes"], serde_json::json!([1100]));
    assert_eq!(first["risk"], "high");
    kill9(&mut processor);
    // Back to medium: the retry must still be answered as the original was.
    common::kafka::produce(
        &world.profiles(),
        &[(Some("9".to_owned()), br#"{"risk": "medium"}"#.to_vec())],
    );
    let mut processor = world.spawn_processor(0);
    let retry = send(&world, 9, &withdrawal, Some("w-1"));
    let repeated = answer(&mut tail, retry);
    assert_eq!(repeated["duplicate_of"], event_id(original), "{repeated}");
    assert_eq!(
        repeated["alert_codes"],
        serde_json::json!([1100]),
        "{repeated}"
    );
    assert_eq!(repeated["risk"], "high", "{repeated}");
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));
}

/// At most `processing.idempotency_keys_per_user` keys are remembered per user: past the bound
/// the oldest is forgotten, and its retry is a new event.
#[test]
fn the_keys_remembered_per_user_are_bounded() {
    let mut world = World::new("idem-bound", 1);
    world.set("USER_MONITOR__PROCESSING__IDEMPOTENCY_KEYS_PER_USER", "2");
    world.create_topics();
    let mut processor = world.spawn_processor(0);
    let mut tail = Tail::new(&world.bootstrap(), &world.alerts());
    let sent: Vec<((i32, i64), Vec<u8>)> = (1..=3u64)
        .map(|i| {
            let value = event("deposit", "1", 5, i);
            (send(&world, 5, &value, Some(&format!("k{i}"))), value)
        })
        .collect();
    for (at, _) in &sent {
        answer(&mut tail, *at);
    }
    // k3 and k2 are remembered, k1 was forgotten.
    let k3 = answer(&mut tail, send(&world, 5, &sent[2].1, Some("k3")));
    assert_eq!(k3["duplicate_of"], event_id(sent[2].0), "{k3}");
    let k1 = answer(&mut tail, send(&world, 5, &sent[0].1, Some("k1")));
    assert!(k1.get("duplicate_of").is_none(), "{k1}");
    // Its time (1) is now behind the user's latest (3): out of order, as any late event.
    assert_eq!(k1["rejection"], "out_of_order", "{k1}");
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));
}
