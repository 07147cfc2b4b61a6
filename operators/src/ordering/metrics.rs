//! Histograms the ordering operator observes itself. The engine counts what goes to each port
//! (gaps, late events, repeats); these describe held events, which only the operator sees.

use prometheus::{Histogram, HistogramOpts};

/// Buckets of [`OrderingMetrics::reorder_depth`], in sequence numbers.
pub const REORDER_DEPTH_BUCKETS: &[f64] = &[
    1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0,
];

/// Buckets of [`OrderingMetrics::time_in_buffer_seconds`], in seconds of event time.
pub const TIME_IN_BUFFER_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3_600.0,
];

/// Pre-resolved histogram handles (registered, with their labels, by the engine), so the hot
/// path never looks a metric up. Only held events are observed: an event emitted at once costs
/// nothing here.
#[derive(Clone)]
pub struct OrderingMetrics {
    /// How far ahead of the next expected sequence a held event was (`sequence - next`).
    pub reorder_depth: Histogram,
    /// Event time an event spent held, in seconds of the partition's stream time, observed when
    /// it is released (in order, or after a gap was given up).
    pub time_in_buffer_seconds: Histogram,
}

impl OrderingMetrics {
    /// The options the engine registers [`OrderingMetrics::reorder_depth`] with (add its labels).
    pub fn reorder_depth_opts() -> HistogramOpts {
        HistogramOpts::new(
            "breadcrumb_ordering_reorder_depth",
            "How far ahead of the next expected sequence a held event was.",
        )
        .buckets(REORDER_DEPTH_BUCKETS.to_vec())
    }

    /// The options the engine registers [`OrderingMetrics::time_in_buffer_seconds`] with.
    pub fn time_in_buffer_opts() -> HistogramOpts {
        HistogramOpts::new(
            "breadcrumb_ordering_time_in_buffer_seconds",
            "Event time a held event waited before it was released, in seconds.",
        )
        .buckets(TIME_IN_BUFFER_BUCKETS.to_vec())
    }

    /// Histograms registered nowhere, for tests and benches.
    pub fn unregistered() -> Self {
        Self {
            reorder_depth: Histogram::with_opts(Self::reorder_depth_opts())
                .expect("static histogram options are valid"),
            time_in_buffer_seconds: Histogram::with_opts(Self::time_in_buffer_opts())
                .expect("static histogram options are valid"),
        }
    }
}

impl std::fmt::Debug for OrderingMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OrderingMetrics")
            .field(
                "reorder_depth_count",
                &self.reorder_depth.get_sample_count(),
            )
            .field(
                "time_in_buffer_count",
                &self.time_in_buffer_seconds.get_sample_count(),
            )
            .finish()
    }
}
