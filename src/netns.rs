//! Test networks of Linux network namespaces: hosts joined by a switch, links that can be cut,
//! and a way to run code inside a host. Needs root and iproute2; everything made here is
//! removed on drop, and no packet leaves the namespaces.

use std::future::Future;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::testkit::{Api, read_api};

/// Whether this machine can make namespaces (root, `ip` present); tests that need them say
/// why they skip otherwise.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root to create network namespaces".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("needs iproute2 (`ip`); .ci/run installs it".into()),
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One network namespace, deleted (with every process in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip ARGS` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Loads an nftables ruleset inside this namespace.
    pub fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let mut child = self
            .command(Path::new("nft"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (install nftables)")?;
        child
            .stdin
            .take()
            .context("nft's input")?
            .write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` to completion on a thread inside this namespace, with its own runtime: every
    /// socket it opens is the namespace's.
    pub fn block_on<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    enter(&self.name).expect("entering the namespace");
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime")
                        .block_on(f)
                })
                .join()
                .expect("the namespace thread panicked")
        })
    }
}

/// Moves the calling thread into namespace `name`.
fn enter(name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .with_context(|| format!("opening namespace {name}"))?;
    // SAFETY: a valid namespace file descriptor, owned for the duration of the call; setns
    // changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Hosts on one Ethernet segment: a switch namespace holding a bridge, and per host a veth
/// pair (`eth0` in the host, `p<i>` on the bridge). Addresses `10.<net>.0.<i+1>/24`.
pub struct Lan {
    pub hosts: Vec<Netns>,
    pub switch: Netns,
    pub prefix: String,
}

impl Lan {
    /// `tag` keeps names unique per test (namespace names are global to the machine).
    pub fn create(tag: &str, net: u8, hosts: usize) -> anyhow::Result<Lan> {
        let switch = Netns::create(&format!("{tag}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        let mut lan = Lan {
            hosts: Vec::new(),
            switch,
            prefix: format!("10.{net}.0"),
        };
        for i in 0..hosts {
            let host = Netns::create(&format!("{tag}-h{i}"))?;
            let port = format!("p{i}");
            lan.switch.ip(&[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &host.name,
            ])?;
            lan.switch.ip(&["link", "set", &port, "master", "br0"])?;
            lan.switch.ip(&["link", "set", &port, "up"])?;
            let addr = format!("{}.{}/24", lan.prefix, i + 1);
            host.ip(&["addr", "add", &addr, "dev", "eth0"])?;
            host.ip(&["link", "set", "eth0", "up"])?;
            lan.hosts.push(host);
        }
        Ok(lan)
    }

    pub fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.prefix, host + 1)
    }

    /// Unplugs (or plugs back) a host's cable at the switch.
    pub fn set_link(&self, host: usize, up: bool) -> anyhow::Result<()> {
        self.switch.ip(&[
            "link",
            "set",
            &format!("p{host}"),
            if up { "up" } else { "down" },
        ])
    }
}

/// What a shop's router does to its connections out to the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// Masquerade that keeps a connection's source port where it can (Linux's default, and
    /// most home routers'): one public port per inside port, whatever the destination.
    /// Unsolicited packets from outside are dropped, as a home router's firewall does.
    PortPreserving,
    /// Masquerade with a fresh random port for every connection (`fully-random`): what the
    /// relay sees is not what the other shop would have to reach. Can't be punched.
    Symmetric,
}

/// Two shops behind NAT on a test internet, with head office on it.
///
/// The internet is a switch namespace with a bridge on 203.0.113.0/24 (TEST-NET-3, used for
/// documentation: no real host answers there, and no packet leaves the namespaces anyway).
/// Head office is a public host at 203.0.113.10. Each shop is a host at 192.168.1.2 (both
/// shops use the same private network, as real shops do) behind its own router namespace:
/// WAN address 203.0.113.(1 + shop), LAN 192.168.1.1, IP forwarding and NAT by nftables.
pub struct NatShops {
    pub office: Netns,
    pub shops: [Netns; 2],
    pub routers: [Netns; 2],
    pub internet: Netns,
}

pub const OFFICE_ADDR: &str = "203.0.113.10";

/// Whether `nft` is here (`.ci/run` installs nftables).
pub fn nft_available() -> Result<(), String> {
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("needs nftables (`nft`); .ci/run installs it".into()),
    }
}

impl NatShops {
    /// `tag` keeps names unique per test; `nats` says what each shop's router does.
    pub fn create(tag: &str, nats: [Nat; 2]) -> anyhow::Result<NatShops> {
        let internet = Netns::create(&format!("{tag}-inet"))?;
        internet.ip(&["link", "add", "br0", "type", "bridge"])?;
        internet.ip(&["link", "set", "br0", "up"])?;
        let plug = |port: &str, host: &Netns, name: &str, addr: &str| -> anyhow::Result<()> {
            internet.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", name, "netns", &host.name,
            ])?;
            internet.ip(&["link", "set", port, "master", "br0"])?;
            internet.ip(&["link", "set", port, "up"])?;
            host.ip(&["addr", "add", addr, "dev", name])?;
            host.ip(&["link", "set", name, "up"])
        };
        let office = Netns::create(&format!("{tag}-office"))?;
        plug("po", &office, "eth0", &format!("{OFFICE_ADDR}/24"))?;
        let mut routers = Vec::new();
        let mut shops = Vec::new();
        for (i, nat) in nats.into_iter().enumerate() {
            let router = Netns::create(&format!("{tag}-rt{i}"))?;
            plug(
                &format!("pr{i}"),
                &router,
                "wan",
                &format!("203.0.113.{}/24", i + 1),
            )?;
            let shop = Netns::create(&format!("{tag}-shop{i}"))?;
            router.ip(&[
                "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", &shop.name,
            ])?;
            router.ip(&["addr", "add", "192.168.1.1/24", "dev", "lan"])?;
            router.ip(&["link", "set", "lan", "up"])?;
            shop.ip(&["addr", "add", "192.168.1.2/24", "dev", "eth0"])?;
            shop.ip(&["link", "set", "eth0", "up"])?;
            shop.ip(&["route", "add", "default", "via", "192.168.1.1"])?;
            let status = router
                .command(Path::new("sysctl"))
                .args(["-qw", "net.ipv4.ip_forward=1"])
                .status()
                .context("running sysctl")?;
            if !status.success() {
                bail!("could not turn on forwarding in {}", router.name);
            }
            router.nft(&nat_rules(nat))?;
            routers.push(router);
            shops.push(shop);
        }
        let pair = |v: Vec<Netns>| -> [Netns; 2] {
            v.try_into()
                .unwrap_or_else(|_| unreachable!("two shops were made"))
        };
        Ok(NatShops {
            office,
            shops: pair(shops),
            routers: pair(routers),
            internet,
        })
    }
}

/// A router's nftables ruleset: masquerade out of `wan`, and nothing new in from it.
fn nat_rules(nat: Nat) -> String {
    let masquerade = match nat {
        Nat::PortPreserving => "masquerade",
        Nat::Symmetric => "masquerade random,fully-random",
    };
    format!(
        "table ip nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname \"wan\" {masquerade}
  }}
}}
table ip filter {{
  chain inbound {{
    type filter hook input priority 0;
    iifname \"wan\" ct state new drop
  }}
  chain forwarded {{
    type filter hook forward priority 0;
    iifname \"wan\" ct state new drop
  }}
}}
"
    )
}

/// A `tillmesh run` inside a namespace, killed on drop.
pub struct NsNode {
    child: Option<Child>,
    pub api: Api,
}

impl NsNode {
    /// Starts `tillmesh run --data DIR ARGS` in `ns` and waits until its API answers there.
    pub fn start(ns: &Netns, bin: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<NsNode> {
        let addr_file = dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let child = ns
            .command(bin)
            .args([
                "run",
                "--data",
                &dir.to_string_lossy(),
                "--api",
                "127.0.0.1:0",
            ])
            .args(args)
            .env(
                "TILLMESH_LOG",
                std::env::var("TILLMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning tillmesh run in a namespace")?;
        let mut node = NsNode {
            child: Some(child),
            api: Api::new(""),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("tillmesh run exited with {status} before serving");
            }
            if let Some(api) = read_api(dir)
                && ns.block_on(async { api.get("/v1/status").await.is_ok() })
            {
                node.api = api;
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("tillmesh run in {} did not serve within 30 s", ns.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's process id (`ip netns exec` becomes the program it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The node's resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::testkit::rss_kib(self.pid()?)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.kill9();
    }
}
