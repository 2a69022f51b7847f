//! The tillmesh bridge to QuickBooks Online.
//!
//! # Layout
//!
//! - [`bridge`]: the bridge (binary `tillmesh-bridge`), a mesh node with the `bridge` role that
//!   posts the mesh's documents exactly once and writes what QuickBooks holds back into the
//!   mesh.
//!
//! The QuickBooks emulator it is tested against is its own crate (`bridge-qbo/emulator`,
//! `tillmesh-qbo-emulator`), a dev-dependency only: nothing here can lean on it.

pub mod bridge;
