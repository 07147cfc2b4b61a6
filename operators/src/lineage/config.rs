//! Lineage configuration.

use serde::{Deserialize, Serialize};

/// Five minutes of event time: span exporters batch for seconds, and a request's root span ends
/// (and is exported) only after every event it caused was produced.
pub const fn default_join_window_ms() -> i64 {
    300_000
}

/// Ancestors carried on a parent edge: enough for order → payment → invoice → refund chains
/// without letting a runaway causation loop make records large.
pub const fn default_max_chain_depth() -> usize {
    8
}

/// Seven days, as dedupe's horizon: parents older than this are no longer found, and lineage
/// queries about older events find nothing.
pub const fn default_event_ttl_ms() -> i64 {
    7 * 24 * 60 * 60 * 1000
}

/// Events held for their spans or parent per partition.
pub const fn default_max_pending_events_per_partition() -> usize {
    100_000
}

/// 64 MiB of held records per partition.
pub const fn default_max_pending_bytes_per_partition() -> usize {
    64 << 20
}

/// About 150 MiB per partition at 150 bytes a span.
pub const fn default_max_spans_per_partition() -> usize {
    1_000_000
}

/// Event nodes kept in memory for parent joins; the rest are read from the store.
pub const fn default_event_cache_per_partition() -> usize {
    100_000
}

/// Bounds the tombstones one transaction carries, so expiry never makes a commit huge.
pub const fn default_max_expirations_per_commit() -> usize {
    10_000
}

/// Lineage settings of one pipeline (`[pipelines.<name>.lineage]`).
///
/// Each business event is joined to the span that produced it (its `traceparent`'s parent id)
/// and its trace's root span, and to its parent event (its causation id). An event is held until
/// both sides are known or `join_window_ms` of stream time passed; then it is republished with
/// lineage headers and its edges go to the lineage port. See [`crate::lineage`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// Event time, milliseconds: how long an event waits for its spans and its parent, and how
    /// long a span is kept for events that arrive after it, both measured in the partition's
    /// stream time (the highest event or span end time seen).
    #[serde(default = "default_join_window_ms")]
    pub join_window_ms: i64,
    /// Most ancestors (parent first) listed on a parent edge.
    #[serde(default = "default_max_chain_depth")]
    pub max_chain_depth: usize,
    /// Event time, milliseconds: how long an event's lineage node stays in the store, for later
    /// events naming it as their parent and for lineage queries. Must exceed `join_window_ms`.
    #[serde(default = "default_event_ttl_ms")]
    pub event_ttl_ms: i64,
    /// Most events held per partition; one more forces the longest-waiting event out with
    /// orphan edges for what it still lacks (resolution `overflow`).
    #[serde(default = "default_max_pending_events_per_partition")]
    pub max_pending_events_per_partition: usize,
    /// Most bytes of held records (their encoded size) per partition, with the same policy.
    #[serde(default = "default_max_pending_bytes_per_partition")]
    pub max_pending_bytes_per_partition: usize,
    /// Most spans kept per partition; beyond it the spans kept longest are forgotten first, and
    /// events that needed them get `span_not_seen` or `trace_not_seen` edges.
    #[serde(default = "default_max_spans_per_partition")]
    pub max_spans_per_partition: usize,
    /// Event nodes kept in memory per partition. When full at a checkpoint, the cache keeps the
    /// held events' nodes only; the others are read from the store when needed.
    #[serde(default = "default_event_cache_per_partition")]
    pub event_cache_per_partition: usize,
    /// Most expired spans and event nodes deleted (and tombstoned in the changelog) per
    /// partition per commit.
    #[serde(default = "default_max_expirations_per_commit")]
    pub max_expirations_per_commit: usize,
}

impl Default for LineageConfig {
    fn default() -> Self {
        Self {
            join_window_ms: default_join_window_ms(),
            max_chain_depth: default_max_chain_depth(),
            event_ttl_ms: default_event_ttl_ms(),
            max_pending_events_per_partition: default_max_pending_events_per_partition(),
            max_pending_bytes_per_partition: default_max_pending_bytes_per_partition(),
            max_spans_per_partition: default_max_spans_per_partition(),
            event_cache_per_partition: default_event_cache_per_partition(),
            max_expirations_per_commit: default_max_expirations_per_commit(),
        }
    }
}

impl LineageConfig {
    /// Every problem at once, each naming its key under `prefix` (e.g.
    /// `pipelines.orders.lineage`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.join_window_ms <= 0 {
            errors.push(format!(
                "{prefix}.join_window_ms: must be positive, got {}",
                self.join_window_ms
            ));
        }
        if self.max_chain_depth == 0 || self.max_chain_depth > 255 {
            errors.push(format!(
                "{prefix}.max_chain_depth: must be between 1 and 255, got {}",
                self.max_chain_depth
            ));
        }
        if self.event_ttl_ms <= self.join_window_ms.max(0) {
            errors.push(format!(
                "{prefix}.event_ttl_ms: must exceed join_window_ms ({}), got {}",
                self.join_window_ms, self.event_ttl_ms
            ));
        }
        for (key, value) in [
            (
                "max_pending_events_per_partition",
                self.max_pending_events_per_partition,
            ),
            (
                "max_pending_bytes_per_partition",
                self.max_pending_bytes_per_partition,
            ),
            ("max_spans_per_partition", self.max_spans_per_partition),
            ("event_cache_per_partition", self.event_cache_per_partition),
            (
                "max_expirations_per_commit",
                self.max_expirations_per_commit,
            ),
        ] {
            if value == 0 {
                errors.push(format!("{prefix}.{key}: must be positive"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_config_defaults_and_validation_name_keys() {
        let config: LineageConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, LineageConfig::default());
        assert!(config.validate("p").is_empty());
        assert_eq!(config.join_window_ms, 300_000);

        let bad = LineageConfig {
            join_window_ms: 0,
            max_chain_depth: 0,
            max_spans_per_partition: 0,
            ..LineageConfig::default()
        };
        let errors = bad.validate("pipelines.orders.lineage");
        let keys: Vec<&str> = errors
            .iter()
            .map(|error| error.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![
                "pipelines.orders.lineage.join_window_ms",
                "pipelines.orders.lineage.max_chain_depth",
                "pipelines.orders.lineage.max_spans_per_partition",
            ],
            "{errors:?}"
        );

        let short_ttl = LineageConfig {
            event_ttl_ms: 1_000,
            ..LineageConfig::default()
        };
        let errors = short_ttl.validate("p.lineage");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("p.lineage.event_ttl_ms: must exceed join_window_ms"));
    }

    #[test]
    fn lineage_config_rejects_unknown_keys() {
        let config: LineageConfig =
            serde_json::from_str(r#"{"join_window_ms":1000,"max_chain_depth":3}"#).unwrap();
        assert_eq!(config.max_chain_depth, 3);
        let error = serde_json::from_str::<LineageConfig>(r#"{"window_ms": 5}"#).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `window_ms`"),
            "{error}"
        );
    }
}
