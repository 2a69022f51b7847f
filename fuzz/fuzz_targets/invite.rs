//! An invite as a person types or pastes it: the short code alone, or the whole line with
//! addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tillmesh_node::net::invite::Invite;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(invite) = Invite::decode(text) {
        // What decodes encodes to an invite that decodes the same.
        let again = Invite::decode(&invite.encode()).expect("an encoded invite decodes");
        assert_eq!(again.code, invite.code);
    }
});
