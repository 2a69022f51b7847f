//! Asking peers for stock rights (see `tillmesh_protocol::rights`): a till short of rights to a
//! strict product asks the connected devices that hold some, on a request-response protocol
//! of its own (`/tillmesh/rights/1/<mesh tag>`, members only); a holder answers with the
//! signed transfer entry it wrote, which the asker ingests before it tries the sale again.
//! A till that reaches no holder sells only what it holds, and says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tillmesh_protocol::{DeviceId, DocId, SignedEntry};

use crate::repo::requests::GiveRights;
use crate::repo::{Command as RepoCommand, IngestOutcome, Repo, WriteError};

use super::Network;
use super::driver::peer_of_device;

/// How long a sale waits for rights from peers before it is refused.
pub const ASK_WAIT: Duration = Duration::from_millis(500);
/// Units of each strict product a till tries to hold (`tillmesh run --rights-reserve`).
pub const RESERVE_UNITS_DEFAULT: i64 = 10;
/// How often a till looks at its reserves, and for how long after its last sale of a product
/// it keeps one of it.
const RESERVE_CHECK: Duration = Duration::from_secs(1);
const RESERVE_KEPT_FOR: Duration = Duration::from_secs(600);
/// Strict products a till remembers selling, for its reserves.
const RESERVE_PRODUCTS_MAX: usize = 1024;
/// A rights answer is one signed entry (a transfer: a few hundred bytes).
pub const ASK_BYTES_MAX: u64 = 4 * 1024;
pub const ANSWER_BYTES_MAX: u64 = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RightsAsk {
    pub product: DocId,
    /// Units the asker needs for the sale in hand (0 when it only tops up its reserve).
    pub need: i64,
    /// Units it would like in all, to keep a reserve; a holder gives towards it at most half
    /// of what it holds beyond `need` and its own reserve.
    pub want: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RightsAnswer {
    /// The transfer entry, as signed: the asker ingests it like any entry.
    Granted {
        entry: Vec<u8>,
    },
    Refused {
        reason: String,
    },
}

/// How this till's sales of strict products fared, for the status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RightsStats {
    /// Sales that waited for rights from a peer.
    pub sales_waited: u64,
    /// Asks sent to holders (for a sale, or to top up a reserve).
    pub asks: u64,
    /// Units received by transfers this node asked for.
    pub units_received: u64,
    pub reserve_units: i64,
}

/// A till's reserves: the strict products it sold lately, and its counts.
pub struct Keeper {
    reserve: i64,
    sold: Mutex<HashMap<DocId, Instant>>,
    /// One ask per product at a time: sales that fall short together wait for the first
    /// one's transfer instead of each asking.
    asking: Mutex<HashMap<DocId, Arc<tokio::sync::Mutex<()>>>>,
    sales_waited: AtomicU64,
    asks: AtomicU64,
    units_received: AtomicU64,
}

impl Keeper {
    pub fn new(reserve: i64) -> Keeper {
        Keeper {
            reserve: reserve.max(0),
            sold: Mutex::new(HashMap::new()),
            asking: Mutex::new(HashMap::new()),
            sales_waited: AtomicU64::new(0),
            asks: AtomicU64::new(0),
            units_received: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> RightsStats {
        RightsStats {
            sales_waited: self.sales_waited.load(Ordering::Relaxed),
            asks: self.asks.load(Ordering::Relaxed),
            units_received: self.units_received.load(Ordering::Relaxed),
            reserve_units: self.reserve,
        }
    }

    /// A sale of these strict products was made here: keep a reserve of them.
    pub fn sold(&self, products: impl IntoIterator<Item = DocId>) {
        let Ok(mut sold) = self.sold.lock() else {
            return;
        };
        let now = Instant::now();
        for p in products {
            if sold.len() >= RESERVE_PRODUCTS_MAX && !sold.contains_key(&p) {
                sold.retain(|_, at| now.duration_since(*at) < RESERVE_KEPT_FOR);
                if sold.len() >= RESERVE_PRODUCTS_MAX {
                    return;
                }
            }
            sold.insert(p, now);
        }
    }

    fn asking(&self, product: DocId) -> Arc<tokio::sync::Mutex<()>> {
        let Ok(mut asking) = self.asking.lock() else {
            return Arc::default();
        };
        if asking.len() >= RESERVE_PRODUCTS_MAX {
            asking.retain(|_, m| Arc::strong_count(m) > 1);
        }
        asking.entry(product).or_default().clone()
    }

    pub fn reserve(&self) -> i64 {
        self.reserve
    }

    pub fn waited(&self) {
        self.sales_waited.fetch_add(1, Ordering::Relaxed);
    }

    fn recent(&self) -> Vec<DocId> {
        let now = Instant::now();
        self.sold
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(_, at)| now.duration_since(**at) < RESERVE_KEPT_FOR)
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Takes the transfers given to this till into its log, and tops up its reserve of every
/// strict product it sold lately, in the background, so the common sale never waits for a
/// transfer. Ends with the network.
pub async fn keep_reserve(repo: Repo, network: Network) {
    let me = repo.identity().device_id;
    let reserve = network.rights.reserve;
    while !network.is_stopped() {
        tokio::time::sleep(RESERVE_CHECK).await;
        // Rights given to this till are taken into its own log at once: the holders every
        // node shows are then where the rights are, and a revoked till's can be reclaimed.
        for (product_id, _) in repo.open_transfers_to(&me).unwrap_or_default() {
            let _ = repo.execute(RepoCommand::AcceptRights { product_id }).await;
        }
        if reserve == 0 {
            continue;
        }
        for product in network.rights.recent() {
            let held = repo
                .rights(&product)
                .map(|r| r.held_by(&me) + r.open_to(&me))
                .unwrap_or(0);
            // Below half: ask for the rest (a till at its reserve asks nobody), for no sale
            // in hand, so holders give only from beyond their own reserves.
            if held * 2 < reserve {
                let _ = ask(&repo, &network, product, 0, reserve - held).await;
            }
        }
    }
}

/// What the holder gives: what the asker needs for a sale (or all it holds, if less), even
/// out of its own reserve, since the sale is real; and towards what the asker wants beyond,
/// at most half of what the holder holds above its own reserve, so two tills topping up their
/// reserves never pass the same units back and forth.
pub fn grant_units(held: i64, need: i64, want: i64, own_reserve: i64) -> i64 {
    if held <= 0 {
        return 0;
    }
    let base = need.clamp(0, held);
    let spare = (held - base - own_reserve.max(0)).max(0);
    let extra = (want - base).clamp(0, spare / 2);
    base + extra
}

/// The holder's side: a transfer to the asking member, written and answered with its entry.
/// It keeps its own reserve of the products it sells (`keeper`).
pub async fn grant(repo: Repo, keeper: Arc<Keeper>, to: DeviceId, ask: RightsAsk) -> RightsAnswer {
    let me = repo.identity().device_id;
    let held = match repo.rights(&ask.product) {
        Ok(r) => r.held_by(&me),
        Err(e) => {
            return RightsAnswer::Refused {
                reason: format!("this device could not read its rights: {e}"),
            };
        }
    };
    let own_reserve = if keeper.recent().contains(&ask.product) {
        keeper.reserve
    } else {
        0
    };
    let qty = grant_units(held, ask.need, ask.want, own_reserve);
    if qty == 0 {
        return RightsAnswer::Refused {
            reason: "this device holds no rights to that product".into(),
        };
    }
    let given = repo
        .execute(RepoCommand::GiveRights(GiveRights {
            product_id: Some(ask.product),
            sku: None,
            to,
            qty,
        }))
        .await;
    match given.and_then(|w| {
        repo.entry(&w.author, w.seq)
            .map_err(|e| WriteError::Storage(e.to_string()))
    }) {
        Ok(Some(entry)) => RightsAnswer::Granted { entry },
        Ok(None) => RightsAnswer::Refused {
            reason: "the transfer was written but cannot be read back".into(),
        },
        Err(e) => RightsAnswer::Refused {
            reason: e.to_string(),
        },
    }
}

/// Why a till could not get rights from its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreached {
    /// Devices hold rights, but none of them is connected.
    Offline,
    /// Nobody else holds any.
    NoHolder,
    /// Holders were asked and none answered in time: the connections may be dead (a pulled
    /// cable is noticed only when pings fail).
    NoAnswer,
    /// Holders were asked and gave too little (they sold them meanwhile, or refused).
    Short,
}

/// The asker's side: asks connected holders for `need` units for a sale in hand and `want`
/// more towards its reserve, holders with the most first, and ingests what they grant.
/// Returns the units granted.
pub async fn ask(
    repo: &Repo,
    network: &Network,
    product: DocId,
    need: i64,
    want: i64,
) -> Result<i64, Unreached> {
    let me = repo.identity().device_id;
    let deadline = tokio::time::Instant::now() + ASK_WAIT;
    let lock = network.rights.asking(product);
    let Ok(_one_at_a_time) = tokio::time::timeout_at(deadline, lock.lock()).await else {
        return Err(Unreached::NoAnswer);
    };
    let rights = repo.rights(&product).unwrap_or_default();
    // An ask that finished while this one waited may have brought enough (given to this
    // till and not yet taken: its next sale takes it).
    if need > 0 && rights.held_by(&me) + rights.open_to(&me) >= need {
        return Ok(0);
    }
    let mut holders: Vec<(DeviceId, i64)> = rights
        .held
        .into_iter()
        .filter(|(d, u)| *d != me && *u > 0)
        .collect();
    if holders.is_empty() {
        return Err(Unreached::NoHolder);
    }
    holders.sort_by_key(|(_, u)| std::cmp::Reverse(*u));
    let connected: Vec<String> = network
        .status()
        .peers
        .into_iter()
        .map(|p| p.peer_id)
        .collect();
    let mut asks = Vec::new();
    let mut covered = 0;
    for (device, units) in holders {
        let Some(peer) = peer_of_device(&device) else {
            continue;
        };
        if !connected.contains(&peer.to_string()) {
            continue;
        }
        let still = (need - covered).max(0);
        network.rights.asks.fetch_add(1, Ordering::Relaxed);
        asks.push(network.ask_rights(
            peer,
            RightsAsk {
                product,
                need: still,
                want: still + want,
            },
        ));
        covered += units;
        if covered >= need {
            break;
        }
    }
    if asks.is_empty() {
        return Err(Unreached::Offline);
    }
    let answers = tokio::time::timeout_at(deadline, futures_util::future::join_all(asks))
        .await
        .unwrap_or_default();
    if answers.iter().all(Option::is_none) {
        return Err(Unreached::NoAnswer);
    }
    let mut granted = 0;
    for answer in answers {
        let Some(RightsAnswer::Granted { entry }) = answer else {
            continue;
        };
        let Ok(entry) = SignedEntry::decode(&entry) else {
            continue;
        };
        let qty = transfer_units(&entry, &me);
        let (author, seq) = (entry.entry.author, entry.entry.seq);
        match repo.ingest(entry).await {
            Ok(IngestOutcome::Applied | IngestOutcome::Duplicate) => granted += qty,
            // The holder's entries before the transfer are on their way (it pushes each as
            // it commits): the transfer is held once they are, through sync.
            Ok(_) => {
                while tokio::time::Instant::now() < deadline {
                    if repo.version_vector().is_ok_and(|vv| vv.get(&author) >= seq) {
                        granted += qty;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Err(_) => {}
        }
    }
    network
        .rights
        .units_received
        .fetch_add(granted.max(0) as u64, Ordering::Relaxed);
    if granted >= need {
        Ok(granted)
    } else {
        Err(Unreached::Short)
    }
}

/// Units of rights an entry passes to `to`, read from its transfer's change.
fn transfer_units(entry: &SignedEntry, to: &DeviceId) -> i64 {
    let mut units = 0;
    for d in entry
        .docs()
        .iter()
        .filter(|d| d.doc_type == tillmesh_protocol::DocType::StockTransfer)
    {
        let mut doc = automerge::AutoCommit::new();
        if d.changes.iter().all(|c| doc.load_incremental(c).is_ok())
            && let Ok(t) =
                tillmesh_protocol::docmap::read::<tillmesh_protocol::schema::StockTransfer>(&doc)
            && t.to == *to
        {
            units += t.qty;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::grant_units;

    #[test]
    fn a_holder_gives_what_is_needed_and_half_its_spare_towards_a_reserve() {
        // A back office that sells nothing keeps no reserve.
        assert_eq!(grant_units(100, 1, 11, 0), 11);
        assert_eq!(grant_units(10, 1, 11, 0), 5);
        assert_eq!(grant_units(3, 5, 15, 0), 3);
        assert_eq!(grant_units(1, 1, 11, 0), 1);
        assert_eq!(grant_units(0, 1, 11, 0), 0);
        assert_eq!(grant_units(-2, 1, 11, 0), 0);
        // A till gives a sale what it needs out of its own reserve, but tops up another's
        // reserve only from above its own: two tills never pass units back and forth.
        assert_eq!(grant_units(6, 1, 11, 10), 1);
        assert_eq!(grant_units(6, 0, 6, 10), 0);
        assert_eq!(grant_units(30, 0, 10, 10), 10);
    }
}
