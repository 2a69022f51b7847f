//! `tillmesh-bridge`: a tillmesh node with the `bridge` role that posts the mesh's sales to
//! QuickBooks Online and brings back what QuickBooks says about money.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tillmesh_bridge_qbo::bridge::client::QboError;
use tillmesh_bridge_qbo::bridge::transport::TransportError;
use tillmesh_bridge_qbo::bridge::{
    Bridge, Options, client::Qbo, connect, home_currency, state::State,
};
use tillmesh_node::Repo;
use tillmesh_node::cli::{BesideStarted, NetArgs, join_device, key_source, run_node};

#[derive(Parser)]
#[command(
    name = "tillmesh-bridge",
    version,
    about = "The QuickBooks Online bridge of a tillmesh mesh"
)]
struct Cli {
    /// The bridge's data folder (or set TILLMESH_DATA).
    #[arg(long, global = true, env = "TILLMESH_DATA")]
    data: Option<PathBuf>,
    /// Unlock a store sealed with the passphrase on this file's first line.
    #[arg(long, global = true, env = "TILLMESH_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a mesh with an invite for the `bridge` role (as `tillmesh join`).
    Join {
        #[arg(long)]
        name: String,
        invite: String,
        /// Only pair and create the store; leave the catch-up to `run`.
        #[arg(long)]
        no_sync: bool,
    },
    /// Connect to a QuickBooks company (OAuth). Run it while the bridge is stopped.
    Connect {
        /// The API's base URL: `https://quickbooks.api.intuit.com`, or the emulator's.
        #[arg(long)]
        qbo_base: String,
        #[arg(long)]
        client_id: String,
        /// The app's client secret. Kept off the command line, where `ps` shows it: from
        /// QBO_CLIENT_SECRET, or the first line of --client-secret-file.
        #[arg(long, env = "QBO_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Option<String>,
        #[arg(long, conflicts_with = "client_secret")]
        client_secret_file: Option<PathBuf>,
        /// Intuit's authorize page; the emulator's (`<base>/connect/oauth2`) by default.
        #[arg(long)]
        authorize_url: Option<String>,
        /// Intuit's token endpoint; the emulator's (`<base>/oauth2/v1/tokens/bearer`) by default.
        #[arg(long)]
        token_url: Option<String>,
        /// The app's webhook verifier token (notifications are checked against it): from
        /// QBO_VERIFIER_TOKEN, or the first line of --verifier-token-file.
        #[arg(long, env = "QBO_VERIFIER_TOKEN", hide_env_values = true)]
        verifier_token: Option<String>,
        #[arg(long, conflicts_with = "verifier_token")]
        verifier_token_file: Option<PathBuf>,
        /// Trust this CA (PEM) beside the platform's roots: the emulator's `ca_file`, or a
        /// company proxy's. Kept with the connection for `run`.
        #[arg(long)]
        qbo_ca: Option<PathBuf>,
    },
    /// Run the node and the bridge until stopped.
    Run {
        #[arg(long, default_value = "127.0.0.1:7420")]
        api: SocketAddr,
        /// The bridge's own endpoint: `POST /webhooks` (put it behind the public URL Intuit
        /// notifies), `GET /connect` and `GET /v1/bridge` (also on `--api`); all but the
        /// webhook and the OAuth redirect need the node's API token.
        #[arg(long, default_value = "127.0.0.1:7441")]
        http: SocketAddr,
        /// Trust this CA (PEM) beside the platform's roots, instead of the one given to
        /// `connect`.
        #[arg(long)]
        qbo_ca: Option<PathBuf>,
        /// Creates per QBO batch request (QBO takes at most 30); 1 posts one by one.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=30))]
        batch: u16,
        /// Post one summary receipt per day of sales (UTC days) instead of one per sale.
        #[arg(long, conflicts_with = "summary_period_s")]
        daily_summary: bool,
        /// Post one summary receipt per this many seconds of sales (for shops that close
        /// more than once a day, and for tests).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        summary_period_s: Option<u64>,
        /// Transactions one push round takes on; pulls and webhooks are served between
        /// rounds, and a round puts first what QuickBooks can take now.
        #[arg(long, default_value_t = tillmesh_bridge_qbo::bridge::ROUND_TRANSACTIONS_MAX as u64,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        round: u64,
        /// Seconds between reads of QuickBooks' change feed; a verified webhook reads it at
        /// once whatever this says.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        pull_interval_s: u64,
        #[command(flatten)]
        net: NetArgs,
        /// Read `run`'s options from this TOML file (default: DIR/tillmesh.toml when there is
        /// one). Its keys are the long flags (`api`, `http`, `peer` ...); a flag given here
        /// wins over the file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show the connection, the outbox, the last push and pull, failures and conflicts.
    Status,
}

fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    use clap::CommandFactory;
    let args = tillmesh_node::cli::config::with_config_file(
        &Cli::command(),
        "run",
        std::env::args_os().collect(),
    )?;
    let cli = Cli::parse_from(args);
    tillmesh_node::cli::init_logging(if matches!(cli.command, Cmd::Run { .. }) {
        "info"
    } else {
        "warn"
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let data = cli
        .data
        .clone()
        .context("say which data folder with --data DIR (or TILLMESH_DATA)")?;
    let keys = key_source(cli.passphrase_file.as_deref())?;
    match cli.command {
        Cmd::Join {
            name,
            invite,
            no_sync,
        } => join_device(&data, &name, &invite, !no_sync, &keys, false).await,
        Cmd::Connect {
            qbo_base,
            client_id,
            client_secret,
            client_secret_file,
            authorize_url,
            token_url,
            verifier_token,
            verifier_token_file,
            qbo_ca,
        } => {
            let client_secret = secret(client_secret, client_secret_file.as_deref())?.context(
                "say the app's client secret: set QBO_CLIENT_SECRET, or --client-secret-file FILE",
            )?;
            let verifier_token = secret(verifier_token, verifier_token_file.as_deref())?;
            let base = qbo_base.trim_end_matches('/').to_owned();
            let app = connect::App {
                authorize_url: authorize_url.unwrap_or_else(|| format!("{base}/connect/oauth2")),
                token_url: token_url.unwrap_or_else(|| format!("{base}/oauth2/v1/tokens/bearer")),
                base_url: base,
                client_id,
                client_secret,
                verifier_token,
                ca_file: qbo_ca.map(absolute).transpose()?,
            };
            let repo = Repo::open_with(&data, &keys)?;
            let (conn, tokens) = connect::connect(&app).await?;
            let state = Arc::new(State::open(&data, repo.sealer())?);
            // The company's currency, checked against the mesh's before anything is kept
            // (a bridge that has not synced yet has no mesh settings: `run` checks then).
            let qbo = Qbo::new(conn.clone(), tokens.clone(), state.clone())?;
            let home = home_currency(&qbo).await?;
            if let Ok(settings) = repo.settings()
                && settings.currency != home
            {
                return Err(QboError::Currency {
                    qbo: home.to_string(),
                    mesh: settings.currency.to_string(),
                }
                .into());
            }
            state.set_connection(&conn)?;
            state.set_tokens(&tokens)?;
            println!(
                "connected to QuickBooks company {}, which keeps its books in {home}",
                conn.realm_id
            );
            Ok(())
        }
        Cmd::Run {
            api,
            net,
            http,
            batch,
            daily_summary,
            summary_period_s,
            round,
            qbo_ca,
            pull_interval_s,
            config: _,
        } => {
            let qbo_ca = qbo_ca.map(absolute).transpose()?;
            let options = Options {
                batch_items_max: batch.into(),
                summary_period: summary_period_s
                    .or(daily_summary.then_some(86_400))
                    .map(std::time::Duration::from_secs),
                round_transactions_max: usize::try_from(round)?,
                pull_interval: std::time::Duration::from_secs(pull_interval_s),
            };
            let dir = data.clone();
            let listener = tokio::net::TcpListener::bind(http)
                .await
                .with_context(|| format!("cannot listen on {http}; choose another --http"))?;
            let beside: tillmesh_node::cli::Beside = Box::new(move |repo, stop| {
                let bridge = match start(&dir, repo, qbo_ca.clone()) {
                    Ok(b) => Arc::new(b.with_options(options)),
                    // Configured to send tokens in the clear, or to trust a CA it cannot
                    // read: nothing runs until that is put right.
                    Err(e) if e.downcast_ref::<TransportError>().is_some() => {
                        return Err(e.context("the bridge refuses to start"));
                    }
                    Err(e) => {
                        // The node runs on (it still syncs); the bridge says why it does not.
                        tracing::error!(error = %e, "the bridge cannot start");
                        return Ok(BesideStarted {
                            task: tokio::spawn(async {}),
                            routes: None,
                        });
                    }
                };
                if let Ok(addr) = listener.local_addr() {
                    bridge.listening(addr);
                }
                let routes = Some(bridge.clone().status_routes());
                let app = bridge.clone().http();
                let mut stop_http = stop.clone();
                let task = tokio::spawn(async move {
                    tokio::spawn(async move {
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = stop_http.wait_for(|s| *s).await;
                            })
                            .await;
                    });
                    bridge.run(stop).await;
                });
                Ok(BesideStarted { task, routes })
            });
            run_node(data, api, net, &keys, Some(beside)).await
        }
        Cmd::Status => status(&data),
    }
}

/// A secret given in the environment (clap reads it into `value`) or on a file's first line.
fn secret(value: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    match (value, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the secret in {}", path.display()))?;
            let line = text.lines().next().unwrap_or("").trim().to_owned();
            if line.is_empty() {
                bail!(
                    "{} is empty: put the secret on its first line",
                    path.display()
                );
            }
            Ok(Some(line))
        }
        (None, None) => Ok(None),
    }
}

/// The CA file as an absolute path: `run` may start from another folder than `connect`.
fn absolute(path: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("--qbo-ca {}", path.display()))
}

fn start(dir: &Path, repo: Repo, qbo_ca: Option<PathBuf>) -> anyhow::Result<Bridge> {
    let state = Arc::new(State::open(dir, repo.sealer())?);
    let Some(mut conn) = state.connection()? else {
        bail!(
            "not connected to QuickBooks yet: run `tillmesh-bridge connect --data {}` first",
            dir.display()
        );
    };
    let tokens = state
        .tokens()?
        .context("no QuickBooks tokens: run `tillmesh-bridge connect` again")?;
    let realm = conn.realm_id.clone();
    let verifier = conn.verifier_token.clone();
    if qbo_ca.is_some() {
        conn.ca_file = qbo_ca;
    }
    let qbo = Qbo::new(conn, tokens, state.clone())?;
    Ok(Bridge::new(repo, qbo, state, dir, realm, verifier))
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("bridge-status.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no status in {}: has `tillmesh-bridge run` run there?",
            dir.display()
        )
    })?;
    println!("{text}");
    Ok(())
}
