//! The lineage join and its state.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use breadcrumb_schemas::{Envelope, HeaderRef, RawRecord, StoredRecord, StoredRecordView};
use breadcrumb_state::{PartitionStore, StateError, NO_EXPIRY};
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::config::LineageConfig;
use super::format::{
    corrupt, event_key, span_key, split_span_key, Edge, EdgeKind, Node, OrphanReason, ParentSide,
    PendingHeader, Resolution, SpanSide, StoredSpan, NODE_TAG, PENDING_TAG, SPAN_TAG,
};
use super::metrics::LineageMetrics;
use crate::operator::{Disposition, Emitter, Header, Operator, Port, StoreDeclaration, Waiting};
use crate::persist::{PartitionMeta, META_KEY};
use crate::{OperatorError, Result};

/// On republished events: the trace id (32 lower-case hex digits).
pub const LINEAGE_TRACE_ID_HEADER: &str = "breadcrumb-lineage-trace-id";
/// On republished events: the service of the span that produced the event, when it arrived.
pub const LINEAGE_SERVICE_HEADER: &str = "breadcrumb-lineage-service";
/// On republished events: the service of the trace's root span, when it arrived.
pub const LINEAGE_ROOT_SERVICE_HEADER: &str = "breadcrumb-lineage-root-service";
/// On republished events: the parent event's id (the causation id).
pub const LINEAGE_PARENT_EVENT_HEADER: &str = "breadcrumb-lineage-parent-event-id";
/// On a second copy of an event id while the first is held: `pending`.
pub const LINEAGE_REPEAT_HEADER: &str = "breadcrumb-repeat-of";

/// A span as the engine hands it over (from an OTLP batch, split per trace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a trace's root span.
    pub parent_span_id: Option<[u8; 8]>,
    /// The resource's `service.name`.
    pub service: &'a str,
    /// The span's name.
    pub operation: &'a str,
    pub start_time_ms: i64,
    /// The span's event time: it advances the partition's stream time.
    pub end_time_ms: i64,
}

/// One event's lineage as a query answers it: the event's node, then its ancestors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineageEntry {
    pub event_id: Box<str>,
    pub node: Node,
}

// ---------------------------------------------------------------------------------------------
// Hot state

/// Hashes the hot maps' keys (event ids, trace and span ids) with xxh3: SipHash was a visible
/// share of the per-record cost, with several lookups per record. Seeded per operator, as the
/// state overlay is, so chosen event ids cannot steer the tables' layout.
#[derive(Clone)]
struct IdHashing {
    seed: u64,
}

impl IdHashing {
    fn new() -> Self {
        Self {
            seed: RandomState::new().hash_one(0x6c69_6e65_6167_6521_u64),
        }
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.seed)
    }
}

struct IdHasher(u64);

impl IdHasher {
    /// Folds a small integer (a length prefix, `str`'s terminator) in without a call to xxh3.
    fn mix(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u8(&mut self, value: u8) {
        self.mix(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.mix(u64::from(value));
    }

    fn write_i32(&mut self, value: i32) {
        self.mix(u64::from(value as u32));
    }

    fn write_usize(&mut self, value: usize) {
        self.mix(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap<K, V> = HashMap<K, V, IdHashing>;

type SpanId = ([u8; 16], [u8; 8]);

struct SpanEntry {
    span: StoredSpan,
    /// Not yet written to the store.
    dirty: bool,
}

/// The spans of a trace present in memory, and its root candidates.
#[derive(Default)]
struct TraceEntry {
    spans: u32,
    /// Parentless spans present; the root is the earliest (start time, span id), so the choice
    /// does not depend on arrival order.
    roots: SmallVec<[(i64, [u8; 8]); 1]>,
}

impl TraceEntry {
    fn root(&self) -> Option<[u8; 8]> {
        self.roots.iter().min().map(|(_, id)| *id)
    }
}

struct NodeEntry {
    node: Node,
    dirty: bool,
}

struct Pending {
    seen_at_ms: i64,
    deadline_ms: i64,
    /// The record's `StoredRecord` encoding.
    record: Box<[u8]>,
    /// Written to the store at a checkpoint.
    persisted: bool,
}

/// Hot state of one partition. Every decision input is either here and persisted at
/// checkpoint (spans, held events and their nodes, stream time) or read from the store (older
/// nodes), so a restore decides exactly as the first run did.
struct PartitionState {
    /// Highest event or span end time seen (`i64::MIN` before the first record).
    stream_time_ms: i64,
    last_input_offset: i64,
    persisted: PartitionMeta,
    spans: IdMap<SpanId, SpanEntry>,
    /// `(forget at, trace, span)`: spans leave memory in this order (window or budget).
    span_expiry: BTreeSet<(i64, [u8; 16], [u8; 8])>,
    traces: IdMap<[u8; 16], TraceEntry>,
    dirty_spans: Vec<SpanId>,
    /// Spans forgotten for the budget after they were stored: deleted at checkpoint.
    evicted_spans: Vec<SpanId>,
    nodes: IdMap<Arc<str>, NodeEntry>,
    dirty_nodes: Vec<Arc<str>>,
    pending: IdMap<Arc<str>, Pending>,
    pending_bytes: u64,
    /// `(deadline, event id)`: held events give up in this order (window or budget).
    timers: BTreeSet<(i64, Arc<str>)>,
    /// Held events whose span side waits, by trace. May hold stale ids; checked on wake.
    by_trace: IdMap<[u8; 16], Vec<Arc<str>>>,
    /// Held events whose parent side waits, by parent id. May hold stale ids.
    by_parent: IdMap<Arc<str>, Vec<Arc<str>>>,
    /// Held events released since the last checkpoint: their held record is deleted then.
    released: Vec<Arc<str>>,
}

impl PartitionState {
    fn new(meta: PartitionMeta, hashing: &IdHashing) -> Self {
        Self {
            stream_time_ms: meta.stream_time_ms,
            last_input_offset: meta.last_input_offset,
            persisted: meta,
            spans: HashMap::with_hasher(hashing.clone()),
            span_expiry: BTreeSet::new(),
            traces: HashMap::with_hasher(hashing.clone()),
            dirty_spans: Vec::new(),
            evicted_spans: Vec::new(),
            nodes: HashMap::with_hasher(hashing.clone()),
            dirty_nodes: Vec::new(),
            pending: HashMap::with_hasher(hashing.clone()),
            pending_bytes: 0,
            timers: BTreeSet::new(),
            by_trace: HashMap::with_hasher(hashing.clone()),
            by_parent: HashMap::with_hasher(hashing.clone()),
            released: Vec::new(),
        }
    }
}

struct Shared {
    pipeline: String,
    name: String,
    config: LineageConfig,
    metrics: LineageMetrics,
}

/// Reused buffers.
#[derive(Default)]
struct Scratch {
    store_key: Vec<u8>,
    payload: Vec<u8>,
    edge_key: Vec<u8>,
    edge_value: Vec<u8>,
    chain: Vec<Arc<str>>,
    woken: Vec<(i64, Arc<str>)>,
    children: Vec<(i64, Arc<str>)>,
    settled: Vec<Arc<str>>,
    /// An event id being looked up while the map holding it is changed.
    next_id: String,
}

/// Coordinates of the input record an event came from.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

// ---------------------------------------------------------------------------------------------
// The operator

/// The lineage operator: joins business events to their producing span, their trace's root and
/// their parent event, and emits lineage edges. See [`crate::lineage`].
pub struct Lineage {
    shared: Shared,
    store_name: String,
    hashing: IdHashing,
    partitions: IdMap<i32, PartitionState>,
    scratch: Scratch,
}

impl Lineage {
    /// Builds the operator of pipeline `pipeline_name` from a validated config.
    pub fn new(pipeline_name: &str, config: LineageConfig, metrics: LineageMetrics) -> Self {
        let hashing = IdHashing::new();
        Self {
            shared: Shared {
                pipeline: pipeline_name.to_owned(),
                name: format!("{pipeline_name}.lineage"),
                config,
                metrics,
            },
            store_name: format!("{pipeline_name}-lineage"),
            partitions: HashMap::with_hasher(hashing.clone()),
            hashing,
            scratch: Scratch::default(),
        }
    }

    /// Name of the operator's store.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// The operator's metric handles.
    pub fn metrics(&self) -> &LineageMetrics {
        &self.shared.metrics
    }

    /// Spans held in memory for a partition.
    pub fn spans_held(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.spans.len())
    }

    /// Processes one span of the partition the stores belong to: events waiting for it are
    /// joined, and released once complete. Spans produce no record of their own; a repeat of a
    /// span already held is ignored.
    pub fn process_span(
        &mut self,
        span: &Span<'_>,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let shared = &self.shared;
        let store = &mut stores[0];
        let partition = store.partition();
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Err(OperatorError::PartitionNotOpen {
                operator: shared.name.clone(),
                partition,
            });
        };
        let scratch = &mut self.scratch;
        state.stream_time_ms = state.stream_time_ms.max(span.end_time_ms);
        let id = (span.trace_id, span.span_id);
        if !state.spans.contains_key(&id) {
            let stored = StoredSpan {
                parent_span_id: span.parent_span_id,
                start_time_ms: span.start_time_ms,
                end_time_ms: span.end_time_ms,
                seen_at_ms: state.stream_time_ms,
                service: span.service.into(),
                operation: span.operation.into(),
            };
            state.insert_span(shared, id, stored, true);
            state.wake_trace(shared, scratch, store, &span.trace_id, out)?;
        }
        state.after_record(shared, scratch, store, out)
    }

    /// An event's lineage: its node, then its ancestors (parent first), at most `depth` of them,
    /// from hot state and the store. `None` when the event is unknown (or expired).
    pub fn query(
        &mut self,
        stores: &mut [PartitionStore],
        event_id: &str,
        depth: usize,
    ) -> Result<Option<Vec<LineageEntry>>> {
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(None);
        };
        let Some(id) = state.find_node(&self.shared, &mut self.scratch, store, event_id)? else {
            return Ok(None);
        };
        let mut entries = vec![LineageEntry {
            event_id: (*id).into(),
            node: state.nodes[&id].node.clone(),
        }];
        if !state.nodes[&id].node.causation_id.is_empty() && depth > 0 {
            let mut chain = std::mem::take(&mut self.scratch.chain);
            state.ancestors(
                &self.shared,
                &mut self.scratch,
                store,
                &id,
                depth,
                &mut chain,
            )?;
            for ancestor in chain.drain(..) {
                entries.push(LineageEntry {
                    event_id: (*ancestor).into(),
                    node: state.nodes[&ancestor].node.clone(),
                });
            }
            self.scratch.chain = chain;
        }
        Ok(Some(entries))
    }
}

fn rejected(reason: &'static str, message: &'static str) -> Disposition {
    Disposition::Rejected { reason, message }
}

impl PartitionState {
    fn insert_span(&mut self, shared: &Shared, id: SpanId, span: StoredSpan, dirty: bool) {
        let forget_at = span.seen_at_ms.saturating_add(shared.config.join_window_ms);
        let trace = self.traces.entry(id.0).or_default();
        trace.spans += 1;
        if span.parent_span_id.is_none() {
            trace.roots.push((span.start_time_ms, id.1));
        }
        self.span_expiry.insert((forget_at, id.0, id.1));
        self.spans.insert(id, SpanEntry { span, dirty });
        if dirty {
            self.dirty_spans.push(id);
        }
    }

    /// Forgets a span (its window passed, or the budget). Returns whether it was stored.
    fn remove_span(&mut self, id: SpanId) -> bool {
        let Some(entry) = self.spans.remove(&id) else {
            return false;
        };
        if let Some(trace) = self.traces.get_mut(&id.0) {
            trace.spans -= 1;
            trace.roots.retain(|(_, root)| *root != id.1);
            if trace.spans == 0 {
                self.traces.remove(&id.0);
            }
        }
        !entry.dirty
    }

    /// Brings event `id`'s node into the hot map if it exists and has not expired; returns the
    /// map's key for it.
    fn find_node(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        id: &str,
    ) -> Result<Option<Arc<str>>> {
        let horizon = self
            .stream_time_ms
            .saturating_sub(shared.config.event_ttl_ms);
        if let Some((key, entry)) = self.nodes.get_key_value(id) {
            return Ok((entry.node.seen_at_ms > horizon).then(|| key.clone()));
        }
        event_key(NODE_TAG, id, &mut scratch.store_key);
        if store
            .get(&scratch.store_key, &mut scratch.payload)?
            .is_none()
        {
            return Ok(None);
        }
        let node = Node::decode(&scratch.payload, &shared.name)?;
        if node.seen_at_ms <= horizon {
            return Ok(None);
        }
        let key: Arc<str> = Arc::from(id);
        self.nodes
            .insert(key.clone(), NodeEntry { node, dirty: false });
        Ok(Some(key))
    }

    /// The ancestors of event `child` (in the hot map): its parent, the parent's parent, ... at
    /// most `depth`, stopping at an event not seen and at a cycle.
    fn ancestors(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        child: &str,
        depth: usize,
        chain: &mut Vec<Arc<str>>,
    ) -> Result<()> {
        chain.clear();
        // The id looked up next, copied out of the map the lookup may change: a reused buffer
        // instead of a string per ancestor.
        let mut next = std::mem::take(&mut scratch.next_id);
        next.clear();
        next.push_str(&self.nodes[child].node.causation_id);
        let mut result = Ok(());
        while chain.len() < depth && !next.is_empty() {
            let id = match self.find_node(shared, scratch, store, &next) {
                Ok(Some(id)) => id,
                Ok(None) => break,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let cause = &self.nodes[&id].node.causation_id;
            chain.push(id.clone());
            if cause.is_empty() || chain.iter().any(|seen| **seen == **cause) {
                break;
            }
            next.clear();
            next.push_str(cause);
        }
        scratch.next_id = next;
        result
    }

    fn mark_dirty(&mut self, id: &Arc<str>) {
        if let Some(entry) = self.nodes.get_mut(id) {
            if !entry.dirty {
                entry.dirty = true;
                self.dirty_nodes.push(id.clone());
            }
        }
    }

    /// Re-examines the held events waiting for spans of `trace`, in deadline order.
    fn wake_trace(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        trace: &[u8; 16],
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Some(mut waiting) = self.by_trace.remove(trace) else {
            return Ok(());
        };
        let mut woken = std::mem::take(&mut scratch.woken);
        woken.clear();
        for id in waiting.drain(..) {
            if let Some(pending) = self.pending.get(&id) {
                woken.push((pending.deadline_ms, id));
            }
        }
        woken.sort();
        woken.dedup();
        // `waiting` is reused for the events still waiting, so a wake allocates nothing.
        for (_, id) in woken.drain(..) {
            let Self {
                spans,
                traces,
                nodes,
                ..
            } = self;
            let node = &mut nodes.get_mut(&id).expect("held").node;
            if node.span.resolution.is_some() {
                continue;
            }
            let (trace_id, span_id) = node.trace.expect("waiting events have a trace");
            // Keeps what is known so far even when incomplete: a later give-up reports it.
            let complete = refresh_span_side(spans, traces, &trace_id, &span_id, &mut node.span);
            node.span.orphan = None;
            if !complete {
                waiting.push(id);
                continue;
            }
            node.span.resolution = Some(Resolution::Complete);
            let settled = node.parent.is_settled();
            self.mark_dirty(&id);
            if settled {
                // On an error the buffer is dropped: the operator is failing anyway.
                self.release(shared, scratch, store, &id, out)?;
            }
        }
        scratch.woken = woken;
        if !waiting.is_empty() {
            self.by_trace.insert(*trace, waiting);
        }
        Ok(())
    }

    /// Wakes the children of events whose parent side just settled (`scratch.settled`), and
    /// theirs in turn.
    fn drain_settled(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        while let Some(parent) = scratch.settled.pop() {
            let Some(mut children) = self.by_parent.remove(&parent) else {
                continue;
            };
            let mut woken = std::mem::take(&mut scratch.children);
            woken.clear();
            woken.extend(
                children
                    .drain(..)
                    .filter_map(|id| self.pending.get(&id).map(|held| (held.deadline_ms, id))),
            );
            woken.sort();
            woken.dedup();
            for (_, id) in woken.drain(..) {
                let entry = self.nodes.get_mut(&id).expect("held events have nodes");
                if entry.node.parent.is_settled() {
                    continue;
                }
                entry.node.parent = ParentSide::Settled {
                    resolution: Resolution::Complete,
                    orphan: false,
                };
                let span_decided = entry.node.span.resolution.is_some();
                self.mark_dirty(&id);
                scratch.settled.push(id.clone());
                if span_decided {
                    self.release(shared, scratch, store, &id, out)?;
                }
            }
            scratch.children = woken;
        }
        Ok(())
    }

    /// Decides what held event `id` still lacks as orphans (or as seen, for a parent that
    /// arrived but is itself still waiting) and releases it.
    fn give_up(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        id: &Arc<str>,
        resolution: Resolution,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Self {
            spans,
            traces,
            nodes,
            ..
        } = self;
        let node = &mut nodes.get_mut(id).expect("held").node;
        if node.span.resolution.is_none() {
            let (trace_id, span_id) = node.trace.expect("waiting events have a trace");
            refresh_span_side(spans, traces, &trace_id, &span_id, &mut node.span);
            node.span.orphan = span_orphan(traces, &trace_id, &node.span);
            node.span.resolution = Some(resolution);
        }
        if !node.parent.is_settled() {
            let mut cause = std::mem::take(&mut scratch.next_id);
            cause.clear();
            cause.push_str(&node.causation_id);
            let seen = self.find_node(shared, scratch, store, &cause);
            scratch.next_id = cause;
            let seen = seen?.is_some();
            self.nodes.get_mut(id).expect("held").node.parent = ParentSide::Settled {
                resolution,
                orphan: !seen,
            };
            scratch.settled.push(id.clone());
        }
        self.mark_dirty(id);
        self.release(shared, scratch, store, id, out)?;
        self.drain_settled(shared, scratch, store, out)
    }

    /// Emits held event `id` downstream with its lineage headers, then its edges.
    fn release(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        id: &Arc<str>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Some(pending) = self.pending.remove(id) else {
            return Ok(());
        };
        self.timers.remove(&(pending.deadline_ms, id.clone()));
        self.pending_bytes -= pending.record.len() as u64;
        self.released.push(id.clone());
        let view = StoredRecordView::parse(&pending.record)
            .map_err(|_| corrupt(&shared.name, "held event does not decode"))?;
        let headers: SmallVec<[HeaderRef<'_>; 8]> = view.headers().collect();
        let source = Source {
            topic: view.topic,
            partition: view.partition,
            offset: view.offset,
        };
        let node = &self.nodes[id].node;
        let raw = view.as_raw(&headers);
        emit_with_headers(node, out, |out, added| {
            out.emit_record(Port::Main, &raw, added)
        });
        shared
            .metrics
            .join_wait_seconds
            .observe(self.stream_time_ms.saturating_sub(pending.seen_at_ms) as f64 / 1000.0);
        self.emit_edges(shared, scratch, store, id, source, out)
    }

    /// Emits the span edge and, with a causation id, the parent edge of event `id`.
    fn emit_edges(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        id: &Arc<str>,
        source: Source<'_>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let mut chain = std::mem::take(&mut scratch.chain);
        chain.clear();
        let parent = self.nodes[id].node.parent;
        if let ParentSide::Settled { orphan: false, .. } = parent {
            self.ancestors(
                shared,
                scratch,
                store,
                id,
                shared.config.max_chain_depth,
                &mut chain,
            )?;
        }
        let node = &self.nodes[id].node;
        let span_resolution = node.span.resolution.unwrap_or(Resolution::Complete);
        let mut edge = Edge {
            pipeline: &shared.pipeline,
            kind: EdgeKind::Span,
            event_id: id,
            node,
            ancestors: &[],
            orphan: node.span.orphan,
            resolution: span_resolution,
            joined_at_ms: self.stream_time_ms,
            source_topic: source.topic,
            source_partition: source.partition,
            source_offset: source.offset,
        };
        emit_edge(&edge, scratch, out);
        count_edge(shared, &edge);
        if let ParentSide::Settled { resolution, orphan } = parent {
            edge.kind = EdgeKind::Parent;
            edge.ancestors = &chain;
            edge.orphan = orphan.then_some(OrphanReason::ParentEventNotSeen);
            edge.resolution = resolution;
            emit_edge(&edge, scratch, out);
            count_edge(shared, &edge);
        }
        scratch.chain = chain;
        Ok(())
    }

    /// After each record: give up what the stream time passed, forget old spans, and keep the
    /// budgets.
    fn after_record(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        while let Some((deadline, id)) = self.timers.first() {
            if *deadline > self.stream_time_ms {
                break;
            }
            let id = id.clone();
            self.give_up(shared, scratch, store, &id, Resolution::Window, out)?;
        }
        let config = &shared.config;
        while self.pending.len() > config.max_pending_events_per_partition
            || self.pending_bytes > config.max_pending_bytes_per_partition as u64
        {
            let Some((_, id)) = self.timers.first() else {
                break;
            };
            let id = id.clone();
            self.give_up(shared, scratch, store, &id, Resolution::Overflow, out)?;
        }
        while let Some(&(forget_at, trace, span)) = self.span_expiry.first() {
            let over_budget = self.spans.len() > config.max_spans_per_partition;
            if forget_at > self.stream_time_ms && !over_budget {
                break;
            }
            self.span_expiry.pop_first();
            let stored = self.remove_span((trace, span));
            if forget_at > self.stream_time_ms {
                shared.metrics.spans_evicted.inc();
                if stored {
                    self.evicted_spans.push((trace, span));
                }
            }
        }
        Ok(())
    }
}

/// Brings `side` up to date with what is known now of the span side of an event of `trace`,
/// produced by `span_id` (its resolution and orphan are the caller's); returns whether both the
/// producing span and the root arrived. Text already right is kept, so a wake that learns
/// nothing new allocates nothing.
fn refresh_span_side(
    spans: &IdMap<SpanId, SpanEntry>,
    traces: &IdMap<[u8; 16], TraceEntry>,
    trace: &[u8; 16],
    span_id: &[u8; 8],
    side: &mut SpanSide,
) -> bool {
    let producing = spans.get(&(*trace, *span_id));
    let root = traces.get(trace).and_then(TraceEntry::root);
    let root_span = root.and_then(|root| spans.get(&(*trace, root)));
    set_text(
        &mut side.service,
        producing.map(|entry| &*entry.span.service),
    );
    set_text(
        &mut side.operation,
        producing.map(|entry| &*entry.span.operation),
    );
    side.root_span_id = root_span.and(root);
    set_text(
        &mut side.root_service,
        root_span.map(|entry| &*entry.span.service),
    );
    producing.is_some() && root_span.is_some()
}

/// The orphan reason of a span side decided without all it needs.
fn span_orphan(
    traces: &IdMap<[u8; 16], TraceEntry>,
    trace: &[u8; 16],
    side: &SpanSide,
) -> Option<OrphanReason> {
    if side.service.is_none() {
        Some(if traces.contains_key(trace) {
            OrphanReason::SpanNotSeen
        } else {
            OrphanReason::TraceNotSeen
        })
    } else if side.root_span_id.is_none() {
        Some(OrphanReason::RootSpanNotSeen)
    } else {
        None
    }
}

fn set_text(slot: &mut Option<Box<str>>, text: Option<&str>) {
    if slot.as_deref() != text {
        *slot = text.map(Box::from);
    }
}

/// Emits through `emit` with the lineage headers `node` can give.
fn emit_with_headers(
    node: &Node,
    out: &mut dyn Emitter,
    emit: impl FnOnce(&mut dyn Emitter, &[Header<'_>]),
) {
    let mut trace_hex = [0u8; 32];
    let mut headers: SmallVec<[Header<'_>; 4]> = SmallVec::new();
    if let Some((trace, _)) = &node.trace {
        // Written into a fixed buffer: no allocation per record.
        for (index, byte) in trace.iter().enumerate() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            trace_hex[2 * index] = DIGITS[(byte >> 4) as usize];
            trace_hex[2 * index + 1] = DIGITS[(byte & 0xf) as usize];
        }
        headers.push(Header {
            name: LINEAGE_TRACE_ID_HEADER,
            value: &trace_hex,
        });
    }
    if let Some(service) = &node.span.service {
        headers.push(Header {
            name: LINEAGE_SERVICE_HEADER,
            value: service.as_bytes(),
        });
    }
    if let Some(root) = &node.span.root_service {
        headers.push(Header {
            name: LINEAGE_ROOT_SERVICE_HEADER,
            value: root.as_bytes(),
        });
    }
    if !node.causation_id.is_empty() {
        headers.push(Header {
            name: LINEAGE_PARENT_EVENT_HEADER,
            value: node.causation_id.as_bytes(),
        });
    }
    emit(out, &headers);
}

fn emit_edge(edge: &Edge<'_>, scratch: &mut Scratch, out: &mut dyn Emitter) {
    edge.write_key(&mut scratch.edge_key);
    edge.write_value(&mut scratch.edge_value);
    let record = RawRecord {
        topic: edge.source_topic,
        partition: edge.source_partition,
        offset: edge.source_offset,
        timestamp_ms: Some(edge.joined_at_ms),
        key: Some(&scratch.edge_key),
        value: Some(&scratch.edge_value),
        headers: &[],
    };
    out.emit_record(Port::Lineage, &record, &[]);
}

fn count_edge(shared: &Shared, edge: &Edge<'_>) {
    let kind = match edge.kind {
        EdgeKind::Span => 0,
        EdgeKind::Parent => 1,
    };
    shared.metrics.edges[kind].inc();
    if let Some(reason) = edge.orphan {
        shared.metrics.orphans[reason.index()].inc();
    }
}

impl Operator for Lineage {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn process_span(
        &mut self,
        span: &Span<'_>,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<()> {
        Lineage::process_span(self, span, stores, out)
    }

    fn stores(&self) -> Vec<StoreDeclaration> {
        vec![StoreDeclaration {
            name: self.store_name.clone(),
        }]
    }

    fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        let store = &mut stores[0];
        let meta = PartitionMeta::load(store, &mut self.scratch.payload, &self.shared.name)?;
        let mut state = PartitionState::new(meta, &self.hashing);
        let shared = &self.shared;
        let operator = shared.name.as_str();
        let undecodable = |reason: &'static str| StateError::Corrupt {
            store: operator.to_owned(),
            reason,
        };
        let mut spans = Vec::new();
        store.for_each_committed_with_prefix(&[SPAN_TAG], |key, value| {
            let id = split_span_key(&key[1..]).ok_or_else(|| undecodable("bad span key"))?;
            let span = StoredSpan::decode(value.payload, operator)
                .map_err(|_| undecodable("undecodable span"))?;
            spans.push((id, span));
            Ok(())
        })?;
        let window = shared.config.join_window_ms;
        for (id, span) in spans {
            // Expired but not yet purged by `expire_due`: as gone as it would have been.
            if span.seen_at_ms.saturating_add(window) > state.stream_time_ms {
                state.insert_span(shared, id, span, false);
            }
        }
        let mut held = Vec::new();
        store.for_each_committed_with_prefix(&[PENDING_TAG], |key, value| {
            let id = std::str::from_utf8(&key[1..])
                .map_err(|_| undecodable("held event id is not UTF-8"))?;
            let (header, record) = PendingHeader::decode(value.payload, operator)
                .map_err(|_| undecodable("undecodable held event"))?;
            StoredRecordView::parse(record).map_err(|_| undecodable("undecodable held event"))?;
            held.push((Arc::<str>::from(id), header, Box::<[u8]>::from(record)));
            Ok(())
        })?;
        for (id, header, record) in held {
            event_key(NODE_TAG, &id, &mut self.scratch.store_key);
            if store
                .get(&self.scratch.store_key, &mut self.scratch.payload)?
                .is_none()
            {
                return Err(corrupt(operator, "a held event has no node"));
            }
            let node = Node::decode(&self.scratch.payload, operator)?;
            if node.span.resolution.is_none() {
                let (trace, _) = node.trace.ok_or_else(|| corrupt(operator, "no trace"))?;
                state.by_trace.entry(trace).or_default().push(id.clone());
            }
            if !node.parent.is_settled() {
                state
                    .by_parent
                    .entry(Arc::from(&*node.causation_id))
                    .or_default()
                    .push(id.clone());
            }
            state.timers.insert((header.deadline_ms, id.clone()));
            state.pending_bytes += record.len() as u64;
            state.pending.insert(
                id.clone(),
                Pending {
                    seen_at_ms: header.seen_at_ms,
                    deadline_ms: header.deadline_ms,
                    record,
                    persisted: true,
                },
            );
            state.nodes.insert(id, NodeEntry { node, dirty: false });
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
        if event.id.is_empty() {
            return Ok(rejected("missing_field", "the event id is absent"));
        }
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Err(OperatorError::PartitionNotOpen {
                operator: shared.name.clone(),
                partition: record.partition,
            });
        };
        let store = &mut stores[0];
        let scratch = &mut self.scratch;
        state.last_input_offset = record.offset;
        state.stream_time_ms = state.stream_time_ms.max(event.event_time_ms);
        if state.pending.contains_key(event.id.as_str()) {
            out.emit_current(
                Port::Duplicates,
                &[Header {
                    name: LINEAGE_REPEAT_HEADER,
                    value: b"pending",
                }],
            );
            state.after_record(shared, scratch, store, out)?;
            return Ok(Disposition::Handled);
        }
        let id: Arc<str> = Arc::from(event.id.as_str());
        let trace = event
            .trace
            .as_ref()
            .map(|context| (context.trace_id, context.span_id));
        let span = match &trace {
            None => SpanSide {
                resolution: Some(Resolution::Complete),
                orphan: Some(OrphanReason::NoTraceContext),
                ..SpanSide::default()
            },
            Some((trace_id, span_id)) => {
                let mut side = SpanSide::default();
                let complete =
                    refresh_span_side(&state.spans, &state.traces, trace_id, span_id, &mut side);
                side.resolution = complete.then_some(Resolution::Complete);
                side
            }
        };
        let parent = if event.causation_id.is_empty() {
            ParentSide::None
        } else if event.causation_id == event.id {
            // An event cannot cause itself: its parent is missing, not waited for.
            ParentSide::Settled {
                resolution: Resolution::Complete,
                orphan: true,
            }
        } else {
            match state.find_node(shared, scratch, store, &event.causation_id)? {
                Some(parent) if state.nodes[&parent].node.parent.is_settled() => {
                    ParentSide::Settled {
                        resolution: Resolution::Complete,
                        orphan: false,
                    }
                }
                _ => ParentSide::Pending,
            }
        };
        let node = Node {
            trace,
            event_type: event.event_type.as_str().into(),
            source: event.source.as_str().into(),
            causation_id: event.causation_id.as_str().into(),
            event_time_ms: event.event_time_ms,
            seen_at_ms: state.stream_time_ms,
            span,
            parent,
        };
        let span_waits = node.span.resolution.is_none();
        let leaves_now = !span_waits && parent.is_settled();
        if leaves_now {
            emit_with_headers(&node, out, |out, added| out.emit_current(Port::Main, added));
        }
        // A new node is dirty: one lookup instead of an insert then `mark_dirty`.
        state
            .nodes
            .insert(id.clone(), NodeEntry { node, dirty: true });
        state.dirty_nodes.push(id.clone());
        if leaves_now {
            shared.metrics.join_wait_seconds.observe(0.0);
            state.emit_edges(shared, scratch, store, &id, source_of(record), out)?;
        } else {
            if let Some((trace_id, _)) = trace.filter(|_| span_waits) {
                state.by_trace.entry(trace_id).or_default().push(id.clone());
            }
            if !parent.is_settled() {
                state
                    .by_parent
                    .entry(Arc::from(event.causation_id.as_str()))
                    .or_default()
                    .push(id.clone());
            }
            let mut bytes = Vec::with_capacity(StoredRecord::encoded_len(record));
            StoredRecord::encode(record, &mut bytes);
            let deadline_ms = state
                .stream_time_ms
                .saturating_add(shared.config.join_window_ms);
            state.pending_bytes += bytes.len() as u64;
            state.timers.insert((deadline_ms, id.clone()));
            state.pending.insert(
                id.clone(),
                Pending {
                    seen_at_ms: state.stream_time_ms,
                    deadline_ms,
                    record: bytes.into_boxed_slice(),
                    persisted: false,
                },
            );
        }
        if parent.is_settled() {
            scratch.settled.push(id);
            state.drain_settled(shared, scratch, store, out)?;
        }
        state.after_record(shared, scratch, store, out)?;
        Ok(Disposition::Handled)
    }

    fn checkpoint(&mut self, stores: &mut [PartitionStore], last_input_offset: i64) -> Result<()> {
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(());
        };
        let shared = &self.shared;
        let scratch = &mut self.scratch;
        let config = &shared.config;
        state.last_input_offset = last_input_offset;
        for id in state.dirty_spans.drain(..) {
            let Some(entry) = state.spans.get_mut(&id) else {
                continue;
            };
            entry.dirty = false;
            span_key(&id.0, &id.1, &mut scratch.store_key);
            entry.span.encode(&mut scratch.payload);
            let expire_at = entry.span.seen_at_ms.saturating_add(config.join_window_ms);
            store.put(
                &scratch.store_key,
                expire_at,
                &scratch.payload,
                last_input_offset,
            );
        }
        for id in state.evicted_spans.drain(..) {
            span_key(&id.0, &id.1, &mut scratch.store_key);
            store.delete(&scratch.store_key, last_input_offset);
        }
        for id in state.dirty_nodes.drain(..) {
            let Some(entry) = state.nodes.get_mut(&id) else {
                continue;
            };
            entry.dirty = false;
            event_key(NODE_TAG, &id, &mut scratch.store_key);
            entry.node.encode(&mut scratch.payload);
            let expire_at = entry.node.seen_at_ms.saturating_add(config.event_ttl_ms);
            store.put(
                &scratch.store_key,
                expire_at,
                &scratch.payload,
                last_input_offset,
            );
        }
        for (id, pending) in state.pending.iter_mut() {
            if pending.persisted {
                continue;
            }
            pending.persisted = true;
            event_key(PENDING_TAG, id, &mut scratch.store_key);
            PendingHeader {
                seen_at_ms: pending.seen_at_ms,
                deadline_ms: pending.deadline_ms,
            }
            .encode(&pending.record, &mut scratch.payload);
            store.put(
                &scratch.store_key,
                NO_EXPIRY,
                &scratch.payload,
                last_input_offset,
            );
        }
        // Always a tombstone, even for an event never stored: an aborted transaction may have
        // put it in the changelog, and only a committed tombstone supersedes that.
        for id in state.released.drain(..) {
            event_key(PENDING_TAG, &id, &mut scratch.store_key);
            store.delete(&scratch.store_key, last_input_offset);
        }
        if state.nodes.len() > config.event_cache_per_partition {
            let pending = &state.pending;
            state.nodes.retain(|id, _| pending.contains_key(id));
        }
        let metrics = &shared.metrics;
        metrics.pending_events.set(state.pending.len() as i64);
        metrics.pending_bytes.set(state.pending_bytes as i64);
        metrics.spans_held.set(state.spans.len() as i64);
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
            config.max_expirations_per_commit,
        )?;
        Ok(())
    }

    fn waiting(&self, partition: i32) -> Waiting {
        self.partitions
            .get(&partition)
            .map(|state| Waiting {
                events: state.pending.len() as u64,
                bytes: state.pending_bytes,
            })
            .unwrap_or_default()
    }

    fn close_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn close(&mut self) {
        self.partitions.clear();
    }

    fn answers(&self, kind: crate::LookupKind) -> bool {
        kind == crate::LookupKind::LineageEvent
    }

    /// `{"event": node, "ancestors": [node, ...]}`, parent first; see [`Node::to_json`].
    fn lookup(
        &mut self,
        stores: &mut [PartitionStore],
        lookup: &crate::Lookup<'_>,
    ) -> Result<Option<serde_json::Value>> {
        let crate::Lookup::LineageEvent { event_id, depth } = *lookup else {
            return Ok(None);
        };
        // `query` only reads: a node it loads joins the hot cache clean, as a record's lookup
        // would, and the checkpoint trims that cache as usual.
        let Some(entries) = self.query(stores, event_id, depth)? else {
            return Ok(None);
        };
        let mut nodes = entries
            .iter()
            .map(|entry| entry.node.to_json(&entry.event_id));
        let event = nodes.next().unwrap_or_default();
        Ok(Some(serde_json::json!({
            "event": event,
            "ancestors": nodes.collect::<Vec<_>>(),
        })))
    }
}

/// Where the event entered breadcrumb (behind the repartition topic, its source headers).
fn source_of<'a>(record: &RawRecord<'a>) -> Source<'a> {
    let (topic, partition, offset) = record.origin();
    Source {
        topic,
        partition,
        offset,
    }
}
