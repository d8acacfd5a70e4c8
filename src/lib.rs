//! # user-monitor
//!
//! Watches user money movements in real time and raises alerts.
//!
//! # Layout
//!
//! Imports only point down this list: nothing in a layer names anything above it.
//!
//! - [`domain`], the ground: the vocabulary every layer speaks. Wire bytes -> validated
//!   [`domain::Event`] (or a decode error naming every bad field; the JSON field scanner in
//!   `domain/json.rs`), [`domain::UserId`] with its one range-checked parse, [`domain::Risk`],
//!   the [`domain::Verdict`] on one input with its [`domain::AlertCodes`], the input
//!   [`domain::Coord`]inates that name every answer (event and alert ids), the murmur2
//!   partitioner, and the responses (legacy line, alerts-topic record built from a verdict);
//!   the triage people give an alert ([`domain::triage`]: its status, the `PATCH` body checked
//!   naming every problem, the triage topic's record).
//! - [`rules`]: the five fixed rules' thresholds, windows and codes ([`rules::FixedRulesConfig`],
//!   validated as [`rules::FixedRules`]); [`domain::Risk`] scales them.
//! - [`rule_set`]: rule sets as data (CONTRACT §10): the TOML file or JSON body validated
//!   whole, naming every bad rule and field (the configured five rules are a set too);
//!   [`rule_set::timeline`]: which published version judges an event appended at a given time.
//! - [`state`]: the pure rules engine. Per user, a state independent of the rule set (the events
//!   within `state.max_window`, runs, last amounts), exact and bounded; [`state::Users`] is a
//!   slab of them with cache-friendly lookups, evaluating any valid set with the evidence of every
//!   code, a shadow set beside it, and the snapshot form of a state ([`state::StoredState`]).
//! - [`idempotency`]: per-user memory of `Idempotency-Key`s (event time, bounded, snapshotted).
//! - [`engine`]: **the one chain from input bytes to a [`domain::Verdict`]**: decode, placement,
//!   already-restored, idempotency key, then the rules. Used by the processor, a restore's replay,
//!   `evaluate` (in batches, touching users' states ahead) and every test oracle.
//! - [`partition`]: the pure lifecycle of one input partition's state: the users a snapshot
//!   round writes, and the rebuild from snapshot records plus replay.
//! - [`profiles`]: user risk levels from a file or the profiles topic, each with the time it took
//!   effect (an event is judged at the level in force when it was appended).
//! - [`evaluate`]: the offline JSONL command; [`backtest`]: two rule sets over one input, in one
//!   pass through the engine (the candidate as its shadow set), with a per-code summary, a diff
//!   and explained samples; the input is events, or alerts-topic records (each event at the
//!   risk it was judged at), counted over a range of event time after a `state.max_window`
//!   warm-up: one replay for the CLI and for the read model's stored events.
//! - [`user_view`]: a user as the engine sees them, without Kafka: the user's latest snapshot
//!   (the state topic projected into the [`store`]) and its accepted records since, replayed
//!   through the [`engine`]; where every rule of a set stands on that state.
//! - [`access`]: who may do what, as data: scopes, configured tokens (SHA-256 of the secret) and
//!   the token table that checks a presented secret in constant time (no HTTP).
//! - [`config`], [`cli`], [`telemetry`]: layered configuration validated once, the command line,
//!   logging. [`metrics`], [`health`]: Prometheus metrics and readiness (no imports), written by
//!   the processor and the shim.
//! - [`kafka`]: client configuration for every role (raw `[kafka.properties]` applied last), the
//!   explicit retryable/abortable/fatal classification of Kafka errors, topics ([`kafka::admin`]),
//!   the startup connectivity check ([`kafka::connect`]), group-less reads of partitions and
//!   offset ranges ([`kafka::read`]), the follower of the profiles topic and of the rules
//!   topic's versions ([`kafka::profiles`]), the rules topic's records, publishing and reading
//!   back ([`kafka::rules`]).
//! - [`snapshot`]: the snapshot format (both directions; version 1, from before rule sets, is
//!   upgraded on restore) in the compacted state topic, and the restore of a partition:
//!   snapshot, then replay to the committed offset.
//! - [`processor`]: `user-monitor process`, one owner each: the turn of the loop (`mod.rs`:
//!   collect, process, commit), the partitions (`partitions.rs`: restoring or live, restores in
//!   flight, rebalance hand-overs, rewinds, due rounds, readiness), the output (`output.rs`: the
//!   producer's transactional contract; response, shadow and dead-letter records), the sources
//!   (`sources.rs`: profiles and rule sets, readable for a batch only with the proof that they
//!   were caught up), what the host prepares first (`startup.rs`), and the test-only fault
//!   injection (`faults.rs`, with the `fault-injection` feature only).
//! - [`audit`]: the audit trail of risk, rule set and triage changes; [`changes`]: the use cases
//!   that make them (read what is in force, refuse what would hurt — an empty set, a version
//!   name taken by other rules, a stale `If-Match` — publish, record; promote the shadow set),
//!   written once for the CLI and the HTTP API, each edge giving its own [`changes::ChangeLog`].
//! - [`store`]: the read model behind the GET endpoints: the alerts topic projected into SQLite
//!   (default) or PostgreSQL, rows and Kafka offsets in one transaction, keyset-paged queries,
//!   retention by event time ([`store::projection`]: the projecting consumers, how far behind the
//!   topic they are, and the retention task); the triage topic projected beside it, the status
//!   filter on the alerts' rows; the stored events replayed for a backtest, in the
//!   processor's order.
//! - [`http`]: the HTTP shim: the API contract ([`http::api`]: bodies, parameters, errors, the
//!   OpenAPI document), the handlers by resource, each group behind the scope it declares
//!   ([`http::routes`]), bearer tokens ([`http::auth`]), the waiters of `POST` requests
//!   ([`http::waiters`]) fed live by one alerts-topic consumer, the live alert feed in cursor
//!   order over the store, the recent responses and the waiters' live channel
//!   ([`http::stream`]), the [`store`] for reads,
//!   Kafka behind the [`http::Backend`] trait, and the connection-capped server loop.
//! - [`service`]: one lifecycle (runtime, signals, bounded shutdown) for `process`, `run` and
//!   `shim`; [`embedded`] is the in-process broker of `run` without Kafka; [`shutdown`] turns
//!   SIGINT/SIGTERM into one cancellation; [`app`] wires configuration to the chosen command.
//!
//! Data flow: bytes -> `engine::Engine::judge` -> `domain::Verdict` -> response record. In Kafka:
//! `user-events` -> [`processor`] -> `user-alerts` (+ `user-events.dlq`, `user-monitor.state`,
//! `user-alerts.shadow`), judged under the versions of `user-monitor.rules`;
//! HTTP `POST /event` -> `user-events`, and the shim waits for the matching `user-alerts` record;
//! `user-alerts` -> [`store::projection`] -> database -> HTTP GET; HTTP `PATCH` of an alert ->
//! `user-alerts.triage` (+ `user-monitor.audit`) -> [`store::projection`] -> database.

pub mod access;
pub mod app;
pub mod audit;
pub mod backtest;
pub mod changes;
pub mod cli;
pub mod config;
pub mod console;
pub mod domain;
pub mod embedded;
pub mod engine;
pub mod evaluate;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod kafka;
pub mod metrics;
pub mod partition;
pub mod processor;
pub mod profiles;
pub mod rule_set;
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod user_view;
