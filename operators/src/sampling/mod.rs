//! Tail sampling: OTLP spans in, whole traces buffered in state, policies decide, the spans of
//! kept traces out.
//!
//! - [`config`]: [`SamplingConfig`] and the [`PolicyConfig`]s, with validation.
//! - [`policy`]: policies compiled from configuration, the [`TraceSummary`] they decide on, and
//!   the [`LineageReferences`] interface of the `lineage` policy.
//! - [`operator`]: [`Sampling`], buffering, completion, decisions and late spans.
//! - [`format`]: the versioned store payloads.
//! - [`metrics`] holds [`SamplingMetrics`].
//!
//! # Input
//!
//! Each record is an OTLP `ExportTraceServiceRequest` (protobuf, or OTLP/JSON converted to
//! protobuf first) holding spans of many traces, as the OpenTelemetry Collector's Kafka exporter
//! writes them. The batch is walked in place ([`breadcrumb_schemas::otlp`]); a batch that does
//! not parse is rejected whole (`invalid_protobuf`, `invalid_json`, `invalid_field` for a bad
//! trace id, `invalid_utf8`) for the engine to dead-letter, before any state changes. Spans of one
//! trace must reach one partition (the Collector's exporter keys by trace id with
//! `partition_traces_by_id`).
//!
//! # Buffering and completion
//!
//! A batch's spans are grouped by trace; each group is appended to its trace's buffer as a
//! self-contained `ExportTraceServiceRequest` fragment (its spans with their resource and scope,
//! bytes unchanged). The partition's event time (its watermark) is the latest span end seen. A
//! trace completes when the watermark reaches:
//! - `quiet_period`: its last span's arrival plus `quiet_period_ms`, once its root span (a span
//!   without parent) has arrived;
//! - `max_wait`: its first span's arrival plus `max_wait_ms`, whichever is first. Timers fire in
//!   (deadline, trace id) order after each batch, so decisions are deterministic on replay.
//!
//! # Bounds and overflow (a forced decision)
//!
//! Buffered bytes (`max_buffered_bytes_per_partition`) and pending traces
//! (`max_pending_traces_per_partition`) are bounded. After each batch, while either bound is
//! exceeded, the trace that arrived first (then lowest trace id) is decided at once,
//! `completion = "forced"`: with `overflow = "decide_oldest"` (the default) by the policies on
//! the spans it has, with `drop_oldest` dropped unseen (`policy = "overflow"`). Deciding early
//! rather than refusing input keeps the partition moving; the decision record and the
//! `completions_total{completion="forced"}` counter make every such case visible.
//!
//! # Decisions and late spans
//!
//! A decision record (JSON: `trace_id`, `decision`, `policy`, `span_count`, `duration_ms`,
//! `completion`, `first_seen_ms`, `decided_at_ms`, `pipeline`) goes to
//! [`Port::Decisions`](crate::Port::Decisions); a kept trace's spans go to
//! [`Port::Main`](crate::Port::Main) as one `ExportTraceServiceRequest`, keyed by the trace id in
//! hex. The decision stays in state for `decision_ttl_ms` of event time: spans of a decided trace
//! arriving meanwhile follow it (kept: emitted at once with `breadcrumb-sampling-late: true`;
//! dropped: counted), and are counted in `late_spans_total` by outcome. After the TTL, spans of
//! that trace id start a new pending trace.
//!
//! # State
//!
//! Pending traces live in memory and in the store: at each checkpoint a trace that received
//! spans writes the new bytes as one more fragment (never rewriting earlier ones) and its
//! summary. Decisions delete a trace's summary and fragments and write the decision, with its
//! expiry, in the same transaction as the outputs. Opening a partition reads summaries and
//! fragments back, so a crash or a rebalance loses no pending trace.

pub mod config;
pub mod format;
pub mod metrics;
pub mod operator;
pub mod policy;

pub use config::{OverflowPolicy, PolicyConfig, RateAllocation, SamplingConfig, StatusCodeName};
pub use format::Completion;
pub use metrics::SamplingMetrics;
pub use operator::{
    OtlpEncoding, Sampling, SAMPLING_COMPLETION_HEADER, SAMPLING_LATE_HEADER,
    SAMPLING_POLICY_HEADER,
};
pub use policy::{LineageReferences, NoLineage, TraceSummary};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
