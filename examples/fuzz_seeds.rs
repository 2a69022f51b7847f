//! Writes the fuzz targets' seed corpus (`fuzz/corpus/<target>/`) from real messages: the
//! entries of a real store (settings, a member, a product, sales, a void, a refund), the sync
//! messages that carry them, a real write-ahead log sealed with the fuzz key, a real pairing
//! exchange, and invites as people pass them. QuickBooks' JSON seeds come from the recorded
//! sandbox traffic in `fuzz/corpus/qbo_json/` (see `fuzz/README.md`).
//!
//! `cargo run --example fuzz_seeds -- fuzz/corpus`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tillmesh_node::Repo;
use tillmesh_node::net::invite::Invite;
use tillmesh_node::net::pairing::{Inviter, Joiner, PairResponse};
use tillmesh_node::repo::{Command, MemberCommand};
use tillmesh_node::store::seal::{Sealer, StorageKey};
use tillmesh_node::store::wal::{self, Wal};
use tillmesh_protocol::sync::Message;
use tillmesh_protocol::{Currency, DeviceKey, Role, SignedEntry, VersionVector};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = dir.join(target);
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join(name), bytes)?;
    Ok(())
}

fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> serde_json::Result<T> {
    serde_json::from_value(v)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into())
        .into();
    let tmp = tempfile::tempdir()?;
    let repo = Repo::init(&tmp.path().join("till"), "Till 1", Currency::USD).await?;
    repo.execute(Command::CreateProduct(body(serde_json::json!({
        "sku": "TEA-1", "name": "Green tea",
        "price": { "amount_minor": 350, "currency": "USD" }, "stock": 40
    }))?))
    .await?;
    repo.execute(Command::Member(MemberCommand::Add {
        device: DeviceKey::from_secret([3; 32]).device_id(),
        role: Role::Till,
        name: "Till 2".into(),
    }))
    .await?;
    let mut sales = Vec::new();
    for qty in 1..=3 {
        let w = repo
            .execute(Command::Sell(body(serde_json::json!({
                "lines": [{ "sku": "TEA-1", "qty": qty }],
                "payments": [{ "method": "cash", "amount_minor": 350 * qty }]
            }))?))
            .await?;
        sales.push(w.doc_id);
    }
    repo.execute(Command::Void {
        sale_id: sales[0],
        request: body(serde_json::json!({ "reason": "rung twice" }))?,
    })
    .await?;
    repo.execute(Command::Refund {
        sale_id: sales[2],
        request: body(serde_json::json!({ "lines": [{ "line": 0, "qty": 1 }] }))?,
    })
    .await?;
    let me = repo.identity().device_id;
    let mut entries = Vec::new();
    for seq in 1..=repo.version_vector()?.get(&me) {
        let bytes = repo.entry(&me, seq)?.expect("a held entry");
        write(&out, "entry", &format!("seq-{seq}"), &bytes)?;
        entries.push(SignedEntry::decode(&bytes)?);
    }
    // Sync messages: a pull, a batch, a push.
    let pull = Message::Pull {
        have: VersionVector::default(),
        entries_max: 1024,
        bytes_max: 4 << 20,
    };
    let batch = Message::Entries {
        entries: entries.clone(),
        holder: repo.version_vector()?,
        more: false,
    };
    let push = Message::Push {
        entry: entries[entries.len() - 1].clone(),
    };
    for (name, m) in [("pull", pull), ("entries", batch), ("push", push)] {
        write(&out, "sync_message", name, &m.encode())?;
    }
    // A real log, sealed with the fuzz target's key, in two batches.
    let log_dir = tmp.path().join("wal");
    std::fs::create_dir_all(&log_dir)?;
    let sealer = Arc::new(Sealer::new(&StorageKey::from_bytes(wal::FUZZ_KEY)));
    let (mut log, _) = Wal::open(&log_dir, &sealer)?;
    let (first, rest) = entries.split_at(entries.len() / 2);
    log.append(first.iter().map(SignedEntry::encoded))?;
    log.append(rest.iter().map(SignedEntry::encoded))?;
    drop(log);
    let bytes = std::fs::read(log_dir.join(wal::WAL_FILE))?;
    write(&out, "wal", "two-batches", &bytes)?;
    write(&out, "wal", "torn", &bytes[..bytes.len() - 7])?;
    // A real pairing exchange, both requests.
    let key = |n: u8| {
        libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).map(|k| k.public().to_peer_id())
    };
    let (joiner_peer, inviter_peer) = (key(1)?, key(2)?);
    let now = Instant::now();
    let mut inviter = Inviter::default();
    let opened = inviter.open(Role::Till, Duration::from_secs(600), now);
    let (mut joiner, start) = Joiner::start(&opened.code, joiner_peer, inviter_peer, "Till 2");
    write(&out, "pairing", "start", &serde_json::to_vec(&start)?)?;
    if let tillmesh_node::net::pairing::PairRequest::Start { spake, name } = &start
        && let Ok(PairResponse::Started {
            spake: msg_b,
            confirm,
        }) = inviter.start(joiner_peer, inviter_peer, spake, name, now)
    {
        let finish = joiner
            .confirm(&msg_b, &confirm)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        write(&out, "pairing", "finish", &serde_json::to_vec(&finish)?)?;
    }
    // Invites as people pass them: the code alone, and the whole line.
    let invite = Invite {
        code: opened.code.clone(),
        addrs: vec![format!("/ip4/192.168.1.20/tcp/7421/p2p/{inviter_peer}").parse()?],
    };
    write(&out, "invite", "line", invite.encode().as_bytes())?;
    write(
        &out,
        "invite",
        "code",
        tillmesh_node::net::pairing::display_code(&opened.code).as_bytes(),
    )?;
    println!("seeds written under {}", out.display());
    Ok(())
}
