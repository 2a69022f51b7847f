//! Durability with real processes: a node stopped, or killed with `kill -9` in the middle of a
//! stream of sales, comes back with every sale it acknowledged, and nothing half-written.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tillmesh::testkit::{Api, NodeProcess, cash_sale, product};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const START_STOCK: i64 = 1_000_000;

/// Sells from `clients` tasks until told to stop; returns the ids the node acknowledged.
fn sell_until(
    api: &Api,
    clients: usize,
    stop: Arc<Mutex<bool>>,
    count: Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..clients)
        .map(|c| {
            let api = api.clone();
            let stop = stop.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0i64;
                while !*stop.lock().unwrap() {
                    let sku = if (c + i as usize).is_multiple_of(2) {
                        "TEA-1"
                    } else {
                        "MUG-1"
                    };
                    let qty = 1 + (i % 3);
                    match api.post("/v1/sales", &cash_sale(sku, qty, qty * 100)).await {
                        Ok((s, v)) if s.as_u16() == 201 => {
                            acked.push(v["id"].as_str().unwrap().to_owned());
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((s, v)) => panic!("sale refused while the node was up: {s} {v}"),
                        Err(_) => break, // the node died under us: this sale was not acknowledged
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect()
}

/// Waits until `count` reaches `n` (the load runs on a loaded machine: no fixed sleep).
async fn wait_for(count: &AtomicUsize, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the load stalled at {} sales",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks the store against the acknowledged sales: all there, stock consistent, receipts unique.
async fn check_consistent(api: &Api, acked: &HashSet<String>) -> Vec<Value> {
    let sales = api.all("/v1/sales").await.unwrap();
    let held: HashSet<String> = sales
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<_> = acked.difference(&held).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged sales lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    let receipts: HashSet<&str> = sales
        .iter()
        .map(|s| s["receipt_number"].as_str().unwrap())
        .collect();
    assert_eq!(receipts.len(), sales.len(), "receipt numbers are unique");
    for sku in ["TEA-1", "MUG-1"] {
        let sold: i64 = sales
            .iter()
            .flat_map(|s| s["lines"].as_array().unwrap())
            .filter(|l| l["sku"] == sku)
            .map(|l| l["qty"].as_i64().unwrap())
            .sum();
        let p = api
            .all("/v1/products")
            .await
            .unwrap()
            .into_iter()
            .find(|p| p["sku"] == sku)
            .unwrap();
        assert_eq!(
            p["stock"].as_i64().unwrap(),
            START_STOCK - sold,
            "{sku}: every stored sale moved stock exactly once"
        );
    }
    sales
}

async fn new_till(tmp: &tempfile::TempDir) -> NodeProcess {
    let dir = tmp.path().join("till");
    NodeProcess::init(BIN.as_ref(), &dir, "Till 1").unwrap();
    let node = NodeProcess::start(BIN.as_ref(), &dir).await.unwrap();
    node.api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 100, START_STOCK))
        .await
        .unwrap();
    node.api
        .ok_post("/v1/products", &product("MUG-1", "Mug", 100, START_STOCK))
        .await
        .unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_restarts_with_every_sale() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = new_till(&tmp).await;
    let stop = Arc::new(Mutex::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let tasks = sell_until(&node.api, 4, stop.clone(), count.clone());
    wait_for(&count, 200).await;
    *stop.lock().unwrap() = true;
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    node.stop().unwrap();
    assert!(
        !node.dir.join("api.addr").exists(),
        "a clean stop removes its address file"
    );
    let node = NodeProcess::start(BIN.as_ref(), &node.dir).await.unwrap();
    let sales = check_consistent(&node.api, &acked).await;
    assert_eq!(
        sales.len(),
        acked.len(),
        "a clean stop: exactly the acknowledged sales"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_acknowledged_sale() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = new_till(&tmp).await;
    let mut acked = HashSet::new();
    for round in 0..3 {
        let stop = Arc::new(Mutex::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let tasks = sell_until(&node.api, 8, stop.clone(), count.clone());
        // Rounds of growing length (around and beyond a checkpoint interval of 500 ms): the
        // kill lands on writes only the log holds and on writes redb has made durable.
        wait_for(&count, 100 + 1500 * round).await;
        node.kill9(); // mid-stream: requests are in flight
        *stop.lock().unwrap() = true;
        let mut this_round = 0;
        for t in tasks {
            let ids = t.await.unwrap();
            this_round += ids.len();
            acked.extend(ids);
        }
        assert!(
            this_round >= 100,
            "round {round}: the load ran ({this_round} sales)"
        );
        node.restart().await.unwrap();
        let sales = check_consistent(&node.api, &acked).await;
        // Sales committed but not yet acknowledged when the process died may be there too.
        assert!(sales.len() >= acked.len());
    }
    // Numbering carries on after the crashes without reusing a receipt number.
    let before: HashSet<String> = node
        .api
        .all("/v1/sales")
        .await
        .unwrap()
        .iter()
        .map(|s| s["receipt_number"].as_str().unwrap().to_owned())
        .collect();
    let s = node
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 100))
        .await
        .unwrap();
    assert!(
        !before.contains(s["receipt_number"].as_str().unwrap()),
        "receipt {} reused",
        s["receipt_number"]
    );
}

/// A crash right after setting up: the write-ahead log holds the settings (a currency other than
/// the default, a tax code) and the products that depend on them. Replay must apply them in
/// order, so nothing acknowledged is refused on the way back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_setup_comes_back_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("till");
    let out = tillmesh::testkit::tillmesh(
        BIN.as_ref(),
        &[
            "init",
            "--data",
            dir.to_str().unwrap(),
            "--name",
            "Euro Till",
            "--currency",
            "EUR",
        ],
    )
    .unwrap();
    assert!(out.status.success());
    // No checkpoint during the test: everything below lives only in the write-ahead log.
    let hold = [("TILLMESH_CHECKPOINT_MS", "3600000")];
    let mut node = NodeProcess::start_with(BIN.as_ref(), &dir, &hold)
        .await
        .unwrap();
    let (st, v) = node
        .api
        .put(
            "/v1/settings/tax-rates/VAT",
            &serde_json::json!({"name": "VAT", "rate_ppm": 200_000}),
        )
        .await
        .unwrap();
    assert!(st.is_success(), "{v}");
    let mut p = product("BREAD-1", "Bread", 300, 50);
    p["price"]["currency"] = "EUR".into();
    p["tax_code"] = "VAT".into();
    node.api.ok_post("/v1/products", &p).await.unwrap();
    let mut acked = HashSet::new();
    for _ in 0..5 {
        let s = node.api.ok_post("/v1/sales", &serde_json::json!({"lines": [{"sku": "BREAD-1", "qty": 1}], "payments": [{"method": "card"}]})).await.unwrap();
        assert_eq!(s["total"]["amount_minor"], 360);
        acked.insert(s["receipt_number"].as_str().unwrap().to_owned());
    }
    assert!(
        std::fs::metadata(dir.join("tillmesh.wal")).unwrap().len() > 0,
        "the log holds the setup"
    );
    node.kill9();
    node.restart().await.unwrap();
    let status = node.api.ok_get("/v1/status").await.unwrap();
    assert_eq!(
        status["rejected"]["count"], 0,
        "nothing acknowledged is refused on replay: {status}"
    );
    assert_eq!(node.api.all("/v1/sales").await.unwrap().len(), 5);
    let bread = &node.api.all("/v1/products").await.unwrap()[0];
    assert_eq!(bread["stock"], 45);
    let s = node.api.ok_post("/v1/sales", &serde_json::json!({"lines": [{"sku": "BREAD-1", "qty": 1}], "payments": [{"method": "card"}]})).await.unwrap();
    assert!(
        !acked.contains(s["receipt_number"].as_str().unwrap()),
        "receipt {} issued twice",
        s["receipt_number"]
    );
}

/// A disk that changed an acknowledged record of the write-ahead log, with good records after
/// it, is refused loudly, never trimmed quietly: the node says which file, where, and what to
/// do, and leaves the file as it was. (A torn last record is still cut: see `store::wal`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_middle_of_the_log_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("till");
    NodeProcess::init(BIN.as_ref(), &dir, "Till 1").unwrap();
    // No checkpoint: every write stays in the write-ahead log.
    let hold = [("TILLMESH_CHECKPOINT_MS", "3600000")];
    let mut node = NodeProcess::start_with(BIN.as_ref(), &dir, &hold)
        .await
        .unwrap();
    node.api
        .ok_post("/v1/products", &product("TEA-1", "Tea", 100, 50))
        .await
        .unwrap();
    for _ in 0..3 {
        node.api
            .ok_post("/v1/sales", &cash_sale_of("TEA-1"))
            .await
            .unwrap();
    }
    node.kill9();
    let wal = dir.join("tillmesh.wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    // The records' starts, from their length prefixes.
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        starts.push(at);
        at += 4 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    assert!(starts.len() >= 3, "the log holds the sales: {starts:?}");
    let middle = starts[starts.len() / 2];
    bytes[middle + 10] ^= 0x01;
    std::fs::write(&wal, &bytes).unwrap();
    let out =
        tillmesh::testkit::tillmesh(BIN.as_ref(), &["sales", "--data", dir.to_str().unwrap()])
            .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it opened a damaged log");
    assert!(
        err.contains("tillmesh.wal")
            && err.contains(&format!("record at byte {middle}"))
            && err.contains("join the mesh again"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        bytes,
        "the log is left as it was"
    );
}

fn cash_sale_of(sku: &str) -> serde_json::Value {
    serde_json::json!({"lines": [{"sku": sku, "qty": 1}], "payments": [{"method": "cash"}]})
}

/// The kill -9 soak: a till sells under load while the owner sells too; the till is killed
/// with `kill -9` at a moment the seed picks, restarted, and must converge with the owner,
/// every sale either node acknowledged held by both, before the next round.
///
/// - `cargo test --test durability kill_9_soak` runs 10 rounds (CI);
/// - `TILLMESH_SOAK_ROUNDS=1000 cargo test --test durability kill_9_soak -- --nocapture` runs
///   as many as asked and prints a summary (`TILLMESH_SOAK_SEED` picks the moments).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_soak() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = env("TILLMESH_SOAK_ROUNDS").unwrap_or(10);
    let mut rng = tillmesh::sim::Rng::new(env("TILLMESH_SOAK_SEED").unwrap_or(1));
    let tmp = tempfile::tempdir().unwrap();
    let owner = new_till(&tmp).await;
    let dir = tmp.path().join("victim");
    let code = tillmesh::testkit::invite_code(BIN.as_ref(), &owner.dir, "till").unwrap();
    tillmesh::testkit::join(BIN.as_ref(), &dir, "Till 2", &code).unwrap();
    let mut victim = NodeProcess::start(BIN.as_ref(), &dir).await.unwrap();
    tillmesh::testkit::wait_for("the catalogue on the till", Duration::from_secs(60), || {
        let api = victim.api.clone();
        async move { Ok((api.all("/v1/products").await?.len() == 2).then_some(())) }
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let (mut all_acked, mut restart_ms, mut converge_ms) = (HashSet::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Under load: two clients on the till (until it dies under them), one on the owner
        // (until the till is down: the till then has that much to catch up on).
        let stop = Arc::new(Mutex::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let on_victim = sell_until(&victim.api, 2, stop.clone(), count.clone());
        let owner_stop = Arc::new(Mutex::new(false));
        let on_owner = sell_until(&owner.api, 1, owner_stop.clone(), Arc::default());
        wait_for(&count, 5).await;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        victim.kill9();
        *owner_stop.lock().unwrap() = true;
        let mut acked = HashSet::new();
        for h in on_victim.into_iter().chain(on_owner) {
            acked.extend(h.await.unwrap());
        }
        let restarting = std::time::Instant::now();
        victim.restart().await.unwrap();
        restart_ms.push(restarting.elapsed().as_millis() as u64);
        let converging = std::time::Instant::now();
        tillmesh::testkit::wait_converged(&[&owner.api, &victim.api], 0, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        converge_ms.push(converging.elapsed().as_millis() as u64);
        // Converged: both hold the same entries, so what one holds the other does.
        for id in &acked {
            let (status, _) = victim.api.get(&format!("/v1/sales/{id}")).await.unwrap();
            assert_eq!(
                status.as_u16(),
                200,
                "round {round}: acknowledged sale {id} lost"
            );
        }
        all_acked.extend(acked);
        if rounds > 10 && (round + 1) % 100 == 0 {
            eprintln!(
                "{} rounds, {} sales acknowledged, none lost, {:.0} s",
                round + 1,
                all_acked.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // At the end, the whole store on both: every acknowledged sale, each moving stock once,
    // receipt numbers unique.
    let sales = check_consistent(&owner.api, &all_acked).await;
    assert_eq!(
        sales.len(),
        check_consistent(&victim.api, &all_acked).await.len()
    );
    let acked_total = all_acked.len();
    let p = |v: &mut Vec<u64>, q: usize| {
        v.sort_unstable();
        v[(v.len() - 1) * q / 100]
    };
    eprintln!(
        "{}",
        serde_json::json!({
            "rounds": rounds, "kill_9": rounds, "sales_acknowledged": acked_total,
            "sales_held": sales.len(), "lost": 0,
            "restart_ms": {"p50": p(&mut restart_ms, 50), "p99": p(&mut restart_ms, 99)},
            "converged_after_restart_ms": {"p50": p(&mut converge_ms, 50), "p99": p(&mut converge_ms, 99)},
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
}
