//! The business-event envelope and the raw record it was decoded from.

use crate::trace::TraceContext;

/// A Kafka header as a record carries it: its name, and a value that may be null.
pub type HeaderRef<'a> = (&'a str, Option<&'a [u8]>);

/// A Kafka record as consumed, borrowed from the consumer's buffer. Nothing here is copied, so
/// republishing sends exactly the bytes that arrived.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Broker or producer timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Headers in arrival order; a header may repeat and may have a null value.
    pub headers: &'a [HeaderRef<'a>],
}

/// Header on records breadcrumb publishes: the topic the record entered breadcrumb from.
pub const SOURCE_TOPIC_HEADER: &str = "breadcrumb-source-topic";
/// Header on records breadcrumb publishes: the partition the record entered breadcrumb from.
pub const SOURCE_PARTITION_HEADER: &str = "breadcrumb-source-partition";
/// Header on records breadcrumb publishes: the offset the record entered breadcrumb from.
pub const SOURCE_OFFSET_HEADER: &str = "breadcrumb-source-offset";

impl<'a> RawRecord<'a> {
    /// Where the record entered breadcrumb: its `breadcrumb-source-*` headers when it comes
    /// through an internal repartition topic (which sets them), else its own coordinates.
    pub fn origin(&self) -> (&'a str, i32, i64) {
        let source = (
            self.header(SOURCE_TOPIC_HEADER)
                .and_then(|topic| std::str::from_utf8(topic).ok()),
            self.header(SOURCE_PARTITION_HEADER)
                .and_then(|partition| std::str::from_utf8(partition).ok()?.parse().ok()),
            self.header(SOURCE_OFFSET_HEADER)
                .and_then(|offset| std::str::from_utf8(offset).ok()?.parse().ok()),
        );
        match source {
            (Some(topic), Some(partition), Some(offset)) => (topic, partition, offset),
            _ => (self.topic, self.partition, self.offset),
        }
    }

    /// The last value of header `name` (case-sensitive, as Kafka headers are), if present and
    /// non-null.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| *value)
    }
}

/// A typed attribute value carried by an event (CloudEvents extension or configured JSON path).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

/// A decoded business event.
///
/// Decoders fill an existing envelope (see [`Envelope::clear`]) so the hot path reuses its
/// buffers instead of allocating per record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// The event id (CloudEvents `id`, or the configured JSON path). Never empty after a
    /// successful decode.
    pub id: String,
    /// CloudEvents `source`, or the configured path; empty when absent.
    pub source: String,
    /// CloudEvents `type`, or the configured path; empty when absent.
    pub event_type: String,
    /// CloudEvents `subject` or the configured key path (the business key); empty when absent.
    pub subject: String,
    /// Event time in milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// Business sequence number (CloudEvents `sequence` extension or configured path).
    pub sequence: Option<u64>,
    /// Trace context parsed from a W3C `traceparent`.
    pub trace: Option<TraceContext>,
    /// The id of the event that caused this one (parent event); empty when absent.
    pub causation_id: String,
    /// Correlation id shared by a business flow; empty when absent.
    pub correlation_id: String,
    /// Further attributes, in a stable order (as configured, or as the CloudEvent listed them).
    pub attributes: Vec<(String, AttributeValue)>,
}

impl Envelope {
    /// Empties every field, keeping allocated capacity for the next decode.
    pub fn clear(&mut self) {
        self.id.clear();
        self.source.clear();
        self.event_type.clear();
        self.subject.clear();
        self.event_time_ms = 0;
        self.sequence = None;
        self.trace = None;
        self.causation_id.clear();
        self.correlation_id.clear();
        self.attributes.clear();
    }

    /// Looks up a field by name, for operators configured with a list of key fields:
    /// `id`, `source`, `type`, `subject`, `causation_id`, `correlation_id`, `sequence`, or an
    /// attribute name. Returns `None` when the field is absent or empty.
    pub fn field(&self, name: &str) -> Option<FieldRef<'_>> {
        // A fn, not a closure: a closure cannot tie its output lifetime to its input.
        fn text(value: &str) -> Option<FieldRef<'_>> {
            (!value.is_empty()).then_some(FieldRef::Text(value))
        }
        match name {
            "id" => text(&self.id),
            "source" => text(&self.source),
            "type" => text(&self.event_type),
            "subject" => text(&self.subject),
            "causation_id" => text(&self.causation_id),
            "correlation_id" => text(&self.correlation_id),
            "sequence" => self
                .sequence
                .map(|sequence| FieldRef::Integer(sequence as i64)),
            _ => {
                self.attributes
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, value)| match value {
                        AttributeValue::String(text) => FieldRef::Text(text),
                        AttributeValue::Integer(number) => FieldRef::Integer(*number),
                        AttributeValue::Float(number) => FieldRef::Float(*number),
                        AttributeValue::Boolean(flag) => FieldRef::Boolean(*flag),
                    })
            }
        }
    }
}

/// A borrowed view of one envelope field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldRef<'a> {
    Text(&'a str),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl FieldRef<'_> {
    /// Appends a canonical byte form of the value, tagged by type so `"1"` and `1` differ.
    pub fn append_key_bytes(&self, out: &mut Vec<u8>) {
        match self {
            FieldRef::Text(text) => {
                out.push(b's');
                out.extend_from_slice(&(text.len() as u32).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            FieldRef::Integer(number) => {
                out.push(b'i');
                out.extend_from_slice(&number.to_be_bytes());
            }
            FieldRef::Float(number) => {
                out.push(b'f');
                out.extend_from_slice(&number.to_bits().to_be_bytes());
            }
            FieldRef::Boolean(flag) => {
                out.push(b'b');
                out.push(u8::from(*flag));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(headers: &'a [HeaderRef<'a>]) -> RawRecord<'a> {
        RawRecord {
            topic: "app-orders-repartition",
            partition: 7,
            offset: 99,
            timestamp_ms: None,
            key: None,
            value: None,
            headers,
        }
    }

    #[test]
    fn origin_prefers_the_source_headers() {
        let headers = [
            (SOURCE_TOPIC_HEADER, Some(&b"orders"[..])),
            (SOURCE_PARTITION_HEADER, Some(&b"2"[..])),
            (SOURCE_OFFSET_HEADER, Some(&b"41"[..])),
        ];
        assert_eq!(record(&headers).origin(), ("orders", 2, 41));
    }

    #[test]
    fn origin_falls_back_to_the_record_when_headers_are_missing_or_broken() {
        assert_eq!(record(&[]).origin(), ("app-orders-repartition", 7, 99));
        let broken = [
            (SOURCE_TOPIC_HEADER, Some(&b"orders"[..])),
            (SOURCE_PARTITION_HEADER, Some(&b"two"[..])),
            (SOURCE_OFFSET_HEADER, Some(&b"41"[..])),
        ];
        assert_eq!(record(&broken).origin(), ("app-orders-repartition", 7, 99));
    }
}
