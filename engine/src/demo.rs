//! `breadcrumb demo`: the real pipelines, end to end, on an in-process Kafka-protocol broker
//! (librdkafka's mock cluster), over a realistic payments workload and, beside it, a telemetry
//! workload of OTLP traces for tail sampling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breadcrumb_schemas::otlp::{parse_request, Batch, TraceId, WireReader};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::mocking::MockCluster;

use crate::config::EngineConfig;
use crate::demo_lineage::{self, LineageSummary};
use crate::error::{EngineError, Result};
use crate::generate::{self, ProducedCounts, WorkloadSpec};
use crate::generate_commerce::{self, CommerceSpec};
use crate::generate_traces::{self, TraceCounts, TraceKind, TraceManifest, TraceWorkloadSpec};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::query::{self, QueryService};
use crate::runtime::{self, base_client_config, pipeline::DEAD_LETTER_REASONS};
use crate::verify;

const PIPELINE: &str = "payments";
const INPUT_TOPIC: &str = "payments";
/// The mock cluster keeps at most 5 MiB per partition and drops older records beyond that, so
/// the demo spreads its 50K payments (about 22 MiB) over enough partitions to keep them all for
/// the read-back check.
const INPUT_PARTITIONS: i32 = 12;

const TRACES_PIPELINE: &str = "traces";
const TRACES_TOPIC: &str = "otlp_spans";
const TRACES_PARTITIONS: i32 = 4;
const SAMPLED_TOPIC: &str = "otlp_spans-sampled";
const DECISIONS_TOPIC: &str = "otlp_spans-decisions";
/// The `slow` policy's threshold; the generator's slow traces exceed it, the others stay below.
const SLOW_THRESHOLD_MS: i64 = 1_000;
/// Where the demo's OpenLineage run events go.
const OPENLINEAGE_TOPIC: &str = "breadcrumb-demo-openlineage";
/// The demo's deciders in policy order (then the operator's own: `none`, `overflow`), with what
/// each one's traces are, for the summary.
const DECIDERS: [(&str, &str); 6] = [
    ("errors", "a span with status ERROR"),
    ("slow", "root span longer than 1000 ms"),
    (
        "no-health-checks",
        "`http.route` under /health (a drop policy wins over all)",
    ),
    (
        "baseline",
        "5% of the rest, by a salted hash of the trace id",
    ),
    ("none", "no policy kept them"),
    ("overflow", "dropped unseen: a partition's buffer was full"),
];

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub records: u64,
    pub duplicate_percent: f64,
    pub conflict_percent: f64,
    pub poison_percent: f64,
    /// Percentage of accounts whose payments arrive shuffled.
    pub shuffled_accounts_percent: f64,
    /// Percentage of payments whose account skips a sequence number before them.
    pub sequence_gap_percent: f64,
    /// Traces of the telemetry workload (clock traces not included).
    pub traces: u64,
    /// Commerce flows (order → payment → invoice) of the lineage workload.
    pub flows: u64,
    /// Show progress bars (off when not on a terminal).
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            records: 50_000,
            duplicate_percent: 8.0,
            conflict_percent: 0.5,
            poison_percent: 0.4,
            shuffled_accounts_percent: 10.0,
            sequence_gap_percent: 0.05,
            traces: 2_000,
            flows: 300,
            progress: true,
        }
    }
}

/// What the demo measured, all from committed transactions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoSummary {
    pub produced: ProducedCounts,
    pub events_in: u64,
    pub events_out: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// Events the ordering operator held until their predecessors arrived.
    pub reordered: u64,
    /// Gap records: sequences given up on.
    pub gaps: u64,
    /// Events that arrived after their gap was given up.
    pub late: u64,
    /// Repeats of a sequence already emitted (after dedupe, so copies with another id).
    pub repeats: u64,
    /// Events still held at shutdown (in state, released when the gap closes).
    pub waiting: u64,
    /// Accounts whose output sequence numbers ever went down.
    pub accounts_out_of_order: u64,
    pub dead_letters: Vec<(String, u64)>,
    pub transactions_committed: u64,
    pub transactions_aborted: u64,
    pub output_records_read: u64,
    pub distinct_ids_in_output: u64,
    pub output_exactly_once: bool,
    /// The tail-sampling side.
    pub telemetry: TelemetrySummary,
    /// The lineage side.
    pub lineage: LineageSummary,
    /// The OpenLineage run events read back, in one line.
    pub openlineage: String,
    pub elapsed_ms: u128,
}

/// What the tail-sampling pipeline did with the telemetry workload: its metrics, then what the
/// decisions and sampled topics hold, read back `read_committed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TelemetrySummary {
    pub produced: TraceCounts,
    /// Records (one trace each) read from the input topic.
    pub records_in: u64,
    /// Traces decided, by deciding policy and decision (`keep`, `drop`), from the metrics: the
    /// demo's deciders in policy order, non-zero ones only.
    pub decisions: Vec<(String, String, u64)>,
    /// Traces decided, by what completed them (`quiet_period`, `max_wait`, `forced`).
    pub completions: Vec<(String, u64)>,
    /// Traces still buffered at shutdown (the clock traces, by design).
    pub pending: u64,
    /// Spans that arrived after their trace's decision.
    pub late_spans: u64,
    /// Records (one kept trace each) written to the sampled topic, from the metrics.
    pub records_out: u64,
    /// Decision records read back.
    pub decision_records: u64,
    /// Real traces with no decision record.
    pub undecided: u64,
    /// Decision records beyond the first of their trace, or of a trace never produced.
    pub extra_decisions: u64,
    /// Clock traces that were decided (they should stay pending).
    pub clocks_decided: u64,
    /// Traces kept according to the decision records, by kind (`spans`: theirs).
    pub kept: TraceCounts,
    /// Records read back from the sampled topic.
    pub sampled_records_read: u64,
    /// Spans read back from the sampled topic.
    pub spans_out: u64,
    /// Spans of kept traces absent from the sampled topic.
    pub spans_missing: u64,
    /// Spans read back more than once (each extra copy counted).
    pub spans_repeated: u64,
    /// Spans read back that belong to no kept trace.
    pub spans_unexpected: u64,
    /// Sampled records that are not a valid `ExportTraceServiceRequest`.
    pub sampled_records_unparsable: u64,
}

impl TelemetrySummary {
    /// Traces kept, by the metrics.
    pub fn kept_by_metrics(&self) -> u64 {
        self.decisions
            .iter()
            .filter(|(_, decision, _)| decision == "keep")
            .map(|(_, _, count)| count)
            .sum()
    }

    /// Every real trace decided exactly once, every clock trace still pending, every error and
    /// slow trace kept, no health check kept, and the metrics agree with the decision records.
    pub fn policies_hold(&self) -> bool {
        self.undecided == 0
            && self.extra_decisions == 0
            && self.clocks_decided == 0
            && self.pending == self.produced.clock
            && self.decision_records == self.produced.traces()
            && self.kept.error == self.produced.error
            && self.kept.slow == self.produced.slow
            && self.kept.health == 0
            && self.kept_by_metrics() == self.kept.traces()
    }

    /// The sampled topic holds exactly the spans of the kept traces, each once, one record per
    /// kept trace.
    pub fn spans_exact(&self) -> bool {
        self.sampled_records_unparsable == 0
            && self.spans_missing == 0
            && self.spans_repeated == 0
            && self.spans_unexpected == 0
            && self.spans_out == self.kept.spans
            && self.sampled_records_read == self.kept.traces()
            && self.records_out == self.kept.traces()
    }

    pub fn ok(&self) -> bool {
        self.policies_hold() && self.spans_exact()
    }

    fn render_into(&self, text: &mut String) {
        let produced = &self.produced;
        text.push_str(&format!(
            "\nbreadcrumb demo: tail sampling of an OpenTelemetry trace stream\n\n  traces            {:>8}  produced to `{TRACES_TOPIC}`, one OTLP request per trace keyed by its id ({} spans)\n",
            produced.traces(),
            produced.spans
        ));
        text.push_str(&format!(
            "                              ({} with an error span, {} slow, {} health checks, {} plain; + {} clock traces, one per partition, 10 min later in event time)\n",
            produced.error, produced.slow, produced.health, produced.plain, produced.clock
        ));
        text.push_str(&format!(
            "  in                {:>8}  records read from `{TRACES_TOPIC}`\n",
            self.records_in
        ));
        text.push_str("  decisions                   by policy, first match wins:\n");
        for (policy, decision, count) in &self.decisions {
            let explanation = DECIDERS
                .iter()
                .find(|(name, _)| name == policy)
                .map_or("", |(_, explanation)| explanation);
            text.push_str(&format!(
                "    {policy:<17} {decision:<4} {count:>6}  {explanation}\n"
            ));
        }
        let completions: Vec<String> = self
            .completions
            .iter()
            .map(|(completion, count)| format!("{completion}: {count}"))
            .collect();
        text.push_str(&format!(
            "  kept              {:>8}  traces ({} spans), one OTLP request each on `{SAMPLED_TOPIC}`; decisions on `{DECISIONS_TOPIC}`\n",
            self.kept_by_metrics(),
            self.kept.spans
        ));
        text.push_str(&format!(
            "  completed         {:>8}  traces decided in event time ({})\n",
            self.completions.iter().map(|(_, count)| count).sum::<u64>(),
            completions.join(", ")
        ));
        text.push_str(&format!(
            "  pending           {:>8}  traces still buffered: the clock traces, within their own quiet period\n",
            self.pending
        ));
        text.push_str(&format!(
            "  late spans        {:>8}  arrived after their trace's decision\n",
            self.late_spans
        ));
        let percent = |part: u64, whole: u64| 100.0 * part as f64 / whole.max(1) as f64;
        text.push_str(&format!(
            "\n  sampling check    {} decision records read back; kept {}/{} error traces, {}/{} slow, {}/{} health checks, {}/{} plain ({:.1}%): {}\n",
            self.decision_records,
            self.kept.error,
            produced.error,
            self.kept.slow,
            produced.slow,
            self.kept.health,
            produced.health,
            self.kept.plain,
            produced.plain,
            percent(self.kept.plain, produced.plain),
            if self.policies_hold() {
                "every trace decided once, every error and slow trace kept, no health check"
            } else {
                "MISMATCH"
            }
        ));
        text.push_str(&format!(
            "  span check        {} records, {} spans read back from `{SAMPLED_TOPIC}` read_committed: {}\n",
            self.sampled_records_read,
            self.spans_out,
            if self.spans_exact() {
                format!(
                    "exactly the spans of the {} kept traces, each once",
                    self.kept.traces()
                )
            } else {
                format!(
                    "MISMATCH ({} missing, {} repeated, {} unexpected, {} unparsable records)",
                    self.spans_missing,
                    self.spans_repeated,
                    self.spans_unexpected,
                    self.sampled_records_unparsable
                )
            }
        ));
    }
}

impl DemoSummary {
    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters.iter().map(|(_, count)| count).sum()
    }

    /// `in = out + duplicates + conflicts + late + repeats + dead letters + waiting`.
    pub fn conserved(&self) -> bool {
        self.events_in
            == self.events_out
                + self.duplicates
                + self.conflicts
                + self.late
                + self.repeats
                + self.dead_letters_total()
                + self.waiting
    }

    /// The summary a newcomer reads.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let seconds = self.elapsed_ms as f64 / 1000.0;
        text.push_str(
            "\nbreadcrumb demo: exactly-once dedupe and per-account ordering of a payments stream\n\n",
        );
        text.push_str(&format!(
            "  produced          {:>8}  ({} new, {} producer retries, {} conflicting reuses of an id, {} poison)\n",
            self.produced.total(),
            self.produced.new,
            self.produced.duplicates,
            self.produced.conflicts,
            self.produced.poison
        ));
        text.push_str(&format!(
            "                              ({} payments arrive after a later payment of their account; {} sequence numbers never sent)\n",
            self.produced.reordered, self.produced.sequence_gaps
        ));
        text.push_str(&format!(
            "  in                {:>8}  records read from `payments`\n",
            self.events_in
        ));
        text.push_str(&format!(
            "  out               {:>8}  first copies, in sequence order per account, republished to `payments-deduped`\n",
            self.events_out
        ));
        text.push_str(&format!(
            "  reordered         {:>8}  held in state until the payment before them arrived, then released in order\n",
            self.reordered
        ));
        text.push_str(&format!(
            "  gaps              {:>8}  missing sequence numbers given up on, reported to `payments-deduped-gaps`\n",
            self.gaps
        ));
        text.push_str(&format!(
            "  late              {:>8}  arrived after their gap was reported, sent to `payments-deduped-late`\n",
            self.late
        ));
        text.push_str(&format!("  duplicates        {:>8}  retries of an event already seen, sent to `payments-duplicates`\n", self.duplicates));
        text.push_str(&format!("  conflicts         {:>8}  same id, different payload, sent to `payments-deduped-conflicts`\n", self.conflicts));
        text.push_str(&format!("  dead letters      {:>8}  undecodable or id-less records, sent to `breadcrumb-demo-dlq`", self.dead_letters_total()));
        let reasons: Vec<String> = self
            .dead_letters
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(reason, count)| format!("{reason}: {count}"))
            .collect();
        if !reasons.is_empty() {
            text.push_str(&format!(" ({})", reasons.join(", ")));
        }
        text.push('\n');
        text.push_str(&format!(
            "\n  conservation      in = out + duplicates + conflicts + late + repeats + dead letters + waiting\n                    {} = {} + {} + {} + {} + {} + {} + {}   {}\n",
            self.events_in,
            self.events_out,
            self.duplicates,
            self.conflicts,
            self.late,
            self.repeats,
            self.dead_letters_total(),
            self.waiting,
            if self.conserved() { "holds" } else { "DOES NOT HOLD" }
        ));
        text.push_str(&format!(
            "\n  output check      {} records read back read_committed, {} distinct ids: {}\n",
            self.output_records_read,
            self.distinct_ids_in_output,
            if self.output_exactly_once {
                "every distinct input id exactly once"
            } else {
                "MISMATCH (see above)"
            }
        ));
        text.push_str(&format!(
            "  order check       {}\n",
            if self.accounts_out_of_order == 0 {
                "every account's payments leave in increasing sequence order".to_owned()
            } else {
                format!("{} accounts OUT OF ORDER", self.accounts_out_of_order)
            }
        ));
        self.telemetry.render_into(&mut text);
        self.lineage.render_into(&mut text);
        text.push_str(&format!("\n  openlineage       {}\n", self.openlineage));
        text.push_str(&format!(
            "  transactions      {} committed, {} aborted (all pipelines); {:.1} s, {:.0} records/s\n",
            self.transactions_committed,
            self.transactions_aborted,
            seconds,
            (self.events_in + self.telemetry.records_in + self.lineage.events_in) as f64
                / seconds.max(0.001)
        ));
        text
    }
}

fn demo_config(bootstrap: &str, state_dir: &std::path::Path) -> Result<EngineConfig> {
    let text = format!(
        r#"
application_id = "breadcrumb-demo"
instance_id = "demo-1"
commit_interval_ms = 100

[kafka]
"bootstrap.servers" = "{bootstrap}"

[state]
dir = "{state_dir}"

[http]
enabled = false

[openlineage]
topic = "{OPENLINEAGE_TOPIC}"
running_interval_ms = 1000

[pipelines.{PIPELINE}]
input_topics = ["{INPUT_TOPIC}"]
output_topic = "payments-deduped"
duplicates_topic = "payments-duplicates"

[pipelines.{PIPELINE}.decoder]
format = "cloudevents"

[pipelines.{PIPELINE}.dedupe]
ttl_ms = 604800000

[pipelines.{PIPELINE}.ordering]
key_fields = ["subject"]
first_sequence = 1
# Event time: a missing payment is given up once the partition's stream time is 30 s past.
gap_timeout_ms = 30000
# Processing time: and after 1 s of waiting, so the tail of the stream does not wait forever.
gap_timeout_processing_ms = 1000

[pipelines.{TRACES_PIPELINE}]
input_topics = ["{TRACES_TOPIC}"]
output_topic = "{SAMPLED_TOPIC}"
decisions_topic = "{DECISIONS_TOPIC}"

[pipelines.{TRACES_PIPELINE}.decoder]
format = "otlp_proto"

[pipelines.{TRACES_PIPELINE}.sampling]
# Event time: a trace is complete 5 s after its last span once its root arrived, or 30 s after
# its first span.
quiet_period_ms = 5000
max_wait_ms = 30000

[[pipelines.{TRACES_PIPELINE}.sampling.policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]

[[pipelines.{TRACES_PIPELINE}.sampling.policies]]
name = "slow"
type = "latency"
threshold_ms = {SLOW_THRESHOLD_MS}

[[pipelines.{TRACES_PIPELINE}.sampling.policies]]
name = "no-health-checks"
type = "drop"
[[pipelines.{TRACES_PIPELINE}.sampling.policies.policies]]
name = "health"
type = "string_attribute"
key = "http.route"
values = ["^/health"]
regex = true

[[pipelines.{TRACES_PIPELINE}.sampling.policies]]
name = "baseline"
type = "probabilistic"
sampling_percentage = 5.0
hash_salt = "breadcrumb-demo"
{lineage}"#,
        state_dir = state_dir.display(),
        lineage = demo_lineage::config_section(),
    );
    EngineConfig::from_toml(&text)
}

fn bar(progress: bool, length: u64, message: &'static str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    bar.set_style(
        ProgressStyle::with_template("  {msg:<12} [{bar:40}] {pos}/{len} ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

/// Runs the demo and returns its summary.
pub fn run(options: &DemoOptions) -> Result<DemoSummary> {
    let started = Instant::now();
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic(INPUT_TOPIC, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(TRACES_TOPIC, TRACES_PARTITIONS, 1)?;
    cluster.create_topic(demo_lineage::EVENTS_TOPIC, demo_lineage::PARTITIONS, 1)?;
    cluster.create_topic(demo_lineage::SPANS_TOPIC, demo_lineage::PARTITIONS, 1)?;
    let state_dir = tempfile::TempDir::new()?;
    let config = Arc::new(demo_config(&bootstrap, state_dir.path())?);
    // The mock broker has no CreateTopics API, so the demo creates what the engine would.
    for spec in runtime::planned_topics(&config)? {
        cluster.create_topic(&spec.name, spec.partitions, 1)?;
    }

    let spec = WorkloadSpec {
        records: options.records,
        duplicate_percent: options.duplicate_percent,
        conflict_percent: options.conflict_percent,
        poison_percent: options.poison_percent,
        shuffled_accounts_percent: options.shuffled_accounts_percent,
        sequence_gap_percent: options.sequence_gap_percent,
        ..WorkloadSpec::default()
    };
    let produce_bar = bar(options.progress, options.records, "producing");
    let produced = generate::produce(&base_client_config(&config), INPUT_TOPIC, spec, 0, |sent| {
        produce_bar.set_position(sent)
    })?;
    produce_bar.finish();
    let traces_bar = bar(
        options.progress,
        options.traces + TRACES_PARTITIONS as u64,
        "traces",
    );
    let manifest = generate_traces::produce(
        &base_client_config(&config),
        TRACES_TOPIC,
        TraceWorkloadSpec {
            traces: options.traces,
            slow_threshold_ms: SLOW_THRESHOLD_MS,
            partitions: TRACES_PARTITIONS,
            ..TraceWorkloadSpec::default()
        },
        |sent| traces_bar.set_position(sent),
    )?;
    traces_bar.finish();
    let commerce_spec = CommerceSpec {
        flows: options.flows,
        ..CommerceSpec::default()
    };
    let commerce = generate_commerce::produce(
        &base_client_config(&config),
        demo_lineage::EVENTS_TOPIC,
        demo_lineage::SPANS_TOPIC,
        &commerce_spec,
    )?;

    let metrics = Metrics::new();
    let health = Health::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    // The lineage query is asked in-process, through the channel the HTTP routes use.
    let (query_sender, query_receiver) = query::channel();
    let queries = QueryService::new(query_sender, &config.instance_id(), None, None, true);
    let engine = {
        let config = config.clone();
        let metrics = metrics.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("breadcrumb-engine".to_owned())
            .spawn(move || {
                runtime::run_with_queries(config, metrics, health, shutdown, Some(query_receiver))
            })?
    };
    let events_in = metrics
        .events_in
        .with_label_values(&[PIPELINE, INPUT_TOPIC]);
    let traces_in = metrics
        .events_in
        .with_label_values(&[TRACES_PIPELINE, TRACES_TOPIC]);
    let commerce_in = [demo_lineage::EVENTS_TOPIC, demo_lineage::SPANS_TOPIC].map(|topic| {
        metrics
            .events_in
            .with_label_values(&[demo_lineage::PIPELINE, topic])
    });
    let records_total =
        produced.total() + manifest.counts.records() + commerce.events + commerce.span_records;
    let records_in = || {
        events_in.get() + traces_in.get() + commerce_in.iter().map(|count| count.get()).sum::<u64>()
    };
    let process_bar = bar(options.progress, records_total, "processing");
    let deadline = Instant::now() + Duration::from_secs(180);
    // The commerce clock batch goes out once everything else was read: read early, it would
    // close the join windows of flows whose spans were still unread.
    let mut clock_sent = false;
    while records_in() < records_total && Instant::now() < deadline && !engine.is_finished() {
        process_bar.set_position(records_in());
        if !clock_sent && records_in() + 1 >= records_total {
            generate_commerce::produce_clock(
                &base_client_config(&config),
                demo_lineage::SPANS_TOPIC,
                &commerce_spec,
            )?;
            clock_sent = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    process_bar.set_position(records_in());
    process_bar.finish();
    // Payments held behind a gap at the end of the stream are released by the processing-time
    // timeout: wait for the ordering operator to let them go.
    let waiting = metrics
        .ordering_waiting_events
        .with_label_values(&[PIPELINE]);
    // Lineage's stateful stage reads the repartition topic behind the inputs: wait until every
    // commerce event was joined and republished.
    let enriched = metrics
        .events_out
        .with_label_values(&[demo_lineage::PIPELINE, demo_lineage::ENRICHED_TOPIC]);
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while (waiting.get() > 0 || enriched.get() < commerce.events)
        && Instant::now() < drain_deadline
        && !engine.is_finished()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // What `GET /lineage/events/{id}?depth=3` answers for the first complete flow's invoice.
    let lineage_query = commerce
        .flows
        .iter()
        .find(|flow| flow.spans_exported && flow.payment_produced)
        .map(|flow| {
            let path = format!("/lineage/events/{}", flow.invoice_id);
            let response = queries.get_blocking(&path, Some("depth=3"));
            (format!("GET {path}?depth=3"), response)
        });
    shutdown.store(true, Ordering::Release);
    let engine_result = engine
        .join()
        .map_err(|_| EngineError::Fatal("engine thread panicked".to_owned()))?;
    engine_result?;

    let output = verify::read_topic(
        &base_client_config(&config),
        "payments-deduped",
        Duration::from_secs(60),
    )?;
    let mut ids = std::collections::HashSet::new();
    let mut parsed = 0u64;
    let mut last_sequence: std::collections::HashMap<String, u64> = Default::default();
    let mut out_of_order = std::collections::HashSet::new();
    for message in &output {
        use rdkafka::message::Message;
        let Some(event) = message
            .payload()
            .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok())
        else {
            continue;
        };
        if let Some(id) = event.get("id").and_then(|id| id.as_str()) {
            parsed += 1;
            ids.insert(id.to_owned());
        }
        let subject = event.get("subject").and_then(|subject| subject.as_str());
        let sequence = event
            .get("sequence")
            .and_then(|sequence| sequence.as_str())
            .and_then(|sequence| sequence.parse::<u64>().ok());
        if let (Some(subject), Some(sequence)) = (subject, sequence) {
            // One account's payments share a Kafka key, so one output partition: read order is
            // output order.
            if let Some(previous) = last_sequence.insert(subject.to_owned(), sequence) {
                if sequence <= previous {
                    out_of_order.insert(subject.to_owned());
                }
            }
        }
    }
    let telemetry = telemetry_summary(&config, &metrics, manifest)?;
    let mut lineage = demo_lineage::summary(&config, &metrics, &commerce)?;
    if let Some((request, response)) = lineage_query {
        lineage.query = Some(demo_lineage::QueryShown {
            request,
            status: response.status.as_u16(),
            body: response.body,
        });
    }
    let dead_letters = DEAD_LETTER_REASONS
        .iter()
        .map(|reason| {
            (
                (*reason).to_owned(),
                metrics
                    .dead_letters
                    .with_label_values(&[PIPELINE, reason])
                    .get(),
            )
        })
        .collect();
    Ok(DemoSummary {
        produced,
        events_in: events_in.get(),
        events_out: metrics
            .events_out
            .with_label_values(&[PIPELINE, "payments-deduped"])
            .get(),
        duplicates: metrics.duplicates.with_label_values(&[PIPELINE]).get(),
        conflicts: metrics.conflicts.with_label_values(&[PIPELINE]).get(),
        reordered: metrics
            .ordering_reorder_depth
            .with_label_values(&[PIPELINE])
            .get_sample_count(),
        gaps: metrics.ordering_gaps.with_label_values(&[PIPELINE]).get(),
        late: metrics.ordering_late.with_label_values(&[PIPELINE]).get(),
        repeats: metrics
            .ordering_repeats
            .with_label_values(&[PIPELINE])
            .get(),
        waiting: waiting.get().max(0) as u64,
        accounts_out_of_order: out_of_order.len() as u64,
        dead_letters,
        transactions_committed: metrics.transactions.with_label_values(&["committed"]).get(),
        transactions_aborted: metrics.transactions.with_label_values(&["aborted"]).get(),
        output_records_read: output.len() as u64,
        distinct_ids_in_output: ids.len() as u64,
        output_exactly_once: parsed == output.len() as u64
            && ids.len() as u64 == output.len() as u64
            && ids.len() as u64 == produced.new,
        telemetry,
        lineage,
        openlineage: openlineage_line(&config)?,
        elapsed_ms: started.elapsed().as_millis(),
    })
}

/// The run events on the OpenLineage topic, per job: `START, n RUNNING, COMPLETE`.
fn openlineage_line(config: &EngineConfig) -> Result<String> {
    use rdkafka::message::Message;

    let records = verify::read_topic(
        &base_client_config(config),
        OPENLINEAGE_TOPIC,
        Duration::from_secs(30),
    )?;
    let mut jobs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for record in &records {
        let Some(event) = record
            .payload()
            .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok())
        else {
            continue;
        };
        let job = event["job"]["name"].as_str().unwrap_or("?").to_owned();
        let kind = event["eventType"].as_str().unwrap_or("?").to_owned();
        jobs.entry(job).or_default().push(kind);
    }
    let per_job: Vec<String> = jobs
        .iter()
        .map(|(job, kinds)| {
            let running = kinds.iter().filter(|kind| *kind == "RUNNING").count();
            let first = kinds.first().map_or("none", String::as_str);
            let last = kinds.last().map_or("none", String::as_str);
            format!("{job}: {first}, {running} RUNNING, {last}")
        })
        .collect();
    Ok(format!(
        "{} run events read back from `{OPENLINEAGE_TOPIC}` ({})",
        records.len(),
        per_job.join("; ")
    ))
}

/// The telemetry block: the sampling metrics, then the decisions and sampled topics read back
/// and checked against what was produced.
fn telemetry_summary(
    config: &EngineConfig,
    metrics: &Metrics,
    manifest: TraceManifest,
) -> Result<TelemetrySummary> {
    use rdkafka::message::Message;

    let sampling = &metrics.sampling;
    let mut summary = TelemetrySummary {
        produced: manifest.counts,
        records_in: metrics
            .events_in
            .with_label_values(&[TRACES_PIPELINE, TRACES_TOPIC])
            .get(),
        records_out: metrics
            .events_out
            .with_label_values(&[TRACES_PIPELINE, SAMPLED_TOPIC])
            .get(),
        pending: metrics
            .sampling_pending_traces
            .with_label_values(&[TRACES_PIPELINE])
            .get()
            .max(0) as u64,
        late_spans: ["kept", "dropped"]
            .iter()
            .map(|outcome| {
                sampling
                    .late_spans
                    .with_label_values(&[TRACES_PIPELINE, outcome])
                    .get()
            })
            .sum(),
        ..TelemetrySummary::default()
    };
    for (policy, _) in DECIDERS {
        for decision in ["keep", "drop"] {
            let count = sampling
                .decisions
                .with_label_values(&[TRACES_PIPELINE, policy, decision])
                .get();
            if count > 0 {
                summary
                    .decisions
                    .push((policy.to_owned(), decision.to_owned(), count));
            }
        }
    }
    for completion in ["quiet_period", "max_wait", "forced"] {
        let count = sampling
            .completions
            .with_label_values(&[TRACES_PIPELINE, completion])
            .get();
        if count > 0 {
            summary.completions.push((completion.to_owned(), count));
        }
    }

    let client = base_client_config(config);
    let decision_records = verify::read_topic(&client, DECISIONS_TOPIC, Duration::from_secs(60))?;
    summary.decision_records = decision_records.len() as u64;
    let mut decided: HashMap<&str, bool> = HashMap::new();
    for message in &decision_records {
        let record = message
            .payload()
            .and_then(|value| serde_json::from_slice::<serde_json::Value>(value).ok());
        let trace_id = record
            .as_ref()
            .and_then(|record| record.get("trace_id")?.as_str());
        let produced = trace_id.and_then(|id| manifest.traces.get_key_value(id));
        let Some((trace_id, trace)) = produced else {
            summary.extra_decisions += 1;
            continue;
        };
        if trace.kind == TraceKind::Clock {
            summary.clocks_decided += 1;
        }
        let keep = record
            .as_ref()
            .and_then(|record| record.get("decision")?.as_str())
            == Some("keep");
        if decided.insert(trace_id.as_str(), keep).is_some() {
            summary.extra_decisions += 1;
        }
    }
    let mut expected_spans: HashMap<(TraceId, [u8; 8]), u32> = HashMap::new();
    for (trace_id, trace) in &manifest.traces {
        if trace.kind == TraceKind::Clock {
            continue;
        }
        let Some(&keep) = decided.get(trace_id.as_str()) else {
            summary.undecided += 1;
            continue;
        };
        if !keep {
            continue;
        }
        let kept = &mut summary.kept;
        match trace.kind {
            TraceKind::Error => kept.error += 1,
            TraceKind::Slow => kept.slow += 1,
            TraceKind::Health => kept.health += 1,
            TraceKind::Plain => kept.plain += 1,
            TraceKind::Clock => {}
        }
        kept.spans += trace.span_ids.len() as u64;
        for span_id in &trace.span_ids {
            expected_spans.insert((trace.trace_id, *span_id), 0);
        }
    }

    let sampled = verify::read_topic(&client, SAMPLED_TOPIC, Duration::from_secs(60))?;
    summary.sampled_records_read = sampled.len() as u64;
    let mut batch = Batch::default();
    for message in &sampled {
        let value = message.payload().unwrap_or_default();
        if parse_request(value, &mut batch).is_err() {
            summary.sampled_records_unparsable += 1;
            continue;
        }
        for span in &batch.spans {
            summary.spans_out += 1;
            let seen = span_id(&value[span.content.clone()])
                .and_then(|span_id| expected_spans.get_mut(&(span.trace_id, span_id)));
            match seen {
                Some(count) => {
                    if *count > 0 {
                        summary.spans_repeated += 1;
                    }
                    *count += 1;
                }
                None => summary.spans_unexpected += 1,
            }
        }
    }
    summary.spans_missing = expected_spans.values().filter(|&&seen| seen == 0).count() as u64;
    Ok(summary)
}

/// The `span_id` field of a span message.
fn span_id(span: &[u8]) -> Option<[u8; 8]> {
    let mut reader = WireReader::new(span);
    while let Ok(Some((field, value))) = reader.next_field() {
        if field == 2 {
            return value.bytes().ok()?.try_into().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use breadcrumb_schemas::otlp::builder;

    fn balanced() -> TelemetrySummary {
        let produced = TraceCounts {
            error: 3,
            slow: 2,
            health: 1,
            plain: 10,
            clock: 4,
            spans: 80,
        };
        TelemetrySummary {
            produced,
            records_in: produced.records(),
            decisions: vec![
                ("errors".to_owned(), "keep".to_owned(), 3),
                ("slow".to_owned(), "keep".to_owned(), 2),
                ("no-health-checks".to_owned(), "drop".to_owned(), 1),
                ("baseline".to_owned(), "keep".to_owned(), 1),
                ("none".to_owned(), "drop".to_owned(), 9),
            ],
            completions: vec![("quiet_period".to_owned(), 16)],
            pending: 4,
            records_out: 6,
            decision_records: 16,
            kept: TraceCounts {
                error: 3,
                slow: 2,
                plain: 1,
                spans: 30,
                ..TraceCounts::default()
            },
            sampled_records_read: 6,
            spans_out: 30,
            ..TelemetrySummary::default()
        }
    }

    #[test]
    fn telemetry_checks_pass_only_when_every_figure_agrees() {
        let summary = balanced();
        assert!(summary.ok());
        let mut text = String::new();
        summary.render_into(&mut text);
        assert!(text.contains("exactly the spans of the 6 kept traces, each once"));
        assert!(!text.contains("MISMATCH"));

        let broken: [fn(&mut TelemetrySummary); 8] = [
            |summary| summary.kept.health = 1,
            |summary| summary.kept.error = 2,
            |summary| summary.kept.slow = 1,
            |summary| summary.undecided = 1,
            |summary| summary.pending = 3,
            |summary| summary.decisions[3].2 = 2,
            |summary| summary.spans_repeated = 1,
            |summary| summary.spans_out = 29,
        ];
        for (index, breaking) in broken.iter().enumerate() {
            let mut summary = balanced();
            breaking(&mut summary);
            assert!(!summary.ok(), "change {index} went unnoticed");
            let mut text = String::new();
            summary.render_into(&mut text);
            assert!(text.contains("MISMATCH"), "change {index}: {text}");
        }
    }

    #[test]
    fn span_id_is_read_from_the_span_message() {
        let span = builder::Span {
            trace_id: [7; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some([9; 8]),
            name: "GET /cart".to_owned(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            status_code: 0,
            attributes: Vec::new(),
        };
        let mut encoded = Vec::new();
        builder::encode_span(&span, &mut encoded);
        assert_eq!(span_id(&encoded), Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(span_id(&encoded[..3]), None);
    }
}
