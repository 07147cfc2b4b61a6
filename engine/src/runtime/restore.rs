//! Restoring a partition's state from its changelog before the partition is processed.

use std::time::{Duration, Instant};

use breadcrumb_state::format::decode_input_offset;
use breadcrumb_state::{Checkpoint, RestoreWriter, StateBackend, StoreId, INPUT_OFFSET_HEADER};
use prometheus::{IntCounter, IntGauge};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::context::EndOfPartitionContext;
use crate::error::{EngineError, Result};

const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);

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
/// The tail is read to the end of the partition as the consumer sees it. Records whose input offset is at or past `committed_input` (the group's committed offset, or
/// nothing committed at all) came from a transaction that never committed, on a broker that shows
/// such records: they are skipped. A deterministic operator rewrites the same values when it
/// reprocesses those inputs. A checkpoint ahead of the group (offsets reset by an operator) or
/// past the changelog's end (the topic was recreated) is not trusted: the partition is rebuilt
/// from the changelog's start.
pub fn restore_partition(
    consumer: &BaseConsumer<EndOfPartitionContext>,
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
    let (low, high) = consumer.fetch_watermarks(changelog_topic, partition, WATERMARK_TIMEOUT)?;
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
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(changelog_topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let mut writer = RestoreWriter::new(backend, store, partition);
    let mut next = start;
    // The high watermark only estimates progress: the end is where the consumer reports the end
    // of the partition (the last stable offset for a read_committed reader), because some
    // brokers under-report watermarks and transaction markers sit between records.
    let mut reported_remaining = (high - start).max(0);
    metrics.remaining.add(reported_remaining);
    let outcome = loop {
        if started.elapsed() > timeout {
            break Err(EngineError::RestoreTimeout {
                topic: changelog_topic.to_owned(),
                partition,
                elapsed_ms: started.elapsed().as_millis(),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let offset = message.offset();
                let input_offset = message
                    .headers()
                    .and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == INPUT_OFFSET_HEADER)
                            .and_then(|header| header.value)
                    })
                    .and_then(decode_input_offset);
                let Some(input_offset) = input_offset else {
                    break Err(EngineError::Changelog {
                        topic: changelog_topic.to_owned(),
                        partition,
                        offset,
                        reason: "record lacks its input-offset header",
                    });
                };
                if input_offset < committed_input_offset {
                    let key = message.key().unwrap_or_default();
                    if let Err(error) = writer.apply(key, message.payload()) {
                        break Err(error.into());
                    }
                }
                next = offset + 1;
                let remaining = (high - next).max(0);
                if reported_remaining - remaining >= 1_000 {
                    metrics.remaining.sub(reported_remaining - remaining);
                    reported_remaining = remaining;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Read-committed consumers reach the end at the last stable offset; transaction
                // markers may sit between the last record and the high watermark.
                if let Ok(position) = consumer.position() {
                    if let Some(element) = position.find_partition(changelog_topic, partition) {
                        if let Offset::Offset(offset) = element.offset() {
                            next = next.max(offset);
                        }
                    }
                }
                break Ok(());
            }
            Some(Err(error)) if is_transient(&error) => {
                // librdkafka reconnects and fetches again by itself; the timeout bounds the wait.
                tracing::debug!(%error, topic = changelog_topic, partition, "Restore consumer error.");
            }
            Some(Err(error)) => break Err(error.into()),
            None => {}
        }
    };
    metrics.remaining.sub(reported_remaining);
    consumer.unassign()?;
    outcome?;
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

/// Consumer errors that only report a broker connection going away (a broker restarting, a
/// leader moving): librdkafka recovers from them without the application's help.
fn is_transient(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::Resolve
        )
    )
}
