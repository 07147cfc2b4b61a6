//! The tail-sampling operator: buffering, completion, decisions, late spans.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use breadcrumb_schemas::otlp::{
    self, attributes, encode_fragment, json, parse_request, trace_id_hex, Batch, BatchError,
    TraceId, RESOURCE_ATTRIBUTES, SPAN_ATTRIBUTES,
};
use breadcrumb_schemas::{Envelope, RawRecord};
use breadcrumb_state::{PartitionStore, StateError, NO_EXPIRY};

use super::config::{OverflowPolicy, SamplingConfig};
use super::format::{
    decode_fragment_payload, decode_summary, encode_fragment_payload, encode_summary, fragment_key,
    split_trace_key, trace_key, Completion, PartitionMeta, StoredDecision, DECISION_TAG,
    FRAGMENT_TAG, META_KEY, SUMMARY_TAG,
};
use super::metrics::{ResolvedMetrics, SamplingMetrics};
use super::policy::{LineageReferences, Policies, RateState, Subject, TraceSummary, Verdict};
use crate::operator::{
    Disposition, Emitter, Header, Lookup, LookupKind, Operator, Port, StoreDeclaration, Waiting,
};
use crate::{OperatorError, Result};

/// On sampled spans and decision records: the deciding policy.
pub const SAMPLING_POLICY_HEADER: &str = "breadcrumb-sampling-policy";
/// On sampled spans and decision records: `quiet_period`, `max_wait` or `forced`.
pub const SAMPLING_COMPLETION_HEADER: &str = "breadcrumb-sampling-completion";
/// On sampled spans of an already decided (kept) trace: `true`.
pub const SAMPLING_LATE_HEADER: &str = "breadcrumb-sampling-late";

/// Hashes trace ids with xxh3: cheaper than SipHash on a lookup per trace per batch.
#[derive(Default)]
struct TraceIdHasher(u64);

impl Hasher for TraceIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TraceMap<V> = HashMap<TraceId, V, BuildHasherDefault<TraceIdHasher>>;

/// How input batches are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpEncoding {
    /// `ExportTraceServiceRequest` protobuf (`otlp_proto`).
    Proto,
    /// OTLP/JSON (`otlp_json`).
    Json,
}

/// A trace waiting for its decision.
struct Pending {
    summary: TraceSummary,
    /// The trace's spans so far, as an `ExportTraceServiceRequest` encoding.
    bytes: Vec<u8>,
    /// How much of `bytes` the store holds, in how many fragments.
    persisted_len: usize,
    persisted_fragments: u32,
    summary_persisted: bool,
    dirty: bool,
    /// Event time at which the trace completes.
    deadline_ms: i64,
}

/// Per-transaction outcomes, published to the counters at checkpoint and forgotten on abort.
#[derive(Default)]
struct Counts {
    /// Per decider: `[drop, keep]`.
    decisions: Vec<[u64; 2]>,
    /// `[dropped, kept]`.
    late_spans: [u64; 2],
    completions: [u64; 3],
}

struct PartitionState {
    watermark_ms: i64,
    last_input_offset: i64,
    rates: Vec<RateState>,
    persisted: Option<PartitionMeta>,
    pending: TraceMap<Pending>,
    /// Completion deadlines, then trace id: timers fire in an order that only depends on input.
    timers: BTreeSet<(i64, TraceId)>,
    /// First arrival, then trace id: the overflow policy's "oldest".
    arrivals: BTreeSet<(i64, TraceId)>,
    bytes: u64,
    dirty: Vec<TraceId>,
    counts: Counts,
}

struct Shared {
    name: String,
    pipeline_json: String,
    config: SamplingConfig,
    policies: Policies,
    /// Decider names, JSON-escaped once.
    decider_json: Vec<String>,
    encoding: OtlpEncoding,
    metrics: ResolvedMetrics,
}

#[derive(Default)]
struct Scratch {
    json: Vec<u8>,
    batch: Batch,
    order: Vec<u32>,
    resource_matches: Vec<u64>,
    fragment: Vec<u8>,
    key: Vec<u8>,
    payload: Vec<u8>,
    decision: String,
}

/// Where emitted records say they came from.
#[derive(Clone, Copy)]
struct Source<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
}

/// The tail-sampling operator. See [`crate::sampling`].
pub struct Sampling {
    shared: Shared,
    store_name: String,
    partitions: HashMap<i32, PartitionState>,
    scratch: Scratch,
}

fn corrupt(operator: &str, reason: &'static str) -> OperatorError {
    OperatorError::CorruptPayload {
        operator: operator.to_owned(),
        reason,
    }
}

impl Sampling {
    /// Builds the operator of pipeline `pipeline_name` from a validated config.
    pub fn new(
        pipeline_name: &str,
        config: SamplingConfig,
        encoding: OtlpEncoding,
        metrics: &SamplingMetrics,
        lineage: Arc<dyn LineageReferences>,
    ) -> Self {
        let policies = Policies::compile(&config.policies, lineage);
        let resolved = ResolvedMetrics::resolve(metrics, pipeline_name, policies.decider_names());
        let decider_json = policies
            .decider_names()
            .iter()
            .map(|name| serde_json::to_string(name).expect("a string serialises"))
            .collect();
        Self {
            shared: Shared {
                name: format!("{pipeline_name}.sampling"),
                pipeline_json: serde_json::to_string(pipeline_name).expect("a string serialises"),
                config,
                policies,
                decider_json,
                encoding,
                metrics: resolved,
            },
            store_name: format!("{pipeline_name}-sampling"),
            partitions: HashMap::new(),
            scratch: Scratch::default(),
        }
    }

    /// Name of the operator's store.
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// Names of the deciders reported in decision records (policies, `none`, `overflow`).
    pub fn decider_names(&self) -> &[String] {
        self.shared.policies.decider_names()
    }

    /// The partition's event time (latest span end seen), once a span was seen.
    pub fn watermark_ms(&self, partition: i32) -> Option<i64> {
        self.partitions
            .get(&partition)
            .map(|state| state.watermark_ms)
            .filter(|time| *time != i64::MIN)
    }
}

impl Shared {
    fn deadline(&self, summary: &TraceSummary) -> i64 {
        let max_wait = summary
            .first_seen_ms
            .saturating_add(self.config.max_wait_ms);
        if summary.root_seen {
            max_wait.min(
                summary
                    .last_seen_ms
                    .saturating_add(self.config.quiet_period_ms),
            )
        } else {
            max_wait
        }
    }

    fn completion(&self, summary: &TraceSummary) -> Completion {
        let quiet = summary
            .last_seen_ms
            .saturating_add(self.config.quiet_period_ms);
        let max_wait = summary
            .first_seen_ms
            .saturating_add(self.config.max_wait_ms);
        if summary.root_seen && quiet <= max_wait {
            Completion::QuietPeriod
        } else {
            Completion::MaxWait
        }
    }
}

impl PartitionState {
    fn new(meta: Option<PartitionMeta>, rate_count: usize, decider_count: usize) -> Self {
        let (watermark_ms, mut rates) = match &meta {
            Some(meta) => (meta.watermark_ms, meta.rates.clone()),
            None => (i64::MIN, Vec::new()),
        };
        // A configuration change may add or remove rate-limited policies: budgets are matched
        // by position, and a new one starts empty.
        rates.resize(rate_count, RateState::default());
        Self {
            watermark_ms,
            last_input_offset: -1,
            rates,
            persisted: meta,
            pending: TraceMap::default(),
            timers: BTreeSet::new(),
            arrivals: BTreeSet::new(),
            bytes: 0,
            dirty: Vec::new(),
            counts: Counts {
                decisions: vec![[0; 2]; decider_count],
                ..Counts::default()
            },
        }
    }

    /// Buffers the spans of a parsed batch, routes late spans, then completes due traces and
    /// enforces the bounds.
    fn ingest(
        &mut self,
        shared: &Shared,
        scratch: &mut Scratch,
        value: &[u8],
        store: &mut PartitionStore,
        source: Source<'_>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let Scratch {
            batch,
            order,
            resource_matches,
            fragment,
            key,
            payload,
            decision,
            ..
        } = scratch;
        if let Some(latest) = batch.spans.iter().map(|span| span.end_time_unix_nano).max() {
            self.watermark_ms = self.watermark_ms.max((latest / 1_000_000) as i64);
        }
        let predicates = shared.policies.predicates();
        resource_matches.clear();
        for resource in &batch.resources {
            let mut matched = 0u64;
            if let (false, Some(range)) = (predicates.is_empty(), &resource.resource) {
                for (name, attribute) in attributes(&value[range.clone()], RESOURCE_ATTRIBUTES) {
                    for (bit, predicate) in predicates.iter().enumerate() {
                        if predicate.key == name && predicate.matches(attribute) {
                            matched |= 1 << bit;
                        }
                    }
                }
            }
            resource_matches.push(matched);
        }

        order.clear();
        order.extend(0..batch.spans.len() as u32);
        // Stable: within a trace, spans keep batch order, so scopes and resources stay grouped.
        order.sort_by(|a, b| {
            batch.spans[*a as usize]
                .trace_id
                .cmp(&batch.spans[*b as usize].trace_id)
        });
        let now = self.watermark_ms;
        let mut start = 0;
        while start < order.len() {
            let trace_id = batch.spans[order[start] as usize].trace_id;
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|&&span| batch.spans[span as usize].trace_id == trace_id)
                    .count();
            let group = &order[start..end];
            start = end;

            let mut delta = TraceSummary::new(now);
            for &index in group {
                let span = &batch.spans[index as usize];
                delta.span_count += 1;
                delta.min_start_ns = delta.min_start_ns.min(span.start_time_unix_nano);
                delta.max_end_ns = delta.max_end_ns.max(span.end_time_unix_nano);
                delta.root_seen |= !span.has_parent;
                delta.status_mask |= 1 << span.status_code;
                let resource = batch.scopes[span.scope as usize].resource as usize;
                delta.matched |= resource_matches[resource];
                if !predicates.is_empty() {
                    for (name, attribute) in
                        attributes(&value[span.content.clone()], SPAN_ATTRIBUTES)
                    {
                        for (bit, predicate) in predicates.iter().enumerate() {
                            if predicate.key == name && predicate.matches(attribute) {
                                delta.matched |= 1 << bit;
                            }
                        }
                    }
                }
            }

            if let Some(pending) = self.pending.get_mut(&trace_id) {
                let before = pending.bytes.len();
                encode_fragment(value, batch, group, &mut pending.bytes);
                self.bytes += (pending.bytes.len() - before) as u64;
                let summary = &mut pending.summary;
                summary.last_seen_ms = now;
                summary.span_count = summary.span_count.saturating_add(delta.span_count);
                summary.min_start_ns = summary.min_start_ns.min(delta.min_start_ns);
                summary.max_end_ns = summary.max_end_ns.max(delta.max_end_ns);
                summary.root_seen |= delta.root_seen;
                summary.status_mask |= delta.status_mask;
                summary.matched |= delta.matched;
                let deadline = shared.deadline(summary);
                if deadline != pending.deadline_ms {
                    self.timers.remove(&(pending.deadline_ms, trace_id));
                    self.timers.insert((deadline, trace_id));
                    pending.deadline_ms = deadline;
                }
                if !pending.dirty {
                    pending.dirty = true;
                    self.dirty.push(trace_id);
                }
                continue;
            }

            trace_key(DECISION_TAG, &trace_id, key);
            match store.get(key, payload)? {
                Some(expire_at_ms) if expire_at_ms > now => {
                    let decided = StoredDecision::decode(payload, &shared.name)?;
                    self.counts.late_spans[usize::from(decided.keep)] +=
                        u64::from(delta.span_count);
                    if decided.keep {
                        fragment.clear();
                        encode_fragment(value, batch, group, fragment);
                        let hex = trace_id_hex(&trace_id);
                        let record = RawRecord {
                            topic: source.topic,
                            partition: source.partition,
                            offset: source.offset,
                            timestamp_ms: Some((delta.max_end_ns / 1_000_000) as i64),
                            key: Some(&hex),
                            value: Some(fragment),
                            headers: &[],
                        };
                        out.emit_record(
                            Port::Main,
                            &record,
                            &[
                                Header {
                                    name: SAMPLING_COMPLETION_HEADER,
                                    value: decided.completion.as_str().as_bytes(),
                                },
                                Header {
                                    name: SAMPLING_LATE_HEADER,
                                    value: b"true",
                                },
                            ],
                        );
                    }
                    continue;
                }
                _ => {}
            }

            fragment.clear();
            encode_fragment(value, batch, group, fragment);
            // Exactly sized: a trace that gets no more spans wastes no capacity.
            let bytes = fragment.as_slice().to_vec();
            self.bytes += bytes.len() as u64;
            let deadline_ms = shared.deadline(&delta);
            self.timers.insert((deadline_ms, trace_id));
            self.arrivals.insert((delta.first_seen_ms, trace_id));
            self.dirty.push(trace_id);
            self.pending.insert(
                trace_id,
                Pending {
                    summary: delta,
                    bytes,
                    persisted_len: 0,
                    persisted_fragments: 0,
                    summary_persisted: false,
                    dirty: true,
                    deadline_ms,
                },
            );
        }

        while let Some(&(deadline, trace_id)) = self.timers.first() {
            if deadline > self.watermark_ms {
                break;
            }
            let completion = shared.completion(&self.pending[&trace_id].summary);
            self.decide(
                shared, key, decision, store, &trace_id, completion, source, out,
            )?;
        }
        while self.pending.len() > shared.config.max_pending_traces_per_partition
            || self.bytes > shared.config.max_buffered_bytes_per_partition as u64
        {
            let Some(&(_, trace_id)) = self.arrivals.first() else {
                return Err(corrupt(
                    &shared.name,
                    "buffered bytes without a pending trace",
                ));
            };
            self.decide(
                shared,
                key,
                decision,
                store,
                &trace_id,
                Completion::Forced,
                source,
                out,
            )?;
        }
        Ok(())
    }

    /// Decides a pending trace: the decision record, the spans if kept, and the state change.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &mut self,
        shared: &Shared,
        key: &mut Vec<u8>,
        decision: &mut String,
        store: &mut PartitionStore,
        trace_id: &TraceId,
        completion: Completion,
        source: Source<'_>,
        out: &mut dyn Emitter,
    ) -> Result<()> {
        let pending = self
            .pending
            .remove(trace_id)
            .ok_or_else(|| corrupt(&shared.name, "a timer names no pending trace"))?;
        self.timers.remove(&(pending.deadline_ms, *trace_id));
        self.arrivals
            .remove(&(pending.summary.first_seen_ms, *trace_id));
        self.bytes -= pending.bytes.len() as u64;
        let now = self.watermark_ms;
        let summary = &pending.summary;
        let verdict = if completion == Completion::Forced
            && shared.config.overflow == OverflowPolicy::DropOldest
        {
            Verdict {
                keep: false,
                decider: shared.policies.overflow(),
            }
        } else {
            shared.policies.decide(
                &Subject {
                    trace_id,
                    summary,
                    now_ms: now,
                },
                &mut self.rates,
            )
        };
        let hex = trace_id_hex(trace_id);
        let decider = usize::from(verdict.decider);
        let policy_name = shared.policies.decider_names()[decider].as_bytes();
        let headers = [
            Header {
                name: SAMPLING_POLICY_HEADER,
                value: policy_name,
            },
            Header {
                name: SAMPLING_COMPLETION_HEADER,
                value: completion.as_str().as_bytes(),
            },
        ];
        decision.clear();
        let _ = write!(
            decision,
            "{{\"trace_id\":\"{}\",\"decision\":\"{}\",\"policy\":{},\"span_count\":{},\
             \"duration_ms\":{},\"completion\":\"{}\",\"first_seen_ms\":{},\"decided_at_ms\":{},\
             \"pipeline\":{}}}",
            std::str::from_utf8(&hex).expect("hex is ASCII"),
            if verdict.keep { "keep" } else { "drop" },
            shared.decider_json[decider],
            summary.span_count,
            summary.duration_ms(),
            completion.as_str(),
            summary.first_seen_ms,
            now,
            shared.pipeline_json,
        );
        let timestamp_ms = Some((summary.max_end_ns / 1_000_000) as i64);
        out.emit_record(
            Port::Decisions,
            &RawRecord {
                topic: source.topic,
                partition: source.partition,
                offset: source.offset,
                timestamp_ms,
                key: Some(&hex),
                value: Some(decision.as_bytes()),
                headers: &[],
            },
            &headers,
        );
        if verdict.keep {
            out.emit_record(
                Port::Main,
                &RawRecord {
                    topic: source.topic,
                    partition: source.partition,
                    offset: source.offset,
                    timestamp_ms,
                    key: Some(&hex),
                    value: Some(&pending.bytes),
                    headers: &[],
                },
                &headers,
            );
        }

        let offset = self.last_input_offset;
        if pending.summary_persisted {
            trace_key(SUMMARY_TAG, trace_id, key);
            store.delete(key, offset);
        }
        for number in 0..pending.persisted_fragments {
            fragment_key(trace_id, number, key);
            store.delete(key, offset);
        }
        trace_key(DECISION_TAG, trace_id, key);
        let stored = StoredDecision {
            keep: verdict.keep,
            completion,
            decided_at_ms: now,
        };
        store.put(
            key,
            now.saturating_add(shared.config.decision_ttl_ms),
            &stored.encode(&shared.policies.decider_names()[decider]),
            offset,
        );
        self.counts.decisions[decider][usize::from(verdict.keep)] += 1;
        self.counts.completions[completion as usize] += 1;
        Ok(())
    }
}

impl Operator for Sampling {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn stores(&self) -> Vec<StoreDeclaration> {
        vec![StoreDeclaration {
            name: self.store_name.clone(),
        }]
    }

    fn open_partition(&mut self, stores: &mut [PartitionStore]) -> Result<()> {
        let store = &mut stores[0];
        let shared = &self.shared;
        let meta = match store.get(META_KEY, &mut self.scratch.payload)? {
            Some(_) => Some(PartitionMeta::decode(&self.scratch.payload, &shared.name)?),
            None => None,
        };
        let mut state = PartitionState::new(
            meta,
            shared.policies.rate_count(),
            shared.policies.decider_names().len(),
        );
        let operator = shared.name.as_str();
        let undecodable = |reason: &'static str| StateError::Corrupt {
            store: operator.to_owned(),
            reason,
        };
        let mut fragments_expected: HashMap<TraceId, u32> = HashMap::new();
        store.for_each_committed_with_prefix(&[SUMMARY_TAG], |key, value| {
            let (trace_id, _) =
                split_trace_key(key).ok_or_else(|| undecodable("short summary key"))?;
            let (summary, fragments) = decode_summary(value.payload, operator)
                .map_err(|_| undecodable("undecodable trace summary"))?;
            fragments_expected.insert(trace_id, fragments);
            state.pending.insert(
                trace_id,
                Pending {
                    summary,
                    bytes: Vec::new(),
                    persisted_len: 0,
                    persisted_fragments: 0,
                    summary_persisted: true,
                    dirty: false,
                    deadline_ms: shared.deadline(&summary),
                },
            );
            Ok(())
        })?;
        store.for_each_committed_with_prefix(&[FRAGMENT_TAG], |key, value| {
            let Some((trace_id, Some(number))) = split_trace_key(key) else {
                return Err(undecodable("short fragment key"));
            };
            let bytes = decode_fragment_payload(value.payload, operator)
                .map_err(|_| undecodable("undecodable fragment"))?;
            let pending = state
                .pending
                .get_mut(&trace_id)
                .ok_or_else(|| undecodable("a fragment without its trace summary"))?;
            if number != pending.persisted_fragments {
                return Err(undecodable("trace fragments out of sequence"));
            }
            pending.bytes.extend_from_slice(bytes);
            pending.persisted_fragments += 1;
            Ok(())
        })?;
        for (trace_id, pending) in state.pending.iter_mut() {
            if fragments_expected.get(trace_id) != Some(&pending.persisted_fragments) {
                return Err(corrupt(operator, "a trace is missing stored fragments"));
            }
            pending.persisted_len = pending.bytes.len();
            state.bytes += pending.bytes.len() as u64;
            state.timers.insert((pending.deadline_ms, *trace_id));
            state
                .arrivals
                .insert((pending.summary.first_seen_ms, *trace_id));
        }
        self.partitions.insert(store.partition(), state);
        Ok(())
    }

    fn process(
        &mut self,
        record: &RawRecord<'_>,
        _event: &Envelope,
        stores: &mut [PartitionStore],
        out: &mut dyn Emitter,
    ) -> Result<Disposition> {
        let shared = &self.shared;
        let Some(state) = self.partitions.get_mut(&record.partition) else {
            return Err(OperatorError::PartitionNotOpen {
                operator: shared.name.clone(),
                partition: record.partition,
            });
        };
        let Some(raw) = record.value else {
            return Ok(Disposition::Rejected {
                reason: "missing_value",
                message: "an OTLP batch record has no value",
            });
        };
        let scratch = &mut self.scratch;
        // Taken out of the scratch for the call, which borrows the rest of it.
        let mut converted = std::mem::take(&mut scratch.json);
        let value: &[u8] = match shared.encoding {
            OtlpEncoding::Proto => raw,
            OtlpEncoding::Json => {
                converted.clear();
                if let Err(error) = json::to_protobuf(raw, &mut converted) {
                    scratch.json = converted;
                    return Ok(Disposition::Rejected {
                        reason: match error {
                            json::JsonError::Syntax => "invalid_json",
                            json::JsonError::Shape(_) => "invalid_field",
                        },
                        message: error.message(),
                    });
                }
                &converted
            }
        };
        let outcome = match parse_request(value, &mut scratch.batch) {
            Err(error) => Ok(Disposition::Rejected {
                reason: match error {
                    BatchError::Wire(otlp::WireError::InvalidUtf8) => "invalid_utf8",
                    BatchError::Wire(_) => "invalid_protobuf",
                    BatchError::InvalidTraceId => "invalid_field",
                },
                message: error.message(),
            }),
            Ok(()) => {
                state.last_input_offset = record.offset;
                let source = Source {
                    topic: record.topic,
                    partition: record.partition,
                    offset: record.offset,
                };
                state
                    .ingest(shared, scratch, value, &mut stores[0], source, out)
                    .map(|()| Disposition::Handled)
            }
        };
        scratch.json = converted;
        outcome
    }

    fn checkpoint(&mut self, stores: &mut [PartitionStore], last_input_offset: i64) -> Result<()> {
        let store = &mut stores[0];
        let Some(state) = self.partitions.get_mut(&store.partition()) else {
            return Ok(());
        };
        let shared = &self.shared;
        let Scratch { key, payload, .. } = &mut self.scratch;
        state.last_input_offset = last_input_offset;
        for trace_id in state.dirty.drain(..) {
            let Some(pending) = state.pending.get_mut(&trace_id) else {
                continue;
            };
            if !pending.dirty {
                continue;
            }
            pending.dirty = false;
            if pending.bytes.len() > pending.persisted_len {
                fragment_key(&trace_id, pending.persisted_fragments, key);
                encode_fragment_payload(&pending.bytes[pending.persisted_len..], payload);
                store.put(key, NO_EXPIRY, payload, last_input_offset);
                pending.persisted_fragments += 1;
                pending.persisted_len = pending.bytes.len();
            }
            trace_key(SUMMARY_TAG, &trace_id, key);
            encode_summary(&pending.summary, pending.persisted_fragments, payload);
            store.put(key, NO_EXPIRY, payload, last_input_offset);
            pending.summary_persisted = true;
        }
        if state.watermark_ms != i64::MIN {
            let meta = PartitionMeta {
                watermark_ms: state.watermark_ms,
                rates: state.rates.clone(),
            };
            if state.persisted.as_ref() != Some(&meta) {
                meta.encode(payload);
                store.put(META_KEY, NO_EXPIRY, payload, last_input_offset);
                state.persisted = Some(meta);
            }
            store.expire_due(
                state.watermark_ms,
                last_input_offset,
                shared.config.max_expirations_per_commit,
            )?;
        }
        let counts = &mut state.counts;
        for (counters, counts) in shared.metrics.decisions.iter().zip(&mut counts.decisions) {
            for (counter, count) in counters.iter().zip(counts.iter_mut()) {
                if *count > 0 {
                    counter.inc_by(std::mem::take(count));
                }
            }
        }
        for (counter, count) in shared
            .metrics
            .late_spans
            .iter()
            .zip(&mut counts.late_spans)
            .chain(
                shared
                    .metrics
                    .completions
                    .iter()
                    .zip(&mut counts.completions),
            )
        {
            if *count > 0 {
                counter.inc_by(std::mem::take(count));
            }
        }
        Ok(())
    }

    fn waiting(&self, partition: i32) -> Waiting {
        self.partitions
            .get(&partition)
            .map(|state| Waiting {
                events: state.pending.len() as u64,
                bytes: state.bytes,
            })
            .unwrap_or_default()
    }

    fn close_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn close(&mut self) {
        self.partitions.clear();
    }

    fn answers(&self, kind: LookupKind) -> bool {
        kind == LookupKind::SamplingTrace
    }

    /// A decided trace: `{"trace_id", "decision": "keep"|"drop", "policy", "completion",
    /// "decided_at_ms", "expires_at_ms"}` while the decision is remembered (`decision_ttl_ms`);
    /// a pending one: `{"trace_id", "decision": "pending", "span_count", "buffered_bytes",
    /// "first_seen_ms", "last_seen_ms", "deadline_ms", "root_seen"}`.
    fn lookup(
        &mut self,
        stores: &mut [PartitionStore],
        lookup: &Lookup<'_>,
    ) -> Result<Option<serde_json::Value>> {
        let Lookup::SamplingTrace { trace_id } = *lookup else {
            return Ok(None);
        };
        let store = &mut stores[0];
        let Some(state) = self.partitions.get(&store.partition()) else {
            return Ok(None);
        };
        let hex = trace_id_hex(&trace_id);
        let hex = std::str::from_utf8(&hex).expect("hex is ASCII");
        if let Some(pending) = state.pending.get(&trace_id) {
            let summary = &pending.summary;
            return Ok(Some(serde_json::json!({
                "trace_id": hex,
                "decision": "pending",
                "span_count": summary.span_count,
                "buffered_bytes": pending.bytes.len(),
                "first_seen_ms": summary.first_seen_ms,
                "last_seen_ms": summary.last_seen_ms,
                "deadline_ms": pending.deadline_ms,
                "root_seen": summary.root_seen,
            })));
        }
        let mut key = Vec::with_capacity(1 + trace_id.len());
        trace_key(DECISION_TAG, &trace_id, &mut key);
        let mut payload = Vec::new();
        match store.get(&key, &mut payload)? {
            // The same test `ingest` applies: an expired decision no longer governs the trace.
            Some(expire_at_ms) if expire_at_ms > state.watermark_ms => {
                let (decided, policy) =
                    StoredDecision::decode_with_policy(&payload, &self.shared.name)?;
                Ok(Some(serde_json::json!({
                    "trace_id": hex,
                    "decision": if decided.keep { "keep" } else { "drop" },
                    "policy": policy,
                    "completion": decided.completion.as_str(),
                    "decided_at_ms": decided.decided_at_ms,
                    "expires_at_ms": expire_at_ms,
                })))
            }
            _ => Ok(None),
        }
    }
}
