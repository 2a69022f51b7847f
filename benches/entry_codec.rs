//! Per-entry cost of the log entry codec: encode + sign, decode, verify, on a sale-sized entry
//! built from a real Automerge change (a new sale document, as `POST /v1/sales` writes it).
//!
//! Also the rest of what ingest checks before applying an entry: the hash chain (the entry's
//! hash, taken at decode, against the author's tip) and the author's membership and role, on a
//! mesh of 50 devices; and recomputing the membership when an operation arrives.
//!
//! Run: `cargo bench --bench entry_codec`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{LineInput, Product, RingUp, Sale, Settings, Tender};
use tillmesh_protocol::{
    Currency, DeviceId, DeviceKey, DocChanges, DocId, DocType, Entry, EntryHash, MemberOp,
    Membership, MeshId, Money, OpRecord, Payload, Role, SignedEntry,
};

fn sale_entry(key: &DeviceKey) -> Entry {
    let settings = Settings::new("Shop", Currency::USD);
    let product = Product {
        sku: "TEA-1".into(),
        name: "Green tea".into(),
        price: Money::new(350, Currency::USD),
        tax_code: "NON".into(),
        active: true,
        opening_stock: 40,
        stock_policy: Default::default(),
        created_by: None,
        low_stock_at: None,
        ledger: None,
    };
    let actor = actor_for(&key.device_id());
    let sale = Sale::ring_up(
        RingUp {
            receipt_number: "TILL1-000001".into(),
            till: key.device_id(),
            created_at_ms: 1_700_000_000_000,
            customer_id: None,
            lines: vec![LineInput {
                product_id: DocId([1; 16]),
                product,
                qty: 2,
                unit_price_minor: None,
            }],
            payments: vec![Tender {
                method: "cash".into(),
                amount_minor: 700,
            }],
            pay_rest: None,
        },
        &settings,
    )
    .unwrap();
    let (_, sale_change, _) = docmap::create(&actor, &sale, 0).unwrap();
    Entry {
        author: key.device_id(),
        seq: 42,
        prev: EntryHash([7; 32]),
        timestamp_ms: 1_700_000_000_000,
        payload: Payload::Changes(vec![DocChanges {
            doc_id: DocId([2; 16]),
            doc_type: DocType::Sale,
            changes: vec![sale_change],
        }]),
    }
}

fn codec(c: &mut Criterion) {
    let key = DeviceKey::from_secret([3; 32]);
    let mesh = MeshId([9; 32]);
    let entry = sale_entry(&key);
    let signed = entry.clone().sign(&mesh, &key);
    println!("sale entry: {} bytes", signed.encoded().len());
    let bytes = signed.encoded().to_vec();

    let mut g = c.benchmark_group("entry");
    g.bench_function("encode_sign", |b| {
        b.iter(|| black_box(entry.clone().sign(&mesh, &key)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(SignedEntry::decode(black_box(&bytes)).unwrap()))
    });
    g.bench_function("verify", |b| {
        b.iter(|| signed.verify(black_box(&mesh)).unwrap())
    });
    g.bench_function("encode_sign_decode_verify", |b| {
        b.iter(|| {
            let s = entry.clone().sign(&mesh, &key);
            let d = SignedEntry::decode(s.encoded()).unwrap();
            d.verify(&mesh).unwrap();
            black_box(d)
        })
    });
    g.finish();
}

/// A mesh of `n` devices: admins added by the owner, tills added by the admins, some revoked.
fn mesh_of(n: u8) -> (DeviceId, Vec<OpRecord>, Vec<DeviceId>) {
    let dev = |i: u8| DeviceKey::from_secret([i; 32]).device_id();
    let owner = dev(200);
    let mut ops = Vec::new();
    let mut seqs = std::collections::HashMap::new();
    let mut next = |a: DeviceId| {
        let s = seqs.entry(a).or_insert(0u64);
        *s += 1;
        *s
    };
    let admins: Vec<DeviceId> = (0..5).map(dev).collect();
    for a in &admins {
        let seq = next(owner);
        ops.push(OpRecord {
            author: owner,
            seq,
            op: MemberOp::Add {
                device: *a,
                role: Role::Admin,
                name: String::new(),
            },
        });
    }
    let tills: Vec<DeviceId> = (5..n).map(dev).collect();
    for (i, t) in tills.iter().enumerate() {
        let by = admins[i % admins.len()];
        let seq = next(by);
        ops.push(OpRecord {
            author: by,
            seq,
            op: MemberOp::Add {
                device: *t,
                role: Role::Till,
                name: String::new(),
            },
        });
        if i % 10 == 0 {
            let seq = next(by);
            ops.push(OpRecord {
                author: by,
                seq,
                op: MemberOp::Revoke {
                    device: *t,
                    last_seq: 1000,
                },
            });
        }
    }
    (owner, ops, tills)
}

fn checks(c: &mut Criterion) {
    let (owner, ops, tills) = mesh_of(50);
    let membership = Membership::compute(owner, &ops);
    let key = DeviceKey::from_secret([3; 32]);
    let signed = sale_entry(&key).sign(&MeshId([9; 32]), &key);
    let tip = EntryHash([4; 32]);
    let till = tills[7];
    let mut g = c.benchmark_group("ingest_checks");
    g.bench_function("chain", |b| {
        b.iter(|| black_box(black_box(&signed).entry.prev == black_box(tip)))
    });
    g.bench_function("acl_role_and_doc_type", |b| {
        b.iter(|| {
            black_box(&membership)
                .check_write(black_box(till), 500, DocType::Sale, false)
                .unwrap()
        })
    });
    g.bench_function("membership_compute_50_devices", |b| {
        b.iter(|| black_box(Membership::compute(owner, black_box(&ops))))
    });
    g.finish();
}

criterion_group!(benches, codec, checks);
criterion_main!(benches);
