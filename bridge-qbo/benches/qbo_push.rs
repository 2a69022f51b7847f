//! How long `tillmesh-bridge` takes to push a day's backlog of sales into QuickBooks at the
//! realm's default limits, against the fastest the limits allow.
//!
//! `cargo bench -p tillmesh-bridge-qbo --bench qbo_push -- --sales 10000 --batch 1` posts one
//! receipt per request; `--batch 30` posts 30 per batch request. The emulator runs in this
//! process at Intuit's limits (500 requests a minute, 40 of them batches, 10 at once); the
//! owner's till runs here too, and the bridge is its own process, paired and connected as a
//! user would. The clock runs from the emulator's first write to its last.
//!
//! The floor: QBO counts requests in a sliding minute, so `R` requests need at least
//! `floor((R - 1) / L)` whole minutes between the first and the last, for a limit `L` a minute.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig};
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{NewProduct, NewSale};
use tillmesh_protocol::Currency;
use tillmesh_qbo_emulator::{self as emulator, Config, Settings};

#[path = "../tests/support/mod.rs"]
mod support;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whole minutes the sliding window forces between the first and the last of `requests`.
fn floor_s(requests: u64, per_minute: u64) -> u64 {
    requests.saturating_sub(1) / per_minute * 60
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` of benches passes nothing else.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let sales = arg("--sales", 10_000);
    let batch = arg("--batch", 30);
    let tmp = tempfile::tempdir().unwrap();
    let settings = Settings::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ends, _emu) = emulator::start(
        listener,
        Config {
            data: tmp.path().join("qbo"),
            settings: settings.clone(),
            currency: None,
            tls: true,
        },
        std::future::pending(),
    )
    .await
    .unwrap();

    let owner = Repo::init(&tmp.path().join("owner"), "Till 1", Currency::USD)
        .await
        .unwrap();
    for (sku, price) in [("TEA-1", 350), ("CAKE-1", 425)] {
        let p: NewProduct = serde_json::from_value(json!({
            "sku": sku, "name": sku, "price": {"amount_minor": price, "currency": "USD"},
            "tax_code": "NON", "stock": 1_000_000,
        }))
        .unwrap();
        owner.execute(Command::CreateProduct(p)).await.unwrap();
    }
    let rung = Instant::now();
    for i in 0..sales {
        let sale: NewSale = serde_json::from_value(json!({
            "lines": [{"sku": if i % 2 == 0 { "TEA-1" } else { "CAKE-1" }, "qty": 1 + i % 3}],
            "payments": [{"method": "card"}],
        }))
        .unwrap();
        owner.execute(Command::Sell(sale)).await.unwrap();
    }
    eprintln!("{sales} sales rung up in {:?}", rung.elapsed());
    let (network, _net) = net::start(
        owner.clone(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            ..NetConfig::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let dir = tmp.path().join("bridge");
    support::join_and_connect(&network, &ends, &dir, true).await;
    let http = ends.client();
    let counters = || async {
        let v: Value = http
            .get(format!("{}/admin/config", ends.base_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["counters"].clone()
    };
    // Every API request the bridge makes counts, from before it starts (the look-ups before
    // its first write, and the pulls, included).
    let before = counters().await;
    let mut child = support::spawn_bridge_with(&dir, &["--batch", &batch.to_string()]);
    let items = 2;
    // Sampled every 100 ms: the wall time is short of the truth by at most that.
    let mut first: Option<Instant> = None;
    let mut last_report = Instant::now();
    let (done, end) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let c = counters().await;
        let writes = c["writes"].as_u64().unwrap_or(0);
        if first.is_none() && writes > 0 {
            first = Some(Instant::now());
        }
        if writes >= (sales + items) as u64 {
            break (Instant::now(), c);
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            eprintln!("{writes} written so far; {c}");
            last_report = Instant::now();
        }
        assert!(child.try_wait().unwrap().is_none(), "the bridge stopped");
    };
    let _ = child.kill();
    let _ = child.wait();
    let wall = done - first.unwrap();
    let requests = end["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
    let throttled = end["throttled"].as_u64().unwrap() - before["throttled"].as_u64().unwrap();
    // The requests the push cannot do without: receipts (one each, or one per batch) and
    // the items, made in one batch or one by one.
    let (needed, floor) = if batch > 1 {
        let batches = sales.div_ceil(batch) as u64 + items.div_ceil(batch) as u64;
        (
            batches,
            floor_s(batches, settings.batch_requests_per_minute as u64),
        )
    } else {
        let n = (sales + items) as u64;
        (n, floor_s(n, settings.requests_per_minute as u64))
    };
    // Under a minute's worth of requests, the window sets no floor to compare with.
    let over = if floor == 0 {
        "no floor under a minute's worth".to_owned()
    } else {
        format!(
            "{:+.1} %",
            (wall.as_secs_f64() / floor as f64 - 1.0) * 100.0
        )
    };
    println!(
        "qbo_push sales={sales} batch={batch}: wall {:.1} s from first write to last; floor {floor} s for {needed} needed requests ({over}); {requests} requests in all (pulls included); 429s {throttled}; {:.0} sales/min",
        wall.as_secs_f64(),
        sales as f64 / wall.as_secs_f64() * 60.0
    );
    let _ = std::fs::copy(
        dir.join("bridge-status.json"),
        std::env::temp_dir().join(format!("qbo_push-{batch}-status.json")),
    );
}
