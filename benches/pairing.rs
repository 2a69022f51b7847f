//! Pairing time on loopback: from the joining side's first dial to the inviter's answer that
//! the device is admitted (SPAKE2, key confirmation, and the admission committed durably).
//!
//! Run: `cargo bench --bench pairing` — prints the median and percentiles over 20 pairings.

use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tillmesh::testkit::percentiles_us;
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig, invite::Invite, join};
use tillmesh_protocol::{Currency, Role};

/// Under the inviter's limit of 20 exchanges a minute (`pairing::STARTS_PER_MINUTE_MAX`).
const PAIRINGS: usize = 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let desk = Repo::init(&root.path().join("desk"), "Desk", Currency::USD).await?;
    let config = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        mdns: false,
        ..NetConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (network, task) = net::start(desk.clone(), config, async {
        let _ = stopped.await;
    })
    .await?;
    let status = network.status();
    let addr: Multiaddr = status
        .listen
        .first()
        .context("not listening")?
        .parse::<Multiaddr>()?
        .with(Protocol::P2p(status.peer_id.parse()?));
    let mut samples = Vec::with_capacity(PAIRINGS);
    for n in 0..PAIRINGS {
        let opened = network
            .open_invite(Role::Till, Duration::from_secs(60))
            .await
            .context("network stopped")?;
        let invite = Invite {
            code: opened.code,
            addrs: vec![addr.clone()],
        };
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        let started = Instant::now();
        join::pair(
            secret,
            &invite,
            &format!("Till {n}"),
            Duration::from_secs(10),
        )
        .await?;
        samples.push(started.elapsed());
    }
    println!("pairing on loopback (µs): {}", percentiles_us(&mut samples));
    let _ = stop.send(());
    let _ = task.await;
    Ok(())
}
