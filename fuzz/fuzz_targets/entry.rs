//! A signed entry as a peer sends it or the store holds it: decoding, then everything the
//! writer reads of it (the membership operation, the documents, and each change as the writer
//! parses it). None of it may panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillmesh_protocol::{MeshId, SignedEntry};

fuzz_target!(
    init: {
        // libfuzzer-sys's hook aborts on every panic, even one the code under test catches on
        // purpose (`parse_change` catches Automerge's). The default hook only reports; a panic
        // that escapes still fails the run, through libfuzzer-sys's own catch.
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        let Ok(entry) = SignedEntry::decode(data) else {
            return;
        };
        // What decodes encodes to the same bytes: an entry has one encoding.
        assert_eq!(entry.encoded(), data);
        let _ = entry.verify(&MeshId([7; 32]));
        let _ = entry.member_op();
        for dc in entry.docs() {
            for change in &dc.changes {
                let _ = tillmesh_protocol::docmap::parse_change(change);
            }
        }
    }
);
