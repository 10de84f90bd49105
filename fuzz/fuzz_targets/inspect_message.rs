//! A message from the network through everything that reads its content: the MIME views
//! (within small limits, so parts, nesting and header limits are reached), the built-in
//! rules on Hyperscan/PCRE2, the classifier's tokens, the phishing checks with a
//! blocklist, the header ranges removed before stamping, and mail-auth's parser (what the
//! authentication thread runs on every message).
#![no_main]

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::OnceLock;

use bulwark_inspect::compiled::Scanner;
use bulwark_inspect::inspector::{self, Envelope, Inspector, Settings};
use bulwark_inspect::mime::Limits;
use bulwark_inspect::phishing::Blocklist;
use libfuzzer_sys::fuzz_target;

static INSPECTOR: OnceLock<Inspector> = OnceLock::new();

thread_local! {
    static SCANNER: RefCell<Option<Scanner>> = const { RefCell::new(None) };
}

fn inspector() -> &'static Inspector {
    INSPECTOR.get_or_init(|| {
        let settings = Settings {
            limits: Limits {
                max_parts: 50,
                max_depth: 8,
                max_header_bytes: 16 * 1024,
                max_scan_bytes: 256 * 1024,
                max_urls: 100,
            },
            managed_domains: vec!["example.com".into()],
            url_blocklist: Blocklist::parse("evil.example/\nhttp://a.b.example/x/y\n")
                .expect("blocklist"),
            ..Default::default()
        };
        Inspector::load(&[], None, None, settings).expect("built-in rules compile")
    })
}

fuzz_target!(|data: &[u8]| {
    let ins = inspector();
    SCANNER.with(|s| {
        let mut s = s.borrow_mut();
        let scanner = s.get_or_insert_with(|| ins.scanner().expect("scratch"));
        let env = Envelope {
            client_ip: IpAddr::from([192, 0, 2, 1]),
            helo: "client.example",
            mail_from: "a@example.org",
            hostname: "mx.example.com",
            queue_id: "0",
            arrival: 1_796_115_600,
            auth: None,
            approved: false,
            verdicts: None,
        };
        let r = ins.inspect(scanner, data, &env);
        let mut out = Vec::new();
        ins.stamp(&r, &mut out);
        assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= 1000));
    });
    for r in inspector::field_ranges(data, true, "mx.example.com") {
        assert!(r.start <= r.end && r.end <= data.len());
    }
    let _ = inspector::raw_subject(data);
    let _ = mail_auth::AuthenticatedMessage::parse(data);
});
