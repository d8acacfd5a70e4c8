//! Kafka plumbing: the broker under test, one test's private world (topics, group, processes),
//! producing inputs, reading committed outputs, and private brokers a test may kill.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::events::keyed;

/// The broker under test: `KAFKA_BOOTSTRAP_SERVERS`, which `make test` sets after starting one.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BOOTSTRAP_SERVERS is not set: run the suite with `make test` (it starts a local \
             Apache Kafka), or start one with `make kafka-up` and export the printed variable"
        )
    })
}

/// One test's private world: topics, group and configuration directory.
pub struct World {
    pub prefix: String,
    pub partitions: i32,
    pub dir: tempfile::TempDir,
    pub extra: Vec<(String, String)>,
    /// Every process this world started, killed when it is dropped (also when a test panics).
    spawned: std::sync::Mutex<Vec<u32>>,
    /// The broker of this world when it is not the shared one ([`World::on_broker`]).
    broker: Option<String>,
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
            broker: None,
        }
    }

    /// A world on a dedicated broker (e.g. a [`Broker`] the test kills) instead of the shared one.
    pub fn on_broker(name: &str, partitions: i32, bootstrap: &str) -> World {
        let mut world = World::new(name, partitions);
        world.broker = Some(bootstrap.to_owned());
        world
    }

    /// The brokers this world's processes and helpers talk to.
    pub fn bootstrap(&self) -> String {
        self.broker.clone().unwrap_or_else(bootstrap)
    }

    /// Replaces the raw librdkafka properties every process of this world gets (by default a
    /// 6 s session timeout and a 500 ms heartbeat, so that tests see dead members quickly).
    pub fn write_kafka_properties(&self, properties: &[(&str, &str)]) {
        let mut toml = String::from("[kafka.properties]\n");
        for (key, value) in properties {
            toml.push_str(&format!("{key:?} = {value:?}\n"));
        }
        std::fs::write(self.dir.path().join("test.toml"), toml).unwrap();
    }

    /// Starts `user-monitor process` for `slot` with extra environment for this start only
    /// (e.g. a fault-injection knob).
    pub fn spawn_processor_with(&self, slot: usize, env: &[(&str, &str)]) -> Child {
        self.spawn_with(&["process"], slot, env)
    }

    /// Produces to a topic of this world's broker (see [`produce_at`]).
    pub fn produce(&self, topic: &str, records: &[(Option<String>, Vec<u8>)]) -> Vec<(i32, i64)> {
        produce_at(&self.bootstrap(), topic, records)
    }

    /// Reads a topic of this world's broker (see [`read_committed_at`]).
    pub fn read_committed(&self, topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
        read_committed_at(&self.bootstrap(), topic, want, timeout)
    }

    /// Where the log of `slot` is; every start of the slot appends to it.
    pub fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.path().join(format!("slot{slot}.log"))
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
    pub fn rules(&self) -> String {
        self.topic("rules")
    }
    pub fn shadow(&self) -> String {
        self.topic("shadow")
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
            ("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS", self.bootstrap()),
            ("USER_MONITOR__KAFKA__GROUP_ID", self.prefix.clone()),
            ("USER_MONITOR__TOPICS__EVENTS", self.events()),
            ("USER_MONITOR__TOPICS__ALERTS", self.alerts()),
            ("USER_MONITOR__TOPICS__DLQ", self.dlq()),
            ("USER_MONITOR__TOPICS__PROFILES", self.profiles()),
            ("USER_MONITOR__TOPICS__STATE", self.state()),
            ("USER_MONITOR__TOPICS__RULES", self.rules()),
            ("USER_MONITOR__TOPICS__SHADOW", self.shadow()),
            ("USER_MONITOR__TOPICS__TRIAGE", self.topic("triage")),
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
            // A read model of its own, kept across restarts of the world's processes.
            (
                "USER_MONITOR__STORE__DATA_DIR",
                self.dir.path().join("store").display().to_string(),
            ),
            // Tests of the API's own access control set "tokens" (world.set overrides this).
            ("USER_MONITOR__HTTP__AUTH__MODE", "open".to_owned()),
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
        self.spawn_with(args, slot, &[])
    }

    /// [`World::spawn`] with extra environment (after the world's own, so it wins).
    pub fn spawn_with(&self, args: &[&str], slot: usize, env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("slot{slot}.log")))
            .unwrap();
        let child = super::process::user_monitor_command()
            .args(args)
            .arg("--config-dir")
            .arg(self.dir.path())
            .arg("--env")
            .arg("test")
            .envs(self.env(slot))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starts user-monitor");
        self.spawned.lock().unwrap().push(child.id());
        child
    }

    pub fn log(&self, slot: usize) -> String {
        // Lossy: a line cut by kill -9 must not make the whole log read as empty.
        std::fs::read(self.dir.path().join(format!("slot{slot}.log")))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Creates the topics the way the processor would (so producers can start first).
    pub fn create_topics(&self) {
        let mut child = self.spawn(&["topics", "create"], 99);
        let status = child.wait().unwrap();
        assert!(status.success(), "topics create failed: {}", self.log(99));
    }
}

pub fn client(extra: &[(&str, &str)]) -> ClientConfig {
    client_at(&bootstrap(), extra)
}

/// [`client`] for the brokers `bootstrap`.
pub fn client_at(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

/// Produces `lines` keyed by their `user_id` (or `key` when given), murmur2 like Java clients,
/// waits for every ack, and returns the coordinates `(partition, offset)` in input order.
pub fn produce(topic: &str, records: &[(Option<String>, Vec<u8>)]) -> Vec<(i32, i64)> {
    produce_at(&bootstrap(), topic, records)
}

/// [`produce`] to the brokers `bootstrap`.
pub fn produce_at(
    bootstrap: &str,
    topic: &str,
    records: &[(Option<String>, Vec<u8>)],
) -> Vec<(i32, i64)> {
    let placed: Vec<_> = records
        .iter()
        .map(|(key, value)| (None, key.as_deref(), value.as_slice()))
        .collect();
    produce_placed_at(bootstrap, topic, &placed)
}

/// A record to produce: `(partition, key, value)`; no partition = the key's murmur2 partition (a
/// random one for a record without key), an explicit one = that partition whatever the key.
pub type Placed<'a> = (Option<i32>, Option<&'a str>, &'a [u8]);

/// Produces `records`, each to its explicit partition when it has one, waits for every ack, and
/// returns the coordinates `(partition, offset)` in input order.
pub fn produce_placed_at(bootstrap: &str, topic: &str, records: &[Placed<'_>]) -> Vec<(i32, i64)> {
    let producer: FutureProducer = client_at(
        bootstrap,
        &[
            ("partitioner", "murmur2_random"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.max.bytes", "2000000"),
        ],
    )
    .create()
    .unwrap();
    let mut coordinates = Vec::with_capacity(records.len());
    for chunk in records.chunks(20_000) {
        // `send_result` enqueues at once (the future of `send` would only enqueue when polled).
        let deliveries: Vec<_> = chunk
            .iter()
            .map(|&(partition, key, value)| loop {
                let mut record = FutureRecord::to(topic).payload(value);
                if let Some(key) = key {
                    record = record.key(key);
                }
                if let Some(partition) = partition {
                    record = record.partition(partition);
                }
                match producer.send_result(record) {
                    Ok(delivery) => break delivery,
                    Err((e, _)) if user_monitor::kafka::is_queue_full(&e) => {
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
    stream_in_background_at(bootstrap(), topic, lines, chunk, pause)
}

/// [`stream_in_background`] to the brokers `bootstrap`.
pub fn stream_in_background_at(
    bootstrap: String,
    topic: String,
    lines: &[Vec<u8>],
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Vec<(i32, i64)>> {
    let keyed = keyed(lines);
    std::thread::spawn(move || {
        let mut coordinates = Vec::new();
        for records in keyed.chunks(chunk) {
            coordinates.extend(produce_at(&bootstrap, &topic, records));
            std::thread::sleep(pause);
        }
        coordinates
    })
}

/// Creates `topic` by hand on the brokers `bootstrap`, one replica, with topic configs
/// `configs` (none: the broker's defaults, e.g. no compaction), as an operator might.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client_at(bootstrap, &[]).create().unwrap();
    let mut new = rdkafka::admin::NewTopic::new(
        topic,
        partitions,
        rdkafka::admin::TopicReplication::Fixed(1),
    );
    for (key, value) in configs {
        new = new.set(key, value);
    }
    let results = futures::executor::block_on(
        admin.create_topics(&[new], &rdkafka::admin::AdminOptions::new()),
    )
    .unwrap();
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("creating {topic}: {e}"));
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Read {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// The record's timestamp (milliseconds since the epoch), when it has one.
    pub timestamp: Option<i64>,
}

impl Read {
    fn of<M: Message>(m: &M) -> Read {
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Read {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp: m.timestamp().to_millis(),
        }
    }

    /// The value as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).unwrap_or_else(|e| {
            panic!(
                "record {}-{} is not JSON ({e}): {}",
                self.partition,
                self.offset,
                String::from_utf8_lossy(&self.value)
            )
        })
    }
}

/// A consumer of the brokers `bootstrap` assigned to every partition of `topic` from the
/// beginning (no group membership), configured with `config`; the partitions it reads.
pub fn reader_from_beginning(
    bootstrap: &str,
    topic: &str,
    config: &[(&str, &str)],
) -> (BaseConsumer, Vec<i32>) {
    let group = format!("reader-{}", uuid::Uuid::new_v4());
    let mut settings = vec![
        ("group.id", group.as_str()),
        ("enable.auto.commit", "false"),
    ];
    settings.extend_from_slice(config);
    let consumer: BaseConsumer = client_at(bootstrap, &settings).create().unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .unwrap();
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    (consumer, partitions)
}

/// The reader of committed outputs that [`read_committed_at`] and [`Tail`] use: read_committed,
/// from the beginning of every partition of `topic`.
pub fn read_committed_reader(bootstrap: &str, topic: &str) -> (BaseConsumer, Vec<i32>) {
    reader_from_beginning(
        bootstrap,
        topic,
        &[
            ("isolation.level", "read_committed"),
            ("auto.offset.reset", "earliest"),
            ("fetch.message.max.bytes", "2000000"),
            // A commit marker does not complete a parked fetch: keep the wait short.
            ("fetch.wait.max.ms", "20"),
        ],
    )
}

/// Reads every committed record of `topic` until `want` records arrived (or `timeout`).
pub fn read_committed(topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
    read_committed_at(&bootstrap(), topic, want, timeout)
}

/// [`read_committed`] from the brokers `bootstrap`.
pub fn read_committed_at(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Vec<Read> {
    let (consumer, _) = read_committed_reader(bootstrap, topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Read::of(&m)),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out
}

/// A reader that stays assigned to every partition of a topic (read_committed, from the
/// beginning) and keeps what it read: cheaper and quicker than a [`read_committed`] per question.
pub struct Tail {
    consumer: BaseConsumer,
    pub topic: String,
    pub records: Vec<Read>,
}

impl Tail {
    pub fn new(bootstrap: &str, topic: &str) -> Tail {
        let (consumer, partitions) = read_committed_reader(bootstrap, topic);
        assert!(!partitions.is_empty(), "topic {topic} has no partitions");
        Tail {
            consumer,
            topic: topic.to_owned(),
            records: Vec::new(),
        }
    }

    /// Reads what arrives within `wait`; returns how many records were new.
    pub fn poll(&mut self, wait: Duration) -> usize {
        let before = self.records.len();
        let deadline = Instant::now() + wait;
        loop {
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(m)) => self.records.push(Read::of(&m)),
                Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                // Transient while a broker restarts; the client reconnects by itself.
                Some(Err(e)) => eprintln!("tail {}: {e}", self.topic),
            }
            if Instant::now() >= deadline {
                return self.records.len() - before;
            }
        }
    }

    /// Reads until `done(records)` holds or `timeout` passes; returns whether it held.
    pub fn until(&mut self, timeout: Duration, mut done: impl FnMut(&[Read]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.records) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.poll(Duration::from_millis(50));
        }
    }

    /// [`Tail::response`], or a panic naming the input, the wait and `context()` (e.g. what a
    /// processor logged).
    pub fn expect_response(
        &mut self,
        coordinate: (i32, i64),
        timeout: Duration,
        context: impl FnOnce() -> String,
    ) -> serde_json::Value {
        self.response(coordinate, timeout).unwrap_or_else(|| {
            panic!(
                "no committed response to {} within {timeout:?}:\n{}",
                super::events::event_id(coordinate),
                context()
            )
        })
    }

    /// The response (of an alerts topic) to the input at `coordinate`, waiting up to `timeout`.
    pub fn response(
        &mut self,
        coordinate: (i32, i64),
        timeout: Duration,
    ) -> Option<serde_json::Value> {
        let id = super::events::event_id(coordinate);
        let mut found = None;
        self.until(timeout, |records| {
            found = records
                .iter()
                .map(Read::json)
                .find(|v| v["event_id"] == id.as_str());
            found.is_some()
        });
        found
    }
}

/// A private Apache Kafka broker for tests that kill the broker itself: `scripts/kafka-local.sh`
/// in its own state directory on its own ports (the jars are shared with the main broker's).
/// Stopped and deleted when dropped, also when the test panics.
pub struct Broker {
    pub bootstrap: String,
    state: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

/// Starting brokers one at a time keeps two first starts from fetching the shared jars at once.
static BROKER_STARTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Two free loopback ports `(p, p + 1)` with `p` in `range`, for a private broker.
fn free_port_pair(range: std::ops::Range<u16>) -> (u16, u16) {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(range.clone());
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return (port, port + 1);
        }
    }
}

/// Runs `scripts/<script> <command>` for the private broker kept in `state` on `ports` (client,
/// controller), with `env` on top, one such run at a time; panics when it fails (but `down`).
/// The jars are `KAFKA_JARS_DIR`, else those of `KAFKA_STATE_DIR`, else the repository's.
fn broker_script(
    script: &str,
    command: &str,
    state: &Path,
    ports: (u16, u16),
    env: &[(&str, &str)],
) -> std::process::Output {
    let _one_at_a_time = BROKER_STARTS.lock().unwrap_or_else(|e| e.into_inner());
    let repo = super::process::repo();
    let jars = std::env::var_os("KAFKA_JARS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("KAFKA_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(".kafka"))
                .join("jars")
        });
    let out = Command::new("bash")
        .arg(repo.join("scripts").join(script))
        .arg(command)
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("KAFKA_EXTRA_PROPERTIES")
        .env("KAFKA_STATE_DIR", state)
        .env("KAFKA_JARS_DIR", jars)
        .env("KAFKA_PORT", ports.0.to_string())
        .env("KAFKA_CONTROLLER_PORT", ports.1.to_string())
        .env("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m")
        .env("KAFKA_STOP_TIMEOUT", "10")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("runs scripts/{script}: {e}"));
    assert!(
        out.status.success() || command == "down",
        "{script} {command} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The last `lines` lines of the log of the private broker kept in `state`.
fn broker_log_tail(state: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(state.join("kafka.log")).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Broker {
    /// Starts a broker on two free ports and waits until it serves.
    pub fn start() -> Broker {
        // Below the ephemeral range, so that no client connection takes a port while the
        // broker is down between a kill and its restart.
        let (port, controller_port) = free_port_pair(20_000..30_000);
        let broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            state: tempfile::Builder::new().prefix("kafka-").tempdir().unwrap(),
            port,
            controller_port,
        };
        broker.script("start");
        broker
    }

    fn script(&self, command: &str) -> std::process::Output {
        broker_script(
            "kafka-local.sh",
            command,
            self.state.path(),
            (self.port, self.controller_port),
            // A broker restarted after a kill -9 otherwise waits 9 s for its previous
            // registration to expire before it serves.
            &[(
                "KAFKA_EXTRA_PROPERTIES",
                "broker.session.timeout.ms=2000\nbroker.heartbeat.interval.ms=500",
            )],
        )
    }

    /// SIGKILL: the broker crashes, its data stays.
    pub fn kill9(&self) {
        self.script("kill9");
    }

    /// Starts the broker again on its ports, with its data, and waits until it serves. The log
    /// of the previous run is kept as `kafka.log.<n>`.
    pub fn restart(&self) {
        let log = self.state.path().join("kafka.log");
        let runs = (1..)
            .find(|n| !self.state.path().join(format!("kafka.log.{n}")).exists())
            .unwrap();
        let _ = std::fs::rename(&log, self.state.path().join(format!("kafka.log.{runs}")));
        self.script("start");
    }

    /// The broker's state directory (data, config and the logs of every run).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The broker's own log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        broker_log_tail(self.state.path(), lines)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.script("down");
    }
}

/// A private Apache Kafka broker whose only listener for clients is SASL_SSL
/// (`scripts/kafka-secure.sh`): TLS with a CA made for it on every start, SASL users for
/// SCRAM-SHA-256 and PLAIN, inter-broker traffic over the same listener. One per test binary
/// at a time ([`SecureBroker::shared`]); stopped and deleted when the last holder drops it.
pub struct SecureBroker {
    pub bootstrap: String,
    /// The CA of the broker's certificate (PEM), for `ssl.ca.location`.
    pub ca_location: PathBuf,
    pub username: String,
    pub password: String,
    state: tempfile::TempDir,
    port: u16,
    controller_port: u16,
}

static SECURE_BROKER: std::sync::Mutex<std::sync::Weak<SecureBroker>> =
    std::sync::Mutex::new(std::sync::Weak::new());

impl SecureBroker {
    /// The broker the tests of this binary share, started by the first that asks.
    pub fn shared() -> std::sync::Arc<SecureBroker> {
        let mut slot = SECURE_BROKER.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(broker) = slot.upgrade() {
            return broker;
        }
        let broker = std::sync::Arc::new(SecureBroker::start());
        *slot = std::sync::Arc::downgrade(&broker);
        broker
    }

    /// Starts a broker on two free ports and waits until it serves.
    pub fn start() -> SecureBroker {
        let (port, controller_port) = free_port_pair(30_000..32_000);
        let mut broker = SecureBroker {
            bootstrap: String::new(),
            ca_location: PathBuf::new(),
            username: "app".to_owned(),
            password: "app-secret".to_owned(),
            state: tempfile::Builder::new()
                .prefix("kafka-secure-")
                .tempdir()
                .unwrap(),
            port,
            controller_port,
        };
        let started = Instant::now();
        let out = broker.script("up");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("kafka-secure.sh up printed no {key}: {stdout}"))
        };
        broker.bootstrap = value("KAFKA_BOOTSTRAP_SERVERS");
        broker.ca_location = PathBuf::from(value("KAFKA_SSL_CA_LOCATION"));
        eprintln!(
            "SASL_SSL broker on {} in {:?}",
            broker.bootstrap,
            started.elapsed()
        );
        broker
    }

    /// `[kafka.properties]` to connect as the broker's user with `mechanism` and `password`
    /// (plus the quick session timeouts of [`World::new`]).
    pub fn properties(&self, mechanism: &str, password: &str) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.username", &self.username),
            ("sasl.password", password),
            ("ssl.ca.location", &self.ca_location.to_string_lossy()),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn script(&self, command: &str) -> std::process::Output {
        broker_script(
            "kafka-secure.sh",
            command,
            self.state.path(),
            (self.port, self.controller_port),
            &[
                ("KAFKA_SASL_USERNAME", &self.username),
                ("KAFKA_SASL_PASSWORD", &self.password),
            ],
        )
    }

    /// The broker's own log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        broker_log_tail(self.state.path(), lines)
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        self.script("down");
    }
}

/// Where the shim of `slot` listens, from its log (`http shim listening addr=...`), waiting up to
/// `timeout`; `None` when it did not say so in time.
pub fn shim_addr(world: &World, slot: usize, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = world.log(slot);
        if let Some(addr) = log
            .lines()
            .filter(|l| l.contains("http shim listening"))
            .find_map(|l| l.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
        {
            return Some(addr.to_owned());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
