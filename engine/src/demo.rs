//! `breadcrumb demo`: the real pipeline, end to end, on an in-process Kafka-protocol broker
//! (librdkafka's mock cluster), over a realistic payments workload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::mocking::MockCluster;

use crate::config::EngineConfig;
use crate::error::{EngineError, Result};
use crate::generate::{self, ProducedCounts, WorkloadSpec};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::runtime::{self, base_client_config, pipeline::DEAD_LETTER_REASONS};
use crate::verify;

const PIPELINE: &str = "payments";
const INPUT_TOPIC: &str = "payments";
/// The mock cluster keeps at most 5 MiB per partition and drops older records beyond that, so
/// the demo spreads its 50K payments (about 22 MiB) over enough partitions to keep them all for
/// the read-back check.
const INPUT_PARTITIONS: i32 = 12;

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
            progress: true,
        }
    }
}

/// What the demo measured, all from committed transactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    pub elapsed_ms: u128,
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
        text.push_str(&format!(
            "  transactions      {} committed, {} aborted; {:.1} s, {:.0} records/s\n",
            self.transactions_committed,
            self.transactions_aborted,
            seconds,
            self.events_in as f64 / seconds.max(0.001)
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
"#,
        state_dir = state_dir.display()
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

    let metrics = Metrics::new();
    let health = Health::new();
    let shutdown = Arc::new(AtomicBool::new(false));
    let engine = {
        let config = config.clone();
        let metrics = metrics.clone();
        let health = health.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("breadcrumb-engine".to_owned())
            .spawn(move || runtime::run(config, metrics, health, shutdown))?
    };
    let events_in = metrics
        .events_in
        .with_label_values(&[PIPELINE, INPUT_TOPIC]);
    let process_bar = bar(options.progress, produced.total(), "processing");
    let deadline = Instant::now() + Duration::from_secs(180);
    while events_in.get() < produced.total() && Instant::now() < deadline && !engine.is_finished() {
        process_bar.set_position(events_in.get());
        std::thread::sleep(Duration::from_millis(50));
    }
    process_bar.set_position(events_in.get());
    process_bar.finish();
    // Payments held behind a gap at the end of the stream are released by the processing-time
    // timeout: wait for the ordering operator to let them go.
    let waiting = metrics
        .ordering_waiting_events
        .with_label_values(&[PIPELINE]);
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while waiting.get() > 0 && Instant::now() < drain_deadline && !engine.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
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
        elapsed_ms: started.elapsed().as_millis(),
    })
}
