//! The write-ahead log: what makes a write durable before redb has it on disk.
//!
//! A durable redb commit writes every page the transaction dirtied, across a dozen tables, and
//! fsyncs: about 28 page writes however few sales the batch holds. Instead the writer appends the
//! batch's signed entries here with one sequential write and one `fdatasync`, answers its
//! callers, and commits to redb without durability (readers see it at once). Every checkpoint it
//! commits durably and empties this file. On open, or after a failed write, the entries still
//! here are applied again through the ingest path; entries redb already holds are duplicates and
//! change nothing. So no acknowledged write is lost, and the disk sees one write per batch.
//!
//! Record: `len u32 BE | sealed` (see `seal`; `len` counts the sealed bytes); the seal's tag is
//! the record's checksum. Each append is one batch: its entries' records, then an end record
//! holding the batch's entry count, byte length and SHA-256. A power cut mid-write may keep a
//! write's bytes out of order, so only a batch whose end matches it was whole on disk: a damaged
//! or endless last batch (never acknowledged) is a torn tail and is cut. Damage with a whole
//! batch after it is not a torn write but a disk that lost or changed acknowledged data: the log
//! is refused whole, with the file and the offset, and nothing is changed. (A log written before
//! batches had ends keeps its good records up to any damage, as it always did.)

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use tillmesh_protocol::entry::ENTRY_BYTES_MAX;

use sha2::{Digest, Sha256};

use super::seal::{SEAL_OVERHEAD, Sealer};

pub const WAL_FILE: &str = "tillmesh.wal";
const RECORD_HEADER: usize = 4;
/// What the records are sealed for (the `table` of their associated data): entries, and the
/// end of each batch.
const SEAL_LABEL: &str = "wal";
const END_LABEL: &str = "wal-end";
/// A batch's end: entries (u32), bytes (u64) and the SHA-256 of those bytes.
const END_PAYLOAD: usize = 4 + 8 + 32;

pub struct Wal {
    file: File,
    len: u64,
    /// Bytes written to the file, synced or not.
    written: u64,
    /// Bytes known durable: advanced only by [`Wal::sync`], after `fdatasync` returned. What
    /// a power cut keeps ([`Wal::power_cut`]), so a test or simulation that cuts the power
    /// proves the sync, not the page cache.
    synced: u64,
    sealer: Arc<Sealer>,
}

impl Wal {
    /// Opens (or creates) the log in `dir` and returns the entries it holds, in order.
    pub fn open(dir: &Path, sealer: &Arc<Sealer>) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let path = dir.join(WAL_FILE);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if !existed {
            // A new file's name is durable only once its folder is synced.
            File::open(dir)?.sync_all()?;
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let read = read_batches(&bytes, sealer);
        if let Some((at, why)) = read.damaged
            && let Some(good) = (at + 1..bytes.len()).find(|&p| batch_end_at(&bytes, p, sealer))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the record at byte {at} is damaged ({why}), and a whole batch of acknowledged writes follows it (ending at byte {good}): the disk lost or changed writes this till had acknowledged. Nothing was changed. Restore this device from a peer: move its folder aside, and join the mesh again with an invite (`tillmesh join`) so the other devices send it everything back",
                    path.display()
                ),
            ));
        }
        let (records, at) = (read.records, read.keep);
        if at < bytes.len() {
            tracing::warn!(path = %path.display(), kept = at, dropped = bytes.len() - at, "cutting a torn tail off the write-ahead log (it was never acknowledged)");
            file.set_len(at as u64)?;
            file.sync_data()?;
        }
        file.seek(SeekFrom::Start(at as u64))?;
        Ok((
            Wal {
                file,
                len: at as u64,
                written: at as u64,
                synced: at as u64,
                sealer: sealer.clone(),
            },
            records,
        ))
    }

    /// The number of bytes of good records.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `entries` and makes them durable. On failure the log is as it was before.
    pub fn append<'a>(&mut self, entries: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut count = 0u32;
        for e in entries {
            push_record(&mut buf, &self.sealer.seal(SEAL_LABEL, &[], e));
            count += 1;
        }
        if buf.is_empty() {
            return Ok(());
        }
        // The batch's end: its count, length and digest. A power cut can keep a write's bytes
        // out of order; only a batch whose end matches it was whole on disk.
        let mut end = Vec::with_capacity(END_PAYLOAD);
        end.extend_from_slice(&count.to_be_bytes());
        end.extend_from_slice(&(buf.len() as u64).to_be_bytes());
        end.extend_from_slice(&Sha256::digest(&buf));
        push_record(&mut buf, &self.sealer.seal(END_LABEL, &[], &end));
        let before = self.len;
        let written = self.file.write_all(&buf).and_then(|_| {
            self.written = before + buf.len() as u64;
            self.sync()
        });
        match written {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Nothing of a failed append may come back on replay: the callers were told no.
                let _ = self.truncate_to(before);
                Err(e)
            }
        }
    }

    /// Takes back everything after `len` (a batch whose redb commit failed after its append).
    pub fn truncate_to(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.file.seek(SeekFrom::Start(len))?;
        self.written = len;
        self.sync()?;
        self.len = len;
        Ok(())
    }

    /// Makes what was written durable: the one place the log calls `fdatasync`.
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        self.synced = self.written;
        Ok(())
    }

    /// What a power cut leaves: the file cut back to what was synced. For simulations and
    /// tests: without the sync, acknowledged writes are gone after this.
    pub fn power_cut(self) -> io::Result<()> {
        self.file.set_len(self.synced.min(self.written))
    }
}

fn push_record(buf: &mut Vec<u8>, sealed: &[u8]) {
    buf.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
    buf.extend_from_slice(sealed);
}

/// A record: an entry, or the end of the batch it belongs to.
enum Record {
    Entry(Vec<u8>),
    End {
        count: u32,
        len: u64,
        digest: Vec<u8>,
    },
}

/// The record starting at `at` and where the next starts, or why it is not one.
fn record_at(bytes: &[u8], at: usize, sealer: &Sealer) -> Result<(Record, usize), &'static str> {
    let header = bytes
        .get(at..at + RECORD_HEADER)
        .ok_or("its length is cut short")?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > ENTRY_BYTES_MAX + SEAL_OVERHEAD {
        return Err("its length is larger than any entry");
    }
    let body = bytes
        .get(at + RECORD_HEADER..at + RECORD_HEADER + len)
        .ok_or("it is cut short")?;
    let next = at + RECORD_HEADER + len;
    if len == END_PAYLOAD + SEAL_OVERHEAD
        && let Ok(end) = sealer.open(END_LABEL, &[], body)
    {
        let count = u32::from_be_bytes([end[0], end[1], end[2], end[3]]);
        let mut l = [0u8; 8];
        l.copy_from_slice(&end[4..12]);
        let digest = end[12..].to_vec();
        return Ok((
            Record::End {
                count,
                len: u64::from_be_bytes(l),
                digest,
            },
            next,
        ));
    }
    let entry = sealer
        .open(SEAL_LABEL, &[], body)
        .map_err(|_| "its checksum does not hold")?;
    Ok((Record::Entry(entry), next))
}

/// Whether a whole batch ends at `at`: an end record whose batch, just before it, matches its
/// digest. (Cheap where there is none: only a record of an end's exact size is opened.)
fn batch_end_at(bytes: &[u8], at: usize, sealer: &Sealer) -> bool {
    let Some(header) = bytes.get(at..at + RECORD_HEADER) else {
        return false;
    };
    if u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize
        != END_PAYLOAD + SEAL_OVERHEAD
    {
        return false;
    }
    match record_at(bytes, at, sealer) {
        Ok((Record::End { len, digest, .. }, _)) => usize::try_from(len)
            .ok()
            .and_then(|len| at.checked_sub(len))
            .is_some_and(|start| Sha256::digest(&bytes[start..at]).as_slice() == digest),
        _ => false,
    }
}

/// What a log holds: the entries of its whole batches, where they end, and the first damage.
#[doc(hidden)]
pub struct Batches {
    pub records: Vec<Vec<u8>>,
    /// Bytes to keep: the end of the last whole batch.
    pub keep: usize,
    pub damaged: Option<(usize, &'static str)>,
}

/// The storage key the fuzz target (`fuzz/`) seals its log with.
#[doc(hidden)]
pub const FUZZ_KEY: [u8; 32] = [0x5a; 32];

/// Reads a log's bytes as `Wal::open` does, for the fuzz target: whatever the disk gives back,
/// reading it must not panic.
#[doc(hidden)]
pub fn read_for_fuzzing(bytes: &[u8], sealer: &Sealer) -> Batches {
    read_batches(bytes, sealer)
}

fn read_batches(bytes: &[u8], sealer: &Sealer) -> Batches {
    let mut records = Vec::new();
    let mut pending = Vec::new();
    let (mut at, mut batch_start, mut keep) = (0usize, 0usize, 0usize);
    let mut saw_end = false;
    let mut damaged = None;
    while at < bytes.len() {
        match record_at(bytes, at, sealer) {
            Ok((Record::Entry(e), next)) => {
                pending.push(e);
                at = next;
            }
            Ok((Record::End { count, len, digest }, next)) => {
                let whole = count as usize == pending.len()
                    && len == (at - batch_start) as u64
                    && Sha256::digest(&bytes[batch_start..at]).as_slice() == digest;
                if !whole {
                    damaged = Some((batch_start, "its batch does not match the batch's end"));
                    break;
                }
                records.append(&mut pending);
                saw_end = true;
                (at, batch_start, keep) = (next, next, next);
            }
            Err(why) => {
                damaged = Some((at, why));
                break;
            }
        }
    }
    if !saw_end {
        // A log written before batches had ends (or whose first batch is torn: replaying a
        // write nobody heard back about is harmless): its good records are kept.
        records.append(&mut pending);
        keep = damaged.map_or(bytes.len(), |(at, _)| at);
    }
    Batches {
        records,
        keep,
        damaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::StorageKey;

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(&StorageKey::random()))
    }

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (mut wal, none) = Wal::open(dir.path(), &s).unwrap();
        assert!(none.is_empty());
        wal.append([&b"first"[..], &b"second"[..]]).unwrap();
        wal.append([&b"third"[..]]).unwrap();
        let full = wal.len();
        drop(wal);
        let on_disk = std::fs::read(dir.path().join(WAL_FILE)).unwrap();
        assert!(!on_disk.windows(6).any(|w| w == b"second"), "sealed");
        // A crash mid-append: half a record at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(WAL_FILE))
            .unwrap();
        f.write_all(&[0, 0, 0, 49, 1, 2, 3]).unwrap();
        drop(f);
        let (mut wal, records) = Wal::open(dir.path(), &s).unwrap();
        assert_eq!(
            records,
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
        assert_eq!(wal.len(), full);
        wal.truncate_to(0).unwrap();
        drop(wal);
        assert!(Wal::open(dir.path(), &s).unwrap().1.is_empty());
    }

    /// What is acknowledged survives a power cut, which keeps only what was synced: removing
    /// the log's `fdatasync` fails this test (and the simulation's power cuts).
    #[test]
    fn acknowledged_records_survive_a_power_cut() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
        wal.append([&b"first"[..], &b"second"[..]]).unwrap();
        wal.append([&b"third"[..]]).unwrap();
        wal.power_cut().unwrap();
        let (_, records) = Wal::open(dir.path(), &s).unwrap();
        assert_eq!(
            records,
            vec![b"first".to_vec(), b"second".to_vec(), b"third".to_vec()],
            "every acknowledged record is there after the power cut"
        );
    }

    #[test]
    fn a_corrupted_last_batch_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
        wal.append([&b"good"[..]]).unwrap();
        wal.append([&b"flipped"[..], &b"with it"[..]]).unwrap();
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Wal::open(dir.path(), &s).unwrap().1, vec![b"good".to_vec()]);
    }

    /// A power cut mid-write may keep a batch's later bytes and lose earlier ones: a torn last
    /// batch with good-looking records after the hole is still a torn tail, never refused.
    #[test]
    fn a_last_batch_torn_out_of_order_is_cut_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
        wal.append([&b"acknowledged"[..]]).unwrap();
        let whole = wal.len() as usize;
        wal.append([&b"lost"[..], &b"kept"[..], &b"kept too"[..]])
            .unwrap();
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        for b in &mut bytes[whole + 4..whole + 20] {
            *b = 0;
        }
        std::fs::write(&path, &bytes).unwrap();
        let (wal, records) = Wal::open(dir.path(), &s).unwrap();
        assert_eq!(records, vec![b"acknowledged".to_vec()]);
        assert_eq!(wal.len() as usize, whole);
    }

    /// One byte flipped in a record of a batch that a whole batch follows, in its body or
    /// in its length: the log is refused, naming the file and the offset, and left byte for
    /// byte as it was.
    #[test]
    fn a_damaged_record_before_a_whole_batch_is_refused_and_nothing_changes() {
        let s = sealer();
        for flip in ["body", "length"] {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
            wal.append([&b"first sale"[..]]).unwrap();
            let second = wal.len() as usize;
            wal.append([&b"second sale"[..]]).unwrap();
            wal.append([&b"third sale"[..]]).unwrap();
            drop(wal);
            let path = dir.path().join(WAL_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = match flip {
                "body" => second + RECORD_HEADER + 3,
                _ => second + 2,
            };
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let err = Wal::open(dir.path(), &s).err().expect("refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("byte {second}"))
                    && msg.contains("join the mesh again"),
                "{flip}: {msg}"
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bytes,
                "{flip}: nothing changed"
            );
        }
    }
}
