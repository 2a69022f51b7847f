//! `tillmesh demo`: three tills on this machine, in a temporary folder. The first is driven
//! through its own API as a till's screen would drive it; the other two join its mesh (as
//! `tillmesh join` does, given the first till's address), sell at the same time, and all three
//! are shown to agree. Loopback only (no mDNS on
//! this machine's interfaces); nothing to configure.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};
use tillmesh_protocol::{Currency, DocType};
use tokio::net::TcpListener;

use super::shop::money;
use crate::net::{self, NetConfig, Network};
use crate::repo::requests::NewSale;
use crate::repo::{Command, Repo};

/// The mesh as the demo leaves it, for a last act added by another crate.
pub struct Mesh {
    pub root: PathBuf,
    /// Till 1: the mesh's owner.
    pub owner: Repo,
    pub owner_network: Network,
    /// Till 1's address, with its peer id.
    pub owner_address: libp2p::Multiaddr,
}

/// A last act for the demo (the QuickBooks bridge's, in the `tillmesh` binary).
pub type Extra = Box<
    dyn FnOnce(
            Mesh,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send,
>;

pub async fn run(keep: Option<PathBuf>, extra: Option<Extra>) -> anyhow::Result<()> {
    let tmp;
    let root = match keep {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_owned()
        }
    };
    let dir = root.join("till-1");
    println!("== tillmesh demo: three tills, in {}", root.display());
    let repo = Repo::init(&dir, "Till 1", Currency::USD).await?;
    let id = repo.identity().clone();
    println!(
        "   new mesh {} owned by this till ({})",
        id.mesh_id.short(),
        id.device_id.short()
    );
    let (net_stop, net_stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = net_stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (network, net_task) = net::start(repo.clone(), loopback(Vec::new()), stopped()).await?;
    let till1_addr = peer_address(&network)?;
    println!("   till 1 listens for peers on {till1_addr}");
    let mut tills = Vec::new();
    let mut tasks = vec![net_task];
    for n in [2, 3] {
        let dir = root.join(format!("till-{n}"));
        // Paired as `tillmesh invite` / `tillmesh join` do: a one-time code, checked by
        // SPAKE2 over the network, never sent.
        let opened = network
            .open_invite(
                tillmesh_protocol::Role::Till,
                std::time::Duration::from_secs(60),
            )
            .await
            .context("the network stopped")?;
        let invite = net::invite::Invite {
            code: opened.code,
            addrs: vec![till1_addr.clone()],
        };
        let secret = crate::repo::random_bytes();
        let name = format!("Till {n}");
        let welcome =
            net::join::pair(secret, &invite, &name, std::time::Duration::from_secs(30)).await?;
        let r = Repo::join_with_key(
            &dir,
            &name,
            welcome.owner,
            tillmesh_protocol::DeviceKey::from_secret(secret),
        )?;
        println!(
            "   till {n} paired with code {} and was admitted as a {}",
            net::pairing::display_code(&invite.code),
            welcome.role
        );
        let (_, task) =
            net::start(r.clone(), loopback(vec![till1_addr.clone()]), stopped()).await?;
        println!(
            "   till {n} joined the mesh as {}",
            r.identity().device_id.short()
        );
        tills.push(r);
        tasks.push(task);
    }

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    // As any program on the till calls it: with the node's token.
    let token = crate::api::auth::ensure_token(repo.dir())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(repo.clone(), listener, None, async {
        let _ = stopped.await;
    }));
    println!("   local API at {base}\n");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()?;
    let call = |method: reqwest::Method, path: &str, body: Value| {
        let req = http.request(method, format!("{base}{path}")).json(&body);
        async move {
            let resp = req.send().await?;
            let status = resp.status();
            let v: Value = resp.json().await?;
            anyhow::ensure!(
                status.is_success(),
                "{}",
                v["error"]["message"].as_str().unwrap_or("request failed")
            );
            anyhow::Ok(v)
        }
    };
    let post = |path: &str, body: Value| call(reqwest::Method::POST, path, body);
    let get = |path: &str| call(reqwest::Method::GET, path, Value::Null);

    call(
        reqwest::Method::PUT,
        "/v1/settings/tax-rates/TAX",
        json!({ "name": "Sales tax", "rate_ppm": 82_500 }),
    )
    .await?;
    println!("-- catalogue (tax code TAX is 8.25 %)");
    for (sku, name, price, tax, stock) in [
        ("TEA-1", "Green tea", 350, "NON", 40),
        ("MUG-1", "Stoneware mug", 1200, "TAX", 12),
        ("CAKE-1", "Lemon cake", 425, "NON", 20),
        ("BAG-1", "Tote bag", 899, "TAX", 15),
    ] {
        let p = post("/v1/products", json!({ "sku": sku, "name": name, "price": { "amount_minor": price, "currency": "USD" }, "tax_code": tax, "stock": stock })).await?;
        println!(
            "   {:<8} {:<14} {:>11}  stock {}",
            sku,
            name,
            money(&p["price"]),
            p["stock"]
        );
    }
    let jane = post(
        "/v1/customers",
        json!({ "display_name": "Jane Doe", "email": "jane@example.com" }),
    )
    .await?;

    println!("\n-- ringing up sales");
    let mut sales = Vec::new();
    for (lines, payments, customer) in [
        (
            json!([{ "sku": "TEA-1", "qty": 2 }]),
            json!([{ "method": "cash", "amount_minor": 700 }]),
            None,
        ),
        (
            json!([{ "sku": "MUG-1", "qty": 1 }, { "sku": "CAKE-1", "qty": 2 }]),
            json!([{ "method": "card" }]),
            Some(&jane["id"]),
        ),
        (
            json!([{ "sku": "BAG-1", "qty": 1 }, { "sku": "TEA-1", "qty": 1 }]),
            json!([{ "method": "cash", "amount_minor": 2000 }]),
            None,
        ),
        (
            json!([{ "sku": "CAKE-1", "qty": 3 }]),
            json!([{ "method": "card" }]),
            None,
        ),
    ] {
        let mut body = json!({ "lines": lines, "payments": payments });
        if let Some(c) = customer {
            body["customer_id"] = c.clone();
        }
        let s = post("/v1/sales", body).await?;
        println!(
            "   {}  total {:>10}  paid {:>10}  change {:>9}",
            s["receipt_number"].as_str().unwrap_or(""),
            money(&s["total"]),
            money(&s["paid"]),
            money(&s["change"])
        );
        sales.push(s);
    }

    println!("\n-- corrections are new documents, never edits");
    let voided = post(
        &format!("/v1/sales/{}/void", sales[3]["id"].as_str().unwrap_or("")),
        json!({ "reason": "rang up twice" }),
    )
    .await?;
    println!(
        "   voided {}: its cakes are back on the shelf",
        voided["receipt_number"].as_str().unwrap_or("")
    );
    let refund = post(
        &format!("/v1/sales/{}/refund", sales[1]["id"].as_str().unwrap_or("")),
        json!({ "lines": [{ "sku": "CAKE-1", "qty": 1 }], "reason": "stale" }),
    )
    .await?;
    println!(
        "   refunded {} ({}) against {}",
        money(&refund["total"]),
        refund["method"].as_str().unwrap_or(""),
        refund["sale_receipt_number"].as_str().unwrap_or("")
    );
    post(
        "/v1/stock-adjustments",
        json!({ "lines": [{ "sku": "TEA-1", "delta": 24 }], "reason": "delivery" }),
    )
    .await?;
    println!("   delivery: 24 TEA-1 received");
    let bad = post("/v1/sales", json!({ "lines": [{ "sku": "TEA-1", "qty": 2 }], "payments": [{ "method": "cash", "amount_minor": 500 }] })).await;
    println!(
        "   a sale paid short is refused: {}",
        bad.err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "(accepted?!)".into())
    );

    println!("\n-- stock now");
    for p in get("/v1/products").await?["items"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "   {:<8} {:>3}",
            p["sku"].as_str().unwrap_or(""),
            p["stock"]
        );
    }
    println!("\n-- sales, newest first");
    for s in get("/v1/sales").await?["items"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "   {}  {:<9} {:>10}",
            s["receipt_number"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            money(&s["total"])
        );
    }
    let status = get("/v1/status").await?;
    println!(
        "\n-- status: {} signed entries in the log, {} rejected",
        status["entries"], status["rejected"]["count"]
    );

    println!("\n-- tills 2 and 3 receive the catalogue, then sell at the same time");
    for t in &tills {
        wait_for(|| Ok(t.list(DocType::Product, None, 10)?.len() >= 4)).await?;
    }
    let mut sellers = Vec::new();
    for (i, t) in tills.iter().enumerate() {
        let t = t.clone();
        sellers.push(tokio::spawn(async move {
            for k in 0..5 {
                let sku = ["TEA-1", "BAG-1"][(i + k) % 2];
                let sale: NewSale = serde_json::from_value(json!({
                    "lines": [{ "sku": sku, "qty": 1 }], "payments": [{ "method": "card" }],
                }))?;
                t.execute(Command::Sell(sale)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in sellers {
        s.await??;
    }
    let all: Vec<&Repo> = std::iter::once(&repo).chain(tills.iter()).collect();
    wait_for(|| {
        let first = all[0].version_vector()?;
        Ok(all[1..]
            .iter()
            .all(|r| r.version_vector().is_ok_and(|v| v == first)))
    })
    .await?;
    for (n, r) in all.iter().enumerate() {
        let sales = r.list(DocType::Sale, None, 1000)?.len();
        let tea = r
            .list(DocType::Product, None, 10)?
            .into_iter()
            .find(|(_, v)| v["sku"] == "TEA-1")
            .map(|(id, v)| crate::api::present(&id, &v)["stock"].clone())
            .unwrap_or_default();
        println!(
            "   till {}: {} entries, {sales} sales, TEA-1 stock {tea}",
            n + 1,
            r.version_vector()?.total()
        );
    }
    println!("   all three tills agree.");
    if let Some(extra) = extra {
        extra(Mesh {
            root: root.clone(),
            owner: repo.clone(),
            owner_network: network.clone(),
            owner_address: till1_addr.clone(),
        })
        .await?;
    }

    let _ = stop.send(());
    server.await.context("the demo's API server")??;
    let _ = net_stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "\ndone. Try it yourself: tillmesh init --data ./till --name \"Till 1\" && tillmesh run --data ./till"
    );
    Ok(())
}

/// Network settings for a demo till: loopback, any free port, no mDNS.
fn loopback(peers: Vec<libp2p::Multiaddr>) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")],
        peers,
        mdns: false,
        ..NetConfig::default()
    }
}

/// The first address the node listens on, with its peer id: what another till dials.
fn peer_address(network: &Network) -> anyhow::Result<libp2p::Multiaddr> {
    let status = network.status();
    let addr: libp2p::Multiaddr = status
        .listen
        .first()
        .context("the network did not start listening")?
        .parse()?;
    Ok(addr.with(libp2p::multiaddr::Protocol::P2p(status.peer_id.parse()?)))
}

/// Polls `done` until it holds; the demo's tills are on loopback, so a minute is plenty.
async fn wait_for(mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done()? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the tills did not agree within a minute"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
