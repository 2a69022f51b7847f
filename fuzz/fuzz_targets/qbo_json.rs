//! The JSON the bridge reads from QuickBooks: amounts in the company's currency, dates, and the
//! fields it pulls back into the mesh.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tillmesh_bridge_qbo::bridge::fuzzing::read_qbo(data);
});
