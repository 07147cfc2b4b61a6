//! Dedupe: idempotency checks on event ids within an event-time horizon.
//!
//! - [`config`]: [`DedupeConfig`], its validation and defaults.
//! - [`operator`]: [`Dedupe`], the decision per record and its state.
//! - [`filter`]: the rotating bloom filters that keep new ids off RocksDB.

pub mod config;
pub mod filter;
pub mod operator;

pub use config::DedupeConfig;
pub use operator::{Dedupe, FirstSeen, DEDUPE_FIRST_SEEN_HEADER};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
