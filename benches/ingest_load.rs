//! Durable ingest through the real API: a `tillmesh run` process, and concurrent HTTP clients
//! ringing up sales. Every sale is acknowledged only after its redb transaction committed.
//! Prints one JSON object.
//!
//! Run: `cargo bench --bench ingest_load`
//! Tune: TILLMESH_LOAD_SALES (default 40000), TILLMESH_LOAD_CLIENTS (default 8).

use std::time::{Duration, Instant};

use serde_json::json;
use tillmesh::testkit::{Api, NodeProcess, percentiles_us, product};

const PRODUCTS: usize = 20;

/// CPU time (user + system) a process has used, from /proc, in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    // Linux reports in clock ticks of 1/100 s on every platform we run on.
    ticks * 10_000
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `clients` tasks ring up `total` sales between them; returns (wall time, latencies).
async fn drive(api: &Api, clients: usize, total: usize) -> (Duration, Vec<Duration>) {
    let per_client = total / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let sku = format!("SKU-{}", (c * 7 + i) % PRODUCTS);
                let body = json!({ "lines": [{ "sku": sku, "qty": 1 }], "payments": [{ "method": "card" }] });
                let t = Instant::now();
                let (status, v) = api.post("/v1/sales", &body).await.expect("request");
                assert!(status.is_success(), "sale refused: {v}");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    (started.elapsed(), all)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("TILLMESH_LOAD_SALES", 40_000);
    let clients = env_usize("TILLMESH_LOAD_CLIENTS", 8);
    let bin = env!("CARGO_BIN_EXE_tillmesh");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("till");
    NodeProcess::init(bin.as_ref(), &dir, "Load Till")?;
    let node = NodeProcess::start(bin.as_ref(), &dir).await?;
    for p in 0..PRODUCTS {
        node.api
            .ok_post(
                "/v1/products",
                &product(&format!("SKU-{p}"), "Load product", 250, 1_000_000),
            )
            .await?;
    }
    drive(&node.api, clients, 2_000).await; // warm-up

    let pid = node.pid().unwrap_or(0);
    let cpu_before = cpu_us(pid);
    let (wall, mut lat) = drive(&node.api, clients, total).await;
    let node_cpu_us_per_sale = (cpu_us(pid) - cpu_before) as f64 / lat.len() as f64;
    let concurrent = json!({
        "node_cpu_us_per_sale": node_cpu_us_per_sale,
        "clients": clients,
        "sales": lat.len(),
        "wall_s": wall.as_secs_f64(),
        "sales_per_s": lat.len() as f64 / wall.as_secs_f64(),
        "ack_latency_us": percentiles_us(&mut lat),
    });
    let (wall1, mut lat1) = drive(&node.api, 1, 5_000).await;
    let single = json!({
        "clients": 1,
        "sales": lat1.len(),
        "sales_per_s": lat1.len() as f64 / wall1.as_secs_f64(),
        "ack_latency_us": percentiles_us(&mut lat1),
    });
    let status = node.api.ok_get("/v1/status").await?;
    let store_bytes = std::fs::metadata(dir.join("tillmesh.redb"))?.len();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "ingest_load",
            "durable": "each sale acknowledged after its redb commit (fsync)",
            "concurrent": concurrent,
            "single_client": single,
            "sales_stored": status["documents"]["sale"],
            "store_bytes": store_bytes,
        }))?
    );
    Ok(())
}
