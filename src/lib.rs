//! Support shared by tillmesh's cross-crate tests, examples and benchmarks: real nodes, as
//! separate processes (the `tillmesh` binary) or inside this process, and a small client for
//! their HTTP API. Nothing here is a stand-in: every node is the real store, writer and API.
//! And the QuickBooks act of `tillmesh demo` ([`bridge_demo`]), which needs both the bridge and
//! the emulator, so it lives here rather than in the bridge's crate.

pub mod bridge_demo;
pub mod netns;
pub mod sim;
pub mod testkit;
