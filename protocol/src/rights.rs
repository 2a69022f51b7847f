//! Stock rights: how a strict product's stock is held per device (escrow, a bounded counter;
//! Balegas et al., EuroSys 2015).
//!
//! A strict product's level is split into rights, each held by one device. A till spends only
//! its own rights, so the mesh never sells more than it has, connected or not, without asking
//! anyone at the moment of the sale. Every movement of rights is read from a document, and is
//! attributed to the device that signed it:
//!
//! - a strict product: its maker holds its opening stock;
//! - a sale line of a strict product: the selling till spends its units;
//! - a refund that restocks: the refunding till gets the units back;
//! - a stock adjustment: the recording device gains or spends its delta;
//! - a transfer: the giver spends when it signs it, the receiver gains when *it* accepts it.
//!
//! So a device's rights change only by its own entries, in the order of its own log, and a
//! node judges each entry on the author's rights at that point of its log: every node that
//! holds the author's log reaches the same verdict, in any arrival order. The rights of all
//! devices plus the transfers not yet accepted always sum to the product's level.
//!
//! One exception: an admin may **reclaim** the rights a revoked device held at its cutoff (its
//! later entries never stand, so it can spend nothing more). The reclaim takes them from the
//! revoked device and puts them in transit to a device every node names alike (the product's
//! maker, or the owner when the maker is the one revoked); its amount is what the revoked
//! device's own log leaves it, and it is judged only once that log is held up to the cutoff.
//! Its document id is derived from the device and the product, so two admins reclaiming at
//! once write the same document, and the rights move once. The receiver takes them in by
//! accepting, as any transfer: were they its at once, its later spends would rest on an
//! entry outside its own log, and a node still waiting for the revoked device's log would
//! refuse them while every other node took them.
//!
//! A sale of a strict product cannot be voided (see [`crate::schema::Sale::check_update`]):
//! the units a void gives back depend on refunds another till may have made apart, so rights
//! handed out for them could be spent twice.

use std::collections::BTreeMap;

use serde_json::Value as Json;

use crate::ids::{DeviceId, DocId, MeshId};
use crate::schema::DocType;

/// One movement of rights: this device's rights to this product change by `units`.
pub type RightsMove = ((DocId, DeviceId), i64);

/// How a document moves rights, read from its view (it runs for every sale, so it reads only
/// the fields that matter). Lines that are not strict move no rights.
pub fn moves(doc_type: DocType, id: &DocId, view: &Json) -> Vec<RightsMove> {
    let device = |key: &str| view.get(key)?.as_str()?.parse::<DeviceId>().ok();
    let strict_lines = |by: Option<DeviceId>, qty_key: &str, sign: i64| -> Vec<RightsMove> {
        let Some(by) = by else { return Vec::new() };
        lines(view)
            .iter()
            .filter(|l| l.get("strict").and_then(Json::as_bool) == Some(true))
            .filter_map(|l| {
                let product = l.get("product_id")?.as_str()?.parse().ok()?;
                Some(((product, by), l.get(qty_key)?.as_i64()?.checked_mul(sign)?))
            })
            .collect()
    };
    match doc_type {
        DocType::Product if view.get("stock_policy").and_then(Json::as_str) == Some("strict") => {
            let opening = view
                .get("opening_stock")
                .and_then(Json::as_i64)
                .unwrap_or(0);
            match device("created_by") {
                Some(by) if opening != 0 => vec![((*id, by), opening)],
                _ => Vec::new(),
            }
        }
        DocType::Sale => strict_lines(device("till"), "qty", -1),
        DocType::Refund if view.get("restock").and_then(Json::as_bool) == Some(true) => {
            strict_lines(device("by"), "qty", 1)
        }
        DocType::StockAdjustment => strict_lines(device("by"), "delta", 1),
        DocType::StockTransfer => {
            let (Some(product), Some(from), Some(to), Some(qty)) = (
                view.get("product_id")
                    .and_then(Json::as_str)
                    .and_then(|s| s.parse::<DocId>().ok()),
                device("from"),
                device("to"),
                view.get("qty").and_then(Json::as_i64),
            ) else {
                return Vec::new();
            };
            let mut out = vec![((product, from), qty.saturating_neg())];
            if view.get("accepted_at_ms").is_some_and(|a| !a.is_null()) {
                out.push(((product, to), qty));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// What a change of a document from `before` to `after` moves, summed per product and device,
/// without the zeros.
pub fn delta(
    doc_type: DocType,
    id: &DocId,
    before: Option<&Json>,
    after: Option<&Json>,
) -> BTreeMap<(DocId, DeviceId), i64> {
    let mut out: BTreeMap<(DocId, DeviceId), i64> = BTreeMap::new();
    for (key, units) in before.map(|b| moves(doc_type, id, b)).unwrap_or_default() {
        let v = out.entry(key).or_default();
        *v = v.saturating_sub(units);
    }
    for (key, units) in after.map(|a| moves(doc_type, id, a)).unwrap_or_default() {
        let v = out.entry(key).or_default();
        *v = v.saturating_add(units);
    }
    out.retain(|_, v| *v != 0);
    out
}

/// The one document that reclaims `device`'s rights to `product`.
pub fn reclaim_id(mesh: &MeshId, device: &DeviceId, product: &DocId) -> DocId {
    DocId::derived(mesh, &format!("rights-reclaim/{device}/{product}"))
}

/// Whether a view is a reclaim (its moves are judged by the reclaim's rules, not its author's).
pub fn is_reclaim(doc_type: DocType, view: &Json) -> bool {
    doc_type == DocType::StockTransfer && view.get("reclaim").and_then(Json::as_bool) == Some(true)
}

/// Why an entry's movement of rights does not stand: refused (another device's rights), or held
/// undone (beyond its author's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RightsError {
    /// Rights move only by their holder's own entries; anything else would let arrival order
    /// decide verdicts, or let one device spend another's rights.
    #[error(
        "it moves stock rights of device {device}, not of its author; a device moves only its own rights"
    )]
    NotAuthors { device: DeviceId },
    #[error("it spends {spent} units of {sku} but its author held rights to {held}")]
    Exceeded { sku: String, spent: i64, held: i64 },
}

/// Rights moves of an entry must all be its author's own.
pub fn check_author(
    author: DeviceId,
    moves: &BTreeMap<(DocId, DeviceId), i64>,
) -> Result<(), RightsError> {
    match moves.keys().find(|(_, d)| *d != author) {
        Some((_, device)) => Err(RightsError::NotAuthors { device: *device }),
        None => Ok(()),
    }
}

fn lines(view: &Json) -> &[Json] {
    view.get("lines")
        .and_then(Json::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKey;

    fn device(n: u8) -> DeviceId {
        DeviceKey::from_secret([n; 32]).device_id()
    }

    #[test]
    fn a_transfer_moves_the_givers_rights_at_once_and_the_receivers_on_acceptance() {
        let (p, t) = (DocId::new_v7(1, [1; 10]), DocId::new_v7(2, [2; 10]));
        let (a, b) = (device(1), device(2));
        let mut view = serde_json::json!({
            "type": "stock_transfer", "product_id": p.to_string(), "sku": "MUG",
            "from": a.to_string(), "to": b.to_string(), "qty": 3, "at_ms": 1,
        });
        let made = delta(DocType::StockTransfer, &t, None, Some(&view));
        assert_eq!(made.into_iter().collect::<Vec<_>>(), vec![((p, a), -3)]);
        let before = view.clone();
        view["accepted_at_ms"] = 2.into();
        let accepted = delta(DocType::StockTransfer, &t, Some(&before), Some(&view));
        assert_eq!(accepted.into_iter().collect::<Vec<_>>(), vec![((p, b), 3)]);
        assert!(
            check_author(
                a,
                &delta(DocType::StockTransfer, &t, Some(&before), Some(&view))
            )
            .is_err()
        );
    }

    #[test]
    fn only_strict_lines_move_rights() {
        let (p, q, s) = (
            DocId::new_v7(1, [1; 10]),
            DocId::new_v7(3, [3; 10]),
            DocId::new_v7(2, [2; 10]),
        );
        let till = device(1);
        let view = serde_json::json!({
            "type": "sale", "till": till.to_string(),
            "lines": [
                {"product_id": p.to_string(), "qty": 2, "strict": true},
                {"product_id": q.to_string(), "qty": 5},
            ],
        });
        assert_eq!(moves(DocType::Sale, &s, &view), vec![((p, till), -2)]);
    }
}
