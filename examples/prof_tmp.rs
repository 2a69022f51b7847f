use std::sync::Arc;
use std::time::Instant;
use tillmesh_node::Repo;
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{NewProduct, NewSale, SaleLineRequest, TenderRequest};
use tillmesh_protocol::{Currency, Money};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let tmp = tempfile::tempdir().unwrap();
    let repo = Arc::new(
        Repo::init(&tmp.path().join("t"), "T", Currency::USD)
            .await
            .unwrap(),
    );
    for p in 0..20 {
        repo.execute(Command::CreateProduct(NewProduct {
            sku: format!("SKU-{p}"),
            name: "P".into(),
            price: Money::new(250, Currency::USD),
            tax_code: "NON".into(),
            stock: 1_000_000,
            active: true,
        }))
        .await
        .unwrap();
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let repo = repo.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                let s = NewSale {
                    lines: vec![SaleLineRequest {
                        product_id: None,
                        sku: Some(format!("SKU-{}", i % 20)),
                        qty: 1,
                        unit_price_minor: None,
                    }],
                    payments: vec![TenderRequest {
                        method: "card".into(),
                        amount_minor: None,
                    }],
                    customer_id: None,
                };
                repo.execute(Command::Sell(s)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let e = t.elapsed();
    println!(
        "{n} sales in {:?}: {:.0}/s; store {} bytes",
        e,
        n as f64 / e.as_secs_f64(),
        std::fs::metadata(tmp.path().join("t/tillmesh.redb"))
            .unwrap()
            .len()
    );
}
