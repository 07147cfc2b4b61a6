//! Lineage through a real broker: commerce events (order → payment → invoice) and the OTLP span
//! batches of their traces, re-keyed by trace id into one repartition topic, joined across
//! SIGKILLs taken while joins are pending. Every committed event gets exactly the edges the
//! workload's links call for, orphans exactly where it broke them, each edge naming the offset
//! of its event's enriched copy; every event is republished exactly once.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use breadcrumb_engine::demo_lineage::{check, CopyRecord};
use breadcrumb_engine::generate_commerce::{self, CommerceSpec};
use breadcrumb_integration_tests::{base_config, consume_all, create_topics, Broker, Storage};
use common::{
    assert_ledger_consistent, committed_transactions, is_committed, verify, EngineProcess, Scenario,
};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);
const PARTITIONS: i32 = 4;

#[test]
fn lineage_joins_events_to_spans_and_parents_exactly_across_kills() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "lineage");
    scenario.commit_interval_ms = 50;
    let spans_topic = format!("{}-spans", scenario.application_id);
    let lineage_topic = format!("{}-lineage", scenario.application_id);
    scenario.pipeline_keys = format!(
        "repartition_by = \"trace_id\"\nspan_topics = [\"{spans_topic}\"]\nlineage_topic = \"{lineage_topic}\"\n"
    );
    // A window longer than the workload's 200 s of event time: the engine reads the events
    // topic and each service's span partition at its own pace, and the window has to cover
    // that skew. Events whose spans or parent never come wait until the clock spans (10 minutes
    // later) close every window, so many joins are pending at every kill.
    scenario.extra_toml = "[pipelines.payments.lineage]\njoin_window_ms = 300000\n".to_owned();
    create_topics(
        &scenario.bootstrap,
        &[
            (&scenario.input_topic, PARTITIONS),
            (&spans_topic, PARTITIONS),
        ],
        false,
    )?;
    let spec = CommerceSpec {
        flows: 400,
        seed: 5,
        ..CommerceSpec::default()
    };
    let manifest = generate_commerce::produce(
        &base_config(&scenario.bootstrap),
        &scenario.input_topic,
        &spans_topic,
        &spec,
    )?;
    ensure!(
        manifest.flows.iter().any(|flow| !flow.spans_exported)
            && manifest.flows.iter().any(|flow| !flow.payment_produced),
        "the workload breaks some links"
    );

    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let log = dir.path().join("a.log");
    let repartition_topic = format!("{}-payments-repartition", scenario.application_id);
    for round in 0..2i64 {
        let mut engine = EngineProcess::start(&config, &log)?;
        let deadline = Instant::now() + CONSUME_TIMEOUT;
        let target = 150 * (round + 1);
        loop {
            let joined: i64 = breadcrumb_integration_tests::committed_offsets(
                &scenario.bootstrap,
                &scenario.application_id,
                &repartition_topic,
            )
            .unwrap_or_default()
            .values()
            .sum();
            if joined >= target || Instant::now() > deadline || !engine.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(engine.is_running(), "engine died:\n{}", engine.log_tail(60));
        engine.kill()?;
    }
    // The clock spans close every window once the rest was read (see `produce_clock`).
    let engine = EngineProcess::start(&config, &log)?;
    let flows_read = scenario
        .wait_until_topics_consumed(&[&scenario.input_topic, &spans_topic], CONSUME_TIMEOUT)
        .and_then(|()| scenario.wait_until_drained(&repartition_topic, CONSUME_TIMEOUT));
    flows_read.with_context(|| engine.log_tail(80))?;
    generate_commerce::produce_clock(&base_config(&scenario.bootstrap), &spans_topic, &spec)?;
    let consumed = scenario
        .wait_until_topics_consumed(&[&scenario.input_topic, &spans_topic], CONSUME_TIMEOUT)
        .and_then(|()| scenario.wait_until_drained(&repartition_topic, CONSUME_TIMEOUT));
    let tail = engine.log_tail(80);
    consumed.with_context(|| tail.clone())?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    let (exactly_once, report) = verify(&config, std::slice::from_ref(&journal))?;
    ensure!(exactly_once, "verify failed:\n{report}");
    assert_ledger_consistent(&config, std::slice::from_ref(&journal))?;

    // Nisshi shows aborted records to read_committed readers: keep committed transactions'.
    let committed = committed_transactions(&[journal])?;
    let mut enriched = consume_all(
        &scenario.bootstrap,
        &scenario.output_topic,
        1,
        Duration::from_secs(30),
    )?;
    enriched.retain(|record| is_committed(record, &committed));
    let mut edges = consume_all(
        &scenario.bootstrap,
        &lineage_topic,
        1,
        Duration::from_secs(30),
    )?;
    edges.retain(|record| is_committed(record, &committed));
    let copies: Vec<CopyRecord<'_>> = enriched
        .iter()
        .map(|record| CopyRecord {
            partition: record.partition,
            offset: record.offset,
            value: record.value.as_deref().unwrap_or_default(),
            has_trace_header: record.header("breadcrumb-lineage-trace-id").is_some(),
        })
        .collect();
    let edge_values: Vec<&[u8]> = edges
        .iter()
        .map(|record| record.value.as_deref().unwrap_or_default())
        .collect();
    let found = check(&manifest, &scenario.output_topic, &copies, &edge_values);
    ensure!(
        found.problems.is_empty(),
        "lineage check failed: {:?}\n{}",
        found.problems,
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(found.chain.len() == 3, "chain {:?}", found.chain);
    Ok(())
}
