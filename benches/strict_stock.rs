//! Strict stock with real node processes on loopback (an owner and two tills joined by
//! invite). Prints one JSON object.
//!
//! Run: `cargo bench --bench strict_stock`
//! Tune: TILLMESH_STRICT_WAIT_SALES (300), TILLMESH_STRICT_SECS (10), TILLMESH_STRICT_CLIENTS
//! (4 per till).
//!
//! - wait: a till started with `--rights-reserve 0` holds no rights, so each of its sales asks
//!   the owner, which grants one unit, and the sale is tried again: the sale's time, beside the
//!   same sale on the owner, which holds the rights (the difference is the wait);
//! - hot product: all three tills sell one strict product at once for a while, each keeping
//!   its default reserve: sales per second, and how many sales waited for a transfer.
//!
//! The cost of the rights check at ingest is `peer_ingest` with and without
//! `TILLMESH_PEER_STRICT=1`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillmesh::testkit::{self, Api, LOOPBACK_NET, NodeProcess, cash_sale, percentiles_us};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn strict(sku: &str, stock: i64) -> Value {
    json!({
        "sku": sku, "name": sku, "price": {"amount_minor": 500, "currency": "USD"},
        "stock": stock, "stock_policy": "strict",
    })
}

/// Sells one unit of `sku` `n` times in a row; each sale's time.
async fn timed_sales(api: &Api, sku: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        api.ok_post("/v1/sales", &cash_sale(sku, 1, 500)).await?;
        out.push(started.elapsed());
    }
    Ok(out)
}

async fn rights_stats(api: &Api) -> anyhow::Result<Value> {
    Ok(api.ok_get("/v1/status").await?["network"]["rights"].clone())
}

/// Every till sells one unit of `sku` at once from `clients` connections each, for `secs`.
async fn hot(nodes: &[NodeProcess], sku: &str, secs: u64, clients: usize) -> anyhow::Result<Value> {
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for n in nodes {
            v.push(rights_stats(&n.api).await?);
        }
        v
    };
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..clients {
            let (api, sku) = (node.api.clone(), sku.to_owned());
            tasks.push(tokio::spawn(async move {
                let (mut sold, mut refused) = (0u64, 0u64);
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    let (status, _) = api.post("/v1/sales", &cash_sale(&sku, 1, 500)).await?;
                    if status.is_success() {
                        sold += 1;
                        latencies.push(started.elapsed());
                    } else {
                        refused += 1;
                    }
                }
                anyhow::Ok((sold, refused, latencies))
            }));
        }
    }
    let started = Instant::now();
    let (mut sold, mut refused, mut latencies) = (0, 0, Vec::new());
    for t in tasks {
        let (s, r, l) = t.await??;
        sold += s;
        refused += r;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut waited_hot = 0;
    for (n, b) in nodes.iter().zip(&before) {
        let after = rights_stats(&n.api).await?;
        waited_hot +=
            after["sales_waited"].as_u64().unwrap_or(0) - b["sales_waited"].as_u64().unwrap_or(0);
    }

    Ok(json!({
        "what": format!("three tills selling {sku} at once, each with its default reserve"),
        "clients_per_till": clients,
        "seconds": elapsed,
        "sold": sold,
        "refused": refused,
        "sales_per_s": sold as f64 / elapsed,
        "sales_that_waited": waited_hot,
        "waited_share": waited_hot as f64 / sold.max(1) as f64,
        "sale_us": percentiles_us(&mut latencies),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wait_sales = env_usize("TILLMESH_STRICT_WAIT_SALES", 300);
    let secs = env_usize("TILLMESH_STRICT_SECS", 10) as u64;
    let clients = env_usize("TILLMESH_STRICT_CLIENTS", 4);
    let root = tempfile::tempdir()?;
    let mut nodes = testkit::shop(
        BIN.as_ref(),
        root.path(),
        3,
        &LOOPBACK_NET,
        &strict("CUP", 100_000_000),
    )
    .await?;

    // The wait: a till without a reserve asks for every unit it sells.
    nodes[1].stop()?;
    let mut no_reserve = LOOPBACK_NET.to_vec();
    no_reserve.extend(["--rights-reserve", "0"]);
    let till_dir = root.path().join("till-1");
    nodes[1] = NodeProcess::spawn(BIN.as_ref(), &till_dir, &no_reserve, &[]).await?;
    testkit::wait_for(
        "the till to reach the owner",
        Duration::from_secs(60),
        || {
            let api = nodes[1].api.clone();
            async move {
                let peers = testkit::connected_devices(&api).await?;
                Ok((!peers.is_empty()).then_some(()))
            }
        },
    )
    .await?;
    // Warm both paths once.
    timed_sales(&nodes[0].api, "CUP", 5).await?;
    timed_sales(&nodes[1].api, "CUP", 5).await?;
    let mut asking = timed_sales(&nodes[1].api, "CUP", wait_sales).await?;
    let mut holding = timed_sales(&nodes[0].api, "CUP", wait_sales).await?;
    let waited = rights_stats(&nodes[1].api).await?;
    let asking_p = percentiles_us(&mut asking);
    let holding_p = percentiles_us(&mut holding);

    // The hot product: every till sells one strict product at once, with its reserve.
    nodes[1].stop()?;
    nodes[1] = NodeProcess::start(BIN.as_ref(), &till_dir).await?;
    nodes[0]
        .api
        .ok_post("/v1/products", &strict("HOT", 100_000_000))
        .await?;
    for node in &nodes[1..] {
        testkit::wait_for_sku(&node.api, "HOT", Duration::from_secs(60)).await?;
        testkit::wait_for("the till to reach a peer", Duration::from_secs(60), || {
            let api = node.api.clone();
            async move {
                let peers = testkit::connected_devices(&api).await?;
                Ok((!peers.is_empty()).then_some(()))
            }
        })
        .await?;
    }
    let strict_hot = hot(&nodes, "HOT", secs, clients).await?;
    // The same load on a tracked product, for comparison.
    nodes[0]
        .api
        .ok_post(
            "/v1/products",
            &json!({"sku": "WARM", "name": "WARM", "price": {"amount_minor": 500, "currency": "USD"}, "stock": 100_000_000}),
        )
        .await?;
    for node in &nodes[1..] {
        testkit::wait_for_sku(&node.api, "WARM", Duration::from_secs(60)).await?;
    }
    let tracked_hot = hot(&nodes, "WARM", secs, clients).await?;

    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "strict_stock",
            "wait": {
                "what": "one unit sold on a till that must first get the right from the owner, beside the same sale on the owner",
                "sales": wait_sales,
                "sale_asking_us": asking_p,
                "sale_holding_us": holding_p,
                "wait_p50_us": asking_p["p50"].as_f64().unwrap_or(0.0) - holding_p["p50"].as_f64().unwrap_or(0.0),
                "wait_p99_us": asking_p["p99"].as_f64().unwrap_or(0.0) - holding_p["p99"].as_f64().unwrap_or(0.0),
                "till_rights": waited,
            },
            "hot_product": strict_hot,
            "hot_product_tracked": tracked_hot,
        }))?
    );
    Ok(())
}
