//! Crash quarantine: a record that keeps crashing the engine is dead-lettered (reason
//! `quarantined`) instead of crash-looping the partition forever.
//!
//! A crash leaves no chance to write anything, so the record in flight is written down before
//! it is processed and cleared after (so a crash caused by another partition's record, or
//! outside record processing, counts against no record), but only while that is cheap and
//! useful: for the first `max_records_per_transaction` records after a partition is assigned. A crash can only be
//! caused by a record of the open (uncommitted) transaction, and a restarted engine resumes at
//! the last commit, so the record that crashed the previous run is always among those first
//! records of the next. Each write is one `pwrite` of 8 bytes into the page cache (no fsync: a
//! process crash does not lose it); two per record.
//!
//! On assignment the in-flight marker of the previous run is read and cleared. An offset at or
//! past the committed one was in flight when that run died: its crash count goes up (kept in a
//! second small file, synced). A run killed before it processed anything leaves a cleared
//! marker and counts nothing, so kills during restore never add up. A record whose count
//! reaches `quarantine_after_crashes` is not processed again.
//!
//! Files, per consumed partition, under `<state dir>/quarantine/`: `<topic>-<partition>.inflight`
//! (i64 little endian, -1 when cleared) and `<topic>-<partition>.crashes` (`v1 <offset>
//! <count>`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::Result;

const CLEARED: i64 = -1;

/// What to do with the next record of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Process,
    /// It crashed the engine this many times: dead-letter it unprocessed.
    Quarantine {
        crashes: u32,
    },
}

struct Guarded {
    inflight: File,
    /// Records still to mark before the partition is out of reach of an earlier crash.
    marks_left: usize,
    /// The offset that crashed earlier runs, and how often.
    crashed: Option<(i64, u32)>,
    /// A record's offset is written down and not yet cleared.
    marked: bool,
}

/// Crash bookkeeping of every assigned partition.
pub struct CrashGuard {
    dir: PathBuf,
    threshold: u32,
    marks_after_assign: usize,
    partitions: HashMap<(usize, i32), Guarded>,
}

impl CrashGuard {
    pub fn new(state_dir: &Path, threshold: u32, marks_after_assign: usize) -> Self {
        Self {
            dir: state_dir.join("quarantine"),
            threshold,
            marks_after_assign,
            partitions: HashMap::new(),
        }
    }

    fn path(&self, topic: &str, partition: i32, extension: &str) -> PathBuf {
        self.dir.join(format!("{topic}-{partition}.{extension}"))
    }

    /// A partition was assigned with `committed` as the group's next offset: counts the crash of
    /// the previous run, if one was in flight, and clears the marker.
    pub fn assign(
        &mut self,
        route: usize,
        topic: &str,
        partition: i32,
        committed: Option<i64>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let crashes_path = self.path(topic, partition, "crashes");
        let mut crashed = read_crashes(&crashes_path);
        let inflight = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.path(topic, partition, "inflight"))?;
        let mut buffer = [0u8; 8];
        let previous = match inflight.read_at(&mut buffer, 0) {
            Ok(8) => i64::from_le_bytes(buffer),
            _ => CLEARED,
        };
        if previous != CLEARED && previous >= committed.unwrap_or(0) {
            let count = match crashed {
                Some((offset, count)) if offset == previous => count + 1,
                _ => 1,
            };
            crashed = Some((previous, count));
            write_crashes(&crashes_path, previous, count)?;
            tracing::warn!(
                topic,
                partition,
                offset = previous,
                crashes = count,
                "The previous run died while processing this record."
            );
        }
        inflight.write_all_at(&CLEARED.to_le_bytes(), 0)?;
        self.partitions.insert(
            (route, partition),
            Guarded {
                inflight,
                marks_left: self.marks_after_assign,
                crashed,
                marked: false,
            },
        );
        Ok(())
    }

    /// Called before a record is processed.
    pub fn before(&mut self, route: usize, partition: i32, offset: i64) -> Result<Verdict> {
        let Some(guarded) = self.partitions.get_mut(&(route, partition)) else {
            return Ok(Verdict::Process);
        };
        if guarded.marks_left == 0 {
            return Ok(Verdict::Process);
        }
        guarded.marks_left -= 1;
        if let Some((crashed_offset, crashes)) = guarded.crashed {
            if crashed_offset == offset && crashes >= self.threshold {
                return Ok(Verdict::Quarantine { crashes });
            }
        }
        guarded.inflight.write_all_at(&offset.to_le_bytes(), 0)?;
        guarded.marked = true;
        Ok(Verdict::Process)
    }

    /// Called once the record is processed (whatever the outcome): it is no longer in flight.
    pub fn after(&mut self, route: usize, partition: i32) -> Result<()> {
        if let Some(guarded) = self.partitions.get_mut(&(route, partition)) {
            if guarded.marked {
                guarded.inflight.write_all_at(&CLEARED.to_le_bytes(), 0)?;
                guarded.marked = false;
            }
        }
        Ok(())
    }

    /// The open transaction aborted and the partition rewinds: its records are marked again.
    pub fn rewound(&mut self, route: usize, partition: i32) {
        if let Some(guarded) = self.partitions.get_mut(&(route, partition)) {
            guarded.marks_left = guarded.marks_left.max(self.marks_after_assign);
        }
    }

    /// The partition left cleanly: nothing of it is in flight.
    pub fn revoke(&mut self, route: usize, partition: i32) {
        if let Some(guarded) = self.partitions.remove(&(route, partition)) {
            let _ = guarded.inflight.write_all_at(&CLEARED.to_le_bytes(), 0);
        }
    }

    /// Clean shutdown: nothing is in flight.
    pub fn close(&mut self) {
        for (_, guarded) in self.partitions.drain() {
            let _ = guarded.inflight.write_all_at(&CLEARED.to_le_bytes(), 0);
        }
    }
}

fn read_crashes(path: &Path) -> Option<(i64, u32)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    if words.next()? != "v1" {
        return None;
    }
    Some((words.next()?.parse().ok()?, words.next()?.parse().ok()?))
}

fn write_crashes(path: &Path, offset: i64, count: u32) -> Result<()> {
    let temporary = path.with_extension("crashes.tmp");
    let mut file = File::create(&temporary)?;
    writeln!(file, "v1 {offset} {count}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that dies while processing `offset` (the guard is dropped without `close`).
    fn crash_at(dir: &Path, committed: i64, offset: i64) -> Verdict {
        let mut guard = CrashGuard::new(dir, 3, 100);
        guard.assign(0, "in", 0, Some(committed)).unwrap();
        let mut verdict = Verdict::Process;
        for next in committed..=offset {
            verdict = guard.before(0, 0, next).unwrap();
            if verdict != Verdict::Process {
                break;
            }
            if next < offset {
                guard.after(0, 0).unwrap();
            }
        }
        verdict
    }

    #[test]
    fn quarantine_after_three_crashes_at_one_offset() {
        let dir = tempfile::TempDir::new().unwrap();
        assert_eq!(crash_at(dir.path(), 10, 14), Verdict::Process);
        assert_eq!(crash_at(dir.path(), 10, 14), Verdict::Process);
        assert_eq!(crash_at(dir.path(), 10, 14), Verdict::Process);
        // Three runs died at 14: the fourth sets it aside, and only it.
        let mut guard = CrashGuard::new(dir.path(), 3, 100);
        guard.assign(0, "in", 0, Some(10)).unwrap();
        for offset in 10..14 {
            assert_eq!(guard.before(0, 0, offset).unwrap(), Verdict::Process);
            guard.after(0, 0).unwrap();
        }
        assert_eq!(
            guard.before(0, 0, 14).unwrap(),
            Verdict::Quarantine { crashes: 3 }
        );
        assert_eq!(guard.before(0, 0, 15).unwrap(), Verdict::Process);
    }

    #[test]
    fn quarantine_ignores_clean_stops_kills_before_processing_and_committed_offsets() {
        let dir = tempfile::TempDir::new().unwrap();
        // Crashes at different offsets do not add up.
        crash_at(dir.path(), 0, 5);
        crash_at(dir.path(), 0, 6);
        crash_at(dir.path(), 0, 5);
        // Killed during restore, twice: nothing was in flight.
        for _ in 0..2 {
            let mut guard = CrashGuard::new(dir.path(), 3, 100);
            guard.assign(0, "in", 0, Some(0)).unwrap();
        }
        // A clean stop after processing 5.
        let mut guard = CrashGuard::new(dir.path(), 3, 100);
        guard.assign(0, "in", 0, Some(0)).unwrap();
        for offset in 0..=5 {
            assert_eq!(guard.before(0, 0, offset).unwrap(), Verdict::Process);
            guard.after(0, 0).unwrap();
        }
        guard.close();
        let mut guard = CrashGuard::new(dir.path(), 3, 100);
        guard.assign(0, "in", 0, Some(0)).unwrap();
        assert_eq!(read_crashes(&guard.path("in", 0, "crashes")), Some((5, 1)));
        for offset in 0..=6 {
            assert_eq!(guard.before(0, 0, offset).unwrap(), Verdict::Process);
        }
        drop(guard);
        // Died at 6, but 6 had been committed by the time of the next assignment: not a crash
        // of that record (it was processed and committed after all).
        let mut guard = CrashGuard::new(dir.path(), 3, 100);
        guard.assign(0, "in", 0, Some(7)).unwrap();
        assert_eq!(read_crashes(&guard.path("in", 0, "crashes")), Some((5, 1)));
    }

    #[test]
    fn quarantine_blames_only_the_record_in_flight_not_other_partitions() {
        let dir = tempfile::TempDir::new().unwrap();
        for _ in 0..3 {
            let mut guard = CrashGuard::new(dir.path(), 3, 100);
            guard.assign(0, "in", 0, Some(0)).unwrap();
            guard.assign(0, "in", 1, Some(0)).unwrap();
            // Partition 1's record was processed (not yet committed), then partition 0's
            // record crashed the process.
            assert_eq!(guard.before(0, 1, 7).unwrap(), Verdict::Process);
            guard.after(0, 1).unwrap();
            assert_eq!(guard.before(0, 0, 3).unwrap(), Verdict::Process);
        }
        let mut guard = CrashGuard::new(dir.path(), 3, 100);
        guard.assign(0, "in", 0, Some(0)).unwrap();
        guard.assign(0, "in", 1, Some(0)).unwrap();
        assert_eq!(guard.before(0, 1, 7).unwrap(), Verdict::Process);
        assert_eq!(
            guard.before(0, 0, 3).unwrap(),
            Verdict::Quarantine { crashes: 3 }
        );
    }

    #[test]
    fn quarantine_marks_only_the_first_records_after_assignment() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut guard = CrashGuard::new(dir.path(), 1, 2);
        guard.assign(0, "in", 0, Some(0)).unwrap();
        for offset in 0..5 {
            guard.before(0, 0, offset).unwrap();
        }
        drop(guard);
        let mut guard = CrashGuard::new(dir.path(), 1, 2);
        guard.assign(0, "in", 0, Some(0)).unwrap();
        assert_eq!(
            read_crashes(&guard.path("in", 0, "crashes")),
            Some((1, 1)),
            "the last marked record"
        );
    }
}
