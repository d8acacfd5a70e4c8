//! A user's view (`GET /api/v1/users/{user_id}`) without Kafka: what its handler reads from the
//! store (`Store::user_reads`: the snapshot, the counts, the newest record, the partition's end,
//! the records since the snapshot) and the replay and standing of `user_view`, serialized, for
//! users with many stored events on a store of ROWS records.
//!
//! Generates ROWS alerts-topic records of valid events on one input partition (offset = record
//! number), written through the projection's own path (`Batch::push`, `Store::write`): 8 hot
//! users with EVENTS events each (one a second: an hour of them stays in each state, the
//! heaviest snapshot a user has), spread evenly, the rest among 100,000 users. Hot users 1-4
//! get a snapshot record covering all but their last REPLAY events (what a snapshot interval
//! leaves to replay), made by the engine and written through the state projection's path
//! (`SnapshotBatch::push`, `Store::write_snapshots`); hot users 5-8 have none (every stored
//! record replayed: a user older than the store's snapshots cannot be, this is the bound).
//! Then QUERIES views of random hot users of each kind: p50/p99/max.
//!
//! `cargo run --release --example bench_user_view -- [ROWS] [EVENTS] [DIR] [QUERIES] [REPLAY]`
//! (SQLite in DIR, default target/bench-user-view, made afresh).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use user_monitor::config::Settings;
use user_monitor::domain::{decode, Risk, UserId};
use user_monitor::rule_set::{Bounds, RuleSet};
use user_monitor::snapshot::encode;
use user_monitor::state::Users;
use user_monitor::store::{Batch, SnapshotBatch, Store};
use user_monitor::user_view;

const HOT: u64 = 8;
const USERS: u64 = 100_000;
const TOPIC: &str = "bench-alerts";
const BASE_TS: i64 = 1_767_225_600_000;

/// Record `j` (input offset `j`): its user, and its alerts-record JSON echoing the event.
fn record(j: i64, stride: i64, events: i64) -> (u64, String) {
    let mix = (j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let (user, time) = if j % stride == 0 && j / stride < HOT as i64 * events {
        let n = j / stride;
        (1 + (n % HOT as i64) as u64, n / HOT as i64)
    } else {
        (1_000 + (mix >> 20) % USERS, j / 1_000)
    };
    let kind = if (mix >> 7) % 3 == 0 {
        "withdraw"
    } else {
        "deposit"
    };
    let codes: &[u32] = match (mix >> 8) % 8 {
        0 => &[30],
        1 => &[123, 1100],
        _ => &[],
    };
    let alert_id = if codes.is_empty() {
        "null".to_owned()
    } else {
        format!("\"alert-0-{j}\"")
    };
    let json = format!(
        r#"{{"event_id":"0-{j}","user_id":{user},"alert":{},"alert_codes":{codes:?},"alert_id":{alert_id},"risk":"medium","rules_version":"default","event":{{"type":"{kind}","amount":"{}.{:02}","user_id":{user},"time":{time}}}}}"#,
        !codes.is_empty(),
        1 + mix % 300,
        (mix >> 30) % 100,
    );
    (user, json)
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<44} n={:<5} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: i64| {
        args.get(i)
            .and_then(|a| a.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    let rows = number(0, 1_000_000);
    let events = number(1, 10_000);
    let dir = PathBuf::from(args.get(2).map_or("target/bench-user-view", String::as_str));
    let queries = number(3, 500) as usize;
    let replay = number(4, 20);
    let stride = (rows / (HOT as i64 * events)).max(1);
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Settings::defaults().store;
    config.data_dir = dir.clone();
    let store = Store::open(&config).await.expect("opens the store");
    let (set, bounds) = (RuleSet::default_set(), Bounds::default());

    // The records, and the hot users' states up to their snapshots.
    let started = Instant::now();
    let mut engine = Users::default();
    let mut seen = [0i64; HOT as usize + 1];
    let mut covers = [0i64; HOT as usize + 1];
    let batch_rows = Settings::defaults().store.batch_records as i64;
    let mut j = 0;
    while j < rows {
        let mut batch = Batch::default();
        for j in j..(j + batch_rows).min(rows) {
            let (user, json) = record(j, stride, events);
            if (1..=HOT / 2).contains(&user) {
                let n = &mut seen[user as usize];
                *n += 1;
                if *n <= events - replay {
                    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                    let event = decode(value["event"].to_string().as_bytes()).unwrap();
                    let _ = engine.apply(&event, Risk::Medium, &set, &bounds);
                    covers[user as usize] = j + 1;
                }
            }
            batch.push(0, j, BASE_TS + j, Some(json.as_bytes()));
        }
        store.write(TOPIC, &batch).await.expect("writes");
        j = (j + batch_rows).min(rows);
    }
    let mut snapshots = SnapshotBatch::default();
    for user in 1..=HOT / 2 {
        let state = engine.export(user).expect("a hot user has events");
        let value = encode(covers[user as usize], &state, None);
        snapshots.push(
            0,
            user as i64,
            Some(user.to_string().as_bytes()),
            Some(&value),
        );
    }
    store
        .write_snapshots("bench-state", &snapshots)
        .await
        .expect("writes the snapshots");
    println!(
        "store {}: {rows} records, {HOT} hot users of {events} events (one record in {stride}), \
         written in {:.1} s",
        store.location(),
        started.elapsed().as_secs_f64()
    );

    for (name, users) in [
        ("view, snapshot + replay", 1..=HOT / 2),
        (
            "view, no snapshot (every record replayed)",
            HOT / 2 + 1..=HOT,
        ),
    ] {
        let mut samples = Vec::with_capacity(queries);
        let mut replayed = 0;
        let users: Vec<u64> = users.collect();
        for q in 0..queries {
            let user = UserId::new(users[q % users.len()]).unwrap();
            let at = Instant::now();
            let reads = store.user_reads(user, 0).await.expect("reads");
            let rebuilt = user_view::rebuild(
                user,
                reads.snapshot.as_ref().map(|s| s.state.clone()),
                &reads.records,
                &set,
                &bounds,
            );
            let standing = rebuilt.standing(Risk::Medium, &set, &bounds).unwrap();
            let body =
                serde_json::to_vec(&(&standing, reads.counts.events, reads.next_offset())).unwrap();
            samples.push(at.elapsed());
            assert!(rebuilt.unreplayable.is_empty() && !body.is_empty());
            replayed = rebuilt.replayed;
        }
        println!("{name} ({replayed} records replayed):");
        percentiles("  store reads + replay + standing", samples);
    }
    store.close().await;
}
