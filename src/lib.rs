//! # user-monitor
//!
//! Watches user money movements in real time and raises alerts.
//!
//! # Layout
//!
//! - [`domain`]: wire bytes -> validated [`domain::Event`] (or a decode error naming every bad
//!   field); the legacy response and the alerts-topic record.
//! - [`rules`]: thresholds, windows and codes, scaled by [`domain::Risk`]; [`rules::Limits`] is
//!   their validated form.
//! - [`state`]: the pure engine. [`state::UserState::apply`] evaluates one event against one
//!   user's O(rules) state; [`state::Users`] is a map of them (one owner per partition).
//! - [`profiles`]: user risk levels from a file or the profiles topic.
//! - [`evaluate`]: the offline JSONL command over the same engine.
//! - [`config`], [`cli`], [`telemetry`], [`app`]: layered configuration, command line, logging,
//!   and the top level that wires them.
//! - [`kafka`]: client configuration for every role (raw `[kafka.properties]` applied last),
//!   explicit retryable/abortable/fatal classification of Kafka errors, topic creation and
//!   validation ([`kafka::admin`]), the live profiles-topic follower ([`kafka::profiles`]).
//! - [`processor`]: `user-monitor process`. One thread owns the consumer, the transactional
//!   producer and every assigned partition's [`state::Users`]: poll a batch, evaluate, commit
//!   responses + dead letters + snapshots + input offsets in one transaction.
//! - [`partition`]: the pure lifecycle of one input partition's state: the verdict on each
//!   record (invalid / wrong partition / out of order / accepted), the users a snapshot round
//!   writes, and the rebuild from snapshot records plus replay.
//! - [`idempotency`]: per-user memory of `Idempotency-Key`s (event time, bounded, snapshotted),
//!   so a retried event is answered with the original's answer instead of counted twice.
//! - [`snapshot`]: per-user snapshots in the compacted state topic (offset `covers` is
//!   exclusive) and the restore of a partition: snapshot, then replay to the committed offset.
//! - [`metrics`], [`health`]: Prometheus metrics and readiness, written by the processor and
//!   the shim, read by the HTTP endpoints.
//! - [`http`]: the HTTP shim: routes, the read model fed by one alerts-topic consumer, the
//!   producer of events and profiles; [`service`] runs it alone (`shim`) or with the processor
//!   (`run`); [`embedded`] is the in-process broker of `run` without Kafka; [`shutdown`] turns
//!   SIGINT/SIGTERM into one cancellation.
//!
//! Data flow: bytes -> `domain::decode` -> `Users::apply(event, risk, limits)` -> response.
//! In Kafka: `user-events` -> [`processor`] -> `user-alerts` (+ `user-events.dlq`,
//! `user-monitor.state`); HTTP `POST /event` -> `user-events`, and the shim waits for the
//! matching `user-alerts` record.

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
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
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod state;
pub mod telemetry;
