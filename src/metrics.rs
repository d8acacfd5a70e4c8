//! Prometheus metrics shared by the processor and the shim.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::Verdict;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `alert`, `invalid`, `out_of_order`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// Every metric of the service, registered once.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub events: Family<OutcomeLabels, Counter>,
    pub alerts: Family<CodeLabels, Counter>,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub transactions: Family<OutcomeLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_latency: Family<RouteLabels, Histogram>,
    /// Alerts records written to the read model's database by the shim's projection.
    pub store_projected: Counter,
    /// Unreadable alerts records the projection skipped.
    pub store_skipped: Counter,
    /// Failed writes of the projection (each retried).
    pub store_write_errors: Counter,
    /// Events on which the shadow rule set and the active set disagree.
    pub shadow_disagreements: Counter,
    /// Per code, how often the shadow set added or removed it against the active set.
    pub shadow_codes: Family<ShadowLabels, Counter>,
    /// Time the processor spent reading the profiles and rules topics to their end before a
    /// batch (successful or not).
    pub sources_wait: Histogram,
    /// Batches not judged because the profiles and rules topics could not be read to their end
    /// (each is read again and judged later).
    pub batches_held_back: Counter,
    /// Times the processor re-initialised its producer in place after the coordinator aborted a
    /// transaction that outlived the transaction timeout (an outage).
    pub producer_reinits: Counter,
    /// From an input record's timestamp to the commit of the batch that answered it: when its
    /// response became readable (exactly-once) or was produced with the offsets committed
    /// (at-least-once).
    pub event_response: Histogram,
    /// Records the read model is behind the alerts topic (sum over partitions of the readable
    /// end minus the projection's stored next offset); unset until known.
    pub read_model_lag: Gauge,
    /// Open `GET /api/v1/alerts/stream` streams.
    pub alert_streams: Gauge,
    /// Streams closed because their client read too slowly (`event: overflow`).
    pub alert_stream_overflows: Counter,
    /// Alerts that reached the shim later than `http.stream_settle` after their timestamp, so
    /// that a stream delivered them out of cursor order (without an `id`).
    pub alert_stream_late: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub code: String,
    /// "added" (the shadow set raised it, the active set did not) or "removed".
    pub change: String,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("user_monitor");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "events_processed",
            "Input records processed, by outcome",
            events.clone(),
        );
        let alerts = Family::<CodeLabels, Counter>::default();
        registry.register("alerts", "Alert codes raised", alerts.clone());
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records behind the end of each assigned input partition",
            consumer_lag.clone(),
        );
        let transactions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "transactions",
            "Processor batches by outcome (committed, aborted)",
            transactions.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        let http_latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_response_seconds",
            "HTTP response latency by route",
            http_latency.clone(),
        );
        let store_projected = Counter::default();
        registry.register(
            "store_projected_records",
            "Alerts records written to the read model's database",
            store_projected.clone(),
        );
        let store_skipped = Counter::default();
        registry.register(
            "store_skipped_records",
            "Unreadable alerts records skipped by the read model's projection",
            store_skipped.clone(),
        );
        let store_write_errors = Counter::default();
        registry.register(
            "store_write_errors",
            "Failed (and retried) writes of the read model's projection",
            store_write_errors.clone(),
        );
        let shadow_disagreements = Counter::default();
        registry.register(
            "shadow_disagreements",
            "Events on which the shadow rule set and the active set raised different codes",
            shadow_disagreements.clone(),
        );
        let shadow_codes = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_codes",
            "Codes the shadow rule set added or removed against the active set",
            shadow_codes.clone(),
        );
        let sources_wait = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "sources_wait_seconds",
            "Time spent reading the profiles and rules topics to their end before a batch",
            sources_wait.clone(),
        );
        let batches_held_back = Counter::default();
        registry.register(
            "batches_held_back",
            "Batches not judged because the profiles and rules topics could not be read to their end (read again and judged later)",
            batches_held_back.clone(),
        );
        let producer_reinits = Counter::default();
        registry.register(
            "producer_reinits",
            "Times the processor re-initialised in place after the coordinator aborted a transaction that outlived the transaction timeout",
            producer_reinits.clone(),
        );
        let event_response = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "event_response_seconds",
            "Time from an input record's timestamp to the commit of its response",
            event_response.clone(),
        );
        let read_model_lag = Gauge::default();
        registry.register(
            "read_model_lag_records",
            "Records the read model's database is behind the alerts topic (sum over partitions of the readable end minus the projection's next offset)",
            read_model_lag.clone(),
        );
        let alert_streams = Gauge::default();
        registry.register(
            "alert_streams",
            "Open live alert streams (GET /api/v1/alerts/stream)",
            alert_streams.clone(),
        );
        let alert_stream_overflows = Counter::default();
        registry.register(
            "alert_stream_overflows",
            "Live alert streams closed because their client read too slowly",
            alert_stream_overflows.clone(),
        );
        let alert_stream_late = Counter::default();
        registry.register(
            "alert_stream_late",
            "Alerts that reached the shim more than http.stream_settle after their timestamp (delivered out of cursor order, without an id)",
            alert_stream_late.clone(),
        );
        Arc::new(Metrics {
            registry,
            read_model_lag,
            alert_streams,
            alert_stream_overflows,
            alert_stream_late,
            producer_reinits,
            event_response,
            sources_wait,
            batches_held_back,
            shadow_disagreements,
            shadow_codes,
            events,
            alerts,
            consumer_lag,
            transactions,
            http_requests,
            http_latency,
            store_projected,
            store_skipped,
            store_write_errors,
        })
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn count_transaction(&self, outcome: &str) {
        self.transactions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts a judged input record by its outcome, and an accepted one's alert codes.
    pub fn count_verdict(&self, verdict: &Verdict) {
        match verdict {
            Verdict::Accepted { codes, .. } => {
                self.count_event(if codes.is_alert() { "alert" } else { "ok" });
                for code in codes.as_slice() {
                    self.alerts
                        .get_or_create(&CodeLabels {
                            code: code.to_string(),
                        })
                        .inc();
                }
            }
            Verdict::Rejected { rejection, .. } => self.count_event(rejection.as_str()),
            Verdict::Duplicate { .. } => self.count_event("duplicate"),
            Verdict::AlreadyApplied { .. } => {}
        }
    }

    /// Counts a disagreement of the shadow set: the codes it added and removed.
    pub fn count_shadow(&self, added: &[u32], removed: &[u32]) {
        self.shadow_disagreements.inc();
        for (codes, change) in [(added, "added"), (removed, "removed")] {
            for code in codes {
                self.shadow_codes
                    .get_or_create(&ShadowLabels {
                        code: code.to_string(),
                        change: change.to_owned(),
                    })
                    .inc();
            }
        }
    }

    /// Sets an assigned partition's consumer lag.
    pub fn set_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// A partition no longer assigned: its lag is no longer reported.
    pub fn forget_partition(&self, partition: i32) {
        self.consumer_lag.remove(&PartitionLabels {
            partition: partition.to_string(),
        });
    }

    pub fn count_event(&self, outcome: &str) {
        self.events
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
