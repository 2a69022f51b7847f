//! Replication between peers, as a state machine with no I/O.
//!
//! Two mechanisms, one for speed and one for certainty:
//!
//! - **Push.** Every entry this device commits is published to all peers at once
//!   ([`Output::Publish`]). A peer that finds a gap behind a pushed entry pulls.
//! - **Pull (anti-entropy).** Per peer, one pull at a time: send our version vector, receive the
//!   entries we lack in author order, in batches bounded by count and bytes, apply them, and ask
//!   again until the peer's version vector is covered. Then pull again every
//!   [`Config::pull_interval_ms`], so a lost push is found within that interval. The summary is
//!   O(authors), never O(documents). One outstanding request per peer is the flow control: a
//!   peer never sends a batch we did not ask for.
//!
//! An entry that builds on another author's change we do not hold yet comes back from the
//! store as [`Verdict::Deferred`]; it is parked here (bounded) with the later entries of its
//! author, and retried whenever something new is applied. Anything parked and then dropped is
//! simply pulled again, so parking only saves round trips and never decides correctness.
//!
//! The driver (the libp2p node, or the deterministic simulation in `tests/`) feeds in
//! connections, messages, verdicts and time, performs the [`Output`]s in order, and owns the
//! store. Nothing here reads a clock or a socket.

pub mod wire;

use std::collections::{BTreeMap, VecDeque};

use crate::entry::SignedEntry;
use crate::ids::DeviceId;
use crate::vv::VersionVector;

pub use wire::{Message, WireError};

#[derive(Debug, Clone)]
pub struct Config {
    /// How often a converged peer is asked again; bounds how long a lost push goes unnoticed.
    pub pull_interval_ms: u64,
    /// A pull with no answer after this long counts as failed.
    pub pull_timeout_ms: u64,
    /// First wait after a failed pull; doubles per failure up to `retry_ms_max`.
    pub retry_ms_min: u64,
    pub retry_ms_max: u64,
    /// What we ask one response to hold at most.
    pub batch_entries_max: u32,
    pub batch_bytes_max: u32,
    /// Entries waiting for another author's entries, at most.
    pub parked_entries_max: usize,
    pub parked_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            pull_interval_ms: 1_000,
            pull_timeout_ms: 30_000,
            retry_ms_min: 250,
            retry_ms_max: 30_000,
            batch_entries_max: wire::BATCH_ENTRIES_MAX as u32,
            batch_bytes_max: wire::BATCH_BYTES_MAX as u32,
            parked_entries_max: 50_000,
            parked_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// What the store made of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    Duplicate,
    /// Entries of this author up to `have` are held; the ones between are missing.
    Gap {
        have: u64,
    },
    /// It needs another author's entries first.
    Deferred,
    /// Refused by the rules (kept aside by the store). Not the sender's fault by itself: it may
    /// relay an author's fork.
    Rejected,
    /// The signature does not hold: no honest peer relays such an entry.
    Forged,
}

/// Where entries handed to the store came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source<P> {
    Pull(P),
    Push(P),
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send `peer` a [`Message::Pull`] with our current version vector and these limits; report
    /// the answer with [`Sync::received`] or its failure with [`Sync::pull_failed`].
    Pull {
        peer: P,
        entries_max: u32,
        bytes_max: u32,
    },
    /// Send this message to every connected peer.
    Publish(Message),
    /// Hand these entries to the store in this order; report with [`Sync::applied`].
    Apply {
        source: Source<P>,
        entries: Vec<SignedEntry>,
    },
    /// Close the connection: the peer sent what no honest peer sends.
    Disconnect { peer: P, reason: String },
}

#[derive(Debug, Clone)]
enum PullState {
    Idle,
    Waiting { since_ms: u64 },
    Applying { more: bool, holder: VersionVector },
}

#[derive(Debug, Clone)]
struct Peer {
    pull: PullState,
    next_pull_ms: u64,
    failures: u32,
    synced: bool,
    pulls: u64,
    entries_received: u64,
    /// What the peer held when it last answered a pull.
    holder: Option<VersionVector>,
}

impl Peer {
    fn sync(&self) -> PeerSync {
        PeerSync {
            synced: self.synced,
            pulls: self.pulls,
            entries_received: self.entries_received,
            failures: self.failures,
            holder: self.holder.clone(),
        }
    }
}

/// How replication with one peer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSync {
    /// The last pull covered everything the peer held.
    pub synced: bool,
    pub pulls: u64,
    pub entries_received: u64,
    /// Pulls failed in a row.
    pub failures: u32,
    /// What the peer held when it last answered a pull: with ours, how far apart we are.
    pub holder: Option<VersionVector>,
}

/// The replication state machine of one node, over peers named by `P`.
#[derive(Debug)]
pub struct Sync<P> {
    config: Config,
    peers: BTreeMap<P, Peer>,
    parked: BTreeMap<(DeviceId, u64), SignedEntry>,
    parked_bytes: usize,
    /// A retry of parked entries is with the store.
    parked_retrying: bool,
    /// Progress was made while a retry was with the store: retry again when it reports.
    parked_retry_wanted: bool,
    outputs: VecDeque<Output<P>>,
}

impl<P: Ord + Clone + std::fmt::Debug> Sync<P> {
    pub fn new(config: Config) -> Self {
        Sync {
            config,
            peers: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_bytes: 0,
            parked_retrying: false,
            parked_retry_wanted: false,
            outputs: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The next thing to do, in order.
    pub fn poll(&mut self) -> Option<Output<P>> {
        self.outputs.pop_front()
    }

    pub fn connected(&mut self, peer: P, now_ms: u64) {
        self.peers.entry(peer).or_insert(Peer {
            pull: PullState::Idle,
            next_pull_ms: now_ms,
            failures: 0,
            synced: false,
            pulls: 0,
            entries_received: 0,
            holder: None,
        });
        self.tick(now_ms);
    }

    pub fn disconnected(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    pub fn peers(&self) -> impl Iterator<Item = (&P, PeerSync)> {
        self.peers.iter().map(|(p, s)| (p, s.sync()))
    }

    pub fn peer(&self, peer: &P) -> Option<PeerSync> {
        self.peers.get(peer).map(Peer::sync)
    }

    /// Entries waiting for other authors' entries.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Starts the pulls that are due and times out the ones that are overdue.
    pub fn tick(&mut self, now_ms: u64) {
        let mut due = Vec::new();
        for (id, p) in &mut self.peers {
            match p.pull {
                PullState::Idle if p.next_pull_ms <= now_ms => due.push(id.clone()),
                PullState::Waiting { since_ms }
                    if now_ms.saturating_sub(since_ms) >= self.config.pull_timeout_ms =>
                {
                    p.failures = p.failures.saturating_add(1);
                    p.pull = PullState::Idle;
                    p.next_pull_ms = now_ms + backoff_ms(&self.config, p.failures);
                }
                _ => {}
            }
        }
        for id in due {
            if let Some(p) = self.peers.get_mut(&id) {
                p.pull = PullState::Waiting { since_ms: now_ms };
                p.pulls += 1;
                self.outputs.push_back(Output::Pull {
                    peer: id,
                    entries_max: self.config.batch_entries_max,
                    bytes_max: self.config.batch_bytes_max,
                });
            }
        }
    }

    /// The earliest time `tick` has something to do, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.peers
            .values()
            .filter_map(|p| match p.pull {
                PullState::Idle => Some(p.next_pull_ms),
                PullState::Waiting { since_ms } => Some(since_ms + self.config.pull_timeout_ms),
                PullState::Applying { .. } => None,
            })
            .min()
    }

    /// Our pull to `peer` got no answer (timeout, closed stream, undecodable answer).
    pub fn pull_failed(&mut self, peer: &P, now_ms: u64) {
        if let Some(p) = self.peers.get_mut(peer)
            && matches!(p.pull, PullState::Waiting { .. })
        {
            p.failures = p.failures.saturating_add(1);
            p.synced = false;
            p.pull = PullState::Idle;
            p.next_pull_ms = now_ms + backoff_ms(&self.config, p.failures);
        }
    }

    /// The answer to our pull.
    pub fn received(&mut self, peer: &P, message: Message, now_ms: u64) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if !matches!(p.pull, PullState::Waiting { .. }) {
            return; // An answer after its timeout: the next pull asks again.
        }
        match message {
            Message::Entries {
                entries,
                holder,
                more,
            } => {
                let limit = self.config.batch_entries_max as usize;
                if entries.len() > limit {
                    let reason = format!(
                        "sent {} entries for a pull of at most {limit}",
                        entries.len()
                    );
                    self.misbehaved(peer, reason);
                    return;
                }
                p.entries_received += entries.len() as u64;
                p.holder = Some(holder.clone());
                p.pull = PullState::Applying { more, holder };
                self.outputs.push_back(Output::Apply {
                    source: Source::Pull(peer.clone()),
                    entries,
                });
            }
            other => {
                let reason = format!("answered a pull with {}", kind(&other));
                self.misbehaved(peer, reason);
                self.pull_failed(peer, now_ms);
            }
        }
    }

    /// A message the peer sent us unasked (a push).
    pub fn pushed(&mut self, peer: &P, message: Message) {
        if !self.peers.contains_key(peer) {
            return;
        }
        match message {
            Message::Push { entry } => self.outputs.push_back(Output::Apply {
                source: Source::Push(peer.clone()),
                entries: vec![entry],
            }),
            other => {
                let reason = format!("pushed {}", kind(&other));
                self.misbehaved(peer, reason)
            }
        }
    }

    /// A peer sent bytes that are not a sync message.
    pub fn malformed(&mut self, peer: &P, error: &WireError) {
        self.misbehaved(peer, format!("sent a malformed sync message: {error}"));
    }

    /// This device committed an entry: tell everyone.
    pub fn committed(&mut self, entry: SignedEntry) {
        if !self.peers.is_empty() {
            self.outputs
                .push_back(Output::Publish(Message::Push { entry }));
        }
    }

    /// The store's verdicts on an [`Output::Apply`], one per entry in order, and our version
    /// vector after it.
    pub fn applied(
        &mut self,
        source: Source<P>,
        results: Vec<(SignedEntry, Verdict)>,
        local: &VersionVector,
        now_ms: u64,
    ) {
        let mut progress = false;
        let mut forged = None;
        let mut gap_behind_push = false;
        for (entry, verdict) in results {
            match verdict {
                Verdict::Applied => progress = true,
                Verdict::Duplicate | Verdict::Rejected => {}
                Verdict::Deferred => self.park(entry),
                Verdict::Gap { have } => {
                    let author = entry.entry.author;
                    if self.parked.contains_key(&(author, have + 1)) {
                        self.park(entry);
                    } else if matches!(source, Source::Push(_)) {
                        gap_behind_push = true;
                    }
                }
                Verdict::Forged => {
                    forged.get_or_insert(entry.entry.seq);
                }
            }
        }
        if matches!(source, Source::Parked) {
            self.parked_retrying = false;
        }
        match &source {
            Source::Pull(peer) | Source::Push(peer) if forged.is_some() => {
                self.misbehaved(peer, "sent an entry whose signature does not hold".into());
            }
            Source::Pull(peer) => self.pull_done(peer, progress, local, now_ms),
            Source::Push(peer) if gap_behind_push => {
                // A push we cannot place yet: something was lost, so pull now.
                if let Some(p) = self.peers.get_mut(peer) {
                    p.synced = false;
                    p.next_pull_ms = p.next_pull_ms.min(now_ms);
                }
            }
            _ => {}
        }
        if progress && self.parked_retrying {
            self.parked_retry_wanted = true;
        }
        let wanted = progress
            || (matches!(source, Source::Parked) && std::mem::take(&mut self.parked_retry_wanted));
        if wanted && !self.parked.is_empty() && !self.parked_retrying {
            let entries: Vec<SignedEntry> =
                std::mem::take(&mut self.parked).into_values().collect();
            self.parked_bytes = 0;
            self.parked_retrying = true;
            self.outputs.push_back(Output::Apply {
                source: Source::Parked,
                entries,
            });
        }
        self.tick(now_ms);
    }

    fn pull_done(&mut self, peer: &P, progress: bool, local: &VersionVector, now_ms: u64) {
        let config = &self.config;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        // Only the pull being applied is done; a stale report (from before a reconnect)
        // leaves whatever state the peer is in now.
        let (more, holder) = match std::mem::replace(&mut p.pull, PullState::Idle) {
            PullState::Applying { more, holder } => (more, holder),
            other => {
                p.pull = other;
                return;
            }
        };
        if !more && local.dominates(&holder) {
            p.synced = true;
            p.failures = 0;
            p.next_pull_ms = now_ms + config.pull_interval_ms;
        } else if progress {
            p.synced = false;
            p.failures = 0;
            p.next_pull_ms = now_ms;
        } else {
            // Nothing new applied yet the peer holds more: what we lack waits on another
            // author (parked) or the peer is stuck. Ask again, but not in a hot loop.
            p.synced = false;
            p.failures = p.failures.saturating_add(1);
            p.next_pull_ms = now_ms + backoff_ms(config, p.failures);
        }
    }

    fn park(&mut self, entry: SignedEntry) {
        let size = entry.encoded().len();
        if self.parked.len() >= self.config.parked_entries_max
            || self.parked_bytes + size > self.config.parked_bytes_max
        {
            return; // Pulled again later.
        }
        let key = (entry.entry.author, entry.entry.seq);
        if self.parked.insert(key, entry).is_none() {
            self.parked_bytes += size;
        }
    }

    fn misbehaved(&mut self, peer: &P, reason: String) {
        if self.peers.remove(peer).is_some() {
            self.outputs.push_back(Output::Disconnect {
                peer: peer.clone(),
                reason,
            });
        }
    }
}

fn backoff_ms(config: &Config, failures: u32) -> u64 {
    let shift = failures.saturating_sub(1).min(20);
    (config.retry_ms_min << shift).min(config.retry_ms_max)
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Pull { .. } => "a pull",
        Message::Entries { .. } => "entries",
        Message::Push { .. } => "a push",
    }
}

/// How a node answers a pull: which entries, under which limits. The reading is the driver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServePlan {
    pub ranges: Vec<(DeviceId, std::ops::RangeInclusive<u64>)>,
    pub entries_max: usize,
    pub bytes_max: usize,
}

/// Plans the answer to a pull from a peer holding `have`, when we hold `local`. The asker's
/// limits are honoured but never above ours.
pub fn plan_serve(
    have: &VersionVector,
    local: &VersionVector,
    entries_max: u32,
    bytes_max: u32,
) -> ServePlan {
    ServePlan {
        ranges: have.missing_from(local),
        entries_max: (entries_max as usize).clamp(1, wire::BATCH_ENTRIES_MAX),
        bytes_max: (bytes_max as usize).clamp(1, wire::BATCH_BYTES_MAX),
    }
}

#[cfg(test)]
mod tests;
