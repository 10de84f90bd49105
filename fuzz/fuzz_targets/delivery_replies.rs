//! What the delivery side reads from a next hop: reply lines (multi-line, codes that
//! disagree, junk), EHLO extension lists, and the status a DSN takes from a reply.
#![no_main]

use bulwark::deliver::client::{parse_caps, reply_line};
use bulwark::deliver::dsn::status_of;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split("\r\n").collect();
    let mut code = 0u16;
    let mut joined = String::new();
    for (n, line) in lines.iter().enumerate() {
        match reply_line(n, line, &mut code, &mut joined) {
            Ok(true) => continue,
            Ok(false) => {
                assert!(code <= 999);
                let status = status_of(code, &joined);
                assert!(status.split('.').count() == 3, "{status}");
                break;
            }
            Err(_) => break,
        }
    }
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let caps = parse_caps(&owned);
    let _ = caps.size;
});
