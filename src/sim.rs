//! Deterministic simulation of a mesh: 3 to 8 nodes, each the real repo (redb file, write-ahead
//! log, writer thread) driven by the real sync core, exchanging real encoded messages through
//! a simulated network that a seed controls.
//!
//! The seed decides everything the harness decides: how many nodes, which node writes what and
//! when, which links are cut and mended, which messages are dropped, duplicated or delayed
//! (and so reordered), and which nodes lose power and come back with only what they had
//! committed. Time is virtual; every store call is awaited in turn, so a run is one sequence.
//! Device keys come from the seed too. What the seed does not fix: document ids and
//! timestamps, which the repo draws from the clock and the OS; they never steer the
//! schedule (choices among documents are made in an order the seed fixes), so a replayed seed
//! takes the same path.
//!
//! The races the mesh must converge under are in the schedule: the owner and an admin revoke
//! devices and change their roles while those devices, apart, go on writing (and the admin
//! may itself be revoked while it acts); two nodes void and refund one sale at once; managers
//! add tax codes to the settings while others create products that use them; tills sell a
//! strict product from their own rights and pass rights to each other while apart.
//!
//! After the schedule, everything heals: links mended, faults off, every node up. The run
//! then checks that
//! - all nodes converge: the same version vector, the same view of every document, the same
//!   stock level of every product and the same money taken;
//! - no acknowledged write is missing anywhere (created documents exist, voids hold), unless
//!   the membership says its entry does not stand (then every node lists it as undone);
//! - a strict product is never oversold: its level and every device's rights stay at or above
//!   zero, the rights (and those in transit) add up to the level, the same on every node;
//! - no entry was applied twice: on each node, the entries the store reported as newly
//!   applied number exactly the entries it holds from other devices;
//! - no honest entry was refused, and no honest peer was disconnected.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_node::replication;
use tillmesh_node::repo::requests::{
    CustomerPatch, NewCustomer, NewProduct, NewStockAdjustment, RefundSale, SetTaxRate, VoidSale,
};
use tillmesh_node::repo::{Command, MemberCommand, WriteError};
use tillmesh_node::store::{checkpoint_copy_path, store_path};
use tillmesh_protocol::sync::{Config, Message, Output, Sync, Verdict};
use tillmesh_protocol::{Currency, DeviceKey, DocId, DocType, Role};

/// Virtual milliseconds of writes and faults before everything heals.
const SCHEDULE_MS: u64 = 20_000;
/// After healing, the mesh must converge within this much virtual time.
const CONVERGE_MS_MAX: u64 = 300_000;
const TICK_MS: u64 = 50;
const PRODUCTS: [&str; 4] = ["TEA-1", "MUG-1", "CAKE-1", STRICT];
/// A strict product (its stock held as rights per device): the owner holds its opening stock,
/// and passes rights on by transfers in the schedule.
const STRICT: &str = "CUP-S";
const STRICT_OPENING: i64 = 30;

/// A small, seedable generator (SplitMix64): the harness's only source of choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// What one seed's run did, for the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub writes_acked: u64,
    pub writes_refused: u64,
    pub crashes: u64,
    pub link_cuts: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub entries: u64,
    pub membership_changes: u64,
    pub void_refund_races: u64,
    /// Sales, transfers and adjustments refused because their device lacked the rights.
    pub out_of_stock: u64,
    /// Transfers of rights and reclaims of a revoked device's rights acknowledged.
    pub transfers: u64,
    pub reclaims: u64,
    /// Entries held but not applied at the end (the membership says they do not stand).
    pub undone: u64,
    /// Of those: spends their author's standing entries do not cover, and reclaims of a device
    /// whose revocation does not count (so the run shows it reaches those paths).
    pub undone_spends: u64,
    pub undone_reclaims: u64,
    pub converged_after_heal_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("seed {seed}: {what}")]
    Invariant { seed: u64, what: String },
    #[error("seed {seed}: the store failed: {detail}")]
    Store { seed: u64, detail: String },
}

#[derive(Debug, Clone)]
enum Wire {
    Request,
    Response,
    Push,
}

#[derive(Debug)]
enum Event {
    Tick,
    Write {
        node: usize,
    },
    Deliver {
        from: usize,
        to: usize,
        epoch: u64,
        wire: Wire,
        bytes: Vec<u8>,
    },
    Cut {
        a: usize,
        b: usize,
    },
    Mend {
        a: usize,
        b: usize,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    /// `by` (the owner or the admin) revokes `target`.
    Revoke {
        by: usize,
        target: usize,
    },
    /// `by` gives `target` another role.
    ChangeRole {
        by: usize,
        target: usize,
        role: Role,
    },
    /// `a` voids a sale while `b`, at the same moment, refunds part of it.
    VoidAndRefund {
        a: usize,
        b: usize,
    },
    Heal,
}

struct Node {
    dir: PathBuf,
    repo: Option<Repo>,
    sync: Sync<usize>,
    committed:
        Option<tokio::sync::broadcast::Receiver<std::sync::Arc<tillmesh_protocol::SignedEntry>>>,
    /// Entries the store reported as newly applied from other devices, across restarts.
    applied: u64,
}

/// A write that was acknowledged, to look for at the end: every node must hold its entry
/// `(author, seq)`, and what it did must show unless that entry does not stand.
#[derive(Debug, Clone)]
struct Acked {
    author: tillmesh_protocol::DeviceId,
    seq: u64,
    did: Did,
}

#[derive(Debug, Clone)]
enum Did {
    /// Nothing to look for beyond the entry.
    Wrote,
    Created(DocId),
    Voided(DocId),
}

struct Faults {
    drop_per_mille: u64,
    dup_per_mille: u64,
    delay_ms_max: u64,
}

pub struct Sim {
    seed: u64,
    rng: Rng,
    now_ms: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Event>,
    next_event: u64,
    nodes: Vec<Node>,
    link_up: Vec<Vec<bool>>,
    /// Bumped whenever the connection between two nodes comes or goes: a message of an older
    /// connection is never delivered on a newer one.
    epoch: Vec<Vec<u64>>,
    faults: Faults,
    healed: bool,
    acked: Vec<Acked>,
    report: Report,
    trace: bool,
    customers_made: u64,
    products_made: u64,
    /// Each node's device id, by node.
    devices: Vec<tillmesh_protocol::DeviceId>,
}

fn sim_config() -> Config {
    Config {
        pull_interval_ms: 1_000,
        pull_timeout_ms: 5_000,
        retry_ms_min: 100,
        retry_ms_max: 4_000,
        // Small batches, so a run crosses many batch boundaries.
        batch_entries_max: 16,
        batch_bytes_max: 64 * 1024,
        ..Config::default()
    }
}

impl Sim {
    fn store_err(&self, e: impl std::fmt::Display) -> SimError {
        SimError::Store {
            seed: self.seed,
            detail: e.to_string(),
        }
    }

    fn broken(&self, what: impl Into<String>) -> SimError {
        SimError::Invariant {
            seed: self.seed,
            what: what.into(),
        }
    }

    fn at(&mut self, time_ms: u64, event: Event) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((time_ms, id)));
        self.events.insert(id, event);
    }

    fn device(&self, node: usize) -> tillmesh_protocol::DeviceId {
        self.devices[node]
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        a != b && self.link_up[a][b] && self.nodes[a].repo.is_some() && self.nodes[b].repo.is_some()
    }

    /// Recomputes one link's connection after anything changed: tells both cores.
    fn relink(&mut self, a: usize, b: usize, was: bool) {
        let now = self.connected(a, b);
        if now == was {
            return;
        }
        self.epoch[a][b] += 1;
        self.epoch[b][a] += 1;
        let t = self.now_ms;
        for (x, y) in [(a, b), (b, a)] {
            if self.nodes[x].repo.is_some() {
                if now {
                    self.nodes[x].sync.connected(y, t);
                } else {
                    self.nodes[x].sync.disconnected(&y);
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, wire: Wire, message: &Message) {
        if !self.connected(from, to) {
            return;
        }
        self.report.messages_sent += 1;
        if self.rng.chance(self.faults.drop_per_mille) {
            self.report.messages_dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.faults.dup_per_mille) {
            self.report.messages_duplicated += 1;
            2
        } else {
            1
        };
        let bytes = message.encode();
        for _ in 0..copies {
            let delay = 1 + self.rng.below(self.faults.delay_ms_max);
            let epoch = self.epoch[from][to];
            let at = self.now_ms + delay;
            self.at(
                at,
                Event::Deliver {
                    from,
                    to,
                    epoch,
                    wire: wire.clone(),
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Carries out everything node `i`'s core asked for, until it asks nothing more.
    async fn pump(&mut self, i: usize) -> Result<(), SimError> {
        loop {
            // Own commits first: the core publishes them.
            let node = &mut self.nodes[i];
            if let Some(rx) = &mut node.committed {
                while let Ok(e) = rx.try_recv() {
                    node.sync.committed((*e).clone());
                }
            }
            let Some(out) = self.nodes[i].sync.poll() else {
                return Ok(());
            };
            let Some(repo) = self.nodes[i].repo.clone() else {
                return Ok(());
            };
            match out {
                Output::Pull {
                    peer,
                    entries_max,
                    bytes_max,
                } => {
                    let have = repo.version_vector().map_err(|e| self.store_err(e))?;
                    let m = Message::Pull {
                        have,
                        entries_max,
                        bytes_max,
                    };
                    self.send(i, peer, Wire::Request, &m);
                }
                Output::Publish(m) => {
                    for peer in 0..self.nodes.len() {
                        self.send(i, peer, Wire::Push, &m);
                    }
                }
                Output::Apply { source, entries } => {
                    let (results, vv) = replication::apply(&repo, entries)
                        .await
                        .map_err(|e| self.store_err(e))?;
                    for (e, v) in &results {
                        match v {
                            Verdict::Applied => self.nodes[i].applied += 1,
                            Verdict::Rejected | Verdict::Forged => {
                                let reason = repo
                                    .rejected(1)
                                    .ok()
                                    .and_then(|(_, r)| r.into_iter().next())
                                    .map(|r| r.reason)
                                    .unwrap_or_default();
                                return Err(self.broken(format!(
                                    "node {i} refused an honest entry {}:{} (node {}'s, of {:?}): {reason}",
                                    e.entry.author.short(),
                                    e.entry.seq,
                                    self.devices
                                        .iter()
                                        .position(|d| *d == e.entry.author)
                                        .map_or("?".to_owned(), |n| n.to_string()),
                                    e.docs()
                                        .iter()
                                        .map(|d| (d.doc_type, d.doc_id.to_string()))
                                        .collect::<Vec<_>>()
                                )));
                            }
                            _ => {}
                        }
                    }
                    let t = self.now_ms;
                    self.nodes[i].sync.applied(source, results, &vv, t);
                }
                Output::Disconnect { peer, reason } => {
                    return Err(self.broken(format!(
                        "node {i} disconnected honest node {peer}: {reason}"
                    )));
                }
            }
        }
    }

    async fn deliver(
        &mut self,
        from: usize,
        to: usize,
        epoch: u64,
        wire: Wire,
        bytes: Vec<u8>,
    ) -> Result<(), SimError> {
        if !self.connected(from, to) || self.epoch[from][to] != epoch {
            self.report.messages_dropped += 1;
            return Ok(());
        }
        let message = Message::decode(&bytes)
            .map_err(|e| self.broken(format!("an honest message does not decode: {e}")))?;
        let t = self.now_ms;
        match wire {
            Wire::Request => {
                let Message::Pull {
                    have,
                    entries_max,
                    bytes_max,
                } = message
                else {
                    return Err(self.broken("a request that is not a pull"));
                };
                let repo = self.nodes[to].repo.clone().expect("connected implies up");
                let answer = replication::serve(&repo, &have, entries_max, bytes_max)
                    .map_err(|e| self.store_err(e))?;
                self.send(to, from, Wire::Response, &answer);
            }
            Wire::Response => self.nodes[to].sync.received(&from, message, t),
            Wire::Push => self.nodes[to].sync.pushed(&from, message),
        }
        self.pump(to).await
    }

    async fn write(&mut self, mut i: usize) -> Result<(), SimError> {
        let Some(mut repo) = self.nodes[i].repo.clone() else {
            return Ok(());
        };
        let pick = self.rng.below(100);
        let command = if pick < 55 {
            let sku = PRODUCTS[self.rng.below(PRODUCTS.len() as u64) as usize];
            let qty = 1 + self.rng.below(3);
            Some(Command::Sell(serde(json!({
                "lines": [{ "sku": sku, "qty": qty }],
                "payments": [{ "method": "card" }],
            }))))
        } else if pick < 62 {
            // Names are unique, so choosing among customers by name never depends on ids.
            self.customers_made += 1;
            let n = self.customers_made;
            Some(Command::CreateCustomer(serde::<NewCustomer>(json!({
                "display_name": format!("Customer {i}-{n}"),
            }))))
        } else if pick < 69 {
            // Another device's customer, often: its changes must wait for the creation.
            let target = self.pick_doc(&repo, DocType::Customer, "display_name")?;
            let n = self.rng.below(1000);
            target.map(|id| Command::PatchCustomer {
                id,
                patch: serde::<CustomerPatch>(json!({ "email": format!("c{i}-{n}@example.com") })),
            })
        } else if pick < 76 {
            let target = self.pick_doc(&repo, DocType::Sale, "receipt_number")?;
            target.map(void)
        } else if pick < 83 {
            let target = self.pick_doc(&repo, DocType::Sale, "receipt_number")?;
            target.map(refund)
        } else if pick < 88 {
            // A tax code added (or its rate changed) by a manager, perhaps while another adds
            // a different one, or while a product somewhere already uses it.
            let code = format!("T{}", self.rng.below(4));
            let rate_ppm = 10_000 * (1 + self.rng.below(20)) as u32;
            Some(Command::SetTaxRate {
                code: code.clone(),
                rate: SetTaxRate {
                    name: code,
                    rate_ppm,
                },
            })
        } else if pick < 93 {
            // A product using a tax code this node holds, perhaps one just added and not yet
            // seen elsewhere.
            let mut codes: Vec<String> = repo
                .settings()
                .map(|s| s.tax_rates.keys().cloned().collect())
                .unwrap_or_default();
            codes.push("NON".into());
            let code = codes[self.rng.below(codes.len() as u64) as usize].clone();
            self.products_made += 1;
            let sku = format!("P-{i}-{}", self.products_made);
            Some(Command::CreateProduct(serde::<NewProduct>(json!({
                "sku": sku, "name": sku, "price": { "amount_minor": 400, "currency": "USD" },
                "tax_code": code, "stock": 50,
            }))))
        } else if pick < 96 {
            let sku = PRODUCTS[self.rng.below(PRODUCTS.len() as u64) as usize];
            let delta = self.rng.below(20) as i64 - 5;
            (delta != 0).then(|| {
                Command::AdjustStock(serde::<NewStockAdjustment>(json!({
                    "lines": [{ "sku": sku, "delta": delta }],
                    "reason": "count",
                })))
            })
        } else if pick < 98 {
            // Rights to the strict product passed to another device, perhaps more than this
            // one holds (refused), perhaps while the receiver is cut off.
            let open = repo
                .open_transfers_to(&self.device(i))
                .map_err(|e| self.store_err(e))?;
            let to = self.devices[self.rng.below(self.devices.len() as u64) as usize];
            let qty = 1 + self.rng.below(8);
            if let Some((product_id, _)) = open.first()
                && self.rng.chance(500)
            {
                // What was given to this device, taken into its own rights (as a running
                // till's keeper does).
                let accept = Command::AcceptRights {
                    product_id: *product_id,
                };
                self.execute(i, &repo, accept).await?;
                return self.pump(i).await;
            }
            // A device that holds none passes the write to the owner, who holds the most.
            let holds = |repo: &Repo, me| {
                strict_id(repo)
                    .and_then(|p| repo.rights(&p).ok())
                    .is_some_and(|r| r.held.iter().any(|(d, u)| *d == me && *u > 0))
            };
            if !holds(&repo, self.device(i))
                && let Some(owner) = self.nodes[0].repo.clone()
            {
                (i, repo) = (0, owner);
            }
            (to != self.device(i)).then(|| {
                Command::GiveRights(serde(json!({
                    "sku": STRICT, "to": to.to_string(), "qty": qty,
                })))
            })
        } else {
            // A revoked device's rights reclaimed, perhaps by two admins apart, perhaps before
            // its log has arrived (refused: not yet): by the owner or the admin (node 1).
            let by = self.rng.below(2) as usize;
            if let Some(admin) = self.nodes[by].repo.clone() {
                (i, repo) = (by, admin);
            }
            let membership = repo.membership();
            let revoked: Vec<_> = self
                .devices
                .iter()
                .filter(|d| membership.get(d).is_some_and(|m| m.last_seq.is_some()))
                .copied()
                .collect();
            let from = match revoked.len() {
                0 => self.devices[self.rng.below(self.devices.len() as u64) as usize],
                n => revoked[self.rng.below(n as u64) as usize],
            };
            strict_id(&repo).map(|product_id| Command::ReclaimRights { product_id, from })
        };
        let Some(command) = command else {
            return Ok(());
        };
        self.execute(i, &repo, command).await?;
        self.pump(i).await
    }

    /// Runs one command on node `i`, noting what was acknowledged.
    async fn execute(&mut self, i: usize, repo: &Repo, command: Command) -> Result<(), SimError> {
        let void = matches!(command, Command::Void { .. });
        let (transfer, reclaim) = (
            matches!(command, Command::GiveRights(_)),
            matches!(command, Command::ReclaimRights { .. }),
        );
        let creates = !matches!(
            command,
            Command::PatchCustomer { .. } | Command::SetTaxRate { .. } | Command::Member(_)
        );
        match repo.execute(command).await {
            Ok(w) => {
                self.report.writes_acked += 1;
                self.report.transfers += u64::from(transfer);
                self.report.reclaims += u64::from(reclaim);
                let did = if void {
                    Did::Voided(w.doc_id)
                } else if creates {
                    Did::Created(w.doc_id)
                } else {
                    Did::Wrote
                };
                self.acked.push(Acked {
                    author: w.author,
                    seq: w.seq,
                    did,
                });
                if self.trace {
                    eprintln!("{:>6} write on {i}: {}", self.now_ms, w.doc_id);
                }
            }
            // Refused by the rules (a void of a refunded sale, a patch that changes nothing,
            // a catalogue not synced yet, a role that may not, a device revoked): not
            // acknowledged, so nothing to find later.
            Err(
                WriteError::Invalid(_)
                | WriteError::BadRequest(_)
                | WriteError::NotFound { .. }
                | WriteError::UnknownProduct(_)
                | WriteError::Conflict(_)
                | WriteError::Forbidden(_)
                // A device cut off before its admission reached it.
                | WriteError::NotAdmitted,
            ) => self.report.writes_refused += 1,
            Err(WriteError::OutOfStock { .. }) => {
                self.report.writes_refused += 1;
                self.report.out_of_stock += 1;
            }
            Err(e) => return Err(self.store_err(e)),
        }
        Ok(())
    }

    /// A membership change by `by`, as its node sees the mesh now.
    async fn member_change(&mut self, by: usize, command: MemberCommand) -> Result<(), SimError> {
        let Some(repo) = self.nodes[by].repo.clone() else {
            return Ok(());
        };
        self.report.membership_changes += 1;
        self.execute(by, &repo, Command::Member(command)).await?;
        self.pump(by).await
    }

    /// `a` voids a sale and `b` refunds one unit of it, one right after the other, before
    /// either hears of the other's.
    async fn void_and_refund(&mut self, a: usize, b: usize) -> Result<(), SimError> {
        let (Some(ra), Some(rb)) = (self.nodes[a].repo.clone(), self.nodes[b].repo.clone()) else {
            return Ok(());
        };
        let Some(sale) = self.pick_doc(&ra, DocType::Sale, "receipt_number")? else {
            return Ok(());
        };
        if rb.view(&sale).map_err(|e| self.store_err(e))?.is_none() {
            return Ok(());
        }
        self.report.void_refund_races += 1;
        self.execute(a, &ra, void(sale)).await?;
        self.execute(b, &rb, refund(sale)).await?;
        self.pump(a).await?;
        self.pump(b).await
    }

    /// A document of `doc_type` the node holds, chosen by the seed in an order that does not
    /// depend on random ids (`key` is a field that is the same in every run).
    fn pick_doc(
        &mut self,
        repo: &Repo,
        doc_type: DocType,
        key: &str,
    ) -> Result<Option<DocId>, SimError> {
        let mut docs = repo
            .list(doc_type, None, 100_000)
            .map_err(|e| self.store_err(e))?;
        if docs.is_empty() {
            return Ok(None);
        }
        docs.sort_by(|a, b| a.1[key].to_string().cmp(&b.1[key].to_string()));
        let i = self.rng.below(docs.len() as u64) as usize;
        Ok(Some(docs[i].0))
    }

    /// Loses what a power cut loses: the store goes back to its last checkpoint (redb writes
    /// out what it holds when the handle closes, which a real power cut would not let it do);
    /// the write-ahead log keeps what was acknowledged since.
    fn crash(&mut self, i: usize) -> Result<(), SimError> {
        let before: Vec<bool> = (0..self.nodes.len())
            .map(|j| self.connected(i, j))
            .collect();
        if let Some(repo) = self.nodes[i].repo.take() {
            repo.power_cut();
            let dir = &self.nodes[i].dir;
            std::fs::copy(checkpoint_copy_path(dir), store_path(dir))
                .map_err(|e| self.store_err(e))?;
            self.report.crashes += 1;
        }
        self.nodes[i].committed = None;
        self.nodes[i].sync = Sync::new(sim_config());
        for (j, was) in before.into_iter().enumerate() {
            if j != i {
                self.relink(i, j, was);
            }
        }
        Ok(())
    }

    async fn restart(&mut self, i: usize) -> Result<(), SimError> {
        if self.nodes[i].repo.is_some() {
            return Ok(());
        }
        let before: Vec<bool> = (0..self.nodes.len())
            .map(|j| self.connected(i, j))
            .collect();
        let repo = Repo::open(&self.nodes[i].dir).map_err(|e| self.store_err(e))?;
        keep_checkpoints(&repo, &self.nodes[i].dir).map_err(|e| self.store_err(e))?;
        self.nodes[i].committed = Some(repo.subscribe_committed());
        self.nodes[i].repo = Some(repo);
        for (j, was) in before.into_iter().enumerate() {
            if j != i {
                self.relink(i, j, was);
                self.pump(j).await?;
            }
        }
        self.pump(i).await
    }

    fn set_link(&mut self, a: usize, b: usize, up: bool) {
        let was = self.connected(a, b);
        self.link_up[a][b] = up;
        self.link_up[b][a] = up;
        self.relink(a, b, was);
    }

    async fn converged(&self) -> Result<bool, SimError> {
        let mut first = None;
        for n in &self.nodes {
            let Some(repo) = &n.repo else {
                return Ok(false);
            };
            let vv = repo.version_vector().map_err(|e| self.store_err(e))?;
            match &first {
                None => first = Some(vv),
                Some(f) if *f != vv => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    }

    async fn step(&mut self, event: Event) -> Result<(), SimError> {
        if self.trace && !matches!(event, Event::Tick) {
            eprintln!("{:>6} {:?}", self.now_ms, short(&event));
        }
        match event {
            Event::Tick => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].repo.is_some() {
                        let t = self.now_ms;
                        self.nodes[i].sync.tick(t);
                        self.pump(i).await?;
                    }
                }
                let t = self.now_ms + TICK_MS;
                self.at(t, Event::Tick);
            }
            Event::Write { node } => {
                if !self.healed {
                    self.write(node).await?;
                }
            }
            Event::Deliver {
                from,
                to,
                epoch,
                wire,
                bytes,
            } => self.deliver(from, to, epoch, wire, bytes).await?,
            Event::Cut { a, b } => {
                if !self.healed {
                    self.report.link_cuts += 1;
                    self.set_link(a, b, false);
                }
            }
            Event::Mend { a, b } => {
                self.set_link(a, b, true);
                self.pump(a).await?;
                self.pump(b).await?;
            }
            Event::Crash { node } => {
                if !self.healed {
                    self.crash(node)?;
                }
            }
            Event::Restart { node } => self.restart(node).await?,
            Event::Revoke { by, target } => {
                if !self.healed {
                    let device = self.device(target);
                    self.member_change(by, MemberCommand::Revoke { device })
                        .await?;
                }
            }
            Event::ChangeRole { by, target, role } => {
                if !self.healed {
                    let device = self.device(target);
                    self.member_change(by, MemberCommand::ChangeRole { device, role })
                        .await?;
                }
            }
            Event::VoidAndRefund { a, b } => {
                if !self.healed {
                    self.void_and_refund(a, b).await?;
                }
            }
            Event::Heal => {
                self.healed = true;
                self.faults = Faults {
                    drop_per_mille: 0,
                    dup_per_mille: 0,
                    delay_ms_max: 5,
                };
                for i in 0..self.nodes.len() {
                    self.restart(i).await?;
                }
                for a in 0..self.nodes.len() {
                    for b in a + 1..self.nodes.len() {
                        self.set_link(a, b, true);
                    }
                }
                for i in 0..self.nodes.len() {
                    self.pump(i).await?;
                }
            }
        }
        Ok(())
    }

    /// Every invariant of the module docs, on the converged mesh.
    async fn check(&mut self) -> Result<(), SimError> {
        let repos: Vec<Repo> = self.nodes.iter().filter_map(|n| n.repo.clone()).collect();
        let mut dumps = Vec::new();
        let mut sums = Vec::new();
        let mut undones = Vec::new();
        let mut rights = Vec::new();
        for (i, repo) in repos.iter().enumerate() {
            let vv = repo.version_vector().map_err(|e| self.store_err(e))?;
            let own = vv.get(&repo.identity().device_id);
            if self.nodes[i].applied != vv.total() - own {
                return Err(self.broken(format!(
                    "node {i} applied {} entries from others but holds {}",
                    self.nodes[i].applied,
                    vv.total() - own
                )));
            }
            let (rejected, _) = repo.rejected(0).map_err(|e| self.store_err(e))?;
            if rejected != 0 {
                return Err(self.broken(format!("node {i} refused {rejected} entries")));
            }
            let mut dump = BTreeMap::new();
            for t in DocType::ALL {
                for (id, view) in repo
                    .list(t, None, 10_000_000)
                    .map_err(|e| self.store_err(e))?
                {
                    dump.insert(id, view);
                }
            }
            let (_, undone) = repo.undone(usize::MAX).map_err(|e| self.store_err(e))?;
            let because = |why: &str| undone.iter().filter(|u| u.record.reason == why).count();
            self.report.undone_spends = because(tillmesh_node::repo::SPENDS_UNHELD_RIGHTS) as u64;
            self.report.undone_reclaims = because(tillmesh_node::repo::RECLAIMS_FROM_MEMBER) as u64;
            let undone: std::collections::BTreeSet<(tillmesh_protocol::DeviceId, u64)> =
                undone.iter().map(|u| (u.author, u.seq)).collect();
            // Documents made by an entry that does not stand are gone; so are changes that build
            // on them (a void of such a sale, say).
            let gone = |id: &DocId| {
                self.acked.iter().any(|a| {
                    matches!(a.did, Did::Created(c) if c == *id)
                        && undone.contains(&(a.author, a.seq))
                })
            };
            for a in &self.acked {
                let stands = !undone.contains(&(a.author, a.seq));
                let ok = vv.get(&a.author) >= a.seq
                    && match a.did {
                        Did::Wrote => true,
                        Did::Created(id) => !stands || dump.contains_key(&id),
                        // The void is recorded; its status may lose to a concurrent refund's
                        // (the same on every node), which the conflict review is for.
                        Did::Voided(id) => {
                            !stands
                                || gone(&id)
                                || dump.get(&id).is_some_and(|v| !v["void"].is_null())
                        }
                    };
                if !ok {
                    return Err(self.broken(format!("node {i} lacks acknowledged write {a:?}")));
                }
            }
            self.report.entries = vv.total();
            self.report.undone = undone.len() as u64;
            rights.push(self.check_rights(i, repo, &dump)?);
            sums.push(stock_and_money(&dump));
            undones.push(undone);
            dumps.push(dump);
        }
        for (i, r) in rights.iter().enumerate().skip(1) {
            if *r != rights[0] {
                return Err(self.broken(format!(
                    "node {i} and node 0 hold different stock rights: {r:?} vs {:?}",
                    rights[0]
                )));
            }
        }
        for (i, (s, u)) in sums.iter().zip(&undones).enumerate().skip(1) {
            if *s != sums[0] {
                return Err(self.broken(format!(
                    "node {i} and node 0 differ in stock or money: {s:?} vs {:?}",
                    sums[0]
                )));
            }
            if *u != undones[0] {
                return Err(self.broken(format!(
                    "node {i} and node 0 list different entries as undone: {u:?} vs {:?}",
                    undones[0]
                )));
            }
        }
        for (i, d) in dumps.iter().enumerate().skip(1) {
            if *d != dumps[0] {
                let differing = d
                    .iter()
                    .find(|(id, v)| dumps[0].get(id) != Some(v))
                    .map(|(id, v)| format!("{id}: {v} vs {:?}", dumps[0].get(id)));
                return Err(self.broken(format!(
                    "node {i} and node 0 hold different documents ({} vs {}); first difference: {differing:?}",
                    d.len(),
                    dumps[0].len()
                )));
            }
        }
        Ok(())
    }
}

impl Sim {
    /// A strict product's invariants on one node: nothing sold beyond what was received (its
    /// level is not below zero), no device's rights below zero, and the rights (with those
    /// given and not yet accepted) adding up to the level. Every node's rights are compared
    /// through the product's view, which `check` compares across nodes.
    fn check_rights(
        &mut self,
        i: usize,
        repo: &Repo,
        dump: &BTreeMap<DocId, Value>,
    ) -> Result<Vec<(DocId, tillmesh_node::repo::StockRights)>, SimError> {
        let mut out = Vec::new();
        for (id, v) in dump {
            if v["type"] != "product" || v["stock_policy"] != "strict" {
                continue;
            }
            let level = v["stock"].as_i64().unwrap_or(0);
            let rights = repo.rights(id).map_err(|e| self.store_err(e))?;
            let held: i64 = rights.held.iter().map(|(_, u)| u).sum();
            if level < 0 || rights.held.iter().any(|(_, u)| *u < 0) {
                return Err(self.broken(format!(
                    "node {i}: strict product {} oversold: level {level}, rights {:?}",
                    v["sku"], rights
                )));
            }
            if held + rights.in_transit != level {
                return Err(self.broken(format!(
                    "node {i}: strict product {}: rights {held} + in transit {} != level {level}",
                    v["sku"], rights.in_transit
                )));
            }
            // Each device's rights are what its standing entries moved, less what a reclaim
            // took (by its own rules, outside the device's log).
            let mut from_rows = repo.rights_from_rows(id).map_err(|e| self.store_err(e))?;
            for r in dump.values().filter(|r| {
                r["type"] == "stock_transfer"
                    && r["reclaim"] == true
                    && r["product_id"].as_str() == Some(id.to_string().as_str())
            }) {
                if let Some(from) = r["from"].as_str().and_then(|s| s.parse().ok()) {
                    *from_rows.entry(from).or_default() -= r["qty"].as_i64().unwrap_or(0);
                }
            }
            from_rows.retain(|_, units| *units != 0);
            let by_device: BTreeMap<_, i64> = rights.held.iter().copied().collect();
            if by_device != from_rows {
                return Err(self.broken(format!(
                    "node {i}: strict product {}: rights {by_device:?}, but the standing entries' own moves give {from_rows:?}",
                    v["sku"]
                )));
            }
            out.push((*id, rights));
        }
        Ok(out)
    }
}

/// The strict product's id, as this node holds it.
fn strict_id(repo: &Repo) -> Option<DocId> {
    repo.product_by_sku(STRICT).ok().flatten()
}

/// Every product's stock level by SKU, and the money the sales took net of refunds (voided
/// sales took none), as one node's documents say.
fn stock_and_money(dump: &BTreeMap<DocId, Value>) -> (BTreeMap<String, i64>, i64) {
    let mut stock = BTreeMap::new();
    let mut money = 0i64;
    for (id, v) in dump {
        match v["type"].as_str() {
            Some("product") => {
                stock.insert(
                    format!("{} {id}", v["sku"]),
                    v["stock"].as_i64().unwrap_or(0),
                );
            }
            Some("sale") if v["status"] != "voided" => {
                money += v["total"]["amount_minor"].as_i64().unwrap_or(0);
            }
            Some("refund") => money -= v["total"]["amount_minor"].as_i64().unwrap_or(0),
            _ => {}
        }
    }
    (stock, money)
}

/// Keeps a copy of the store as of each checkpoint, starting with its state now (the writer is
/// idle: nothing is half-written).
fn keep_checkpoints(repo: &Repo, dir: &Path) -> std::io::Result<()> {
    repo.copy_at_checkpoints();
    std::fs::copy(store_path(dir), checkpoint_copy_path(dir)).map(drop)
}

fn void(sale_id: DocId) -> Command {
    Command::Void {
        sale_id,
        request: serde::<VoidSale>(json!({ "reason": "simulated" })),
    }
}

fn refund(sale_id: DocId) -> Command {
    Command::Refund {
        sale_id,
        request: serde::<RefundSale>(json!({ "lines": [{ "line": 0, "qty": 1 }] })),
    }
}

fn serde<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("the harness's requests are well-formed")
}

fn short(e: &Event) -> String {
    match e {
        Event::Deliver { from, to, wire, .. } => format!("deliver {wire:?} {from}->{to}"),
        other => format!("{other:?}"),
    }
}

/// Runs one seed in a fresh folder under `root`; `trace` prints every event.
pub async fn run_seed(seed: u64, root: &Path, trace: bool) -> Result<Report, SimError> {
    let mut rng = Rng::new(seed);
    let n = 3 + rng.below(6) as usize;
    let faults = Faults {
        drop_per_mille: rng.below(200),
        dup_per_mille: rng.below(100),
        delay_ms_max: 1 + rng.below(200),
    };
    let mut sim = Sim {
        seed,
        rng,
        now_ms: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_event: 0,
        nodes: Vec::new(),
        link_up: vec![vec![true; n]; n],
        epoch: vec![vec![0; n]; n],
        faults,
        healed: false,
        acked: Vec::new(),
        report: Report {
            seed,
            nodes: n,
            ..Report::default()
        },
        trace,
        customers_made: 0,
        products_made: 0,
        devices: Vec::new(),
    };
    // Keys from the seed, so author order (and with it every batch) is the same each run.
    let key = |i: usize| {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&seed.to_be_bytes());
        k[8] = i as u8;
        k[9] = 0x5e;
        DeviceKey::from_secret(k)
    };
    let owner_dir = root.join("node-0");
    let owner = Repo::init_with_key(&owner_dir, "Till 0", Currency::USD, key(0))
        .await
        .map_err(|e| sim.store_err(e))?;
    for sku in PRODUCTS {
        let (stock, policy) = if sku == STRICT {
            (STRICT_OPENING, "strict")
        } else {
            (1000, "track")
        };
        owner
            .execute(Command::CreateProduct(serde::<NewProduct>(json!({
                "sku": sku, "name": sku, "price": { "amount_minor": 250, "currency": "USD" },
                "stock": stock, "stock_policy": policy,
            }))))
            .await
            .map_err(|e| sim.store_err(e))?;
    }
    let root_id = owner.identity().device_id;
    let mut repos = vec![(owner_dir, owner)];
    for i in 1..n {
        let dir = root.join(format!("node-{i}"));
        let repo = Repo::join_with_key(&dir, &format!("Till {i}"), root_id, key(i))
            .map_err(|e| sim.store_err(e))?;
        // Admitted by the owner, as pairing would: node 1 as an admin (it changes the
        // membership too), the rest alternately as a till and a manager.
        let role = match i {
            1 => Role::Admin,
            i if i % 2 == 1 => Role::Till,
            _ => Role::Manager,
        };
        repos[0]
            .1
            .execute(Command::Member(MemberCommand::Add {
                device: repo.identity().device_id,
                role,
                name: format!("Till {i}"),
            }))
            .await
            .map_err(|e| sim.store_err(e))?;
        repos.push((dir, repo));
    }
    for (dir, repo) in repos {
        sim.devices.push(repo.identity().device_id);
        keep_checkpoints(&repo, &dir).map_err(|e| sim.store_err(e))?;
        sim.nodes.push(Node {
            dir,
            committed: Some(repo.subscribe_committed()),
            repo: Some(repo),
            sync: Sync::new(sim_config()),
            applied: 0,
        });
    }
    for a in 0..n {
        for b in a + 1..n {
            sim.relink(a, b, false);
        }
    }
    // The schedule.
    sim.at(0, Event::Tick);
    let writes = 40 + sim.rng.below(160);
    for _ in 0..writes {
        let t = sim.rng.below(SCHEDULE_MS);
        let node = sim.rng.below(n as u64) as usize;
        sim.at(t, Event::Write { node });
    }
    for _ in 0..sim.rng.below(2 * n as u64) {
        let (a, b) = (
            sim.rng.below(n as u64) as usize,
            sim.rng.below(n as u64) as usize,
        );
        if a == b {
            continue;
        }
        let t = sim.rng.below(SCHEDULE_MS);
        let len = 100 + sim.rng.below(8_000);
        sim.at(t, Event::Cut { a, b });
        sim.at(t + len, Event::Mend { a, b });
    }
    for _ in 0..sim.rng.below(4) {
        let node = sim.rng.below(n as u64) as usize;
        let t = sim.rng.below(SCHEDULE_MS);
        let len = 50 + sim.rng.below(5_000);
        sim.at(t, Event::Crash { node });
        sim.at(t + len, Event::Restart { node });
    }
    // The membership races: the owner or the admin (node 1) revokes a device or changes its
    // role while it writes, apart; the owner may revoke the admin while the admin acts.
    let admin = |rng: &mut Rng| if rng.chance(500) { 0 } else { 1 };
    if sim.rng.chance(500) {
        let by = admin(&mut sim.rng);
        let target = 1 + sim.rng.below(n as u64 - 1) as usize;
        let t = sim.rng.below(SCHEDULE_MS);
        sim.at(t, Event::Revoke { by, target });
    }
    if sim.rng.chance(500) {
        let by = admin(&mut sim.rng);
        let target = 1 + sim.rng.below(n as u64 - 1) as usize;
        let role = [Role::Till, Role::Manager, Role::Viewer][sim.rng.below(3) as usize];
        let t = sim.rng.below(SCHEDULE_MS);
        sim.at(t, Event::ChangeRole { by, target, role });
    }
    if sim.rng.chance(250) {
        let t = sim.rng.below(SCHEDULE_MS);
        sim.at(t, Event::Revoke { by: 0, target: 1 });
    }
    for _ in 0..sim.rng.below(3) {
        let (a, b) = (
            sim.rng.below(n as u64) as usize,
            sim.rng.below(n as u64) as usize,
        );
        if a != b {
            let t = sim.rng.below(SCHEDULE_MS);
            sim.at(t, Event::VoidAndRefund { a, b });
        }
    }
    sim.at(SCHEDULE_MS, Event::Heal);
    for i in 0..n {
        sim.pump(i).await?;
    }
    let mut checked_at = 0;
    while let Some(Reverse((t, id))) = sim.queue.pop() {
        sim.now_ms = t;
        let event = sim
            .events
            .remove(&id)
            .expect("every queued event is stored");
        sim.step(event).await?;
        if sim.healed && t >= checked_at + 250 {
            checked_at = t;
            if sim.converged().await? {
                sim.report.converged_after_heal_ms = t - SCHEDULE_MS;
                break;
            }
            if t > SCHEDULE_MS + CONVERGE_MS_MAX {
                let mut state = String::new();
                for (i, node) in sim.nodes.iter().enumerate() {
                    let vv = node.repo.as_ref().map(|r| r.version_vector());
                    let peers: Vec<String> = node
                        .sync
                        .peers()
                        .map(|(p, s)| format!("{p}:{s:?}"))
                        .collect();
                    state.push_str(&format!(
                        "\n node {i}: vv {vv:?}, parked {}, peers {peers:?}",
                        node.sync.parked()
                    ));
                }
                return Err(sim.broken(format!(
                    "not converged {CONVERGE_MS_MAX} ms after healing:{state}"
                )));
            }
        }
    }
    sim.check().await?;
    Ok(sim.report)
}
