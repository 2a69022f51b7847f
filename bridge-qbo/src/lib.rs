//! The QuickBooks Online side of tillmesh.
//!
//! # Layout
//!
//! - [`emulator`]: a local stand-in for QuickBooks Online (binary `qbo-emulator`), faithful to
//!   Intuit's v3 Accounting API and the traffic recorded in `shared/qbo-fixtures`, so the
//!   bridge can be built and tested, and tillmesh tried, without an Intuit account.
//! - The bridge itself (binary `tillmesh-bridge`) comes next: see the bridge issue.

pub mod emulator;
