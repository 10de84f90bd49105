//! The project's own labelled messages (`inspect/testdata/mail/`: GTUBE, phishing of
//! several kinds, ham with links, attachments, shortened links and a brand's own foreign
//! site) each get the verdict their name says: `spam-*` is spam, `phish-*` phishing,
//! `ham-*` clean.

use std::net::IpAddr;
use std::path::Path;

use bulwark_inspect::inspector::{Envelope, Inspector, Settings, Verdict};
use bulwark_inspect::phishing::Blocklist;

#[test]
fn every_message_gets_the_verdict_its_name_says() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let settings = Settings {
        managed_domains: vec!["example.com".into()],
        url_blocklist: Blocklist::parse(
            &std::fs::read_to_string(dir.join("blocklist.txt")).unwrap(),
        )
        .unwrap(),
        ..Default::default()
    };
    let ins = Inspector::load(&[], None, None, settings).unwrap();
    let mut scanner = ins.scanner().unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let mut wrong = Vec::new();
    for f in &files {
        let raw = std::fs::read(f).unwrap();
        let env = Envelope {
            client_ip: IpAddr::from([192, 0, 2, 1]),
            helo: "client.example",
            mail_from: "sender@example.org",
            hostname: "mx.example.com",
            queue_id: "0",
            arrival: 1_796_115_600,
            auth: None,
            approved: false,
            verdicts: None,
        };
        let r = ins.inspect(&mut scanner, &raw, &env);
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let want = match name.split('-').next() {
            Some("spam") => Verdict::Spam,
            Some("phish") => Verdict::Phishing,
            _ => Verdict::Clean,
        };
        let rules: Vec<String> = r
            .hits
            .iter()
            .map(|h| format!("{}={}", h.name, h.score))
            .collect();
        println!(
            "{name}: {} {:.1} {}",
            r.verdict.as_str(),
            r.score,
            rules.join(",")
        );
        if r.verdict != want {
            wrong.push(format!(
                "{name}: {:?} ({:.1}: {})",
                r.verdict,
                r.score,
                rules.join(",")
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}
