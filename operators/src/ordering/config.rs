//! Ordering configuration.

use serde::{Deserialize, Serialize};

pub fn default_key_fields() -> Vec<String> {
    vec!["subject".to_owned()]
}

/// The envelope's own sequence: the CloudEvents `sequence` extension, or the decoder's configured
/// sequence path.
pub fn default_sequence_field() -> String {
    "sequence".to_owned()
}

/// One minute of event time: long enough for producer retries and partition skew upstream,
/// short enough that a lost event does not hold its key's stream for long.
pub const fn default_gap_timeout_ms() -> i64 {
    60_000
}

/// A key this far behind is a runaway producer or a sequence reset without an epoch; waiting
/// longer only delays the gap record.
pub const fn default_max_waiting_events_per_key() -> usize {
    1_000
}

/// 64 MiB of held records per partition.
pub const fn default_max_waiting_bytes_per_partition() -> usize {
    64 << 20
}

/// Seven days, as dedupe's horizon: a key idle longer starts afresh.
pub const fn default_key_ttl_ms() -> i64 {
    7 * 24 * 60 * 60 * 1000
}

/// Enough to tell late events from repeats after a burst of losses on one key; the head record
/// grows by 16 bytes per range.
pub const fn default_max_gap_ranges_per_key() -> usize {
    16
}

/// About 15 MiB per partition at 40-byte keys.
pub const fn default_head_cache_keys_per_partition() -> usize {
    100_000
}

/// Bounds the tombstones one transaction carries, so expiry never makes a commit huge.
pub const fn default_max_expirations_per_commit() -> usize {
    10_000
}

/// Ordering settings of one pipeline (`[pipelines.<name>.ordering]`).
///
/// Events of one key (by default the event's subject) are emitted in sequence order. An event
/// ahead of the next expected sequence is held in state until the missing ones arrive, or until
/// the gap is given up (timeout, overflow, epoch change): then a gap record goes to the gaps port
/// and the held events are released. See [`crate::ordering`] for the policies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderingConfig {
    /// Envelope fields whose values together name the ordered stream: `subject` (the default),
    /// `id`, `source`, `type`, `causation_id`, `correlation_id` or an attribute name. An event
    /// lacking one is rejected (`missing_field`).
    #[serde(default = "default_key_fields")]
    pub key_fields: Vec<String>,
    /// Where the sequence number is read: `sequence` (the default: the CloudEvents `sequence`
    /// extension or the decoder's configured sequence path) or an attribute name. The value must
    /// be a non-negative integer (or a string of one) below 2^64 - 1; an event without one is
    /// rejected (`missing_field`, or `invalid_field` when it is not such an integer).
    #[serde(default = "default_sequence_field")]
    pub sequence_field: String,
    /// The sequence every key (and every epoch of a key) starts at. Absent: the first event seen
    /// for a key starts it, whatever its sequence.
    #[serde(default)]
    pub first_sequence: Option<u64>,
    /// Attribute holding the producer's epoch (an integer, or a string of one). A higher epoch
    /// restarts the key's sequence; an event of a lower epoch is late. Absent: one epoch, `0`.
    #[serde(default)]
    pub epoch_field: Option<String>,
    /// Event time, milliseconds: the longest an event is held waiting for a missing predecessor,
    /// measured in the partition's stream time (the highest event time seen), so a replay
    /// decides exactly as the first run did.
    #[serde(default = "default_gap_timeout_ms")]
    pub gap_timeout_ms: i64,
    /// Processing time, milliseconds: also give up a gap this long after the engine first saw the
    /// key waiting (checked about once per commit interval), for partitions whose stream time
    /// stalls. Not deterministic on replay. Absent: event time only.
    #[serde(default)]
    pub gap_timeout_processing_ms: Option<i64>,
    /// Most events held for one key; one more forces a gap (reason `overflow`).
    #[serde(default = "default_max_waiting_events_per_key")]
    pub max_waiting_events_per_key: usize,
    /// Most bytes of held records (their encoded size) per partition; beyond it, the key waiting
    /// longest is forced to give up its gap (reason `overflow`) until the partition fits. Memory
    /// for held events is this plus about 100 bytes per event.
    #[serde(default = "default_max_waiting_bytes_per_partition")]
    pub max_waiting_bytes_per_partition: usize,
    /// Event time, milliseconds: a key's position (its head) is forgotten after the partition's
    /// stream time moved this far past the key's last change (rounded up to a sixteenth of it, so
    /// up to 17/16 of it); the key then starts afresh. Must exceed `gap_timeout_ms`.
    #[serde(default = "default_key_ttl_ms")]
    pub key_ttl_ms: i64,
    /// Gap ranges remembered per key, to route an event of a given-up range to the late port
    /// rather than the duplicates port. Below the oldest forgotten range, an event that was not
    /// emitted cannot be told from a repeat: it goes to the late port (`gap_history_forgotten`).
    #[serde(default = "default_max_gap_ranges_per_key")]
    pub max_gap_ranges_per_key: usize,
    /// Key heads kept in memory per partition (the rest are read from the store). When full, the
    /// cache writes its changes to the store and starts empty.
    #[serde(default = "default_head_cache_keys_per_partition")]
    pub head_cache_keys_per_partition: usize,
    /// Most expired key heads deleted (and tombstoned in the changelog) per partition per commit.
    #[serde(default = "default_max_expirations_per_commit")]
    pub max_expirations_per_commit: usize,
}

impl Default for OrderingConfig {
    fn default() -> Self {
        Self {
            key_fields: default_key_fields(),
            sequence_field: default_sequence_field(),
            first_sequence: None,
            epoch_field: None,
            gap_timeout_ms: default_gap_timeout_ms(),
            gap_timeout_processing_ms: None,
            max_waiting_events_per_key: default_max_waiting_events_per_key(),
            max_waiting_bytes_per_partition: default_max_waiting_bytes_per_partition(),
            key_ttl_ms: default_key_ttl_ms(),
            max_gap_ranges_per_key: default_max_gap_ranges_per_key(),
            head_cache_keys_per_partition: default_head_cache_keys_per_partition(),
            max_expirations_per_commit: default_max_expirations_per_commit(),
        }
    }
}

impl OrderingConfig {
    /// Every problem at once, each naming its key under `prefix` (e.g.
    /// `pipelines.payments.ordering`).
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
        if self.sequence_field.trim().is_empty() {
            errors.push(format!("{prefix}.sequence_field: must not be empty"));
        }
        if self
            .epoch_field
            .as_ref()
            .is_some_and(|field| field.trim().is_empty())
        {
            errors.push(format!(
                "{prefix}.epoch_field: must not be empty (omit it for a single epoch)"
            ));
        }
        if self.first_sequence == Some(u64::MAX) {
            errors.push(format!(
                "{prefix}.first_sequence: must be below {}",
                u64::MAX
            ));
        }
        if self.gap_timeout_ms <= 0 {
            errors.push(format!(
                "{prefix}.gap_timeout_ms: must be positive, got {}",
                self.gap_timeout_ms
            ));
        }
        if let Some(timeout) = self.gap_timeout_processing_ms {
            if timeout <= 0 {
                errors.push(format!(
                    "{prefix}.gap_timeout_processing_ms: must be positive, got {timeout}"
                ));
            }
        }
        if self.max_waiting_events_per_key == 0 {
            errors.push(format!(
                "{prefix}.max_waiting_events_per_key: must be positive"
            ));
        }
        if self.max_waiting_bytes_per_partition == 0 {
            errors.push(format!(
                "{prefix}.max_waiting_bytes_per_partition: must be positive"
            ));
        }
        if self.key_ttl_ms <= self.gap_timeout_ms.max(0) {
            errors.push(format!(
                "{prefix}.key_ttl_ms: must exceed gap_timeout_ms ({}), got {}",
                self.gap_timeout_ms, self.key_ttl_ms
            ));
        }
        if self.max_gap_ranges_per_key == 0 || self.max_gap_ranges_per_key > 255 {
            errors.push(format!(
                "{prefix}.max_gap_ranges_per_key: must be between 1 and 255, got {}",
                self.max_gap_ranges_per_key
            ));
        }
        if self.head_cache_keys_per_partition == 0 {
            errors.push(format!(
                "{prefix}.head_cache_keys_per_partition: must be positive"
            ));
        }
        if self.max_expirations_per_commit == 0 {
            errors.push(format!(
                "{prefix}.max_expirations_per_commit: must be positive"
            ));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_config_defaults_and_validation_name_keys() {
        let config: OrderingConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, OrderingConfig::default());
        assert!(config.validate("p").is_empty());
        assert_eq!(config.key_fields, vec!["subject"]);
        assert_eq!(config.sequence_field, "sequence");
        assert_eq!(config.key_ttl_ms, 604_800_000);

        let bad = OrderingConfig {
            key_fields: vec![" ".into()],
            epoch_field: Some(String::new()),
            gap_timeout_ms: 0,
            gap_timeout_processing_ms: Some(-1),
            max_waiting_events_per_key: 0,
            max_gap_ranges_per_key: 256,
            ..OrderingConfig::default()
        };
        let errors = bad.validate("pipelines.payments.ordering");
        let keys: Vec<&str> = errors
            .iter()
            .map(|error| error.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![
                "pipelines.payments.ordering.key_fields",
                "pipelines.payments.ordering.epoch_field",
                "pipelines.payments.ordering.gap_timeout_ms",
                "pipelines.payments.ordering.gap_timeout_processing_ms",
                "pipelines.payments.ordering.max_waiting_events_per_key",
                "pipelines.payments.ordering.max_gap_ranges_per_key",
            ],
            "{errors:?}"
        );

        let short_ttl = OrderingConfig {
            key_ttl_ms: 60_000,
            ..OrderingConfig::default()
        };
        let errors = short_ttl.validate("p.ordering");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("p.ordering.key_ttl_ms: must exceed gap_timeout_ms"));
    }

    #[test]
    fn ordering_config_reads_every_field_and_rejects_unknown_keys() {
        let config: OrderingConfig = serde_json::from_str(
            r#"{"key_fields":["tenant","subject"],"sequence_field":"seq","first_sequence":1,
                "epoch_field":"epoch","gap_timeout_ms":5000,"gap_timeout_processing_ms":30000,
                "max_waiting_events_per_key":10,"max_waiting_bytes_per_partition":4096,
                "key_ttl_ms":86400000,"max_gap_ranges_per_key":4,
                "head_cache_keys_per_partition":100,"max_expirations_per_commit":50}"#,
        )
        .unwrap();
        assert!(config.validate("p").is_empty());
        assert_eq!(config.first_sequence, Some(1));
        assert_eq!(config.epoch_field.as_deref(), Some("epoch"));
        assert_eq!(config.gap_timeout_processing_ms, Some(30_000));

        let error = serde_json::from_str::<OrderingConfig>(r#"{"gap_timeout": 5}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `gap_timeout`"),
            "{error}"
        );
    }
}
