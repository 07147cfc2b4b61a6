//! Tail-sampling configuration (`[pipelines.<name>.sampling]`).

use serde::{Deserialize, Serialize};

/// Ten seconds of event time without a new span after the root ended: SDK batch exporters flush
/// every 5 s by default, so a child exported in the next flush still makes it.
pub const fn default_quiet_period_ms() -> i64 {
    10_000
}

/// One minute since the first span: the Collector's common `decision_wait` is 30 s; long-running
/// traces beyond this are decided on what arrived, and later spans follow the decision.
pub const fn default_max_wait_ms() -> i64 {
    60_000
}

/// 64 MiB of buffered span bytes per partition.
pub const fn default_max_buffered_bytes_per_partition() -> usize {
    64 << 20
}

/// 100 000 pending traces per partition (about 20 MiB of bookkeeping beyond span bytes).
pub const fn default_max_pending_traces_per_partition() -> usize {
    100_000
}

/// One hour of event time: late spans of a trace decided within the hour follow its decision.
pub const fn default_decision_ttl_ms() -> i64 {
    60 * 60 * 1000
}

/// Bounds the tombstones one transaction carries, so expiry never makes a commit huge.
pub const fn default_max_expirations_per_commit() -> usize {
    10_000
}

/// What to do when a partition's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Decide the oldest pending trace (earliest first span) now, with the policies, on the spans
    /// it has; its decision record says `completion = "forced"`.
    #[default]
    DecideOldest,
    /// Drop the oldest pending trace without evaluating policies (`policy = "overflow"`,
    /// `completion = "forced"`).
    DropOldest,
}

/// A span status code, as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum StatusCodeName {
    Unset,
    Ok,
    Error,
}

/// A share of a composite policy's span rate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateAllocation {
    /// Name of one of the composite's `policies`.
    pub policy: String,
    /// Share of `max_total_spans_per_second`, percent.
    pub percent: u32,
}

/// One sampling policy (`[[pipelines.<name>.sampling.policies]]`, tagged by `type`). Every
/// policy has a `name`, reported as the deciding policy in decision records and metrics.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PolicyConfig {
    /// Keeps every trace.
    AlwaysSample {
        /// The policy's name.
        name: String,
    },
    /// Keeps a trace with a span whose status code is one of `status_codes`.
    StatusCode {
        /// The policy's name.
        name: String,
        /// `ERROR`, `OK`, `UNSET`.
        status_codes: Vec<StatusCodeName>,
    },
    /// Keeps a trace whose duration (latest span end minus earliest span start) is at least
    /// `threshold_ms` and, when set, below `upper_threshold_ms`.
    Latency {
        /// The policy's name.
        name: String,
        /// Lower bound, milliseconds, inclusive.
        threshold_ms: i64,
        /// Upper bound, milliseconds, exclusive.
        #[serde(default)]
        upper_threshold_ms: Option<i64>,
    },
    /// Keeps a trace with a span (or resource) whose attribute `key` is a string equal to one of
    /// `values`, or matching one of them as a regular expression with `regex = true`.
    /// `invert_match` keeps a trace with no such span instead.
    StringAttribute {
        /// The policy's name.
        name: String,
        /// Attribute key.
        key: String,
        /// Exact values, or patterns with `regex`.
        values: Vec<String>,
        /// Treat `values` as regular expressions (matched anywhere in the value unless anchored).
        #[serde(default)]
        regex: bool,
        /// Keep traces where no span matches instead.
        #[serde(default)]
        invert_match: bool,
    },
    /// Keeps a trace with a span (or resource) whose integer or double attribute `key` lies in
    /// `[min_value, max_value]`.
    NumericAttribute {
        /// The policy's name.
        name: String,
        /// Attribute key.
        key: String,
        /// Lower bound, inclusive; absent: unbounded.
        #[serde(default)]
        min_value: Option<f64>,
        /// Upper bound, inclusive; absent: unbounded.
        #[serde(default)]
        max_value: Option<f64>,
        /// Keep traces where no span matches instead.
        #[serde(default)]
        invert_match: bool,
    },
    /// Keeps a trace with a span (or resource) whose boolean attribute `key` equals `value`.
    BooleanAttribute {
        /// The policy's name.
        name: String,
        /// Attribute key.
        key: String,
        /// The value to match.
        value: bool,
        /// Keep traces where no span matches instead.
        #[serde(default)]
        invert_match: bool,
    },
    /// Keeps `sampling_percentage` percent of traces, chosen by a hash of the trace id and
    /// `hash_salt`: the same trace always gets the same answer, on every instance.
    Probabilistic {
        /// The policy's name.
        name: String,
        /// Percent of traces kept, 0 to 100.
        sampling_percentage: f64,
        /// Salt of the hash; change it to choose a different subset.
        #[serde(default)]
        hash_salt: String,
    },
    /// Keeps traces while the spans kept by this policy within the current second of event time
    /// (per partition) stay within `spans_per_second`.
    RateLimiting {
        /// The policy's name.
        name: String,
        /// Span budget per second of event time, per partition.
        spans_per_second: u64,
    },
    /// Keeps a trace with at least `min_spans` spans and, when set, at most `max_spans`.
    SpanCount {
        /// The policy's name.
        name: String,
        /// Lower bound, inclusive.
        min_spans: u32,
        /// Upper bound, inclusive.
        #[serde(default)]
        max_spans: Option<u32>,
    },
    /// Keeps a trace every one of `policies` keeps.
    And {
        /// The policy's name.
        name: String,
        /// Sub-policies (not `drop`, `composite`).
        policies: Vec<PolicyConfig>,
    },
    /// Drops a trace every one of `policies` keeps, whatever other policies say.
    Drop {
        /// The policy's name.
        name: String,
        /// Sub-policies (not `drop`, `composite`).
        policies: Vec<PolicyConfig>,
    },
    /// Evaluates `policies` in order, each within its share of `max_total_spans_per_second`
    /// (`rate_allocation`); the first that keeps the trace within its share decides.
    Composite {
        /// The policy's name.
        name: String,
        /// Span budget per second of event time, per partition, shared by the sub-policies.
        max_total_spans_per_second: u64,
        /// Sub-policies (not `drop`, `composite`), in evaluation order.
        policies: Vec<PolicyConfig>,
        /// Share of the budget of each sub-policy, by name; every sub-policy needs one.
        rate_allocation: Vec<RateAllocation>,
    },
    /// Keeps a trace that a business event of one of `event_types` refers to (fed by the lineage
    /// operator, see [`crate::sampling::LineageReferences`]).
    Lineage {
        /// The policy's name.
        name: String,
        /// Business event types (`type` of the envelope) whose references keep a trace.
        event_types: Vec<String>,
    },
}

impl PolicyConfig {
    pub fn name(&self) -> &str {
        match self {
            PolicyConfig::AlwaysSample { name }
            | PolicyConfig::StatusCode { name, .. }
            | PolicyConfig::Latency { name, .. }
            | PolicyConfig::StringAttribute { name, .. }
            | PolicyConfig::NumericAttribute { name, .. }
            | PolicyConfig::BooleanAttribute { name, .. }
            | PolicyConfig::Probabilistic { name, .. }
            | PolicyConfig::RateLimiting { name, .. }
            | PolicyConfig::SpanCount { name, .. }
            | PolicyConfig::And { name, .. }
            | PolicyConfig::Drop { name, .. }
            | PolicyConfig::Composite { name, .. }
            | PolicyConfig::Lineage { name, .. } => name,
        }
    }

    fn validate(&self, key: &str, nested: bool, errors: &mut Vec<String>) {
        if self.name().trim().is_empty() {
            errors.push(format!("{key}.name: must not be empty"));
        }
        match self {
            PolicyConfig::AlwaysSample { .. } => {}
            PolicyConfig::StatusCode { status_codes, .. } => {
                if status_codes.is_empty() {
                    errors.push(format!("{key}.status_codes: name at least one code"));
                }
            }
            PolicyConfig::Latency {
                threshold_ms,
                upper_threshold_ms,
                ..
            } => {
                if *threshold_ms < 0 {
                    errors.push(format!("{key}.threshold_ms: must not be negative"));
                }
                if upper_threshold_ms.is_some_and(|upper| upper <= *threshold_ms) {
                    errors.push(format!(
                        "{key}.upper_threshold_ms: must exceed threshold_ms ({threshold_ms})"
                    ));
                }
            }
            PolicyConfig::StringAttribute {
                key: attribute,
                values,
                regex,
                ..
            } => {
                if attribute.is_empty() {
                    errors.push(format!("{key}.key: must not be empty"));
                }
                if values.is_empty() {
                    errors.push(format!("{key}.values: name at least one value"));
                }
                if *regex {
                    for value in values {
                        if let Err(error) = regex::Regex::new(value) {
                            errors.push(format!("{key}.values: `{value}` is not a regex: {error}"));
                        }
                    }
                }
            }
            PolicyConfig::NumericAttribute {
                key: attribute,
                min_value,
                max_value,
                ..
            } => {
                if attribute.is_empty() {
                    errors.push(format!("{key}.key: must not be empty"));
                }
                if min_value.is_none() && max_value.is_none() {
                    errors.push(format!("{key}.min_value: set min_value, max_value or both"));
                }
                if let (Some(min), Some(max)) = (min_value, max_value) {
                    if min > max {
                        errors.push(format!("{key}.max_value: must be at least min_value"));
                    }
                }
            }
            PolicyConfig::BooleanAttribute { key: attribute, .. } => {
                if attribute.is_empty() {
                    errors.push(format!("{key}.key: must not be empty"));
                }
            }
            PolicyConfig::Probabilistic {
                sampling_percentage,
                ..
            } => {
                if !(0.0..=100.0).contains(sampling_percentage) {
                    errors.push(format!(
                        "{key}.sampling_percentage: must be between 0 and 100"
                    ));
                }
            }
            PolicyConfig::RateLimiting {
                spans_per_second, ..
            } => {
                if *spans_per_second == 0 {
                    errors.push(format!("{key}.spans_per_second: must be positive"));
                }
            }
            PolicyConfig::SpanCount {
                min_spans,
                max_spans,
                ..
            } => {
                if max_spans.is_some_and(|max| max < *min_spans) {
                    errors.push(format!("{key}.max_spans: must be at least min_spans"));
                }
            }
            PolicyConfig::And { policies, .. } | PolicyConfig::Drop { policies, .. } => {
                if nested {
                    errors.push(format!("{key}: `and` and `drop` cannot be nested"));
                }
                validate_sub_policies(policies, key, errors);
            }
            PolicyConfig::Composite {
                max_total_spans_per_second,
                policies,
                rate_allocation,
                ..
            } => {
                if nested {
                    errors.push(format!("{key}: `composite` cannot be nested"));
                }
                if *max_total_spans_per_second == 0 {
                    errors.push(format!(
                        "{key}.max_total_spans_per_second: must be positive"
                    ));
                }
                validate_sub_policies(policies, key, errors);
                for policy in policies {
                    if !rate_allocation
                        .iter()
                        .any(|allocation| allocation.policy == policy.name())
                    {
                        errors.push(format!(
                            "{key}.rate_allocation: no share for sub-policy `{}`",
                            policy.name()
                        ));
                    }
                }
                for allocation in rate_allocation {
                    if !policies
                        .iter()
                        .any(|policy| policy.name() == allocation.policy)
                    {
                        errors.push(format!(
                            "{key}.rate_allocation: `{}` is not a sub-policy",
                            allocation.policy
                        ));
                    }
                }
                let total: u32 = rate_allocation
                    .iter()
                    .map(|allocation| allocation.percent)
                    .sum();
                if total > 100 {
                    errors.push(format!(
                        "{key}.rate_allocation: shares add up to {total}%, over 100%"
                    ));
                }
            }
            PolicyConfig::Lineage { event_types, .. } => {
                if event_types.is_empty() {
                    errors.push(format!("{key}.event_types: name at least one type"));
                }
            }
        }
    }
}

fn validate_sub_policies(policies: &[PolicyConfig], key: &str, errors: &mut Vec<String>) {
    if policies.is_empty() {
        errors.push(format!("{key}.policies: name at least one sub-policy"));
    }
    for (index, policy) in policies.iter().enumerate() {
        policy.validate(&format!("{key}.policies[{index}]"), true, errors);
    }
}

/// Tail-sampling settings of one pipeline (`[pipelines.<name>.sampling]`).
///
/// Spans are buffered per trace until the trace completes, then the policies decide whether the
/// whole trace is kept. See [`crate::sampling`] for completion, overflow and late spans.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Event time, milliseconds: a trace whose root span has arrived completes once the
    /// partition's event time (latest span end seen) passes its last span's arrival by this much.
    #[serde(default = "default_quiet_period_ms")]
    pub quiet_period_ms: i64,
    /// Event time, milliseconds: a trace completes this long after its first span arrived,
    /// root or not.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: i64,
    /// Most bytes of buffered spans per partition; beyond it the overflow policy applies.
    #[serde(default = "default_max_buffered_bytes_per_partition")]
    pub max_buffered_bytes_per_partition: usize,
    /// Most pending traces per partition; beyond it the overflow policy applies.
    #[serde(default = "default_max_pending_traces_per_partition")]
    pub max_pending_traces_per_partition: usize,
    /// What a full buffer does: `decide_oldest` (default) or `drop_oldest`.
    #[serde(default)]
    pub overflow: OverflowPolicy,
    /// Event time, milliseconds: how long a decision is remembered for late spans.
    #[serde(default = "default_decision_ttl_ms")]
    pub decision_ttl_ms: i64,
    /// Most expired decisions deleted (and tombstoned in the changelog) per partition per commit.
    #[serde(default = "default_max_expirations_per_commit")]
    pub max_expirations_per_commit: usize,
    /// Policies, in evaluation order: a trace is dropped if a `drop` policy keeps it, else kept
    /// if any other policy keeps it (the first that does is reported), else dropped.
    pub policies: Vec<PolicyConfig>,
}

impl SamplingConfig {
    /// A configuration with default bounds and the given policies.
    pub fn with_policies(policies: Vec<PolicyConfig>) -> Self {
        Self {
            quiet_period_ms: default_quiet_period_ms(),
            max_wait_ms: default_max_wait_ms(),
            max_buffered_bytes_per_partition: default_max_buffered_bytes_per_partition(),
            max_pending_traces_per_partition: default_max_pending_traces_per_partition(),
            overflow: OverflowPolicy::default(),
            decision_ttl_ms: default_decision_ttl_ms(),
            max_expirations_per_commit: default_max_expirations_per_commit(),
            policies,
        }
    }

    /// Every problem at once, each naming its key under `prefix` (e.g.
    /// `pipelines.traces.sampling`).
    pub fn validate(&self, prefix: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.quiet_period_ms <= 0 {
            errors.push(format!("{prefix}.quiet_period_ms: must be positive"));
        }
        if self.max_wait_ms < self.quiet_period_ms {
            errors.push(format!(
                "{prefix}.max_wait_ms: must be at least quiet_period_ms ({})",
                self.quiet_period_ms
            ));
        }
        if self.max_buffered_bytes_per_partition == 0 {
            errors.push(format!(
                "{prefix}.max_buffered_bytes_per_partition: must be positive"
            ));
        }
        if self.max_pending_traces_per_partition == 0 {
            errors.push(format!(
                "{prefix}.max_pending_traces_per_partition: must be positive"
            ));
        }
        if self.decision_ttl_ms <= 0 {
            errors.push(format!("{prefix}.decision_ttl_ms: must be positive"));
        }
        if self.max_expirations_per_commit == 0 {
            errors.push(format!(
                "{prefix}.max_expirations_per_commit: must be positive"
            ));
        }
        if self.policies.is_empty() {
            errors.push(format!(
                "{prefix}.policies: name at least one policy (`always_sample` keeps everything)"
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (index, policy) in self.policies.iter().enumerate() {
            let key = format!("{prefix}.policies[{index}]");
            policy.validate(&key, false, &mut errors);
            if !names.insert(policy.name()) {
                errors.push(format!(
                    "{key}.name: `{}` names another policy too",
                    policy.name()
                ));
            }
        }
        let predicates = count_predicates(&self.policies);
        if predicates > 64 {
            errors.push(format!(
                "{prefix}.policies: at most 64 attribute policies in all, found {predicates}"
            ));
        }
        errors
    }
}

/// Attribute policies, nested ones included: each needs a bit of a trace's summary.
pub(crate) fn count_predicates(policies: &[PolicyConfig]) -> usize {
    policies
        .iter()
        .map(|policy| match policy {
            PolicyConfig::StringAttribute { .. }
            | PolicyConfig::NumericAttribute { .. }
            | PolicyConfig::BooleanAttribute { .. } => 1,
            PolicyConfig::And { policies, .. }
            | PolicyConfig::Drop { policies, .. }
            | PolicyConfig::Composite { policies, .. } => count_predicates(policies),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_config_reads_policies_and_names_bad_keys() {
        let config: SamplingConfig = serde_json::from_str(
            r#"{"quiet_period_ms": 5000, "policies": [
                {"type": "status_code", "name": "errors", "status_codes": ["ERROR"]},
                {"type": "latency", "name": "slow", "threshold_ms": 1000},
                {"type": "string_attribute", "name": "vip", "key": "tier", "values": ["gold.*"], "regex": true},
                {"type": "composite", "name": "mix", "max_total_spans_per_second": 100,
                 "policies": [{"type": "always_sample", "name": "all"}],
                 "rate_allocation": [{"policy": "all", "percent": 50}]}
            ]}"#,
        )
        .unwrap();
        assert!(
            config.validate("p").is_empty(),
            "{:?}",
            config.validate("p")
        );
        assert_eq!(config.max_wait_ms, 60_000);
        assert_eq!(config.overflow, OverflowPolicy::DecideOldest);
        assert_eq!(config.policies[1].name(), "slow");

        let error = serde_json::from_str::<SamplingConfig>(
            r#"{"policies": [{"type": "latency", "name": "x", "threshold": 5}]}"#,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `threshold`"),
            "{error}"
        );

        let bad = SamplingConfig {
            quiet_period_ms: 0,
            policies: vec![
                PolicyConfig::Latency {
                    name: "slow".into(),
                    threshold_ms: 10,
                    upper_threshold_ms: Some(5),
                },
                PolicyConfig::StringAttribute {
                    name: "slow".into(),
                    key: "k".into(),
                    values: vec!["(".into()],
                    regex: true,
                    invert_match: false,
                },
                PolicyConfig::And {
                    name: "both".into(),
                    policies: vec![PolicyConfig::Drop {
                        name: "inner".into(),
                        policies: vec![PolicyConfig::AlwaysSample { name: "a".into() }],
                    }],
                },
                PolicyConfig::Composite {
                    name: "mix".into(),
                    max_total_spans_per_second: 10,
                    policies: vec![PolicyConfig::AlwaysSample { name: "a".into() }],
                    rate_allocation: vec![RateAllocation {
                        policy: "b".into(),
                        percent: 120,
                    }],
                },
            ],
            ..SamplingConfig::with_policies(Vec::new())
        };
        let errors = bad.validate("pipelines.t.sampling");
        let keys: Vec<&str> = errors
            .iter()
            .map(|error| error.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            vec![
                "pipelines.t.sampling.quiet_period_ms",
                "pipelines.t.sampling.policies[0].upper_threshold_ms",
                "pipelines.t.sampling.policies[1].values",
                "pipelines.t.sampling.policies[1].name",
                "pipelines.t.sampling.policies[2].policies[0]",
                "pipelines.t.sampling.policies[3].rate_allocation",
                "pipelines.t.sampling.policies[3].rate_allocation",
                "pipelines.t.sampling.policies[3].rate_allocation",
            ],
            "{errors:?}"
        );
    }
}
