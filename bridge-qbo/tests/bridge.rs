//! The bridge end to end: a shop's owner node (in this process), the QBO emulator (in this
//! process), and `tillmesh-bridge` as its own process, paired with the owner by an invite for
//! the bridge role and connected to the emulator by OAuth. Sales reach QuickBooks exactly once
//! however often the bridge is killed mid-push; what an accountant changes in QuickBooks comes
//! back to the till.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig};
use tillmesh_node::repo::Command;
use tillmesh_node::repo::requests::{NewProduct, NewSale};
use tillmesh_protocol::schema::Sale;
use tillmesh_protocol::{Currency, DocType};
use tillmesh_qbo_emulator::{self as emulator, Config, Endpoints, Settings};

const TIMEOUT: Duration = Duration::from_secs(120);

mod support;
use support::{Running, join_and_connect, spawn_bridge_with};

fn spawn_bridge(dir: &Path) -> Running {
    spawn_bridge_batching(dir, 30)
}

/// `batch`: creates per batch request; 1 posts one by one.
fn spawn_bridge_batching(dir: &Path, batch: u16) -> Running {
    spawn_bridge_with(dir, &["--batch", &batch.to_string()])
}

/// A client of the emulator for the test's own checks (an accountant's view of QBO).
struct Books {
    http: reqwest::Client,
    ends: Endpoints,
    token: String,
}

impl Books {
    async fn new(ends: Endpoints) -> Books {
        let http = ends.client();
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
        self.all("SalesReceipt").await
    }

    /// The sales receipt numbered `number`, if QuickBooks holds one.
    async fn receipt(&self, number: &str) -> Option<Value> {
        self.receipts()
            .await
            .into_iter()
            .find(|r| r["DocNumber"] == number)
    }

    async fn all(&self, entity: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut start = 1;
        loop {
            let q = format!("select * from {entity} STARTPOSITION {start} MAXRESULTS 1000");
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
            let page = v["QueryResponse"][entity]
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

use tillmesh_bridge_qbo::bridge::client::enc;

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

/// A till paired with the owner's (as `tillmesh join` does), synced with it, and ready to
/// sell: its admission and the catalogue have arrived.
async fn join_till(network: &net::Network, root: &Path, name: &str) -> Repo {
    let status = network.status();
    let opened = network
        .open_invite(tillmesh_protocol::Role::Till, Duration::from_secs(60))
        .await
        .unwrap();
    let invite = net::invite::Invite::decode(&format!(
        "tm2:{}@{}/p2p/{}",
        net::pairing::display_code(&opened.code),
        status.listen[0],
        status.peer_id
    ))
    .unwrap();
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    let welcome = net::join::pair(secret, &invite, name, Duration::from_secs(30))
        .await
        .unwrap();
    let till = Repo::join_with_key(
        &root.join(name),
        name,
        welcome.owner,
        tillmesh_protocol::DeviceKey::from_secret(secret),
    )
    .unwrap();
    let (_, _net) = net::start(
        till.clone(),
        NetConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            peers: invite.addrs.clone(),
            mdns: false,
            ..NetConfig::default()
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    wait_until("the new till's admission and catalogue", || async {
        till.role().is_some() && till.list(DocType::Product, None, 10).unwrap().len() == 2
    })
    .await;
    till
}

fn sales_of(repo: &Repo) -> Vec<Sale> {
    sales_by_id(repo).into_iter().map(|(_, s)| s).collect()
}

/// Every sale `repo` holds (up to 1,000), with its id.
fn sales_by_id(repo: &Repo) -> Vec<(tillmesh_protocol::DocId, Sale)> {
    repo.list(DocType::Sale, None, 1000)
        .unwrap()
        .into_iter()
        .map(|(id, v)| (id, tillmesh_node::repo::typed::<Sale>(&id, v).unwrap()))
        .collect()
}

/// What `tillmesh-bridge` last wrote to `DIR/bridge-status.json` (null before it has).
fn bridge_status(dir: &Path) -> Value {
    std::fs::read_to_string(dir.join("bridge-status.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .unwrap_or(Value::Null)
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
    network: net::Network,
}

async fn shop(settings: Settings) -> Shop {
    shop_in(settings, Currency::USD, None).await
}

/// A shop whose mesh keeps `mesh` money, with a QuickBooks company made in `qbo` (the
/// emulator's default, USD, when `None`).
async fn shop_in(settings: Settings, mesh: Currency, qbo: Option<Currency>) -> Shop {
    let tmp = tempfile::tempdir().unwrap();
    // QuickBooks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ends, _emu) = emulator::start(
        listener,
        Config {
            data: tmp.path().join("qbo"),
            settings,
            currency: qbo,
            tls: true,
        },
        std::future::pending(),
    )
    .await
    .unwrap();
    let books = Books::new(ends.clone()).await;
    // The shop: its owner till, with a catalogue with tax.
    let owner = Repo::init(&tmp.path().join("owner"), "Till 1", mesh)
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
            "sku": sku, "name": sku, "price": {"amount_minor": price, "currency": mesh},
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
    // The bridge pairs as a bridge and connects to QuickBooks. A bridge that caught up on
    // joining is refused at `connect` by a company in another currency (checked below); one
    // that joined without (`--no-sync`) connects, and must then refuse to post on its own.
    let dir = tmp.path().join("bridge");
    let same_books = qbo.is_none_or(|c| c == mesh);
    join_and_connect(&network, &ends, &dir, same_books).await;
    Shop {
        network,
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
        network,
    } = shop(Settings::default()).await;
    // A day's sales from three tills, pushed while the bridge is killed again and again.
    let till_2 = join_till(&network, _tmp.path(), "Till 2").await;
    let till_3 = join_till(&network, _tmp.path(), "Till 3").await;
    tokio::join!(sell(&owner, 50), sell(&till_2, 50), sell(&till_3, 50));
    wait_until("every till's sales on the owner's till", || async {
        sales_of(&owner).len() == 150
    })
    .await;
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
    let status = bridge_status;
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = tillmesh_node::api::auth::read_token(&dir).unwrap();
    wait_until("the bridge's endpoint", || async {
        match status(&dir)["http"].as_str() {
            Some(addr) => http
                .get(format!("http://{addr}/v1/bridge"))
                .bearer_auth(&token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
            None => false,
        }
    })
    .await;
    // It faces the internet for QuickBooks' webhooks: a person's pages need the node's token,
    // as a header or as the cookie a sign-in link sets.
    let endpoint = format!("http://{}", status(&dir)["http"].as_str().unwrap());
    for path in ["/v1/bridge", "/connect", "/connect/start"] {
        let r = http.get(format!("{endpoint}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without the token");
        assert!(r.text().await.unwrap().contains("tillmesh api-token"));
    }
    let wrong = http
        .get(format!("{endpoint}/connect?token={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401, "a wrong sign-in link");
    let link = http
        .get(format!("{endpoint}/connect?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        link.status().as_u16(),
        303,
        "the link drops the token from the address"
    );
    assert_eq!(link.headers()["location"], "/connect");
    let cookie = link.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    assert!(
        !cookie.contains(&token),
        "the cookie opens the bridge's pages, and shows nothing of the token: {cookie}"
    );
    let page = http
        .get(format!("{endpoint}/connect"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("Connected to QuickBooks")
    );
    // The node's own API serves the bridge's status too, to the token, never to the cookie
    // (a browser sends it to every port of the host).
    let (api, _) = tillmesh_node::cli::client::read_api_addr(&dir).unwrap();
    let by_cookie = http
        .get(format!("http://{api}/v1/bridge"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status().as_u16(), 401);
    let on_api: Value = http
        .get(format!("http://{api}/v1/bridge"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        on_api["posted"].as_u64() >= Some(sales.len() as u64),
        "{on_api}"
    );
    let hook = format!("http://{}/webhooks", status(&dir)["http"].as_str().unwrap());
    let forged = http
        .post(&hook)
        .header("intuit-signature", "bm90IGEgc2lnbmF0dXJl")
        .body(r#"{"eventNotifications":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 401);
    books
        .ends
        .client()
        .post(format!("{}/admin/config", books.ends.base_url))
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
    // The count of QuickBooks' overrides outlives a restart.
    std::fs::remove_file(dir.join("bridge-status.json")).unwrap();
    let mut child = spawn_bridge(&dir);
    wait_until("the restarted bridge's status", || async {
        status(&dir)["realm_id"].is_string()
    })
    .await;
    let again = status(&dir);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(again["conflicts"], s["conflicts"], "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_double_nothing_one_by_one() {
    // One write in four committed with its answer cut off, one request in ten a 503, and
    // QBO lets only two requests in at once while the bridge sends up to eight: a 429 storm.
    let settings = Settings {
        drop_after_commit_per_mille: 250,
        fail_5xx_per_mille: 100,
        concurrent_max: 2,
        latency_ms: 40,
        ..Settings::default()
    };
    faults(settings, 60, 1, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_and_double_nothing_in_batches() {
    // Half the batches committed with their answers cut off, one request in four a 503
    // (batches are few: the odds of no fault at all must be negligible).
    let settings = Settings {
        drop_after_commit_per_mille: 500,
        fail_5xx_per_mille: 250,
        ..Settings::default()
    };
    faults(settings, 360, 30, false).await;
}

async fn faults(settings: Settings, n: usize, batch: u16, storm: bool) {
    let Shop {
        _tmp,
        ends,
        books: _,
        owner,
        dir,
        ..
    } = shop(settings).await;
    sell(&owner, n).await;
    let mut child = spawn_bridge_batching(&dir, batch);
    // Halfway, every access token expires: the bridge refreshes and carries on.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let http = ends.client();
    http.post(format!("{}/admin/expire-tokens", ends.base_url))
        .send()
        .await
        .unwrap();
    let sales = sales_of(&owner);
    let status = bridge_status;
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
            && admin["counters"]["injected_5xx"].as_u64() > Some(0)
            && (!storm || admin["counters"]["throttled"].as_u64() > Some(0)),
        "the faults happened: {admin}"
    );
    if storm {
        assert!(status(&dir)["qbo"]["throttled"].as_u64() > Some(0));
    }
    // Faults off, and a fresh token for this test's own look at the books.
    http.post(format!("{}/admin/config", ends.base_url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let books = Books::new(ends.clone()).await;
    let receipts = books.receipts().await;
    assert_eq!(receipts.len(), sales.len(), "nothing lost, nothing doubled");
    let mut notes: Vec<&str> = receipts
        .iter()
        .map(|r| r["PrivateNote"].as_str().unwrap())
        .collect();
    notes.sort();
    notes.dedup();
    assert_eq!(notes.len(), sales.len(), "every sale once");
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

fn customer(name: &str) -> Command {
    Command::CreateCustomer(serde_json::from_value(json!({ "display_name": name })).unwrap())
}

async fn sell_to(
    repo: &Repo,
    customer: Option<tillmesh_protocol::DocId>,
) -> tillmesh_protocol::DocId {
    let sale: NewSale = serde_json::from_value(json!({
        "lines": [{"sku": "TEA-1", "qty": 2}, {"sku": "CAKE-1", "qty": 1}],
        "payments": [{"method": "cash"}],
        "customer_id": customer,
    }))
    .unwrap();
    repo.execute(Command::Sell(sale)).await.unwrap().doc_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_refunds_and_voids_reach_quickbooks_and_edits_merge() {
    let Shop {
        _tmp,
        ends: _,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    // Amy is new to QuickBooks; Bob is in it already, made by hand (a duplicate name, 6240).
    let amy = owner.execute(customer("Amy's Cafe")).await.unwrap().doc_id;
    let bob = owner.execute(customer("Bob Builder")).await.unwrap().doc_id;
    let made = books
        .post("customer", &json!({"DisplayName": "Bob Builder"}))
        .await;
    let bob_in_qbo = made["Customer"]["Id"].as_str().unwrap().to_owned();
    let mut sold = Vec::new();
    for who in [Some(amy), Some(amy), Some(bob), None, None] {
        sold.push(sell_to(&owner, who).await);
    }
    // One cake of Amy's first sale comes back.
    let refund: tillmesh_node::repo::requests::RefundSale =
        serde_json::from_value(json!({"lines": [{"line": 1, "qty": 1}], "reason": "stale"}))
            .unwrap();
    let refund = owner
        .execute(Command::Refund {
            sale_id: sold[0],
            request: refund,
        })
        .await
        .unwrap()
        .doc_id;
    let mut child = spawn_bridge(&dir);
    wait_until(
        "receipts, the refund and the customers in QuickBooks",
        || async {
            books.receipts().await.len() == 5 && books.all("RefundReceipt").await.len() == 1
        },
    )
    .await;
    let customers = books.all("Customer").await;
    let named = |n: &str| customers.iter().filter(|c| c["DisplayName"] == n).count();
    assert_eq!(
        (named("Amy's Cafe"), named("Bob Builder")),
        (1, 1),
        "{customers:?}"
    );
    let receipts = books.receipts().await;
    let of = |who: &str| {
        receipts
            .iter()
            .filter(|r| r["CustomerRef"]["value"].as_str() == Some(who))
            .count()
    };
    assert_eq!(of(&bob_in_qbo), 1, "Bob's sale names the Bob QBO had");
    let refunds = books.all("RefundReceipt").await;
    let cake = sales_of(&owner)
        .iter()
        .find(|s| s.customer_id == Some(amy))
        .map(|s| s.lines[1].net_minor)
        .unwrap();
    let cents = |v: &Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    assert_eq!(cents(&refunds[0]["TotalAmt"]), cake, "{:?}", refunds[0]);
    wait_until(
        "the refund's and customers' ledgers on the till",
        || async {
            let linked = |id| {
                owner
                    .view(&id)
                    .unwrap()
                    .is_some_and(|v| v["ledger"]["qbo_id"].is_string())
            };
            let done = linked(refund) && linked(amy) && linked(bob);
            if !done {
                eprintln!(
                    "{}",
                    std::fs::read_to_string(dir.join("bridge-status.json")).unwrap_or_default()
                );
            }
            done
        },
    )
    .await;

    // An accountant edits the last sale's receipt in QuickBooks (its SyncToken moves on), and
    // the till voids that sale: the bridge voids the receipt QuickBooks now holds.
    let last = owner.get::<Sale>(&sold[4]).unwrap().unwrap();
    let target = receipts
        .iter()
        .find(|r| r["DocNumber"] == last.receipt_number.as_str())
        .unwrap();
    let mut edited = target.clone();
    edited["PrivateNote"] = json!(format!(
        "{} (checked)",
        target["PrivateNote"].as_str().unwrap()
    ));
    let answer = books.post("salesreceipt", &edited).await;
    assert_eq!(answer["SalesReceipt"]["SyncToken"], "1", "{answer}");
    let void: tillmesh_node::repo::requests::VoidSale =
        serde_json::from_value(json!({"reason": "wrong till"})).unwrap();
    owner
        .execute(Command::Void {
            sale_id: sold[4],
            request: void,
        })
        .await
        .unwrap();
    // Meanwhile a till edits Amy's details while the bridge writes her ledger: both stand.
    let patch: tillmesh_node::repo::requests::CustomerPatch =
        serde_json::from_value(json!({"phone": "555-0100", "notes": "regular"})).unwrap();
    owner
        .execute(Command::PatchCustomer { id: amy, patch })
        .await
        .unwrap();
    let voided_in_qbo = || async {
        books.receipts().await.iter().any(|r| {
            r["Id"] == target["Id"] && r["PrivateNote"] == "Voided" && r["TotalAmt"] == json!(0)
        })
    };
    wait_until("the receipt voided in QuickBooks", voided_in_qbo).await;
    wait_until("the void's zero total on the till", || async {
        owner
            .get::<Sale>(&sold[4])
            .unwrap()
            .and_then(|s| s.ledger)
            .and_then(|l| l.total)
            .is_some_and(|t| t.amount_minor == 0)
    })
    .await;
    let amy_now = owner.view(&amy).unwrap().unwrap();
    assert_eq!(amy_now["phone"], "555-0100");
    assert!(amy_now["ledger"]["qbo_id"].is_string(), "{amy_now}");

    // A customer an accountant makes in QuickBooks joins the mesh.
    books
        .post(
            "customer",
            &json!({"DisplayName": "Carol Corner", "PrimaryPhone": {"FreeFormNumber": "555-0199"}}),
        )
        .await;
    wait_until("QuickBooks' new customer on the till", || async {
        owner
            .list(DocType::Customer, None, 100)
            .unwrap()
            .iter()
            .any(|(_, v)| v["display_name"] == "Carol Corner" && v["ledger"]["qbo_id"].is_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        books
            .all("Customer")
            .await
            .iter()
            .filter(|c| c["DisplayName"] == "Carol Corner")
            .count(),
        1,
        "the bridge does not send QuickBooks' own customer back to it"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// A customer QuickBooks refuses (a vendor there holds her name) holds back her own sales
/// only. Other sales, and an expense to an account QuickBooks does not have yet, go past hers
/// even when hers are more than a round takes; renamed on the till, she and her sales follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_quickbooks_cannot_take_hold_back_only_themselves() {
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    let dee = owner.execute(customer("Dee's Deli")).await.unwrap().doc_id;
    // Vendors hold her name, and the name the bridge would give her instead (the end of her
    // id): QuickBooks cannot take her until she is renamed.
    let distinct = format!("Dee's Deli ({})", &dee.to_string()[30..].to_uppercase());
    for name in ["Dee's Deli", distinct.as_str()] {
        books.post("vendor", &json!({"DisplayName": name})).await;
    }
    for _ in 0..4 {
        sell_to(&owner, Some(dee)).await;
    }
    for _ in 0..2 {
        sell_to(&owner, None).await;
    }
    owner
        .execute(Command::RecordExpense(
            serde_json::from_value(json!({
                "method": "cash",
                "lines": [{"description": "mop", "account": "Cleaning", "amount_minor": 1500}],
            }))
            .unwrap(),
        ))
        .await
        .unwrap();
    let mut child = spawn_bridge_with(&dir, &["--round", "3"]);
    wait_until("the sales and the expense QuickBooks can take", || async {
        books.receipts().await.len() == 2 && books.all("Purchase").await.len() == 1
    })
    .await;
    let status = bridge_status(&dir).to_string();
    assert!(
        status.contains(&format!("Customer '{distinct}' ("))
            && status.contains(&format!("named '{distinct}'; rename one of them")),
        "the status says why Dee's sales wait: {status}"
    );

    let patch: tillmesh_node::repo::requests::CustomerPatch =
        serde_json::from_value(json!({"display_name": "Dee's Deli (customer)"})).unwrap();
    owner
        .execute(Command::PatchCustomer { id: dee, patch })
        .await
        .unwrap();
    wait_until("Dee's sales, once she is renamed", || async {
        books.receipts().await.len() == 6
    })
    .await;
    wait_until("her failure cleared from the status", || async {
        !bridge_status(&dir)["failures"]
            .to_string()
            .contains("rename one of them")
    })
    .await;
    let customers = books.all("Customer").await;
    let renamed: Vec<&Value> = customers
        .iter()
        .filter(|c| c["DisplayName"] == "Dee's Deli (customer)")
        .collect();
    assert_eq!(renamed.len(), 1, "{customers:?}");
    let receipts = books.receipts().await;
    assert_eq!(
        receipts
            .iter()
            .filter(|r| r["CustomerRef"]["value"] == renamed[0]["Id"])
            .count(),
        4,
        "{receipts:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_office_reaches_quickbooks_invoices_payments_and_expenses() {
    let Shop {
        _tmp,
        ends: _,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    let amy = owner.execute(customer("Amy's Cafe")).await.unwrap().doc_id;
    let mill = owner
        .execute(Command::CreateVendor(
            serde_json::from_value(json!({"display_name": "Mill Road Bakery"})).unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    let invoice = owner
        .execute(Command::CreateInvoice(
            serde_json::from_value(json!({
                "customer_id": amy,
                "lines": [{"sku": "TEA-1", "qty": 40}, {"sku": "CAKE-1", "qty": 10}],
            }))
            .unwrap(),
        ))
        .await
        .unwrap();
    let invoice_total = invoice.doc["total"]["amount_minor"].as_i64().unwrap();
    owner
        .execute(Command::RecordPayment(
            serde_json::from_value(json!({
                "customer_id": amy, "invoice_id": invoice.doc_id,
                "amount_minor": 5000, "method": "bank transfer",
            }))
            .unwrap(),
        ))
        .await
        .unwrap();
    owner
        .execute(Command::RecordExpense(
            serde_json::from_value(json!({
                "vendor_id": mill, "method": "cash",
                "lines": [
                    {"description": "flour", "account": "Shop supplies", "amount_minor": 2599},
                    {"description": "paper", "account": "Office Expenses", "amount_minor": 1200},
                ],
            }))
            .unwrap(),
        ))
        .await
        .unwrap();
    let mut child = spawn_bridge(&dir);
    wait_until("the invoice, payment and expense in QuickBooks", || async {
        books.all("Invoice").await.len() == 1
            && books.all("Payment").await.len() == 1
            && books.all("Purchase").await.len() == 1
    })
    .await;
    let cents = |v: &Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    let inv = &books.all("Invoice").await[0];
    assert_eq!(cents(&inv["TotalAmt"]), invoice_total, "{inv}");
    let vendors = books.all("Vendor").await;
    assert_eq!(vendors.len(), 1, "{vendors:?}");
    let payment = &books.all("Payment").await[0];
    assert_eq!(cents(&payment["TotalAmt"]), 5000);
    assert_eq!(
        payment["Line"][0]["LinkedTxn"][0]["TxnId"], inv["Id"],
        "{payment}"
    );
    let purchase = &books.all("Purchase").await[0];
    assert_eq!(cents(&purchase["TotalAmt"]), 3799, "{purchase}");
    assert_eq!(purchase["EntityRef"]["value"], vendors[0]["Id"]);
    let accounts = books.all("Account").await;
    let supplies: Vec<&Value> = accounts
        .iter()
        .filter(|a| a["Name"] == "Shop supplies")
        .collect();
    assert_eq!(supplies.len(), 1, "the new expense account, made once");
    assert_eq!(
        purchase["Line"][0]["AccountBasedExpenseLineDetail"]["AccountRef"]["value"],
        supplies[0]["Id"]
    );
    // Every document learns its QuickBooks id.
    wait_until("the back office's ledgers on the till", || async {
        [
            DocType::Vendor,
            DocType::Invoice,
            DocType::Payment,
            DocType::Expense,
        ]
        .iter()
        .all(|t| {
            owner
                .list(*t, None, 10)
                .unwrap()
                .iter()
                .all(|(_, v)| v["ledger"]["qbo_id"].is_string())
        })
    })
    .await;
    // The accountant cuts the invoice's first line in QuickBooks: the till shows QBO's total.
    let mut edited = inv.clone();
    edited["Line"][0]["Amount"] = json!(100.00);
    edited["Line"][0]["SalesItemLineDetail"]["Qty"] = json!(1);
    edited["Line"][0]["SalesItemLineDetail"]["UnitPrice"] = json!(100.00);
    let answer = books.post("invoice", &edited).await;
    let qbo_total = cents(&answer["Invoice"]["TotalAmt"]);
    assert_ne!(qbo_total, invoice_total, "{answer}");
    wait_until("QuickBooks' invoice total on the till", || async {
        let v = owner.view(&invoice.doc_id).unwrap().unwrap();
        let shown = tillmesh_node::api::present(&invoice.doc_id, &v);
        shown["total"]["amount_minor"] == qbo_total
            && shown["till_total"]["amount_minor"] == invoice_total
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summaries_carry_each_period_once_and_a_later_void_is_taken_back_out() {
    let Shop {
        _tmp,
        ends: _,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    // Periods of 2 s stand in for days.
    sell(&owner, 12).await;
    let sales = sales_of(&owner);
    let void = |id| {
        let request: tillmesh_node::repo::requests::VoidSale =
            serde_json::from_value(json!({"reason": "mistake"})).unwrap();
        Command::Void {
            sale_id: id,
            request,
        }
    };
    let ids: Vec<tillmesh_protocol::DocId> = owner
        .list(DocType::Sale, None, 100)
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // Voided before its summary: never in QuickBooks.
    owner.execute(void(ids[0])).await.unwrap();
    let voided_early = owner
        .get::<Sale>(&ids[0])
        .unwrap()
        .unwrap()
        .total
        .amount_minor;
    let mut child = spawn_bridge_with(&dir, &["--summary-period-s", "2"]);
    let cents = |v: &Value| (v.as_f64().unwrap() * 100.0).round() as i64;
    let all: i64 = sales.iter().map(|s| s.total.amount_minor).sum();
    wait_until("the summaries in QuickBooks", || async {
        books
            .receipts()
            .await
            .iter()
            .map(|r| cents(&r["TotalAmt"]))
            .sum::<i64>()
            == all - voided_early
    })
    .await;
    let receipts = books.receipts().await;
    assert!(
        receipts.len() < sales.len(),
        "summaries, not a receipt per sale: {}",
        receipts.len()
    );
    assert!(receipts.iter().all(|r| {
        r["PrivateNote"]
            .as_str()
            .unwrap()
            .starts_with("tillmesh summary/")
    }));
    // Each sale's ledger names the summary that carries it.
    wait_until("each summarized sale linked to its summary", || async {
        ids[1..].iter().all(|id| {
            owner
                .get::<Sale>(id)
                .unwrap()
                .unwrap()
                .ledger
                .is_some_and(|l| {
                    receipts
                        .iter()
                        .any(|r| Some(r["Id"].as_str().unwrap()) == l.qbo_id.as_deref())
                })
        })
    })
    .await;
    // Voided after its summary: a refund receipt takes it back out, once.
    owner.execute(void(ids[1])).await.unwrap();
    let late_void = owner
        .get::<Sale>(&ids[1])
        .unwrap()
        .unwrap()
        .total
        .amount_minor;
    // And a later sale goes into a summary of its own period.
    sell(&owner, 1).await;
    let total_now: i64 = sales_of(&owner).iter().map(|s| s.total.amount_minor).sum();
    wait_until("the correction and the later sale", || async {
        let refunds = books.all("RefundReceipt").await;
        refunds.len() == 1
            && cents(&refunds[0]["TotalAmt"]) == late_void
            && books
                .receipts()
                .await
                .iter()
                .map(|r| cents(&r["TotalAmt"]))
                .sum::<i64>()
                == total_now - voided_early
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        books.all("RefundReceipt").await.len(),
        1,
        "the void taken out once"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// QuickBooks' amount in minor units of `c`, read from its decimal text.
fn minor_of(v: &Value, c: Currency) -> i64 {
    let text = v.to_string();
    let text = match text.split_once('.') {
        Some((whole, frac)) if frac.trim_end_matches('0').is_empty() => whole.to_owned(),
        Some((whole, frac)) => format!("{whole}.{}", frac.trim_end_matches('0')),
        None => text,
    };
    c.parse_amount(&text)
        .unwrap_or_else(|e| panic!("{v} is not an amount in {c}: {e}"))
}

fn note_id(r: &Value, prefix: &str) -> String {
    r["PrivateNote"]
        .as_str()
        .and_then(|n| n.strip_prefix(prefix))
        .and_then(|n| n.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

/// Yen have no minor unit and Kuwaiti dinars three: a day of sales, a void and refunds in
/// each reach QuickBooks to the last minor unit (with the tax rounded on the mesh's terms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yen_and_a_dinar_shop_book_every_minor_unit() {
    for code in ["JPY", "KWD"] {
        let cur: Currency = code.parse().unwrap();
        let Shop {
            _tmp,
            books,
            owner,
            dir,
            ..
        } = shop_in(Settings::default(), cur, Some(cur)).await;
        sell(&owner, 12).await;
        let sales = sales_of(&owner);
        let id_of = |s: &Sale| -> tillmesh_protocol::DocId {
            owner
                .list(DocType::Sale, None, 1000)
                .unwrap()
                .into_iter()
                .find(|(id, v)| tillmesh_node::repo::typed::<Sale>(id, v.clone()).unwrap() == *s)
                .unwrap()
                .0
        };
        let (voided, whole, part) = (id_of(&sales[0]), id_of(&sales[1]), id_of(&sales[2]));
        // A voided receipt's note says "Voided": receipts are found by their numbers.
        let voided_number = sales[0].receipt_number.clone();
        owner
            .execute(Command::Void {
                sale_id: voided,
                request: serde_json::from_value(json!({"reason": "rung twice"})).unwrap(),
            })
            .await
            .unwrap();
        for (sale_id, request) in [
            (whole, json!({})),
            (part, json!({"lines": [{"line": 0, "qty": 1}]})),
        ] {
            owner
                .execute(Command::Refund {
                    sale_id,
                    request: serde_json::from_value(request).unwrap(),
                })
                .await
                .unwrap();
        }
        let _bridge = spawn_bridge(&dir);
        wait_until(
            &format!("{code}: every sale, the void and the refunds in QuickBooks"),
            || async {
                let receipts = books.receipts().await;
                receipts.len() == sales.len()
                    && books.all("RefundReceipt").await.len() == 2
                    && receipts
                        .iter()
                        .any(|r| r["DocNumber"] == voided_number.as_str() && r["TotalAmt"] == 0)
            },
        )
        .await;
        // Sale by sale, then the day's totals, to the minor unit.
        let (mut mesh_day, mut qbo_day) = (0i64, 0i64);
        let sales: Vec<(tillmesh_protocol::DocId, Sale)> = sales_by_id(&owner);
        let receipts = books.receipts().await;
        for (id, sale) in &sales {
            let r = receipts
                .iter()
                .find(|r| r["DocNumber"] == sale.receipt_number.as_str())
                .unwrap_or_else(|| panic!("{code}: sale {id} is not in QuickBooks"));
            let expected = if *id == voided {
                0
            } else {
                sale.total.amount_minor
            };
            let (total, tax) = (
                minor_of(&r["TotalAmt"], cur),
                minor_of(&r["TxnTaxDetail"]["TotalTax"], cur),
            );
            assert_eq!(total, expected, "{code}: sale {id}: {r}");
            if *id != voided {
                assert_eq!(tax, sale.tax.amount_minor, "{code}: tax of sale {id}: {r}");
            }
            mesh_day += expected;
            qbo_day += total;
        }
        let refunds: Vec<(tillmesh_protocol::DocId, tillmesh_protocol::schema::Refund)> = owner
            .list(DocType::Refund, None, 1000)
            .unwrap()
            .into_iter()
            .map(|(id, v)| (id, tillmesh_node::repo::typed(&id, v).unwrap()))
            .collect();
        assert_eq!(refunds.len(), 2);
        let qbo_refunds = books.all("RefundReceipt").await;
        for (id, refund) in &refunds {
            let r = qbo_refunds
                .iter()
                .find(|r| note_id(r, "tillmesh refund ") == id.to_string())
                .unwrap_or_else(|| panic!("{code}: refund {id} is not in QuickBooks"));
            assert_eq!(
                minor_of(&r["TotalAmt"], cur),
                refund.total.amount_minor,
                "{code}: refund {id}: {r}"
            );
            mesh_day -= refund.total.amount_minor;
            qbo_day -= minor_of(&r["TotalAmt"], cur);
        }
        assert_eq!(qbo_day, mesh_day, "{code}: the day's takings");
        assert!(
            bridge_status(&dir)["failures"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "{code}: {}",
            bridge_status(&dir)
        );
    }
}

/// A bridge between a dollar mesh and a company that keeps Canadian dollars posts nothing at
/// all, and its status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usd_mesh_posts_nothing_to_a_cad_company() {
    let Shop {
        _tmp,
        ends,
        books,
        owner,
        dir,
        ..
    } = shop_in(
        Settings::default(),
        Currency::USD,
        Some("CAD".parse().unwrap()),
    )
    .await;
    sell(&owner, 3).await;
    let _bridge = spawn_bridge(&dir);
    wait_until("the status to say why nothing is posted", || async {
        let s = bridge_status(&dir);
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("CAD") && e.contains("USD"))
    })
    .await;
    // Rounds go on failing the same way: give them time to post anything they would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = bridge_status(&dir);
    assert!(s["last_error"].as_str().unwrap().contains("CAD"), "{s}");
    assert_eq!(s["posted"], 0, "{s}");
    assert!(books.receipts().await.is_empty());
    assert!(books.all("Item").await.is_empty(), "not even the catalogue");
    // Stopped, and connected again now that it holds the mesh's settings: refused at once.
    drop(_bridge);
    let out = support::connect(&ends, &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("keeps its books in CAD and the mesh in USD"),
        "{err}"
    );
}

/// A sale is booked on the shop's own date: in a zone whose date is not UTC's just now, each
/// receipt's `TxnDate` is the sale's local date there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_are_booked_on_the_shops_local_date() {
    use jiff::{Timestamp, tz::TimeZone};
    // Kiritimati is UTC+14 (its date is ahead from 10:00 UTC), Pago Pago UTC-11 (behind until
    // 11:00 UTC): an hour's margin either side of the choice.
    let hour_utc = Timestamp::now().to_zoned(TimeZone::UTC).hour();
    let zone_name = if hour_utc >= 12 {
        "Pacific/Kiritimati"
    } else {
        "Pacific/Pago_Pago"
    };
    let zone = TimeZone::get(zone_name).unwrap();
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    owner
        .execute(Command::SetTimeZone(zone_name.into()))
        .await
        .unwrap();
    sell(&owner, 3).await;
    let _bridge = spawn_bridge(&dir);
    wait_until("the sales in QuickBooks", || async {
        books.receipts().await.len() == 3
    })
    .await;
    let sales: Vec<(tillmesh_protocol::DocId, Sale)> = sales_by_id(&owner);
    for r in books.receipts().await {
        let id = note_id(&r, "tillmesh sale ");
        let (_, sale) = sales.iter().find(|(s, _)| s.to_string() == id).unwrap();
        let at = Timestamp::from_millisecond(sale.created_at_ms as i64).unwrap();
        let local = at.to_zoned(zone.clone()).date().to_string();
        let utc = at.to_zoned(TimeZone::UTC).date().to_string();
        assert_ne!(local, utc, "the zone was chosen so the dates differ");
        assert_eq!(
            r["TxnDate"],
            local.as_str(),
            "sale {id} in {zone_name}: {r}"
        );
    }
}

/// The QuickBooks id a document's ledger names, once the bridge has written it back.
fn ledger_id<T: tillmesh_protocol::schema::Document>(
    repo: &Repo,
    id: &tillmesh_protocol::DocId,
    ledger: impl Fn(&T) -> Option<&tillmesh_protocol::schema::Ledger>,
) -> Option<String> {
    repo.get::<T>(id)
        .ok()
        .flatten()
        .and_then(|d| ledger(&d).and_then(|l| l.qbo_id.clone()))
}

/// More payments on one day than a query answers (1,000): when a payment's create is
/// answered by silence, the look-up pages through them all and finds it, even where QBO no
/// longer remembers the request id; nothing is made twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_on_a_day_of_more_than_a_thousand_payments_makes_nothing_twice() {
    use tillmesh_protocol::schema::Payment;
    let Shop {
        _tmp,
        ends,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    // The day's other payments, entered in QuickBooks: a thousand before the mesh's.
    let counter = books
        .post("customer", &json!({"DisplayName": "Counter"}))
        .await["Customer"]["Id"]
        .clone();
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    for chunk in 0..34 {
        let items: Vec<Value> = (0..30)
            .filter(|i| chunk * 30 + i < 1000)
            .map(|i| {
                json!({"bId": i.to_string(), "operation": "create", "Payment": {
                    "CustomerRef": {"value": counter}, "TotalAmt": 5, "TxnDate": today,
                    "PrivateNote": format!("counter {chunk}/{i}")}})
            })
            .collect();
        let answer = books
            .post("batch", &json!({"BatchItemRequest": items}))
            .await;
        assert!(answer["BatchItemResponse"].is_array(), "{answer}");
    }
    assert_eq!(books.all("Payment").await.len(), 1000);
    let jo = owner.execute(customer("Jo Bloggs")).await.unwrap().doc_id;
    let paid = owner
        .execute(Command::RecordPayment(
            serde_json::from_value(
                json!({"customer_id": jo, "amount_minor": 1250, "method": "cash"}),
            )
            .unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    // Every answer to a write is now lost after its commit, and request ids are forgotten.
    ends.client()
        .post(format!("{}/admin/config", ends.base_url))
        .json(&json!({"drop_after_commit_per_mille": 1000, "forget_request_ids": true}))
        .send()
        .await
        .unwrap();
    let _bridge = spawn_bridge(&dir);
    wait_until(
        "the payment's ledger to name QuickBooks' payment",
        || async { ledger_id::<Payment>(&owner, &paid, |p| p.ledger.as_ref()).is_some() },
    )
    .await;
    let note = format!("tillmesh payment {paid}");
    let ours: Vec<Value> = books
        .all("Payment")
        .await
        .into_iter()
        .filter(|p| p["PrivateNote"] == note.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "made once: {ours:?}");
    assert_eq!(
        ledger_id::<Payment>(&owner, &paid, |p| p.ledger.as_ref()).as_deref(),
        ours[0]["Id"].as_str()
    );
}

/// QuickBooks holds "AMY LEE" (an accountant typed it); the mesh's "Amy Lee" is the same
/// name to QuickBooks, and becomes that record rather than a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_differs_only_in_case_is_the_same_customer() {
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    let theirs = books
        .post(
            "customer",
            &json!({"DisplayName": "AMY LEE", "PrimaryEmailAddr": {"Address": "amy@lee.example"}}),
        )
        .await["Customer"]["Id"]
        .as_str()
        .unwrap()
        .to_owned();
    let amy = owner.execute(customer("Amy Lee")).await.unwrap().doc_id;
    let sale = sell_to(&owner, Some(amy)).await;
    let _bridge = spawn_bridge(&dir);
    wait_until("the sale in QuickBooks", || async {
        ledger_id::<Sale>(&owner, &sale, |s| s.ledger.as_ref()).is_some()
    })
    .await;
    let customers = books.all("Customer").await;
    assert_eq!(customers.len(), 1, "{customers:?}");
    let receipt = books.receipts().await.remove(0);
    assert_eq!(receipt["CustomerRef"]["value"], theirs.as_str());
    // The accountant's details are kept there, and come to the till: what the mesh lacked
    // erased nothing.
    assert_eq!(
        customers[0]["PrimaryEmailAddr"]["Address"], "amy@lee.example",
        "{customers:?}"
    );
    wait_until("the accountant's email on the till", || async {
        owner
            .get::<tillmesh_protocol::schema::Customer>(&amy)
            .unwrap()
            .is_some_and(|c| c.0.email.as_deref() == Some("amy@lee.example"))
    })
    .await;
    let s = bridge_status(&dir);
    assert!(s["failures"].as_array().is_some_and(Vec::is_empty), "{s}");
}

/// Two customers of the mesh named alike become two QuickBooks customers (whose names must
/// differ: the later takes the end of its id), each with its own id and its own sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_customers_named_alike_stay_two() {
    use tillmesh_protocol::schema::Customer;
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    let first = owner.execute(customer("Sam Green")).await.unwrap().doc_id;
    let second = owner.execute(customer("Sam Green")).await.unwrap().doc_id;
    let sales = [
        sell_to(&owner, Some(first)).await,
        sell_to(&owner, Some(second)).await,
    ];
    let _bridge = spawn_bridge(&dir);
    wait_until("both sales in QuickBooks", || async {
        sales
            .iter()
            .all(|s| ledger_id::<Sale>(&owner, s, |s| s.ledger.as_ref()).is_some())
    })
    .await;
    let ids: Vec<String> = [first, second]
        .iter()
        .map(|c| ledger_id::<Customer>(&owner, c, |c| c.0.ledger.as_ref()).unwrap())
        .collect();
    assert_ne!(ids[0], ids[1], "two customers, not one");
    let customers = books.all("Customer").await;
    assert_eq!(customers.len(), 2, "{customers:?}");
    for (doc, qbo_id) in [first, second].iter().zip(&ids) {
        let record = customers
            .iter()
            .find(|c| c["Id"] == qbo_id.as_str())
            .unwrap();
        let name = record["DisplayName"].as_str().unwrap();
        let tail = doc.to_string()[30..].to_uppercase();
        assert!(
            name == "Sam Green" || name == format!("Sam Green ({tail})"),
            "{name} for {doc}"
        );
    }
    // Each sale names its own customer's record.
    let receipts = books.receipts().await;
    for (sale, qbo_id) in sales.iter().zip(&ids) {
        let number = owner.get::<Sale>(sale).unwrap().unwrap().receipt_number;
        let r = receipts
            .iter()
            .find(|r| r["DocNumber"] == number.as_str())
            .unwrap();
        assert_eq!(r["CustomerRef"]["value"], qbo_id.as_str(), "{r}");
    }
}

impl Books {
    /// QuickBooks' record of an entity by id.
    async fn get(&self, entity: &str, id: &str) -> Value {
        self.all(entity)
            .await
            .into_iter()
            .find(|r| r["Id"] == id)
            .unwrap_or_else(|| panic!("QuickBooks has no {entity} {id}"))
    }

    /// An accountant's sparse update of `fields` (QuickBooks' shape) on a record.
    async fn edit(&self, entity: &str, id: &str, fields: Value) -> Value {
        let current = self.get(entity, id).await;
        let mut body = json!({"Id": id, "SyncToken": current["SyncToken"], "sparse": true});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = self.post(&entity.to_lowercase(), &body).await;
        assert!(answer[entity].is_object(), "{answer}");
        answer[entity].clone()
    }
}

fn patch(fields: Value) -> tillmesh_node::repo::requests::CustomerPatch {
    serde_json::from_value(fields).unwrap()
}

/// The product, customer and vendor a shop edits, posted to QuickBooks and known by id.
struct Records {
    product: tillmesh_protocol::DocId,
    customer: tillmesh_protocol::DocId,
    vendor: tillmesh_protocol::DocId,
    expense: tillmesh_protocol::DocId,
    item_id: String,
    purchase_id: String,
    customer_id: String,
    vendor_id: String,
}

async fn posted_records(owner: &Repo, books: &Books, dir: &Path) -> Records {
    use tillmesh_protocol::schema::{Customer, Expense, Product, Vendor};
    let product = owner
        .list(DocType::Product, None, 10)
        .unwrap()
        .into_iter()
        .find(|(_, v)| v["sku"] == "TEA-1")
        .unwrap()
        .0;
    let customer = owner
        .execute(Command::CreateCustomer(
            serde_json::from_value(json!({"display_name": "Dee's Deli", "phone": "555-0100"}))
                .unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    let vendor = owner
        .execute(Command::CreateVendor(
            serde_json::from_value(
                json!({"display_name": "Leaf & Co", "email": "orders@leaf.example"}),
            )
            .unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    // A sale and an expense name them, so the bridge posts them.
    sell_to(owner, Some(customer)).await;
    let expense = owner
        .execute(Command::RecordExpense(
            serde_json::from_value(json!({"vendor_id": vendor, "method": "cash",
                "lines": [{"account": "Supplies", "description": "tea", "amount_minor": 1200}]}))
            .unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    wait_until(
        "the catalogue, the customer and the vendor in QuickBooks",
        || async {
            ledger_id::<Customer>(owner, &customer, |c| c.0.ledger.as_ref()).is_some()
                && ledger_id::<Vendor>(owner, &vendor, |v| v.0.ledger.as_ref()).is_some()
                && ledger_id::<Product>(owner, &product, |p| p.ledger.as_ref()).is_some()
                && ledger_id::<Expense>(owner, &expense, |e| e.ledger.as_ref()).is_some()
        },
    )
    .await;
    let _ = (books, dir);
    Records {
        item_id: ledger_id::<Product>(owner, &product, |p| p.ledger.as_ref()).unwrap(),
        customer_id: ledger_id::<Customer>(owner, &customer, |c| c.0.ledger.as_ref()).unwrap(),
        vendor_id: ledger_id::<Vendor>(owner, &vendor, |v| v.0.ledger.as_ref()).unwrap(),
        purchase_id: ledger_id::<Expense>(owner, &expense, |e| e.ledger.as_ref()).unwrap(),
        expense,
        product,
        customer,
        vendor,
    }
}

/// Edits made on a till reach QuickBooks, edits an accountant makes in QuickBooks reach every
/// till, for customers, vendors and items; where both sides change one field at once,
/// QuickBooks' value stands on both; fields changed on one side each are both kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_quickbooks_and_quickbooks_edits_reach_every_till() {
    use tillmesh_protocol::schema::{Customer, Product, Vendor};
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        network,
        ..
    } = shop(Settings::default()).await;
    let till2 = join_till(&network, _tmp.path(), "Till 2").await;
    let _bridge = spawn_bridge(&dir);
    let r = posted_records(&owner, &books, &dir).await;

    // On the till: a customer's phone, a vendor's notes, a product's name, price and flag.
    owner
        .execute(Command::PatchCustomer {
            id: r.customer,
            patch: patch(json!({"phone": "555-0199", "email": "dee@deli.example"})),
        })
        .await
        .unwrap();
    owner
        .execute(Command::PatchVendor {
            id: r.vendor,
            patch: patch(json!({"notes": "deliveries on Tuesdays"})),
        })
        .await
        .unwrap();
    owner
        .execute(Command::PatchProduct {
            id: r.product,
            patch: serde_json::from_value(
                json!({"name": "Green tea", "price": {"amount_minor": 375, "currency": "USD"}}),
            )
            .unwrap(),
        })
        .await
        .unwrap();
    owner
        .execute(Command::PatchExpense {
            id: r.expense,
            patch: serde_json::from_value(json!({"memo": "tea for the week"})).unwrap(),
        })
        .await
        .unwrap();
    wait_until("the till's edits in QuickBooks", || async {
        let p = books.get("Purchase", &r.purchase_id).await;
        let memo_there = p["PrivateNote"]
            .as_str()
            .is_some_and(|n| n.lines().next() == Some("tea for the week"));
        let c = books.get("Customer", &r.customer_id).await;
        let v = books.get("Vendor", &r.vendor_id).await;
        let i = books.get("Item", &r.item_id).await;
        c["PrimaryPhone"]["FreeFormNumber"] == "555-0199"
            && c["PrimaryEmailAddr"]["Address"] == "dee@deli.example"
            && v["Notes"] == "deliveries on Tuesdays"
            && memo_there
            && i["Description"] == "Green tea"
            && minor_of(&i["UnitPrice"], Currency::USD) == 375
    })
    .await;

    // In QuickBooks: a customer's given name, a vendor's email, an item's price.
    books
        .edit("Customer", &r.customer_id, json!({"GivenName": "Dee"}))
        .await;
    books
        .edit(
            "Vendor",
            &r.vendor_id,
            json!({"PrimaryEmailAddr": {"Address": "sales@leaf.example"}}),
        )
        .await;
    books
        .edit("Item", &r.item_id, json!({"UnitPrice": 3.95}))
        .await;
    // An accountant rewrites the purchase's memo whole.
    books
        .edit(
            "Purchase",
            &r.purchase_id,
            json!({"PrivateNote": "paid from petty cash"}),
        )
        .await;
    for (name, till) in [("Till 1", &owner), ("Till 2", &till2)] {
        wait_until(&format!("QuickBooks' edits on {name}"), || async {
            let c = till.get::<Customer>(&r.customer).unwrap();
            let v = till.get::<Vendor>(&r.vendor).unwrap();
            let p = till.get::<Product>(&r.product).unwrap();
            c.is_some_and(|c| {
                c.0.given_name.as_deref() == Some("Dee") && c.0.phone.as_deref() == Some("555-0199")
            }) && v.is_some_and(|v| v.0.email.as_deref() == Some("sales@leaf.example"))
                && p.is_some_and(|p| p.price.amount_minor == 395 && p.name == "Green tea")
                && till
                    .get::<tillmesh_protocol::schema::Expense>(&r.expense)
                    .unwrap()
                    .is_some_and(|e| e.memo.as_deref() == Some("paid from petty cash"))
        })
        .await;
    }

    // Both at once: the till changes the company name and the notes, QuickBooks the company
    // name and the phone. QuickBooks' company name stands; the till's notes and QuickBooks'
    // phone are both kept.
    books
        .edit(
            "Customer",
            &r.customer_id,
            json!({"CompanyName": "Dee's Deli Ltd", "PrimaryPhone": {"FreeFormNumber": "555-0142"}}),
        )
        .await;
    till2
        .execute(Command::PatchCustomer {
            id: r.customer,
            patch: patch(json!({"company_name": "Deli of Dee", "notes": "pays on account"})),
        })
        .await
        .unwrap();
    wait_until("both sides equal", || async {
        let q = books.get("Customer", &r.customer_id).await;
        [&owner, &till2].iter().all(|till| {
            till.get::<Customer>(&r.customer).unwrap().is_some_and(|c| {
                c.0.company_name.as_deref() == Some("Dee's Deli Ltd")
                    && c.0.notes.as_deref() == Some("pays on account")
                    && c.0.phone.as_deref() == Some("555-0142")
            })
        }) && q["CompanyName"] == "Dee's Deli Ltd"
            && q["Notes"] == "pays on account"
            && q["PrimaryPhone"]["FreeFormNumber"] == "555-0142"
    })
    .await;
    // A product taken off sale on the till stays active in QuickBooks, which refuses every
    // transaction that names an inactive item: a sale rung before, on a till that was
    // offline, is still booked.
    let before = owner
        .execute(Command::Sell(
            serde_json::from_value(
                json!({"lines": [{"sku": "TEA-1", "qty": 1}], "payments": [{"method": "cash"}]}),
            )
            .unwrap(),
        ))
        .await
        .unwrap()
        .doc_id;
    owner
        .execute(Command::PatchProduct {
            id: r.product,
            patch: serde_json::from_value(json!({"active": false})).unwrap(),
        })
        .await
        .unwrap();
    wait_until("the sale rung before, booked", || async {
        ledger_id::<Sale>(&owner, &before, |s| s.ledger.as_ref()).is_some()
    })
    .await;
    assert_eq!(books.get("Item", &r.item_id).await["Active"], true);
    // An accountant makes it inactive in QuickBooks: every till takes it off sale.
    owner
        .execute(Command::PatchProduct {
            id: r.product,
            patch: serde_json::from_value(json!({"active": true})).unwrap(),
        })
        .await
        .unwrap();
    books
        .edit("Item", &r.item_id, json!({"Active": false}))
        .await;
    for (name, till) in [("Till 1", &owner), ("Till 2", &till2)] {
        wait_until(&format!("the product off sale on {name}"), || async {
            till.get::<Product>(&r.product)
                .unwrap()
                .is_some_and(|p| !p.active)
        })
        .await;
    }
}

/// QuickBooks changes a customer while the bridge has not yet seen it (it reads QuickBooks'
/// changes once an hour here), and a till edits the same customer: the update is refused as
/// stale (5010), the bridge reads QuickBooks' record, merges, and sends the till's edit
/// again; both sides end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sync_token_is_merged_and_sent_again() {
    use tillmesh_protocol::schema::Customer;
    let Shop {
        _tmp,
        books,
        owner,
        dir,
        ..
    } = shop(Settings::default()).await;
    let _bridge = spawn_bridge_with(&dir, &["--pull-interval-s", "3600"]);
    let r = posted_records(&owner, &books, &dir).await;
    books
        .edit("Customer", &r.customer_id, json!({"Notes": "net 30"}))
        .await;
    owner
        .execute(Command::PatchCustomer {
            id: r.customer,
            patch: patch(json!({"phone": "555-0111"})),
        })
        .await
        .unwrap();
    wait_until("both sides equal after the stale token", || async {
        let q = books.get("Customer", &r.customer_id).await;
        owner
            .get::<Customer>(&r.customer)
            .unwrap()
            .is_some_and(|c| {
                c.0.notes.as_deref() == Some("net 30") && c.0.phone.as_deref() == Some("555-0111")
            })
            && q["Notes"] == "net 30"
            && q["PrimaryPhone"]["FreeFormNumber"] == "555-0111"
    })
    .await;
}

/// A bridge never sends its tokens in the clear: `connect` to a plain `http://` address off
/// loopback is refused before any request, and `run` with a CA file it cannot read refuses to
/// start; each says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_refuses_plain_http_and_a_bad_ca() {
    let Shop { _tmp, dir, .. } = shop(Settings::default()).await;
    let out = std::process::Command::new(support::BRIDGE)
        .arg("--data")
        .arg(&dir)
        .args([
            "connect",
            "--qbo-base",
            "http://quickbooks.example.com",
            "--client-id",
            "app",
        ])
        .env("QBO_CLIENT_SECRET", "s3cret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("in the clear") && err.contains("https://"),
        "{err}"
    );
    let missing = dir.join("no-such-ca.pem");
    let out = std::process::Command::new(support::BRIDGE)
        .arg("--data")
        .arg(&dir)
        .args(support::RUN_ON_LOOPBACK)
        .arg("--qbo-ca")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it ran");
    assert!(
        err.contains("refuses to start") && err.contains("no-such-ca.pem"),
        "{err}"
    );
}

/// Every entry `from` holds that `to` lacks, in order, as a pull would give them.
async fn copy_entries(from: &Repo, to: &Repo) {
    let theirs = from.version_vector().unwrap();
    for (author, range) in to.version_vector().unwrap().missing_from(&theirs) {
        for seq in range {
            let bytes = from.entry(&author, seq).unwrap().unwrap();
            let entry = tillmesh_protocol::SignedEntry::decode(&bytes).unwrap();
            to.ingest(entry).await.unwrap();
        }
    }
}

/// A sale of 2 on the owner; another till, admitted by the owner and holding what the owner
/// holds, refunds 1 of it while the owner, apart, voids it. Returns the sale and the other
/// till, whose refund the owner does not hold yet.
async fn void_here_refund_apart(shop: &Shop) -> (tillmesh_protocol::DocId, Sale, Repo) {
    let owner = &shop.owner;
    sell(owner, 2).await;
    let (id, sale) = sales_by_id(owner)
        .into_iter()
        .find(|(_, s)| s.lines[0].qty == 2)
        .unwrap();
    let key = tillmesh_protocol::DeviceKey::from_secret([42; 32]);
    owner
        .execute(Command::Member(tillmesh_node::repo::MemberCommand::Add {
            device: key.device_id(),
            role: tillmesh_protocol::Role::Till,
            name: "Till B".into(),
        }))
        .await
        .unwrap();
    let other_dir = shop._tmp.path().join("till-b");
    let other = Repo::join_with_key(&other_dir, "Till B", owner.identity().root_id, key).unwrap();
    copy_entries(owner, &other).await;
    owner
        .execute(Command::Void {
            sale_id: id,
            request: serde_json::from_value(json!({"reason": "wrong customer"})).unwrap(),
        })
        .await
        .unwrap();
    other
        .execute(Command::Refund {
            sale_id: id,
            request: serde_json::from_value(json!({"lines": [{"line": 0, "qty": 1}]})).unwrap(),
        })
        .await
        .unwrap();
    (id, sale, other)
}

/// The owner voids a sale of 2 while another till, apart, refunds 1 of them. QuickBooks gets
/// the money once: the receipt stands, the refund stands, and the void takes back only the
/// rest (a refund receipt for the unit no refund took), so the sale nets to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_void_and_a_refund_made_apart_move_the_money_once() {
    let shop = shop(Settings::default()).await;
    let (id, sale, other) = void_here_refund_apart(&shop).await;
    let Shop {
        books, owner, dir, ..
    } = &shop;
    copy_entries(&other, owner).await;
    let merged: Sale = tillmesh_node::repo::typed(&id, owner.view(&id).unwrap().unwrap()).unwrap();
    assert!(merged.voided_and_refunded(), "{merged:?}");

    let _bridge = spawn_bridge(dir);
    let number = sale.receipt_number.clone();
    wait_until(
        "the sale, its refund and the rest of the void in QuickBooks",
        || async {
            books.receipts().await.len() == 2 && books.all("RefundReceipt").await.len() == 2
        },
    )
    .await;
    let receipt = books.receipt(&number).await.unwrap();
    let refunds = books.all("RefundReceipt").await;
    let total = |r: &Value| minor_of(&r["TotalAmt"], Currency::USD);
    let refund = refunds
        .iter()
        .find(|r| !note_id(r, "tillmesh refund ").is_empty())
        .unwrap();
    let rest = refunds
        .iter()
        .find(|r| r["DocNumber"] == format!("{number}-V").as_str())
        .unwrap_or_else(|| panic!("no correction for the rest: {refunds:?}"));
    assert_eq!(
        total(&receipt),
        sale.total.amount_minor,
        "the receipt stands: {receipt}"
    );
    assert_eq!(
        total(refund) + total(rest),
        sale.total.amount_minor,
        "the refund and the rest of the void give back the sale once: {refund} {rest}"
    );
    assert_eq!(rest["Line"][0]["SalesItemLineDetail"]["Qty"], 1, "{rest}");
    assert!(
        bridge_status(dir)["failures"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "{}",
        bridge_status(dir)
    );
}

/// The same race, but the void reaches QuickBooks before the refund reaches the bridge: the
/// receipt is voided whole, which gives back all of the sale's money. The refund that arrives
/// afterwards is recorded as covered by that void and never posted, so the money still moves
/// once; the status counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_arriving_after_its_sale_was_voided_in_quickbooks_is_not_booked_again() {
    let shop = shop(Settings::default()).await;
    let (id, sale, other) = void_here_refund_apart(&shop).await;
    let Shop {
        books, owner, dir, ..
    } = &shop;
    let _bridge = spawn_bridge(dir);
    let number = sale.receipt_number.clone();
    let voided = || async {
        books
            .receipt(&number)
            .await
            .filter(|r| r["PrivateNote"] == "Voided")
    };
    wait_until("the sale's receipt voided in QuickBooks", || async {
        voided().await.is_some()
    })
    .await;
    copy_entries(&other, owner).await;
    let merged: Sale = tillmesh_node::repo::typed(&id, owner.view(&id).unwrap().unwrap()).unwrap();
    assert!(merged.voided_and_refunded(), "{merged:?}");
    wait_until("the bridge sees the late refund", || async {
        bridge_status(dir)["refunds_covered_by_voids"] == 1
    })
    .await;
    // Another round, to be sure nothing more goes.
    sell(owner, 1).await;
    wait_until("the next sale in QuickBooks", || async {
        books.receipts().await.len() == 3
    })
    .await;
    assert!(
        books.all("RefundReceipt").await.is_empty(),
        "the void gave the money back; the refund must not give it again: {:?}",
        books.all("RefundReceipt").await
    );
    let receipt = voided().await.expect("still voided");
    assert_eq!(
        minor_of(&receipt["TotalAmt"], Currency::USD),
        0,
        "{receipt}"
    );
    let status = bridge_status(dir);
    assert!(
        status["failures"].as_array().is_some_and(Vec::is_empty),
        "{status}"
    );
}

/// An admin and a till, admitted by the owner and holding what it holds; the admin then
/// revokes the till before anything more the till does (the owner does not know yet).
async fn till_revoked_apart(shop: &Shop) -> (Repo, Repo) {
    let owner = &shop.owner;
    let device = |secret: u8, role: tillmesh_protocol::Role, name: &'static str| {
        let key = tillmesh_protocol::DeviceKey::from_secret([secret; 32]);
        let dir = shop._tmp.path().join(name);
        async move {
            owner
                .execute(Command::Member(tillmesh_node::repo::MemberCommand::Add {
                    device: key.device_id(),
                    role,
                    name: name.into(),
                }))
                .await
                .unwrap();
            Repo::join_with_key(&dir, name, owner.identity().root_id, key).unwrap()
        }
    };
    let admin = device(43, tillmesh_protocol::Role::Admin, "admin").await;
    let till = device(44, tillmesh_protocol::Role::Till, "till").await;
    copy_entries(owner, &admin).await;
    copy_entries(owner, &till).await;
    admin
        .execute(Command::Member(
            tillmesh_node::repo::MemberCommand::Revoke {
                device: till.identity().device_id,
            },
        ))
        .await
        .unwrap();
    (admin, till)
}

/// A till is revoked by an admin while, apart, it sells on; the owner takes the late sale
/// before the revocation, and the bridge posts it. When the revocation arrives the sale no
/// longer stands anywhere in the mesh, and the bridge voids its receipt in QuickBooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_sale_that_a_late_revocation_undoes_is_voided_in_quickbooks() {
    let shop = shop(Settings::default()).await;
    let Shop {
        books, owner, dir, ..
    } = &shop;
    let (admin, till) = till_revoked_apart(&shop).await;
    sell(&till, 1).await;
    let (id, sale) = sales_by_id(&till).into_iter().next().unwrap();
    copy_entries(&till, owner).await;
    let _bridge = spawn_bridge(dir);
    let number = sale.receipt_number.clone();
    let receipt = || async { books.receipt(&number).await };
    wait_until("the till's sale in QuickBooks", || async {
        receipt().await.is_some()
    })
    .await;
    copy_entries(&admin, owner).await;
    assert!(owner.view(&id).unwrap().is_none(), "undone in the mesh");
    wait_until("its receipt voided in QuickBooks", || async {
        receipt()
            .await
            .is_some_and(|r| r["PrivateNote"] == "Voided")
    })
    .await;
    let r = receipt().await.unwrap();
    assert_eq!(minor_of(&r["TotalAmt"], Currency::USD), 0, "{r}");
}

/// The same with a refund: the revoked till, apart, refunds part of one of the owner's sales;
/// the bridge posts the refund before the revocation reaches the owner, and deletes its refund
/// receipt when it does. The sale's own receipt stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_refund_that_a_late_revocation_undoes_is_taken_back_out_of_quickbooks() {
    let shop = shop(Settings::default()).await;
    let Shop {
        books, owner, dir, ..
    } = &shop;
    sell(owner, 2).await;
    let (admin, till) = till_revoked_apart(&shop).await;
    let (id, sale) = sales_by_id(&till)
        .into_iter()
        .find(|(_, s)| s.lines[0].qty == 2)
        .unwrap();
    till.execute(Command::Refund {
        sale_id: id,
        request: serde_json::from_value(json!({"lines": [{"line": 0, "qty": 1}]})).unwrap(),
    })
    .await
    .unwrap();
    copy_entries(&till, owner).await;
    let _bridge = spawn_bridge(dir);
    wait_until("the sales and the refund in QuickBooks", || async {
        books.receipts().await.len() == 2 && books.all("RefundReceipt").await.len() == 1
    })
    .await;
    copy_entries(&admin, owner).await;
    let held: Sale = tillmesh_node::repo::typed(&id, owner.view(&id).unwrap().unwrap()).unwrap();
    assert!(
        held.refunds.is_empty(),
        "the refund is undone in the mesh: {held:?}"
    );
    wait_until("the refund receipt gone from QuickBooks", || async {
        books.all("RefundReceipt").await.is_empty()
    })
    .await;
    let receipt = books.receipt(&sale.receipt_number).await.unwrap();
    assert_eq!(
        minor_of(&receipt["TotalAmt"], Currency::USD),
        sale.total.amount_minor,
        "the sale stands: {receipt}"
    );
    let status = bridge_status(dir);
    assert!(
        status["failures"].as_array().is_some_and(Vec::is_empty),
        "{status}"
    );
}
