//! The fault suites' side of the one verifier (`breadcrumb_integration_tests::invariants`): the
//! input they produce, the canaries they plant, the checks that read a broker or an engine's
//! files, and the table they print.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use breadcrumb_engine::config::EngineConfig;
use breadcrumb_engine::generate::{RecordKind, Workload, WorkloadSpec, CLOUDEVENTS_JSON};
use breadcrumb_engine::runtime::pipeline::declared_store_names;
pub use breadcrumb_integration_tests::invariants::*;
use breadcrumb_integration_tests::{
    consume_all, partition_count, produce, ConsumedRecord, TestRecord,
};
use breadcrumb_state::{StateBackend, StateOptions};

use super::{committed_transactions, verify, verify_ledger, Scenario};

/// Points `scenario` at the canaries: a PII rule tokenizing `data.email` (key file under `dir`)
/// and a secret in a redacted librdkafka key (`sasl.password` is read by librdkafka only when a
/// SASL mechanism is in use, so on a plaintext connection it is inert but still configured).
pub fn plant_canaries(scenario: &mut Scenario, dir: &Path) -> Result<()> {
    let key_file = dir.join("pii-key");
    std::fs::write(&key_file, format!("{PII_KEY_CANARY}\n"))?;
    scenario
        .kafka_toml
        .push_str(&format!("\n\"sasl.password\" = \"{SECRET_CANARY}\"\n"));
    scenario.extra_toml.push_str(&format!(
        r#"
[pipelines.payments.pii]
key_file = "{}"
fields = [{{ path = "/data/email", action = "tokenize" }}]
"#,
        key_file.display()
    ));
    Ok(())
}

/// The input: a deterministic payments workload with duplicates, conflicts and poison, handed
/// out in chunks as a scenario goes on. Every JSON event carries [`EMAIL_CANARY`] (per account,
/// so copies of an event stay byte-identical).
pub struct Input {
    workload: Workload,
    pub produced: u64,
    pub poison: u64,
}

impl Input {
    pub fn new(seed: u64, records: u64) -> Self {
        Self {
            workload: Workload::new(WorkloadSpec {
                records,
                duplicate_percent: 5.0,
                conflict_percent: 0.5,
                poison_percent: 0.5,
                accounts: 120,
                seed,
                ..WorkloadSpec::default()
            }),
            produced: 0,
            poison: 0,
        }
    }

    /// Like [`Input::new`] without duplicates or conflicts: every event id is new, so a short
    /// dedupe horizon (for expiry tombstones) never lets a copy through.
    pub fn without_copies(seed: u64, records: u64) -> Self {
        Self {
            workload: Workload::new(WorkloadSpec {
                records,
                duplicate_percent: 0.0,
                conflict_percent: 0.0,
                poison_percent: 0.5,
                accounts: 120,
                seed,
                ..WorkloadSpec::default()
            }),
            produced: 0,
            poison: 0,
        }
    }

    /// The next `count` records, with the canary planted.
    pub fn next_records(&mut self, count: usize) -> Vec<TestRecord> {
        let mut records = Vec::with_capacity(count);
        for record in self.workload.by_ref().take(count) {
            let mut value = record.value;
            if record.kind == RecordKind::Poison {
                self.poison += 1;
            } else if let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(&value) {
                let account = event["data"]["account"]
                    .as_str()
                    .unwrap_or("none")
                    .to_owned();
                if let Some(data) = event["data"].as_object_mut() {
                    data.insert(
                        "email".to_owned(),
                        format!("{account}.{EMAIL_CANARY}").into(),
                    );
                    value = event.to_string().into_bytes();
                }
            }
            records
                .push(TestRecord::new(record.key, value).header("content-type", CLOUDEVENTS_JSON));
        }
        self.produced += records.len() as u64;
        records
    }

    pub fn produce(&mut self, scenario: &Scenario, count: usize) -> Result<()> {
        let records = self.next_records(count);
        produce(&scenario.bootstrap, &scenario.input_topic, &records)?;
        Ok(())
    }
}

/// Compares every store of the (stopped) instance whose state lives in `state_dir` with the
/// state rebuilt from its changelog: the committed transactions' records (by the journals),
/// applied in offset order, the last write per key winning and tombstones deleting. Only
/// `partitions` (those the instance owned last) are compared; `None`: all of them.
pub fn check_state(
    found: &mut Invariants,
    config_path: &Path,
    state_dir: &Path,
    journals: &[PathBuf],
    partitions: Option<&[i32]>,
) -> Result<()> {
    let config = EngineConfig::load(config_path)?;
    let bootstrap = config
        .kafka
        .get("bootstrap.servers")
        .context("no bootstrap.servers")?
        .clone();
    let stores = declared_store_names(&config);
    ensure!(!stores.is_empty(), "the pipeline declares no store");
    let committed = committed_transactions(journals)?;
    let backend = StateBackend::open(state_dir, &stores, &StateOptions::default())?;
    for store in &stores {
        let topic = config.changelog_topic(store);
        let count = partition_count(&bootstrap, &topic)? as i32;
        let records = consume_all(&bootstrap, &topic, 0, Duration::from_secs(60))?;
        let rebuilt = rebuild_from_changelog(store, &records, &committed)?;
        let local = local_state(&backend, store, count, partitions)?;
        let rebuilt: BTreeMap<_, _> = rebuilt
            .into_iter()
            .filter(|((partition, _), _)| partitions.is_none_or(|owned| owned.contains(partition)))
            .collect();
        found.check_store(store, &local, &rebuilt);
    }
    Ok(())
}

/// The committed records of `topic`, by the journals.
pub fn committed(
    scenario: &Scenario,
    topic: &str,
    journals: &[PathBuf],
    min: usize,
) -> Result<Vec<ConsumedRecord>> {
    let committed = committed_transactions(journals)?;
    Ok(only_committed(
        consume_all(&scenario.bootstrap, topic, min, Duration::from_secs(30))?,
        &committed,
    ))
}

/// The records of `records` whose transaction (`breadcrumb-txn`) is in `committed`.
pub fn only_committed(
    records: Vec<ConsumedRecord>,
    committed: &BTreeSet<String>,
) -> Vec<ConsumedRecord> {
    records
        .into_iter()
        .filter(|record| super::is_committed(record, committed))
        .collect()
}

/// The topic-level invariants every scenario ends with: exactly once (`breadcrumb verify`),
/// per-key order, dead letters exactly once, the ledger (`breadcrumb verify --ledger`).
pub fn check_invariants(
    scenario: &Scenario,
    config: &Path,
    journals: &[PathBuf],
    input: &Input,
) -> Result<Invariants> {
    let mut found = Invariants::default();
    let (success, report) = verify(config, journals)?;
    found.check_exactly_once_report(success, &report)?;

    // Per-key order: in each output partition, every account's sequences strictly increase.
    let output = committed(scenario, &scenario.output_topic, journals, 1)?;
    found.check_order(&output)?;

    // Dead letters exactly once: one per poison record, naming it by its source offset.
    let dead_letters = committed(
        scenario,
        &scenario.dead_letter_topic,
        journals,
        input.poison as usize,
    )?;
    let produced = consume_all(
        &scenario.bootstrap,
        &scenario.input_topic,
        input.produced as usize,
        Duration::from_secs(60),
    )?;
    found.check_dead_letters(&dead_letters, &poison_coordinates(&produced), input.poison);

    let (success, ledger) = verify_ledger(config, journals)?;
    found.check_ledger_report(success, &ledger)?;
    Ok(found)
}

/// One row of the faults × invariants table.
pub struct Row {
    pub fault: &'static str,
    pub runs: u64,
    pub injected: u64,
}

pub fn print_table(title: &str, rows: &[Row], events: u64, found: &Invariants) {
    println!(
        "\n{title}: {events} input events, {} committed output events; state: {} keys compared; canaries: {} bytes of logs and metrics searched",
        found.output_events, found.state_keys_compared, found.canary_bytes_searched
    );
    println!(
        "| fault | runs | injected | lost | duplicated | out of order | dead letters wrong | ledger violations | state ≠ changelog | canaries leaked |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.fault,
            row.runs,
            row.injected,
            found.lost,
            found.duplicated,
            found.out_of_order,
            found.dead_letters_wrong,
            found.ledger_violations,
            found.state_mismatches,
            found.canaries_leaked
        );
    }
    println!("(invariants are checked once over the whole scenario, so each row shows its totals)");
}
