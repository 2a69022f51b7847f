//! Maps typed document values to Automerge documents and back.
//!
//! Writes go through a JSON tree: maps become Automerge maps, arrays lists, strings scalar
//! strings (last writer wins per field: two tills renaming a customer must not interleave
//! characters), integers integers. A new document is written in one batch splice; an update
//! writes only the fields that differ, so concurrent edits of different fields both survive.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, ObjId, ObjType, Prop, ROOT, ReadDoc, ScalarValue, ScalarValueRef, Value,
    ValueRef, hydrate,
};
use serde_json::{Map, Value as Json};
use std::collections::HashMap;

use crate::ids::{DeviceId, DocId};
use crate::schema::{DocType, Document, SCHEMA_VERSION};
#[cfg(doc)]
use crate::schema::{Refund, Sale, StockAdjustment};

/// Why a document could not be written or read as a typed value.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("document is a {found}, not a {expected}")]
    WrongType { expected: DocType, found: String },
    #[error(
        "document has schema version {found}; this node reads version {SCHEMA_VERSION}: upgrade tillmesh"
    )]
    SchemaVersion { found: String },
    #[error("document does not match the {doc_type} schema: {reason}")]
    Shape { doc_type: DocType, reason: String },
}

/// The Automerge actor of a device: its public key, so every change names its device.
pub fn actor_for(device: &DeviceId) -> ActorId {
    actor_in_series(device, 0)
}

/// The `n`th actor of a device's series: its key, then `n` (big-endian) when `n > 0`.
///
/// A device writes a document under a later actor of its series once changes it made under an
/// earlier one no longer stand (an undo rebuild took them out of the document): Automerge would
/// otherwise number its next change as if they had never been made, and peers still holding
/// them would refuse a second change with the same actor and seq. Every actor of the series
/// still names its device: the key comes first.
pub fn actor_in_series(device: &DeviceId, n: u32) -> ActorId {
    let mut bytes = device.as_bytes().to_vec();
    if n > 0 {
        bytes.extend_from_slice(&n.to_be_bytes());
    }
    ActorId::from(bytes)
}

/// Which actor of `device`'s series `actor` is, or `None` if it is not one of them.
pub fn series_of(device: &DeviceId, actor: &ActorId) -> Option<u32> {
    let bytes = actor.to_bytes();
    let rest = bytes.strip_prefix(&device.as_bytes()[..])?;
    match rest.len() {
        0 => Some(0),
        4 => Some(u32::from_be_bytes(rest.try_into().ok()?)).filter(|n| *n > 0),
        _ => None,
    }
}

pub(crate) fn commit(doc: &mut AutoCommit, time_s: i64) -> Option<Vec<u8>> {
    doc.commit_with(CommitOptions::default().with_time(time_s))?;
    doc.get_last_local_change().map(|c| c.raw_bytes().to_vec())
}

fn to_json<T: Document>(value: &T) -> Result<Map<String, Json>, DocError> {
    match serde_json::to_value(value) {
        Ok(Json::Object(m)) => Ok(m),
        Ok(_) => Err(DocError::Shape {
            doc_type: T::TYPE,
            reason: "not a map".into(),
        }),
        Err(e) => Err(DocError::Shape {
            doc_type: T::TYPE,
            reason: e.to_string(),
        }),
    }
}

/// Creates a new document holding `value`; returns it, the bytes of its first change, and the
/// JSON it reads as (what [`view_of`] gives), computed once for both.
pub fn create<T: Document>(
    actor: &ActorId,
    value: &T,
    time_s: i64,
) -> Result<(AutoCommit, Vec<u8>, Json), DocError> {
    let view = view_of(value)?;
    let Json::Object(fields) = &view else {
        unreachable!("view_of gives a map")
    };
    let root: HashMap<String, hydrate::Value> = fields
        .iter()
        .map(|(k, v)| (k.clone(), hydrate_of(v)))
        .collect();
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    // One batch splice for the whole tree: an order of magnitude faster than a put per field.
    doc.init_root_from_hydrate(&hydrate::Map::from(root))?;
    let change = commit(&mut doc, time_s).expect("a new document always has a change");
    Ok((doc, change, view))
}

fn hydrate_of(v: &Json) -> hydrate::Value {
    match v {
        Json::Array(items) => {
            hydrate::Value::List(items.iter().map(hydrate_of).collect::<Vec<_>>().into())
        }
        Json::Object(fields) => hydrate::Value::Map(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), hydrate_of(v)))
                .collect::<HashMap<String, _>>()
                .into(),
        ),
        scalar => hydrate::Value::Scalar(scalar_of(scalar)),
    }
}

/// The JSON a document holding `value` reads as ([`read_json`]), computed without Automerge:
/// writers that just wrote `value` use it instead of reading the document back.
pub fn view_of<T: Document>(value: &T) -> Result<Json, DocError> {
    let mut map = to_json(value)?;
    map.insert("type".into(), Json::String(T::TYPE.name().into()));
    map.insert("schema".into(), Json::from(SCHEMA_VERSION));
    Ok(Json::Object(map))
}

/// Reads a view (from [`read_json`] or [`view_of`]) as a typed value, checking type and schema.
pub fn from_view<T: Document>(view: &Json) -> Result<T, DocError> {
    let Json::Object(map) = view else {
        return Err(DocError::Shape {
            doc_type: T::TYPE,
            reason: "root is not a map".into(),
        });
    };
    match map.get("type") {
        Some(Json::String(t)) if t == T::TYPE.name() => {}
        other => {
            return Err(DocError::WrongType {
                expected: T::TYPE,
                found: other
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "document with no type".into()),
            });
        }
    }
    match map.get("schema") {
        Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => {}
        other => {
            return Err(DocError::SchemaVersion {
                found: other
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "none".into()),
            });
        }
    }
    T::deserialize(view).map_err(|e| DocError::Shape {
        doc_type: T::TYPE,
        reason: e.to_string(),
    })
}

/// Reads a document as a typed value, checking its type and schema version.
pub fn read<T: Document>(doc: &AutoCommit) -> Result<T, DocError> {
    from_view(&read_json(doc))
}

/// Parses one Automerge change from a peer's bytes. Automerge 0.12 panics on some malformed
/// changes (an op counter past `u32::MAX` unwraps a failed conversion; found by the `entry`
/// fuzz target): here that is an error like any other, so one bad change is refused at once
/// instead of crashing the writer's batch.
pub fn parse_change(bytes: &[u8]) -> Result<automerge::Change, String> {
    let parsed = std::panic::catch_unwind(|| automerge::Change::from_bytes(bytes.to_vec()));
    match parsed {
        Ok(Ok(change)) => Ok(change),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("Automerge's parser gave up on it (a malformed change)".into()),
    }
}

/// The heads a document stood at when `changes` were made: what they build on outside
/// themselves, sorted. A fork there is the document as their author saw it.
pub fn seen_heads(changes: &[automerge::Change]) -> Vec<automerge::ChangeHash> {
    let own: std::collections::HashSet<automerge::ChangeHash> =
        changes.iter().map(automerge::Change::hash).collect();
    let mut seen: Vec<automerge::ChangeHash> = changes
        .iter()
        .flat_map(|c| c.deps().iter().copied())
        .filter(|h| !own.contains(h))
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// The whole document as JSON (counters as their current value), as Automerge's `AutoSerde`
/// renders it. Read in one pass per object: `AutoSerde` looks every key up again, which made
/// reading a document a third of the writer's time per ingested entry.
pub fn read_json(doc: &AutoCommit) -> Json {
    read_map(doc, &ROOT)
}

fn read_map(doc: &AutoCommit, obj: &ObjId) -> Json {
    let mut out = Map::new();
    for item in doc.map_range(obj, ..) {
        let value = read_value(doc, &item.value, &|| item.id());
        out.insert(item.key.into_owned(), value);
    }
    Json::Object(out)
}

/// `id` names the object a value is, asked only for objects: building it costs.
pub(crate) fn read_value(doc: &AutoCommit, value: &ValueRef<'_>, id: &dyn Fn() -> ObjId) -> Json {
    match value {
        ValueRef::Object(ObjType::Map | ObjType::Table) => read_map(doc, &id()),
        ValueRef::Object(ObjType::List) => {
            let list = id();
            Json::Array(
                doc.list_range(&list, ..)
                    .map(|item| read_value(doc, &item.value, &|| item.id()))
                    .collect(),
            )
        }
        ValueRef::Object(ObjType::Text) => Json::String(doc.text(id()).unwrap_or_default()),
        ValueRef::Scalar(s) => match s {
            ScalarValueRef::Str(s) => Json::String(s.to_string()),
            ScalarValueRef::Int(n) | ScalarValueRef::Counter(n) | ScalarValueRef::Timestamp(n) => {
                Json::from(*n)
            }
            ScalarValueRef::Uint(n) => Json::from(*n),
            ScalarValueRef::F64(f) => {
                serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
            }
            ScalarValueRef::Boolean(b) => Json::Bool(*b),
            ScalarValueRef::Null => Json::Null,
            ScalarValueRef::Bytes(b) => bytes_json(b),
            ScalarValueRef::Unknown { type_code, bytes } => {
                serde_json::json!({ "type_code": type_code, "bytes": bytes_json(bytes) })
            }
        },
    }
}

fn bytes_json(b: &[u8]) -> Json {
    Json::Array(b.iter().map(|x| Json::from(*x)).collect())
}

/// Writes the fields where `to` differs from `from` and returns the change, or `None` when
/// nothing differs.
pub fn update<T: Document>(
    doc: &mut AutoCommit,
    from: &T,
    to: &T,
    time_s: i64,
) -> Result<Option<Vec<u8>>, DocError> {
    diff_map(doc, &ROOT, &to_json(from)?, &to_json(to)?)?;
    Ok(commit(doc, time_s))
}

/// How a document moves stock, read from its view: `(product, units)` pairs (see
/// [`Sale::stock_moves`], [`Refund::stock_moves`], [`StockAdjustment::stock_moves`]). It reads
/// only the fields that matter, since it runs for every sale; lines that do not read as a
/// product and a quantity move nothing.
pub fn stock_moves(doc_type: DocType, view: &Json) -> Vec<(DocId, i64)> {
    let (sign, qty_key) = match doc_type {
        DocType::Sale if view.get("status").and_then(Json::as_str) == Some("voided") => {
            return voided_sale_moves(view);
        }
        DocType::Sale => (-1, "qty"),
        DocType::Refund if view.get("restock").and_then(Json::as_bool) == Some(true) => (1, "qty"),
        DocType::StockAdjustment => (1, "delta"),
        _ => return Vec::new(),
    };
    let lines = view
        .get("lines")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    lines
        .iter()
        .filter_map(|l| {
            let product = l.get("product_id")?.as_str()?.parse().ok()?;
            Some((product, sign * l.get(qty_key)?.as_i64()?))
        })
        .collect()
}

/// A voided sale keeps moved only what its refunds took back (see [`Sale::stock_moves`]).
fn voided_sale_moves(view: &Json) -> Vec<(DocId, i64)> {
    let items = |v: &Json, key: &str| -> Vec<Json> {
        v.get(key)
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let lines = items(view, "lines");
    let mut refunded = vec![0i64; lines.len()];
    for r in items(view, "refunds") {
        for l in items(&r, "lines") {
            let at = l.get("line").and_then(Json::as_u64);
            let qty = l.get("qty").and_then(Json::as_i64).unwrap_or(0);
            if let Some(q) = at.and_then(|i| refunded.get_mut(usize::try_from(i).ok()?)) {
                *q = q.saturating_add(qty);
            }
        }
    }
    lines
        .iter()
        .zip(refunded)
        .filter(|(_, q)| *q > 0)
        .filter_map(|(l, q)| {
            let product = l.get("product_id")?.as_str()?.parse().ok()?;
            Some((product, -q.min(l.get("qty")?.as_i64()?)))
        })
        .collect()
}

pub(crate) fn put_json(
    doc: &mut AutoCommit,
    obj: &ObjId,
    prop: Prop,
    v: &Json,
) -> Result<(), DocError> {
    match v {
        Json::Array(_) | Json::Object(_) => {
            doc.batch_create_object(obj, prop, &hydrate_of(v), false)?;
        }
        scalar => doc.put(obj, prop, scalar_of(scalar))?,
    }
    Ok(())
}

fn insert_json(doc: &mut AutoCommit, list: &ObjId, index: usize, v: &Json) -> Result<(), DocError> {
    match v {
        Json::Array(_) | Json::Object(_) => {
            doc.batch_create_object(list, index, &hydrate_of(v), true)?;
        }
        scalar => doc.insert(list, index, scalar_of(scalar))?,
    }
    Ok(())
}

fn scalar_of(v: &Json) -> ScalarValue {
    match v {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int(i),
            (None, Some(u)) => ScalarValue::Uint(u),
            _ => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => ScalarValue::Str(s.as_str().into()),
        Json::Array(_) | Json::Object(_) => unreachable!("containers are written by put_json"),
    }
}

fn child_obj(doc: &AutoCommit, obj: &ObjId, key: &str, kind: ObjType) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(t), id) if t == kind => Some(id),
        _ => None,
    }
}

fn diff_map(
    doc: &mut AutoCommit,
    obj: &ObjId,
    old: &Map<String, Json>,
    new: &Map<String, Json>,
) -> Result<(), DocError> {
    for (key, nv) in new {
        let ov = old.get(key);
        if ov == Some(nv) {
            continue;
        }
        match (ov, nv) {
            (Some(Json::Object(om)), Json::Object(nm)) => {
                if let Some(child) = child_obj(doc, obj, key, ObjType::Map) {
                    diff_map(doc, &child, om, nm)?;
                    continue;
                }
            }
            (Some(Json::Array(oa)), Json::Array(na))
                if na.len() > oa.len() && na[..oa.len()] == oa[..] =>
            {
                // Appends stay appends, so two tills adding refunds to one sale both keep theirs.
                if let Some(list) = child_obj(doc, obj, key, ObjType::List)
                    && doc.length(&list) == oa.len()
                {
                    for (i, item) in na.iter().enumerate().skip(oa.len()) {
                        insert_json(doc, &list, i, item)?;
                    }
                    continue;
                }
            }
            _ => {}
        }
        put_json(doc, obj, key.as_str().into(), nv)?;
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            doc.delete(obj, key.as_str())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::{Currency, Money};
    use crate::schema::{Customer, Party, Product, Settings};

    fn product() -> Product {
        Product {
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
        }
    }

    /// The one-pass reader renders every kind of value as Automerge's own `AutoSerde` does,
    /// after concurrent edits too (the winner of a conflict, counters incremented, a list
    /// edited from two sides).
    #[test]
    fn read_json_matches_autoserde() {
        use automerge::transaction::Transactable;
        let mut a = AutoCommit::new().with_actor(actor_for(&DeviceId([1; 32])));
        a.put(ROOT, "s", "text value").unwrap();
        a.put(ROOT, "i", -7i64).unwrap();
        a.put(ROOT, "u", ScalarValue::Uint(7)).unwrap();
        a.put(ROOT, "f", 2.5f64).unwrap();
        a.put(ROOT, "b", true).unwrap();
        a.put(ROOT, "n", ScalarValue::Null).unwrap();
        a.put(ROOT, "t", ScalarValue::Timestamp(1_700_000_000))
            .unwrap();
        a.put(ROOT, "bytes", ScalarValue::Bytes(vec![1, 2, 255]))
            .unwrap();
        a.put(ROOT, "c", ScalarValue::counter(10)).unwrap();
        let text = a.put_object(ROOT, "txt", ObjType::Text).unwrap();
        a.splice_text(&text, 0, 0, "hello").unwrap();
        let list = a.put_object(ROOT, "lines", ObjType::List).unwrap();
        for i in 0..4i64 {
            let line = a.insert_object(&list, i as usize, ObjType::Map).unwrap();
            a.put(&line, "qty", i).unwrap();
            let tags = a.put_object(&line, "tags", ObjType::List).unwrap();
            a.insert(&tags, 0, "x").unwrap();
        }
        let mut b = a.fork().with_actor(actor_for(&DeviceId([2; 32])));
        a.put(ROOT, "s", "from a").unwrap();
        b.put(ROOT, "s", "from b").unwrap();
        a.increment(ROOT, "c", 5).unwrap();
        b.increment(ROOT, "c", -2).unwrap();
        a.delete(&list, 1).unwrap();
        let lb = b.insert_object(&list, 0, ObjType::Map).unwrap();
        b.put(&lb, "qty", 99i64).unwrap();
        a.merge(&mut b).unwrap();
        let expected = serde_json::to_value(automerge::AutoSerde::from(&a)).unwrap();
        assert_eq!(read_json(&a), expected);
        assert_eq!(read_json(&a)["c"], Json::from(13));
        assert_eq!(read_json(&AutoCommit::new()), serde_json::json!({}));
    }

    #[test]
    fn typed_round_trip_and_type_check() {
        let actor = actor_for(&DeviceId([1; 32]));
        let (mut doc, change, view) = create(&actor, &product(), 0).unwrap();
        assert_eq!(
            view,
            read_json(&doc),
            "the computed view is what the document reads as"
        );
        let parsed = automerge::Change::from_bytes(change.clone())
            .expect("the creation change is one change");
        assert_eq!(
            Some(parsed.raw_bytes()),
            doc.get_last_local_change().as_ref().map(|c| c.raw_bytes())
        );
        let mut copy = AutoCommit::new();
        copy.apply_changes([parsed]).unwrap();
        assert_eq!(read::<Product>(&copy).unwrap(), product());
        assert_eq!(read::<Product>(&doc).unwrap(), product());
        assert_eq!(read_json(&doc)["type"], "product");
        assert!(matches!(
            read::<Settings>(&doc),
            Err(DocError::WrongType { .. })
        ));
    }

    #[test]
    fn concurrent_field_edits_merge() {
        let (mut a, _, _) = create(&actor_for(&DeviceId([1; 32])), &product(), 0).unwrap();
        let mut b = a.fork().with_actor(actor_for(&DeviceId([2; 32])));
        let mut renamed = product();
        renamed.name = "Sencha".into();
        update(&mut a, &product(), &renamed, 1).unwrap();
        let mut repriced = product();
        repriced.price.amount_minor = 400;
        update(&mut b, &product(), &repriced, 1).unwrap();
        a.merge(&mut b).unwrap();
        let merged = read::<Product>(&a).unwrap();
        assert_eq!(merged.name, "Sencha");
        assert_eq!(merged.price.amount_minor, 400);
    }

    #[test]
    fn update_writes_nothing_when_nothing_changed_and_deletes_cleared_fields() {
        let actor = actor_for(&DeviceId([1; 32]));
        let mut c = Party::named("Jane Doe");
        c.email = Some("jane@example.com".into());
        let (mut doc, _, _) = create(&actor, &Customer(c.clone()), 0).unwrap();
        assert!(
            update(&mut doc, &Customer(c.clone()), &Customer(c.clone()), 1)
                .unwrap()
                .is_none()
        );
        let mut cleared = c.clone();
        cleared.email = None;
        assert!(
            update(&mut doc, &Customer(c), &Customer(cleared.clone()), 1)
                .unwrap()
                .is_some()
        );
        assert_eq!(read::<Customer>(&doc).unwrap().0, cleared);
    }

    #[test]
    fn an_actor_series_names_its_device() {
        let d = DeviceId([7; 32]);
        assert_eq!(actor_for(&d), actor_in_series(&d, 0));
        for n in [0, 1, 2, 513, u32::MAX] {
            assert_eq!(series_of(&d, &actor_in_series(&d, n)), Some(n));
        }
        assert_eq!(series_of(&DeviceId([8; 32]), &actor_in_series(&d, 3)), None);
        let mut odd = d.as_bytes().to_vec();
        odd.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(series_of(&d, &ActorId::from(odd)), None);
    }
}
