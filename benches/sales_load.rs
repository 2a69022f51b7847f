//! Durable sales written on this device: a real `tillmesh run` process and concurrent HTTP
//! clients ringing up sales, each acknowledged only once durable (its entry fdatasync'd in the
//! write-ahead log). Also the repo alone, in this process, for the node's capacity without
//! HTTP. Ingest of other devices' entries is `peer_ingest`. Prints one JSON object.
//!
//! Run: `cargo bench --bench sales_load`
//! Tune: TILLMESH_LOAD_SALES (default 40000), TILLMESH_LOAD_CLIENTS (default 8).
//!
//! The clients share this machine's cores with the node, so they are kept lean: each is one
//! HTTP/1.1 keep-alive connection (hyper) that posts a sale and checks the 201, as a till would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;
use tillmesh::testkit::{NodeProcess, card_sale_command, percentiles_us, product, product_command};
use tillmesh_node::Repo;
use tillmesh_protocol::Currency;

const PRODUCTS: usize = 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    // Linux clock ticks are 1/100 s.
    ticks * 10_000
}

fn sale_body(client: usize, i: usize) -> String {
    let sku = format!("SKU-{}", (client * 7 + i) % PRODUCTS);
    json!({ "lines": [{ "sku": sku, "qty": 1 }], "payments": [{ "method": "card" }] }).to_string()
}

/// `clients` connections ring up `total` sales between them; returns (wall time, latencies).
async fn drive_http(
    addr: &str,
    token: &str,
    clients: usize,
    total: usize,
) -> (Duration, Vec<Duration>) {
    let per_client = total / clients;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_owned();
        let bearer = format!("Bearer {token}");
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let req = hyper::Request::post("/v1/sales")
                    .header("host", &addr)
                    .header("authorization", &bearer)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(sale_body(c, i))))
                    .expect("request");
                let t = Instant::now();
                let resp = send.send_request(req).await.expect("send");
                let status = resp.status();
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(
                    status.as_u16(),
                    201,
                    "sale refused: {}",
                    String::from_utf8_lossy(&body)
                );
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

/// The repo alone: `writers` tasks calling `Repo::execute` directly.
async fn drive_repo(repo: Arc<Repo>, writers: usize, total: usize) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for i in (w..total).step_by(writers) {
                let sale = card_sale_command(&format!("SKU-{}", i % PRODUCTS), 1);
                let t = Instant::now();
                repo.execute(sale).await.expect("sale");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    (started.elapsed(), all)
}

fn summary(clients: usize, wall: Duration, lat: &mut [Duration]) -> serde_json::Value {
    json!({
        "clients": clients,
        "sales": lat.len(),
        "wall_s": wall.as_secs_f64(),
        "sales_per_s": lat.len() as f64 / wall.as_secs_f64(),
        "ack_latency_us": percentiles_us(lat),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("TILLMESH_LOAD_SALES", 40_000);
    let clients = env_usize("TILLMESH_LOAD_CLIENTS", 8);
    let bin = env!("CARGO_BIN_EXE_tillmesh");
    let tmp = tempfile::tempdir()?;

    // Over HTTP, against a separate node process.
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
    let addr = node.api.base.trim_start_matches("http://").to_owned();
    let token = tillmesh_node::api::auth::read_token(&dir).expect("the node's API token");
    drive_http(&addr, &token, clients, 2_000).await; // warm-up
    let pid = node.pid().unwrap_or(0);
    let cpu_before = cpu_us(pid);
    let (wall, mut lat) = drive_http(&addr, &token, clients, total).await;
    let node_cpu_us_per_sale = (cpu_us(pid) - cpu_before) as f64 / lat.len() as f64;
    let mut concurrent = summary(clients, wall, &mut lat);
    concurrent["node_cpu_us_per_sale"] = json!(node_cpu_us_per_sale);
    let (wall1, mut lat1) = drive_http(&addr, &token, 1, 5_000).await;
    let single = summary(1, wall1, &mut lat1);
    let status = node.api.ok_get("/v1/status").await?;
    let store_bytes = std::fs::metadata(dir.join("tillmesh.redb"))?.len();
    drop(node);

    // The repo alone, in this process.
    let repo = Arc::new(Repo::init(&tmp.path().join("repo"), "Repo Till", Currency::USD).await?);
    for p in 0..PRODUCTS {
        let np = product_command(&format!("SKU-{p}"), "Load product", 250, 1_000_000);
        repo.execute(np).await?;
    }
    drive_repo(repo.clone(), clients, 2_000).await;
    let (wall_r, mut lat_r) = drive_repo(repo.clone(), clients, total).await;
    let repo_only = summary(clients, wall_r, &mut lat_r);

    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "sales_load",
            "durable": "each sale acknowledged once its entry is fdatasync'd in the write-ahead log",
            "http_concurrent": concurrent,
            "http_single_client": single,
            "repo_only": repo_only,
            "sales_stored": status["documents"]["sale"],
            "store_bytes": store_bytes,
        }))?
    );
    Ok(())
}
