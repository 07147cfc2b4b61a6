//! What the lineage operator keeps in its store, and the edge records it generates.
//!
//! Store keys:
//! - `s` + trace id (16 bytes) + span id (8 bytes): a span ([`StoredSpan`]), expiring
//!   `join_window_ms` of stream time after it arrived;
//! - `e` + event id: the event's lineage node ([`Node`]), expiring `event_ttl_ms` of stream time
//!   after it arrived: parent joins and lineage queries read it;
//! - `p` + event id: an event held for its join ([`PendingHeader`], then the
//!   [`breadcrumb_schemas::StoredRecord`] encoding), never expiring: deleted when released;
//! - `m:partition`: the partition's stream time and last input offset.
//!
//! Every payload starts with its own version byte; reading dispatches on it, so a new format adds
//! a decoder and old state stays readable. An unknown version is an error, never a guess.

pub(crate) use crate::persist::corrupt;
use crate::{OperatorError, Result};

pub(crate) const SPAN_TAG: u8 = b's';
pub(crate) const NODE_TAG: u8 = b'e';
pub(crate) const PENDING_TAG: u8 = b'p';

const SPAN_VERSION: u8 = 1;
const NODE_VERSION: u8 = 1;
const PENDING_VERSION: u8 = 1;
const PENDING_HEADER_LEN: usize = 1 + 8 + 8;
const NONE_LEN: u32 = u32::MAX;

/// Why an edge could not be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrphanReason {
    /// The event carries no (valid) `traceparent`.
    NoTraceContext,
    /// No span of the event's trace arrived within the window.
    TraceNotSeen,
    /// Spans of the trace arrived, but not the one that produced the event.
    SpanNotSeen,
    /// The producing span arrived, but not the trace's root span.
    RootSpanNotSeen,
    /// The event named by the causation id did not arrive within the window.
    ParentEventNotSeen,
}

impl OrphanReason {
    pub const ALL: [OrphanReason; 5] = [
        OrphanReason::NoTraceContext,
        OrphanReason::TraceNotSeen,
        OrphanReason::SpanNotSeen,
        OrphanReason::RootSpanNotSeen,
        OrphanReason::ParentEventNotSeen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrphanReason::NoTraceContext => "no_trace_context",
            OrphanReason::TraceNotSeen => "trace_not_seen",
            OrphanReason::SpanNotSeen => "span_not_seen",
            OrphanReason::RootSpanNotSeen => "root_span_not_seen",
            OrphanReason::ParentEventNotSeen => "parent_event_not_seen",
        }
    }

    /// Position in [`OrphanReason::ALL`], for per-reason tables.
    pub fn index(self) -> usize {
        self as usize
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Option<Self>> {
        match code {
            0 => Some(None),
            1..=5 => Some(Some(Self::ALL[code as usize - 1])),
            _ => None,
        }
    }
}

/// How one side of an event's join ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Decided with everything the side needed (or with nothing to wait for).
    Complete,
    /// The join window passed first.
    Window,
    /// The partition's pending budget forced the event out first.
    Overflow,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Complete => "complete",
            Resolution::Window => "window",
            Resolution::Overflow => "overflow",
        }
    }

    fn code(state: Option<Self>) -> u8 {
        match state {
            None => 0,
            Some(Resolution::Complete) => 1,
            Some(Resolution::Window) => 2,
            Some(Resolution::Overflow) => 3,
        }
    }

    fn from_code(code: u8) -> Option<Option<Self>> {
        match code {
            0 => Some(None),
            1 => Some(Some(Resolution::Complete)),
            2 => Some(Some(Resolution::Window)),
            3 => Some(Some(Resolution::Overflow)),
            _ => None,
        }
    }
}

/// Which link an edge record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EdgeKind {
    /// Event → the span that produced it, its service and operation, and the trace's root.
    Span,
    /// Event → its parent event (causation id), with the ancestors above it.
    Parent,
}

impl EdgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EdgeKind::Span => "span",
            EdgeKind::Parent => "parent",
        }
    }
}

/// A span as the store keeps it (the trace and span ids are in the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSpan {
    pub parent_span_id: Option<[u8; 8]>,
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    /// Stream time when the span arrived: it is forgotten `join_window_ms` later.
    pub seen_at_ms: i64,
    pub service: Box<str>,
    pub operation: Box<str>,
}

impl StoredSpan {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(SPAN_VERSION);
        out.push(u8::from(self.parent_span_id.is_some()));
        out.extend_from_slice(&self.parent_span_id.unwrap_or_default());
        out.extend_from_slice(&self.start_time_ms.to_be_bytes());
        out.extend_from_slice(&self.end_time_ms.to_be_bytes());
        out.extend_from_slice(&self.seen_at_ms.to_be_bytes());
        put_str(Some(&self.service), out);
        put_str(Some(&self.operation), out);
    }

    /// Decodes a stored span of any known version.
    pub fn decode(bytes: &[u8], operator: &str) -> Result<Self> {
        let mut reader = Reader::new(bytes, operator);
        match reader.u8()? {
            SPAN_VERSION => {
                let has_parent = reader.u8()? != 0;
                let parent: [u8; 8] = reader.array()?;
                let span = Self {
                    parent_span_id: has_parent.then_some(parent),
                    start_time_ms: reader.i64()?,
                    end_time_ms: reader.i64()?,
                    seen_at_ms: reader.i64()?,
                    service: reader.string()?.unwrap_or_default(),
                    operation: reader.string()?.unwrap_or_default(),
                };
                reader.finish()?;
                Ok(span)
            }
            found => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
        }
    }
}

/// The span side of an event's join: what is known of its producing span and trace root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanSide {
    /// `None` while the event waits.
    pub resolution: Option<Resolution>,
    pub orphan: Option<OrphanReason>,
    pub service: Option<Box<str>>,
    pub operation: Option<Box<str>>,
    pub root_span_id: Option<[u8; 8]>,
    pub root_service: Option<Box<str>>,
}

/// The parent side of an event's join.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ParentSide {
    /// The event has no causation id.
    #[default]
    None,
    /// Waiting for the parent (or for the parent's own parent side, so the chain is complete).
    Pending,
    /// Linked; `orphan` when the parent never arrived.
    Settled {
        resolution: Resolution,
        orphan: bool,
    },
}

impl ParentSide {
    pub fn is_settled(self) -> bool {
        !matches!(self, ParentSide::Pending)
    }
}

/// An event's lineage node: its identity, trace context, causation, and how its joins ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The trace and producing span (the `traceparent`'s parent id), if the event had one.
    pub trace: Option<([u8; 16], [u8; 8])>,
    pub event_type: Box<str>,
    pub source: Box<str>,
    /// The parent event's id; empty for none.
    pub causation_id: Box<str>,
    pub event_time_ms: i64,
    /// Stream time when the event arrived.
    pub seen_at_ms: i64,
    pub span: SpanSide,
    pub parent: ParentSide,
}

impl Node {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(NODE_VERSION);
        let (trace_id, span_id) = self.trace.unwrap_or_default();
        out.push(
            u8::from(self.trace.is_some()) | (u8::from(self.span.root_span_id.is_some()) << 1),
        );
        out.extend_from_slice(&trace_id);
        out.extend_from_slice(&span_id);
        out.extend_from_slice(&self.span.root_span_id.unwrap_or_default());
        out.extend_from_slice(&self.event_time_ms.to_be_bytes());
        out.extend_from_slice(&self.seen_at_ms.to_be_bytes());
        out.push(Resolution::code(self.span.resolution));
        out.push(self.span.orphan.map_or(0, OrphanReason::code));
        let (parent_state, parent_orphan) = match self.parent {
            ParentSide::None => (4, 0),
            ParentSide::Pending => (0, 0),
            ParentSide::Settled { resolution, orphan } => {
                (Resolution::code(Some(resolution)), u8::from(orphan))
            }
        };
        out.push(parent_state);
        out.push(parent_orphan);
        put_str(Some(&self.event_type), out);
        put_str(Some(&self.source), out);
        put_str(Some(&self.causation_id), out);
        put_str(self.span.service.as_deref(), out);
        put_str(self.span.operation.as_deref(), out);
        put_str(self.span.root_service.as_deref(), out);
    }

    /// Decodes a stored node of any known version (public for lineage queries).
    pub fn decode(bytes: &[u8], operator: &str) -> Result<Self> {
        let mut reader = Reader::new(bytes, operator);
        match reader.u8()? {
            NODE_VERSION => {
                let flags = reader.u8()?;
                let trace_id: [u8; 16] = reader.array()?;
                let span_id: [u8; 8] = reader.array()?;
                let root_span_id: [u8; 8] = reader.array()?;
                let event_time_ms = reader.i64()?;
                let seen_at_ms = reader.i64()?;
                let span_resolution = Resolution::from_code(reader.u8()?)
                    .ok_or_else(|| corrupt(operator, "unknown span resolution"))?;
                let span_orphan = OrphanReason::from_code(reader.u8()?)
                    .ok_or_else(|| corrupt(operator, "unknown orphan reason"))?;
                let parent = match (reader.u8()?, reader.u8()?) {
                    (4, _) => ParentSide::None,
                    (0, _) => ParentSide::Pending,
                    (code, orphan) => ParentSide::Settled {
                        resolution: Resolution::from_code(code)
                            .flatten()
                            .ok_or_else(|| corrupt(operator, "unknown parent resolution"))?,
                        orphan: orphan != 0,
                    },
                };
                let node = Self {
                    trace: (flags & 1 != 0).then_some((trace_id, span_id)),
                    event_type: reader.string()?.unwrap_or_default(),
                    source: reader.string()?.unwrap_or_default(),
                    causation_id: reader.string()?.unwrap_or_default(),
                    event_time_ms,
                    seen_at_ms,
                    span: SpanSide {
                        resolution: span_resolution,
                        orphan: span_orphan,
                        service: reader.string()?,
                        operation: reader.string()?,
                        root_span_id: (flags & 2 != 0).then_some(root_span_id),
                        root_service: reader.string()?,
                    },
                    parent,
                };
                reader.finish()?;
                Ok(node)
            }
            found => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
        }
    }
}

/// The header of a held event's payload; the record's encoding follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingHeader {
    pub seen_at_ms: i64,
    pub deadline_ms: i64,
}

impl PendingHeader {
    pub(crate) fn encode(&self, record: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.push(PENDING_VERSION);
        out.extend_from_slice(&self.seen_at_ms.to_be_bytes());
        out.extend_from_slice(&self.deadline_ms.to_be_bytes());
        out.extend_from_slice(record);
    }

    /// Decodes a held payload of any known version into its header and record bytes.
    pub fn decode<'a>(bytes: &'a [u8], operator: &str) -> Result<(Self, &'a [u8])> {
        match bytes.first() {
            Some(&PENDING_VERSION) if bytes.len() > PENDING_HEADER_LEN => Ok((
                Self {
                    seen_at_ms: i64_at(bytes, 1),
                    deadline_ms: i64_at(bytes, 9),
                },
                &bytes[PENDING_HEADER_LEN..],
            )),
            Some(&PENDING_VERSION) | None => Err(corrupt(operator, "held event is truncated")),
            Some(&found) => Err(OperatorError::UnsupportedPayload {
                operator: operator.to_owned(),
                found,
            }),
        }
    }
}

/// Builds `s` + trace id + span id into `out`.
pub(crate) fn span_key(trace_id: &[u8; 16], span_id: &[u8; 8], out: &mut Vec<u8>) {
    out.clear();
    out.push(SPAN_TAG);
    out.extend_from_slice(trace_id);
    out.extend_from_slice(span_id);
}

/// Splits a span's store key (without the tag) into trace and span id.
pub(crate) fn split_span_key(key: &[u8]) -> Option<([u8; 16], [u8; 8])> {
    if key.len() != 24 {
        return None;
    }
    Some((key[..16].try_into().ok()?, key[16..].try_into().ok()?))
}

/// Builds `tag` + event id into `out`.
pub(crate) fn event_key(tag: u8, id: &str, out: &mut Vec<u8>) {
    out.clear();
    out.push(tag);
    out.extend_from_slice(id.as_bytes());
}

fn put_str(text: Option<&str>, out: &mut Vec<u8>) {
    match text {
        Some(text) => {
            out.extend_from_slice(&(text.len() as u32).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        None => out.extend_from_slice(&NONE_LEN.to_be_bytes()),
    }
}

fn i64_at(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(bytes[at..at + 8].try_into().expect("length checked"))
}

/// Reads a payload front to back; running short is a corrupt payload, never a panic.
struct Reader<'a> {
    bytes: &'a [u8],
    operator: &'a str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], operator: &'a str) -> Self {
        Self { bytes, operator }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < len {
            return Err(corrupt(self.operator, "lineage payload is truncated"));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length taken"))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<Option<Box<str>>> {
        let len = u32::from_be_bytes(self.array()?);
        if len == NONE_LEN {
            return Ok(None);
        }
        let bytes = self.take(len as usize)?;
        std::str::from_utf8(bytes)
            .map(|text| Some(text.into()))
            .map_err(|_| corrupt(self.operator, "lineage payload text is not UTF-8"))
    }

    fn finish(&self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(corrupt(self.operator, "lineage payload has trailing bytes"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge records

/// Everything an edge record says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edge<'a> {
    pub pipeline: &'a str,
    pub kind: EdgeKind,
    pub event_id: &'a str,
    pub node: &'a Node,
    /// Parent edges: the ancestors, parent first (empty when the parent never arrived).
    pub ancestors: &'a [std::sync::Arc<str>],
    pub orphan: Option<OrphanReason>,
    pub resolution: Resolution,
    /// Stream time when the edge was decided.
    pub joined_at_ms: i64,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the lower-case hex of `bytes`.
pub(crate) fn write_hex(bytes: &[u8], out: &mut Vec<u8>) {
    out.reserve(2 * bytes.len());
    for byte in bytes {
        out.extend_from_slice(&[HEX[(byte >> 4) as usize], HEX[(byte & 0xf) as usize]]);
    }
}

fn write_json_string(text: &str, out: &mut Vec<u8>) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Runs that need no escape (nearly always the whole text) are copied at once rather than
    // byte by byte: the edge records are written twice per event.
    let mut clean = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..index]);
        clean = index + 1;
        if escaped.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 0xf) as usize]);
        } else {
            out.extend_from_slice(escaped);
        }
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

fn write_field(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn write_opt_str(text: Option<&str>, out: &mut Vec<u8>) {
    match text {
        Some(text) => write_json_string(text, out),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_opt_hex(bytes: Option<&[u8]>, out: &mut Vec<u8>) {
    match bytes {
        Some(bytes) => {
            out.push(b'"');
            write_hex(bytes, out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

impl Edge<'_> {
    /// The edge record's Kafka key: the event id, so an event's edges land on one partition.
    pub(crate) fn write_key(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.event_id.as_bytes());
    }

    /// The edge record's value, JSON (one line; `schemas/avro/lineage-edge.avsc` has the same
    /// fields). The `copy_*` fields are null here: the engine fills them with where the
    /// republished event landed.
    pub(crate) fn write_value(&self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        let node = self.node;
        out.clear();
        out.extend_from_slice(br#"{"type":"breadcrumb.lineage.edge","pipeline":"#);
        write_json_string(self.pipeline, out);
        write_field("edge_kind", out);
        write_json_string(self.kind.as_str(), out);
        write_field("event_id", out);
        write_json_string(self.event_id, out);
        write_field("event_type", out);
        write_json_string(&node.event_type, out);
        write_field("event_source", out);
        write_json_string(&node.source, out);
        out.extend_from_slice(br#","copy_topic":null,"copy_partition":null,"copy_offset":null"#);
        write_field("trace_id", out);
        write_opt_hex(node.trace.as_ref().map(|(trace, _)| &trace[..]), out);
        write_field("span_id", out);
        write_opt_hex(node.trace.as_ref().map(|(_, span)| &span[..]), out);
        write_field("service", out);
        write_opt_str(node.span.service.as_deref(), out);
        write_field("operation", out);
        write_opt_str(node.span.operation.as_deref(), out);
        write_field("root_span_id", out);
        write_opt_hex(node.span.root_span_id.as_ref().map(|id| &id[..]), out);
        write_field("root_service", out);
        write_opt_str(node.span.root_service.as_deref(), out);
        write_field("parent_event_id", out);
        write_opt_str(
            (!node.causation_id.is_empty()).then_some(&*node.causation_id),
            out,
        );
        write_field("ancestor_event_ids", out);
        out.push(b'[');
        for (index, ancestor) in self.ancestors.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(ancestor, out);
        }
        out.push(b']');
        write_field("orphan_reason", out);
        write_opt_str(self.orphan.map(OrphanReason::as_str), out);
        write_field("resolution", out);
        write_json_string(self.resolution.as_str(), out);
        write_field("event_time_ms", out);
        out.extend_from_slice(number.format(node.event_time_ms).as_bytes());
        write_field("joined_at_ms", out);
        out.extend_from_slice(number.format(self.joined_at_ms).as_bytes());
        write_field("waited_ms", out);
        let waited = self.joined_at_ms.saturating_sub(node.seen_at_ms).max(0);
        out.extend_from_slice(number.format(waited).as_bytes());
        out.extend_from_slice(br#","source":{"topic":"#);
        write_json_string(self.source_topic, out);
        write_field("partition", out);
        out.extend_from_slice(number.format(self.source_partition).as_bytes());
        write_field("offset", out);
        out.extend_from_slice(number.format(self.source_offset).as_bytes());
        out.extend_from_slice(b"}}");
    }
}

/// Lower-case hex of an id, as `traceparent` writes it.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

impl Node {
    /// The node as the HTTP query API answers it. A side still waiting has `resolution: null`;
    /// `parent.state` is `none` (no causation id), `pending`, or how the link ended.
    pub fn to_json(&self, event_id: &str) -> serde_json::Value {
        let (trace_id, span_id) = match &self.trace {
            Some((trace, span)) => (Some(hex(trace)), Some(hex(span))),
            None => (None, None),
        };
        let (parent_state, parent_orphan) = match self.parent {
            ParentSide::None => ("none", false),
            ParentSide::Pending => ("pending", false),
            ParentSide::Settled { resolution, orphan } => (resolution.as_str(), orphan),
        };
        serde_json::json!({
            "event_id": event_id,
            "event_type": &*self.event_type,
            "source": &*self.source,
            "event_time_ms": self.event_time_ms,
            "seen_at_ms": self.seen_at_ms,
            "trace_id": trace_id,
            "span_id": span_id,
            "span": {
                "resolution": self.span.resolution.map(Resolution::as_str),
                "orphan": self.span.orphan.map(OrphanReason::as_str),
                "service": self.span.service.as_deref(),
                "operation": self.span.operation.as_deref(),
                "root_span_id": self.span.root_span_id.as_ref().map(|id| hex(id)),
                "root_service": self.span.root_service.as_deref(),
            },
            "parent_event_id": (!self.causation_id.is_empty()).then_some(&*self.causation_id),
            "parent": {
                "state": parent_state,
                "orphan": parent_orphan,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            trace: Some(([7; 16], [9; 8])),
            event_type: "invoice.issued".into(),
            source: "billing".into(),
            causation_id: "pay-1".into(),
            event_time_ms: 1_000,
            seen_at_ms: 1_500,
            span: SpanSide {
                resolution: Some(Resolution::Window),
                orphan: Some(OrphanReason::RootSpanNotSeen),
                service: Some("billing".into()),
                operation: Some("POST /invoices".into()),
                root_span_id: None,
                root_service: None,
            },
            parent: ParentSide::Settled {
                resolution: Resolution::Complete,
                orphan: false,
            },
        }
    }

    #[test]
    fn node_span_pending_and_meta_round_trip_and_reject_unknown_versions() {
        let mut bytes = Vec::new();
        let mut original = node();
        original.encode(&mut bytes);
        assert_eq!(Node::decode(&bytes, "t").unwrap(), original);
        original.trace = None;
        original.parent = ParentSide::Pending;
        original.span = SpanSide {
            root_span_id: Some([3; 8]),
            root_service: Some("gateway".into()),
            ..SpanSide::default()
        };
        original.encode(&mut bytes);
        assert_eq!(Node::decode(&bytes, "t").unwrap(), original);
        assert!(Node::decode(&bytes[..bytes.len() - 1], "t").is_err());
        bytes[0] = 2;
        assert!(matches!(
            Node::decode(&bytes, "t"),
            Err(OperatorError::UnsupportedPayload { found: 2, .. })
        ));

        let span = StoredSpan {
            parent_span_id: Some([1; 8]),
            start_time_ms: -1,
            end_time_ms: 5,
            seen_at_ms: 6,
            service: "orders".into(),
            operation: "".into(),
        };
        span.encode(&mut bytes);
        assert_eq!(StoredSpan::decode(&bytes, "t").unwrap(), span);
        bytes.push(0);
        assert!(StoredSpan::decode(&bytes, "t").is_err());

        let header = PendingHeader {
            seen_at_ms: 3,
            deadline_ms: 4,
        };
        header.encode(b"record", &mut bytes);
        assert_eq!(
            PendingHeader::decode(&bytes, "t").unwrap(),
            (header, &b"record"[..])
        );
        assert!(PendingHeader::decode(&bytes[..PENDING_HEADER_LEN], "t").is_err());

        let mut key = Vec::new();
        span_key(&[1; 16], &[2; 8], &mut key);
        assert_eq!(split_span_key(&key[1..]), Some(([1; 16], [2; 8])));
    }

    #[test]
    fn edge_record_is_one_json_line_with_every_field() {
        let node = node();
        let ancestors: Vec<std::sync::Arc<str>> = vec!["pay-1".into(), "order-\"1\"".into()];
        let edge = Edge {
            pipeline: "orders",
            kind: EdgeKind::Parent,
            event_id: "inv-1",
            node: &node,
            ancestors: &ancestors,
            orphan: None,
            resolution: Resolution::Complete,
            joined_at_ms: 2_000,
            source_topic: "events",
            source_partition: 3,
            source_offset: 42,
        };
        let mut out = Vec::new();
        edge.write_value(&mut out);
        assert!(!out.contains(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "breadcrumb.lineage.edge", "pipeline": "orders", "edge_kind": "parent",
                "event_id": "inv-1", "event_type": "invoice.issued", "event_source": "billing",
                "copy_topic": null, "copy_partition": null, "copy_offset": null,
                "trace_id": "07070707070707070707070707070707", "span_id": "0909090909090909",
                "service": "billing", "operation": "POST /invoices", "root_span_id": null,
                "root_service": null, "parent_event_id": "pay-1",
                "ancestor_event_ids": ["pay-1", "order-\"1\""], "orphan_reason": null,
                "resolution": "complete", "event_time_ms": 1000, "joined_at_ms": 2000,
                "waited_ms": 500,
                "source": {"topic": "events", "partition": 3, "offset": 42}
            })
        );
        edge.write_key(&mut out);
        assert_eq!(out, b"inv-1");
    }
}
