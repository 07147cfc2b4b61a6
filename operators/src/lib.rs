//! Stateful stream operators.
//!
//! Layout:
//! - [`operator`]: the [`Operator`] lifecycle trait every operator implements, the
//!   [`Emitter`] it writes to, and the per-partition state it is handed.
//! - [`dedupe`]: idempotency checks on event ids within an event-time horizon.
//! - [`ordering`]: per-key sequence ordering, with gaps given up by timeout or budget.
//! - [`lineage`]: joins business events to their spans, trace root and parent event.
//! - [`pii`]: drops, masks or tokenizes personal data before anything else sees it.
//! - [`sampling`]: tail sampling of OTLP traces, whole traces buffered until complete.
//!
//! An operator's core is a synchronous `&mut self` function over one record and its partition's
//! state: no async, no I/O beyond its state stores, no clock. The engine owns Kafka, transactions
//! and metrics; operators stay benchmarkable and testable without a runtime.

pub mod dedupe;
pub mod error;
pub mod lineage;
pub mod operator;
pub mod ordering;
mod persist;
pub mod pii;
pub mod sampling;

pub use error::{OperatorError, Result};
pub use operator::{
    Disposition, Emitter, Header, Lookup, LookupKind, Operator, Port, StoreDeclaration, Waiting,
};
pub mod testing;
