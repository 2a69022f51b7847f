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
//! Record: `len u32 BE | entry sealed` (see `seal`; `len` counts the sealed bytes). The seal's
//! tag is the record's checksum. A torn last record (a crash mid-write, never acknowledged)
//! fails its length check or does not open, and nothing good follows it: reading stops there
//! and the tail is cut. A bad record with a good one anywhere after it is not a torn write but
//! a disk that lost or changed acknowledged data: the log is refused whole, with the file and
//! the offset, and nothing is changed.

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
        let mut records = Vec::new();
        let mut at = 0usize;
        while at < bytes.len() {
            match record_at(&bytes, at, sealer) {
                Ok((entry, next)) => {
                    records.push(entry);
                    at = next;
                }
                Err(why) => {
                    if let Some(good) =
                        (at + 1..bytes.len()).find(|&p| record_at(&bytes, p, sealer).is_ok())
                    {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{}: the record at byte {at} is damaged ({why}), and a good record follows it at byte {good}: the disk lost or changed writes this till had acknowledged. Nothing was changed. Restore this device from a peer: move its folder aside, and join the mesh again with an invite (`tillmesh join`) so the other devices send it everything back",
                                path.display()
                            ),
                        ));
                    }
                    break;
                }
            }
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
        for e in entries {
            let sealed = self.sealer.seal(SEAL_LABEL, &[], e);
            buf.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            buf.extend_from_slice(&sealed);
        }
        if buf.is_empty() {
            return Ok(());
        }
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

/// The record starting at `at` and where the next starts, or why it is not one.
fn record_at(bytes: &[u8], at: usize, sealer: &Sealer) -> Result<(Vec<u8>, usize), &'static str> {
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
    let entry = sealer
        .open(SEAL_LABEL, &[], body)
        .map_err(|_| "its checksum does not hold")?;
    Ok((entry, at + RECORD_HEADER + len))
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
    fn a_corrupted_last_record_is_a_torn_tail() {
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

    /// One byte flipped in a record with good ones after it, in its body or in its length:
    /// the log is refused, naming the file and the offset, and left byte for byte as it was.
    #[test]
    fn a_damaged_record_before_good_ones_is_refused_and_nothing_changes() {
        let s = sealer();
        for flip in ["body", "length"] {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), &s).unwrap();
            wal.append([&b"first sale"[..], &b"second sale"[..], &b"third sale"[..]])
                .unwrap();
            drop(wal);
            let path = dir.path().join(WAL_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            let first_len = RECORD_HEADER
                + u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let at = match flip {
                "body" => first_len + RECORD_HEADER + 3,
                _ => first_len + 2,
            };
            bytes[at] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let err = Wal::open(dir.path(), &s).err().expect("refused");
            let msg = err.to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("byte {first_len}"))
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
