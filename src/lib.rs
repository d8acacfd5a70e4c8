//! # user-monitor
//!
//! Watches user money movements in real time and raises alerts.
//!
//! # Layout
//!
//! - [`domain`]: wire bytes -> validated [`domain::Event`] (or a decode error naming every bad
//!   field); the legacy response and the alerts-topic record.
//! - [`rules`]: thresholds, windows and codes, scaled by [`rules::Risk`]; [`rules::Limits`] is
//!   their validated form.
//! - [`state`]: the pure engine. [`state::UserState::apply`] evaluates one event against one
//!   user's O(rules) state; [`state::Users`] is a map of them (one owner per partition).
//! - [`profiles`]: user risk levels from a file or the profiles topic.
//! - [`evaluate`]: the offline JSONL command over the same engine.
//! - [`config`], [`cli`], [`telemetry`], [`app`]: layered configuration, command line, logging,
//!   and the top level that wires them.
//! - [`http`]: the HTTP shim: routes, the read model fed by one alerts-topic consumer, the
//!   producer of events and profiles; [`service`] runs it alone (`shim`) or with the processor
//!   (`run`); [`embedded`] is the in-process broker of `run` without Kafka; [`shutdown`] turns
//!   SIGINT/SIGTERM into one cancellation.
//!
//! Data flow: bytes -> `domain::decode` -> `Users::apply(event, risk, limits)` -> response.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod embedded;
pub mod evaluate;
pub mod health;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod profiles;
pub mod rules;
pub mod service;
pub mod shutdown;
pub mod snapshot;
pub mod state;
pub mod telemetry;
