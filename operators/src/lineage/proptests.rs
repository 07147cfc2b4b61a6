//! Random DAGs of events and spans, shuffled, some links missing, with crashes: every event gets
//! exactly the edges a model predicts, orphans exactly where a link is missing, and a run with
//! crashes commits exactly what an uninterrupted run does.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::tests::{event, span, EdgeSeen, Harness, Input, Seen};
use super::LineageConfig;

const WINDOW_MS: i64 = 60_000;
const DEPTH: usize = 3;

/// A small deterministic generator, so a proptest case is just a seed and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Workload {
    inputs: Vec<Input>,
    expected: Vec<EdgeSeen>,
    delivered_events: BTreeSet<String>,
}

/// An event as planned: delivered or not (a missing parent for its children).
struct Planned {
    id: String,
    trace: Option<(u8, u8)>,
    causation: Option<String>,
    delivered: bool,
}

fn workload(seed: u64, traces: u8, spans_per_trace: u8, events: usize) -> Workload {
    let mut rng = Rng(seed | 1);
    let mut inputs = Vec::new();
    // Which spans exist (delivered), per trace; span 1 is the root, others have an earlier parent.
    let mut present: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::new();
    for trace in 1..=traces {
        let lost_trace = rng.chance(15);
        for span_number in 1..=spans_per_trace {
            let parent = (span_number > 1).then(|| 1 + rng.below(span_number as u64 - 1) as u8);
            if lost_trace || rng.chance(15) {
                continue;
            }
            present.entry(trace).or_default().insert(span_number);
            let time = 1_000 + rng.below(WINDOW_MS as u64 / 2) as i64;
            inputs.push(span(
                trace,
                span_number,
                parent,
                &format!("svc-{trace}-{span_number}"),
                time,
            ));
        }
    }
    let mut planned: Vec<Planned> = Vec::new();
    for index in 0..events {
        let trace = (!rng.chance(10)).then(|| {
            let trace = 1 + rng.below(traces as u64) as u8;
            // One past the last span number: a producing span that never exists.
            let span = 1 + rng.below(spans_per_trace as u64 + 1) as u8;
            (trace, span)
        });
        let causation = match rng.below(10) {
            0..=3 => None,
            4 => Some(format!("ghost-{index}")),
            _ if index > 0 => Some(planned[rng.below(index as u64) as usize].id.clone()),
            _ => None,
        };
        planned.push(Planned {
            id: format!("e{index}"),
            trace,
            causation,
            delivered: !rng.chance(10),
        });
    }
    let delivered: BTreeMap<&str, &Planned> = planned
        .iter()
        .filter(|event| event.delivered)
        .map(|event| (event.id.as_str(), event))
        .collect();
    let mut expected = Vec::new();
    for event_plan in planned.iter().filter(|event| event.delivered) {
        let time = 1_000 + rng.below(WINDOW_MS as u64 / 2) as i64;
        inputs.push(event(
            &event_plan.id,
            event_plan.trace,
            event_plan.causation.as_deref(),
            time,
        ));
        let base = EdgeSeen {
            event_id: event_plan.id.clone(),
            kind: "span".into(),
            orphan: None,
            service: None,
            operation: None,
            root_service: None,
            parent: event_plan.causation.clone(),
            ancestors: Vec::new(),
        };
        let span_edge = match event_plan.trace {
            None => EdgeSeen {
                orphan: Some("no_trace_context".into()),
                ..base.clone()
            },
            Some((trace, producing)) => match present.get(&trace) {
                None => EdgeSeen {
                    orphan: Some("trace_not_seen".into()),
                    ..base.clone()
                },
                Some(spans) => {
                    let has_span = spans.contains(&producing);
                    let has_root = spans.contains(&1);
                    EdgeSeen {
                        orphan: if !has_span {
                            Some("span_not_seen".into())
                        } else if !has_root {
                            Some("root_span_not_seen".into())
                        } else {
                            None
                        },
                        service: has_span.then(|| format!("svc-{trace}-{producing}")),
                        operation: has_span.then(|| format!("op-{producing}")),
                        root_service: has_root.then(|| format!("svc-{trace}-1")),
                        ..base.clone()
                    }
                }
            },
        };
        expected.push(span_edge);
        if let Some(cause) = &event_plan.causation {
            let mut ancestors = Vec::new();
            let mut next = Some(cause.as_str());
            while let Some(id) = next.filter(|_| ancestors.len() < DEPTH) {
                let Some(ancestor) = delivered.get(id) else {
                    break;
                };
                ancestors.push(id.to_owned());
                next = ancestor.causation.as_deref();
            }
            expected.push(EdgeSeen {
                kind: "parent".into(),
                orphan: ancestors.is_empty().then(|| "parent_event_not_seen".into()),
                ancestors,
                ..base
            });
        }
    }
    // Shuffle (Fisher-Yates), then a span far in the future closes every window.
    for index in (1..inputs.len()).rev() {
        inputs.swap(index, rng.below(index as u64 + 1) as usize);
    }
    inputs.push(span(250, 1, None, "clock", 1_000 + 10 * WINDOW_MS));
    expected.sort();
    Workload {
        inputs,
        expected,
        delivered_events: delivered.keys().map(|id| id.to_string()).collect(),
    }
}

fn config() -> LineageConfig {
    LineageConfig {
        join_window_ms: WINDOW_MS,
        event_ttl_ms: 100 * WINDOW_MS,
        max_chain_depth: DEPTH,
        ..LineageConfig::default()
    }
}

/// Runs `inputs`, committing every `commit_every` inputs; at each crash point (an input index)
/// the uncommitted work is lost, the operator restarts from the store and the inputs since the
/// last commit are read again. Returns what was committed.
fn run_with_crashes(inputs: &[Input], commit_every: usize, crashes: &BTreeSet<usize>) -> Seen {
    let mut harness = Harness::new(config());
    let mut committed = Seen::default();
    let mut open = Seen::default();
    let mut last_commit = 0;
    let mut crashed = BTreeSet::new();
    let mut position = 0;
    while position < inputs.len() {
        if crashes.contains(&position) && crashed.insert(position) {
            harness.reopen();
            open = Seen::default();
            position = last_commit;
            harness.offset = last_commit as i64;
            continue;
        }
        harness.feed(&inputs[position], &mut open);
        position += 1;
        if position % commit_every == 0 || position == inputs.len() {
            harness.commit();
            committed.released.append(&mut open.released);
            committed.edges.append(&mut open.edges);
            committed.repeats.append(&mut open.repeats);
            last_commit = position;
        }
    }
    assert_eq!(harness.waiting().events, 0, "every window closed");
    committed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn edges_match_the_model_whatever_the_arrival_order_and_crashes(
        seed in any::<u64>(),
        traces in 1u8..6,
        spans_per_trace in 1u8..5,
        events in 1usize..40,
        commit_every in 1usize..12,
        crashes in proptest::collection::btree_set(0usize..80, 0..4),
    ) {
        let workload = workload(seed, traces, spans_per_trace, events);
        let uninterrupted = run_with_crashes(&workload.inputs, commit_every, &BTreeSet::new());
        let mut edges = uninterrupted.edges.clone();
        edges.sort();
        prop_assert_eq!(&edges, &workload.expected);
        let released: BTreeSet<String> =
            uninterrupted.released.iter().map(|(id, _)| id.clone()).collect();
        prop_assert_eq!(released.len(), uninterrupted.released.len(), "released once each");
        prop_assert_eq!(&released, &workload.delivered_events);
        prop_assert!(uninterrupted.repeats.is_empty());

        let crashed = run_with_crashes(&workload.inputs, commit_every, &crashes);
        prop_assert_eq!(crashed, uninterrupted);
    }
}
