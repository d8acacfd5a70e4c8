//! The harness every test binary shares (`mod common;`): one place for Kafka plumbing, inputs,
//! the test oracle, processes, HTTP clients, PostgreSQL and read-model rows.
// Each test binary compiles the whole harness but uses only part of it.
#![allow(dead_code)]

pub mod browser;
pub mod events;
pub mod http;
pub mod kafka;
pub mod oracle;
pub mod postgres;
pub mod process;
pub mod publications;
pub mod store;
pub mod streaming;
