//! The policy snapshot reader over arbitrary images (what an engine maps from shared
//! memory): refused or fully usable, never a panic.
#![no_main]

use bulwark_policy::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::from_bytes(data) {
        let p = s.policy();
        let _ = p.domain("example.test");
        let _ = p.senders.verdict("a@b.test");
        let _ = p.ips.verdict("192.0.2.1".parse().unwrap());
        for d in p.domains.iter() {
            let _ = d.knows("x@example.test");
        }
    }
});
