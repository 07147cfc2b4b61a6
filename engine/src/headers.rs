//! Names of the headers breadcrumb adds to what it publishes.

/// Topic the record was read from.
pub const SOURCE_TOPIC: &str = "breadcrumb-source-topic";
/// Partition the record was read from.
pub const SOURCE_PARTITION: &str = "breadcrumb-source-partition";
/// Offset the record was read from.
pub const SOURCE_OFFSET: &str = "breadcrumb-source-offset";
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
