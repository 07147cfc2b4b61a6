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
}

impl DecodeErrorClass {
    /// Every class, for pre-registering metric label values.
    pub const ALL: [DecodeErrorClass; 8] = [
        DecodeErrorClass::MissingValue,
        DecodeErrorClass::InvalidUtf8,
        DecodeErrorClass::InvalidJson,
        DecodeErrorClass::MissingField,
        DecodeErrorClass::InvalidField,
        DecodeErrorClass::InvalidTraceContext,
        DecodeErrorClass::UnsupportedFormat,
        DecodeErrorClass::Oversized,
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
