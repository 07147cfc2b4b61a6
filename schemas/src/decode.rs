//! Decoders, chosen per input topic.
//!
//! - [`CloudEventsDecoder`]: CloudEvents 1.0 over Kafka, binary or structured mode.
//! - [`JsonDecoder`]: plain JSON values read at configured JSON pointers.
//! - [`AvroDecoder`]: Avro values (Confluent wire format with a Schema Registry or a schema
//!   directory, or raw bodies of one schema), read at the same JSON-pointer paths.
//!
//! None builds a value tree (`serde_json::Value`, `apache_avro::types::Value`): each value is
//! read in one pass, keeping only what the envelope needs.

pub mod avro;
mod cloudevents;
mod common;
mod config;
mod fields;
mod json;
mod otlp;
mod pointer;

pub use avro::AvroDecoder;
pub use cloudevents::CloudEventsDecoder;
pub use config::{
    default_max_value_bytes, default_time_fallback, default_traceparent_header, AvroConfig,
    AvroWireFormat, CloudEventsConfig, JsonConfig, RegistryConfig, TimeFallback,
    BUILT_IN_FIELD_NAMES,
};
pub use json::JsonDecoder;
pub use otlp::{OtlpConfig, OtlpDecoder};

use crate::error::SchemasResult;
use crate::{DecodeError, Envelope, RawRecord};

/// Turns a raw Kafka record into an [`Envelope`]. Implementations are pure functions of the
/// record: no clock, so decoding is deterministic on replay. The one I/O allowed is fetching an
/// immutable schema by the id a record names, once, into a cache; when that source cannot
/// answer, decode fails with [`crate::DecodeErrorClass::SchemaUnavailable`] and the caller retries
/// later instead of rejecting the record.
pub trait Decoder: Send + Sync {
    /// Fills `out` (already cleared by the caller) from `record`.
    fn decode(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError>;
}

/// How the records of one input topic are decoded.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "format", rename_all = "snake_case")]
// Built once per pipeline at start-up; boxing the JSON variant would only change the public shape.
#[allow(clippy::large_enum_variant)]
pub enum DecoderConfig {
    /// CloudEvents over Kafka: binary mode (`ce_*` headers) or structured mode
    /// (`content-type: application/cloudevents+json`), detected per record.
    Cloudevents(CloudEventsConfig),
    /// Plain JSON values with configured JSON-pointer paths.
    Json(JsonConfig),
    /// Avro values, with writer schemas from a registry or files.
    Avro(AvroConfig),
    /// OTLP trace batches, protobuf `ExportTraceServiceRequest` (the Collector's Kafka exporter
    /// encoding `otlp_proto`), for a tail-sampling pipeline.
    OtlpProto(OtlpConfig),
    /// OTLP trace batches in the OTLP/JSON encoding (`otlp_json`), for a tail-sampling pipeline.
    OtlpJson(OtlpConfig),
}

impl DecoderConfig {
    /// Whether records are OTLP trace batches rather than business events.
    pub fn is_otlp(&self) -> bool {
        matches!(
            self,
            DecoderConfig::OtlpProto(_) | DecoderConfig::OtlpJson(_)
        )
    }
}

/// Builds the decoder described by `config` (already validated). Fails only on what must be
/// read at start-up: schema and password files.
pub fn build_decoder(config: &DecoderConfig) -> SchemasResult<Box<dyn Decoder>> {
    Ok(match config {
        DecoderConfig::Cloudevents(config) => Box::new(CloudEventsDecoder::new(config.clone())),
        DecoderConfig::Json(config) => Box::new(JsonDecoder::new(config)),
        DecoderConfig::Avro(config) => Box::new(AvroDecoder::from_config(config)?),
        DecoderConfig::OtlpProto(config) | DecoderConfig::OtlpJson(config) => {
            Box::new(OtlpDecoder::new(config.clone()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoders() -> Vec<Box<dyn Decoder>> {
        let mut json = JsonConfig::new("/id");
        json.time_path = Some("/time".into());
        json.source_path = Some("/source".into());
        json.type_path = Some("/type".into());
        json.subject_path = Some("/a/0/b".into());
        json.sequence_path = Some("/sequence".into());
        json.traceparent_path = Some("/traceparent".into());
        json.causation_id_path = Some("/causationid".into());
        json.correlation_id_path = Some("/a".into());
        json.attributes.insert("x".into(), "/x".into());
        json.attributes.insert("whole".into(), String::new());
        let mut rejecting = JsonConfig::new("");
        rejecting.time_fallback = TimeFallback::Reject;
        rejecting.max_value_bytes = 16;
        [
            DecoderConfig::Cloudevents(CloudEventsConfig::default()),
            DecoderConfig::Cloudevents(CloudEventsConfig {
                max_value_bytes: 16,
                time_fallback: TimeFallback::Reject,
            }),
            DecoderConfig::Json(json),
            DecoderConfig::Json(rejecting),
            DecoderConfig::OtlpProto(OtlpConfig::default()),
            DecoderConfig::OtlpJson(OtlpConfig {
                max_value_bytes: 16,
            }),
        ]
        .iter()
        .map(|config| build_decoder(config).unwrap())
        .collect()
    }

    fn header_name() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("content-type".to_owned()),
            Just("ce_specversion".to_owned()),
            Just("ce_id".to_owned()),
            Just("ce_source".to_owned()),
            Just("ce_type".to_owned()),
            Just("ce_time".to_owned()),
            Just("ce_sequence".to_owned()),
            Just("ce_traceparent".to_owned()),
            Just("traceparent".to_owned()),
            "ce_[a-z]{0,3}",
            ".{0,6}",
        ]
    }

    fn header_value() -> impl Strategy<Value = Option<Vec<u8>>> {
        prop::option::of(prop_oneof![
            Just(b"1.0".to_vec()),
            Just(b"application/cloudevents+json".to_vec()),
            Just(b"2024-05-01T12:00:00Z".to_vec()),
            Just(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
            "[0-9]{1,3}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..12),
        ])
    }

    /// Values that are often JSON, sometimes nearly so, sometimes noise.
    fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
        let token = prop_oneof![
            Just("{".to_owned()),
            Just("}".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just("null".to_owned()),
            Just("-1".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("1.5e3".to_owned()),
            Just("\"1.0\"".to_owned()),
            Just("\"2024-05-01T12:00:00+02:00\"".to_owned()),
            prop_oneof![
                Just("specversion"),
                Just("id"),
                Just("source"),
                Just("type"),
                Just("time"),
                Just("sequence"),
                Just("traceparent"),
                Just("data"),
                Just("a"),
                Just("b"),
                Just("x"),
            ]
            .prop_map(|key| format!("\"{key}\"")),
            "\"[a-z\\\\\"\u{e9}]{0,4}\"",
        ];
        prop::option::of(prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat().into_bytes()),
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn no_input_panics_any_decoder(
            value in value(),
            headers in prop::collection::vec((header_name(), header_value()), 0..8),
            timestamp_ms in prop::option::of(any::<i64>()),
        ) {
            let headers: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_deref()))
                .collect();
            let record = RawRecord {
                topic: "t",
                partition: 0,
                offset: 0,
                timestamp_ms,
                key: None,
                value: value.as_deref(),
                headers: &headers,
            };
            for decoder in decoders() {
                let mut out = Envelope::default();
                let first = decoder.decode(&record, &mut out).map(|()| out.clone());
                if let Ok(envelope) = &first {
                    prop_assert!(!envelope.id.is_empty());
                }
                // Deterministic, and independent of what the reused envelope held before.
                out.id.push_str("leftover");
                out.clear();
                let second = decoder.decode(&record, &mut out).map(|()| out.clone());
                prop_assert_eq!(first, second);
            }
        }
    }
}
