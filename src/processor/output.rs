//! The output side of the processor: what one input record becomes (a response record, and a
//! dead-letter record when rejected), snapshot rounds, and the producer's transactions (or
//! at-least-once flushes) as the client's contract says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage, ToBytes};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use super::partitions::LivePartition;
use super::ProcessorError;
use crate::config::Settings;
use crate::domain::response::{truncate_text, AlertRecord, MAX_ERROR_BYTES};
use crate::domain::Risk;
use crate::domain::{Coord, Rejection, Verdict};
use crate::kafka::{classify, ErrorClass};
use crate::metrics::Metrics;
use crate::partition::Processed;
use crate::rule_set::RuleSet;
use crate::snapshot;

/// Room kept in a dead-letter record for its key, headers and record overhead.
pub(super) const DLQ_HEADROOM_BYTES: usize = 16 * 1024;

/// Keys longer than this are not copied to the response and dead-letter records (a user id is
/// at most 19 digits; an abusive key must not make those records too large for the broker).
pub(super) const MAX_KEY_BYTES: usize = 4 * 1024;

/// librdkafka's default `message.max.bytes`, and the broker's default `max.message.bytes`.
pub(super) const PRODUCER_DEFAULT_MAX_BYTES: usize = 1_000_000;

pub(super) const BROKER_DEFAULT_MAX_BYTES: usize = 1_048_588;

/// The dead-letter copy of a rejected input: its value (cut to the DLQ's size limit, saying so)
/// and headers naming the error, the rejection and where the input came from.
pub(super) struct DeadLetter<'a> {
    message: &'a OwnedMessage,
    payload: &'a [u8],
    error: &'a str,
    rejection: Rejection,
    event_id: String,
    partition: String,
    offset: String,
    /// The input's size when the value was cut.
    original_size: Option<String>,
}

impl<'a> DeadLetter<'a> {
    pub(super) fn new(
        message: &'a OwnedMessage,
        rejection: Rejection,
        error: &'a str,
        limit: usize,
    ) -> Self {
        let input = message.payload().unwrap_or_default();
        // A poison record never stalls its partition: a copy too large for the DLQ goes there
        // truncated.
        let (payload, original_size) = if input.len() > limit {
            (&input[..limit], Some(input.len().to_string()))
        } else {
            (input, None)
        };
        DeadLetter {
            message,
            payload,
            error: truncate_text(error, MAX_ERROR_BYTES),
            rejection,
            event_id: Coord::new(message.partition(), message.offset()).event_id(),
            partition: message.partition().to_string(),
            offset: message.offset().to_string(),
            original_size,
        }
    }

    pub(super) fn record<'t>(&'t self, topic: &'t str) -> BaseRecord<'t, [u8], [u8]> {
        let header = |key, value| Header {
            key,
            value: Some(value),
        };
        let mut headers = OwnedHeaders::new()
            .insert(header("error", self.error))
            .insert(header("rejection", self.rejection.as_str()))
            .insert(header("source.topic", self.message.topic()))
            .insert(header("source.partition", &self.partition))
            .insert(header("source.offset", &self.offset))
            .insert(header("event_id", &self.event_id));
        if let Some(size) = &self.original_size {
            headers = headers
                .insert(header("truncated", "true"))
                .insert(header("original.size", size));
        }
        let mut record = BaseRecord::to(topic).payload(self.payload).headers(headers);
        if let Some(key) = self.message.key().filter(|k| k.len() <= MAX_KEY_BYTES) {
            record = record.key(key);
        }
        record
    }
}

/// The producer side: transactions (or at-least-once flushes) as the client's contract says.
pub(super) struct Output {
    pub(super) settings: Arc<Settings>,
    /// Threaded: delivery reports are served in the background, which `abort_transaction`
    /// needs while it waits for outstanding records.
    pub(super) producer: ThreadedProducer<DeliveryContext>,
    pub(super) exactly_once: bool,
    pub(super) shutdown: CancellationToken,
    /// Largest dead-letter value; larger rejected inputs are truncated.
    pub(super) dlq_limit: usize,
    /// When the last transaction committed (or the producer was initialised): how a fence is
    /// told apart (see [`Output::fatal_error`]).
    pub(super) last_commit: std::sync::Mutex<Instant>,
    /// When this processor first saw the shutdown: the transactional work of its shutdown
    /// shares one budget from then (see [`Output::call_timeout`]).
    pub(super) shutdown_seen: std::sync::OnceLock<Instant>,
}

/// Counts delivery failures (only at-least-once needs them; transactions report them at commit).
#[derive(Default)]
pub(super) struct DeliveryContext {
    pub(super) failures: AtomicU64,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::warn!(error = %e, "delivery failed");
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Output {
    /// Exactly-once, at start: fences any zombie with the same transactional id and aborts its
    /// open transaction. A restarted broker may still be loading the coordinator, or finishing
    /// the predecessor's transaction: retried as any transactional call.
    pub(super) fn init(&self) -> Result<(), ProcessorError> {
        let timeout = self.settings.processing.transaction_timeout;
        self.retrying("init", |producer| producer.init_transactions(timeout))
            .map_err(|e| match classify(&e) {
                ErrorClass::Fatal => ProcessorError::Fenced(self.settings.transactional_id()),
                _ => ProcessorError::from(e),
            })?;
        self.committed();
        Ok(())
    }

    /// How long a transactional call may take: `processing.transaction_timeout`, and once a
    /// shutdown was requested no longer than what is left of half of
    /// `processing.shutdown_timeout` (the rest is for the final flush and leaving the group), so a
    /// shutdown during an outage gives up on the cluster in time instead of outliving its
    /// deadline.
    pub(super) fn call_timeout(&self) -> Duration {
        let timeout = self.settings.processing.transaction_timeout;
        if !self.shutdown.is_cancelled() {
            return timeout;
        }
        let seen = *self.shutdown_seen.get_or_init(Instant::now);
        let budget = self.settings.processing.shutdown_timeout / 2;
        timeout.min(budget.saturating_sub(seen.elapsed()))
    }

    fn committed(&self) {
        *self.last_commit.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Snapshots the changed users of revoked partitions in a transaction of their own (no
    /// transaction is open while polling), before the partitions are handed over, so their next
    /// owner replays less and nothing of this owner lands after that owner's restore. A failure
    /// only costs replay time: the next owner restores from the previous round (under
    /// at-least-once, once nothing of this attempt is still in flight).
    pub(super) fn flush_revoked(
        &self,
        mut revoked: Vec<(i32, Box<LivePartition>)>,
    ) -> Result<(), ProcessorError> {
        revoked.retain(|(_, ready)| ready.state.has_changes());
        if revoked.is_empty() {
            return Ok(());
        }
        let timeout = self.settings.processing.transaction_timeout;
        let topic = &self.settings.topics.state;
        let result = (|| {
            self.producer.context().failures.store(0, Ordering::Relaxed);
            if self.exactly_once {
                self.producer.begin_transaction()?;
            }
            let mut rounds = Vec::with_capacity(revoked.len());
            for (partition, ready) in &mut revoked {
                rounds.push((
                    *partition,
                    produce_round(&self.producer, topic, *partition, ready)?,
                ));
            }
            if !self.exactly_once {
                self.flush_delivered(timeout)?;
            }
            for (partition, covers) in rounds {
                produce_marker(&self.producer, topic, partition, covers)?;
            }
            if self.exactly_once {
                self.commit_transaction()
            } else {
                self.flush_delivered(timeout)
            }
        })();
        let partitions: Vec<i32> = revoked.iter().map(|(p, _)| *p).collect();
        let e = match result {
            Ok(()) => {
                tracing::info!(?partitions, "revoked partitions flushed: snapshots written");
                return Ok(());
            }
            Err(e) => e,
        };
        tracing::warn!(?partitions, error = %e, "could not flush revoked partitions; their next owner replays from the previous snapshot");
        if classify(&e) == ErrorClass::Fatal {
            // Fenced (or otherwise unusable): stop at the next step of the loop.
            return Err(self.fatal_error(e));
        }
        if self.exactly_once {
            self.abort().inspect_err(|e| {
                tracing::error!(error = %e, "abort after a failed flush of revoked partitions failed");
            })
        } else {
            self.wait_nothing_in_flight();
            Ok(())
        }
    }

    /// At-least-once: waits until everything produced so far is acknowledged, and fails if any
    /// record was not (the batch is then rewound and produced again).
    pub(super) fn flush_delivered(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.wait_delivered(timeout)?;
        if self.producer.context().failures.load(Ordering::Relaxed) > 0 {
            return Err(crate::kafka::undelivered());
        }
        Ok(())
    }

    /// Waits until every record produced so far has its delivery report (acknowledged or
    /// failed), with lingering cut short meanwhile.
    ///
    /// Not the client's `flush`: rust-rdkafka 0.39 calls librdkafka's flush with a zero timeout
    /// and then polls in steps of 100 ms that always run to their end, so any flush with a record
    /// in flight took at least 100 ms, the floor of every transaction and every at-least-once
    /// batch. librdkafka's own `rd_kafka_flush`, on a producer whose delivery reports are events
    /// served by another thread (the threaded producer's), waits exactly until the last report
    /// is served, and sends lingering records at once while it waits. So `linger.ms` keeps
    /// batching bulk traffic (fewer, larger requests) without delaying a light-load answer.
    #[allow(unsafe_code)]
    pub(super) fn wait_delivered(&self, timeout: Duration) -> Result<(), KafkaError> {
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `native_ptr` is the live handle of `self.producer`, which outlives this call;
        // `rd_kafka_flush` is thread-safe. In event mode (how rust-rdkafka configures delivery
        // reports) it only waits for the message count to reach zero and serves no queue, so it
        // cannot race the threaded producer's polling thread for events.
        let code = unsafe {
            rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), timeout_ms)
        };
        crate::kafka::flush_result(code)
    }

    /// At-least-once, after a failure: waits until no record is in flight any more (each was
    /// delivered or failed for good, at the latest after the producer's `message.timeout.ms`,
    /// which is `processing.transaction_timeout`), so none can land after the restore that
    /// follows. Stops waiting at shutdown.
    pub(super) fn wait_nothing_in_flight(&self) {
        while self.producer.in_flight_count() > 0 {
            if self.shutdown.is_cancelled() && self.call_timeout().is_zero() {
                tracing::warn!(
                    in_flight = self.producer.in_flight_count(),
                    "shutting down with records still in flight"
                );
                return;
            }
            let _ = self.producer.flush(Duration::from_secs(1));
        }
    }

    /// The error a fatal producer error stops this processor with.
    ///
    /// A fence has two causes, told apart by the time since the last commit (or since the
    /// producer was initialised): the transaction coordinator aborts a transaction open longer
    /// than `processing.transaction_timeout` and bumps the producer's epoch, which the next call
    /// meets as a fence; that can only happen once no transaction has committed for at least
    /// that long (an outage). Then the processor re-initialises as a restart would
    /// ([`ProcessorError::Reinitialise`], handled by [`super::run`]). So does a fatal producer
    /// error that names no other instance and no missing permission (the broker's
    /// `INVALID_TXN_STATE`, seen right after an injected abort). A fence sooner than that is
    /// another instance that initialised the same transactional id: stop
    /// ([`ProcessorError::Fenced`]). Should both instances live, the one that re-initialised
    /// fences the other within one transaction, and that one stops.
    pub(super) fn fatal_error(&self, e: KafkaError) -> ProcessorError {
        if self.exactly_once && crate::kafka::is_lost_producer(&e) {
            // No other instance named: a new producer goes on, as after a restart.
            return ProcessorError::Reinitialise {
                transactional_id: self.settings.transactional_id(),
                cause: e.to_string(),
            };
        }
        if !crate::kafka::is_fenced(&e) {
            return ProcessorError::Fatal(e);
        }
        let timeout = self.settings.processing.transaction_timeout;
        let since = self
            .last_commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if self.exactly_once && since >= timeout {
            ProcessorError::Reinitialise {
                transactional_id: self.settings.transactional_id(),
                cause: format!("{e}, with nothing committed for {since:?}: the coordinator aborted a transaction that outlived processing.transaction_timeout"),
            }
        } else {
            ProcessorError::Fenced(self.settings.transactional_id())
        }
    }

    /// Commits the open transaction, following the client's contract: a retriable error (e.g.
    /// the call timed out while the broker restarts: "retry call to resume") is retried with the
    /// same call, never answered with an abort (which the client refuses while the commit is in
    /// progress); an abortable error is returned for the caller to abort and rewind.
    pub(super) fn commit_transaction(&self) -> Result<(), KafkaError> {
        // So that the flush inside the client's commit finds nothing in flight (see
        // `wait_delivered`); a failure here is the commit's to report.
        let _ = self.wait_delivered(self.call_timeout());
        self.retrying("commit", |producer| {
            producer.commit_transaction(self.call_timeout())
        })?;
        self.committed();
        Ok(())
    }

    /// Runs a transactional call until it succeeds or fails with an error that is not
    /// retriable. Retries go on while the brokers are away (an outage shorter than the
    /// transaction timeout is ridden out; a longer one ends in an abortable error from the
    /// broker), and stop once a shutdown has used up its budget (see [`Output::call_timeout`]).
    pub(super) fn retrying(
        &self,
        what: &str,
        mut call: impl FnMut(&ThreadedProducer<DeliveryContext>) -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        let mut attempt = 0u32;
        loop {
            let e = match call(&self.producer) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let retriable = crate::kafka::transactional_call_retriable(&e);
            if self.shutdown.is_cancelled() && self.call_timeout().is_zero() {
                return Err(e);
            }
            if !retriable {
                return Err(e);
            }
            attempt += 1;
            tracing::warn!(attempt, error = %e, "transaction {what} did not finish; retrying the same call");
            std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))));
        }
    }

    /// Aborts the open transaction, retrying it as the client's contract says (see
    /// [`Output::retrying`]): a transaction left open would block every later one. A fatal
    /// error stops the instance (its restart, with the same transactional id, fences and aborts
    /// whatever is left).
    pub(super) fn abort(&self) -> Result<(), ProcessorError> {
        self.retrying("abort", |producer| {
            producer.abort_transaction(self.call_timeout())
        })
        .map_err(|e| match classify(&e) {
            ErrorClass::Fatal => self.fatal_error(e),
            _ => ProcessorError::Fatal(e),
        })
    }
}

/// Writes the snapshot records of a partition's changed users, all covering its next offset,
/// and returns that offset: the round's marker (see [`produce_marker`]) follows once they are
/// durable.
pub(super) fn produce_round<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    ready: &mut LivePartition,
) -> Result<i64, KafkaError> {
    let round = ready.state.take_round();
    let mut key = itoa::Buffer::new();
    for user in round.users {
        let value = snapshot::encode(round.covers, &user.state, user.keys);
        let user_id = user.user_id;
        let record = BaseRecord::to(topic)
            .partition(partition)
            .key(key.format(user_id).as_bytes())
            .payload(value.as_slice());
        send(producer, record)?;
    }
    ready.last_snapshot = Instant::now();
    Ok(round.covers)
}

/// Writes the marker of a complete snapshot round: the partition's state is its users' latest
/// records at `covers` (see [`crate::snapshot`]).
pub(super) fn produce_marker<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    covers: i64,
) -> Result<(), KafkaError> {
    let value = snapshot::encode_marker(covers);
    let record = BaseRecord::to(topic)
        .partition(partition)
        .key(snapshot::MARKER_KEY)
        .payload(value.as_slice());
    send(producer, record)
}

/// Sends a record, waiting for room in the producer queue when it is full.
pub(super) fn send<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
where
    C: ProducerContext<DeliveryOpaque = ()>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((e, back)) if crate::kafka::is_queue_full(&e) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The largest dead-letter value: `processing.dlq_max_record_bytes`, or what both the DLQ topic
/// and the producer accept, less room for the key and headers.
pub(super) fn dlq_limit(settings: &Settings, topic_max: Option<usize>) -> usize {
    if settings.processing.dlq_max_record_bytes > 0 {
        return settings.processing.dlq_max_record_bytes;
    }
    let producer_max = settings
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(PRODUCER_DEFAULT_MAX_BYTES);
    let max = producer_max.min(topic_max.unwrap_or(BROKER_DEFAULT_MAX_BYTES));
    max.saturating_sub(DLQ_HEADROOM_BYTES).max(1024)
}

/// A record of the shadow topic: an event on which the shadow set and the active set raised
/// different codes (CONTRACT §10, "Backtest and shadow").
#[derive(Debug, serde::Serialize)]
struct ShadowRecord<'a> {
    event_id: String,
    user_id: u64,
    risk: Risk,
    active_version: &'a str,
    shadow_version: &'a str,
    active: &'a [u32],
    shadow: &'a [u32],
    /// Codes only the shadow set raised.
    added: Vec<u32>,
    /// Codes only the active set raised.
    removed: Vec<u32>,
}

impl<'a> ShadowRecord<'a> {
    /// The disagreement of the shadow set with the active set on an accepted event, if any.
    fn of(
        at: Coord,
        verdict: &'a Verdict,
        active: &'a RuleSet,
        shadow: Option<&'a RuleSet>,
    ) -> Option<Self> {
        let (
            Verdict::Accepted {
                user_id,
                codes,
                risk,
                shadow: Some(shadow_codes),
                ..
            },
            Some(shadow_set),
        ) = (verdict, shadow)
        else {
            return None;
        };
        if shadow_codes == codes {
            return None;
        }
        let (active_codes, shadow_codes) = (codes.as_slice(), shadow_codes.as_slice());
        Some(ShadowRecord {
            event_id: at.event_id(),
            user_id: user_id.get(),
            risk: *risk,
            active_version: &active.version,
            shadow_version: &shadow_set.version,
            active: active_codes,
            shadow: shadow_codes,
            added: shadow_codes
                .iter()
                .filter(|c| !active_codes.contains(c))
                .copied()
                .collect(),
            removed: active_codes
                .iter()
                .filter(|c| !shadow_codes.contains(c))
                .copied()
                .collect(),
        })
    }
}

impl Output {
    /// Writes what one judged input record becomes: its response (unless a crashed owner
    /// already answered its offset), the shadow set's disagreement, and for a rejected record its
    /// dead-letter copy. `active` and `shadow` are the sets that judged it.
    pub(super) fn answer(
        &self,
        message: &OwnedMessage,
        processed: &Processed,
        (active, shadow): (&RuleSet, Option<&RuleSet>),
        metrics: &Metrics,
    ) -> Result<(), KafkaError> {
        let verdict = &processed.verdict;
        let at = Coord::new(message.partition(), message.offset());
        // An offset a crashed owner already answered is not answered again.
        if processed.answer {
            if let Some(disagreement) = ShadowRecord::of(at, verdict, active, shadow) {
                metrics.count_shadow(&disagreement.added, &disagreement.removed);
                let value = serde_json::to_vec(&disagreement).expect("serializes");
                let record = with_key(
                    BaseRecord::to(&self.settings.topics.shadow).payload(value.as_slice()),
                    message,
                );
                send(&self.producer, record)?;
            }
            self.respond(message, at, verdict, &active.version)?;
        }
        if let Verdict::Rejected {
            rejection, error, ..
        } = verdict
        {
            let dead = DeadLetter::new(message, *rejection, error, self.dlq_limit);
            send(&self.producer, dead.record(&self.settings.topics.dlq))?;
        }
        Ok(())
    }

    /// The response record of an input.
    fn respond(
        &self,
        message: &OwnedMessage,
        at: Coord,
        verdict: &Verdict,
        version: &str,
    ) -> Result<(), KafkaError> {
        let input = message.payload().unwrap_or_default();
        let Some(record) = AlertRecord::answer(at, verdict, input) else {
            tracing::error!(partition = at.partition, offset = at.offset, "an offset already in its user's restored state has no response yet; it cannot be answered again");
            return Ok(());
        };
        // A retry repeats its original's answer, and so the version that gave it.
        let original = match verdict {
            Verdict::Duplicate {
                answer: Some(answer),
                ..
            } => answer.rules_version.as_deref(),
            _ => None,
        };
        let value = record.versioned(original.unwrap_or(version)).to_json();
        // Co-partitioned: the response to input partition p goes to alerts partition p (what
        // the key's murmur2 partition is anyway), so a restore finds it there.
        let alert = BaseRecord::to(&self.settings.topics.alerts)
            .partition(at.partition)
            .payload(value.as_slice());
        send(&self.producer, with_key(alert, message))
    }
}

/// `record` with the input's key, unless it is too long to copy (see [`MAX_KEY_BYTES`]).
fn with_key<'a>(
    record: BaseRecord<'a, [u8], [u8]>,
    message: &'a OwnedMessage,
) -> BaseRecord<'a, [u8], [u8]> {
    match message.key().filter(|k| k.len() <= MAX_KEY_BYTES) {
        Some(key) => record.key(key),
        None => record,
    }
}
