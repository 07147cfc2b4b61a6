//! OTLP trace batches (`ExportTraceServiceRequest`) at the protobuf wire level.
//!
//! Tail sampling only needs a few fields of each span (trace id, parent, times, status, and the
//! attributes a policy names) and must republish spans byte for byte, so batches are walked in
//! place rather than decoded into owned messages: [`parse_request`] records where each span,
//! scope and resource lies in the value, [`encode_fragment`] writes a valid
//! `ExportTraceServiceRequest` holding a chosen subset of spans with their resource and scope,
//! and [`attributes`] iterates a resource's or span's attributes without allocating.
//!
//! Field numbers follow `opentelemetry/proto/collector/trace/v1/trace_service.proto` and
//! `opentelemetry/proto/trace/v1/trace.proto` (v1.x). Unknown fields are skipped when reading and
//! carried over verbatim inside the spans, resources and scopes copied out.
//!
//! [`json`] converts the OTLP/JSON encoding (the Collector's `otlp_json`) into the protobuf
//! encoding, so both input formats share this walker.

pub mod builder;
pub mod json;
pub mod wire;

use std::ops::Range;

pub use wire::{WireError, WireReader, WireValue};

/// Length of a trace id.
pub const TRACE_ID_LEN: usize = 16;

/// A trace id.
pub type TraceId = [u8; TRACE_ID_LEN];

/// Span status codes (`Status.code`).
pub const STATUS_UNSET: u8 = 0;
pub const STATUS_OK: u8 = 1;
pub const STATUS_ERROR: u8 = 2;

/// A `ResourceSpans` of the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRef {
    /// Content of its `resource` field, if present.
    pub resource: Option<Range<usize>>,
    /// Content of its `schema_url` field, if present.
    pub schema_url: Option<Range<usize>>,
}

/// A `ScopeSpans` of the batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRef {
    /// Index of its `ResourceSpans` in [`Batch::resources`].
    pub resource: u32,
    /// Content of its `scope` field, if present.
    pub scope: Option<Range<usize>>,
    /// Content of its `schema_url` field, if present.
    pub schema_url: Option<Range<usize>>,
}

/// A span of the batch, with the fields sampling decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRef {
    /// Index of its `ScopeSpans` in [`Batch::scopes`].
    pub scope: u32,
    /// Content of the span message in the value.
    pub content: Range<usize>,
    pub trace_id: TraceId,
    /// Whether the span has a parent (a non-empty `parent_span_id`); a span without one is a
    /// trace's root.
    pub has_parent: bool,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `Status.code`: [`STATUS_UNSET`], [`STATUS_OK`] or [`STATUS_ERROR`] (other values read as
    /// unset).
    pub status_code: u8,
}

/// Where the parts of one `ExportTraceServiceRequest` lie in its value. Reused between batches:
/// [`parse_request`] clears it first and keeps its capacity.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub resources: Vec<ResourceRef>,
    pub scopes: Vec<ScopeRef>,
    pub spans: Vec<SpanRef>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.resources.clear();
        self.scopes.clear();
        self.spans.clear();
    }
}

/// Why a batch was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// The value is not a well-formed protobuf message of the expected shape.
    Wire(WireError),
    /// A span's trace id is not 16 bytes, or is all zeros (invalid per the OTLP specification).
    InvalidTraceId,
}

impl BatchError {
    /// A message for the dead-letter header; never contains payload bytes.
    pub fn message(self) -> &'static str {
        match self {
            BatchError::Wire(error) => error.message(),
            BatchError::InvalidTraceId => "a span's trace id is not 16 bytes or is all zeros",
        }
    }
}

impl From<WireError> for BatchError {
    fn from(error: WireError) -> Self {
        BatchError::Wire(error)
    }
}

fn offset_range(value: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - value.as_ptr() as usize;
    start..start + part.len()
}

/// Walks `value` as an `ExportTraceServiceRequest` into `out`. Every span must carry a valid
/// trace id; nothing of a rejected batch should be used.
pub fn parse_request(value: &[u8], out: &mut Batch) -> Result<(), BatchError> {
    out.clear();
    let mut request = WireReader::new(value);
    while let Some((field, item)) = request.next_field()? {
        if field != 1 {
            continue;
        }
        let resource_spans = item.bytes()?;
        let resource_index = out.resources.len() as u32;
        out.resources.push(ResourceRef::default());
        let mut reader = WireReader::new(resource_spans);
        while let Some((field, item)) = reader.next_field()? {
            match field {
                1 => {
                    let resource = item.bytes()?;
                    // Validated now so that attribute scans later cannot fail.
                    validate_attributes(resource, 1)?;
                    out.resources[resource_index as usize].resource =
                        Some(offset_range(value, resource));
                }
                2 => parse_scope_spans(value, item.bytes()?, resource_index, out)?,
                3 => {
                    out.resources[resource_index as usize].schema_url =
                        Some(offset_range(value, item.bytes()?))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn parse_scope_spans(
    value: &[u8],
    scope_spans: &[u8],
    resource: u32,
    out: &mut Batch,
) -> Result<(), BatchError> {
    let scope_index = out.scopes.len() as u32;
    out.scopes.push(ScopeRef {
        resource,
        scope: None,
        schema_url: None,
    });
    let mut reader = WireReader::new(scope_spans);
    while let Some((field, item)) = reader.next_field()? {
        match field {
            1 => out.scopes[scope_index as usize].scope = Some(offset_range(value, item.bytes()?)),
            2 => {
                let span = item.bytes()?;
                let parsed = parse_span(value, span, scope_index)?;
                out.spans.push(parsed);
            }
            3 => {
                out.scopes[scope_index as usize].schema_url =
                    Some(offset_range(value, item.bytes()?))
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_span(value: &[u8], span: &[u8], scope: u32) -> Result<SpanRef, BatchError> {
    let mut parsed = SpanRef {
        scope,
        content: offset_range(value, span),
        trace_id: [0; TRACE_ID_LEN],
        has_parent: false,
        start_time_unix_nano: 0,
        end_time_unix_nano: 0,
        status_code: STATUS_UNSET,
    };
    let mut trace_id_seen = false;
    let mut reader = WireReader::new(span);
    while let Some((field, item)) = reader.next_field()? {
        match field {
            1 => {
                let id = item.bytes()?;
                if id.len() != TRACE_ID_LEN {
                    return Err(BatchError::InvalidTraceId);
                }
                parsed.trace_id.copy_from_slice(id);
                trace_id_seen = true;
            }
            4 => parsed.has_parent = !item.bytes()?.is_empty(),
            7 => parsed.start_time_unix_nano = item.fixed64()?,
            8 => parsed.end_time_unix_nano = item.fixed64()?,
            9 => validate_key_value(item.bytes()?)?,
            15 => {
                let mut status = WireReader::new(item.bytes()?);
                while let Some((field, item)) = status.next_field()? {
                    if field == 3 {
                        parsed.status_code = match item.varint()? {
                            1 => STATUS_OK,
                            2 => STATUS_ERROR,
                            _ => STATUS_UNSET,
                        };
                    }
                }
            }
            _ => {}
        }
    }
    if !trace_id_seen || parsed.trace_id == [0; TRACE_ID_LEN] {
        return Err(BatchError::InvalidTraceId);
    }
    Ok(parsed)
}

/// Checks the `KeyValue` fields numbered `field` of a message, so that [`attributes`] over it
/// never meets malformed input.
fn validate_attributes(message: &[u8], field: u32) -> Result<(), WireError> {
    let mut reader = WireReader::new(message);
    while let Some((number, item)) = reader.next_field()? {
        if number == field {
            validate_key_value(item.bytes()?)?;
        }
    }
    Ok(())
}

fn validate_key_value(key_value: &[u8]) -> Result<(), WireError> {
    let mut reader = WireReader::new(key_value);
    while let Some((field, item)) = reader.next_field()? {
        match field {
            1 => {
                std::str::from_utf8(item.bytes()?).map_err(|_| WireError::InvalidUtf8)?;
            }
            2 => {
                let mut any = WireReader::new(item.bytes()?);
                while let Some((field, item)) = any.next_field()? {
                    match field {
                        1 => {
                            std::str::from_utf8(item.bytes()?)
                                .map_err(|_| WireError::InvalidUtf8)?;
                        }
                        2 | 3 => {
                            item.varint()?;
                        }
                        4 => {
                            item.fixed64()?;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An attribute value, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeValue<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Arrays, key-value lists, bytes, or no value.
    Other,
}

/// The attributes of a span (`content` of a [`SpanRef`]) or a resource ([`ResourceRef::resource`])
/// of a batch [`parse_request`] accepted: `(key, value)` pairs in order.
pub fn attributes(message: &[u8], field: u32) -> impl Iterator<Item = (&str, AttributeValue<'_>)> {
    let mut reader = WireReader::new(message);
    std::iter::from_fn(move || loop {
        let (number, item) = reader.next_field().ok()??;
        if number != field {
            continue;
        }
        let Ok(key_value) = item.bytes() else {
            continue;
        };
        return Some(read_key_value(key_value));
    })
}

/// Field number of `attributes` in a `Span`.
pub const SPAN_ATTRIBUTES: u32 = 9;
/// Field number of `attributes` in a `Resource`.
pub const RESOURCE_ATTRIBUTES: u32 = 1;

fn read_key_value(key_value: &[u8]) -> (&str, AttributeValue<'_>) {
    let mut key = "";
    let mut value = AttributeValue::Other;
    let mut reader = WireReader::new(key_value);
    while let Ok(Some((field, item))) = reader.next_field() {
        match field {
            1 => {
                key = item
                    .bytes()
                    .ok()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .unwrap_or("")
            }
            2 => {
                value = AttributeValue::Other;
                let Ok(any) = item.bytes() else { continue };
                let mut any = WireReader::new(any);
                while let Ok(Some((field, item))) = any.next_field() {
                    value = match (field, item) {
                        (1, WireValue::Bytes(bytes)) => std::str::from_utf8(bytes)
                            .map_or(AttributeValue::Other, AttributeValue::Str),
                        (2, WireValue::Varint(flag)) => AttributeValue::Bool(flag != 0),
                        (3, WireValue::Varint(number)) => AttributeValue::Int(number as i64),
                        (4, WireValue::Fixed64(bits)) => {
                            AttributeValue::Double(f64::from_bits(bits))
                        }
                        _ => AttributeValue::Other,
                    };
                }
            }
            _ => {}
        }
    }
    (key, value)
}

/// What lineage needs of a span beyond [`SpanRef`]: its id, its parent's and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIdentity<'a> {
    pub span_id: [u8; 8],
    /// `None` for a root span (an absent or empty `parent_span_id`).
    pub parent_span_id: Option<[u8; 8]>,
    /// The span's `name` (its operation); empty when absent or not UTF-8.
    pub name: &'a str,
}

/// Reads the identity fields of a span message (`content` of a [`SpanRef`] of a batch
/// [`parse_request`] accepted). `None` when its span id is not 8 bytes, or its parent id is
/// neither empty nor 8 bytes: such a span cannot be joined to anything.
pub fn span_identity(span: &[u8]) -> Option<SpanIdentity<'_>> {
    let mut span_id = None;
    let mut parent_span_id = None;
    let mut name = "";
    let mut reader = WireReader::new(span);
    while let Ok(Some((field, item))) = reader.next_field() {
        match field {
            2 => span_id = Some(<[u8; 8]>::try_from(item.bytes().ok()?).ok()?),
            4 => {
                let parent = item.bytes().ok()?;
                parent_span_id = if parent.is_empty() {
                    None
                } else {
                    Some(<[u8; 8]>::try_from(parent).ok()?)
                };
            }
            5 => {
                name = item
                    .bytes()
                    .ok()
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
                    .unwrap_or("")
            }
            _ => {}
        }
    }
    Some(SpanIdentity {
        span_id: span_id?,
        parent_span_id,
        name,
    })
}

/// The `service.name` attribute of a resource ([`ResourceRef::resource`]), if it is a string.
pub fn service_name(resource: &[u8]) -> Option<&str> {
    attributes(resource, RESOURCE_ATTRIBUTES).find_map(|(key, value)| match (key, value) {
        ("service.name", AttributeValue::Str(name)) => Some(name),
        _ => None,
    })
}

/// Encodes an `ExportTraceServiceRequest` holding `spans` (indices into `batch.spans`, grouped
/// so that spans of one scope are adjacent and scopes of one resource are adjacent, e.g. in
/// batch order) with their resources and scopes, appending it to `out`. The result is a valid
/// request on its own, and so is the concatenation of several: protobuf repeated fields
/// concatenate.
pub fn encode_fragment(value: &[u8], batch: &Batch, spans: &[u32], out: &mut Vec<u8>) {
    let mut position = 0;
    while position < spans.len() {
        let resource = batch.scopes[batch.spans[spans[position] as usize].scope as usize].resource;
        let end = position
            + spans[position..]
                .iter()
                .take_while(|&&span| {
                    batch.scopes[batch.spans[span as usize].scope as usize].resource == resource
                })
                .count();
        encode_resource_spans(value, batch, resource, &spans[position..end], out);
        position = end;
    }
}

fn field_len(content: usize) -> usize {
    1 + wire::varint_len(content as u64) + content
}

fn optional_len(range: &Option<Range<usize>>) -> usize {
    range.as_ref().map_or(0, |range| field_len(range.len()))
}

fn scope_groups<'b>(batch: &'b Batch, spans: &'b [u32]) -> impl Iterator<Item = &'b [u32]> + 'b {
    let mut rest = spans;
    std::iter::from_fn(move || {
        let first = *rest.first()?;
        let scope = batch.spans[first as usize].scope;
        let count = rest
            .iter()
            .take_while(|&&span| batch.spans[span as usize].scope == scope)
            .count();
        let (group, tail) = rest.split_at(count);
        rest = tail;
        Some(group)
    })
}

fn scope_spans_len(batch: &Batch, group: &[u32]) -> usize {
    let scope = &batch.scopes[batch.spans[group[0] as usize].scope as usize];
    optional_len(&scope.scope)
        + group
            .iter()
            .map(|&span| field_len(batch.spans[span as usize].content.len()))
            .sum::<usize>()
        + optional_len(&scope.schema_url)
}

fn encode_resource_spans(
    value: &[u8],
    batch: &Batch,
    resource: u32,
    spans: &[u32],
    out: &mut Vec<u8>,
) {
    let resource_ref = &batch.resources[resource as usize];
    let content = optional_len(&resource_ref.resource)
        + scope_groups(batch, spans)
            .map(|group| field_len(scope_spans_len(batch, group)))
            .sum::<usize>()
        + optional_len(&resource_ref.schema_url);
    wire::put_tag_len(out, 1, content);
    if let Some(range) = &resource_ref.resource {
        wire::put_bytes_field(out, 1, &value[range.clone()]);
    }
    for group in scope_groups(batch, spans) {
        let scope = &batch.scopes[batch.spans[group[0] as usize].scope as usize];
        wire::put_tag_len(out, 2, scope_spans_len(batch, group));
        if let Some(range) = &scope.scope {
            wire::put_bytes_field(out, 1, &value[range.clone()]);
        }
        for &span in group {
            wire::put_bytes_field(out, 2, &value[batch.spans[span as usize].content.clone()]);
        }
        if let Some(range) = &scope.schema_url {
            wire::put_bytes_field(out, 3, &value[range.clone()]);
        }
    }
    if let Some(range) = &resource_ref.schema_url {
        wire::put_bytes_field(out, 3, &value[range.clone()]);
    }
}

/// Lower-case hex of a trace id.
pub fn trace_id_hex(trace_id: &TraceId) -> [u8; 2 * TRACE_ID_LEN] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 2 * TRACE_ID_LEN];
    for (index, byte) in trace_id.iter().enumerate() {
        out[2 * index] = DIGITS[(byte >> 4) as usize];
        out[2 * index + 1] = DIGITS[(byte & 0xf) as usize];
    }
    out
}

#[cfg(test)]
mod tests;
