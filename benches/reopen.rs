//! Reopening a big store: 100,000 sales written through the real repo, then a fresh
//! `tillmesh run` process on that folder, timed from spawn until it serves the newest sales,
//! with its resident memory read from /proc. Prints one JSON object.
//!
//! Run: `cargo bench --bench reopen`
//! Tune: TILLMESH_REOPEN_SALES (default 100000).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tillmesh::testkit::{NodeProcess, percentiles_us};
use tillmesh_node::Repo;
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{NewProduct, NewSale, SaleLineRequest, TenderRequest};
use tillmesh_protocol::{Currency, Money};

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sales: usize = std::env::var("TILLMESH_REOPEN_SALES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let bin = env!("CARGO_BIN_EXE_tillmesh");
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("till");

    let fill_started = Instant::now();
    {
        let repo = Arc::new(Repo::init(&dir, "Big Till", Currency::USD).await?);
        for p in 0..50 {
            let np = NewProduct {
                sku: format!("SKU-{p}"),
                name: format!("Product {p}"),
                price: Money::new(199 + p, Currency::USD),
                tax_code: "NON".into(),
                stock: 10_000_000,
                active: true,
            };
            repo.execute(Command::CreateProduct(np)).await?;
        }
        let writers = 64;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let repo = repo.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..sales).step_by(writers) {
                    let sale = NewSale {
                        lines: vec![SaleLineRequest {
                            product_id: None,
                            sku: Some(format!("SKU-{}", i % 50)),
                            qty: 1 + (i % 3) as i64,
                            unit_price_minor: None,
                        }],
                        payments: vec![TenderRequest {
                            method: "card".into(),
                            amount_minor: None,
                        }],
                        customer_id: None,
                    };
                    repo.execute(Command::Sell(sale)).await.expect("sale");
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    let store_bytes = std::fs::metadata(dir.join("tillmesh.redb"))?.len();

    let mut ready = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let node = NodeProcess::start(bin.as_ref(), &dir).await?;
        let page = node.api.ok_get("/v1/sales?limit=50").await?;
        ready.push(started.elapsed());
        assert_eq!(page["items"].as_array().map(Vec::len), Some(50));
        let status = node.api.ok_get("/v1/status").await?;
        assert_eq!(status["documents"]["sale"].as_u64(), Some(sales as u64));
        node.api.ok_get("/v1/products?limit=50").await?;
        rss.push(rss_kib(node.pid().unwrap_or(0)).unwrap_or(0));
        drop(node);
    }
    let in_process = {
        let t = Instant::now();
        let repo = Repo::open(&dir)?;
        let first = repo.list(tillmesh_protocol::DocType::Sale, None, 50)?;
        assert_eq!(first.len(), 50);
        t.elapsed()
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "bench": "reopen",
            "sales": sales,
            "fill_s": fill_s,
            "store_bytes": store_bytes,
            "process_ready_us": percentiles_us(&mut ready),
            "process_rss_kib": rss,
            "repo_open_and_first_page_us": in_process.as_micros(),
        }))?
    );
    Ok(())
}
