//! The recipient-directory CSV importer over arbitrary files: every accepted address is
//! valid and in the domain; errors name lines that exist.
#![no_main]

use bulwark_policy::address::check_directory_address;
use bulwark_policy::directory_csv::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (entries, errors) = parse(text, "example.test");
    for e in &entries {
        assert!(check_directory_address(&e.address).is_ok(), "{e:?}");
        assert!(e.address.ends_with("@example.test"), "{e:?}");
    }
    let lines = text.split('\n').count();
    for e in &errors {
        assert!(e.line <= lines + 1, "{e:?} in {lines} lines");
    }
});
