//! Identifiers: devices, meshes and documents.
//!
//! A device is its ed25519 public key; a mesh is the hash of its owner's public key; a document
//! is a UUIDv7 (16 bytes, so an automerge-repo document id maps one-to-one later on).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Why a textual identifier could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("expected {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    #[error("'{0}' is not hexadecimal")]
    NotHex(String),
    #[error(
        "'{0}' is not a document id (expected a UUID such as 0190f1b2-7c3a-7def-8000-0123456789ab)"
    )]
    NotUuid(String),
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], IdParseError> {
    if s.len() != N * 2 {
        return Err(IdParseError::Length {
            expected: N * 2,
            got: s.len(),
        });
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IdParseError::NotHex(s.to_owned()));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2).unwrap_or("zz"), 16)
            .map_err(|_| IdParseError::NotHex(s.to_owned()))?;
    }
    Ok(out)
}

/// Lower-case hex of `bytes`, as ids are written.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The first 8 hex characters: enough to tell devices of one shop apart in logs.
            pub fn short(&self) -> String {
                to_hex(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&to_hex(&self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$len>(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// A device's identity: its ed25519 public key.
    DeviceId,
    32
);
hex_id!(
    /// One business's replication group: the SHA-256 of the owner's (root) public key.
    MeshId,
    32
);
hex_id!(
    /// SHA-256 of an entry's full encoding; links each entry to its author's previous one.
    EntryHash,
    32
);

impl MeshId {
    pub fn from_root(root: &DeviceId) -> Self {
        let mut h = Sha256::new();
        h.update(b"tillmesh/mesh/v1");
        h.update(root.as_bytes());
        MeshId(h.finalize().into())
    }
}

impl EntryHash {
    /// The `prev` of an author's first entry.
    pub const ZERO: EntryHash = EntryHash([0; 32]);

    pub fn of(encoded: &[u8]) -> Self {
        EntryHash(Sha256::digest(encoded).into())
    }
}

/// A document id: a UUIDv7, so ids sort by creation time (newest-first listings need no index).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    /// Builds a UUIDv7 from a wall-clock time and 10 random bytes the caller supplies (this crate
    /// does no I/O, randomness included).
    pub fn new_v7(unix_ms: u64, random: [u8; 10]) -> Self {
        DocId(
            *uuid::Builder::from_unix_timestamp_millis(unix_ms, &random)
                .as_uuid()
                .as_bytes(),
        )
    }

    /// A well-known document id derived from a name, for singletons every node must agree on
    /// without talking (the mesh settings). UUIDv8, so it never collides with a v7 id.
    pub fn derived(mesh: &MeshId, name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"tillmesh/doc/v1");
        h.update(mesh.as_bytes());
        h.update(name.as_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        DocId(*uuid::Builder::from_custom_bytes(bytes).as_uuid().as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Creation time in milliseconds since the Unix epoch, for v7 ids.
    pub fn unix_ms(&self) -> Option<u64> {
        let u = uuid::Uuid::from_bytes(self.0);
        u.get_timestamp().map(|t| {
            let (s, n) = t.to_unix();
            s * 1000 + u64::from(n) / 1_000_000
        })
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(f)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

impl FromStr for DocId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(|u| DocId(*u.as_bytes()))
            .map_err(|_| IdParseError::NotUuid(s.to_owned()))
    }
}

impl Serialize for DocId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for DocId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_ids_sort_by_time_and_round_trip() {
        let a = DocId::new_v7(1_700_000_000_000, [7; 10]);
        let b = DocId::new_v7(1_700_000_000_001, [0; 10]);
        assert!(a < b);
        assert_eq!(a.unix_ms(), Some(1_700_000_000_000));
        assert_eq!(a.to_string().parse::<DocId>().unwrap(), a);
        assert!("not-a-uuid".parse::<DocId>().is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let mesh = MeshId([1; 32]);
        assert_eq!(
            DocId::derived(&mesh, "settings"),
            DocId::derived(&mesh, "settings")
        );
        assert_ne!(
            DocId::derived(&mesh, "settings"),
            DocId::derived(&MeshId([2; 32]), "settings")
        );
        assert_eq!(DocId::derived(&mesh, "settings").unix_ms(), None);
    }

    #[test]
    fn hex_ids_round_trip_and_refuse_garbage() {
        let d = DeviceId([0xab; 32]);
        assert_eq!(d.to_string().parse::<DeviceId>().unwrap(), d);
        assert!(matches!(
            "abc".parse::<DeviceId>(),
            Err(IdParseError::Length { .. })
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<DeviceId>(),
            Err(IdParseError::NotHex(_))
        ));
        assert!(
            format!("+f{}", "0".repeat(62)).parse::<DeviceId>().is_err(),
            "only canonical hex"
        );
        // Multi-byte characters must not make the parser slice inside a character.
        assert!("é".repeat(32).parse::<DeviceId>().is_err());
    }
}
