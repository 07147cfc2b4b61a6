//! Prometheus metrics. Handles are resolved once (per pipeline, topic or store) and held by the
//! runtime; nothing on the per-record path looks a metric up by name.

use breadcrumb_operators::lineage::LineageMetricFamilies;
use breadcrumb_operators::ordering::metrics::{REORDER_DEPTH_BUCKETS, TIME_IN_BUFFER_BUCKETS};
use breadcrumb_operators::sampling::SamplingMetrics;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the engine exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Records read, by pipeline and input topic (counted when their transaction commits).
    pub events_in: IntCounterVec,
    /// Records written, by pipeline and output topic.
    pub events_out: IntCounterVec,
    /// Duplicates found, by pipeline.
    pub duplicates: IntCounterVec,
    /// Conflicts (same id, different payload), by pipeline.
    pub conflicts: IntCounterVec,
    /// Dead letters, by pipeline and reason class.
    pub dead_letters: IntCounterVec,
    /// Transactions by outcome (`committed`, `aborted`).
    pub transactions: IntCounterVec,
    /// Time to commit a transaction (changelog flush, offsets, commit).
    pub commit_duration: Histogram,
    /// Changelog records applied by restores, by store.
    pub restore_records: IntCounterVec,
    /// Changelog records still to apply in running restores, by store.
    pub restore_remaining: IntGaugeVec,
    /// Partitions currently restoring.
    pub restoring_partitions: IntGauge,
    /// Estimated keys per store.
    pub state_keys: IntGaugeVec,
    /// Consumer lag per input topic and partition (high watermark minus position).
    pub consumer_lag: IntGaugeVec,
    /// Partitions currently assigned and processing.
    pub assigned_partitions: IntGauge,
    /// Records per transaction.
    pub transaction_records: Histogram,
    /// Producer recreations after a fatal or fenced error.
    pub producer_restarts: IntCounter,
    /// Transactions rewound because a schema source (registry) could not answer.
    pub schema_unavailable: IntCounter,
    /// Gap records emitted by ordering operators, by pipeline.
    pub ordering_gaps: IntCounterVec,
    /// Events that arrived after their gap was declared, by pipeline.
    pub ordering_late: IntCounterVec,
    /// Repeats of a sequence already emitted or waiting, by pipeline.
    pub ordering_repeats: IntCounterVec,
    /// Events held waiting for a gap to fill, by pipeline (as of the last commit).
    pub ordering_waiting_events: IntGaugeVec,
    /// Bytes of events held waiting for a gap to fill, by pipeline.
    pub ordering_waiting_bytes: IntGaugeVec,
    /// How far ahead of the next expected sequence a held event was, by pipeline.
    pub ordering_reorder_depth: HistogramVec,
    /// Event time a held event waited before release, by pipeline.
    pub ordering_buffer_seconds: HistogramVec,
    /// Traces buffered by tail sampling, not yet decided, by pipeline (as of the last commit).
    pub sampling_pending_traces: IntGaugeVec,
    /// Bytes of spans buffered by tail sampling, by pipeline (as of the last commit).
    pub sampling_buffered_bytes: IntGaugeVec,
    /// Decisions by policy, late spans by outcome, completions (forced ones included).
    pub sampling: SamplingMetrics,
    /// Lineage edges, orphans by reason, join waits and window state, per pipeline.
    pub lineage: LineageMetricFamilies,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let events_in = counter(
            "breadcrumb_events_in_total",
            "Input records whose transaction committed.",
            &["pipeline", "topic"],
        );
        let events_out = counter(
            "breadcrumb_events_out_total",
            "Records published to output topics.",
            &["pipeline", "topic"],
        );
        let duplicates = counter(
            "breadcrumb_duplicates_total",
            "Copies of events already seen within the horizon.",
            &["pipeline"],
        );
        let conflicts = counter(
            "breadcrumb_conflicts_total",
            "Copies of seen events whose payload differs from the first copy.",
            &["pipeline"],
        );
        let dead_letters = counter(
            "breadcrumb_dead_letters_total",
            "Records sent to the dead-letter topic.",
            &["pipeline", "reason"],
        );
        let transactions = counter(
            "breadcrumb_transactions_total",
            "Kafka transactions by outcome.",
            &["outcome"],
        );
        let restore_records = counter(
            "breadcrumb_restore_records_total",
            "Changelog records applied while restoring state.",
            &["store"],
        );
        let restore_remaining = gauge_vec(
            "breadcrumb_restore_remaining_records",
            "Changelog records left to apply in running restores.",
            &["store"],
        );
        let state_keys = gauge_vec(
            "breadcrumb_state_keys",
            "Estimated keys held per state store.",
            &["store"],
        );
        let consumer_lag = gauge_vec(
            "breadcrumb_consumer_lag",
            "Records between the consumer position and the high watermark.",
            &["topic", "partition"],
        );
        let commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "breadcrumb_commit_duration_seconds",
                "Time to commit one transaction.",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(commit_duration.clone()))
            .expect("metric registered once");
        let transaction_records = Histogram::with_opts(
            HistogramOpts::new(
                "breadcrumb_transaction_records",
                "Input records per committed transaction.",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 10).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(transaction_records.clone()))
            .expect("metric registered once");
        let restoring_partitions = IntGauge::new(
            "breadcrumb_restoring_partitions",
            "Partitions whose state is being restored.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(restoring_partitions.clone()))
            .expect("metric registered once");
        let assigned_partitions = IntGauge::new(
            "breadcrumb_assigned_partitions",
            "Input partitions assigned to this instance.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(assigned_partitions.clone()))
            .expect("metric registered once");
        let producer_restarts = IntCounter::new(
            "breadcrumb_producer_restarts_total",
            "Producer recreations after fencing or a fatal error.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(producer_restarts.clone()))
            .expect("metric registered once");
        let schema_unavailable = IntCounter::new(
            "breadcrumb_schema_unavailable_total",
            "Transactions rewound because a schema registry could not answer; retried after a back-off.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(schema_unavailable.clone()))
            .expect("metric registered once");
        let ordering_gaps = counter(
            "breadcrumb_ordering_gaps_total",
            "Gap records emitted: sequences given up on after a timeout, an overflow or a new epoch.",
            &["pipeline"],
        );
        let ordering_late = counter(
            "breadcrumb_ordering_late_total",
            "Events that arrived after their place in the order was given up.",
            &["pipeline"],
        );
        let ordering_repeats = counter(
            "breadcrumb_ordering_repeats_total",
            "Events repeating a sequence number already emitted or waiting.",
            &["pipeline"],
        );
        let ordering_waiting_events = gauge_vec(
            "breadcrumb_ordering_waiting_events",
            "Events held until the gap before them fills, as of the last commit.",
            &["pipeline"],
        );
        let ordering_waiting_bytes = gauge_vec(
            "breadcrumb_ordering_waiting_bytes",
            "Bytes of events held until the gap before them fills, as of the last commit.",
            &["pipeline"],
        );
        let histogram_vec = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["pipeline"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("metric registered once");
            metric
        };
        let ordering_reorder_depth = histogram_vec(
            "breadcrumb_ordering_reorder_depth",
            "Sequence numbers between the next expected one and a held event.",
            REORDER_DEPTH_BUCKETS.to_vec(),
        );
        let ordering_buffer_seconds = histogram_vec(
            "breadcrumb_ordering_buffer_seconds",
            "Event time a held event waited before it was released.",
            TIME_IN_BUFFER_BUCKETS.to_vec(),
        );
        let sampling_pending_traces = gauge_vec(
            "breadcrumb_sampling_pending_traces",
            "Traces buffered by tail sampling awaiting their decision, as of the last commit.",
            &["pipeline"],
        );
        let sampling_buffered_bytes = gauge_vec(
            "breadcrumb_sampling_buffered_bytes",
            "Bytes of spans buffered by tail sampling, as of the last commit.",
            &["pipeline"],
        );
        let lineage =
            LineageMetricFamilies::register(&registry).expect("lineage metrics register once");
        let sampling = SamplingMetrics::unregistered();
        for family in [
            &sampling.decisions,
            &sampling.late_spans,
            &sampling.completions,
        ] {
            registry
                .register(Box::new(family.clone()))
                .expect("metric registered once");
        }
        Self {
            registry,
            events_in,
            events_out,
            duplicates,
            conflicts,
            dead_letters,
            transactions,
            commit_duration,
            restore_records,
            restore_remaining,
            restoring_partitions,
            state_keys,
            consumer_lag,
            assigned_partitions,
            transaction_records,
            producer_restarts,
            schema_unavailable,
            ordering_gaps,
            ordering_late,
            ordering_repeats,
            ordering_waiting_events,
            ordering_waiting_bytes,
            ordering_reorder_depth,
            ordering_buffer_seconds,
            sampling_pending_traces,
            sampling_buffered_bytes,
            sampling,
            lineage,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
