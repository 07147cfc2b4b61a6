//! Policies compiled from configuration, and what they decide on: a trace's [`TraceSummary`].
//!
//! Every policy is a pure function of the summary (plus, for rate limits, the partition's span
//! budget in the current second of event time, and for `lineage`, the references fed to it).
//! Attribute policies are evaluated per span as spans arrive, into one bit of the summary each
//! ("some span or resource matched"), so a decision never re-reads span bytes.

use std::sync::Arc;

use breadcrumb_schemas::otlp::{AttributeValue, TraceId, STATUS_ERROR, STATUS_OK, STATUS_UNSET};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::config::{PolicyConfig, StatusCodeName};

/// What the policies decide a trace on, kept per pending trace (and persisted with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSummary {
    /// Partition event time when the first span arrived.
    pub first_seen_ms: i64,
    /// Partition event time when the latest span arrived.
    pub last_seen_ms: i64,
    pub span_count: u32,
    /// Earliest span start and latest span end, nanoseconds since the epoch.
    pub min_start_ns: u64,
    pub max_end_ns: u64,
    /// Whether the root span (a span without parent) has arrived.
    pub root_seen: bool,
    /// Bit `code` set when a span with status code `code` arrived (0 unset, 1 ok, 2 error).
    pub status_mask: u8,
    /// Bit `i` set when a span or its resource matched attribute predicate `i`.
    pub matched: u64,
}

impl TraceSummary {
    pub fn new(now_ms: i64) -> Self {
        Self {
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            span_count: 0,
            min_start_ns: u64::MAX,
            max_end_ns: 0,
            root_seen: false,
            status_mask: 0,
            matched: 0,
        }
    }

    /// Latest span end minus earliest span start, milliseconds (0 without spans).
    pub fn duration_ms(&self) -> i64 {
        if self.span_count == 0 || self.max_end_ns < self.min_start_ns {
            return 0;
        }
        ((self.max_end_ns - self.min_start_ns) / 1_000_000) as i64
    }
}

/// Business-event references to traces, for the `lineage` policy. The lineage operator (issue
/// 5) will implement it over its state; until then [`NoLineage`] refers to nothing.
pub trait LineageReferences: Send + Sync {
    /// Whether a business event of type `event_type` refers to `trace_id`.
    fn references(&self, trace_id: &TraceId, event_type: &str) -> bool;
}

/// No references: the `lineage` policy keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLineage;

impl LineageReferences for NoLineage {
    fn references(&self, _trace_id: &TraceId, _event_type: &str) -> bool {
        false
    }
}

/// A span-attribute condition; a trace's summary records whether some span (or its resource)
/// met it.
#[derive(Debug, Clone)]
pub struct Predicate {
    pub key: String,
    matcher: Matcher,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact(Vec<String>),
    Regex(Vec<regex::Regex>),
    Numeric { min: f64, max: f64 },
    Boolean(bool),
}

impl Predicate {
    pub fn matches(&self, value: AttributeValue<'_>) -> bool {
        match (&self.matcher, value) {
            (Matcher::Exact(values), AttributeValue::Str(text)) => {
                values.iter().any(|value| value == text)
            }
            (Matcher::Regex(patterns), AttributeValue::Str(text)) => {
                patterns.iter().any(|pattern| pattern.is_match(text))
            }
            (Matcher::Numeric { min, max }, AttributeValue::Int(number)) => {
                (*min..=*max).contains(&(number as f64))
            }
            (Matcher::Numeric { min, max }, AttributeValue::Double(number)) => {
                (*min..=*max).contains(&number)
            }
            (Matcher::Boolean(expected), AttributeValue::Bool(flag)) => *expected == flag,
            _ => false,
        }
    }
}

/// A compiled condition on a trace.
#[derive(Debug, Clone)]
enum Rule {
    Always,
    Status(u8),
    Latency { min_ms: i64, max_ms: Option<i64> },
    Predicate { bit: u32, invert: bool },
    Probabilistic { seed: u64, fraction: f64 },
    RateLimiting { rate: usize, spans_per_second: u64 },
    SpanCount { min: u32, max: Option<u32> },
    And(Vec<Rule>),
    Lineage(Vec<String>),
}

/// One second of event time's span budget of a rate-limited rule, per partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateState {
    /// The second of event time (`ms / 1000`) `spent` counts.
    pub second: i64,
    pub spent: u64,
}

impl RateState {
    fn spent_in(&self, second: i64) -> u64 {
        if self.second == second {
            self.spent
        } else {
            0
        }
    }

    fn spend(&mut self, second: i64, spans: u64) {
        if self.second != second {
            self.second = second;
            self.spent = 0;
        }
        self.spent += spans;
    }
}

/// What the policies are asked about.
pub struct Subject<'a> {
    pub trace_id: &'a TraceId,
    pub summary: &'a TraceSummary,
    /// The partition's event time, milliseconds.
    pub now_ms: i64,
}

impl Rule {
    fn keeps(
        &self,
        subject: &Subject<'_>,
        rates: &[RateState],
        lineage: &dyn LineageReferences,
    ) -> bool {
        let summary = subject.summary;
        match self {
            Rule::Always => true,
            Rule::Status(mask) => summary.status_mask & mask != 0,
            Rule::Latency { min_ms, max_ms } => {
                let duration = summary.duration_ms();
                duration >= *min_ms && max_ms.is_none_or(|max| duration < max)
            }
            Rule::Predicate { bit, invert } => (summary.matched >> bit & 1 == 1) != *invert,
            Rule::Probabilistic { seed, fraction } => {
                let hash = xxh3_64_with_seed(subject.trace_id, *seed);
                ((hash >> 11) as f64 / (1u64 << 53) as f64) < *fraction
            }
            Rule::RateLimiting {
                rate,
                spans_per_second,
            } => {
                rates[*rate].spent_in(subject.now_ms.div_euclid(1000))
                    + u64::from(summary.span_count)
                    <= *spans_per_second
            }
            Rule::SpanCount { min, max } => {
                summary.span_count >= *min && max.is_none_or(|max| summary.span_count <= max)
            }
            Rule::And(rules) => rules.iter().all(|rule| rule.keeps(subject, rates, lineage)),
            Rule::Lineage(types) => types
                .iter()
                .any(|event_type| lineage.references(subject.trace_id, event_type)),
        }
    }

    /// Charges the trace's spans to the rate budgets this rule checked.
    fn spend(&self, subject: &Subject<'_>, rates: &mut [RateState]) {
        match self {
            Rule::RateLimiting { rate, .. } => rates[*rate].spend(
                subject.now_ms.div_euclid(1000),
                u64::from(subject.summary.span_count),
            ),
            Rule::And(rules) => rules.iter().for_each(|rule| rule.spend(subject, rates)),
            _ => {}
        }
    }
}

/// A top-level policy.
#[derive(Debug, Clone)]
enum Top {
    Keep { decider: u16, rule: Rule },
    Drop { decider: u16, rules: Vec<Rule> },
    Composite { subs: Vec<CompositeSub> },
}

#[derive(Debug, Clone)]
struct CompositeSub {
    decider: u16,
    rule: Rule,
    rate: usize,
    spans_per_second: u64,
}

/// Who decided: an index into [`Policies::decider_names`].
pub type Decider = u16;

/// The outcome of the policies for one trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub keep: bool,
    pub decider: Decider,
}

/// The policies of a pipeline, compiled.
pub struct Policies {
    top: Vec<Top>,
    predicates: Vec<Predicate>,
    /// Names of deciders: top-level policies and composite sub-policies (`composite/sub`), then
    /// [`Policies::none`] and [`Policies::overflow`].
    names: Vec<String>,
    rates: usize,
    lineage: Arc<dyn LineageReferences>,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Policies")
            .field("top", &self.top)
            .field("names", &self.names)
            .finish()
    }
}

struct Compiler {
    predicates: Vec<Predicate>,
    rates: usize,
}

impl Compiler {
    fn rule(&mut self, policy: &PolicyConfig) -> Rule {
        match policy {
            PolicyConfig::AlwaysSample { .. } => Rule::Always,
            PolicyConfig::StatusCode { status_codes, .. } => Rule::Status(
                status_codes
                    .iter()
                    .map(|code| match code {
                        StatusCodeName::Unset => 1 << STATUS_UNSET,
                        StatusCodeName::Ok => 1 << STATUS_OK,
                        StatusCodeName::Error => 1 << STATUS_ERROR,
                    })
                    .fold(0, |mask, bit| mask | bit),
            ),
            PolicyConfig::Latency {
                threshold_ms,
                upper_threshold_ms,
                ..
            } => Rule::Latency {
                min_ms: *threshold_ms,
                max_ms: *upper_threshold_ms,
            },
            PolicyConfig::StringAttribute {
                key,
                values,
                regex,
                invert_match,
                ..
            } => {
                let matcher = if *regex {
                    Matcher::Regex(
                        values
                            .iter()
                            .map(|value| regex::Regex::new(value).expect("validated"))
                            .collect(),
                    )
                } else {
                    Matcher::Exact(values.clone())
                };
                self.predicate(key, matcher, *invert_match)
            }
            PolicyConfig::NumericAttribute {
                key,
                min_value,
                max_value,
                invert_match,
                ..
            } => self.predicate(
                key,
                Matcher::Numeric {
                    min: min_value.unwrap_or(f64::NEG_INFINITY),
                    max: max_value.unwrap_or(f64::INFINITY),
                },
                *invert_match,
            ),
            PolicyConfig::BooleanAttribute {
                key,
                value,
                invert_match,
                ..
            } => self.predicate(key, Matcher::Boolean(*value), *invert_match),
            PolicyConfig::Probabilistic {
                sampling_percentage,
                hash_salt,
                ..
            } => Rule::Probabilistic {
                seed: xxh3_64(hash_salt.as_bytes()),
                fraction: sampling_percentage / 100.0,
            },
            PolicyConfig::RateLimiting {
                spans_per_second, ..
            } => {
                self.rates += 1;
                Rule::RateLimiting {
                    rate: self.rates - 1,
                    spans_per_second: *spans_per_second,
                }
            }
            PolicyConfig::SpanCount {
                min_spans,
                max_spans,
                ..
            } => Rule::SpanCount {
                min: *min_spans,
                max: *max_spans,
            },
            PolicyConfig::And { policies, .. }
            | PolicyConfig::Drop { policies, .. }
            | PolicyConfig::Composite { policies, .. } => {
                Rule::And(policies.iter().map(|policy| self.rule(policy)).collect())
            }
            PolicyConfig::Lineage { event_types, .. } => Rule::Lineage(event_types.clone()),
        }
    }

    fn predicate(&mut self, key: &str, matcher: Matcher, invert: bool) -> Rule {
        self.predicates.push(Predicate {
            key: key.to_owned(),
            matcher,
        });
        Rule::Predicate {
            bit: (self.predicates.len() - 1) as u32,
            invert,
        }
    }
}

impl Policies {
    /// Compiles validated policies.
    pub fn compile(policies: &[PolicyConfig], lineage: Arc<dyn LineageReferences>) -> Self {
        let mut compiler = Compiler {
            predicates: Vec::new(),
            rates: 0,
        };
        let mut names = Vec::new();
        let mut top = Vec::new();
        for policy in policies {
            match policy {
                PolicyConfig::Drop { name, policies } => {
                    names.push(name.clone());
                    top.push(Top::Drop {
                        decider: (names.len() - 1) as u16,
                        rules: policies
                            .iter()
                            .map(|policy| compiler.rule(policy))
                            .collect(),
                    });
                }
                PolicyConfig::Composite {
                    name,
                    max_total_spans_per_second,
                    policies,
                    rate_allocation,
                } => {
                    let subs = policies
                        .iter()
                        .map(|policy| {
                            names.push(format!("{name}/{}", policy.name()));
                            let percent = rate_allocation
                                .iter()
                                .find(|allocation| allocation.policy == policy.name())
                                .map_or(0, |allocation| allocation.percent);
                            let rule = compiler.rule(policy);
                            compiler.rates += 1;
                            CompositeSub {
                                decider: (names.len() - 1) as u16,
                                rule,
                                rate: compiler.rates - 1,
                                spans_per_second: max_total_spans_per_second * u64::from(percent)
                                    / 100,
                            }
                        })
                        .collect();
                    top.push(Top::Composite { subs });
                }
                other => {
                    names.push(other.name().to_owned());
                    top.push(Top::Keep {
                        decider: (names.len() - 1) as u16,
                        rule: compiler.rule(other),
                    });
                }
            }
        }
        names.push("none".to_owned());
        names.push("overflow".to_owned());
        Self {
            top,
            predicates: compiler.predicates,
            names,
            rates: compiler.rates,
            lineage,
        }
    }

    /// Attribute predicates, by summary bit.
    pub fn predicates(&self) -> &[Predicate] {
        &self.predicates
    }

    /// Number of rate budgets the partition state keeps.
    pub fn rate_count(&self) -> usize {
        self.rates
    }

    /// Names of every decider, indexed by [`Decider`].
    pub fn decider_names(&self) -> &[String] {
        &self.names
    }

    /// The decider of a trace no policy kept.
    pub fn none(&self) -> Decider {
        (self.names.len() - 2) as Decider
    }

    /// The decider of a trace dropped by the `drop_oldest` overflow policy.
    pub fn overflow(&self) -> Decider {
        (self.names.len() - 1) as Decider
    }

    /// Decides a trace and charges rate budgets when a rate-limited policy keeps it. A `drop`
    /// policy that matches wins; otherwise the first policy (in configuration order) that keeps
    /// the trace decides; otherwise it is dropped.
    pub fn decide(&self, subject: &Subject<'_>, rates: &mut [RateState]) -> Verdict {
        let lineage = self.lineage.as_ref();
        for top in &self.top {
            if let Top::Drop { decider, rules } = top {
                if rules.iter().all(|rule| rule.keeps(subject, rates, lineage)) {
                    return Verdict {
                        keep: false,
                        decider: *decider,
                    };
                }
            }
        }
        let second = subject.now_ms.div_euclid(1000);
        let spans = u64::from(subject.summary.span_count);
        for top in &self.top {
            match top {
                Top::Keep { decider, rule } => {
                    if rule.keeps(subject, rates, lineage) {
                        rule.spend(subject, rates);
                        return Verdict {
                            keep: true,
                            decider: *decider,
                        };
                    }
                }
                Top::Drop { .. } => {}
                Top::Composite { subs } => {
                    for sub in subs {
                        if rates[sub.rate].spent_in(second) + spans <= sub.spans_per_second
                            && sub.rule.keeps(subject, rates, lineage)
                        {
                            sub.rule.spend(subject, rates);
                            rates[sub.rate].spend(second, spans);
                            return Verdict {
                                keep: true,
                                decider: sub.decider,
                            };
                        }
                    }
                }
            }
        }
        Verdict {
            keep: false,
            decider: self.none(),
        }
    }
}
