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
//! Record: `len u32 BE | entry sealed` (see `seal`; `len` counts the sealed bytes). A torn
//! last record (a crash mid-write, never acknowledged) fails its length check or does not open;
//! reading stops there and the tail is cut. The seal's tag is the record's checksum.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use tillmesh_protocol::entry::ENTRY_BYTES_MAX;

use super::seal::{SEAL_OVERHEAD, Sealer};

pub const WAL_FILE: &str = "tillmesh.wal";
const RECORD_HEADER: usize = 4;
/// What the records are sealed for (the `table` of their associated data).
const SEAL_LABEL: &str = "wal";

pub struct Wal {
    file: File,
    len: u64,
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
        let mut records = Vec::new();
        let mut at = 0usize;
        while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len > ENTRY_BYTES_MAX + SEAL_OVERHEAD {
                break;
            }
            let Some(body) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
                break;
            };
            let Ok(entry) = sealer.open(SEAL_LABEL, &[], body) else {
                break;
            };
            records.push(entry);
            at += RECORD_HEADER + len;
        }
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
                sealer: sealer.clone(),
            },
            records,
        ))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `entries` and makes them durable. On failure the log is as it was before.
    pub fn append<'a>(&mut self, entries: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            let sealed = self.sealer.seal(SEAL_LABEL, &[], e);
            buf.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            buf.extend_from_slice(&sealed);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let before = self.len;
        let written = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
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
        self.file.sync_data()?;
        self.len = len;
        Ok(())
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

    #[test]
    fn a_corrupted_record_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
        wal.append([&b"good"[..], &b"flipped"[..]]).unwrap();
        drop(wal);
        let path = dir.path().join(WAL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Wal::open(dir.path(), &s).unwrap().1, vec![b"good".to_vec()]);
    }
}
