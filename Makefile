# The README's commands. `make run` starts the service; `make test` runs every test.
.PHONY: run test lint bench bench-evaluate bench-process bench-latency bench-store bench-stream kafka-up kafka-down kafka-cluster-up kafka-cluster-down fault fault-long

run:
	cargo run --release

test:
	bash scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features fault-injection -- -D warnings

bench:
	cargo bench --bench engine

# evaluate end to end on 1,000,000 generated events, pinned to one core: 100 users, then 10,000.
bench-evaluate:
	bash scripts/bench-evaluate.sh

# process throughput through a local broker (make kafka-up first), exactly-once then at-least-once.
bench-process:
	cargo build --release --bin user-monitor --example bench_process
	KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092} ./target/release/examples/bench_process 1000000 exactly_once 6
	KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092} ./target/release/examples/bench_process 1000000 at_least_once 6

# process latency through a local broker (make kafka-up first): events produced at a fixed rate,
# each matched to its committed response; p50/p90/p99/max and a per-hop breakdown, for every
# guarantee x rate, e.g. `make bench-latency LATENCY_RATES=200 LATENCY_GUARANTEES=at_least_once`.
# USER_MONITOR__* variables reach the processor (see examples/bench_latency.rs).
LATENCY_GUARANTEES ?= exactly_once at_least_once
LATENCY_RATES ?= 200 2000
LATENCY_SECONDS ?= 20
LATENCY_WARMUP ?= 5
LATENCY_PARTITIONS ?= 6
LATENCY_USERS ?= 1000
bench-latency:
	cargo build --release --bin user-monitor --example bench_latency
	@set -e; for g in $(LATENCY_GUARANTEES); do for r in $(LATENCY_RATES); do \
		KAFKA_BOOTSTRAP_SERVERS=$${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092} $${CARGO_TARGET_DIR:-target}/release/examples/bench_latency \
			$$g $$r $(LATENCY_SECONDS) $(LATENCY_WARMUP) $(LATENCY_PARTITIONS) $(LATENCY_USERS); \
	done; done

# The read model's database: ingest rate into SQLite, then list/history/lookup p50/p99 at that
# size, e.g. `make bench-store STORE_ROWS=10000000` (the store in STORE_DIR is reused and grown).
# BENCH_STORE_URL=postgres://... measures PostgreSQL instead.
STORE_ROWS ?= 1000000
STORE_DIR ?= target/bench-store
STORE_QUERIES ?= 2000
bench-store:
	cargo build --release --example bench_store
	$${CARGO_TARGET_DIR:-target}/release/examples/bench_store $(STORE_ROWS) $(STORE_DIR) $(STORE_QUERIES)

# The live alert feed: delivery latency (response readable -> event read by a client) at a rate
# of alerts to many clients, in one process (no Kafka), e.g. `make bench-stream STREAM_RATE=200`.
STREAM_RATE ?= 2000
STREAM_CLIENTS ?= 100
STREAM_SECONDS ?= 10
STREAM_WARMUP ?= 2
STREAM_PARTITIONS ?= 6
bench-stream:
	cargo build --release --example bench_stream
	$${CARGO_TARGET_DIR:-target}/release/examples/bench_stream $(STREAM_RATE) $(STREAM_CLIENTS) $(STREAM_SECONDS) $(STREAM_WARMUP) $(STREAM_PARTITIONS)

kafka-up:
	bash scripts/kafka-local.sh up

kafka-down:
	bash scripts/kafka-local.sh down

# A three-node Kafka cluster (KRaft, replication factor 3, min.insync.replicas 2) on 127.0.0.1:29092,
# 29094 and 29096 from the same jars, for failover and rolling-restart checks: kill a node, stop it,
# restart it, roll the cluster, find a partition's leader (see scripts/kafka-cluster.sh).
kafka-cluster-up:
	bash scripts/kafka-cluster.sh up

kafka-cluster-down:
	bash scripts/kafka-cluster.sh down

# The seeded randomized fault suite (tests/fault_suite.rs) on a broker of its own, which it kills:
# the CI-sized run (100,000 events, at least 10 faults of each kind, both guarantees side by side).
# FAULT_SEED=<seed> reruns a failing seed; FAULT_EVENTS, FAULT_FAULTS, FAULT_GUARANTEE size it.
# Needs Java and the Kafka jars (as `make kafka-up`), not a running broker.
fault:
	cargo test --release --features fault-injection --test fault_suite -- --nocapture

# The long run: 1,000,000 events and at least 50 faults of each kind, exactly-once and
# at-least-once side by side (about 20 minutes of faults, then the checks).
fault-long:
	FAULT_EVENTS=1000000 FAULT_FAULTS=50 FAULT_GUARANTEE=both $(MAKE) fault
