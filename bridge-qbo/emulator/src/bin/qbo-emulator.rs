//! `qbo-emulator --listen ADDR --data DIR [flags]`: prints its endpoints and credentials as one
//! JSON object on the first line, then serves until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tillmesh_qbo_emulator::{self as emulator, Config, Settings, webhooks::Format};

#[derive(Parser)]
#[command(
    version,
    about = "A local QuickBooks Online (v3 Accounting API) for trying and testing tillmesh"
)]
struct Cli {
    /// Address to serve on; loopback by default.
    #[arg(long, default_value = "127.0.0.1:7430")]
    listen: SocketAddr,
    /// Folder for the company's data (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// Requests per minute per realm before 429.
    #[arg(long, default_value_t = emulator::REQUESTS_PER_MINUTE)]
    requests_per_minute: u32,
    /// Requests in flight per realm before 429.
    #[arg(long, default_value_t = emulator::CONCURRENT_MAX)]
    concurrent_max: u32,
    /// Deliver webhook notifications to this URL.
    #[arg(long)]
    webhook_url: Option<String>,
    /// Webhook format: legacy, cloudevents or both.
    #[arg(long, default_value = "legacy")]
    webhook_format: String,
    /// Added latency per API request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of API requests answered 503, in thousandths.
    #[arg(long, default_value_t = 0)]
    fail_5xx_per_mille: u32,
    /// Batch requests per minute per realm (each also counts as one request).
    #[arg(long, default_value_t = emulator::BATCH_REQUESTS_PER_MINUTE)]
    batch_requests_per_minute: u32,
    /// Share of writes committed whose response is then cut off, in thousandths.
    #[arg(long, default_value_t = 0)]
    drop_after_commit_per_mille: u32,
    /// The company's home currency when it is made (ISO 4217; USD if not said). A company
    /// keeps the currency it was made with.
    #[arg(long)]
    currency: Option<String>,
    /// Serve HTTPS, with a certificate for 127.0.0.1 signed by a CA kept in DATA/tls; the
    /// first line printed names that CA's file as `ca_file`.
    #[arg(long)]
    tls: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QBO_EMULATOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let webhook_format = match cli.webhook_format.as_str() {
        "legacy" => Format::Legacy,
        "cloudevents" => Format::Cloudevents,
        "both" => Format::Both,
        other => anyhow::bail!("--webhook-format {other:?}: use legacy, cloudevents or both"),
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}; choose another --listen", cli.listen))?;
    let currency = cli
        .currency
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--currency")?;
    let config = Config {
        currency,
        tls: cli.tls,
        data: cli.data,
        settings: Settings {
            requests_per_minute: cli.requests_per_minute,
            concurrent_max: cli.concurrent_max,
            batch_requests_per_minute: cli.batch_requests_per_minute,
            latency_ms: cli.latency_ms,
            fail_5xx_per_mille: cli.fail_5xx_per_mille,
            drop_after_commit_per_mille: cli.drop_after_commit_per_mille,
            webhook_url: cli.webhook_url,
            webhook_format,
            ..Settings::default()
        },
    };
    let (endpoints, task) = emulator::start(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    println!("{}", serde_json::to_string(&endpoints)?);
    task.await??;
    Ok(())
}
