//! A live input stream for tests that fault the broker under it: inputs produced at a steady
//! rate in the background by one idempotent producer (a broker restart delays records but never
//! reorders or duplicates them), each input's coordinates and append time, and the committed
//! responses of an alerts topic by input coordinate as they arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::kafka::{client_at, Tail};

/// An input record as [`stream`] produces it.
pub trait Streamed: Send + Sync + 'static {
    /// An explicit partition (e.g. a misplaced event); `None` = the key's murmur2 partition (a
    /// random one without key).
    fn partition(&self) -> Option<i32> {
        None
    }
    fn key(&self) -> Option<&str>;
    fn value(&self) -> &[u8];
}

/// Where each input landed, and its timestamp (milliseconds), by input index.
pub type Produced = (Vec<(i32, i64)>, Vec<i64>);

/// Delivery reports of the background producer, by input index.
struct Deliveries {
    coordinates: Mutex<Vec<(i32, i64)>>,
    /// Each input record's timestamp in milliseconds: the broker's append time (the events
    /// topic is `LogAppendTime`), which orders it against a rule set's publication.
    timestamps: Mutex<Vec<i64>>,
    /// Every delivery report carried a log append time.
    log_append: AtomicBool,
    failed: Mutex<Vec<String>>,
    reported: AtomicUsize,
}

struct DeliveryContext(Arc<Deliveries>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(m) => {
                self.0.coordinates.lock().unwrap()[index] = (m.partition(), m.offset());
                self.0.timestamps.lock().unwrap()[index] = m.timestamp().to_millis().unwrap_or(0);
                if !matches!(m.timestamp(), rdkafka::Timestamp::LogAppendTime(_)) {
                    self.0.log_append.store(false, Ordering::SeqCst);
                }
            }
            Err((e, _)) => self
                .0
                .failed
                .lock()
                .unwrap()
                .push(format!("input {index}: {e}")),
        }
        self.0.reported.fetch_add(1, Ordering::SeqCst);
    }
}

/// Produces `inputs` to `topic` at `rate` per second in the background, until all are produced
/// or `stop` is set (then only those produced so far count); sets `done` once every produced
/// input is acknowledged. Joins to the produced inputs' coordinates and timestamps (the topic
/// must be `LogAppendTime`). `context` starts every panic message (e.g. the seed).
pub fn stream<T: Streamed>(
    bootstrap: String,
    topic: String,
    inputs: Arc<Vec<T>>,
    rate: f64,
    context: String,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Produced> {
    std::thread::spawn(move || {
        let deliveries = Arc::new(Deliveries {
            coordinates: Mutex::new(vec![(-1, -1); inputs.len()]),
            timestamps: Mutex::new(vec![0; inputs.len()]),
            log_append: AtomicBool::new(true),
            failed: Mutex::new(Vec::new()),
            reported: AtomicUsize::new(0),
        });
        let producer: ThreadedProducer<DeliveryContext> = client_at(
            &bootstrap,
            &[
                ("partitioner", "murmur2_random"),
                ("enable.idempotence", "true"),
                ("linger.ms", "5"),
            ],
        )
        .create_with_context(DeliveryContext(Arc::clone(&deliveries)))
        .unwrap();
        let started = Instant::now();
        let mut sent = 0;
        while sent < inputs.len() && !stop.load(Ordering::SeqCst) {
            let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(inputs.len());
            while sent < due {
                let input = &inputs[sent];
                let mut record = BaseRecord::with_opaque_to(&topic, sent).payload(input.value());
                if let Some(key) = input.key() {
                    record = record.key(key);
                }
                if let Some(partition) = input.partition() {
                    record = record.partition(partition);
                }
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((e, back)) if user_monitor::kafka::is_queue_full(&e) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err((e, _)) => panic!("{context}: producing input {sent}: {e}"),
                    }
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        while deliveries.reported.load(Ordering::SeqCst) < sent {
            assert!(
                Instant::now() < deadline,
                "{context}: inputs not acknowledged after 600 s"
            );
            let _ = producer.flush(Duration::from_secs(1));
        }
        done.store(true, Ordering::SeqCst);
        let failed = deliveries.failed.lock().unwrap();
        assert!(
            failed.is_empty(),
            "{context}: inputs not acknowledged: {:?}",
            &failed[..failed.len().min(5)]
        );
        assert!(
            deliveries.log_append.load(Ordering::SeqCst),
            "{context}: the events topic is not LogAppendTime"
        );
        let mut coordinates = deliveries.coordinates.lock().unwrap().clone();
        let mut timestamps = deliveries.timestamps.lock().unwrap().clone();
        coordinates.truncate(sent);
        timestamps.truncate(sent);
        (coordinates, timestamps)
    })
}

/// The produced inputs as the oracle takes them: `(coordinate, value, append time)`.
pub fn timed<'a, T: Streamed>(
    (coordinates, timestamps): &Produced,
    inputs: &'a [T],
) -> Vec<((i32, i64), &'a [u8], i64)> {
    coordinates
        .iter()
        .zip(timestamps)
        .zip(inputs)
        .map(|((&c, &t), input)| (c, input.value(), t))
        .collect()
}

/// The committed responses of one alerts topic, by input coordinate, as they arrive.
pub struct Responses {
    tail: Tail,
    pub by_input: HashMap<(i32, i64), Vec<Vec<u8>>>,
    /// The timestamp of each input's first response.
    pub first_at: HashMap<(i32, i64), i64>,
    pub malformed: Vec<String>,
}

impl Responses {
    pub fn new(bootstrap: &str, topic: &str) -> Responses {
        Responses {
            tail: Tail::new(bootstrap, topic),
            by_input: HashMap::new(),
            first_at: HashMap::new(),
            malformed: Vec::new(),
        }
    }

    /// Reads what arrives within `wait`.
    pub fn pump(&mut self, wait: Duration) {
        self.tail.poll(wait);
        for r in self.tail.records.drain(..) {
            let id = serde_json::from_slice::<serde_json::Value>(&r.value)
                .ok()
                .and_then(|v| v["event_id"].as_str().map(str::to_owned))
                .and_then(|id| {
                    let (p, o) = id.split_once('-')?;
                    Some((p.parse().ok()?, o.parse().ok()?))
                });
            match id {
                Some(coordinate) => {
                    if let Some(t) = r.timestamp {
                        self.first_at.entry(coordinate).or_insert(t);
                    }
                    self.by_input.entry(coordinate).or_default().push(r.value)
                }
                None => self
                    .malformed
                    .push(String::from_utf8_lossy(&r.value).into_owned()),
            }
        }
    }

    /// Reads responses until every input at `coordinates` has one, or none came for `patience`
    /// (or `at_most` passed), calling `meanwhile` between reads (e.g. to restart exited
    /// processes); then a few seconds more, for late repeats.
    pub fn until_answered(
        &mut self,
        coordinates: &[(i32, i64)],
        patience: Duration,
        at_most: Duration,
        mut meanwhile: impl FnMut(),
    ) {
        let deadline = Instant::now() + at_most;
        let (mut answered, mut progress) = (0, Instant::now());
        while answered < coordinates.len()
            && progress.elapsed() < patience
            && Instant::now() < deadline
        {
            self.pump(Duration::from_millis(500));
            meanwhile();
            let now = self.answered(coordinates);
            if now > answered {
                (answered, progress) = (now, Instant::now());
            }
        }
        self.pump(Duration::from_secs(2));
        meanwhile();
    }

    /// How many of the inputs at `coordinates` have a response.
    pub fn answered(&self, coordinates: &[(i32, i64)]) -> usize {
        coordinates
            .iter()
            .filter(|c| self.by_input.contains_key(c))
            .count()
    }
}
