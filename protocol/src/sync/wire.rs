//! The sync messages and their binary encoding.
//!
//! ```text
//! message  = "TMS" version:u8(1) kind:u8 body
//! Pull     (kind 1) = vv entries_max:u32 bytes_max:u32
//! Entries  (kind 2) = vv more:u8 count:u32 (len:u32 entry)*
//! Push     (kind 3) = len:u32 entry
//! vv       = count:u32 (device:[32] seq:u64)*
//! ```
//!
//! Integers are big-endian. Every length is checked against a limit before anything is
//! allocated, and every entry is decoded as a [`SignedEntry`] (not yet verified), so a peer
//! sending garbage is caught here, in one place, and never reaches the store.

use thiserror::Error;

use crate::entry::{DecodeError, ENTRY_BYTES_MAX, SignedEntry};
use crate::ids::DeviceId;
use crate::vv::VersionVector;

const MAGIC: &[u8; 3] = b"TMS";
const VERSION: u8 = 1;

/// Authors in one version vector: every device that ever wrote to the mesh, with room to spare.
pub const VV_AUTHORS_MAX: usize = 65_536;
/// Entries in one response.
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Bytes of entries in one response (one entry larger than this is still sent alone).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// The largest request a peer may send (a pull: its version vector and its limits). Read
/// before the largest answer's allowance, so a peer cannot make us buffer an answer's worth
/// of bytes by calling it a request.
pub const REQUEST_BYTES_MAX: usize = VV_AUTHORS_MAX * 40 + 64;
/// The largest message either side accepts.
pub const MESSAGE_BYTES_MAX: usize =
    BATCH_BYTES_MAX + ENTRY_BYTES_MAX + BATCH_ENTRIES_MAX * 4 + VV_AUTHORS_MAX * 40 + 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// "Send me what I lack": the asker's version vector and how much it takes at once.
    Pull {
        have: VersionVector,
        entries_max: u32,
        bytes_max: u32,
    },
    /// The answer to a pull: entries in author order, contiguous per author, and the
    /// holder's own version vector so the asker knows whether more remains.
    Entries {
        entries: Vec<SignedEntry>,
        holder: VersionVector,
        more: bool,
    },
    /// A new entry, pushed to every peer as soon as it is committed.
    Push { entry: SignedEntry },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the message is {len} bytes, over the limit of {MESSAGE_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("not a tillmesh sync message (bad magic)")]
    BadMagic,
    #[error("sync message version {0} is not supported (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown sync message kind {0}")]
    Kind(u8),
    #[error("the message ends early, in {0}")]
    Truncated(&'static str),
    #[error("{what} count {count} is over the limit of {max}")]
    Count {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("entry {index} of the message does not decode: {source}")]
    Entry {
        index: usize,
        #[source]
        source: DecodeError,
    },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("the 'more' flag is {0}, neither 0 nor 1")]
    Flag(u8),
    #[error("the version vector lists device {0} twice")]
    DuplicateAuthor(DeviceId),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        match self {
            Message::Pull {
                have,
                entries_max,
                bytes_max,
            } => {
                out.push(1);
                put_vv(&mut out, have);
                out.extend_from_slice(&entries_max.to_be_bytes());
                out.extend_from_slice(&bytes_max.to_be_bytes());
            }
            Message::Entries {
                entries,
                holder,
                more,
            } => {
                out.push(2);
                put_vv(&mut out, holder);
                out.push(u8::from(*more));
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for e in entries {
                    put_bytes(&mut out, e.encoded());
                }
            }
            Message::Push { entry } => {
                out.push(3);
                put_bytes(&mut out, entry.encoded());
            }
        }
        out
    }

    fn encoded_len_hint(&self) -> usize {
        match self {
            Message::Pull { have, .. } => 16 + have.len() * 40,
            Message::Entries {
                entries, holder, ..
            } => {
                16 + holder.len() * 40
                    + entries.iter().map(|e| e.encoded().len() + 4).sum::<usize>()
            }
            Message::Push { entry } => 12 + entry.encoded().len(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(WireError::TooLarge { len: bytes.len() });
        }
        let mut r = Reader { bytes, at: 0 };
        if r.take(3, "the header")? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = r.u8("the header")?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let message = match r.u8("the header")? {
            1 => Message::Pull {
                have: r.vv()?,
                entries_max: r.u32("the pull limits")?,
                bytes_max: r.u32("the pull limits")?,
            },
            2 => {
                let holder = r.vv()?;
                let more = match r.u8("the entries header")? {
                    0 => false,
                    1 => true,
                    other => return Err(WireError::Flag(other)),
                };
                let count = r.u32("the entries header")? as usize;
                if count > BATCH_ENTRIES_MAX {
                    return Err(WireError::Count {
                        what: "entry",
                        count,
                        max: BATCH_ENTRIES_MAX,
                    });
                }
                let mut entries = Vec::with_capacity(count);
                for index in 0..count {
                    let raw = r.bytes("an entry")?;
                    entries.push(
                        SignedEntry::decode(raw)
                            .map_err(|source| WireError::Entry { index, source })?,
                    );
                }
                Message::Entries {
                    entries,
                    holder,
                    more,
                }
            }
            3 => {
                let raw = r.bytes("the pushed entry")?;
                Message::Push {
                    entry: SignedEntry::decode(raw)
                        .map_err(|source| WireError::Entry { index: 0, source })?,
                }
            }
            k => return Err(WireError::Kind(k)),
        };
        if r.at != bytes.len() {
            return Err(WireError::Trailing(bytes.len() - r.at));
        }
        Ok(message)
    }
}

fn put_vv(out: &mut Vec<u8>, vv: &VersionVector) {
    out.extend_from_slice(&(vv.len() as u32).to_be_bytes());
    for (author, seq) in vv.iter() {
        out.extend_from_slice(author.as_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(WireError::Truncated(what))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        if len > ENTRY_BYTES_MAX {
            return Err(WireError::Count {
                what: "entry byte",
                count: len,
                max: ENTRY_BYTES_MAX,
            });
        }
        self.take(len, what)
    }

    fn vv(&mut self) -> Result<VersionVector, WireError> {
        let count = self.u32("a version vector")? as usize;
        if count > VV_AUTHORS_MAX {
            return Err(WireError::Count {
                what: "version vector author",
                count,
                max: VV_AUTHORS_MAX,
            });
        }
        let mut vv = VersionVector::new();
        for _ in 0..count {
            let mut id = [0; 32];
            id.copy_from_slice(self.take(32, "a version vector")?);
            let seq = self.u64("a version vector")?;
            let author = DeviceId(id);
            if vv.get(&author) != 0 {
                return Err(WireError::DuplicateAuthor(author));
            }
            vv.advance(author, seq);
        }
        Ok(vv)
    }
}
