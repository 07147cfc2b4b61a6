//! `repartition_by`: copies of one event that arrive under different Kafka keys (and so on
//! different input partitions) meet again on one partition of the internal repartition topic,
//! still exactly-once, on a real broker.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use breadcrumb_engine::generate::{RecordKind, Workload, WorkloadSpec, CLOUDEVENTS_JSON};
use breadcrumb_integration_tests::{create_topics, produce, Broker, Storage, TestRecord};
use common::{assert_ledger_consistent, verify, EngineProcess, Scenario};

const CONSUME_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn repartition_by_event_id_dedupes_copies_that_arrive_under_other_keys() -> Result<()> {
    let dir = tempfile::TempDir::new()?;
    let broker = Broker::start(Storage::Sqlite(dir.path().join("nisshi").join("broker.db")))?;
    let mut scenario = Scenario::new(&broker.bootstrap(), "repartition");
    scenario.repartition_by = Some("event_id");
    create_topics(&scenario.bootstrap, &[(&scenario.input_topic, 4)], false)?;

    // Producer retries that went out under another key (a proxy re-keyed them): without the
    // repartition topic, a copy on another partition would meet another partition's state.
    let spec = WorkloadSpec {
        records: 6_000,
        duplicate_percent: 15.0,
        conflict_percent: 0.0,
        poison_percent: 1.0,
        accounts: 100,
        seed: 11,
        ..WorkloadSpec::default()
    };
    let mut records = Vec::new();
    let mut kinds = Vec::new();
    for (index, record) in Workload::new(spec).enumerate() {
        let key = if record.kind == RecordKind::Duplicate {
            format!("rekeyed-{index}").into_bytes()
        } else {
            record.key.clone()
        };
        kinds.push((record.kind, record.id.clone()));
        records.push(TestRecord::new(key, record.value).header("content-type", CLOUDEVENTS_JSON));
    }
    let placed = produce(&scenario.bootstrap, &scenario.input_topic, &records)?;
    let mut first_partition: HashMap<&str, i32> = HashMap::new();
    let mut copies_elsewhere = 0;
    for ((kind, id), (partition, _)) in kinds.iter().zip(&placed) {
        match kind {
            RecordKind::New => {
                first_partition.insert(id, *partition);
            }
            RecordKind::Duplicate if first_partition.get(id.as_str()) != Some(partition) => {
                copies_elsewhere += 1;
            }
            _ => {}
        }
    }
    ensure!(
        copies_elsewhere > 300,
        "the workload must put copies on other partitions than their first copy ({copies_elsewhere})"
    );

    let config = scenario.write_config(dir.path(), "a")?;
    let journal = scenario.journal(dir.path(), "a");
    let engine = EngineProcess::start(&config, &dir.path().join("a.log"))?;
    scenario.wait_until_consumed(CONSUME_TIMEOUT)?;
    let repartition_topic = format!("{}-payments-repartition", scenario.application_id);
    let drained = scenario.wait_until_drained(&repartition_topic, CONSUME_TIMEOUT);
    let tail = engine.log_tail(60);
    drained.map_err(|error| error.context(tail.clone()))?;
    let status = engine.stop()?;
    ensure!(status.success(), "engine exited with {status}:\n{tail}");

    let (exactly_once, report) = verify(&config, std::slice::from_ref(&journal))?;
    ensure!(exactly_once, "verify failed:\n{report}");
    assert_ledger_consistent(&config, std::slice::from_ref(&journal))?;
    ensure!(report.contains("exactly once: yes"), "{report}");
    Ok(())
}
