//! What a node counts for monitoring, served as `GET /metrics` in the Prometheus text format.
//!
//! Counters and histograms are moved where the work happens (the writer, the network driver,
//! the bridge); per-peer gauges are set from the network's status when the driver publishes
//! it, and what the store counts is read at each scrape. One registry per node: a program built on the node (the bridge) adds its own metrics
//! to it with [`Metrics::register`].

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// What became of an entry a peer sent (the `IngestOutcome` it got).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: &'static str,
}

/// One connected peer, by device (its peer id when the device is not known yet).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    pub peer: String,
}

/// Which way sync bytes went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Entries this device signed (sales, edits, membership operations).
    pub entries_written: Counter,
    /// Entries from peers, by what became of them.
    pub entries_ingested: Family<Outcome, Counter>,
    /// Jobs (local writes and ingested entries) per committed write batch.
    pub batch_jobs: Histogram,
    /// From a batch's start to its commit, write-ahead log sync included.
    pub commit_seconds: Histogram,
    /// The write-ahead log's append and fsync alone: what makes a write durable.
    pub wal_fsync_seconds: Histogram,
    /// Bytes of sync messages (pull answers and pushes), in and out.
    pub sync_bytes: Family<Direction, Counter>,
    /// Pulls this node sent.
    pub pulls: Counter,
    /// Pushes of this device's new entries to its peers.
    pub pushes: Counter,
    /// Entries a connected peer holds that this node does not have yet (as of the last pull).
    pub peer_behind_entries: Family<Peer, Gauge>,
    /// Entries this node holds that the peer lacked when it last answered a pull.
    pub peer_lacks_entries: Family<Peer, Gauge>,
    /// Seconds since the peer last answered or pushed.
    pub peer_last_contact_seconds: Family<Peer, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub peer_rtt_seconds: Family<Peer, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub peers_connected: Gauge,
    /// Entries refused and kept aside (all time, from the store).
    pub rejected_stored: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 50 µs to about 6.5 s: a fsync here is ~0.2 ms, a full disk's retry
/// seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 18)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("tillmesh");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            entries_written: Counter::default(),
            entries_ingested: Family::default(),
            batch_jobs: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(latency_buckets()),
            wal_fsync_seconds: Histogram::new(latency_buckets()),
            sync_bytes: Family::default(),
            pulls: Counter::default(),
            pushes: Counter::default(),
            peer_behind_entries: Family::default(),
            peer_lacks_entries: Family::default(),
            peer_last_contact_seconds: Family::default(),
            peer_rtt_seconds: Family::default(),
            peers_connected: Gauge::default(),
            rejected_stored: Gauge::default(),
        };
        r.register(
            "entries_written",
            "Entries this device signed and made durable",
            m.entries_written.clone(),
        );
        r.register(
            "entries_ingested",
            "Entries from peers, by outcome (applied, duplicate, gap, deferred, undone, rejected, forged)",
            m.entries_ingested.clone(),
        );
        r.register(
            "writer_batch_jobs",
            "Local writes and ingested entries per committed write batch",
            m.batch_jobs.clone(),
        );
        r.register(
            "writer_commit_seconds",
            "A write batch from its start to its commit, write-ahead log sync included",
            m.commit_seconds.clone(),
        );
        r.register(
            "wal_fsync_seconds",
            "Appending a batch to the write-ahead log and syncing it to disk",
            m.wal_fsync_seconds.clone(),
        );
        r.register(
            "sync_bytes",
            "Bytes of sync messages (pull answers and pushes) received and sent",
            m.sync_bytes.clone(),
        );
        r.register("sync_pulls", "Pulls sent to peers", m.pulls.clone());
        r.register(
            "sync_pushes",
            "Pushes of this device's new entries published to peers",
            m.pushes.clone(),
        );
        r.register(
            "peer_behind_entries",
            "Entries a connected peer held that this node lacked, at the last pull",
            m.peer_behind_entries.clone(),
        );
        r.register(
            "peer_lacks_entries",
            "Entries this node holds that a connected peer lacked, at its last answer",
            m.peer_lacks_entries.clone(),
        );
        r.register(
            "peer_last_contact_seconds",
            "Seconds since a connected peer last answered a pull or pushed",
            m.peer_last_contact_seconds.clone(),
        );
        r.register(
            "peer_rtt_seconds",
            "Round-trip time of a connected peer's pings",
            m.peer_rtt_seconds.clone(),
        );
        r.register(
            "peers_connected",
            "Peers connected now",
            m.peers_connected.clone(),
        );
        r.register(
            "entries_rejected_stored",
            "Entries refused and kept aside, all time",
            m.rejected_stored.clone(),
        );
        *m.registry.lock().expect("not poisoned yet") = r;
        m
    }

    /// Adds a metric of a program built on the node, named `tillmesh_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, metric);
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }

    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }
}
