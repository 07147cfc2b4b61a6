//! The breadcrumb engine: a Kafka consumer group that runs stateful operators exactly once.
//!
//! Layout:
//! - [`config`]: the TOML configuration, its environment overrides and validation.
//! - [`runtime`]: Kafka clients, the processing loop, transactions, rebalances and restore.
//! - [`topics`]: creating output and internal topics shaped after the inputs.
//! - [`journal`]: the transaction journal used to check output on brokers that leak aborted
//!   records.
//! - [`ledger`]: the reconciliation ledger written with every transaction, and its checker.
//! - [`metrics`], [`http`]: Prometheus metrics, `/metrics`, `/healthz`, `/readyz`.
//! - [`openlineage`]: OpenLineage run events (START, RUNNING, COMPLETE, FAIL) on a Kafka topic.
//! - [`demo`], [`generate`], [`generate_traces`], [`verify`]: the embedded demo, the payments
//!   and telemetry workload generators and the exactly-once checker behind the CLI.

pub mod config;
pub mod demo;
pub mod demo_lineage;
pub mod error;
pub mod generate;
pub mod generate_commerce;
pub mod generate_traces;
pub mod headers;
pub mod http;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod openlineage;
pub mod query;
pub mod raw_headers;
pub mod runtime;
pub mod topics;
pub mod verify;

pub use error::{EngineError, Result};
