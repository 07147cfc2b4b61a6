//! The one verifier of the fault suites and the model tier: what each invariant's check is,
//! over plain data (records, reports, state), so the broker suites (`tests/faults.rs`,
//! `tests/mock_faults.rs`) and the deterministic model (`model/`) count violations the same way.
//!
//! Invariants: no loss, no duplicates (from `breadcrumb verify`'s report), per-key order, dead
//! letters exactly once, the reconciliation ledger (from `breadcrumb verify --ledger`'s report),
//! local RocksDB state equal to the state rebuilt from the changelogs' committed records, and no
//! planted canary (personal data, a secret, the PII key) in the engine's logs or `/metrics`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{ensure, Context, Result};
use breadcrumb_state::{StateBackend, StoredValue};

use crate::ConsumedRecord;

/// A store's contents: (partition, key) → (expire_at_ms, payload).
pub type StoreContents = BTreeMap<(i32, Vec<u8>), (i64, Vec<u8>)>;

/// Personal data planted in every event (`data.email`), tokenized by the scenario's PII rule.
pub const EMAIL_CANARY: &str = "canary.payer.5d1a@example.org";
/// A secret in a redacted `[kafka]` key.
pub const SECRET_CANARY: &str = "canary-secret-77f3e0";
/// The PII rule's HMAC key (it must not leak either).
pub const PII_KEY_CANARY: &str = "canary-pii-key-0b9c4a8e";

/// What the fault scenarios plant, for [`Invariants::check_canaries`].
pub const CANARIES: [&str; 3] = [EMAIL_CANARY, SECRET_CANARY, PII_KEY_CANARY];

/// What [`Invariants::check_canaries`] searches for: each canary, the e-mail address by its
/// local part (so a logged address with its `@` escaped, `%40` or `\u0040`, is found too).
const CANARY_NEEDLES: [&str; 3] = ["canary.payer.5d1a", SECRET_CANARY, PII_KEY_CANARY];

/// Violations found per invariant.
#[derive(Debug, Default, Clone)]
pub struct Invariants {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub dead_letters_wrong: u64,
    pub ledger_violations: u64,
    /// Keys whose local RocksDB value differs from the committed changelog (missing, extra or
    /// different), over every store and partition.
    pub state_mismatches: u64,
    /// Keys compared by the state check (so a check over nothing is visible).
    pub state_keys_compared: u64,
    /// Canary occurrences in logs and metrics.
    pub canaries_leaked: u64,
    /// Bytes of logs and metrics searched for canaries.
    pub canary_bytes_searched: u64,
    pub output_events: u64,
    pub details: Vec<String>,
}

impl Invariants {
    pub fn total(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.out_of_order
            + self.dead_letters_wrong
            + self.ledger_violations
            + self.state_mismatches
            + self.canaries_leaked
    }

    /// Fails with every violation found.
    pub fn ensure_none(&self) -> Result<()> {
        ensure!(
            self.total() == 0,
            "invariants violated: {self:?}\n{}",
            self.details.join("\n")
        );
        ensure!(self.output_events > 0, "no output at all");
        Ok(())
    }

    /// Counts canaries in `texts` (name, text): logs, a `/metrics` scrape.
    pub fn check_canaries(&mut self, texts: &[(&str, &str)]) {
        for (name, text) in texts {
            self.canary_bytes_searched += text.len() as u64;
            for canary in CANARY_NEEDLES {
                let found = text.matches(canary).count() as u64;
                if found > 0 {
                    self.canaries_leaked += found;
                    self.details
                        .push(format!("`{canary}` appears {found} time(s) in {name}"));
                }
            }
        }
    }

    /// Compares one store's local state with the state rebuilt from its changelog.
    pub fn check_store(&mut self, store: &str, local: &StoreContents, rebuilt: &StoreContents) {
        let (mismatches, examples) = compare_states(local, rebuilt);
        self.state_keys_compared += local.len().max(rebuilt.len()) as u64;
        self.state_mismatches += mismatches;
        self.details.extend(
            examples
                .into_iter()
                .map(|example| format!("store {store}: {example}")),
        );
    }

    /// `breadcrumb verify`'s exit status and report: lost (and unexpected) ids, duplicated
    /// ids. A failed verdict whose counts read as zero counts as one loss (the report format
    /// changed under the parser, or verify failed in a way it does not count).
    pub fn check_exactly_once_report(&mut self, success: bool, report: &str) -> Result<()> {
        ensure!(
            report.contains("exactly once:"),
            "verify did not run:\n{report}"
        );
        let summary = report
            .lines()
            .find(|line| line.starts_with("lost "))
            .with_context(|| format!("no `lost N, duplicated N, unexpected N` line:\n{report}"))?;
        let lost = number_after(summary, "lost ") + number_after(summary, "unexpected ");
        let duplicated = number_after(summary, "duplicated ");
        self.lost += lost;
        self.duplicated += duplicated;
        let failed = !success || !report.contains("exactly once: yes");
        if failed && lost + duplicated == 0 {
            self.lost += 1;
            self.details
                .push("verify failed, but its report counts nothing lost or duplicated".into());
        }
        if failed || lost + duplicated > 0 {
            self.details.push(report.to_owned());
        }
        Ok(())
    }

    /// Per-key order: over the committed output (by partition and offset), every account's
    /// sequences strictly increase (a repeated sequence is out of order too).
    pub fn check_order(&mut self, output: &[ConsumedRecord]) -> Result<()> {
        self.output_events += output.len() as u64;
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for record in output {
            let event: serde_json::Value =
                serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
            let subject = event["subject"].as_str().unwrap_or_default().to_owned();
            let sequence: u64 = event["sequence"].as_str().unwrap_or("0").parse()?;
            if let Some(previous) = last.insert(subject.clone(), sequence) {
                if sequence <= previous {
                    self.out_of_order += 1;
                    self.details
                        .push(format!("{subject}: {sequence} after {previous}"));
                }
            }
        }
        Ok(())
    }

    /// Dead letters exactly once: the committed dead letters name, by their source coordinates,
    /// each poison record of the input (`poison`: their (partition, offset)) once, and nothing
    /// else. `produced`: poison records the input generated (the input topic must hold them).
    pub fn check_dead_letters(
        &mut self,
        dead_letters: &[ConsumedRecord],
        poison: &BTreeSet<(i32, i64)>,
        produced: u64,
    ) {
        let coordinates: BTreeSet<(i32, i64)> = dead_letters
            .iter()
            .map(|record| {
                let number = |name: &str| record.header(name).and_then(|text| text.parse().ok());
                (
                    number("breadcrumb-source-partition").unwrap_or(-1) as i32,
                    number("breadcrumb-source-offset").unwrap_or(-1),
                )
            })
            .collect();
        let repeated = dead_letters.len() as u64 - coordinates.len() as u64;
        let missing = poison.difference(&coordinates).count() as u64;
        let extra = coordinates.difference(poison).count() as u64;
        let unseen = produced.abs_diff(poison.len() as u64);
        let wrong = repeated + missing + extra + unseen;
        self.dead_letters_wrong += wrong;
        if wrong > 0 {
            self.details.push(format!(
                "dead letters: {} records, {} distinct, {repeated} repeated, {missing} poison \
                 records without one, {extra} for records not poison; {} poison produced, {} in \
                 the input topic; first missing {:?}, first extra {:?}",
                dead_letters.len(),
                coordinates.len(),
                produced,
                poison.len(),
                poison.difference(&coordinates).next(),
                coordinates.difference(poison).next(),
            ));
        }
    }

    /// `breadcrumb verify --ledger`'s exit status and report: one violation per `violation`
    /// line; a failed verdict without one counts as one.
    pub fn check_ledger_report(&mut self, success: bool, report: &str) -> Result<()> {
        ensure!(
            report.contains("ledger:"),
            "ledger check did not run:\n{report}"
        );
        let violations: Vec<&str> = report
            .lines()
            .filter(|line| line.starts_with("violation"))
            .collect();
        self.ledger_violations += violations.len() as u64;
        self.details
            .extend(violations.iter().take(20).map(|line| (*line).to_owned()));
        let failed = !success || !report.contains("ledger consistent: yes");
        if failed && violations.is_empty() {
            self.ledger_violations += 1;
            self.details.push(format!(
                "the ledger check failed without a violation line:\n{report}"
            ));
        }
        Ok(())
    }
}

/// The committed contents of `store` in `backend`, over partitions `0..count` (only
/// `partitions` of them, if given).
pub fn local_state(
    backend: &StateBackend,
    store: &str,
    count: i32,
    partitions: Option<&[i32]>,
) -> Result<StoreContents> {
    let id = backend.store_id(store)?;
    let mut local: StoreContents = BTreeMap::new();
    for partition in 0..count {
        if partitions.is_some_and(|owned| !owned.contains(&partition)) {
            continue;
        }
        backend
            .partition_store(id, partition)
            .for_each_committed(|key, value| {
                local.insert(
                    (partition, key.to_vec()),
                    (value.expire_at_ms, value.payload.to_vec()),
                );
                Ok(())
            })?;
    }
    Ok(local)
}

/// The (partition, offset) of the poison records in `input` (the workload keys them `poison`).
pub fn poison_coordinates(input: &[ConsumedRecord]) -> BTreeSet<(i32, i64)> {
    input
        .iter()
        .filter(|record| record.key.as_deref() == Some(b"poison".as_slice()))
        .map(|record| (record.partition, record.offset))
        .collect()
}

/// State rebuilt from a changelog's records (sorted by partition and offset): committed
/// transactions only, last write per key wins, a tombstone deletes. Values decoded from the
/// stored format: (expire_at_ms, payload).
pub fn rebuild_from_changelog(
    store: &str,
    records: &[ConsumedRecord],
    committed: &BTreeSet<String>,
) -> Result<StoreContents> {
    let mut state = BTreeMap::new();
    for record in records {
        let in_committed = record
            .header(breadcrumb_engine::headers::TRANSACTION)
            .is_some_and(|txn| committed.contains(&txn));
        if !in_committed {
            continue;
        }
        let key = (record.partition, record.key.clone().unwrap_or_default());
        match &record.value {
            Some(bytes) => {
                let value = StoredValue::decode(bytes, store)?;
                state.insert(key, (value.expire_at_ms, value.payload.to_vec()));
            }
            None => {
                state.remove(&key);
            }
        }
    }
    Ok(state)
}

/// Keys on which two states differ, and up to five described.
pub fn compare_states(left: &StoreContents, right: &StoreContents) -> (u64, Vec<String>) {
    let mut mismatches = 0;
    let mut examples = Vec::new();
    let keys: BTreeSet<&(i32, Vec<u8>)> = left.keys().chain(right.keys()).collect();
    for key in keys {
        let (a, b) = (left.get(key), right.get(key));
        if a != b {
            mismatches += 1;
            if examples.len() < 5 {
                let describe = |value: Option<&(i64, Vec<u8>)>| match value {
                    None => "absent".to_owned(),
                    Some((expire, payload)) => {
                        format!("expires {expire}, {} payload bytes", payload.len())
                    }
                };
                examples.push(format!(
                    "partition {} key {}: local {}, changelog {}",
                    key.0,
                    String::from_utf8_lossy(&key.1),
                    describe(a),
                    describe(b)
                ));
            }
        }
    }
    (mismatches, examples)
}

fn number_after(report: &str, label: &str) -> u64 {
    report
        .split(label)
        .nth(1)
        .and_then(|rest| {
            rest.trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}
