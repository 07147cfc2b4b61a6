//! Lineage edge records wait for the copy they describe.
//!
//! An edge names where the event's republished copy landed (topic, partition, offset), which
//! only the copy's delivery report knows. The lineage operator emits the copy, then its edges;
//! the engine tags the copy's send with a delivery tag, keeps the edges here, and at commit,
//! once the producer has flushed (still inside the transaction, so nothing is visible yet),
//! fills the edges' `copy_*` fields and sends them in the same transaction.
//!
//! The buffer is bounded by the transaction: at most `max_records_per_transaction` events, each
//! with a span edge and at most one parent edge.

use std::ops::Range;

/// What the lineage operator writes in place of the copy's coordinates (see
/// `breadcrumb_operators::lineage::format`).
const COPY_PLACEHOLDER: &[u8] = br#""copy_topic":null,"copy_partition":null,"copy_offset":null"#;

/// Delivery tags of copies carry this bit; the rest is the copy's index in the transaction.
/// Changelog tags are small (slot + 1), so the two never meet.
pub const COPY_TAG: usize = 1 << (usize::BITS - 1);

/// One edge record held until commit.
#[derive(Debug, Clone)]
pub struct HeldEdge {
    pub pipeline: usize,
    /// Index of the copy it describes within the transaction.
    pub copy: usize,
    pub timestamp_ms: Option<i64>,
    key: Range<usize>,
    value: Range<usize>,
}

/// The open transaction's edges, in one byte arena so holding one allocates nothing once the
/// arena has grown.
#[derive(Debug, Default)]
pub struct EdgeBuffer {
    bytes: Vec<u8>,
    edges: Vec<HeldEdge>,
    copies_sent: usize,
}

impl EdgeBuffer {
    /// The delivery tag for the next copy; edges held after it describe it.
    pub fn next_copy_tag(&mut self) -> usize {
        self.copies_sent += 1;
        COPY_TAG | (self.copies_sent - 1)
    }

    /// Holds an edge of `pipeline` describing the copy sent last.
    pub fn hold(&mut self, pipeline: usize, key: &[u8], value: &[u8], timestamp_ms: Option<i64>) {
        let key_start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        let value_start = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.edges.push(HeldEdge {
            pipeline,
            // An edge is emitted after its event's copy; one before any copy has nothing to
            // describe and keeps null coordinates (`usize::MAX` is never a delivered copy).
            copy: self.copies_sent.checked_sub(1).unwrap_or(usize::MAX),
            timestamp_ms,
            key: key_start..value_start,
            value: value_start..self.bytes.len(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The held edges with their key and value.
    pub fn iter(&self) -> impl Iterator<Item = (&HeldEdge, &[u8], &[u8])> {
        self.edges.iter().map(|edge| {
            (
                edge,
                &self.bytes[edge.key.clone()],
                &self.bytes[edge.value.clone()],
            )
        })
    }

    /// Forgets everything: after the edges were sent, or the transaction aborted.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.edges.clear();
        self.copies_sent = 0;
    }
}

/// Where a copy landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyCoordinates<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Writes `value` (an edge record's JSON) to `out` with the copy's coordinates in place of the
/// operator's nulls. A value without the placeholder is copied as it is.
pub fn fill_copy(value: &[u8], copy: Option<CopyCoordinates<'_>>, out: &mut Vec<u8>) {
    out.clear();
    let found = value
        .windows(COPY_PLACEHOLDER.len())
        .position(|window| window == COPY_PLACEHOLDER);
    let (Some(start), Some(copy)) = (found, copy) else {
        out.extend_from_slice(value);
        return;
    };
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(&value[..start]);
    // Topic names are ASCII letters, digits, '.', '_' and '-': nothing to escape.
    out.extend_from_slice(br#""copy_topic":""#);
    out.extend_from_slice(copy.topic.as_bytes());
    out.extend_from_slice(br#"","copy_partition":"#);
    out.extend_from_slice(number.format(copy.partition).as_bytes());
    out.extend_from_slice(br#","copy_offset":"#);
    out.extend_from_slice(number.format(copy.offset).as_bytes());
    out.extend_from_slice(&value[start + COPY_PLACEHOLDER.len()..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &[u8] = br#"{"type":"breadcrumb.lineage.edge","event_id":"a","copy_topic":null,"copy_partition":null,"copy_offset":null,"trace_id":null}"#;

    #[test]
    fn copy_coordinates_replace_the_nulls() {
        let mut out = Vec::new();
        fill_copy(
            EDGE,
            Some(CopyCoordinates {
                topic: "orders-lineage.v1",
                partition: 3,
                offset: 1234,
            }),
            &mut out,
        );
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["copy_topic"], "orders-lineage.v1");
        assert_eq!(parsed["copy_partition"], 3);
        assert_eq!(parsed["copy_offset"], 1234);
        assert_eq!(parsed["event_id"], "a");
        assert!(parsed["trace_id"].is_null());
    }

    #[test]
    fn unknown_coordinates_stay_null() {
        let mut out = Vec::new();
        fill_copy(EDGE, None, &mut out);
        assert_eq!(out, EDGE);
    }

    #[test]
    fn edges_describe_the_copy_sent_before_them() {
        let mut buffer = EdgeBuffer::default();
        buffer.hold(0, b"orphan", b"{}", None);
        let first = buffer.next_copy_tag();
        buffer.hold(0, b"a", b"span", Some(1));
        buffer.hold(0, b"a", b"parent", Some(1));
        let second = buffer.next_copy_tag();
        buffer.hold(1, b"b", b"span", Some(2));
        assert_eq!(first, COPY_TAG);
        assert_eq!(second, COPY_TAG | 1);
        let held: Vec<(usize, usize, Vec<u8>, Vec<u8>)> = buffer
            .iter()
            .map(|(edge, key, value)| (edge.pipeline, edge.copy, key.to_vec(), value.to_vec()))
            .collect();
        assert_eq!(
            held,
            vec![
                (0, usize::MAX, b"orphan".to_vec(), b"{}".to_vec()),
                (0, 0, b"a".to_vec(), b"span".to_vec()),
                (0, 0, b"a".to_vec(), b"parent".to_vec()),
                (1, 1, b"b".to_vec(), b"span".to_vec()),
            ]
        );
        buffer.clear();
        assert!(buffer.is_empty());
        assert_eq!(buffer.next_copy_tag(), COPY_TAG);
    }
}
