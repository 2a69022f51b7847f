//! A back-office desktop and a manager's phone pair by a short code, then both edit one
//! customer while apart and agree on the result.
//!
//! Run: `cargo run --example pair_mobile_desktop`
//!
//! Both devices run in this process, each with its own store and its own libp2p node, talking
//! over real TCP on loopback (mDNS stays off on this machine's interfaces). Pairing is what
//! `tillmesh invite` and `tillmesh join` do: the desktop opens a one-time code, the phone proves
//! it knows the code by SPAKE2 without ever sending it, and the desktop admits the phone with
//! the invite's role.

use std::time::{Duration, Instant};

use anyhow::Context;
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde_json::{Value, json};
use tillmesh_node::Repo;
use tillmesh_node::net::{self, NetConfig, Network, invite::Invite, join, pairing};
use tillmesh_node::repo::Command;
use tillmesh_protocol::{Currency, DeviceKey, DocId, DocType, Role};

const TIMEOUT: Duration = Duration::from_secs(30);

fn loopback(peers: Vec<Multiaddr>) -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        peers,
        mdns: false,
        ..NetConfig::default()
    }
}

fn address(network: &Network) -> anyhow::Result<Multiaddr> {
    let status = network.status();
    let addr: Multiaddr = status.listen.first().context("not listening")?.parse()?;
    Ok(addr.with(Protocol::P2p(status.peer_id.parse()?)))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(started.elapsed() < TIMEOUT, "{what}: not after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn customer(repo: &Repo, id: &DocId) -> Value {
    repo.view(id).ok().flatten().unwrap_or(Value::Null)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // The desktop founds the business and listens.
    let desktop = Repo::init(
        &root.path().join("desktop"),
        "Back office",
        "GBP".parse::<Currency>()?,
    )
    .await?;
    let (desk_net, desk_task) =
        net::start(desktop.clone(), loopback(vec![]), until_stopped()).await?;
    let desk_addr = address(&desk_net)?;
    println!(
        "desktop: mesh {} at {desk_addr}",
        desktop.identity().mesh_id.short()
    );

    // `tillmesh invite --role manager` on the desktop...
    let opened = desk_net
        .open_invite(Role::Manager, Duration::from_secs(600))
        .await
        .context("the desktop's network stopped")?;
    let invite = Invite {
        code: opened.code.clone(),
        addrs: vec![desk_addr.clone()],
    };
    println!(
        "desktop: invite code {} for a manager, valid 10 minutes, once",
        pairing::display_code(&opened.code)
    );
    println!("         (from elsewhere: {})", invite.encode());

    // ...and `tillmesh join` on the phone, typing the code.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let started = Instant::now();
    let welcome = join::pair(secret, &invite, "Manager's phone", TIMEOUT).await?;
    println!(
        "phone: paired in {:?}; admitted as a {} by '{}'",
        started.elapsed(),
        welcome.role,
        welcome.inviter_name
    );
    let phone = Repo::join_with_key(
        &root.path().join("phone"),
        "Manager's phone",
        welcome.owner,
        DeviceKey::from_secret(secret),
    )?;
    let (phone_net, phone_task) = net::start(
        phone.clone(),
        loopback(welcome.addrs.clone()),
        until_stopped(),
    )
    .await?;
    wait_until("the phone's admission to reach it", || {
        phone.role().is_some()
    })
    .await?;
    println!("phone: synced; its role here: {:?}", phone.role());

    // A customer made on the desktop reaches the phone.
    let made = desktop
        .execute(Command::CreateCustomer(serde_json::from_value(json!({
            "display_name": "Ada Lovelace", "email": "ada@example.com",
        }))?))
        .await?;
    let id = made.doc_id;
    wait_until("the customer to reach the phone", || {
        !customer(&phone, &id).is_null()
    })
    .await?;
    println!(
        "phone: sees customer {}",
        customer(&phone, &id)["display_name"]
    );

    // Both edit it at once, different fields: both edits survive, on both devices.
    let patch = |v: Value| -> anyhow::Result<Command> {
        Ok(Command::PatchCustomer {
            id,
            patch: serde_json::from_value(v)?,
        })
    };
    let (a, b) = tokio::join!(
        desktop.execute(patch(json!({ "phone": "+44 20 7946 0000" }))?),
        phone.execute(patch(json!({ "notes": "prefers email receipts" }))?),
    );
    a?;
    b?;
    wait_until("both edits on both devices", || {
        let (d, p) = (customer(&desktop, &id), customer(&phone, &id));
        d == p && d["phone"].is_string() && d["notes"].is_string()
    })
    .await?;
    let seen = customer(&desktop, &id);
    println!(
        "both: {} / phone {} / notes {:?}",
        seen["display_name"], seen["phone"], seen["notes"]
    );
    let counts = phone.counts()?;
    let customers = counts
        .iter()
        .find(|(t, _)| *t == DocType::Customer)
        .map_or(0, |(_, n)| *n);
    anyhow::ensure!(customers == 1, "the phone holds {customers} customers");
    println!(
        "members: {}",
        desktop
            .membership()
            .members()
            .map(|(_, m)| format!(
                "{} ({})",
                if m.name.is_empty() {
                    "the desktop"
                } else {
                    &m.name
                },
                m.current_role()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop((desk_net, phone_net));
    let _ = stop.send(true);
    let _ = desk_task.await;
    let _ = phone_task.await;
    Ok(())
}
