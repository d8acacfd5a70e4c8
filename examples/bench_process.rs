//! End-to-end throughput of `user-monitor process` through a real broker.
//!
//! Preloads N generated events into fresh topics, starts the release processor, and measures the
//! time from its first committed response to the N-th (read_committed), and from its start.
//!
//! `KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run --release --example bench_process -- 1000000 exactly_once`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let guarantee = args.next().unwrap_or_else(|| "exactly_once".to_owned());
    let partitions: i32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(6);
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .expect("set KAFKA_BOOTSTRAP_SERVERS (make kafka-up)");
    let prefix = format!("bench-{}", std::process::id());
    // USER_MONITOR_BIN: another build to measure (an A/B against an older binary).
    let bin = std::env::var("USER_MONITOR_BIN").map_or_else(
        |_| {
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("user-monitor")
        },
        std::path::PathBuf::from,
    );
    let env = [
        ("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
        ("USER_MONITOR__KAFKA__GROUP_ID", prefix.clone()),
        ("USER_MONITOR__TOPICS__EVENTS", format!("{prefix}-events")),
        ("USER_MONITOR__TOPICS__ALERTS", format!("{prefix}-alerts")),
        ("USER_MONITOR__TOPICS__DLQ", format!("{prefix}-dlq")),
        (
            "USER_MONITOR__TOPICS__PROFILES",
            format!("{prefix}-profiles"),
        ),
        ("USER_MONITOR__TOPICS__STATE", format!("{prefix}-state")),
        ("USER_MONITOR__TOPICS__PARTITIONS", partitions.to_string()),
        ("USER_MONITOR__PROCESSING__GUARANTEE", guarantee.clone()),
        ("USER_MONITOR__PROCESSING__TRANSACTIONAL_ID", prefix.clone()),
        ("USER_MONITOR__LOG__FILTER", "warn".to_owned()),
    ];
    let status = Command::new(&bin)
        .args(["topics", "create"])
        .envs(env.iter().cloned())
        .status()
        .unwrap();
    assert!(status.success(), "topics create failed");

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let user = 1 + (x >> 8) % 10_000;
        let kind = if x & 1 == 0 { "deposit" } else { "withdraw" };
        let value = format!(
            r#"{{"type": "{kind}", "amount": "{}.{:02}", "user_id": {user}, "time": {}}}"#,
            1 + (x >> 24) % 300,
            x % 100,
            i / 100
        );
        let key = user.to_string();
        let mut record = BaseRecord::to(&env[2].1).key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    eprintln!(
        "preloaded {n} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut processor = Command::new(&bin)
        .arg("process")
        .envs(env.iter().cloned())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process_started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{prefix}-reader"))
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&env[3].1, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut seen = 0usize;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if m.payload().is_some() {
                seen += 1;
                first.get_or_insert_with(Instant::now);
            }
        }
    }
    let done = Instant::now();
    let cpu = cpu_seconds(processor.id());
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(processor.id().to_string())
        .status();
    let _ = processor.wait();
    let first = first.expect("no response arrived");
    let steady = done.duration_since(first).as_secs_f64();
    let total = done.duration_since(process_started).as_secs_f64();
    println!(
        "{guarantee}: {seen} responses, {partitions} partitions: {:.0} events/s from first to last response ({steady:.1}s), {:.0} events/s including start-up ({total:.1}s)",
        seen as f64 / steady,
        seen as f64 / total
    );
    if let Some(cpu) = cpu {
        println!(
            "{guarantee}: processor CPU {cpu:.1}s = {:.1} CPU-seconds per million events",
            cpu * 1e6 / seen.max(1) as f64
        );
    }
}

/// User + system CPU time of a process so far, from `/proc/<pid>/stat` (Linux).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}
