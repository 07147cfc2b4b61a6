//! Settings of the PII operator: which value fields and headers to drop, mask or tokenize.

use std::path::PathBuf;

/// What happens to a configured field or header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PiiAction {
    /// Removed from the record (an array item becomes null, so positions keep their meaning).
    Drop,
    /// Replaced by asterisks, keeping the last `mask_keep_last_chars` characters of a string;
    /// numbers, booleans, objects and arrays become null.
    Mask,
    /// Replaced by `tok_` and 32 hex digits of HMAC-SHA256 under the configured key: the same
    /// value always gives the same token, so dedupe and joins still work, and without the key
    /// the token cannot be reversed or recomputed.
    Tokenize,
}

/// A field of the record value, by JSON pointer.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// JSON pointer into the record value: `/data/email` for a structured-mode CloudEvent,
    /// `/email` for a binary-mode one (its value is the data) or a plain JSON value.
    pub path: String,
    pub action: PiiAction,
}

/// A Kafka header (CloudEvents binary-mode attributes are `ce_<name>` headers).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRule {
    /// Header name, exact (Kafka header names are case-sensitive).
    pub header: String,
    pub action: PiiAction,
}

/// Personal data handling of a pipeline. It runs first in the chain, so every operator after it,
/// every output and every changelog sees only the rewritten record; the pipeline's dead letters
/// carry no key, value or original headers (their coordinates point back to the source).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PiiConfig {
    /// File holding the tokenization key (its bytes, a trailing newline removed). Required when
    /// a rule tokenizes. Keys are read from files only, never from the configuration.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Value fields to rewrite. The value must be JSON (CloudEvents or JSON decoders).
    #[serde(default)]
    pub fields: Vec<FieldRule>,
    /// Headers to rewrite.
    #[serde(default)]
    pub headers: Vec<HeaderRule>,
    /// What to do with the Kafka key, when it carries personal data (an e-mail address as
    /// key). A tokenized key still partitions the output consistently; a dropped one leaves it
    /// to the producer's partitioner.
    #[serde(default)]
    pub key: Option<PiiAction>,
    /// Characters of a masked string kept at its end.
    #[serde(default = "default_mask_keep_last_chars")]
    pub mask_keep_last_chars: usize,
}

/// Nothing kept.
pub fn default_mask_keep_last_chars() -> usize {
    0
}

/// Shortest tokenization key accepted: HMAC-SHA256 is only as strong as its key.
pub const MIN_KEY_BYTES: usize = 16;

impl PiiConfig {
    /// Every problem, each naming its key under `prefix` (`pipelines.payments.pii`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.fields.is_empty() && self.headers.is_empty() && self.key.is_none() {
            problems.push(format!(
                "{prefix}: configure at least one of `fields`, `headers` and `key`"
            ));
        }
        for (index, rule) in self.fields.iter().enumerate() {
            if !rule.path.starts_with('/') {
                problems.push(format!(
                    "{prefix}.fields[{index}].path: must be a JSON pointer starting with '/'"
                ));
            }
        }
        for (index, rule) in self.headers.iter().enumerate() {
            if rule.header.is_empty() {
                problems.push(format!(
                    "{prefix}.headers[{index}].header: must not be empty"
                ));
            }
            if rule.header.starts_with("breadcrumb-") {
                problems.push(format!(
                    "{prefix}.headers[{index}].header: breadcrumb's own headers carry no personal data"
                ));
            }
        }
        let tokenizes = self
            .fields
            .iter()
            .map(|rule| rule.action)
            .chain(self.headers.iter().map(|rule| rule.action))
            .chain(self.key)
            .any(|action| action == PiiAction::Tokenize);
        if tokenizes && self.key_file.is_none() {
            problems.push(format!(
                "{prefix}.key_file: required when a rule has action = \"tokenize\""
            ));
        }
        problems
    }
}
