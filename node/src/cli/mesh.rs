//! Joining devices into a mesh and connecting them: `invite`, `join`, and `run`'s network
//! flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use libp2p::Multiaddr;

use super::client::{Client, read_api_addr};
use super::shop::Output;
use crate::net::NetConfig;
use crate::net::invite::Invite;
use crate::repo::Repo;
use crate::store::{self, KeySource};

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
    /// Connect only to the --peer addresses and those `join` saved, never to devices other
    /// nodes announce or mDNS finds: a hub and spokes, each till talking to head office alone.
    #[arg(long)]
    only_peers: bool,
    /// Units of each strict product this till keeps rights to, asking devices that hold more
    /// in the background, so a sale need not wait for them.
    #[arg(long, value_name = "UNITS", default_value_t = crate::net::rights::RESERVE_UNITS_DEFAULT)]
    rights_reserve: i64,
    /// Let the web page at this origin (`http://127.0.0.1:8080`) call the local API, with the
    /// token (repeatable). Every other page's requests are refused.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Also serve `GET /metrics` (Prometheus) on this address, for a scraper: it may be on
    /// the LAN, and takes the scraper's own token, written to DIR/metrics.token (never the
    /// API token). It is always on the API's address as well, with the API token.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

impl NetArgs {
    pub fn config(&self, data: &Path) -> anyhow::Result<NetConfig> {
        let mut config = NetConfig {
            mdns: !self.no_mdns,
            relay: self.relay,
            dial_found: !self.only_peers,
            rights_reserve: self.rights_reserve,
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

/// Opens an invite on the running node and prints it: the code, and the addresses that reach
/// the node, on the last line.
pub async fn invite(
    data: &Path,
    role: &str,
    expires: &str,
    keys: &KeySource,
) -> anyhow::Result<()> {
    if read_api_addr(data).is_none() {
        bail!(
            "no node is running on {}; start it with `tillmesh run --data {}`, then invite",
            data.display(),
            data.display()
        );
    }
    let expires_s = parse_duration_s(expires)?;
    let client = Client::connect(data, keys).await?;
    let opened = client
        .post(
            "/v1/invites",
            &serde_json::json!({ "role": role, "expires_s": expires_s }),
        )
        .await?;
    let code = opened["code"]
        .as_str()
        .context("the node did not say the invite's code")?
        .to_owned();
    let line = opened["invite"]
        .as_str()
        .context("the node did not say the whole invite")?
        .to_owned();
    println!(
        "Invite for a {} device, valid for {} minute(s), usable once.",
        opened["role"].as_str().unwrap_or("?"),
        opened["expires_in_s"].as_u64().unwrap_or(0).div_ceil(60)
    );
    println!("On the new device, run:  tillmesh join --data DIR --name NAME INVITE");
    println!("On this LAN the code alone is enough: {code}");
    println!("From elsewhere, the whole line below:");
    println!("{line}");
    Ok(())
}

/// `10m`, `90s`, `2h`, or plain seconds.
fn parse_duration_s(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("--expires {text:?}: give a duration like 10m, 90s or 2h"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("--expires {text:?}: the unit is s, m or h"),
    };
    Ok(n.saturating_mul(scale))
}

/// Pairs with the inviting device, then creates the new device's store and remembers where
/// to find the mesh. Nothing is created if pairing fails.
pub async fn join(
    data: &Path,
    name: &str,
    code: &str,
    sync: bool,
    out: Output,
    keys: &KeySource,
) -> anyhow::Result<()> {
    let invite = Invite::decode(code)?;
    store::check_creatable(data)?;
    let secret = crate::repo::random_bytes();
    let started = std::time::Instant::now();
    let welcome = crate::net::join::pair(secret, &invite, name, JOIN_TIMEOUT).await?;
    let paired_ms = started.elapsed().as_millis();
    let repo = Repo::join_keyed(
        data,
        name,
        welcome.owner,
        tillmesh_protocol::DeviceKey::from_secret(secret),
        keys,
    )?;
    crate::api::auth::ensure_token(data)
        .with_context(|| format!("writing the API token in {}", data.display()))?;
    let mut lines: Vec<String> = welcome.addrs.iter().map(|a| a.to_string()).collect();
    lines.insert(
        0,
        "# peers dialed at every start; written by `tillmesh join`".into(),
    );
    let path = peers_path(data);
    std::fs::write(&path, lines.join("\n") + "\n").with_context(|| {
        format!(
            "the device was admitted and created, but {} could not be written; start it with \
             `tillmesh run --data {} --peer {}`",
            path.display(),
            data.display(),
            welcome
                .addrs
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default()
        )
    })?;
    let caught_up = if sync {
        Some(catch_up(&repo, welcome.addrs.clone(), out).await?)
    } else {
        None
    };
    let id = repo.identity();
    out.show(
        &serde_json::json!({
            "device_id": id.device_id, "mesh_id": id.mesh_id, "data": data,
            "role": welcome.role.name(), "inviter": welcome.inviter_name, "paired_ms": paired_ms,
            "entries": caught_up.map(|c| c.entries), "caught_up": caught_up.map(|c| c.complete),
        }),
        || {
            let held = match caught_up {
                Some(c) if c.complete => format!("it holds the mesh's {} entries\n", c.entries),
                Some(c) => format!(
                    "it holds {} entries so far; `tillmesh run` fetches the rest\n",
                    c.entries
                ),
                None => String::new(),
            };
            format!(
                "joined mesh {} as '{}' ({}), a {} admitted by '{}'\n{held}next: tillmesh run --data {}",
                id.mesh_id.short(),
                id.device_name,
                id.device_id,
                welcome.role,
                welcome.inviter_name,
                data.display(),
            )
        },
    );
    Ok(())
}

/// How long `join` looks for the inviter and waits for its answers.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Lists the members, revokes one, changes a role, or lists refused entries, through the
/// running node's API.
pub async fn members(
    data: &Path,
    action: MembersAction,
    out: Output,
    keys: &KeySource,
) -> anyhow::Result<()> {
    let client = Client::connect(data, keys).await?;
    match action {
        MembersAction::List => {
            let m = client.get("/v1/members").await?;
            out.show(&m, || {
                let mut text = String::new();
                for d in m["members"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "{:<8} {:<20} {}{}\n",
                        d["role"].as_str().unwrap_or("?"),
                        d["name"].as_str().unwrap_or(""),
                        d["device_id"].as_str().unwrap_or("?"),
                        match d["revoked_after_seq"].as_u64() {
                            Some(n) => format!("  (revoked after entry {n})"),
                            None => String::new(),
                        }
                    ));
                }
                for q in m["quarantined"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "ALERT: {} forked its log at entry {}; revoke it\n",
                        q["device_id"].as_str().unwrap_or("?"),
                        q["seq"]
                    ));
                }
                text.trim_end().to_owned()
            });
        }
        MembersAction::Revoke(who) => {
            let r = client
                .post(&format!("/v1/members/{who}/revoke"), &serde_json::json!({}))
                .await?;
            out.show(&r, || {
                format!(
                    "revoked {}: its entries after {} are refused by every device that learns of it, and its connections closed",
                    r["revoked"].as_str().unwrap_or("?"),
                    r["last_accepted_seq"]
                )
            });
        }
        MembersAction::SetRole { who, role } => {
            let r = client
                .put(
                    &format!("/v1/members/{who}/role"),
                    &serde_json::json!({ "role": role }),
                )
                .await?;
            out.show(&r, || {
                format!(
                    "{} is now a {}",
                    r["device_id"].as_str().unwrap_or("?"),
                    r["role"].as_str().unwrap_or("?")
                )
            });
        }
        MembersAction::Rejected { limit } => {
            let r = client.get(&format!("/v1/rejected?limit={limit}")).await?;
            out.show(&r, || {
                let mut text = format!("{} entries refused\n", r["count"]);
                for e in r["entries"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "#{} from {} entry {}: {}\n",
                        e["number"],
                        e["author"].as_str().unwrap_or("?"),
                        e["seq"],
                        e["reason"].as_str().unwrap_or("")
                    ));
                }
                text.trim_end().to_owned()
            });
        }
    }
    Ok(())
}

pub enum MembersAction {
    List,
    Revoke(String),
    SetRole { who: String, role: String },
    Rejected { limit: usize },
}

/// How long a join's catch-up waits without progress before leaving the rest to `run`.
const CATCH_UP_IDLE: std::time::Duration = std::time::Duration::from_secs(20);
const CATCH_UP_LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// What a join's catch-up reached.
#[derive(Clone, Copy)]
struct CaughtUp {
    entries: u64,
    complete: bool,
}

/// Fetches the mesh's entries from the inviter before `join` returns, so the new device
/// starts with the shop's catalogue and history: a progress bar on a terminal (entries
/// received of entries known, rate, time left), one plain line per second on stderr
/// otherwise. It listens nowhere and dials only the inviter.
async fn catch_up(repo: &Repo, inviter: Vec<Multiaddr>, out: Output) -> anyhow::Result<CaughtUp> {
    use std::io::IsTerminal;
    let config = NetConfig {
        listen: Vec::new(),
        peers: inviter,
        mdns: false,
        dial_found: false,
        rights_reserve: 0,
        ..NetConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (network, task) = crate::net::start(repo.clone(), config, async {
        let _ = stopped.await;
    })
    .await?;
    let bar = (!out.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "catching up {bar:40} {pos}/{len} entries  {per_sec}, {eta} left",
            )
            .expect("a fixed template"),
        );
        b
    });
    let mut last = (0u64, std::time::Instant::now());
    let mut printed = std::time::Instant::now();
    let reached = loop {
        tokio::time::sleep(CATCH_UP_LOOK_EVERY).await;
        let status = network.status();
        let have = repo.version_vector()?.total();
        let known = status.known_entries.max(have);
        let synced = status.peers.iter().any(|p| p.synced);
        if let Some(b) = &bar {
            b.set_length(known);
            b.set_position(have);
        } else if !out.json && printed.elapsed() >= std::time::Duration::from_secs(1) {
            eprintln!("catching up: {have}/{known} entries");
            printed = std::time::Instant::now();
        }
        if synced && have >= known {
            break CaughtUp {
                entries: have,
                complete: true,
            };
        }
        if have > last.0 {
            last = (have, std::time::Instant::now());
        } else if last.1.elapsed() > CATCH_UP_IDLE {
            break CaughtUp {
                entries: have,
                complete: false,
            };
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let _ = stop.send(());
    let _ = task.await;
    Ok(reached)
}
