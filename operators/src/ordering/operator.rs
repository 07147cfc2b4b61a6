//! The ordering decision and its state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use breadcrumb_schemas::envelope::FieldRef;
use breadcrumb_schemas::{Envelope, HeaderRef, RawRecord, StoredRecord, StoredRecordView};
use breadcrumb_state::{PartitionStore, StateError, NO_EXPIRY};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::config::OrderingConfig;
use super::format::{head_key, held_key, split_held_key, Gap, GapReason, Head, Held, HELD_TAG};
use super::metrics::OrderingMetrics;
use crate::operator::{Disposition, Emitter, Header, Operator, Port, StoreDeclaration, Waiting};
use crate::persist::{corrupt, PartitionMeta, META_KEY};
use crate::{OperatorError, Result};

/// On late events: why the event is late (`gap_declared`, `before_start`, `stale_epoch`,
/// `gap_history_forgotten`).
pub const ORDERING_LATE_REASON_HEADER: &str = "breadcrumb-late-reason";
/// On repeats: what the sequence repeats (`emitted`, or `waiting` for a copy of a held event).
pub const ORDERING_REPEAT_HEADER: &str = "breadcrumb-repeat-of";
/// On late events and repeats: the key's next expected sequence when the event arrived.
pub const ORDERING_NEXT_SEQUENCE_HEADER: &str = "breadcrumb-next-sequence";
/// On gap records: the reason, as in the record's JSON.
pub const ORDERING_GAP_REASON_HEADER: &str = "breadcrumb-gap-reason";

const ENVELOPE_SEQUENCE: &str = "sequence";

// ---------------------------------------------------------------------------------------------
// Hot state

/// Hashes keys with xxh3: they are tagged field bytes, often long, hashed on every record.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, length: usize) {
        self.0 = (self.0 ^ length as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type KeyMap<V> = HashMap<Arc<[u8]>, V, BuildHasherDefault<KeyHasher>>;

/// A key's head as cached: the store holds the same once `dirty` is written.
struct HeadSlot {
    key: Arc<[u8]>,
    head: Head,
    /// Stream time at which the head expires (see [`head_expiry`]).
    expire_at_ms: i64,
    /// Expiry of the head as the store holds it (`i64::MIN`: not stored), so a rewrite with the
    /// same expiry skips the store's expiry-index write.
    stored_expire_at_ms: i64,
    /// Changed since last written to the store.
    dirty: bool,
}

/// Heads of recently used keys, so an in-order event costs a hash lookup rather than a RocksDB
/// read and write. Changes reach the store at checkpoint (one write per changed key per
/// transaction). Bounded: when full at the start of a call, the cache writes its changes to the
/// store and starts empty: a crude eviction that costs nothing per record. With more active
/// keys than the capacity, heads are read again from RocksDB after each reset.
struct HeadCache {
    index: KeyMap<u32>,
    slots: Vec<HeadSlot>,
    dirty: Vec<u32>,
}

impl HeadCache {
    fn new() -> Self {
        Self {
            index: KeyMap::default(),
            slots: Vec::new(),
            dirty: Vec::new(),
        }
    }

    fn get(&self, key: &[u8]) -> Option<u32> {
        self.index.get(key).copied()
    }

    fn push(
        &mut self,
        key: Arc<[u8]>,
        head: Head,
        expire_at_ms: i64,
        stored_expire_at_ms: i64,
        dirty: bool,
    ) -> u32 {
        let slot = self.slots.len() as u32;
        self.index.insert(key.clone(), slot);
        self.slots.push(HeadSlot {
            key,
            head,
            expire_at_ms,
            stored_expire_at_ms,
            dirty,
        });
        if dirty {
            self.dirty.push(slot);
        }
        slot
    }

    /// Records a change of `slot`'s head.
    fn touch(&mut self, slot: u32, expire_at_ms: i64) {
        let entry = &mut self.slots[slot as usize];
        entry.expire_at_ms = expire_at_ms;
        if !entry.dirty {
            entry.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Writes changed heads into the store's overlay.
    fn flush(
        &mut self,
        store: &mut PartitionStore,
        input_offset: i64,
        store_key: &mut Vec<u8>,
        payload: &mut Vec<u8>,
    ) {
        for slot in self.dirty.drain(..) {
            let entry = &mut self.slots[slot as usize];
            entry.dirty = false;
            head_key(&entry.key, store_key);
            entry.head.encode(payload);
            if entry.expire_at_ms == entry.stored_expire_at_ms {
                store.put_same_expiry(store_key, entry.expire_at_ms, payload, input_offset);
            } else {
                store.put(store_key, entry.expire_at_ms, payload, input_offset);
                entry.stored_expire_at_ms = entry.expire_at_ms;
            }
        }
    }

    fn clear(&mut self) {
        debug_assert!(self.dirty.is_empty(), "flush before clearing");
        self.index.clear();
        self.slots.clear();
        self.dirty.clear();
    }
}

/// A held event in memory.
struct HeldEvent {
    held_at_ms: i64,
    /// Encoded size of the record, counted against the partition's budget.
    size: u64,
    /// The record's `StoredRecord` encoding; empty while `current`.
    record: Box<[u8]>,
    /// The record being processed, inserted only to run the overflow policy on it: if it is
    /// released in the same call it is emitted with `emit_current` and never stored.
    current: bool,
}

/// The held events of one key (never empty: a key without held events is removed).
struct KeyWaiting {
    key: Arc<[u8]>,
    held: BTreeMap<u64, HeldEvent>,
    /// Event-time deadline: oldest `held_at_ms` plus `gap_timeout_ms`.
    deadline_ms: i64,
    /// Processing-time deadline, once an `on_processing_time` call saw the key waiting.
    processing_deadline_ms: Option<i64>,
}

impl KeyWaiting {
    fn oldest_held_at_ms(&self) -> i64 {
        self.held
            .values()
            .map(|held| held.held_at_ms)
            .min()
            .unwrap_or(i64::MAX)
    }
}

/// Held events of a partition, and the timers that give up their gaps. Timers are ordered by
/// deadline then key bytes, so timeouts fire in an order that only depends on the input.
#[derive(Default)]
struct WaitingIndex {
    keys: KeyMap<KeyWaiting>,
    timers: BTreeSet<(i64, Arc<[u8]>)>,
    processing_timers: BTreeSet<(i64, Arc<[u8]>)>,
    /// Keys that started waiting since the last `on_processing_time` (processing timeout only).
    unstamped: Vec<Arc<[u8]>>,
    events: u64,
    bytes: u64,
}

impl WaitingIndex {
    /// Updates `key`'s timers after some of its events left; removes the key once empty.
    fn reschedule(&mut self, key: &[u8], gap_timeout_ms: i64) {
        let Some(waiting) = self.keys.get_mut(key) else {
            return;
        };
        if waiting.held.is_empty() {
            let waiting = self.keys.remove(key).expect("present");
            if let Some(deadline) = waiting.processing_deadline_ms {
                self.processing_timers
                    .remove(&(deadline, waiting.key.clone()));
            }
            self.timers.remove(&(waiting.deadline_ms, waiting.key));
            return;
        }
        let deadline = waiting.oldest_held_at_ms().saturating_add(gap_timeout_ms);
        if deadline != waiting.deadline_ms {
            self.timers
                .remove(&(waiting.deadline_ms, waiting.key.clone()));
            self.timers.insert((deadline, waiting.key.clone()));
            waiting.deadline_ms = deadline;
        }
    }
}

/// Hot state of one partition.
struct PartitionState {
    /// Highest event time seen on the partition (`i64::MIN` before the first record).
    stream_time_ms: i64,
    /// Last input offset processed (or committed, after a restore).
    last_input_offset: i64,
    /// As last written to the store, to skip unchanged writes.
    persisted: PartitionMeta,
    heads: HeadCache,
    waiting: WaitingIndex,
}

/// The parts of the operator every partition reads.
struct Shared {
    pipeline: String,
    name: String,
    config: OrderingConfig,
    metrics: OrderingMetrics,
}

/// Reused buffers.
#[derive(Default)]
struct Scratch {
    store_key: Vec<u8>,
    payload: Vec<u8>,
    record: Vec<u8>,
    gap_key: Vec<u8>,
    gap_value: Vec<u8>,
}

/// Coordinates of the record a gap record is attributed to.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

impl<'a> Source<'a> {
    fn of(record: &RawRecord<'a>) -> Self {
        Self {
            topic: record.topic,
            partition: record.partition,
            offset: record.offset,
        }
    }
}

/// The clock that gave up a gap.
#[derive(Debug, Clone, Copy)]
enum Clock {
    Event,
    Processing(i64),
}

// ---------------------------------------------------------------------------------------------
// The operator

/// The ordering operator: per key, events go downstream in sequence order. See
/// [`crate::ordering`] for the policies.
///
/// Decisions on the event-time path depend only on record content and order (the partition's
/// stream time is the highest event time seen), so a replay decides exactly as the first run did.
pub struct Ordering {
    shared: Shared,
    store_name: String,
    partitions: HashMap<i32, PartitionState>,
    /// The current record's ordering key (tagged field bytes).
    key: Vec<u8>,
    scratch: Scratch,
}

impl Ordering {
    /// Builds the operator of pipeline `pipeline_name` from a validated config.
    pub fn new(pipeline_name: &str, config: OrderingConfig, metrics: OrderingMetrics) -> Self {
        Self {
            shared: Shared {
                pipeline: pipeline_name.to_owned(),
                name: format!("{pipeline_name}.ordering"),
                config,
                metrics,
            },
            store_name: format!("{pipeline_name}-ordering"),
            partitions: HashMap::new(),
            key: Vec::with_capacity(64),
            scratch: Scratch::default(),
        }
    }

    /// Name of the operator's store.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Stream time of a partition, if it is open and has seen a record.
    pub fn stream_time_ms(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(|state| state.stream_time_ms)
            .filter(|time| *time != i64::MIN)
    }

    /// The store key of an event's head (decode its payload with [`Head::decode`]), or `None`
    /// when a key field is absent. Heads changed since the last checkpoint are only in memory.
    pub fn head_store_key(&self, event: &Envelope) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        if !build_key(&self.shared.config.key_fields, event, &mut key) {
            return None;
        }
        let mut store_key = Vec::new();
        head_key(&key, &mut store_key);
        Some(store_key)
    }

    /// Key heads cached in memory, over all open partitions.
    pub fn cached_heads(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.heads.slots.len())
            .sum()
    }
}

/// Expiry of a head changed at stream time `now_ms`: `key_ttl_ms` later, rounded up to the next
/// multiple of `key_ttl_ms / 16`.
///
/// The rounding bounds the store's expiry index. Every write of an entry with an expiry adds an
/// index entry `(expiry, key)`, and the one it supersedes is only deleted when it falls due; a
/// head is rewritten at every commit its key is active in, so exact expiries would leave one
/// stale index entry per rewrite for a whole TTL. Rounded, rewrites within one sixteenth of the
/// TTL share their index entry: at most 17 per key, whatever the write rate. A head thus expires
/// between `key_ttl_ms` and `17/16 * key_ttl_ms` after its last change.
pub fn head_expiry(now_ms: i64, key_ttl_ms: i64) -> i64 {
    let bucket = (key_ttl_ms / 16).max(1);
    let exact = now_ms.saturating_add(key_ttl_ms);
    exact
        .div_euclid(bucket)
        .saturating_mul(bucket)
        .saturating_add(bucket)
}

/// Builds the ordering key of `event` into `key`; false when a key field is absent.
fn build_key(key_fields: &[String], event: &Envelope, key: &mut Vec<u8>) -> bool {
    key.clear();
    for field in key_fields {
        match event.field(field) {
            Some(value) => value.append_key_bytes(key),
            None => return false,
        }
    }
    true
}

fn rejected(reason: &'static str, message: &'static str) -> Disposition {
    Disposition::Rejected { reason, message }
}

/// The event's sequence, or the rejection to return.
fn read_sequence(field: &str, event: &Envelope) -> std::result::Result<u64, Disposition> {
    let sequence = if field == ENVELOPE_SEQUENCE {
        event.sequence
    } else {
        match event.field(field) {
            None => None,
            Some(FieldRef::Integer(number)) => Some(
                u64::try_from(number)
                    .map_err(|_| rejected("invalid_field", "the ordering sequence is negative"))?,
            ),
            Some(FieldRef::Text(text)) => Some(text.trim().parse::<u64>().map_err(|_| {
                rejected(
                    "invalid_field",
                    "the ordering sequence is not a non-negative integer",
                )
            })?),
            Some(_) => {
                return Err(rejected(
                    "invalid_field",
                    "the ordering sequence is not an integer",
                ))
            }
        }
    };
    match sequence {
        None => Err(rejected("missing_field", "the ordering sequence is absent")),
        Some(u64::MAX) => Err(rejected(
            "invalid_field",
            "the ordering sequence must be below 2^64 - 1",
        )),
        Some(sequence) => Ok(sequence),
    }
}

/// The event's epoch, or the rejection to return.
fn read_epoch(field: &str, event: &Envelope) -> std::result::Result<i64, Disposition> {
    match event.field(field) {
        None => Err(rejected("missing_field", "the ordering epoch is absent")),
        Some(FieldRef::Integer(number)) => Ok(number),
        Some(FieldRef::Text(text)) => text
            .trim()
            .parse::<i64>()
            .map_err(|_| rejected("invalid_field", "the ordering epoch is not an integer")),
        Some(_) => Err(rejected(
            "invalid_field",
            "the ordering epoch is not an integer",
        )),
    }
}

/// Emits a held record downstream and deletes it from the store (unless it is the record being
/// processed, which was never stored).
// The arguments are disjoint borrows of the operator's fields, taken apart so the store and the
// emitter can be used together; a struct for them would only rename the split.
#[allow(clippy::too_many_arguments)]
fn emit_held(
    held: &HeldEvent,
    key: &[u8],
    sequence: u64,
    store: &mut PartitionStore,
    store_key: &mut Vec<u8>,
    input_offset: i64,
    operator: &str,
    out: &mut dyn Emitter,
) -> Result<()> {
    if held.current {
        out.emit_current(Port::Main, &[]);
        return Ok(());
    }
    let view =
        StoredRecordView::parse(&held.record).map_err(|_| OperatorError::CorruptPayload {
            operator: operator.to_owned(),
            reason: "held record does not decode",
        })?;
    let headers: SmallVec<[HeaderRef<'_>; 8]> = view.headers().collect();
    out.emit_record(Port::Main, &view.as_raw(&headers), &[]);
    // Always a tombstone, even for a record stored in this same transaction: on a broker that
    // shows aborted records to the restore consumer, an aborted transaction's put of this key
    // may be in the changelog, and only the replay's tombstone supersedes it.
    held_key(key, sequence, store_key);
    store.delete(store_key, input_offset);
    Ok(())
}

fn emit_gap(gap: &Gap<'_>, scratch: &mut Scratch, out: &mut dyn Emitter) {
    gap.write_key(&mut scratch.gap_key);
    gap.write_value(&mut scratch.gap_value);
    let record = RawRecord {
        topic: gap.source_topic,
        partition: gap.source_partition,
        offset: gap.source_offset,
        timestamp_ms: Some(gap.declared_at_ms),
        key: Some(&scratch.gap_key),
        value: Some(&scratch.gap_value),
        headers: &[],
    };
    out.emit_record(
        Port::Gaps,
        &record,
        &[Header {
            name: ORDERING_GAP_REASON_HEADER,
            value: gap.reason.as_str().as_bytes(),
        }],
    );
}

impl PartitionState {
    fn new(meta: PartitionMeta) -> Self {
        Self {
            stream_time_ms: meta.stream_time_ms,
            last_input_offset: meta.last_input_offset,
            persisted: meta,
            heads: HeadCache::new(),
            waiting: WaitingIndex::default(),
        }
    }

    fn expire_at(&self, shared: &Shared) -> i64 {
        head_expiry(self.stream_time_ms, shared.config.key_ttl_ms)
    }

    /// Keeps the head cache within its capacity; called at the start of every call that may
    /// add heads, so slot numbers stay valid within a call.
    fn bound_heads(&mut self, shared: &Shared, scratch: &mut Scratch, store: &mut PartitionStore) {
        if self.heads.slots.len() >= shared.config.head_cache_keys_per_partition {
            self.heads.flush(
                store,
                self.last_input_offset,
                &mut scratch.store_key,
                &mut scratch.payload,
            );
            self.heads.clear();
        }
    }

    /// The cached slot of `key`'s live head, read from the store on a miss; `None` when the key
    /// has no head or its head expired. A head with held events never counts as expired.
    fn lookup(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        key: &[u8],
    ) -> Result<Option<u32>> {
        let now = self.stream_time_ms;
        if let Some(slot) = self.heads.get(key) {
            let live = self.heads.slots[slot as usize].expire_at_ms > now
                || self.waiting.keys.contains_key(key);
            return Ok(live.then_some(slot));
        }
        head_key(key, &mut scratch.store_key);
        match store.get(&scratch.store_key, &mut scratch.payload)? {
            Some(expire_at_ms) if expire_at_ms > now || self.waiting.keys.contains_key(key) => {
                let head = Head::decode(&scratch.payload, &shared.name)?;
                let key = self.shared_key(key);
                Ok(Some(self.heads.push(
                    key,
                    head,
                    expire_at_ms,
                    expire_at_ms,
                    false,
                )))
            }
            _ => Ok(None),
        }
    }

    /// An `Arc` of `key`, shared with the waiting index when the key waits.
    fn shared_key(&self, key: &[u8]) -> Arc<[u8]> {
        match self.waiting.keys.get(key) {
            Some(waiting) => waiting.key.clone(),
            None => Arc::from(key),
        }
    }

    /// Starts `key` afresh (a new key, an expired head, or a new epoch).
    fn start_key(&mut self, shared: &Shared, key: &[u8], head: Head) -> u32 {
        let expire_at_ms = self.expire_at(shared);
        match self.heads.get(key) {
            Some(slot) => {
                self.heads.slots[slot as usize].head = head;
                self.heads.touch(slot, expire_at_ms);
                slot
            }
            None => {
                // Whatever the store may hold for the key (an expired head), its expiry is
                // not vouched for: the first write of the new head writes its index entry.
                let key = self.shared_key(key);
                self.heads.push(key, head, expire_at_ms, i64::MIN, true)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_event(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        key: &[u8],
        record: &RawRecord<'_>,
        event: &Envelope,
        sequence: u64,
        epoch: i64,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let config = &shared.config;
        let slot = match self.lookup(shared, scratch, store, key)? {
            Some(slot) => {
                let head_epoch = self.heads.slots[slot as usize].head.epoch;
                if epoch < head_epoch {
                    let next = self.heads.slots[slot as usize].head.next;
                    emit_late(out, "stale_epoch", next);
                    return Ok(());
                }
                if epoch > head_epoch {
                    // The old epoch is over: give up its holes, releasing what it held.
                    while self.waiting.keys.contains_key(key) {
                        self.give_up_gap(
                            shared,
                            scratch,
                            store,
                            key,
                            GapReason::EpochChange,
                            Clock::Event,
                            Some(Source::of(record)),
                            out,
                        )?;
                    }
                    let start = config.first_sequence.unwrap_or(sequence);
                    self.start_key(shared, key, Head::starting(epoch, start))
                } else {
                    slot
                }
            }
            None => {
                let start = config.first_sequence.unwrap_or(sequence);
                self.start_key(shared, key, Head::starting(epoch, start))
            }
        };

        let head = &mut self.heads.slots[slot as usize].head;
        let next = head.next;
        if sequence == next {
            head.next = sequence + 1;
            out.emit_current(Port::Main, &[]);
            let expire_at_ms = self.expire_at(shared);
            self.heads.touch(slot, expire_at_ms);
            if !self.waiting.keys.is_empty() {
                self.release_ready(shared, scratch, store, slot, key, record.offset, out)?;
            }
        } else if sequence < next {
            let reason = if sequence < head.start {
                Some("before_start")
            } else if head.in_gap(sequence) {
                Some("gap_declared")
            } else if head
                .forgotten_through
                .is_some_and(|through| sequence <= through)
            {
                Some("gap_history_forgotten")
            } else {
                None
            };
            match reason {
                Some(reason) => emit_late(out, reason, next),
                None => emit_repeat(out, "emitted", next),
            }
        } else if self
            .waiting
            .keys
            .get(key)
            .is_some_and(|waiting| waiting.held.contains_key(&sequence))
        {
            emit_repeat(out, "waiting", next);
        } else {
            self.hold(
                shared, scratch, store, slot, key, record, event, sequence, epoch, out,
            )?;
        }
        Ok(())
    }

    /// Holds the current record (ahead of its key's next sequence), then enforces the budgets.
    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        slot: u32,
        key: &[u8],
        record: &RawRecord<'_>,
        event: &Envelope,
        sequence: u64,
        epoch: i64,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let config = &shared.config;
        let now = self.stream_time_ms;
        let next = self.heads.slots[slot as usize].head.next;
        shared
            .metrics
            .reorder_depth
            .observe((sequence - next) as f64);
        let size = StoredRecord::encoded_len(record) as u64;
        let expire_at_ms = self.expire_at(shared);
        self.heads.touch(slot, expire_at_ms);

        let waiting = &mut self.waiting;
        if !waiting.keys.contains_key(key) {
            let shared_key = self.heads.slots[slot as usize].key.clone();
            let deadline_ms = now.saturating_add(config.gap_timeout_ms);
            waiting.timers.insert((deadline_ms, shared_key.clone()));
            if config.gap_timeout_processing_ms.is_some() {
                waiting.unstamped.push(shared_key.clone());
                if waiting.unstamped.len() > 2 * waiting.keys.len() + 64 {
                    let keys = &waiting.keys;
                    waiting.unstamped.retain(|key| {
                        keys.get(key)
                            .is_some_and(|entry| entry.processing_deadline_ms.is_none())
                    });
                }
            }
            waiting.keys.insert(
                shared_key.clone(),
                KeyWaiting {
                    key: shared_key,
                    held: BTreeMap::new(),
                    deadline_ms,
                    processing_deadline_ms: None,
                },
            );
        }
        let held_keys = waiting.keys.get_mut(key).expect("inserted above");
        let overflow = held_keys.held.len() >= config.max_waiting_events_per_key
            || waiting.bytes + size > config.max_waiting_bytes_per_partition as u64;
        waiting.events += 1;
        waiting.bytes += size;
        if !overflow {
            scratch.record.clear();
            StoredRecord::encode(record, &mut scratch.record);
            held_keys.held.insert(
                sequence,
                HeldEvent {
                    held_at_ms: now,
                    size,
                    record: scratch.record.as_slice().into(),
                    current: false,
                },
            );
            Self::store_held(
                scratch,
                store,
                key,
                sequence,
                epoch,
                now,
                event,
                record.offset,
            );
            return Ok(());
        }

        // Over budget: the record joins the key's held events, then gaps are given up (this
        // key's while it holds too many, then the longest-waiting keys' while the partition
        // holds too many bytes) until both budgets hold. The record itself may be released.
        held_keys.held.insert(
            sequence,
            HeldEvent {
                held_at_ms: now,
                size,
                record: Box::default(),
                current: true,
            },
        );
        let source = Some(Source::of(record));
        while self
            .waiting
            .keys
            .get(key)
            .is_some_and(|entry| entry.held.len() > config.max_waiting_events_per_key)
        {
            self.give_up_gap(
                shared,
                scratch,
                store,
                key,
                GapReason::Overflow,
                Clock::Event,
                source,
                out,
            )?;
        }
        while self.waiting.bytes > config.max_waiting_bytes_per_partition as u64 {
            let oldest = self
                .waiting
                .timers
                .first()
                .map(|(_, key)| key.clone())
                .ok_or_else(|| corrupt(&shared.name, "held bytes without a waiting key"))?;
            self.give_up_gap(
                shared,
                scratch,
                store,
                &oldest,
                GapReason::Overflow,
                Clock::Event,
                source,
                out,
            )?;
        }
        let still_held = self
            .waiting
            .keys
            .get_mut(key)
            .and_then(|entry| entry.held.get_mut(&sequence))
            .filter(|held| held.current);
        if let Some(held) = still_held {
            scratch.record.clear();
            StoredRecord::encode(record, &mut scratch.record);
            held.record = scratch.record.as_slice().into();
            held.current = false;
            Self::store_held(
                scratch,
                store,
                key,
                sequence,
                epoch,
                now,
                event,
                record.offset,
            );
        }
        Ok(())
    }

    /// Writes the held record in `scratch.record` to the store.
    #[allow(clippy::too_many_arguments)]
    fn store_held(
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        key: &[u8],
        sequence: u64,
        epoch: i64,
        held_at_ms: i64,
        event: &Envelope,
        input_offset: i64,
    ) {
        Held {
            epoch,
            held_at_ms,
            event_time_ms: event.event_time_ms,
        }
        .encode(&scratch.record, &mut scratch.payload);
        held_key(key, sequence, &mut scratch.store_key);
        store.put(
            &scratch.store_key,
            NO_EXPIRY,
            &scratch.payload,
            input_offset,
        );
    }

    /// Emits the held events of `key` that follow its head without a hole, in order.
    #[allow(clippy::too_many_arguments)]
    fn release_ready(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        slot: u32,
        key: &[u8],
        input_offset: i64,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Some(waiting) = self.waiting.keys.get_mut(key) else {
            return Ok(());
        };
        let now = self.stream_time_ms;
        let head = &mut self.heads.slots[slot as usize].head;
        let mut released = false;
        while let Some(entry) = waiting.held.first_entry() {
            let sequence = *entry.key();
            if sequence != head.next {
                break;
            }
            let held = entry.remove();
            head.next = sequence + 1;
            released = true;
            self.waiting.events -= 1;
            self.waiting.bytes -= held.size;
            shared
                .metrics
                .time_in_buffer_seconds
                .observe(now.saturating_sub(held.held_at_ms) as f64 / 1000.0);
            emit_held(
                &held,
                key,
                sequence,
                store,
                &mut scratch.store_key,
                input_offset,
                &shared.name,
                out,
            )?;
        }
        if released {
            let expire_at_ms = self.expire_at(shared);
            self.heads.touch(slot, expire_at_ms);
            self.waiting.reschedule(key, shared.config.gap_timeout_ms);
        }
        Ok(())
    }

    /// Gives up the hole below `key`'s lowest held event: emits a gap record, moves the head
    /// past the hole and releases what follows it.
    #[allow(clippy::too_many_arguments)]
    fn give_up_gap(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        key: &[u8],
        reason: GapReason,
        clock: Clock,
        source: Option<Source<'_>>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let slot = self
            .lookup(shared, scratch, store, key)?
            .ok_or_else(|| corrupt(&shared.name, "a key holds events but has no head"))?;
        let waiting = self
            .waiting
            .keys
            .get(key)
            .ok_or_else(|| corrupt(&shared.name, "no held events to give a gap up for"))?;
        let (&lowest, lowest_held) = waiting.held.first_key_value().expect("never empty");
        let (declared_at_ms, waited_ms) = match clock {
            Clock::Event => (
                self.stream_time_ms,
                self.stream_time_ms - waiting.oldest_held_at_ms(),
            ),
            Clock::Processing(now_ms) => {
                let since = waiting
                    .processing_deadline_ms
                    .zip(shared.config.gap_timeout_processing_ms)
                    .map_or(now_ms, |(deadline, timeout)| deadline - timeout);
                (now_ms, now_ms - since)
            }
        };
        // Without a triggering record, the gap is attributed to the first record it releases.
        let view;
        let source = match source {
            Some(source) => source,
            None => {
                view = StoredRecordView::parse(&lowest_held.record)
                    .map_err(|_| corrupt(&shared.name, "held record does not decode"))?;
                Source {
                    topic: view.topic,
                    partition: view.partition,
                    offset: view.offset,
                }
            }
        };
        let head = &mut self.heads.slots[slot as usize].head;
        debug_assert!(lowest > head.next, "held events are ahead of the head");
        let gap = Gap {
            pipeline: &shared.pipeline,
            key_fields: &shared.config.key_fields,
            key,
            epoch: shared.config.epoch_field.as_ref().map(|_| head.epoch),
            from_sequence: head.next,
            to_sequence: lowest - 1,
            waited_ms,
            reason,
            declared_at_ms,
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
        };
        emit_gap(&gap, scratch, out);
        head.give_up(head.next, lowest - 1, shared.config.max_gap_ranges_per_key);
        head.next = lowest;
        self.release_ready(
            shared,
            scratch,
            store,
            slot,
            key,
            self.last_input_offset,
            out,
        )
    }

    /// Gives up the gaps whose event-time deadline the stream time reached.
    fn fire_event_timers(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        source: Source<'_>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        while let Some((deadline, key)) = self.waiting.timers.first() {
            if *deadline > self.stream_time_ms {
                break;
            }
            let key = key.clone();
            self.give_up_gap(
                shared,
                scratch,
                store,
                &key,
                GapReason::EventTimeTimeout,
                Clock::Event,
                Some(source),
                out,
            )?;
        }
        Ok(())
    }

    /// Starts the processing-time clock of newly waiting keys and gives up the gaps whose
    /// processing-time deadline passed.
    fn fire_processing_timers(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        now_ms: i64,
        timeout_ms: i64,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let waiting = &mut self.waiting;
        for key in waiting.unstamped.drain(..) {
            if let Some(entry) = waiting.keys.get_mut(&key) {
                if entry.processing_deadline_ms.is_none() {
                    let deadline = now_ms.saturating_add(timeout_ms);
                    entry.processing_deadline_ms = Some(deadline);
                    waiting.processing_timers.insert((deadline, key));
                }
            }
        }
        while let Some((deadline, key)) = self.waiting.processing_timers.first() {
            let deadline = *deadline;
            if deadline > now_ms {
                break;
            }
            let key = key.clone();
            self.give_up_gap(
                shared,
                scratch,
                store,
                &key,
                GapReason::ProcessingTimeTimeout,
                Clock::Processing(now_ms),
                None,
                out,
            )?;
            // Still waiting (another hole): its processing-time clock restarts now.
            if let Some(entry) = self.waiting.keys.get_mut(&key) {
                if entry.processing_deadline_ms == Some(deadline) {
                    let restarted = now_ms.saturating_add(timeout_ms);
                    self.waiting
                        .processing_timers
                        .remove(&(deadline, key.clone()));
                    self.waiting.processing_timers.insert((restarted, key));
                    entry.processing_deadline_ms = Some(restarted);
                }
            }
        }
        Ok(())
    }
}

fn emit_late(out: &mut dyn Emitter, reason: &'static str, next: u64) {
    let mut number = itoa::Buffer::new();
    out.emit_current(
        Port::Late,
        &[
            Header {
                name: ORDERING_LATE_REASON_HEADER,
                value: reason.as_bytes(),
            },
            Header {
                name: ORDERING_NEXT_SEQUENCE_HEADER,
                value: number.format(next).as_bytes(),
            },
        ],
    );
}

fn emit_repeat(out: &mut dyn Emitter, of: &'static str, next: u64) {
    let mut number = itoa::Buffer::new();
    out.emit_current(
        Port::Duplicates,
        &[
            Header {
                name: ORDERING_REPEAT_HEADER,
                value: of.as_bytes(),
            },
            Header {
                name: ORDERING_NEXT_SEQUENCE_HEADER,
                value: number.format(next).as_bytes(),
            },
        ],
    );
}

impl Operator for Ordering {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn stores(&self) -> Vec<StoreDeclaration> {
        vec![StoreDeclaration {
            name: self.store_name.clone(),
        }]
    }

    fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        let store = &mut stores[0];
        let meta = PartitionMeta::load(store, &mut self.scratch.payload, &self.shared.name)?;
        let mut state = PartitionState::new(meta);
        let operator = self.shared.name.as_str();
        let waiting = &mut state.waiting;
        let undecodable = |reason: &'static str| StateError::Corrupt {
            store: operator.to_owned(),
            reason,
        };
        store.for_each_committed_with_prefix(&[HELD_TAG], |store_key, value| {
            let (key, sequence) =
                split_held_key(&store_key[1..]).ok_or_else(|| undecodable("short held key"))?;
            let (held, record) = Held::decode(value.payload, operator)
                .map_err(|_| undecodable("undecodable held record"))?;
            StoredRecordView::parse(record).map_err(|_| undecodable("undecodable held record"))?;
            let size = record.len() as u64;
            if !waiting.keys.contains_key(key) {
                let key: Arc<[u8]> = Arc::from(key);
                waiting.keys.insert(
                    key.clone(),
                    KeyWaiting {
                        key,
                        held: BTreeMap::new(),
                        deadline_ms: i64::MAX,
                        processing_deadline_ms: None,
                    },
                );
            }
            let entry = waiting.keys.get_mut(key).expect("inserted above");
            entry.held.insert(
                sequence,
                HeldEvent {
                    held_at_ms: held.held_at_ms,
                    size,
                    record: record.into(),
                    current: false,
                },
            );
            waiting.events += 1;
            waiting.bytes += size;
            Ok(())
        })?;
        let processing = self.shared.config.gap_timeout_processing_ms.is_some();
        for entry in waiting.keys.values_mut() {
            entry.deadline_ms = entry
                .oldest_held_at_ms()
                .saturating_add(self.shared.config.gap_timeout_ms);
            waiting
                .timers
                .insert((entry.deadline_ms, entry.key.clone()));
            if processing {
                waiting.unstamped.push(entry.key.clone());
            }
        }
        self.partitions.insert(store.partition(), state);
        Ok(())
    }

    fn process(
        &mut self,
        record: &RawRecord<'_>,
        event: &Envelope,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<Disposition> {
        let shared = &self.shared;
        if !build_key(&shared.config.key_fields, event, &mut self.key) {
            return Ok(rejected("missing_field", "an ordering key field is absent"));
        }
        let sequence = match read_sequence(&shared.config.sequence_field, event) {
            Ok(sequence) => sequence,
            Err(disposition) => return Ok(disposition),
        };
        let epoch = match &shared.config.epoch_field {
            None => 0,
            Some(field) => match read_epoch(field, event) {
                Ok(epoch) => epoch,
                Err(disposition) => return Ok(disposition),
            },
        };
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Err(OperatorError::PartitionNotOpen {
                operator: shared.name.clone(),
                partition: record.partition,
            });
        };
        let store = &mut stores[0];
        let scratch = &mut self.scratch;
        state.last_input_offset = record.offset;
        state.bound_heads(shared, scratch, store);
        state.stream_time_ms = state.stream_time_ms.max(event.event_time_ms);
        state.on_event(
            shared, scratch, store, &self.key, record, event, sequence, epoch, out,
        )?;
        state.fire_event_timers(shared, scratch, store, Source::of(record), out)?;
        Ok(Disposition::Handled)
    }

    fn checkpoint(&mut self, stores: &mut [PartitionStore], last_input_offset: i64) -> Result<()> {
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(());
        };
        state.last_input_offset = last_input_offset;
        state.heads.flush(
            store,
            last_input_offset,
            &mut self.scratch.store_key,
            &mut self.scratch.payload,
        );
        if state.stream_time_ms == i64::MIN {
            return Ok(());
        }
        let meta = PartitionMeta {
            stream_time_ms: state.stream_time_ms,
            last_input_offset,
        };
        if meta != state.persisted {
            store.put(META_KEY, NO_EXPIRY, &meta.encode(), last_input_offset);
            state.persisted = meta;
        }
        store.expire_due(
            state.stream_time_ms,
            last_input_offset,
            self.shared.config.max_expirations_per_commit,
        )?;
        Ok(())
    }

    fn on_processing_time(
        &mut self,
        stores: &mut [PartitionStore],
        now_ms: i64,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Some(timeout_ms) = self.shared.config.gap_timeout_processing_ms else {
            return Ok(());
        };
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(());
        };
        if state.waiting.keys.is_empty() {
            state.waiting.unstamped.clear();
            return Ok(());
        }
        state.bound_heads(&self.shared, &mut self.scratch, store);
        state.fire_processing_timers(
            &self.shared,
            &mut self.scratch,
            store,
            now_ms,
            timeout_ms,
            out,
        )
    }

    fn waiting(&self, partition: i32) -> Waiting {
        self.partitions
            .get(&partition)
            .map(|state| Waiting {
                events: state.waiting.events,
                bytes: state.waiting.bytes,
            })
            .unwrap_or_default()
    }

    fn close_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn close(&mut self) {
        self.partitions.clear();
    }
}
