//! The deterministic model tier of the fault suite: the engine's real processing core over an
//! in-memory Kafka log with faithful transaction semantics, crashes injected between any two
//! I/O steps, thousands of seeded schedules per run. Nisshi and librdkafka's mock cluster show
//! aborted records to `read_committed` readers; this log does not, so this is where exactly-once
//! is proven against the semantics Apache Kafka gives.

mod log;
mod world;

pub use log::{Cluster, LogStats, ModelCrash, StoredRecord, TxnState};
pub use world::{quiet_injected_crashes, Outputs, ScheduleReport, ScheduleSpec, World};
