//! Replication between real node processes on loopback: joining by invite, convergence after
//! concurrent sales, and a till killed with `kill -9` in the middle of the stream.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use tillmesh::testkit::{
    self, Api, LOOPBACK_NET, NodeProcess, cash_sale, connected_devices, product, wait_converged,
    wait_for,
};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// An owner listening with `owner_net` flags and `n - 1` tills joined by its invite, all on
/// loopback; the owner's catalogue has reached every till.
async fn shop(
    root: &std::path::Path,
    n: usize,
    owner_net: &[&str],
) -> anyhow::Result<Vec<NodeProcess>> {
    testkit::shop(
        BIN.as_ref(),
        root,
        n,
        owner_net,
        &product("TEA-1", "Green tea", 350, 100_000),
    )
    .await
}

async fn sale_ids(api: &Api) -> anyhow::Result<BTreeSet<String>> {
    Ok(api
        .all("/v1/sales")
        .await?
        .iter()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}

async fn stock(api: &Api) -> anyhow::Result<Value> {
    let products = api.all("/v1/products").await?;
    Ok(products[0]["stock"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_converge_after_concurrent_sales() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = shop(root.path(), 3, &LOOPBACK_NET).await?;
    const SALES_PER_TILL: usize = 40;
    let mut sellers = Vec::new();
    for node in &nodes {
        let api = node.api.clone();
        sellers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..SALES_PER_TILL {
                let qty = 1 + (i % 3) as i64;
                let v = api
                    .ok_post("/v1/sales", &cash_sale("TEA-1", qty, qty * 350))
                    .await?;
                ids.push(v["id"].as_str().unwrap().to_owned());
            }
            anyhow::Ok(ids)
        }));
    }
    let mut acked = BTreeSet::new();
    for s in sellers {
        acked.extend(s.await??);
    }
    assert_eq!(acked.len(), 3 * SALES_PER_TILL);
    let apis: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
    wait_converged(&apis, 0, CONVERGE_TIMEOUT).await?;
    let first = sale_ids(apis[0]).await?;
    assert_eq!(first, acked, "every acknowledged sale, and nothing else");
    let level = stock(apis[0]).await?;
    for api in &apis[1..] {
        assert_eq!(sale_ids(api).await?, first);
        assert_eq!(
            stock(api).await?,
            level,
            "stock derived the same everywhere"
        );
    }
    let expected: i64 = 100_000 - 3 * (0..SALES_PER_TILL as i64).map(|i| 1 + i % 3).sum::<i64>();
    assert_eq!(level, serde_json::json!(expected));
    // Status shows each till its two peers (the third learned from the first's
    // announcements), how they were found, and over what.
    let till = apis[1].clone();
    let status = wait_for("a till to see both others", CONVERGE_TIMEOUT, || {
        let till = till.clone();
        async move {
            let s = till.ok_get("/v1/status").await?;
            let peers = s["network"]["peers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Both others connected, and pinged (ping runs as each connection opens).
            let ready = peers.len() == 2 && peers.iter().all(|p| p["rtt_ms"].is_number());
            Ok(ready.then_some(s))
        }
    })
    .await?;
    let peers = status["network"]["peers"].as_array().unwrap();
    for p in peers {
        assert!(p["transport"] == "tcp", "{p}");
        assert!(p["rtt_ms"].as_f64().is_some_and(|r| r >= 0.0), "{p}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_till_killed_mid_stream_loses_no_acknowledged_sale_and_converges() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    // Over QUIC this time: the owner listens on nothing else.
    let mut nodes = shop(
        root.path(),
        2,
        &["--no-mdns", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
    )
    .await?;
    let till = nodes[1].api.clone();
    wait_for("the till to show its QUIC peer", CONVERGE_TIMEOUT, || {
        let till = till.clone();
        async move {
            let status = till.ok_get("/v1/status").await?;
            Ok((status["network"]["peers"][0]["transport"] == "quic").then_some(()))
        }
    })
    .await?;
    let seller = nodes[1].api.clone();
    let stream = tokio::spawn(async move {
        let mut acked = Vec::new();
        // Sells until the till dies under it; only answered sales count.
        while let Ok((s, v)) = seller.post("/v1/sales", &cash_sale("TEA-1", 1, 350)).await {
            if s.as_u16() != 201 {
                break;
            }
            acked.push(v["id"].as_str().unwrap().to_owned());
        }
        acked
    });
    // Let the stream and the replication of it run, then pull the plug.
    let owner = nodes[0].api.clone();
    wait_for("sales to replicate", CONVERGE_TIMEOUT, || {
        let owner = owner.clone();
        async move { Ok((sale_ids(&owner).await?.len() >= 50).then_some(())) }
    })
    .await?;
    nodes[1].kill9();
    let acked: BTreeSet<String> = stream.await?.into_iter().collect();
    assert!(acked.len() >= 50);
    // The till comes back alone first: every sale it acknowledged is in its own store, not
    // merely sent back by the owner.
    nodes[0].stop()?;
    nodes[1].restart().await?;
    let own = sale_ids(&nodes[1].api).await?;
    let lost: Vec<_> = acked.difference(&own).collect();
    assert!(
        lost.is_empty(),
        "acknowledged sales lost by the till itself: {lost:?}"
    );
    // The owner comes back on a new port; it is told where the till is.
    let till = nodes[1].api.ok_get("/v1/status").await?;
    let till_addr = format!(
        "{}/p2p/{}",
        till["network"]["listen"][0].as_str().unwrap_or_default(),
        till["network"]["peer_id"].as_str().unwrap_or_default()
    );
    nodes[0] = NodeProcess::spawn(
        BIN.as_ref(),
        &root.path().join("till-0"),
        &[
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--peer",
            &till_addr,
        ],
        &[],
    )
    .await?;
    let apis: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
    wait_converged(&apis, 0, CONVERGE_TIMEOUT).await?;
    for api in &apis {
        let held = sale_ids(api).await?;
        let lost: Vec<_> = acked.difference(&held).collect();
        assert!(lost.is_empty(), "acknowledged sales lost: {lost:?}");
    }
    assert_eq!(sale_ids(apis[0]).await?, sale_ids(apis[1]).await?);
    Ok(())
}

/// Two tills apart (no route between them): the owner voids a sale of 3 while the other till
/// refunds 1 of them. Reconnected, both hold the same sale, the same stock (every unit back
/// once: 1 by the refund, 2 by the void) and list the race as a conflict with what each did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_void_and_a_refund_made_apart_restock_once_everywhere() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes = shop(root.path(), 2, &LOOPBACK_NET).await?;
    let opening = stock(&nodes[0].api).await?.as_i64().unwrap_or_default();
    let sale = nodes[0]
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 3, 1050))
        .await?;
    let sale_id = sale["id"].as_str().unwrap_or_default().to_owned();
    {
        let apis: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
        wait_converged(&apis, 0, CONVERGE_TIMEOUT).await?;
    }
    // Apart: the till comes back with nothing to dial, on a port the owner never learned.
    let till_dir = root.path().join("till-1");
    nodes[1].stop()?;
    std::fs::rename(till_dir.join("peers"), till_dir.join("peers.aside"))?;
    nodes[1] = NodeProcess::spawn(BIN.as_ref(), &till_dir, &LOOPBACK_NET, &[]).await?;
    nodes[0]
        .api
        .ok_post(
            &format!("/v1/sales/{sale_id}/void"),
            &serde_json::json!({ "reason": "rung on the wrong till" }),
        )
        .await?;
    nodes[1]
        .api
        .ok_post(
            &format!("/v1/sales/{sale_id}/refund"),
            &serde_json::json!({ "lines": [{ "line": 0, "qty": 1 }], "reason": "one was cracked" }),
        )
        .await?;
    assert_eq!(stock(&nodes[0].api).await?, opening, "the void alone");
    assert_eq!(stock(&nodes[1].api).await?, opening - 2, "the refund alone");

    // Together again.
    nodes[1].stop()?;
    std::fs::rename(till_dir.join("peers.aside"), till_dir.join("peers"))?;
    nodes[1] = NodeProcess::start(BIN.as_ref(), &till_dir).await?;
    let apis: Vec<&Api> = nodes.iter().map(|n| &n.api).collect();
    wait_converged(&apis, 0, CONVERGE_TIMEOUT).await?;
    let mut seen = Vec::new();
    for api in &apis {
        let s = api.ok_get(&format!("/v1/sales/{sale_id}")).await?;
        assert_eq!(s["status"], "voided", "{s}");
        assert_eq!(s["refunds"].as_array().map(Vec::len), Some(1), "{s}");
        assert_eq!(
            stock(api).await?,
            opening,
            "every unit back once: 1 by the refund, 2 by the void"
        );
        let conflicts = api.ok_get("/v1/conflicts").await?;
        let race: Vec<&Value> = conflicts["conflicts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["kind"] == "void_and_refund")
            .collect();
        assert_eq!(race.len(), 1, "{conflicts}");
        assert_eq!(race[0]["sale_id"], sale_id.as_str());
        assert!(race[0]["void"]["by"].is_string(), "{}", race[0]);
        assert_eq!(race[0]["refunds"][0]["lines"][0]["qty"], 1, "{}", race[0]);
        assert!(race[0]["refunds"][0]["by"].is_string(), "{}", race[0]);
        seen.push((s, race[0].clone()));
    }
    assert_eq!(
        seen[0], seen[1],
        "both tills show the same sale and the same conflict"
    );
    Ok(())
}

/// `--only-peers`: two tills that dial only head office sync through it and never connect to
/// each other, though each hears the other announce itself (a hub and spokes). Without the
/// flag they do connect (`three_processes_converge_after_concurrent_sales`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tills_told_only_peers_sync_through_the_hub_and_never_dial_each_other() -> anyhow::Result<()>
{
    let root = tempfile::tempdir()?;
    let mut nodes = shop(root.path(), 3, &LOOPBACK_NET).await?;
    let hub = nodes[0].api.ok_get("/v1/status").await?["device"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut spoke_net: Vec<&str> = LOOPBACK_NET.to_vec();
    spoke_net.push("--only-peers");
    for (i, node) in nodes.iter_mut().enumerate().skip(1) {
        node.stop()?;
        let dir = root.path().join(format!("till-{i}"));
        *node = NodeProcess::spawn(BIN.as_ref(), &dir, &spoke_net, &[]).await?;
    }
    let sale = nodes[1]
        .api
        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await?;
    let id = sale["id"].as_str().unwrap_or_default().to_owned();
    let far = nodes[2].api.clone();
    wait_for(
        "a sale on one spoke to reach the other",
        CONVERGE_TIMEOUT,
        || {
            let (far, id) = (far.clone(), id.clone());
            async move { Ok(sale_ids(&far).await?.contains(&id).then_some(())) }
        },
    )
    .await?;
    // Long enough for both spokes to announce themselves through the hub (at start, then
    // every 10 s) and for a dial to follow, were either allowed to.
    tokio::time::sleep(Duration::from_secs(12)).await;
    for node in &nodes[1..] {
        assert_eq!(connected_devices(&node.api).await?, vec![hub.clone()]);
    }
    let hub_peers = connected_devices(&nodes[0].api).await?;
    assert_eq!(
        hub_peers.len(),
        2,
        "the hub still serves both: {hub_peers:?}"
    );
    Ok(())
}

/// The sum of a metric's samples in a Prometheus text page whose labels contain `labels`.
fn metric(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name && rest.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn scrape(api: &Api) -> anyhow::Result<String> {
    let (status, page) = api.get("/metrics").await?;
    anyhow::ensure!(status.is_success(), "GET /metrics: {status} {page}");
    Ok(page.as_str().unwrap_or_default().to_owned())
}

/// `GET /metrics` while sales replicate: the seller's written entries and pushes, the
/// receiver's ingested entries and bytes, both writers' commits and the per-peer gauges all
/// move. The token guards it, on the API's address and on the scraper's own (`--metrics`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_sales_replicate() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let scraper_addr = format!("127.0.0.1:{port}");
    let mut owner_net = LOOPBACK_NET.to_vec();
    owner_net.extend(["--metrics", &scraper_addr]);
    let nodes = shop(root.path(), 2, &owner_net).await?;
    let (a, b) = (&nodes[0].api, &nodes[1].api);
    let (a0, b0) = (scrape(a).await?, scrape(b).await?);
    for _ in 0..5 {
        a.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350)).await?;
    }
    let entries = a.ok_get("/v1/status").await?["entries"]
        .as_u64()
        .unwrap_or(0);
    wait_converged(&[a, b], entries, CONVERGE_TIMEOUT).await?;
    // The peer gauges follow the driver's status, published every tick.
    let b1 = wait_for("the till's peer gauges", CONVERGE_TIMEOUT, || async {
        let page = scrape(b).await?;
        Ok(page
            .contains("tillmesh_peer_last_contact_seconds{")
            .then_some(page))
    })
    .await?;
    let a1 = scrape(a).await?;
    let moved = |before: &str, after: &str, name: &str, labels: &str| {
        metric(after, name, labels) - metric(before, name, labels)
    };
    assert!(
        moved(&a0, &a1, "tillmesh_entries_written_total", "") >= 5.0,
        "{a1}"
    );
    assert!(
        moved(&a0, &a1, "tillmesh_sync_pushes_total", "") >= 5.0,
        "{a1}"
    );
    assert!(moved(&a0, &a1, "tillmesh_writer_commit_seconds_count", "") >= 5.0);
    assert!(moved(&a0, &a1, "tillmesh_wal_fsync_seconds_count", "") >= 5.0);
    assert!(
        moved(
            &b0,
            &b1,
            "tillmesh_entries_ingested_total",
            "outcome=\"applied\""
        ) >= 5.0,
        "{b1}"
    );
    assert!(moved(&b0, &b1, "tillmesh_sync_bytes_total", "direction=\"in\"") > 0.0);
    assert_eq!(metric(&b1, "tillmesh_peers_connected", ""), 1.0, "{b1}");
    assert_eq!(metric(&b1, "tillmesh_peer_behind_entries", "peer="), 0.0);
    assert!(b1.contains("# TYPE tillmesh_writer_commit_seconds histogram"));

    // The token guards it: without one, on either address, it is refused and says how.
    let (status, body) = Api::new(a.base.clone()).get("/metrics").await?;
    assert_eq!(status, 401, "{body}");
    let scraper = format!("http://{scraper_addr}");
    let (status, body) = Api::new(scraper.clone()).get("/metrics").await?;
    assert_eq!(status, 401, "{body}");
    assert!(body.to_string().contains("credentials_file"), "{body}");
    // The scraper's address takes the scraper's token (DIR/metrics.token), never the node's:
    // it may face the shop's network, where a token crosses in the clear.
    let (status, body) = Api::for_dir(scraper.clone(), &nodes[0].dir)
        .get("/metrics")
        .await?;
    assert_eq!(
        status, 401,
        "the node's own token on the scraper's address: {body}"
    );
    let metrics_token = nodes[0].dir.join("metrics.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&metrics_token)?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "metrics.token is the owner's alone");
    }
    let scraper_api = Api::with_token(
        scraper.clone(),
        Some(std::fs::read_to_string(&metrics_token)?),
    );
    let page = scrape(&scraper_api).await?;
    assert!(metric(&page, "tillmesh_entries_written_total", "") >= 5.0);
    // That token opens nothing of the API.
    let (status, _) = Api::with_token(
        a.base.clone(),
        Some(std::fs::read_to_string(&metrics_token)?),
    )
    .get("/v1/status")
    .await?;
    assert_eq!(status, 401);
    // It serves the metrics and nothing else.
    for path in ["/v1/status", "/", "/console.js"] {
        let (status, _) = scraper_api.get(path).await?;
        assert_eq!(status, 404, "{path}");
    }
    Ok(())
}

/// `tillmesh status --watch` on a till catching up, its output piped: plain lines (no bar),
/// entries received of entries known, until it says caught up with all the owner's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_catch_up() -> anyhow::Result<()> {
    use std::io::BufRead;
    let root = tempfile::tempdir()?;
    let mut nodes = shop(root.path(), 2, &LOOPBACK_NET).await?;
    nodes[1].stop()?;
    for _ in 0..200 {
        nodes[0]
            .api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await?;
    }
    let total = nodes[0].api.ok_get("/v1/status").await?["entries"]
        .as_u64()
        .unwrap();
    let dir = nodes[1].dir.clone();
    nodes[1] = NodeProcess::start(BIN.as_ref(), &dir).await?;
    let mut watch = std::process::Command::new(BIN)
        .args(["status", "--watch", "--data", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let want = format!("{total}/{total} entries");
    let reader = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in lines {
            let line = line?;
            let done = line.starts_with(&want) && line.contains("caught up");
            seen.push(line);
            if done {
                return Ok::<_, std::io::Error>(seen);
            }
        }
        Ok(seen)
    });
    let seen = tokio::time::timeout(CONVERGE_TIMEOUT, reader).await;
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = seen??.map_err(anyhow::Error::from)?;
    let last = seen.last().cloned().unwrap_or_default();
    assert!(last.contains("caught up"), "{seen:#?}");
    for line in &seen {
        assert!(
            !line.contains('\u{1b}'),
            "a plain line, not a terminal's bar: {line:?}"
        );
        let (have, known) = line
            .split_once(' ')
            .and_then(|(n, _)| n.split_once('/'))
            .unwrap();
        assert!(have.parse::<u64>()? <= known.parse::<u64>()?, "{line}");
    }
    Ok(())
}

/// `tillmesh join` fetches the mesh's entries before it returns: the new till holds the
/// owner's sales with no node running yet, and says so (plain progress lines on stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_catches_up_before_it_returns() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let nodes = shop(root.path(), 1, &LOOPBACK_NET).await?;
    for _ in 0..300 {
        nodes[0]
            .api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
            .await?;
    }
    let code = testkit::invite_code(BIN.as_ref(), &nodes[0].dir, "till")?;
    let dir = root.path().join("late");
    let joined = testkit::tillmesh_json(
        BIN.as_ref(),
        &[
            "join",
            "--data",
            dir.to_str().unwrap(),
            "--name",
            "Late",
            &code,
        ],
    )?;
    // Everything the owner holds, the new device's admission included.
    let total = nodes[0].api.ok_get("/v1/status").await?["entries"]
        .as_u64()
        .unwrap();
    assert_eq!(joined["caught_up"], true, "{joined}");
    assert_eq!(joined["entries"].as_u64(), Some(total), "{joined}");
    // No node runs on the new folder: the CLI reads its store.
    let listed = testkit::tillmesh_json(
        BIN.as_ref(),
        &["sales", "--data", dir.to_str().unwrap(), "--limit", "500"],
    )?;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(300));
    Ok(())
}
