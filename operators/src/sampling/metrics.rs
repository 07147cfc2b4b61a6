//! Counters of the sampling operator, pre-resolved per decider so the hot path never looks a
//! metric up. Traces pending and bytes buffered are gauges the engine sets from
//! [`crate::Operator::waiting`] at each commit.

use prometheus::{IntCounter, IntCounterVec, Opts};

/// The labelled families the engine registers; the operator resolves its handles once.
#[derive(Clone)]
pub struct SamplingMetrics {
    /// `pipeline`, `policy`, `decision` (`keep` / `drop`).
    pub decisions: IntCounterVec,
    /// `pipeline`, `outcome` (`kept` / `dropped`): spans of an already decided trace.
    pub late_spans: IntCounterVec,
    /// `pipeline`, `completion` (`quiet_period` / `max_wait` / `forced`).
    pub completions: IntCounterVec,
}

impl SamplingMetrics {
    pub fn decisions_opts() -> Opts {
        Opts::new(
            "breadcrumb_sampling_decisions_total",
            "Traces decided, by deciding policy and decision.",
        )
    }

    pub fn late_spans_opts() -> Opts {
        Opts::new(
            "breadcrumb_sampling_late_spans_total",
            "Spans that arrived after their trace was decided, by outcome.",
        )
    }

    pub fn completions_opts() -> Opts {
        Opts::new(
            "breadcrumb_sampling_completions_total",
            "Traces decided, by what completed them (`forced`: the overflow policy).",
        )
    }

    /// Families registered nowhere, for tests and benches.
    pub fn unregistered() -> Self {
        Self {
            decisions: IntCounterVec::new(
                Self::decisions_opts(),
                &["pipeline", "policy", "decision"],
            )
            .expect("static options are valid"),
            late_spans: IntCounterVec::new(Self::late_spans_opts(), &["pipeline", "outcome"])
                .expect("static options are valid"),
            completions: IntCounterVec::new(Self::completions_opts(), &["pipeline", "completion"])
                .expect("static options are valid"),
        }
    }
}

impl std::fmt::Debug for SamplingMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SamplingMetrics")
            .finish_non_exhaustive()
    }
}

/// Handles resolved for one pipeline and its deciders.
pub(crate) struct ResolvedMetrics {
    /// Per decider: `[drop, keep]`.
    pub decisions: Vec<[IntCounter; 2]>,
    /// `[dropped, kept]`.
    pub late_spans: [IntCounter; 2],
    /// By [`super::format::Completion`] code.
    pub completions: [IntCounter; 3],
}

impl ResolvedMetrics {
    pub fn resolve(metrics: &SamplingMetrics, pipeline: &str, deciders: &[String]) -> Self {
        Self {
            decisions: deciders
                .iter()
                .map(|name| {
                    [
                        metrics
                            .decisions
                            .with_label_values(&[pipeline, name, "drop"]),
                        metrics
                            .decisions
                            .with_label_values(&[pipeline, name, "keep"]),
                    ]
                })
                .collect(),
            late_spans: [
                metrics.late_spans.with_label_values(&[pipeline, "dropped"]),
                metrics.late_spans.with_label_values(&[pipeline, "kept"]),
            ],
            completions: [
                metrics
                    .completions
                    .with_label_values(&[pipeline, "quiet_period"]),
                metrics
                    .completions
                    .with_label_values(&[pipeline, "max_wait"]),
                metrics.completions.with_label_values(&[pipeline, "forced"]),
            ],
        }
    }
}
