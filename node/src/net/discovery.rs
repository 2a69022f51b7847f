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
/// Advertised while an invite is open, so a new device holding only the short code finds the
/// inviter. Carries no mesh tag: the joiner does not know its mesh yet.
const PAIRING_SERVICE_TYPE: &str = "_tillmesh-pair._udp.local.";

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
    /// The full name of the pairing service advertised now, if any.
    pairing_advertised: Option<String>,
    /// Invites advertised so far: each gets its own instance name, since mDNS caches a
    /// withdrawn name for a while and a new service under it may go unseen.
    pairing_count: u32,
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
                pairing_advertised: None,
                pairing_count: 0,
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

    /// Starts or stops advertising an open invite. Needs the TCP port advertised first.
    pub fn advertise_pairing(&mut self, open: bool) -> Result<(), mdns_sd::Error> {
        let Some(port) = self.advertised_port else {
            return Ok(());
        };
        let peer = self.local.to_base58();
        if let Some(name) = self.pairing_advertised.take() {
            let _ = self.daemon.unregister(&name)?;
        }
        if !open {
            return Ok(());
        }
        self.pairing_count += 1;
        let instance = format!("{}-{}", &peer[peer.len() - 12..], self.pairing_count);
        let host = format!("tm-{}.local.", &peer[peer.len() - 12..]);
        let info = ServiceInfo::new(
            PAIRING_SERVICE_TYPE,
            &instance,
            &host,
            (),
            port,
            &[("peer", peer.as_str())][..],
        )?
        .enable_addr_auto();
        self.pairing_advertised = Some(info.get_fullname().to_owned());
        self.daemon.register(info)?;
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
        let Some(found) = found_of(&info).filter(|f| f.peer != local) else {
            continue;
        };
        if tx.is_closed() {
            return;
        }
        let _ = tx.try_send(found);
    }
}

/// Looks for devices with an open invite on the LAN, for a device that holds only a code.
/// Finds arrive on the receiver until the returned daemon is shut down.
pub fn browse_pairing() -> Result<(ServiceDaemon, mpsc::Receiver<Found>), mdns_sd::Error> {
    let daemon = ServiceDaemon::new()?;
    daemon.disable_interface(vec![IfKind::IPv6, IfKind::LoopbackV4, IfKind::LoopbackV6])?;
    let events = daemon.browse(PAIRING_SERVICE_TYPE)?;
    let (tx, rx) = mpsc::channel(FOUND_QUEUED_MAX);
    tokio::spawn(async move {
        while let Ok(event) = events.recv_async().await {
            let ServiceEvent::ServiceResolved(info) = event else {
                continue;
            };
            if let Some(found) = found_of(&info) {
                let _ = tx.try_send(found);
            }
        }
    });
    Ok((daemon, rx))
}

/// The peer and TCP addresses a resolved service names.
fn found_of(info: &mdns_sd::ResolvedService) -> Option<Found> {
    let peer = info
        .get_property_val_str("peer")
        .and_then(|p| p.parse::<PeerId>().ok())?;
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
    Some(Found { peer, addrs })
}
