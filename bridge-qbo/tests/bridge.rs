//! The bridge end to end: a shop's owner node (in this process), the QBO emulator (in this
//! process), and `tillmesh-bridge` as its own process, paired with the owner by an invite for
//! the bridge role and connected to the emulator by OAuth. Sales reach QuickBooks exactly once
//! however often the bridge is killed mid-push; what an accountant changes in QuickBooks comes
//! back to the till.

use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillmesh_bridge_qbo::emulator::{self, Config, Endpoints, Settings};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig};
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{NewProduct, NewSale};
use tillmesh_protocol::schema::Sale;
use tillmesh_protocol::{Currency, DocType, Role};

const BRIDGE: &str = env!("CARGO_BIN_EXE_tillmesh-bridge");
const TIMEOUT: Duration = Duration::from_secs(120);

fn bridge(args: &[&str], dir: &Path) -> std::process::Output {
    Process::new(BRIDGE)
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn spawn_bridge(dir: &Path) -> Child {
    Process::new(BRIDGE)
        .arg("--data")
        .arg(dir)
        .args([
            "run",
            "--api",
            "127.0.0.1:0",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ])
        .env("TILLMESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A client of the emulator for the test's own checks (an accountant's view of QBO).
struct Books {
    http: reqwest::Client,
    ends: Endpoints,
    token: String,
}

impl Books {
    async fn new(ends: Endpoints) -> Books {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let resp = http
            .get(format!(
                "{}?client_id={}&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2Fcb&response_type=code&scope=x&state=s",
                ends.authorize_url, ends.client_id
            ))
            .send()
            .await
            .unwrap();
        let loc = resp.headers()["location"].to_str().unwrap().to_owned();
        let code = loc
            .split("code=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned();
        let tokens: Value = http
            .post(&ends.token_url)
            .basic_auth(&ends.client_id, Some(&ends.client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("grant_type=authorization_code&code={code}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Books {
            token: tokens["access_token"].as_str().unwrap().to_owned(),
            http,
            ends,
        }
    }

    async fn receipts(&self) -> Vec<Value> {
        let mut all = Vec::new();
        let mut start = 1;
        loop {
            let q = format!("select * from SalesReceipt STARTPOSITION {start} MAXRESULTS 1000");
            // The realm's limits apply to this client too: a 429 is waited out.
            let mut v = Value::Null;
            for _ in 0..30 {
                let resp = self
                    .http
                    .get(format!(
                        "{}/v3/company/{}/query?query={}",
                        self.ends.base_url,
                        self.ends.realm_id,
                        enc(&q)
                    ))
                    .bearer_auth(&self.token)
                    .send()
                    .await
                    .unwrap();
                if resp.status().is_success() {
                    v = resp.json().await.unwrap();
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let page = v["QueryResponse"]["SalesReceipt"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if page.is_empty() {
                return all;
            }
            start += page.len();
            all.extend(page);
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        self.http
            .post(format!(
                "{}/v3/company/{}/{path}",
                self.ends.base_url, self.ends.realm_id
            ))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

use tillmesh_bridge_qbo::urlenc::encode as enc;

async fn sell(repo: &Repo, n: usize) {
    for i in 0..n {
        let qty = 1 + (i % 3) as i64;
        let sale: NewSale = serde_json::from_value(json!({
            "lines": [{"sku": if i % 2 == 0 { "TEA-1" } else { "CAKE-1" }, "qty": qty}],
            "payments": [{"method": "card"}],
        }))
        .unwrap();
        repo.execute(Command::Sell(sale)).await.unwrap();
    }
}

fn sales_of(repo: &Repo) -> Vec<Sale> {
    repo.list(DocType::Sale, None, 1000)
        .unwrap()
        .into_iter()
        .map(|(id, v)| tillmesh_node::repo::typed::<Sale>(&id, v).unwrap())
        .collect()
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < TIMEOUT, "{what}: not after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// A shop with an owner till and QuickBooks, and a bridge paired and connected to both.
struct Shop {
    _tmp: tempfile::TempDir,
    ends: Endpoints,
    books: Books,
    owner: Repo,
    dir: std::path::PathBuf,
}

async fn shop(settings: Settings) -> Shop {
    let tmp = tempfile::tempdir().unwrap();
    // QuickBooks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ends, _emu) = emulator::start(
        listener,
        Config {
            data: tmp.path().join("qbo"),
            settings,
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let books = Books::new(ends.clone()).await;
    // The shop: its owner till, with a catalogue with tax.
    let owner = Repo::init(&tmp.path().join("owner"), "Till 1", Currency::USD)
        .await
        .unwrap();
    owner
        .execute(Command::SetTaxRate {
            code: "TAX".into(),
            rate: serde_json::from_value(json!({"name": "Sales tax", "rate_ppm": 82_500})).unwrap(),
        })
        .await
        .unwrap();
    for (sku, price, tax) in [("TEA-1", 350, "TAX"), ("CAKE-1", 425, "NON")] {
        let p: NewProduct = serde_json::from_value(json!({
            "sku": sku, "name": sku, "price": {"amount_minor": price, "currency": "USD"},
            "tax_code": tax, "stock": 100_000,
        }))
        .unwrap();
        owner.execute(Command::CreateProduct(p)).await.unwrap();
    }
    let (network, _net) = net::start(
        owner.clone(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            ..NetConfig::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let status = network.status();
    let addr = format!("{}/p2p/{}", status.listen[0], status.peer_id);
    // The bridge pairs as a bridge and connects to QuickBooks.
    let opened = network
        .open_invite(Role::Bridge, Duration::from_secs(60))
        .await
        .unwrap();
    let invite = format!("tm2:{}@{addr}", net::pairing::display_code(&opened.code));
    let dir = tmp.path().join("bridge");
    let out = bridge(&["join", "--name", "Head office bridge", &invite], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bridge(
        &[
            "connect",
            "--qbo-base",
            &ends.base_url,
            "--client-id",
            &ends.client_id,
            "--client-secret",
            &ends.client_secret,
            "--verifier-token",
            &ends.verifier_token,
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Shop {
        _tmp: tmp,
        ends,
        books,
        owner,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_reach_quickbooks_exactly_once_and_quickbooks_wins_on_money() {
    let Shop {
        _tmp,
        ends: _,
        books,
        owner,
        dir,
    } = shop(Settings::default()).await;
    // A day's sales, pushed while the bridge is killed again and again.
    sell(&owner, 150).await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..6 {
        let mut child = spawn_bridge(&dir);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        tokio::time::sleep(Duration::from_millis(400 + rng % 1200)).await;
        let _ = child.kill(); // SIGKILL: no chance to tidy up.
        let _ = child.wait();
    }
    // The last run's status only: a killed run's file may name a port no longer served.
    let _ = std::fs::remove_file(dir.join("bridge-status.json"));
    let mut child = spawn_bridge(&dir);
    let sales = sales_of(&owner);
    wait_until("every sale in QuickBooks", || async {
        books.receipts().await.len() >= sales.len()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let receipts = books.receipts().await;
    assert_eq!(receipts.len(), sales.len(), "each sale exactly once");
    let mut numbers: Vec<&str> = receipts
        .iter()
        .map(|r| r["DocNumber"].as_str().unwrap())
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), sales.len(), "no receipt twice");
    let cents = |v: &Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    let qbo_total: i64 = receipts.iter().map(|r| cents(&r["TotalAmt"])).sum();
    let till_total: i64 = sales.iter().map(|s| s.total.amount_minor).sum();
    assert_eq!(
        qbo_total, till_total,
        "QuickBooks' totals equal the tills' to the cent"
    );
    // The ledger comes back to the till.
    wait_until("the ledger on the till", || async {
        sales_of(&owner)
            .iter()
            .all(|s| s.ledger.as_ref().is_some_and(|l| l.qbo_id.is_some()))
    })
    .await;
    // QuickBooks notifies the bridge of changes; a forged notification is refused.
    let status = |dir: &Path| {
        std::fs::read_to_string(dir.join("bridge-status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_until("the bridge's endpoint", || async {
        match status(&dir)["http"].as_str() {
            Some(addr) => http
                .get(format!("http://{addr}/v1/bridge"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            None => false,
        }
    })
    .await;
    let hook = format!("http://{}/webhooks", status(&dir)["http"].as_str().unwrap());
    let forged = http
        .post(&hook)
        .header("intuit-signature", "bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"eventNotifications":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    http.post(format!("{}/admin/config", books.ends.base_url))
        .json(&json!({"webhook_url": hook}))
        .send()
        .await
        .unwrap();
    // An accountant changes a receipt's amount in QuickBooks: the till shows QuickBooks'.
    let target = &receipts[0];
    let mut edited = target.clone();
    edited["Line"][0]["Amount"] = json!(99.99);
    edited["Line"].as_array_mut().unwrap().truncate(1);
    edited["TxnTaxDetail"] = json!({"TotalTax": 0});
    let answer = books.post("salesreceipt", &edited).await;
    assert_eq!(answer["SalesReceipt"]["TotalAmt"], json!(99.99), "{answer}");
    let doc = target["DocNumber"].as_str().unwrap().to_owned();
    wait_until("QuickBooks' amount on the till", || async {
        sales_of(&owner).iter().any(|s| {
            s.receipt_number == doc
                && s.ledger
                    .as_ref()
                    .and_then(|l| l.total)
                    .is_some_and(|t| t.amount_minor == 9999)
        })
    })
    .await;
    let s = status(&dir);
    let _ = child.kill();
    let _ = child.wait();
    assert!(s["conflicts"].as_u64() >= Some(1), "{s}");
    assert!(s["webhooks_refused"].as_u64() >= Some(1), "{s}");
    assert!(s["webhooks_verified"].as_u64() >= Some(1), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_double_nothing() {
    // One write in four committed with its answer cut off, one request in ten a 503.
    let Shop {
        _tmp,
        ends,
        books: _,
        owner,
        dir,
    } = shop(Settings {
        drop_after_commit_per_mille: 250,
        fail_5xx_per_mille: 100,
        ..Settings::default()
    })
    .await;
    sell(&owner, 60).await;
    let mut child = spawn_bridge(&dir);
    // Halfway, every access token expires: the bridge refreshes and carries on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    http.post(format!("{}/admin/expire-tokens", ends.base_url))
        .send()
        .await
        .unwrap();
    let sales = sales_of(&owner);
    let status = |dir: &Path| {
        std::fs::read_to_string(dir.join("bridge-status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .unwrap_or(Value::Null)
    };
    wait_until(
        "the bridge to empty its outbox despite the faults",
        || async {
            let s = status(&dir);
            s["outbox"] == 0 && s["posted"].as_u64() >= Some(sales.len() as u64)
        },
    )
    .await;
    let admin: Value = http
        .get(format!("{}/admin/config", ends.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        admin["counters"]["dropped_after_commit"].as_u64() > Some(0)
            && admin["counters"]["injected_5xx"].as_u64() > Some(0),
        "the faults happened: {admin}"
    );
    // Faults off, and a fresh token for this test's own look at the books.
    http.post(format!("{}/admin/config", ends.base_url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let books = Books::new(ends.clone()).await;
    let receipts = books.receipts().await;
    assert_eq!(receipts.len(), sales.len(), "nothing lost, nothing doubled");
    // The refresh token expires too: the bridge says to connect again.
    http.post(format!(
        "{}/admin/expire-tokens?refresh=true",
        ends.base_url
    ))
    .send()
    .await
    .unwrap();
    sell(&owner, 1).await;
    wait_until("the status to ask for a reconnect", || async {
        std::fs::read_to_string(dir.join("bridge-status.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|s| {
                s["connected"] == false
                    && s["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("reconnect"))
            })
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
