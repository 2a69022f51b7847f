//! Inputs the fuzz targets (`fuzz/`) once crashed on, kept so they never do again.

use tillmesh_protocol::SignedEntry;
use tillmesh_protocol::docmap::parse_change;

/// An entry whose Automerge change carries an op counter past `u32::MAX`: Automerge 0.12's
/// parser panics on it. The writer's parse refuses it with an error instead.
#[test]
fn a_change_with_an_overflowing_counter_is_refused_not_a_panic() {
    let bytes = include_bytes!("fuzz_regressions/entry-automerge-counter-overflow");
    let entry = SignedEntry::decode(bytes).expect("the entry itself decodes");
    let mut refused = 0;
    for dc in entry.docs() {
        for change in &dc.changes {
            if let Err(why) = parse_change(change) {
                assert!(!why.is_empty());
                refused += 1;
            }
        }
    }
    assert!(refused >= 1, "the malformed change is refused");
}
