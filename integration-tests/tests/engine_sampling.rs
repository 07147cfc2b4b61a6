//! Tail sampling through a real broker: spans encoded by an independent OTLP implementation
//! (Python's `opentelemetry-proto` from PyPI, see `integration-tests/otlp/spans.py`), SIGKILLs
//! while traces are pending, then: every trace decided once, the sampled topic holds exactly the
//! spans of the kept traces (decoded again by the independent implementation), none of the
//! dropped ones, and the kept ones are exactly the traces the policies select.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use breadcrumb_integration_tests::{
    consume_all, create_topics, produce, Broker, ConsumedRecord, Storage, TestRecord,
};
use common::{committed_transactions, EngineProcess, Scenario};

const PARTITIONS: i32 = 3;
const TRACES: usize = 300;
const CONSUME_TIMEOUT: Duration = Duration::from_secs(150);

/// The environment's python with `opentelemetry-proto` installed (`scripts/otlp-venv.sh`).
fn otlp_python() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/otlp-venv.sh");
    let output = Command::new("bash").arg(&script).output()?;
    ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

fn spans_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("otlp/spans.py")
}

fn config_text(scenario: &Scenario, dir: &Path) -> String {
    format!(
        r#"
application_id = "{app}"
instance_id = "a"
commit_interval_ms = 50
replication_factor = 1
dead_letter_topic = "{app}-dlq"
transaction_journal_path = "{journal}"
transaction_timeout_ms = 10000

[kafka]
"bootstrap.servers" = "{bootstrap}"
"broker.address.family" = "v4"

[state]
dir = "{state}"

[http]
enabled = false

[logging]
level = "info,librdkafka=warn,rdkafka=warn"

[pipelines.traces]
input_topics = ["{input}"]
output_topic = "{output}"

[pipelines.traces.decoder]
format = "otlp_proto"

[pipelines.traces.sampling]
quiet_period_ms = 2000
max_wait_ms = 30000

[[pipelines.traces.sampling.policies]]
name = "errors"
type = "status_code"
status_codes = ["ERROR"]

[[pipelines.traces.sampling.policies]]
name = "slow"
type = "latency"
threshold_ms = 500
"#,
        app = scenario.application_id,
        journal = scenario.journal(dir, "a").display(),
        bootstrap = scenario.bootstrap,
        state = scenario.state_dir(dir, "a").display(),
        input = scenario.input_topic,
        output = scenario.output_topic,
    )
}

#[test]
fn sampled_topic_holds_exactly_the_kept_traces_across_kills() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let python = otlp_python()?;
    let spans_dir = dir.path().join("spans");
    let status = Command::new(&python)
        .arg(spans_script())
        .args(["generate"])
        .arg(&spans_dir)
        .args([TRACES.to_string(), PARTITIONS.to_string(), "7".to_owned()])
        .status()?;
    ensure!(status.success(), "span generation failed");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(spans_dir.join("manifest.json"))?)?;

    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "sampling");
    scenario.output_topic = format!("{}-sampled", scenario.application_id);
    create_topics(
        &scenario.bootstrap,
        &[(&scenario.input_topic, PARTITIONS)],
        false,
    )?;
    let config = dir.path().join("breadcrumb.toml");
    std::fs::write(&config, config_text(&scenario, dir.path()))?;

    let batches: Vec<TestRecord> = manifest["batches"]
        .as_array()
        .context("batches")?
        .iter()
        .map(|batch| -> Result<TestRecord> {
            let value = std::fs::read(spans_dir.join(batch["file"].as_str().context("file")?))?;
            let partition = batch["partition"].as_i64().context("partition")? as i32;
            Ok(TestRecord::value_only(value).partition(partition))
        })
        .collect::<Result<_>>()?;
    produce(&scenario.bootstrap, &scenario.input_topic, &batches)?;

    // Two SIGKILLs part-way: with a 2 s quiet period of event time, dozens of traces are pending
    // at any point of the input.
    let log = dir.path().join("engine.log");
    for round in 0..2i64 {
        let mut engine = EngineProcess::start(&config, &log)?;
        let deadline = std::time::Instant::now() + CONSUME_TIMEOUT;
        let target = 30 * (round + 1);
        loop {
            let committed: i64 = scenario.committed()?.values().sum();
            if committed >= target || std::time::Instant::now() > deadline || !engine.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ensure!(engine.is_running(), "engine died:\n{}", engine.log_tail(60));
        engine.kill()?;
    }
    // A span far later in event time on every partition completes whatever is still pending.
    let clock: Vec<TestRecord> = (0..PARTITIONS)
        .map(|partition| TestRecord::value_only(clock_batch(partition as u8)).partition(partition))
        .collect();
    produce(&scenario.bootstrap, &scenario.input_topic, &clock)?;
    let engine = EngineProcess::start(&config, &log)?;
    let consumed = scenario.wait_until_consumed(CONSUME_TIMEOUT);
    let tail = engine.log_tail(80);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    // Nisshi shows aborted records to read_committed consumers: keep committed transactions.
    let committed = committed_transactions(&[scenario.journal(dir.path(), "a")])?;
    let is_committed = |record: &ConsumedRecord| {
        record
            .header("breadcrumb-txn")
            .is_some_and(|txn| committed.contains(&txn))
    };
    let decisions_topic = format!("{}-decisions", scenario.output_topic);
    let decisions = consume_all(
        &scenario.bootstrap,
        &decisions_topic,
        TRACES,
        Duration::from_secs(30),
    )?;
    let mut decided: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for record in decisions.iter().filter(|record| is_committed(record)) {
        let decision: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        decided
            .entry(
                decision["trace_id"]
                    .as_str()
                    .context("trace_id")?
                    .to_owned(),
            )
            .or_default()
            .push(decision);
    }

    // The sampled output, decoded by the independent implementation.
    let output = consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        1,
        Duration::from_secs(30),
    )?;
    let output_dir = dir.path().join("sampled");
    std::fs::create_dir_all(&output_dir)?;
    for (index, record) in output
        .iter()
        .filter(|record| is_committed(record))
        .enumerate()
    {
        std::fs::write(
            output_dir.join(format!("{index:06}.bin")),
            record.value.as_deref().unwrap_or_default(),
        )?;
    }
    let decoded = Command::new(&python)
        .arg(spans_script())
        .arg("decode")
        .arg(&output_dir)
        .output()?;
    ensure!(
        decoded.status.success(),
        "the sampled output does not decode as OTLP: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    let sampled: Vec<(String, String)> = serde_json::from_slice(&decoded.stdout)?;
    let mut sampled_by_trace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (trace, span) in sampled {
        sampled_by_trace.entry(trace).or_default().push(span);
    }

    let mut kept_count = 0;
    for trace in manifest["traces"].as_array().context("traces")? {
        let trace_id = trace["trace_id"].as_str().context("trace_id")?;
        let outcomes = decided.get(trace_id).cloned().unwrap_or_default();
        ensure!(
            outcomes.len() == 1,
            "trace {trace_id}: {} decisions: {outcomes:?}",
            outcomes.len()
        );
        let decision = &outcomes[0];
        let error = trace["error"].as_bool().context("error")?;
        let slow = trace["duration_ms"].as_u64().context("duration")? >= 500;
        let expected_policy = if error {
            "errors"
        } else if slow {
            "slow"
        } else {
            "none"
        };
        ensure!(
            decision["policy"] == expected_policy
                && decision["decision"]
                    == if expected_policy == "none" {
                        "drop"
                    } else {
                        "keep"
                    },
            "trace {trace_id} (error {error}, slow {slow}): {decision}"
        );
        let spans: BTreeSet<String> = trace["spans"]
            .as_array()
            .context("spans")?
            .iter()
            .map(|span| span.as_str().unwrap_or_default().to_owned())
            .collect();
        let emitted = sampled_by_trace.remove(trace_id).unwrap_or_default();
        if expected_policy == "none" {
            ensure!(
                emitted.is_empty(),
                "dropped trace {trace_id} has {} spans out",
                emitted.len()
            );
        } else {
            kept_count += 1;
            let distinct: BTreeSet<String> = emitted.iter().cloned().collect();
            ensure!(
                distinct == spans && emitted.len() == spans.len(),
                "kept trace {trace_id}: {} spans out ({} distinct), {} in",
                emitted.len(),
                distinct.len(),
                spans.len()
            );
            ensure!(
                decision["span_count"] == spans.len(),
                "span count of {trace_id}: {decision}"
            );
        }
    }
    ensure!(kept_count > 40, "only {kept_count} traces kept");
    // Only the clock traces may be left: nothing else came out.
    sampled_by_trace.retain(|trace, _| !trace.starts_with("ffffffff"));
    if !sampled_by_trace.is_empty() {
        bail!(
            "spans of unknown traces: {:?}",
            sampled_by_trace.keys().collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// One span per partition, an hour after the workload, on a trace of its own.
fn clock_batch(partition: u8) -> Vec<u8> {
    use breadcrumb_schemas::otlp::builder::{encode_request, ResourceSpans, Span};
    let mut trace_id = [0xff; 16];
    trace_id[15] = partition;
    let end = (1_700_000_000_000u64 + 3_600_000) * 1_000_000;
    let mut value = Vec::new();
    encode_request(
        &[ResourceSpans {
            resource: Vec::new(),
            scope_name: "clock".into(),
            spans: vec![Span {
                trace_id,
                span_id: [1; 8],
                parent_span_id: Some([2; 8]),
                name: "clock".into(),
                start_time_unix_nano: end,
                end_time_unix_nano: end,
                status_code: 0,
                attributes: Vec::new(),
            }],
        }],
        &mut value,
    );
    value
}

/// Batches that mix spans of many traces, spread over partitions regardless of trace id (an
/// exporter without `partition_traces_by_id`): with `repartition_by = "trace_id"` the engine
/// splits each batch by trace through the repartition topic, so every trace is still decided
/// once, on all its spans.
#[test]
fn mixed_batches_are_split_by_trace_id_through_the_repartition_topic() -> Result<()> {
    use breadcrumb_schemas::otlp::builder::{encode_request, ResourceSpans, Span};
    use breadcrumb_schemas::otlp::{parse_request, trace_id_hex, Batch};

    const MIXED_TRACES: u8 = 60;
    const SPANS_PER_TRACE: u8 = 4;
    let base_ns = 1_700_000_000_000u64 * 1_000_000;
    let span = |trace: u8, index: u8, end_ms: u64, error: bool| Span {
        trace_id: [trace + 1; 16],
        span_id: [trace + 1, index + 1, 0, 0, 0, 0, 0, 1],
        parent_span_id: (index > 0).then_some([trace + 1, 1, 0, 0, 0, 0, 0, 1]),
        name: format!("op-{index}"),
        start_time_unix_nano: base_ns + end_ms * 1_000_000 - 1_000_000,
        end_time_unix_nano: base_ns + end_ms * 1_000_000,
        status_code: if error { 2 } else { 0 },
        attributes: Vec::new(),
    };
    // Span i of every trace goes into batch i: each batch holds one span of every trace.
    let mut batches = Vec::new();
    for index in 0..SPANS_PER_TRACE {
        let spans = (0..MIXED_TRACES)
            .map(|trace| {
                span(
                    trace,
                    index,
                    u64::from(trace) * 10 + u64::from(index),
                    trace % 3 == 0 && index == SPANS_PER_TRACE - 1,
                )
            })
            .collect();
        let mut value = Vec::new();
        encode_request(
            &[ResourceSpans {
                resource: Vec::new(),
                scope_name: "mixed".into(),
                spans,
            }],
            &mut value,
        );
        batches.push(TestRecord::value_only(value).partition(i32::from(index) % PARTITIONS));
    }
    // Clock traces an hour later: enough distinct trace ids to reach every partition.
    let clock_end_ms = 3_600_000;
    let clock_spans = (200..=255u8)
        .map(|trace| Span {
            trace_id: [trace; 16],
            ..span(0, 0, clock_end_ms, false)
        })
        .collect();
    let mut clock = Vec::new();
    encode_request(
        &[ResourceSpans {
            resource: Vec::new(),
            scope_name: "clock".into(),
            spans: clock_spans,
        }],
        &mut clock,
    );

    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "sampling-split");
    scenario.output_topic = format!("{}-sampled", scenario.application_id);
    create_topics(
        &scenario.bootstrap,
        &[(&scenario.input_topic, PARTITIONS)],
        false,
    )?;
    let config = dir.path().join("breadcrumb.toml");
    let text = config_text(&scenario, dir.path()).replace(
        "[pipelines.traces.decoder]",
        "repartition_by = \"trace_id\"\n\n[pipelines.traces.decoder]",
    );
    std::fs::write(&config, text)?;
    produce(&scenario.bootstrap, &scenario.input_topic, &batches)?;
    produce(
        &scenario.bootstrap,
        &scenario.input_topic,
        &[TestRecord::value_only(clock).partition(0)],
    )?;

    let log = dir.path().join("engine.log");
    let engine = EngineProcess::start(&config, &log)?;
    let decisions_topic = format!("{}-decisions", scenario.output_topic);
    let deadline = std::time::Instant::now() + CONSUME_TIMEOUT;
    let committed = loop {
        let committed = committed_transactions(&[scenario.journal(dir.path(), "a")])?;
        // The engine creates the decisions topic when it starts.
        let decided = consume_all(
            &scenario.bootstrap,
            &decisions_topic,
            0,
            Duration::from_secs(2),
        )
        .unwrap_or_default()
        .into_iter()
        .filter(|record| {
            record
                .header("breadcrumb-txn")
                .is_some_and(|txn| committed.contains(&txn))
        })
        .count();
        if decided >= usize::from(MIXED_TRACES) {
            break committed;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{decided} decisions so far:\n{}",
            engine.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    engine.stop()?;
    let is_committed = |record: &ConsumedRecord| {
        record
            .header("breadcrumb-txn")
            .is_some_and(|txn| committed.contains(&txn))
    };

    let mut decided: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for record in consume_all(
        &scenario.bootstrap,
        &decisions_topic,
        0,
        Duration::from_secs(5),
    )?
    .iter()
    .filter(|record| is_committed(record))
    {
        let decision: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        decided
            .entry(
                decision["trace_id"]
                    .as_str()
                    .context("trace_id")?
                    .to_owned(),
            )
            .or_default()
            .push(decision);
    }
    let mut spans_out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut batch = Batch::default();
    for record in consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        0,
        Duration::from_secs(5),
    )?
    .iter()
    .filter(|record| is_committed(record))
    {
        let value = record.value.as_deref().unwrap_or_default();
        parse_request(value, &mut batch).map_err(|error| anyhow::anyhow!(error.message()))?;
        for span in &batch.spans {
            let trace = String::from_utf8(trace_id_hex(&span.trace_id).to_vec())?;
            spans_out
                .entry(trace)
                .or_default()
                .push(value[span.content.clone()].to_vec());
        }
    }
    for trace in 0..MIXED_TRACES {
        let trace_id = String::from_utf8(trace_id_hex(&[trace + 1; 16]).to_vec())?;
        let decisions = decided.get(&trace_id).cloned().unwrap_or_default();
        ensure!(decisions.len() == 1, "trace {trace}: {decisions:?}");
        let error = trace % 3 == 0;
        ensure!(
            decisions[0]["decision"] == if error { "keep" } else { "drop" }
                && decisions[0]["span_count"] == SPANS_PER_TRACE,
            "trace {trace} (error {error}): all its spans met on one partition: {}",
            decisions[0]
        );
        let out = spans_out.remove(&trace_id).unwrap_or_default();
        let distinct: BTreeSet<&Vec<u8>> = out.iter().collect();
        ensure!(
            out.len()
                == if error {
                    usize::from(SPANS_PER_TRACE)
                } else {
                    0
                }
                && distinct.len() == out.len(),
            "trace {trace}: {} spans out",
            out.len()
        );
    }
    ensure!(
        spans_out.is_empty(),
        "spans of other traces: {:?}",
        spans_out.keys()
    );
    Ok(())
}
