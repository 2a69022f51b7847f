//! A till and a head-office bridge with the QBO emulator, on this machine: sales rung up on
//! the till appear in QuickBooks, and an accountant's edit in QuickBooks comes back to the till.
//!
//! Run: `cargo run --example head_office_bridge`
//!
//! Everything runs in this process, each part with its own store and over real HTTP and
//! libp2p on loopback: the emulator, the till (the mesh's owner), and the bridge, which pairs
//! with the till by an invite for the `bridge` role and connects to QuickBooks by OAuth.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use tillmesh_bridge_qbo::bridge::client::Qbo;
use tillmesh_bridge_qbo::bridge::state::State;
use tillmesh_bridge_qbo::bridge::{Bridge, connect};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig, invite::Invite, join};
use tillmesh_node::repo::Command;
use tillmesh_protocol::schema::Sale;
use tillmesh_protocol::{Currency, DeviceKey, DocType, Role};
use tillmesh_qbo_emulator::{self as emulator, Config, Settings};

const TIMEOUT: Duration = Duration::from_secs(60);

fn loopback(peers: Vec<libp2p::Multiaddr>) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        peers,
        mdns: false,
        ..NetConfig::default()
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(started.elapsed() < TIMEOUT, "{what}: not after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn sales(repo: &Repo) -> Vec<Sale> {
    repo.list(DocType::Sale, None, 1000)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(id, v)| tillmesh_node::repo::typed::<Sale>(&id, v).ok())
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let forever = std::future::pending::<()>;

    // QuickBooks (the emulator).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let config = Config {
        data: root.path().join("qbo"),
        settings: Settings::default(),
        currency: None,
        tls: true,
    };
    let (qbo, _emu) = emulator::start(listener, config, forever()).await?;
    println!(
        "QuickBooks (emulated) at {}, company {}",
        qbo.base_url, qbo.realm_id
    );

    // The till: the mesh's owner, with a product, listening for peers.
    let till = Repo::init(&root.path().join("till"), "Till 1", Currency::USD).await?;
    till.execute(Command::CreateProduct(serde_json::from_value(json!({
        "sku": "TEA-1", "name": "Green tea", "price": {"amount_minor": 350, "currency": "USD"},
        "stock": 100,
    }))?))
    .await?;
    let (till_net, _t) = net::start(till.clone(), loopback(vec![]), forever()).await?;
    let status = till_net.status();
    let till_addr: libp2p::Multiaddr =
        format!("{}/p2p/{}", status.listen[0], status.peer_id).parse()?;

    // The bridge pairs with the till as a bridge...
    let opened = till_net
        .open_invite(Role::Bridge, Duration::from_secs(60))
        .await
        .context("the till's network stopped")?;
    let invite = Invite {
        code: opened.code,
        addrs: vec![till_addr],
    };
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let welcome = join::pair(secret, &invite, "Head office", TIMEOUT).await?;
    let bridge_dir = root.path().join("bridge");
    let bridge_repo = Repo::join_with_key(
        &bridge_dir,
        "Head office",
        welcome.owner,
        DeviceKey::from_secret(secret),
    )?;
    let (_bridge_net, _b) =
        net::start(bridge_repo.clone(), loopback(welcome.addrs), forever()).await?;
    println!("bridge: paired with the till as a {}", welcome.role);

    // ...and connects to QuickBooks (no browser needed with the emulator).
    let (conn, tokens) = connect::connect(&connect::App {
        base_url: qbo.base_url.clone(),
        authorize_url: qbo.authorize_url.clone(),
        token_url: qbo.token_url.clone(),
        client_id: qbo.client_id.clone(),
        client_secret: qbo.client_secret.clone(),
        verifier_token: Some(qbo.verifier_token.clone()),
        ca_file: qbo.ca_file.clone(),
    })
    .await?;
    let state = Arc::new(State::open(&bridge_dir, bridge_repo.sealer())?);
    state.set_connection(&conn)?;
    state.set_tokens(&tokens)?;
    let realm = conn.realm_id.clone();
    println!("bridge: connected to QuickBooks company {realm}");
    let client = Qbo::new(conn, tokens, state.clone())?;
    let bridge = Arc::new(Bridge::new(
        bridge_repo.clone(),
        client,
        state,
        &bridge_dir,
        realm,
        Some(qbo.verifier_token.clone()),
    ));
    let (_stop, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(bridge.clone().run(stop));
    wait_until("the bridge's admission", || {
        bridge_repo.role() == Some(Role::Bridge)
    })
    .await?;

    // The till sells; the sales reach QuickBooks, and QuickBooks' ids come back to the till.
    for qty in [1, 2, 3] {
        till.execute(Command::Sell(serde_json::from_value(json!({
            "lines": [{"sku": "TEA-1", "qty": qty}], "payments": [{"method": "cash"}],
        }))?))
        .await?;
    }
    wait_until("QuickBooks ids on the till", || {
        let s = sales(&till);
        s.len() == 3
            && s.iter()
                .all(|s| s.ledger.as_ref().is_some_and(|l| l.qbo_id.is_some()))
    })
    .await?;
    for s in sales(&till) {
        let l = s.ledger.unwrap_or_default();
        println!(
            "till: {} {:>6} → QuickBooks SalesReceipt {} ({})",
            s.receipt_number,
            s.total,
            l.qbo_id.unwrap_or_default(),
            l.total.map(|t| t.to_string()).unwrap_or_default()
        );
    }

    // An accountant corrects one receipt's amount in QuickBooks; the till shows QuickBooks'.
    let http = qbo.client();
    let target = sales(&till).remove(0);
    let qbo_id = target
        .ledger
        .as_ref()
        .and_then(|l| l.qbo_id.clone())
        .unwrap_or_default();
    let accountant = accountant_token(&http, &qbo).await?;
    let api = |path: String| format!("{}/v3/company/{}/{path}", qbo.base_url, qbo.realm_id);
    let current: Value = http
        .get(api(format!("salesreceipt/{qbo_id}")))
        .bearer_auth(&accountant)
        .send()
        .await?
        .json()
        .await?;
    let mut edited = current["SalesReceipt"].clone();
    edited["Line"][0]["Amount"] = json!(1.00);
    edited["Line"].as_array_mut().context("lines")?.truncate(1);
    http.post(api("salesreceipt".into()))
        .bearer_auth(&accountant)
        .json(&edited)
        .send()
        .await?;
    println!(
        "accountant: receipt {} set to 1.00 in QuickBooks",
        target.receipt_number
    );
    wait_until("QuickBooks' amount on the till", || {
        sales(&till).iter().any(|s| {
            s.receipt_number == target.receipt_number
                && s.ledger
                    .as_ref()
                    .and_then(|l| l.total)
                    .map(|t| t.amount_minor)
                    == Some(100)
        })
    })
    .await?;
    let id = sales_ids(&till, &target.receipt_number)?;
    let now: Sale = till.get(&id)?.context("the sale")?;
    let shown = now.ledger.and_then(|l| l.total).context("a ledger total")?;
    println!(
        "till: {} now shows QuickBooks' total {shown} (the till rang up {})",
        target.receipt_number, target.total
    );
    Ok(())
}

fn sales_ids(repo: &Repo, receipt: &str) -> anyhow::Result<tillmesh_protocol::DocId> {
    repo.list(DocType::Sale, None, 1000)?
        .into_iter()
        .find(|(_, v)| v["receipt_number"] == receipt)
        .map(|(id, _)| id)
        .context("no such sale")
}

/// An accountant logged in to QuickBooks: the emulator's OAuth flow, as any app.
async fn accountant_token(
    http: &reqwest::Client,
    qbo: &emulator::Endpoints,
) -> anyhow::Result<String> {
    let resp = http
        .get(format!(
            "{}?client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=x&state=s",
            qbo.authorize_url, qbo.client_id
        ))
        .send()
        .await?;
    let location = resp.headers()["location"].to_str()?.to_owned();
    let code = location
        .split("code=")
        .nth(1)
        .and_then(|r| r.split('&').next())
        .context("no code")?
        .to_owned();
    let tokens: Value = http
        .post(&qbo.token_url)
        .basic_auth(&qbo.client_id, Some(&qbo.client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("grant_type=authorization_code&code={code}"))
        .send()
        .await?
        .json()
        .await?;
    Ok(tokens["access_token"]
        .as_str()
        .context("no token")?
        .to_owned())
}
