//! A tillmesh node: one device's store, its document repo, and the local API a till talks to.
//!
//! # Layout
//!
//! - [`store`]: the redb file, its tables, and opening/creating it with clear errors.
//! - [`repo`]: the document repo. A single writer thread group-commits till commands and
//!   entries from other devices; reads go straight to redb snapshots.
//! - [`replication`]: serving pulls from the store and applying what peers send.
//! - [`net`]: libp2p transports, mDNS discovery, relays, and the driver of the sync core.
//! - [`api`]: the local HTTP API (JSON, server-sent events) on loopback.
//! - [`server`]: `run(repo, listener, shutdown)`, what `tillmesh run` does.
//! - [`cli`]: the `tillmesh` command line, including `tillmesh demo`.

pub mod api;
pub mod cli;
pub mod metrics;
pub mod net;
pub mod replication;
pub mod repo;
pub mod server;
pub mod store;

pub use repo::Repo;
