//! Hostile and broken MIME ends with a verdict, never a panic, and the structural limits
//! give the `malformed` verdict: 10,000 parts, 1,000-deep nesting, missing and repeated
//! boundaries, broken base64 and quoted-printable, unknown charsets, NULs, a megabyte
//! header line. Each case prints how long it took (no timing is asserted here: the
//! benches measure speed).

use std::net::IpAddr;
use std::time::Instant;

use bulwark_inspect::inspector::{Envelope, Inspector, Report, Settings, Verdict};
use bulwark_inspect::mime::LimitHit;

fn inspect(ins: &Inspector, raw: &[u8]) -> Report {
    let mut s = ins.scanner().unwrap();
    let env = Envelope {
        client_ip: IpAddr::from([192, 0, 2, 1]),
        helo: "h",
        mail_from: "a@example.org",
        hostname: "mx.example.com",
        queue_id: "0",
        arrival: 1_796_115_600,
        auth: None,
        approved: false,
        verdicts: None,
    };
    let t = Instant::now();
    let r = ins.inspect(&mut s, raw, &env);
    println!(
        "{} octets: {} in {:?} ({:?} parse)",
        raw.len(),
        r.verdict.as_str(),
        t.elapsed(),
        r.parse_time
    );
    r
}

fn inspector() -> Inspector {
    Inspector::load(&[], None, None, Settings::default()).unwrap()
}

#[test]
fn ten_thousand_parts_are_past_the_part_limit() {
    let mut m = String::from(
        "From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
    );
    for i in 0..10_000 {
        m.push_str(&format!(
            "--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    m.push_str("--b--\r\n");
    let r = inspect(&inspector(), m.as_bytes());
    assert_eq!(r.verdict, Verdict::Malformed(LimitHit::Parts));
}

#[test]
fn a_thousand_levels_of_nesting_are_past_the_depth_limit() {
    let mut m = String::from("From: a@example.org\r\nSubject: deep\r\nMIME-Version: 1.0\r\n");
    for i in 0..1_000 {
        m.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    m.push_str("Content-Type: text/plain\r\n\r\nthe bottom\r\n");
    for i in (0..1_000).rev() {
        m.push_str(&format!("--b{i}--\r\n"));
    }
    let r = inspect(&inspector(), m.as_bytes());
    assert_eq!(r.verdict, Verdict::Malformed(LimitHit::Depth));
    // message/rfc822 nesting too.
    let mut m = String::new();
    for _ in 0..1_000 {
        m.push_str("From: a@example.org\r\nContent-Type: message/rfc822\r\n\r\n");
    }
    m.push_str("Subject: inner\r\n\r\nhello\r\n");
    let r = inspect(&inspector(), m.as_bytes());
    assert_eq!(r.verdict, Verdict::Malformed(LimitHit::Depth));
}

#[test]
fn a_megabyte_header_line_is_past_the_header_limit() {
    let mut m = String::from("From: a@example.org\r\nX-Long: ");
    m.push_str(&"A".repeat(1 << 20));
    m.push_str("\r\nSubject: long\r\n\r\nbody\r\n");
    let r = inspect(&inspector(), m.as_bytes());
    assert_eq!(r.verdict, Verdict::Malformed(LimitHit::HeaderBytes));
}

#[test]
fn broken_encodings_and_boundaries_end_with_a_verdict() {
    let ins = inspector();
    let cases: Vec<Vec<u8>> = vec![
        // A boundary that never appears, and one that is never closed.
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"nope\"\r\n\r\n--other\r\n\r\ntext\r\n".to_vec(),
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nnever closed\r\n".to_vec(),
        // Two boundary parameters (ambiguous MIME).
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=\"a\"; boundary=\"b\"\r\n\r\n--a\r\n\r\nA\r\n--b\r\n\r\nB\r\n--a--\r\n--b--\r\n".to_vec(),
        // Broken base64 and quoted-printable.
        b"From: a@example.org\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!not base64@@@@====\r\nQUJD\r\n=\r\n".to_vec(),
        b"From: a@example.org\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nbad =ZZ escape =\r\nsoft= break =4\r\n".to_vec(),
        // Unknown charsets, in the body and in an encoded word.
        b"From: a@example.org\r\nSubject: =?x-unknown-9?B?SGVsbG8=?=\r\nContent-Type: text/plain; charset=x-unknown-9\r\n\r\nhello \xe9\xff\r\n".to_vec(),
        // NULs everywhere.
        b"From: a@exa\0mple.org\r\nSubject: n\0ul\r\nContent-Type: text/html\r\n\r\n<a href=\"http://x\0.example/\">x\0</a>\0\0\0\r\n".to_vec(),
        // Nothing but a header, no separator; and nothing at all.
        b"From: a@example.org\r\nSubject: only a header".to_vec(),
        Vec::new(),
        // A long run of one octet, and of CRLFs.
        vec![b'<'; 2 << 20],
        b"\r\n".repeat(1 << 20),
    ];
    for c in &cases {
        let r = inspect(&ins, c);
        assert!(r.score.is_finite());
    }
}
