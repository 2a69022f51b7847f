//! Peers that misbehave: garbage where a sync message belongs, a length over the limit, a
//! pushed entry whose signature does not hold. Each is disconnected (and turned away for a
//! while), a forged entry is kept aside with its reason and never applied, and the node goes
//! on serving its till and its honest peers.

use std::io;

use anyhow::Context;
use std::time::Duration;

use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, identify, noise, request_response, tcp,
    yamux,
};
use serde_json::Value;
use tillmesh::testkit::{NodeProcess, cash_sale, product};
use tillmesh_node::net::discovery::mesh_tag;
use tillmesh_protocol::sync::Message;
use tillmesh_protocol::{
    DeviceKey, DocChanges, DocId, DocType, Entry, EntryHash, MeshId, Payload, SignedEntry,
};

const BIN: &str = env!("CARGO_BIN_EXE_tillmesh");
const WAIT: Duration = Duration::from_secs(30);

/// Sends whatever bytes it is given, as they are: no framing, no checks.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&res).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct Attacker {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<RawCodec>,
}

/// A fresh device key: its id, and its libp2p identity.
fn new_key() -> (tillmesh_protocol::DeviceId, libp2p::identity::Keypair) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("randomness");
    let id = DeviceKey::from_secret(secret).device_id();
    (
        id,
        libp2p::identity::Keypair::ed25519_from_bytes(secret).expect("an ed25519 key"),
    )
}

/// An attacker the node's owner admitted: it passes the connection gate, then misbehaves.
async fn member_attacker(
    api: &tillmesh::testkit::Api,
    tag: &str,
) -> anyhow::Result<Swarm<Attacker>> {
    let (id, key) = new_key();
    api.ok_post(
        "/v1/members",
        &serde_json::json!({ "device_id": id, "role": "till", "name": format!("member {}", id.short()) }),
    )
    .await?;
    attacker(tag, key)
}

fn attacker(tag: &str, key: libp2p::identity::Keypair) -> anyhow::Result<Swarm<Attacker>> {
    let protocol = StreamProtocol::try_from_owned(format!("/tillmesh/sync/1/{tag}"))?;
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossipsub::Config::default(),
            )?;
            Ok(Attacker {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/tillmesh/1".into(),
                    key.public(),
                )),
                gossipsub,
                sync: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(protocol, request_response::ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            })
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Connects to the node and waits until it has identified us (so it treats us as a peer).
async fn connect(swarm: &mut Swarm<Attacker>, addr: &Multiaddr) -> anyhow::Result<PeerId> {
    swarm.dial(addr.clone())?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await?;
        if let SwarmEvent::Behaviour(AttackerEvent::Identify(identify::Event::Received {
            peer_id,
            ..
        })) = event
        {
            return Ok(peer_id);
        }
    }
}

/// Drives the swarm until the node closes every connection to us.
async fn wait_disconnected(swarm: &mut Swarm<Attacker>, node: PeerId) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while swarm.is_connected(&node) {
        let _ = tokio::time::timeout_at(deadline, swarm.select_next_some()).await?;
    }
    Ok(())
}

async fn node_addr(api: &tillmesh::testkit::Api) -> anyhow::Result<(Multiaddr, MeshId)> {
    let status = api.ok_get("/v1/status").await?;
    let listen: Multiaddr = status["network"]["listen"][0]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    let mesh: MeshId = status["mesh_id"].as_str().unwrap_or_default().parse()?;
    Ok((listen, mesh))
}

/// A well-formed entry with a signature that does not hold; `n` makes each one different.
fn forged_entry(mesh: &MeshId, n: u64) -> SignedEntry {
    let key = DeviceKey::from_secret([7; 32]);
    let signed = Entry {
        author: key.device_id(),
        seq: 1,
        prev: EntryHash::ZERO,
        timestamp_ms: 1 + n,
        payload: Payload::Changes(vec![DocChanges {
            doc_id: DocId([9; 16]),
            doc_type: DocType::Sale,
            changes: vec![vec![1, 2, 3]],
        }]),
    }
    .sign(mesh, &key);
    let mut bytes = signed.encoded().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55; // the signature is last
    SignedEntry::decode(&bytes).expect("still well-formed")
}

/// A running node with a product, and how a peer reaches it.
struct Till {
    _dir: tempfile::TempDir,
    node: NodeProcess,
    addr: Multiaddr,
    mesh: MeshId,
    tag: String,
}

async fn till() -> anyhow::Result<Till> {
    let dir = tempfile::tempdir()?;
    NodeProcess::init(BIN.as_ref(), dir.path(), "Till")?;
    let node = NodeProcess::start(BIN.as_ref(), dir.path()).await?;
    node.api
        .ok_post("/v1/products", &product("TEA-1", "Green tea", 350, 1000))
        .await?;
    let (addr, mesh) = node_addr(&node.api).await?;
    let tag = mesh_tag(&mesh);
    Ok(Till {
        _dir: dir,
        node,
        addr,
        mesh,
        tag,
    })
}

async fn still_serving(api: &tillmesh::testkit::Api) -> anyhow::Result<Value> {
    api.ok_post("/v1/sales", &cash_sale("TEA-1", 1, 350))
        .await?;
    api.ok_get("/v1/status").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_peers_are_disconnected_and_their_entries_refused() -> anyhow::Result<()> {
    let Till {
        _dir,
        node,
        addr,
        mesh,
        tag,
    } = till().await?;

    // 1. Garbage where a pull belongs.
    let mut evil = member_attacker(&node.api, &tag).await?;
    let peer = connect(&mut evil, &addr).await?;
    let mut garbage = 64u32.to_be_bytes().to_vec();
    garbage.extend([0xAB; 64]);
    evil.behaviour_mut().sync.send_request(&peer, garbage);
    wait_disconnected(&mut evil, peer)
        .await
        .context("garbage")?;

    // 2. A length over the limit: refused before anything is read or allocated.
    let mut evil = member_attacker(&node.api, &tag).await?;
    let peer = connect(&mut evil, &addr).await?;
    evil.behaviour_mut()
        .sync
        .send_request(&peer, u32::MAX.to_be_bytes().to_vec());
    wait_disconnected(&mut evil, peer)
        .await
        .context("oversized")?;

    // 3. A pushed entry whose signature does not hold.
    let mut evil = member_attacker(&node.api, &tag).await?;
    let topic = gossipsub::IdentTopic::new(format!("tillmesh/entries/{tag}"));
    evil.behaviour_mut().gossipsub.subscribe(&topic)?;
    let peer = connect(&mut evil, &addr).await?;
    // Published once the node's subscription is known, then again (a new forgery each time,
    // gossip drops repeats) until the node throws us out: a push that arrives before the node
    // has identified us is dropped unblamed, as it cannot yet tell what we are.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut forged = 0;
    let mut next_push = tokio::time::Instant::now();
    while evil.is_connected(&peer) {
        if tokio::time::Instant::now() >= next_push {
            let push = Message::Push {
                entry: forged_entry(&mesh, forged),
            }
            .encode();
            if evil
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), push)
                .is_ok()
            {
                forged += 1;
                next_push = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
        let tick = (tokio::time::Instant::now() + Duration::from_millis(50)).min(deadline);
        let _ = tokio::time::timeout_at(tick, evil.select_next_some()).await;
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "forged: still connected after {forged} forged pushes"
        );
    }

    // The node kept the forged entry aside with its reason, applied nothing of any of it,
    // and goes on selling.
    let status = still_serving(&node.api).await?;
    assert_eq!(status["rejected"]["count"], 1, "{status}");
    let reason = status["rejected"]["recent"][0]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("signature"), "{reason}");
    assert_eq!(status["documents"]["sale"], 1, "{status}");
    assert_eq!(
        status["version_vector"].as_object().map(|m| m.len()),
        Some(1),
        "only the node's own entries: {status}"
    );

    // A device that is not a member is turned away at once: it can neither pull nor push.
    let mut stranger = attacker(&tag, new_key().1)?;
    stranger.dial(addr.clone())?;
    let started = tokio::time::Instant::now();
    let deadline = started + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stranger.select_next_some()).await? {
            SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. } => {
                break;
            }
            _ => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a stranger stayed connected for {:?}",
        started.elapsed()
    );
    let status = node.api.ok_get("/v1/status").await?;
    assert!(
        status["network"]["refused_connections"].as_u64() >= Some(1),
        "{status}"
    );

    // Turned away for a while: a banned peer's new connection is closed at once (well
    // before the minute an idle connection would last)...
    let mut again = evil;
    again.dial(addr.clone())?;
    let started = tokio::time::Instant::now();
    let deadline = started + WAIT;
    let mut was_connected = false;
    loop {
        match tokio::time::timeout_at(deadline, again.select_next_some()).await? {
            SwarmEvent::ConnectionEstablished { .. } => was_connected = true,
            SwarmEvent::ConnectionClosed { .. } if was_connected => break,
            SwarmEvent::OutgoingConnectionError { .. } => break,
            _ => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    // ...while a peer that did nothing wrong stays connected.
    let mut honest = member_attacker(&node.api, &tag).await?;
    let node_peer = connect(&mut honest, &addr).await?;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(_event) = tokio::time::timeout_at(until, honest.select_next_some()).await {}
    assert!(
        honest.is_connected(&node_peer),
        "an honest peer was dropped"
    );
    Ok(())
}

/// Reads one length-prefixed sync message off an answer, as the node frames them.
fn framed_answer(bytes: &[u8]) -> anyhow::Result<Message> {
    anyhow::ensure!(bytes.len() >= 4, "an answer of {} bytes", bytes.len());
    Ok(Message::decode(&bytes[4..])?)
}

/// A member opening 100 sync streams at once, each announcing 11 MB (a pull may be at most
/// `REQUEST_BYTES_MAX`, 2.6 MB) and sending 1 MiB of it, then another opening 100 streams of
/// the most a pull may be, filled with garbage: the node reads at most 8 streams of one
/// connection (and yamux holds at most 64), refuses the first on its length before reading
/// it, reads the second's bytes as they come and refuses them, and bans both. Its memory
/// stays bounded (the figure is printed), and it goes on selling and answering an honest
/// member's pull. A device that is not a member gets no stream at all (see the test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_of_eleven_megabytes_cost_the_node_little() -> anyhow::Result<()> {
    use tillmesh_protocol::sync::wire::REQUEST_BYTES_MAX;
    let Till {
        _dir,
        node,
        addr,
        mesh: _,
        tag,
    } = till().await?;
    let rss_before = node.rss_kib().unwrap_or(0);
    let mut rss_most = rss_before;
    let rounds = [
        (11_000_000u32, 1usize << 20, "11 MB announced, 1 MiB sent"),
        (
            REQUEST_BYTES_MAX as u32,
            REQUEST_BYTES_MAX,
            "a pull's most, all sent, garbage",
        ),
    ];
    for (announced, sent, what) in rounds {
        let mut evil = member_attacker(&node.api, &tag).await?;
        let peer = connect(&mut evil, &addr).await?;
        for _ in 0..100 {
            let mut req = announced.to_be_bytes().to_vec();
            req.resize(4 + sent, 0xAB);
            evil.behaviour_mut().sync.send_request(&peer, req);
        }
        // Measured while the streams are open, until the node throws the peer out.
        let deadline = tokio::time::Instant::now() + WAIT;
        while evil.is_connected(&peer) {
            let tick = tokio::time::Instant::now() + Duration::from_millis(20);
            let _ = tokio::time::timeout_at(tick.min(deadline), evil.select_next_some()).await;
            rss_most = rss_most.max(node.rss_kib().unwrap_or(0));
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{what}: the peer was never thrown out"
            );
        }
        eprintln!("{what}: at most {} MiB", rss_most / 1024);
    }
    let growth_mib = rss_most.saturating_sub(rss_before) / 1024;
    eprintln!(
        "200 streams of up to 11 MB from two members: node RSS {} MiB, at most {} MiB (+{growth_mib} MiB)",
        rss_before / 1024,
        rss_most / 1024
    );
    // What one connection may make the node hold: 8 sync streams of at most a pull's size
    // (2.6 MB each, 21 MB) and 64 yamux streams' unread 256 KiB (16 MiB).
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");

    // The node goes on: it sells, and an honest member's pull is answered with its entries.
    still_serving(&node.api).await?;
    let mut honest = member_attacker(&node.api, &tag).await?;
    let peer = connect(&mut honest, &addr).await?;
    let pull = Message::Pull {
        have: tillmesh_protocol::VersionVector::default(),
        entries_max: 100,
        bytes_max: 1 << 20,
    }
    .encode();
    let mut framed = (pull.len() as u32).to_be_bytes().to_vec();
    framed.extend(pull);
    honest.behaviour_mut().sync.send_request(&peer, framed);
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        if let SwarmEvent::Behaviour(AttackerEvent::Sync(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) = tokio::time::timeout_at(deadline, honest.select_next_some()).await?
        {
            break framed_answer(&response)?;
        }
    };
    match answer {
        Message::Entries { entries, .. } => assert!(
            entries.len() >= 3,
            "settings, the product, the sales: {}",
            entries.len()
        ),
        other => anyhow::bail!("a pull answered with {other:?}"),
    }
    Ok(())
}
