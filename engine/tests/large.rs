//! Message shape and size: large messages stream to the spool while they arrive and are
//! relayed whole, a core whose memory budget is spent answers 452, and real mail with
//! lines longer than RFC 5321's 998 octets is accepted and wrapped for the next hop.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn engine_with(route: std::net::SocketAddr, extra: &str) -> Engine {
    Engine::start(EngineConfig {
        extra: format!("{extra}\n{}", domain("example.test", route)),
        ..Default::default()
    })
}

/// Sends `count` messages of about `size` octets with smtplib, by DATA or (with `bdat`)
/// in BDAT chunks of 1 MB; prints each reply code and the SHA-256 of each body sent.
fn send_large(port: u16, count: usize, size: usize, bdat: bool) -> Vec<(u16, String)> {
    let out = python(&format!(
        r#"
import hashlib, smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=120)
s.ehlo("c")
for i in range({count}):
    line = ("%07d" % i) + "z" * 69 + "\r\n"
    body = ("Subject: large %d\r\n\r\n" % i + line * ({size} // len(line))).encode()
    digest = hashlib.sha256(body).hexdigest()
    if {bdat}:
        s.mail("s@sender.test")
        s.rcpt("u@example.test")
        step = 1 << 20
        for at in range(0, len(body), step):
            chunk = body[at:at + step]
            last = at + step >= len(body)
            s.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
            code, msg = s.getreply()
            if code != 250:
                break
    else:
        s.mail("s@sender.test")
        s.rcpt("u@example.test")
        code, msg = s.data(body)
    print(code, digest)
s.quit()
"#,
        bdat = if bdat { "True" } else { "False" }
    ));
    out.lines()
        .map(|l| {
            let (c, d) = l.split_once(' ').unwrap();
            (c.parse().unwrap(), d.to_string())
        })
        .collect()
}

#[test]
fn large_messages_stream_to_the_spool_and_are_relayed_whole() {
    let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sink = Sink::start(route);
    let engine = engine_with(route, "[limits]\nmessage_size = 67108864\n");
    let mut sent = send_large(engine.smtp.port(), 2, 30 << 20, false);
    sent.extend(send_large(engine.smtp.port(), 1, 12 << 20, true));
    assert!(sent.iter().all(|(c, _)| *c == 250), "{sent:?}");
    let msgs = sink.wait_for(3, Duration::from_secs(120));
    assert_eq!(msgs.len(), 3);
    let names: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(sink.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        v.sort();
        v
    };
    let mut got: Vec<String> = names
        .iter()
        .zip(&msgs)
        .map(|(p, m)| {
            // The engine's Received: header, then exactly what the client sent.
            let at = m.content.find("\r\nSubject: ").unwrap() + 2;
            let out = python(&format!(
                "import hashlib; print(hashlib.sha256(open({:?},'rb').read()[{at}:]).hexdigest())",
                p.display().to_string()
            ));
            out.trim().to_string()
        })
        .collect();
    let mut want: Vec<String> = sent.into_iter().map(|(_, d)| d).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "a relayed message differs from what was sent");
    assert_eq!(engine.metric("bulwark_messages_streamed_total"), 3.0);
    // Nothing of them stays in memory.
    assert!(wait_until(Duration::from_secs(10), || engine
        .metric("bulwark_content_memory_bytes")
        == 0.0));
}

#[test]
fn a_transfer_cut_off_mid_stream_leaves_nothing_behind() {
    let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut engine = engine_with(route, "");
    let mut raw = Raw::connect(engine.smtp);
    raw.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n");
    assert_eq!(raw.replies(4)[3], "354 End data with <CR><LF>.<CR><LF>");
    let line = format!("{}\r\n", "q".repeat(78));
    for _ in 0..(2 << 20) / line.len() {
        raw.send(line.as_bytes());
    }
    let part = |spool: &std::path::Path| {
        walk(spool)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "part"))
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || part(&engine.spool) == 1),
        "the message is not being streamed"
    );
    // The client goes away: the partial message is removed at once.
    drop(raw);
    assert!(wait_until(Duration::from_secs(10), || part(&engine.spool) == 0));
    // A crash mid-transfer: the next start removes what is left, delivers nothing.
    let mut raw = Raw::connect(engine.smtp);
    raw.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n");
    raw.replies(4);
    for _ in 0..(2 << 20) / line.len() {
        raw.send(line.as_bytes());
    }
    assert!(wait_until(Duration::from_secs(10), || part(&engine.spool) == 1));
    engine.kill9();
    drop(raw);
    let sink = Sink::start(route);
    engine.restart();
    assert_eq!(part(&engine.spool), 0);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        sink.messages().is_empty(),
        "a message never acknowledged was delivered"
    );
    assert_eq!(engine.metric("bulwark_queue_messages"), 0.0);
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_core_whose_memory_budget_is_spent_answers_452_and_recovers() {
    let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _sink = Sink::start(route);
    // 8 MiB: about 25 sessions holding 256 KiB of content and a 64 KiB read buffer.
    let engine = Engine::start(EngineConfig {
        server_extra: "memory_per_core = 8388608\n".into(),
        extra: domain("example.test", route),
        ..Default::default()
    });
    let chunk = format!("{}\r\n", "m".repeat(198)).repeat(1000);
    let mut open = Vec::new();
    for _ in 0..40 {
        let mut raw = Raw::connect(engine.smtp);
        raw.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<u@example.test>\r\nDATA\r\n");
        let r = raw.replies(4);
        if r[1].starts_with("452") {
            break;
        }
        assert_eq!(r[3], "354 End data with <CR><LF>.<CR><LF>", "{r:?}");
        // 200 KB: under the streaming threshold, so it stays in the session's memory.
        raw.send(chunk.as_bytes());
        open.push(raw);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_until(Duration::from_secs(5), || engine
            .metric("bulwark_content_memory_bytes")
            >= 8388608.0),
        "the budget never filled: {}",
        engine.metric("bulwark_content_memory_bytes")
    );
    let mut late = Raw::connect(engine.smtp);
    late.send(b"EHLO c\r\nMAIL FROM:<s@sender.test>\r\n");
    let r = late.replies(2);
    assert!(r[1].starts_with("452 4.3.1"), "{r:?}");
    assert!(engine.metric("bulwark_smtp_rejections_total{reason=\"memory_budget\"}") >= 1.0);
    // The sessions finish their messages; memory is given back and mail flows again.
    for raw in &mut open {
        raw.send(b"\r\n.\r\n");
    }
    for raw in &mut open {
        let r = raw.replies(1);
        assert!(r[0].starts_with("250 2.0.0"), "{r:?}");
    }
    drop(open);
    assert!(wait_until(Duration::from_secs(10), || engine
        .metric("bulwark_content_memory_bytes")
        < 1_000_000.0));
    late.send(b"MAIL FROM:<s@sender.test>\r\n");
    assert!(late.replies(1)[0].starts_with("250"));
}

/// Real messages (from the shared corpus) with lines of 1,015 to 2,893 octets.
fn long_line_corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/train");
    let names = [
        "ham/02456.2d80a710374d58fdaec212af6d791179.txt",
        "hardham/00108.c616dad1b875643b5f48452beadf54b0.txt",
        "hardham/00112.3851987ee7827b01ddb89bb99999adc4.txt",
        "spam/00245.f129d5e7df2eebd03948bb4f33fa7107.txt",
        "spam/00157.52b0a260de7c64f539b0e5d16198b5bf.txt",
    ];
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            let data = std::fs::read(&p)
                .unwrap_or_else(|e| panic!("the shared corpus is missing {}: {e}", p.display()));
            (p.display().to_string(), data)
        })
        .collect()
}

fn longest_line(s: &str) -> usize {
    s.split("\r\n").map(str::len).max().unwrap_or(0)
}

#[test]
fn real_mail_with_long_lines_is_accepted_and_wrapped_for_the_next_hop() {
    let corpus = long_line_corpus();
    for (wrap, extra) in [
        (true, ""),
        (
            false,
            "[delivery]\nline_length_limit = 0\nidle_time = \"1s\"\n",
        ),
    ] {
        let route = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // A next hop that refuses lines past 998 octets, and one that takes them.
        let sink = match wrap {
            true => Sink::start(route),
            false => Sink::start_with(route, &["--max-line", "4096"]),
        };
        let engine = engine_with(route, extra);
        let files: Vec<String> = corpus.iter().map(|(p, _)| format!("{p:?}")).collect();
        let out = python(&format!(
            r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port})
for f in [{files}]:
    # The files have Unix line ends; SMTP wants CRLF (smtplib does not convert bytes).
    data = open(f, "rb").read().replace(b"\r\n", b"\n").replace(b"\r", b"").replace(b"\n", b"\r\n")
    try:
        s.sendmail("s@sender.test", ["u@example.test"], data)
        print("250")
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
s.quit()
"#,
            port = engine.smtp.port(),
            files = files.join(", ")
        ));
        assert!(
            out.lines().all(|l| l == "250"),
            "real mail refused for its shape: {out}"
        );
        let msgs = sink.wait_for(corpus.len(), Duration::from_secs(20));
        assert_eq!(msgs.len(), corpus.len());
        for m in &msgs {
            let longest = longest_line(&m.content);
            if wrap {
                assert!(longest <= 998, "a line of {longest} octets went out");
            } else {
                assert!(longest > 998, "lines were wrapped with wrapping off");
            }
            // Every octet of one of the originals is there, lines only broken.
            let squash = |s: &str| s.replace(['\r', '\n', ' ', '\t'], "");
            let body_of = |s: &str| {
                s.replace("\r\n", "\n")
                    .split_once("\n\n")
                    .map(|(_, b)| squash(b))
                    .unwrap_or_default()
            };
            let body = body_of(&m.content);
            assert!(
                corpus
                    .iter()
                    .any(|(_, d)| body_of(&String::from_utf8_lossy(d)) == body),
                "content changed beyond line breaks"
            );
        }
    }
}
