//! Trust: only admitted devices write, each within its role; revoked devices are cut off at
//! their cutoff; forks are caught; membership converges; pairing refuses wrong, reused,
//! expired and burnt codes.

use std::path::Path;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use serde_json::{Value, json};
use tillmesh::testkit::{
    Api, InProcessNode, LOOPBACK_NET, NodeProcess, cash_sale, entries_of, member_device, product,
    sync_entries, tillmesh,
};
use tillmesh_node::Repo;
use tillmesh_node::repo::{Command, IngestOutcome, MemberCommand};
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{Ledger, Sale};
use tillmesh_protocol::{
    DeviceId, DeviceKey, DocChanges, DocId, DocType, Entry, MeshId, Payload, Role, SignedEntry,
};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");

/// A new mesh's owner, in-process under `root/owner`, with 100 of one product.
async fn owner_with_tea(root: &Path) -> InProcessNode {
    let owner = InProcessNode::init(&root.join("owner"), "Office")
        .await
        .unwrap();
    owner
        .api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 100))
        .await
        .unwrap();
    owner
}

/// Everything `from` holds that `to` lacks; every entry must apply.
async fn sync(from: &Repo, to: &Repo) {
    for (author, seq, outcome) in sync_entries(from, to).await.unwrap() {
        assert_eq!(outcome, IngestOutcome::Applied, "{author}/{seq}");
    }
}

/// Held but not applied: the membership says the entry does not stand.
fn undone(outcome: &IngestOutcome, needle: &str) {
    match outcome {
        IngestOutcome::Undone { reason } => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected an entry held but not applied ({needle}), got {other:?}"),
    }
}

fn rejected(outcome: &IngestOutcome, needle: &str) {
    match outcome {
        IngestOutcome::Rejected { reason } => {
            assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
        }
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

/// An entry `key` signs as its `seq`th, after `prev`, carrying `docs`.
fn signed(
    key: &DeviceKey,
    mesh: &MeshId,
    seq: u64,
    prev: &SignedEntry,
    docs: Vec<DocChanges>,
) -> SignedEntry {
    Entry {
        author: key.device_id(),
        seq,
        prev: if seq == 1 {
            tillmesh_protocol::EntryHash::ZERO
        } else {
            prev.hash()
        },
        timestamp_ms: 1,
        payload: Payload::Changes(docs),
    }
    .sign(mesh, key)
}

/// A change by `author` that writes a `ledger` into the sale `sale_id`, built on every change
/// to it that `repo` holds.
fn ledger_change(repo: &Repo, sale_id: DocId, author: &DeviceId) -> DocChanges {
    let mut doc = AutoCommit::new().with_actor(actor_for(author));
    let vv = repo.version_vector().unwrap();
    for (a, _) in vv.iter() {
        for e in entries_of(repo, a).unwrap() {
            for d in e.docs().iter().filter(|d| d.doc_id == sale_id) {
                for c in &d.changes {
                    doc.load_incremental(c).unwrap();
                }
            }
        }
    }
    let before: Sale = docmap::read(&doc).unwrap();
    let mut after = before.clone();
    after.ledger = Some(Ledger {
        qbo_id: Some("77".into()),
        ..Ledger::default()
    });
    let change = docmap::update(&mut doc, &before, &after, 2)
        .unwrap()
        .expect("a change");
    DocChanges {
        doc_id: sale_id,
        doc_type: DocType::Sale,
        changes: vec![change],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_is_checked_against_its_authors_role_and_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = owner_with_tea(tmp.path()).await;
    let mesh = owner.repo.identity().mesh_id;
    let (t_key, v_key, b_key) = (
        DeviceKey::from_secret([11; 32]),
        DeviceKey::from_secret([12; 32]),
        DeviceKey::from_secret([13; 32]),
    );
    let till = member_device(
        &tmp.path().join("till"),
        &owner.repo,
        "Till",
        [11; 32],
        Role::Till,
    )
    .await
    .unwrap();
    let viewer = member_device(
        &tmp.path().join("viewer"),
        &owner.repo,
        "Phone",
        [12; 32],
        Role::Viewer,
    )
    .await
    .unwrap();
    let bridge = member_device(
        &tmp.path().join("bridge"),
        &owner.repo,
        "Bridge",
        [13; 32],
        Role::Bridge,
    )
    .await
    .unwrap();
    for n in [&till, &viewer, &bridge] {
        sync(&owner.repo, &n.repo).await;
    }
    let sale = till
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    let sale_id: DocId = sale["id"].as_str().unwrap().parse().unwrap();
    sync(&till.repo, &owner.repo).await;
    sync(&owner.repo, &bridge.repo).await;
    let t_log = entries_of(&till.repo, &t_key.device_id()).unwrap();

    // A viewer's own node refuses its writes, and says why.
    let (status, body) = viewer
        .api
        .post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("viewer"),
        "{body}"
    );
    // And an entry a viewer signs anyway is held by everyone else (so every node holds the
    // same log) but applied by none.
    let mut own: Sale = docmap::from_view(&owner.repo.view(&sale_id).unwrap().unwrap()).unwrap();
    own.till = v_key.device_id();
    let (_, change, _) = docmap::create(&actor_for(&v_key.device_id()), &own, 0).unwrap();
    let own = DocChanges {
        doc_id: DocId::new_v7(1, [12; 10]),
        doc_type: DocType::Sale,
        changes: vec![change],
    };
    let by_viewer = signed(&v_key, &mesh, 1, &t_log[0], vec![own]);
    let outcome = owner.repo.ingest(by_viewer).await.unwrap();
    undone(&outcome, "viewer may not write sale");

    // A till may not write the ledger part of a document; the bridge may.
    let by_till = signed(
        &t_key,
        &mesh,
        2,
        &t_log[0],
        vec![ledger_change(&owner.repo, sale_id, &t_key.device_id())],
    );
    rejected(
        &owner.repo.ingest(by_till).await.unwrap(),
        "only the bridge writes the ledger",
    );
    let by_bridge = signed(
        &b_key,
        &mesh,
        1,
        &t_log[0],
        vec![ledger_change(&bridge.repo, sale_id, &b_key.device_id())],
    );
    assert_eq!(
        owner.repo.ingest(by_bridge).await.unwrap(),
        IngestOutcome::Applied
    );
    let held = owner
        .api
        .ok_get(&format!("/v1/sales/{sale_id}"))
        .await
        .unwrap();
    assert_eq!(held["ledger"]["qbo_id"], "77", "{held}");

    // Revoked after its first entry: the till's next entry is not applied, whatever it says.
    let r = owner
        .api
        .ok_post(
            &format!("/v1/members/{}/revoke", t_key.device_id()),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r["last_accepted_seq"], 1, "{r}");
    till.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    let outcomes = sync_entries(&till.repo, &owner.repo).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    undone(&outcomes[0].2, "was revoked");
    assert_eq!(owner.api.all("/v1/sales").await.unwrap().len(), 1);
    // Once the revocation reaches it, the till refuses to write.
    sync_entries(&owner.repo, &till.repo).await.unwrap();
    let (status, body) = till
        .api
        .post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 403, "{body}");

    // A replay is a no-op here, and worthless in another business's mesh.
    assert_eq!(
        owner.repo.ingest(t_log[0].clone()).await.unwrap(),
        IngestOutcome::Duplicate
    );
    let other = InProcessNode::init(&tmp.path().join("other"), "Elsewhere")
        .await
        .unwrap();
    assert!(matches!(
        other.repo.ingest(t_log[0].clone()).await.unwrap(),
        IngestOutcome::Forged { .. }
    ));

    // Everything refused or not applied is listed with its reason, nothing of it applied,
    // and the node keeps selling.
    let listed = owner.api.ok_get("/v1/rejected").await.unwrap();
    assert_eq!(listed["count"], 1, "{listed}");
    let status = owner.api.ok_get("/v1/status").await.unwrap();
    assert_eq!(status["rejected"]["count"], 1, "{status}");
    assert_eq!(status["undone"]["count"], 2, "{status}");
    let reasons: Vec<&str> = status["undone"]["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("revoked")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("viewer")), "{reasons:?}");
    assert_eq!(
        owner.api.all("/v1/products").await.unwrap()[0]["stock"],
        99,
        "only the accepted sale moved stock"
    );
    owner
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_quarantines_its_author_and_raises_an_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = owner_with_tea(tmp.path()).await;
    let key = DeviceKey::from_secret([21; 32]);
    let till = member_device(
        &tmp.path().join("till"),
        &owner.repo,
        "Till",
        [21; 32],
        Role::Till,
    )
    .await
    .unwrap();
    sync(&owner.repo, &till.repo).await;
    till.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    sync(&till.repo, &owner.repo).await;
    let first = entries_of(&till.repo, &key.device_id()).unwrap().remove(0);
    // The same key signs a second, different entry 1 (a cloned disk selling on its own).
    let mut twin = first.entry.clone();
    twin.timestamp_ms += 1;
    let twin = twin.sign(&owner.repo.identity().mesh_id, &key);
    rejected(&owner.repo.ingest(twin).await.unwrap(), "fork");
    let status = owner.api.ok_get("/v1/status").await.unwrap();
    assert_eq!(status["alerts"][0]["kind"], "fork", "{status}");
    assert_eq!(
        status["alerts"][0]["device_id"],
        json!(key.device_id()),
        "{status}"
    );
    // Nothing more of it is accepted, honest-looking or not.
    till.api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    let outcomes = sync_entries(&till.repo, &owner.repo).await.unwrap();
    rejected(&outcomes[0].2, "quarantined");
    let members = owner.api.ok_get("/v1/members").await.unwrap();
    assert_eq!(members["quarantined"][0]["seq"], 1, "{members}");
}

/// The members as a node sees them, for comparison across nodes.
async fn members(api: &Api) -> Value {
    let m = api.ok_get("/v1/members").await.unwrap();
    json!({ "owner": m["owner"], "members": m["members"] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_membership_changes_converge_on_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let o = InProcessNode::init(&tmp.path().join("o"), "Office")
        .await
        .unwrap();
    let (xk, yk, tk) = (
        DeviceKey::from_secret([31; 32]),
        DeviceKey::from_secret([32; 32]),
        DeviceKey::from_secret([33; 32]),
    );
    let x = member_device(
        &tmp.path().join("x"),
        &o.repo,
        "Admin X",
        [31; 32],
        Role::Admin,
    )
    .await
    .unwrap();
    let y = member_device(
        &tmp.path().join("y"),
        &o.repo,
        "Admin Y",
        [32; 32],
        Role::Admin,
    )
    .await
    .unwrap();
    let t = member_device(&tmp.path().join("t"), &o.repo, "Till", [33; 32], Role::Till)
        .await
        .unwrap();
    for n in [&x, &y, &t] {
        sync(&o.repo, &n.repo).await;
    }
    let nodes = [&o, &x, &y, &t];

    // Y, offline, admits a device and demotes the till; meanwhile X revokes Y.
    let z = DeviceKey::from_secret([34; 32]).device_id();
    y.repo
        .execute(Command::Member(MemberCommand::Add {
            device: z,
            role: Role::Admin,
            name: "Z".into(),
        }))
        .await
        .unwrap();
    y.repo
        .execute(Command::Member(MemberCommand::ChangeRole {
            device: tk.device_id(),
            role: Role::Viewer,
        }))
        .await
        .unwrap();
    x.repo
        .execute(Command::Member(MemberCommand::Revoke {
            device: yk.device_id(),
        }))
        .await
        .unwrap();
    // Every node hears both, in different orders: the till hears Y first.
    for (n, first, second) in [(&t, &y, &x), (&o, &x, &y), (&x, &y, &y), (&y, &x, &x)] {
        sync_entries(&first.repo, &n.repo).await.unwrap();
        sync_entries(&second.repo, &n.repo).await.unwrap();
    }
    let seen = members(&o.api).await;
    for n in nodes {
        assert_eq!(members(&n.api).await, seen);
    }
    let m = o.repo.membership();
    assert!(!m.is_active(&yk.device_id()), "Y is revoked");
    assert!(
        m.get(&z).is_none(),
        "Y's admission after its cutoff is void"
    );
    assert_eq!(
        m.get(&tk.device_id()).unwrap().current_role(),
        Role::Till,
        "and so is its role change"
    );

    // Two admins revoke each other while apart: the senior one (same depth: the lower
    // device id) keeps its place, on every node.
    let w = member_device(
        &tmp.path().join("w"),
        &o.repo,
        "Admin W",
        [35; 32],
        Role::Admin,
    )
    .await
    .unwrap();
    let wk = DeviceKey::from_secret([35; 32]);
    for n in [&x, &t, &w] {
        sync_entries(&o.repo, &n.repo).await.unwrap();
    }
    x.repo
        .execute(Command::Member(MemberCommand::Revoke {
            device: wk.device_id(),
        }))
        .await
        .unwrap();
    w.repo
        .execute(Command::Member(MemberCommand::Revoke {
            device: xk.device_id(),
        }))
        .await
        .unwrap();
    let all = [&o, &x, &t, &w];
    for _ in 0..2 {
        for a in all {
            for b in all {
                if a.repo.identity().device_id != b.repo.identity().device_id {
                    sync_entries(&a.repo, &b.repo).await.unwrap();
                }
            }
        }
    }
    let seen = members(&o.api).await;
    for n in all {
        assert_eq!(members(&n.api).await, seen);
    }
    let m = o.repo.membership();
    let (senior, junior) = if xk.device_id() < wk.device_id() {
        (xk.device_id(), wk.device_id())
    } else {
        (wk.device_id(), xk.device_id())
    };
    assert!(m.is_active(&senior) && !m.is_active(&junior), "{seen}");
}

/// `tillmesh join` in a new folder; returns whether it worked and what it printed.
fn join(dir: &Path, invite: &str) -> (bool, String) {
    let out = tillmesh(
        BIN.as_ref(),
        &[
            "--json",
            "join",
            "--data",
            &dir.to_string_lossy(),
            "--name",
            "Phone",
            invite,
        ],
    )
    .unwrap();
    // What it printed: the JSON answer when it worked, the error when not.
    let text = if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    (out.status.success(), text)
}

fn invite(dir: &Path, role: &str, expires: &str) -> String {
    let out = tillmesh(
        BIN.as_ref(),
        &[
            "invite",
            "--data",
            &dir.to_string_lossy(),
            "--role",
            role,
            "--expires",
            expires,
        ],
    )
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// The same invite with another code.
fn with_code(invite: &str, code: &str) -> String {
    let (_, addrs) = invite.split_once('@').unwrap();
    format!("tm2:{code}@{addrs}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_refuses_wrong_reused_expired_and_burnt_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let desk = tmp.path().join("desk");
    NodeProcess::init(BIN.as_ref(), &desk, "Desktop").unwrap();
    let node = NodeProcess::spawn(BIN.as_ref(), &desk, &LOOPBACK_NET, &[])
        .await
        .unwrap();
    let dir = |n: &str| tmp.path().join(n);

    // A wrong code is refused, and nothing is created.
    let line = invite(&desk, "manager", "10m");
    let (ok, text) = join(&dir("wrong"), &with_code(&line, "AAAA-AAAA"));
    assert!(!ok && text.contains("code is wrong"), "{text}");
    assert!(!dir("wrong").join("tillmesh.redb").exists());

    // The right one pairs (one wrong try does not burn it), once.
    let started = Instant::now();
    let (ok, text) = join(&dir("phone"), &line);
    assert!(ok, "{text}");
    let joined: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(joined["role"], "manager");
    println!(
        "pairing on loopback: {} ms inside join, {} ms for the whole command",
        joined["paired_ms"],
        started.elapsed().as_millis()
    );
    let members = node.api.ok_get("/v1/members").await.unwrap();
    assert!(
        members["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["device_id"] == joined["device_id"] && m["role"] == "manager"),
        "{members}"
    );
    let (ok, text) = join(&dir("again"), &line);
    assert!(!ok && text.contains("no open invite"), "{text}");

    // An invite lasts only as long as it was given.
    let line = invite(&desk, "till", "1s");
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, text) = join(&dir("late"), &line);
    assert!(!ok && text.contains("expired"), "{text}");

    // Five wrong tries burn it: the right code no longer works.
    let line = invite(&desk, "till", "10m");
    for n in 0..5 {
        let (ok, text) = join(&dir(&format!("guess-{n}")), &with_code(&line, "BBBB-BBBB"));
        assert!(!ok && text.contains("code is wrong"), "{text}");
    }
    let (ok, text) = join(&dir("burnt"), &line);
    assert!(!ok && text.contains("burnt"), "{text}");

    // Nothing refused here; `tillmesh rejected` says so.
    let out = tillmesh(
        BIN.as_ref(),
        &["rejected", "--data", &desk.to_string_lossy()],
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 entries refused"),
        "{out:?}"
    );

    // The new device syncs: it is a member now, so the desktop lets it in.
    let phone = NodeProcess::spawn(BIN.as_ref(), &dir("phone"), &LOOPBACK_NET, &[])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = phone.api.ok_get("/v1/status").await.unwrap();
        if s["role"] == "manager" {
            break;
        }
        assert!(Instant::now() < deadline, "the phone never synced: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prices are a manager's or an admin's to change: a till's `PATCH /v1/products/{id}` is
/// refused and changes nothing; a manager's changes only the fields it names, on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_managers_and_admins_change_a_product() {
    let tmp = tempfile::tempdir().unwrap();
    let o = InProcessNode::init(&tmp.path().join("o"), "Owner")
        .await
        .unwrap();
    let p = o
        .api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 350, 10))
        .await
        .unwrap();
    let path = format!("/v1/products/{}", p["id"].as_str().unwrap());
    let till = member_device(&tmp.path().join("t"), &o.repo, "Till", [41; 32], Role::Till)
        .await
        .unwrap();
    let manager = member_device(
        &tmp.path().join("m"),
        &o.repo,
        "Manager",
        [42; 32],
        Role::Manager,
    )
    .await
    .unwrap();
    for n in [&till, &manager] {
        sync(&o.repo, &n.repo).await;
    }
    let price = json!({"price": {"amount_minor": 375, "currency": "USD"}});
    let (st, e) = till.api.patch(&path, &price).await.unwrap();
    assert_eq!(st.as_u16(), 403, "{e}");
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    assert_eq!(
        till.api.ok_get(&path).await.unwrap()["price"]["amount_minor"],
        350
    );
    let (st, changed) = manager
        .api
        .patch(
            &path,
            &json!({"price": {"amount_minor": 375, "currency": "USD"}, "name": "Green tea"}),
        )
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 200, "{changed}");
    assert_eq!(changed["price"]["amount_minor"], 375);
    assert_eq!(changed["sku"], "TEA-1", "untouched fields stay");
    let (st, e) = manager
        .api
        .patch(&path, &json!({"sku": "TEA-2"}))
        .await
        .unwrap();
    assert_eq!(st.as_u16(), 400, "a SKU is not for changing: {e}");
    sync(&manager.repo, &o.repo).await;
    sync(&o.repo, &till.repo).await;
    for n in [&o, &till] {
        let now = n.api.ok_get(&path).await.unwrap();
        assert_eq!(
            (now["price"]["amount_minor"].as_i64(), now["name"].as_str()),
            (Some(375), Some("Green tea"))
        );
    }
}

/// Everything each node holds, to every other, until nothing moves; returns every outcome.
async fn exchange(nodes: &[&Repo]) -> Vec<IngestOutcome> {
    let mut all = Vec::new();
    loop {
        let mut moved = false;
        for from in nodes {
            for to in nodes {
                if std::ptr::eq(*from, *to) {
                    continue;
                }
                for (_, _, o) in sync_entries(from, to).await.unwrap() {
                    moved |= !matches!(o, IngestOutcome::Duplicate);
                    all.push(o);
                }
            }
        }
        if !moved {
            return all;
        }
    }
}

/// Every document a node holds, as its views read, by id.
fn documents(repo: &Repo) -> std::collections::BTreeMap<DocId, Value> {
    let mut out = std::collections::BTreeMap::new();
    for t in DocType::ALL {
        out.extend(repo.list(t, None, 100_000).unwrap());
    }
    out
}

/// A till is revoked while it goes on selling. Node A receives its late sales before the
/// revocation (and refunds one of them, building on it); node B receives the revocation
/// first. Both end with the same log, the same documents and the same stock: A rebuilds the
/// documents without the late entries and without its refund (which built on one of them, and
/// stands or falls whole: the refund document and the sale's list of refunds together), and
/// every node lists all three as undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_till_that_applied_a_revoked_devices_late_entries_converges_with_one_that_refused_them() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = owner_with_tea(tmp.path()).await;
    let device = |name: &'static str, secret: u8, role: Role| {
        let (dir, repo) = (tmp.path().join(name), owner.repo.clone());
        async move {
            member_device(&dir, &repo, name, [secret; 32], role)
                .await
                .unwrap()
        }
    };
    let stolen = device("stolen", 21, Role::Till).await;
    let a = device("a", 22, Role::Manager).await;
    let b = device("b", 23, Role::Till).await;
    for n in [&stolen, &a, &b] {
        sync(&owner.repo, &n.repo).await;
    }
    stolen
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await
        .unwrap();
    for n in [&owner, &a, &b] {
        sync(&stolen.repo, &n.repo).await;
    }
    let r = owner
        .api
        .ok_post(
            &format!("/v1/members/{}/revoke", stolen.repo.identity().device_id),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(r["last_accepted_seq"], 1, "{r}");
    // The stolen till, not knowing, sells on.
    let late = stolen
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    stolen
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 3, 1050))
        .await
        .unwrap();
    let late_id = late["id"].as_str().unwrap();

    // A takes the late sales before the revocation, and refunds one unit of one of them.
    sync(&stolen.repo, &a.repo).await;
    assert_eq!(a.api.all("/v1/products").await.unwrap()[0]["stock"], 94);
    a.api
        .ok_post(
            &format!("/v1/sales/{late_id}/refund"),
            &json!({"lines": [{"line": 0, "qty": 1}]}),
        )
        .await
        .unwrap();
    // B takes the revocation first, then the late sales: held, not applied.
    sync(&owner.repo, &b.repo).await;
    for (_, seq, o) in sync_entries(&stolen.repo, &b.repo).await.unwrap() {
        undone(&o, "was revoked");
        assert!(seq > 1);
    }
    // A meets the revocation: it undoes what it applied.
    sync(&owner.repo, &a.repo).await;
    let (status, _) = a.api.get(&format!("/v1/sales/{late_id}")).await.unwrap();
    assert_eq!(status.as_u16(), 404, "the late sale is undone on A");

    let outcomes = exchange(&[&owner.repo, &a.repo, &b.repo]).await;
    assert!(
        !outcomes.iter().any(|o| matches!(
            o,
            IngestOutcome::Rejected { .. } | IngestOutcome::Forged { .. }
        )),
        "{outcomes:?}"
    );
    let vv = owner.repo.version_vector().unwrap();
    let docs = documents(&owner.repo);
    for n in [&a, &b] {
        assert_eq!(
            n.repo.version_vector().unwrap(),
            vv,
            "the same log everywhere"
        );
        assert_eq!(documents(&n.repo), docs, "the same documents everywhere");
    }
    // The first sale stands; the late ones and the refund built on one of them do not.
    let stock = docs
        .values()
        .find(|d| d["sku"] == "TEA-1")
        .map(|p| p["stock"].clone());
    assert_eq!(stock, Some(json!(99)), "{docs:#?}");
    let of_type = |t: &str| docs.values().filter(|d| d["type"] == t).count();
    assert_eq!((of_type("sale"), of_type("refund")), (1, 0), "{docs:#?}");
    for n in [&owner, &a, &b] {
        let status = n.api.ok_get("/v1/status").await.unwrap();
        assert_eq!(status["undone"]["count"], 3, "{status}");
        assert_eq!(status["rejected"]["count"], 0, "{status}");
    }
}

/// An admin admits a device and is revoked, concurrently, before that admission: the device's
/// sale, and a till's refund built on it, stand nowhere. Node E takes them before it hears of
/// the revocation and undoes them when it does; the owner, which heard first, holds them undone
/// from the start. Neither waits for anything, and both end alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_admission_is_struck_stands_nowhere_and_stalls_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let owner = owner_with_tea(tmp.path()).await;
    let admin = member_device(
        &tmp.path().join("m"),
        &owner.repo,
        "M",
        [31; 32],
        Role::Admin,
    )
    .await
    .unwrap();
    let e = member_device(
        &tmp.path().join("e"),
        &owner.repo,
        "E",
        [32; 32],
        Role::Manager,
    )
    .await
    .unwrap();
    sync(&owner.repo, &admin.repo).await;
    sync(&owner.repo, &e.repo).await;
    // The owner revokes the admin before anything it does next.
    owner
        .api
        .ok_post(
            &format!("/v1/members/{}/revoke", admin.repo.identity().device_id),
            &json!({}),
        )
        .await
        .unwrap();
    // The admin, apart, admits D, which sells.
    let d = member_device(
        &tmp.path().join("d"),
        &admin.repo,
        "D",
        [33; 32],
        Role::Till,
    )
    .await
    .unwrap();
    exchange(&[&admin.repo, &d.repo]).await;
    let sale = d
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700))
        .await
        .unwrap();
    let sale_id = sale["id"].as_str().unwrap();
    // E takes all that first, and refunds part of D's sale.
    exchange(&[&admin.repo, &d.repo, &e.repo]).await;
    e.api
        .ok_post(
            &format!("/v1/sales/{sale_id}/refund"),
            &json!({"lines": [{"line": 0, "qty": 1}]}),
        )
        .await
        .unwrap();
    // The owner holds the revocation, then takes the admission, the sale and the refund:
    // held, none applied; and every node ends holding everything (no one waits for ever).
    let outcomes = exchange(&[&owner.repo, &admin.repo, &d.repo, &e.repo]).await;
    assert!(
        !outcomes.iter().any(|o| matches!(
            o,
            IngestOutcome::Rejected { .. } | IngestOutcome::Forged { .. }
        )),
        "{outcomes:?}"
    );
    let vv = owner.repo.version_vector().unwrap();
    let docs = documents(&owner.repo);
    for n in [&admin, &d, &e] {
        assert_eq!(
            n.repo.version_vector().unwrap(),
            vv,
            "the same log everywhere"
        );
        assert_eq!(documents(&n.repo), docs, "the same documents everywhere");
    }
    let of_type = |t: &str| docs.values().filter(|d| d["type"] == t).count();
    assert_eq!((of_type("sale"), of_type("refund")), (0, 0), "{docs:#?}");
    let stock = docs
        .values()
        .find(|d| d["sku"] == "TEA-1")
        .map(|p| p["stock"].clone());
    assert_eq!(stock, Some(json!(100)), "{docs:#?}");
    for n in [&owner, &e] {
        let status = n.api.ok_get("/v1/status").await.unwrap();
        assert_eq!(status["undone"]["count"], 2, "{status}");
    }
}
