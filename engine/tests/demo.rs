//! The embedded demo, run for real on librdkafka's mock cluster: the summary a newcomer sees
//! must balance and the output must hold every distinct id exactly once.

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
}
