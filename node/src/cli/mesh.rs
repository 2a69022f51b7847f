//! Joining devices into a mesh and connecting them: `invite`, `join`, and `run`'s network
//! flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::client::{Client, read_api_addr};
use super::shop::Output;
use crate::net::NetConfig;
use crate::net::invite::{INVITE_ADDRS_MAX, Invite};
use crate::repo::Repo;
use crate::store::KeySource;

/// File in the data folder listing peers to dial at every start, one multiaddr per line;
/// `join` writes it from the invite.
pub const PEERS_FILE: &str = "peers";

#[derive(clap::Args, Debug, Clone)]
pub struct NetArgs {
    /// Listen for peers on this multiaddr (repeatable). Default: every interface, TCP and
    /// QUIC on port 7421.
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// Dial this peer, and again whenever the connection drops (repeatable).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<Multiaddr>,
    /// Do not find or announce devices on the LAN by mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Relay for devices behind NAT that reserve a slot here (head office runs one).
    #[arg(long)]
    relay: bool,
}

impl NetArgs {
    pub fn config(&self, data: &Path) -> anyhow::Result<NetConfig> {
        let mut config = NetConfig {
            mdns: !self.no_mdns,
            relay: self.relay,
            ..NetConfig::default()
        };
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        config.peers = self.peers.clone();
        for p in saved_peers(data)? {
            if !config.peers.contains(&p) {
                config.peers.push(p);
            }
        }
        Ok(config)
    }
}

fn peers_path(data: &Path) -> PathBuf {
    data.join(PEERS_FILE)
}

fn saved_peers(data: &Path) -> anyhow::Result<Vec<Multiaddr>> {
    let path = peers_path(data);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse::<Multiaddr>()
                .with_context(|| format!("{}: {l:?} is not a multiaddr", path.display()))
        })
        .collect()
}

/// Prints an invite built from the running node's addresses.
pub async fn invite(data: &Path, keys: &KeySource) -> anyhow::Result<()> {
    if read_api_addr(data).is_none() {
        bail!(
            "no node is running on {}; start it with `tillmesh run --data {}`, then invite",
            data.display(),
            data.display()
        );
    }
    let status = Client::connect(data, keys).await?.get("/v1/status").await?;
    let network = &status["network"];
    if network.is_null() {
        bail!("the node on {} runs without a network", data.display());
    }
    let peer: libp2p::PeerId = network["peer_id"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .context("the node did not say its peer id")?;
    let owner = status["owner"]
        .as_str()
        .and_then(|o| o.parse().ok())
        .context("the node did not say its mesh owner")?;
    let mut addrs: Vec<Multiaddr> = network["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse::<Multiaddr>().ok())
        .filter(|a| {
            !a.iter().any(|p| match p {
                Protocol::Ip4(ip) => ip.is_unspecified(),
                _ => false,
            })
        })
        .map(|a| {
            if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
                a
            } else {
                a.with(Protocol::P2p(peer))
            }
        })
        .collect();
    // Addresses a new device is likely to reach first: the LAN before loopback, direct
    // before relayed.
    addrs.sort_by_key(|a| {
        let relayed = a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        let loopback = a
            .iter()
            .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_loopback()));
        (relayed, loopback)
    });
    addrs.truncate(INVITE_ADDRS_MAX);
    if addrs.is_empty() {
        bail!("the node has no address a new device could reach; give it --listen");
    }
    println!("On the new device, run:");
    println!("  tillmesh join --data DIR --name NAME CODE");
    println!("with this code (anyone holding it can join this mesh; and until membership");
    println!("checks arrive, any device on the LAN that speaks tillmesh can sync with it):");
    println!("{}", Invite { owner, addrs }.encode());
    Ok(())
}

/// Creates the new device's store and remembers where to find the mesh.
pub fn join(
    data: &Path,
    name: &str,
    code: &str,
    out: Output,
    keys: &KeySource,
) -> anyhow::Result<()> {
    let invite = Invite::decode(code)?;
    let repo = Repo::join_with(data, name, invite.owner, keys)?;
    let mut lines: Vec<String> = invite.addrs.iter().map(|a| a.to_string()).collect();
    lines.insert(
        0,
        "# peers dialed at every start; written by `tillmesh join`".into(),
    );
    let path = peers_path(data);
    std::fs::write(&path, lines.join("\n") + "\n").with_context(|| {
        format!(
            "the device was created, but {} could not be written; start it with \
             `tillmesh run --data {} --peer ADDRESS` (an address from the invite)",
            path.display(),
            data.display()
        )
    })?;
    let id = repo.identity();
    out.show(
        &serde_json::json!({ "device_id": id.device_id, "mesh_id": id.mesh_id, "data": data }),
        || {
            format!(
                "joined mesh {} as '{}' ({})\nnext: tillmesh run --data {}  (it syncs from {} known address(es))",
                id.mesh_id.short(),
                id.device_name,
                id.device_id,
                data.display(),
                invite.addrs.len()
            )
        },
    );
    Ok(())
}
