//! The operator lifecycle.

use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::PartitionStore;

use crate::lineage::Span;
use crate::Result;

/// A state store an operator needs, declared before the engine opens RocksDB and creates the
/// changelog topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDeclaration {
    /// Store name, unique within the engine: it names the column family and the changelog topic
    /// (`<application_id>-<name>-changelog`).
    pub name: String,
}

/// Where an operator sends a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// Downstream: the next operator, or the pipeline's output topic.
    Main,
    /// Copies of an event already seen.
    Duplicates,
    /// Copies of an event already seen whose payload differs from the first copy.
    Conflicts,
    /// Events that arrived after their place in the order was given up (a gap was declared).
    Late,
    /// Records an operator generates about the stream itself, such as a gap in a sequence.
    Gaps,
    /// Decision records of tail sampling: one per trace, kept or dropped, and why.
    Decisions,
    /// Lineage edges: which trace, span and parent event each business event came from.
    Lineage,
}

impl Port {
    pub const ALL: [Port; 7] = [
        Port::Main,
        Port::Duplicates,
        Port::Conflicts,
        Port::Late,
        Port::Gaps,
        Port::Decisions,
        Port::Lineage,
    ];

    /// Position in [`Port::ALL`], for per-port tables without hashing.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Main => "main",
            Port::Duplicates => "duplicates",
            Port::Conflicts => "conflicts",
            Port::Late => "late",
            Port::Gaps => "gaps",
            Port::Decisions => "decisions",
            Port::Lineage => "lineage",
        }
    }
}

/// A header an operator adds to a record it emits. Names are static (`breadcrumb-*`) so the
/// hot path never allocates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'static str,
    pub value: &'a [u8],
}

/// Receives what an operator emits while processing one record.
pub trait Emitter {
    /// Emits the record being processed, unchanged, to `port`, with `headers` added after the
    /// original ones.
    fn emit_current(&mut self, port: Port, headers: &[Header<'_>]);

    /// Emits another record to `port`: one the operator held in state and now releases, or one
    /// it generated (a gap record). `headers` are added after the record's own.
    fn emit_record(&mut self, port: Port, record: &RawRecord<'_>, headers: &[Header<'_>]);
}

/// Events an operator holds for a partition, not yet emitted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub events: u64,
    /// Encoded size of the held records.
    pub bytes: u64,
}

/// The kinds of [`Lookup`], for asking an operator whether it answers one before any partition
/// is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupKind {
    LineageEvent,
    DedupeKey,
    SamplingTrace,
}

/// A question about an operator's state (the engine's HTTP query API), answered on the
/// processing thread between records, for one partition at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// An event's lineage node and at most `depth` of its ancestors, parent first.
    LineageEvent { event_id: &'a str, depth: usize },
    /// Dedupe's record of the first copy of an event key: the text of the (single, text) key
    /// field, the event id by default.
    DedupeKey { key: &'a str },
    /// Tail sampling's decision for a trace, or what it holds of it while it is pending.
    SamplingTrace { trace_id: [u8; 16] },
}

impl Lookup<'_> {
    pub fn kind(&self) -> LookupKind {
        match self {
            Lookup::LineageEvent { .. } => LookupKind::LineageEvent,
            Lookup::DedupeKey { .. } => LookupKind::DedupeKey,
            Lookup::SamplingTrace { .. } => LookupKind::SamplingTrace,
        }
    }
}

/// What became of a record an operator was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The record was emitted to one or more ports (or deliberately held in state).
    Handled,
    /// The record lacks what this operator needs; the engine dead-letters it with this reason.
    Rejected {
        reason: &'static str,
        message: &'static str,
    },
}

/// The lifecycle of a stateful operator. Every hook but [`Operator::process`] has a no-op
/// default. Hooks are called for one input partition at a time with that partition's stores, in
/// the order of [`Operator::stores`].
pub trait Operator: Send {
    /// The operator's name in logs and metrics.
    fn name(&self) -> &str;

    /// State stores this operator keeps.
    fn stores(&self) -> Vec<StoreDeclaration> {
        Vec::new()
    }

    /// A partition was assigned and its stores restored: load hot state from them.
    fn open_partition(&mut self, _stores: &mut [PartitionStore]) -> Result<()> {
        Ok(())
    }

    /// Processes one record of the partition the stores belong to.
    fn process(
        &mut self,
        record: &RawRecord<'_>,
        event: &Envelope,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<Disposition>;

    /// The transaction is about to commit: write hot state and expire old entries into the
    /// stores' overlays. `last_input_offset` is the last offset processed for this partition.
    fn checkpoint(
        &mut self,
        _stores: &mut [PartitionStore],
        _last_input_offset: i64,
    ) -> Result<()> {
        Ok(())
    }

    /// The open transaction aborted: overlays were discarded, so hot state must return to what
    /// the committed stores say. The default reloads the partition from scratch.
    fn abort_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        if let Some(first) = stores.first() {
            self.close_partition(first.partition());
        }
        self.open_partition(stores)
    }

    /// A span of the partition's trace side input (OTLP spans re-keyed by trace id next to the
    /// business events). Only operators that join events to spans act on it; spans are never
    /// output of their own, but may release events that waited for them.
    fn process_span(
        &mut self,
        _span: &Span<'_>,
        _stores: &mut [PartitionStore],
        _out: &mut dyn Emitter,
    ) -> Result<()> {
        Ok(())
    }

    /// Processing time moved on (called about once per commit interval for every assigned
    /// partition, inside the open transaction). Only operators with a configured
    /// processing-time timeout act on it; event-time decisions never depend on it.
    fn on_processing_time(
        &mut self,
        _stores: &mut [PartitionStore],
        _now_ms: i64,
        _out: &mut dyn Emitter,
    ) -> Result<()> {
        Ok(())
    }

    /// Events of the partition held in state, not yet emitted (for conservation checks and
    /// metrics). Operators that never hold events keep the default.
    fn waiting(&self, _partition: i32) -> Waiting {
        Waiting::default()
    }

    /// Whether [`Operator::lookup`] answers lookups of `kind`. Asked without a partition, so the
    /// engine knows which pipelines could answer even where it holds none of their partitions.
    fn answers(&self, _kind: LookupKind) -> bool {
        false
    }

    /// Answers `lookup` from the partition's hot state and stores, as a JSON object; `None` when
    /// the partition does not know the key (or the lookup is not for this operator). It runs in
    /// the middle of a transaction and must not change state: no store writes, nothing emitted,
    /// no decision taken (a cache of committed values may fill). Answers include the open
    /// transaction's writes, read through the store's overlay.
    fn lookup(
        &mut self,
        _stores: &mut [PartitionStore],
        _lookup: &Lookup<'_>,
    ) -> Result<Option<serde_json::Value>> {
        Ok(None)
    }

    /// The partition was revoked: drop its hot state.
    fn close_partition(&mut self, _partition: i32) {}

    /// The engine is shutting down.
    fn close(&mut self) {}
}
