//! The transaction journal: one line when a transaction is about to commit, one when it did.
//!
//! On a broker that hides aborted records from `read_committed` readers, output tagged with its
//! transaction id needs no journal. Some Kafka-protocol brokers used in testing do show aborted
//! records; the journal lets a checker keep only the output of committed transactions.
//!
//! ```text
//! begin <txn-id>
//! pending <txn-id> <topic>:<partition>=<next-offset>,...
//! committed <txn-id>
//! aborted <txn-id>
//! ```
//! A `begin` or `pending` line without an outcome is the transaction that was open when the
//! process died; on restart [`resolve_pending`] decides it from the group's committed offsets (a
//! transaction that never reached `pending` never asked to commit: it aborted).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::error::Result;

/// Appends transaction outcomes to a file.
pub struct Journal {
    file: File,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file })
    }

    /// Records that `txn` has begun. Not synced: it only has to survive the process, and the
    /// `pending` line that precedes any commit is.
    pub fn begin(&mut self, txn: &str) -> Result<()> {
        writeln!(self.file, "begin {txn}")?;
        Ok(())
    }

    /// Records that `txn` is about to commit with these input offsets.
    pub fn pending(&mut self, txn: &str, offsets: &[(String, i32, i64)]) -> Result<()> {
        let offsets: Vec<String> = offsets
            .iter()
            .map(|(topic, partition, offset)| format!("{topic}:{partition}={offset}"))
            .collect();
        writeln!(self.file, "pending {txn} {}", offsets.join(","))?;
        self.file.sync_data()?;
        Ok(())
    }

    /// Records the outcome of `txn`.
    pub fn outcome(&mut self, txn: &str, committed: bool) -> Result<()> {
        let word = if committed { "committed" } else { "aborted" };
        writeln!(self.file, "{word} {txn}")?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// A transaction left pending by a process that died, with the offsets it would have committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTransaction {
    pub txn: String,
    pub offsets: Vec<(String, i32, i64)>,
}

/// Reads a journal: transaction outcomes, and the pending transactions without one.
pub fn read(path: &Path) -> Result<(BTreeMap<String, bool>, Vec<PendingTransaction>)> {
    let mut outcomes = BTreeMap::new();
    let mut pending: Vec<PendingTransaction> = Vec::new();
    if !path.exists() {
        return Ok((outcomes, pending));
    }
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("begin"), Some(txn)) => {
                pending.push(PendingTransaction {
                    txn: txn.to_owned(),
                    offsets: Vec::new(),
                });
            }
            (Some("pending"), Some(txn)) => {
                pending.retain(|entry| entry.txn != txn);
                let offsets = words
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|entry| {
                        let (topic_partition, offset) = entry.split_once('=')?;
                        let (topic, partition) = topic_partition.rsplit_once(':')?;
                        Some((
                            topic.to_owned(),
                            partition.parse().ok()?,
                            offset.parse().ok()?,
                        ))
                    })
                    .collect();
                pending.push(PendingTransaction {
                    txn: txn.to_owned(),
                    offsets,
                });
            }
            (Some("committed"), Some(txn)) => {
                outcomes.insert(txn.to_owned(), true);
            }
            (Some("aborted"), Some(txn)) => {
                outcomes.insert(txn.to_owned(), false);
            }
            _ => {}
        }
    }
    pending.retain(|entry| !outcomes.contains_key(&entry.txn));
    Ok((outcomes, pending))
}

/// Decides a pending transaction: it committed exactly when the group's committed offsets equal
/// the offsets it carried (call after `init_transactions`, which completes or aborts it, and
/// before this instance processes anything).
pub fn resolve_pending(
    pending: &PendingTransaction,
    committed: &BTreeMap<(String, i32), i64>,
) -> bool {
    !pending.offsets.is_empty()
        && pending.offsets.iter().all(|(topic, partition, offset)| {
            committed.get(&(topic.clone(), *partition)) == Some(offset)
        })
}

/// The default journal path inside a state directory.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("transactions.journal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_resolves_pending_by_offsets() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("j");
        let mut journal = Journal::open(&path).unwrap();
        journal.begin("t-1").unwrap();
        journal
            .pending("t-1", &[("in".into(), 0, 10), ("in".into(), 1, 5)])
            .unwrap();
        journal.outcome("t-1", true).unwrap();
        journal.pending("t-2", &[("in".into(), 0, 20)]).unwrap();
        journal.outcome("t-2", false).unwrap();
        journal.pending("t-3", &[("in".into(), 0, 30)]).unwrap();
        journal.begin("t-4").unwrap();
        drop(journal);

        let (outcomes, pending) = read(&path).unwrap();
        assert_eq!(outcomes.get("t-1"), Some(&true));
        assert_eq!(outcomes.get("t-2"), Some(&false));
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].txn, "t-3");
        assert_eq!(pending[1].txn, "t-4");
        assert!(pending[1].offsets.is_empty(), "never asked to commit");
        assert_eq!(pending[0].offsets, vec![("in".to_owned(), 0, 30)]);

        let mut committed = BTreeMap::new();
        committed.insert(("in".to_owned(), 0), 20);
        assert!(!resolve_pending(&pending[0], &committed));
        committed.insert(("in".to_owned(), 0), 30);
        assert!(resolve_pending(&pending[0], &committed));
        assert!(!resolve_pending(&pending[1], &committed));
    }
}
