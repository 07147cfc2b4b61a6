//! Lineage: which trace, span and parent event each business event came from.
//!
//! - [`config`]: [`LineageConfig`], its validation and defaults.
//! - [`operator`]: [`Lineage`], the join per event and per span, and its state.
//! - [`format`]: the versioned store payloads ([`Node`], [`StoredSpan`], [`PendingHeader`]) and
//!   the edge record.
//! - [`metrics`]: [`LineageMetrics`]: edges, orphans by reason, join wait, window state.
//!
//! # Input
//!
//! Per partition, two kinds of records, both keyed by trace id so a trace's spans and events
//! meet on one partition: business events ([`Operator::process`](crate::Operator::process),
//! with the envelope's `trace` from the W3C `traceparent`, its `causation_id`, `id`, `type`,
//! `source` and event time) and spans ([`Lineage::process_span`]). Both advance the partition's
//! stream time (event time, span end time); every decision depends on it and on arrival order
//! only, never on the wall clock.
//!
//! # The join
//!
//! Each event has two sides:
//! - **span**: the span that produced it (the `traceparent`'s parent id: its service and
//!   operation) and the trace's root span (the earliest parentless span of the trace: its
//!   service). Complete when both arrived.
//! - **parent**: the event named by its causation id. Complete when the parent arrived and the
//!   parent's own parent side is decided, so the ancestry on the edge is as long as it will get.
//!   Events without a causation id have no parent side.
//!
//! An event whose sides are complete on arrival leaves at once. Otherwise it is held (in state,
//! like the ordering operator's held events) until its sides complete, or until the stream time
//! passes its arrival plus `join_window_ms`: then whatever is still missing becomes an
//! **orphan** edge with its reason (`trace_not_seen`, `span_not_seen`, `root_span_not_seen`,
//! `parent_event_not_seen`; an event without a `traceparent` gets `no_trace_context` at once).
//! Nothing is silent: every event yields a span edge, and a parent edge when it names a parent.
//!
//! On release the event goes to [`Port::Main`](crate::Port::Main) as it arrived plus the
//! headers `breadcrumb-lineage-trace-id`, `-service`, `-root-service` and `-parent-event-id`
//! (those known), followed by its edges on [`Port::Lineage`](crate::Port::Lineage) (JSON, see
//! [`format`]; Avro schema `schemas/avro/lineage-edge.avsc`). A parent edge lists the ancestors,
//! parent first, up to `max_chain_depth`, stopping at an event not seen or a cycle. A second copy
//! of an event id while the first is held goes to [`Port::Duplicates`](crate::Port::Duplicates)
//! (`breadcrumb-repeat-of: pending`); run dedupe before lineage for repeats beyond that.
//!
//! Spans are kept for `join_window_ms` of stream time after they arrive, so an event and its
//! spans join when they arrive within a window of each other, in either order. Parents are
//! found for `event_ttl_ms` (their nodes stay in the store that long). Only events of the same
//! partition are found as parents: with trace-id co-partitioning, that is the parents in the
//! same trace (see `docs/lineage-wiring.md`).
//!
//! # Bounds and overflow policy
//!
//! Held events are bounded per partition by count (`max_pending_events_per_partition`) and by
//! encoded size (`max_pending_bytes_per_partition`): beyond either, the event whose window ends
//! first is decided at once (resolution `overflow`, orphans for what it lacks). Spans are bounded
//! by `max_spans_per_partition`: beyond it the spans whose window ends first are forgotten early
//! (counted in `breadcrumb_lineage_spans_evicted_total`). The node cache keeps
//! `event_cache_per_partition` nodes; older ones are read from the store when a late child names
//! them.
//!
//! # State
//!
//! Spans, nodes and held events are written to the store at checkpoint (once per commit), with
//! expiries in stream time (spans: the window; nodes: `event_ttl_ms`); held records are deleted
//! when released. Opening a partition loads the spans within their window and the held events,
//! and rebuilds the waits from them, so a restart decides exactly as an uninterrupted run.

pub mod config;
pub mod format;
pub mod metrics;
pub mod operator;

pub use config::LineageConfig;
pub use format::{
    EdgeKind, Node, OrphanReason, ParentSide, PendingHeader, Resolution, SpanSide, StoredSpan,
};
pub use metrics::{LineageMetricFamilies, LineageMetrics};
pub use operator::{
    Lineage, LineageEntry, Span, LINEAGE_PARENT_EVENT_HEADER, LINEAGE_REPEAT_HEADER,
    LINEAGE_ROOT_SERVICE_HEADER, LINEAGE_SERVICE_HEADER, LINEAGE_TRACE_ID_HEADER,
};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
