//! End-to-end latency of `user-monitor process` through a real broker, per hop.
//!
//! Creates fresh topics (unique prefix), starts the release processor as a child, waits until it
//! has restored every partition, then produces valid, in-order events for `users` users at a fixed
//! rate, recording each event's send instant. A `read_committed` reader of the alerts topic
//! matches each response to its event by `event_id` (the event's partition and offset, which the
//! delivery report gives). After a warm-up that is left out, it prints p50/p90/p99/max of
//! send -> response readable, and where the time goes, from timestamps taken along the path:
//!
//! - `produce ack`: send -> delivery report of the event (the shim's produce ack);
//! - `send -> append`: send -> the event's broker timestamp (the events topic uses LogAppendTime,
//!   which the delivery report carries);
//! - `append -> resp. produced`: the event's broker timestamp -> its response record's CreateTime,
//!   set when the processor produced it: broker -> processor poll, batch collection, profiles
//!   catch-up, evaluation (and waiting for the previous batch's commit or flush);
//! - `resp. produced -> read`: the response's CreateTime -> the reader got it: linger, produce,
//!   flush or transaction commit, broker -> reader.
//!
//! Kafka timestamps have millisecond resolution; the total and the produce ack are measured in
//! microseconds on this machine's clock (the broker runs on the same machine). Under
//! exactly-once the processor's per-batch debug log (profiles catch-up, produce, send offsets,
//! commit) is parsed from its stderr as well.
//!
//! `bench_latency <exactly_once|at_least_once> [rate=200] [seconds=20] [warmup=5] [partitions=6] [users=1000]`
//!
//! Needs `KAFKA_BOOTSTRAP_SERVERS`. `USER_MONITOR__*` variables in the environment reach the
//! processor (e.g. `USER_MONITOR__PROCESSING__MAX_BATCH_WAIT=5ms`, or a raw client property as
//! `USER_MONITOR__KAFKA__PROPERTIES__LINGER.MS=0`). `BENCH_PRODUCER_LINGER_MS` (default 1, as the
//! shim's producer) and `BENCH_READER_FETCH_WAIT_MS` (default 2) tune the benchmark's own clients.
//! For a closer look, `BENCH_PROCESSOR_LOG=<file>` copies the processor's JSON log there and
//! `BENCH_PROCESSOR_LOG_FILTER` adds tracing directives to its filter (e.g. `rdkafka=debug` with
//! `USER_MONITOR__KAFKA__PROPERTIES__DEBUG=eos`). Exits 1 if a measured event got no response.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// How long the processor may take to restore every partition.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait for the last responses after the producer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the processor gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

struct Args {
    guarantee: String,
    rate: f64,
    seconds: f64,
    warmup: f64,
    partitions: i32,
    users: u64,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = std::env::args().skip(1);
        let guarantee = args.next().unwrap_or_else(|| "exactly_once".to_owned());
        if guarantee != "exactly_once" && guarantee != "at_least_once" {
            return Err(format!(
                "guarantee must be exactly_once or at_least_once, not {guarantee:?}"
            ));
        }
        fn num<T: std::str::FromStr>(
            value: Option<String>,
            name: &str,
            default: T,
        ) -> Result<T, String> {
            match value {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name}: not a number: {v:?}")),
            }
        }
        let parsed = Args {
            guarantee,
            rate: num(args.next(), "rate", 200.0)?,
            seconds: num(args.next(), "seconds", 20.0)?,
            warmup: num(args.next(), "warmup", 5.0)?,
            partitions: num(args.next(), "partitions", 6)?,
            users: num(args.next(), "users", 1000)?,
        };
        if parsed.rate <= 0.0 || parsed.seconds <= 0.0 || parsed.warmup < 0.0 {
            return Err("rate and seconds must be > 0, warmup >= 0".to_owned());
        }
        if parsed.partitions < 1 || parsed.users < 1 {
            return Err("partitions and users must be >= 1".to_owned());
        }
        Ok(parsed)
    }
}

/// Microseconds since the Unix epoch (comparable with Kafka's millisecond timestamps).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The processor child: stopped (SIGTERM, then SIGKILL) however the benchmark ends, panics
/// included.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("processor did not stop within {STOP_TIMEOUT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One event's delivery report.
#[derive(Clone, Copy)]
struct Delivered {
    partition: i32,
    offset: i64,
    /// The broker's LogAppendTime, ms.
    append_ms: i64,
    /// When the report was served, µs.
    ack_us: i64,
}

#[derive(Default)]
struct DeliveryLog {
    /// Indexed by event sequence number.
    reports: Mutex<Vec<Option<Delivered>>>,
    failures: AtomicUsize,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        let ack_us = now_us();
        match result {
            Ok(m) => {
                let report = Delivered {
                    partition: m.partition(),
                    offset: m.offset(),
                    append_ms: m.timestamp().to_millis().unwrap_or(-1),
                    ack_us,
                };
                let mut reports = self.reports.lock().expect("delivery log poisoned");
                if reports.len() <= seq {
                    reports.resize(seq + 1, None);
                }
                reports[seq] = Some(report);
            }
            Err((e, _)) => {
                eprintln!("event {seq} not delivered: {e}");
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A response as the reader got it.
struct Received {
    partition: i32,
    offset: i64,
    /// The `seq` field of the echoed event, a cross-check of the match by coordinates.
    seq: Option<u64>,
    /// The response record's CreateTime (set by the processor's producer), ms.
    created_ms: i64,
    recv_us: i64,
}

/// The processor's per-batch debug line.
#[derive(Clone, Copy)]
struct BatchLog {
    at_us: i64,
    records: f64,
    profiles_ms: f64,
    produce_ms: f64,
    offsets_ms: f64,
    commit_ms: f64,
}

#[derive(Default)]
struct ChildLog {
    restored: AtomicUsize,
    batches: Mutex<Vec<BatchLog>>,
}

/// Reads the processor's JSON log: counts restored partitions, keeps the batch timings, echoes
/// warnings and errors.
fn follow_log(stderr: std::process::ChildStderr, log: Arc<ChildLog>) -> JoinHandle<()> {
    let mut copy = std::env::var("BENCH_PROCESSOR_LOG").ok().map(|path| {
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("cannot create {path}: {e}"))
    });
    std::thread::spawn(move || {
        // Each distinct warning once (a client property set for all clients warns per client).
        let mut warned = std::collections::HashSet::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(file) = copy.as_mut() {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
            }
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                eprintln!("processor: {line}");
                continue;
            };
            let fields = value.get("fields").unwrap_or(&value);
            let message = fields.get("message").and_then(|m| m.as_str()).unwrap_or("");
            let num = |k: &str| fields.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            match message {
                "partition restored" => {
                    log.restored.fetch_add(1, Ordering::SeqCst);
                }
                "batch committed" => log.batches.lock().expect("log poisoned").push(BatchLog {
                    at_us: now_us(),
                    records: num("records"),
                    profiles_ms: num("profiles_ms"),
                    produce_ms: num("produce_ms"),
                    offsets_ms: num("offsets_ms"),
                    commit_ms: num("commit_ms"),
                }),
                _ => {
                    let level = value.get("level").and_then(|l| l.as_str()).unwrap_or("");
                    if (level == "WARN" || level == "ERROR") && warned.insert(message.to_owned()) {
                        eprintln!("processor: {level} {message} {fields}");
                    }
                }
            }
        }
    })
}

#[derive(serde::Deserialize)]
struct ResponseIds<'a> {
    #[serde(borrow)]
    event_id: &'a str,
    event: Option<EchoedSeq>,
}

#[derive(serde::Deserialize)]
struct EchoedSeq {
    seq: Option<u64>,
}

fn parse_event_id(text: &str) -> Option<(i32, i64)> {
    let (p, o) = text.split_once('-')?;
    Some((p.parse().ok()?, o.parse().ok()?))
}

/// Reads the alerts topic (read_committed) until `stop`, timestamping each response on arrival.
fn read_responses(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    group: &str,
    stop: Arc<AtomicBool>,
    received_count: Arc<AtomicUsize>,
) -> JoinHandle<Vec<Received>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // A commit marker does not complete a parked fetch: keep the reader's own wait short.
        .set(
            "fetch.wait.max.ms",
            env_or("BENCH_READER_FETCH_WAIT_MS", "2"),
        )
        .create()
        .expect("creating the reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("adding a partition");
    }
    consumer.assign(&tpl).expect("assigning the alerts topic");
    std::thread::spawn(move || {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let Some(result) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let recv_us = now_us();
            let m = match result {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("reader: {e}");
                    continue;
                }
            };
            let Some(payload) = m.payload() else { continue };
            let Ok(ids) = serde_json::from_slice::<ResponseIds<'_>>(payload) else {
                eprintln!(
                    "reader: unreadable response at {}-{}",
                    m.partition(),
                    m.offset()
                );
                continue;
            };
            let Some((partition, offset)) = parse_event_id(ids.event_id) else {
                eprintln!("reader: bad event_id {:?}", ids.event_id);
                continue;
            };
            out.push(Received {
                partition,
                offset,
                seq: ids.event.and_then(|e| e.seq),
                created_ms: m.timestamp().to_millis().unwrap_or(-1),
                recv_us,
            });
            received_count.fetch_add(1, Ordering::Relaxed);
        }
        out
    })
}

/// The `i`-th event: users in turn, event time in whole seconds since the start (so every
/// user's times never decrease), small amounts, the sequence number as an extra field.
fn event(i: u64, users: u64, rate: f64) -> (String, String) {
    let user = 1 + i % users;
    let round = i / users;
    let kind = if round % 2 == 0 {
        "deposit"
    } else {
        "withdraw"
    };
    let time = (i as f64 / rate) as u64;
    let amount = format!("{}.{:02}", 1 + (i * 7) % 9, (i * 13) % 100);
    let value = format!(
        r#"{{"type": "{kind}", "amount": "{amount}", "user_id": {user}, "time": {time}, "seq": {i}}}"#
    );
    (user.to_string(), value)
}

/// Sends at a fixed rate until `stop`; returns each event's send instant (µs) and how late the
/// sender was behind its schedule at worst.
fn produce(
    producer: Arc<ThreadedProducer<DeliveryLog>>,
    topic: String,
    rate: f64,
    users: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(Vec<i64>, Duration)> {
    std::thread::spawn(move || {
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = Instant::now();
        let mut sent = Vec::new();
        let mut worst_lag = Duration::ZERO;
        let mut i: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            let due = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            } else {
                worst_lag = worst_lag.max(now - due);
            }
            let (key, value) = event(i, users, rate);
            let send_us = now_us();
            let mut record = BaseRecord::with_opaque_to(&topic, i as usize)
                .key(&key)
                .payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        eprintln!("send: {e}; retrying");
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
            sent.push(send_us);
            i += 1;
        }
        (sent, worst_lag)
    })
}

/// Nearest-rank percentiles of `values` (sorted here), in the order p50, p90, p99, max.
fn percentiles(values: &mut [f64]) -> [f64; 4] {
    if values.is_empty() {
        return [f64::NAN; 4];
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| {
        let rank = (p * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    [at(0.50), at(0.90), at(0.99), values[values.len() - 1]]
}

fn row(name: &str, mut values: Vec<f64>) -> String {
    let [p50, p90, p99, max] = percentiles(&mut values);
    format!("  {name:<28} {p50:>8.1} {p90:>8.1} {p99:>8.1} {max:>8.1}")
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("creating the admin client")
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_latency: {e}\nusage: bench_latency <exactly_once|at_least_once> [rate=200] [seconds=20] [warmup=5] [partitions=6] [users=1000]");
            return ExitCode::from(2);
        }
    };
    let Ok(bootstrap) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") else {
        eprintln!("bench_latency: set KAFKA_BOOTSTRAP_SERVERS to a running broker (e.g. `make kafka-up`, then KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092)");
        return ExitCode::from(2);
    };
    run(&args, &bootstrap)
}

fn run(args: &Args, bootstrap: &str) -> ExitCode {
    let prefix = format!("latency-{}-{}", std::process::id(), now_us() / 1_000_000);
    let events_topic = format!("{prefix}-events");
    let alerts_topic = format!("{prefix}-alerts");
    let bin = std::env::var("USER_MONITOR_BIN").map_or_else(
        |_| {
            std::env::current_exe()
                .expect("own path")
                .parent()
                .and_then(|p| p.parent())
                .expect("target/<profile>/examples")
                .join("user-monitor")
        },
        std::path::PathBuf::from,
    );
    let topics = [
        ("USER_MONITOR__TOPICS__EVENTS", events_topic.clone()),
        ("USER_MONITOR__TOPICS__ALERTS", alerts_topic.clone()),
        ("USER_MONITOR__TOPICS__DLQ", format!("{prefix}-dlq")),
        (
            "USER_MONITOR__TOPICS__PROFILES",
            format!("{prefix}-profiles"),
        ),
        ("USER_MONITOR__TOPICS__STATE", format!("{prefix}-state")),
        ("USER_MONITOR__TOPICS__AUDIT", format!("{prefix}-audit")),
    ];
    let env: Vec<(&str, String)> = topics
        .iter()
        .cloned()
        .chain([
            (
                "USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS",
                bootstrap.to_owned(),
            ),
            ("USER_MONITOR__KAFKA__GROUP_ID", prefix.clone()),
            (
                "USER_MONITOR__TOPICS__PARTITIONS",
                args.partitions.to_string(),
            ),
            (
                "USER_MONITOR__PROCESSING__GUARANTEE",
                args.guarantee.clone(),
            ),
            ("USER_MONITOR__PROCESSING__TRANSACTIONAL_ID", prefix.clone()),
            ("USER_MONITOR__LOG__FORMAT", "json".to_owned()),
            (
                "USER_MONITOR__LOG__FILTER",
                format!(
                    "warn,user_monitor::processor=debug{}",
                    std::env::var("BENCH_PROCESSOR_LOG_FILTER")
                        .map(|f| format!(",{f}"))
                        .unwrap_or_default()
                ),
            ),
        ])
        .collect();
    let passed: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("USER_MONITOR__") && !env.iter().any(|(e, _)| e == k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "== {} at {} events/s, {} users, {} partitions: {}s measured after {}s warm-up; processor env: {}",
        args.guarantee,
        args.rate,
        args.users,
        args.partitions,
        args.seconds,
        args.warmup,
        if passed.is_empty() { "defaults".to_owned() } else { passed.join(" ") }
    );

    // The events topic first, with broker timestamps, so that delivery reports carry each
    // event's append time; `topics create` makes the rest.
    let admin = admin(bootstrap);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let created = futures::executor::block_on(
        admin.create_topics(
            [
                &NewTopic::new(&events_topic, args.partitions, TopicReplication::Fixed(1))
                    .set("message.timestamp.type", "LogAppendTime"),
            ],
            &options,
        ),
    );
    match created.as_deref() {
        Ok([Ok(_)]) => {}
        other => {
            eprintln!("bench_latency: cannot create {events_topic}: {other:?}");
            return ExitCode::FAILURE;
        }
    }
    let status = Command::new(&bin)
        .args(["topics", "create"])
        .env_remove("RUST_LOG")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!(
            "bench_latency: `{} topics create` failed ({status:?}); build it with `cargo build --release --bin user-monitor`",
            bin.display()
        );
        return ExitCode::FAILURE;
    }

    let child_log = Arc::new(ChildLog::default());
    let mut child = match Command::new(&bin)
        .arg("process")
        .env_remove("RUST_LOG")
        .envs(env.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_latency: cannot start {}: {e}", bin.display());
            return ExitCode::FAILURE;
        }
    };
    let stderr = child.stderr.take().expect("piped stderr");
    let mut child = ChildGuard(Some(child));
    let log_thread = follow_log(stderr, Arc::clone(&child_log));

    let stop_reader = Arc::new(AtomicBool::new(false));
    let received_count = Arc::new(AtomicUsize::new(0));
    let reader = read_responses(
        bootstrap,
        &alerts_topic,
        args.partitions,
        &format!("{prefix}-reader"),
        Arc::clone(&stop_reader),
        Arc::clone(&received_count),
    );
    let producer: Arc<ThreadedProducer<DeliveryLog>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // As the shim's producer (src/kafka/mod.rs producer_config).
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", env_or("BENCH_PRODUCER_LINGER_MS", "1"))
            .set("partitioner", "murmur2_random")
            .create_with_context(DeliveryLog::default())
            .expect("creating the producer"),
    );
    // Connects the producer before the clock starts.
    let _ = producer
        .client()
        .fetch_metadata(Some(&events_topic), Duration::from_secs(10));

    let waiting = Instant::now();
    while child_log.restored.load(Ordering::SeqCst) < args.partitions as usize {
        if let Some(status) = child.exited() {
            eprintln!("bench_latency: the processor exited before it was ready: {status}");
            return ExitCode::FAILURE;
        }
        if waiting.elapsed() > READY_TIMEOUT {
            eprintln!(
                "bench_latency: the processor restored {} of {} partitions within {READY_TIMEOUT:?}",
                child_log.restored.load(Ordering::SeqCst),
                args.partitions
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "processor ready after {:.1}s; producing",
        waiting.elapsed().as_secs_f64()
    );

    let stop_producer = Arc::new(AtomicBool::new(false));
    let started_us = now_us();
    let sender = produce(
        Arc::clone(&producer),
        events_topic.clone(),
        args.rate,
        args.users,
        Arc::clone(&stop_producer),
    );
    let window_from = started_us + (args.warmup * 1e6) as i64;
    let window_to = window_from + (args.seconds * 1e6) as i64;
    let mut died = None;
    while now_us() < window_to {
        if let Some(status) = child.exited() {
            died = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_producer.store(true, Ordering::Relaxed);
    let (sent, worst_lag) = sender.join().expect("producer thread panicked");
    let _ = producer.flush(Duration::from_secs(30));
    let drain_from = Instant::now();
    while received_count.load(Ordering::Relaxed) < sent.len()
        && drain_from.elapsed() < DRAIN_TIMEOUT
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_reader.store(true, Ordering::Relaxed);
    let received = reader.join().expect("reader thread panicked");
    child.stop();
    let _ = log_thread.join();
    if let Some(status) = died {
        eprintln!("bench_latency: the processor exited during the run: {status}");
    }

    // Join: event seq -> delivery (coordinates) -> response.
    let deliveries = std::mem::take(&mut *producer.context().reports.lock().expect("poisoned"));
    let by_coordinates: HashMap<(i32, i64), &Received> = received
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let mut total = Vec::new();
    let mut ack = Vec::new();
    let mut to_append = Vec::new();
    let mut to_processed = Vec::new();
    let mut to_read = Vec::new();
    let (mut measured, mut missing, mut undelivered, mut mismatched) = (0usize, 0, 0, 0);
    for (seq, &send_us) in sent.iter().enumerate() {
        if send_us < window_from || send_us >= window_to {
            continue;
        }
        measured += 1;
        let Some(d) = deliveries.get(seq).copied().flatten() else {
            undelivered += 1;
            continue;
        };
        let Some(r) = by_coordinates.get(&(d.partition, d.offset)) else {
            missing += 1;
            continue;
        };
        if r.seq != Some(seq as u64) {
            mismatched += 1;
        }
        let send_ms = send_us as f64 / 1e3;
        total.push((r.recv_us - send_us) as f64 / 1e3);
        ack.push((d.ack_us - send_us) as f64 / 1e3);
        to_append.push(d.append_ms as f64 - send_ms);
        to_processed.push((r.created_ms - d.append_ms) as f64);
        to_read.push(r.recv_us as f64 / 1e3 - r.created_ms as f64);
    }
    let matched = total.len();
    println!(
        "{measured} events measured ({} sent, {} responses read), {matched} matched, {missing} without response, {undelivered} undelivered, {mismatched} seq mismatches; sender at worst {:.1} ms behind schedule",
        sent.len(),
        received.len(),
        worst_lag.as_secs_f64() * 1e3
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>8} {:>8}",
        "ms", "p50", "p90", "p99", "max"
    );
    let [p50, p90, p99, max] = percentiles(&mut total.clone());
    println!("{}", row("send -> response read", total));
    println!("  breakdown:");
    println!("{}", row("produce ack", ack));
    println!("{}", row("send -> append", to_append));
    println!("{}", row("append -> resp. produced", to_processed));
    println!("{}", row("resp. produced -> read", to_read));
    let batches: Vec<BatchLog> = child_log
        .batches
        .lock()
        .expect("poisoned")
        .iter()
        .filter(|b| b.at_us >= window_from && b.at_us < window_to)
        .copied()
        .collect();
    if !batches.is_empty() {
        let events: f64 = batches.iter().map(|b| b.records).sum();
        println!(
            "  processor batches in the window: {} ({:.1}/s, {:.1} records each on average)",
            batches.len(),
            batches.len() as f64 / args.seconds,
            events / batches.len() as f64
        );
        let column = |f: fn(&BatchLog) -> f64| batches.iter().map(f).collect::<Vec<f64>>();
        let (offsets, commit) = if args.guarantee == "exactly_once" {
            ("batch: send offsets", "batch: commit txn")
        } else {
            ("batch: flush", "batch: commit offsets")
        };
        let rows = [
            ("batch: profiles catch-up", column(|b| b.profiles_ms)),
            ("batch: evaluate + produce", column(|b| b.produce_ms)),
            (offsets, column(|b| b.offsets_ms)),
            (commit, column(|b| b.commit_ms)),
        ];
        for (name, values) in rows {
            println!("{}", row(name, values));
        }
    }
    println!(
        "RESULT guarantee={} rate={} p50={p50:.1} p90={p90:.1} p99={p99:.1} max={max:.1} matched={matched} missing={missing}",
        args.guarantee, args.rate
    );

    // Best effort: leave the broker as it was.
    let names: Vec<&str> = topics.iter().map(|(_, t)| t.as_str()).collect();
    let _ = futures::executor::block_on(admin.delete_topics(&names, &options));

    if missing > 0 || undelivered > 0 || died.is_some() || matched == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
