# The README's commands. `make run` starts the service; `make test` runs every test.
.PHONY: run test lint bench bench-evaluate kafka-up kafka-down

run:
	cargo run --release

test:
	bash scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

bench:
	cargo bench --bench engine

# evaluate end to end on 1,000,000 generated events, pinned to one core.
bench-evaluate:
	cargo build --release --bin user-monitor --example gen_events
	./target/release/examples/gen_events 1000000 > target/events-1m.jsonl
	time taskset -c 0 ./target/release/user-monitor evaluate target/events-1m.jsonl > /dev/null

kafka-up:
	bash scripts/kafka-local.sh up

kafka-down:
	bash scripts/kafka-local.sh down
