//! The QuickBooks Online side of tillmesh.
//!
//! # Layout
//!
//! - [`emulator`]: a local stand-in for QuickBooks Online (binary `qbo-emulator`), faithful to
//!   Intuit's v3 Accounting API and the traffic recorded in `shared/qbo-fixtures`, so the
//!   bridge can be built and tested, and tillmesh tried, without an Intuit account.
//! - [`bridge`]: the bridge (binary `tillmesh-bridge`), a mesh node with the `bridge` role that
//!   posts the mesh's documents exactly once and writes what QuickBooks holds back into the
//!   mesh.
//! - [`demo`]: the bridge's act at the end of `tillmesh demo`.
//! - [`urlenc`]: the percent-encoding OAuth and queries need.

pub mod bridge;
pub mod demo;
pub mod emulator;
pub mod urlenc;
