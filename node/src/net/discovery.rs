//! LAN discovery with mDNS (mdns-sd): advertise this node, find the others of the same mesh.
//!
//! The service's TXT records carry a tag derived from the mesh id (not the id itself, which a
//! listener on the Wi-Fi has no business learning) and the PeerId. Only services with our tag
//! are reported, so a till never dials another business's devices.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use sha2::{Digest, Sha256};
use tillmesh_protocol::MeshId;
use tokio::sync::mpsc;

const SERVICE_TYPE: &str = "_tillmesh._udp.local.";

/// A same-mesh node seen on the LAN.
#[derive(Debug, Clone)]
pub struct Found {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

/// Advertises this node; what it finds arrives on the receiver `start` returns.
pub struct Discovery {
    daemon: ServiceDaemon,
    tag: String,
    local: PeerId,
    advertised_port: Option<u16>,
}

/// How many finds may wait for the driver; more are dropped (mDNS repeats itself).
const FOUND_QUEUED_MAX: usize = 256;

/// The TXT tag of a mesh: enough to tell meshes apart, useless for anything else.
pub fn mesh_tag(mesh: &MeshId) -> String {
    let mut h = Sha256::new();
    h.update(b"tillmesh mdns tag v1");
    h.update(mesh.as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Discovery {
    pub fn start(
        mesh: &MeshId,
        local: PeerId,
    ) -> Result<(Discovery, mpsc::Receiver<Found>), mdns_sd::Error> {
        let daemon = ServiceDaemon::new()?;
        // IPv4 on real interfaces only: a node never needs to find itself, and the LAN
        // tests' namespaces are IPv4.
        daemon.disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4, IfKind::LoopbackV6])?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let tag = mesh_tag(mesh);
        let (tx, rx) = mpsc::channel(FOUND_QUEUED_MAX);
        tokio::spawn(forward_finds(events, tag.clone(), local, tx));
        Ok((
            Discovery {
                daemon,
                tag,
                local,
                advertised_port: None,
            },
            rx,
        ))
    }

    /// Advertises this node's TCP port (once; the port never changes while running).
    pub fn advertise(&mut self, port: u16) -> Result<(), mdns_sd::Error> {
        if self.advertised_port.is_some() {
            return Ok(());
        }
        let peer = self.local.to_base58();
        // Instance names are at most 63 bytes; a PeerId is 52.
        let host = format!("tm-{}.local.", &peer[peer.len() - 12..]);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &peer,
            &host,
            (),
            port,
            &[("mesh", self.tag.as_str()), ("peer", peer.as_str())][..],
        )?
        .enable_addr_auto();
        self.daemon.register(info)?;
        self.advertised_port = Some(port);
        Ok(())
    }

    pub fn stop(self) {
        let _ = self.daemon.shutdown();
    }
}

/// Reports each resolved same-mesh service until the daemon stops or the driver goes away.
async fn forward_finds(
    events: mdns_sd::Receiver<ServiceEvent>,
    tag: String,
    local: PeerId,
    tx: mpsc::Sender<Found>,
) {
    while let Ok(event) = events.recv_async().await {
        let ServiceEvent::ServiceResolved(info) = event else {
            continue;
        };
        if info.get_property_val_str("mesh") != Some(tag.as_str()) {
            continue;
        }
        let Some(peer) = info
            .get_property_val_str("peer")
            .and_then(|p| p.parse::<PeerId>().ok())
        else {
            continue;
        };
        if peer == local {
            continue;
        }
        let port = info.get_port();
        let addrs = info
            .get_addresses_v4()
            .into_iter()
            .map(|ip| {
                Multiaddr::empty()
                    .with(Protocol::Ip4(ip))
                    .with(Protocol::Tcp(port))
            })
            .collect();
        if tx.is_closed() {
            return;
        }
        let _ = tx.try_send(Found { peer, addrs });
    }
}
