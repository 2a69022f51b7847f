//! `tillmesh demo`: a till on this machine, in a temporary folder, driven through its own API
//! as a till's screen would drive it. Loopback only; nothing to configure.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};
use tillmesh_protocol::Currency;
use tokio::net::TcpListener;

use super::shop::money;
use crate::repo::Repo;

pub async fn run(keep: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp;
    let dir = match keep {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("till-1")
        }
    };
    println!("== tillmesh demo: one till, in {}", dir.display());
    let repo = Repo::init(&dir, "Till 1", Currency::USD).await?;
    let id = repo.identity().clone();
    println!(
        "   new mesh {} owned by this till ({})",
        id.mesh_id.short(),
        id.device_id.short()
    );

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::run(repo, listener, None, async {
        let _ = stopped.await;
    }));
    println!("   local API at {base}\n");
    let http = reqwest::Client::builder().no_proxy().build()?;
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
    let _ = stop.send(());
    server.await.context("the demo's API server")??;
    println!(
        "\ndone. Try it yourself: tillmesh init --data ./till --name \"Till 1\" && tillmesh run --data ./till"
    );
    Ok(())
}
