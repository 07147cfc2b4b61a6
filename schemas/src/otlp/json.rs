//! OTLP/JSON (the Collector's `otlp_json` Kafka encoding) to the protobuf encoding.
//!
//! Follows the OTLP/HTTP JSON mapping: lowerCamelCase keys, trace and span ids as hex strings,
//! 64-bit integers as decimal strings (numbers accepted too), enums as integers (their names
//! accepted too), bytes values as base64. Unknown keys are ignored, as the specification asks
//! of receivers.

use serde_json::{Map, Value};

use super::wire::{
    put_bytes_field, put_fixed32_field, put_fixed64_field, put_tag_len, put_varint_field,
};

/// Why an OTLP/JSON value could not be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all.
    Syntax,
    /// JSON, but a field has the wrong type or an unreadable value.
    Shape(&'static str),
}

impl JsonError {
    pub fn message(self) -> &'static str {
        match self {
            JsonError::Syntax => "the value is not well-formed JSON",
            JsonError::Shape(message) => message,
        }
    }
}

type Result<T> = std::result::Result<T, JsonError>;

/// Converts an OTLP/JSON `ExportTraceServiceRequest` into its protobuf encoding, appended to
/// `out`.
pub fn to_protobuf(json: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let value: Value = serde_json::from_slice(json).map_err(|_| JsonError::Syntax)?;
    let request = object(&value, "the request is not a JSON object")?;
    for resource_spans in array(
        request.get("resourceSpans"),
        "resourceSpans is not an array",
    )? {
        nested(out, 1, |out| encode_resource_spans(resource_spans, out))?;
    }
    Ok(())
}

fn object<'v>(value: &'v Value, message: &'static str) -> Result<&'v Map<String, Value>> {
    value.as_object().ok_or(JsonError::Shape(message))
}

fn array<'v>(value: Option<&'v Value>, message: &'static str) -> Result<&'v [Value]> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(JsonError::Shape(message)),
    }
}

/// Writes length-delimited field `field` whose content `write` produces.
fn nested(
    out: &mut Vec<u8>,
    field: u32,
    write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut content = Vec::new();
    write(&mut content)?;
    put_tag_len(out, field, content.len());
    out.extend_from_slice(&content);
    Ok(())
}

fn string_field(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => {
            put_bytes_field(out, field, text.as_bytes());
            Ok(())
        }
        Some(_) => Err(JsonError::Shape("a string field holds another type")),
    }
}

fn hex_field(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => {
            let bytes = decode_hex(text).ok_or(JsonError::Shape("an id is not hex"))?;
            put_bytes_field(out, field, &bytes);
            Ok(())
        }
        Some(_) => Err(JsonError::Shape("an id is not a hex string")),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |byte: u8| (byte as char).to_digit(16);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4 | digit(pair[1])?) as u8))
        .collect()
}

/// A 64-bit integer written as a decimal string or a JSON number.
fn integer(value: &Value) -> Option<i128> {
    match value {
        Value::String(text) => text.trim().parse().ok(),
        Value::Number(number) => number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from)),
        _ => None,
    }
}

fn u64_field(map: &Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => integer(value)
            .and_then(|number| u64::try_from(number).ok())
            .map(Some)
            .ok_or(JsonError::Shape(
                "an unsigned integer field is out of range",
            )),
    }
}

fn fixed64(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    if let Some(value) = u64_field(map, key)? {
        put_fixed64_field(out, field, value);
    }
    Ok(())
}

fn count(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    if let Some(value) = u64_field(map, key)? {
        let value =
            u32::try_from(value).map_err(|_| JsonError::Shape("a count exceeds 32 bits"))?;
        put_varint_field(out, field, u64::from(value));
    }
    Ok(())
}

fn flags(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    if let Some(value) = u64_field(map, key)? {
        let value = u32::try_from(value).map_err(|_| JsonError::Shape("flags exceed 32 bits"))?;
        put_fixed32_field(out, field, value);
    }
    Ok(())
}

/// An enum: its number, or its name from `names` (index = number).
fn enumeration(
    map: &Map<String, Value>,
    key: &str,
    names: &[&str],
    field: u32,
    out: &mut Vec<u8>,
) -> Result<()> {
    let number = match map.get(key) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(name)) if names.contains(&name.as_str()) => names
            .iter()
            .position(|known| known == name)
            .expect("contained")
            as i128,
        Some(value) => integer(value).ok_or(JsonError::Shape("an enum field is not an integer"))?,
    };
    let number = i32::try_from(number).map_err(|_| JsonError::Shape("an enum is out of range"))?;
    // Negative enum values are sign-extended to 64 bits on the wire.
    put_varint_field(out, field, number as i64 as u64);
    Ok(())
}

fn attributes(map: &Map<String, Value>, key: &str, field: u32, out: &mut Vec<u8>) -> Result<()> {
    for key_value in array(map.get(key), "attributes is not an array")? {
        nested(out, field, |out| encode_key_value(key_value, out))?;
    }
    Ok(())
}

fn encode_key_value(key_value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let map = object(key_value, "an attribute is not an object")?;
    string_field(map, "key", 1, out)?;
    if let Some(value) = map.get("value").filter(|value| !value.is_null()) {
        nested(out, 2, |out| encode_any_value(value, out))?;
    }
    Ok(())
}

fn encode_any_value(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let map = object(value, "an attribute value is not an object")?;
    if let Some(text) = map.get("stringValue") {
        let text = text
            .as_str()
            .ok_or(JsonError::Shape("stringValue is not a string"))?;
        put_bytes_field(out, 1, text.as_bytes());
    } else if let Some(flag) = map.get("boolValue") {
        let flag = flag
            .as_bool()
            .ok_or(JsonError::Shape("boolValue is not a boolean"))?;
        put_varint_field(out, 2, u64::from(flag));
    } else if let Some(number) = map.get("intValue") {
        let number = integer(number)
            .and_then(|number| i64::try_from(number).ok())
            .ok_or(JsonError::Shape("intValue is not a 64-bit integer"))?;
        put_varint_field(out, 3, number as u64);
    } else if let Some(number) = map.get("doubleValue") {
        let number = match number {
            Value::Number(number) => number.as_f64(),
            Value::String(text) => match text.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse().ok(),
            },
            _ => None,
        }
        .ok_or(JsonError::Shape("doubleValue is not a number"))?;
        put_fixed64_field(out, 4, number.to_bits());
    } else if let Some(items) = map.get("arrayValue") {
        let items = object(items, "arrayValue is not an object")?;
        nested(out, 5, |out| {
            for item in array(items.get("values"), "arrayValue.values is not an array")? {
                nested(out, 1, |out| encode_any_value(item, out))?;
            }
            Ok(())
        })?;
    } else if let Some(list) = map.get("kvlistValue") {
        let list = object(list, "kvlistValue is not an object")?;
        nested(out, 6, |out| attributes(list, "values", 1, out))?;
    } else if let Some(bytes) = map.get("bytesValue") {
        use base64::Engine as _;
        let text = bytes
            .as_str()
            .ok_or(JsonError::Shape("bytesValue is not a string"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| JsonError::Shape("bytesValue is not base64"))?;
        put_bytes_field(out, 7, &bytes);
    }
    Ok(())
}

fn encode_resource_spans(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let map = object(value, "a resourceSpans item is not an object")?;
    if let Some(resource) = map.get("resource").filter(|value| !value.is_null()) {
        let resource = object(resource, "resource is not an object")?;
        nested(out, 1, |out| {
            attributes(resource, "attributes", 1, out)?;
            count(resource, "droppedAttributesCount", 2, out)
        })?;
    }
    for scope_spans in array(map.get("scopeSpans"), "scopeSpans is not an array")? {
        nested(out, 2, |out| encode_scope_spans(scope_spans, out))?;
    }
    string_field(map, "schemaUrl", 3, out)
}

fn encode_scope_spans(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let map = object(value, "a scopeSpans item is not an object")?;
    if let Some(scope) = map.get("scope").filter(|value| !value.is_null()) {
        let scope = object(scope, "scope is not an object")?;
        nested(out, 1, |out| {
            string_field(scope, "name", 1, out)?;
            string_field(scope, "version", 2, out)?;
            attributes(scope, "attributes", 3, out)?;
            count(scope, "droppedAttributesCount", 4, out)
        })?;
    }
    for span in array(map.get("spans"), "spans is not an array")? {
        nested(out, 2, |out| encode_span(span, out))?;
    }
    string_field(map, "schemaUrl", 3, out)
}

const SPAN_KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];

const STATUS_CODES: [&str; 3] = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn encode_span(value: &Value, out: &mut Vec<u8>) -> Result<()> {
    let span = object(value, "a span is not an object")?;
    hex_field(span, "traceId", 1, out)?;
    hex_field(span, "spanId", 2, out)?;
    string_field(span, "traceState", 3, out)?;
    hex_field(span, "parentSpanId", 4, out)?;
    string_field(span, "name", 5, out)?;
    enumeration(span, "kind", &SPAN_KINDS, 6, out)?;
    fixed64(span, "startTimeUnixNano", 7, out)?;
    fixed64(span, "endTimeUnixNano", 8, out)?;
    attributes(span, "attributes", 9, out)?;
    count(span, "droppedAttributesCount", 10, out)?;
    for event in array(span.get("events"), "events is not an array")? {
        let event = object(event, "an event is not an object")?;
        nested(out, 11, |out| {
            fixed64(event, "timeUnixNano", 1, out)?;
            string_field(event, "name", 2, out)?;
            attributes(event, "attributes", 3, out)?;
            count(event, "droppedAttributesCount", 4, out)
        })?;
    }
    count(span, "droppedEventsCount", 12, out)?;
    for link in array(span.get("links"), "links is not an array")? {
        let link = object(link, "a link is not an object")?;
        nested(out, 13, |out| {
            hex_field(link, "traceId", 1, out)?;
            hex_field(link, "spanId", 2, out)?;
            string_field(link, "traceState", 3, out)?;
            attributes(link, "attributes", 4, out)?;
            count(link, "droppedAttributesCount", 5, out)?;
            flags(link, "flags", 6, out)
        })?;
    }
    count(span, "droppedLinksCount", 14, out)?;
    if let Some(status) = span.get("status").filter(|value| !value.is_null()) {
        let status = object(status, "status is not an object")?;
        nested(out, 15, |out| {
            string_field(status, "message", 2, out)?;
            enumeration(status, "code", &STATUS_CODES, 3, out)
        })?;
    }
    flags(span, "flags", 16, out)
}
