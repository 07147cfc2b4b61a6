//! Ordering: per key, events go downstream in sequence order.
//!
//! - [`config`]: [`OrderingConfig`], its validation and defaults.
//! - [`operator`]: [`Ordering`], the decision per record and its state.
//! - [`format`]: the versioned store payloads ([`Head`], [`Held`]) and the gap record.
//! - [`metrics`]: [`OrderingMetrics`], the histograms the operator observes.
//!
//! # Decisions
//!
//! Each key (by default the event's subject) has a head: its epoch, the first sequence of the
//! epoch, the next sequence expected, and the most recent ranges given up as gaps. For an event
//! of sequence `s`:
//! - `s == next`: emitted on [`Port::Main`](crate::Port::Main) at once, followed by every held
//!   event that now follows without a hole, in order;
//! - `s > next`: held in the store until the hole fills or is given up (a copy of an event
//!   already held goes to [`Port::Duplicates`](crate::Port::Duplicates), `repeat-of: waiting`);
//! - `s < next`: [`Port::Late`](crate::Port::Late) when `s` was never emitted (below the epoch's
//!   start, in a range given up, or below a forgotten range), otherwise
//!   [`Port::Duplicates`](crate::Port::Duplicates) (`repeat-of: emitted`). A copy of a late event
//!   is late again: consumers of the late port must be idempotent.
//!
//! The first event of a key starts it at `first_sequence`, or at its own sequence when none is
//! configured. Nothing is dropped: an event without a key field or a sequence is rejected
//! (`missing_field`, `invalid_field`) for the engine to dead-letter.
//!
//! # Giving up a gap
//!
//! A gap is the hole below a key's lowest held event. It is given up, with a gap record on
//! [`Port::Gaps`](crate::Port::Gaps) (see [`format`] for its JSON) followed by the release of
//! the held events after it, when:
//! - **event time**: the partition's stream time reaches the oldest held event's hold time plus
//!   `gap_timeout_ms` (so no event waits longer than that in stream time). The record being
//!   processed is decided first, then due timeouts fire in deadline order, then key order; the
//!   gap is attributed to that record. Deterministic on replay.
//! - **processing time** (with `gap_timeout_processing_ms`): that long after the first
//!   [`on_processing_time`](crate::Operator::on_processing_time) call that saw the key waiting;
//!   the clock restarts after each such gap, and after a restart or an abort. The gap is
//!   attributed to the first event it releases.
//! - **overflow**: see below.
//! - **epoch change**: see below.
//!
//! # Overflow policy
//!
//! Held events are bounded per key (`max_waiting_events_per_key`) and per partition (the encoded
//! size of held records, `max_waiting_bytes_per_partition`). An event that would exceed either
//! joins its key's held events first (it may be the event that is missing), then gaps are given
//! up with reason `overflow`: the key's own lowest hole while the key holds too many, then the
//! hole of the key waiting longest (earliest timeout, then key order) while the partition holds
//! too many bytes. Each step releases at least one event, so the budgets hold after every record.
//! An event larger than the whole byte budget is released at once behind a gap.
//!
//! # Epoch policy
//!
//! With `epoch_field`, an event of a higher epoch than its key's ends the old epoch: every hole
//! among the old epoch's held events is given up (reason `epoch_change`, epoch = the old one) and
//! the held events are released in order; the sequences after the last held one are unknown and
//! not reported. The key then starts the new epoch at `first_sequence` (or the event's own
//! sequence). Events of a lower epoch than the key's go to the late port (`stale_epoch`).
//!
//! # State
//!
//! Heads and held records live in the operator's store (RocksDB, changelogged by the engine), so
//! a crash or a rebalance loses nothing. Hot state is bounded: a cache of heads
//! (`head_cache_keys_per_partition`, changes written at checkpoint) and the held events (the byte
//! budget) with their timer index. Heads expire `key_ttl_ms` of stream time after their key last
//! changed, rounded up to a sixteenth of it (see [`head_expiry`]), never while events are held;
//! held records are deleted when released. Opening a
//! partition reads the held records only, not every head.

pub mod config;
pub mod format;
pub mod metrics;
pub mod operator;

pub use config::OrderingConfig;
pub use format::{GapRange, GapReason, Head, Held};
pub use metrics::OrderingMetrics;
pub use operator::{
    head_expiry, Ordering, ORDERING_GAP_REASON_HEADER, ORDERING_LATE_REASON_HEADER,
    ORDERING_NEXT_SEQUENCE_HEADER, ORDERING_REPEAT_HEADER,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
