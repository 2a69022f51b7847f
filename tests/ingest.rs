//! Entries from other devices: applied when good, refused and kept aside with a reason when
//! not, never half-applied; duplicates are no-ops; concurrent stock moves add up.

use automerge::AutoCommit;
use tillmesh::testkit::{self, InProcessNode, cash_sale, member_device, product, sync_entries};
use tillmesh_node::Repo;
use tillmesh_node::repo::{Command, IngestOutcome, MemberCommand};
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{Product, Sale};
use tillmesh_protocol::{
    DeviceId, DeviceKey, DocChanges, DocId, DocType, Entry, EntryHash, Payload, Role, SignedEntry,
};

/// A second device of the same mesh, admitted by the owner as a manager.
async fn second_device(
    tmp: &tempfile::TempDir,
    owner: &Repo,
    name: &str,
    secret: [u8; 32],
) -> InProcessNode {
    member_device(&tmp.path().join(name), owner, name, secret, Role::Manager)
        .await
        .unwrap()
}

async fn admit(owner: &Repo, secret: [u8; 32], role: Role) -> DeviceKey {
    let key = DeviceKey::from_secret(secret);
    owner
        .execute(Command::Member(MemberCommand::Add {
            device: key.device_id(),
            role,
            name: format!("device {}", key.device_id().short()),
        }))
        .await
        .unwrap();
    key
}

fn entries_of(repo: &Repo, author: &DeviceId) -> Vec<SignedEntry> {
    testkit::entries_of(repo, author).unwrap()
}

/// Sends `from`'s entries that `to` lacks, in order; each must apply.
async fn sync_one_way(from: &Repo, to: &Repo) {
    for (author, seq, outcome) in sync_entries(from, to).await.unwrap() {
        assert_eq!(outcome, IngestOutcome::Applied, "{author:?}/{seq}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tills_converge_and_their_stock_moves_add_up() {
    let tmp = tempfile::tempdir().unwrap();
    let a = InProcessNode::init(&tmp.path().join("a"), "Till A")
        .await
        .unwrap();
    let b = second_device(&tmp, &a.repo, "b", [2; 32]).await;
    let tea = a
        .api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let tea_path = format!("/v1/products/{}", tea["id"].as_str().unwrap());
    sync_one_way(&a.repo, &b.repo).await;
    assert_eq!(b.api.ok_get(&tea_path).await.unwrap()["stock"], 40);

    // Both tills sell while apart.
    let mut b_events = b.repo.subscribe();
    for _ in 0..3 {
        a.api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
            .await
            .unwrap();
    }
    let on_b = b
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 5, 1750))
        .await
        .unwrap();
    assert_eq!(on_b["receipt_number"], "B-000001");
    while b_events.try_recv().is_ok() {}

    sync_one_way(&a.repo, &b.repo).await;
    sync_one_way(&b.repo, &a.repo).await;
    for node in [&a, &b] {
        assert_eq!(
            node.api.ok_get(&tea_path).await.unwrap()["stock"],
            40 - 6 - 5,
            "sales on both tills add up"
        );
        assert_eq!(node.api.all("/v1/sales").await.unwrap().len(), 4);
    }
    assert_eq!(
        a.repo.version_vector().unwrap(),
        b.repo.version_vector().unwrap()
    );
    let mut origins = Vec::new();
    while let Ok(e) = b_events.try_recv() {
        origins.push(e.origin);
    }
    assert!(
        origins.contains(&tillmesh_node::repo::Origin::Remote),
        "remote changes reach the event stream: {origins:?}"
    );
    assert!(
        origins.contains(&tillmesh_node::repo::Origin::Stock),
        "and so do the stock levels they move"
    );

    // Ingesting again is a no-op; a later entry without its predecessors is a gap, not stored.
    let a_log = entries_of(&a.repo, &a.repo.identity().device_id);
    assert_eq!(
        b.repo.ingest(a_log[1].clone()).await.unwrap(),
        IngestOutcome::Duplicate
    );
    let c = second_device(&tmp, &a.repo, "c", [3; 32]).await;
    assert_eq!(
        c.repo.ingest(a_log[2].clone()).await.unwrap(),
        IngestOutcome::Gap { have: 0 }
    );
    assert_eq!(c.repo.version_vector().unwrap().total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_entries_are_refused_kept_aside_and_never_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let a = InProcessNode::init(&tmp.path().join("a"), "Till A")
        .await
        .unwrap();
    // Rogues: members that sign correctly but break the rules. Each proven fork quarantines
    // its author, so each kind of breakage gets its own.
    let rogue = admit(&a.repo, [7; 32], Role::Manager).await;
    let forker = admit(&a.repo, [6; 32], Role::Manager).await;
    let chain_breaker = admit(&a.repo, [5; 32], Role::Manager).await;
    a.api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let sale = a
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    let b = second_device(&tmp, &a.repo, "b", [2; 32]).await;
    let a_id = a.repo.identity().device_id;
    let mesh = a.repo.identity().mesh_id;
    let log = entries_of(&a.repo, &a_id);
    // The settings and the rogues' admissions; the catalogue and the sale come later.
    for e in &log[..4] {
        b.repo.ingest(e.clone()).await.unwrap();
    }
    let entries_before = b.repo.version_vector().unwrap();
    let prod = &log[4];

    let mut refused = Vec::new();
    // 1. Forged: claims to be A, signed by another key.
    let mut forged = prod.entry.clone();
    forged.author = a_id;
    let forged =
        SignedEntry::decode(&resign_as(&forged, &DeviceKey::from_secret([9; 32]), &mesh)).unwrap();
    refused.push(("forged signature", b.repo.ingest(forged).await.unwrap()));
    // 2. Tampered after signing.
    let mut bytes = prod.encoded().to_vec();
    let at = bytes.len() - 80;
    bytes[at] ^= 0x40;
    // The flipped byte is inside the change payload, so the entry still decodes.
    let tampered = SignedEntry::decode(&bytes).expect("a payload byte flipped still decodes");
    refused.push(("tampered bytes", b.repo.ingest(tampered).await.unwrap()));
    // 3. A member (signs correctly) whose entry breaks its own hash chain. Its entries carry
    // a product of its own (its own actor's change; `ts` tells two apart).
    let tea: Product =
        docmap::from_view(&a.repo.view(&prod.docs()[0].doc_id).unwrap().unwrap()).unwrap();
    let entry_of = |key: &DeviceKey, seq: u64, prev: EntryHash, ts: u64| {
        let mut own = tea.clone();
        own.sku = format!("TEA-{}-{ts}", key.device_id().short());
        let (_, change, _) = docmap::create(&actor_for(&key.device_id()), &own, 0).unwrap();
        Entry {
            author: key.device_id(),
            seq,
            prev,
            timestamp_ms: ts,
            payload: Payload::Changes(vec![DocChanges {
                doc_id: DocId::new_v7(ts, key.device_id().as_bytes()[..10].try_into().unwrap()),
                doc_type: DocType::Product,
                changes: vec![change],
            }]),
        }
        .sign(&mesh, key)
    };
    let first = entry_of(&rogue, 1, EntryHash::ZERO, 1);
    let chain_first = entry_of(&chain_breaker, 1, EntryHash::ZERO, 1);
    let broken = entry_of(&chain_breaker, 2, EntryHash([1; 32]), 2);
    for e in [&first, &chain_first] {
        assert_eq!(
            b.repo.ingest(e.clone()).await.unwrap(),
            IngestOutcome::Applied
        );
    }
    refused.push(("broken chain", b.repo.ingest(broken).await.unwrap()));
    // 4. A fork: a second, different entry 1 from the same key.
    let fork_first = entry_of(&forker, 1, EntryHash::ZERO, 1);
    assert_eq!(
        b.repo.ingest(fork_first).await.unwrap(),
        IngestOutcome::Applied
    );
    let fork = entry_of(&forker, 1, EntryHash::ZERO, 99);
    refused.push(("fork", b.repo.ingest(fork).await.unwrap()));
    // 5. Bytes that are not an Automerge change.
    let junk = Entry {
        author: rogue.device_id(),
        seq: 2,
        prev: first.hash(),
        timestamp_ms: 3,
        payload: Payload::Changes(vec![DocChanges {
            doc_id: DocId([5; 16]),
            doc_type: DocType::Sale,
            changes: vec![b"not automerge".to_vec()],
        }]),
    }
    .sign(&mesh, &rogue);
    refused.push(("junk change", b.repo.ingest(junk).await.unwrap()));
    // 5b. Another device's change, carried as its own: the till's product.
    let borrowed = Entry {
        author: rogue.device_id(),
        seq: 2,
        prev: first.hash(),
        timestamp_ms: 3,
        payload: prod.entry.payload.clone(),
    }
    .sign(&mesh, &rogue);
    refused.push((
        "another device's change",
        b.repo.ingest(borrowed).await.unwrap(),
    ));
    // 6. A well-formed, well-signed change that edits a completed sale's total: before the sale
    // itself has arrived it is deferred (not stored, not held against anyone); once the sale is
    // held, it is refused.
    let sale_id: DocId = sale["id"].as_str().unwrap().parse().unwrap();
    let mut doc = AutoCommit::new().with_actor(actor_for(&rogue.device_id()));
    for e in &log {
        for d in e.docs().iter().filter(|d| d.doc_id == sale_id) {
            for c in &d.changes {
                doc.load_incremental(c).unwrap();
            }
        }
    }
    let honest: Sale = docmap::read(&doc).unwrap();
    // A consistent rewrite (one unit instead of two, totals to match, change given back), so
    // only the rule that a completed sale's money never changes can catch it.
    let mut cooked = honest.clone();
    cooked.lines[0].qty = 1;
    cooked.lines[0].net_minor = 350;
    cooked.subtotal.amount_minor = 350;
    cooked.total.amount_minor = 350;
    cooked.change.amount_minor = 350;
    let change = docmap::update(&mut doc, &honest, &cooked, 0)
        .unwrap()
        .unwrap();
    let edit = Entry {
        author: rogue.device_id(),
        seq: 2,
        prev: first.hash(),
        timestamp_ms: 4,
        payload: Payload::Changes(vec![DocChanges {
            doc_id: sale_id,
            doc_type: DocType::Sale,
            changes: vec![change],
        }]),
    }
    .sign(&mesh, &rogue);
    assert!(
        matches!(
            b.repo.ingest(edit.clone()).await.unwrap(),
            IngestOutcome::Deferred { .. }
        ),
        "an edit of a sale not held yet waits"
    );
    assert_eq!(
        b.repo.version_vector().unwrap().get(&rogue.device_id()),
        1,
        "a deferred entry is not stored"
    );
    for e in &log[4..] {
        assert_eq!(
            b.repo.ingest(e.clone()).await.unwrap(),
            IngestOutcome::Applied
        );
    }
    refused.push(("edited sale total", b.repo.ingest(edit).await.unwrap()));

    // A signature that does not hold (forged, or bytes changed after signing) is singled out
    // as forged: its sender is no honest peer. The rest are refused by the rules.
    for (what, outcome) in &refused[..2] {
        assert!(
            matches!(outcome, IngestOutcome::Forged { .. }),
            "{what}: {outcome:?}"
        );
    }
    for (what, outcome) in &refused[2..] {
        assert!(
            matches!(outcome, IngestOutcome::Rejected { .. }),
            "{what}: {outcome:?}"
        );
    }
    let reasons: Vec<String> = refused
        .iter()
        .map(|(_, o)| match o {
            IngestOutcome::Rejected { reason } | IngestOutcome::Forged { reason } => reason.clone(),
            _ => String::new(),
        })
        .collect();
    assert!(reasons[0].contains("signature"), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("hash chain")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("fork")), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not an Automerge change")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not by this entry's author")),
        "{reasons:?}"
    );
    assert!(
        reasons.last().unwrap().contains("cannot change"),
        "{reasons:?}"
    );

    // Nothing refused was applied; the sale still shows what the till rang up.
    let held = b.api.ok_get(&format!("/v1/sales/{sale_id}")).await.unwrap();
    assert_eq!(held["total"]["amount_minor"], 700);
    let vv = b.repo.version_vector().unwrap();
    assert_eq!(vv.get(&a_id), log.len() as u64);
    assert_eq!(
        vv.get(&rogue.device_id()),
        1,
        "only the rogue's good first entry"
    );
    assert!(vv.get(&a_id) > entries_before.get(&a_id));
    let status = b.api.ok_get("/v1/status").await.unwrap();
    assert_eq!(
        status["rejected"]["count"].as_u64().unwrap(),
        refused.len() as u64
    );
    assert!(
        status["rejected"]["recent"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot change")
    );
    // And the node keeps serving.
    b.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
}

/// Encodes `entry` and signs it with `key`, whoever the entry claims as author.
fn resign_as(entry: &Entry, key: &DeviceKey, mesh: &tillmesh_protocol::MeshId) -> Vec<u8> {
    // Sign honestly as `key`, then splice the claimed author into the bytes: the signature no
    // longer matches the author it names.
    let mut honest = entry.clone();
    honest.author = key.device_id();
    let mut bytes = honest.sign(mesh, key).encoded().to_vec();
    bytes[4..36].copy_from_slice(entry.author.as_bytes());
    bytes
}

/// A till restored from an empty backup gets its own entries back from a peer: its next entry
/// must follow them (no fork of its own log) and its receipt numbers must carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_till_carries_on_its_own_log() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = [42; 32];
    let key = DeviceKey::from_secret(secret);
    let mesh = tillmesh_protocol::MeshId::from_root(&key.device_id());
    let make = |name: &str| {
        let dir = tmp.path().join(name);
        drop(
            tillmesh_node::store::create(
                &dir,
                "Till",
                DeviceKey::from_secret(secret),
                mesh,
                key.device_id(),
            )
            .unwrap(),
        );
        dir
    };
    let original = InProcessNode::open(&make("original")).await.unwrap();
    original
        .repo
        .execute(tillmesh_node::repo::Command::InitSettings(
            tillmesh_protocol::schema::Settings::new("Shop", tillmesh_protocol::Currency::USD),
        ))
        .await
        .unwrap();
    original
        .api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let mut receipts = std::collections::HashSet::new();
    for _ in 0..3 {
        let s = original
            .api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await
            .unwrap();
        receipts.insert(s["receipt_number"].as_str().unwrap().to_owned());
    }
    let restored = InProcessNode::open(&make("restored")).await.unwrap();
    sync_one_way(&original.repo, &restored.repo).await;
    let s = restored
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert!(
        !receipts.contains(s["receipt_number"].as_str().unwrap()),
        "receipt {} issued twice",
        s["receipt_number"]
    );
    let me = key.device_id();
    let log = entries_of(&restored.repo, &me);
    assert_eq!(
        log.len(),
        6,
        "settings, product, three sales, and the new sale"
    );
    assert_eq!(
        log[5].entry.prev,
        log[4].hash(),
        "the new entry follows the restored ones"
    );
    // The original accepts it: one unbroken log, no fork.
    assert_eq!(
        original.repo.ingest(log[5].clone()).await.unwrap(),
        IngestOutcome::Applied
    );
}

/// A panic in the writer (Automerge has panicked on merges before) stops nothing for good: a
/// local command that panics fails with a clear error and the next one is written; an entry
/// from a peer that panics fails its batch, and after two panics it is refused with the reason,
/// while the node keeps selling and applying everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_writer_fails_its_batch_and_the_node_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let a = InProcessNode::init(&tmp.path().join("a"), "Till A")
        .await
        .unwrap();
    a.api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let b = second_device(&tmp, &a.repo, "b", [5; 32]).await;
    sync_one_way(&a.repo, &b.repo).await;

    // A local command.
    a.repo.inject_command_panics(1);
    let (st, e) = a
        .api
        .post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_bug(st.is_server_error(), &e["error"]["message"].to_string());
    a.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_eq!(
        a.api.all("/v1/sales").await.unwrap().len(),
        1,
        "the failed one left nothing"
    );

    // An entry from a peer: B sells twice; the first of its sales panics on A every time.
    for _ in 0..2 {
        b.api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await
            .unwrap();
    }
    let b_id = b.repo.identity().device_id;
    let theirs = entries_of(&b.repo, &b_id);
    let bad = &theirs[theirs.len() - 2];
    a.repo.inject_ingest_panic(b_id, bad.entry.seq);
    for attempt in 1..=2 {
        let e = a.repo.ingest(bad.clone()).await.unwrap_err();
        assert_bug(true, &format!("{attempt}: {e}"));
    }
    match a.repo.ingest(bad.clone()).await.unwrap() {
        IngestOutcome::Rejected { reason } => {
            assert!(
                reason.contains("crashed this node's writer 2 times"),
                "{reason}"
            )
        }
        other => panic!("the third time it is refused, not {other:?}"),
    }
    // The node serves on: it sells, and it takes what does not panic.
    a.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_eq!(a.api.all("/v1/sales").await.unwrap().len(), 2);
    let rejected = a.api.ok_get("/v1/rejected").await.unwrap();
    assert!(
        rejected.to_string().contains("crashed this node's writer"),
        "{rejected}"
    );
}

/// A panic outside any one job (while a batch's views are rebuilt) fails the whole batch with
/// a clear error, not "shutting down"; each entry of that batch is then staged alone, so the
/// innocent one is applied and only the one that panics is counted, and refused at the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_a_batch_is_finished_is_laid_at_the_right_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let a = InProcessNode::init(&tmp.path().join("a"), "Till A")
        .await
        .unwrap();
    a.api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    let b = second_device(&tmp, &a.repo, "b", [6; 32]).await;
    sync_one_way(&a.repo, &b.repo).await;
    for _ in 0..2 {
        b.api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await
            .unwrap();
    }
    let b_id = b.repo.identity().device_id;
    let theirs = entries_of(&b.repo, &b_id);
    let (good, bad) = (&theirs[theirs.len() - 2], &theirs[theirs.len() - 1]);
    // Everything before the two sales, so both apply in order.
    let before: Vec<_> = theirs[..theirs.len() - 2].to_vec();
    for (_, o) in a.repo.ingest_many(before).await.unwrap() {
        assert!(!matches!(o, IngestOutcome::Rejected { .. }), "{o:?}");
    }
    a.repo.inject_finish_panic(b_id, bad.entry.seq);

    // Both in one batch: both fail, each with the reason.
    let [first, second] = together(&a.repo, [good.clone(), bad.clone()]).await;
    for e in [first.unwrap_err(), second.unwrap_err()] {
        assert_bug(true, &e.to_string());
    }
    // Sent together again, each goes alone: the innocent one is applied, the guilty one
    // fails by itself and is counted.
    let [first, second] = together(&a.repo, [good.clone(), bad.clone()]).await;
    assert_eq!(first.unwrap(), IngestOutcome::Applied);
    let e = second.unwrap_err();
    assert_bug(true, &e.to_string());
    let e = a.repo.ingest(bad.clone()).await.unwrap_err();
    assert_bug(true, &e.to_string());
    match a.repo.ingest(bad.clone()).await.unwrap() {
        IngestOutcome::Rejected { reason } => {
            assert!(reason.contains("crashed this node's writer"), "{reason}")
        }
        other => panic!("the third time it is refused, not {other:?}"),
    }
    a.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_eq!(
        a.api.all("/v1/sales").await.unwrap().len(),
        2,
        "B's innocent sale and A's own"
    );
}

/// A panic after a batch reached the write-ahead log, before redb took it: its caller was
/// told it failed, so it must never come back, neither when the writer reloads nor after a
/// power cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_panicked_after_its_log_append_never_comes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let a = InProcessNode::init(&dir, "Till A").await.unwrap();
    let tea = a
        .api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 40))
        .await
        .unwrap();
    a.repo.inject_panics_after_append(1);
    let (st, e) = a
        .api
        .post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_bug(st.is_server_error(), &e["error"]["message"].to_string());
    assert!(
        a.api.all("/v1/sales").await.unwrap().is_empty(),
        "the writer reloaded without the failed sale"
    );
    let sold = a
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    let repo = a.repo.clone();
    a.shutdown().await;
    repo.power_cut();
    let a = InProcessNode::open(&dir).await.unwrap();
    let sales = a.api.all("/v1/sales").await.unwrap();
    assert_eq!(sales.len(), 1, "only the acknowledged sale: {sales:?}");
    assert_eq!(sales[0]["id"], sold["id"]);
    let tea = a
        .api
        .ok_get(&format!("/v1/products/{}", tea["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(tea["stock"], 38, "{tea}");
}

/// Ingests entries so that the writer stages them in one batch, in this order.
// The guard holds the writer's thread, not this task's: nothing here waits on it.
#[allow(clippy::await_holding_lock)]
async fn together<const N: usize>(
    repo: &Repo,
    entries: [SignedEntry; N],
) -> [Result<IngestOutcome, tillmesh_node::repo::WriteError>; N] {
    let hold = repo.hold_writer();
    let mut tasks = Vec::new();
    for (n, e) in entries.into_iter().enumerate() {
        let r = repo.clone();
        tasks.push(tokio::spawn(async move { r.ingest(e).await }));
        // Each is sent before the next: the first is taken by the writer (which then waits),
        // the rest queue behind it.
        while repo.held_jobs() != Some(n) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    drop(hold);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.try_into().map_err(|_| ()).unwrap()
}

/// A write failed because a bug panicked in the writer, and it says so.
fn assert_bug(failed: bool, message: &str) {
    assert!(failed, "the write must fail: {message}");
    assert!(
        message.contains("a bug stopped this write"),
        "a clear error, not '{message}'"
    );
}
