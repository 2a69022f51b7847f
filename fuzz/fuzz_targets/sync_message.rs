//! A sync message off a peer's stream (a pull, a batch of entries, a push).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillmesh_protocol::sync::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        // What decodes re-encodes and decodes to the same message.
        assert_eq!(Message::decode(&m.encode()).ok(), Some(m));
    }
});
