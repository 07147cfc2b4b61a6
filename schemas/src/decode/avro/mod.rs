//! Avro values: the Confluent wire format (magic byte 0, a 4-byte big-endian schema id, the Avro
//! binary body) with writer schemas from a Schema Registry or a directory, or raw Avro bodies
//! written with one known schema.
//!
//! The body is read straight into the envelope: the writer schema is compiled once per id
//! against the configured paths, and each record is walked once, skipping what no path needs,
//! without building an `apache_avro` value tree (the usual hot spot of Avro pipelines).

mod plan;
mod registry;
mod schema;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use smallvec::SmallVec;

pub use registry::{DirectoryRegistry, Fetched, HttpRegistry, SchemaSource, Unavailable};

use self::plan::Plan;
use self::schema::CompiledSchema;
use super::common::{check_size, Scalar};
use super::config::{AvroConfig, AvroWireFormat, RegistryConfig};
use super::fields::FieldMap;
use super::pointer::PathTree;
use super::Decoder;
use crate::error::{SchemasError, SchemasResult};
use crate::{DecodeError, DecodeErrorClass, Envelope, RawRecord};

/// Length of the Confluent wire header: magic byte and schema id.
pub const WIRE_HEADER_BYTES: usize = 5;

/// What is cached per schema id: its compiled plan, or why records naming it are rejected.
#[derive(Debug, Clone)]
enum Cached {
    Plan(Arc<Plan>),
    Rejected(DecodeErrorClass, String),
}

/// Decodes Avro values. Writer schemas are fetched on first use of their id and cached (ids are
/// immutable); a source that cannot answer yields [`DecodeErrorClass::SchemaUnavailable`], which
/// the engine retries instead of dead-lettering.
#[derive(Debug)]
pub struct AvroDecoder {
    tree: PathTree,
    fields: FieldMap,
    source: Source,
    cache: RwLock<HashMap<u32, Cached>>,
    max_cached_schemas: usize,
}

#[derive(Debug)]
enum Source {
    Registry(Arc<dyn SchemaSource>),
    /// `wire_format = "raw"`: every body is written with this schema.
    Raw(Arc<Plan>),
}

impl AvroDecoder {
    /// Builds the decoder from a validated configuration: reads the password and raw schema
    /// files now, so a bad path fails at start-up rather than on the first record.
    pub fn from_config(config: &AvroConfig) -> SchemasResult<Self> {
        let registry = &config.registry;
        let config_error = |key: &str, message: String| SchemasError::Config {
            key: format!("registry.{key}"),
            message,
        };
        match config.wire_format {
            AvroWireFormat::Raw => {
                let path = registry.schema_file.as_deref().ok_or_else(|| {
                    config_error("schema_file", "required with wire_format = \"raw\"".into())
                })?;
                let text = registry::read_schema_file(path.as_ref())
                    .map_err(|error| config_error("schema_file", error.0))?;
                let schema = CompiledSchema::parse(&text)
                    .map_err(|error| config_error("schema_file", error.0))?;
                Ok(Self::with_raw_schema(config, schema))
            }
            AvroWireFormat::Confluent => {
                let source: Arc<dyn SchemaSource> = match (&registry.url, &registry.directory) {
                    (Some(_), None) => Arc::new(HttpRegistry::from_config(registry)?),
                    (None, Some(directory)) => Arc::new(DirectoryRegistry::new(directory)),
                    _ => {
                        return Err(config_error(
                            "url",
                            "exactly one of registry.url and registry.directory is required".into(),
                        ))
                    }
                };
                Ok(Self::with_source(config, source))
            }
        }
    }

    /// A Confluent wire-format decoder over any schema source.
    pub fn with_source(config: &AvroConfig, source: Arc<dyn SchemaSource>) -> Self {
        let mut tree = PathTree::default();
        let fields = FieldMap::new(&config.fields, &mut tree);
        Self {
            tree,
            fields,
            source: Source::Registry(source),
            cache: RwLock::new(HashMap::new()),
            max_cached_schemas: config.registry.max_cached_schemas.max(1),
        }
    }

    fn with_raw_schema(config: &AvroConfig, schema: CompiledSchema) -> Self {
        let mut tree = PathTree::default();
        let fields = FieldMap::new(&config.fields, &mut tree);
        let plan = Arc::new(Plan::new(schema, tree.root()));
        Self {
            tree,
            fields,
            source: Source::Raw(plan),
            cache: RwLock::new(HashMap::new()),
            max_cached_schemas: 1,
        }
    }

    /// The plan for schema `id`, fetching and compiling it on first use.
    fn plan(&self, source: &dyn SchemaSource, id: u32) -> Result<Arc<Plan>, DecodeError> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .cloned();
        let entry = match cached {
            Some(entry) => entry,
            None => {
                let entry = match source.fetch(id) {
                    Err(error) => {
                        return Err(DecodeError::new(
                            DecodeErrorClass::SchemaUnavailable,
                            format!("schema id {id}: {error}"),
                        ))
                    }
                    Ok(Fetched::Unknown) => Cached::Rejected(
                        DecodeErrorClass::UnknownSchema,
                        format!("schema id {id} is not in the registry"),
                    ),
                    Ok(Fetched::NotAvro(kind)) => Cached::Rejected(
                        DecodeErrorClass::UnsupportedFormat,
                        format!("schema id {id} is a {kind} schema, not Avro"),
                    ),
                    Ok(Fetched::Avro(text)) => match CompiledSchema::parse(&text) {
                        Ok(schema) => Cached::Plan(Arc::new(Plan::new(schema, self.tree.root()))),
                        Err(error) => Cached::Rejected(
                            DecodeErrorClass::UnknownSchema,
                            format!("schema id {id}: {}", error.0),
                        ),
                    },
                };
                let mut cache = self
                    .cache
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if cache.len() >= self.max_cached_schemas {
                    // Rejections are cheap to learn again; plans are kept while there is room.
                    cache.retain(|_, cached| matches!(cached, Cached::Plan(_)));
                    if cache.len() >= self.max_cached_schemas {
                        cache.clear();
                    }
                }
                cache.insert(id, entry.clone());
                entry
            }
        };
        match entry {
            Cached::Plan(plan) => Ok(plan),
            Cached::Rejected(class, message) => Err(DecodeError::new(class, message)),
        }
    }
}

impl Decoder for AvroDecoder {
    fn decode(&self, record: &RawRecord<'_>, out: &mut Envelope) -> Result<(), DecodeError> {
        let value = record.value.ok_or_else(|| {
            DecodeError::new(DecodeErrorClass::MissingValue, "record has no value")
        })?;
        check_size(value, self.fields.max_value_bytes())?;
        let (plan, body) = match &self.source {
            Source::Raw(plan) => (Arc::clone(plan), value),
            Source::Registry(source) => {
                // The header length is checked before it is read: a short value is bad input.
                if value.len() < WIRE_HEADER_BYTES {
                    return Err(DecodeError::new(
                        DecodeErrorClass::InvalidAvro,
                        format!(
                            "value is {} bytes, shorter than the {WIRE_HEADER_BYTES}-byte Confluent wire header",
                            value.len()
                        ),
                    ));
                }
                if value[0] != 0 {
                    return Err(DecodeError::new(
                        DecodeErrorClass::UnsupportedFormat,
                        format!(
                            "magic byte is {}, not 0 (not the Confluent wire format)",
                            value[0]
                        ),
                    ));
                }
                let id = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
                (self.plan(source.as_ref(), id)?, &value[WIRE_HEADER_BYTES..])
            }
        };
        let mut slots: SmallVec<[Scalar<'_>; 16]> =
            SmallVec::from_elem(Scalar::Missing, self.tree.slot_count());
        plan.capture(body, &mut slots)
            .map_err(|error| DecodeError::new(error.class, error.message))?;
        self.fields.fill(record, &slots, out)
    }
}

impl HttpRegistry {
    /// The registry at `config.url`, with credentials from `username` and `password_file`.
    pub fn from_config(config: &RegistryConfig) -> SchemasResult<Self> {
        let config_error = |key: &str, message: String| SchemasError::Config {
            key: format!("registry.{key}"),
            message,
        };
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| config_error("url", "required".into()))?;
        let password = match &config.password_file {
            Some(path) => {
                Some(read_secret(path).map_err(|message| config_error("password_file", message))?)
            }
            None => None,
        };
        let credentials = config
            .username
            .as_deref()
            .map(|user| (user, password.as_deref().unwrap_or("")));
        Ok(HttpRegistry::new(
            url,
            credentials,
            Duration::from_millis(config.request_timeout_ms),
            config.attempts,
            Duration::from_millis(config.retry_backoff_ms),
        ))
    }
}

/// A secret from a file, trailing newline removed. The error names the file, never its content.
pub(crate) fn read_secret(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|error| format!("{path}: {error}"))
}

#[cfg(test)]
mod tests;
