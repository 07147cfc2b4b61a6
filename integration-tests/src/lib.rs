//! Real-broker test harness for breadcrumb.
//!
//! Starts a [Nisshi](https://crates.io/crates/nisshi) 0.7.0 broker (a Kafka-protocol broker) as a
//! child process on a free loopback port and offers small blocking rdkafka helpers to create
//! topics, produce, read back (`read_committed`) and inspect committed group offsets.
//!
//! The broker harness is engine-agnostic: it knows nothing about breadcrumb types. The [`model`]
//! module is the exception: the deterministic tier drives the engine's processing core itself.
//!
//! Install the broker with `scripts/install-nisshi.sh`; the binary is looked up in `$NISSHI_BIN`,
//! then `PATH`, then `~/.cargo/bin/nisshi`.
//!
//! All helpers are **blocking** (they poll librdkafka clients on the calling thread). From inside
//! a Tokio runtime call them through `tokio::task::spawn_blocking`, or use a `multi_thread`
//! runtime, so they do not stall tasks that share the calling worker (e.g. the engine under test).
//!
//! Nisshi behaviours worth knowing (observed with 0.7.0, pinned down in `tests/broker_smoke.rs`):
//! - records of an ABORTED transaction are returned to `read_committed` readers (memory and
//!   sqlite storage); records of an OPEN transaction are not (the LSO works);
//! - a producer fenced mid-transaction gets a retriable `OperationTimedOut` from
//!   `commit_transaction` / `abort_transaction` (Nisshi drops the connection on the stale-epoch
//!   EndTxn), not a fatal `ProducerFenced`; a producer fenced before its transaction starts gets
//!   the proper fatal `Fenced`;
//! - with `memory://` storage, ListOffsets(LATEST) (`fetch_watermarks`, `Offset::End`,
//!   `auto.offset.reset=latest`) answers base offset of the last batch + 1; sqlite is correct;
//! - `DescribeConfigs` only reports configs given at creation (`cleanup.policy=compact` is
//!   accepted and reported; a plain topic reports nothing);
//! - `init_transactions` takes ~0.5 s on memory storage (~50 ms on sqlite); a SIGTERM stop
//!   takes ~5 s while clients are still connected.

mod broker;
pub mod invariants;
mod kafka;
pub mod model;
mod registry;

pub use broker::{nisshi_binary, Broker, BrokerOptions, Storage};
pub use kafka::{
    base_config, committed_offsets, consume_all, consume_all_read_uncommitted, create_topics,
    describe_topic_config, partition_count, produce, produce_with_raw_header_name,
    register_client_settings, unique_name, watermarks, ConsumedRecord, TestRecord,
};
pub use registry::SchemaRegistry;
