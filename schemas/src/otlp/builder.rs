//! Encodes trace batches from plain values: for tests, benches and the demo's span generator.
//! (Production spans come from OpenTelemetry SDKs and Collectors; this writes the same wire
//! format for the fields sampling reads, plus a name and attributes.)

use super::wire::{put_bytes_field, put_fixed64_field, put_tag_len, put_varint_field};
use super::TraceId;

/// An attribute value to encode.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// A span to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// `Status.code`: 0 unset, 1 ok, 2 error.
    pub status_code: u8,
    pub attributes: Vec<(String, Value)>,
}

/// A resource (its attributes) with the spans of one instrumentation scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceSpans {
    pub resource: Vec<(String, Value)>,
    pub scope_name: String,
    pub spans: Vec<Span>,
}

fn nested(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut content = Vec::new();
    write(&mut content);
    put_tag_len(out, field, content.len());
    out.extend_from_slice(&content);
}

fn key_values(out: &mut Vec<u8>, field: u32, attributes: &[(String, Value)]) {
    for (key, value) in attributes {
        nested(out, field, |out| {
            put_bytes_field(out, 1, key.as_bytes());
            nested(out, 2, |out| match value {
                Value::Str(text) => put_bytes_field(out, 1, text.as_bytes()),
                Value::Bool(flag) => put_varint_field(out, 2, u64::from(*flag)),
                Value::Int(number) => put_varint_field(out, 3, *number as u64),
                Value::Double(number) => put_fixed64_field(out, 4, number.to_bits()),
            });
        });
    }
}

/// Encodes one span message (its content, without tag).
pub fn encode_span(span: &Span, out: &mut Vec<u8>) {
    put_bytes_field(out, 1, &span.trace_id);
    put_bytes_field(out, 2, &span.span_id);
    if let Some(parent) = &span.parent_span_id {
        put_bytes_field(out, 4, parent);
    }
    put_bytes_field(out, 5, span.name.as_bytes());
    put_varint_field(out, 6, 2);
    put_fixed64_field(out, 7, span.start_time_unix_nano);
    put_fixed64_field(out, 8, span.end_time_unix_nano);
    key_values(out, 9, &span.attributes);
    if span.status_code != 0 {
        nested(out, 15, |out| {
            put_varint_field(out, 3, u64::from(span.status_code))
        });
    }
}

/// Encodes an `ExportTraceServiceRequest`, appended to `out`.
pub fn encode_request(resource_spans: &[ResourceSpans], out: &mut Vec<u8>) {
    for resource in resource_spans {
        nested(out, 1, |out| {
            nested(out, 1, |out| key_values(out, 1, &resource.resource));
            nested(out, 2, |out| {
                nested(out, 1, |out| {
                    put_bytes_field(out, 1, resource.scope_name.as_bytes())
                });
                for span in &resource.spans {
                    nested(out, 2, |out| encode_span(span, out));
                }
            });
        });
    }
}
