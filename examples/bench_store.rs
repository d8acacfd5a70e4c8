//! The read model's database: ingest rate and query latencies at a given stored size.
//!
//! Generates ROWS alerts-topic records (6 input partitions, 100,000 users, one record in four an
//! alert with one or two codes, 10 records per millisecond of alerts-record time) and writes them
//! through the projection's own path (`Batch::push` parses each record, `Store::write` stores a
//! batch and its offsets in one transaction; parsing on one thread overlaps writing on another),
//! then measures, over QUERIES random queries each:
//! newest alerts (first page, and a page at a random cursor), alerts of a user, alerts with a
//! code, a user's history, a point lookup by event id; p50/p99/max.
//!
//! `cargo run --release --example bench_store -- [ROWS] [DIR] [QUERIES]` (SQLite in DIR,
//! default target/bench-store; an existing store there is reused and grown to ROWS).
//! `BENCH_STORE_URL=postgres://...` measures PostgreSQL instead.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use user_monitor::config::Settings;
use user_monitor::domain::{Coord, UserId};
use user_monitor::store::{AlertQuery, Batch, OrderKey, Store};

const PARTITIONS: i64 = 6;
const USERS: u64 = 100_000;
const TOPIC: &str = "bench-alerts";
const BASE_TS: i64 = 1_767_225_600_000;

fn record(i: i64) -> (i32, i64, i64, Vec<u8>) {
    // Record i: input partition i % 6, offset i / 6; deterministic "random" user and codes.
    let partition = (i % PARTITIONS) as i32;
    let offset = i / PARTITIONS;
    let mix = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let user = (mix >> 20) % USERS;
    let codes: &[u32] = match (mix >> 8) % 8 {
        0 => &[30],
        1 => &[123, 1100],
        _ => &[],
    };
    let ts = BASE_TS + i / 10;
    let time = ts / 1000;
    let alert_id = if codes.is_empty() {
        "null".to_owned()
    } else {
        format!("\"alert-{partition}-{offset}\"")
    };
    let json = format!(
        r#"{{"event_id":"{partition}-{offset}","user_id":{user},"alert":{},"alert_codes":{codes:?},"alert_id":{alert_id},"risk":"medium","event":{{"type":"withdraw","amount":"{}.00","user_id":{user},"time":{time}}}}}"#,
        !codes.is_empty(),
        mix % 5000,
    );
    (partition, offset, ts, json.into_bytes())
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<28} n={:<6} p50={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: i64 = args
        .next()
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/bench-store".to_owned()),
    );
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    // Records per transaction, as store.batch_records.
    let batch_rows: i64 = std::env::var("BENCH_STORE_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(Settings::defaults().store.batch_records as i64);
    let mut config = Settings::defaults().store;
    config.data_dir = dir.clone();
    if let Ok(url) = std::env::var("BENCH_STORE_URL") {
        config.url = url;
    }
    let store = Store::open(&config).await.expect("opens the store");
    let have: i64 = store.offsets(TOPIC).await.unwrap().values().sum();
    println!(
        "store {} ({:?}): {have} rows of this benchmark already, growing to {rows}",
        store.location(),
        store.dialect()
    );

    // Ingest: one thread builds and parses batches, the runtime writes them.
    if have < rows {
        let (tx, rx) = mpsc::sync_channel::<Batch>(2);
        let producer = std::thread::spawn(move || {
            let mut i = have;
            while i < rows {
                let mut batch = Batch::default();
                let end = (i + batch_rows).min(rows);
                for j in i..end {
                    // One alerts partition; its offset is j.
                    let (_, _, ts, payload) = record(j);
                    batch.push(0, j, ts, Some(&payload));
                }
                i = end;
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let mut window = Instant::now();
        let mut written = have;
        let mut window_rows = 0;
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        loop {
            let rx = std::sync::Arc::clone(&rx);
            let Ok(Some(batch)) =
                tokio::task::spawn_blocking(move || rx.lock().unwrap().recv().ok()).await
            else {
                break;
            };
            store.write(TOPIC, &batch).await.expect("writes");
            written += batch.rows.len() as i64;
            window_rows += batch.rows.len();
            if window.elapsed() >= Duration::from_secs(10) {
                println!(
                    "  {written:>10} rows stored, {:>8.0} rows/s over the last {:.0} s",
                    window_rows as f64 / window.elapsed().as_secs_f64(),
                    window.elapsed().as_secs_f64()
                );
                window = Instant::now();
                window_rows = 0;
            }
        }
        producer.join().unwrap();
        let elapsed = started.elapsed();
        println!(
            "ingest: {} rows in {:.1} s = {:.0} rows/s (batches of {batch_rows}, one transaction each)",
            rows - have,
            elapsed.as_secs_f64(),
            (rows - have) as f64 / elapsed.as_secs_f64()
        );
    }

    // Queries at this size.
    let mut rng = StdRng::seed_from_u64(7);
    let newest = store
        .alerts(&AlertQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let top = newest
        .items
        .first()
        .map(|s| s.order.timestamp)
        .unwrap_or(BASE_TS);
    let span = (top - BASE_TS).max(1);
    let mut timed: Vec<(&str, Vec<Duration>)> = Vec::new();
    macro_rules! measure {
        ($name:expr, $body:expr) => {{
            let mut samples = Vec::with_capacity(queries);
            for _ in 0..queries {
                let t = Instant::now();
                let found = $body;
                samples.push(t.elapsed());
                std::hint::black_box(found);
            }
            timed.push(($name, samples));
        }};
    }
    measure!("alerts, first page (100)", {
        store
            .alerts(&AlertQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("alerts at a cursor (100)", {
        let before = OrderKey {
            timestamp: BASE_TS + rng.gen_range(0..span),
            partition: 0,
            offset: 0,
        };
        store
            .alerts(&AlertQuery {
                before: Some(before),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("alerts of a user (100)", {
        store
            .alerts(&AlertQuery {
                user_id: Some(UserId::new(rng.gen_range(0..USERS)).unwrap()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("alerts with a code (100)", {
        let code = [30, 123, 1100][rng.gen_range(0..3)];
        store
            .alerts(&AlertQuery {
                code: Some(code),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("alerts, code+time range", {
        let since = BASE_TS + rng.gen_range(0..span);
        store
            .alerts(&AlertQuery {
                code: Some(30),
                since: Some(since),
                until: Some(since + 60_000),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("user history (100)", {
        store
            .user_events(UserId::new(rng.gen_range(0..USERS)).unwrap(), None, 100)
            .await
            .unwrap()
            .items
            .len()
    });
    measure!("point lookup", {
        let i = rng.gen_range(0..rows);
        let (partition, offset, _, _) = record(i);
        store
            .event(Coord::new(partition, offset))
            .await
            .unwrap()
            .is_some()
    });
    println!("queries with {rows} rows stored:");
    for (name, samples) in timed {
        percentiles(name, samples);
    }
    store.close().await;
}
