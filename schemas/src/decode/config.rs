//! Decoder settings, deserialized from the pipeline configuration, and their validation.

use std::collections::BTreeMap;

use super::DecoderConfig;

/// Envelope field names an attribute may not take: [`crate::Envelope::field`] resolves these to the
/// built-in fields, so an attribute with such a name could never be looked up.
pub const BUILT_IN_FIELD_NAMES: [&str; 7] = [
    "id",
    "source",
    "type",
    "subject",
    "causation_id",
    "correlation_id",
    "sequence",
];

/// What to do with an event that carries no event time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFallback {
    /// Use the Kafka record timestamp; an event with neither is rejected (`missing_field`).
    #[default]
    RecordTimestamp,
    /// Reject the event (`missing_field`).
    Reject,
}

/// Settings of the CloudEvents decoder (`format = "cloudevents"`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// Largest record value accepted, in bytes; larger values are rejected (`oversized`) before
    /// any parsing. Applies in binary and structured mode.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// What to do when the event has no `time` attribute.
    #[serde(default = "default_time_fallback")]
    pub time_fallback: TimeFallback,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: default_max_value_bytes(),
            time_fallback: default_time_fallback(),
        }
    }
}

/// Settings of the plain-JSON decoder (`format = "json"`). Every `*_path` is a JSON pointer
/// (RFC 6901, e.g. `/payment/id`) into the record value.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonConfig {
    /// JSON pointer to the event id: a non-empty string, or an integer (used as its decimal text).
    /// Required.
    pub id_path: String,
    /// JSON pointer to the event time: an RFC 3339 string or an integer of milliseconds since the
    /// Unix epoch. When unset, or absent in a value, `time_fallback` applies.
    #[serde(default)]
    pub time_path: Option<String>,
    /// JSON pointer to the event source (string or integer).
    #[serde(default)]
    pub source_path: Option<String>,
    /// JSON pointer to the event type (string or integer).
    #[serde(default)]
    pub type_path: Option<String>,
    /// JSON pointer to the event subject, the business key (string or integer).
    #[serde(default)]
    pub subject_path: Option<String>,
    /// JSON pointer to the business sequence number: a non-negative integer or a string of decimal
    /// digits.
    #[serde(default)]
    pub sequence_path: Option<String>,
    /// JSON pointer to a W3C `traceparent` string. When unset, or absent in a value, the header
    /// named by `traceparent_header` is used instead.
    #[serde(default)]
    pub traceparent_path: Option<String>,
    /// JSON pointer to the id of the event that caused this one (string or integer).
    #[serde(default)]
    pub causation_id_path: Option<String>,
    /// JSON pointer to the correlation id shared by a business flow (string or integer).
    #[serde(default)]
    pub correlation_id_path: Option<String>,
    /// Kafka header holding a W3C `traceparent`, read when `traceparent_path` is unset or absent
    /// in the value.
    #[serde(default = "default_traceparent_header")]
    pub traceparent_header: String,
    /// Further attributes: attribute name → JSON pointer. Strings, numbers and booleans are kept;
    /// absent, null, object and array values are skipped. Attributes appear in name order.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Largest record value accepted, in bytes; larger values are rejected (`oversized`) before
    /// any parsing.
    #[serde(default = "default_max_value_bytes")]
    pub max_value_bytes: usize,
    /// What to do when the value carries no event time.
    #[serde(default = "default_time_fallback")]
    pub time_fallback: TimeFallback,
}

impl JsonConfig {
    /// A configuration reading the id at `id_path` and everything else at its default: no other
    /// paths, the `traceparent` header, 1 MiB values, record-timestamp time fallback.
    pub fn new(id_path: impl Into<String>) -> Self {
        Self {
            id_path: id_path.into(),
            time_path: None,
            source_path: None,
            type_path: None,
            subject_path: None,
            sequence_path: None,
            traceparent_path: None,
            causation_id_path: None,
            correlation_id_path: None,
            traceparent_header: default_traceparent_header(),
            attributes: BTreeMap::new(),
            max_value_bytes: default_max_value_bytes(),
            time_fallback: default_time_fallback(),
        }
    }
}

/// How an Avro value is framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AvroWireFormat {
    /// Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro binary body.
    #[default]
    Confluent,
    /// A bare Avro binary body, every value written with `registry.schema_file`.
    Raw,
}

/// Settings of the Avro decoder (`format = "avro"`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AvroConfig {
    /// How values are framed.
    #[serde(default)]
    pub wire_format: AvroWireFormat,
    /// Where writer schemas come from.
    pub registry: RegistryConfig,
    /// Where the envelope fields are, as JSON pointers into the Avro record (`/order/id`: field
    /// `id` of record field `order`; array items by index, map entries by key; unions are
    /// transparent). Same keys and meaning as the JSON decoder's. `timestamp-millis`,
    /// `timestamp-micros` and `date` fields are converted to milliseconds.
    pub fields: JsonConfig,
}

/// Where the Avro decoder finds writer schemas.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of a Confluent-compatible Schema Registry (`http://registry:8081`).
    #[serde(default)]
    pub url: Option<String>,
    /// A directory of writer schemas named `<id>.avsc` or `<id>-<name>.avsc`, for setups without
    /// a registry. Exclusive with `url`.
    #[serde(default)]
    pub directory: Option<String>,
    /// The single writer schema of `wire_format = "raw"`.
    #[serde(default)]
    pub schema_file: Option<String>,
    /// Registry user (HTTP basic authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the registry password. Secrets are read from files only, never from the
    /// configuration itself.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Timeout of one registry request, milliseconds.
    #[serde(default = "default_registry_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Requests per schema lookup before the registry counts as unavailable (the engine then
    /// pauses and retries; it never dead-letters a record because the registry is down).
    #[serde(default = "default_registry_attempts")]
    pub attempts: u32,
    /// Wait before the second request, doubled for each further one, milliseconds.
    #[serde(default = "default_registry_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Most schema ids kept compiled in memory.
    #[serde(default = "default_max_cached_schemas")]
    pub max_cached_schemas: usize,
}

impl RegistryConfig {
    fn validate(
        &self,
        wire_format: AvroWireFormat,
        key: &dyn Fn(&str) -> String,
        problems: &mut Vec<String>,
    ) {
        match wire_format {
            AvroWireFormat::Confluent => {
                if self.url.is_some() == self.directory.is_some() {
                    problems.push(format!(
                        "{}: exactly one of `{}` and `{}` is required with wire_format = \"confluent\"",
                        key("url"),
                        key("url"),
                        key("directory")
                    ));
                }
                if self.schema_file.is_some() {
                    problems.push(format!(
                        "{}: only used with wire_format = \"raw\"",
                        key("schema_file")
                    ));
                }
            }
            AvroWireFormat::Raw => {
                if self.schema_file.is_none() {
                    problems.push(format!(
                        "{}: required with wire_format = \"raw\"",
                        key("schema_file")
                    ));
                }
                if self.url.is_some() || self.directory.is_some() {
                    problems.push(format!(
                        "{}: raw values carry no schema id; use schema_file instead of url or directory",
                        key("url")
                    ));
                }
            }
        }
        if let Some(url) = &self.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(format!(
                    "{}: must start with http:// or https://",
                    key("url")
                ));
            }
        }
        if self.password_file.is_some() && self.username.is_none() {
            problems.push(format!(
                "{}: set `{}` too",
                key("password_file"),
                key("username")
            ));
        }
        if self.request_timeout_ms == 0 {
            problems.push(format!("{}: must be positive", key("request_timeout_ms")));
        }
        if self.attempts == 0 {
            problems.push(format!("{}: must be at least 1", key("attempts")));
        }
        if self.max_cached_schemas == 0 {
            problems.push(format!("{}: must be at least 1", key("max_cached_schemas")));
        }
    }
}

/// 5 s.
pub fn default_registry_request_timeout_ms() -> u64 {
    5_000
}

/// Three requests per lookup.
pub fn default_registry_attempts() -> u32 {
    3
}

/// 200 ms, then 400 ms.
pub fn default_registry_retry_backoff_ms() -> u64 {
    200
}

/// A thousand schema ids.
pub fn default_max_cached_schemas() -> usize {
    1_000
}

/// 1 MiB.
pub fn default_max_value_bytes() -> usize {
    1_048_576
}

/// The W3C header name.
pub fn default_traceparent_header() -> String {
    "traceparent".to_owned()
}

/// Fall back to the Kafka record timestamp.
pub fn default_time_fallback() -> TimeFallback {
    TimeFallback::RecordTimestamp
}

impl DecoderConfig {
    /// Checks the configuration and returns every problem found (empty when valid). Each message
    /// starts with the full configuration key at fault, `key_prefix` being the key of this decoder
    /// table (e.g. `pipelines.payments.decoder`).
    pub fn validate(&self, key_prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let key = |field: &str| {
            if key_prefix.is_empty() {
                field.to_owned()
            } else {
                format!("{key_prefix}.{field}")
            }
        };
        match self {
            DecoderConfig::Cloudevents(config) => {
                check_max_value_bytes(
                    config.max_value_bytes,
                    &key("max_value_bytes"),
                    &mut problems,
                );
            }
            DecoderConfig::Json(config) => validate_fields(config, &key, &mut problems),
            DecoderConfig::Avro(config) => {
                validate_fields(
                    &config.fields,
                    &|field| key(&format!("fields.{field}")),
                    &mut problems,
                );
                config.registry.validate(
                    config.wire_format,
                    &|field| key(&format!("registry.{field}")),
                    &mut problems,
                );
            }
            DecoderConfig::OtlpProto(config) | DecoderConfig::OtlpJson(config) => {
                check_max_value_bytes(
                    config.max_value_bytes,
                    &key("max_value_bytes"),
                    &mut problems,
                );
            }
        }
        problems
    }
}

/// The path fields shared by the JSON and Avro decoders. `key` turns a field name into its full
/// configuration key.
fn validate_fields(config: &JsonConfig, key: &dyn Fn(&str) -> String, problems: &mut Vec<String>) {
    check_pointer(&config.id_path, &key("id_path"), problems);
    let optional = [
        ("time_path", &config.time_path),
        ("source_path", &config.source_path),
        ("type_path", &config.type_path),
        ("subject_path", &config.subject_path),
        ("sequence_path", &config.sequence_path),
        ("traceparent_path", &config.traceparent_path),
        ("causation_id_path", &config.causation_id_path),
        ("correlation_id_path", &config.correlation_id_path),
    ];
    for (field, pointer) in optional {
        if let Some(pointer) = pointer {
            check_pointer(pointer, &key(field), problems);
        }
    }
    if config.traceparent_header.is_empty() {
        problems.push(format!("{}: must not be empty", key("traceparent_header")));
    }
    for (name, pointer) in &config.attributes {
        if name.is_empty() {
            problems.push(format!(
                "{}: attribute names must not be empty",
                key("attributes")
            ));
        } else if BUILT_IN_FIELD_NAMES.contains(&name.as_str()) {
            problems.push(format!(
                "{}.{name}: `{name}` is a built-in envelope field; choose another \
                 attribute name",
                key("attributes")
            ));
        }
        check_pointer(pointer, &format!("{}.{name}", key("attributes")), problems);
    }
    check_max_value_bytes(config.max_value_bytes, &key("max_value_bytes"), problems);
}

fn check_max_value_bytes(value: usize, key: &str, problems: &mut Vec<String>) {
    if value == 0 {
        problems.push(format!("{key}: must be greater than 0"));
    }
}

/// A JSON pointer is empty (the whole value) or starts with `/`, and every `~` in it is followed
/// by `0` or `1` (RFC 6901 escapes).
fn check_pointer(pointer: &str, key: &str, problems: &mut Vec<String>) {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        problems.push(format!("{key}: must be a JSON pointer starting with '/'"));
        return;
    }
    let mut chars = pointer.chars();
    while let Some(character) = chars.next() {
        if character == '~' && !matches!(chars.next(), Some('0' | '1')) {
            problems.push(format!(
                "{key}: '~' in a JSON pointer must be followed by '0' or '1' ('~0' is '~', '~1' is \
                 '/')"
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<DecoderConfig, String> {
        serde_json::from_value(value).map_err(|error| error.to_string())
    }

    #[test]
    fn cloudevents_defaults() {
        let config = parse(json!({ "format": "cloudevents" })).unwrap();
        assert_eq!(
            config,
            DecoderConfig::Cloudevents(CloudEventsConfig::default())
        );
        let DecoderConfig::Cloudevents(config) = config else {
            unreachable!()
        };
        assert_eq!(config.max_value_bytes, 1_048_576);
        assert_eq!(config.time_fallback, TimeFallback::RecordTimestamp);
    }

    #[test]
    fn json_defaults_and_full_form() {
        let config = parse(json!({ "format": "json", "id_path": "/id" })).unwrap();
        assert_eq!(config, DecoderConfig::Json(JsonConfig::new("/id")));

        let config = parse(json!({
            "format": "json",
            "id_path": "/payment/id",
            "time_path": "/payment/at",
            "source_path": "/src",
            "type_path": "/kind",
            "subject_path": "/payment/account",
            "sequence_path": "/seq",
            "traceparent_path": "/trace",
            "causation_id_path": "/cause",
            "correlation_id_path": "/corr",
            "traceparent_header": "x-trace",
            "attributes": { "amount": "/payment/amount", "currency": "/payment/currency" },
            "max_value_bytes": 4096,
            "time_fallback": "reject",
        }))
        .unwrap();
        let DecoderConfig::Json(config) = config else {
            panic!("expected a JSON config")
        };
        assert_eq!(config.id_path, "/payment/id");
        assert_eq!(config.time_path.as_deref(), Some("/payment/at"));
        assert_eq!(config.correlation_id_path.as_deref(), Some("/corr"));
        assert_eq!(config.traceparent_header, "x-trace");
        assert_eq!(
            config.attributes.keys().collect::<Vec<_>>(),
            ["amount", "currency"]
        );
        assert_eq!(config.max_value_bytes, 4096);
        assert_eq!(config.time_fallback, TimeFallback::Reject);
    }

    #[test]
    fn config_round_trips_through_serialization() {
        let mut json = JsonConfig::new("/id");
        json.attributes.insert("region".into(), "/region".into());
        json.time_fallback = TimeFallback::Reject;
        for config in [
            DecoderConfig::Json(json),
            DecoderConfig::Cloudevents(CloudEventsConfig::default()),
        ] {
            let value = serde_json::to_value(&config).unwrap();
            assert_eq!(parse(value).unwrap(), config);
        }
    }

    #[test]
    fn unknown_keys_are_rejected_inside_the_tagged_enum() {
        let error =
            parse(json!({ "format": "json", "id_path": "/id", "id_pth": "/x" })).unwrap_err();
        assert!(error.contains("unknown field `id_pth`"), "{error}");
        let error = parse(json!({ "format": "cloudevents", "max_value_byte": 10 })).unwrap_err();
        assert!(error.contains("unknown field `max_value_byte`"), "{error}");
        // The tag itself is not an unknown key.
        assert!(parse(json!({ "format": "cloudevents", "max_value_bytes": 10 })).is_ok());
    }

    #[test]
    fn bad_tags_and_missing_required_keys_are_rejected() {
        let error = parse(json!({ "format": "protobuf" })).unwrap_err();
        assert!(error.contains("unknown variant `protobuf`"), "{error}");
        let error = parse(json!({ "id_path": "/id" })).unwrap_err();
        assert!(error.contains("missing field `format`"), "{error}");
        let error = parse(json!({ "format": "json" })).unwrap_err();
        assert!(error.contains("missing field `id_path`"), "{error}");
        let error = parse(json!({ "format": "json", "id_path": "/id", "time_fallback": "now" }))
            .unwrap_err();
        assert!(error.contains("unknown variant `now`"), "{error}");
        let error = parse(json!({ "format": "cloudevents", "max_value_bytes": -1 })).unwrap_err();
        assert!(error.contains("invalid value"), "{error}");
    }

    #[test]
    fn valid_configs_have_no_problems() {
        let mut json = JsonConfig::new("/payment/id");
        json.time_path = Some(String::new());
        json.subject_path = Some("/a~1b/c~0d/0".into());
        json.attributes
            .insert("amount".into(), "/payment/amount".into());
        assert_eq!(
            DecoderConfig::Json(json).validate("pipelines.payments.decoder"),
            Vec::<String>::new()
        );
        assert_eq!(
            DecoderConfig::Cloudevents(CloudEventsConfig::default()).validate("x"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn validation_reports_every_problem_with_its_full_key() {
        let mut json = JsonConfig::new("payment/id");
        json.time_path = Some("at".into());
        json.correlation_id_path = Some("/a~2".into());
        json.traceparent_header = String::new();
        json.max_value_bytes = 0;
        json.attributes.insert("".into(), "/x".into());
        json.attributes.insert("subject".into(), "/customer".into());
        json.attributes.insert("amount".into(), "amount".into());
        let problems = DecoderConfig::Json(json).validate("pipelines.payments.decoder");
        assert_eq!(
            problems,
            [
                "pipelines.payments.decoder.id_path: must be a JSON pointer starting with '/'",
                "pipelines.payments.decoder.time_path: must be a JSON pointer starting with '/'",
                "pipelines.payments.decoder.correlation_id_path: '~' in a JSON pointer must be \
                 followed by '0' or '1' ('~0' is '~', '~1' is '/')",
                "pipelines.payments.decoder.traceparent_header: must not be empty",
                "pipelines.payments.decoder.attributes: attribute names must not be empty",
                "pipelines.payments.decoder.attributes.amount: must be a JSON pointer starting \
                 with '/'",
                "pipelines.payments.decoder.attributes.subject: `subject` is a built-in envelope \
                 field; choose another attribute name",
                "pipelines.payments.decoder.max_value_bytes: must be greater than 0",
            ]
        );
    }

    #[test]
    fn every_built_in_name_is_refused_as_an_attribute() {
        for name in BUILT_IN_FIELD_NAMES {
            let mut json = JsonConfig::new("/id");
            json.attributes.insert(name.into(), "/x".into());
            let problems = DecoderConfig::Json(json).validate("d");
            assert_eq!(problems.len(), 1, "{name}: {problems:?}");
            assert!(
                problems[0].starts_with(&format!("d.attributes.{name}: ")),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn cloudevents_validation_and_empty_prefix() {
        let config = DecoderConfig::Cloudevents(CloudEventsConfig {
            max_value_bytes: 0,
            time_fallback: TimeFallback::Reject,
        });
        assert_eq!(
            config.validate("inputs.orders.decoder"),
            ["inputs.orders.decoder.max_value_bytes: must be greater than 0"]
        );
        assert_eq!(
            config.validate(""),
            ["max_value_bytes: must be greater than 0"]
        );
    }
}
