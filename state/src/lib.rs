//! Operator state on RocksDB.
//!
//! Layout:
//! - [`backend`]: [`StateBackend`], one RocksDB instance per engine process with a column family
//!   per declared store (plus one for its expiry index and one for checkpoints).
//! - [`store`]: [`PartitionStore`], the state of one store for one input partition. Writes go to
//!   an in-memory overlay that reads see; [`CommitBatch`] moves committed overlays into RocksDB in
//!   one `WriteBatch`, together with the checkpoint of each partition.
//! - [`format`]: the versioned byte format shared by RocksDB values and changelog records.
//! - `expiry`: the format of the expiry index (entries grouping the keys that expire in one
//!   span of time).
//! - [`restore`]: [`RestoreWriter`], which applies a changelog tail to local state.
//!
//! The contract with the engine: nothing reaches RocksDB before the Kafka transaction that
//! produced it has committed. Local state is only a cache of the changelog; losing it (or its
//! last writes on a crash, since the WAL is off) costs a longer restore, never a wrong answer.

pub mod backend;
pub mod error;
mod expiry;
pub mod format;
mod overlay;
pub mod restore;
pub mod store;

pub use backend::{Checkpoint, CommitBatch, StateBackend, StateOptions, StoreId};
pub use error::{Result, StateError};
pub use format::{StoredValue, FORMAT_VERSION, INPUT_OFFSET_HEADER, NO_EXPIRY};
pub use restore::RestoreWriter;
pub use store::{DirtyEntry, PartitionStore};

#[cfg(test)]
mod tests;
