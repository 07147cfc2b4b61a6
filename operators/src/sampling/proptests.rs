//! Whatever the arrival order, batching, commits, aborts and restarts: every span of a kept trace
//! leaves exactly once, no span of a dropped trace leaves, and every trace is decided once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::policy::Policies;
use super::tests::{request, span, Harness};
use super::*;
use crate::Operator;

#[derive(Debug, Clone)]
struct TraceSpec {
    start_ms: u64,
    /// Per span: (duration ms, error).
    spans: Vec<(u64, bool)>,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Nothing,
    Commit,
    Abort,
    Restart,
}

#[derive(Debug, Clone)]
struct Case {
    traces: Vec<TraceSpec>,
    /// Sort keys giving the arrival order of all spans.
    order: Vec<u32>,
    /// Batch sizes, cycled.
    batch_sizes: Vec<usize>,
    actions: Vec<Action>,
    max_pending: usize,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let trace = (
        0..4_000u64,
        prop::collection::vec((0..600u64, prop::bool::weighted(0.2)), 1..6),
    )
        .prop_map(|(start_ms, spans)| TraceSpec { start_ms, spans });
    (
        prop::collection::vec(trace, 1..10),
        prop::collection::vec(any::<u32>(), 60),
        prop::collection::vec(1..5usize, 1..6),
        prop::collection::vec(
            prop_oneof![
                4 => Just(Action::Nothing),
                3 => Just(Action::Commit),
                1 => Just(Action::Abort),
                1 => Just(Action::Restart),
            ],
            1..30,
        ),
        prop_oneof![Just(3usize), Just(100_000usize)],
    )
        .prop_map(|(traces, order, batch_sizes, actions, max_pending)| Case {
            traces,
            order,
            batch_sizes,
            actions,
            max_pending,
        })
}

fn policies() -> Vec<PolicyConfig> {
    vec![
        PolicyConfig::StatusCode {
            name: "errors".into(),
            status_codes: vec![StatusCodeName::Error],
        },
        PolicyConfig::Probabilistic {
            name: "sample".into(),
            sampling_percentage: 40.0,
            hash_salt: "s".into(),
        },
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn kept_traces_leave_whole_and_once_dropped_ones_never(case in case_strategy()) {
        let config = SamplingConfig {
            quiet_period_ms: 500,
            max_wait_ms: 2_000,
            max_pending_traces_per_partition: case.max_pending,
            ..SamplingConfig::with_policies(policies())
        };
        let mut harness = Harness::new(config);
        // All spans with their arrival keys; trace index + 1 is the trace id byte.
        let mut spans = Vec::new();
        for (index, trace) in case.traces.iter().enumerate() {
            let id = index as u8 + 1;
            for (number, (duration, error)) in trace.spans.iter().enumerate() {
                let parent = (number > 0).then_some(1);
                let mut built = span(id, number as u8 + 1, parent, trace.start_ms, trace.start_ms + duration);
                built.status_code = if *error { 2 } else { 0 };
                spans.push((case.order[spans.len() % case.order.len()], spans.len(), built));
            }
        }
        spans.sort_by_key(|(key, position, _)| (*key, *position));
        let mut position = 0;
        let mut step = 0;
        while position < spans.len() {
            let size = case.batch_sizes[step % case.batch_sizes.len()];
            let batch: Vec<_> = spans[position..(position + size).min(spans.len())]
                .iter()
                .map(|(_, _, span)| span.clone())
                .collect();
            position += batch.len();
            harness.feed(request(batch));
            match case.actions[step % case.actions.len()] {
                Action::Nothing => {}
                Action::Commit => harness.commit(),
                Action::Abort => harness.abort(),
                Action::Restart => harness.restart(),
            }
            step += 1;
        }
        // Far enough in event time for every trace to complete.
        harness.feed(request(vec![span(0xEE, 1, Some(0), 100_000, 100_000)]));
        harness.commit();

        let mut decisions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for decision in harness.decisions() {
            decisions
                .entry(decision["trace_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(decision["decision"].as_str().unwrap().to_owned());
        }
        let probabilistic = Policies::compile(&policies()[1..], Arc::new(NoLineage));
        let sampled = harness.sampled_spans();
        for (index, trace) in case.traces.iter().enumerate() {
            let id = [index as u8 + 1; 16];
            let hex = format!("{:02x}", index + 1).repeat(16);
            let outcomes = decisions.get(&hex).cloned().unwrap_or_default();
            prop_assert_eq!(outcomes.len(), 1, "trace {} decided once: {:?}", hex, outcomes);
            let kept = outcomes[0] == "keep";
            let by_hash = probabilistic
                .decide(
                    &policy::Subject { trace_id: &id, summary: &TraceSummary::new(0), now_ms: 0 },
                    &mut [],
                )
                .keep;
            if by_hash {
                prop_assert!(kept, "trace {} is kept by its hash", hex);
            }
            if !trace.spans.iter().any(|(_, error)| *error) {
                prop_assert_eq!(kept, by_hash, "trace {} has no error span", hex);
            }
            let emitted: Vec<u8> = sampled
                .iter()
                .filter(|(trace_id, _)| *trace_id == id)
                .map(|(_, span_id)| span_id[1])
                .collect();
            let distinct: BTreeSet<u8> = emitted.iter().copied().collect();
            if kept {
                let expected: BTreeSet<u8> = (1..=trace.spans.len() as u8).collect();
                prop_assert_eq!(&distinct, &expected, "every span of kept trace {}", hex);
                prop_assert_eq!(emitted.len(), expected.len(), "each span of {} once", hex);
            } else {
                prop_assert!(emitted.is_empty(), "no span of dropped trace {}", hex);
            }
        }
        prop_assert!(harness.operator.waiting(0).events <= 1, "only the final tick trace waits");
    }
}
