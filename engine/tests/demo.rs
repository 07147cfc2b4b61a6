//! The embedded demo, run for real on librdkafka's mock cluster: the summary a newcomer sees
//! must balance, the output must hold every distinct id exactly once, and tail sampling must keep
//! what its policies say, span for span.

use breadcrumb_engine::demo::{self, DemoOptions};

#[test]
fn demo_conserves_records_and_publishes_every_id_once() {
    let summary = demo::run(&DemoOptions {
        records: 3_000,
        duplicate_percent: 10.0,
        conflict_percent: 1.0,
        poison_percent: 1.0,
        shuffled_accounts_percent: 20.0,
        sequence_gap_percent: 0.5,
        traces: 400,
        flows: 200,
        progress: false,
    })
    .expect("demo runs");
    assert_eq!(summary.events_in, summary.produced.total());
    assert_eq!(summary.events_out, summary.produced.new);
    assert_eq!(summary.duplicates, summary.produced.duplicates);
    assert_eq!(summary.conflicts, summary.produced.conflicts);
    assert_eq!(summary.dead_letters_total(), summary.produced.poison);
    // Ordering: every shuffled payment was held and released in order; every skipped sequence
    // number was reported as a gap, and nothing was late or left waiting.
    assert!(summary.produced.reordered > 0 && summary.produced.sequence_gaps > 0);
    assert!(
        summary.reordered >= summary.produced.reordered,
        "{}",
        summary.render()
    );
    assert_eq!(
        summary.gaps,
        summary.produced.sequence_gaps,
        "{}",
        summary.render()
    );
    assert_eq!((summary.late, summary.repeats, summary.waiting), (0, 0, 0));
    assert_eq!(summary.accounts_out_of_order, 0, "{}", summary.render());
    assert!(summary.conserved(), "{}", summary.render());
    assert!(summary.output_exactly_once, "{}", summary.render());
    assert!(summary.render().contains("holds"));

    // Telemetry: every trace read and decided once by event time, the clock traces pending.
    let telemetry = &summary.telemetry;
    let produced = telemetry.produced;
    assert_eq!(produced.traces(), 400);
    assert!(
        produced.error > 0 && produced.slow > 0 && produced.health > 0 && produced.plain > 0,
        "{produced:?}"
    );
    assert_eq!(telemetry.records_in, produced.records());
    assert_eq!(telemetry.decision_records, produced.traces());
    assert_eq!(
        (telemetry.undecided, telemetry.extra_decisions),
        (0, 0),
        "{}",
        summary.render()
    );
    assert_eq!(
        (telemetry.pending, telemetry.clocks_decided),
        (produced.clock, 0)
    );
    assert_eq!(telemetry.late_spans, 0);
    // The policies: errors and slow traces all kept by their own policy, health checks all
    // dropped by the drop policy, a few plain traces kept by the baseline, the rest by none.
    let decided = |policy: &str, decision: &str| {
        telemetry
            .decisions
            .iter()
            .find(|(name, verdict, _)| name == policy && verdict == decision)
            .map_or(0, |(_, _, count)| *count)
    };
    assert_eq!(decided("errors", "keep"), produced.error);
    assert_eq!(decided("slow", "keep"), produced.slow);
    assert_eq!(decided("no-health-checks", "drop"), produced.health);
    assert_eq!(decided("baseline", "keep"), telemetry.kept.plain);
    assert_eq!(
        decided("none", "drop"),
        produced.plain - telemetry.kept.plain
    );
    assert!(
        telemetry.kept.plain < produced.plain / 5,
        "{}",
        summary.render()
    );
    assert_eq!(telemetry.kept.error, produced.error);
    assert_eq!(telemetry.kept.slow, produced.slow);
    assert_eq!(telemetry.kept.health, 0);
    assert!(telemetry.policies_hold(), "{}", summary.render());
    // The sampled topic: exactly the spans of the kept traces, each once.
    assert!(telemetry.spans_out > 0);
    assert_eq!(telemetry.spans_out, telemetry.kept.spans);
    assert_eq!(
        (
            telemetry.spans_missing,
            telemetry.spans_repeated,
            telemetry.spans_unexpected
        ),
        (0, 0, 0)
    );
    assert!(telemetry.spans_exact(), "{}", summary.render());
    assert!(summary.render().contains("exactly the spans of the"));

    // Lineage: every event joined or orphaned exactly as the workload broke its links, every
    // edge naming where its event's copy landed.
    let lineage = &summary.lineage;
    assert_eq!(lineage.flows, 200);
    assert!(lineage.payments_lost > 0 && lineage.flows_without_spans > 0);
    assert_eq!(lineage.events_in, lineage.events_produced);
    assert_eq!(lineage.events_out, lineage.events_produced);
    assert_eq!(lineage.pending, 0, "{}", summary.render());
    assert_eq!(lineage.span_edges, lineage.events_produced);
    assert_eq!(
        lineage.parent_edges,
        2 * lineage.flows - lineage.payments_lost,
        "a parent edge per payment and per invoice"
    );
    assert_eq!(
        lineage.check.edge_records,
        lineage.span_edges + lineage.parent_edges
    );
    let orphans = |reason: &str| {
        lineage
            .orphans
            .iter()
            .find(|(name, _)| name == reason)
            .map_or(0, |(_, count)| *count)
    };
    assert_eq!(orphans("parent_event_not_seen"), lineage.payments_lost);
    assert!(orphans("trace_not_seen") >= 2 * lineage.flows_without_spans);
    assert!(lineage.ok(), "{}", summary.render());
    assert_eq!(lineage.check.chain.len(), 3, "invoice, payment, order");
    assert_eq!(
        lineage
            .check
            .chain
            .iter()
            .map(|(_, service, _)| service.as_str())
            .collect::<Vec<_>>(),
        ["billing", "payments", "orders"]
    );
    assert_eq!(lineage.check.chain_root_service, "storefront");
    // The running engine answered the lineage query of that chain's invoice from its state.
    let query = lineage
        .query
        .as_ref()
        .expect("the demo asks a lineage query");
    assert_eq!(query.status, 200, "{}", query.body);
    let chain_ids: Vec<String> = lineage
        .check
        .chain
        .iter()
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_eq!(query.event_ids(), chain_ids, "{}", query.body);
}
