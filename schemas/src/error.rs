//! Decode failures: values with a reason class, routed to the dead-letter topic by the engine.

/// Why a record could not become an [`crate::Envelope`]. The class is a stable, low-cardinality
/// label used in metrics and in the `breadcrumb-dlq-reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorClass {
    /// The record has no value (a tombstone) where an event was expected.
    MissingValue,
    /// The value, or a header that must be text, is not valid UTF-8.
    InvalidUtf8,
    /// The value is not well-formed JSON.
    InvalidJson,
    /// A required field (id, time, ...) is absent or empty.
    MissingField,
    /// A field is present but has the wrong type or an unparsable value (bad time, bad sequence).
    InvalidField,
    /// `traceparent` is present but malformed.
    InvalidTraceContext,
    /// The content type or CloudEvents spec version is not one this decoder reads.
    UnsupportedFormat,
    /// The value exceeds the configured size limit.
    Oversized,
    /// The value is not a well-formed Avro datum of its writer schema (or its wire header is
    /// short).
    InvalidAvro,
    /// The value names a schema id the registry does not have (or whose schema does not parse).
    UnknownSchema,
    /// The schema source could not answer now. Not bad input: the engine retries the record
    /// later and never dead-letters it for this.
    SchemaUnavailable,
}

impl DecodeErrorClass {
    /// Every class that rejects a record, for pre-registering metric label values
    /// ([`DecodeErrorClass::SchemaUnavailable`] is retried, never a rejection).
    pub const ALL: [DecodeErrorClass; 10] = [
        DecodeErrorClass::MissingValue,
        DecodeErrorClass::InvalidUtf8,
        DecodeErrorClass::InvalidJson,
        DecodeErrorClass::MissingField,
        DecodeErrorClass::InvalidField,
        DecodeErrorClass::InvalidTraceContext,
        DecodeErrorClass::UnsupportedFormat,
        DecodeErrorClass::Oversized,
        DecodeErrorClass::InvalidAvro,
        DecodeErrorClass::UnknownSchema,
    ];

    /// The stable snake_case label of the class.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorClass::MissingValue => "missing_value",
            DecodeErrorClass::InvalidUtf8 => "invalid_utf8",
            DecodeErrorClass::InvalidJson => "invalid_json",
            DecodeErrorClass::MissingField => "missing_field",
            DecodeErrorClass::InvalidField => "invalid_field",
            DecodeErrorClass::InvalidTraceContext => "invalid_trace_context",
            DecodeErrorClass::UnsupportedFormat => "unsupported_format",
            DecodeErrorClass::Oversized => "oversized",
            DecodeErrorClass::InvalidAvro => "invalid_avro",
            DecodeErrorClass::UnknownSchema => "unknown_schema",
            DecodeErrorClass::SchemaUnavailable => "schema_unavailable",
        }
    }
}

/// A decode failure: its class and a human-readable message naming the field at fault. The
/// message never contains field values, so no payload data leaks into logs or headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct DecodeError {
    pub class: DecodeErrorClass,
    pub message: String,
}

impl DecodeError {
    pub fn new(class: DecodeErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
        }
    }
}

/// Why a codec could not be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemasError {
    /// A configured file is unreadable or its content invalid. `key` is relative to the decoder
    /// table (`registry.schema_file`).
    #[error("{key}: {message}")]
    Config { key: String, message: String },
}

pub type SchemasResult<T> = Result<T, SchemasError>;
