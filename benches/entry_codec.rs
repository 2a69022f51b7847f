//! Per-entry cost of the log entry codec: encode + sign, decode, verify, on a sale-sized entry
//! built from a real Automerge change (a new sale document, as `POST /v1/sales` writes it).
//!
//! Run: `cargo bench --bench entry_codec`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tillmesh_protocol::docmap::{self, actor_for};
use tillmesh_protocol::schema::{LineInput, Product, RingUp, Sale, Settings, Tender};
use tillmesh_protocol::{
    Currency, DeviceKey, DocChanges, DocId, DocType, Entry, EntryHash, MeshId, Money, Payload,
    SignedEntry,
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

criterion_group!(benches, codec);
criterion_main!(benches);
