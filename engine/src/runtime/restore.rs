//! Restoring a partition's state from its changelog before the partition is processed.

use std::time::{Duration, Instant};

use breadcrumb_state::format::decode_input_offset;
use breadcrumb_state::{Checkpoint, RestoreWriter, StateBackend, StoreId};
use prometheus::{IntCounter, IntGauge};

use super::io::ChangelogSource;
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
}

/// Brings a store's partition up to date and returns the changelog offset it reached.
///
/// Local state is trusted from its checkpoint on; the changelog tail past it is applied in order.
/// The tail is read to the end of the partition as a read_committed reader sees it. Records
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
    } = target;
    let committed_input_offset = committed_input.unwrap_or(0);
    let (low, high) = io.changelog_watermarks(changelog_topic, partition)?;
    let checkpoint = backend.checkpoint(store, partition)?;
    let start = match checkpoint {
        Some(checkpoint)
            if checkpoint.input_next_offset <= committed_input_offset
                && checkpoint.changelog_next_offset <= high =>
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
        to = high,
        "Restoring state from changelog."
    );
    let mut writer = RestoreWriter::new(backend, store, partition);
    // The high watermark only estimates progress: the end is where the reader reports the end
    // of the partition (the last stable offset for a read_committed reader), because some
    // brokers under-report watermarks and transaction markers sit between records.
    let mut reported_remaining = (high - start).max(0);
    metrics.remaining.add(reported_remaining);
    let outcome = io.read_changelog(changelog_topic, partition, start, timeout, &mut |record| {
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
        let remaining = (high - record.offset - 1).max(0);
        if reported_remaining - remaining >= 1_000 {
            metrics.remaining.sub(reported_remaining - remaining);
            reported_remaining = remaining;
        }
        Ok(())
    });
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
