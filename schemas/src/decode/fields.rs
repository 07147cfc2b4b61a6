//! Envelope fields read at configured JSON-pointer paths, whatever the value's encoding.

use std::fmt::Write as _;

use super::common::{fallback_time, header_as_str, parse_rfc3339_ms, scalar_to_sequence, Scalar};
use super::config::{JsonConfig, TimeFallback};
use super::pointer::PathTree;
use crate::{DecodeError, DecodeErrorClass, Envelope, RawRecord, TraceContext};

/// A configured pointer: its slot in the [`PathTree`] and its text, for messages.
#[derive(Debug, Clone)]
struct Path {
    slot: usize,
    /// The configuration key and the pointer, for messages: id_path `/payment/id`.
    label: String,
}

/// Where each envelope field is found: a slot of a [`PathTree`] per configured pointer, and the
/// rules that turn the captured values into an [`Envelope`]. Shared by every decoder that reads
/// fields at JSON-pointer paths (JSON, Avro), so the same configuration means the same thing.
#[derive(Debug)]
pub(crate) struct FieldMap {
    id: Path,
    time: Option<Path>,
    source: Option<Path>,
    event_type: Option<Path>,
    subject: Option<Path>,
    sequence: Option<Path>,
    traceparent: Option<Path>,
    causation_id: Option<Path>,
    correlation_id: Option<Path>,
    /// Attribute name and slot, in configuration (name) order.
    attributes: Vec<(String, usize)>,
    traceparent_header: String,
    max_value_bytes: usize,
    time_fallback: TimeFallback,
}

impl FieldMap {
    /// Adds every configured pointer of `config` to `tree`. A pointer not starting with `/`
    /// simply never matches.
    pub(crate) fn new(config: &JsonConfig, tree: &mut PathTree) -> Self {
        let mut path = |key: &str, pointer: &str| Path {
            slot: tree.add(pointer),
            label: format!("{key} `{pointer}`"),
        };
        let id = path("id_path", &config.id_path);
        let mut optional = |key: &str, pointer: &Option<String>| {
            pointer.as_deref().map(|pointer| path(key, pointer))
        };
        let time = optional("time_path", &config.time_path);
        let source = optional("source_path", &config.source_path);
        let event_type = optional("type_path", &config.type_path);
        let subject = optional("subject_path", &config.subject_path);
        let sequence = optional("sequence_path", &config.sequence_path);
        let traceparent = optional("traceparent_path", &config.traceparent_path);
        let causation_id = optional("causation_id_path", &config.causation_id_path);
        let correlation_id = optional("correlation_id_path", &config.correlation_id_path);
        let attributes = config
            .attributes
            .iter()
            .map(|(name, pointer)| (name.clone(), tree.add(pointer)))
            .collect();
        Self {
            id,
            time,
            source,
            event_type,
            subject,
            sequence,
            traceparent,
            causation_id,
            correlation_id,
            attributes,
            traceparent_header: config.traceparent_header.clone(),
            max_value_bytes: config.max_value_bytes,
            time_fallback: config.time_fallback,
        }
    }

    /// Largest record value accepted, in bytes.
    pub(crate) fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// Fills `out` (already cleared) from the values captured in `slots`.
    pub(crate) fn fill(
        &self,
        record: &RawRecord<'_>,
        slots: &[Scalar<'_>],
        out: &mut Envelope,
    ) -> Result<(), DecodeError> {
        let at = |path: &Path| slots.get(path.slot).unwrap_or(&Scalar::Missing);

        // Id: required, a non-empty string or an integer.
        let id = at(&self.id);
        if matches!(id, Scalar::Missing | Scalar::Null)
            || matches!(id, Scalar::Str(text) if text.is_empty())
        {
            return Err(DecodeError::new(
                DecodeErrorClass::MissingField,
                format!("{} is absent or empty", self.id.label),
            ));
        }
        push_text(id, &self.id, &mut out.id)?;

        out.event_time_ms = match self.time.as_ref().map(|path| (path, at(path))) {
            None => fallback_time(self.time_fallback, record, "event time (no time_path)")?,
            Some((path, value)) if value.is_absent() => {
                fallback_time(self.time_fallback, record, &path.label)?
            }
            Some((path, value)) => time_ms(value).ok_or_else(|| {
                DecodeError::new(
                    DecodeErrorClass::InvalidField,
                    format!(
                        "{} must be an RFC 3339 timestamp or an integer of milliseconds since \
                         the epoch",
                        path.label
                    ),
                )
            })?,
        };

        for (path, field) in [
            (&self.source, &mut out.source),
            (&self.event_type, &mut out.event_type),
            (&self.subject, &mut out.subject),
            (&self.causation_id, &mut out.causation_id),
            (&self.correlation_id, &mut out.correlation_id),
        ] {
            if let Some(path) = path {
                push_text(at(path), path, field)?;
            }
        }

        if let Some(path) = &self.sequence {
            let value = at(path);
            if !value.is_absent() {
                out.sequence = Some(scalar_to_sequence(value).ok_or_else(|| {
                    DecodeError::new(
                        DecodeErrorClass::InvalidField,
                        format!(
                            "{} must be a non-negative integer or a string of decimal digits",
                            path.label
                        ),
                    )
                })?);
            }
        }

        out.trace = self.trace(
            record,
            self.traceparent.as_ref().map(|path| (path, at(path))),
        )?;

        for (name, slot) in &self.attributes {
            if let Some(value) = slots.get(*slot).and_then(Scalar::to_attribute) {
                out.attributes.push((name.clone(), value));
            }
        }
        Ok(())
    }

    /// The trace context from the configured path, or else from the configured header.
    fn trace(
        &self,
        record: &RawRecord<'_>,
        from_path: Option<(&Path, &Scalar<'_>)>,
    ) -> Result<Option<TraceContext>, DecodeError> {
        let invalid = |what: &str| {
            DecodeError::new(
                DecodeErrorClass::InvalidTraceContext,
                format!("{what} is not a valid W3C traceparent"),
            )
        };
        match from_path {
            Some((_, value)) if value.is_absent() => {}
            Some((path, Scalar::Str(text))) => {
                return TraceContext::parse_traceparent(text.as_bytes())
                    .map(Some)
                    .ok_or_else(|| invalid(&path.label));
            }
            Some((path, _)) => return Err(invalid(&path.label)),
            None => {}
        }
        let Some(value) = record.header(&self.traceparent_header) else {
            return Ok(None);
        };
        let text = header_as_str(&self.traceparent_header, value)?;
        TraceContext::parse_traceparent(text.as_bytes())
            .map(Some)
            .ok_or_else(|| invalid(&format!("header `{}`", self.traceparent_header)))
    }
}

/// Appends a string, or an integer as its decimal text; absent or null appends nothing.
fn push_text(value: &Scalar<'_>, path: &Path, field: &mut String) -> Result<(), DecodeError> {
    match value {
        Scalar::Missing | Scalar::Null => {}
        Scalar::Str(text) => field.push_str(text),
        // Writing into a String cannot fail.
        Scalar::I64(number) => {
            let _ = write!(field, "{number}");
        }
        Scalar::U64(number) => {
            let _ = write!(field, "{number}");
        }
        Scalar::F64(_) | Scalar::Bool(_) | Scalar::Object | Scalar::Array => {
            return Err(DecodeError::new(
                DecodeErrorClass::InvalidField,
                format!("{} must be a string or an integer", path.label),
            ))
        }
    }
    Ok(())
}

/// An RFC 3339 string or an integer of epoch milliseconds.
fn time_ms(value: &Scalar<'_>) -> Option<i64> {
    match value {
        Scalar::Str(text) => parse_rfc3339_ms(text),
        Scalar::I64(number) => Some(*number),
        Scalar::U64(number) => i64::try_from(*number).ok(),
        _ => None,
    }
}
