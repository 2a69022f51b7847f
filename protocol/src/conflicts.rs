//! Fields two devices set concurrently, and settling them.
//!
//! Automerge keeps every concurrent value of a map key and shows one of them (the same one
//! on every node). Nothing is lost, but a person should decide: two tills that changed a
//! customer's phone while apart both meant something. [`field_conflicts`] lists such fields
//! with every value, who set it and when; [`resolve`] writes the picked value over all of
//! them as an ordinary change, which reaches every node like any other.

use std::collections::HashMap;

use automerge::{ActorId, AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef};
use serde::Serialize;
use serde_json::Value as Json;

use crate::docmap::{self, DocError};
use crate::ids::DeviceId;

/// Nested maps looked into below the root: a party's `address` is one level down.
const DEPTH_MAX: usize = 2;

/// One value a conflicting field holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConflictValue {
    pub value: Json,
    /// The device whose change set it (the first 32 bytes of its Automerge actor).
    pub device: Option<DeviceId>,
    /// When that change was made, in the device's clock (seconds since the epoch).
    pub at_s: Option<i64>,
    /// The value the document shows now (Automerge's pick, the same on every node).
    pub shown: bool,
}

/// A field with more than one value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldConflict {
    /// Keys from the root: `["phone"]`, `["address", "city"]`.
    pub path: Vec<String>,
    pub values: Vec<ConflictValue>,
}

/// Every field of `doc` (at the root, and in maps below it) that holds concurrent values.
/// (`&mut`: Automerge closes its open transaction to list the changes.)
pub fn field_conflicts(doc: &mut AutoCommit) -> Vec<FieldConflict> {
    let mut found = Vec::new();
    walk(doc, &ROOT, &mut Vec::new(), &mut found);
    if found.is_empty() {
        return Vec::new();
    }
    let mut by_actor: HashMap<ActorId, Vec<(u64, u64, i64)>> = HashMap::new();
    for c in doc.get_changes_meta(&[]) {
        by_actor
            .entry(c.actor.into_owned())
            .or_default()
            .push((c.start_op, c.max_op, c.timestamp));
    }
    found
        .into_iter()
        .map(|(path, values)| FieldConflict {
            path,
            values: values
                .into_iter()
                .map(|(value, id, shown)| {
                    let (device, at_s) = author_of(&id, &by_actor);
                    ConflictValue {
                        value,
                        device,
                        at_s,
                        shown,
                    }
                })
                .collect(),
        })
        .collect()
}

/// A conflicting field's path and its values, each with the op that set it and whether shown.
type Found = (Vec<String>, Vec<(Json, ObjId, bool)>);

fn walk(doc: &AutoCommit, obj: &ObjId, path: &mut Vec<String>, out: &mut Vec<Found>) {
    let keys: Vec<String> = doc.keys(obj).collect();
    for key in keys {
        let Ok(all) = doc.get_all(obj, key.as_str()) else {
            continue;
        };
        path.push(key);
        if all.len() > 1 {
            let n = all.len();
            let values = all
                .iter()
                .enumerate()
                // `get_all` lists the shown value last.
                .map(|(i, (v, id))| (value_json(doc, v, id), id.clone(), i + 1 == n))
                .collect();
            out.push((path.clone(), values));
        } else if let Some((Value::Object(ObjType::Map), id)) = all.first()
            && path.len() < DEPTH_MAX
        {
            walk(doc, id, path, out);
        }
        path.pop();
    }
}

fn author_of(
    id: &ObjId,
    by_actor: &HashMap<ActorId, Vec<(u64, u64, i64)>>,
) -> (Option<DeviceId>, Option<i64>) {
    let ObjId::Id(counter, actor, _) = id else {
        return (None, None);
    };
    let device = actor
        .to_bytes()
        .get(..32)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(DeviceId);
    let at_s = by_actor.get(actor).and_then(|changes| {
        changes
            .iter()
            .find(|(start, max, _)| (*start..=*max).contains(counter))
            .map(|(_, _, t)| *t)
    });
    (device, at_s)
}

fn value_json(doc: &AutoCommit, v: &Value<'_>, id: &ObjId) -> Json {
    match v {
        Value::Object(t) => docmap::read_value(doc, &ValueRef::Object(*t), &|| id.clone()),
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Json::String(s.to_string()),
            ScalarValue::Int(n) | ScalarValue::Timestamp(n) => Json::from(*n),
            ScalarValue::Uint(n) => Json::from(*n),
            ScalarValue::F64(f) => {
                serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number)
            }
            ScalarValue::Boolean(b) => Json::Bool(*b),
            ScalarValue::Null => Json::Null,
            other => Json::String(other.to_string()),
        },
    }
}

/// Why a field cannot be settled as asked.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{path} holds one value, so there is nothing to settle (edit it as usual)")]
    NoConflict { path: String },
    #[error("{value} is not one of the values {path} holds ({held}); pick one of them")]
    NotACandidate {
        path: String,
        value: Json,
        held: String,
    },
    #[error(transparent)]
    Doc(#[from] DocError),
}

/// Writes `value`, one of the values the field at `path` holds, over all of them; returns the
/// change. Everyone then sees that value, and the field holds one value again.
pub fn resolve(
    doc: &mut AutoCommit,
    path: &[String],
    value: &Json,
    time_s: i64,
) -> Result<Vec<u8>, ResolveError> {
    let shown = path.join(".");
    let conflict = field_conflicts(doc)
        .into_iter()
        .find(|c| c.path == path)
        .ok_or_else(|| ResolveError::NoConflict {
            path: shown.clone(),
        })?;
    if !conflict.values.iter().any(|v| v.value == *value) {
        let held: Vec<String> = conflict
            .values
            .iter()
            .map(|v| v.value.to_string())
            .collect();
        return Err(ResolveError::NotACandidate {
            path: shown,
            value: value.clone(),
            held: held.join(", "),
        });
    }
    let (parent, key) = path.split_at(path.len() - 1);
    let mut obj = ROOT;
    for k in parent {
        obj = match doc.get(&obj, k.as_str()).map_err(DocError::from)? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => return Err(ResolveError::NoConflict { path: shown }),
        };
    }
    docmap::put_json(doc, &obj, key[0].as_str().into(), value)?;
    Ok(docmap::commit(doc, time_s).expect("a put is a change"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docmap::actor_for;
    use automerge::transaction::Transactable;

    fn apart() -> (AutoCommit, DeviceId, DeviceId) {
        let (a_id, b_id) = (DeviceId([1; 32]), DeviceId([2; 32]));
        let mut a = AutoCommit::new().with_actor(actor_for(&a_id));
        a.put(ROOT, "phone", "555-0100").unwrap();
        a.put(ROOT, "name", "Ada").unwrap();
        let addr = a.put_object(ROOT, "address", ObjType::Map).unwrap();
        a.put(&addr, "city", "Leeds").unwrap();
        a.commit();
        let mut b = a.fork().with_actor(actor_for(&b_id));
        a.put(ROOT, "phone", "555-0111").unwrap();
        a.put(&addr, "city", "York").unwrap();
        a.commit();
        b.put(ROOT, "phone", "555-0222").unwrap();
        b.put(&addr, "city", "Hull").unwrap();
        b.commit();
        a.merge(&mut b).unwrap();
        (a, a_id, b_id)
    }

    #[test]
    fn concurrent_sets_are_listed_with_every_value_and_who_set_it() {
        let (mut doc, a, b) = apart();
        let found = field_conflicts(&mut doc);
        let paths: Vec<String> = found.iter().map(|c| c.path.join(".")).collect();
        assert_eq!(paths, ["address.city", "phone"]);
        let phone = &found[1];
        let mut by: Vec<(Json, Option<DeviceId>)> = phone
            .values
            .iter()
            .map(|v| (v.value.clone(), v.device))
            .collect();
        by.sort_by_key(|(v, _)| v.to_string());
        assert_eq!(
            by,
            [
                (Json::from("555-0111"), Some(a)),
                (Json::from("555-0222"), Some(b))
            ]
        );
        assert_eq!(phone.values.iter().filter(|v| v.shown).count(), 1);
        let shown = phone.values.iter().find(|v| v.shown).unwrap();
        assert_eq!(docmap::read_json(&doc)["phone"], shown.value);
    }

    #[test]
    fn a_resolution_leaves_one_value_everywhere() {
        let (mut doc, _, _) = apart();
        let mut other = doc.fork().with_actor(actor_for(&DeviceId([3; 32])));
        let path = vec!["phone".to_owned()];
        let e = resolve(&mut doc, &path, &Json::from("555-9999"), 0).unwrap_err();
        assert!(matches!(e, ResolveError::NotACandidate { .. }), "{e}");
        // The value not shown is the one picked, so the pick is visible.
        let hidden = field_conflicts(&mut doc)[1]
            .values
            .iter()
            .find(|v| !v.shown)
            .unwrap()
            .value
            .clone();
        let change = resolve(&mut doc, &path, &hidden, 0).unwrap();
        assert_eq!(docmap::read_json(&doc)["phone"], hidden);
        other
            .apply_changes([automerge::Change::from_bytes(change).unwrap()])
            .unwrap();
        assert_eq!(docmap::read_json(&other)["phone"], hidden);
        let left: Vec<Vec<String>> = field_conflicts(&mut other)
            .into_iter()
            .map(|c| c.path)
            .collect();
        assert_eq!(left, [vec!["address".to_owned(), "city".to_owned()]]);
        let e = resolve(&mut doc, &path, &hidden, 0).unwrap_err();
        assert!(matches!(e, ResolveError::NoConflict { .. }), "{e}");
        let city = vec!["address".to_owned(), "city".to_owned()];
        resolve(&mut doc, &city, &Json::from("Hull"), 0).unwrap();
        assert!(field_conflicts(&mut doc).is_empty());
        assert_eq!(docmap::read_json(&doc)["address"]["city"], "Hull");
    }
}
