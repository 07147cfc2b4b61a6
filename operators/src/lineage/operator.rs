//! The lineage join and its state.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use breadcrumb_schemas::{Envelope, HeaderRef, RawRecord, StoredRecord, StoredRecordView};
use breadcrumb_state::{PartitionStore, StateError, NO_EXPIRY};
use smallvec::SmallVec;

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
    spans: HashMap<SpanId, SpanEntry>,
    /// `(forget at, trace, span)`: spans leave memory in this order (window or budget).
    span_expiry: BTreeSet<(i64, [u8; 16], [u8; 8])>,
    traces: HashMap<[u8; 16], TraceEntry>,
    dirty_spans: Vec<SpanId>,
    /// Spans forgotten for the budget after they were stored: deleted at checkpoint.
    evicted_spans: Vec<SpanId>,
    nodes: HashMap<Arc<str>, NodeEntry>,
    dirty_nodes: Vec<Arc<str>>,
    pending: HashMap<Arc<str>, Pending>,
    pending_bytes: u64,
    /// `(deadline, event id)`: held events give up in this order (window or budget).
    timers: BTreeSet<(i64, Arc<str>)>,
    /// Held events whose span side waits, by trace. May hold stale ids; checked on wake.
    by_trace: HashMap<[u8; 16], Vec<Arc<str>>>,
    /// Held events whose parent side waits, by parent id. May hold stale ids.
    by_parent: HashMap<Arc<str>, Vec<Arc<str>>>,
    /// Held events released since the last checkpoint: their held record is deleted then.
    released: Vec<Arc<str>>,
}

impl PartitionState {
    fn new(meta: PartitionMeta) -> Self {
        Self {
            stream_time_ms: meta.stream_time_ms,
            last_input_offset: meta.last_input_offset,
            persisted: meta,
            spans: HashMap::new(),
            span_expiry: BTreeSet::new(),
            traces: HashMap::new(),
            dirty_spans: Vec::new(),
            evicted_spans: Vec::new(),
            nodes: HashMap::new(),
            dirty_nodes: Vec::new(),
            pending: HashMap::new(),
            pending_bytes: 0,
            timers: BTreeSet::new(),
            by_trace: HashMap::new(),
            by_parent: HashMap::new(),
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
    settled: Vec<Arc<str>>,
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
    partitions: HashMap<i32, PartitionState>,
    scratch: Scratch,
}

impl Lineage {
    /// Builds the operator of pipeline `pipeline_name` from a validated config.
    pub fn new(pipeline_name: &str, config: LineageConfig, metrics: LineageMetrics) -> Self {
        Self {
            shared: Shared {
                pipeline: pipeline_name.to_owned(),
                name: format!("{pipeline_name}.lineage"),
                config,
                metrics,
            },
            store_name: format!("{pipeline_name}-lineage"),
            partitions: HashMap::new(),
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
        let cause = state.nodes[&id].node.causation_id.clone();
        if !cause.is_empty() && depth > 0 {
            let mut chain = std::mem::take(&mut self.scratch.chain);
            state.ancestors(
                &self.shared,
                &mut self.scratch,
                store,
                &cause,
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

    /// What is known now of the span side of an event of `trace`, produced by `span_id`;
    /// `Complete` when both the producing span and the root arrived.
    fn join_span(&self, trace: &[u8; 16], span_id: &[u8; 8]) -> (SpanSide, bool) {
        let producing = self.spans.get(&(*trace, *span_id));
        let root = self.traces.get(trace).and_then(TraceEntry::root);
        let root_span = root.and_then(|root| self.spans.get(&(*trace, root)));
        let side = SpanSide {
            resolution: None,
            orphan: None,
            service: producing.map(|entry| entry.span.service.clone()),
            operation: producing.map(|entry| entry.span.operation.clone()),
            root_span_id: root_span.and(root),
            root_service: root_span.map(|entry| entry.span.service.clone()),
        };
        let complete = producing.is_some() && root_span.is_some();
        (side, complete)
    }

    /// The orphan reason of a span side decided without all it needs.
    fn span_orphan(&self, trace: &[u8; 16], side: &SpanSide) -> Option<OrphanReason> {
        if side.service.is_none() {
            Some(if self.traces.contains_key(trace) {
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

    /// The ancestors of an event whose parent is `first`: the parent, its parent, ... at most
    /// `depth`, stopping at an event not seen and at a cycle.
    fn ancestors(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        store: &mut PartitionStore,
        first: &str,
        depth: usize,
        chain: &mut Vec<Arc<str>>,
    ) -> Result<()> {
        chain.clear();
        let mut next: Box<str> = first.into();
        while chain.len() < depth {
            let Some(id) = self.find_node(shared, scratch, store, &next)? else {
                break;
            };
            chain.push(id.clone());
            let cause = &self.nodes[&id].node.causation_id;
            if cause.is_empty() || chain.iter().any(|seen| **seen == **cause) {
                break;
            }
            next = cause.clone();
        }
        Ok(())
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
        let Some(waiting) = self.by_trace.remove(trace) else {
            return Ok(());
        };
        scratch.woken.clear();
        for id in waiting {
            if let Some(pending) = self.pending.get(&id) {
                scratch.woken.push((pending.deadline_ms, id));
            }
        }
        scratch.woken.sort();
        scratch.woken.dedup();
        let woken = std::mem::take(&mut scratch.woken);
        let mut still = Vec::new();
        for (_, id) in &woken {
            let node = &self.nodes[id].node;
            if node.span.resolution.is_some() {
                continue;
            }
            let (trace_id, span_id) = node.trace.expect("waiting events have a trace");
            let (side, complete) = self.join_span(&trace_id, &span_id);
            if !complete {
                // Keep what is known so far: a later give-up reports it.
                self.nodes.get_mut(id).expect("held").node.span = side;
                still.push(id.clone());
                continue;
            }
            let entry = self.nodes.get_mut(id).expect("held");
            entry.node.span = SpanSide {
                resolution: Some(Resolution::Complete),
                ..side
            };
            self.mark_dirty(id);
            if self.nodes[id].node.parent.is_settled() {
                self.release(shared, scratch, store, id, out)?;
            }
        }
        scratch.woken = woken;
        if !still.is_empty() {
            self.by_trace.insert(*trace, still);
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
            let Some(children) = self.by_parent.remove(&parent) else {
                continue;
            };
            let mut woken: Vec<(i64, Arc<str>)> = children
                .into_iter()
                .filter_map(|id| self.pending.get(&id).map(|held| (held.deadline_ms, id)))
                .collect();
            woken.sort();
            woken.dedup();
            for (_, id) in woken {
                let entry = self.nodes.get_mut(&id).expect("held events have nodes");
                if entry.node.parent.is_settled() {
                    continue;
                }
                entry.node.parent = ParentSide::Settled {
                    resolution: Resolution::Complete,
                    orphan: false,
                };
                self.mark_dirty(&id);
                scratch.settled.push(id.clone());
                if self.nodes[&id].node.span.resolution.is_some() {
                    self.release(shared, scratch, store, &id, out)?;
                }
            }
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
        let node = &self.nodes[id].node;
        if node.span.resolution.is_none() {
            let (trace_id, span_id) = node.trace.expect("waiting events have a trace");
            let (side, _) = self.join_span(&trace_id, &span_id);
            let orphan = self.span_orphan(&trace_id, &side);
            self.nodes.get_mut(id).expect("held").node.span = SpanSide {
                resolution: Some(resolution),
                orphan,
                ..side
            };
        }
        if !self.nodes[id].node.parent.is_settled() {
            let cause = self.nodes[id].node.causation_id.clone();
            let seen = self.find_node(shared, scratch, store, &cause)?.is_some();
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
        let cause = self.nodes[id].node.causation_id.clone();
        let parent = self.nodes[id].node.parent;
        if let ParentSide::Settled { orphan: false, .. } = parent {
            self.ancestors(
                shared,
                scratch,
                store,
                &cause,
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

    fn stores(&self) -> Vec<StoreDeclaration> {
        vec![StoreDeclaration {
            name: self.store_name.clone(),
        }]
    }

    fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        let store = &mut stores[0];
        let meta = PartitionMeta::load(store, &mut self.scratch.payload, &self.shared.name)?;
        let mut state = PartitionState::new(meta);
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
                let (side, complete) = state.join_span(trace_id, span_id);
                SpanSide {
                    resolution: complete.then_some(Resolution::Complete),
                    ..side
                }
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
        state
            .nodes
            .insert(id.clone(), NodeEntry { node, dirty: false });
        state.mark_dirty(&id);
        if !span_waits && parent.is_settled() {
            let node = &state.nodes[&id].node;
            emit_with_headers(node, out, |out, added| out.emit_current(Port::Main, added));
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

fn source_of<'a>(record: &RawRecord<'a>) -> Source<'a> {
    Source {
        topic: record.topic,
        partition: record.partition,
        offset: record.offset,
    }
}
