//! Reopening a big store: 100,000 sales written through the real repo, then a fresh
//! `tillmesh run` process on that folder, timed from spawn until it serves the newest sales,
//! with its resident memory read from /proc. Then the same after `kill -9` in the middle of a
//! stream of sales, when the write-ahead log must be replayed first. Prints one JSON object.
//!
//! Run: `cargo bench --bench reopen`
//! Tune: TILLMESH_REOPEN_SALES (default 100000).

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tillmesh::testkit::{NodeProcess, card_sale_command, percentiles_us, product_command};
use tillmesh_node::Repo;
use tillmesh_protocol::Currency;

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
            let np = product_command(
                &format!("SKU-{p}"),
                &format!("Product {p}"),
                199 + p,
                10_000_000,
            );
            repo.execute(np).await?;
        }
        let writers = 64;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let repo = repo.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..sales).step_by(writers) {
                    let sale = card_sale_command(&format!("SKU-{}", i % 50), 1 + (i % 3) as i64);
                    repo.execute(sale).await.expect("sale");
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
    // After a crash: sell from 8 clients for just under a checkpoint interval, kill -9, restart.
    let crash = {
        let mut node = NodeProcess::start(bin.as_ref(), &dir).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..8 {
            let api = node.api.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = serde_json::json!({ "lines": [{ "sku": format!("SKU-{}", (c + n as usize) % 50), "qty": 1 }], "payments": [{ "method": "card" }] });
                    match api.post("/v1/sales", &body).await {
                        Ok((s, _)) if s.is_success() => n += 1,
                        _ => break,
                    }
                }
                n
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        node.kill9();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut acked = 0;
        for t in tasks {
            acked += t.await?;
        }
        let wal_bytes = std::fs::metadata(dir.join("tillmesh.wal"))
            .map(|m| m.len())
            .unwrap_or(0);
        let started = Instant::now();
        let node = NodeProcess::start(bin.as_ref(), &dir).await?;
        node.api.ok_get("/v1/sales?limit=50").await?;
        let ready = started.elapsed();
        let held = node.api.ok_get("/v1/status").await?["documents"]["sale"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            held >= sales as u64 + acked,
            "acknowledged sales survived the crash"
        );
        json!({ "acked_before_kill": acked, "wal_bytes": wal_bytes, "ready_us": ready.as_micros() })
    };
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
            "after_kill_9": crash,
            "repo_open_and_first_page_us": in_process.as_micros(),
        }))?
    );
    Ok(())
}
