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
#[cfg(test)]
use std::panic::AssertUnwindSafe;
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
    offsets: BTreeMap<(String, i32), CommittedOffset>,
}

/// A group's committed offset of a partition, with the metadata committed with it.
#[derive(Debug, Clone)]
struct CommittedOffset {
    offset: i64,
    metadata: String,
}

impl CommittedOffset {
    fn of(element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> Option<Self> {
        match element.offset() {
            Offset::Offset(offset) => Some(Self {
                offset,
                metadata: element.metadata().to_owned(),
            }),
            _ => None,
        }
    }
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
    /// Records the engine read (consumed or restored) from transactions that did not commit.
    pub aborted_reads: u64,
    /// Producer calls answered with an injected abortable error.
    pub injected_errors: u64,
    /// Restores that found committed changelog records behind an open transaction.
    pub blocked_restores: u64,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Partition>>,
    txns: HashMap<u64, TxnState>,
    next_txn: u64,
    producers: BTreeMap<String, ProducerState>,
    generation: u32,
    members: BTreeSet<String>,
    committed: BTreeMap<(String, i32), CommittedOffset>,
    /// Round-robin position per topic for records without a key or partition.
    round_robin: BTreeMap<String, i32>,
    crash_at: Option<u64>,
    /// The first producer call at or after this step fails with an abortable error.
    error_at: Option<u64>,
    stats: LogStats,
}

/// The shared log, one per schedule.
#[derive(Debug, Default)]
pub struct Cluster {
    state: RefCell<State>,
    /// Broken on purpose: `read_committed` readers also get records of aborted transactions,
    /// as Nisshi 0.7 and librdkafka's mock cluster give them. Proves the checks can fail.
    shows_aborted: Cell<bool>,
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

    /// Makes the log show aborted records to `read_committed` readers (a broken broker).
    pub fn show_aborted_records(&self) {
        self.shows_aborted.set(true);
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

    /// Makes the first producer call at or after step `at` fail, without effect, with an
    /// abortable error (a broker refusing a produce or a transactional request).
    pub fn fail_call_at(&self, at: u64) {
        self.state.borrow_mut().error_at = Some(at);
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
            let aborted = !self.shows_aborted.get()
                && record
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

    /// Counts a record the engine read if its transaction did not commit.
    fn note_engine_read(&self, record: &StoredRecord) {
        let mut state = self.state.borrow_mut();
        if record
            .txn
            .is_some_and(|txn| state.txns[&txn] != TxnState::Committed)
        {
            state.stats.aborted_reads += 1;
        }
    }

    /// Log compaction of `topic` below each partition's last stable offset: per key only the
    /// last committed record stays (tombstones too); aborted records and markers go. Offsets
    /// keep their values, so readers meet gaps. Returns the records removed.
    pub fn compact(&self, topic: &str) -> u64 {
        let mut state = self.state.borrow_mut();
        let partitions = state.topics.get(topic).map_or(0, Vec::len) as i32;
        let mut removed = 0;
        for partition in 0..partitions {
            let stable = Self::last_stable(&state, topic, partition);
            let txns = &state.txns;
            let log = &state.topics[topic][partition as usize];
            let mut last_of_key: HashMap<&[u8], i64> = HashMap::new();
            for record in &log.records {
                let committed = record
                    .txn
                    .is_none_or(|txn| txns[&txn] == TxnState::Committed);
                if record.offset < stable && !record.control && committed {
                    last_of_key.insert(record.key.as_deref().unwrap_or_default(), record.offset);
                }
            }
            let keep: Vec<bool> = log
                .records
                .iter()
                .map(|record| {
                    record.offset >= stable
                        || (!record.control
                            && last_of_key.get(record.key.as_deref().unwrap_or_default())
                                == Some(&record.offset))
                })
                .collect();
            let log = &mut state.topics.get_mut(topic).expect("exists")[partition as usize];
            let before = log.records.len();
            let mut index = 0;
            log.records.retain(|_| {
                index += 1;
                keep[index - 1]
            });
            removed += (before - log.records.len()) as u64;
        }
        removed
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
            .map(|committed| committed.offset)
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
            if state.error_at.is_some_and(|at| at <= state.stats.steps) {
                state.error_at = None;
                state.stats.injected_errors += 1;
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::NotEnoughReplicas,
                ))
            } else if current {
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
    type Changelogs = Self;

    fn changelogs(&self) -> &Self {
        self
    }

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
        metadata: ModelGroupMetadata,
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
                if let Some(committed) = CommittedOffset::of(&element) {
                    open.offsets
                        .insert((element.topic().to_owned(), element.partition()), committed);
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
                    // As librdkafka answers a read_committed client: the high watermark is the
                    // last stable offset.
                    (
                        log.records
                            .first()
                            .map_or(log.next_offset, |record| record.offset),
                        Cluster::last_stable(&state, topic, partition),
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
        until: i64,
        _timeout: Duration,
        apply: &mut dyn FnMut(ChangelogRecord<'_>) -> breadcrumb_engine::error::Result<()>,
    ) -> breadcrumb_engine::error::Result<i64> {
        self.cluster.step();
        let mut position = start;
        loop {
            let (record, next) = self.cluster.fetch(topic, partition, position);
            position = next;
            let Some(record) = record else { break };
            self.cluster.note_engine_read(&record);
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
        if position < until {
            // Committed records sit behind an open transaction. No time passes inside a call
            // here: the restore gives up as it would at its timeout, and the world lets the
            // coordinator's transaction timeout pass before the member tries again.
            self.cluster.state.borrow_mut().stats.blocked_restores += 1;
            return Err(breadcrumb_engine::error::EngineError::RestoreTimeout {
                topic: topic.to_owned(),
                partition,
                elapsed_ms: 0,
            });
        }
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
                self.cluster.note_engine_read(&record);
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
                    let committed = state
                        .committed
                        .get(&(element.topic().to_owned(), element.partition()));
                    let offset = committed.map_or(Offset::Invalid, |committed| {
                        Offset::Offset(committed.offset)
                    });
                    answer.add_partition_offset(element.topic(), element.partition(), offset)?;
                    if let (Some(committed), Some(mut added)) = (
                        committed,
                        answer.find_partition(element.topic(), element.partition()),
                    ) {
                        added.set_metadata(&committed.metadata);
                    }
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
                if let Some(committed) = CommittedOffset::of(&element) {
                    state
                        .committed
                        .insert((element.topic().to_owned(), element.partition()), committed);
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

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn record<'a>(topic: &'a str, partition: i32, value: &'a [u8]) -> OutRecord<'a> {
        OutRecord {
            topic,
            partition: Some(partition),
            key: None,
            value: Some(value),
            headers: &[],
            timestamp_ms: None,
            tag: 0,
        }
    }

    fn values(cluster: &Cluster, topic: &str) -> Vec<Vec<u8>> {
        cluster
            .read_committed(topic)
            .into_iter()
            .filter_map(|(_, record)| record.value)
            .collect()
    }

    fn offsets(topic: &str, partition: i32, offset: i64) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("valid offset");
        list
    }

    #[test]
    fn read_committed_stops_at_the_last_stable_offset_and_skips_aborted_records() {
        let cluster = Cluster::new();
        cluster.create_topic("out", 1);
        let first = ModelProducer::init(cluster.clone(), "first");
        let second = ModelProducer::init(cluster.clone(), "second");
        first.begin_transaction().unwrap();
        first.send(&record("out", 0, b"aborted")).unwrap();
        first.abort_transaction(TIMEOUT).unwrap();
        second.begin_transaction().unwrap();
        second.send(&record("out", 0, b"committed")).unwrap();
        first.begin_transaction().unwrap();
        first.send(&record("out", 0, b"open")).unwrap();
        second.commit_transaction(TIMEOUT).unwrap();
        // "committed" sits before the open transaction: visible; "open" is not.
        assert_eq!(values(&cluster, "out"), vec![b"committed".to_vec()]);
        let third = ModelProducer::init(cluster.clone(), "third");
        third.begin_transaction().unwrap();
        third
            .send(&record("out", 0, b"behind the open one"))
            .unwrap();
        third.commit_transaction(TIMEOUT).unwrap();
        // Committed, but past the last stable offset until the open transaction ends.
        assert_eq!(values(&cluster, "out"), vec![b"committed".to_vec()]);
        first.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(
            values(&cluster, "out"),
            vec![
                b"committed".to_vec(),
                b"open".to_vec(),
                b"behind the open one".to_vec()
            ]
        );
        // Markers take offsets: 4 records and 4 markers.
        assert_eq!(cluster.stable_ends("out"), vec![8]);
        // A broken log (as the test brokers are) shows the aborted record too.
        cluster.show_aborted_records();
        assert_eq!(values(&cluster, "out").len(), 4);
    }

    /// Sends a changelog record of `key`, written for input offset `input_offset`.
    fn send_state(producer: &ModelProducer, key: &[u8], input_offset: i64) {
        let value = breadcrumb_state::format::StoredValue::encode(i64::MAX, b"seen");
        let input = breadcrumb_state::format::encode_input_offset(input_offset);
        producer
            .send(&OutRecord {
                topic: "changelog",
                partition: Some(0),
                key: Some(key),
                value: Some(&value),
                headers: &[(INPUT_OFFSET_HEADER, Some(&input[..]))],
                timestamp_ms: None,
                tag: 0,
            })
            .unwrap();
    }

    #[test]
    fn a_restore_reads_past_an_open_transaction_to_the_end_committed_with_the_offsets() {
        use breadcrumb_engine::error::EngineError;
        use breadcrumb_engine::runtime::restore::{
            restore_partition, RestoreMetrics, RestoreTarget,
        };
        use breadcrumb_state::{StateBackend, StateOptions};

        let cluster = Cluster::new();
        cluster.create_topic("changelog", 1);
        // The old owner dies with a transaction open in the changelog (input offset 0)...
        let dead = ModelProducer::init(cluster.clone(), "dead");
        dead.begin_transaction().unwrap();
        send_state(&dead, b"uncommitted", 0);
        // ...and the new owner commits input offsets 0 and 1 with their state behind it:
        // records at 1 and 2, so the changelog ends at 3 as of that commit.
        let owner = ModelProducer::init(cluster.clone(), "owner");
        owner.begin_transaction().unwrap();
        send_state(&owner, b"first", 0);
        send_state(&owner, b"second", 1);
        owner.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(owner.changelog_watermarks("changelog", 0).unwrap(), (0, 0));

        let dir = tempfile::TempDir::new().unwrap();
        let backend =
            StateBackend::open(dir.path(), &["store".to_owned()], &StateOptions::default())
                .unwrap();
        let store = backend.store_id("store").unwrap();
        let metrics = RestoreMetrics {
            applied: prometheus::IntCounter::new("applied", "applied").unwrap(),
            remaining: prometheus::IntGauge::new("remaining", "remaining").unwrap(),
        };
        let target = RestoreTarget {
            store,
            changelog_topic: "changelog",
            partition: 0,
            committed_input: Some(2),
            committed_changelog_end: Some(3),
        };
        let keys = |backend: &StateBackend| {
            let mut keys = Vec::new();
            backend
                .partition_store(store, 0)
                .for_each_committed(|key, _| {
                    keys.push(key.to_vec());
                    Ok(())
                })
                .unwrap();
            keys
        };
        // Without the end, the stable offset looks like the end: nothing is restored, and the
        // committed input offsets would be trusted over a state that lacks both keys.
        let blind = RestoreTarget {
            committed_changelog_end: None,
            ..target
        };
        assert_eq!(
            restore_partition(&owner, &backend, blind, TIMEOUT, &metrics).unwrap(),
            0
        );
        assert!(keys(&backend).is_empty());
        // With it, the restore waits for the open transaction (the model gives up at once).
        assert!(matches!(
            restore_partition(&owner, &backend, target, TIMEOUT, &metrics),
            Err(EngineError::RestoreTimeout { .. })
        ));
        // Once the coordinator has timed it out, the committed records are read.
        assert!(cluster.time_out_transaction("dead"));
        let reached = restore_partition(&owner, &backend, target, TIMEOUT, &metrics).unwrap();
        assert_eq!(reached, 5, "past both markers");
        assert_eq!(keys(&backend), vec![b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(cluster.stats().blocked_restores, 1);
    }

    #[test]
    fn a_new_producer_fences_the_old_one_and_aborts_what_it_left_open() {
        let cluster = Cluster::new();
        cluster.create_topic("out", 1);
        let old = ModelProducer::init(cluster.clone(), "engine-a");
        old.begin_transaction().unwrap();
        old.send(&record("out", 0, b"zombie")).unwrap();
        let new = ModelProducer::init(cluster.clone(), "engine-a");
        assert!(old.send(&record("out", 0, b"more")).is_err());
        assert!(old.commit_transaction(TIMEOUT).is_err());
        new.begin_transaction().unwrap();
        new.send(&record("out", 0, b"new")).unwrap();
        new.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(values(&cluster, "out"), vec![b"new".to_vec()]);
        assert_eq!(cluster.stats().fenced_calls, 2);
        // The coordinator's timeout fences the same way.
        new.begin_transaction().unwrap();
        new.send(&record("out", 0, b"timed out")).unwrap();
        assert!(cluster.time_out_transaction("engine-a"));
        assert!(new.commit_transaction(TIMEOUT).is_err());
        assert_eq!(values(&cluster, "out"), vec![b"new".to_vec()]);
    }

    #[test]
    fn offsets_commit_with_the_transaction_and_a_stale_generation_is_refused() {
        let cluster = Cluster::new();
        cluster.create_topic("in", 1);
        cluster.create_topic("out", 1);
        let member = ModelConsumer::new(cluster.clone(), "a");
        member.generation.set(cluster.rebalance(&["a"]));
        let producer = ModelProducer::init(cluster.clone(), "engine-a");
        producer.begin_transaction().unwrap();
        producer.send(&record("out", 0, b"x")).unwrap();
        let metadata = member.group_metadata().unwrap();
        producer
            .send_offsets_to_transaction(&offsets("in", 0, 5), metadata, TIMEOUT)
            .unwrap();
        // Pending offsets: a new owner's fetch is refused as unstable, not answered stale.
        let mut asked = TopicPartitionList::new();
        asked.add_partition("in", 0);
        assert!(member.committed_offsets(asked.clone(), TIMEOUT).is_err());
        assert_eq!(cluster.committed_offset("in", 0), None);
        producer.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(cluster.committed_offset("in", 0), Some(5));
        let answer = member.committed_offsets(asked, TIMEOUT).unwrap();
        assert_eq!(answer.elements()[0].offset(), Offset::Offset(5));

        // The group moves on without telling this member: its next offsets are refused.
        cluster.rebalance(&["b"]);
        producer.begin_transaction().unwrap();
        producer.send(&record("out", 0, b"zombie")).unwrap();
        let stale = member.group_metadata().unwrap();
        assert!(producer
            .send_offsets_to_transaction(&offsets("in", 0, 9), stale, TIMEOUT)
            .is_err());
        producer.abort_transaction(TIMEOUT).unwrap();
        assert_eq!(cluster.committed_offset("in", 0), Some(5));
        assert_eq!(values(&cluster, "out"), vec![b"x".to_vec()]);
        assert_eq!(cluster.stats().stale_generation_commits, 1);
    }

    #[test]
    fn compaction_keeps_the_last_committed_record_per_key_and_leaves_offset_gaps() {
        let cluster = Cluster::new();
        cluster.create_topic("changelog", 1);
        let producer = ModelProducer::init(cluster.clone(), "engine-a");
        let keyed = |key: &'static [u8], value: Option<&'static [u8]>| OutRecord {
            topic: "changelog",
            partition: Some(0),
            key: Some(key),
            value,
            headers: &[],
            timestamp_ms: None,
            tag: 0,
        };
        producer.begin_transaction().unwrap();
        producer.send(&keyed(b"k1", Some(b"old"))).unwrap();
        producer.send(&keyed(b"k2", Some(b"gone"))).unwrap();
        producer.commit_transaction(TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
        producer.send(&keyed(b"k1", Some(b"aborted"))).unwrap();
        producer.abort_transaction(TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
        producer.send(&keyed(b"k1", Some(b"new"))).unwrap();
        producer.send(&keyed(b"k2", None)).unwrap();
        producer.commit_transaction(TIMEOUT).unwrap();
        producer.begin_transaction().unwrap();
        producer.send(&keyed(b"k3", Some(b"open"))).unwrap();
        let removed = cluster.compact("changelog");
        // Gone: k1 "old", k2 "gone", k1 "aborted" and the three markers before the open one.
        assert_eq!(removed, 6);
        producer.commit_transaction(TIMEOUT).unwrap();
        let read: Vec<(i64, Option<Vec<u8>>)> = cluster
            .read_committed("changelog")
            .into_iter()
            .map(|(_, record)| (record.offset, record.value))
            .collect();
        assert_eq!(
            read,
            vec![
                (5, Some(b"new".to_vec())),
                (6, None),
                (8, Some(b"open".to_vec()))
            ]
        );
        assert_eq!(
            producer.changelog_watermarks("changelog", 0).unwrap(),
            (5, 10)
        );
    }

    #[test]
    fn a_scheduled_crash_unwinds_at_its_step_before_or_after_the_effect() {
        let cluster = Cluster::new();
        cluster.create_topic("out", 1);
        let producer = ModelProducer::init(cluster.clone(), "engine-a");
        producer.begin_transaction().unwrap();
        let steps = cluster.stats().steps;
        // The step after `send`'s effect: the record is in the log, the caller never learns.
        cluster.crash_at(Some(steps + 2));
        let crash = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = producer.send(&record("out", 0, b"landed"));
        }))
        .expect_err("the crash unwinds");
        assert_eq!(crash.downcast_ref::<ModelCrash>().unwrap().step, steps + 2);
        producer.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(values(&cluster, "out"), vec![b"landed".to_vec()]);
        // The step before `send`'s effect: nothing lands.
        producer.begin_transaction().unwrap();
        let steps = cluster.stats().steps;
        cluster.crash_at(Some(steps + 1));
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = producer.send(&record("out", 0, b"never"));
        }))
        .expect_err("the crash unwinds");
        producer.commit_transaction(TIMEOUT).unwrap();
        assert_eq!(values(&cluster, "out"), vec![b"landed".to_vec()]);
    }
}
