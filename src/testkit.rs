//! Real nodes for tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tillmesh_node::Repo;
use tillmesh_node::cli::client::{api_addr_path, read_api_addr};
use tillmesh_node::repo::{Command as RepoCommand, IngestOutcome, MemberCommand};
use tillmesh_protocol::{Currency, DeviceId, DeviceKey, Role, SignedEntry};
use tokio::net::TcpListener;

/// How long a node process gets to start serving before a test gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A client for one node's API that returns status and body, so tests can assert on both.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    /// A client with no token: every route refuses it (tests of the API's guard).
    pub fn new(base: impl Into<String>) -> Self {
        Api::with_token(base, None)
    }

    /// A client for the node whose folder is `dir`, with its token (`DIR/api.token`), as the
    /// CLI sends it.
    pub fn for_dir(base: impl Into<String>, dir: &Path) -> Self {
        Api::with_token(base, tillmesh_node::api::auth::read_token(dir))
    }

    /// A client that presents `token` (or none).
    pub fn with_token(base: impl Into<String>, token: Option<String>) -> Self {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) =
            token.and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        // A wedged node fails the test instead of hanging CI.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(60))
            .default_headers(headers)
            .build()
            .expect("http client");
        Api {
            base: base.into(),
            http,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, value))
    }

    /// The HTTP client, with this node's token: for streams and raw requests.
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends raw bytes as the body (malformed JSON and the like).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: &'static [u8],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<(StatusCode, Value)> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// POSTs and insists on a 2xx answer.
    pub async fn ok_post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, v) = self.post(path, body).await?;
        if !status.is_success() {
            bail!("POST {path} answered {status}: {v}");
        }
        Ok(v)
    }

    pub async fn ok_get(&self, path: &str) -> anyhow::Result<Value> {
        let (status, v) = self.get(path).await?;
        if !status.is_success() {
            bail!("GET {path} answered {status}: {v}");
        }
        Ok(v)
    }

    /// Every item of a paged listing.
    pub async fn all(&self, path: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let page = self
                .ok_get(&format!("{path}?limit=1000&after={after}"))
                .await?;
            out.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_after"].as_str() {
                Some(a) => after = a.to_owned(),
                None => return Ok(out),
            }
        }
    }
}

/// Runs `tillmesh` with arguments and returns its output, failing with its stderr.
pub fn tillmesh(bin: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = Command::new(bin)
        .args(args)
        .env_remove("TILLMESH_DATA")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(out)
}

/// `tillmesh ARGS --json`, which must succeed: its answer.
pub fn tillmesh_json(bin: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let mut args = args.to_vec();
    args.push("--json");
    let out = tillmesh(bin, &args)?;
    if !out.status.success() {
        bail!(
            "tillmesh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("tillmesh {args:?} did not answer JSON"))
}

/// A node running as its own process, as a till would run it.
pub struct NodeProcess {
    pub dir: PathBuf,
    pub api: Api,
    bin: PathBuf,
    child: Option<Child>,
    /// The network flags it was started with, for restarts.
    net: Vec<String>,
}

/// Network flags for a node on the host: loopback only, no mDNS (it would reach the host's
/// real LAN), any free port.
pub const LOOPBACK_NET: [&str; 3] = ["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];

impl NodeProcess {
    /// `tillmesh init` in `dir`.
    pub fn init(bin: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
        let out = tillmesh(
            bin,
            &["init", "--data", &dir.to_string_lossy(), "--name", name],
        )?;
        if !out.status.success() {
            bail!(
                "tillmesh init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `tillmesh run` on `dir` with the API on a free loopback port; returns once it serves.
    pub async fn start(bin: &Path, dir: &Path) -> anyhow::Result<NodeProcess> {
        Self::start_with(bin, dir, &[]).await
    }

    /// [`NodeProcess::start`] with extra environment variables for the node.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<NodeProcess> {
        Self::spawn(bin, dir, &LOOPBACK_NET, env).await
    }

    /// `tillmesh run` with these network flags (`--listen`, `--peer`, `--no-mdns`...) in
    /// place of the loopback-only default, and these environment variables.
    pub async fn spawn(
        bin: &Path,
        dir: &Path,
        net: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<NodeProcess> {
        let addr_file = api_addr_path(dir);
        let _ = std::fs::remove_file(&addr_file);
        let child = Command::new(bin)
            .args([
                "run",
                "--data",
                &dir.to_string_lossy(),
                "--api",
                "127.0.0.1:0",
            ])
            .args(net)
            .env("TILLMESH_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning tillmesh run")?;
        let mut node = NodeProcess {
            dir: dir.to_owned(),
            api: Api::new(""),
            bin: bin.to_owned(),
            child: Some(child),
            net: net.iter().map(|s| s.to_string()).collect(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("tillmesh run exited with {status} before serving");
            }
            if let Some((addr, _device)) = read_api_addr(dir) {
                let api = Api::for_dir(format!("http://{addr}"), dir);
                if api
                    .get("/v1/status")
                    .await
                    .is_ok_and(|(s, _)| s.is_success())
                {
                    node.api = api;
                    return Ok(node);
                }
            }
            if Instant::now() > deadline {
                bail!("tillmesh run did not serve within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no chance to flush or clean up, as when a till loses power.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("node did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        let net: Vec<&str> = self.net.iter().map(String::as_str).collect();
        *self = NodeProcess::spawn(&self.bin, &self.dir, &net, &[]).await?;
        Ok(())
    }
}

impl NodeProcess {
    /// The node's resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }
}

/// A process's resident memory now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A node inside this process: the real repo and API, on a loopback port.
pub struct InProcessNode {
    pub repo: Repo,
    pub api: Api,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl InProcessNode {
    /// A new mesh in `dir` with this node as its owner.
    pub async fn init(dir: &Path, name: &str) -> anyhow::Result<InProcessNode> {
        let repo = Repo::init(dir, name, Currency::USD).await?;
        Self::serve(repo).await
    }

    pub async fn open(dir: &Path) -> anyhow::Result<InProcessNode> {
        Self::serve(Repo::open(dir)?).await
    }

    pub async fn serve(repo: Repo) -> anyhow::Result<InProcessNode> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        tillmesh_node::api::auth::ensure_token(repo.dir())?;
        let api = Api::for_dir(format!("http://{}", listener.local_addr()?), repo.dir());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(tillmesh_node::server::run(
            repo.clone(),
            listener,
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(InProcessNode {
            repo,
            api,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops serving and waits for the server to finish.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// A product body as the example gives it.
pub fn product(sku: &str, name: &str, price_minor: i64, stock: i64) -> Value {
    serde_json::json!({ "sku": sku, "name": name, "price": { "amount_minor": price_minor, "currency": "USD" }, "tax_code": "NON", "stock": stock })
}

/// A sale of `qty` of `sku`, paid exactly in cash.
pub fn cash_sale(sku: &str, qty: i64, paid_minor: i64) -> Value {
    serde_json::json!({ "lines": [{ "sku": sku, "qty": qty }], "payments": [{ "method": "cash", "amount_minor": paid_minor }] })
}

/// The devices a node is connected to, as its status lists them.
pub async fn connected_devices(api: &Api) -> anyhow::Result<Vec<String>> {
    let s = api.ok_get("/v1/status").await?;
    Ok(s["network"]["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["device_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// For `Repo::execute` (the load benches): a sale of `qty` of `sku`, paid by card.
pub fn card_sale_command(sku: &str, qty: i64) -> RepoCommand {
    use tillmesh_node::repo::requests::{NewSale, SaleLineRequest, TenderRequest};
    RepoCommand::Sell(NewSale {
        lines: vec![SaleLineRequest {
            product_id: None,
            sku: Some(sku.to_owned()),
            qty,
            unit_price_minor: None,
        }],
        payments: vec![TenderRequest {
            method: "card".into(),
            amount_minor: None,
        }],
        customer_id: None,
    })
}

/// For `Repo::execute` (the load benches): a product in USD, untaxed, active.
pub fn product_command(sku: &str, name: &str, price_minor: i64, stock: i64) -> RepoCommand {
    RepoCommand::CreateProduct(tillmesh_node::repo::requests::NewProduct {
        sku: sku.to_owned(),
        name: name.to_owned(),
        price: tillmesh_protocol::Money::new(price_minor, Currency::USD),
        tax_code: "NON".into(),
        stock,
        active: true,
        stock_policy: Default::default(),
        low_stock_at: None,
    })
}

/// Percentiles of a set of durations, in microseconds.
pub fn percentiles_us(samples: &mut [Duration]) -> serde_json::Value {
    samples.sort();
    let at = |p: f64| -> u128 {
        if samples.is_empty() {
            return 0;
        }
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_micros()
    };
    serde_json::json!({ "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "count": samples.len() })
}

/// `tillmesh invite --role ROLE` on a running node's folder: the invite on its last line.
/// Invites are one-time: one per device to join.
pub fn invite_code(bin: &Path, dir: &Path, role: &str) -> anyhow::Result<String> {
    let out = tillmesh(
        bin,
        &["invite", "--data", &dir.to_string_lossy(), "--role", role],
    )?;
    if !out.status.success() {
        bail!(
            "tillmesh invite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .last()
        .map(str::to_owned)
        .context("tillmesh invite printed nothing")
}

/// `tillmesh join` into a new folder.
pub fn join(bin: &Path, dir: &Path, name: &str, code: &str) -> anyhow::Result<()> {
    let out = tillmesh(
        bin,
        &[
            "join",
            "--data",
            &dir.to_string_lossy(),
            "--name",
            name,
            code,
        ],
    )?;
    if !out.status.success() {
        bail!(
            "tillmesh join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A node's version vector, from its status.
pub async fn version_vector(api: &Api) -> anyhow::Result<Value> {
    Ok(api.ok_get("/v1/status").await?["version_vector"].clone())
}

/// Waits until every node holds the same entries, and at least `entries_min` of them.
/// Returns how long that took; fails after `timeout` with each node's version vector.
pub async fn wait_converged(
    apis: &[&Api],
    entries_min: u64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let mut vvs = Vec::with_capacity(apis.len());
        for api in apis {
            vvs.push(version_vector(api).await?);
        }
        let total = |v: &Value| {
            v.as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum::<u64>())
                .unwrap_or(0)
        };
        if vvs.windows(2).all(|w| w[0] == w[1]) && total(&vvs[0]) >= entries_min {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("not converged after {timeout:?}: {vvs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` saying `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client for the node whose `api.addr` is in `dir`, if it has written one.
pub fn read_api(dir: &Path) -> Option<Api> {
    read_api_addr(dir).map(|(addr, _)| Api::for_dir(format!("http://{addr}"), dir))
}

/// Admits the device with key `secret` into `owner`'s mesh with `role` (as pairing would) and
/// creates its store in `dir`. It holds nothing until entries reach it.
pub async fn member_device(
    dir: &Path,
    owner: &Repo,
    name: &str,
    secret: [u8; 32],
    role: Role,
) -> anyhow::Result<InProcessNode> {
    let key = DeviceKey::from_secret(secret);
    owner
        .execute(RepoCommand::Member(MemberCommand::Add {
            device: key.device_id(),
            role,
            name: name.to_owned(),
        }))
        .await?;
    let id = owner.identity();
    drop(tillmesh_node::store::create(
        dir, name, key, id.mesh_id, id.root_id,
    )?);
    InProcessNode::open(dir).await
}

/// An owner (`tillmesh run` with `owner_net` flags) and `n - 1` tills joined by its invite,
/// in `root/till-0` .. `root/till-{n-1}`, on loopback; the owner's first product, `product`,
/// has reached every till.
pub async fn shop(
    bin: &Path,
    root: &Path,
    n: usize,
    owner_net: &[&str],
    product: &Value,
) -> anyhow::Result<Vec<NodeProcess>> {
    let a = root.join("till-0");
    NodeProcess::init(bin, &a, "Till 0")?;
    let owner = NodeProcess::spawn(bin, &a, owner_net, &[]).await?;
    owner.api.ok_post("/v1/products", product).await?;
    let mut nodes = vec![owner];
    for i in 1..n {
        let dir = root.join(format!("till-{i}"));
        let code = invite_code(bin, &a, "till")?;
        join(bin, &dir, &format!("Till {i}"), &code)?;
        nodes.push(NodeProcess::start(bin, &dir).await?);
    }
    for node in &nodes[1..] {
        let api = node.api.clone();
        wait_for("the catalogue to reach a new till", SHOP_TIMEOUT, || {
            let api = api.clone();
            async move {
                let list = api.all("/v1/products").await?;
                Ok((!list.is_empty()).then_some(()))
            }
        })
        .await?;
    }
    Ok(nodes)
}

/// Waits until the product with `sku` is in `api`'s catalogue.
pub async fn wait_for_sku(api: &Api, sku: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_for(&format!("product {sku} to arrive"), timeout, || {
        let (api, sku) = (api.clone(), sku.to_owned());
        async move {
            let found = api
                .all("/v1/products")
                .await?
                .iter()
                .any(|p| p["sku"] == sku.as_str());
            Ok(found.then_some(()))
        }
    })
    .await
}

/// How long [`shop`] waits for its catalogue to reach the tills.
const SHOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Every entry `repo` holds from `author`, in order.
pub fn entries_of(repo: &Repo, author: &DeviceId) -> anyhow::Result<Vec<SignedEntry>> {
    let n = repo.version_vector()?.get(author);
    (1..=n)
        .map(|s| {
            let bytes = repo.entry(author, s)?.context("a held entry is missing")?;
            Ok(SignedEntry::decode(&bytes)?)
        })
        .collect()
}

/// Gives `to` the entries of `from` it lacks, in order, as a pull would; returns what became
/// of each.
pub async fn sync_entries(
    from: &Repo,
    to: &Repo,
) -> anyhow::Result<Vec<(DeviceId, u64, IngestOutcome)>> {
    let theirs = from.version_vector()?;
    let mut out = Vec::new();
    for (author, range) in to.version_vector()?.missing_from(&theirs) {
        for seq in range {
            let bytes = from
                .entry(&author, seq)?
                .context("a held entry is missing")?;
            let outcome = to.ingest(SignedEntry::decode(&bytes)?).await?;
            out.push((author, seq, outcome));
        }
    }
    Ok(out)
}
