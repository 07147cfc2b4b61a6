//! Metrics the lineage operator observes itself: edges, orphans by reason, how long joins
//! waited, and how much it holds. Handles are resolved once, so the hot path never looks a
//! metric up.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::format::{EdgeKind, OrphanReason};

/// Buckets of [`LineageMetrics::join_wait_seconds`], in seconds of event time.
pub const JOIN_WAIT_BUCKETS: &[f64] = &[
    0.0, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];

/// Pre-resolved metric handles of one pipeline's lineage operator.
#[derive(Clone)]
pub struct LineageMetrics {
    /// Edges emitted, by kind ([`EdgeKind::Span`], [`EdgeKind::Parent`]), orphans included.
    pub edges: [IntCounter; 2],
    /// Orphan edges by [`OrphanReason::index`].
    pub orphans: [IntCounter; OrphanReason::ALL.len()],
    /// Spans forgotten before their window passed because the partition held too many.
    pub spans_evicted: IntCounter,
    /// Stream time an event waited between arrival and release, in seconds.
    pub join_wait_seconds: Histogram,
    /// Window state, summed over the instance's partitions, set at each checkpoint.
    pub pending_events: IntGauge,
    pub pending_bytes: IntGauge,
    pub spans_held: IntGauge,
}

impl LineageMetrics {
    /// Registers the operator's metric families in `registry` and resolves `pipeline`'s handles.
    pub fn register(registry: &Registry, pipeline: &str) -> prometheus::Result<Self> {
        Ok(LineageMetricFamilies::register(registry)?.resolve(pipeline))
    }

    /// Metrics registered nowhere, for tests and benches.
    pub fn unregistered() -> Self {
        LineageMetricFamilies::new()
            .expect("static metric options are valid")
            .resolve("test")
    }
}

/// The operator's metric families, registered once per registry; each pipeline resolves its
/// handles from them (an engine rebuilds its pipelines after a client restart, and a registry
/// refuses a family twice).
#[derive(Clone)]
pub struct LineageMetricFamilies {
    edges: IntCounterVec,
    orphans: IntCounterVec,
    evicted: IntCounterVec,
    wait: HistogramVec,
    state: IntGaugeVec,
}

impl LineageMetricFamilies {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let families = Self::new()?;
        registry.register(Box::new(families.edges.clone()))?;
        registry.register(Box::new(families.orphans.clone()))?;
        registry.register(Box::new(families.evicted.clone()))?;
        registry.register(Box::new(families.wait.clone()))?;
        registry.register(Box::new(families.state.clone()))?;
        Ok(families)
    }

    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            edges: IntCounterVec::new(
                Opts::new(
                    "breadcrumb_lineage_edges_total",
                    "Lineage edges emitted, orphans included.",
                ),
                &["pipeline", "kind"],
            )?,
            orphans: IntCounterVec::new(
                Opts::new(
                    "breadcrumb_lineage_orphans_total",
                    "Lineage edges whose trace, span or parent event never arrived, by reason.",
                ),
                &["pipeline", "reason"],
            )?,
            evicted: IntCounterVec::new(
                Opts::new(
                    "breadcrumb_lineage_spans_evicted_total",
                    "Spans forgotten early because a partition held max_spans_per_partition.",
                ),
                &["pipeline"],
            )?,
            wait: HistogramVec::new(
                HistogramOpts::new(
                    "breadcrumb_lineage_join_wait_seconds",
                    "Event time an event waited for its spans and parent before release, in seconds.",
                )
                .buckets(JOIN_WAIT_BUCKETS.to_vec()),
                &["pipeline"],
            )?,
            state: IntGaugeVec::new(
                Opts::new(
                    "breadcrumb_lineage_window_state",
                    "What the lineage operator holds: pending events, pending bytes, spans.",
                ),
                &["pipeline", "what"],
            )?,
        })
    }

    /// Edges emitted by pipeline and kind, for readers that sum over pipelines.
    pub fn edges_family(&self) -> &IntCounterVec {
        &self.edges
    }

    /// `pipeline`'s handles.
    pub fn resolve(&self, pipeline: &str) -> LineageMetrics {
        LineageMetrics {
            edges: [EdgeKind::Span, EdgeKind::Parent]
                .map(|kind| self.edges.with_label_values(&[pipeline, kind.as_str()])),
            orphans: OrphanReason::ALL
                .map(|reason| self.orphans.with_label_values(&[pipeline, reason.as_str()])),
            spans_evicted: self.evicted.with_label_values(&[pipeline]),
            join_wait_seconds: self.wait.with_label_values(&[pipeline]),
            pending_events: self.state.with_label_values(&[pipeline, "pending_events"]),
            pending_bytes: self.state.with_label_values(&[pipeline, "pending_bytes"]),
            spans_held: self.state.with_label_values(&[pipeline, "spans"]),
        }
    }
}

impl std::fmt::Debug for LineageMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LineageMetrics")
            .field("span_edges", &self.edges[0].get())
            .field("parent_edges", &self.edges[1].get())
            .finish()
    }
}
