use proptest::prelude::*;

use super::*;
use crate::entry::{DocChanges, Entry, Payload};
use crate::ids::{DocId, EntryHash, MeshId};
use crate::keys::DeviceKey;
use crate::schema::DocType;

fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret([n; 32])
}

fn entry(author: u8, seq: u64) -> SignedEntry {
    let k = key(author);
    Entry {
        author: k.device_id(),
        seq,
        prev: EntryHash::ZERO,
        timestamp_ms: 1,
        payload: Payload::Changes(vec![DocChanges {
            doc_id: DocId([seq as u8; 16]),
            doc_type: DocType::Sale,
            changes: vec![vec![seq as u8; 10]],
        }]),
    }
    .sign(&MeshId::from_root(&key(9).device_id()), &k)
}

fn drain(s: &mut Sync<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| s.poll()).collect()
}

fn vv(pairs: &[(u8, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for (a, s) in pairs {
        v.advance(key(*a).device_id(), *s);
    }
    v
}

#[test]
fn a_new_peer_is_pulled_at_once_and_again_after_the_interval_once_synced() {
    let mut s = Sync::new(Config::default());
    s.connected(7, 100);
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 7, .. }]));
    let e = entry(1, 1);
    s.received(
        &7,
        Message::Entries {
            entries: vec![e.clone()],
            holder: vv(&[(1, 1)]),
            more: false,
        },
        110,
    );
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![Output::Apply {
            source: Source::Pull(7),
            entries: vec![e.clone()]
        }]
    );
    s.applied(
        Source::Pull(7),
        vec![(e, Verdict::Applied)],
        &vv(&[(1, 1)]),
        120,
    );
    assert!(
        drain(&mut s).is_empty(),
        "synced: no pull before the interval"
    );
    assert!(s.peer(&7).unwrap().synced);
    assert_eq!(s.next_deadline_ms(), Some(1120));
    s.tick(1119);
    assert!(drain(&mut s).is_empty());
    s.tick(1120);
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 7, .. }]));
}

#[test]
fn more_to_come_pulls_again_at_once() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    let e = entry(1, 1);
    s.received(
        &1,
        Message::Entries {
            entries: vec![e.clone()],
            holder: vv(&[(1, 5)]),
            more: true,
        },
        1,
    );
    drain(&mut s);
    s.applied(
        Source::Pull(1),
        vec![(e, Verdict::Applied)],
        &vv(&[(1, 1)]),
        2,
    );
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 1, .. }]));
    assert!(!s.peer(&1).unwrap().synced);
}

#[test]
fn a_deferred_entry_and_its_successors_are_parked_and_retried_after_progress() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    let (a1, a2, b1) = (entry(1, 1), entry(1, 2), entry(2, 1));
    s.received(
        &1,
        Message::Entries {
            entries: vec![a1.clone(), a2.clone(), b1.clone()],
            holder: vv(&[(1, 2), (2, 1)]),
            more: false,
        },
        1,
    );
    drain(&mut s);
    s.applied(
        Source::Pull(1),
        vec![
            (a1.clone(), Verdict::Deferred),
            (a2.clone(), Verdict::Gap { have: 0 }),
            (b1, Verdict::Applied),
        ],
        &vv(&[(2, 1)]),
        2,
    );
    let out = drain(&mut s);
    assert_eq!(
        out[0],
        Output::Apply {
            source: Source::Parked,
            entries: vec![a1.clone(), a2.clone()]
        }
    );
    // Not covered yet, but progress was made: pull again now.
    assert!(matches!(out[1], Output::Pull { peer: 1, .. }));
    assert_eq!(s.parked(), 0);
    s.applied(
        Source::Parked,
        vec![(a1, Verdict::Applied), (a2, Verdict::Applied)],
        &vv(&[(1, 2), (2, 1)]),
        3,
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn a_gap_behind_a_push_triggers_a_pull() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    s.received(
        &1,
        Message::Entries {
            entries: vec![],
            holder: VersionVector::new(),
            more: false,
        },
        1,
    );
    drain(&mut s);
    s.applied(Source::Pull(1), vec![], &VersionVector::new(), 1);
    assert!(drain(&mut s).is_empty());
    let e = entry(1, 3);
    s.pushed(&1, Message::Push { entry: e.clone() });
    assert_eq!(drain(&mut s).len(), 1);
    s.applied(
        Source::Push(1),
        vec![(e, Verdict::Gap { have: 0 })],
        &VersionVector::new(),
        5,
    );
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 1, .. }]));
}

#[test]
fn a_forged_entry_disconnects_the_peer() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    let e = entry(1, 1);
    s.pushed(&1, Message::Push { entry: e.clone() });
    drain(&mut s);
    s.applied(
        Source::Push(1),
        vec![(e, Verdict::Forged)],
        &VersionVector::new(),
        1,
    );
    assert!(matches!(
        drain(&mut s)[..],
        [Output::Disconnect { peer: 1, .. }]
    ));
    assert!(s.peer(&1).is_none());
}

#[test]
fn a_peer_answering_with_the_wrong_kind_is_disconnected() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    s.received(
        &1,
        Message::Pull {
            have: VersionVector::new(),
            entries_max: 1,
            bytes_max: 1,
        },
        1,
    );
    assert!(matches!(
        drain(&mut s)[..],
        [Output::Disconnect { peer: 1, .. }]
    ));
}

#[test]
fn failed_pulls_back_off_exponentially_up_to_the_cap() {
    let config = Config::default();
    let mut s = Sync::new(config.clone());
    s.connected(1, 0);
    let mut now = 0;
    let mut waits = vec![];
    for _ in 0..12 {
        drain(&mut s);
        s.pull_failed(&1, now);
        let next = s.next_deadline_ms().unwrap();
        waits.push(next - now);
        now = next;
        s.tick(now);
    }
    assert_eq!(waits[0], config.retry_ms_min);
    assert_eq!(waits[1], config.retry_ms_min * 2);
    assert_eq!(*waits.last().unwrap(), config.retry_ms_max);
    assert!(waits.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn an_unanswered_pull_times_out() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    s.tick(29_999);
    assert!(drain(&mut s).is_empty());
    s.tick(30_000);
    assert_eq!(s.peer(&1).unwrap().failures, 1);
    s.tick(30_250);
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 1, .. }]));
}

#[test]
fn a_late_answer_after_a_timeout_is_ignored() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    s.tick(30_000);
    s.received(
        &1,
        Message::Entries {
            entries: vec![entry(1, 1)],
            holder: vv(&[(1, 1)]),
            more: false,
        },
        30_001,
    );
    assert!(drain(&mut s).is_empty());
}

#[test]
fn serving_honours_the_askers_limits_but_never_above_ours() {
    let plan = plan_serve(&vv(&[(1, 2)]), &vv(&[(1, 5), (2, 1)]), u32::MAX, 10);
    assert_eq!(plan.entries_max, wire::BATCH_ENTRIES_MAX);
    assert_eq!(plan.bytes_max, 10);
    let mut expected = vec![(key(1).device_id(), 3..=5), (key(2).device_id(), 1..=1)];
    expected.sort_by_key(|(a, _)| *a);
    assert_eq!(plan.ranges, expected);
}

#[test]
fn messages_round_trip() {
    let m = [
        Message::Pull {
            have: vv(&[(1, 3), (2, 9)]),
            entries_max: 5,
            bytes_max: 6,
        },
        Message::Entries {
            entries: vec![entry(1, 1), entry(2, 2)],
            holder: vv(&[(1, 1)]),
            more: true,
        },
        Message::Push { entry: entry(3, 1) },
    ];
    for m in m {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
}

#[test]
fn a_repeated_author_in_a_version_vector_is_refused() {
    let mut bytes = Message::Pull {
        have: vv(&[(1, 3)]),
        entries_max: 1,
        bytes_max: 1,
    }
    .encode();
    // Claim two authors and repeat the first.
    bytes[8] = 2;
    let author = bytes[9..49].to_vec();
    bytes.splice(49..49, author);
    assert!(matches!(
        Message::decode(&bytes),
        Err(WireError::DuplicateAuthor(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_or_a_valid_message(
        cut in 0usize..400, flip in 0usize..400, bit in 0u8..8,
    ) {
        let full = Message::Entries {
            entries: vec![entry(1, 1)],
            holder: vv(&[(1, 1)]),
            more: false,
        }
        .encode();
        let cut = cut.min(full.len());
        if cut < full.len() {
            prop_assert!(Message::decode(&full[..cut]).is_err());
        }
        let mut flipped = full.clone();
        let at = flip % flipped.len();
        flipped[at] ^= 1 << bit;
        if let Ok(m) = Message::decode(&flipped) {
            // Whatever decodes re-encodes to the same bytes: no two readings of one message.
            prop_assert_eq!(m.encode(), flipped);
        }
    }
}

#[test]
fn a_stale_report_after_a_reconnect_does_not_end_the_new_pull() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    let e = entry(1, 1);
    s.received(
        &1,
        Message::Entries {
            entries: vec![e.clone()],
            holder: vv(&[(1, 1)]),
            more: false,
        },
        1,
    );
    drain(&mut s);
    // The connection drops while the store applies; a new one starts a new pull.
    s.disconnected(&1);
    s.connected(1, 2);
    assert!(matches!(drain(&mut s)[..], [Output::Pull { peer: 1, .. }]));
    // The old apply reports now: the new pull is still awaited, not marked done.
    s.applied(
        Source::Pull(1),
        vec![(e, Verdict::Applied)],
        &vv(&[(1, 1)]),
        3,
    );
    assert!(!s.peer(&1).unwrap().synced);
    s.received(
        &1,
        Message::Entries {
            entries: vec![],
            holder: vv(&[(1, 1)]),
            more: false,
        },
        4,
    );
    assert_eq!(drain(&mut s).len(), 1, "the new pull's answer is applied");
}

#[test]
fn progress_during_a_parked_retry_retries_again_when_it_reports() {
    let mut s = Sync::new(Config::default());
    s.connected(1, 0);
    drain(&mut s);
    let (a1, b1, c1) = (entry(1, 1), entry(2, 1), entry(3, 1));
    s.pushed(&1, Message::Push { entry: a1.clone() });
    drain(&mut s);
    s.applied(
        Source::Push(1),
        vec![(a1.clone(), Verdict::Deferred)],
        &vv(&[]),
        1,
    );
    s.pushed(&1, Message::Push { entry: b1.clone() });
    drain(&mut s);
    s.applied(
        Source::Push(1),
        vec![(b1, Verdict::Applied)],
        &vv(&[(2, 1)]),
        2,
    );
    // The retry of a1 is with the store; meanwhile c1 parks and then progress happens.
    let retry = drain(&mut s);
    assert!(matches!(
        &retry[..],
        [Output::Apply {
            source: Source::Parked,
            ..
        }]
    ));
    s.applied(
        Source::Push(1),
        vec![(c1.clone(), Verdict::Deferred)],
        &vv(&[(2, 1)]),
        3,
    );
    s.applied(
        Source::Push(1),
        vec![(entry(2, 2), Verdict::Applied)],
        &vv(&[(2, 2)]),
        4,
    );
    assert!(drain(&mut s).is_empty(), "one retry at a time");
    // The first retry reports (a1 still waits): c1 and a1 are tried again at once.
    s.applied(
        Source::Parked,
        vec![(a1.clone(), Verdict::Deferred)],
        &vv(&[(2, 2)]),
        5,
    );
    match &drain(&mut s)[..] {
        [
            Output::Apply {
                source: Source::Parked,
                entries,
            },
        ] => assert_eq!(entries.len(), 2),
        other => panic!("expected a second retry, got {other:?}"),
    }
}
