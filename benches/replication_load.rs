//! Replication figures with real node processes on loopback (three tills: an owner and two
//! joined by invite), durable commits included. Prints one JSON object.
//!
//! Run: `cargo bench --bench replication_load`
//! Tune: TILLMESH_PROPAGATION_SALES (1000), TILLMESH_BULK_SALES (10000),
//! TILLMESH_SUSTAINED_RATE (2000 per second) and TILLMESH_SUSTAINED_SECS (10),
//! TILLMESH_CATCHUP_SALES (50000).
//!
//! - propagation: a sale rung up on till A, until till B's event stream shows it (and, beside
//!   it, until A acknowledged it: the rest is the hop); at the end, the same through a hub
//!   (B and C restarted with `--only-peers`, so a sale on B reaches C through A);
//! - bulk: 10,000 sales on A; how long after the last is acknowledged B holds them all;
//! - sustained: a paced load over all three tills; how long after it stops all agree;
//! - catch-up: C is stopped while A sells; how long after C starts it holds everything;
//! - summary: what one anti-entropy round costs between converged peers (bytes, time),
//!   measured on A's store afterwards, at two store sizes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillmesh::testkit::{
    Api, LOOPBACK_NET, NodeProcess, cash_sale, connected_devices, invite_code, join,
    percentiles_us, product, version_vector, wait_converged,
};
use tillmesh_node::Repo;
use tillmesh_node::replication;
use tillmesh_protocol::sync::Message;
use tokio::sync::{Mutex, mpsc};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const LONG: Duration = Duration::from_secs(600);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sale ids as till B's event stream shows them, with when.
async fn watch_sales(api: Api) -> mpsc::UnboundedReceiver<(String, Instant)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let url = format!("{}/v1/events", api.base);
    let mut resp = api.client().get(&url).send().await.expect("event stream");
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            let at = Instant::now();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data: ")
                        && let Ok(v) = serde_json::from_str::<Value>(data)
                        && v["type"] == "sale"
                        && let Some(id) = v["doc_id"].as_str()
                    {
                        let _ = tx.send((id.to_owned(), at));
                    }
                }
            }
        }
    });
    rx
}

/// Sells `count` sales on `api` from `clients` connections; returns when the last was acked.
async fn sell(api: &Api, count: usize, clients: usize) -> Instant {
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(count));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let api = api.clone();
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                api.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
                    .await
                    .expect("sale");
            }
        }));
    }
    for t in tasks {
        t.await.expect("seller");
    }
    Instant::now()
}

/// A till's entries from `author` (its device id), from its status.
async fn held_from(api: &Api, author: &str) -> u64 {
    version_vector(api)
        .await
        .map(|v| v[author].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

async fn device(api: &Api) -> String {
    api.ok_get("/v1/status").await.expect("status")["device"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// One anti-entropy round between converged peers: the pull's and the answer's bytes, and
/// the time to serve it, over `rounds` rounds.
fn summary(repo: &Repo, rounds: usize) -> Value {
    let vv = repo.version_vector().expect("vv");
    let pull = Message::Pull {
        have: vv.clone(),
        entries_max: 1024,
        bytes_max: 4 << 20,
    };
    let mut times = Vec::with_capacity(rounds);
    let mut answer_bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let answer = replication::serve(repo, &vv, 1024, 4 << 20).expect("serve");
        times.push(t.elapsed());
        answer_bytes = answer.encode().len();
    }
    let docs: u64 = repo.counts().expect("counts").iter().map(|(_, n)| n).sum();
    json!({
        "documents": docs,
        "authors": vv.len(),
        "pull_bytes": pull.encode().len(),
        "answer_bytes": answer_bytes,
        "serve_us": percentiles_us(&mut times),
    })
}

/// `n` sales rung up one at a time on `from`, each until `to`'s event stream shows it; and,
/// beside it, until `from` acknowledged it.
async fn propagate(from: &Api, to: &Api, n: usize) -> anyhow::Result<(Value, Value)> {
    let mut seen = watch_sales(to.clone()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut early: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(n);
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let v = from
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await?;
        acks.push(t0.elapsed());
        let id = v["id"].as_str().unwrap_or_default().to_owned();
        let at = match early.remove(&id) {
            Some(at) => at,
            None => loop {
                let (got, at) = tokio::time::timeout(LONG, seen.recv())
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("event stream ended"))?;
                if got == id {
                    break at;
                }
                early.insert(got, at);
            },
        };
        latencies.push(at - t0);
    }
    Ok((percentiles_us(&mut latencies), percentiles_us(&mut acks)))
}

/// The devices `api`'s node is connected to.
async fn connected(api: &Api) -> Vec<String> {
    connected_devices(api).await.expect("status")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("till-{i}")))
        .collect();
    NodeProcess::init(BIN.as_ref(), &dirs[0], "Till A")?;
    let mut nodes = vec![NodeProcess::start(BIN.as_ref(), &dirs[0]).await?];
    nodes[0]
        .api
        .ok_post(
            "/v1/products",
            &product("TEA-1", "Green tea", 350, 1_000_000_000),
        )
        .await?;
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let code = invite_code(BIN.as_ref(), &dirs[0], "till")?;
        join(
            BIN.as_ref(),
            dir,
            &format!("Till {}", ["A", "B", "C"][i]),
            &code,
        )?;
        nodes.push(NodeProcess::start(BIN.as_ref(), dir).await?);
    }
    let apis: Vec<Api> = nodes.iter().map(|n| n.api.clone()).collect();
    let all: Vec<&Api> = apis.iter().collect();
    wait_converged(&all, 1, LONG).await?;
    let a_id = device(&apis[0]).await;

    // 1. Propagation, one sale at a time.
    let n = env_usize("TILLMESH_PROPAGATION_SALES", 1000);
    let (propagation, propagation_ack) = propagate(&apis[0], &apis[1], n).await?;

    // 2. Bulk while connected.
    let bulk_n = env_usize("TILLMESH_BULK_SALES", 10_000);
    let started = Instant::now();
    let last_ack = sell(&apis[0], bulk_n, 8).await;
    let target = held_from(&apis[0], &a_id).await;
    let deadline = Instant::now() + LONG;
    while held_from(&apis[1], &a_id).await < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "B never caught up with the bulk run"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bulk = json!({
        "sales": bulk_n,
        "sell_seconds": (last_ack - started).as_secs_f64(),
        "visible_on_b_after_last_ack_ms": last_ack.elapsed().as_secs_f64() * 1000.0,
    });

    // 3. Sustained, paced, over all three tills.
    let rate = env_usize("TILLMESH_SUSTAINED_RATE", 2000);
    let secs = env_usize("TILLMESH_SUSTAINED_SECS", 10);
    // Enough clients per till that their round trips never cap the rate asked for.
    const CLIENTS_PER_TILL: usize = 8;
    let per_client = Duration::from_secs_f64((3 * CLIENTS_PER_TILL) as f64 / rate as f64);
    let sent = Arc::new(Mutex::new(0usize));
    let stop_at = Instant::now() + Duration::from_secs(secs as u64);
    let mut tasks = Vec::new();
    for api in &apis {
        for _ in 0..CLIENTS_PER_TILL {
            let api = api.clone();
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(per_client);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                while Instant::now() < stop_at {
                    tick.tick().await;
                    api.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
                        .await
                        .expect("sale");
                    *sent.lock().await += 1;
                }
            }));
        }
    }
    let load_started = Instant::now();
    for t in tasks {
        t.await?;
    }
    let stopped = Instant::now();
    let converged = wait_converged(&all, 0, LONG).await?;
    let sent = *sent.lock().await;
    let sustained = json!({
        "target_per_second": rate,
        "achieved_per_second": sent as f64 / (stopped - load_started).as_secs_f64(),
        "sales": sent,
        "converged_after_stop_ms": converged.as_secs_f64() * 1000.0,
    });

    // 4. Catch-up: C misses a stream of sales, then comes back.
    let catch_n = env_usize("TILLMESH_CATCHUP_SALES", 50_000);
    nodes[2].stop()?;
    sell(&apis[0], catch_n, 8).await;
    wait_converged(&all[..2], 0, LONG).await?;
    let restarted = Instant::now();
    nodes[2] = NodeProcess::start(BIN.as_ref(), &dirs[2]).await?;
    let c_api = nodes[2].api.clone();
    let target = held_from(&apis[0], &a_id).await;
    let deadline = Instant::now() + LONG;
    while held_from(&c_api, &a_id).await < target {
        anyhow::ensure!(Instant::now() < deadline, "C never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let catch_up = json!({
        "missed_sales": catch_n,
        "converged_after_start_ms": restarted.elapsed().as_secs_f64() * 1000.0,
    });
    let rss_kb: Vec<u64> = nodes
        .iter()
        .filter_map(|n| n.pid())
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        })
        .collect();

    // 5. Propagation through a hub, as automerge-repo is deployed: B and C restarted to dial
    //    only A (`--only-peers`), so a sale on B reaches C through A alone.
    let mut hub_net: Vec<&str> = LOOPBACK_NET.to_vec();
    hub_net.push("--only-peers");
    for i in [1, 2] {
        nodes[i].stop()?;
        nodes[i] = NodeProcess::spawn(BIN.as_ref(), &dirs[i], &hub_net, &[]).await?;
    }
    let hub_apis: Vec<Api> = nodes.iter().map(|n| n.api.clone()).collect();
    let c_id = device(&hub_apis[2]).await;
    let deadline = Instant::now() + LONG;
    loop {
        let (b, c) = (connected(&hub_apis[1]).await, connected(&hub_apis[2]).await);
        if b == [a_id.clone()] && c == [a_id.clone()] {
            break;
        }
        anyhow::ensure!(
            !b.contains(&c_id),
            "B dialed C although told to dial only A"
        );
        anyhow::ensure!(Instant::now() < deadline, "B and C never reached the hub");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_converged(&hub_apis.iter().collect::<Vec<_>>(), 0, LONG).await?;
    let (through_hub, through_hub_ack) = propagate(&hub_apis[1], &hub_apis[2], n).await?;
    anyhow::ensure!(
        connected(&hub_apis[1]).await == [a_id.clone()],
        "B connected to more than the hub during the run"
    );

    // 6. The cost of a round between converged peers: on A's store, and on a fresh store, so
    //    the two sizes can be compared (the pull grows with authors, 40 bytes each).
    for n in &mut nodes {
        n.stop()?;
    }
    let big = summary(&Repo::open(&dirs[0])?, 200);
    let small_dir = root.path().join("small");
    let small_repo = Repo::init(&small_dir, "Small", tillmesh_protocol::Currency::USD).await?;
    let small = summary(&small_repo, 200);

    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "propagation_a_to_b_event_us": propagation,
            "propagation_a_ack_us": propagation_ack,
            "propagation_b_to_c_through_hub_a_event_us": through_hub,
            "propagation_through_hub_b_ack_us": through_hub_ack,
            "bulk": bulk,
            "sustained": sustained,
            "catch_up": catch_up,
            "rss_kb_after": rss_kb,
            "summary_round_between_converged_peers": { "large_store": big, "small_store": small },
        }))?
    );
    Ok(())
}
