//! The event model and its codecs.
//!
//! Layout:
//! - [`envelope`]: [`Envelope`], the decoded business event every operator sees, and
//!   [`RawRecord`], the untouched Kafka record it came from (kept for republishing).
//! - [`decode`]: the [`Decoder`] trait, [`DecoderConfig`] (chosen per input topic) and the
//!   CloudEvents, plain-JSON, Avro and OTLP decoders.
//! - [`encode`]: breadcrumb's own records (gap records) in Avro, with their schemas.
//! - [`stored`]: [`StoredRecord`], the versioned format of records held in operator state.
//! - [`otlp`]: OTLP trace batches at the protobuf wire level (walk, subset, re-encode) and the
//!   OTLP/JSON mapping, for tail sampling.
//! - [`trace`]: W3C `traceparent` parsing.
//! - [`error`]: [`DecodeError`] with its [`DecodeErrorClass`]; a decode failure is a value, never a
//!   panic.

pub mod decode;
pub mod encode;
pub mod envelope;
pub mod error;
pub mod otlp;
pub mod stored;
pub mod trace;

pub use decode::{
    build_decoder, AvroConfig, AvroWireFormat, CloudEventsConfig, Decoder, DecoderConfig,
    JsonConfig, OtlpConfig, RegistryConfig, TimeFallback,
};
pub use envelope::{AttributeValue, Envelope, HeaderRef, RawRecord};
pub use error::{DecodeError, DecodeErrorClass, SchemasError, SchemasResult};
pub use stored::{StoredRecord, StoredRecordError, StoredRecordView, STORED_RECORD_VERSION};
pub use trace::TraceContext;
