//! The QuickBooks Online side of tillmesh.
//!
//! # Layout
//!
//! - [`emulator`]: a local stand-in for QuickBooks Online (binary `qbo-emulator`), faithful to
//!   Intuit's v3 Accounting API and the traffic recorded in `shared/qbo-fixtures`, so the
//!   bridge can be built and tested, and tillmesh tried, without an Intuit account.
//! - [`bridge`]: the bridge (binary `tillmesh-bridge`), a mesh node with the `bridge` role that
//!   posts sales exactly once and writes what QuickBooks holds back into the mesh.

pub mod bridge;
pub mod emulator;
pub mod urlenc;
