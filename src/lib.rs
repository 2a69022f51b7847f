//! Support shared by tillmesh's cross-crate tests, examples and benchmarks: real nodes, as
//! separate processes (the `tillmesh` binary) or inside this process, and a small client for
//! their HTTP API. Nothing here is a stand-in: every node is the real store, writer and API.

pub mod netns;
pub mod sim;
pub mod testkit;
