//! An in-memory Kafka log with the transaction semantics exactly-once depends on, and the
//! engine's I/O traits implemented over it.
//!
//! What it models faithfully, because the engine's correctness rests on it:
//! - partitions as offset-ordered logs; transaction markers take an offset, as in Kafka;
//! - producer epochs: a new producer with a transactional id (`init_transactions`) bumps the
//!   epoch, aborts what the old one left open, and fences it;
//! - `read_committed` reads: a fetch stops at the last stable offset (the first offset of a
//!   still-open transaction) and skips records of aborted transactions;
//! - offsets committed in a transaction become visible only when it commits; a
//!   `TxnOffsetCommit` from a member whose group generation is stale fails (KIP-447 fencing);
//!   an offset fetch while a transaction holds pending offsets for the partition fails as
//!   unstable (`require_stable`);
//! - a transaction timeout: the coordinator aborts an open transaction and bumps the epoch.
//!
//! Every I/O call is two steps, one before its effect and one after: a crash scheduled at a
//! step unwinds out of the engine there (a [`ModelCrash`] panic), so a crash can fall before a
//! call took effect or after it took effect but before the engine saw the result.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use breadcrumb_engine::runtime::context::DeliveryContext;
use breadcrumb_engine::runtime::io::{
    ChangelogRecord, ChangelogSource, GroupIo, Incoming, KafkaIo, OutRecord,
};
use breadcrumb_schemas::HeaderRef;
use breadcrumb_state::INPUT_OFFSET_HEADER;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use smallvec::SmallVec;

/// The panic payload of an injected crash.
#[derive(Debug, Clone, Copy)]
pub struct ModelCrash {
    pub step: u64,
}

/// What became of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Open,
    Committed,
    Aborted,
}

/// One stored record (or transaction marker).
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// Header names as bytes: input may carry names that are not UTF-8.
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
    /// The transaction that wrote it; `None` for non-transactional records.
    pub txn: Option<u64>,
    /// A commit or abort marker.
    pub control: bool,
}

impl StoredRecord {
    /// The last value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| key == name.as_bytes())
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }
}

#[derive(Debug, Default)]
struct Partition {
    records: Vec<StoredRecord>,
    next_offset: i64,
    /// First offset of each transaction still open in the partition: the least is the last
    /// stable offset.
    open_first: BTreeMap<u64, i64>,
}

#[derive(Debug)]
struct OpenTxn {
    serial: u64,
    partitions: BTreeSet<(String, i32)>,
    /// Offsets sent to the transaction, committed with it.
    offsets: BTreeMap<(String, i32), i64>,
}

#[derive(Debug, Default)]
struct ProducerState {
    epoch: u32,
    open: Option<OpenTxn>,
}

/// Counts of what happened to the log, for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    pub steps: u64,
    pub committed_transactions: u64,
    pub aborted_transactions: u64,
    pub fenced_calls: u64,
    pub stale_generation_commits: u64,
    pub unstable_offset_fetches: u64,
    pub timed_out_transactions: u64,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Partition>>,
    txns: HashMap<u64, TxnState>,
    next_txn: u64,
    producers: BTreeMap<String, ProducerState>,
    generation: u32,
    members: BTreeSet<String>,
    committed: BTreeMap<(String, i32), i64>,
    /// Round-robin position per topic for records without a key or partition.
    round_robin: BTreeMap<String, i32>,
    crash_at: Option<u64>,
    stats: LogStats,
}

/// The shared log, one per schedule.
#[derive(Debug, Default)]
pub struct Cluster {
    state: RefCell<State>,
}

/// FNV-1a: the model's partitioner (any deterministic hash will do).
fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash % partitions as u32) as i32
}

fn fenced() -> KafkaError {
    KafkaError::Global(RDKafkaErrorCode::ProducerFenced)
}

impl Cluster {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let mut state = self.state.borrow_mut();
        state
            .topics
            .entry(name.to_owned())
            .or_insert_with(|| (0..partitions).map(|_| Partition::default()).collect());
    }

    pub fn partitions(&self, topic: &str) -> i32 {
        self.state
            .borrow()
            .topics
            .get(topic)
            .map_or(0, |partitions| partitions.len() as i32)
    }

    /// Schedules a crash at step `at` (replacing any scheduled one); `None` cancels.
    pub fn crash_at(&self, at: Option<u64>) {
        self.state.borrow_mut().crash_at = at;
    }

    pub fn stats(&self) -> LogStats {
        self.state.borrow().stats
    }

    /// One step of I/O: panics with [`ModelCrash`] when a crash is scheduled here. Never called
    /// with the state borrowed.
    pub fn step(&self) {
        let crash = {
            let mut state = self.state.borrow_mut();
            state.stats.steps += 1;
            let step = state.stats.steps;
            (state.crash_at == Some(step)).then(|| {
                state.crash_at = None;
                step
            })
        };
        if let Some(step) = crash {
            std::panic::panic_any(ModelCrash { step });
        }
    }

    /// Appends a non-transactional record (test input) and returns its offset.
    pub fn produce(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        timestamp_ms: Option<i64>,
    ) -> i64 {
        let mut state = self.state.borrow_mut();
        let log = &mut state.topics.get_mut(topic).expect("topic exists")[partition as usize];
        let offset = log.next_offset;
        log.records.push(StoredRecord {
            offset,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers,
            timestamp_ms,
            txn: None,
            control: false,
        });
        log.next_offset += 1;
        offset
    }

    /// The partition a keyed record without an explicit partition goes to.
    pub fn partition_of(&self, topic: &str, key: &[u8]) -> i32 {
        partition_for(key, self.partitions(topic))
    }

    /// Last stable offset: the first offset of a transaction still open, else the end.
    fn last_stable(state: &State, topic: &str, partition: i32) -> i64 {
        let log = &state.topics[topic][partition as usize];
        log.open_first
            .values()
            .copied()
            .min()
            .unwrap_or(log.next_offset)
    }

    /// The first record a `read_committed` reader gets at or after `position`, and the position
    /// after it; `None` (with the position reached) at the last stable offset.
    pub fn fetch(&self, topic: &str, partition: i32, position: i64) -> (Option<StoredRecord>, i64) {
        let state = self.state.borrow();
        let stable = Self::last_stable(&state, topic, partition);
        let log = &state.topics[topic][partition as usize];
        let start = log
            .records
            .partition_point(|record| record.offset < position);
        let mut reached = position;
        for record in &log.records[start..] {
            if record.offset >= stable {
                break;
            }
            reached = record.offset + 1;
            let aborted = record
                .txn
                .is_some_and(|txn| state.txns[&txn] != TxnState::Committed);
            if !record.control && !aborted {
                return (Some(record.clone()), reached);
            }
        }
        (None, reached.max(position.min(stable)))
    }

    /// Every record of `topic` a `read_committed` reader sees, by partition, once nothing is
    /// open.
    pub fn read_committed(&self, topic: &str) -> Vec<(i32, StoredRecord)> {
        let mut out = Vec::new();
        for partition in 0..self.partitions(topic) {
            let mut position = 0;
            loop {
                let (record, next) = self.fetch(topic, partition, position);
                position = next;
                match record {
                    Some(record) => out.push((partition, record)),
                    None => break,
                }
            }
        }
        out
    }

    /// Records of transactions that aborted (control markers excluded), across all topics.
    pub fn aborted_records(&self) -> u64 {
        let state = self.state.borrow();
        state
            .topics
            .values()
            .flatten()
            .flat_map(|partition| &partition.records)
            .filter(|record| {
                !record.control
                    && record
                        .txn
                        .is_some_and(|txn| state.txns[&txn] == TxnState::Aborted)
            })
            .count() as u64
    }

    /// Whether any transaction is still open.
    pub fn open_transactions(&self) -> usize {
        self.state
            .borrow()
            .producers
            .values()
            .filter(|producer| producer.open.is_some())
            .count()
    }

    /// The end offset a `read_committed` reader reaches in each partition of `topic`.
    pub fn stable_ends(&self, topic: &str) -> Vec<i64> {
        let state = self.state.borrow();
        (0..state.topics[topic].len() as i32)
            .map(|partition| Self::last_stable(&state, topic, partition))
            .collect()
    }

    pub fn committed_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.state
            .borrow()
            .committed
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Group membership changes: the generation moves on, so offsets sent with an older one
    /// are refused.
    pub fn rebalance(&self, members: &[&str]) -> u32 {
        let mut state = self.state.borrow_mut();
        state.generation += 1;
        state.members = members.iter().map(|member| (*member).to_owned()).collect();
        state.generation
    }

    /// The coordinator's transaction timeout: aborts `transactional_id`'s open transaction and
    /// fences its producer. Returns whether one was open.
    pub fn time_out_transaction(&self, transactional_id: &str) -> bool {
        let mut state = self.state.borrow_mut();
        let Some(open) = state
            .producers
            .get_mut(transactional_id)
            .and_then(|producer| {
                producer.epoch += 1;
                producer.open.take()
            })
        else {
            return false;
        };
        state.stats.timed_out_transactions += 1;
        Self::finish(&mut state, open, TxnState::Aborted);
        true
    }

    /// Ends a transaction: its state, a marker in every partition it wrote, and its offsets.
    fn finish(state: &mut State, open: OpenTxn, outcome: TxnState) {
        state.txns.insert(open.serial, outcome);
        for (topic, partition) in &open.partitions {
            let log = &mut state.topics.get_mut(topic).expect("topic exists")[*partition as usize];
            log.open_first.remove(&open.serial);
            let offset = log.next_offset;
            log.records.push(StoredRecord {
                offset,
                key: None,
                value: None,
                headers: Vec::new(),
                timestamp_ms: None,
                txn: Some(open.serial),
                control: true,
            });
            log.next_offset += 1;
        }
        match outcome {
            TxnState::Committed => {
                state.stats.committed_transactions += 1;
                state.committed.extend(open.offsets);
            }
            _ => state.stats.aborted_transactions += 1,
        }
    }
}

/// A transactional producer (and restore reader) of one engine incarnation.
pub struct ModelProducer {
    cluster: Rc<Cluster>,
    transactional_id: String,
    epoch: u32,
    deliveries: DeliveryContext,
}

impl ModelProducer {
    /// `init_transactions`: bumps the epoch (fencing any earlier producer with this id) and
    /// aborts the transaction it left open.
    pub fn init(cluster: Rc<Cluster>, transactional_id: &str) -> Self {
        cluster.step();
        let epoch = {
            let mut state = cluster.state.borrow_mut();
            let producer = state
                .producers
                .entry(transactional_id.to_owned())
                .or_default();
            producer.epoch += 1;
            let epoch = producer.epoch;
            if let Some(open) = producer.open.take() {
                Cluster::finish(&mut state, open, TxnState::Aborted);
            }
            epoch
        };
        cluster.step();
        Self {
            cluster,
            transactional_id: transactional_id.to_owned(),
            epoch,
            deliveries: DeliveryContext::default(),
        }
    }

    /// Runs `effect` on the producer's state if its epoch is current, between two steps.
    fn call<T>(
        &self,
        effect: impl FnOnce(&mut State, &str) -> std::result::Result<T, KafkaError>,
    ) -> std::result::Result<T, KafkaError> {
        self.cluster.step();
        let outcome = {
            let mut state = self.cluster.state.borrow_mut();
            let current = state
                .producers
                .get(&self.transactional_id)
                .is_some_and(|producer| producer.epoch == self.epoch);
            if current {
                effect(&mut state, &self.transactional_id)
            } else {
                state.stats.fenced_calls += 1;
                Err(fenced())
            }
        };
        self.cluster.step();
        outcome
    }
}

impl KafkaIo for ModelProducer {
    type GroupMetadata = ModelGroupMetadata;

    fn begin_transaction(&self) -> std::result::Result<(), KafkaError> {
        self.call(|state, id| {
            let serial = state.next_txn;
            let producer = state.producers.get_mut(id).expect("current producer");
            if producer.open.is_some() {
                return Err(KafkaError::Global(
                    RDKafkaErrorCode::InvalidTransactionalState,
                ));
            }
            producer.open = Some(OpenTxn {
                serial,
                partitions: BTreeSet::new(),
                offsets: BTreeMap::new(),
            });
            state.next_txn += 1;
            state.txns.insert(serial, TxnState::Open);
            Ok(())
        })
    }

    fn send(&self, record: &OutRecord<'_>) -> std::result::Result<(), KafkaError> {
        let landed = self.call(|state, id| {
            let Some(open) = state
                .producers
                .get(id)
                .and_then(|producer| producer.open.as_ref())
            else {
                return Err(KafkaError::Global(
                    RDKafkaErrorCode::InvalidTransactionalState,
                ));
            };
            let serial = open.serial;
            let count = state
                .topics
                .get(record.topic)
                .map(Vec::len)
                .ok_or(KafkaError::Global(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))? as i32;
            let partition = match (record.partition, record.key) {
                (Some(partition), _) => partition,
                (None, Some(key)) => partition_for(key, count),
                (None, None) => {
                    let next = state
                        .round_robin
                        .entry(record.topic.to_owned())
                        .or_default();
                    *next = (*next + 1) % count;
                    *next
                }
            };
            let log = &mut state.topics.get_mut(record.topic).expect("checked")[partition as usize];
            let offset = log.next_offset;
            log.records.push(StoredRecord {
                offset,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
                headers: record
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_bytes().to_vec(), value.map(<[u8]>::to_vec)))
                    .collect(),
                timestamp_ms: record.timestamp_ms,
                txn: Some(serial),
                control: false,
            });
            log.next_offset += 1;
            log.open_first.entry(serial).or_insert(offset);
            state
                .producers
                .get_mut(id)
                .and_then(|producer| producer.open.as_mut())
                .expect("open")
                .partitions
                .insert((record.topic.to_owned(), partition));
            Ok((partition, offset))
        })?;
        // Delivery is synchronous here: the report is known as the call returns.
        self.deliveries.delivered(record.tag, landed.0, landed.1);
        Ok(())
    }

    fn flush(&self, _timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.call(|_, _| Ok(()))
    }

    fn deliveries(&self) -> &DeliveryContext {
        &self.deliveries
    }

    fn send_offsets_to_transaction(
        &self,
        offsets: &TopicPartitionList,
        metadata: &ModelGroupMetadata,
        _timeout: Duration,
    ) -> std::result::Result<(), KafkaError> {
        self.call(|state, id| {
            if metadata.generation != state.generation || !state.members.contains(&metadata.member)
            {
                state.stats.stale_generation_commits += 1;
                // librdkafka reports it as an abortable transaction error.
                return Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::IllegalGeneration,
                ));
            }
            let open = state
                .producers
                .get_mut(id)
                .and_then(|producer| producer.open.as_mut())
                .ok_or(KafkaError::Global(
                    RDKafkaErrorCode::InvalidTransactionalState,
                ))?;
            for element in offsets.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    open.offsets
                        .insert((element.topic().to_owned(), element.partition()), offset);
                }
            }
            Ok(())
        })
    }

    fn commit_transaction(&self, _timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.call(|state, id| {
            let open = state
                .producers
                .get_mut(id)
                .and_then(|producer| producer.open.take())
                .ok_or(KafkaError::Global(
                    RDKafkaErrorCode::InvalidTransactionalState,
                ))?;
            Cluster::finish(state, open, TxnState::Committed);
            Ok(())
        })
    }

    fn abort_transaction(&self, _timeout: Duration) -> std::result::Result<(), KafkaError> {
        self.call(|state, id| {
            if let Some(open) = state
                .producers
                .get_mut(id)
                .and_then(|producer| producer.open.take())
            {
                Cluster::finish(state, open, TxnState::Aborted);
            }
            Ok(())
        })
    }
}

impl ChangelogSource for ModelProducer {
    fn changelog_watermarks(
        &self,
        topic: &str,
        partition: i32,
    ) -> std::result::Result<(i64, i64), KafkaError> {
        self.cluster.step();
        let watermarks = {
            let state = self.cluster.state.borrow();
            state
                .topics
                .get(topic)
                .and_then(|partitions| partitions.get(partition as usize))
                .map(|log| {
                    (
                        log.records
                            .first()
                            .map_or(log.next_offset, |record| record.offset),
                        log.next_offset,
                    )
                })
                .ok_or(KafkaError::Global(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))
        };
        self.cluster.step();
        watermarks
    }

    fn read_changelog(
        &self,
        topic: &str,
        partition: i32,
        start: i64,
        _timeout: Duration,
        apply: &mut dyn FnMut(ChangelogRecord<'_>) -> breadcrumb_engine::error::Result<()>,
    ) -> breadcrumb_engine::error::Result<i64> {
        self.cluster.step();
        let mut position = start;
        loop {
            let (record, next) = self.cluster.fetch(topic, partition, position);
            position = next;
            let Some(record) = record else { break };
            let input_offset = record
                .headers
                .iter()
                .find(|(name, _)| name == INPUT_OFFSET_HEADER.as_bytes())
                .and_then(|(_, value)| value.as_deref());
            apply(ChangelogRecord {
                offset: record.offset,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                input_offset,
            })?;
        }
        self.cluster.step();
        Ok(position)
    }
}

/// The group identity sent with a transaction's offsets.
#[derive(Debug, Clone)]
pub struct ModelGroupMetadata {
    pub member: String,
    pub generation: u32,
}

/// One member's consumer: its assignment, positions and the generation it knows.
pub struct ModelConsumer {
    cluster: Rc<Cluster>,
    pub member: String,
    pub generation: Cell<u32>,
    /// Set once the member has been told its assignment was lost.
    pub lost: Cell<bool>,
    positions: RefCell<BTreeMap<(String, i32), i64>>,
    /// Rotates which assigned partition a poll reads first.
    next_poll: Cell<usize>,
}

impl ModelConsumer {
    pub fn new(cluster: Rc<Cluster>, member: &str) -> Self {
        Self {
            cluster,
            member: member.to_owned(),
            generation: Cell::new(0),
            lost: Cell::new(false),
            positions: RefCell::default(),
            next_poll: Cell::new(0),
        }
    }

    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.positions.borrow().keys().cloned().collect()
    }

    /// Adds partitions at the group's committed offsets (or the start).
    pub fn assign(&self, partitions: &[(String, i32)]) {
        let mut positions = self.positions.borrow_mut();
        for (topic, partition) in partitions {
            let committed = self
                .cluster
                .committed_offset(topic, *partition)
                .unwrap_or(0);
            positions.insert((topic.clone(), *partition), committed);
        }
    }

    pub fn unassign(&self, partitions: &[(String, i32)]) {
        let mut positions = self.positions.borrow_mut();
        for partition in partitions {
            positions.remove(partition);
        }
    }

    /// The next committed record of the assignment, starting the scan `rotate` partitions on.
    pub fn poll(&self) -> Option<ModelMessage> {
        self.cluster.step();
        let assigned = self.assignment();
        let mut found = None;
        for index in 0..assigned.len() {
            let (topic, partition) =
                &assigned[(self.next_poll.get() + index) % assigned.len().max(1)];
            let position = self.positions.borrow()[&(topic.clone(), *partition)];
            let (record, next) = self.cluster.fetch(topic, *partition, position);
            self.positions
                .borrow_mut()
                .insert((topic.clone(), *partition), next);
            if let Some(record) = record {
                found = Some(ModelMessage {
                    topic: topic.clone(),
                    partition: *partition,
                    record,
                });
                break;
            }
        }
        self.next_poll.set(self.next_poll.get().wrapping_add(1));
        self.cluster.step();
        found
    }
}

impl GroupIo for ModelConsumer {
    type Metadata = ModelGroupMetadata;

    fn group_metadata(&self) -> Option<ModelGroupMetadata> {
        Some(ModelGroupMetadata {
            member: self.member.clone(),
            generation: self.generation.get(),
        })
    }

    fn assignment_lost(&self) -> bool {
        self.lost.get()
    }

    fn seek(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        _timeout: Duration,
    ) -> std::result::Result<(), KafkaError> {
        self.cluster.step();
        if let Some(position) = self
            .positions
            .borrow_mut()
            .get_mut(&(topic.to_owned(), partition))
        {
            *position = offset;
        }
        self.cluster.step();
        Ok(())
    }

    fn committed_offsets(
        &self,
        partitions: TopicPartitionList,
        _timeout: Duration,
    ) -> std::result::Result<TopicPartitionList, KafkaError> {
        self.cluster.step();
        let answer = {
            let mut state = self.cluster.state.borrow_mut();
            let pending = partitions.elements().iter().any(|element| {
                let key = (element.topic().to_owned(), element.partition());
                state.producers.values().any(|producer| {
                    producer
                        .open
                        .as_ref()
                        .is_some_and(|open| open.offsets.contains_key(&key))
                })
            });
            if pending {
                state.stats.unstable_offset_fetches += 1;
                Err(KafkaError::OffsetFetch(
                    RDKafkaErrorCode::UnstableOffsetCommit,
                ))
            } else {
                let mut answer = TopicPartitionList::new();
                for element in partitions.elements() {
                    let offset = state
                        .committed
                        .get(&(element.topic().to_owned(), element.partition()))
                        .map_or(Offset::Invalid, |offset| Offset::Offset(*offset));
                    answer.add_partition_offset(element.topic(), element.partition(), offset)?;
                }
                Ok(answer)
            }
        };
        self.cluster.step();
        answer
    }

    fn commit_offsets(&self, offsets: &TopicPartitionList) -> std::result::Result<(), KafkaError> {
        self.cluster.step();
        {
            let mut state = self.cluster.state.borrow_mut();
            for element in offsets.elements() {
                if let Offset::Offset(offset) = element.offset() {
                    state
                        .committed
                        .insert((element.topic().to_owned(), element.partition()), offset);
                }
            }
        }
        self.cluster.step();
        Ok(())
    }
}

/// A consumed record.
pub struct ModelMessage {
    pub topic: String,
    pub partition: i32,
    pub record: StoredRecord,
}

impl Incoming for ModelMessage {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> i32 {
        self.partition
    }

    fn offset(&self) -> i64 {
        self.record.offset
    }

    fn timestamp_ms(&self) -> Option<i64> {
        self.record.timestamp_ms
    }

    fn key(&self) -> Option<&[u8]> {
        self.record.key.as_deref()
    }

    fn payload(&self) -> Option<&[u8]> {
        self.record.value.as_deref()
    }

    fn read_headers<'a>(&'a self, out: &mut SmallVec<[HeaderRef<'a>; 16]>) -> usize {
        let mut invalid = 0;
        for (name, value) in &self.record.headers {
            match std::str::from_utf8(name) {
                Ok(name) => out.push((name, value.as_deref())),
                Err(_) => invalid += 1,
            }
        }
        invalid
    }
}
