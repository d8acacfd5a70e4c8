# The README's commands. `make run` starts the service; `make test` runs every test.
.PHONY: run test lint bench bench-evaluate bench-process kafka-up kafka-down

run:
	cargo run --release

test:
	bash scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

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

kafka-up:
	bash scripts/kafka-local.sh up

kafka-down:
	bash scripts/kafka-local.sh down
