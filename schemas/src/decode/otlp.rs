//! The decoder of OTLP trace batches (`format = "otlp_proto"` / `"otlp_json"`).
//!
//! A batch holds spans of many traces, so it does not become one business event: the decoder
//! only checks what the engine needs (a value within the size bound) and names the record; the
//! tail-sampling operator walks the spans itself and rejects a batch that does not parse.

use std::fmt::Write as _;

use super::config::default_max_value_bytes;
use crate::{DecodeError, DecodeErrorClass, Decoder, Envelope, RawRecord};

/// Settings of the OTLP decoders.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Largest record value accepted, in bytes; larger values are rejected (`oversized`) before
    /// any parsing.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: default_max_value_bytes(),
        }
    }
}

/// Checks the size bound and names the batch by its coordinates (`topic/partition/offset`,
/// deterministic on replay); event time is the record timestamp (the operator uses span times).
#[derive(Debug, Clone)]
pub struct OtlpDecoder {
    config: OtlpConfig,
}

impl OtlpDecoder {
    pub fn new(config: OtlpConfig) -> Self {
        Self { config }
    }
}

impl Decoder for OtlpDecoder {
    fn decode(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
        let Some(value) = record.value else {
            return Err(DecodeError::new(
                DecodeErrorClass::MissingValue,
                "an OTLP batch record has no value",
            ));
        };
        if value.len() > self.config.max_value_bytes {
            return Err(DecodeError::new(
                DecodeErrorClass::Oversized,
                "the OTLP batch exceeds max_value_bytes",
            ));
        }
        // Writing into the reused `String` does not allocate once it has grown.
        let _ = write!(
            out.id,
            "{}/{}/{}",
            record.topic, record.partition, record.offset
        );
        out.event_time_ms = record.timestamp_ms.unwrap_or(0);
        Ok(())
    }
}
