//! Ingest of peers' entries: what a node spends on each entry another device wrote, as
//! replication delivers them (pulls of up to 1,024 entries, 4 MiB, served by the real
//! `replication::serve` and applied by the real `replication::apply`), durable before the
//! version vector moves. Two repos in this process, no network: the figure is the store's.
//! Prints one JSON object.
//!
//! Run: `cargo bench --bench peer_ingest`
//! Tune: TILLMESH_PEER_SALES (20000) entries measured; TILLMESH_PEER_STORED (10000) sales the
//! receiver holds before the measured ones (1000000 for the big-store figure; filling it takes
//! minutes); TILLMESH_PEER_RUNS (3) measured rounds, the median reported;
//! TILLMESH_PEER_STRICT=1 makes the products strict, so every sale's rights are checked on
//! ingest (the difference to a run without is the rights check's cost per entry).
//!
//! The seller writes every sale first; while the receiver ingests, nothing else runs, so this
//! process's CPU time over the round is the receiver's (writer, verification, apply), plus
//! the seller serving the pulls (reading and decoding its entries, a few µs each).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tillmesh::testkit::{card_sale_command, percentiles_us, product_command};
use tillmesh_node::repo::{Command, MemberCommand};
use tillmesh_node::{Repo, replication};
use tillmesh_protocol::sync::Message;
use tillmesh_protocol::{Currency, DeviceKey, Role, VersionVector};

// The node's allocator, so the figures are the node's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PRODUCTS: usize = 20;
const PULL_ENTRIES_MAX: u32 = 1024;
const PULL_BYTES_MAX: u32 = 4 * 1024 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn rss_kib() -> u64 {
    tillmesh::testkit::rss_kib(std::process::id()).unwrap_or(0)
}

async fn sell(repo: &Arc<Repo>, count: usize) {
    let writers = 16;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..count).step_by(writers) {
                let sale = card_sale_command(&format!("SKU-{}", i % PRODUCTS), 1);
                repo.execute(sale).await.expect("sale");
            }
        }));
    }
    for t in tasks {
        t.await.expect("seller task");
    }
}

/// Pulls from `from` into `to` until `to` holds the seller's entries up to `target`; returns
/// each pull's apply time.
async fn pull_until(from: &Repo, to: &Repo, target: u64) -> Vec<Duration> {
    let seller = from.identity().device_id;
    let mut applied = Vec::new();
    loop {
        let have: VersionVector = to.version_vector().expect("vv");
        let held = have.get(&seller);
        if held >= target {
            return applied;
        }
        let Message::Entries { entries, .. } =
            replication::serve(from, &have, PULL_ENTRIES_MAX, PULL_BYTES_MAX).expect("serve")
        else {
            unreachable!("serve answers with entries")
        };
        assert!(!entries.is_empty(), "the seller holds up to {target}");
        let entries: Vec<_> = entries.into_iter().take((target - held) as usize).collect();
        let started = Instant::now();
        let (verdicts, _) = replication::apply(to, entries).await.expect("apply");
        applied.push(started.elapsed());
        for (e, v) in &verdicts {
            assert!(
                matches!(v, tillmesh_protocol::sync::Verdict::Applied),
                "entry {} of the seller came back {v:?}",
                e.entry.seq
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let measured = env_usize("TILLMESH_PEER_SALES", 20_000);
    let stored = env_usize("TILLMESH_PEER_STORED", 10_000);
    let runs = env_usize("TILLMESH_PEER_RUNS", 3).max(1);
    let tmp = tempfile::tempdir()?;

    let seller = Arc::new(Repo::init(&tmp.path().join("seller"), "Seller", Currency::USD).await?);
    let key = DeviceKey::from_secret([7; 32]);
    seller
        .execute(Command::Member(MemberCommand::Add {
            device: key.device_id(),
            role: Role::Till,
            name: "Receiver".into(),
        }))
        .await?;
    let strict = std::env::var_os("TILLMESH_PEER_STRICT").is_some();
    for p in 0..PRODUCTS {
        let mut np = product_command(&format!("SKU-{p}"), "Load product", 250, 100_000_000);
        if let Command::CreateProduct(p) = &mut np
            && strict
        {
            p.stock_policy = tillmesh_protocol::schema::StockPolicy::Strict;
        }
        seller.execute(np).await?;
    }
    let fill_started = Instant::now();
    sell(&seller, stored + measured * runs).await;
    let fill_s = fill_started.elapsed().as_secs_f64();
    let seller_id = seller.identity().device_id;
    let setup = seller.version_vector()?.get(&seller_id) - (stored + measured * runs) as u64;

    let dir = tmp.path().join("receiver");
    let id = seller.identity();
    drop(tillmesh_node::store::create(
        &dir, "Receiver", key, id.mesh_id, id.root_id,
    )?);
    let receiver = Repo::open(&dir)?;
    let base_started = Instant::now();
    pull_until(&seller, &receiver, setup + stored as u64).await;
    let base_s = base_started.elapsed().as_secs_f64();

    let mut rounds = Vec::new();
    let mut pulls = Vec::new();
    for r in 0..runs {
        let target = setup + (stored + measured * (r + 1)) as u64;
        let cpu = cpu_time();
        let started = Instant::now();
        pulls.extend(pull_until(&seller, &receiver, target).await);
        let wall = started.elapsed();
        let cpu = cpu_time() - cpu;
        rounds.push((
            measured as f64 / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / measured as f64,
        ));
    }
    let mut rates: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let mut cpus: Vec<f64> = rounds.iter().map(|r| r.1).collect();
    rates.sort_by(f64::total_cmp);
    cpus.sort_by(f64::total_cmp);
    let last = receiver.version_vector()?.get(&seller_id);
    assert_eq!(last, setup + (stored + measured * runs) as u64);
    let rss_after_kib = rss_kib();
    drop(receiver);

    // Reopening the receiver's store: until its first read answers.
    let reopen_started = Instant::now();
    let reopened = Repo::open(&dir)?;
    let held = reopened.version_vector()?.get(&seller_id);
    let reopen_ms = reopen_started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(held, last);
    drop(reopened);

    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "peer_ingest",
            "what": "a receiver applying another device's sales as pulls deliver them, durable",
            "strict_products": strict,
            "stored_before": stored,
            "measured_per_run": measured,
            "runs": runs,
            "entries_per_s_median": rates[rates.len() / 2],
            "entries_per_s_all": rates,
            "cpu_us_per_entry_median": cpus[cpus.len() / 2],
            "cpu_us_per_entry_all": cpus,
            "pull_apply_us": percentiles_us(&mut pulls),
            "pull_entries_max": PULL_ENTRIES_MAX,
            "seller_fill_s": fill_s,
            "receiver_base_s": base_s,
            "process_rss_mib_after": rss_after_kib / 1024,
            "receiver_reopen_ms": reopen_ms,
            "receiver_store_mib": std::fs::metadata(dir.join("tillmesh.redb"))?.len() / (1 << 20),
        }))?
    );
    Ok(())
}
