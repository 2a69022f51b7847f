//! The `tillmesh` command line. Each command is a small function; shop commands go through
//! [`client::Client`], so they work the same against a running node or a stopped store.

pub mod client;
pub mod config;
pub mod demo;
mod mesh;

pub use mesh::NetArgs;

/// `tillmesh join`, for programs built on the node (the bridge joins like any device).
pub async fn join_device(
    data: &std::path::Path,
    name: &str,
    invite: &str,
    catch_up: bool,
    keys: &KeySource,
    json: bool,
) -> anyhow::Result<()> {
    mesh::join(data, name, invite, catch_up, shop::Output { json }, keys).await
}
mod shop;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tillmesh_protocol::Currency;
use tokio::net::TcpListener;

use crate::repo::Repo;
use crate::store::KeySource;
use client::api_addr_path;

/// Where `tillmesh run` serves its API unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7420";
/// After a stop signal, how long open requests and event streams get before the node exits.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Parser)]
#[command(
    name = "tillmesh",
    version,
    about = "An offline-first replication node for shop tills"
)]
pub struct Cli {
    /// The device's data folder (or set TILLMESH_DATA).
    #[arg(long, global = true, env = "TILLMESH_DATA")]
    data: Option<PathBuf>,
    /// Print answers as JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seal the store with the passphrase on this file's first line instead of a key file
    /// (`init`, `join`), or unlock a store sealed that way (every command that opens it).
    #[arg(
        long,
        global = true,
        env = "TILLMESH_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a new mesh (a business) with this device as its owner.
    Init {
        /// This device's name, shown to other devices and on receipts ("Till 1").
        #[arg(long)]
        name: String,
        /// The shop's currency (ISO 4217).
        #[arg(long, default_value = "USD")]
        currency: String,
        /// The shop's time zone (IANA name, such as Europe/London): QuickBooks books each
        /// sale on its local date there. This machine's zone when not said.
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Run the node: replicate with peers and serve the local API until stopped (Ctrl-C or
    /// SIGTERM).
    Run {
        /// Address of the local API: loopback only (every request also needs the node's
        /// token, `tillmesh api-token`).
        #[arg(long, default_value = DEFAULT_API)]
        api: SocketAddr,
        #[command(flatten)]
        net: mesh::NetArgs,
        /// Read `run`'s options from this TOML file (default: DIR/tillmesh.toml when there is
        /// one). Its keys are the long flags (`api`, `peer`, `no-mdns` ...); a flag given here
        /// wins over the file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Open a one-time invite for a new device on this running owner or admin device, and
    /// print it; the invite is the last line.
    Invite {
        /// What the new device may do: admin, manager, till, bridge or viewer.
        #[arg(long)]
        role: String,
        /// How long the invite lasts: 10m, 90s, 2h.
        #[arg(long, default_value = "10m")]
        expires: String,
    },
    /// Pair this new data folder with the device that printed an invite, and join its mesh.
    Join {
        /// This device's name, shown to other devices and on receipts ("Till 2").
        #[arg(long)]
        name: String,
        /// The invite: its short code (enough on the same LAN) or the whole `tm2:` line.
        invite: String,
        /// Only pair and create the store; leave the catch-up to `tillmesh run`.
        #[arg(long)]
        no_sync: bool,
    },
    /// List the mesh's members and their roles.
    Members,
    /// Cut a device off: its later entries are refused everywhere, its connections closed.
    Revoke {
        /// The device's name or id (or a unique start of its id).
        device: String,
    },
    /// Give a member another role: `tillmesh role "Till 2" viewer`.
    Role { device: String, role: String },
    /// List entries this node refused, with the reason.
    Rejected {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show this device, its mesh, its log and what it holds; `--watch` follows a catch-up
    /// (entries received of entries known, rate, time left) until stopped.
    Status {
        #[arg(long)]
        watch: bool,
    },
    /// Manage the catalogue.
    #[command(subcommand)]
    Product(shop::ProductCmd),
    /// Ring up a sale: `tillmesh sell TEA-1:2 MUG-1` sells two TEA-1 and one MUG-1.
    Sell(shop::SellArgs),
    /// List recent sales, newest first.
    Sales {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Void a sale (its goods go back in stock).
    Void {
        sale_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Refund a whole sale, or `--line N:QTY` parts of it.
    Refund(shop::RefundArgs),
    /// Show stock levels, or adjust them with `--adjust SKU:DELTA`.
    Stock(shop::StockArgs),
    /// Manage customers.
    #[command(subcommand)]
    Customer(shop::CustomerCmd),
    /// Print this node's API token: send it as `Authorization: Bearer <token>` to its local
    /// API (the CLI does by itself).
    ApiToken,
    /// Show the mesh settings, or change them: `tillmesh settings --time-zone Europe/London`.
    Settings {
        /// The shop's time zone (IANA name): sales are booked on their local date there.
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Set a tax rate: `tillmesh tax TAX 8.25 --name "Sales tax"`.
    Tax {
        code: String,
        /// Percent, up to four decimals.
        percent: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List what people should review: fields two devices set at once, oversold products,
    /// QuickBooks totals that differ from a till's, voids and refunds of one sale; or settle
    /// a field with `--pick DOC_ID FIELD VALUE` (FIELD as `phone` or `address.city`; VALUE as
    /// JSON, or plain text for a string).
    Conflicts {
        #[arg(long, num_args = 3, value_names = ["DOC_ID", "FIELD", "VALUE"])]
        pick: Option<Vec<String>>,
    },
    /// Print a one-time link that signs a browser in to this running node's console (and open
    /// it where a browser is at hand). The link works once, for five minutes.
    Console {
        /// Only print the link.
        #[arg(long)]
        no_open: bool,
    },
    /// Run a demonstration on this machine, in a temporary folder, with nothing to configure.
    Demo {
        /// Keep the demo's data in this folder (one subfolder per till) instead of a
        /// temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

/// Entry point of the `tillmesh` binary: runs the command, prints any error as one readable
/// message (with its causes), and turns it into a failing exit code.
pub fn main() -> std::process::ExitCode {
    main_with(None)
}

/// As [`main`], with a last act for `tillmesh demo` from a crate this one cannot depend on
/// (the QuickBooks bridge).
pub fn main_with(demo_extra: Option<demo::Extra>) -> std::process::ExitCode {
    match run_cli(demo_extra) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli(demo_extra: Option<demo::Extra>) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let args = config::with_config_file(&Cli::command(), "run", std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    let verbose = matches!(cli.command, Command::Run { .. });
    init_logging(if verbose { "info" } else { "warn" });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(cli, demo_extra))
}

/// Logs to stderr: `TILLMESH_LOG` filters them (`info`, `tillmesh_node=debug`), and
/// `TILLMESH_LOG_FORMAT=json` writes one JSON object per line for a log collector.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TILLMESH_LOG")
        .unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match std::env::var("TILLMESH_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

async fn dispatch(cli: Cli, demo_extra: Option<demo::Extra>) -> anyhow::Result<()> {
    let data = || {
        cli.data
            .clone()
            .context("say which data folder with --data DIR (or TILLMESH_DATA)")
    };
    let out = shop::Output { json: cli.json };
    let keys = key_source(cli.passphrase_file.as_deref())?;
    match cli.command {
        Command::Init {
            name,
            currency,
            time_zone,
        } => {
            let currency: Currency = currency.parse()?;
            let time_zone = match time_zone {
                Some(z) => z,
                None => jiff::tz::TimeZone::system()
                    .iana_name()
                    .map(str::to_owned)
                    .context("this machine does not name its time zone; say the shop's with --time-zone (such as Europe/London)")?,
            };
            // Checked before the store is made: a typo leaves nothing behind.
            jiff::tz::TimeZone::get(&time_zone).with_context(|| {
                format!("--time-zone {time_zone:?} is not a time zone; write an IANA name such as Europe/London")
            })?;
            let dir = data()?;
            let repo = Repo::init_with(&dir, &name, currency, &keys).await?;
            repo.execute(crate::repo::Command::SetTimeZone(time_zone))
                .await?;
            crate::api::auth::ensure_token(&dir)
                .with_context(|| format!("writing the API token in {}", dir.display()))?;
            let id = repo.identity();
            out.show(&serde_json::json!({ "device_id": id.device_id, "mesh_id": id.mesh_id, "data": dir }), || {
                format!(
                    "created mesh {} in {}\nthis device, '{}', is its owner: {}\nnext: tillmesh run --data {}",
                    id.mesh_id.short(),
                    dir.display(),
                    id.device_name,
                    id.device_id,
                    dir.display()
                )
            });
            Ok(())
        }
        Command::Run { api, net, .. } => run(data()?, api, net, &keys).await,
        Command::ApiToken => {
            let dir = data()?;
            if !crate::store::store_path(&dir).exists() {
                bail!(
                    "{} holds no tillmesh store: run `tillmesh init` or `tillmesh join` there first",
                    dir.display()
                );
            }
            let token = crate::api::auth::ensure_token(&dir)
                .with_context(|| format!("reading the API token in {}", dir.display()))?;
            println!("{token}");
            Ok(())
        }
        Command::Invite { role, expires } => mesh::invite(&data()?, &role, &expires, &keys).await,
        Command::Join {
            name,
            invite,
            no_sync,
        } => mesh::join(&data()?, &name, &invite, !no_sync, out, &keys).await,
        Command::Members => mesh::members(&data()?, mesh::MembersAction::List, out, &keys).await,
        Command::Revoke { device } => {
            mesh::members(&data()?, mesh::MembersAction::Revoke(device), out, &keys).await
        }
        Command::Role { device, role } => {
            mesh::members(
                &data()?,
                mesh::MembersAction::SetRole { who: device, role },
                out,
                &keys,
            )
            .await
        }
        Command::Rejected { limit } => {
            mesh::members(
                &data()?,
                mesh::MembersAction::Rejected { limit },
                out,
                &keys,
            )
            .await
        }
        Command::Demo { keep } => demo::run(keep, demo_extra).await,
        Command::Console { no_open } => console(&data()?, no_open, out, &keys).await,
        command => shop::dispatch(&data()?, command, out, &keys).await,
    }
}

/// `tillmesh console`: a sign-in link for the running node's console.
async fn console(
    data: &std::path::Path,
    no_open: bool,
    out: shop::Output,
    keys: &KeySource,
) -> anyhow::Result<()> {
    let client = client::Client::connect(data, keys).await?;
    let client::Client::Http { base, .. } = &client else {
        bail!(
            "no node is running on {}; the console is served by a running node: start it with `tillmesh run --data {}`",
            data.display(),
            data.display()
        );
    };
    let answer = client
        .post(crate::api::auth::CONSOLE_CODE_PATH, &serde_json::json!({}))
        .await?;
    let code = answer["code"]
        .as_str()
        .context("the node did not give a sign-in code")?;
    let link = format!("{base}{}?code={code}", crate::api::auth::CONSOLE_LOGIN_PATH);
    out.show(
        &serde_json::json!({ "url": link, "expires_in_s": answer["expires_in_s"] }),
        || format!("open the console (the link works once, for five minutes):\n{link}"),
    );
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !no_open && desktop && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        // A browser of this desktop, if it has one; the printed link is there either way.
        let _ = std::process::Command::new("xdg-open")
            .arg(&link)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    Ok(())
}

/// The storage key's source: the key file unless a passphrase file is given.
/// The storage key's source for `--passphrase-file` (or its absence).
pub fn key_source(passphrase_file: Option<&std::path::Path>) -> anyhow::Result<KeySource> {
    let Some(path) = passphrase_file else {
        return Ok(KeySource::KeyFile);
    };
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the passphrase file {}; check --passphrase-file (or TILLMESH_PASSPHRASE_FILE)",
            path.display()
        )
    })?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        bail!(
            "the passphrase file {} is empty; put the passphrase on its first line",
            path.display()
        );
    }
    Ok(KeySource::Passphrase(line.to_owned()))
}

/// Work a program built on the node runs beside it (the QuickBooks bridge): given the open
/// repo and a signal that turns true at shutdown.
/// An error stops the node: the program cannot run as configured.
pub type Beside = Box<
    dyn FnOnce(Repo, tokio::sync::watch::Receiver<bool>) -> anyhow::Result<BesideStarted> + Send,
>;

/// What a [`Beside`] started: its task, stopped with the node, and routes it adds to the
/// node's API.
pub struct BesideStarted {
    pub task: tokio::task::JoinHandle<()>,
    pub routes: Option<axum::Router>,
}

async fn run(
    data: PathBuf,
    api: SocketAddr,
    net: mesh::NetArgs,
    keys: &KeySource,
) -> anyhow::Result<()> {
    run_node(data, api, net, keys, None).await
}

/// `tillmesh run`, with `beside` started once the node is up and stopped with it.
pub async fn run_node(
    data: PathBuf,
    api: SocketAddr,
    net: mesh::NetArgs,
    keys: &KeySource,
    beside: Option<Beside>,
) -> anyhow::Result<()> {
    if !api.ip().is_loopback() {
        bail!(
            "--api {api}: the till API has no authentication, so it listens on loopback only (127.0.0.1 or [::1])"
        );
    }
    let repo = Repo::open_with(&data, keys)?;
    let listener = TcpListener::bind(api).await.with_context(|| {
        format!("cannot listen on {api}; is another node using it? choose another with --api")
    })?;
    let addr = listener.local_addr()?;
    // The API's token first: a node that cannot make it must not start without an API.
    crate::api::auth::ensure_token(&data)
        .with_context(|| format!("making the API token in {}", data.display()))?;
    let addr_file = api_addr_path(&data);
    client::write_api_addr(&data, &addr, &repo.identity().device_id.to_string())
        .with_context(|| format!("cannot write {}", addr_file.display()))?;
    let metrics_listener = match net.metrics {
        Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
            format!("cannot listen on {a} for --metrics; is another program using it?")
        })?),
        None => None,
    };
    let id = repo.identity().clone();
    println!(
        "tillmesh node '{}' ({}) of mesh {}",
        id.device_name,
        id.device_id.short(),
        id.mesh_id.short()
    );
    println!("api: http://{addr}");
    tracing::info!(%addr, "serving the local API");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_rx2 = stop_rx.clone();
    let stopped = |rx: tokio::sync::watch::Receiver<bool>| async move {
        let mut rx = rx;
        let _ = rx.wait_for(|s| *s).await;
    };
    let config = net.config(&data)?;
    let (network, net_task) =
        crate::net::start(repo.clone(), config, stopped(stop_rx.clone())).await?;
    let status = network.status();
    println!("peer id: {}", status.peer_id);
    for a in &status.listen {
        println!("listening on {a}");
    }
    let (beside, routes) = match beside.map(|f| f(repo.clone(), stop_rx.clone())) {
        Some(Ok(b)) => (Some(b.task), b.routes),
        Some(Err(e)) => {
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, net_task).await;
            let _ = std::fs::remove_file(&addr_file);
            return Err(e);
        }
        None => (None, None),
    };
    if let Some(listener) = metrics_listener {
        let token: std::sync::Arc<str> = crate::api::auth::ensure_metrics_token(&data)?.into();
        println!(
            "metrics: http://{}/metrics (token: {})",
            listener.local_addr()?,
            data.join(crate::api::auth::METRICS_TOKEN_FILE).display()
        );
        let app = crate::api::metrics_router(repo.clone()).layer(
            axum::middleware::from_fn_with_state(token, crate::api::auth::bearer_only),
        );
        let shutdown = stopped(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    let server = tokio::spawn(crate::server::run_with(
        repo,
        listener,
        Some(network),
        routes,
        net.allow_origin.clone(),
        stopped(stop_rx),
    ));
    wait_for_stop_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = stop_rx2.changed().await;
    // Event streams never end by themselves; give requests a moment, then go.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, net_task).await;
    if let Some(task) = beside {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, task).await;
    }
    let _ = std::fs::remove_file(&addr_file);
    Ok(())
}

async fn wait_for_stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
