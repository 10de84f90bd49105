//! The xz reader over arbitrary bytes (see `common/archive.rs`).
#![no_main]

#[path = "common/archive.rs"]
mod archive;

libfuzzer_sys::fuzz_target!(|data: &[u8]| archive::run(data, bulwark_inspect::attach::TrueType::Xz));
