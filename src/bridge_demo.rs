//! The QuickBooks act of `tillmesh demo`: the QBO emulator, a bridge paired with till 1 by
//! an invite for the `bridge` role and connected by OAuth, the shop's sales in QuickBooks,
//! and an accountant's correction in QuickBooks back on the till.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_node::cli::demo::Mesh;
use tillmesh_node::net::{self, NetConfig};
use tillmesh_protocol::schema::{Sale, SaleStatus};
use tillmesh_protocol::{DeviceKey, DocType, Role};

use tillmesh_bridge_qbo::bridge::connect::{self, App};
use tillmesh_bridge_qbo::bridge::{Bridge, client::Qbo, state::State};
use tillmesh_qbo_emulator::{self as emulator, Config, Endpoints, Settings};

/// The demo's waits are on loopback: a minute is plenty.
const WAIT_MAX: Duration = Duration::from_secs(60);

pub async fn run(mesh: Mesh) -> anyhow::Result<()> {
    println!("\n-- QuickBooks: the QBO emulator and a bridge at head office");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait_stop = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (ends, emulator_task) = emulator::start(
        listener,
        Config {
            data: mesh.root.join("qbo"),
            settings: Settings::default(),
            currency: None,
            // HTTPS, as QuickBooks is: the bridge trusts the emulator's CA.
            tls: true,
        },
        wait_stop(),
    )
    .await?;
    println!(
        "   QBO emulator at {} (company {})",
        ends.base_url, ends.realm_id
    );

    // Paired as `tillmesh-bridge join` does, with an invite for the bridge role.
    let opened = mesh
        .owner_network
        .open_invite(Role::Bridge, Duration::from_secs(60))
        .await
        .context("till 1's network stopped")?;
    let invite = net::invite::Invite {
        code: opened.code,
        addrs: vec![mesh.owner_address.clone()],
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let welcome = net::join::pair(secret, &invite, "Head office bridge", WAIT_MAX).await?;
    let dir = mesh.root.join("bridge");
    let repo = Repo::join_with_key(
        &dir,
        "Head office bridge",
        welcome.owner,
        DeviceKey::from_secret(secret),
    )?;
    let (_, net_task) = net::start(
        repo.clone(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            peers: vec![mesh.owner_address.clone()],
            mdns: false,
            ..NetConfig::default()
        },
        wait_stop(),
    )
    .await?;
    println!(
        "   the bridge paired with code {} and was admitted as the mesh's {}",
        net::pairing::display_code(&invite.code),
        welcome.role
    );

    // Connected as `tillmesh-bridge connect` does: the emulator approves at once.
    let app = App {
        base_url: ends.base_url.clone(),
        authorize_url: ends.authorize_url.clone(),
        token_url: ends.token_url.clone(),
        client_id: ends.client_id.clone(),
        client_secret: ends.client_secret.clone(),
        verifier_token: Some(ends.verifier_token.clone()),
        ca_file: ends.ca_file.clone(),
    };
    let (conn, tokens) = connect::connect(&app).await?;
    let state = Arc::new(State::open(&dir, repo.sealer())?);
    state.set_connection(&conn)?;
    state.set_tokens(&tokens)?;
    let realm = conn.realm_id.clone();
    let qbo = Qbo::new(conn, tokens, state.clone())?;
    let bridge = Arc::new(Bridge::new(
        repo,
        qbo,
        state,
        &dir,
        realm,
        Some(ends.verifier_token.clone()),
    ));
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hooks = format!("http://{}/webhooks", http.local_addr()?);
    let http_task = tokio::spawn({
        let app = bridge.clone().http();
        let done = wait_stop();
        async move { axum::serve(http, app).with_graceful_shutdown(done).await }
    });
    let bridge_task = tokio::spawn(bridge.clone().run(stop.subscribe()));
    println!("   connected by OAuth; QuickBooks notifies the bridge at {hooks}");

    // An accountant's own connection, to look at the books and correct them.
    let (_, accountant) = connect::connect(&app).await?;
    let books = Books {
        http: ends.client(),
        ends: ends.clone(),
        token: accountant.access_token,
    };
    books.admin(json!({ "webhook_url": hooks })).await?;

    let closed = |repo: &Repo| -> anyhow::Result<Vec<Sale>> {
        Ok(repo
            .list(DocType::Sale, None, 1000)?
            .into_iter()
            .filter_map(|(id, v)| tillmesh_node::repo::typed::<Sale>(&id, v).ok())
            .filter(|s| s.status != SaleStatus::Open)
            .collect())
    };
    wait(
        "every sale to be posted and its QuickBooks id back on till 1",
        || {
            Ok(closed(&mesh.owner)?
                .iter()
                .all(|s| s.ledger.as_ref().is_some_and(|l| l.qbo_id.is_some())))
        },
    )
    .await?;
    println!("\n-- QuickBooks now holds (what an accountant sees)");
    for r in books.all("SalesReceipt").await? {
        println!(
            "   SalesReceipt {:<4} {:<12} {:>9}  {}",
            r["Id"].as_str().unwrap_or(""),
            r["DocNumber"].as_str().unwrap_or(""),
            dollars(&r["TotalAmt"]),
            r["PrivateNote"].as_str().unwrap_or("")
        );
    }
    for r in books.all("RefundReceipt").await? {
        println!(
            "   RefundReceipt {:<3} {:<12} {:>9}",
            r["Id"].as_str().unwrap_or(""),
            r["DocNumber"].as_str().unwrap_or(""),
            dollars(&r["TotalAmt"])
        );
    }
    for c in books.all("Customer").await? {
        println!(
            "   Customer {:<8} {}",
            c["Id"].as_str().unwrap_or(""),
            c["DisplayName"].as_str().unwrap_or("")
        );
    }

    // The accountant corrects the first receipt's amount; QuickBooks wins on every till.
    let receipts = books.all("SalesReceipt").await?;
    let first = receipts
        .iter()
        .find(|r| r["PrivateNote"] != "Voided")
        .context("no receipt in QuickBooks")?;
    let mut edited = first.clone();
    if let Some(lines) = edited["Line"].as_array_mut() {
        lines.truncate(1);
    }
    edited["Line"][0]["Amount"] = json!(5.00);
    edited["TxnTaxDetail"] = json!({ "TotalTax": 0 });
    let answer = books.post("salesreceipt", &edited).await?;
    let number = first["DocNumber"].as_str().unwrap_or("").to_owned();
    println!(
        "\n-- an accountant corrects {number} in QuickBooks: {} becomes {}",
        dollars(&first["TotalAmt"]),
        dollars(&answer["SalesReceipt"]["TotalAmt"])
    );
    wait("QuickBooks' amount to reach till 1", || {
        Ok(mesh
            .owner
            .list(DocType::Sale, None, 1000)?
            .iter()
            .any(|(id, v)| {
                let shown = tillmesh_node::api::present(id, v);
                shown["receipt_number"] == number.as_str() && shown.get("till_total").is_some()
            }))
    })
    .await?;
    for (id, v) in mesh.owner.list(DocType::Sale, None, 1000)? {
        let shown = tillmesh_node::api::present(&id, &v);
        if shown["receipt_number"] == number.as_str() {
            println!(
                "   till 1 now shows {number} at {} (it rang up {}): QuickBooks wins on money; GET /v1/conflicts lists it",
                money(&shown["total"]),
                money(&shown["till_total"])
            );
        }
    }
    let status = bridge.status();
    println!(
        "   bridge: {} posted, {} waiting, {} conflict(s), {} webhook(s) verified, {} requests to QuickBooks",
        status.posted,
        status.outbox,
        status.conflicts,
        status.webhooks_verified,
        status.qbo.requests
    );

    let _ = stop.send(true);
    let _ = bridge_task.await;
    let _ = http_task.await;
    let _ = net_task.await;
    let _ = emulator_task.await;
    Ok(())
}

/// QBO's amounts are JSON numbers in major units of the company's currency (the demo's is
/// USD): shown as QuickBooks wrote them.
fn dollars(v: &Value) -> String {
    format!("{v} USD")
}

/// A mesh amount (`{"amount_minor", "currency"}`) in its currency's own decimals.
fn money(v: &Value) -> String {
    serde_json::from_value::<tillmesh_protocol::Money>(v.clone())
        .map(|m| m.to_string())
        .unwrap_or_else(|_| v.to_string())
}

async fn wait(what: &str, mut done: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while !done()? {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "waited a minute for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The accountant's side: plain QBO v3 calls with their own token.
struct Books {
    http: reqwest::Client,
    ends: Endpoints,
    token: String,
}

impl Books {
    async fn all(&self, entity: &str) -> anyhow::Result<Vec<Value>> {
        let q = format!("select * from {entity} MAXRESULTS 1000");
        let v: Value = self
            .http
            .get(format!(
                "{}/v3/company/{}/query?query={}",
                self.ends.base_url,
                self.ends.realm_id,
                tillmesh_bridge_qbo::bridge::client::enc(&q)
            ))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(v["QueryResponse"][entity]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self
            .http
            .post(format!(
                "{}/v3/company/{}/{path}",
                self.ends.base_url, self.ends.realm_id
            ))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn admin(&self, settings: Value) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/admin/config", self.ends.base_url))
            .json(&settings)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }
}
