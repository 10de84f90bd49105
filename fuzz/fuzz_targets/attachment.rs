//! Attachments over arbitrary bytes: the type sniffer and the archive walker (every
//! format, nested) within small limits: a walk that ends, within its budget; never a panic.
#![no_main]

use bulwark_inspect::attach::{Limits, walk};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_layers: 4,
        max_files: 64,
        max_member_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_ratio: 100,
        max_decoder_memory: 16 << 20,
        deadline: None,
    };
    let mut scanned = 0u64;
    let w = walk("fuzz", data, &limits, &mut |_, b, _| scanned += b.len() as u64);
    assert!(w.bytes <= limits.max_total_bytes);
    assert!(w.found.iter().all(|f| f.layer <= limits.max_layers));
    assert!(!w.found.is_empty());
});
