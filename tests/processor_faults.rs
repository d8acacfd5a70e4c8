//! Fault injection on librdkafka's in-process mock cluster: fast, unit-level proof that the
//! processor's error paths work. (Guarantees themselves are proven on real Kafka in
//! `processor_kafka.rs`; the mock does not filter aborted transactions, so this test reads
//! responses by event id and tolerates the aborted batch's records.)

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::events::event;
use common::oracle::Oracle;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use user_monitor::config::{Guarantee, Settings};
use user_monitor::embedded::EmbeddedBroker;
use user_monitor::health::Readiness;
use user_monitor::metrics::{Metrics, OutcomeLabels};
use user_monitor::processor::{self, Deps};

#[test]
fn an_abortable_offset_commit_error_aborts_rewinds_and_every_event_is_still_answered() {
    let mut settings = Settings::defaults();
    settings.topics.partitions = 1;
    let broker = EmbeddedBroker::start(&settings).unwrap();
    broker.configure(&mut settings);
    // Transactions work on the mock; only their read_committed filtering does not.
    settings.processing.guarantee = Guarantee::ExactlyOnce;
    settings.processing.transactional_id = "faults".to_owned();
    let bootstrap = broker.bootstrap_servers();

    // The first offset commit of a transaction fails as if a rebalance raced the batch.
    broker.cluster().request_errors(
        RDKafkaApiKey::TxnOffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION],
    );

    let metrics = Metrics::new();
    let deps = Deps {
        metrics: Arc::clone(&metrics),
        readiness: Arc::new(Readiness::default()),
        shutdown: CancellationToken::new(),
    };
    let shutdown = deps.shutdown.clone();
    let processor_settings = settings.clone();
    let worker = std::thread::spawn(move || {
        let startup = processor::prepare(&processor_settings, true)?;
        processor::run(processor_settings, startup, deps)
    });

    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let n = 20u64;
    for i in 0..n {
        let value = event_json(i);
        producer
            .send(
                BaseRecord::to(&settings.topics.events)
                    .key("1")
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "faults-reader")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&settings.topics.alerts, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut by_event: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (by_event.len() as u64) < n && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            by_event
                .entry(v["event_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
    }
    shutdown.cancel();
    let result = worker.join().expect("the processor thread does not panic");
    assert!(result.is_ok(), "the processor stops cleanly: {result:?}");

    let aborted = metrics
        .transactions
        .get_or_create(&OutcomeLabels {
            outcome: "aborted".into(),
        })
        .get();
    assert!(aborted >= 1, "the injected error aborted a transaction");
    assert_eq!(
        by_event.len() as u64,
        n,
        "every event is answered after the rewind"
    );
    let mut oracle = Oracle::default();
    for i in 0..n {
        let responses = &by_event[&format!("0-{i}")];
        // Records of the aborted batch are visible on the mock; a rewind reproduces them exactly.
        assert!(
            responses.windows(2).all(|w| w[0] == w[1]),
            "0-{i}: {responses:?}"
        );
        let want = oracle
            .answer(&event_json(i), |_| user_monitor::domain::Risk::Medium)
            .unwrap()
            .codes;
        assert_eq!(
            responses[0]["alert_codes"],
            serde_json::json!(want),
            "0-{i}"
        );
    }
}

/// The `i`-th event of the test: user 1 withdraws 90 + i at time i.
fn event_json(i: u64) -> Vec<u8> {
    event("withdraw", &(90 + i).to_string(), 1, i)
}
