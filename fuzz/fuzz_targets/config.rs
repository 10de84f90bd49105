//! The engine's configuration parser over arbitrary TOML: a configuration or a list of
//! errors, each naming a key; never a panic.
#![no_main]

use bulwark::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(c) => {
            let _ = c.policy();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
