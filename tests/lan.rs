//! Networks of real hosts, as Linux network namespaces the tests build and remove:
//! - a shop LAN where tills with no address configured find each other by mDNS, converge, and
//!   a till whose cable is pulled while the others sell catches up when it is plugged back;
//! - the internet: two shops that can reach only head office's relay sync through it;
//! - two shops behind NAT routers: the relay introduces them, they punch through both NATs
//!   (DCUtR) and sync direct, even with head office gone; behind a symmetric NAT the relayed
//!   connection keeps syncing and the status says why.
//!
//! They need root, iproute2 and nftables (`.ci/run` installs them); without them they say so
//! and pass.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tillmesh::netns::{Lan, Nat, NatShops, Netns, NsNode, OFFICE_ADDR, available, nft_available};
use tillmesh::testkit::{Api, cash_sale, product, tillmesh};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const TIMEOUT: Duration = Duration::from_secs(90);

/// Whether to skip: only where namespaces cannot be made, and never in CI
/// (`TILLMESH_REQUIRE_NETNS=1`), where a skip would hide that these tests did not run.
fn skip() -> bool {
    match available().and_then(|()| nft_available()) {
        Ok(()) => false,
        Err(why) if std::env::var_os("TILLMESH_REQUIRE_NETNS").is_some() => {
            panic!("TILLMESH_REQUIRE_NETNS is set but {why}")
        }
        Err(why) => {
            eprintln!("skipped: {why}");
            true
        }
    }
}

/// A unique prefix for this test's namespaces.
fn tag(test: &str) -> String {
    format!("tm{}{test}", std::process::id())
}

/// Runs `tillmesh ARGS` inside `ns`.
fn tillmesh_in(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = ns.command(Path::new(BIN)).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "tillmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Opens a till invite on the node in `dir`; returns the whole invite line and the short code.
fn invite_in(ns: &Netns, dir: &Path) -> anyhow::Result<(String, String)> {
    let out = tillmesh_in(
        ns,
        &["invite", "--data", &dir.to_string_lossy(), "--role", "till"],
    )?;
    let line = out.lines().last().unwrap_or_default().to_owned();
    let code = line
        .strip_prefix("tm2:")
        .and_then(|r| r.split('@').next())
        .unwrap_or_default()
        .to_owned();
    Ok((line, code))
}

fn join_in(ns: &Netns, dir: &Path, name: &str, invite: &str) -> anyhow::Result<()> {
    tillmesh_in(
        ns,
        &[
            "join",
            "--data",
            &dir.to_string_lossy(),
            "--name",
            name,
            invite,
        ],
    )
    .map(drop)
}

/// A new mesh in `dir`, its owner running in `ns` with the default network flags (mDNS on,
/// every interface: here only the namespace's own), and a product with plenty of stock.
fn owner_with_tea(ns: &Netns, dir: &Path) -> anyhow::Result<NsNode> {
    tillmesh_in(
        ns,
        &["init", "--data", &dir.to_string_lossy(), "--name", "Till 0"],
    )?;
    let node = NsNode::start(ns, BIN.as_ref(), dir, &[])?;
    ns.block_on(node.api.ok_post(
        "/v1/products",
        &product("TEA-1", "Green tea", 350, 1_000_000),
    ))?;
    Ok(node)
}

async fn status(api: &Api) -> Value {
    api.ok_get("/v1/status").await.unwrap_or(Value::Null)
}

/// Waits, polling each node inside its own namespace, until all hold the same entries.
fn wait_converged(nodes: &[(&Netns, &Api)], what: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let vvs: Vec<Value> = nodes
            .iter()
            .map(|(ns, api)| ns.block_on(async { status(api).await["version_vector"].clone() }))
            .collect();
        if !vvs[0].is_null() && vvs.windows(2).all(|w| w[0] == w[1]) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < TIMEOUT,
            "{what}: not converged after {TIMEOUT:?}: {vvs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sale_ids(ns: &Netns, api: &Api) -> anyhow::Result<BTreeSet<String>> {
    ns.block_on(async {
        Ok(api
            .all("/v1/sales")
            .await?
            .iter()
            .filter_map(|s| s["id"].as_str().map(str::to_owned))
            .collect())
    })
}

/// Sells `count` sales on a till from `clients` connections; returns the acknowledged ids.
fn sell(ns: &Netns, api: &Api, count: usize, clients: usize) -> anyhow::Result<Vec<String>> {
    ns.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let api = api.clone();
            let n = count / clients + usize::from(c < count % clients);
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..n {
                    let v = api
                        .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
                        .await?;
                    ids.push(v["id"].as_str().unwrap_or_default().to_owned());
                }
                anyhow::Ok(ids)
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await??);
        }
        Ok(ids)
    })
}

#[test]
fn shop_lan_tills_find_each_other_by_mdns_and_a_cut_till_catches_up() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let lan = Lan::create(&tag("lan"), 77, 3)?;
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (0..3)
        .map(|i| root.path().join(format!("till-{i}")))
        .collect();
    let mut nodes = vec![owner_with_tea(&lan.hosts[0], &dirs[0])?];
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        // The short code alone: mDNS finds the inviting till.
        let (_, code) = invite_in(&lan.hosts[0], &dirs[0])?;
        join_in(&lan.hosts[i], dir, &format!("Till {i}"), &code)?;
        // No address configured: only mDNS can find the others.
        std::fs::remove_file(dir.join("peers"))?;
        nodes.push(NsNode::start(&lan.hosts[i], BIN.as_ref(), dir, &[])?);
    }
    let all: Vec<(&Netns, &Api)> = lan.hosts.iter().zip(nodes.iter().map(|n| &n.api)).collect();
    wait_converged(&all, "the catalogue")?;
    // Each till sees the other two, found by mDNS.
    for (i, (ns, api)) in all.iter().enumerate() {
        let peers = ns.block_on(async {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let s = status(api).await;
                let peers = s["network"]["peers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let by_mdns = peers.iter().any(|p| p["found_by"] == "mdns");
                if (peers.len() == 2 && by_mdns) || Instant::now() > deadline {
                    return peers;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        assert_eq!(peers.len(), 2, "till {i} peers: {peers:?}");
        assert!(
            peers.iter().any(|p| p["found_by"] == "mdns"),
            "till {i} found no peer by mDNS: {peers:?}"
        );
    }

    // Concurrent sales on all three converge.
    let mut acked = BTreeSet::new();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = all
            .iter()
            .map(|(ns, api)| s.spawn(move || sell(ns, api, 30, 2)))
            .collect();
        for h in handles {
            acked.extend(h.join().expect("seller")?);
        }
        Ok(())
    })?;
    wait_converged(&all, "concurrent sales")?;
    for (ns, api) in &all {
        assert_eq!(sale_ids(ns, api)?, acked);
    }

    // Pull till 2's cable; the others sell thousands; plug it back.
    lan.set_link(2, false)?;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = all[..2]
            .iter()
            .map(|(ns, api)| s.spawn(move || sell(ns, api, 1000, 4)))
            .collect();
        for h in handles {
            acked.extend(h.join().expect("seller")?);
        }
        Ok(())
    })?;
    let cut_till = sale_ids(all[2].0, all[2].1)?;
    assert!(
        cut_till.len() < acked.len(),
        "the cut till cannot have the sales made while it was cut off"
    );
    lan.set_link(2, true)?;
    let took = wait_converged(&all, "catching up after the cable is back")?;
    eprintln!("cut till caught up with 2,000 sales in {took:?}");
    for (ns, api) in &all {
        let held = sale_ids(ns, api)?;
        assert_eq!(held.len(), acked.len());
        assert_eq!(held, acked, "nothing lost, nothing extra");
    }
    Ok(())
}

#[test]
fn shops_that_reach_only_the_relay_sync_through_it() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let t = tag("relay");
    // Head office's relay sits on two networks; each shop sees only its own.
    let relay = Netns::create(&format!("{t}-r"))?;
    let shops = [
        Netns::create(&format!("{t}-a"))?,
        Netns::create(&format!("{t}-b"))?,
    ];
    for (i, shop) in shops.iter().enumerate() {
        let (outer, inner) = (format!("r{i}"), "eth0");
        relay.ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", inner, "netns", &shop.name,
        ])?;
        relay.ip(&["addr", "add", &format!("10.78.{i}.1/24"), "dev", &outer])?;
        relay.ip(&["link", "set", &outer, "up"])?;
        shop.ip(&["addr", "add", &format!("10.78.{i}.2/24"), "dev", inner])?;
        shop.ip(&["link", "set", inner, "up"])?;
    }
    // No forwarding in the relay's namespace: the shops have no route to each other.
    let unreachable = shops[0]
        .command(Path::new("ping"))
        .args(["-c1", "-W1", "10.78.1.2"])
        .output();
    if let Ok(o) = unreachable {
        assert!(!o.status.success(), "the shops must not reach each other");
    }

    let root = tempfile::tempdir()?;
    let office = root.path().join("office");
    let _hub = head_office(
        &relay,
        &office,
        &["--relay", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/7421"],
    )?;
    let mut nodes = Vec::new();
    for (i, shop) in shops.iter().enumerate() {
        let dir = root.path().join(format!("shop-{i}"));
        // By address: the shops reach head office across the (routed) internet.
        let (line, _) = invite_in(&relay, &office)?;
        join_in(shop, &dir, &format!("Shop {i}"), &line)?;
        nodes.push(NsNode::start(
            shop,
            BIN.as_ref(),
            &dir,
            &["--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/7421"],
        )?);
    }
    // Each shop comes to see the other as a peer through a relay circuit.
    for (i, shop) in shops.iter().enumerate() {
        let other = shops[1 - i]
            .block_on(async { status(&nodes[1 - i].api).await["network"]["peer_id"].clone() });
        let seen = shop.block_on(async {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                let s = status(&nodes[i].api).await;
                let peer = s["network"]["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["peer_id"] == other)
                    .cloned();
                if peer.is_some() || Instant::now() > deadline {
                    return (peer, s);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (peer, s) = seen;
        let peer = peer.unwrap_or_else(|| panic!("shop {i} never connected to the other: {s}"));
        assert_eq!(peer["transport"], "relay", "{peer}");
    }
    // A sale in one shop reaches the other.
    let sale = shops[0].block_on(
        nodes[0]
            .api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 2, 700)),
    )?;
    let id = sale["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        if sale_ids(&shops[1], &nodes[1].api)?.contains(&id) {
            break;
        }
        assert!(started.elapsed() < TIMEOUT, "the sale never reached shop 1");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tillmesh(BIN.as_ref(), &["--version"]);
    Ok(())
}

/// A LAN neighbour advertising the mesh's tag under 10,000 made-up peer ids (from its own
/// namespace, with real mDNS) cannot grow a till's dial targets past 256, nor its memory past
/// a bound, nor keep it from finding and syncing with the shop's other till, which it meets
/// only by mDNS after the flood has filled its targets.
#[test]
fn a_lan_flood_of_made_up_peers_is_held_to_the_limit() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    const FLOOD: usize = 10_000;
    let lan = Lan::create(&tag("flood"), 79, 3)?;
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (0..2)
        .map(|i| root.path().join(format!("till-{i}")))
        .collect();
    let a = owner_with_tea(&lan.hosts[0], &dirs[0])?;
    let (_, code) = invite_in(&lan.hosts[0], &dirs[0])?;
    join_in(&lan.hosts[1], &dirs[1], "Till 1", &code)?;
    std::fs::remove_file(dirs[1].join("peers"))?;
    let mesh: tillmesh_protocol::MeshId = lan.hosts[0].block_on(status(&a.api))["mesh_id"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let tag = tillmesh_node::net::discovery::mesh_tag(&mesh);
    let rss_before = a.rss_kib().unwrap_or(0);

    // The neighbour: one mDNS responder, 10,000 services with the mesh's tag, each a peer id
    // no member holds, at a port where nothing listens.
    let (flood_tx, flood_rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let neighbour = &lan.hosts[2];
        let host = format!("{}.local.", "neighbour");
        let ip = lan.addr(2);
        let flooder = s.spawn(move || -> anyhow::Result<()> {
            neighbour.block_on(async move {
                let daemon = mdns_sd::ServiceDaemon::new()?;
                daemon
                    .disable_interface(vec![mdns_sd::IfKind::IPv6, mdns_sd::IfKind::LoopbackV4])?;
                for _ in 0..FLOOD {
                    let peer = libp2p::PeerId::random().to_base58();
                    let info = mdns_sd::ServiceInfo::new(
                        "_tillmesh._udp.local.",
                        &peer,
                        &host,
                        ip.as_str(),
                        9,
                        &[("mesh", tag.as_str()), ("peer", peer.as_str())][..],
                    )?;
                    // The responder's queue holds 100 commands: wait for room.
                    loop {
                        match daemon.register(info.clone()) {
                            Err(mdns_sd::Error::Again) => {
                                tokio::time::sleep(Duration::from_millis(2)).await
                            }
                            other => break other?,
                        }
                    }
                }
                // Advertising until the test is done with the till.
                let _ = flood_rx.recv();
                let _ = daemon.shutdown();
                anyhow::Ok(())
            })
        });
        let result = (|| -> anyhow::Result<()> {
            // The flood reaches the till and fills its targets, no further.
            let targets = lan.hosts[0].block_on(async {
                let deadline = Instant::now() + TIMEOUT;
                let mut most = 0;
                loop {
                    let n = status(&a.api).await["network"]["dial_targets"]
                        .as_u64()
                        .unwrap_or(0);
                    most = most.max(n);
                    assert!(n <= 256, "dial targets past the limit: {n}");
                    if most >= 200 || Instant::now() > deadline {
                        return most;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            assert!(
                targets >= 200,
                "the flood reached the till: {targets} targets"
            );
            // The shop's other till comes up now, found only by mDNS, and they sync.
            let b = NsNode::start(&lan.hosts[1], BIN.as_ref(), &dirs[1], &[])?;
            let all = [(&lan.hosts[0], &a.api), (&lan.hosts[1], &b.api)];
            wait_converged(&all, "the catalogue, through the flood")?;
            let sold = sell(&lan.hosts[1], &b.api, 20, 2)?;
            wait_converged(&all, "sales, through the flood")?;
            assert_eq!(sale_ids(&lan.hosts[0], &a.api)?, sold.into_iter().collect());
            let s = lan.hosts[0].block_on(status(&a.api));
            let targets = s["network"]["dial_targets"].as_u64().unwrap_or(0);
            assert!(targets <= 256, "{targets}");
            let rss_after = a.rss_kib().unwrap_or(0);
            let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
            eprintln!(
                "flood of {FLOOD} advertised peers: dial targets {targets}, RSS {} MiB -> {} MiB (+{growth_mib} MiB)",
                rss_before / 1024,
                rss_after / 1024
            );
            assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");
            Ok(())
        })();
        let _ = flood_tx.send(());
        flooder.join().expect("the flooder")?;
        result
    })
}

/// Head office's node in `ns`: a new mesh in `dir`, running with `flags`, with plenty of tea.
fn head_office(ns: &Netns, dir: &Path, flags: &[&str]) -> anyhow::Result<NsNode> {
    tillmesh_in(
        ns,
        &[
            "init",
            "--data",
            &dir.to_string_lossy(),
            "--name",
            "Head office",
        ],
    )?;
    let hub = NsNode::start(ns, BIN.as_ref(), dir, flags)?;
    ns.block_on(hub.api.ok_post(
        "/v1/products",
        &product("TEA-1", "Green tea", 350, 1_000_000),
    ))?;
    Ok(hub)
}

/// Head office (a relay, on the internet) and two shops behind NAT routers, each joined to the
/// mesh by an invite that names head office's address, and running.
fn shops_behind_nat(
    t: &str,
    nats: [Nat; 2],
) -> anyhow::Result<(NatShops, tempfile::TempDir, NsNode, Vec<NsNode>)> {
    let net = NatShops::create(t, nats)?;
    let root = tempfile::tempdir()?;
    let office = root.path().join("office");
    let hub = head_office(&net.office, &office, &["--relay", "--no-mdns"])?;
    let mut shops = Vec::new();
    for (i, shop) in net.shops.iter().enumerate() {
        let dir = root.path().join(format!("shop-{i}"));
        let (line, _) = invite_in(&net.office, &office)?;
        anyhow::ensure!(
            line.contains(OFFICE_ADDR),
            "the invite names head office: {line}"
        );
        join_in(shop, &dir, &format!("Shop {i}"), &line)?;
        shops.push(NsNode::start(shop, BIN.as_ref(), &dir, &["--no-mdns"])?);
    }
    Ok((net, root, hub, shops))
}

/// Waits until one of the shops `watch` sees the other shop as a peer for which `done`
/// holds; returns that peer's status, or panics with every status.
fn wait_for_peer(
    net: &NatShops,
    shops: &[NsNode],
    watch: &[usize],
    what: &str,
    done: impl Fn(&Value) -> bool + Sync,
) -> Value {
    let peer_ids: Vec<Value> = (0..2)
        .map(|i| {
            net.shops[i]
                .block_on(async { status(&shops[i].api).await["network"]["peer_id"].clone() })
        })
        .collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut seen = Vec::new();
        for &i in watch {
            let s = net.shops[i].block_on(status(&shops[i].api));
            let peer = s["network"]["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["peer_id"] == peer_ids[1 - i] && done(p))
                .cloned();
            if let Some(peer) = peer {
                return peer;
            }
            seen.push(s);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {TIMEOUT:?}: {seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A sale in shop `from` shows in shop `to`.
fn sale_crosses(net: &NatShops, shops: &[NsNode], from: usize, to: usize) -> anyhow::Result<()> {
    let sale = net.shops[from].block_on(
        shops[from]
            .api
            .ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350)),
    )?;
    let id = sale["id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    while !sale_ids(&net.shops[to], &shops[to].api)?.contains(&id) {
        anyhow::ensure!(
            started.elapsed() < TIMEOUT,
            "the sale never reached shop {to}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn shops_behind_nat_punch_through_and_sync_direct() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let (net, _root, mut hub, shops) =
        shops_behind_nat(&tag("punch"), [Nat::PortPreserving, Nat::PortPreserving])?;
    // The shops can't reach each other unasked: each router drops what it did not ask for.
    let unasked = net.shops[0]
        .command(Path::new("ping"))
        .args(["-c1", "-W1", "203.0.113.2"])
        .output()?;
    assert!(
        !unasked.status.success(),
        "a router must drop unsolicited packets"
    );
    for i in 0..2 {
        let peer = wait_for_peer(
            &net,
            &shops,
            &[i],
            "a direct connection to the other shop",
            |p| p["hole_punch"]["state"] == "direct" && p["transport"] != "relay",
        );
        // Direct to the other shop's router, not through head office.
        let address = peer["address"].as_str().unwrap_or_default();
        assert!(
            address.contains(&format!("203.0.113.{}", 2 - i)),
            "shop {i} reaches the other at its router's public address: {peer}"
        );
    }
    sale_crosses(&net, &shops, 0, 1)?;
    // Head office closes: the shops go on syncing, direct.
    hub.kill9();
    sale_crosses(&net, &shops, 1, 0)?;
    sale_crosses(&net, &shops, 0, 1)?;
    Ok(())
}

#[test]
fn behind_a_symmetric_nat_the_relay_keeps_syncing_and_the_status_says_why() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let (net, _root, _hub, shops) =
        shops_behind_nat(&tag("symnat"), [Nat::PortPreserving, Nat::Symmetric])?;
    let failed = |p: &Value| p["hole_punch"]["state"] == "relayed";
    let peer = wait_for_peer(&net, &shops, &[0, 1], "a failed hole punch noted", |p| {
        failed(p) || p["transport"] != "relay"
    });
    assert!(failed(&peer), "a symmetric NAT can't be punched: {peer}");
    assert_eq!(peer["transport"], "relay", "{peer}");
    let detail = peer["hole_punch"]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("symmetric NAT"), "{peer}");
    sale_crosses(&net, &shops, 0, 1)?;
    sale_crosses(&net, &shops, 1, 0)?;
    Ok(())
}

/// A strict product's rights, as a till sees them: what it holds itself.
fn own_rights(ns: &Netns, api: &Api, path: &str, device: &str) -> anyhow::Result<i64> {
    let p = ns.block_on(api.ok_get(path))?;
    Ok(p["rights"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["device"] == device)
        .filter_map(|d| d["units"].as_i64())
        .sum())
}

#[test]
fn a_cut_off_till_sells_exactly_its_rights_then_gets_more_when_back() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let lan = Lan::create(&tag("rights"), 79, 2)?;
    let root = tempfile::tempdir()?;
    let dirs: Vec<_> = (0..2)
        .map(|i| root.path().join(format!("till-{i}")))
        .collect();
    let owner = owner_with_tea(&lan.hosts[0], &dirs[0])?;
    let (_, code) = invite_in(&lan.hosts[0], &dirs[0])?;
    join_in(&lan.hosts[1], &dirs[1], "Till 1", &code)?;
    let till = NsNode::start(&lan.hosts[1], BIN.as_ref(), &dirs[1], &[])?;
    let (o, t) = ((&lan.hosts[0], &owner.api), (&lan.hosts[1], &till.api));
    let mug = o.0.block_on(o.1.ok_post(
        "/v1/products",
        &serde_json::json!({
            "sku": "MUG", "name": "Mug", "price": {"amount_minor": 500, "currency": "USD"},
            "stock": 40, "stock_policy": "strict",
        }),
    ))?;
    let path = format!("/v1/products/{}", mug["id"].as_str().unwrap_or_default());
    wait_converged(&[o, t], "the strict product")?;
    let device = t.0.block_on(status(t.1))["device"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mug_sale = cash_sale("MUG", 1, 500);

    // Connected: the till holds nothing, asks the owner, and sells; it keeps a reserve.
    t.0.block_on(t.1.ok_post("/v1/sales", &mug_sale))?;
    let reserve = own_rights(t.0, t.1, &path, &device)?;
    assert!(reserve > 0, "a grant leaves the till a reserve");

    // Cut off: it sells exactly the rights it holds, then refuses and says it is offline.
    lan.set_link(1, false)?;
    for _ in 0..reserve {
        t.0.block_on(t.1.ok_post("/v1/sales", &mug_sale))?;
    }
    let refused = t.0.block_on(async {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (code, body) = t.1.post("/v1/sales", &mug_sale).await?;
            assert_eq!(code, 409, "a till without rights never sells: {body}");
            let message = body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // Until the dead connection is noticed, the owner is asked and does not answer.
            if message.contains("offline") && message.contains("is connected now")
                || Instant::now() > deadline
            {
                return anyhow::Ok(message);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })?;
    assert!(
        refused.contains("holds rights to 0 of MUG")
            && refused.contains("none of them is connected"),
        "{refused}"
    );

    // Back: it asks again and sells.
    lan.set_link(1, true)?;
    t.0.block_on(async {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (code, body) = t.1.post("/v1/sales", &mug_sale).await?;
            if code.is_success() {
                return anyhow::Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "no sale after reconnecting: {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })?;
    wait_converged(&[o, t], "after the cable is back")?;
    let level = |(ns, api): (&Netns, &Api)| -> anyhow::Result<Value> {
        Ok(ns.block_on(api.ok_get(&path))?["stock"].clone())
    };
    assert_eq!(level(o)?, serde_json::json!(40 - 1 - reserve - 1));
    assert_eq!(level(t)?, level(o)?);
    Ok(())
}
