//! One archive reader over arbitrary bytes, within small limits: the walk ends within
//! its budget and never panics, whatever the bytes claim.

use bulwark_inspect::attach::{Limits, TrueType, walk_as};

pub fn run(data: &[u8], as_type: TrueType) {
    let limits = Limits {
        max_layers: 4,
        max_files: 64,
        max_member_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
        max_ratio: 100,
        max_decoder_memory: 16 << 20,
        deadline: None,
    };
    let w = walk_as("fuzz", data, Some(as_type), &limits, &mut |_, _, _| {});
    assert!(w.bytes <= limits.max_total_bytes);
    assert!(w.found.iter().all(|f| f.layer <= limits.max_layers));
    assert!(!w.found.is_empty());
}
