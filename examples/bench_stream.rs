//! Delivery latency of the live alert feed (`GET /api/v1/alerts/stream`): response readable ->
//! event read by a client, at a given alert rate to many clients.
//!
//! In one process: the shim's real router and server on a loopback port, and its hub fed the
//! way the alerts follower feeds it. "Response readable" is the moment `Hub::ingest` takes the
//! record, which is when the follower has read it from Kafka (Kafka itself is measured by
//! `bench_latency`). A paced thread ingests `rate` alerts per second, round-robin over
//! `partitions` alerts partitions (which the hub knows, so the feed's frontier follows the
//! partitions; with 0 it only has `http.stream_settle` to go by), each carrying its ingest
//! instant in `event_text`. `clients` HTTP clients read the feed from the start; each alert's
//! latency is taken when its event has been read and parsed off the socket. After a warm-up that
//! is left out, prints p50/p90/p99/max and checks that every client got every alert exactly
//! once, in cursor order.
//!
//! `cargo run --release --example bench_stream -- [rate=2000] [clients=100] [seconds=10]
//! [warmup=2] [partitions=6] [browser=0]` (`make bench-stream`). `USER_MONITOR__HTTP__STREAM_SETTLE`
//! and the other `http.stream_*` keys apply. Exits 1 when a client missed, repeated or reordered
//! an alert, or overflowed.
//!
//! With `browser=1`, headless Chromium (as in the console's tests) also opens the console's live
//! alerts page on the same server before the alerts start, and the run reports what a person at
//! it would feel: the page's first load (bytes transferred, DOM interactive, and the moment the
//! feed is live), and during the run the page's long tasks (the Long Tasks API: main-thread tasks
//! over 50 ms) and the longest the main thread was blocked (a 20 ms timer's worst lateness),
//! with the rows shown at the end (the list is bounded).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use user_monitor::config::{Settings, Sources};
use user_monitor::domain::response::{AlertRecord, Outcome};
use user_monitor::domain::{Coord, Risk, UserId};
use user_monitor::http::stream::{now_ms, StreamConfig, Streams};
use user_monitor::http::{router, server, ConfiguredRuleSets, Hub, KafkaBackend, Shared};
use user_monitor::metrics::Metrics;
use user_monitor::store::projection::Status as ProjectionStatus;
use user_monitor::store::{OrderKey, Store};

#[path = "../tests/common/browser.rs"]
#[allow(dead_code)]
mod browser;

struct Args {
    rate: u64,
    clients: usize,
    seconds: f64,
    warmup: f64,
    partitions: i32,
    browser: bool,
}

fn args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    fn next<T: std::str::FromStr>(
        value: Option<String>,
        name: &str,
        default: T,
    ) -> Result<T, String> {
        value.map_or(Ok(default), |v| {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        })
    }
    Ok(Args {
        rate: next(args.next(), "rate", 2000)?,
        clients: next(args.next(), "clients", 100)?,
        seconds: next(args.next(), "seconds", 10.0)?,
        warmup: next(args.next(), "warmup", 2.0)?,
        partitions: next(args.next(), "partitions", 6)?,
        browser: next::<u8>(args.next(), "browser", 0)? == 1,
    })
}

/// What one client saw: (ingest instant, latency) in µs of each alert, and whether their order
/// and uniqueness held.
#[derive(Default)]
struct Seen {
    latencies: Vec<(u64, u64)>,
    alerts: u64,
    out_of_order: u64,
    overflowed: bool,
}

/// Reads the feed until it ends (the benchmark closes every feed at the end).
async fn client(url: String, origin: Instant) -> Seen {
    let mut seen = Seen::default();
    let http = reqwest::Client::new();
    let mut response = match http.get(&url).send().await {
        Ok(r) if r.status() == 200 => r,
        other => {
            eprintln!("a client could not open its feed: {other:?}");
            return seen;
        }
    };
    let mut buffer = String::new();
    let mut last: Option<OrderKey> = None;
    loop {
        let Ok(Some(chunk)) = response.chunk().await else {
            return seen;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.starts_with("event: overflow") {
                seen.overflowed = true;
                return seen;
            }
            let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) else {
                continue;
            };
            let Some(sent) = field(&block, "\"time\":") else {
                continue;
            };
            let now = origin.elapsed().as_micros() as u64;
            seen.alerts += 1;
            let key = OrderKey::from_cursor(id);
            if key <= last {
                seen.out_of_order += 1;
            }
            last = key;
            seen.latencies.push((sent, now.saturating_sub(sent)));
        }
    }
}

/// The number after `prefix` in `text`.
fn field(text: &str, prefix: &str) -> Option<u64> {
    let start = text.find(prefix)? + prefix.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn alert(partition: i32, offset: i64, sent_us: u64) -> AlertRecord {
    let user = (offset as u64 * 7 + partition as u64) % 10_000;
    AlertRecord {
        event_id: Coord::new(partition, offset),
        duplicate_of: None,
        user_id: UserId::new(user),
        outcome: Outcome::Accepted {
            alert_codes: vec![1100],
            alert_id: Some(format!("alert-{partition}-{offset}")),
            risk: Risk::Medium,
        },
        rules_version: Some("default".to_owned()),
        // What the console renders: the evidence in words and the event. The event's `time` is
        // the ingest instant the clients measure from.
        evidence: serde_json::value::RawValue::from_string(
            r#"[{"code":1100,"kind":"amount","on":"withdraw","observed":"250","threshold":"100","risk":"medium"}]"#
                .to_owned(),
        )
        .ok(),
        event: serde_json::value::RawValue::from_string(format!(
            r#"{{"type":"withdraw","amount":"250","user_id":{user},"time":{sent_us}}}"#
        ))
        .ok(),
        event_text: None,
    }
}

/// Opens the console's live page, reports its first load, and starts watching its main thread.
async fn open_console(url: &str) -> Option<browser::Browser> {
    let mut page = browser::Browser::launch().await?;
    page.open(url).await;
    let live = page
        .wait_for(
            "document.getElementById('live-state').textContent === 'live'",
            Duration::from_secs(20),
        )
        .await;
    let load = page
        .eval(
            "(() => { const n = performance.getEntriesByType('navigation')[0]; \
             const r = performance.getEntriesByType('resource'); \
             const bytes = r.reduce((s, e) => s + e.transferSize, n.transferSize); \
             const assets = r.filter((e) => e.name.includes('/console/')) \
               .reduce((s, e) => s + e.transferSize, n.transferSize); \
             return { interactive: n.domInteractive, loaded: n.loadEventEnd, live: performance.now(), \
               bytes, assets, requests: r.length + 1 }; })()",
        )
        .await;
    println!(
        "console first load: {:.0} KB transferred ({:.0} KB of page and assets, {} requests), DOM interactive {:.0} ms, loaded {:.0} ms, feed live {:.0} ms after navigation (waited {:.0} ms)",
        load["bytes"].as_f64().unwrap_or(0.0) / 1024.0,
        load["assets"].as_f64().unwrap_or(0.0) / 1024.0,
        load["requests"],
        load["interactive"].as_f64().unwrap_or(0.0),
        load["loaded"].as_f64().unwrap_or(0.0),
        load["live"].as_f64().unwrap_or(0.0),
        live.as_secs_f64() * 1e3,
    );
    page.eval(
        "(() => { window.__long = []; window.__t0 = performance.now(); \
         new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push([e.startTime - window.__t0, e.duration]); }) \
           .observe({ type: 'longtask' }); \
         window.__blocked = 0; let last = performance.now(); \
         setInterval(() => { const now = performance.now(); \
           window.__blocked = Math.max(window.__blocked, now - last - 20); last = now; }, 20); \
         return true; })()",
    )
    .await;
    if std::env::var_os("BENCH_CONSOLE_PROFILE").is_some() {
        page.page("Profiler.enable", serde_json::json!({})).await;
        page.page("Profiler.start", serde_json::json!({})).await;
    }
    Some(page)
}

/// What the console's main thread went through while the alerts arrived.
async fn report_console(page: &mut browser::Browser, sent: u64) {
    let seen = page
        .eval(
            "({ long: window.__long, blocked: window.__blocked, \
               rows: document.getElementById('alert-rows').rows.length, \
               count: document.getElementById('alert-count').textContent, \
               state: document.getElementById('live-state').textContent })",
        )
        .await;
    // (ms since the alerts started, duration ms) of each long task.
    let long: Vec<(f64, f64)> = seen["long"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| Some((e[0].as_f64()?, e[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let longest = long.iter().map(|&(_, d)| d).fold(0.0, f64::max);
    let mut worst = long.clone();
    worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    worst.truncate(5);
    println!(
        "console during {sent} alerts: {} long tasks (> 50 ms), longest {:.0} ms, main thread blocked at most {:.0} ms; {} rows shown; \"{}\", feed {}",
        long.len(),
        longest,
        seen["blocked"].as_f64().unwrap_or(0.0),
        seen["rows"],
        seen["count"].as_str().unwrap_or(""),
        seen["state"].as_str().unwrap_or(""),
    );
    if std::env::var_os("BENCH_CONSOLE_PROFILE").is_some() {
        let profile = page.page("Profiler.stop", serde_json::json!({})).await;
        print_profile(&profile["profile"]);
    }
    if !worst.is_empty() {
        println!(
            "  longest tasks (s into the run: ms): {}",
            worst
                .iter()
                .map(|(at, d)| format!("{:.1}: {d:.0}", at / 1e3))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The functions the page spent most time in (self time, from the sampling profiler).
fn print_profile(profile: &serde_json::Value) {
    let mut names = std::collections::HashMap::new();
    for node in profile["nodes"].as_array().into_iter().flatten() {
        let frame = &node["callFrame"];
        let name = format!(
            "{} {}:{}",
            frame["functionName"].as_str().unwrap_or("?"),
            frame["url"]
                .as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or(""),
            frame["lineNumber"]
        );
        names.insert(node["id"].as_i64().unwrap_or(-1), name);
    }
    let deltas = profile["timeDeltas"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut self_time: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for (sample, delta) in profile["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(&deltas)
    {
        let name = names
            .get(&sample.as_i64().unwrap_or(-1))
            .map_or("?", String::as_str);
        *self_time.entry(name).or_default() += delta.as_f64().unwrap_or(0.0) / 1e3;
    }
    let mut top: Vec<_> = self_time.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, ms) in top.into_iter().take(12) {
        println!("  profile: {ms:>9.0} ms  {name}");
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let mut settings = Settings::load(&Sources::default()).unwrap_or_else(|_| Settings::defaults());
    settings.http.max_streams = settings.http.max_streams.max(args.clients);
    if settings.kafka.bootstrap_servers.is_empty() {
        // The backend is never used here; it only needs an address to be built with.
        settings.kafka.bootstrap_servers = "127.0.0.1:9092".to_owned();
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    settings.store.data_dir = dir.path().to_owned();
    let store = Store::open(&settings.store).await.expect("the store opens");
    let hub = Arc::new(Hub::new(16_384));
    hub.set_connected(true);
    let partitions: Vec<i32> = (0..args.partitions).collect();
    hub.set_partitions(&partitions);
    let metrics = Metrics::new();
    let projection = Arc::new(ProjectionStatus::with_metrics(&metrics));
    projection.set_assigned();
    projection.start(
        &partitions.iter().map(|&p| (p, Some((0, 0)))).collect(),
        &BTreeMap::new(),
    );
    let config = StreamConfig::from_settings(&settings.http);
    let streams = Streams::new(config);
    let settings = Arc::new(settings);
    let backend =
        Arc::new(KafkaBackend::new(Arc::clone(&settings), store.clone()).expect("a backend"));
    let app = router(Arc::new(Shared {
        backend,
        hub: Arc::clone(&hub),
        store,
        projection,
        metrics: Arc::clone(&metrics),
        processor: None,
        response_timeout: Duration::from_secs(1),
        body_limit: 65_536,
        auth: None,
        rules: ConfiguredRuleSets::from_settings(&settings).expect("the configured rules"),
        streams: Arc::clone(&streams),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let limits = server::HttpLimits {
        max_connections: args.clients + 64,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        body_limit: 65_536,
        max_drain_bytes: 1 << 20,
        shutdown_timeout: Duration::from_secs(5),
    };
    let server = tokio::spawn(server::serve(listener, app, limits, shutdown.clone()));

    let origin = Instant::now();
    let url = format!("http://{addr}/api/v1/alerts/stream");
    let clients: Vec<_> = (0..args.clients)
        .map(|_| tokio::spawn(client(url.clone(), origin)))
        .collect();
    // Let every client open its feed before the first alert.
    while metrics.alert_streams.get() < args.clients as i64 {
        if origin.elapsed() > Duration::from_secs(10) {
            eprintln!("only {} feeds opened", metrics.alert_streams.get());
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut page = if args.browser {
        match open_console(&format!(
            "http://{addr}/{}",
            std::env::var("BENCH_CONSOLE_PAGE").unwrap_or_else(|_| "#/alerts".to_owned())
        ))
        .await
        {
            Some(page) => Some(page),
            None => {
                eprintln!("browser=1 needs Chromium (chromium on the PATH, or USER_MONITOR_TEST_CHROMIUM)");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let start = Instant::now();
    let producer = {
        let hub = Arc::clone(&hub);
        let rate = args.rate;
        let count = (args.rate as f64 * args.seconds) as u64;
        let parts = args.partitions.max(1) as u64;
        std::thread::spawn(move || {
            let mut offsets = vec![0i64; parts as usize];
            for i in 0..count {
                let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let partition = (i % parts) as i32;
                let offset = offsets[partition as usize];
                offsets[partition as usize] += 1;
                let sent = origin.elapsed().as_micros() as u64;
                hub.ingest(alert(partition, offset, sent), now_ms());
            }
            count
        })
    };
    let sent = tokio::task::spawn_blocking(move || producer.join().expect("the producer"))
        .await
        .unwrap();
    let produced_in = start.elapsed();
    // The last alerts are released once the time bound passes them; then every feed ends.
    tokio::time::sleep(config.settle + Duration::from_secs(1)).await;
    if let Some(page) = page.as_mut() {
        report_console(page, sent).await;
    }
    drop(page);
    streams.close();
    let measured_from = (start - origin + Duration::from_secs_f64(args.warmup)).as_micros() as u64;
    let mut all = Vec::new();
    let mut failed = 0;
    for task in clients {
        let seen = task.await.unwrap();
        if seen.alerts != sent || seen.out_of_order > 0 || seen.overflowed {
            failed += 1;
            eprintln!(
                "a client got {} of {sent} alerts, {} out of order{}",
                seen.alerts,
                seen.out_of_order,
                if seen.overflowed { ", overflowed" } else { "" }
            );
        }
        all.extend(
            seen.latencies
                .into_iter()
                .filter(|&(sent, _)| sent >= measured_from)
                .map(|(_, latency)| latency),
        );
    }
    shutdown.cancel();
    let _ = server.await;
    all.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "{sent} alerts in {:.1} s ({:.0}/s) over {} partitions to {} clients (http.stream_settle {:?}, buffer {})",
        produced_in.as_secs_f64(),
        sent as f64 / produced_in.as_secs_f64(),
        args.partitions,
        args.clients,
        config.settle,
        config.buffer,
    );
    println!(
        "response readable -> event read, ms, {} samples after the warm-up: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        all.len(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.90)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or(0)),
    );
    println!(
        "overflows {}, late {}",
        metrics.alert_stream_overflows.get(),
        metrics.alert_stream_late.get()
    );
    if failed > 0 || all.is_empty() {
        eprintln!("{failed} clients did not get every alert once, in order");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
