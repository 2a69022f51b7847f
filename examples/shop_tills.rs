//! Three tills on this machine find each other by mDNS, sell at the same time, and agree.
//!
//! Run: `cargo run --example shop_tills` (as root).
//!
//! mDNS must never run on this machine's own interfaces, so the tills run in a shop LAN made
//! of Linux network namespaces (one per till, joined by a bridge), each till on a thread
//! inside its namespace. Nothing is configured: no addresses, no peers; the joined tills know
//! only which mesh they belong to. Without root (no namespaces) the example runs the same
//! tills on loopback with mDNS off and the owner's address given, and says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tillmesh::netns::{self, Lan};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig};
use tillmesh_node::repo::requests::{NewProduct, NewSale};
use tillmesh_node::repo::{Command, MemberCommand};
use tillmesh_protocol::{Currency, DeviceKey, DocType, Role, VersionVector};

const TILLS: usize = 3;
const SALES_PER_TILL: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(60);

/// What each till reports: its version vector and sale count, once it has sold.
type Board = Arc<Mutex<Vec<Option<(VersionVector, usize)>>>>;

fn random_key() -> DeviceKey {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("randomness");
    DeviceKey::from_secret(secret)
}

/// One till's life: join (or found) the mesh, replicate, sell, wait until all agree.
async fn till(
    n: usize,
    dir: std::path::PathBuf,
    keys: Vec<[u8; 32]>,
    config: NetConfig,
    board: Board,
) -> anyhow::Result<()> {
    let owner = DeviceKey::from_secret(keys[0]);
    let repo = if n == 0 {
        let r = Repo::init_with_key(&dir, "Till 1", Currency::USD, owner).await?;
        r.execute(Command::CreateProduct(
            serde_json::from_value::<NewProduct>(json!({
                "sku": "TEA-1", "name": "Green tea",
                "price": { "amount_minor": 350, "currency": "USD" }, "stock": 10_000,
            }))?,
        ))
        .await?;
        // The owner admits the other tills (pairing by code is shown in `pair_mobile_desktop`).
        for (i, secret) in keys.iter().enumerate().skip(1) {
            r.execute(Command::Member(MemberCommand::Add {
                device: DeviceKey::from_secret(*secret).device_id(),
                role: Role::Till,
                name: format!("Till {}", i + 1),
            }))
            .await?;
        }
        r
    } else {
        Repo::join_with_key(
            &dir,
            &format!("Till {}", n + 1),
            owner.device_id(),
            DeviceKey::from_secret(keys[n]),
        )?
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (network, task) = net::start(repo.clone(), config, async {
        let _ = stopped.await;
    })
    .await?;
    let started = Instant::now();
    while repo.list(DocType::Product, None, 1)?.is_empty() {
        anyhow::ensure!(started.elapsed() < TIMEOUT, "till {} found no peer", n + 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "till {} has the catalogue after {:?}; peers: {}",
        n + 1,
        started.elapsed(),
        network
            .status()
            .peers
            .iter()
            .map(|p| format!("{} ({:?})", &p.peer_id[p.peer_id.len() - 6..], p.found_by))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for _ in 0..SALES_PER_TILL {
        let sale: NewSale = serde_json::from_value(json!({
            "lines": [{ "sku": "TEA-1", "qty": 1 }], "payments": [{ "method": "card" }],
        }))?;
        repo.execute(Command::Sell(sale)).await?;
    }
    // Report until every till reports the same.
    loop {
        let vv = repo.version_vector()?;
        let sales = repo.list(DocType::Sale, None, 100_000)?.len();
        let all_agree = {
            let mut b = board.lock().expect("board");
            b[n] = Some((vv, sales));
            b.iter().all(|e| e.is_some() && e.as_ref() == b[0].as_ref())
        };
        if all_agree {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < TIMEOUT,
            "till {} did not converge",
            n + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stay up until every till has seen the agreement, so none stops serving a laggard.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(());
    let _ = task.await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let keys: Vec<[u8; 32]> = (0..TILLS).map(|_| random_key().secret()).collect();
    let board: Board = Arc::new(Mutex::new(vec![None; TILLS]));
    let lan = match netns::available() {
        Ok(()) => Some(
            Lan::create(&format!("tmshop{}", std::process::id()), 79, TILLS)
                .context("building the shop LAN")?,
        ),
        Err(why) => {
            println!("no network namespaces here ({why}): tills on loopback, mDNS off");
            None
        }
    };
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for n in 0..TILLS {
            let dir = root.path().join(format!("till-{}", n + 1));
            let keys = keys.clone();
            let board = board.clone();
            let lan = lan.as_ref();
            handles.push(scope.spawn(move || -> anyhow::Result<()> {
                match lan {
                    // Defaults, as a user runs it: every interface (here only the
                    // namespace's own), mDNS on, no peers.
                    Some(lan) => {
                        lan.hosts[n].block_on(till(n, dir, keys, NetConfig::default(), board))
                    }
                    None => {
                        let port = 17_421 + n as u16;
                        let config = NetConfig {
                            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse()?],
                            peers: if n == 0 {
                                vec![]
                            } else {
                                vec!["/ip4/127.0.0.1/tcp/17421".parse()?]
                            },
                            mdns: false,
                            ..NetConfig::default()
                        };
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?
                            .block_on(till(n, dir, keys, config, board))
                    }
                }
            }));
        }
        for h in handles {
            h.join().expect("till thread")?;
        }
        Ok(())
    })?;
    let b = board.lock().expect("board");
    let (vv, sales) = b[0].clone().context("no report")?;
    println!(
        "all {TILLS} tills agree after {:?}: {} entries from {} devices, {sales} sales each",
        started.elapsed(),
        vv.total(),
        vv.len()
    );
    Ok(())
}
