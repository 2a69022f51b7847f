//! What the bridge's tests and its push bench share: the `tillmesh-bridge` binary, run as a
//! user runs it (joined to a till's mesh by an invite, connected to QuickBooks by OAuth).
// Each includer uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use tillmesh_node::net::{self, Network};
use tillmesh_protocol::Role;
use tillmesh_qbo_emulator::Endpoints;

pub const BRIDGE: &str = env!("CARGO_BIN_EXE_tillmesh-bridge");

/// Runs `tillmesh-bridge --data DIR ARGS...` to the end; it must succeed.
pub fn bridge(args: &[&str], dir: &Path) {
    let out = Process::new(BRIDGE)
        .arg("--data")
        .arg(dir)
        .args(args)
        .output()
        .expect("tillmesh-bridge runs");
    assert!(
        out.status.success(),
        "tillmesh-bridge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in `dir`, paired with the till behind `network` by an invite for the bridge
/// role, and connected to the emulator at `ends` (with its webhook verifier token). With
/// `catch_up` false it joins with `--no-sync`: it connects before it holds any of the mesh.
pub async fn join_and_connect(network: &Network, ends: &Endpoints, dir: &Path, catch_up: bool) {
    let status = network.status();
    let opened = network
        .open_invite(Role::Bridge, Duration::from_secs(60))
        .await
        .expect("an invite");
    let invite = format!(
        "tm2:{}@{}/p2p/{}",
        net::pairing::display_code(&opened.code),
        status.listen[0],
        status.peer_id
    );
    let mut join = vec!["join", "--name", "Head office bridge", &invite];
    if !catch_up {
        join.push("--no-sync");
    }
    bridge(&join, dir);
    let out = connect(ends, dir);
    assert!(
        out.status.success(),
        "tillmesh-bridge connect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tillmesh-bridge connect` to the emulator at `ends`, as a user runs it.
pub fn connect(ends: &Endpoints, dir: &Path) -> std::process::Output {
    // The secrets as the README says to pass them: off the command line.
    let secret = dir.with_extension("secret");
    std::fs::write(&secret, format!("{}\n", ends.client_secret)).expect("a secret file");
    let mut args = vec![
        "connect",
        "--qbo-base",
        &ends.base_url,
        "--client-id",
        &ends.client_id,
        "--client-secret-file",
        secret.to_str().expect("a UTF-8 path"),
    ];
    let ca = ends.ca_file.as_ref().map(|f| f.display().to_string());
    if let Some(ca) = &ca {
        args.extend(["--qbo-ca", ca]);
    }
    Process::new(BRIDGE)
        .arg("--data")
        .arg(dir)
        .args(&args)
        .env("QBO_VERIFIER_TOKEN", &ends.verifier_token)
        .output()
        .expect("tillmesh-bridge runs")
}

/// A running `tillmesh-bridge`, killed when dropped: a test that fails part-way leaves no
/// bridge process behind.
pub struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `run`'s flags for a bridge on loopback only (no mDNS, ports chosen by the OS).
pub const RUN_ON_LOOPBACK: [&str; 8] = [
    "run",
    "--api",
    "127.0.0.1:0",
    "--no-mdns",
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--http",
    "127.0.0.1:0",
];

/// `tillmesh-bridge run` on loopback (no mDNS), with `extra` flags. Its log is silent but
/// for warnings, unless `TILLMESH_TEST_BRIDGE_LOG` names a filter: then it shows on stderr.
pub fn spawn_bridge_with(dir: &Path, extra: &[&str]) -> Running {
    let log = std::env::var("TILLMESH_TEST_BRIDGE_LOG").ok();
    let child = Process::new(BRIDGE)
        .arg("--data")
        .arg(dir)
        .args(RUN_ON_LOOPBACK)
        .args(extra)
        .env("TILLMESH_LOG", log.as_deref().unwrap_or("warn"))
        .stdout(Stdio::null())
        .stderr(if log.is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("tillmesh-bridge starts");
    Running(child)
}
