//! The log entry: the unit of replication.
//!
//! Each device appends to its own log. An entry is `(author, seq)` with `seq` contiguous from 1,
//! the hash of the author's previous entry, a timestamp hint, and a payload of Automerge changes
//! for one or more documents that must be applied together (a sale and the stock it moves).
//!
//! ## Wire and disk encoding, version 1
//!
//! All integers big-endian; the encoding is canonical (one byte string per entry), so an entry's
//! hash identifies it and two entries with the same `(author, seq)` but different hashes prove a
//! fork.
//!
//! ```text
//! magic "TME" | version u8 = 1 | author [32] | seq u64 | prev [32] | timestamp_ms u64
//! | payload tag u8 (1 = changes, 2 = membership)
//! | changes:    doc count u16
//!               | per doc: doc id [16] | doc type u8 | change count u16
//!               | per change: len u32 | bytes
//! | membership: op u8 (1 = add, 2 = change role, 3 = revoke) | device [32]
//!               | add: role u8 | name len u8 | name (UTF-8)
//!               | change role: role u8 | from seq u64
//!               | revoke: last seq u64
//! | signature [64]
//! ```
//!
//! The signature covers `"tillmesh/entry/v1" | mesh id | everything before the signature`: the
//! mesh id is part of what is signed but not of what is sent, so an entry can't be replayed into
//! another business's mesh.

use crate::ids::{DeviceId, DocId, EntryHash, MeshId};
use crate::keys::{DeviceKey, verify};
use crate::membership::{MEMBER_NAME_BYTES_MAX, MemberOp, Role};
use crate::schema::DocType;

const MAGIC: &[u8; 3] = b"TME";
const VERSION: u8 = 1;
const SIGNING_CONTEXT: &[u8] = b"tillmesh/entry/v1";
const PAYLOAD_CHANGES: u8 = 1;
const PAYLOAD_MEMBERSHIP: u8 = 2;
const OP_ADD: u8 = 1;
const OP_CHANGE_ROLE: u8 = 2;
const OP_REVOKE: u8 = 3;
const HEADER_LEN: usize = 3 + 1 + 32 + 8 + 32 + 8 + 1;
const SIGNATURE_LEN: usize = 64;

/// Bounds on what one entry may hold; a decoder refuses anything larger before allocating for it.
pub const ENTRY_BYTES_MAX: usize = 4 * 1024 * 1024;
pub const ENTRY_DOCS_MAX: usize = 1024;
pub const DOC_CHANGES_MAX: usize = 1024;

/// The Automerge changes one entry carries for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocChanges {
    pub doc_id: DocId,
    pub doc_type: DocType,
    /// Raw Automerge change bytes, in the order they were made.
    pub changes: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Changes to documents, applied atomically: all of them or none.
    Changes(Vec<DocChanges>),
    /// A change to who belongs to the mesh (see [`crate::membership`]). Boxed: rare, and
    /// larger than the common case.
    Membership(Box<MemberOp>),
}

/// An entry before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub author: DeviceId,
    pub seq: u64,
    pub prev: EntryHash,
    /// The author's clock when it wrote the entry: a hint for people, never for ordering.
    pub timestamp_ms: u64,
    pub payload: Payload,
}

/// A signed entry with its canonical encoding and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    pub entry: Entry,
    pub signature: [u8; 64],
    encoded: Vec<u8>,
    hash: EntryHash,
}

/// Why bytes are not a well-formed entry. Decoding never panics, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry is {0} bytes; the limit is {ENTRY_BYTES_MAX}")]
    TooLarge(usize),
    #[error("entry ends early: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("not a tillmesh entry (bad magic bytes)")]
    BadMagic,
    #[error(
        "entry format version {0} is not supported by this node (it reads version {VERSION}); upgrade tillmesh"
    )]
    UnsupportedVersion(u8),
    #[error("unknown payload kind {0}")]
    UnknownPayload(u8),
    #[error("unknown membership operation {0}")]
    UnknownMemberOp(u8),
    #[error("unknown role code {0}")]
    UnknownRole(u8),
    #[error("a member's name must be UTF-8 of at most {MEMBER_NAME_BYTES_MAX} bytes")]
    BadMemberName,
    #[error("unknown document type code {0}")]
    UnknownDocType(u8),
    #[error("seq must start at 1")]
    ZeroSeq,
    #[error("the first entry of a log must not name a previous entry")]
    FirstEntryHasPrev,
    #[error("entry names {count} {what}; the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("document {0} appears twice in one entry")]
    DuplicateDoc(DocId),
    #[error("document {0} has no changes")]
    EmptyDoc(DocId),
    #[error("entry has no documents")]
    EmptyPayload,
    #[error("{0} bytes follow the signature")]
    TrailingBytes(usize),
}

/// Why an entry was refused even though it decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature does not verify for author {0} in this mesh")]
    BadSignature(DeviceId),
}

impl Entry {
    /// Encodes, signs under `mesh`, and returns the signed entry. `key` must be the author's.
    pub fn sign(self, mesh: &MeshId, key: &DeviceKey) -> SignedEntry {
        debug_assert_eq!(key.device_id(), self.author);
        let mut encoded = Vec::with_capacity(self.encoded_len_hint() + SIGNATURE_LEN);
        self.encode_unsigned(&mut encoded);
        let signature = key.sign(&signing_message(mesh, &encoded));
        encoded.extend_from_slice(&signature);
        let hash = EntryHash::of(&encoded);
        SignedEntry {
            entry: self,
            signature,
            encoded,
            hash,
        }
    }

    fn encoded_len_hint(&self) -> usize {
        let docs = match &self.payload {
            Payload::Changes(docs) => docs,
            Payload::Membership(_) => return HEADER_LEN + 1 + 32 + 1 + 1 + MEMBER_NAME_BYTES_MAX,
        };
        HEADER_LEN
            + 2
            + docs
                .iter()
                .map(|d| 19 + d.changes.iter().map(|c| 4 + c.len()).sum::<usize>())
                .sum::<usize>()
    }

    fn encode_unsigned(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.author.as_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(self.prev.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        let docs = match &self.payload {
            Payload::Changes(docs) => docs,
            Payload::Membership(op) => {
                out.push(PAYLOAD_MEMBERSHIP);
                encode_op(op, out);
                return;
            }
        };
        out.push(PAYLOAD_CHANGES);
        // Counts are bounded by the limits; `sign` is only called on entries we built ourselves.
        out.extend_from_slice(&(docs.len() as u16).to_be_bytes());
        for doc in docs {
            out.extend_from_slice(doc.doc_id.as_bytes());
            out.push(doc.doc_type.code());
            out.extend_from_slice(&(doc.changes.len() as u16).to_be_bytes());
            for change in &doc.changes {
                out.extend_from_slice(&(change.len() as u32).to_be_bytes());
                out.extend_from_slice(change);
            }
        }
    }

    /// Checks the bounds a decoder would enforce, so a writer never signs an entry that every
    /// peer would refuse.
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        let docs = match &self.payload {
            Payload::Changes(docs) => docs,
            Payload::Membership(op) => {
                return match &**op {
                    MemberOp::Add { name, .. } if name.len() > MEMBER_NAME_BYTES_MAX => {
                        Err(DecodeError::BadMemberName)
                    }
                    _ => Ok(()),
                };
            }
        };
        if docs.is_empty() {
            return Err(DecodeError::EmptyPayload);
        }
        if docs.len() > ENTRY_DOCS_MAX {
            return Err(DecodeError::TooMany {
                what: "documents",
                count: docs.len(),
                max: ENTRY_DOCS_MAX,
            });
        }
        for d in docs {
            if d.changes.len() > DOC_CHANGES_MAX {
                return Err(DecodeError::TooMany {
                    what: "changes",
                    count: d.changes.len(),
                    max: DOC_CHANGES_MAX,
                });
            }
        }
        let len = self.encoded_len_hint() + SIGNATURE_LEN;
        if len > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLarge(len));
        }
        Ok(())
    }
}

impl MemberOp {
    /// The operation alone, in its entry encoding (stores index operations by it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        encode_op(self, &mut out);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<MemberOp, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let op = decode_op(&mut r)?;
        if r.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.pos));
        }
        Ok(op)
    }
}

fn encode_op(op: &MemberOp, out: &mut Vec<u8>) {
    match op {
        MemberOp::Add { device, role, name } => {
            out.push(OP_ADD);
            out.extend_from_slice(device.as_bytes());
            out.push(role.code());
            // Bounded by `check_limits` before signing.
            let name = &name.as_bytes()[..name.len().min(MEMBER_NAME_BYTES_MAX)];
            out.push(name.len() as u8);
            out.extend_from_slice(name);
        }
        MemberOp::ChangeRole {
            device,
            role,
            from_seq,
        } => {
            out.push(OP_CHANGE_ROLE);
            out.extend_from_slice(device.as_bytes());
            out.push(role.code());
            out.extend_from_slice(&from_seq.to_be_bytes());
        }
        MemberOp::Revoke { device, last_seq } => {
            out.push(OP_REVOKE);
            out.extend_from_slice(device.as_bytes());
            out.extend_from_slice(&last_seq.to_be_bytes());
        }
    }
}

fn decode_op(r: &mut Reader<'_>) -> Result<MemberOp, DecodeError> {
    let kind = r.u8()?;
    let device = DeviceId(r.array()?);
    let role = |r: &mut Reader<'_>| {
        let code = r.u8()?;
        Role::from_code(code).ok_or(DecodeError::UnknownRole(code))
    };
    Ok(match kind {
        OP_ADD => {
            let role = role(r)?;
            let len = usize::from(r.u8()?);
            if len > MEMBER_NAME_BYTES_MAX {
                return Err(DecodeError::BadMemberName);
            }
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| DecodeError::BadMemberName)?
                .to_owned();
            MemberOp::Add { device, role, name }
        }
        OP_CHANGE_ROLE => MemberOp::ChangeRole {
            device,
            role: role(r)?,
            from_seq: r.u64()?,
        },
        OP_REVOKE => MemberOp::Revoke {
            device,
            last_seq: r.u64()?,
        },
        other => return Err(DecodeError::UnknownMemberOp(other)),
    })
}

fn signing_message(mesh: &MeshId, unsigned: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + 32 + unsigned.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(mesh.as_bytes());
    m.extend_from_slice(unsigned);
    m
}

impl SignedEntry {
    /// Parses untrusted bytes. Checks structure and bounds only; call [`SignedEntry::verify`]
    /// before trusting the content.
    pub fn decode(bytes: &[u8]) -> Result<SignedEntry, DecodeError> {
        if bytes.len() > ENTRY_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let mut r = Reader { bytes, pos: 0 };
        if r.take(3)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let author = DeviceId(r.array()?);
        let seq = r.u64()?;
        let prev = EntryHash(r.array()?);
        let timestamp_ms = r.u64()?;
        if seq == 0 {
            return Err(DecodeError::ZeroSeq);
        }
        if seq == 1 && prev != EntryHash::ZERO {
            return Err(DecodeError::FirstEntryHasPrev);
        }
        let tag = r.u8()?;
        if tag == PAYLOAD_MEMBERSHIP {
            let op = decode_op(&mut r)?;
            return r.finish(
                bytes,
                author,
                seq,
                prev,
                timestamp_ms,
                Payload::Membership(Box::new(op)),
            );
        }
        if tag != PAYLOAD_CHANGES {
            return Err(DecodeError::UnknownPayload(tag));
        }
        let doc_count = usize::from(r.u16()?);
        if doc_count == 0 {
            return Err(DecodeError::EmptyPayload);
        }
        if doc_count > ENTRY_DOCS_MAX {
            return Err(DecodeError::TooMany {
                what: "documents",
                count: doc_count,
                max: ENTRY_DOCS_MAX,
            });
        }
        let mut docs: Vec<DocChanges> = Vec::with_capacity(doc_count.min(64));
        for _ in 0..doc_count {
            let doc_id = DocId(r.array()?);
            let code = r.u8()?;
            let doc_type = DocType::from_code(code).ok_or(DecodeError::UnknownDocType(code))?;
            let change_count = usize::from(r.u16()?);
            if change_count == 0 {
                return Err(DecodeError::EmptyDoc(doc_id));
            }
            if change_count > DOC_CHANGES_MAX {
                return Err(DecodeError::TooMany {
                    what: "changes",
                    count: change_count,
                    max: DOC_CHANGES_MAX,
                });
            }
            if docs.iter().any(|d| d.doc_id == doc_id) {
                return Err(DecodeError::DuplicateDoc(doc_id));
            }
            let mut changes = Vec::with_capacity(change_count.min(64));
            for _ in 0..change_count {
                let len = r.u32()? as usize;
                changes.push(r.take(len)?.to_vec());
            }
            docs.push(DocChanges {
                doc_id,
                doc_type,
                changes,
            });
        }
        r.finish(
            bytes,
            author,
            seq,
            prev,
            timestamp_ms,
            Payload::Changes(docs),
        )
    }

    /// Checks the author's signature over this entry in `mesh`.
    pub fn verify(&self, mesh: &MeshId) -> Result<(), VerifyError> {
        let unsigned = &self.encoded[..self.encoded.len() - SIGNATURE_LEN];
        if verify(
            &self.entry.author,
            &signing_message(mesh, unsigned),
            &self.signature,
        ) {
            Ok(())
        } else {
            Err(VerifyError::BadSignature(self.entry.author))
        }
    }

    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    pub fn hash(&self) -> EntryHash {
        self.hash
    }

    /// The documents this entry changes: none for a membership operation.
    pub fn docs(&self) -> &[DocChanges] {
        match &self.entry.payload {
            Payload::Changes(docs) => docs,
            Payload::Membership(_) => &[],
        }
    }

    pub fn member_op(&self) -> Option<&MemberOp> {
        match &self.entry.payload {
            Payload::Membership(op) => Some(op),
            Payload::Changes(_) => None,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads the signature, which must end the bytes, and builds the entry.
    fn finish(
        mut self,
        bytes: &[u8],
        author: DeviceId,
        seq: u64,
        prev: EntryHash,
        timestamp_ms: u64,
        payload: Payload,
    ) -> Result<SignedEntry, DecodeError> {
        let signature: [u8; 64] = self.array()?;
        if self.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - self.pos));
        }
        Ok(SignedEntry {
            entry: Entry {
                author,
                seq,
                prev,
                timestamp_ms,
                payload,
            },
            signature,
            encoded: bytes.to_vec(),
            hash: EntryHash::of(bytes),
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated {
                offset: self.pos,
                needed: n - (self.bytes.len() - self.pos).min(n),
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> DeviceKey {
        DeviceKey::from_secret([b; 32])
    }

    fn sample(seq: u64, prev: EntryHash) -> Entry {
        let k = key(1);
        Entry {
            author: k.device_id(),
            seq,
            prev,
            timestamp_ms: 1_700_000_000_000,
            payload: Payload::Changes(vec![
                DocChanges {
                    doc_id: DocId([1; 16]),
                    doc_type: DocType::Sale,
                    changes: vec![vec![1, 2, 3]],
                },
                DocChanges {
                    doc_id: DocId([2; 16]),
                    doc_type: DocType::Product,
                    changes: vec![vec![], vec![9; 300]],
                },
            ]),
        }
    }

    #[test]
    fn round_trip_and_verify() {
        let mesh = MeshId([5; 32]);
        let signed = sample(1, EntryHash::ZERO).sign(&mesh, &key(1));
        let back = SignedEntry::decode(signed.encoded()).unwrap();
        assert_eq!(back, signed);
        back.verify(&mesh).unwrap();
        assert_eq!(back.hash(), EntryHash::of(signed.encoded()));
    }

    #[test]
    fn signature_is_bound_to_the_mesh_and_content() {
        let mesh = MeshId([5; 32]);
        let signed = sample(1, EntryHash::ZERO).sign(&mesh, &key(1));
        assert_eq!(
            signed.verify(&MeshId([6; 32])),
            Err(VerifyError::BadSignature(signed.entry.author))
        );
        let mut bytes = signed.encoded().to_vec();
        let ts = 3 + 1 + 32 + 8 + 32;
        bytes[ts + 7] ^= 1; // shift the timestamp by a millisecond
        let tampered = SignedEntry::decode(&bytes).unwrap();
        assert!(tampered.verify(&mesh).is_err());
        // Another key signing as this author is refused too.
        let forged = sample(1, EntryHash::ZERO);
        let mut enc = Vec::new();
        forged.encode_unsigned(&mut enc);
        enc.extend_from_slice(&key(2).sign(&signing_message(&mesh, &enc)));
        assert!(SignedEntry::decode(&enc).unwrap().verify(&mesh).is_err());
    }

    #[test]
    fn structural_rules() {
        let mesh = MeshId([5; 32]);
        let first_with_prev = sample(1, EntryHash([1; 32])).sign(&mesh, &key(1));
        assert_eq!(
            SignedEntry::decode(first_with_prev.encoded()),
            Err(DecodeError::FirstEntryHasPrev)
        );
        let zero = sample(0, EntryHash::ZERO).sign(&mesh, &key(1));
        assert_eq!(
            SignedEntry::decode(zero.encoded()),
            Err(DecodeError::ZeroSeq)
        );
        let ok = sample(2, EntryHash([1; 32])).sign(&mesh, &key(1));
        let mut trailing = ok.encoded().to_vec();
        trailing.push(0);
        assert_eq!(
            SignedEntry::decode(&trailing),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut v2 = ok.encoded().to_vec();
        v2[3] = 2;
        assert_eq!(
            SignedEntry::decode(&v2),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(SignedEntry::decode(b"nope"), Err(DecodeError::BadMagic));
        let mut dup = sample(2, EntryHash([1; 32]));
        let Payload::Changes(docs) = &mut dup.payload else {
            unreachable!()
        };
        docs[1].doc_id = docs[0].doc_id;
        let dup = dup.sign(&mesh, &key(1));
        assert!(matches!(
            SignedEntry::decode(dup.encoded()),
            Err(DecodeError::DuplicateDoc(_))
        ));
    }

    #[test]
    fn membership_operations_round_trip() {
        let mesh = MeshId([5; 32]);
        let ops = [
            MemberOp::Add {
                device: key(3).device_id(),
                role: Role::Till,
                name: "Till 3".into(),
            },
            MemberOp::ChangeRole {
                device: key(3).device_id(),
                role: Role::Viewer,
                from_seq: 9,
            },
            MemberOp::Revoke {
                device: key(3).device_id(),
                last_seq: 12,
            },
        ];
        for op in ops {
            let mut e = sample(2, EntryHash([4; 32]));
            e.payload = Payload::Membership(Box::new(op.clone()));
            let signed = e.sign(&mesh, &key(1));
            let back = SignedEntry::decode(signed.encoded()).unwrap();
            back.verify(&mesh).unwrap();
            assert_eq!(back.member_op(), Some(&op));
            assert!(back.docs().is_empty());
            for n in 0..signed.encoded().len() {
                assert!(SignedEntry::decode(&signed.encoded()[..n]).is_err());
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let signed = sample(3, EntryHash([4; 32])).sign(&MeshId([5; 32]), &key(1));
        for n in 0..signed.encoded().len() {
            assert!(
                SignedEntry::decode(&signed.encoded()[..n]).is_err(),
                "prefix of {n} bytes decoded"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = SignedEntry::decode(&bytes);
        }

        #[test]
        fn mutated_entries_never_panic_and_never_verify(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mesh = MeshId([5; 32]);
            let signed = sample(2, EntryHash([4; 32])).sign(&mesh, &key(1));
            let mut bytes = signed.encoded().to_vec();
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x.max(1);
            }
            if let Ok(e) = SignedEntry::decode(&bytes) {
                prop_assert!(e.verify(&mesh).is_err());
            }
        }

        #[test]
        fn encoded_prefix_with_huge_counts_is_refused_cheaply(count in any::<u16>(), len in any::<u32>()) {
            // A header that promises many documents or a huge change must fail on the bytes that
            // are really there, not allocate what it promises.
            let signed = sample(2, EntryHash([4; 32])).sign(&MeshId([5; 32]), &key(1));
            let mut bytes = signed.encoded()[..HEADER_LEN].to_vec();
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.extend_from_slice(&[1; 16]);
            bytes.push(DocType::Sale.code());
            bytes.extend_from_slice(&1u16.to_be_bytes());
            bytes.extend_from_slice(&len.to_be_bytes());
            prop_assert!(SignedEntry::decode(&bytes).is_err());
        }
    }
}
