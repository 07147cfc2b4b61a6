//! Ordering: per key, events go downstream in sequence order.
//!
//! - [`config`]: [`OrderingConfig`], its validation and defaults.
//! - [`operator`]: [`Ordering`], the decision per record and its state.
//! - [`format`]: the versioned store payloads ([`Head`], [`Held`]) and the gap record.
//! - [`metrics`]: [`OrderingMetrics`], the histograms the operator observes.

pub mod config;
pub mod format;
pub mod metrics;
pub mod operator;

pub use config::OrderingConfig;
pub use format::{GapRange, GapReason, Head, Held};
pub use metrics::OrderingMetrics;
pub use operator::{
    Ordering, ORDERING_GAP_REASON_HEADER, ORDERING_LATE_REASON_HEADER,
    ORDERING_NEXT_SEQUENCE_HEADER, ORDERING_REPEAT_HEADER,
};

#[cfg(test)]
mod tests;
