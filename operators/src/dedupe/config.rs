//! Dedupe configuration.

use serde::{Deserialize, Serialize};

/// Seven days: long enough to absorb producer retries, replays and late redeliveries.
pub const fn default_ttl_ms() -> i64 {
    7 * 24 * 60 * 60 * 1000
}

pub fn default_key_fields() -> Vec<String> {
    vec!["id".to_owned()]
}

/// Sized for a busy partition over one horizon; memory per partition is about 1.2 MiB per
/// million keys at a 1% false-positive rate, twice over (two generations).
pub const fn default_bloom_expected_keys_per_partition() -> usize {
    1_000_000
}

pub const fn default_bloom_false_positive_rate() -> f64 {
    0.01
}

/// Bounds the tombstones one transaction carries, so expiry never makes a commit huge.
pub const fn default_max_expirations_per_commit() -> usize {
    10_000
}

/// Dedupe settings of one pipeline (`[pipelines.<name>.dedupe]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DedupeConfig {
    /// Envelope fields whose values together identify an event: `id` (the default), `source`,
    /// `type`, `subject`, `causation_id`, `correlation_id`, `sequence` or an attribute name.
    #[serde(default = "default_key_fields")]
    pub key_fields: Vec<String>,
    /// Horizon in event time, milliseconds: a copy seen this long (in the partition's stream
    /// time) after the first copy is treated as new again.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: i64,
    /// Distinct keys a partition is expected to see within one horizon; sizes the bloom filter
    /// that keeps new keys from touching RocksDB. Exceeding it only raises the false-positive
    /// rate (more RocksDB reads), never changes a decision.
    #[serde(default = "default_bloom_expected_keys_per_partition")]
    pub bloom_expected_keys_per_partition: usize,
    /// Target false-positive rate of the bloom filter, between 0 and 1 (exclusive).
    #[serde(default = "default_bloom_false_positive_rate")]
    pub bloom_false_positive_rate: f64,
    /// Most expired keys deleted (and tombstoned in the changelog) per partition per commit.
    #[serde(default = "default_max_expirations_per_commit")]
    pub max_expirations_per_commit: usize,
    /// Dead-letter (reason `event_time_future`) an event whose time is more than this far
    /// ahead of the partition's stream time (highest event time seen), in milliseconds; such an
    /// event would otherwise drag stream time forward and expire every key. Unset: no bound.
    #[serde(default)]
    pub max_event_time_ahead_ms: Option<i64>,
    /// Dead-letter (reason `event_time_past`) an event whose time is more than this far behind
    /// the partition's stream time, in milliseconds. Unset: no bound (such an event is judged
    /// against keys still within the horizon, like any other).
    #[serde(default)]
    pub max_event_time_behind_ms: Option<i64>,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            key_fields: default_key_fields(),
            ttl_ms: default_ttl_ms(),
            bloom_expected_keys_per_partition: default_bloom_expected_keys_per_partition(),
            bloom_false_positive_rate: default_bloom_false_positive_rate(),
            max_expirations_per_commit: default_max_expirations_per_commit(),
            max_event_time_ahead_ms: None,
            max_event_time_behind_ms: None,
        }
    }
}

impl DedupeConfig {
    /// Every problem at once, each naming its key under `prefix` (e.g. `pipelines.pay.dedupe`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.key_fields.is_empty() {
            errors.push(format!("{prefix}.key_fields: must name at least one field"));
        }
        if self.key_fields.iter().any(|field| field.trim().is_empty()) {
            errors.push(format!(
                "{prefix}.key_fields: field names must not be empty"
            ));
        }
        if self.ttl_ms <= 0 {
            errors.push(format!(
                "{prefix}.ttl_ms: must be positive, got {}",
                self.ttl_ms
            ));
        }
        if self.bloom_expected_keys_per_partition == 0 {
            errors.push(format!(
                "{prefix}.bloom_expected_keys_per_partition: must be positive"
            ));
        }
        if !(self.bloom_false_positive_rate > 0.0 && self.bloom_false_positive_rate < 1.0) {
            errors.push(format!(
                "{prefix}.bloom_false_positive_rate: must be between 0 and 1 (exclusive), got {}",
                self.bloom_false_positive_rate
            ));
        }
        if self.max_expirations_per_commit == 0 {
            errors.push(format!(
                "{prefix}.max_expirations_per_commit: must be positive"
            ));
        }
        for (key, bound) in [
            ("max_event_time_ahead_ms", self.max_event_time_ahead_ms),
            ("max_event_time_behind_ms", self.max_event_time_behind_ms),
        ] {
            if bound.is_some_and(|bound| bound <= 0) {
                errors.push(format!("{prefix}.{key}: must be positive when set"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_config_defaults_and_validation_name_keys() {
        let config: DedupeConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, DedupeConfig::default());
        assert!(config.validate("p").is_empty());

        let bad = DedupeConfig {
            key_fields: vec![],
            ttl_ms: 0,
            bloom_false_positive_rate: 1.5,
            max_event_time_behind_ms: Some(0),
            ..DedupeConfig::default()
        };
        let errors = bad.validate("pipelines.pay.dedupe");
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(errors[3].starts_with("pipelines.pay.dedupe.max_event_time_behind_ms"));
        assert!(errors[0].starts_with("pipelines.pay.dedupe.key_fields"));
        assert!(errors[1].starts_with("pipelines.pay.dedupe.ttl_ms"));
        assert!(errors[2].starts_with("pipelines.pay.dedupe.bloom_false_positive_rate"));
    }

    #[test]
    fn dedupe_config_rejects_unknown_keys() {
        let error = serde_json::from_str::<DedupeConfig>(r#"{"ttl": 5}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `ttl`"), "{error}");
    }
}
