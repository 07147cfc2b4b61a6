//! The engine's Kafka I/O behind traits, so the processing core runs unchanged over the rdkafka
//! clients in production and over a deterministic in-memory log under test (the model tier of
//! the fault suite, `integration-tests/src/model/`), which injects crashes between any two of
//! these calls.
//!
//! The seams: [`KafkaIo`] is the transactional producer, with the [`ChangelogSource`] restores
//! read; [`GroupIo`] is the group consumer as the core sees it inside the processing loop and
//! the rebalance callbacks; [`Incoming`] is one consumed record.

use std::time::{Duration, Instant};

use breadcrumb_schemas::HeaderRef;
use breadcrumb_state::INPUT_OFFSET_HEADER;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use smallvec::SmallVec;

use super::context::{DeliveryContext, DeliveryTag, EndOfPartitionContext, EngineContext};
use super::producer::TransactionalProducer;
use crate::error::{EngineError, Result};
use crate::raw_headers::read_headers;

/// Bound on fetching a changelog partition's watermarks before a restore.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one poll of the restore consumer waits.
const RESTORE_POLL: Duration = Duration::from_millis(100);

/// One record sent into the open transaction.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    pub topic: &'a str,
    /// `None`: the producer's partitioner places it by key.
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [HeaderRef<'a>],
    pub timestamp_ms: Option<i64>,
    /// Reported back with the delivery (see [`DeliveryContext`]).
    pub tag: DeliveryTag,
}

/// One committed changelog record read during a restore.
#[derive(Debug, Clone, Copy)]
pub struct ChangelogRecord<'a> {
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The record's input-offset header, if it has one.
    pub input_offset: Option<&'a [u8]>,
}

/// The transactional producer and the restore consumer.
pub trait KafkaIo {
    /// What the group consumer hands the producer with the transaction's input offsets.
    type GroupMetadata;
    /// Where restores read changelogs.
    type Changelogs: ChangelogSource;

    fn changelogs(&self) -> &Self::Changelogs;

    fn begin_transaction(&self) -> std::result::Result<(), KafkaError>;
    /// Enqueues a record into the open transaction, waiting while the client's queue is full.
    fn send(&self, record: &OutRecord<'_>) -> std::result::Result<(), KafkaError>;
    /// Waits until every enqueued record has its delivery report.
    fn flush(&self, timeout: Duration) -> std::result::Result<(), KafkaError>;
    /// Delivery outcomes of the records sent since they were last taken.
    fn deliveries(&self) -> &DeliveryContext;
    fn send_offsets_to_transaction(
        &self,
        offsets: &TopicPartitionList,
        metadata: Self::GroupMetadata,
        timeout: Duration,
    ) -> std::result::Result<(), KafkaError>;
    fn commit_transaction(&self, timeout: Duration) -> std::result::Result<(), KafkaError>;
    fn abort_transaction(&self, timeout: Duration) -> std::result::Result<(), KafkaError>;
}

/// Where a restore reads changelogs from.
pub trait ChangelogSource {
    /// Low and high watermarks of a changelog partition.
    fn changelog_watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(i64, i64), KafkaError>;
    /// Reads a changelog partition's committed records from `start` to its end as a
    /// `read_committed` reader sees it (the last stable offset), handing each to `apply`, and
    /// returns the offset the reader reached. While that end is short of `until` (committed
    /// records sit behind an open transaction), keeps reading as the end moves. Gives up with
    /// [`EngineError::RestoreTimeout`] once `timeout` has passed.
    fn read_changelog(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        until: i64,
        timeout: Duration,
        apply: &mut dyn FnMut(ChangelogRecord<'_>) -> Result<()>,
    ) -> Result<i64>;
}

/// The group consumer, as far as the core uses it.
pub trait GroupIo {
    type Metadata;

    /// The member's group identity to commit offsets in a transaction with.
    fn group_metadata(&self) -> Option<Self::Metadata>;
    /// Whether the member's assignment was lost (not revoked in an orderly rebalance).
    fn assignment_lost(&self) -> bool;
    /// Moves the consumer's position in `topic`/`partition` to `offset`.
    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        timeout: Duration,
    ) -> std::result::Result<(), KafkaError>;
    /// The group's committed offsets of `partitions`.
    fn committed_offsets(
        &self,
        partitions: TopicPartitionList,
        timeout: Duration,
    ) -> std::result::Result<TopicPartitionList, KafkaError>;
    /// Commits offsets outside any transaction (at-least-once).
    fn commit_offsets(&self, offsets: &TopicPartitionList) -> std::result::Result<(), KafkaError>;
}

/// One consumed record.
pub trait Incoming {
    fn topic(&self) -> &str;
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    fn timestamp_ms(&self) -> Option<i64>;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// Appends the headers whose names are UTF-8 to `out`; returns how many were left out.
    fn read_headers<'a>(&'a self, out: &mut SmallVec<[HeaderRef<'a>; 16]>) -> usize;
}

/// The production I/O: librdkafka's transactional producer and a restore consumer.
pub struct RdKafkaIo {
    pub producer: TransactionalProducer,
    pub restore_consumer: BaseConsumer<EndOfPartitionContext>,
}

impl KafkaIo for RdKafkaIo {
    type GroupMetadata = ConsumerGroupMetadata;
    type Changelogs = BaseConsumer<EndOfPartitionContext>;

    fn changelogs(&self) -> &Self::Changelogs {
        &self.restore_consumer
    }

    fn begin_transaction(&self) -> std::result::Result<(), KafkaError> {
        self.producer.begin_transaction()
    }

    fn send(&self, record: &OutRecord<'_>) -> std::result::Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in record.headers {
            headers = headers.insert(Header { key, value: *value });
        }
        let mut base: BaseRecord<'_, [u8], [u8], DeliveryTag> =
            BaseRecord::with_opaque_to(record.topic, record.tag).headers(headers);
        if let Some(partition) = record.partition {
            base = base.partition(partition);
        }
        if let Some(timestamp) = record.timestamp_ms {
            base = base.timestamp(timestamp);
        }
        if let Some(key) = record.key {
            base = base.key(key);
        }
        if let Some(value) = record.value {
            base = base.payload(value);
        }
        // librdkafka's queue bound is the engine's backpressure.
        loop {
            match self.producer.send(base) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    base = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(error),
            }
        }
    }

    fn flush(&self, timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.producer.flush_deliveries(timeout)
    }

    fn deliveries(&self) -> &DeliveryContext {
        self.producer.context()
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &TopicPartitionList,
        metadata: ConsumerGroupMetadata,
        timeout: Duration,
    ) -> std::result::Result<(), KafkaError> {
        // Bounded: librdkafka's own call can block forever (see `producer.rs`).
        self.producer
            .send_offsets_to_transaction_bounded(offsets, metadata, timeout)
    }

    fn commit_transaction(&self, timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.producer.commit_transaction(timeout)
    }

    fn abort_transaction(&self, timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.producer.abort_transaction(timeout)
    }
}

impl ChangelogSource for BaseConsumer<EndOfPartitionContext> {
    fn changelog_watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(i64, i64), KafkaError> {
        self.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)
    }

    fn read_changelog(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        until: i64,
        timeout: Duration,
        apply: &mut dyn FnMut(ChangelogRecord<'_>) -> Result<()>,
    ) -> Result<i64> {
        let started = Instant::now();
        let mut waiting_reported = false;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
        self.assign(&assignment)?;
        let mut next = start;
        let outcome = loop {
            if started.elapsed() > timeout {
                break Err(EngineError::RestoreTimeout {
                    topic: topic.to_owned(),
                    partition,
                    elapsed_ms: started.elapsed().as_millis(),
                });
            }
            match self.poll(RESTORE_POLL) {
                Some(Ok(message)) => {
                    let input_offset = message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == INPUT_OFFSET_HEADER)
                            .and_then(|header| header.value)
                    });
                    let applied = apply(ChangelogRecord {
                        offset: Message::offset(&message),
                        key: Message::key(&message),
                        value: Message::payload(&message),
                        input_offset,
                    });
                    if let Err(error) = applied {
                        break Err(error);
                    }
                    next = Message::offset(&message) + 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // Read-committed consumers reach the end at the last stable offset;
                    // transaction markers may sit between the last record and the high
                    // watermark.
                    if let Ok(position) = self.position() {
                        if let Some(element) = position.find_partition(topic, partition) {
                            if let Offset::Offset(offset) = element.offset() {
                                next = next.max(offset);
                            }
                        }
                    }
                    if next >= until {
                        break Ok(next);
                    }
                    // librdkafka signals the end again once the stable offset has moved and
                    // the reader has caught up with it.
                    if !waiting_reported {
                        waiting_reported = true;
                        tracing::info!(
                            topic,
                            partition,
                            stable_end = next,
                            committed_end = until,
                            "Committed changelog records sit behind an open transaction; \
                             waiting for its coordinator to end it (transaction.timeout.ms)."
                        );
                    }
                }
                Some(Err(error)) if is_transient(&error) => {
                    // librdkafka reconnects and fetches again by itself; the timeout bounds
                    // the wait.
                    tracing::debug!(%error, topic, partition, "Restore consumer error.");
                }
                Some(Err(error)) => break Err(error.into()),
                None => {}
            }
        };
        self.unassign()?;
        outcome
    }
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

impl GroupIo for BaseConsumer<EngineContext> {
    type Metadata = ConsumerGroupMetadata;

    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        Consumer::group_metadata(self)
    }

    fn assignment_lost(&self) -> bool {
        Consumer::assignment_lost(self)
    }

    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        timeout: Duration,
    ) -> std::result::Result<(), KafkaError> {
        Consumer::seek(self, topic, partition, Offset::Offset(offset), timeout)
    }

    fn committed_offsets(
        &self,
        partitions: TopicPartitionList,
        timeout: Duration,
    ) -> std::result::Result<TopicPartitionList, KafkaError> {
        Consumer::committed_offsets(self, partitions, timeout)
    }

    fn commit_offsets(&self, offsets: &TopicPartitionList) -> std::result::Result<(), KafkaError> {
        Consumer::commit(self, offsets, CommitMode::Sync)
    }
}

impl Incoming for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }

    fn partition(&self) -> i32 {
        Message::partition(self)
    }

    fn offset(&self) -> i64 {
        Message::offset(self)
    }

    fn timestamp_ms(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }

    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }

    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn read_headers<'a>(&'a self, out: &mut SmallVec<[HeaderRef<'a>; 16]>) -> usize {
        Message::headers(self).map_or(0, |headers| read_headers(headers, out))
    }
}
