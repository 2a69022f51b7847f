//! The write-ahead log as the disk gives it back: torn, damaged or garbage. Reading it must
//! never panic, and what it keeps is never past the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillmesh_node::store::seal::{Sealer, StorageKey};
use tillmesh_node::store::wal;

fuzz_target!(|data: &[u8]| {
    let sealer = Sealer::new(&StorageKey::from_bytes(wal::FUZZ_KEY));
    let read = wal::read_for_fuzzing(data, &sealer);
    assert!(read.keep <= data.len());
});
