//! `POST /api/v1/rules/backtest` at size: a candidate set against the default set over every
//! event stored in the read model, the endpoint's own path (`Store::backtest`: the database
//! streams the records in partition then offset order while a blocking thread replays them).
//!
//! Fills a SQLite store with ROWS alerts records as the processor writes them (6 partitions,
//! 100,000 users, a user's events in one partition with increasing times; each record the
//! engine's own answer under the default set, evidence included) unless it holds them already,
//! then times RUNS backtests over all of them, and one over a range of a tenth of them.
//!
//! `cargo run --release --example bench_backtest -- [ROWS] [DIR] [RUNS]` (default 1,000,000
//! rows in target/bench-backtest, 3 runs). Not a test: a measurement.

use std::path::PathBuf;
use std::time::Instant;

use user_monitor::backtest::Range;
use user_monitor::config::Settings;
use user_monitor::domain::{AlertRecord, Coord};
use user_monitor::engine::{Context, Engine, Input, Sets};
use user_monitor::idempotency::DedupLimits;
use user_monitor::rule_set::RuleSet;
use user_monitor::store::{Batch, Store};

const PARTITIONS: u64 = 6;
const USERS: u64 = 100_000;
const TOPIC: &str = "bench-alerts";
const BASE_TS: i64 = 1_767_225_600_000;

const CANDIDATE: &str = r#"{"version": "candidate", "time_unit": "seconds", "rule": [
    {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "80"},
    {"code": 30, "kind": "consecutive", "on": "withdraw", "count": 2},
    {"code": 123, "kind": "window_sum", "on": "deposit", "window": "45s", "amount": "250"},
    {"code": 500, "kind": "window_count", "on": "any", "window": "60s", "count": 4}
]}"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let rows: u64 = args
        .next()
        .and_then(|a| a.replace('_', "").parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/bench-backtest".to_owned()),
    );
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let settings = Settings::defaults();
    let mut config = settings.store.clone();
    config.data_dir = dir;
    let store = Store::open(&config).await.expect("opens the store");
    let have = store.count().await.unwrap();
    let bounds = settings.rule_bounds();
    let baseline = RuleSet::default_set();
    if have != rows {
        assert_eq!(have, 0, "{} holds {have} rows: remove it", store.location());
        let started = Instant::now();
        fill(&store, rows, &baseline).await;
        println!(
            "stored {rows} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let candidate = RuleSet::from_json(CANDIDATE, &bounds).unwrap();
    let mut times = Vec::new();
    for run in 0..runs {
        let started = Instant::now();
        let outcome = store
            .backtest(
                baseline.clone(),
                candidate.clone(),
                bounds,
                Range::default(),
                100,
            )
            .await
            .unwrap();
        let elapsed = started.elapsed();
        times.push(elapsed.as_secs_f64());
        let r = &outcome.report;
        println!(
            "run {run}: {} records read, {} events, {} changed, {} samples in {:.3} s = {:.2}M events/s",
            r.lines,
            r.events,
            r.events_changed,
            outcome.samples.len(),
            elapsed.as_secs_f64(),
            r.lines as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
    times.sort_by(f64::total_cmp);
    println!(
        "every stored event ({rows}): median {:.3} s, best {:.3} s",
        times[times.len() / 2],
        times[0]
    );
    // A tenth of the event time, with its warm-up (state.max_window, 1 h: all of it here is
    // within an hour and a half, so the warm-up reads most of what precedes the range).
    let span = rows / 100;
    let from = (BASE_TS / 1000) as u64 + span * 9 / 10;
    let range = Range::new(Some(from), None, None, &baseline, &candidate, &bounds);
    let started = Instant::now();
    let outcome = store
        .backtest(baseline.clone(), candidate.clone(), bounds, range, 100)
        .await
        .unwrap();
    let r = &outcome.report;
    println!(
        "the last tenth of event time: {} records read, {} warm-up, {} counted in {:.3} s",
        r.lines,
        r.warm_up,
        r.events,
        started.elapsed().as_secs_f64()
    );
}

/// `rows` records, as the processor answers events: user `u`'s events in partition `u % 6`,
/// times increasing by a second every 100 events.
async fn fill(store: &Store, rows: u64, set: &RuleSet) {
    let bounds = Settings::defaults().rule_bounds();
    let dedup = DedupLimits::default();
    let cx = Context {
        placement: None,
        sets: Sets {
            active: set,
            shadow: None,
            bounds: &bounds,
            explain: true,
        },
        dedup: &dedup,
        answer_known: true,
        ahead: None,
    };
    let mut engine = Engine::default();
    let mut next = [0i64; PARTITIONS as usize];
    let mut batch = Batch::default();
    for i in 0..rows {
        let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let user = (mix >> 20) % USERS;
        let partition = (user % PARTITIONS) as usize;
        let offset = next[partition];
        next[partition] += 1;
        let kind = if (mix >> 8) % 3 == 0 {
            "withdraw"
        } else {
            "deposit"
        };
        let time = (BASE_TS / 1000) as u64 + i / 100;
        let payload = format!(
            r#"{{"type": "{kind}", "amount": "{}.{:02}", "user_id": {user}, "time": {time}}}"#,
            1 + (mix >> 30) % 250,
            (mix >> 40) % 100
        );
        let verdict = engine.judge(
            Input {
                offset,
                payload: payload.as_bytes(),
                key: None,
            },
            &cx,
            |_| user_monitor::domain::Risk::Medium,
        );
        let at = Coord::new(partition as i32, offset);
        let record = AlertRecord::answer(at, &verdict, payload.as_bytes())
            .expect("nothing restored")
            .versioned(&set.version);
        batch.push(
            partition as i32,
            offset,
            BASE_TS + (i / 10) as i64,
            Some(&record.to_json()),
        );
        if batch.rows.len() == 10_000 {
            store
                .write(TOPIC, &std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    if !batch.rows.is_empty() {
        store.write(TOPIC, &batch).await.unwrap();
    }
}
