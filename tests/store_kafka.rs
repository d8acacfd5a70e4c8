//! The projection of a real alerts topic into the read model's database: a restart resumes where
//! the database stopped (no gap, no duplicate, nothing read twice), and a `kill -9` of the shim in
//! the middle of ingesting loses nothing; the restarted shim is ready at once.

mod common;

use std::collections::BTreeMap;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http::wait_ready;
use common::kafka::{bootstrap, create_topic, produce_at, shim_addr, World};
use common::store::alert_record;
use tokio_util::sync::CancellationToken;
use user_monitor::config::Settings;
use user_monitor::metrics::Metrics;
use user_monitor::store::projection::{Projection, Status};
use user_monitor::store::Store;

/// `n` alerts records for events `(0, first)..(0, first + n)`, keyed by user.
fn records(first: i64, n: i64) -> Vec<(Option<String>, Vec<u8>)> {
    (first..first + n)
        .map(|i| {
            let user = (i % 101) as u64;
            let codes: &[u32] = if i % 3 == 0 { &[30] } else { &[] };
            (
                Some(user.to_string()),
                alert_record(0, i, user, codes, i as u64),
            )
        })
        .collect()
}

async fn wait_for_count(store: &Store, want: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let count = store.count().await.unwrap();
        if count == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{count} rows stored, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the projection until `want` rows are stored; returns what it wrote.
async fn project_until(settings: &Arc<Settings>, store: &Store, want: u64) -> u64 {
    let metrics = Metrics::new();
    let status = Arc::new(Status::with_metrics(&metrics));
    let stop = CancellationToken::new();
    let projection = Projection::spawn(
        Arc::clone(settings),
        store.clone(),
        Arc::clone(&status),
        stop.clone(),
    )
    .unwrap();
    wait_for_count(store, want, Duration::from_secs(60)).await;
    stop.cancel();
    tokio::task::spawn_blocking(move || projection.join())
        .await
        .unwrap();
    assert_eq!(metrics.store_projected.get(), status.projected());
    assert!(metrics.encode().contains(&format!(
        "user_monitor_store_projected_records_total {}",
        status.projected()
    )));
    status.projected()
}

async fn restart_resumes_without_gaps_or_duplicates(store: Store) {
    let mut settings = Settings::defaults();
    settings.kafka.bootstrap_servers = bootstrap();
    settings.topics.alerts = format!(
        "store-resume-{}-alerts",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    settings.store.batch_records = 500;
    let settings = Arc::new(settings);
    let topic = settings.topics.alerts.clone();
    create_topic(&bootstrap(), &topic, 3, &[]);

    produce_at(&bootstrap(), &topic, &records(0, 3000));
    assert_eq!(project_until(&settings, &store, 3000).await, 3000);
    let after_first: i64 = store.offsets(&topic).await.unwrap().values().sum();
    assert_eq!(after_first, 3000, "offsets cover exactly what is stored");

    produce_at(&bootstrap(), &topic, &records(3000, 2000));
    let second = project_until(&settings, &store, 5000).await;
    assert_eq!(second, 2000, "the restart read only what was new");
    let offsets: BTreeMap<i32, i64> = store.offsets(&topic).await.unwrap();
    assert_eq!(offsets.values().sum::<i64>(), 5000);
    assert_eq!(offsets.len(), 3);
    for i in [0, 2999, 3000, 4999] {
        assert!(
            store
                .event(user_monitor::domain::Coord::new(0, i))
                .await
                .unwrap()
                .is_some(),
            "event 0-{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_projection_restart_resumes_without_gaps_or_duplicates() {
    let (store, _dir) = common::store::sqlite().await;
    restart_resumes_without_gaps_or_duplicates(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_projection_restart_resumes_without_gaps_or_duplicates() {
    let Some(store) = common::store::postgres("postgres_projection_restart_resumes").await else {
        return;
    };
    restart_resumes_without_gaps_or_duplicates(store).await;
}

fn kill9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_shim_mid_ingest_loses_nothing_and_the_restart_is_ready_at_once() {
    const N: i64 = 200_000;
    let mut world = World::new("store-kill", 3);
    world.set("USER_MONITOR__HTTP__LISTEN", "127.0.0.1:0");
    world.set("USER_MONITOR__STORE__BATCH_RECORDS", "500");
    world.create_topics();
    produce_at(&world.bootstrap(), &world.alerts(), &records(0, N));
    let mut config = Settings::defaults().store;
    config.data_dir = world.dir.path().join("store");
    let store = Store::open(&config).await.unwrap();

    let mut shim = world.spawn(&["shim"], 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored;
    loop {
        stored = store.count().await.unwrap();
        if stored >= 20_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingest started: {}",
            world.log(0)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill9(&mut shim);
    let at_kill = store.count().await.unwrap();
    let offsets: i64 = store.offsets(&world.alerts()).await.unwrap().values().sum();
    assert_eq!(
        offsets as u64, at_kill,
        "the stored offsets cover exactly the stored rows"
    );
    eprintln!("killed with {at_kill} of {N} rows stored");

    let started = Instant::now();
    let mut restarted = world.spawn(&["shim"], 1);
    let addr = shim_addr(&world, 1, Duration::from_secs(30)).expect("the shim listens");
    let client = reqwest::Client::new();
    wait_ready(
        &client,
        &format!("http://{addr}/readyz"),
        Duration::from_secs(30),
    )
    .await;
    let ready_after = started.elapsed();
    eprintln!("restart to ready: {ready_after:?} with {at_kill} rows stored");
    assert!(
        ready_after < Duration::from_secs(5),
        "ready without catching up: {ready_after:?}"
    );
    wait_for_count(&store, N as u64, Duration::from_secs(120)).await;
    let offsets: i64 = store.offsets(&world.alerts()).await.unwrap().values().sum();
    assert_eq!(offsets, N);
    assert!(at_kill < N as u64 || stored == N as u64);
    kill9(&mut restarted);
}
