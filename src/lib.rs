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
//!
//! Data flow: bytes -> `domain::decode` -> `Users::apply(event, risk, limits)` -> response.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod evaluate;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod profiles;
pub mod rules;
pub mod state;
pub mod telemetry;
