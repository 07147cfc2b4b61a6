//! Restoring a partition's state from its changelog before the partition is processed.

use std::time::{Duration, Instant};

use breadcrumb_state::format::decode_input_offset;
use breadcrumb_state::{Checkpoint, RestoreWriter, StateBackend, StoreId};
use prometheus::{IntCounter, IntGauge};

use super::io::{ChangelogRecord, ChangelogSource};
use crate::error::{EngineError, Result};

/// Progress handles of one store.
pub struct RestoreMetrics {
    pub applied: IntCounter,
    pub remaining: IntGauge,
}

/// One store partition to restore, and how far its input was committed.
#[derive(Debug, Clone, Copy)]
pub struct RestoreTarget<'a> {
    pub store: StoreId,
    pub changelog_topic: &'a str,
    pub partition: i32,
    /// The group's committed offset of the input partition, if any.
    pub committed_input: Option<i64>,
    /// Where the store's changelog partition ended as of the group's last committed
    /// transaction (from the committed offset's metadata, see [`ChangelogEnds`]), if known.
    pub committed_changelog_end: Option<i64>,
}

/// Version tag of the changelog ends carried in committed offsets' metadata.
const CHANGELOG_ENDS_VERSION: &str = "bc1";
/// Kafka's default `offset.metadata.max.bytes`: longer metadata fails the whole commit.
pub const MAX_OFFSET_METADATA_BYTES: usize = 4096;

/// The changelog end offsets of a task's stores, carried in the metadata of the input offsets
/// each transaction commits: `bc1;<store>=<next offset>;...`.
///
/// A read_committed reader stops at the last stable offset, the first offset of a transaction
/// still open. When a member dies with a transaction open in a changelog partition, the next
/// owner's committed records land behind it and stay invisible until the coordinator aborts it
/// (`transaction.timeout.ms`). A restore that stopped there would miss them, yet trust the
/// committed input offsets that cover them. With the ends in the offsets, which commit
/// atomically with the records, the restore knows how far it must read, and waits out the open
/// transaction instead. librdkafka cannot tell it otherwise: its read_committed watermarks
/// report the last stable offset as the high watermark.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangelogEnds {
    ends: Vec<(String, i64)>,
}

impl ChangelogEnds {
    /// Encodes `(store name, next changelog offset)` pairs; `None` if the text would not fit
    /// in Kafka's default metadata bound (the restore then falls back to the stable end).
    pub fn encode<'a>(ends: impl IntoIterator<Item = (&'a str, i64)>) -> Option<String> {
        use std::fmt::Write;
        let mut text = String::from(CHANGELOG_ENDS_VERSION);
        for (store, next) in ends {
            let _ = write!(text, ";{store}={next}");
        }
        (text.len() <= MAX_OFFSET_METADATA_BYTES).then_some(text)
    }

    /// Parses committed metadata. Anything else (no metadata, another tool's, a later
    /// version) gives no ends: the restore reads to the stable end, as before ends existed.
    pub fn parse(metadata: &str) -> Self {
        let mut parts = metadata.split(';');
        if parts.next() != Some(CHANGELOG_ENDS_VERSION) {
            return Self::default();
        }
        let mut ends = Vec::new();
        for part in parts {
            let Some((store, next)) = part.split_once('=') else {
                return Self::default();
            };
            let Ok(next) = next.parse::<i64>() else {
                return Self::default();
            };
            ends.push((store.to_owned(), next));
        }
        Self { ends }
    }

    /// Every `(store name, next changelog offset)` recorded.
    pub fn ends(&self) -> impl Iterator<Item = (&str, i64)> {
        self.ends
            .iter()
            .map(|(store, next)| (store.as_str(), *next))
    }

    /// The end recorded for `store`.
    pub fn end_of(&self, store: &str) -> Option<i64> {
        self.ends()
            .find(|(name, _)| *name == store)
            .map(|(_, next)| next)
    }
}

/// Brings a store's partition up to date and returns the changelog offset it reached.
///
/// Local state is trusted from its checkpoint on; the changelog tail past it is applied in order.
/// The tail is read to the end of the partition as a read_committed reader sees it, and at
/// least to `committed_changelog_end`: past a transaction left open by another member, the
/// restore waits for the coordinator to end it (see [`ChangelogEnds`]). Records
/// whose input offset is at or past `committed_input` (the group's committed offset, or nothing
/// committed at all) came from a transaction that never committed, on a broker that shows
/// such records: they are skipped. A deterministic operator rewrites the same values when it
/// reprocesses those inputs. A checkpoint ahead of the group (offsets reset by an operator) or
/// past the changelog's end (the topic was recreated) is not trusted: the partition is rebuilt
/// from the changelog's start.
pub fn restore_partition<Source: ChangelogSource>(
    io: &Source,
    backend: &StateBackend,
    target: RestoreTarget<'_>,
    timeout: Duration,
    metrics: &RestoreMetrics,
) -> Result<i64> {
    let RestoreTarget {
        store,
        changelog_topic,
        partition,
        committed_input,
        committed_changelog_end,
    } = target;
    let committed_input_offset = committed_input.unwrap_or(0);
    let required = committed_changelog_end.unwrap_or(0);
    // For a read_committed client `high` is the last stable offset, which an open transaction
    // holds below committed records: the end is whichever is further.
    let (low, high) = io.changelog_watermarks(changelog_topic, partition)?;
    let end = high.max(required);
    let checkpoint = backend.checkpoint(store, partition)?;
    let start = match checkpoint {
        Some(checkpoint)
            if checkpoint.input_next_offset <= committed_input_offset
                && checkpoint.changelog_next_offset <= end =>
        {
            checkpoint.changelog_next_offset.max(low)
        }
        _ => {
            backend.clear_partition(store, partition)?;
            low
        }
    };

    let started = Instant::now();
    tracing::info!(
        topic = changelog_topic,
        partition,
        from = start,
        to = end,
        "Restoring state from changelog."
    );
    let mut writer = RestoreWriter::new(backend, store, partition);
    // The watermark only estimates progress: the end is where the reader reports the end of
    // the partition (the last stable offset for a read_committed reader), because some brokers
    // under-report watermarks and transaction markers sit between records.
    let mut reported_remaining = (end - start).max(0);
    metrics.remaining.add(reported_remaining);
    let mut apply = |record: ChangelogRecord<'_>| {
        let Some(input_offset) = record.input_offset.and_then(decode_input_offset) else {
            return Err(EngineError::Changelog {
                topic: changelog_topic.to_owned(),
                partition,
                offset: record.offset,
                reason: "record lacks its input-offset header",
            });
        };
        if input_offset < committed_input_offset {
            writer.apply(record.key.unwrap_or_default(), record.value)?;
        }
        let remaining = (end - record.offset - 1).max(0);
        if reported_remaining - remaining >= 1_000 {
            metrics.remaining.sub(reported_remaining - remaining);
            reported_remaining = remaining;
        }
        Ok(())
    };
    // Local state already reaches the end: a read would only wait for an end-of-partition
    // that a reader positioned past the last stable offset is never told of.
    let outcome = if start >= end {
        Ok(start)
    } else {
        io.read_changelog(
            changelog_topic,
            partition,
            start,
            required,
            timeout,
            &mut apply,
        )
    };
    metrics.remaining.sub(reported_remaining);
    let next = outcome?;
    metrics.applied.inc_by(writer.applied());
    let applied = writer.finish(Checkpoint {
        changelog_next_offset: next,
        input_next_offset: committed_input_offset,
    })?;
    tracing::info!(
        topic = changelog_topic,
        partition,
        applied,
        reached = next,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Restored state."
    );
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_ends_round_trip_through_the_metadata_text() {
        let text = ChangelogEnds::encode([("payments-dedupe", 833), ("orders-sequence", 0)])
            .expect("fits");
        assert_eq!(text, "bc1;payments-dedupe=833;orders-sequence=0");
        let ends = ChangelogEnds::parse(&text);
        assert_eq!(ends.end_of("payments-dedupe"), Some(833));
        assert_eq!(ends.end_of("orders-sequence"), Some(0));
        assert_eq!(ends.end_of("traces"), None);
        assert_eq!(ends.ends().count(), 2);
    }

    #[test]
    fn metadata_of_another_writer_or_version_gives_no_ends() {
        for foreign in [
            "",
            "checkpoint from another tool",
            "bc2;payments-dedupe=833",
            "bc1;payments-dedupe",
            "bc1;payments-dedupe=soon",
        ] {
            assert_eq!(
                ChangelogEnds::parse(foreign),
                ChangelogEnds::default(),
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn ends_too_long_for_the_broker_are_not_sent() {
        let name = "s".repeat(200);
        let many: Vec<(&str, i64)> = (0..30).map(|_| (name.as_str(), 1)).collect();
        assert_eq!(ChangelogEnds::encode(many), None);
    }
}
