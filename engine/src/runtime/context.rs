//! librdkafka callbacks: rebalances on the consumer, delivery reports on the producer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use prometheus::IntGaugeVec;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientContext, Statistics};

use super::core::Core;
use super::edges::COPY_TAG;
use super::io::RdKafkaIo;

/// The consumer's context owns the processing core, because rebalance callbacks run inside
/// `poll` and must commit or abort the open transaction and restore state before partitions move.
/// The processing loop takes the same lock after `poll` returns, so the two never overlap.
pub struct EngineContext {
    pub core: Mutex<Core<RdKafkaIo>>,
    pub consumer_lag: IntGaugeVec,
}

impl ClientContext for EngineContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, topic_stats) in &statistics.topics {
            for (partition, partition_stats) in &topic_stats.partitions {
                if *partition >= 0 && partition_stats.consumer_lag >= 0 {
                    self.consumer_lag
                        .with_label_values(&[topic, &partition.to_string()])
                        .set(partition_stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let lost = consumer.assignment_lost();
            let mut core = self.core.lock().expect("core lock poisoned");
            core.on_revoke(consumer, partitions, lost);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let mut core = self.core.lock().expect("core lock poisoned");
            core.on_assign(consumer, partitions);
        }
    }
}

/// Delivery opaque: 0 for ordinary records, `slot + 1` for a changelog record of changelog slot
/// `slot`, so the highest offset written to each changelog partition is known at commit.
pub type DeliveryTag = usize;

/// Collects delivery outcomes of the transactional producer.
#[derive(Default)]
pub struct DeliveryContext {
    /// Highest delivered offset per (changelog slot, partition) since the last take.
    changelog_offsets: Mutex<HashMap<(usize, i32), i64>>,
    /// Set when any delivery failed; the transaction must then not commit.
    failed: AtomicBool,
    /// Where each lineage-tracked copy of the open transaction landed, by copy index
    /// (`edges::COPY_TAG`).
    copies: Mutex<Vec<Option<(i32, i64)>>>,
}

impl DeliveryContext {
    /// Takes the highest delivered changelog offsets.
    pub fn take_changelog_offsets(&self) -> HashMap<(usize, i32), i64> {
        std::mem::take(&mut *self.changelog_offsets.lock().expect("lock poisoned"))
    }

    /// Where the open transaction's tracked copies landed, by copy index.
    pub fn take_copies(&self) -> Vec<Option<(i32, i64)>> {
        std::mem::take(&mut *self.copies.lock().expect("lock poisoned"))
    }

    /// Whether a delivery failed since the last reset; resets the flag.
    pub fn take_failed(&self) -> bool {
        self.failed.swap(false, Ordering::AcqRel)
    }

    /// Records that the record sent with `tag` landed at `partition`/`offset`.
    pub fn delivered(&self, tag: DeliveryTag, partition: i32, offset: i64) {
        if tag & COPY_TAG != 0 {
            let index = tag & !COPY_TAG;
            let mut copies = self.copies.lock().expect("lock poisoned");
            if copies.len() <= index {
                copies.resize(index + 1, None);
            }
            copies[index] = Some((partition, offset));
        } else if tag > 0 {
            let mut offsets = self.changelog_offsets.lock().expect("lock poisoned");
            let entry = offsets.entry((tag - 1, partition)).or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }

    /// Records that a delivery failed: the open transaction must not commit.
    pub fn delivery_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = DeliveryTag;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: DeliveryTag) {
        match result {
            Ok(message) => self.delivered(tag, message.partition(), message.offset()),
            Err((error, _)) => {
                // Logged once per failing transaction by the core, not here per record.
                tracing::debug!(%error, "Delivery failed.");
                self.delivery_failed();
            }
        }
    }
}

/// Context of consumers that read to the end of partitions (restore, verify): reaching the end is
/// how they know they are done, not an error worth a log line.
pub struct EndOfPartitionContext;

impl ClientContext for EndOfPartitionContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, reason, "Kafka client error.");
        }
    }
}

impl ConsumerContext for EndOfPartitionContext {}
