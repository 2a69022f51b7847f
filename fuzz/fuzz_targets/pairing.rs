//! Pairing messages as a device that is not a member may send them, through the inviter's
//! side of the exchange: JSON first, then the SPAKE2 share, the name and the confirmation.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use libp2p::PeerId;
use tillmesh_node::net::pairing::{Inviter, PairRequest, PairResponse};
use tillmesh_protocol::Role;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<PairResponse>(data);
    let Ok(request) = serde_json::from_slice::<PairRequest>(data) else {
        return;
    };
    let now = Instant::now();
    let (joiner, local) = (fixed_peer(1), fixed_peer(2));
    let mut inviter = Inviter::default();
    inviter.open(Role::Till, Duration::from_secs(600), now);
    match request {
        PairRequest::Start { spake, name } => {
            let _ = inviter.start(joiner, local, &spake, &name, now);
        }
        PairRequest::Finish { confirm } => {
            let _ = inviter.finish(joiner, &confirm, now);
        }
    }
});

fn fixed_peer(n: u8) -> PeerId {
    libp2p::identity::Keypair::ed25519_from_bytes([n; 32])
        .expect("an ed25519 key")
        .public()
        .to_peer_id()
}
