//! The pure core of tillmesh: no I/O, no clocks, no randomness.
//!
//! Everything here is a value or a function of its inputs, so the node, the bridge and a
//! deterministic simulation all run the same code. Callers bring time and random bytes.
//!
//! # Layout
//!
//! - [`ids`]: device, mesh, document and entry identifiers.
//! - [`keys`]: ed25519 device keys; signing and strict verification.
//! - [`entry`]: the signed log entry and its canonical binary encoding.
//! - [`membership`]: who belongs to a mesh, with which role, and the rule that makes every
//!   node agree on it.
//! - [`vv`]: version vectors, the O(authors) summary peers compare.
//! - [`money`]: integer money and the tax rounding rule.
//! - [`schema`]: the document types of a shop and their rules.
//! - [`sync`]: replication with peers (push and anti-entropy pull), sans-IO.
//! - [`docmap`]: typed values to Automerge documents and back.

pub mod conflicts;
pub mod docmap;
pub mod entry;
pub mod ids;
pub mod keys;
pub mod membership;
pub mod money;
pub mod rights;
pub mod schema;
pub mod sync;
pub mod vv;

pub use entry::{DecodeError, DocChanges, Entry, Payload, SignedEntry, VerifyError};
pub use ids::{DeviceId, DocId, EntryHash, IdParseError, MeshId};
pub use keys::DeviceKey;
pub use membership::{AccessError, Member, MemberOp, Membership, OpRecord, Role};
pub use money::{Currency, Money};
pub use schema::{DocType, Document, SchemaError};
pub use vv::VersionVector;
