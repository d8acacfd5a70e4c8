//! Shared harness for tests against a real Kafka broker: random topic and group names, processor
//! processes, producing inputs, reading committed outputs, and the expected responses.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use user_monitor::domain::event::decode;
use user_monitor::profiles::Profiles;
use user_monitor::rules::Limits;
use user_monitor::state::Users;

/// The broker under test: `KAFKA_BOOTSTRAP_SERVERS`, which `make test` sets after starting one.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run the suite with `make test` (it starts a local \
             Apache Kafka), or start one with `make kafka-up` and export the printed variable"
        )
    })
}

pub fn scenarios_dir() -> PathBuf {
    std::env::var_os("USER_MONITOR_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scenarios"))
}

/// One test's private world: topics, group and configuration directory.
pub struct World {
    pub prefix: String,
    pub partitions: i32,
    pub dir: tempfile::TempDir,
    pub extra: Vec<(String, String)>,
    /// Every process this world started, killed when it is dropped (also when a test panics).
    spawned: std::sync::Mutex<Vec<u32>>,
}

impl Drop for World {
    fn drop(&mut self) {
        let marker = self.dir.path().to_string_lossy().into_owned();
        for pid in self.spawned.lock().unwrap().drain(..) {
            // Only ours: a pid of a process that already exited may belong to another by now.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains(&marker) {
                continue;
            }
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl World {
    pub fn new(name: &str, partitions: i32) -> World {
        let prefix = format!(
            "{name}-{}",
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
        );
        let dir = tempfile::tempdir().unwrap();
        // Dotted librdkafka keys cannot travel through environment variables: use a config file.
        std::fs::write(
            dir.path().join("test.toml"),
            "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
        )
        .unwrap();
        World {
            prefix,
            partitions,
            dir,
            extra: Vec::new(),
            spawned: Default::default(),
        }
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("{}-{kind}", self.prefix)
    }

    pub fn events(&self) -> String {
        self.topic("events")
    }
    pub fn alerts(&self) -> String {
        self.topic("alerts")
    }
    pub fn dlq(&self) -> String {
        self.topic("dlq")
    }
    pub fn state(&self) -> String {
        self.topic("state")
    }
    pub fn profiles(&self) -> String {
        self.topic("profiles")
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.extra.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Environment for a `user-monitor` process of this world; `slot` names its transactional id
    /// (stable across restarts of the same slot, as in production).
    pub fn env(&self, slot: usize) -> Vec<(String, String)> {
        let mut env = vec![
            ("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS", bootstrap()),
            ("USER_MONITOR__KAFKA__GROUP_ID", self.prefix.clone()),
            ("USER_MONITOR__TOPICS__EVENTS", self.events()),
            ("USER_MONITOR__TOPICS__ALERTS", self.alerts()),
            ("USER_MONITOR__TOPICS__DLQ", self.dlq()),
            ("USER_MONITOR__TOPICS__PROFILES", self.profiles()),
            ("USER_MONITOR__TOPICS__STATE", self.state()),
            (
                "USER_MONITOR__TOPICS__PARTITIONS",
                self.partitions.to_string(),
            ),
            (
                "USER_MONITOR__PROCESSING__TRANSACTIONAL_ID",
                format!("{}-slot{slot}", self.prefix),
            ),
            (
                "USER_MONITOR__PROCESSING__TRANSACTION_TIMEOUT",
                "10s".to_owned(),
            ),
            ("USER_MONITOR__SNAPSHOT__INTERVAL", "1s".to_owned()),
            ("USER_MONITOR__LOG__FILTER", "info,rdkafka=error".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<Vec<_>>();
        env.extend(self.extra.iter().cloned());
        env
    }

    /// Starts `user-monitor process` for `slot`; its log goes to a file in the world's directory.
    pub fn spawn_processor(&self, slot: usize) -> Child {
        self.spawn(&["process"], slot)
    }

    pub fn spawn(&self, args: &[&str], slot: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("slot{slot}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_user-monitor"))
            .args(args)
            .arg("--config-dir")
            .arg(self.dir.path())
            .arg("--env")
            .arg("test")
            .envs(self.env(slot))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts user-monitor");
        self.spawned.lock().unwrap().push(child.id());
        child
    }

    pub fn log(&self, slot: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("slot{slot}.log"))).unwrap_or_default()
    }

    /// Creates the topics the way the processor would (so producers can start first).
    pub fn create_topics(&self) {
        let mut child = self.spawn(&["topics", "create"], 99);
        let status = child.wait().unwrap();
        assert!(status.success(), "topics create failed: {}", self.log(99));
    }
}

pub fn client(extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap());
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

/// Produces `lines` keyed by their `user_id` (or `key` when given), murmur2 like Java clients,
/// waits for every ack, and returns the coordinates `(partition, offset)` in input order.
pub fn produce(topic: &str, records: &[(Option<String>, Vec<u8>)]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = client(&[
        ("partitioner", "murmur2_random"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("message.max.bytes", "2000000"),
    ])
    .create()
    .unwrap();
    let mut coordinates = Vec::with_capacity(records.len());
    for chunk in records.chunks(20_000) {
        // `send_result` enqueues at once (the future of `send` would only enqueue when polled).
        let deliveries: Vec<_> = chunk
            .iter()
            .map(|(key, value)| loop {
                let mut record = FutureRecord::to(topic).payload(value.as_slice());
                if let Some(key) = key {
                    record = record.key(key.as_str());
                }
                match producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err((e, _)) => panic!("produce failed: {e}"),
                }
            })
            .collect();
        for delivery in deliveries {
            let delivered = futures::executor::block_on(delivery)
                .expect("delivery report")
                .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
            coordinates.push((delivered.partition, delivered.offset));
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    coordinates
}

/// Produces `lines` in the background, `chunk` records at a time with `pause` between chunks, so
/// they stream through while a test kills and starts processors. Joins to their coordinates.
pub fn stream_in_background(
    topic: String,
    lines: &[Vec<u8>],
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    let keyed = keyed(lines);
    std::thread::spawn(move || {
        let mut coordinates = Vec::new();
        for records in keyed.chunks(chunk) {
            coordinates.extend(produce(&topic, records));
            std::thread::sleep(pause);
        }
        coordinates
    })
}

/// Keys each JSONL line by its `user_id` when it has one.
pub fn keyed(lines: &[Vec<u8>]) -> Vec<(Option<String>, Vec<u8>)> {
    lines
        .iter()
        .map(|line| {
            let key = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("user_id").and_then(|u| u.as_u64()))
                .map(|u| u.to_string());
            (key, line.clone())
        })
        .collect()
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads every committed record of `topic` until `want` records arrived (or `timeout`).
pub fn read_committed(topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
    let consumer: BaseConsumer = client(&[
        ("group.id", &format!("reader-{}", uuid::Uuid::new_v4())),
        ("isolation.level", "read_committed"),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("fetch.message.max.bytes", "2000000"),
    ])
    .create()
    .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_owned(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Read {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                })
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out
}

/// What `evaluate` answers for each input line, in order (`Err` = rejected), using the engine.
pub fn expected(lines: &[Vec<u8>], profiles: &Profiles) -> Vec<Result<serde_json::Value, ()>> {
    let limits = Limits::default();
    let mut users = Users::default();
    lines
        .iter()
        .map(|line| {
            let event = decode(line).map_err(|_| ())?;
            let codes = users
                .apply(&event, profiles.risk(event.user_id.0), &limits)
                .map_err(|_| ())?;
            Ok(serde_json::json!({
                "alert": codes.is_alert(),
                "alert_codes": codes.as_slice(),
                "user_id": event.user_id.0,
            }))
        })
        .collect()
}

/// Checks that the committed responses answer every input exactly once, as `evaluate` does.
pub fn assert_exactly_one_response_each(
    coordinates: &[(i32, i64)],
    expected: &[Result<serde_json::Value, ()>],
    responses: &[Read],
) {
    let mut by_event: HashMap<String, Vec<&Read>> = HashMap::new();
    for r in responses {
        let value: serde_json::Value = serde_json::from_slice(&r.value).expect("response is JSON");
        let id = value["event_id"].as_str().expect("event_id").to_owned();
        by_event.entry(id).or_default().push(r);
    }
    let mut missing = 0;
    let mut wrong = Vec::new();
    for (i, ((partition, offset), want)) in coordinates.iter().zip(expected).enumerate() {
        let id = format!("{partition}-{offset}");
        let Some(got) = by_event.remove(&id) else {
            missing += 1;
            continue;
        };
        assert_eq!(got.len(), 1, "input {i} ({id}) has {} responses", got.len());
        let value: serde_json::Value = serde_json::from_slice(&got[0].value).unwrap();
        match want {
            Ok(want) => {
                let legacy = serde_json::json!({
                    "alert": value["alert"], "alert_codes": value["alert_codes"], "user_id": value["user_id"],
                });
                if &legacy != want && wrong.len() < 5 {
                    wrong.push(format!("input {i} ({id}): got {value}, want {want}"));
                }
            }
            Err(()) => {
                if value.get("error").is_none() && wrong.len() < 5 {
                    wrong.push(format!("input {i} ({id}): got {value}, want an error"));
                }
            }
        }
    }
    assert_eq!(missing, 0, "{missing} inputs have no committed response");
    assert!(wrong.is_empty(), "wrong responses:\n{}", wrong.join("\n"));
    assert!(
        by_event.is_empty(),
        "responses to unknown inputs: {:?}",
        by_event.keys().take(5).collect::<Vec<_>>()
    );
}

/// Waits until `child` exits or `timeout` passes; kills it then.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// SIGTERM (graceful shutdown).
pub fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

/// SIGKILL: no chance to clean up.
pub fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

pub fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}
