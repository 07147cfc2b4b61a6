//! Names of the headers breadcrumb adds to what it publishes.

/// Topic, partition and offset the record was read from (defined beside [`RawRecord::origin`],
/// which reads them back).
///
/// [`RawRecord::origin`]: breadcrumb_schemas::RawRecord::origin
pub use breadcrumb_schemas::envelope::{
    SOURCE_OFFSET_HEADER as SOURCE_OFFSET, SOURCE_PARTITION_HEADER as SOURCE_PARTITION,
    SOURCE_TOPIC_HEADER as SOURCE_TOPIC,
};
/// The transaction that published the record (`<transactional-id>:<incarnation>:<sequence>`).
pub const TRANSACTION: &str = "breadcrumb-txn";
/// Dead letters: the reason class (`invalid_json`, `missing_field`, ...).
pub const DLQ_REASON: &str = "breadcrumb-dlq-reason";
/// Dead letters: a human-readable message (never containing payload values).
pub const DLQ_MESSAGE: &str = "breadcrumb-dlq-message";
/// Dead letters: the pipeline that rejected the record.
pub const DLQ_PIPELINE: &str = "breadcrumb-dlq-pipeline";
/// On a generated record that should have been Avro but did not fit its schema (a bug): the
/// encoding it was sent in instead.
pub const ENCODING_FALLBACK: &str = "breadcrumb-encoding-fallback";
/// On records of a repartition topic that are not business events: what they are. Lineage's
/// span side input carries [`KIND_SPANS`].
pub const RECORD_KIND: &str = "breadcrumb-kind";
/// [`RECORD_KIND`] of one trace's spans, split from an OTLP batch of a `span_topics` topic.
pub const KIND_SPANS: &[u8] = b"spans";
